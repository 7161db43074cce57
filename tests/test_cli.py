"""The command line end to end: data stats, train with --json and a TREC run that an
independent computation reads back to the same metrics."""

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robustag.cli import app

REPO = Path(__file__).resolve().parents[1]

runner = CliRunner()


def _invoke(*args):
    result = runner.invoke(app, list(map(str, args)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_data_stats_json_on_real_data(tmp_path, real_data_dir):
    out = tmp_path / "stats.json"
    result = _invoke("data", "stats", "movielens", "--data-dir", real_data_dir, "--json", out)
    stats = json.loads(out.read_text())
    assert stats["dataset"] == "movielens" and stats["p_core"] == 10
    assert stats["raw_assignments"] == 47_957
    assert stats["train_posts"] + stats["valid_posts"] + stats["test_posts"] == stats["posts"]
    assert f"{stats['assignments']:,}" in result.output


def _read_trec(run_path, qrels_path):
    run, qrels = defaultdict(list), defaultdict(set)
    for line in run_path.read_text().splitlines():
        qid, _, doc, rank, score, _ = line.split()
        run[qid].append((int(rank), doc, float(score)))
    for line in qrels_path.read_text().splitlines():
        qid, _, doc, rel = line.split()
        if int(rel) > 0:
            qrels[qid].add(doc)
    return run, qrels


def _f1_ndcg_at(run, qrels, n):
    """Recompute F1@n and NDCG@n from the files alone, sorting by score as trec_eval does."""
    f1s, ndcgs = [], []
    for qid, relevant in qrels.items():
        ranked = [doc for _, doc, _ in sorted(run[qid], key=lambda r: -r[2])][:n]
        hits = [doc in relevant for doc in ranked]
        found = sum(hits)
        p, r = found / n, found / len(relevant)
        f1s.append(0.0 if found == 0 else 2 * p * r / (p + r))
        dcg = sum(h / math.log2(k + 2) for k, h in enumerate(hits))
        idcg = sum(1 / math.log2(k + 2) for k in range(min(n, len(relevant))))
        ndcgs.append(dcg / idcg)
    return sum(f1s) / len(f1s), sum(ndcgs) / len(ndcgs)


@pytest.mark.parametrize("model, extra", [("pop-mix", []), ("metric", ["--epochs", "2", "--dim", "16"])])
def test_train_writes_json_and_a_trec_run_that_reproduces_the_metrics(tmp_path, real_data_dir, model, extra):
    out, run_path = tmp_path / "m.json", tmp_path / "run.txt"
    result = _invoke(
        "train", "--dataset", "movielens", "--model", model, "--data-dir", real_data_dir, "--device", "cpu",
        "--json", out, "--save-run", run_path, *extra,
    )
    payload = json.loads(out.read_text())
    assert payload["model"] == model and payload["seed"] == 0 and payload["config"]["model"] == model
    metrics = payload["metrics"]
    assert set(metrics) >= {f"{m}@{n}" for m in ("p", "r", "f1", "ndcg") for n in (1, 3, 5, 10)}
    assert f"{metrics['f1@3']:.4f}" in result.output
    run, qrels = _read_trec(run_path, tmp_path / "run.txt.qrels")
    assert len(qrels) == payload["split"]["test_posts"]
    for n in (3, 10):
        f1, ndcg = _f1_ndcg_at(run, qrels, n)
        assert f1 == pytest.approx(metrics[f"f1@{n}"], abs=1e-9)
        assert ndcg == pytest.approx(metrics[f"ndcg@{n}"], abs=1e-9)


def test_bad_option_exits_with_a_clear_message(tmp_path):
    result = runner.invoke(app, ["train", "--model", "metric", "--dim", "0", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "dim: invalid value 0" in str(result.exception)  # the library names the parameter
    from robustag.cli import error_text
    assert error_text(result.exception).startswith("--dim: invalid value 0")  # the command line, its flag


def test_attack_command_reports_every_attack_and_the_worst_case(tmp_path, real_data_dir):
    out, saved = tmp_path / "attack.json", tmp_path / "model.pt"
    example = str(REPO / "examples" / "plugins" / "random_noise.py")
    result = _invoke(
        "attack", "-d", "movielens", "--epochs", "3", "--data-dir", real_data_dir, "--device", "cpu",
        "--attacks", "pgd:steps=5,fgsm,random-noise,tag-replace-10", "--eps", "0.05,0.2",
        "--plugin", example, "--json", out, "--save", saved,
    )
    payload = json.loads(out.read_text())
    specs = [row["attack"].split(":")[0] for row in payload["attacks"]]
    assert specs == ["pgd", "pgd", "fgsm", "fgsm", "random-noise", "random-noise", "tag-replace"]
    assert [row["eps"] for row in payload["attacks"]][:2] == [0.05, 0.2]
    assert "relative to the mean L2 norm" in payload["eps_semantics"]
    for row in payload["attacks"]:
        assert row["clean_f1@3"] == payload["clean"]["f1@3"]
        assert row["drop_ndcg@3"] == pytest.approx(row["clean_ndcg@3"] - row["attacked_ndcg@3"])
    worst = {w["eps"]: w for w in payload["worst_case"]}
    assert sorted(worst) == [0.05, 0.2]
    for eps, budget in worst.items():  # per budget: at most the weakest figure of its own attacks
        rows = [r for r in payload["attacks"] if r["eps"] == eps]
        assert len(rows) == 3 and budget["attacks"] == 3
        assert budget["worst_ndcg@3"] <= min(r["attacked_ndcg@3"] for r in rows) + 1e-12
    assert worst[0.05]["worst_ndcg@3"] > worst[0.2]["worst_ndcg@3"]
    assert "worst case ε=0.05" in result.output and "worst case ε=0.2" in result.output
    # The saved model loads back to the same clean metrics, without retraining.
    again = tmp_path / "again.json"
    _invoke("attack", "-d", "movielens", "--data-dir", real_data_dir, "--device", "cpu",
            "--attacks", "fgsm:eps=0.05", "--load", saved, "--json", again)
    assert json.loads(again.read_text())["clean"] == payload["clean"]


def test_attacks_list_shows_surfaces_and_parameters():
    result = _invoke("attacks", "list")
    for name in ("fgsm", "pgd", "mim", "freelb", "tag-replace", "tag-promote", "tag-replace-20"):
        assert name in result.output
    assert "embedding" in result.output and "data" in result.output and "step_size" in result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 4}
    for name, threat in (("pgd", "label-aware"), ("label-free", "label-free"), ("targeted", "targeted"),
                         ("certified", "certified bound"), ("tag-replace-20", "poisoning")):
        assert threat in rows[name], name


def test_load_rejects_a_checkpoint_of_another_dataset(tmp_path, real_data_dir):
    saved = tmp_path / "m.pt"
    _invoke("train", "-d", "movielens", "--epochs", "1", "--dim", "8", "--data-dir", real_data_dir, "--save", saved)
    result = runner.invoke(app, ["attack", "-d", "lastfm", "--data-dir", str(real_data_dir), "--load", str(saved)])
    assert result.exit_code != 0 and "trained on movielens" in str(result.exception)


def test_train_with_a_defense_writes_its_per_epoch_record(tmp_path, real_data_dir):
    out = tmp_path / "spaml.json"
    _invoke("train", "-d", "movielens", "--defense", "spaml-s:attack=pgd,eps=0.1,steps=2", "--epochs", "2",
            "--dim", "16", "--data-dir", real_data_dir, "--json", out)
    payload = json.loads(out.read_text())
    assert payload["defense"]["name"] == "spaml-s" and payload["defense"]["attack"]["steps"] == 2
    for record in payload["history"]:
        assert {"loss", "adv_loss", "admitted", "mean_weight", "lambda", "valid_f1@3", "valid_ndcg@3", "seconds"} <= set(record)
    assert payload["history"][1]["lambda"] == pytest.approx(1.1 * payload["history"][0]["lambda"])


def test_a_bad_defense_stops_before_any_data_is_read(tmp_path):
    # The data directory is empty: the defense error must come first.
    result = runner.invoke(app, ["train", "--defense", "spaml-s:mu=0.5", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "mu=0.5 must be ≥ 1" in str(result.exception)


def test_defenses_list_shows_every_defense():
    result = _invoke("defenses", "list")
    for name in ("plain", "aml", "curriculum", "spaml-h", "spaml-s", "freelb"):
        assert name in result.output
