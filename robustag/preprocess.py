"""The paper's protocol: iterative p-core, leave-last-post-out split, cached on disk.

A post is a (user, item) pair with its set of tags. Each user's last post (by its latest
timestamp; ties broken by a seeded random draw) is the test post; optionally the last
remaining post is cut out again for validation. Users with a single post keep it in
training, so every user with a test post also has training data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robustag.datasets import TagAssignments, file_sha256, load_assignments, resolve_source
from robustag.errors import ParameterError, RobustagError
from robustag.paths import cache_dir
from robustag.synthetic import is_synthetic, synthetic_assignments, synthetic_sizes

# Bump when the processing below changes, so that stale caches are rebuilt.
PROCESSING_VERSION = 1


@dataclass(frozen=True)
class SplitOptions:
    p_core: int = 10
    seed: int = 0
    validation: bool = True
    # each user's last k posts are test posts (k = 1: the paper's leave-last-post-out); more test
    # posts per user narrow every method-level interval, at the cost of training data
    test_posts: int = 1

    def describe(self) -> dict:
        """What keys a split (caches, unit keys, checkpoints): its options, `test_posts` only
        where it is not the paper's 1, so keys from before the option stay as they were."""
        described = asdict(self)
        if self.test_posts == 1:
            del described["test_posts"]
        return described


