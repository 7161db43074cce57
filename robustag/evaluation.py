"""Full-ranking evaluation: every tag is ranked for every post, in bounded chunks.

Ties are broken by tag id (a stable sort), and each row is scored independently, so the
metrics do not depend on the chunk size. Per-post values are kept for paired tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from robustag.preprocess import Posts

CUTOFFS = (1, 3, 5, 10)
METRICS = ("p", "r", "f1", "ndcg")
# score_fn(users, items, post_index) -> (B, n_tags): post_index lets an attack look up the
# perturbation it computed for each post; a plain recommender ignores it (see `scores_of`).
ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def scores_of(recommender) -> ScoreFn:
    return lambda users, items, _post_index: recommender.score(users, items)


def evaluate_model(recommender, posts: Posts, n_tags: int, device: torch.device | str = "cpu") -> Evaluation:
    """A recommender's full ranking of every tag for `posts`, evaluated."""
    return evaluate(scores_of(recommender), posts, n_tags, device)


@dataclass
class Evaluation:
    """Per-post metric values (`"f1@3"` -> array over posts) and each post's top-ranked tags."""

    per_post: dict[str, np.ndarray]
    top_tags: np.ndarray  # (posts, depth) tag ids, best first
    top_scores: np.ndarray  # (posts, depth)

    def summary(self) -> dict[str, float]:
        return {key: float(values.mean()) for key, values in self.per_post.items()}


def post_tensors(posts: Posts, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(posts.users, device=device), torch.as_tensor(posts.items, device=device)


def relevance_keys(posts: Posts, n_tags: int, device: torch.device) -> torch.Tensor:
    """Sorted keys post * n_tags + tag of the posts' true tags: membership by binary search."""
    post_index = np.repeat(np.arange(len(posts)), posts.tag_counts())
    return torch.as_tensor(post_index * n_tags + posts.tag_indices, device=device)


def contains(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    position = torch.searchsorted(sorted_keys, queries).clamp(max=len(sorted_keys) - 1)
    return sorted_keys[position] == queries


def rank_tags(scores: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `depth` tags and scores for each row of scores; ties go to the lower tag id."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :depth]
    return order, scores.gather(1, order)


def metrics_from_hits(hits: torch.Tensor, n_relevant: torch.Tensor, cutoffs=CUTOFFS) -> dict[str, torch.Tensor]:
    """P, R, F1 and binary-relevance NDCG at each cutoff from a (posts, depth) hit matrix."""
    depth = max(cutoffs)
    if hits.shape[1] < depth:  # fewer tags than the deepest cutoff: the rest are misses
        hits = torch.nn.functional.pad(hits, (0, depth - hits.shape[1]))
    hits = hits.double()
    discount = 1.0 / torch.log2(torch.arange(2, depth + 2, dtype=torch.float64, device=hits.device))
    ideal = torch.cumsum(discount, 0)
    cumulative = hits.cumsum(1)
    dcg = (hits * discount).cumsum(1)
    n_relevant = n_relevant.double()
    out = {}
    for n in cutoffs:
        found = cumulative[:, n - 1]
        precision = found / n
        recall = found / n_relevant
        out[f"p@{n}"] = precision
        out[f"r@{n}"] = recall
        out[f"f1@{n}"] = torch.where(found > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
        ideal_hits = torch.clamp(n_relevant, max=n).long() - 1
        out[f"ndcg@{n}"] = dcg[:, n - 1] / ideal[ideal_hits]
    return out


def evaluate(
    score_fn: ScoreFn,
    posts: Posts,
    n_tags: int,
    device: torch.device | str = "cpu",
    chunk_size: int = 2048,
    cutoffs=CUTOFFS,
) -> Evaluation:
    """Rank all tags for all posts and compute every metric per post."""
    device = torch.device(device)
    if len(posts) == 0:
        raise ValueError("no posts to evaluate")
    depth = min(max(cutoffs), n_tags)
    users, items = post_tensors(posts, device)
    keys = relevance_keys(posts, n_tags, device)
    n_relevant = torch.as_tensor(posts.tag_counts(), device=device)
    tops, top_scores, values = [], [], []
    with torch.no_grad():
        for start in range(0, len(posts), chunk_size):
            stop = min(start + chunk_size, len(posts))
            post_index = torch.arange(start, stop, device=device)
            scores_chunk = score_fn(users[start:stop], items[start:stop], post_index)
            top, top_score = rank_tags(scores_chunk, depth)
            hits = contains(keys, post_index.unsqueeze(1) * n_tags + top)
            values.append(metrics_from_hits(hits, n_relevant[start:stop], cutoffs))
            tops.append(top)
            top_scores.append(top_score)
    per_post = {key: torch.cat([v[key] for v in values]).cpu().numpy() for key in values[0]}
    return Evaluation(per_post, torch.cat(tops).cpu().numpy(), torch.cat(top_scores).float().cpu().numpy())
