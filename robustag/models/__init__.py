"""Models by name: each is a plugin (a `Model` recipe with declared parameters) in the
registry `MODELS`, like attacks and defenses: built-ins here (one module each: the paper's
`metric` and `pitf`, the factorization machine `fm`, the popularity baselines), third-party
ones from the entry-point group `robustag.models` or `--plugin file.py`."""

from __future__ import annotations

from robustag.models.base import Batch, BatchEmbeddings, EmbeddingModel, Model, TagRecommender
from robustag.models.embedding import MetricModel, PITFModel
from robustag.models.popularity import PopularityModel
from robustag.plugins import PluginError, Registry

MODELS = Registry("model", Model, "robustag.models", "robustag.models")


def declares(name: str, attribute: str, unknown: bool = True) -> bool:
    """What model `name` declares (`learned`, `embeddings`); `unknown` for a model whose plugin
    is not loaded here (a report read without the plugin file)."""
    try:
        return getattr(MODELS.get(name), attribute)
    except PluginError:
        return unknown


__all__ = [
    "Batch",
    "BatchEmbeddings",
    "EmbeddingModel",
    "MODELS",
    "MetricModel",
    "Model",
    "PITFModel",
    "PopularityModel",
    "TagRecommender",
    "declares",
]
