"""An example third-party model for robustag, in one file: the network and its recipe.

score(u, i, t) = <e_u + e_i, e_t>, trained with BPR and an L2 penalty: the simplest embedding
model, and with embeddings, so every defense and evasion attack applies to it.

    robustag train --plugin examples/plugins/dot_product.py -m dot-product:reg=0.0001
    robustag models list --plugin examples/plugins/dot_product.py
"""

import torch.nn.functional as F
from torch import nn

from robustag.models import EmbeddingModel, Model
from robustag.plugins import Param, non_negative


class DotProductNetwork(EmbeddingModel):
    def __init__(self, n_users, n_items, n_tags, dim, reg):
        super().__init__(n_users, n_items, n_tags, dim)
        self.reg = reg
        for table in self.tables().values():
            nn.init.normal_(table.weight, std=0.01)

    def score_tags(self, user, item, tags):  # (B, d), (B, d), (B, K, d) -> (B, K)
        return ((user + item).unsqueeze(1) * tags).sum(-1)

    def score_all(self, user, item, tag_table):  # (B, d), (B, d), (T, d) -> (B, T)
        return (user + item) @ tag_table.T

    def pair_loss(self, positive, negative):  # (B, 1), (B, K) -> (B, K)
        return F.softplus(negative - positive)

    def penalty(self, embeddings):
        rows = (embeddings.user, embeddings.item, embeddings.positive, embeddings.negative)
        return self.reg * sum(row.pow(2).sum(-1).mean() for row in rows)


class DotProduct(Model):
    name = "dot-product"
    summary = "<e_u + e_i, e_t> with BPR: the simplest embedding model (an example plugin)"
    params = {"reg": Param(1e-5, "L2 weight on the batch's rows", **non_negative())}
    defaults = dict(dim=64, lr=2e-3, negatives=8)

    def build(self, n_users, n_items, n_tags, dim):
        return DotProductNetwork(n_users, n_items, n_tags, dim, self.reg)
