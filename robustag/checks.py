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

An attack may fix parameters for all of these runs (`checked_with`): `auto` is checked without
the verifier's witnesses, which follow no gradient and would run the verifier at every budget
tried (LastFM plain metric, auto at ε 0.2: 598 s of checks with them, 52 s without,
`benchmarks/checks_cost.py`); each row says so.
A targeted attack is held to the same list on its own goal, the promotion@3 of its target
(rising in ε, above random noise's, converged within 0.005, at least 0.95 at ε = 5).

`robustag bench` runs them on the first seed of every spec, for each evasion attack and budget,
and stores them beside the cell; every report shows them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from robustag.attack import ATTACKS, Bound, EmbeddingAttack, random_start
from robustag.certify import certifiable
from robustag.evaluation import evaluate_model
from robustag.robustness import evade, promotion_rate

CHECKED_WITH = re.compile(r"\(checked with ([^)]*)\)$")  # the parameters a check row ran with, from its detail
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


@dataclass(frozen=True)
class Goal:
    """What an attack's strength is measured by: NDCG@3 for the attacks that lower the metric
    (lower: stronger), promotion@3 of the target for a targeted one (higher: stronger), and
    where a very large budget must drive it."""

    name: str
    lower_is_stronger: bool
    at_large_eps: float  # NDCG@3 at most this, or promotion@3 at least this, at ε = 5

    def stronger(self, a: float, b: float, tolerance: float = 0.0) -> bool:
        """Is `a` at least as strong as `b` (within `tolerance`)?"""
        return a <= b + tolerance if self.lower_is_stronger else a >= b - tolerance

    def beats(self, a: float, b: float) -> bool:
        """Is `a` strictly stronger than `b`, or at the end of the scale (nothing left to gain)?"""
        if self.lower_is_stronger:
            return a < b or a == 0.0
        return a > b or a == 1.0

    def gap(self, weaker: float, stronger: float) -> float:
        """How much strength `weaker` leaves on the table against `stronger`."""
        return weaker - stronger if self.lower_is_stronger else stronger - weaker


NDCG = Goal("NDCG@3", lower_is_stronger=True, at_large_eps=BROKEN)
PROMOTION = Goal("promotion@3", lower_is_stronger=False, at_large_eps=1 - BROKEN)


def checkable(attack) -> bool:
    """The checklist is about evasion attacks (not bounds); a targeted attack is checked on
    how far it promotes its target, the others on how far they lower NDCG@3."""
    return isinstance(attack, EmbeddingAttack) and not isinstance(attack, Bound)


def sanity_checks(model, split, spec: str, device) -> list[dict]:
    """The checks for the attack `spec` (at its ε) on `model`: rows of (check, passed, detail)."""
    attack = ATTACKS.create(spec)
    goal = PROMOTION if attack.threat_model == "targeted" else NDCG
    fixed = dict(attack.checked_with)
    at = lambda eps, **changes: evade(model, split, ATTACKS.create(spec, eps=eps, **{**fixed, **changes}), device)

    def measure(evaluation) -> float:
        if goal is NDCG:
            return evaluation.summary()["ndcg@3"]
        return promotion_rate(evaluation, split.test, attack.target_tag(split), 3)

    rows = []
    as_run = at(attack.eps)  # the attack at its own budget and steps, evaluated once
    series = [measure(at(attack.eps / 2)), measure(as_run), measure(at(attack.eps * 2))]
    rows.append(_row("monotone in ε", all(goal.stronger(b, a, TOLERANCE) for a, b in zip(series, series[1:])),
                     f"{goal.name} at ε/2, ε, 2ε: {', '.join(f'{v:.4f}' for v in series)}"))
    noise = measure(evade(model, split, RandomDirections(eps=attack.eps, norm=attack.norm, targets=attack.targets), device))
    clean = measure(evaluate_model(model, split.test, split.n_tags, device))
    baseline = min(noise, clean) if goal.lower_is_stronger else max(noise, clean)
    rows.append(_row("beats random noise", goal.beats(series[1], baseline),  # finding nothing fails
                     f"attack {series[1]:.4f}, random {noise:.4f}, clean {clean:.4f} ({goal.name})"))
    if "steps" in attack.params:
        counts = sorted({10, 50, 100, attack.steps})
        steps = {k: series[1] if k == attack.steps else measure(at(attack.eps, steps=k)) for k in counts}
        rows.append(_row("converged", goal.gap(steps[attack.steps], steps[max(counts)]) <= CONVERGED,
                         f"{goal.name} at {', '.join(f'{k}: {v:.4f}' for k, v in steps.items())} steps "
                         f"(as run: {attack.steps})"))
    large = measure(at(5.0))
    rows.append(_row("large ε breaks the model", goal.stronger(large, goal.at_large_eps),
                     f"{goal.name} at ε = 5: {large:.4f}"))
    if certifiable(model) and "tag" not in attack.target_tables:
        certified = ATTACKS.create("certified", eps=attack.eps, norm=attack.norm, targets=attack.targets)
        bound = evade(model, split, certified, device).per_post["ndcg@3"]
        above = int(np.sum(bound > as_run.per_post["ndcg@3"] + 1e-9))
        rows.append(_row("certificate below the attack", above == 0, f"{above} posts with the bound above the attack"))
    if fixed:  # what was checked is not exactly what ran: say so on every row (CHECKED_WITH reads it back)
        rows = [{**row, "detail": f"{row['detail']} (checked with {', '.join(f'{k}={v}' for k, v in fixed.items())})"}
                for row in rows]
    return [{"attack": spec, "eps": attack.eps, **row} for row in rows]


def _row(check: str, passed: bool, detail: str) -> dict:
    return {"check": check, "passed": bool(passed), "detail": detail}
