"""Models by name: the learned `metric` and `pitf`, and the popularity baselines."""

from __future__ import annotations

from robustag.models.base import Batch, BatchEmbeddings, EmbeddingModel, TagRecommender
from robustag.models.embedding import MetricModel, PITFModel
from robustag.models.popularity import PopularityModel, popularity_model

LEARNED_MODELS = {"metric": MetricModel, "pitf": PITFModel}
POPULARITY_MODELS = ("pop", "pop-user", "pop-item", "pop-mix")
MODEL_NAMES = (*LEARNED_MODELS, *POPULARITY_MODELS)

__all__ = [
    "Batch",
    "BatchEmbeddings",
    "EmbeddingModel",
    "LEARNED_MODELS",
    "MODEL_NAMES",
    "MetricModel",
    "PITFModel",
    "POPULARITY_MODELS",
    "PopularityModel",
    "TagRecommender",
    "popularity_model",
]
