"""The complete verifier: equal to brute force on tiny instances, between every sound bound and
every attack on trained models, its witnesses within budget and reproducing their values under
robustag's own ranking, and every infeasibility certificate checked here, apart from the solver."""

import dataclasses

import numpy as np
import pytest
import torch

from robustag.attack import ATTACKS, row_budget
from robustag.certify import certify
from robustag.errors import RobustagError
from robustag.evaluation import metrics_from_hits
from robustag.preprocess import load_split
from robustag.robustness import evade
from robustag.training import default_config, train
from robustag.verify import Geometry, patterns, verify, verify_post

CPU = torch.device("cpu")
CUTS = (1, 3, 5)


def _grid_minimum(scores, directions, true, geometry, points: int) -> dict[str, float]:
    """Every metric's minimum over a dense grid of the perturbation set."""
    axes = [np.linspace(-r, r, points) for r in geometry.scale]
    grid = np.stack(np.meshgrid(*axes), -1).reshape(-1, len(axes))
    inside, start = np.ones(len(grid), dtype=bool), 0
    for stop in geometry.blocks:
        if geometry.norm == "l2":
            inside &= np.linalg.norm(grid[:, start:stop], axis=1) <= geometry.scale[start] * (1 + 1e-12)
        start = stop
    grid = grid[inside]
    order = np.argsort(-(scores[None] + grid @ directions.T), axis=1, kind="stable")[:, :max(CUTS)]
    values = metrics_from_hits(torch.as_tensor(np.isin(order, true)), torch.full((len(grid),), len(true)), CUTS)
    return {key: float(v.min()) for key, v in values.items()}


GEOMETRIES = {"l2 ball": (Geometry("l2", np.full(2, 0.6), (2,)), 2, 401),
              "linf box": (Geometry("linf", np.full(2, 0.6), (2,)), 2, 401),
              "two l2 balls": (Geometry("l2", np.array([0.5, 0.5, 0.8, 0.8]), (2, 4)), 4, 31)}


@pytest.mark.parametrize("name", GEOMETRIES)
def test_the_exact_value_is_the_minimum_of_a_dense_grid(name):
    """Random tiny cases (≤ 8 tags, 1–3 true tags): solved, and equal to the grid's minimum for
    every metric (the grid can only be at or above the exact value; dense, it meets it)."""
    geometry, dim, points = GEOMETRIES[name]
    for rng in map(np.random.default_rng, SEEDS.get(name, (1,))):
        _check_against_the_grid(rng, geometry, dim, points, name)


SEEDS = {"two l2 balls": (1, 3)}  # seed 3's cases reach the two-ball fast path (weighted least distance)


def _check_against_the_grid(rng, geometry, dim, points, name):
    for _ in range(8):
        tags = int(rng.integers(4, 9))
        directions, scores = rng.normal(size=(tags, dim)), rng.normal(size=tags) * 0.5
        true = rng.choice(tags, int(rng.integers(1, 4)), replace=False)
        found, _ = verify_post(scores, directions, true, geometry, CUTS)
        searched = _grid_minimum(scores, directions, true, geometry, points)
        for key, (lower, upper, _) in found.items():
            assert lower == upper, key
            assert lower == pytest.approx(searched[key], abs=1e-9), (name, key)


def test_the_patterns_run_from_the_worst_to_the_best_ranking():
    ordered = patterns(2, 3)
    assert [h for h, _, _ in ordered][0] == 0 and [h for h, _, _ in ordered][-1] == 2
    assert [dcg for _, dcg, _ in ordered] == sorted(dcg for _, dcg, _ in ordered)
    assert ordered[0][2].tolist() == [3, 3]  # no true tag in the top 3: three tags above both


@pytest.fixture(scope="module")
def models(real_data_dir):
    split = load_split("movielens", real_data_dir)
    return split, {name: train(split, default_config(name, epochs=5), CPU).model for name in ("metric", "fm")}


