"""combinatorial: the verifier's search as an attack, for any model with embeddings (a verifier
needs linear score directions; this needs gradients only).

A post's worst ranking puts some non-true tags above all of its true tags. So per post: take
the `candidates` best-scored non-true tags, and rank them by their individual minimum norms to
overtake every true tag, linearised at the clean point (the score gap over the dual norm of the
gradient of the score difference, in units of each table's budget: a cost of 1 is the whole
budget). For n = 1 … `overtakers`, push the n cheapest above every true tag at once: APGD on the
summed hinge of those pairs (for a model affine in the rows a concave objective over the ball,
so the steps find that choice's best perturbation; otherwise a good one). Per post, the
perturbation that leaves the lowest NDCG@3 wins. Label-aware; user and item rows.
"""

import numpy as np
import torch

from robustag.attack import ATTACKS, EmbeddingAttack, Param, PluginError, positive, value_and_gradients
from robustag.robustness import keep_worst, perturbed

HINGE_MARGIN = 1e-4  # overtake by this share of the post's score spread: a tie is no overtaking


class Combinatorial(EmbeddingAttack):
    name = "combinatorial"
    summary = "per post, the non-true tags cheapest to lift above every true tag, lifted together (any embedding model)"
    params = {**EmbeddingAttack.params,
              "candidates": Param(10, "best-scored non-true tags considered as overtakers", **positive("≥ 1")),
              "overtakers": Param(3, "largest set of them pushed above every true tag at once", **positive("≥ 1")),
              "steps": Param(50, "APGD steps per set", **positive("≥ 1"))}

    def validate(self):
        super().validate()
        if "tag" in self.target_tables:
            raise PluginError("combinatorial: a perturbed tag table is shared by every post; use targets=user+item")

    def perturb(self, objective, deltas, radius, context=None):
        if context is None or context.posts is None or not len(context.posts.tag_indices):
            raise PluginError("combinatorial: an evaluation attack (it needs the test posts and their true tags)")
        scores = context.clean_scores()
        true, valid = _true_tags(context.posts, scores.device)
        others = scores.scatter(1, true, float("-inf"))  # padding repeats a true tag: masked too
        candidates = others.topk(min(self.candidates, scores.shape[1] - true.shape[1]), dim=1).indices
        if not candidates.shape[1]:
            return deltas  # a post here carries every tag: no other tag is left to overtake its true ones
        order = _cheapest_first(context, deltas, radius, self.norm, candidates, true, valid)
        best = None
        for n in range(1, min(self.overtakers, candidates.shape[1]) + 1):
            chosen = candidates.gather(1, order[:, :n])
            found = ATTACKS.create("apgd", eps=self.eps, norm=self.norm, targets=self.targets, steps=self.steps).perturb(
                _lift(context, chosen, true, valid), deltas, radius)
            best = keep_worst(best, found, context)
        return best[0]


def _true_tags(posts, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(posts, most true tags) indices, padded with each post's first, and which are real."""
    counts = posts.tag_counts()
    width = int(counts.max())
    slot = np.arange(width)[None, :]
    index = posts.tag_indptr[:-1, None] + np.minimum(slot, counts[:, None] - 1)
    return (torch.as_tensor(posts.tag_indices[index], device=device),
            torch.as_tensor(slot < counts[:, None], device=device))


def _slot_gradients(context, deltas, radius, tags: torch.Tensor) -> torch.Tensor:
    """(posts, slots, D): ∇ of each post's score of tags[:, k] in budget units (δ = r·y), one
    backward pass per slot (a post's score depends on its own rows only)."""
    rows = torch.arange(len(tags), device=tags.device)
    found = []
    for k in range(tags.shape[1]):
        def score(deltas, k=k):
            moved = perturbed(context.base, deltas)
            return context.model.score_all(moved["user"], moved["item"], moved["tag"])[rows, tags[:, k]]
        _, grads = value_and_gradients(score, deltas)
        found.append(torch.cat([grads[t] * radius[t] for t in sorted(grads)], dim=1))
    return torch.stack(found, dim=1)


def _cheapest_first(context, deltas, radius, norm: str, candidates, true, valid) -> torch.Tensor:
    """(posts, candidates): the candidates in order of their linearised cost of overtaking
    every true tag of the post (the most expensive pair decides)."""
    gradients = _slot_gradients(context, deltas, radius, torch.cat([candidates, true], dim=1))
    lift, drop = gradients[:, :candidates.shape[1], None], gradients[:, None, candidates.shape[1]:]
    dual = (lift - drop).abs().sum(-1) if norm == "linf" else (lift - drop).norm(dim=-1)
    scores = context.clean_scores()
    gap = (scores.gather(1, true)[:, None, :] - scores.gather(1, candidates)[:, :, None]).clamp_min(0)
    cost = torch.where(valid[:, None, :], gap / dual.clamp_min(1e-12), torch.zeros_like(gap)).amax(2)
    return cost.argsort(dim=1, stable=True)


def _lift(context, chosen, true, valid):
    """Per post: minus the mean hinge of (true tag's score − chosen tag's score + margin) over
    the chosen tags and the true tags: zero once every chosen tag is above every true tag."""
    rows = torch.arange(len(chosen), device=chosen.device)[:, None]
    margin = HINGE_MARGIN * context.clean_scores().std(dim=1, keepdim=True)[:, :, None]
    weight = valid[:, None, :].to(context.clean_scores().dtype)

    def objective(deltas):
        moved = perturbed(context.base, deltas)
        scores = context.model.score_all(moved["user"], moved["item"], moved["tag"])
        pairs = scores[rows, true][:, None, :] - scores[rows, chosen][:, :, None] + margin
        return -(pairs.clamp_min(0) * weight).sum((1, 2)) / (weight.sum((1, 2)) * chosen.shape[1])

    return objective
