"""Certified bounds: the closed form against brute force on tiny models, and the bound against
every attack on a trained one (it must never exceed an attack's result)."""

import numpy as np
import pytest
import torch

from robustag.attack import ATTACKS, row_budget
from robustag.certify import certify, worst_case_pair_losses
from robustag.errors import RobustagError
from robustag.evaluation import evaluate_model
from robustag.models import Batch
from robustag.models.embedding import MetricModel, PITFModel
from robustag.models.fm import FMModel
from robustag.preprocess import Posts, load_split
from robustag.robustness import evade
from robustag.training import default_config, train

CPU = torch.device("cpu")
NETWORKS = {"metric": lambda: MetricModel(3, 3, 6, dim=4, margin=0.75),
            "pitf": lambda: PITFModel(3, 3, 6, dim=4, reg=1e-5, init_std=0.5),
            "fm": lambda: FMModel(3, 3, 6, dim=4, reg=1e-4, init_std=0.5)}


def _scores(model, du, di, user=0, item=1):
    u, i = model.user.weight[user] + du, model.item.weight[item] + di
    return model.score_all(u.unsqueeze(0), i.unsqueeze(0), model.tag.weight)[0]


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_the_closed_form_is_the_exact_largest_score_difference(name, norm):
    torch.manual_seed(0)
    model = NETWORKS[name]()
    a, b = (d.detach() for d in model.score_directions(model.tag.weight))
    zero = torch.zeros(model.dim)
    r_u, r_i = 0.3, 0.2
    with torch.no_grad():
        clean = _scores(model, zero, zero)
        for t in range(6):
            for j in range(6):
                if j == t:
                    continue
                da, db = a[j] - a[t], b[j] - b[t]
                dual = 1 if norm == "linf" else 2
                bound = clean[j] - clean[t] + r_u * da.norm(p=dual) + r_i * db.norm(p=dual)
                best_u = r_u * (da.sign() if norm == "linf" else da / da.norm())
                best_i = r_i * (db.sign() if norm == "linf" else db / db.norm())
                reached = _scores(model, best_u, best_i)
                assert (reached[j] - reached[t]).item() == pytest.approx(bound.item(), rel=1e-5, abs=1e-6)
                for _ in range(20):  # no perturbation in the budget goes beyond it
                    du, di = torch.randn(model.dim), torch.randn(model.dim)
                    if norm == "linf":
                        du, di = r_u * torch.rand(model.dim).mul(2).sub(1), r_i * torch.rand(model.dim).mul(2).sub(1)
                    else:
                        du, di = r_u * torch.rand(1) * du / du.norm(), r_i * torch.rand(1) * di / di.norm()
                    moved = _scores(model, du, di)
                    assert (moved[j] - moved[t]).item() <= bound.item() + 1e-5


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_the_worst_case_pair_loss_is_reached_and_never_exceeded(name, norm):
    """The closed-form inner maximum of the `certified` defense, against the maximiser it
    names and against random perturbations of the same budget (each pair on its own)."""
    torch.manual_seed(1)
    model = NETWORKS[name]()
    batch = Batch(torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor([3, 5]), torch.tensor([[0, 1, 2], [4, 3, 1]]))
    radius = {"user": torch.tensor(0.3), "item": torch.tensor(0.2)}
    embeddings = model.embed(batch)
    with torch.no_grad():
        worst = worst_case_pair_losses(model, embeddings, radius, norm)
        a, b = model.score_directions(model.tag.weight)
        for row in range(2):
            for k in range(3):
                p, n = batch.positives[row], batch.negatives[row, k]
                da, db = a[n] - a[p], b[n] - b[p]
                du = radius["user"] * (da.sign() if norm == "linf" else da / da.norm())
                di = radius["item"] * (db.sign() if norm == "linf" else db / db.norm())

                def loss(du, di):
                    scores = _scores(model, du, di, batch.users[row], batch.items[row])
                    return model.pair_loss(scores[p].reshape(1, 1), scores[n].reshape(1, 1)).item()

                assert loss(du, di) == pytest.approx(worst[row, k].item(), rel=1e-5, abs=1e-6)
                for _ in range(30):
                    if norm == "linf":
                        ru, ri = (radius[t] * torch.rand(model.dim).mul(2).sub(1) for t in ("user", "item"))
                    else:
                        ru, ri = (radius[t] * torch.rand(1) * v / v.norm()
                                  for t, v in (("user", torch.randn(model.dim)), ("item", torch.randn(model.dim))))
                    assert loss(ru, ri) <= worst[row, k].item() + 1e-6
    assert torch.allclose(worst_case_pair_losses(model, embeddings, {}, norm), model.pair_losses(embeddings))


