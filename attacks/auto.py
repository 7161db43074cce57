"""auto: a fixed, documented suite of attacks whose per-post worst result is kept (the rule of
AutoAttack, Croce & Hein 2020), the robustness figure to report.

The suite, at the attack's budget, norm and tables, in this order:

1. APGD (100 steps) on the smooth NDCG of the true tags (the evaluation objective);
2. APGD (100 steps) on a margin: each true tag's score below the best wrong tag's;
3. APGD (100 steps) on the model's own clean top-3 (the label-free objective);
4. the combinatorial search (`combinatorial`, 50 APGD steps per set): per post, the non-true
   tags cheapest to lift above every true tag, lifted together — the verifier's idea for any
   model (user and item rows);
5. where the complete verifier is fast — a model with score directions under an L2 budget on
   the user and item rows — its witnesses (`witness`): each post's exact worst NDCG@3 where it
   solved. (Under L∞ it solves a linear programme per step, ~30× slower; run `witness` or
   `exact` there explicitly.)

For each post the perturbation that leaves the lowest NDCG@3 wins (the first in suite order on
ties). A perturbed tag table is shared by every post, so there the member with the lowest mean
NDCG@3 wins. As a training adversary (no posts to score) it is APGD on the training loss.
"""

from robustag.attack import ATTACKS, EmbeddingAttack, Param, PluginError, positive
from robustag.certify import certifiable
from robustag.robustness import keep_worst, margin_objective, own_top_objective

SUITE = ("given", "margin", "label-free")


class Auto(EmbeddingAttack):
    name = "auto"
    summary = "per-post worst of APGD on smooth NDCG, on a margin and label-free, the combinatorial search and the verifier's witnesses (AutoAttack's rule)"
    params = {**EmbeddingAttack.params, "steps": Param(100, "APGD steps of each member", **positive("≥ 1")),
              "seed": Param(0, "seed of the members' random starts"),
              "combinatorial": Param(True, "add the combinatorial search (user and item rows)"),
              "witness": Param(True, "add the verifier's witnesses where the model allows (false: the APGD members alone)")}
    checked_with = {"witness": False}  # exact, so nothing to mask, and a verifier run per budget checked

    def member(self):
        return ATTACKS.create("apgd", eps=self.eps, norm=self.norm, targets=self.targets, steps=self.steps, seed=self.seed)

    def perturb(self, objective, deltas, radius, context=None):
        if context is None or context.posts is None:
            return self.member().perturb(objective, deltas, radius)
        if objective is None:
            raise PluginError("auto: needs the test labels (it keeps each post's worst NDCG@3)")
        objectives = {"given": objective, "margin": margin_objective(context), "label-free": own_top_objective(context, 3)}
        rows_only = "tag" not in self.target_tables
        searched = self.combinatorial and rows_only
        verified = self.witness and rows_only and self.norm == "l2" and certifiable(context.model)
        best = None
        for name in SUITE + (("combinatorial",) if searched else ()) + (("witness",) if verified else ()):
            if name in ("combinatorial", "witness"):
                found = ATTACKS.create(name, eps=self.eps, norm=self.norm, targets=self.targets).perturb(
                    None, deltas, radius, context)
            else:
                found = self.member().perturb(objectives[name], deltas, radius)
            best = keep_worst(best, found, context)
        return best[0]
