"""`robustag tune`: equal budgets per defense on validation NDCG@3, every trial in the store,
the best written as a spec that loads; end to end through the CLI on both data sets."""

import json

import pandas as pd
import pytest

import robustag as rt
from robustag.errors import ParameterError, RobustagError
from robustag.planning import plan
from robustag.spec import BenchSpec, load_specs
from robustag.store import ResultStore
from robustag.tuning import trial_specs

from conftest import run_main


def test_each_defense_gets_at_most_its_budget_of_a_seeded_subset():
    spec = BenchSpec(defenses=["plain", "aml:eps=[0.05,0.1,0.2],beta=[0.5,1]", "spaml-s:lambda=[0.5,1]"],
                     attacks=["pgd"], seeds=[3, 4])
    (trials,) = trial_specs([spec], budget=4, seed=1)
    names = [d.split(":")[0] for d in trials.defenses]
    assert names.count("plain") == 1 and names.count("aml") == 4 and names.count("spaml-s") == 2
    assert trials.attacks == [] and trials.seeds == [3]  # no attack, the first seed: test posts never looked at
    assert trial_specs([spec], budget=4, seed=1)[0].defenses == trials.defenses  # seeded
    assert trial_specs([spec], budget=4, seed=2)[0].defenses != trials.defenses
    with pytest.raises(ParameterError, match="through \\[params\\], not in its name"):
        trial_specs([BenchSpec(models=["metric:margin=[0.5,1]"])], budget=2)
    with pytest.raises(ParameterError, match="budget"):
        trial_specs([spec], budget=0)


def test_swept_model_options_share_each_defenses_budget():
    """[params] sweeps are searched jointly with each defense: the budget counts (options, defense
    configuration) pairs, one trial spec per options combination."""
    spec = BenchSpec(defenses=["plain", "aml:beta=[0.5,1,2]"], params={"margin": [0.5, 1.0], "epochs": 3})
    trials = trial_specs([spec], budget=4, seed=0)
    assert [t.params for t in trials] == [{"margin": 0.5, "epochs": 3}, {"margin": 1.0, "epochs": 3}]
    pairs = [(t.params["margin"], d) for t in trials for d in t.defenses]
    assert sum(d == "plain" for _, d in pairs) == 2  # plain: both options, within its budget of 4
    assert sum(d.startswith("aml") for _, d in pairs) == 4  # aml: 4 of its 2 × 3 pairs


def test_tune_stores_every_trial_and_writes_the_best_as_a_spec(tmp_path, real_data_dir):
    tuned = rt.tune(datasets=["movielens"], defenses=["plain", "aml:beta=[0.25,1,4]"], budget=2, epochs=3,
                    out=tmp_path / "tune", data_dir=real_data_dir, device="cpu")
    assert len(tuned.trials) == 3 and set(tuned.trials["defense_name"]) == {"plain", "aml"}
    store = ResultStore.existing(tmp_path / "tune")
    histories = store.histories()
    store.close()
    for _, trial in tuned.trials.iterrows():  # the score is the stored history's best validation NDCG@3
        assert trial["valid_ndcg@3"] == pytest.approx(histories[histories["unit"] == trial["unit"]]["valid_ndcg@3"].max())
    aml = tuned.trials[tuned.trials["defense_name"] == "aml"]
    best_aml = tuned.best.set_index("defense_name").loc["aml"]
    assert best_aml["valid_ndcg@3"] == aml["valid_ndcg@3"].max()
    path, table = tuned.specs
    trials_csv, best_csv = (pd.read_csv(t) for t in tuned.tables)  # the record a report commits
    assert len(trials_csv) == 3 and list(best_csv["defense"]) == list(tuned.best["defense"])
    assert best_csv["valid_ndcg@3"].tolist() == tuned.best["valid_ndcg@3"].round(4).tolist()
    assert all(len(line.rsplit(",", 2)[1].split(".")[1]) == 4 for line in tuned.tables[0].read_text().splitlines()[1:])
    (spec,) = load_specs(path)
    assert spec.datasets == ["movielens"] and spec.defenses == list(tuned.best["defense_name"]) and spec.seeds == list(range(5))
    assert {u.defense for u in plan([spec]).units.values()} == set(tuned.best["defense"])  # it runs the best ones
    # any spec runs its bare-named defenses as tuned; one written with parameters runs as written
    (uses,) = load_specs(_spec_file(tmp_path / "uses.toml", f'defenses = ["plain", "aml", "aml:beta=2"]\ntuned = "{table}"'))
    defenses = {u.defense for u in plan([uses]).units.values()}
    assert best_aml["defense"] in defenses and "aml:beta=2" not in defenses and len(defenses) == 3
    assert any(d.startswith("aml:") and d.endswith("beta=2.0") for d in defenses)