def test_the_certified_rank_is_never_beaten_by_a_dense_search():
    """A tiny case solved by brute force: 2-d embeddings, the user row moved over a fine grid of
    its disc; no grid point ranks a true tag below its certified worst rank."""
    torch.manual_seed(3)
    model = MetricModel(1, 1, 8, dim=2, margin=0.75)
    posts = Posts(np.array([0]), np.array([0]), np.array([0, 2]), np.array([1, 5]))
    eps = 0.4
    bounds = certify(model, posts, 8, eps, targets="user")
    radius = float(row_budget(model.user.weight, eps, "l2"))
    angles, scales = torch.linspace(0, 2 * np.pi, 361), torch.linspace(0, 1, 21)
    deltas = torch.stack([torch.cos(angles), torch.sin(angles)], 1)[:, None, :] * scales[None, :, None] * radius
    with torch.no_grad():
        scores = model.score_all(model.user.weight[0] + deltas.reshape(-1, 2), model.item.weight[0].expand(len(angles) * 21, 2),
                                 model.tag.weight)
    ranks = 1 + (scores.unsqueeze(2) > scores[:, [1, 5]].unsqueeze(1)).sum(1)  # (grid, 2 true tags)
    hits3 = (ranks <= 3).sum(1).min().item()
    assert bounds["p@3"][0] * 3 <= hits3  # the certificate never promises more hits than the worst grid point


@pytest.mark.parametrize("seed", range(6))
def test_the_joint_bound_is_sound_against_a_dense_search_and_never_below_the_per_tag_one(seed):
    """Tiny random cases (2-d, 8 tags, posts of 2–4 true tags), the user and item rows moved
    together over a fine grid of their disc: no grid point goes below the joint bound, which is
    never below the per-tag bound and, over the cases, strictly above it somewhere."""
    model, tags, joint, single, eps = _tiny_case(seed)
    radius = sum(float(row_budget(getattr(model, t).weight, eps, "l2")) for t in ("user", "item"))
    angles, scales = torch.linspace(0, 2 * np.pi, 721), torch.linspace(0, 1, 41)
    deltas = (torch.stack([torch.cos(angles), torch.sin(angles)], 1)[:, None, :] * scales[None, :, None] * radius).reshape(-1, 2)
    with torch.no_grad():  # the metric model's scores move with δu + δi only: one disc of radius r_u + r_i
        scores = model.score_all(model.user.weight[0] + deltas, model.item.weight[0].expand(len(deltas), 2), model.tag.weight)
    for row, true in enumerate(tags):
        ranks = 1 + (scores.unsqueeze(2) > scores[:, true].unsqueeze(1)).sum(1)  # (grid, true tags)
        discount = torch.where(ranks <= 3, 1 / torch.log2(1.0 + ranks.double()), torch.zeros(()))
        ideal = sum(1 / np.log2(k + 2) for k in range(min(3, len(true))))
        searched = (discount.sum(1) / ideal).min().item()
        assert joint["ndcg@3"][row] <= searched + 1e-9 and single["ndcg@3"][row] <= joint["ndcg@3"][row] + 1e-12


def _tiny_case(seed: int, eps: float = 0.6):
    """A 2-d metric model with 8 tags and three posts of 2, 3 and 4 true tags; both bounds."""
    torch.manual_seed(seed)
    model = MetricModel(1, 1, 8, dim=2, margin=0.75)
    tags = [np.sort(np.random.default_rng(seed + k).choice(8, k, replace=False)) for k in (2, 3, 4)]
    posts = Posts(np.zeros(3, int), np.zeros(3, int), np.cumsum([0, *map(len, tags)]), np.concatenate(tags))
    joint, single = (certify(model, posts, 8, eps, targets="user+item", joint=j) for j in (True, False))
    return model, tags, joint, single, eps


