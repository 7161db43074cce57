"""robustag bench: planning, resuming after a kill, failure isolation, statistics, reports,
and executors that agree."""

import dataclasses
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import robustag.worker as worker
from robustag.bench import RunSettings, run_units
from robustag.planning import pending_units, plan
from robustag.plugins import spec_values
from robustag.display import defense_labels
from robustag.report import in_spec_order, mixed_device_warnings, write_report
from robustag.spec import BenchSpec, expand_sweep, load_specs, merge_described
from robustag.stats import aggregate, compare_to_reference, done_cells
from robustag.store import ResultStore

REPO = Path(__file__).resolve().parents[1]


def small_spec(planted_path, **changes) -> BenchSpec:
    spec = BenchSpec(
        name="small", datasets=[f"tsv:{planted_path}"], models=["metric"], defenses=["plain", "aml"],
        attacks=["fgsm", "pgd:steps=3", "tag-replace-20"], seeds=[0, 1], params={"epochs": 3, "dim": 8}, p_core=3,
    )
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def run(spec: BenchSpec, out: Path, **settings) -> ResultStore:
    the_plan = plan([spec])
    store = ResultStore(out)
    for name, rows in the_plan.rows.items():
        store.add_cells(rows, name)
    config = RunSettings(out=out, data_dir=out, device="cpu", **settings)
    run_units(pending_units(the_plan, store, config.retry_failed), config, store, lambda kind, data: None)
    return store


def per_post_table(store: ResultStore) -> dict:
    rows = store.connection.execute("SELECT cell, metric, post, value FROM post_metrics ORDER BY cell, metric, post")
    return {(c, m, p): v for c, m, p, v in rows}


def test_sweeps_expand_in_order():
    assert expand_sweep("spaml-s:lambda=[0.5,1],mu=[1.1,1.2]") == [
        "spaml-s:lambda=0.5,mu=1.1", "spaml-s:lambda=0.5,mu=1.2", "spaml-s:lambda=1,mu=1.1", "spaml-s:lambda=1,mu=1.2"]
    assert expand_sweep("pgd") == ["pgd"]


