"""An example third-party defense for robustag, in one file: training on random perturbations.

The control every adversarial defense must beat: the same budget spent on random directions
instead of the worst case (L = L_model + β·mean loss under uniform noise in the ε-ball).

    robustag train --plugin examples/plugins/noise_augmentation.py --defense noise-augmentation:eps=0.1
"""

import torch

from robustag.attack import random_start, row_budget
from robustag.defense import Defense
from robustag.models import BatchEmbeddings
from robustag.plugins import Param, non_negative


class NoiseAugmentation(Defense):
    name = "noise-augmentation"
    summary = "L + β·mean loss under uniform noise in each row's ε-ball (the random control of AML)"
    params = {
        "eps": Param(0.1, "budget per row, relative to the mean row norm of its table", **non_negative()),
        "beta": Param(1.0, "weight β of the noisy loss", **non_negative()),
        "seed": Param(0, "seed of the noise"),
    }

    def loss(self, model, batch):
        if getattr(self, "generator", None) is None:  # one seeded stream per training run
            self.generator = torch.Generator(device=batch.users.device).manual_seed(self.seed)
        embeddings = model.embed(batch)
        clean = model.clean_loss(embeddings)
        radius = {name: row_budget(table.weight, self.eps, "l2") for name, table in model.tables().items()}
        noise = BatchEmbeddings(*(random_start(row, radius[table], "l2", self.generator) for row, table in (
            (embeddings.user, "user"), (embeddings.item, "item"), (embeddings.positive, "tag"), (embeddings.negative, "tag"))))
        noisy = model.pair_losses(embeddings.perturbed(noise)).mean()
        return clean + self.beta * noisy, {"loss": clean.detach(), "noisy_loss": noisy.detach()}
