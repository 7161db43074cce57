"""Random tag replacement (the paper's Table 6): a seeded fraction r of the training tag
assignments each get a uniformly drawn *different* tag; the test posts are untouched."""

import numpy as np

from robustag.attack import DataAttack, Param, fraction
from robustag.preprocess import Posts, replace_train

PRESETS = {f"tag-replace-{p}": f"tag-replace:rate={p / 100}" for p in (10, 20, 30)}


class TagReplace(DataAttack):
    name = "tag-replace"
    summary = "replace a fraction `rate` of training tag assignments by a random other tag"
    strength = "rate"
    params = {"rate": Param(0.2, "fraction of training assignments replaced", **fraction())}

    def poison(self, split, seed):
        users, items, tags = split.train.triples()
        new_tags = replace_tags(tags, self.rate, split.n_tags, np.random.default_rng(seed))
        return replace_train(split, Posts.from_triples(users, items, new_tags))


def replace_tags(tags: np.ndarray, rate: float, n_tags: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of `tags` with round(rate · n) entries, drawn without replacement, changed."""
    chosen = rng.choice(len(tags), size=int(round(rate * len(tags))), replace=False)
    new = tags.copy()
    # old + k (mod T), k uniform in 1..T-1: uniform over the other tags, never the same one
    new[chosen] = (tags[chosen] + rng.integers(1, n_tags, size=len(chosen))) % n_tags
    return new
