"""certified: adversarial training on each pair loss's worst case, with no ascent steps.

For models whose score is affine in the user and item rows (metric, PITF, FM: those that
declare `score_directions`), the largest loss a perturbation of a triple's user and item rows
within the budget can cause to one (positive, negative) pair has a closed form
(`robustag.certify.worst_case_shift`): the pair's score difference moves by at most the budget
times the dual norm of the two tags' directions. L = L_model + β·mean ℓ_worst, at about the
cost of `plain`. Each negative gets its own worst perturbation, so the mean is an upper bound of
the loss under the one perturbation an attacker applies to all of them (AML's inner maximum,
over-approximated rather than solved). The budget is the evaluation attacks' (ε relative to
each table's mean row norm), so it trains against the threat that `auto` and the certificate
evaluate.
"""

from robustag.attack import batch_budget
from robustag.certify import certifiable, worst_case_shift
from robustag.defense import Defense
from robustag.plugins import Param, PluginError, non_negative


class Certified(Defense):
    name = "certified"
    summary = "worst-case training: L + β·mean of each pair loss's closed-form worst case over user/item perturbations"
    stacks = True
    params = {
        "eps": Param(0.1, "budget per row, relative to the mean row norm of its table", **non_negative()),
        "norm": Param("l2", "l2 (per row) or linf", choices=("l2", "linf")),
        "targets": Param("user+item", "rows the worst case moves", choices=("user", "item", "user+item")),
        "beta": Param(1.0, "weight β of the worst-case loss", **non_negative()),
    }

    def begin_epoch(self, epoch, model):
        if epoch == 0 and not certifiable(model):  # once, before the first step
            raise PluginError(f"certified: model {type(model).__name__} declares no linear score directions "
                              "(score_directions); its worst case has no closed form")

    def loss(self, model, batch):
        embeddings = model.embed(batch)
        positive, negative = model.pair_scores(embeddings)
        clean = model.pair_loss(positive, negative).mean() + model.penalty(embeddings)  # model.clean_loss, scores kept
        radius = {t: batch_budget(model, t, self.eps, self.norm) for t in self.targets.split("+")}
        radius = {t: r if r.dim() == 0 else r.unsqueeze(1) for t, r in radius.items()}  # a stack's: per row, over its K negatives
        worst = model.pair_loss(positive, negative + worst_case_shift(model, embeddings, radius, self.norm)).mean()
        return clean + self.beta * worst, {"loss": clean.detach(), "adv_loss": worst.detach()}
