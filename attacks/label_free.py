"""label-free: PGD under the realistic threat model, without the test posts' true tags.

The attacker cannot see which tags are correct, so it pushes down the tags the model itself
ranks first on clean input (its top-n), with the same smooth-NDCG objective and projected
steps as `pgd`. robustag gives such an attack no objective and no labels (see
`robustag.robustness._attack_range`); it builds its own from the context.
"""

from robustag.attack import IterativeAttack, Param, PluginError, iterative_params, positive
from robustag.robustness import own_top_objective


class LabelFree(IterativeAttack):
    name = "label-free"
    summary = "PGD without test labels: pushes the model's own clean top-n tags down"
    params = {**iterative_params(steps=10, step_size=0.25, random_start_default=True),
              "n": Param(3, "how many of the clean top tags stand in for the unknown true ones", **positive("≥ 1"))}
    knows_labels = False
    threat_model = "label-free"
    threat_description = "the model (white box), not the test labels: it pushes the model's own top tags down"

    def check(self, split) -> None:
        if self.n >= split.n_tags:
            raise PluginError(f"label-free: n={self.n} needs fewer than the data set's {split.n_tags} tags "
                              "(its own top-n pushed below the rest)")

    def schedule(self):
        return self.steps, self.step_size, self.random_start

    def perturb(self, objective, deltas, radius, context=None):
        if context is None or context.posts is None:
            raise PluginError("label-free: attacks test posts (evaluation) only; it needs their context")
        return super().perturb(own_top_objective(context, self.n), deltas, radius, context)
