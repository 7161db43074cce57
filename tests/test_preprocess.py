"""The paper's protocol: p-core and split invariants, on random data and on real files."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustag.datasets import TagAssignments
from robustag.preprocess import Posts, SplitOptions, build_split, load_split, p_core


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=20, max_value=400),
)
def test_p_core_every_entity_has_p_assignments_and_is_maximal(seed, p, n):
    rng = np.random.default_rng(seed)
    users, items, tags = (rng.integers(0, k, size=n) for k in (15, 25, 12))
    keep = p_core(users, items, tags, p)
    for ids in (users, items, tags):
        counts = np.bincount(ids[keep])
        assert (counts[counts > 0] >= p).all()
    # Maximal: rerunning the filter on what is kept removes nothing more.
    again = p_core(users[keep], items[keep], tags[keep], p)
    assert again.all()


def _assignments(rng, n):
    return TagAssignments(
        users=rng.integers(0, 20, size=n).astype(str),
        items=rng.integers(0, 30, size=n).astype(str),
        tags=rng.integers(0, 15, size=n).astype(str),
        timestamps=rng.integers(0, 5, size=n).astype(float),  # many ties
        source=None,
    )


def _keys(posts: Posts) -> set:
    return set(zip(posts.users.tolist(), posts.items.tolist()))


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.booleans())
def test_split_invariants(seed, validation):
    rng = np.random.default_rng(seed)
    raw = _assignments(rng, 1500)
    split = build_split(raw, "random", SplitOptions(p_core=3, seed=seed, validation=validation))
    train, valid, test = split.train, split.valid, split.test
    # one test post per user at most, and only for users with another post left in training
    assert len(np.unique(test.users)) == len(test)
    assert set(test.users.tolist()) <= set(train.users.tolist())
    if validation:
        assert len(np.unique(valid.users)) == len(valid)
        assert set(valid.users.tolist()) <= set(train.users.tolist())
    else:
        assert len(valid) == 0
    # no post is in two parts, nothing is lost
    assert not (_keys(train) & _keys(test)) and not (_keys(train) & _keys(valid)) and not (_keys(valid) & _keys(test))
    kept = np.unique(np.stack([raw.users, raw.items, raw.tags]), axis=1).shape[1]
    total = train.n_assignments + valid.n_assignments + test.n_assignments
    assert total == split.stats()["assignments"]
    assert total <= kept


def test_test_post_is_the_users_latest():
    rows = [("a", "x", "t1", 1.0), ("a", "y", "t1", 5.0), ("a", "z", "t2", 3.0), ("b", "x", "t2", 2.0), ("b", "y", "t1", 1.0)]
    raw = TagAssignments(*(np.array(c) for c in zip(*rows)), source=None)
    split = build_split(raw, "tiny", SplitOptions(p_core=1, validation=True))
    test = {(split.user_labels[u], split.item_labels[i]) for u, i in zip(split.test.users, split.test.items)}
    valid = {(split.user_labels[u], split.item_labels[i]) for u, i in zip(split.valid.users, split.valid.items)}
    assert test == {("a", "y"), ("b", "x")}
    assert valid == {("a", "z")}  # b has a single post left: it stays in training


def test_ties_are_broken_by_the_seed_and_reproducibly():
    rows = [("a", f"i{k}", "t", 0.0) for k in range(8)] + [("b", "i0", "t", 0.0), ("b", "i1", "t", 0.0)]
    raw = TagAssignments(*(np.array(c) for c in zip(*rows)), source=None)
    chosen = {
        seed: build_split(raw, "ties", SplitOptions(p_core=1, seed=seed, validation=False)).test.items.tolist()
        for seed in range(6)
    }
    again = build_split(raw, "ties", SplitOptions(p_core=1, seed=3, validation=False)).test.items.tolist()
    assert again == chosen[3]
    assert len({tuple(v) for v in chosen.values()}) > 1


def test_split_cache_is_rebuilt_when_the_source_changes(tmp_path, planted_path):
    copy = tmp_path / "data.tsv"
    copy.write_text(planted_path.read_text())
    first = load_split(f"tsv:{copy}", tmp_path, SplitOptions(p_core=2))
    assert load_split(f"tsv:{copy}", tmp_path, SplitOptions(p_core=2)).stats() == first.stats()
    lines = copy.read_text().splitlines()
    copy.write_text("\n".join(lines[:-40]) + "\n")  # drop some assignments
    changed = load_split(f"tsv:{copy}", tmp_path, SplitOptions(p_core=2))
    assert changed.stats()["raw_assignments"] == first.stats()["raw_assignments"] - 40
    other = load_split(f"tsv:{copy}", tmp_path, SplitOptions(p_core=3))
    assert other.stats()["p_core"] == 3


# The real files: counts equal the statistics in each PROVENANCE.md.
REAL = {
    "lastfm": dict(rows=186_479, users=1_892),
    "movielens": dict(rows=47_957, users=2_113),
    "ml10m": dict(rows=95_580, users=4_009, items=7_601),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_loaders_match_provenance(name, real_data_dir):
    from robustag.datasets import load_assignments, resolve_source

    raw = load_assignments(resolve_source(name), real_data_dir)
    expected = REAL[name]
    assert len(raw) + raw.dropped_blank_tags == expected["rows"]
    assert len(np.unique(raw.users)) == expected["users"]
    if "items" in expected:
        assert len(np.unique(raw.items)) == expected["items"]


@pytest.mark.parametrize("name", ["lastfm", "movielens"])
def test_real_ten_core_split(name, real_data_dir):
    split = load_split(name, real_data_dir)
    stats = split.stats()
    users, items, tags = (np.concatenate(a) for a in zip(split.train.triples(), split.valid.triples(), split.test.triples()))
    for ids in (users, items, tags):
        assert np.bincount(ids).min() >= 10
    assert stats["test_posts"] == len(np.unique(split.test.users)) > 0.9 * stats["users"]
    assert stats["assignments"] == len(users)


def test_synthetic_data_is_reproducible_power_law_and_checked(tmp_path):
    from robustag.errors import RobustagError
    from robustag.preprocess import SplitOptions, load_split
    from robustag.synthetic import synthetic_assignments

    name = "synthetic:users=400,items=800,tags=200,posts=8000,seed=3"
    first, second = synthetic_assignments(name), synthetic_assignments(name)
    assert all(np.array_equal(getattr(first, f), getattr(second, f)) for f in ("users", "items", "tags"))
    assert not np.array_equal(first.tags, synthetic_assignments(name.replace("seed=3", "seed=4")).tags)
    activity = np.sort(np.bincount(first.users))[::-1]
    assert activity[0] > 20 * np.median(activity)  # a few very active users, most rare: a power law
    split = load_split(name, tmp_path, SplitOptions(p_core=5))
    assert 0 < split.n_tags <= 200 and len(split.test) > 0
    for bad, message in (("synthetic:users=0", "users=0 must be ≥ 1"), ("synthetic:posts=many", "is not a whole number"),
                         ("synthetic:colour=1", "expected key=value with keys users, items, tags, posts, seed")):
        with pytest.raises(RobustagError, match=message):
            load_split(bad, tmp_path)
