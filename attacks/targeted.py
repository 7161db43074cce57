"""targeted: promote one chosen tag into every test post's top-n (evasion, no test labels).

The attacker picks a tag (`target`, by default the training tag at the 25th popularity
percentile, as `tag-promote` does) and moves each post's user and item rows, within the budget,
to raise the target's score above the n-th best other tag's (a CW margin), with APGD. It never
sees the true tags. Its success is `promotion@N`: the share of test posts that do not carry
the target whose top-N holds it after the attack (stored with every cell, beside the metrics).
"""

from robustag.attack import ATTACKS, EmbeddingAttack, Param, PluginError, chosen_tag, positive
from robustag.robustness import promotion_objective


class Targeted(EmbeddingAttack):
    name = "targeted"
    summary = "promotes a chosen tag into every post's top-n (APGD on a margin); reports promotion@N"
    params = {
        **EmbeddingAttack.params,
        "target": Param(-1, "tag id to promote; -1: the training tag at the 25th popularity percentile"),
        "n": Param(3, "the top-n the target is pushed into", **positive("≥ 1")),
        "steps": Param(100, "APGD steps", **positive("≥ 1")),
        "seed": Param(0, "seed of APGD's random starts"),
    }
    knows_labels = False
    threat_model = "targeted"
    threat_description = "the model (white box), not the test labels: it pushes one chosen tag into the top N"

    def check(self, split) -> None:
        self.target_tag(split)
        if self.n >= split.n_tags:
            raise PluginError(f"targeted: n={self.n} needs fewer than the data set's {split.n_tags} tags "
                              "(the target pushed into a top-n that leaves other tags out)")

    def target_tag(self, split) -> int:
        return chosen_tag(self.target, split, self.name)

    def perturb(self, objective, deltas, radius, context=None):
        if context is None or context.split is None:
            raise PluginError("targeted: attacks test posts (evaluation) only; it needs their split")
        apgd = ATTACKS.create("apgd", eps=self.eps, norm=self.norm, targets=self.targets, steps=self.steps, seed=self.seed)
        return apgd.perturb(promotion_objective(context, self.target_tag(context.split), self.n), deltas, radius)
