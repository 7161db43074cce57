"""TREC run and qrels files, so that any ranking-evaluation tool (trec_eval, ranx) can recheck us.

A query is a test post, named `USER|ITEM` by the data set's own labels. The run's scores are
rank-derived (depth − rank + 1), so every tool sees exactly our order, tie-breaks included.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from robustag.preprocess import Posts, TagSplit


def _token(label: str) -> str:
    return re.sub(r"\s+", "_", str(label))


def query_ids(split: TagSplit, posts: Posts) -> list[str]:
    users = split.user_labels[posts.users]
    items = split.item_labels[posts.items]
    return [f"{_token(u)}|{_token(i)}" for u, i in zip(users, items)]


def write_run(path: Path, split: TagSplit, posts: Posts, top_tags: np.ndarray, run_name: str) -> None:
    qids = query_ids(split, posts)
    depth = top_tags.shape[1]
    tag_tokens = np.array([_token(t) for t in split.tag_labels], dtype=object)
    lines = [
        f"{qid} Q0 {tag_tokens[tag]} {rank + 1} {depth - rank} {run_name}"
        for qid, row in zip(qids, top_tags)
        for rank, tag in enumerate(row)
    ]
    Path(path).write_text("\n".join(lines) + "\n")


def write_qrels(path: Path, split: TagSplit, posts: Posts) -> None:
    qids = query_ids(split, posts)
    lines = [
        f"{qid} 0 {_token(split.tag_labels[tag])} 1"
        for k, qid in enumerate(qids)
        for tag in posts.tag_indices[posts.tag_indptr[k] : posts.tag_indptr[k + 1]]
    ]
    Path(path).write_text("\n".join(lines) + "\n")
