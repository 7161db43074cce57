"""witness: the complete verifier's counterexamples as an attack — for each post, the
perturbation that reaches its exact worst NDCG@3 (`robustag.verify`; where a post's search ran
out, the best one found). Deterministic; for models affine in the user and item rows (metric,
PITF, FM). A member of `auto`, so that the reported worst case reaches the exact value wherever
the verifier solved."""

import torch

from robustag.attack import EmbeddingAttack, Param, PluginError, positive
from robustag.verify import MAX_SOLVES, check_targets, verify


class Witness(EmbeddingAttack):
    name = "witness"
    summary = "the verifier's counterexamples: each post's exact worst-NDCG@3 perturbation (metric, pitf, fm)"
    params = {**EmbeddingAttack.params,
              "max_solves": Param(MAX_SOLVES, "search steps per post of the verifier", **positive("≥ 1"))}

    def validate(self):
        super().validate()
        check_targets("witness", self.target_tables)

    def perturb(self, objective, deltas, radius, context=None):
        if context is None or context.posts is None or not len(context.posts.tag_indices):
            raise PluginError("witness: an evaluation attack (it needs the test posts and their true tags)")
        found = verify(context.model, context.posts, len(context.base["tag"]), self.eps, self.norm, self.targets,
                       next(iter(deltas.values())).device, cutoffs=(3,), max_solves=self.max_solves)
        return {k: torch.as_tensor(found.witness[k], dtype=v.dtype, device=v.device) for k, v in deltas.items()}
