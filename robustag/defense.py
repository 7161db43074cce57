"""The defense plugin API: a training regime around any embedding model.

A defense says what a batch adds to the loss (`loss`) and what happens at the start of each
epoch (`begin_epoch`: schedules, paces). `AdversarialDefense` adds the machinery of the
adversarial ones: an attack plugin (any with `trainable = True`) makes perturbations Δ* of the
batch's embeddings, and `adversarial_losses` gives the per-triple losses ℓ_j(Δ*), whose
gradient reaches the parameters through the embeddings (Δ* itself is a constant).

The attack is given inside the defense's spec: `spaml-s:attack=pgd,eps=0.5,steps=3` — every
parameter the defense does not declare goes to its attack.

A third-party defense is one short file: subclass `Defense` or `AdversarialDefense`, set
`name`, `summary`, `params`, implement `loss` (and `begin_epoch` if it schedules anything);
load it with `--plugin file.py` or the entry-point group `robustag.defenses`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from robustag.attack import ATTACKS, AttackContext, EmbeddingAttack, batch_budget, fused_ascent
from robustag.models import BatchEmbeddings, EmbeddingModel
from robustag.plugins import Param, Plugin, PluginError, Registry, non_negative, parse_spec
from robustag.training import TrainingRegime, compiling


class Defense(Plugin, TrainingRegime):
    """Base of all defenses: `loss(model, batch) -> (loss, figures)`, `begin_epoch(epoch, model)`."""

    uses_attack: ClassVar[bool] = False
    # May models of one configuration train as one stack under this defense (`robustag.stacking`)?
    # Only if its loss is a mean over the batch's rows of terms computed row by row (budgets
    # through `batch_budget`, random numbers through `random_start`), and `begin_epoch` depends
    # on the epoch alone: then each stacked model gets the gradient it would get alone.
    stacks: ClassVar[bool] = False

    def can_stack(self) -> bool:
        """Whether this configured defense may train a stack (see `stacks`)."""
        return self.stacks

    def describe(self) -> dict[str, Any]:
        """Everything that determines this defense, as plain values (for configs and hashes)."""
        return {"name": self.name, **self.config}


def _over_default(attack_spec: str, default: str) -> str:
    """The attack as given, over the default adversary's settings where it names the same attack:
    `aml:attack=pgd` is `aml` (PGD at the defense's own ε and steps), not PGD at PGD's defaults."""
    name, given = parse_spec(attack_spec)
    default_name, settings = parse_spec(default)
    if name != default_name:
        return attack_spec
    return f"{name}:" + ",".join(f"{k}={v}" for k, v in {**settings, **given}.items())


class AdversarialDefense(Defense):
    """A defense that trains on adversarial perturbations made by an attack plugin."""

    uses_attack = True
    params = {
        "attack": Param("pgd:eps=0.1,steps=3", "the attack that makes adversarial samples (a trainable one)"),
        "beta": Param(1.0, "weight β of the adversarial loss", **non_negative()),
    }

    def __init__(self, **values: Any):
        attack_spec = _over_default(str(values.get("attack", self.params["attack"].default)), self.params["attack"].default)
        passed = {k: v for k, v in values.items() if k not in self.params}
        own = {k: v for k, v in values.items() if k in self.params}
        attack_class, _ = _resolve_attack(self.name, attack_spec)
        unknown = sorted(k for k in passed if k not in attack_class.params)
        if unknown:
            raise PluginError(
                f"{self.name}: unknown parameter {unknown[0]!r} (known: {', '.join(self.params)}; "
                f"and its attack {attack_class.name}'s: {', '.join(attack_class.params) or 'none'})"
            )
        try:
            adversary = ATTACKS.create(attack_spec, **passed)
        except PluginError as error:
            raise PluginError(f"{self.name}: {error}") from error
        if not isinstance(adversary, EmbeddingAttack) or not adversary.trainable:
            raise PluginError(
                f"{self.name}: attack {adversary.name!r} cannot make adversarial training samples "
                f"(it is not a trainable embedding attack)"
            )
        self.adversary = adversary
        super().__init__(**own)
        self.config["attack"] = self.attack = adversary.spec  # canonical, whatever form it was given in

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "attack": {"name": self.adversary.name, **self.adversary.config}}

    @property
    def spec(self) -> str:
        """Canonical and round-trippable: the attack's parameters follow its name, flattened."""
        own = ",".join(f"{k}={v}" for k, v in self.config.items() if k != "attack")
        attack = ",".join([self.adversary.name, *(f"{k}={v}" for k, v in self.adversary.config.items())])
        return f"{self.name}:attack={attack},{own}"

    @property
    def eps(self) -> float:
        return self.adversary.eps

    def can_stack(self) -> bool:
        return self.stacks and self.adversary.replicable

    def end_epoch(self, epoch, model):
        self.adversary.raise_deferred()  # the epoch's perturbations were finite and within budget, or this says which

    def field_budgets(self, model: EmbeddingModel, eps: float) -> dict[str, torch.Tensor]:
        """The absolute per-row radius of each perturbed field of a batch (`BatchEmbeddings`
        names): tag rows, positive and negative, share the tag table's budget. A stacked
        model's radii are per row, shaped to broadcast over each field's rows."""
        fields = {"user": ("user",), "item": ("item",), "tag": ("positive", "negative")}
        extra_axes = {"user": 1, "item": 1, "positive": 1, "negative": 2}  # a field's axes after its rows
        budgets = {}
        for table in self.adversary.target_tables:
            radius = batch_budget(model, table, eps, self.adversary.norm)
            for f in fields[table]:
                budgets[f] = radius if radius.dim() == 0 else radius.view(-1, *([1] * extra_axes[f]))
        return budgets

    def perturbation(self, model: EmbeddingModel, embeddings: BatchEmbeddings, eps: float | None = None) -> BatchEmbeddings:
        """Δ* for a batch: the adversary maximises the per-triple training losses within budget."""
        radius = self.field_budgets(model, self.adversary.eps if eps is None else eps)
        base = {k: v.detach() for k, v in vars(embeddings).items()}
        with fused_ascent(compiling()):  # compiled training: the adversary's steps compile too
            deltas = self.adversary.checked_perturb(self.adversary_objective(model, base),
                                                    {f: torch.zeros_like(base[f]) for f in radius}, radius,
                                                    AttackContext(model, base), deferred=True)
        return BatchEmbeddings(**{k: deltas.get(k, torch.zeros_like(v)) for k, v in base.items()})

    def adversary_objective(self, model: EmbeddingModel, base: dict[str, torch.Tensor]):
        """What the adversary raises, given perturbations of `base` (a batch's detached rows,
        keyed as `BatchEmbeddings`): by default the per-triple training losses."""

        def objective(deltas: dict[str, torch.Tensor]) -> torch.Tensor:
            return model.pair_losses(BatchEmbeddings(**{k: v + deltas[k] if k in deltas else v for k, v in base.items()}))

        return objective

    def adversarial_losses(self, model: EmbeddingModel, embeddings: BatchEmbeddings, eps: float | None = None) -> torch.Tensor:
        """ℓ_j(Δ*) for every quadruple of the batch, (B, K), differentiable in the parameters."""
        return model.pair_losses(embeddings.perturbed(self.perturbation(model, embeddings, eps)))


def _resolve_attack(defense: str, spec: str):
    try:
        return ATTACKS.resolve(spec)
    except PluginError as error:
        raise PluginError(f"{defense}: {error}") from error


DEFENSES = Registry("defense", Defense, "robustag.defenses", "robustag.defenses")
