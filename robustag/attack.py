"""The attack plugin API.

An attack is a small class over one of two bases:

- `EmbeddingAttack` (surface "embedding"): evasion on embeddings. It implements
  `perturb(objective, deltas, radius)`: given zero perturbations (a dict of tensors whose last
  dimension is an embedding row), the absolute per-row budgets, and an `objective(deltas)`
  returning one loss per sample, it returns perturbations within budget that raise the
  objective. The same method serves robustness evaluation (the objective pushes each test
  post's true tags down the ranking) and adversarial training (the objective is the batch's
  training loss), so any attack with `trainable = True` can drive any adversarial defense.
- `DataAttack` (surface "data"): poisoning. It implements `poison(split, seed)` and returns
  a new split whose training posts are changed; the test posts stay untouched.

Budgets: `eps` is relative to the embedding scale, the mean L2 norm of the table's rows, so
the same `eps` means the same thing for every model (see `row_budget`).

A third-party attack is one short file: subclass a base, set `name`, `summary`, `params`,
implement one method. Load it with `--plugin file.py` or the entry-point group
`robustag.attacks`; see `examples/plugins/`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

from robustag.errors import RobustagError
from robustag.plugins import Param, Plugin, PluginError, Registry, fraction, non_negative, positive
from robustag.preprocess import Posts, TagSplit

# The API a plugin file imports from here (Param and the checks are re-exported for it).
__all__ = [
    "ATTACKS", "Attack", "AttackContext", "DataAttack", "chosen_tag", "EmbeddingAttack", "IterativeAttack", "Param", "PluginError", "fraction",
    "batch_budget", "gradients", "iterative_params", "non_negative", "positive", "project", "random_start", "replicated",
    "row_budget", "steepest",
]

Objective = Callable[[dict[str, torch.Tensor]], torch.Tensor]
TARGETS = ("user", "item", "tag")
BUDGET_TOLERANCE = 1e-3  # relative slack of the budget check: projections round


class Attack(Plugin):
    """Base of all attacks."""

    surface: ClassVar[str] = ""
    trainable: ClassVar[bool] = False  # may a defense use it to make adversarial samples?
    # Does it draw random numbers only through `random_start`? Then in stacked training each
    # model's perturbations are those it would get alone (see `replicated`).
    replicable: ClassVar[bool] = False
    strength: ClassVar[str | None] = None  # the parameter that measures its strength (reports plot against it)

    @classmethod
    def threat_label(cls) -> str:
        """What the attack assumes, as `attacks list` and the reports' threat table name it."""
        return "poisoning"

    def check(self, split: TagSplit) -> None:
        """Parameters that only make sense for a given data set (a tag id, say) are checked
        here, before any training; raise PluginError naming the plugin."""


def _plugin_line(plugin, error: Exception) -> str:
    """' (file.py:42)': the innermost line of the failing plugin's own file, where the traceback has one."""
    try:
        source = inspect.getfile(type(plugin))
    except TypeError:
        return ""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == source]
    return f" ({Path(source).name}:{frames[-1].lineno})" if frames else ""


@dataclass
class AttackContext:
    """What an evasion attack may use besides its objective (an attack opts in by taking a
    `context` argument): the model under attack, the unperturbed rows that `deltas` add to
    (same keys), and in evaluation the attacked posts, whose true tags it sees only if its
    threat model says so (`knows_labels`), and the split they come from (its training posts:
    what a white-box attacker knows of the data, e.g. to choose a target tag)."""

    model: object
    base: dict[str, torch.Tensor]
    posts: Posts | None = None
    split: TagSplit | None = None
    _clean: torch.Tensor | None = field(default=None, repr=False)

    def clean_scores(self) -> torch.Tensor:
        """(rows, tags): every tag's score before the attack, computed once."""
        if self._clean is None:
            with torch.no_grad():
                self._clean = self.model.score_all(self.base["user"], self.base["item"],
                                                   self.base.get("tag", self.model.tag.weight))
        return self._clean


