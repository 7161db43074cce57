"""exact: not an attack but the true worst case — each post's exact worst value of every metric
under this budget, found by a complete verifier (`robustag.verify`), for models affine in the
user and item rows (metric, PITF, FM). A post whose search runs past `max_solves` keeps a
bracket: the stored metric is its sound lower end (never below `certified`), `upper_ndcg@N` the
best witness, `solved@N` whether the two met."""

from robustag.attack import Bound, EmbeddingAttack, Param, positive
from robustag.evaluation import CUTOFFS
from robustag.verify import MAX_SOLVES, check_targets, verify


class Exact(Bound):
    name = "exact"
    summary = "the exact worst case under this budget, by a complete verifier (brackets where unsolved; metric, pitf, fm)"
    bound_label = "exact worst case"
    params = {**EmbeddingAttack.params,
              "max_solves": Param(MAX_SOLVES, "search steps per post before it is left as a bracket", **positive("≥ 1"))}

    def validate(self):
        super().validate()
        check_targets("exact", self.target_tables)

    def bound(self, model, posts, n_tags, device) -> dict:
        found = verify(model, posts, n_tags, self.eps, self.norm, self.targets, device, max_solves=self.max_solves)
        return {**found.lower, **{f"upper_ndcg@{n}": found.upper[f"ndcg@{n}"] for n in CUTOFFS},
                **{f"solved@{n}": found.solved_at(n).astype(float) for n in CUTOFFS}}