@pytest.mark.parametrize("name", ["metric", "fm"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_exact_lies_between_the_bound_and_every_attack_and_its_witnesses_reproduce(models, name, norm):
    """L∞ (a linear programme per condition, slower) on the first 60 posts."""
    split, trained = models
    model = trained[name]
    if norm == "linf":
        split = dataclasses.replace(split, test=split.test.subset(np.arange(60)))
    found = verify(model, split.test, split.n_tags, 0.1, norm, cutoffs=CUTS)
    assert found.solved_at(3).mean() >= 0.95
    floor = certify(model, split.test, split.n_tags, 0.1, norm, cutoffs=CUTS)
    for key in found.lower:
        assert (found.lower[key] >= floor[key] - 1e-12).all() and (found.lower[key] <= found.upper[key] + 1e-12).all()
    for spec in ("pgd:steps=30", "mim", "label-free", "combinatorial:steps=20"):
        attacked = evade(model, split, ATTACKS.create(spec, eps=0.1, norm=norm), CPU).per_post
        for key in ("ndcg@3", "p@3", "f1@5", "ndcg@5"):
            assert (found.lower[key] <= attacked[key] + 1e-9).all(), (spec, key)
    witness = ATTACKS.create("witness", eps=0.1, norm=norm)
    reproduced = evade(model, split, witness, CPU).per_post["ndcg@3"]  # robustag's own float32 ranking
    assert np.array_equal(reproduced, found.upper["ndcg@3"])
    radius = {t: float(row_budget(model.tables()[t].weight, 0.1, norm)) for t in ("user", "item")}
    for table in ("user", "item"):
        size = np.abs(found.witness[table]).max(1) if norm == "linf" else np.linalg.norm(found.witness[table], axis=1)
        assert (size <= radius[table] * (1 + 1e-9)).all()


def test_every_infeasibility_certificate_holds_when_checked_apart_from_the_solver(models):
    """Farkas: λ ≥ 0 with λ·h > σ_S(Gᵀλ) rules out every x of the set; recomputed here."""
    split, trained = models
    from robustag.verify import _Post, geometry_of

    model = trained["metric"]
    geometry, direction_of, _ = geometry_of(model, 0.1, "l2", "user+item")
    a, b = (t.detach().double() for t in model.score_directions(model.tag.weight.detach()))
    directions = direction_of(a, b).numpy()
    with torch.no_grad():
        scores = model.score(torch.as_tensor(split.test.users), torch.as_tensor(split.test.items)).double().numpy()
    radius = geometry.scale[0]
    checked = 0
    for post in range(40):
        tags = split.test.tag_indices[split.test.tag_indptr[post]:split.test.tag_indptr[post + 1]]
        problem = _Post(scores[post], directions, tags, geometry, 20_000)
        for m in (np.full(len(tags), 3), np.full(len(tags), 1)):
            problem.condition(m)
        for pairs, (reachable, evidence) in problem.known.items():
            ordered = sorted(pairs)
            rows = np.array([directions[j] - directions[t] for j, t in ordered])
            rhs = np.array([scores[post][t] - scores[post][j] for j, t in ordered])
            if reachable:
                assert np.linalg.norm(evidence) <= radius * (1 + 1e-9) and (rows @ evidence >= rhs).all()
            else:
                assert (evidence >= 0).all() and evidence @ rhs > radius * np.linalg.norm(evidence @ rows)
                checked += 1
    assert checked > 0


def test_exact_is_a_bound_kind_and_auto_reaches_it(models):
    import robustag as rt
    from robustag.evaluation import evaluate_model

    split, trained = models
    model = trained["metric"]
    outcome = rt.Trained(model, default_config("metric"), "plain", CPU, evaluate_model(model, split.test, split.n_tags))
    table = rt.attack(outcome, split, ["exact", "auto:steps=10", "auto:steps=10,witness=false",
                                       "auto:steps=10,witness=false,combinatorial=false"], eps=[0.1])
    exact, with_witness, searched, apgd_alone = table["attacked_ndcg@3"]
    assert exact <= with_witness <= searched <= apgd_alone and with_witness == pytest.approx(exact, abs=1e-3)
    assert searched - exact <= 0.25 * (apgd_alone - exact)  # the search closes most of what APGD misses, no verifier used
    (worst,) = table.attrs["worst_case"]
    assert worst["attacks"] == 3  # the exact value is a bound kind, not an attack
    assert ATTACKS.get("exact").threat_label() == "exact worst case"
    with pytest.raises(RobustagError, match="no verifier"):
        ATTACKS.create("exact", targets="user+item+tag")


def test_a_bench_reports_the_exact_value_between_the_bound_and_the_attacks(tmp_path, real_data_dir):
    import pandas as pd

    import robustag as rt

    with rt.bench(datasets=["movielens"], models=["metric"], defenses=["plain"], attacks=["pgd", "certified", "exact"],
                  seeds=1, epochs=2, out=tmp_path / "run", data_dir=real_data_dir, device="cpu") as run:
        cells = run.cells(status="done").set_index("attack_name")
    assert cells.loc["certified", "ndcg@3"] <= cells.loc["exact", "ndcg@3"] <= cells.loc["pgd", "ndcg@3"]
    assert 0.95 <= cells.loc["exact", "solved@3"] <= 1
    row = pd.read_csv(tmp_path / "run" / "report" / "default-worst-case.csv").iloc[0]
    assert row["attacks"] == 1 and "solved)" in row["exact NDCG@3"]
    exact = float(row["exact NDCG@3"].split(" ± ")[0])
    assert float(row["attacks miss"]) == pytest.approx(cells.loc["pgd", "ndcg@3"] - exact, abs=1e-4)
    assert float(row["bound gives away"]) == pytest.approx(exact - cells.loc["certified", "ndcg@3"], abs=1e-4)
    with rt.Run(tmp_path / "run") as finished:
        posts = len(finished.per_post())
    assert float(row["verifier s / 1,000 posts"]) == pytest.approx(cells.loc["exact", "seconds"] * 1000 / posts, abs=1)
    threats = pd.read_csv(tmp_path / "run" / "report" / "default-threats.csv").set_index("attack")
    assert threats.loc["exact ε=0.1", "threat model"] == "exact worst case"


def test_the_two_ball_fast_path_settles_what_the_conic_solver_settles():
    """PITF's product of two balls: the bisected weighted least-distance programmes give a point
    inside both balls or a Farkas certificate, checked here apart from the code that found it,
    and agree with Clarabel wherever Clarabel's own answer checks out."""
    from robustag.verify import _balanced_distance, _product_of_balls

    rng = np.random.default_rng(0)
    settled = 0
    for _ in range(300):
        d, count = int(rng.integers(2, 6)), int(rng.integers(1, 6))
        rows, rhs = rng.normal(size=(count, 2 * d)), rng.normal(size=count) * rng.uniform(0.2, 2.5)
        point, multipliers = _balanced_distance(rows, rhs, (d, 2 * d))
        conic, _ = _product_of_balls(rows, rhs, (d, 2 * d))
        if point is not None:
            assert (rows @ point >= rhs - 1e-9).all()
            assert np.linalg.norm(point[:d]) <= 1 + 1e-12 and np.linalg.norm(point[d:]) <= 1 + 1e-12
        elif multipliers is not None:
            support = np.linalg.norm((multipliers @ rows)[:d]) + np.linalg.norm((multipliers @ rows)[d:])
            assert (multipliers >= 0).all() and multipliers @ rhs > support
            assert conic is None  # the conic solver never finds a point where a certificate rules one out
        settled += point is not None or multipliers is not None
    assert settled == 300
