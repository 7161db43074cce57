"""Sanity checks of an evasion attack on one trained model: the gradient-masking checklist of
Carlini et al. (2019, "On evaluating adversarial robustness"), each a pass or a loud failure.

- `monotone in ε`: the attacked NDCG@3 does not rise from ε/2 to ε to 2ε;
- `beats random noise`: the attack hurts more than random directions at the full budget (and
  hurts at all: random noise can even help);
- `converged`: the attack as run (its own number of steps) is within 0.005 NDCG@3 of the same
  attack with the most steps tried (10, 50, 100; attacks that have steps);
- `large ε breaks the model`: at ε = 5 (five times the mean row norm) NDCG@3 is near zero;
- `certificate below the attack`: for models with a certificate, no post's certified bound is
  above its attacked value (a violation would mean a bug in one or the other).

`robustag bench` runs them on the first seed of every spec, for each evasion attack and budget,
and stores them beside the cell; every report shows them.
"""

from __future__ import annotations

import numpy as np
import torch

from robustag.attack import ATTACKS, EmbeddingAttack, random_start
from robustag.certify import certifiable, certify
from robustag.evaluation import evaluate_model
from robustag.robustness import evade

TOLERANCE = 1e-3  # NDCG@3 a random start may move between runs
CONVERGED = 0.005  # most NDCG@3 that 50 more steps may still gain
BROKEN = 0.05  # NDCG@3 left at ε = 5


class RandomDirections(EmbeddingAttack):
    """Each row moved by a random direction scaled to the full budget: the control."""

    name = "random-directions"
    summary = "random directions at the full budget (the control of the sanity checks)"

    def perturb(self, objective, deltas, radius):
        generator = torch.Generator(device=next(iter(deltas.values())).device).manual_seed(0)
        moved = {k: random_start(v, radius[k], self.norm, generator) for k, v in deltas.items()}
        if self.norm == "linf":
            return {k: v.sign() * radius[k] for k, v in moved.items()}
        return {k: v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12) * radius[k] for k, v in moved.items()}


def checkable(attack) -> bool:
    """The checklist is about attacks that lower the metric: evasion attacks, not bounds, and
    not a targeted attack (its goal is promotion; NDCG need not fall)."""
    return isinstance(attack, EmbeddingAttack) and not attack.is_bound and attack.threat_model != "targeted"


def sanity_checks(model, split, spec: str, device) -> list[dict]:
    """The checks for the attack `spec` (at its ε) on `model`: rows of (check, passed, detail)."""
    attack = ATTACKS.create(spec)
    at = lambda eps, **changes: evade(model, split, ATTACKS.create(spec, eps=eps, **changes), device)
    ndcg = lambda evaluation: evaluation.summary()["ndcg@3"]
    rows = []
    as_run = at(attack.eps)  # the attack at its own budget and steps, evaluated once
    series = [ndcg(at(attack.eps / 2)), ndcg(as_run), ndcg(at(attack.eps * 2))]
    rows.append(_row("monotone in ε", all(b <= a + TOLERANCE for a, b in zip(series, series[1:])),
                     f"NDCG@3 at ε/2, ε, 2ε: {', '.join(f'{v:.4f}' for v in series)}"))
    noise = ndcg(evade(model, split, RandomDirections(eps=attack.eps, norm=attack.norm, targets=attack.targets), device))
    clean = evaluate_model(model, split.test, split.n_tags, device).summary()["ndcg@3"]
    rows.append(_row("beats random noise", series[1] < min(noise, clean) or series[1] == 0.0,  # finding nothing fails
                     f"attack {series[1]:.4f}, random {noise:.4f}, clean {clean:.4f}"))
    if "steps" in attack.params:
        counts = sorted({10, 50, 100, attack.steps})
        steps = {k: series[1] if k == attack.steps else ndcg(at(attack.eps, steps=k)) for k in counts}
        longest = max(counts)
        rows.append(_row("converged", steps[attack.steps] - steps[longest] <= CONVERGED,
                         f"NDCG@3 at {', '.join(f'{k}: {v:.4f}' for k, v in steps.items())} steps "
                         f"(as run: {attack.steps})"))
    large = ndcg(at(5.0))
    rows.append(_row("large ε breaks the model", large <= BROKEN, f"NDCG@3 at ε = 5: {large:.4f}"))
    if certifiable(model) and "tag" not in attack.target_tables:
        bound = certify(model, split.test, split.n_tags, attack.eps, attack.norm, attack.targets, device)["ndcg@3"]
        above = int(np.sum(bound > as_run.per_post["ndcg@3"] + 1e-9))
        rows.append(_row("certificate below the attack", above == 0, f"{above} posts with the bound above the attack"))
    return [{"attack": spec, "eps": attack.eps, **row} for row in rows]


def _row(check: str, passed: bool, detail: str) -> dict:
    return {"check": check, "passed": bool(passed), "detail": detail}
