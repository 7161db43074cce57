"""What every tag recommender offers, and what embedding models add for attacks and defenses.

A recommender scores a batch of posts (user, item) against all tags at once:
`score(users, items) -> (B, n_tags)`. Embedding models also expose their three embedding
tables and compute scores from (possibly perturbed) embeddings, so that an attack or a
defense perturbs rows of those tables without knowing the model's formula.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustag.plugins import Plugin


@dataclass
class Batch:
    """Training quadruples: each (user, item, positive tag) with K sampled negative tags."""

    users: torch.Tensor  # (B,)
    items: torch.Tensor  # (B,)
    positives: torch.Tensor  # (B,)
    negatives: torch.Tensor  # (B, K)


@dataclass
class BatchEmbeddings:
    """The embedding rows a batch looks up; attacks add perturbations of the same shapes."""

    user: torch.Tensor  # (B, d)
    item: torch.Tensor  # (B, d)
    positive: torch.Tensor  # (B, d_tag)
    negative: torch.Tensor  # (B, K, d_tag)

    def perturbed(self, delta: "BatchEmbeddings") -> "BatchEmbeddings":
        return BatchEmbeddings(
            self.user + delta.user,
            self.item + delta.item,
            self.positive + delta.positive,
            self.negative + delta.negative,
        )


@dataclass
class Replicas:
    """The layout of a stacked model (`robustag.stacking`): its tables hold `count` models'
    rows one after another (model m's are rows [m·n, (m + 1)·n) of a table of n rows per
    model), and the batch being trained holds `rows` rows of each model in `active`, in that order."""

    count: int
    active: torch.Tensor  # (A,) the indices of the models in the batch
    rows: int


class TagRecommender(ABC):
    """Anything that ranks all tags for a batch of posts."""

    name: str = "recommender"
    learned: bool = False

    @abstractmethod
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores (B, n_tags) for B posts; higher ranks first."""


class EmbeddingModel(nn.Module, TagRecommender):
    """A learned model over user, item and tag embedding tables.

    Subclasses define the score of tags given embeddings and the loss of a (positive,
    negative) score pair; everything else (training, attacks, defenses) goes through here.
    """

    learned = True
    # May several models of this class train as one stack (`robustag.stacking`)? Only if every
    # formula works row by row on a batch (no statistic over the batch or a whole table) and the
    # penalty is a mean over the batch's rows: then a batch of several models' rows gives each
    # model the gradient it would get alone.
    stackable: ClassVar[bool] = False
    replicas: Replicas | None = None  # set while a stack trains

    def __init__(self, n_users: int, n_items: int, n_tags: int, dim: int, tag_dim: int | None = None):
        super().__init__()
        self.dim = dim
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.tag = nn.Embedding(n_tags, tag_dim or dim)

    def tables(self) -> dict[str, nn.Embedding]:
        return {"user": self.user, "item": self.item, "tag": self.tag}

    def embed(self, batch: Batch) -> BatchEmbeddings:
        return BatchEmbeddings(
            self.user(batch.users), self.item(batch.items), self.tag(batch.positives), self.tag(batch.negatives)
        )

    @abstractmethod
    def score_tags(self, user: torch.Tensor, item: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """Scores of given tag embeddings: user, item (B, d); tags (B, K, d_tag) -> (B, K)."""

    @abstractmethod
    def score_all(self, user: torch.Tensor, item: torch.Tensor, tag_table: torch.Tensor) -> torch.Tensor:
        """Scores of every tag in one matrix product: user, item (B, d); tag_table (T, d_tag) -> (B, T)."""

    @abstractmethod
    def pair_loss(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Per-pair loss from positive scores (B, 1) and negative scores (B, K) -> (B, K)."""

    def score_directions(self, tag_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(a, b), each (..., d) for tag rows (..., d_tag): a model whose score is affine in the user and item rows,
        s_t(u + δu, i + δi) = s_t(u, i) + δu·a_t + δi·b_t + (terms the same for every tag),
        declares them, and gets certified bounds (`robustag.certify`); None: no certificate. Where
        a and b are the same (metric, FM), return one tensor twice: distances are then formed once."""
        return None

    def penalty(self, embeddings: BatchEmbeddings) -> torch.Tensor:
        """Regularisation of the batch's rows; none by default."""
        return embeddings.user.new_zeros(())

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after each optimiser step (e.g. to project embeddings back into the unit ball)."""

    def pair_scores(self, embeddings: BatchEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of the positive (B, 1) and of the negatives (B, K) of a batch, up to a term
        shared by every tag of a row (which the pair loss of s+ − s− never sees); a model may
        leave that term out to save work."""
        positive = self.score_tags(embeddings.user, embeddings.item, embeddings.positive.unsqueeze(1))
        return positive, self.score_tags(embeddings.user, embeddings.item, embeddings.negative)

    def pair_losses(self, embeddings: BatchEmbeddings) -> torch.Tensor:
        """The (B, K) per-quadruple losses of a batch's (possibly perturbed) embeddings."""
        return self.pair_loss(*self.pair_scores(embeddings))

    def clean_loss(self, embeddings: BatchEmbeddings) -> torch.Tensor:
        """The model's own loss of a batch's embeddings: mean pair loss plus its penalty."""
        return self.pair_losses(embeddings).mean() + self.penalty(embeddings)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        return self.clean_loss(self.embed(batch))

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.score_all(self.user(users), self.item(items), self.tag.weight)


class Model(Plugin):
    """Base of model plugins: a tag recommender by name, with its own declared parameters.

    The class is the recipe, not the network: `build` makes the network of a learned model
    (an `EmbeddingModel`, trained by robustag), `fit` makes a recommender that needs no
    training. What a model declares decides what applies to it:

    - `learned`: trained by gradient steps on the training triples, so defenses apply;
    - `embeddings`: has user, item and tag embedding tables, so evasion attacks apply;
    - `defaults`: the shared training options (dim, lr, negatives, ...) tuned for it on validation.
    """

    learned: ClassVar[bool] = True
    embeddings: ClassVar[bool] = True
    defaults: ClassVar[dict] = {}

    def build(self, n_users: int, n_items: int, n_tags: int, dim: int) -> EmbeddingModel:
        """A learned model's network, initialised (torch is seeded before the call)."""
        raise NotImplementedError

    def fit(self, split, device: torch.device) -> tuple[TagRecommender, list[dict]]:
        """A model that needs no training, fitted to `split` (and its history, if it tuned
        anything on validation: a tuned parameter is set on `self`, so the stored
        configuration says what was chosen)."""
        raise NotImplementedError
