"""Every command end to end on a small real run, and what a hostile user feeds it: each bad
input ends in one clear line naming what is at fault, with a non-zero exit, and nothing already
computed is lost or rewritten. One test (at least) per item of the hostile-input sweep."""

from __future__ import annotations

import shutil
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import refused, run_main
from robustag.errors import RobustagError
from robustag.store import DB_NAME, CellResult, ResultStore, UnitResult

REPO = Path(__file__).resolve().parents[1]


SMALL = """
name = "small"
datasets = ["movielens"]
models = ["metric"]
defenses = ["plain"]
attacks = ["fgsm"]
seeds = 1
[params]
epochs = 2
dim = 16
"""


def write_spec(folder: Path, text: str = SMALL, name: str = "small.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, real_data_dir):
    """A finished small MovieLens run (plain metric model, clean and FGSM), made once."""
    folder = tmp_path_factory.mktemp("finished")
    spec = write_spec(folder)
    run_main("bench", spec, "--out", folder / "run", "--device", "cpu", "--data-dir", real_data_dir)
    return spec, folder / "run"


@pytest.fixture
def run_copy(finished, tmp_path):
    """A private copy of the finished run, for tests that change it."""
    spec, run = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return spec, copy


def cell_rows(run: Path) -> dict:
    with sqlite3.connect(run / DB_NAME) as db:
        cells = {row[0]: row for row in db.execute("SELECT * FROM cells WHERE status='done'")}
        posts = db.execute("SELECT cell, metric, post, value FROM post_metrics ORDER BY 1, 2, 3").fetchall()
        histories = db.execute("SELECT * FROM histories ORDER BY 1, 2").fetchall()
    return {"cells": cells, "posts": posts, "histories": histories}


# -- every command end to end --------------------------------------------------------------------

def test_results_lists_filters_and_exports(finished, robustag, tmp_path):
    _, run = finished
    code, output = robustag("results", run)
    assert code == 0, output
    assert "clean" in output and "fgsm" in output and "nan" not in output.lower()
    csv = tmp_path / "new" / "folder" / "cells.csv"  # parent folders are made
    code, output = robustag("results", run, "--attack", "clean", "--csv", csv)
    assert code == 0, output
    frame = pd.read_csv(csv)
    assert list(frame["attack_name"]) == ["clean"] and frame["ndcg@3"].between(0, 1).all()
    code, output = robustag("results", run, "--status", "failed")
    assert code == 0 and "0 cells" in output


def test_report_and_listings_run_end_to_end(finished, robustag):
    _, run = finished
    code, output = robustag("report", run)
    assert code == 0, output
    assert (run / "report" / "report.html").stat().st_size > 0
    for command in ("attacks", "defenses"):
        code, output = robustag(command, "list")
        assert code == 0 and "pgd" in output if command == "attacks" else "spaml-s" in output


def test_claims_refuses_a_claim_comparing_a_configuration_with_itself(finished, robustag, tmp_path):
    _, run = finished
    claims = tmp_path / "claims.toml"
    claims.write_text('[[claim]]\nid = "fgsm"\nsays = "s"\nbetter = "metric/plain"\nthan = "metric/plain"\n'
                      'attack = "fgsm"\nmetrics = ["ndcg@3", "p@3"]\n')
    refused(robustag("claims", run, claims, "--csv", tmp_path / "verdicts.csv"), "better and than are both")
    assert not (tmp_path / "verdicts.csv").exists()


def test_bench_resumes_and_recomputes_nothing(run_copy, robustag, real_data_dir):
    spec, run = run_copy
    before = cell_rows(run)
    code, output = robustag("bench", spec, "--out", run, "--device", "cpu", "--data-dir", real_data_dir, "--no-report")
    assert code == 0, output
    assert "0 cells to run" in output
    assert cell_rows(run) == before


# -- data loss -----------------------------------------------------------------------------------

def test_added_attack_with_missing_data_refuses_and_keeps_every_done_cell(run_copy, robustag, tmp_path):
    spec, run = run_copy
    before = cell_rows(run)
    refused(robustag("bench", spec, "--out", run, "--attacks", "fgsm,pgd", "--device", "cpu",
                     "--data-dir", tmp_path / "nonexistent"), "file not found")
    assert cell_rows(run) == before


def test_added_attack_evaluates_only_the_new_cells(run_copy, robustag, real_data_dir):
    spec, run = run_copy
    before = cell_rows(run)
    code, output = robustag("bench", spec, "--out", run, "--attacks", "fgsm,pgd", "--device", "cpu",
                            "--data-dir", real_data_dir, "--no-report")
    assert code == 0, output
    assert "1 cells to run" in output
    after = cell_rows(run)
    assert {k: v for k, v in after["cells"].items() if k in before["cells"]} == before["cells"]  # finished times too
    assert len(after["cells"]) == len(before["cells"]) + 1


def test_a_broken_cached_model_is_retrained_and_done_cells_survive(run_copy, robustag, real_data_dir):
    spec, run = run_copy
    before = cell_rows(run)
    (model,) = (run / "models").glob("*.pt")
    model.write_bytes(model.read_bytes()[:100])  # cut short
    code, output = robustag("bench", spec, "--out", run, "--attacks", "fgsm,pgd", "--device", "cpu",
                            "--data-dir", real_data_dir, "--no-report")
    assert code == 0, output
    assert "does not load" in output and "retraining" in output
    after = cell_rows(run)
    assert {k: v for k, v in after["cells"].items() if k in before["cells"]} == before["cells"]
    assert all(row[13] == "done" for row in after["cells"].values())
    assert ResultStore(run).cells(status="done").shape[0] == 3
    assert model.stat().st_size > 1000  # the retrained model replaced the broken file


def test_a_failed_attempt_never_rewrites_a_done_cell(run_copy):
    _, run = run_copy
    store = ResultStore(run)
    done = store.cells(status="done")
    key, unit = done.iloc[0]["key"], done.iloc[0]["unit"]
    before = cell_rows(run)
    store.write_unit(UnitResult(unit, [CellResult(key, "failed", 1.0, error="boom")]), {"device": "cpu", "versions": {},
                                                                                    "git": "x"})
    assert cell_rows(run) == before


def test_a_second_bench_on_the_same_folder_is_refused(run_copy, robustag, real_data_dir):
    spec, run = run_copy
    with ResultStore(run).bench_lock():
        output = refused(robustag("bench", spec, "--out", run, "--attacks", "fgsm,pgd", "--device", "cpu",
                                  "--data-dir", real_data_dir), "another robustag bench", str(run))
    assert "pid" in output
    code, output = robustag("bench", spec, "--out", run, "--device", "cpu", "--data-dir", real_data_dir, "--no-report")
    assert code == 0, output  # the lock is gone with its holder


# -- escapes -------------------------------------------------------------------------------------

def test_a_spec_name_never_leaves_the_runs_folder(tmp_path, robustag, real_data_dir, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spec = write_spec(tmp_path, SMALL.replace('name = "small"', 'name = "../../x"').replace('"fgsm"', ""))
    code, output = robustag("bench", spec, "--device", "cpu", "--data-dir", real_data_dir, "--no-report")
    assert code == 0, output
    assert (work / "runs" / "x" / DB_NAME).is_file()
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "x").exists()


# -- silent success where an error is due ---------------------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["--datasets", "foo"], ["unknown dataset 'foo'"]),
    (["--device", "cuda:7"], ["--device cuda:7"]),
    (["--device", "foo"], ["--device", "expected auto, cpu, cuda or cuda:N"]),
    (["--executor", "foo"], ["--executor 'foo'"]),
    (["--attacks", "pgd:eps=inf"], ["pgd", "eps=inf", "finite"]),
    (["--attacks", "pgd:eps=nan"], ["pgd", "finite"]),
    (["--eps", "inf"], ["--eps"]),
    (["--attacks", ""], ["--attacks", "empty"]),
    (["--datasets", ""], ["--datasets", "empty"]),
    (["--eps", ""], ["--eps"]),
    (["--reference", "foo"], ["--reference 'foo'"]),
])
def test_bench_refuses_bad_options_before_any_work(args, fragments, tmp_path, robustag, real_data_dir):
    out = tmp_path / "run"
    refused(robustag("bench", "--out", out, "--data-dir", real_data_dir, "--seeds", "1", *args), *fragments)
    assert not out.exists()  # nothing left behind


