"""Self-paced weights on adversarial triples (SPAML's core) and the paces that grow λ.

Each scheme gives v_j ∈ [0, 1] minimising Σ_j v_j ℓ_j + f(v; λ) for the per-triple
adversarial loss ℓ_j (Kumar et al. 2010; Jiang et al. 2014). Weights never carry gradient.
"""

from __future__ import annotations

import math

import torch

from robustag.defense import AdversarialDefense
from robustag.plugins import Param, PluginError, positive

SCHEMES = ("hard", "linear", "log", "mixture")
PACES = ("multiplicative", "quantile")


def self_paced_weights(losses: torch.Tensor, lam: float, scheme: str, gamma: float = 1.0) -> torch.Tensor:
    """v(ℓ; λ): none 1 (every triple, as AML); hard 1[ℓ < λ]; linear max(0, 1 − ℓ/λ); log (0 < λ < 1) log(ℓ + ζ)/log ζ with
    ζ = 1 − λ for ℓ < λ; mixture 1 below (λγ/(λ+γ))², 0 above λ², γ(1/√ℓ − 1/λ) between."""
    losses = losses.detach()
    if scheme == "none":
        return torch.ones_like(losses)
    if scheme == "hard":
        return (losses < lam).to(losses.dtype)
    if scheme == "linear":
        return (1 - losses / lam).clamp(0, 1)
    if scheme == "log":
        zeta = 1 - lam
        weights = torch.log(losses + zeta) / math.log(zeta)
        return torch.where(losses < lam, weights, torch.zeros_like(losses)).clamp(0, 1)
    if scheme == "mixture":
        lower, upper = (lam * gamma / (lam + gamma)) ** 2, lam**2
        middle = gamma * (1 / losses.clamp_min(1e-12).sqrt() - 1 / lam)
        return torch.where(losses <= lower, torch.ones_like(losses),
                           torch.where(losses >= upper, torch.zeros_like(losses), middle)).clamp(0, 1)
    raise ValueError(f"unknown self-paced scheme {scheme!r}")


def quantile_threshold(losses: torch.Tensor, fraction: float) -> float:
    """The λ that admits (ℓ < λ) the easiest `fraction` of the triples (at least one)."""
    flat = losses.detach().flatten()
    k = max(1, min(len(flat), math.ceil(fraction * len(flat))))
    kth = float(flat.kthvalue(k).values)
    return kth * (1 + 1e-6) + 1e-12


def multiplicative_pace(lam0: float, mu: float, epoch: int) -> float:
    return lam0 * mu**epoch


def quantile_pace(p0: float, ramp: int, epoch: int) -> float:
    """The admitted fraction: p0 at epoch 0, rising linearly to 1 at epoch `ramp`."""
    return min(1.0, p0 + (1 - p0) * epoch / max(ramp, 1))



class SelfPacedDefense(AdversarialDefense):
    """SPAML: L = L_model + β · Σ_j v_j ℓ_j(Δ*) / M, v from the scheme at the current λ.

    The pace grows λ so that harder adversarial triples enter over time: multiplicative
    (λ_e = λ₀·μ^e) or quantile (λ admits the easiest fraction p_e of each batch, p_e → 1).
    """

    params = {
        **AdversarialDefense.params,
        "scheme": Param("linear", "weighting scheme", choices=SCHEMES),
        "lambda": Param(1.0, "λ₀: the initial age (loss threshold) of the weights", **positive()),
        "gamma": Param(1.0, "γ of the mixture scheme", **positive()),
        "pace": Param("multiplicative", "how λ grows: multiplicative (λ ← μ·λ) or quantile", choices=PACES),
        "mu": Param(1.1, "μ ≥ 1: λ's growth per epoch (multiplicative pace)"),
        "p0": Param(0.5, "admitted fraction at epoch 0 (quantile pace)", check=lambda v: 0 < v <= 1,
                    requirement="in (0, 1]"),
        "ramp": Param(10, "epochs for the admitted fraction to reach 1 (quantile pace)", **positive()),
    }

    stacks = True

    def can_stack(self) -> bool:
        # the quantile pace takes its threshold from the whole batch, which in a stack would mix models
        return super().can_stack() and self.pace == "multiplicative"

    def validate(self):
        if self.mu < 1:
            raise PluginError(f"{self.name}: parameter mu={self.mu} must be ≥ 1 (λ may not shrink)")
        if self.scheme == "log" and self.pace == "multiplicative" and not self.config["lambda"] < 1:
            raise PluginError(f"{self.name}: the log scheme needs 0 < lambda < 1, got {self.config['lambda']}")
        self.begin_epoch(0, None)

    def begin_epoch(self, epoch, model):
        if self.pace == "multiplicative":
            self.lam = multiplicative_pace(self.config["lambda"], self.mu, epoch)
            if self.scheme == "log":
                self.lam = min(self.lam, 1 - 1e-3)  # the log scheme is defined for λ < 1 only
        else:
            self.fraction = quantile_pace(self.p0, self.ramp, epoch)

    def threshold(self, losses: torch.Tensor) -> float:
        if self.pace == "multiplicative":
            return self.lam
        lam = quantile_threshold(losses, self.fraction)
        return min(lam, 1 - 1e-3) if self.scheme == "log" else lam

    def loss(self, model, batch):
        embeddings = model.embed(batch)
        clean = model.clean_loss(embeddings)
        adversarial = self.adversarial_losses(model, embeddings)
        lam = self.threshold(adversarial)
        weights = self_paced_weights(adversarial, lam, self.scheme, self.gamma)
        weighted = (weights * adversarial).sum() / adversarial.numel()
        figures = {
            "loss": clean.detach(),
            "adv_loss": adversarial.detach().mean(),
            "admitted": (weights > 0).float().mean(),
            "mean_weight": weights.mean(),
            "lambda": lam,
        }
        return clean + self.beta * weighted, figures