def test_planner_trains_each_model_once(planted_path, tmp_path, monkeypatch):
    trained = []
    real_train = worker.train
    monkeypatch.setattr(worker, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    spec = small_spec(planted_path)
    the_plan = plan([spec])
    # 2 defenses × 2 seeds × (clean + one poisoning attack) models; each clean model: clean + 2 evasion cells
    assert len(the_plan.units) == 2 * 2 * 2
    assert the_plan.n_cells == 2 * 2 * (3 + 1)
    store = run(spec, tmp_path)
    assert len(trained) == len(the_plan.units)
    assert set(store.cells()["status"]) == {"done"}
    run(spec, tmp_path)  # everything is done: nothing is trained again
    assert len(trained) == len(the_plan.units)
    # models are cached on disk: redoing every cell retrains nothing and changes no number
    before = per_post_table(store)
    store.connection.execute("UPDATE cells SET status='pending'")
    store.connection.commit()
    again = run(spec, tmp_path)
    assert len(trained) == len(the_plan.units)
    assert per_post_table(again) == before


def _bench_command(spec_path: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "robustag", "bench", str(spec_path), "--out", str(out), "--device", "cpu",
            "--no-report", *options]


def _write_spec(path: Path, planted_path: Path) -> Path:
    path.write_text(textwrap.dedent(f"""
        name = "resume"
        datasets = ["tsv:{planted_path}"]
        models = ["metric"]
        defenses = ["plain", "aml", "spaml-s"]
        attacks = ["fgsm", "pgd:steps=3"]
        seeds = 2
        p_core = 3
        [params]
        epochs = 8
        dim = 8
    """))
    return path


def _done(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as connection:
        try:
            return connection.execute("SELECT COUNT(*) FROM cells WHERE status='done'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


@pytest.mark.parametrize("options", [(), ("--stack", "2")], ids=["alone", "stacked"])
def test_a_killed_run_resumes_to_identical_results(planted_path, tmp_path, options):
    spec_path = _write_spec(tmp_path / "resume.toml", planted_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed_out, clean_out = tmp_path / "killed", tmp_path / "uninterrupted"
    process = subprocess.Popen(_bench_command(spec_path, killed_out, *options), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _done(killed_out / "results.sqlite") < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = _done(killed_out / "results.sqlite")
    total = 3 * 2 * 3  # defenses × seeds × (clean + 2 attacks)
    assert 0 < done_at_kill < total, "the kill must land mid-matrix"
    subprocess.run(_bench_command(spec_path, killed_out, *options), env=env, check=True, capture_output=True)
    subprocess.run(_bench_command(spec_path, clean_out, *options), env=env, check=True, capture_output=True)
    resumed, uninterrupted = ResultStore(killed_out), ResultStore(clean_out)
    assert _done(killed_out / "results.sqlite") == total
    assert per_post_table(resumed) == per_post_table(uninterrupted)
    metrics = lambda store: dict(store.connection.execute("SELECT key, metrics FROM cells").fetchall())
    assert metrics(resumed) == metrics(uninterrupted)


def _attack_plugin(name: str, summary: str, perturb: str, imports: str = "") -> str:
    """The source of a one-method evasion attack plugin whose `perturb` body is `perturb`."""
    return (f"{imports}\nfrom robustag.attack import EmbeddingAttack\n\n\nclass Plugin(EmbeddingAttack):\n"
            f"    name = {name!r}\n    summary = {summary!r}\n    params = EmbeddingAttack.params\n\n"
            f"    def perturb(self, objective, deltas, radius):\n{textwrap.indent(perturb, ' ' * 8)}\n")


HOLDING_PLUGIN = _attack_plugin("holding", "holds until its release file exists, then changes nothing",
                                'while not Path(os.environ["HOLDING_RELEASE"]).exists():\n    time.sleep(0.05)\n'
                                "return deltas", imports="import os\nimport time\nfrom pathlib import Path")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_run_killed_mid_unit_keeps_the_cells_it_finished_and_resumes_without_retraining(planted_path, tmp_path,
                                                                                          workers):
    plugin, release = tmp_path / "holding.py", tmp_path / "release"
    plugin.write_text(HOLDING_PLUGIN)
    spec = tmp_path / "held.toml"
    spec.write_text(f'datasets = ["tsv:{planted_path}"]\nmodels = ["metric"]\ndefenses = ["plain"]\n'
                    'attacks = ["fgsm", "holding", "pgd:steps=3"]\nseeds = 1\np_core = 3\n[params]\nepochs = 3\ndim = 8\n')
    command = [*_bench_command(spec, tmp_path / "run", "--plugin", str(plugin), "--workers", workers)]
    env = {**os.environ, "HOLDING_RELEASE": str(release)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _done(tmp_path / "run" / "results.sqlite") < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    db = tmp_path / "run" / "results.sqlite"
    query = "SELECT attack_name, status, finished, metrics FROM cells ORDER BY attack_name"
    with sqlite3.connect(db) as connection:
        at_kill = {row[0]: row[1:] for row in connection.execute(query)}
    assert [at_kill[a][0] for a in (None, "fgsm", "holding", "pgd")] == ["done", "done", "pending", "pending"]
    model, = (tmp_path / "run" / "models").glob("*.pt")  # the model came with the first finished cell
    trained_at = model.stat().st_mtime_ns
    release.touch()
    subprocess.run(command, env=env, check=True, capture_output=True)
    with sqlite3.connect(db) as connection:
        resumed = {row[0]: row[1:] for row in connection.execute(query)}
    assert {a: row[0] for a, row in resumed.items()} == {None: "done", "fgsm": "done", "holding": "done", "pgd": "done"}
    assert resumed[None] == at_kill[None] and resumed["fgsm"] == at_kill["fgsm"]  # kept, not recomputed
    assert model.stat().st_mtime_ns == trained_at  # the resumed run loaded the model, it did not retrain it


FAILING_PLUGIN = _attack_plugin("exploding", "always fails", 'raise RuntimeError("boom from the exploding plugin")')


def test_a_failing_plugin_is_isolated_and_retried(planted_path, tmp_path):
    plugin = tmp_path / "exploding.py"
    plugin.write_text(FAILING_PLUGIN)
    from robustag.attack import ATTACKS

    ATTACKS.load_file(plugin)
    spec = small_spec(planted_path, defenses=["plain"], attacks=["fgsm", "exploding"], seeds=[0])
    store = run(spec, tmp_path / "run", plugins=(str(plugin),))
    cells = store.cells()
    failed = cells[cells["status"] == "failed"]
    assert list(failed["attack_name"]) == ["exploding"]
    assert "boom from the exploding plugin" in failed.iloc[0]["error"]
    assert set(cells[cells["attack_name"] != "exploding"]["status"]) == {"done"}
    store = run(spec, tmp_path / "run", plugins=(str(plugin),))  # failed cells stay failed without --retry-failed
    assert store.cells(status="failed").shape[0] == 1
    store = run(spec, tmp_path / "run", plugins=(str(plugin),), retry_failed=True)
    assert store.cells(status="failed").shape[0] == 1  # retried, and it fails again
    assert store.cells(status="pending").shape[0] == 0


@pytest.fixture(scope="module")
def finished(planted_path, tmp_path_factory):
    spec = small_spec(planted_path, defenses=["plain", "aml", "spaml-s", "spaml-h"], attacks=["fgsm", "tag-replace-20"],
                      seeds=[0, 1], eps=[0.05, 0.2])
    return run(spec, tmp_path_factory.mktemp("finished"))


def _holm(p_values):
    """Holm–Bonferroni step-down, written out independently of statsmodels."""
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def test_paired_tests_and_holm_match_independent_computations(finished):
    cells = done_cells(finished)
    table = aggregate(finished, cells, ["ndcg@3"])
    tests = compare_to_reference(finished, table, "ndcg@3", "plain")
    assert len(tests) == 3 * 4  # 3 defenses against plain; clean, fgsm at 2 budgets, tag-replace
    for _, row in tests.iterrows():
        mine = table[(table["defense"] == row["defense"]) & (table["attack"] == row["attack"])]
        ref = table[(table["defense_name"] == "plain") & (table["attack"] == row["attack"])]
        a = np.mean([finished.per_post([k], "ndcg@3")[k] for k in mine.iloc[0]["cells"]], axis=0)
        b = np.mean([finished.per_post([k], "ndcg@3")[k] for k in ref.iloc[0]["cells"]], axis=0)
        diff = a - b
        if np.allclose(diff, 0):
            continue
        t = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
        assert row["ttest_p"] == pytest.approx(2 * stats.t.sf(abs(t), len(diff) - 1), rel=1e-9)
        assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diff, zero_method="zsplit").pvalue, rel=1e-9)
        assert row["effect_size"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    np.testing.assert_allclose(tests["wilcoxon_p_holm"], _holm(tests["wilcoxon_p"].to_numpy()))
    np.testing.assert_allclose(tests["ttest_p_holm"], _holm(tests["ttest_p"].to_numpy()))


def test_mean_and_std_are_over_seeds(finished):
    cells = done_cells(finished)
    table = aggregate(finished, cells, ["f1@3"])
    row = table.iloc[0]
    values = cells[cells["key"].isin(row["cells"])]["f1@3"]
    assert row["seeds"] == 2 and row["f1@3_mean"] == pytest.approx(values.mean())
    assert row["f1@3_std"] == pytest.approx(values.std(ddof=1))
    assert row["f1@3_ci_low"] <= row["f1@3_mean"] <= row["f1@3_ci_high"]


def test_report_builds_every_format(finished):
    folder = write_report(finished.folder)
    html = (folder / "report.html").read_text()
    markdown = (folder / "report.md").read_text()
    assert "Clean test metrics" in markdown and "Robustness" in markdown
    assert html.count("data:image/png;base64,") >= 4  # heatmap, ε curve, poisoning, training, CD...
    assert (folder / "small-clean.tex").read_text().count(r"\toprule") == 1
    assert len(list((folder / "plots").glob("*.svg"))) == len(list((folder / "plots").glob("*.png"))) >= 4
    assert "Method-level comparisons against plain" in markdown and "Threat models" in markdown
    assert "Iman–Davenport" not in markdown  # one data set × model is one block: no rank test


def test_report_escapes_hostile_names(planted_path, tmp_path):
    hostile = tmp_path / "<script>alert(1)<" / "data.tsv"
    hostile.parent.mkdir()
    hostile.write_text(planted_path.read_text())
    spec = small_spec(hostile, defenses=["plain"], attacks=["fgsm"], seeds=[0])
    store = run(spec, tmp_path / "run")
    html = (write_report(store.folder) / "report.html").read_text()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)" in html


def test_two_local_workers_give_the_same_numbers(planted_path, tmp_path):
    spec = small_spec(planted_path, defenses=["plain", "spaml-s"], attacks=["pgd:steps=2"], seeds=[0])
    one = run(spec, tmp_path / "one")
    two = run(spec, tmp_path / "two", workers=2)
    assert per_post_table(one) == per_post_table(two)


def test_spec_files_and_errors(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('name = "x"\ndatasets = ["movielens"]\nseeds = [3, 4]\neps = [0.1, 0.2]\n[params]\ndim = [32, 64]\n')
    (spec,) = load_specs(good)
    assert spec.seeds == [3, 4] and spec.eps == [0.1, 0.2] and len(spec.param_grid()) == 2
    both = tmp_path / "both.toml"
    both.write_text('include = ["good.toml", "good.toml"]\n')
    assert len(load_specs(both)) == 2
    from robustag.errors import RobustagError

    bad = tmp_path / "bad.toml"
    bad.write_text('datasets = ["movielens"]\nattaks = ["pgd"]\n')
    with pytest.raises(RobustagError, match="unknown key 'attaks'"):
        load_specs(bad)
    bad.write_text('[params]\nlearning_rate = 0.1\n')
    with pytest.raises(RobustagError, match="unknown option 'learning_rate'"):
        load_specs(bad)
    bad.write_text("datasets = [\n")
    with pytest.raises(RobustagError, match="bad.toml"):
        load_specs(bad)


def test_prune_forgets_cells_a_changed_spec_no_longer_plans(planted_path, tmp_path):
    spec = small_spec(planted_path, defenses=["plain", "aml"], attacks=["fgsm"], seeds=[0])
    store = run(spec, tmp_path)
    assert len(store.cells()) == 4
    smaller = small_spec(planted_path, defenses=["plain"], attacks=["fgsm"], seeds=[0])
    assert store.prune(plan([smaller]).rows) == 2
    cells = store.cells()
    assert set(cells["defense_name"]) == {"plain"} and set(cells["status"]) == {"done"}
    left = {c for (c,) in store.connection.execute("SELECT DISTINCT cell FROM post_metrics")}
    assert left == set(cells["key"])


def test_a_spec_file_leaves_unnamed_axes_minimal(tmp_path):
    path = tmp_path / "bare.toml"
    path.write_text('datasets = ["lastfm"]\n')
    (spec,) = load_specs(path)
    assert spec.attacks == [] and spec.defenses == ["plain"] and spec.seeds == [0] and spec.params == {}


def test_report_states_the_training_cost_of_each_defense(finished):
    folder = write_report(finished.folder)
    cost = pd.read_csv(folder / "runtime.csv")
    assert set(cost["defense"]) == {"plain", "aml", "spaml-s", "spaml-h"}
    assert (cost["models"] == 2).all()  # two seeds, clean models only (the poisoned retrainings are not counted)
    assert cost.loc[cost["defense"] == "plain", "× plain"].item() == "1.00×"
    history = finished.histories()
    plain_units = done_cells(finished).query("defense == 'plain' and surface == 'none'")["unit"].unique()
    expected = history[history["unit"].isin(plain_units)].groupby("unit")["seconds"].median().mean()
    assert cost.loc[cost["defense"] == "plain", "s / epoch"].item() == pytest.approx(expected, abs=0.005)
    compute = pd.read_csv(folder / "compute.csv")
    cells = done_cells(finished)
    # 4 defenses × 2 seeds clean models, and as many retrained on poisoned data
    assert compute[["spec", "cells", "trained models"]].values.tolist() == [["small", len(cells), 16]]
    train_hours = cells.drop_duplicates("unit")["train_seconds"].sum() / 3600
    assert compute["training h"].item() == pytest.approx(train_hours, abs=0.005)


@pytest.mark.needs_compiler
def test_a_bench_compiles_by_default_says_so_and_matches_eager(planted_path, tmp_path, monkeypatch):
    spec = small_spec(planted_path, models=["metric", "pop"], defenses=["plain", "aml"], attacks=["fgsm"], seeds=[0])
    eager = run(spec, tmp_path / "eager", compile=False)
    monkeypatch.delenv("ROBUSTAG_COMPILE")  # the default, as a user gets it
    compiled = run(spec, tmp_path / "compiled")
    assert set(eager.cells()["device"]) == {"cpu"}
    devices = compiled.cells().groupby("model")["device"].unique()
    assert list(devices["metric"]) == ["cpu+compile"] and list(devices["pop"]) == ["cpu"]  # pop has nothing to compile
    by_cell = lambda store: {k: json.loads(m) for k, m in zip(store.cells()["key"], store.cells()["metrics"])}
    eager_metrics, compiled_metrics = by_cell(eager), by_cell(compiled)
    assert eager_metrics.keys() == compiled_metrics.keys()  # the same cells: compiling is not part of a cell's identity
    for key, metrics in eager_metrics.items():
        assert compiled_metrics[key] == pytest.approx(metrics, abs=1e-3)


def test_each_cell_names_the_source_it_ran_with_and_an_edited_plugin_changes_the_name(finished, tmp_path, monkeypatch):
    import shutil

    import robustag.attacks
    from robustag import provenance

    stored = {json.loads(v)["robustag source"] for v in finished.cells(status="done")["versions"]}
    assert stored == {provenance.source_digest()} and re.fullmatch(r"[0-9a-f]{12}", stored.pop())
    edited = tmp_path / "attacks"
    shutil.copytree(robustag.attacks.__path__[0], edited)
    (edited / "fgsm.py").write_text((edited / "fgsm.py").read_text() + "\n# an edit\n")
    monkeypatch.setattr(robustag.attacks, "__path__", [str(edited)])
    provenance.source_digest.cache_clear()
    try:
        assert provenance.source_digest() not in {json.loads(v)["robustag source"] for v in finished.cells()["versions"].dropna()}
    finally:
        provenance.source_digest.cache_clear()


def test_a_run_filled_by_several_invocations_describes_all_of_them():
    first = {"name": "main", "datasets": ["movielens"], "seeds": [0, 1], "params": {"epochs": 5}}
    second = {"name": "main", "datasets": ["lastfm"], "seeds": [1, 2], "params": {"epochs": 9}}
    other = {"name": "other", "datasets": ["lastfm"]}
    merged = {spec["name"]: spec for spec in merge_described([first], [second, other])}
    assert merged["main"] == {"name": "main", "datasets": ["movielens", "lastfm"], "seeds": [0, 1, 2],
                              "params": {"epochs": 9}}
    assert merged["other"] == other


def test_report_warns_when_one_comparison_mixes_devices():
    cells = pd.DataFrame({"dataset": ["lastfm", "lastfm", "movielens", "movielens"], "model": ["metric"] * 4,
                          "device": ["cpu", "cpu+compile", "cpu", "cpu"]})
    warnings = mixed_device_warnings(cells)
    assert len(warnings) == 1 and "lastfm / metric" in warnings[0] and "cpu, cpu+compile" in warnings[0]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process parents from /proc")
def test_workers_end_when_the_bench_process_is_killed(planted_path, tmp_path):
    spec_path = _write_spec(tmp_path / "orphans.toml", planted_path)
    process = subprocess.Popen([*_bench_command(spec_path, tmp_path / "run"), "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _done(tmp_path / "run" / "results.sqlite") < 1 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    workers = _children(process.pid)
    assert len(workers) >= 2  # the two pool workers (and multiprocessing's resource tracker)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 20
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in workers if _alive(pid)]
    assert not survivors, [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for pid in survivors]


def test_defense_labels_tell_apart_every_configuration_and_nothing_more():
    pgd = "attack=pgd,eps=0.1,steps={},step_size=0.25"
    specs = [f"spaml-h:{pgd.format(3)},lambda=1.0", f"spaml-h:{pgd.format(10)},lambda=1.0",
             "spaml-h:attack=fgsm,eps=0.1,lambda=1.0", f"spaml-s:{pgd.format(3)},lambda=0.5",
             f"spaml-s:{pgd.format(3)},lambda=2.0", "plain"]
    labels = defense_labels({spec: spec_values(spec) for spec in specs})
    assert len(set(labels.values())) == len(specs)
    assert labels[specs[0]] == "spaml-h attack=pgd,steps=3"
    assert labels[specs[2]] == "spaml-h attack=fgsm"  # fgsm has no steps: the attack's name says enough
    assert labels[specs[3]] == "spaml-s lambda=0.5" and labels["plain"] == "plain"


def test_rows_follow_the_spec_including_the_order_of_a_sweep():
    # a run folder stores cells in the order they finished: d=128 came first from another spec
    cells = pd.DataFrame({"dataset": ["lastfm"] * 4 + ["movielens"], "model": ["metric"] * 5,
                          "defense_name": ["spaml-h", "plain", "plain", "plain", "plain"],
                          "params": [json.dumps({"dim": d, "epochs": 100}) for d in (16, 128, 16, 256, 16)]})
    described = {"datasets": ["movielens", "lastfm"], "models": ["metric"], "defenses": ["plain", "spaml-h:mu=1"],
                 "params": {"dim": [16, 128, 256], "epochs": 100}}
    ordered = in_spec_order(cells, described)
    assert list(ordered.index) == [4, 2, 1, 3, 0]


def test_a_database_from_before_the_parsed_columns_is_upgraded_to_the_same_values(finished, tmp_path):
    columns = ["attack_params", "defense_params", "strength", "strength_name"]
    query = f"SELECT key, {', '.join(columns)} FROM cells ORDER BY key"
    planned = finished.connection.execute(query).fetchall()
    assert any(row[4] == "rate" for row in planned) and any(row[4] == "eps" for row in planned)
    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "results.sqlite") as db:
        finished.connection.backup(db)
        for column in columns:  # as robustag wrote it before these columns existed
            db.execute(f"ALTER TABLE cells DROP COLUMN {column}")
    upgraded = ResultStore.existing(old)
    assert upgraded.connection.execute(query).fetchall() == planned
    assert (write_report(old) / "report.md").is_file()


def test_report_curves_follow_each_attacks_declared_strength(finished):
    plots = finished.folder / "report" / "plots"
    write_report(finished.folder)
    names = {path.stem for path in plots.glob("*.png")}
    assert any(re.search(r"-fgsm-\d+-eps$", name) for name in names)  # two budgets: a curve over ε
    assert any(re.search(r"-tag-replace-\d+-rate$", name) for name in names)  # poisoning: over its rate


def test_models_that_ran_every_epoch_are_flagged(finished):
    from robustag.report import CAPPED, capped_units

    cells = done_cells(finished)
    histories = finished.histories()
    ran_all = set(histories.groupby("unit")["epoch"].max().loc[lambda epochs: epochs >= 3].index)
    assert capped_units(finished, cells) == ran_all and ran_all  # 3 epochs allowed: early stopping rarely fires
    folder = write_report(finished.folder)
    markdown = (folder / "report.md").read_text()
    assert f"plain {CAPPED}" in markdown and "early stopping never triggered" in markdown


def test_a_stacked_bench_stores_what_solo_training_stores(planted_path, tmp_path):
    """--stack 3: the seeds of each (model, defense) train as one stack; poisoned units (training
    data differs by seed) and popularity train alone; every cell matches the solo run to rounding."""
    from robustag.planning import stack_groups

    spec = small_spec(planted_path, models=["metric", "pop"], defenses=["plain", "aml"], attacks=["fgsm", "tag-replace-20"],
                      seeds=[0, 1, 2])
    the_plan = plan([spec])
    groups = stack_groups(list(the_plan.units.values()), 3)
    sizes = sorted(len(g) for g in groups)
    assert sizes.count(3) == 2 and set(sizes) == {1, 3}  # metric × {plain, aml}; pop and the poisoned alone
    assert all(len({u.config.seed for u in g}) == len(g) and len({u.defense for u in g}) == 1 for g in groups)
    assert len(stack_groups(list(the_plan.units.values()), 2)) == len(groups) + 2  # a stack of 3 split by --stack 2
    alone, stacked = run(spec, tmp_path / "alone", compile=False), run(spec, tmp_path / "stacked", compile=False, stack=3)
    by_cell = lambda store: {k: json.loads(m) for k, m in zip(store.cells()["key"], store.cells()["metrics"])}
    assert by_cell(alone).keys() == by_cell(stacked).keys()
    for key, metrics in by_cell(alone).items():
        assert by_cell(stacked)[key] == pytest.approx(metrics, abs=1e-4)
    members = stacked.histories().groupby("unit")["stack_members"].max()
    assert (members == 3).sum() == 6 and members.isna().sum() == 6  # 2 stacks of 3 seeds; the 6 poisoned units alone


def test_the_report_lists_the_tuned_configurations_it_ran(planted_path, tmp_path):
    from robustag.report import write_report

    spec = small_spec(planted_path, defenses=["plain", "aml", "aml:beta=0.5"], attacks=[], seeds=[0])
    spec.tuned = {f"tsv:{planted_path}/metric/aml": {"defense": "aml:eps=0.2,beta=2", "params": {}}}
    store = run(spec, tmp_path / "run", compile=False)
    store.set_meta("specs", [dataclasses.asdict(spec)])
    assert len({d for d in store.cells()["defense"] if d.startswith("aml:")}) == 2  # the tuned aml and the written one
    store.close()
    table = pd.read_csv(write_report(tmp_path / "run") / "tuned.csv")
    assert list(table["defense"]) == ["aml"]  # aml:beta=0.5 was written with its parameters: not a tuned one
    assert table.iloc[0]["tuned (against its defaults)"] == "eps=0.2, beta=2.0"


def test_a_report_written_before_the_run_ends_says_how_much_is_missing(planted_path, tmp_path):
    store = run(small_spec(planted_path, attacks=[], seeds=[0]), tmp_path / "run", compile=False)
    for name, rows in plan([small_spec(planted_path, attacks=[], seeds=[0, 1])]).rows.items():
        store.add_cells(rows, name)  # the same spec asked again with a second seed, not yet run
    store.close()
    markdown = (write_report(tmp_path / "run") / "report.md").read_text()
    assert "Unfinished: 2 of 4 cells of this spec have not run yet" in markdown
    finished_only = run(small_spec(planted_path, attacks=[], seeds=[0]), tmp_path / "done", compile=False)
    finished_only.close()
    assert "Unfinished" not in (write_report(tmp_path / "done") / "report.md").read_text()


def test_a_report_can_cover_some_specs_of_a_run(planted_path, tmp_path):
    for name in ("first", "second"):
        run(small_spec(planted_path, name=name, attacks=[], seeds=[0]), tmp_path / "run", compile=False).close()
    folder = write_report(tmp_path / "run", specs=["second"])
    assert (folder / "second-clean.csv").exists() and not (folder / "first-clean.csv").exists()
    assert len(pd.read_csv(folder / "runtime.csv")) == 2  # plain and aml of that spec only


def test_a_rerun_after_an_upgrade_supersedes_the_old_cells_in_reports(planted_path, tmp_path, monkeypatch):
    from robustag import planning

    spec = small_spec(planted_path, attacks=["fgsm"], seeds=[0])
    run(spec, tmp_path / "run", compile=False).close()
    monkeypatch.setattr(planning, "COMPUTATION", "99.0")  # a release that changes the numbers keys every unit anew
    store = run(spec, tmp_path / "run", compile=False)
    new_keys = {row.key for rows in plan([spec]).rows.values() for row in rows}
    assert len(store.cells(status="done")) == 2 * len(new_keys)  # the old cells are kept...
    cells = done_cells(store)
    assert set(cells["key"]) == new_keys  # ...but only the later ones count
    assert (aggregate(store, cells, ["ndcg@3"], ci_metrics=[])["seeds"] == 1).all()
    store.close()
    markdown = (write_report(tmp_path / "run") / "report.md").read_text()
    assert f"{len(new_keys)} finished cells repeat a configuration and seed" in markdown


def test_a_release_that_changes_no_number_keeps_every_key(planted_path, monkeypatch):
    import robustag
    from robustag import version

    spec = small_spec(planted_path, attacks=["fgsm"], seeds=[0])
    before = {row.key for rows in plan([spec]).rows.values() for row in rows}
    monkeypatch.setattr(version, "__version__", "99.0")
    monkeypatch.setattr(robustag, "__version__", "99.0")
    assert {row.key for rows in plan([spec]).rows.values() for row in rows} == before  # nothing recomputes


def test_a_report_of_a_spec_with_only_poisoning_attacks(planted_path, tmp_path):
    spec = small_spec(planted_path, attacks=["tag-replace-20"], seeds=[0])
    run(spec, tmp_path / "run", compile=False).close()
    folder = write_report(tmp_path / "run")
    robustness = pd.read_csv(folder / "small-robustness.csv")
    assert len(robustness) == 2 and not (folder / "small-worst-case.csv").exists()  # no evasion attack: no worst case
