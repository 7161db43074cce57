"""rank-adv: adversarial training against the evaluation's own objective.

The training adversary (any trainable attack, PGD by default) moves each triple's user and
item rows to push its positive tag down the *whole* ranking, maximising the same smooth NDCG
(soft rank over all tags, `robustag.robustness.smooth_gains`) that the evaluation attacks
maximise, instead of the K sampled pair losses that AML's adversary raises. The model then
trains on its pair losses at those rows: L = L_model + β·Σ v_j ℓ_j(Δ*) / M, where the weights v
are 1 (scheme none, as AML) or SPAML's self-paced ones (hard, linear, log, mixture) with its paces.
"""

from robustag.plugins import Param, PluginError
from robustag.robustness import rank_temperature, smooth_gains
from robustag.selfpaced import SCHEMES, SelfPacedDefense


class RankAdversarial(SelfPacedDefense):
    name = "rank-adv"
    summary = "adversarial training whose adversary lowers the positive tag's smooth NDCG over all tags"
    params = {**SelfPacedDefense.params,
              "scheme": Param("none", "weights of the adversarial triples: none (all 1) or a self-paced scheme",
                              choices=("none", *SCHEMES))}
    stacks = False  # its adversary ranks every row of the tag table, which in a stack holds every member's tags

    def validate(self):
        super().validate()
        if "tag" in self.adversary.target_tables:
            raise PluginError(f"{self.name}: its adversary moves user and item rows only (targets={self.adversary.targets})")

    def adversary_objective(self, model, base):
        positive, tags = base["positive"].unsqueeze(1), model.tag.weight.detach()

        def objective(deltas):
            user, item = base["user"] + deltas.get("user", 0), base["item"] + deltas.get("item", 0)
            scores = model.score_all(user, item, tags)
            return -smooth_gains(scores, model.score_tags(user, item, positive), rank_temperature(scores))

        return objective
