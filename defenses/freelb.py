"""freelb: FreeLB as a training method (Zhu et al. 2020).

K ascent steps on the perturbation from a random start; the parameter gradient is the average
of the K adversarial losses' gradients, L = L_model + β · (1/K) Σ_k mean ℓ(Δ_k). The steps are
its attack's own (`IterativeAttack.ascent`), and each step's forward pass serves both
gradients, so K steps cost about K extra small forward/backward passes over the batch's rows,
not K full training steps."""

import torch

from robustag.attack import IterativeAttack
from robustag.defense import AdversarialDefense
from robustag.models import BatchEmbeddings
from robustag.plugins import Param, PluginError


class FreeLBTraining(AdversarialDefense):
    name = "freelb"
    summary = "FreeLB: parameter gradients averaged over K ascent steps from a random start"
    stacks = True
    params = {**AdversarialDefense.params, "attack": Param("freelb:eps=0.1,steps=3", "the ascent (an iterative attack)")}

    def validate(self):
        if not isinstance(self.adversary, IterativeAttack):
            raise PluginError(f"freelb: attack {self.adversary.name!r} is not iterative; FreeLB needs ascent steps")

    def loss(self, model, batch):
        embeddings = model.embed(batch)
        clean = model.clean_loss(embeddings)
        radius = self.field_budgets(model, self.eps)

        def objective(deltas):  # the batch's mean loss at Δ, with its graph to the parameters
            moved = BatchEmbeddings(**{k: v + deltas[k] if k in deltas else v for k, v in vars(embeddings).items()})
            return model.pair_losses(moved).mean().reshape(1)

        start = {f: torch.zeros_like(getattr(embeddings, f)) for f in radius}
        steps = self.adversary.schedule()[0]
        total = clean.new_zeros(())
        for values, _ in self.adversary.ascent(objective, start, radius, keep_graph=True):
            total = total + values.sum() / steps
        return clean + self.beta * total, {"loss": clean.detach(), "adv_loss": total.detach()}