def test_the_joint_bound_gains_over_the_per_tag_one_somewhere():
    gains = [float((case[2]["ndcg@3"] - case[3]["ndcg@3"]).sum()) for case in map(_tiny_case, range(6))]
    assert min(gains) >= 0 and max(gains) > 0


@pytest.fixture(scope="module")
def trained(real_data_dir):
    split = load_split("movielens", real_data_dir)
    return split, {name: train(split, default_config(name, epochs=15), CPU).model for name in ("metric", "pitf", "fm")}


@pytest.mark.parametrize("name", ["metric", "pitf", "fm"])
def test_the_bound_never_exceeds_an_attack_and_is_exact_at_zero(trained, name):
    split, models = trained
    model = models[name]
    clean = evaluate_model(model, split.test, split.n_tags)
    at_zero = certify(model, split.test, split.n_tags, 0.0)
    for key in ("p@3", "ndcg@3", "f1@10", "ndcg@10"):
        assert np.allclose(at_zero[key], clean.per_post[key])
    previous = at_zero["ndcg@3"]
    for eps in (0.05, 0.2):
        bound = certify(model, split.test, split.n_tags, eps)
        assert (bound["ndcg@3"] <= previous + 1e-12).all()  # a larger budget certifies less
        per_tag = certify(model, split.test, split.n_tags, eps, joint=False)
        assert all((bound[key] >= per_tag[key] - 1e-12).all() for key in ("ndcg@3", "p@3", "f1@10"))  # never looser
        previous = bound["ndcg@3"]
        for spec in ("fgsm", "pgd:steps=30", "mim", "label-free", "pgd:norm=linf"):
            attack = ATTACKS.create(spec, eps=eps)
            attacked = evade(model, split, attack, CPU).per_post
            certified = bound if attack.norm == "l2" else certify(model, split.test, split.n_tags, eps, norm="linf")
            for key in ("ndcg@3", "p@3", "f1@5", "ndcg@10"):
                assert (certified[key] <= attacked[key] + 1e-9).all(), (spec, eps, key)


def test_no_certificate_for_tag_perturbations_or_a_model_without_directions(trained):
    split, models = trained
    with pytest.raises(RobustagError, match="only user and item perturbations"):
        certify(models["metric"], split.test, split.n_tags, 0.1, targets="user+item+tag")
    model = models["metric"]
    model.score_directions = lambda tag_table: None
    try:
        with pytest.raises(RobustagError, match="declares no linear score directions"):
            certify(model, split.test, split.n_tags, 0.1)
    finally:
        del model.score_directions


def test_the_certified_bound_is_a_bench_column_below_every_attack(tmp_path, real_data_dir):
    import pandas as pd

    import robustag as rt

    with rt.bench(datasets=["movielens"], models=["metric", "pitf", "pop"], defenses=["plain"],
                  attacks=["pgd", "auto:steps=20,witness=false,combinatorial=false", "certified"], eps=[0.05, 0.1],
                  seeds=1, epochs=5, out=tmp_path / "run", data_dir=real_data_dir, device="cpu") as run:
        cells = run.cells(status="done")
        assert run.failed == 0 and set(cells[cells["model"] == "pop"]["attack_name"]) == {"clean"}
        attacked = cells[cells["attack_name"] != "clean"]
        for (model, eps), group in attacked.groupby(["model", "eps"]):
            by_attack = group.set_index("attack_name")["ndcg@3"]
            assert by_attack["certified"] <= min(by_attack["pgd"], by_attack["auto"]) + 1e-12
            bound = run.per_post("ndcg@3")[group.set_index("attack_name").loc["certified", "key"]]
            for attack in ("pgd", "auto"):
                assert (bound <= run.per_post("ndcg@3")[group.set_index("attack_name").loc[attack, "key"]] + 1e-12).all()
        means = attacked.groupby(["model", "eps", "attack_name"])["ndcg@3"].mean()
    table = pd.read_csv(tmp_path / "run" / "report" / "default-robustness.csv")
    assert {"certified ε=0.05", "certified ε=0.1", "auto ε=0.1"} <= set(table.columns)
    worst = pd.read_csv(tmp_path / "run" / "report" / "default-worst-case.csv")
    assert len(worst) == 4 and set(worst["attacks"]) == {2}  # pgd and auto; the bound is no attack
    for _, row in worst.iterrows():
        model, eps = row["model"].split(" ")[0], float(row["threat"].split()[0][2:])
        value = float(row["worst NDCG@3 per post"].split(" ± ")[0])
        assert value <= min(means[(model, eps, "pgd")], means[(model, eps, "auto")]) + 1e-4
        assert value >= means[(model, eps, "certified")] - 1e-4
        assert 0 <= float(row["broken@3"].rstrip("%")) <= 100


