"""Metric values on hand-computed cases, and chunk-size independence of the full ranking."""

import math

import numpy as np
import pytest
import torch

from robustag.evaluation import evaluate, metrics_from_hits
from robustag.preprocess import Posts


def test_metrics_hand_computed():
    # One post with 2 relevant tags, hits at ranks 1 and 3.
    hits = torch.zeros(1, 10, dtype=torch.bool)
    hits[0, 0] = hits[0, 2] = True
    m = {k: float(v[0]) for k, v in metrics_from_hits(hits, torch.tensor([2])).items()}
    assert m["p@1"] == 1.0 and m["r@1"] == 0.5
    assert m["f1@1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert m["p@3"] == pytest.approx(2 / 3) and m["r@3"] == 1.0
    assert m["f1@3"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert m["ndcg@1"] == 1.0
    dcg3 = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx(dcg3 / idcg)
    assert m["ndcg@10"] == pytest.approx(dcg3 / idcg)
    assert m["p@10"] == pytest.approx(0.2)


def test_no_hit_gives_zero_f1_and_ndcg():
    hits = torch.zeros(1, 10, dtype=torch.bool)
    m = metrics_from_hits(hits, torch.tensor([4]))
    assert float(m["f1@3"][0]) == 0.0 and float(m["ndcg@10"][0]) == 0.0


def test_ideal_dcg_uses_min_of_cutoff_and_relevant():
    # 5 relevant tags, all of the top 3 hit: NDCG@3 is exactly 1.
    hits = torch.zeros(1, 10, dtype=torch.bool)
    hits[0, :3] = True
    m = metrics_from_hits(hits, torch.tensor([5]))
    assert float(m["ndcg@3"][0]) == pytest.approx(1.0)
    assert float(m["r@3"][0]) == pytest.approx(0.6)


def _posts(rng, n_posts, n_tags):
    counts = rng.integers(1, 5, size=n_posts)
    tags = np.concatenate([np.sort(rng.choice(n_tags, size=c, replace=False)) for c in counts])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return Posts(np.arange(n_posts), np.arange(n_posts), indptr, tags)


def test_evaluate_counts_hits_of_a_known_ranking():
    # Scores rank tag 0 first, then 1, ...: a post whose tags are {0, 2} hits ranks 1 and 3.
    posts = Posts(np.array([0]), np.array([0]), np.array([0, 2]), np.array([0, 2]))
    scores = torch.arange(6, 0, -1, dtype=torch.float32).unsqueeze(0)
    result = evaluate(lambda u, i, _: scores.expand(len(u), -1), posts, n_tags=6)
    assert list(result.top_tags[0][:3]) == [0, 1, 2]
    assert result.per_post["p@3"][0] == pytest.approx(2 / 3)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_metrics_do_not_depend_on_chunk_size(chunk_size):
    rng = np.random.default_rng(0)
    n_tags = 30
    posts = _posts(rng, 200, n_tags)
    # Integer scores with many ties: the tie-break must not depend on the chunking either.
    table = torch.from_numpy(rng.integers(0, 4, size=(200, n_tags))).float()
    score_fn = lambda users, items, index: table[index]
    reference = evaluate(score_fn, posts, n_tags, chunk_size=200)
    result = evaluate(score_fn, posts, n_tags, chunk_size=chunk_size)
    for key, values in reference.per_post.items():
        np.testing.assert_array_equal(result.per_post[key], values, err_msg=key)
    np.testing.assert_array_equal(result.top_tags, reference.top_tags)
    # ties go to the lower tag id
    row = table[0].numpy()
    best = np.flatnonzero(row == row.max())
    assert reference.top_tags[0][0] == best.min()
