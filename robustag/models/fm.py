"""A factorization machine over one-hot (user, item, tag) features (Rendle, ICDM 2010), the
classic tag-recommendation baseline PITF was derived from.

    ŷ(u, i, t) = w0 + w_u + w_i + w_t + <v_u, v_i> + <v_u, v_t> + <v_i, v_t>

For ranking the tags of one post, the terms without t are constant, so the score is
w_t + <v_u + v_i, v_t>: unlike PITF, one tag factor serves both interactions, and each tag
has a bias. The tag table holds [v_t | w_t] (d + 1 columns), so attacks and defenses see the
same three tables as for the other learned models (a perturbed tag row moves its bias too).
Trained with BPR, as PITF, with an L2 penalty on the batch's rows.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from robustag.models.base import EmbeddingModel, Model
from robustag.models.embedding import PITF, mean_square_norm
from robustag.plugins import Param, non_negative


class FMModel(EmbeddingModel):
    name = "fm"
    stackable = True

    def __init__(self, n_users, n_items, n_tags, dim, reg, init_std=0.01):
        super().__init__(n_users, n_items, n_tags, dim, tag_dim=dim + 1)
        self.reg = reg
        for table in self.tables().values():
            nn.init.normal_(table.weight, std=init_std)
        nn.init.zeros_(self.tag.weight[:, dim])  # the biases start at zero

    def score_tags(self, user, item, tags):
        d = self.dim
        return ((user + item).unsqueeze(1) * tags[..., :d]).sum(-1) + tags[..., d]

    def score_all(self, user, item, tag_table):
        d = self.dim
        return (user + item) @ tag_table[:, :d].T + tag_table[:, d]

    def pair_loss(self, positive, negative):
        return F.softplus(negative - positive)  # BPR: −log σ(s+ − s−)

    def score_directions(self, tag_table):
        factors = tag_table[..., : self.dim]
        return factors, factors  # s_t = (u + i)·v_t + w_t

    def penalty(self, embeddings):
        return self.reg * mean_square_norm(embeddings)


class FM(Model):
    """The factorization machine's recipe: PITF's shared training options, its own L2 weight
    (both chosen on validation: reports/benchmarks/sweep-fm-*.md)."""

    name = "fm"
    summary = "factorization machine over one-hot user, item, tag: w_t + <v_u + v_i, v_t>, BPR"
    params = {"reg": Param(1e-4, "L2 weight on the batch's rows", **non_negative())}
    defaults = PITF.defaults

    def build(self, n_users, n_items, n_tags, dim):
        return FMModel(n_users, n_items, n_tags, dim=dim, reg=self.reg)
