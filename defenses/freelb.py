"""freelb: FreeLB as a training method (Zhu et al. 2020).

K ascent steps on the perturbation from a random start; the parameter gradient is the average
of the K adversarial losses' gradients, L = L_model + β · (1/K) Σ_k mean ℓ(Δ_k). The ascent
reuses each step's forward pass for both gradients, so K steps cost about K extra small
forward/backward passes over the batch's rows, not K full training steps."""

import torch

from robustag.attack import IterativeAttack, project, random_start, steepest
from robustag.defense import AdversarialDefense
from robustag.models import BatchEmbeddings
from robustag.plugins import Param, PluginError


class FreeLBTraining(AdversarialDefense):
    name = "freelb"
    summary = "FreeLB: parameter gradients averaged over K ascent steps from a random start"
    params = {**AdversarialDefense.params, "attack": Param("freelb:eps=0.1,steps=3", "the ascent (an iterative attack)")}

    def validate(self):
        if not isinstance(self.adversary, IterativeAttack):
            raise PluginError(f"freelb: attack {self.adversary.name!r} is not iterative; FreeLB needs ascent steps")

    def loss(self, model, batch):
        embeddings = model.embed(batch)
        clean = model.clean_loss(embeddings)
        steps, step_size, _ = self.adversary.schedule()
        norm = self.adversary.norm
        radius = self.field_budgets(model, self.eps)
        generator = self.adversary.generator(embeddings.user.device)
        deltas = {f: random_start(getattr(embeddings, f), r, norm, generator) for f, r in radius.items()}
        total = clean.new_zeros(())
        for _ in range(steps):
            leaves = {f: d.detach().requires_grad_(True) for f, d in deltas.items()}
            moved = BatchEmbeddings(**{k: v + leaves[k] if k in leaves else v for k, v in vars(embeddings).items()})
            step_loss = model.pair_losses(moved).mean()
            total = total + step_loss / steps
            grads = torch.autograd.grad(step_loss, list(leaves.values()), retain_graph=True)
            deltas = {f: project(leaves[f].detach() + step_size * radius[f] * steepest(g, norm), radius[f], norm)
                      for f, g in zip(leaves, grads)}
        return clean + self.beta * total, {"loss": clean.detach(), "adv_loss": total.detach()}