class EmbeddingAttack(Attack):
    """Evasion: perturb embedding rows within an L2 (per row) or L∞ budget."""

    surface = "embedding"
    strength = "eps"
    # The threat model: may the attacker see the test posts' true tags? A label-free attack
    # gets no objective in evaluation (it builds its own from the context) and posts without tags.
    knows_labels: ClassVar[bool] = True
    # What the attacker wants, for reports: label-aware (push the true tags down, the worst
    # case), label-free (push the model's own top tags down), targeted (promote one tag).
    threat_model: ClassVar[str] = "label-aware"
    # What the attacker knows and does, in a phrase for the report's threat table ("" : the threat model's own)
    threat_description: ClassVar[str] = ""
    # A bound (`Bound`), not an attack: read by name where the plugin's class is not at hand (reports)
    is_bound: ClassVar[bool] = False
    # Parameters the sanity checks (`robustag.checks`) set on every run of the attack they make:
    # to leave out a part that cannot mask gradients yet costs much at each budget they try
    checked_with: ClassVar[dict] = {}
    params = {
        "eps": Param(0.1, "budget per row, relative to the mean row norm of its table", **non_negative()),
        "norm": Param("l2", "l2 (per row) or linf", choices=("l2", "linf")),
        "targets": Param("user+item", "embeddings to perturb: user, item, tag joined by +"),
    }

    @classmethod
    def threat_label(cls) -> str:
        return cls.threat_model

    def validate(self) -> None:
        chosen = self.target_tables
        if not chosen or any(t not in TARGETS for t in chosen):
            raise PluginError(f"{self.name}: targets={self.targets!r} must join some of {', '.join(TARGETS)} with +")
        if len(set(chosen)) < len(chosen):
            raise PluginError(f"{self.name}: targets={self.targets!r} names a table twice")
        # one spelling per threat (item+user is user+item), so one threat never makes two worst-case rows
        self.config["targets"] = self.targets = "+".join(t for t in TARGETS if t in chosen)

    @property
    def target_tables(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets.split("+") if t)

    def perturb(self, objective: Objective | None, deltas: dict[str, torch.Tensor], radius: dict[str, torch.Tensor],
                context: AttackContext | None = None) -> dict[str, torch.Tensor]:
        """Perturbations (same keys and shapes as `deltas`, each row within `radius`) that raise
        `objective`; `context` may be left out of an override's signature (then it is not passed)."""
        raise NotImplementedError

    def checked_perturb(self, objective: Objective | None, deltas: dict[str, torch.Tensor],
                        radius: dict[str, torch.Tensor], context: AttackContext | None = None,
                        deferred: bool = False) -> dict[str, torch.Tensor]:
        """`perturb`, with its output checked: a plugin's perturbation is never trusted blindly
        (one over budget, NaN or missing a table would be reported as robustness lost). With
        `deferred` (adversarial training) the checks of values (finite, within budget) stay on
        the device and are read once per epoch (`raise_deferred`), so no step waits on them."""
        takes_context = "context" in inspect.signature(self.perturb).parameters
        try:
            moved = self.perturb(objective, deltas, radius, context) if takes_context else self.perturb(objective, deltas, radius)
        except RobustagError:
            raise
        except Exception as error:  # a plugin's own failure: named, with its line, not a traceback through robustag
            raise PluginError(f"attack {self.name} raised {type(error).__name__}: {error}{_plugin_line(self, error)}") from error
        if not isinstance(moved, dict) or set(moved) != set(deltas):
            got = sorted(moved) if isinstance(moved, dict) else type(moved).__name__
            raise PluginError(f"attack {self.name}: perturb returned {got}, expected the keys {sorted(deltas)}")
        for key, delta in moved.items():
            if not isinstance(delta, torch.Tensor) or delta.shape != deltas[key].shape:
                shape = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
                raise PluginError(f"attack {self.name}: perturbation {key!r} has shape {shape}, "
                                  f"expected {tuple(deltas[key].shape)}")
            if delta.dtype != deltas[key].dtype:
                raise PluginError(f"attack {self.name}: perturbation {key!r} is {delta.dtype}, expected "
                                  f"{deltas[key].dtype} (the dtype of the deltas it was given)")
        excess = {key: self._excess(delta, radius[key]) for key, delta in moved.items()}
        if deferred:
            seen = getattr(self, "_deferred", {})
            self._deferred = {k: torch.maximum(seen[k], v) if k in seen else v for k, v in excess.items()}
        else:
            self._raise_excess(excess)
        return moved

    def _excess(self, delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """How far the worst row of `delta` is over its budget (≤ 0: within), +inf for a
        non-finite value; a device scalar, read by nobody yet."""
        size = delta.abs() if self.norm == "linf" else delta.norm(dim=-1, keepdim=True)
        over = (size - radius * (1 + BUDGET_TOLERANCE) - 1e-6).amax()  # per row: the radius may differ by row
        return torch.where(torch.isfinite(delta).all(), over, torch.full_like(over, float("inf")))

    def _raise_excess(self, excess: dict[str, torch.Tensor]) -> None:
        for key, value in excess.items():
            value = float(value)
            if value == float("inf"):
                raise PluginError(f"attack {self.name}: perturbation {key!r} holds NaN or infinite values")
            if value > 0:
                raise PluginError(f"attack {self.name}: perturbation {key!r} goes {value:.4g} over its {self.norm} "
                                  f"budget (eps={self.eps})")

    def raise_deferred(self) -> None:
        """Raise what the deferred checks since the last call found (one host read)."""
        found, self._deferred = getattr(self, "_deferred", {}), {}
        self._raise_excess(found)


class Bound(EmbeddingAttack):
    """Not an attack but a bound on every attack under the same threat (budget, norm, tables):
    `bound(model, posts, n_tags, device)` gives each post's metrics directly, with no ranking
    under a perturbation; evaluation runs it in place of an attack (`robustness.evade`), and it
    never enters a worst case over attacks. `certified` is a floor; `exact` the truth where its
    search finished."""

    is_bound = True
    # What the numbers are, as the threat table names them
    bound_label: ClassVar[str] = "certified bound"

    @classmethod
    def threat_label(cls) -> str:
        return cls.bound_label

    def perturb(self, objective, deltas, radius):
        return deltas  # nothing is searched: `bound` gives the per-post values

    def bound(self, model, posts: Posts, n_tags: int, device) -> dict[str, np.ndarray]:
        """Per post, every metric's bound (keys as `Evaluation.per_post`'s)."""
        raise NotImplementedError


class DataAttack(Attack):
    """Poisoning: change the training data; the model is retrained on it."""

    surface = "data"
    # A built-in that appends users (tag-promote): its models are keyed apart from those trained
    # before fake users' rows were drawn last (`training.build_model`), which re-initialised every row
    adds_users: ClassVar[bool] = False

    def poison(self, split: TagSplit, seed: int) -> TagSplit:
        raise NotImplementedError


def chosen_tag(target: int, split: TagSplit, attack: str) -> int:
    """The tag an attack promotes: `target` itself, or for -1 the training tag at the 25th
    popularity percentile (rare enough that promoting it is a visible change)."""
    if not -1 <= target < split.n_tags:
        raise PluginError(f"{attack}: target={target} is not a tag id of {split.name} (0 to {split.n_tags - 1}, or -1)")
    if target >= 0:
        return target
    counts = np.bincount(split.train.tag_indices, minlength=split.n_tags)
    return int(np.argsort(counts, kind="stable")[split.n_tags // 4])


# -- geometry shared by the embedding attacks ------------------------------------------------

def row_budget(table: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Absolute per-row radius: eps × the table's mean row L2 norm (÷ √d for L∞, per coordinate);
    for a stack of tables (M, n, d), one radius per table (M,)."""
    scale = table.detach().norm(dim=-1).mean(-1)
    return eps * scale / (table.shape[-1] ** 0.5 if norm == "linf" else 1.0)


def batch_budget(model, table: str, eps: float, norm: str) -> torch.Tensor:
    """The radius of a training batch's rows of `table`: one value for a model alone; for a
    stacked model (`model.replicas`), each row gets its own model's, (rows,)."""
    weight, replicas = model.tables()[table].weight, getattr(model, "replicas", None)
    if replicas is None:
        return row_budget(weight, eps, norm)
    per_model = row_budget(weight.view(replicas.count, -1, weight.shape[-1]), eps, norm)
    return per_model[replicas.active].repeat_interleave(replicas.rows)


def steepest(gradient: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-budget ascent direction: g/‖g‖ per row (L2) or sign(g) (L∞)."""
    if norm == "linf":
        return gradient.sign()
    return gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def project(delta: torch.Tensor, radius: torch.Tensor, norm: str) -> torch.Tensor:
    """Back into the per-row ball of `radius`."""
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, radius), -radius)
    scale = (radius / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


_replicas = contextvars.ContextVar("robustag_replicas", default=1)


@contextmanager
def replicated(count: int):
    """Within this block every batch is `count` replicas of one layout, one after another
    (stacked training: each model's rows in turn). `random_start` draws for one replica and
    repeats the draw, so each model gets the random numbers it would draw alone."""
    token = _replicas.set(count)
    try:
        yield
    finally:
        _replicas.reset(token)


def random_start(like: torch.Tensor, radius: torch.Tensor, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform draw inside the per-row ball."""
    count = _replicas.get()
    shape = (like.shape[0] // count, *like.shape[1:])
    draw = lambda sampler, size: sampler(size, generator=generator, device=like.device, dtype=like.dtype).repeat(
        count, *([1] * (len(size) - 1)))
    if norm == "linf":
        unit = draw(torch.rand, shape) * 2 - 1
        return unit * radius
    direction = draw(torch.randn, shape)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    u = draw(torch.rand, (*shape[:-1], 1))
    return direction * radius * u ** (1.0 / like.shape[-1])


def value_and_gradients(objective: Objective, deltas: dict[str, torch.Tensor],
                        keep_graph: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective at `deltas` and ∂ Σ objective / ∂ delta for each perturbation (model
    parameters get none); with `keep_graph` the values keep their graph to the model's
    parameters, so a defense can train on them (FreeLB)."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in deltas.items()}
    with torch.enable_grad():
        values = objective(leaves)
        grads = torch.autograd.grad(values.sum(), list(leaves.values()), allow_unused=True, retain_graph=keep_graph)
    return values, {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(leaves, grads)}


def gradients(objective: Objective, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """∂ Σ objective / ∂ delta for each perturbation; model parameters get no gradient."""
    return value_and_gradients(objective, deltas)[1]


class IterativeAttack(EmbeddingAttack):
    """Steps of δ ← Π(δ + α·r·direction(∇)), from zero or a random start: FGSM, PGD, MIM, FreeLB.

    Subclasses fix the number of steps, the step size and the start, or change `direction`.
    """

    replicable = True

    def schedule(self) -> tuple[int, float, bool]:
        """(steps, step size relative to the radius, random start)."""
        raise NotImplementedError

    def generator(self, device: torch.device) -> torch.Generator:
        """One seeded generator per attack instance: repeated calls (training batches) draw
        fresh random starts, and the same sequence of calls gives the same draws."""
        if getattr(self, "_generator", None) is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(getattr(self, "seed", 0))
        return self._generator

    def direction(self, grads: dict[str, torch.Tensor], state: dict) -> dict[str, torch.Tensor]:
        return {k: steepest(g, self.norm) for k, g in grads.items()}

    def perturb(self, objective, deltas, radius, context=None):
        if _fused.get() and self.fusable():
            return self.fused_perturb(objective, deltas, radius)
        for _, deltas in self.ascent(objective, deltas, radius):
            pass
        return {k: v.detach() for k, v in deltas.items()}

    def fusable(self) -> bool:
        """Whether the steps may run as one compiled function: the built-in direction and steps
        (a subclass that changes them, MIM's momentum say, runs them as written)."""
        return (type(self).direction is IterativeAttack.direction and type(self).ascent is IterativeAttack.ascent
                and _fusion_failure is None)

    def fused_perturb(self, objective, deltas, radius):
        """`perturb` with every step in one compiled graph (`torch.func.grad` inside it), so the
        gradients, directions and projections fuse with the compiled loss instead of running as
        dozens of eager kernels per step; the same iterates, to the compiler's rounding. Falls
        back to the eager steps for good if the compiler cannot take them."""
        steps, step_size, _ = self.schedule()
        start = self.start(deltas, radius)
        try:
            return _compiled_steps()(objective, start, radius, steps, step_size, self.norm)
        except Exception as error:  # a model the compiler cannot trace under torch.func: eager from now on
            _fusion_failed(error)
            for _, deltas in self.ascent(objective, start, radius, started=True):
                pass
            return {k: v.detach() for k, v in deltas.items()}

    def start(self, deltas, radius):
        """The first iterate: `deltas`, or a uniform draw in the ball where the schedule says so."""
        if not self.schedule()[2]:
            return deltas
        generator = self.generator(next(iter(deltas.values())).device)
        return {k: random_start(v, radius[k], self.norm, generator) for k, v in deltas.items()}

    def ascent(self, objective, deltas, radius, keep_graph: bool = False, started: bool = False):
        """The steps one at a time: yields (objective at the current iterate, the next iterate).
        With `keep_graph` each objective keeps its graph to the model's parameters, so a
        defense can train on every iterate (FreeLB) with the attack's own steps. `started`:
        `deltas` is the first iterate already (no random start)."""
        steps, step_size, _ = self.schedule()
        if not started:
            deltas = self.start(deltas, radius)
        state: dict = {}
        for _ in range(steps):
            values, grads = value_and_gradients(objective, deltas, keep_graph)
            moves = self.direction(grads, state)
            deltas = {k: project(v.detach() + step_size * radius[k] * moves[k], radius[k], self.norm) for k, v in deltas.items()}
            yield values, deltas


def _ascent_steps(objective, deltas, radius, steps: int, step_size: float, norm: str):
    # The compiler guards on the objective's code and on the shapes of the tensors it reaches,
    # not on which model or batch: a long-lived bench worker compiles once per model class and
    # batch shape, then reuses the graph for every later model (test_training checks it).
    for _ in range(steps):
        grads = torch.func.grad(lambda moved: objective(moved).sum())(deltas)
        deltas = {k: project(v + step_size * radius[k] * steepest(grads[k], norm), radius[k], norm) for k, v in deltas.items()}
    return {k: v.detach() for k, v in deltas.items()}


@functools.cache
def _compiled_steps():
    return torch.compile(_ascent_steps, fullgraph=True)  # on first use: importing the compiler costs seconds


_fusion_failure: str | None = None  # why the compiler could not take the steps, once it failed in this process


def _fusion_failed(error: Exception) -> None:
    global _fusion_failure
    _fusion_failure = f"{type(error).__name__}: {error}".splitlines()[0]
    warnings.warn(f"the adversary's steps run eagerly from now on: the compiler failed on them ({_fusion_failure})")


_fused = contextvars.ContextVar("robustag_fused_ascent", default=False)


@contextmanager
def fused_ascent(enabled: bool):
    """Within this block iterative attacks run their steps compiled as one (`fused_perturb`)."""
    token = _fused.set(enabled)
    try:
        yield
    finally:
        _fused.reset(token)


def iterative_params(steps: int, step_size: float, random_start_default: bool) -> dict[str, Param]:
    """The parameters shared by multi-step attacks."""
    return {
        **EmbeddingAttack.params,
        "steps": Param(steps, "ascent steps", **positive("≥ 1")),
        "step_size": Param(step_size, "step size relative to the radius (α/ε)", **positive()),
        "random_start": Param(random_start_default, "start from a uniform draw inside the ball"),
        "seed": Param(0, "seed of the random start"),
    }


ATTACKS = Registry("attack", Attack, "robustag.attacks", "robustag.attacks")
