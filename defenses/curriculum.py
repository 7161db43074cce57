"""curriculum: CAT-style adversarial training whose attack strength rises over the epochs.

The strength (ε, or the attack's number of steps) is `start` × full at epoch 0 and rises
linearly to full at epoch `ramp`, then stays there (Cai et al. 2018)."""

from robustag.defense import AdversarialDefense
from robustag.plugins import Param, PluginError, fraction, positive


class Curriculum(AdversarialDefense):
    name = "curriculum"
    summary = "adversarial training with attack strength rising from weak to strong"
    stacks = True
    params = {
        **AdversarialDefense.params,
        "grow": Param("eps", "what rises: eps or steps", choices=("eps", "steps")),
        "start": Param(0.1, "strength at epoch 0, as a fraction of the full one", **fraction()),
        "ramp": Param(10, "epochs to reach full strength", **positive()),
    }

    def validate(self):
        if self.grow == "steps" and not hasattr(self.adversary, "steps"):
            raise PluginError(f"curriculum: grow=steps, but attack {self.adversary.name!r} has no steps")
        self.full_steps = getattr(self.adversary, "steps", None)
        self.strength = self.start

    def schedule(self, epoch: int) -> float:
        """The strength at `epoch`, as a fraction of the full one: monotone, from start to 1."""
        return min(1.0, self.start + (1 - self.start) * epoch / self.ramp)

    def begin_epoch(self, epoch, model):
        self.strength = self.schedule(epoch)
        if self.grow == "steps":
            self.adversary.steps = max(1, round(self.full_steps * self.strength))

    def loss(self, model, batch):
        embeddings = model.embed(batch)
        clean = model.clean_loss(embeddings)
        eps = self.adversary.eps * (self.strength if self.grow == "eps" else 1.0)
        adversarial = self.adversarial_losses(model, embeddings, eps).mean()
        figures = {"loss": clean.detach(), "adv_loss": adversarial.detach(), "strength": self.strength}
        return clean + self.beta * adversarial, figures