def test_a_tune_rerun_after_an_upgrade_lists_each_trial_once(tmp_path, real_data_dir, monkeypatch):
    from robustag import planning

    options = dict(datasets=["movielens"], defenses=["plain"], budget=1, epochs=1, out=tmp_path / "tune",
                   data_dir=real_data_dir, device="cpu")
    first = rt.tune(**options)
    monkeypatch.setattr(planning, "COMPUTATION", "99.0")  # a release that changes the numbers keys every unit anew
    again = rt.tune(**options)
    assert len(first.trials) == len(again.trials) == 1  # the store holds both, the table the later one
    assert again.trials["unit"].item() != first.trials["unit"].item()
    assert len(pd.read_csv(again.tables[0])) == 1


def _spec_file(path, body: str):
    path.write_text(f'name = "x"\ndatasets = ["movielens"]\n{body}\n')
    return path


def test_a_bad_tuned_table_is_refused_naming_the_file(tmp_path):
    with pytest.raises(RobustagError, match="tuned file .*missing.toml not found"):
        load_specs(_spec_file(tmp_path / "a.toml", 'tuned = "missing.toml"'))
    with pytest.raises(RobustagError, match="tuned entry 'movielens/metric/aml' = 'spaml-s' must map"):
        load_specs(_spec_file(tmp_path / "b.toml", 'tuned = { "movielens/metric/aml" = "spaml-s" }'))
    (partial,) = load_specs(_spec_file(tmp_path / "c.toml", 'models = ["metric", "pitf"]\ndefenses = ["plain", "aml"]\n'
                                       'tuned = { "movielens/metric/aml" = "aml:beta=2" }'))
    with pytest.raises(ParameterError, match="no tuned configuration of aml for movielens/pitf"):
        plan([partial])  # not run at its defaults unnoticed


def test_tune_runs_end_to_end_on_both_data_sets(tmp_path, real_data_dir, capsys):
    run_main("tune", "--datasets", "movielens,lastfm", "--defenses", "plain,spaml-s:lambda=[0.5,2]", "--budget", "1",
             "--epochs", "1", "--out", tmp_path / "tune", "--data-dir", real_data_dir, "--device", "cpu")
    printed = capsys.readouterr().out
    assert "Tuning trials: 4" in printed and printed.count("★") == 1 + 4  # the title, and each best trial
    for dataset in ("movielens", "lastfm"):
        (spec,) = load_specs(tmp_path / "tune" / f"tuned-{dataset}-metric.toml")
        assert [d.split(":")[0] for d in spec.defenses] == ["plain", "spaml-s"]
    cells = pd.read_sql_query("SELECT dataset, attack FROM cells", ResultStore.existing(tmp_path / "tune").connection)
    assert len(cells) == 4 and cells["attack"].isna().all()


def test_a_tuned_model_option_travels_with_its_defense(tmp_path, real_data_dir):
    spec = BenchSpec(datasets=["movielens"], defenses=["plain", "aml:beta=[0.5,2]"], params={"margin": [0.25, 1.5], "epochs": 2})
    tuned = rt.tune(spec, tmp_path / "tune", budget=4, data_dir=real_data_dir, device="cpu")
    assert len(tuned.trials) == 2 + 4 and set(tuned.trials["params"].map(lambda p: json.loads(p)["margin"])) == {0.25, 1.5}
    best = tuned.best.set_index("defense_name")
    (uses,) = load_specs(_spec_file(tmp_path / "uses.toml", f'defenses = ["plain", "aml"]\ntuned = "{tuned.specs[-1]}"'))
    units = {u.defense.partition(":")[0]: u for u in plan([uses]).units.values()}
    for name in ("plain", "aml"):  # each defense runs with the margin it was best with
        assert units[name].config.model_params["margin"] == json.loads(best.loc[name, "params"])["margin"]
        assert units[name].defense == best.loc[name, "defense"]


