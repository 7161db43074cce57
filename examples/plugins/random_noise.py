"""An example third-party attack for robustag, in one file: random noise at the full budget.

It perturbs each embedding row by a uniformly random direction scaled to exactly the budget,
which makes it the control every gradient attack must beat: an attack that hurts no more than
random noise of the same norm has found nothing.

Use it without installing anything:

    robustag attack --plugin examples/plugins/random_noise.py --attacks random-noise:eps=0.1,pgd:eps=0.1

or install it as a package (see pyproject.toml beside this file), which registers it through
the entry-point group `robustag.attacks`.
"""

import torch

from robustag.attack import EmbeddingAttack, Param


class RandomNoise(EmbeddingAttack):
    name = "random-noise"
    summary = "a random direction per row, scaled to the full budget (a control)"
    params = {**EmbeddingAttack.params, "seed": Param(0, "seed of the noise")}

    def perturb(self, objective, deltas, radius):
        generator = torch.Generator(device=next(iter(deltas.values())).device).manual_seed(self.seed)
        noise = {}
        for key, zero in deltas.items():
            draw = torch.randn(zero.shape, generator=generator, device=zero.device, dtype=zero.dtype)
            if self.norm == "linf":
                noise[key] = draw.sign() * radius[key]
            else:
                noise[key] = draw / draw.norm(dim=-1, keepdim=True).clamp_min(1e-12) * radius[key]
        return noise