@pytest.mark.parametrize("args", [["--workers", "0"], ["--workers", "-2"], ["--per-gpu", "0"], ["--stack", "0"]])
def test_bench_refuses_worker_counts_below_one(args, tmp_path, robustag):
    code, output = robustag("bench", "--out", tmp_path / "run", *args)
    assert code != 0 and args[0] in output and "Traceback" not in output
    assert not (tmp_path / "run").exists()


def test_bench_refuses_missing_data_before_any_work(tmp_path, robustag):
    refused(robustag("bench", "--out", tmp_path / "run", "--data-dir", tmp_path / "nonexistent"), "file not found")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("axis, fragment", [("datasets", "datasets is empty"), ("defenses", "defenses is empty"),
                                            ("models", "models is empty"), ("eps", "eps")])
def test_a_spec_with_an_empty_axis_is_refused(axis, fragment, tmp_path, robustag):
    spec = write_spec(tmp_path, f'name = "empty"\n{axis} = []\n')
    refused(robustag("bench", spec, "--out", tmp_path / "run"), str(spec), fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("params, fragment", [('epochs = "x"', "[params] epochs: invalid value 'x'"),
                                             ('dim = [16, "a"]', "[params] dim: invalid value 'a'"),
                                             ("lr = true", "[params] lr: invalid value True")])
def test_a_spec_parameter_of_the_wrong_type_is_refused(params, fragment, tmp_path, robustag):
    spec = write_spec(tmp_path, f'name = "typed"\n[params]\n{params}\n')
    refused(robustag("bench", spec, "--out", tmp_path / "run"), fragment)


def test_results_refuses_parquet_without_pyarrow_before_printing(finished, robustag, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    output = refused(robustag("results", finished[1], "--parquet", tmp_path / "x.parquet"), "pip install pyarrow")
    assert "cells" not in output


def test_bench_exits_non_zero_when_a_cell_failed_and_still_summarises(tmp_path, robustag, real_data_dir, plugins):
    spec = write_spec(tmp_path, SMALL.replace('"fgsm"', '"exploding-cell"'))
    code, output = robustag("bench", spec, "--out", tmp_path / "run", "--device", "cpu", "--data-dir", real_data_dir,
                            "--plugin", plugins / "exploding.py", "--no-report")
    assert code == 1
    assert "1 cells failed" in output and "NDCG@3" in output  # the summary stays


def test_results_refuses_an_unknown_status(finished, robustag):
    refused(robustag("results", finished[1], "--status", "bogus"), "--status 'bogus'", "pending, done, failed")


def test_report_refuses_an_unknown_reference_and_stores_nothing(run_copy, robustag):
    _, run = run_copy
    refused(robustag("report", run, "--reference", "foo"), "reference 'foo'", "plain")
    assert ResultStore(run).meta("reference") == "plain"


def test_report_refuses_a_spec_the_run_does_not_hold(finished, robustag):
    _, run = finished
    refused(robustag("report", run, "--specs", "bogus"), "--specs bogus", "no spec of that name")


def test_report_refuses_an_empty_database(tmp_path, robustag):
    (tmp_path / DB_NAME).write_bytes(b"")
    refused(robustag("report", tmp_path), str(tmp_path / DB_NAME), "holds no robustag results")
    assert not (tmp_path / "report").exists()


# -- tracebacks instead of a clear error -----------------------------------------------------------

def test_out_that_is_a_file_or_cannot_be_made_is_refused(tmp_path, robustag, real_data_dir):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    refused(robustag("bench", "--out", a_file, "--data-dir", real_data_dir), str(a_file), "not a folder")
    refused(robustag("bench", "--out", a_file / "below", "--data-dir", real_data_dir), "cannot be written")
    assert a_file.read_text() == "keep me"


def test_a_binary_spec_file_is_refused(tmp_path, robustag):
    spec = tmp_path / "spec.toml"
    spec.write_bytes(bytes(range(256)))
    refused(robustag("bench", spec), str(spec), "not a text file")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("command", ["report", "results", "bench"])
def test_a_damaged_database_is_named_and_never_overwritten(damage, command, run_copy, robustag, real_data_dir):
    spec, run = run_copy
    db = run / DB_NAME
    ResultStore(run).close()  # the last connection folds the write-ahead log into the file
    assert not (run / f"{DB_NAME}-wal").exists()
    data = db.read_bytes()
    db.write_bytes(b"this is not a database at all " * 200 if damage == "garbage" else data[: len(data) // 3])
    damaged = db.read_bytes()
    args = [spec, "--out", run, "--device", "cpu", "--data-dir", real_data_dir] if command == "bench" else [run]
    refused(robustag(command, *args), str(db), "left untouched")
    assert db.read_bytes() == damaged


def test_a_query_built_wrongly_is_a_bug_with_its_traceback_not_a_damaged_database(run_copy):
    _, run = run_copy
    store = ResultStore(run)
    with pytest.raises(pd.errors.DatabaseError, match="Error binding parameter") as raised:
        store.per_post_frame([pd.Series(["a"])], "ndcg@3")  # a key that is not a string: robustag's mistake
    assert not isinstance(raised.value, RobustagError)  # so no "restore your database" advice
    assert len(store.cells(status="done")) > 0  # and the database is as readable as before
    store.close()


def test_train_save_to_a_folder_is_refused_before_training_and_leaves_nothing(tmp_path, robustag, real_data_dir):
    folder = tmp_path / "models"
    folder.mkdir()
    refused(robustag("train", "-d", "movielens", "--epochs", "1", "--dim", "8", "--data-dir", real_data_dir,
                     "--save", folder), "--save", "is a folder")
    assert list(folder.iterdir()) == [] and list(tmp_path.glob("*.tmp")) == []


def test_attack_refuses_a_target_tag_the_data_set_lacks_before_training(tmp_path, robustag, real_data_dir):
    output = refused(robustag("attack", "-d", "movielens", "--data-dir", real_data_dir, "--attacks",
                              "tag-promote:target=99999"), "tag-promote", "target=99999")
    assert "training" not in output


def test_a_truncated_split_cache_is_rebuilt(real_data_dir, tmp_path, monkeypatch):
    from robustag.preprocess import load_split

    monkeypatch.setenv("ROBUSTAG_CACHE_DIR", str(tmp_path / "cache"))
    first = load_split("movielens", real_data_dir)
    (cache,) = (tmp_path / "cache").rglob("*.npz")
    cache.write_bytes(cache.read_bytes()[:200])
    with pytest.warns(RuntimeWarning, match="does not load.*rebuilding"):
        again = load_split("movielens", real_data_dir)
    assert np.array_equal(again.test.tag_indices, first.test.tag_indices)
    assert load_split("movielens", real_data_dir).stats() == first.stats()  # the rebuilt cache loads


# -- misleading messages ---------------------------------------------------------------------------

def test_error_text_is_not_eaten_as_markup(tmp_path, robustag, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    refused(robustag("bench", "--executor", "ray", "--out", tmp_path / "run"), "pip install 'robustag[ray]'")
    assert not (tmp_path / "run").exists()


def test_plugin_files_that_cannot_work_are_refused(tmp_path, robustag):
    refused(robustag("attacks", "list", "--plugin", tmp_path), "--plugin", "is a folder")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    refused(robustag("attacks", "list", "--plugin", empty), "defines no attack, defense or model")
    odd = tmp_path / "odd.py"
    odd.write_text(EXPLODING.replace('name = "exploding-cell"', 'name = "bad<name>,x:y"'))
    refused(robustag("attacks", "list", "--plugin", odd), "bad<name>,x:y", "cannot be written in a spec")


# -- attack output is checked ----------------------------------------------------------------------

EXPLODING = """
from robustag.attack import EmbeddingAttack

class ExplodingCell(EmbeddingAttack):
    name = "exploding-cell"
    summary = "raises"

    def perturb(self, objective, deltas, radius):
        raise RuntimeError("boom")
"""

CHEATING = """
import torch
from robustag.attack import EmbeddingAttack, Param

class Cheating(EmbeddingAttack):
    name = "cheating"
    summary = "returns what it should not"
    params = {**EmbeddingAttack.params, "how": Param("over", "over, nan or missing")}

    def perturb(self, objective, deltas, radius):
        if self.how == "missing":
            return {k: v for k, v in list(deltas.items())[1:]}
        if self.how == "nan":
            return {k: torch.full_like(v, float("nan")) for k, v in deltas.items()}
        return {k: torch.ones_like(v) * 100 * radius[k] for k, v in deltas.items()}
"""


@pytest.mark.parametrize("how, fragment", [("over", "over its l2 budget"), ("nan", "NaN"), ("missing", "expected the keys")])
def test_a_perturbation_out_of_contract_fails_naming_the_plugin(how, fragment, robustag, real_data_dir, plugins):
    refused(robustag("attack", "-d", "movielens", "--epochs", "1", "--dim", "8", "--data-dir", real_data_dir,
                     "--device", "cpu", "--plugin", plugins / "cheating.py", "--attacks", f"cheating:how={how}"),
            "attack cheating", fragment)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    """The test plugins, one file each, written once (a name registers once per process)."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "exploding.py").write_text(EXPLODING)
    (folder / "cheating.py").write_text(CHEATING)
    return folder


# -- labels ----------------------------------------------------------------------------------------

def test_every_configuration_gets_its_own_label(tmp_path, robustag, real_data_dir):
    spec = write_spec(tmp_path, SMALL.replace('["plain"]', '["aml:beta=0.5", "aml:beta=2"]')
                      .replace('["fgsm"]', '["pgd:steps=1", "pgd:steps=10"]').replace("epochs = 2", "epochs = 1"))
    code, output = robustag("bench", spec, "--out", tmp_path / "run", "--device", "cpu", "--data-dir", real_data_dir)
    assert code == 0, output
    assert "aml beta=0.5" in output and "aml beta=2" in output
    table = pd.read_csv(tmp_path / "run" / "report" / "small-robustness.csv")
    attacked = [c for c in table.columns if c.startswith("pgd")]
    assert sorted(attacked) == ["pgd steps=1 ε=0.1", "pgd steps=10 ε=0.1"]


def test_markdown_report_escapes_user_chosen_names(hostile_run):
    markdown = (hostile_run / "report" / "report.md").read_text()
    rendered, _, settings = markdown.partition("## Configuration and environment")
    assert "<script>" not in rendered and "<img" not in rendered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered
    assert settings.count("```") == 2  # the settings stay inside one code block, where nothing renders


def test_attack_checks_fail_loudly_when_the_attack_is_not_converged(robustag, real_data_dir):
    code, output = robustag("attack", "-d", "movielens", "--epochs", "5", "--attacks", "pgd", "--checks", "--device", "cpu",
                            "--data-dir", real_data_dir)
    assert code == 1 and "sanity checks failed: pgd ε=0.1: converged" in output
    assert "beats random noise" in output and "Traceback" not in output
