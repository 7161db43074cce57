"""Models by name: each is a plugin (a `Model` recipe with declared parameters) in the
registry `MODELS`, like attacks and defenses: built-ins here (one module each: the paper's
`metric` and `pitf`, the factorization machine `fm`, the popularity baselines), third-party
ones from the entry-point group `robustag.models` or `--plugin file.py`."""

from __future__ import annotations

from robustag.models.base import Batch, BatchEmbeddings, EmbeddingModel, Model, Replicas, TagRecommender
from robustag.models.embedding import MetricModel, PITFModel
from robustag.models.popularity import PopularityModel
from robustag.plugins import Registry

MODELS = Registry("model", Model, "robustag.models", "robustag.models")


__all__ = [
    "Batch",
    "BatchEmbeddings",
    "EmbeddingModel",
    "MODELS",
    "MetricModel",
    "Model",
    "PITFModel",
    "PopularityModel",
    "Replicas",
    "TagRecommender",
]
