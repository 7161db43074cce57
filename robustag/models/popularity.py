"""Non-learned baselines: tag popularity, globally, per user, per item, and mixed.

They are the honesty check of every table: a learned model that does not beat `pop-mix`
has learned little. Each row of counts is normalised into frequencies; ties are broken by a
vanishing share of global popularity (1e-6), so that a user with no history still gets a ranking.
Scores are float64: in float32 the tie-break vanishes beside any non-zero frequency
(0.2 + 2e-9 == 0.2), and ties would go to the lowest tag id instead of the most popular tag.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from robustag.errors import RobustagError
from robustag.evaluation import evaluate_model
from robustag.models.base import Model, TagRecommender
from robustag.plugins import Param, fraction
from robustag.preprocess import Posts

TUNED_ON = "ndcg@3"  # the early-stopping metric of the learned models

TIE_BREAK = 1e-6


def _frequencies(rows: np.ndarray, tags: np.ndarray, n_rows: int, n_tags: int) -> sparse.csr_matrix:
    counts = sparse.csr_matrix((np.ones(len(rows)), (rows, tags)), shape=(n_rows, n_tags))
    totals = np.asarray(counts.sum(axis=1)).ravel()
    return sparse.diags(1.0 / np.maximum(totals, 1)) @ counts


class PopularityModel(TagRecommender):
    """score = w_user · f_user(t) + w_item · f_item(t) + 1e-6 · f_global(t)."""

    def __init__(self, train: Posts, n_users: int, n_items: int, n_tags: int, user_weight: float, item_weight: float):
        users, items, tags = train.triples()
        self.global_freq = torch.from_numpy(np.bincount(tags, minlength=n_tags) / max(len(tags), 1))
        self.user_freq = _frequencies(users, tags, n_users, n_tags).tocsr()
        self.item_freq = _frequencies(items, tags, n_items, n_tags).tocsr()
        self.user_weight, self.item_weight = user_weight, item_weight

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        scores = TIE_BREAK * self.global_freq.expand(len(users), -1).clone()
        for weight, freq, rows in ((self.user_weight, self.user_freq, users), (self.item_weight, self.item_freq, items)):
            if weight:
                scores += weight * torch.from_numpy(freq[rows.cpu().numpy()].toarray())
        return scores.to(users.device)


class Popularity(Model):
    """The recipe of the popularity baselines: no training, no embeddings; `weights` gives
    (user, item) weights of the frequencies."""

    learned = False
    embeddings = False

    def weights(self) -> tuple[float, float]:
        raise NotImplementedError

    def recommender(self, split) -> PopularityModel:
        model = PopularityModel(split.train, split.n_users, split.n_items, split.n_tags, *self.weights())
        model.name = self.name
        return model

    def fit(self, split, device):
        return self.recommender(split), []


class Pop(Popularity):
    name = "pop"
    summary = "global tag popularity"

    def weights(self):
        return 0.0, 0.0


class PopUser(Popularity):
    name = "pop-user"
    summary = "the user's own tag frequencies"

    def weights(self):
        return 1.0, 0.0


class PopItem(Popularity):
    name = "pop-item"
    summary = "the item's tag frequencies"

    def weights(self):
        return 0.0, 1.0


MIX_GRID = tuple(np.round(np.linspace(0, 1, 21), 2))


class PopMix(Popularity):
    name = "pop-mix"
    summary = "mix · user + (1 − mix) · item frequencies, mix tuned on validation NDCG@3"
    params = {"mix": Param(None, "weight on the user's frequencies; unset: tuned on validation", kind=float,
                           **fraction())}

    def weights(self):
        return self.mix, 1.0 - self.mix

    def fit(self, split, device):
        """Tunes `mix` on the validation posts over a grid of 21 values when it is not given."""
        if self.mix is not None:
            return self.recommender(split), []
        if len(split.valid) == 0:
            raise RobustagError("pop-mix: no validation posts to tune --mix on; pass --mix or keep validation")
        history = []
        for mix in MIX_GRID:
            self.mix = float(mix)
            score = evaluate_model(self.recommender(split), split.valid, split.n_tags, device).summary()[TUNED_ON]
            history.append({"mix": self.mix, f"valid_{TUNED_ON}": score})
        self.mix = max(history, key=lambda row: row[f"valid_{TUNED_ON}"])["mix"]
        self.config["mix"] = self.mix
        return self.recommender(split), history
