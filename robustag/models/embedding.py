"""The two learned models of the paper: the metric model and PITF, each a network and its recipe."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustag.models.base import BatchEmbeddings, EmbeddingModel, Model
from robustag.plugins import Param, non_negative


class MetricModel(EmbeddingModel):
    """Metric learning over (u, i, t): d = ||e_u − e_t||² + ||e_i − e_t||², score = −d.

    Trained with the triplet hinge [m + d(u, i, t+) − d(u, i, t−)]_+. `norm="clip"` keeps every
    embedding in the ball of radius `max_norm` after each step (CML's clipping); `norm="reg"`
    adds an L2 penalty `reg` on the batch's rows instead.
    """

    name = "metric"
    stackable = True

    def __init__(self, n_users, n_items, n_tags, dim, margin, norm="clip", max_norm=1.0, reg=0.0):
        super().__init__(n_users, n_items, n_tags, dim)
        if norm not in ("clip", "reg", "none"):
            raise ValueError(f"norm must be clip, reg or none, got {norm!r}")
        self.margin, self.norm, self.max_norm, self.reg = margin, norm, max_norm, reg
        for table in self.tables().values():
            nn.init.normal_(table.weight, std=1.0 / dim**0.5)
        self.after_step()

    def score_tags(self, user, item, tags):
        # −(|u|² + |i|² + 2|t|² − 2 (u + i)·t), fused: no (B, K, d) difference tensors to
        # build and back-propagate through (the hot spot of training).
        cross = (tags * (user + item).unsqueeze(1)).sum(-1)  # faster than bmm's tiny batched products on CPU
        const = user.pow(2).sum(1, keepdim=True) + item.pow(2).sum(1, keepdim=True)
        return 2 * cross - 2 * tags.pow(2).sum(-1) - const

    def score_all(self, user, item, tag_table):
        # −(|u|² + |i|² + 2|t|² − 2 (u + i)·t): one matrix product instead of a (B, T, d) difference.
        const = user.pow(2).sum(1, keepdim=True) + item.pow(2).sum(1, keepdim=True)
        return torch.addmm(-const - 2 * tag_table.pow(2).sum(1), user + item, tag_table.T, alpha=2.0)

    def pair_loss(self, positive, negative):
        return F.relu(self.margin - positive + negative)

    def pair_scores(self, embeddings: BatchEmbeddings):
        # Without the −(|u|² + |i|²) every tag shares, and with u + i formed once: half the
        # (B, K, d) passes of two score_tags calls, forward and backward (a 2× faster epoch).
        both = (embeddings.user + embeddings.item).unsqueeze(1)
        score = lambda tags: 2 * (tags * both).sum(-1) - 2 * tags.pow(2).sum(-1)
        return score(embeddings.positive.unsqueeze(1)), score(embeddings.negative)

    def score_directions(self, tag_table):
        both = 2 * tag_table  # s_t = 2(u + i)·t − 2‖t‖² − ‖u‖² − ‖i‖²: one direction for user and item,
        return both, both  # returned as one tensor, so the certificate forms its distances once

    def penalty(self, embeddings: BatchEmbeddings):
        if self.norm != "reg" or self.reg == 0:
            return super().penalty(embeddings)
        return self.reg * mean_square_norm(embeddings)

    @torch.no_grad()
    def after_step(self):
        if self.norm == "clip":
            for table in self.tables().values():
                table.weight.renorm_(2, 0, self.max_norm)


class PITFModel(EmbeddingModel):
    """Pairwise Interaction Tensor Factorization (Rendle & Schmidt-Thieme, WSDM 2010), BPR loss.

    score(u, i, t) = <u, t^U> + <i, t^I>. The tag table holds [t^U | t^I] side by side (2d
    columns), so attacks and defenses see the same three tables as for the metric model.
    """

    name = "pitf"
    stackable = True

    def __init__(self, n_users, n_items, n_tags, dim, reg, init_std=0.01):
        super().__init__(n_users, n_items, n_tags, dim, tag_dim=2 * dim)
        self.reg = reg
        for table in self.tables().values():
            nn.init.normal_(table.weight, std=init_std)

    def score_tags(self, user, item, tags):
        d = self.dim
        return (user.unsqueeze(1) * tags[..., :d]).sum(-1) + (item.unsqueeze(1) * tags[..., d:]).sum(-1)

    def score_all(self, user, item, tag_table):
        d = self.dim
        return user @ tag_table[:, :d].T + item @ tag_table[:, d:].T

    def pair_loss(self, positive, negative):
        return F.softplus(negative - positive)  # −log σ(s+ − s−)

    def score_directions(self, tag_table):
        return tag_table[..., : self.dim], tag_table[..., self.dim :]  # s_t = u·t^U + i·t^I

    def penalty(self, embeddings: BatchEmbeddings):
        return self.reg * mean_square_norm(embeddings)


def mean_square_norm(embeddings: BatchEmbeddings) -> torch.Tensor:
    """Mean over the batch of the squared norms of its rows (negatives summed over K)."""
    total = (
        embeddings.user.pow(2).sum(-1)
        + embeddings.item.pow(2).sum(-1)
        + embeddings.positive.pow(2).sum(-1)
        + embeddings.negative.pow(2).sum(-1).sum(-1)
    )
    return total.mean()


# The recipes hold the defaults (the networks take them from `build`), chosen by mean validation
# NDCG@3 over LastFM and MovieLens 10-core, never on test (benchmarks/sweep_defaults.py).

class Metric(Model):
    name = "metric"
    summary = "the paper's metric model: −(‖u − t‖² + ‖i − t‖²), triplet hinge"
    params = {
        "margin": Param(0.75, "hinge margin", **non_negative()),
        "norm": Param("clip", "clip (unit ball), reg (L2 penalty) or none", choices=("clip", "reg", "none")),
        "reg": Param(0.0, "L2 weight with norm=reg", **non_negative()),
    }
    defaults = dict(dim=128, lr=2e-3, negatives=16)

    def build(self, n_users, n_items, n_tags, dim):
        return MetricModel(n_users, n_items, n_tags, dim=dim, margin=self.margin, norm=self.norm, reg=self.reg)


class PITF(Model):
    name = "pitf"
    summary = "Pairwise Interaction Tensor Factorization: <u, t^U> + <i, t^I>, BPR"
    params = {"reg": Param(1e-5, "L2 weight on the batch's rows", **non_negative())}
    defaults = dict(dim=128, lr=2e-3, negatives=8)

    def build(self, n_users, n_items, n_tags, dim):
        return PITFModel(n_users, n_items, n_tags, dim=dim, reg=self.reg)