@dataclass
class Posts:
    """Posts in CSR form: post k has tags tag_indices[tag_indptr[k]:tag_indptr[k+1]]."""

    users: np.ndarray
    items: np.ndarray
    tag_indptr: np.ndarray
    tag_indices: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_assignments(self) -> int:
        return len(self.tag_indices)

    def tag_counts(self) -> np.ndarray:
        return np.diff(self.tag_indptr)

    def triples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The posts' tag assignments as parallel (user, item, tag) arrays."""
        counts = self.tag_counts()
        return np.repeat(self.users, counts), np.repeat(self.items, counts), self.tag_indices

    def subset(self, index: np.ndarray) -> "Posts":
        counts = self.tag_counts()[index]
        starts = self.tag_indptr[index]
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        gather = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
        return Posts(self.users[index], self.items[index], indptr, self.tag_indices[gather])

    @staticmethod
    def from_triples(users: np.ndarray, items: np.ndarray, tags: np.ndarray) -> "Posts":
        """Group triples into posts, ordered by (user, item), tags ascending within a post."""
        order = np.lexsort((tags, items, users))
        users, items, tags = users[order], items[order], tags[order]
        new_post = np.ones(len(users), dtype=bool)
        new_post[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        starts = np.flatnonzero(new_post)
        indptr = np.append(starts, len(users)).astype(np.int64)
        return Posts(users[starts], items[starts], indptr, tags.astype(np.int64))


@dataclass
class TagSplit:
    """A processed data set: dense ids, training posts, validation and test posts."""

    name: str
    user_labels: np.ndarray
    item_labels: np.ndarray
    tag_labels: np.ndarray
    train: Posts
    valid: Posts
    test: Posts
    raw_assignments: int
    options: SplitOptions
    added_users: int = 0  # users a poisoning attack appended (the last rows of user_labels)

    @property
    def n_users(self) -> int:
        return len(self.user_labels)

    @property
    def n_items(self) -> int:
        return len(self.item_labels)

    @property
    def n_tags(self) -> int:
        return len(self.tag_labels)

    def stats(self) -> dict[str, int]:
        """The paper's Table 1 figures, plus the validation posts."""
        assignments = self.train.n_assignments + self.valid.n_assignments + self.test.n_assignments
        return {
            "users": self.n_users,
            "items": self.n_items,
            "tags": self.n_tags,
            "assignments": assignments,
            "posts": len(self.train) + len(self.valid) + len(self.test),
            "train_posts": len(self.train),
            "valid_posts": len(self.valid),
            "test_posts": len(self.test),
            "train_assignments": self.train.n_assignments,
            "raw_assignments": self.raw_assignments,
            "p_core": self.options.p_core,
        }


def p_core(users: np.ndarray, items: np.ndarray, tags: np.ndarray, p: int) -> np.ndarray:
    """Mask of the assignments kept by the iterative p-core: every user, item and tag in ≥ p of them."""
    keep = np.ones(len(users), dtype=bool)
    if p <= 1:
        return keep
    while True:
        ok = keep.copy()
        for ids in (users, items, tags):
            counts = np.bincount(ids[keep], minlength=ids.max() + 1 if len(ids) else 0)
            ok &= counts[ids] >= p
        if np.array_equal(ok, keep):
            return keep
        keep = ok


def split_posts(posts_time: np.ndarray, posts: Posts, seed: int, validation: bool,
                test_posts: int = 1) -> tuple[np.ndarray, ...]:
    """Role of each post: 0 train, 1 validation, 2 test (each user's last `test_posts` posts,
    as long as the user keeps another post for training), then validation (the last post left
    of each user with ≥ 2 left)."""
    rng = np.random.default_rng(seed)
    tie_break = rng.random(len(posts))
    order = np.lexsort((tie_break, posts_time, posts.users))
    role = np.zeros(len(posts), dtype=np.int8)
    for _ in range(test_posts):
        _assign_last(order[role[order] == 0], posts.users, role, 2)
    if validation:
        remaining = order[role[order] == 0]
        _assign_last(remaining, posts.users, role, 1)
    return role


def _assign_last(order: np.ndarray, users: np.ndarray, role: np.ndarray, value: int) -> None:
    """Give `value` to each user's last post in `order` when the user has another post left there."""
    ordered_users = users[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ordered_users[1:] != ordered_users[:-1]
    first = np.ones(len(order), dtype=bool)
    first[1:] = ordered_users[1:] != ordered_users[:-1]
    role[order[last & ~first]] = value


def build_split(assignments: TagAssignments, name: str, options: SplitOptions) -> TagSplit:
    user_codes, user_uniques = pd.factorize(assignments.users)
    item_codes, item_uniques = pd.factorize(assignments.items)
    tag_codes, tag_uniques = pd.factorize(assignments.tags)
    frame = pd.DataFrame({"u": user_codes, "i": item_codes, "t": tag_codes, "ts": assignments.timestamps})
    frame = frame.drop_duplicates(subset=["u", "i", "t"], keep="first")
    kept = frame[p_core(frame.u.to_numpy(), frame.i.to_numpy(), frame.t.to_numpy(), options.p_core)]
    if kept.empty:
        raise RobustagError(
            f"dataset {name!r}: nothing is left after the {options.p_core}-core filter "
            f"({len(frame)} assignments before); lower --p-core"
        )
    users, user_labels = _relabel(kept.u.to_numpy(), user_uniques)
    items, item_labels = _relabel(kept.i.to_numpy(), item_uniques)
    tags, tag_labels = _relabel(kept.t.to_numpy(), tag_uniques)
    posts = Posts.from_triples(users, items, tags)
    post_time = _post_times(users, items, kept.ts.to_numpy(), posts)
    role = split_posts(post_time, posts, options.seed, options.validation, options.test_posts)
    return TagSplit(
        name=name,
        user_labels=user_labels,
        item_labels=item_labels,
        tag_labels=tag_labels,
        train=posts.subset(np.flatnonzero(role == 0)),
        valid=posts.subset(np.flatnonzero(role == 1)),
        test=posts.subset(np.flatnonzero(role == 2)),
        raw_assignments=len(assignments),
        options=options,
    )


def _relabel(codes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids 0..n-1 for the codes that survived the filter, with each id's original label."""
    unique, dense = np.unique(codes, return_inverse=True)
    return dense.astype(np.int64), np.asarray(labels)[unique].astype(str)


def _post_times(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, posts: Posts) -> np.ndarray:
    """A post's time is its latest assignment's timestamp (the user's last interaction with it)."""
    frame = pd.DataFrame({"u": users, "i": items, "ts": timestamps})
    latest = frame.groupby(["u", "i"], sort=True).ts.max()
    return latest.to_numpy()  # groupby sorts by (u, i): the same order as posts


def load_split(
    name: str, data_dir: Path, options: SplitOptions = SplitOptions(), use_cache: bool = True
) -> TagSplit:
    """Load a data set and split it, from the on-disk cache when the source and options are unchanged."""
    source = resolve_source(name)
    if options.p_core < 1:
        raise ParameterError("p_core", "must be ≥ 1", options.p_core)
    if is_synthetic(name):
        synthetic_sizes(name)  # bad parameters fail here, before any work
        fingerprint, read = hashlib.sha256(name.encode()).hexdigest(), lambda: synthetic_assignments(name)
    else:
        path = source.path(data_dir)
        if not path.is_file():
            load_assignments(source, data_dir)  # raises the clear "file not found" error
        fingerprint, read = file_sha256(path), lambda: load_assignments(source, data_dir)
    cache_file = _cache_path(name, fingerprint, source.normalise_tags, options)
    if use_cache and cache_file.is_file():
        try:
            return _read_cache(cache_file, name, options)
        except Exception as error:  # cut short, damaged, an older layout: a cache is rebuilt, never trusted
            warnings.warn(f"split cache {cache_file} does not load ({type(error).__name__}: {error}); rebuilding it",
                          RuntimeWarning, stacklevel=2)
            cache_file.unlink(missing_ok=True)
    split = build_split(read(), name, options)
    if use_cache:
        _write_cache(cache_file, split)
    return split


def _cache_path(name: str, fingerprint: str, normalise_tags: bool, options: SplitOptions) -> Path:
    key = json.dumps(
        {
            "source_sha256": fingerprint,
            "normalise_tags": normalise_tags,
            "options": options.describe(),
            "version": PROCESSING_VERSION,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe_name = "".join(c if c.isalnum() else "_" for c in Path(name).name)
    return cache_dir() / "splits" / f"{safe_name}-{digest}.npz"


def _write_cache(cache_file: Path, split: TagSplit) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"raw_assignments": np.array(split.raw_assignments)}
    for label in ("user_labels", "item_labels", "tag_labels"):
        arrays[label] = getattr(split, label).astype(str)
    for part in ("train", "valid", "test"):
        for field, value in asdict_posts(getattr(split, part)).items():
            arrays[f"{part}.{field}"] = value
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cache_file)  # atomic: a reader never sees half a cache file


def asdict_posts(posts: Posts) -> dict[str, np.ndarray]:
    return {
        "users": posts.users,
        "items": posts.items,
        "tag_indptr": posts.tag_indptr,
        "tag_indices": posts.tag_indices,
    }


def _read_cache(cache_file: Path, name: str, options: SplitOptions) -> TagSplit:
    with np.load(cache_file, allow_pickle=False) as data:
        parts = {
            part: Posts(*(data[f"{part}.{field}"] for field in ("users", "items", "tag_indptr", "tag_indices")))
            for part in ("train", "valid", "test")
        }
        return TagSplit(
            name=name,
            user_labels=data["user_labels"],
            item_labels=data["item_labels"],
            tag_labels=data["tag_labels"],
            raw_assignments=int(data["raw_assignments"]),
            options=options,
            **parts,
        )


def replace_train(split: TagSplit, train: Posts, user_labels: np.ndarray | None = None) -> TagSplit:
    """The same split with other training posts (poisoning); validation and test are untouched.
    `user_labels` longer than the split's appends users (fake ones), counted in `added_users`."""
    labels = split.user_labels if user_labels is None else np.asarray(user_labels)
    return dataclasses.replace(split, train=train, user_labels=labels,
                               added_users=split.added_users + len(labels) - len(split.user_labels))
