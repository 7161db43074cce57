"""MIM (Dong et al. 2018): PGD steps along a momentum of L1-normalised gradients."""

from robustag.attack import IterativeAttack, Param, iterative_params, fraction, steepest


class MIM(IterativeAttack):
    name = "mim"
    summary = "momentum iterative method: m ← μ·m + ∇/‖∇‖₁, step along m"
    params = {
        **iterative_params(steps=10, step_size=0.25, random_start_default=False),
        "momentum": Param(1.0, "decay μ of the momentum", **fraction()),
    }
    trainable = True

    def schedule(self):
        return self.steps, self.step_size, self.random_start

    def direction(self, grads, state):
        for key, g in grads.items():
            l1 = g.abs().sum(dim=-1, keepdim=True).clamp_min(1e-12)
            state[key] = self.momentum * state.get(key, 0.0) + g / l1
        return {key: steepest(m, self.norm) for key, m in state.items()}