def test_a_bound_is_never_part_of_the_worst_case(trained):
    split, models = trained
    import robustag as rt

    trained_model = rt.Trained(models["metric"], default_config("metric"), "plain", CPU,
                               evaluate_model(models["metric"], split.test, split.n_tags))
    table = rt.attack(trained_model, split, ["fgsm", "certified"], eps=[0.1])
    (worst,) = table.attrs["worst_case"]
    assert worst["attacks"] == 1 and worst["worst_ndcg@3"] == table.loc[0, "attacked_ndcg@3"]
    assert np.isnan(table.loc[1, "overlap@3"])


def test_bench_reports_state_the_threats_check_the_attacks_and_bound_the_worst_case(tmp_path, real_data_dir):
    import pandas as pd

    import robustag as rt

    with rt.bench(datasets=["movielens"], models=["metric"], defenses=["plain"], seeds=2, epochs=5,
                  attacks=["pgd", "auto:steps=20", "certified", "targeted:eps=0.5,steps=10"], out=tmp_path / "run",
                  data_dir=real_data_dir, device="cpu") as run:
        cells = run.cells(status="done").set_index("key")
        checks = run.checks()
    checked = cells.loc[checks["cell"].unique()]
    assert set(checked["attack_name"]) == {"pgd", "auto", "targeted"} and set(checked["seed"]) == {0}  # first seed, no bound
    by_attack = checks.assign(attack=checks["cell"].map(cells["attack_name"])).set_index(["attack", "check"])["passed"]
    assert not by_attack[("pgd", "converged")] and by_attack[("auto", "converged")]  # PGD-10 is not converged
    assert by_attack[("pgd", "certificate below the attack")] and by_attack[("auto", "beats random noise")]
    targeted = checks[checks["cell"].map(cells["attack_name"]) == "targeted"].set_index("check")
    assert targeted["passed"][["monotone in ε", "beats random noise", "large ε breaks the model"]].all()
    assert targeted.loc["monotone in ε", "detail"].startswith("promotion@3 at ε/2, ε, 2ε")  # judged on its own goal
    folder = tmp_path / "run" / "report"
    report = (folder / "report.md").read_text()
    assert "FAILED sanity check: pgd ε=0.1 on movielens metric (d=128) plain: converged" in report
    assert "(`checked_with`): auto (witness=False)." in report  # auto's checks leave its witnesses out, and say so
    threats = pd.read_csv(folder / "default-threats.csv").set_index("attack")
    assert threats.loc["pgd ε=0.1", "threat model"] == "label-aware"
    assert threats.loc["certified ε=0.1", "threat model"] == "certified bound"
    assert threats.loc["targeted ε=0.5", "threat model"] == "targeted"
    budgets = cells[cells["attack_name"] == "pgd"]["budget_user"]
    assert (budgets > 0).all() and f"user {budgets.min():.3g}–{budgets.max():.3g}" in threats.loc["pgd ε=0.1", "absolute budget per row"]
    worst = pd.read_csv(folder / "default-worst-case.csv").set_index("threat")
    row = worst.loc["ε=0.1 l2 user+item"]
    attacked, bound = (float(row[c].split(" ± ")[0]) for c in ("worst NDCG@3 per post", "certified NDCG@3"))
    assert bound <= attacked and float(row["attack gap"]) == pytest.approx(attacked - bound, abs=1e-3)
    assert worst.loc["ε=0.5 l2 user+item", "certified NDCG@3"] == "—"  # no bound was run at that budget
    promotion = pd.read_csv(folder / "default-promotion.csv")
    targeted = cells[cells["attack_name"] == "targeted"]
    assert promotion.loc[0, "promotion@3"].startswith(f"{targeted['promotion@3'].mean():.1%}")