def _halving_spec(planted_path) -> BenchSpec:
    """Learning rates from the best down: later trials fall behind, so asynchronous halving prunes."""
    return BenchSpec(datasets=[f"tsv:{planted_path}"], defenses=["plain", "aml:beta=[0.5,2]"],
                     params={"epochs": 8, "dim": 8, "lr": [0.2, 0.05, 0.01, 0.002]}, p_core=3)


class Interrupted(Exception):
    pass


def test_successive_halving_stops_trials_at_rungs_on_the_curve_full_training_draws(tmp_path, planted_path, robustag):
    """Each defense: the same trials as a full tune, the same schedule; a pruned trial stops at a
    rung, its curve the prefix of its full training's; the best is of the finished trials; a
    kill mid-trial resumes under the same Optuna trial to the same result, a rerun trains nothing."""
    optuna = pytest.importorskip("optuna", reason="the tune extra is not installed")
    options = dict(budget=4, device="cpu", halving=True, min_epochs=1, reduction=2)
    full = rt.tune(_halving_spec(planted_path), tmp_path / "full", budget=4, device="cpu")
    halved = rt.tune(_halving_spec(planted_path), tmp_path / "halved", **options)
    assert sorted(halved.trials["unit"]) == sorted(full.trials["unit"])  # the same configurations
    assert halved.trials.groupby("defense_name").size().to_dict() == {"plain": 4, "aml": 4}
    pruned = halved.trials[halved.trials["state"] == "pruned"]
    assert len(pruned) >= 2 and set(pruned["epochs"]) <= {1, 2, 4}  # rungs: min_epochs · reduction^k
    store = ResultStore.existing(tmp_path / "full")
    histories = store.histories()
    store.close()
    storage = f"sqlite:///{tmp_path / 'halved' / 'halving.sqlite3'}"
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.trials:
            curve = histories[histories["unit"] == trial.user_attrs["unit"]].set_index("epoch")["valid_ndcg@3"]
            assert trial.intermediate_values == pytest.approx(curve.loc[list(trial.intermediate_values)].to_dict())
    finished = halved.trials[halved.trials["state"] == "complete"]
    for name, best in halved.best.set_index("defense_name").iterrows():
        assert best["valid_ndcg@3"] == finished[finished["defense_name"] == name]["valid_ndcg@3"].max()
    written = pd.read_csv(tmp_path / "halved" / "trials.csv")
    assert written["state"].tolist() == halved.trials["state"].tolist() and (written["seconds"] > 0).all()

    seen = {"epochs": 0}

    def kill_in_the_second_trial(kind, data):
        seen["epochs"] += kind == "epoch"
        if seen["epochs"] == 12:
            raise Interrupted

    with pytest.raises(Interrupted):
        rt.tune(_halving_spec(planted_path), tmp_path / "killed", on_event=kill_in_the_second_trial, **options)
    resumed = rt.tune(_halving_spec(planted_path), tmp_path / "killed", **options)
    pd.testing.assert_frame_equal(resumed.trials.drop(columns="seconds"), halved.trials.drop(columns="seconds"))
    trained = []
    again = rt.tune(_halving_spec(planted_path), tmp_path / "killed", on_event=lambda kind, data: trained.append(kind == "train"),
                    **options)
    assert not any(trained)
    pd.testing.assert_frame_equal(again.trials, resumed.trials)
    storage = f"sqlite:///{tmp_path / 'killed' / 'halving.sqlite3'}"
    assert sum(s.n_trials for s in optuna.get_all_study_summaries(storage)) == 8  # the cut trial was not started anew
    with pytest.raises(ParameterError, match=r"halving.sqlite3: study .* holds \d trial.*of another plan"):  # their curves would steer the pruner
        rt.tune(_halving_spec(planted_path), tmp_path / "killed", **{**options, "budget": 2})
    spec = tmp_path / "halving.toml"
    spec.write_text(f'datasets = ["tsv:{planted_path}"]\ndefenses = ["plain", "aml:beta=[0.5,2]"]\np_core = 3\n'
                    '[params]\nepochs = 8\ndim = 8\nlr = [0.2, 0.05, 0.01, 0.002]\n')
    code, output = robustag("tune", spec, "--budget", "4", "--halving", "--min-epochs", "1", "--reduction", "2",
                            "--out", tmp_path / "killed", "--device", "cpu")
    assert code == 0 and "pruned" in output and "complete" in output, output
