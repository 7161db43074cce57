"""APGD (Croce & Hein, ICML 2020): PGD without a step size to tune, on per-row embedding budgets.

Momentum steps x ← Π(x + α(z − x) + (1 − α)(x − x_prev)), z = Π(x + η·r·direction(∇)), with a
step size η per sample (post, or training triple) that starts at 2 (relative to the radius) and
is halved at checkpoints (after 22%, then ever shorter stretches of the budget of steps) when
fewer than ρ = 75% of the steps since the last checkpoint raised the objective, or when neither
η nor the best value moved; a halving restarts the sample from its best point so far. The best
point of each sample is returned, over `restarts` runs from random starts (the first from 0).
"""

import math

import torch

from robustag.attack import EmbeddingAttack, IterativeAttack, Param, positive, project, random_start, value_and_gradients

MOMENTUM = 0.75  # α
SUCCESS_SHARE = 0.75  # ρ


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j at which the step size may be halved: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), w_j = ⌈p_j · steps⌉."""
    shares = [0.0, 0.22]
    while shares[-1] < 1:
        shares.append(shares[-1] + max(shares[-1] - shares[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(p * steps, 6)) for p in shares[1:] if p < 1})  # 0.57·100 is not 57.000…1


class APGD(IterativeAttack):
    name = "apgd"
    summary = "auto-PGD: momentum steps, per-post step sizes halved at checkpoints, restarts"
    params = {
        **EmbeddingAttack.params,
        "steps": Param(100, "ascent steps per restart", **positive("≥ 1")),
        "restarts": Param(1, "runs; the first from 0, the others from random starts", **positive("≥ 1")),
        "seed": Param(0, "seed of the random starts"),
    }
    trainable = True

    def schedule(self):
        """Plain projected steps at APGD's initial step size, for a defense that trains on every
        iterate (FreeLB); APGD's own schedule runs in `perturb`."""
        return self.steps, 2.0, False

    def perturb(self, objective, deltas, radius, context=None):
        generator = self.generator(next(iter(deltas.values())).device)
        best_x, best_f = None, None
        for restart in range(self.restarts):
            start = deltas if restart == 0 else {k: random_start(v, radius[k], self.norm, generator) for k, v in deltas.items()}
            x, f = self._run(objective, start, radius)
            if best_f is None:
                best_x, best_f = x, f
            else:
                better = f > best_f
                best_x = {k: _where(better, x[k], best_x[k]) for k in x}
                best_f = torch.where(better, f, best_f)
        return {k: v.detach() for k, v in best_x.items()}

    def _run(self, objective, start, radius):
        """One run: (best point, its value) per sample."""
        def step(x, eta, grads):
            moves = self.direction(grads, {})
            return {k: project(x[k] + _rows(eta, x[k]) * radius[k] * moves[k], radius[k], self.norm) for k in x}

        x = {k: v.detach() for k, v in start.items()}
        f, grads = self._value_and_gradients(objective, x)
        samples = len(f)
        eta = torch.full((samples,), 2.0, device=f.device, dtype=f.dtype)
        best_x, best_f = x, f.clone()
        x_prev, x = x, step(x, eta, grads)
        marks = checkpoints(self.steps)
        successes = torch.zeros_like(eta)
        last_eta, last_best, last_mark = eta.clone(), best_f.clone(), 0
        for k in range(1, self.steps):
            f_new, grads = self._value_and_gradients(objective, x)
            successes += (f_new > f).to(eta.dtype)
            improved = f_new > best_f
            best_x = {key: _where(improved, x[key], best_x[key]) for key in x}
            best_f = torch.where(improved, f_new, best_f)
            f = f_new
            if k in marks:
                halve = (successes < SUCCESS_SHARE * (k - last_mark)) | ((eta == last_eta) & (best_f == last_best))
                eta = torch.where(halve, eta / 2, eta)
                x = {key: _where(halve, best_x[key], x[key]) for key in x}
                successes.zero_()
                last_eta, last_best, last_mark = eta.clone(), best_f.clone(), k
            z = step(x, eta, grads)
            moved = {key: project(x[key] + MOMENTUM * (z[key] - x[key]) + (1 - MOMENTUM) * (x[key] - x_prev[key]),
                                  radius[key], self.norm) for key in x}
            x_prev, x = x, moved
        f_last, _ = self._value_and_gradients(objective, x)
        improved = f_last > best_f
        return {key: _where(improved, x[key], best_x[key]) for key in x}, torch.where(improved, f_last, best_f)

    @staticmethod
    def _value_and_gradients(objective, x):
        """Per-sample values (summed over anything after the first axis) and ∂Σ/∂x."""
        values, grads = value_and_gradients(objective, x)
        return values.detach().reshape(len(values), -1).sum(1), grads


def _rows(per_sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample value broadcast over a perturbation's rows; a table shared by all samples
    (the tag table in evaluation) takes their mean."""
    if like.shape[0] != len(per_sample):
        return per_sample.mean()
    return per_sample.reshape(-1, *([1] * (like.dim() - 1)))


def _where(chosen: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per sample: `new` where chosen, else `old`; a shared table moves if most samples gain."""
    if new.shape[0] != len(chosen):
        return new if chosen.float().mean() > 0.5 else old
    return torch.where(chosen.reshape(-1, *([1] * (new.dim() - 1))), new, old)
