"""Non-learned baselines: tag popularity, globally, per user, per item, and mixed.

They are the honesty check of every table: a learned model that does not beat `pop-mix`
has learned little. Each row of counts is normalised into frequencies; ties are broken by a
vanishing share of global popularity (1e-6), so that a user with no history still gets a ranking.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from robustag.models.base import TagRecommender
from robustag.preprocess import Posts

TIE_BREAK = 1e-6


def _frequencies(rows: np.ndarray, tags: np.ndarray, n_rows: int, n_tags: int) -> sparse.csr_matrix:
    counts = sparse.csr_matrix((np.ones(len(rows)), (rows, tags)), shape=(n_rows, n_tags))
    totals = np.asarray(counts.sum(axis=1)).ravel()
    return sparse.diags(1.0 / np.maximum(totals, 1)) @ counts


class PopularityModel(TagRecommender):
    """score = w_user · f_user(t) + w_item · f_item(t) + 1e-6 · f_global(t)."""

    def __init__(self, train: Posts, n_users: int, n_items: int, n_tags: int, user_weight: float, item_weight: float):
        users, items, tags = train.triples()
        self.global_freq = torch.from_numpy(np.bincount(tags, minlength=n_tags) / max(len(tags), 1)).float()
        self.user_freq = _frequencies(users, tags, n_users, n_tags).tocsr()
        self.item_freq = _frequencies(items, tags, n_items, n_tags).tocsr()
        self.user_weight, self.item_weight = user_weight, item_weight

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        scores = TIE_BREAK * self.global_freq.expand(len(users), -1).clone()
        for weight, freq, rows in ((self.user_weight, self.user_freq, users), (self.item_weight, self.item_freq, items)):
            if weight:
                scores += weight * torch.from_numpy(freq[rows.cpu().numpy()].toarray()).float()
        return scores.to(users.device)


def popularity_model(name: str, train: Posts, n_users: int, n_items: int, n_tags: int, mix: float = 0.5):
    """`pop`, `pop-user`, `pop-item`, or `pop-mix` with weight `mix` on the user's frequencies."""
    weights = {"pop": (0.0, 0.0), "pop-user": (1.0, 0.0), "pop-item": (0.0, 1.0), "pop-mix": (mix, 1.0 - mix)}
    model = PopularityModel(train, n_users, n_items, n_tags, *weights[name])
    model.name = name
    return model
