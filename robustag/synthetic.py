"""Synthetic tag data of any size, for measuring how robustag's costs grow (`benchmarks/scaling.py`).

    synthetic:users=5000,items=20000,tags=1000,posts=100000,seed=0

Users, items and tags have power-law frequencies (Zipf-like: the k-th most active user, most
tagged item and most used tag carry weight ∝ 1/k^alpha), so a few are very frequent and most
are rare, as in real folksonomies. Each post (user, item) gets 1 + Poisson(1) tags; each tag
comes from the user's topic (40%), the item's topic (40%) or the whole vocabulary (20%), each
drawn by popularity, so that a model has something to learn. The same parameters give the
same data; nothing touches the disk. A size left out takes its default (users=1000,
items=2000, tags=500, posts=20000, seed=0); sizes whose generation would need more memory than
the machine has are refused up front.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from robustag.datasets import SYNTHETIC_PREFIX as PREFIX
from robustag.datasets import TagAssignments
from robustag.errors import RobustagError

DEFAULTS = {"users": 1000, "items": 2000, "tags": 500, "posts": 20000, "seed": 0}
ALPHA = 1.0  # the Zipf exponent of user activity, item and tag popularity
SOURCES = (0.4, 0.4, 0.2)  # a tag from the user's topic, the item's topic, the whole vocabulary
TAGS_PER_TOPIC = 50


def is_synthetic(name: str) -> bool:
    return name.startswith(PREFIX)


def synthetic_sizes(name: str) -> dict[str, int]:
    """The parameters of a `synthetic:` name, checked (each a whole number, sizes ≥ 1)."""
    sizes = dict(DEFAULTS)
    text = name[len(PREFIX):].strip()
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in DEFAULTS:
            raise RobustagError(f"dataset {name!r}: expected key=value with keys {', '.join(DEFAULTS)}, got {item!r}")
        try:
            sizes[key.strip()] = int(value)
        except ValueError:
            raise RobustagError(f"dataset {name!r}: {key.strip()}={value!r} is not a whole number") from None
    small = [k for k in ("users", "items", "tags", "posts") if sizes[k] < 1]
    if small:
        raise RobustagError(f"dataset {name!r}: {small[0]}={sizes[small[0]]} must be ≥ 1")
    needed, available = estimated_bytes(sizes), _memory_bytes()
    if available and needed > available:
        raise RobustagError(f"dataset {name!r}: generating it needs about {needed / 2**30:,.1f} GiB, more than this "
                            f"machine's {available / 2**30:,.1f} GiB; choose smaller sizes")
    return sizes


# Bytes per generated assignment (about 2 per post) through generation, the p-core filter and
# the split's arrays: the peak was 217 under tracemalloc for users=5000,items=20000,tags=1000,
# posts=200000 (p_core=1); 400 leaves room for what tracemalloc does not see.
BYTES_PER_ASSIGNMENT = 400


def estimated_bytes(sizes: dict[str, int]) -> int:
    """A generous estimate of the memory generating and splitting these sizes takes."""
    return int(BYTES_PER_ASSIGNMENT * 2 * sizes["posts"] + 64 * (sizes["users"] + sizes["items"] + sizes["tags"]))


def _memory_bytes() -> int:
    """This machine's physical memory (0 where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _zipf(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` draws of 0..n−1 with P(k) ∝ 1/(k+1)^ALPHA, by inverse transform (vectorised)."""
    cdf = np.cumsum(1.0 / np.arange(1, n + 1) ** ALPHA)
    return np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right").clip(max=n - 1)


def synthetic_assignments(name: str) -> TagAssignments:
    sizes = synthetic_sizes(name)
    rng = np.random.default_rng(sizes["seed"])
    n_tags = sizes["tags"]
    topics = max(1, n_tags // TAGS_PER_TOPIC)
    tag_rank = rng.permutation(n_tags)  # tag_rank[k]: the k-th most popular tag
    user_topic = rng.integers(topics, size=sizes["users"])
    item_topic = rng.integers(topics, size=sizes["items"])
    users = rng.permutation(sizes["users"])[_zipf(sizes["users"], sizes["posts"], rng)]
    items = rng.permutation(sizes["items"])[_zipf(sizes["items"], sizes["posts"], rng)]
    per_post = 1 + rng.poisson(1.0, size=sizes["posts"])
    post = np.repeat(np.arange(sizes["posts"]), per_post)
    source = rng.choice(3, size=len(post), p=SOURCES)
    # topics interleave in the popularity order (rank r belongs to topic r mod topics), so each
    # has popular and rare tags; the topic's j-th most popular tag is rank j·topics + topic
    per_topic = -(-n_tags // topics)
    within = _zipf(per_topic, len(post), rng)
    topic = np.where(source == 0, user_topic[users[post]], item_topic[items[post]])
    ranks = np.where(source == 2, _zipf(n_tags, len(post), rng), within * topics + topic)
    ranks = np.where(ranks < n_tags, ranks, topic)  # the last row of topics may be short
    return TagAssignments(users=users[post], items=items[post], tags=tag_rank[ranks],
                          timestamps=post.astype(np.float64), source=Path(name))
