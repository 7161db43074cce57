"""The second hostile-input sweep and a plugin author's trial: one test (at least) per item fixed,
each failing before its fix. Small runs on the planted data set, so the file stays quick."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import robustag as rt
from conftest import planted_tsv, refused
from robustag import paths
from robustag.attack import ATTACKS
from robustag.defense import DEFENSES
from robustag.display import attack_spec_labels, model_labels
from robustag.errors import RobustagError
from robustag.plugins import PluginError
from robustag.spec import load_specs
from robustag.store import CellRow, ResultStore, _database_problem


def spec_file(folder: Path, dataset: str, body: str, name: str = "sweep") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\ndatasets = [{json.dumps(f"tsv:{dataset}")}]\np_core = 3\n' + textwrap.dedent(body))
    return path


SWEEP = """
defenses = ["plain", "aml"]
attacks = ["fgsm"]
seeds = 1
[params]
epochs = 1
dim = [8, 16]
"""


@pytest.fixture(scope="module")
def swept(planted_path, tmp_path_factory):
    """A finished bench of a [params] sweep with an attack: the README example's shape."""
    folder = tmp_path_factory.mktemp("swept")
    spec = spec_file(folder, planted_path, SWEEP)
    with rt.bench(spec, folder / "run", device="cpu", report=False):
        pass
    return spec, folder / "run"


# -- broken for every user of a documented feature -------------------------------------------------

def test_a_swept_spec_with_an_attack_reports_every_configuration_apart(swept, robustag):
    _, run = swept
    code, output = robustag("report", run)
    assert code == 0, output
    clean = pd.read_csv(run / "report" / "sweep-clean.csv")
    assert sorted(set(clean["model"])) == ["metric (d=16)", "metric (d=8)"]
    assert len(clean) == len(clean[["model", "defense"]].drop_duplicates()) == 4
    heatmaps = sorted((run / "report" / "plots").glob("*heatmap.png"))
    assert len(heatmaps) == 2  # one per configuration of the model


def test_results_and_the_summary_label_swept_configurations_apart(swept, robustag):
    _, run = swept
    code, output = robustag("results", run)
    assert code == 0 and "metric (d=8)" in output and "metric (d=16)" in output
    with rt.Run(run) as opened:
        from robustag.cli import summary_table
        rows = [cell for column in summary_table(opened).columns if column.header == "model" for cell in column._cells]
    assert sorted(set(rows)) == ["metric (d=16)", "metric (d=8)"]


def test_a_rerun_with_other_epochs_is_labelled_by_its_epochs():
    cells = pd.DataFrame({"model": ["metric", "metric", "pop"],
                          "params": [json.dumps({"dim": 8, "epochs": 1}), json.dumps({"dim": 8, "epochs": 2}), "{}"]})
    assert list(model_labels(cells)) == ["metric (d=8, epochs=1)", "metric (d=8, epochs=2)", "pop"]


def test_attack_rows_with_other_parameters_get_other_labels():
    specs = [ATTACKS.create(s).spec for s in ("pgd:steps=1", "pgd:steps=10", "fgsm")]
    labels = attack_spec_labels(specs, [0.1, 0.1, 0.1])
    assert labels == ["pgd steps=1 ε=0.1", "pgd steps=10 ε=0.1", "fgsm ε=0.1"]


def test_an_ambiguous_claim_names_the_configurations_and_options_pick_one(swept, robustag, tmp_path):
    _, run = swept
    claims = tmp_path / "claims.toml"
    claims.write_text('[[claim]]\nid = "a"\nsays = "x"\nbetter = "metric/aml"\nthan = "metric/plain"\n')
    refused(robustag("claims", run, claims), "matches 2 configurations", "metric (d=8) aml", "metric:dim=32/aml")
    claims.write_text('[[claim]]\nid = "a"\nsays = "x"\nbetter = "metric:dim=16/aml"\nthan = "metric:dim=16/plain"\n'
                      'attack = "fgsm"\n')
    verdicts = rt.verify_claims(run, claims)
    assert len(verdicts) == 1 and verdicts.iloc[0]["verdict"] == "too few seeds"


def test_claims_runs_end_to_end_and_gives_no_verdict_on_one_seed(swept, robustag, tmp_path):
    _, run = swept
    claims = tmp_path / "claims.toml"
    claims.write_text('[[claim]]\nid = "fgsm"\nsays = "s"\nbetter = "metric:dim=8/aml"\nthan = "metric:dim=8/plain"\n'
                      'attack = "fgsm"\nmetrics = ["ndcg@3", "p@3"]\n')
    code, output = robustag("claims", run, claims, "--csv", tmp_path / "verdicts.csv")
    assert code == 0, output
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    assert list(verdicts["verdict"]) == ["too few seeds"] * 2 and list(verdicts["seeds"]) == [1, 1]
    assert list(verdicts["under"]) == ["change under fgsm eps = 0.1"] * 2


@pytest.mark.parametrize("line, fragment", [
    ('attack = "pgd"', "attack 'pgd' is not in the run (it has fgsm)"),
    ('attack = "fgsm"\nstrength = 0.3', "strength 0.3 of fgsm is not in the run (it has 0.1)"),
])
def test_a_claim_naming_what_the_run_lacks_says_what(swept, tmp_path, line, fragment):
    _, run = swept
    claims = tmp_path / "claims.toml"
    claims.write_text(f'[[claim]]\nid = "a"\nsays = "x"\nbetter = "metric:dim=8/aml"\nthan = "metric:dim=8/plain"\n{line}\n')
    with pytest.raises(RobustagError, match=re.escape(fragment)):
        rt.verify_claims(run, claims)


@pytest.mark.parametrize("claims, fragment", [
    ('[[claim]]\nid = "a"\nsays = "x"\nbetter = "m/a"\nthan = "m/b"\n[[claim]]\nid = "a"\nsays = "y"\nbetter = "m/a"\n'
     'than = "m/c"\n', "id 'a' is used by an earlier claim"),
    ('[[claim]]\nid = "a"\nsays = "x"\nbetter = "m/a"\nthan = "m/a"\n', "better and than are both"),
    ('[[claim]]\nid = "a"\nsays = "x"\nbetter = "m/a"\nthan = "m/b"\nmetrics = []\n', "metrics must be a non-empty list"),
])
def test_claims_files_that_cannot_mean_anything_are_refused(tmp_path, claims, fragment):
    path = tmp_path / "claims.toml"
    path.write_text(claims)
    with pytest.raises(RobustagError, match=re.escape(fragment)):
        rt.verify_claims(tmp_path, path)


def test_tune_counts_only_its_own_trials(planted_path, tmp_path):
    bench_spec = spec_file(tmp_path, planted_path, 'defenses = ["aml"]\nseeds = [1, 2]\n[params]\nepochs = 2\ndim = 8\n',
                           name="other")
    with rt.bench(bench_spec, tmp_path / "run", device="cpu", report=False):
        pass
    tune_spec = spec_file(tmp_path, planted_path, 'defenses = ["plain", "aml:beta=[0.5,2]"]\n[params]\nepochs = 1\ndim = 8\n',
                          name="tuning")
    tuned = rt.tune(tune_spec, tmp_path / "run", budget=2, device="cpu")
    assert len(tuned.trials) == 3  # plain, and aml at two betas: not the bench's two seeds
    assert set(tuned.trials["seed"]) == {0}
    assert sorted(tuned.trials["defense_name"]) == ["aml", "aml", "plain"]


def test_tune_refuses_a_model_that_learns_nothing(planted_path, tmp_path):
    spec = spec_file(tmp_path, planted_path, 'models = ["pop"]\ndefenses = ["plain", "aml:beta=[0.5,2]"]\n')
    with pytest.raises(RobustagError, match="'pop' learns nothing"):
        rt.tune(spec, tmp_path / "run", budget=2, device="cpu")
    assert not (tmp_path / "run").exists()


def test_tune_refuses_a_budget_that_is_not_a_count(planted_path, tmp_path):
    spec = spec_file(tmp_path, planted_path, 'defenses = ["plain"]\n')
    with pytest.raises(RobustagError, match="budget"):
        rt.tune(spec, tmp_path / "run", budget="2", device="cpu")


def test_a_post_with_every_tag_is_refused_up_front_naming_the_tag_count(tmp_path):
    rows = ["user\titem\ttag\ttimestamp"]
    rng = np.random.default_rng(0)
    for user in range(30):
        for k, item in enumerate(rng.choice(40, 8, replace=False)):
            tags = range(8) if (user + k) % 5 == 0 else rng.choice(8, 3, replace=False)
            rows += [f"u{user}\ti{item}\tt{tag}\t{1000 * user + k}" for tag in tags]
    data = tmp_path / "full.tsv"
    data.write_text("\n".join(rows) + "\n")
    split = rt.load_dataset(f"tsv:{data}", p_core=3)
    with pytest.raises(RobustagError, match="carry all 8 of its tags"):
        rt.train(split, "metric", epochs=1, device="cpu")
    spec = spec_file(tmp_path, data, 'defenses = ["plain"]\n[params]\nepochs = 1\n')
    with pytest.raises(RobustagError, match="carry all 8 of its tags"):
        rt.bench(spec, tmp_path / "run", device="cpu", report=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_a_relative_data_directory_is_taken_from_where_it_was_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(paths.DATA_DIR_ENV, "data")
    assert paths.data_dir() == tmp_path / "data"
    assert paths.data_dir("other") == tmp_path / "other"


# -- data that looks right and is not ----------------------------------------------------------------

def cell_row(key: str) -> CellRow:
    return CellRow.planned(key, "u", "d", "metric", {}, 0, "plain", None, "none", None, None, {"cell": key})


def test_prune_keeps_the_cells_another_spec_still_plans(tmp_path):
    store = ResultStore(tmp_path)
    store.add_cells([cell_row("shared"), cell_row("a-only")], "A")
    store.add_cells([cell_row("shared")], "B")
    assert store.prune({"A": []}) == 2
    assert list(store.cells()["key"]) == ["shared"]  # B still plans it
    assert list(store.cells(spec="B")["key"]) == ["shared"] and store.cells(spec="A").empty
    store.close()


def test_retry_failed_retries_only_planned_cells_and_keeps_the_error_until_a_rerun(tmp_path):
    store = ResultStore(tmp_path)
    store.add_cells([cell_row("planned"), cell_row("other")], "A")
    for key in ("planned", "other"):
        store.connection.execute("UPDATE cells SET status='failed', error='boom' WHERE key=?", (key,))
    store.connection.commit()
    assert store.mark_failed_pending(["planned"]) == 1
    cells = store.cells().set_index("key")
    assert cells.loc["planned", "status"] == "pending" and cells.loc["planned", "error"] == "boom"
    assert cells.loc["other", "status"] == "failed" and cells.loc["other", "error"] == "boom"
    store.close()


PLUGIN_ATTACK = """
from robustag.attack import EmbeddingAttack

class Nudge(EmbeddingAttack):
    name = "nudge-{tag}"
    summary = "moves nothing"

    def perturb(self, objective, deltas, radius):
        return {{k: v * {scale} for k, v in deltas.items()}}
"""


def test_a_plugins_code_is_part_of_the_keys_of_what_it_computes(planted_path, tmp_path):
    from robustag.planning import plan

    plugin = tmp_path / "nudge.py"
    plugin.write_text(PLUGIN_ATTACK.format(tag="key", scale=0))
    rt.load_plugins([plugin])
    spec = load_specs(spec_file(tmp_path, planted_path, 'attacks = ["nudge-key", "fgsm"]\n'))
    before = {row.attack_name: row.key for row in plan(spec).rows["sweep"]}
    plugin.write_text(PLUGIN_ATTACK.format(tag="key", scale=0.0))  # the code changed, not the spec
    after = {row.attack_name: row.key for row in plan(spec).rows["sweep"]}
    assert before["nudge-key"] != after["nudge-key"]
    assert before["fgsm"] == after["fgsm"] and before[None] == after[None]  # built-ins keep their keys
    assert ATTACKS.code("fgsm") is None and ATTACKS.code("nudge-key")


def test_tag_promote_with_no_fake_users_changes_nothing(planted):
    attack = ATTACKS.create("tag-promote:fake_users=0")
    poisoned = attack.poison(planted, seed=0)
    assert poisoned.n_users == planted.n_users and len(poisoned.train) == len(planted.train)


def test_tag_promote_refuses_more_items_per_user_than_there_are(planted):
    with pytest.raises(PluginError, match=f"items_per_user=100000 exceeds the {planted.n_items} items"):
        ATTACKS.create("tag-promote:items_per_user=100000").check(planted)


def test_users_added_by_poisoning_leave_every_other_starting_row_as_it_was(planted):
    from robustag.training import build_model, default_config

    config = default_config("metric", seed=3, dim=8)
    poisoned = ATTACKS.create("tag-promote:fake_users=0.1").poison(planted, seed=0)
    assert poisoned.added_users > 0
    torch.manual_seed(3)
    clean = build_model(planted, config)
    torch.manual_seed(3)
    grown = build_model(poisoned, config)
    for name, table in clean.tables().items():
        assert torch.equal(grown.tables()[name].weight[: len(table.weight)], table.weight), name
    assert len(grown.tables()["user"].weight) == poisoned.n_users


NAN_DEFENSE = """
import torch
from robustag.defense import Defense

class Exploding(Defense):
    name = "exploding-loss"
    summary = "its loss becomes NaN"

    def loss(self, model, batch):
        loss = model.training_loss(batch) * float("nan")
        return loss, {"loss": loss.detach()}


class Bare(Defense):
    name = "bare-loss"
    summary = "returns a bare tensor"

    def loss(self, model, batch):
        return model.training_loss(batch)
"""


@pytest.mark.parametrize("defense, fragment", [("exploding-loss", "defense exploding-loss: its training figure 'loss' "
                                                "became nan in epoch 1"),
                                               ("bare-loss", "defense bare-loss: loss() returned Tensor")])
def test_a_defense_whose_loss_is_broken_stops_naming_the_defense(planted, tmp_path_factory, defense, fragment):
    folder = tmp_path_factory.getbasetemp() / "defense-plugins"
    folder.mkdir(exist_ok=True)
    (folder / "broken_defenses.py").write_text(NAN_DEFENSE)
    rt.load_plugins([folder / "broken_defenses.py"])
    with pytest.raises(RobustagError, match=re.escape(fragment)):
        rt.train(planted, "metric", defense, epochs=2, dim=8, device="cpu")


def test_naming_the_default_adversary_does_not_change_the_defense():
    assert DEFENSES.create("aml:attack=pgd").spec == DEFENSES.create("aml").spec
    assert "steps=5" in DEFENSES.create("aml:attack=pgd,steps=5").spec
    assert DEFENSES.create("aml:attack=fgsm").adversary.name == "fgsm"


# -- specs and specs strings -----------------------------------------------------------------------

@pytest.mark.parametrize("line, fragment", [
    ('reference = "nosuch"', "reference 'nosuch' is not one of its defenses (plain)"),
    ('split_seed = "a"', "split_seed must be a whole number"),
    ('published = "x"', "published must be a table"),
    ('[params]\ndim = []', "dim = []: an empty sweep runs nothing"),
])
def test_spec_keys_of_the_wrong_kind_are_refused(tmp_path, line, fragment):
    path = tmp_path / "s.toml"
    path.write_text(f'defenses = ["plain"]\n{line}\n')
    with pytest.raises(RobustagError, match=re.escape(fragment)):
        load_specs(path)


def test_specs_that_include_each_other_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text('include = ["b.toml"]\n')
    (tmp_path / "b.toml").write_text('include = ["a.toml"]\n')
    with pytest.raises(RobustagError, match="includes itself"):
        load_specs(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('include = ["c.toml"]\n')
    with pytest.raises(RobustagError, match="includes itself"):
        load_specs(tmp_path / "c.toml")


@pytest.mark.parametrize("spec", ["metric:margin=1,margin=2", "pgd:eps=0.1,eps=0.2"])
def test_a_parameter_given_twice_in_a_spec_string_is_refused(spec):
    with pytest.raises(PluginError, match="given twice"):
        (ATTACKS if spec.startswith("pgd") else rt.MODELS).resolve(spec)


@pytest.mark.parametrize("spec, fragment", [("label-free:n=1000", "label-free: n=1000 needs fewer than"),
                                            ("targeted:n=500", "targeted: n=500 needs fewer than")])
def test_attacks_asking_for_more_tags_than_there_are_are_refused(planted, spec, fragment):
    with pytest.raises(PluginError, match=re.escape(fragment)):
        ATTACKS.create(spec).check(planted)


ODD_ATTACKS = """
import torch
from robustag.attack import EmbeddingAttack

class IntegerDeltas(EmbeddingAttack):
    name = "integer-deltas"
    summary = "returns integers"

    def perturb(self, objective, deltas, radius):
        return {k: torch.zeros_like(v, dtype=torch.long) for k, v in deltas.items()}


class Raising(EmbeddingAttack):
    name = "raising"
    summary = "raises"

    def perturb(self, objective, deltas, radius):
        return {k: v / 0 for k, v in undefined.items()}
"""


@pytest.mark.parametrize("attack, fragment", [("integer-deltas", "perturbation 'user' is torch.int64, expected torch.float32"),
                                              ("raising", "attack raising raised NameError: name 'undefined' is not "
                                                          "defined (odd_attacks.py:18)")])
def test_a_plugin_attack_that_misbehaves_is_named_with_its_line(planted, tmp_path_factory, attack, fragment):
    folder = tmp_path_factory.getbasetemp() / "odd-attacks"
    folder.mkdir(exist_ok=True)
    (folder / "odd_attacks.py").write_text(ODD_ATTACKS)
    rt.load_plugins([folder / "odd_attacks.py"])
    trained = rt.train(planted, "metric", epochs=1, dim=8, device="cpu")
    with pytest.raises(PluginError, match=re.escape(fragment)):
        rt.attack(trained, planted, [attack])


# -- messages --------------------------------------------------------------------------------------

@pytest.mark.parametrize("message, fragment", [
    ("attempt to write a readonly database", "read-only"), ("database or disk is full", "the disk is full"),
    ("file is not a database", "not a readable results database")])
def test_database_errors_say_what_is_wrong_and_advise_a_restore_only_for_a_damaged_file(message, fragment):
    text = _database_problem(message)
    assert fragment in text
    assert ("restore" in text) == (fragment == "not a readable results database")


def test_tsv_with_eight_or_ten_tags_trains(tmp_path):
    for tags in (8, 10):
        data = planted_tsv(tmp_path / f"t{tags}.tsv", n_tags=tags, n_groups=2)
        split = rt.load_dataset(f"tsv:{data}", p_core=3)
        trained = rt.train(split, "metric", epochs=1, dim=8, device="cpu")
        assert 0 <= trained.metrics["ndcg@3"] <= 1


# -- the Python API ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_small(planted):
    return rt.train(planted, "metric", epochs=1, dim=8, device="cpu")


@pytest.mark.parametrize("call, fragment", [
    (lambda split, trained: rt.train(split, model=123), "model 123: expected a spec string"),
    (lambda split, trained: rt.train("movielens"), "split 'movielens': expected a TagSplit"),
    (lambda split, trained: rt.load_dataset(None), "name None: expected a data set name"),
    (lambda split, trained: rt.attack(trained, split, [123]), "attacks 123: expected attack specs"),
    (lambda split, trained: rt.bench(123), "spec 123: expected a spec file"),
    (lambda split, trained: rt.verify_claims(".", []), "claims []: expected a claims file"),
    (lambda split, trained: rt.load_plugins(123), "plugins 123: expected plugin files"),
])
def test_api_arguments_of_the_wrong_type_get_the_librarys_error(planted, trained_small, call, fragment):
    with pytest.raises(RobustagError, match=re.escape(fragment)):
        call(planted, trained_small)


def test_api_attack_takes_a_scalar_budget_and_an_unregistered_attack_instance(planted, trained_small):
    from robustag.attack import EmbeddingAttack

    class StandStill(EmbeddingAttack):
        name = "stand-still-api"
        summary = "moves nothing"

        def perturb(self, objective, deltas, radius):
            return {k: torch.zeros_like(v) for k, v in deltas.items()}

    table = rt.attack(trained_small, planted, [StandStill(eps=0.1), "fgsm"], eps=0.2)
    assert list(table["eps"]) == [0.2, 0.2]
    assert table.iloc[0]["attacked_ndcg@3"] == pytest.approx(table.iloc[0]["clean_ndcg@3"])


def test_api_attack_refuses_a_model_trained_on_another_split(planted, trained_small, tmp_path):
    other = rt.load_dataset(f"tsv:{planted_tsv(tmp_path / 'other.tsv', n_users=50, seed=1)}", p_core=3)
    with pytest.raises(RobustagError, match="the model was trained on"):
        rt.attack(trained_small, other, ["fgsm"])


def test_load_plugins_takes_one_file_as_well_as_several(tmp_path):
    plugin = tmp_path / "one.py"
    plugin.write_text(PLUGIN_ATTACK.format(tag="one", scale=0))
    assert rt.load_plugins(str(plugin)) == ["nudge-one"]


# -- the command line: refused up front, and said once -------------------------------------------

def test_saving_a_model_that_learns_nothing_is_refused_before_it_runs(tmp_path, robustag, planted_path):
    output = refused(robustag("train", "-d", f"tsv:{planted_path}", "--p-core", "3", "-m", "pop", "--save",
                              tmp_path / "x.pt"), "--save", "pop is not a learned model")
    assert "NDCG" not in output  # nothing was trained and printed first


@pytest.mark.parametrize("extra, fragment", [(["--dim", "16"], "--dim"), (["-m", "pitf"], "--model"),
                                             (["--defense", "aml"], "--defense")])
def test_attack_load_refuses_options_the_saved_model_makes_meaningless(tmp_path, robustag, planted_path, extra, fragment):
    refused(robustag("attack", "-d", f"tsv:{planted_path}", "--p-core", "3", "--load", tmp_path / "saved.pt",
                     "--attacks", "fgsm", *extra), "--load", fragment, "would change nothing")


def test_checks_with_nothing_to_check_is_refused(robustag, planted_path):
    refused(robustag("attack", "-d", f"tsv:{planted_path}", "--p-core", "3", "--attacks", "tag-replace-20", "--checks"),
            "--checks: none of these attacks has sanity checks")


def test_a_budget_written_in_an_attack_and_replaced_by_eps_is_noted(planted, trained_small):
    with pytest.warns(UserWarning, match="fgsm:eps=0.3: the budgets 0.1 given for every evasion attack replace"):
        rt.build_attacks(["fgsm:eps=0.3", "pgd"], eps=[0.1])


def test_a_params_error_names_the_spec_key_not_a_flag(tmp_path, planted_path):
    spec = spec_file(tmp_path, planted_path, 'defenses = ["plain"]\n[params]\ndim = 0\n')
    with pytest.raises(RobustagError, match=re.escape("spec sweep: [params] dim: invalid value 0; expected a positive value")):
        rt.bench(spec, tmp_path / "run", device="cpu")


def test_a_training_option_in_a_model_spec_is_a_training_option():
    from robustag.training import default_config

    assert default_config("fm:dim=16").dim == 16 == default_config("fm", dim=16).dim
    with pytest.raises(RobustagError, match=re.escape("dim: invalid value 0; expected a positive value")):
        default_config("fm:dim=0")
    with pytest.raises(RobustagError, match="give it once"):
        default_config("fm:dim=16", dim=32)


@pytest.mark.parametrize("spec, canonical", [("pgd:targets=item+user", "user+item"), ("pgd:targets=tag+user", "user+tag")])
def test_attack_targets_have_one_spelling(spec, canonical):
    assert ATTACKS.create(spec).targets == canonical
    assert f"targets={canonical}" in ATTACKS.create(spec).spec


def test_a_table_named_twice_in_targets_is_refused():
    with pytest.raises(PluginError, match="names a table twice"):
        ATTACKS.create("pgd:targets=user+user")


def test_packing_units_on_a_gpu_without_one_is_refused(tmp_path, planted_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = spec_file(tmp_path, planted_path, 'defenses = ["plain"]\n')
    with pytest.raises(RobustagError, match="per_gpu 4: packs units on each GPU, and this run has none"):
        rt.bench(spec, tmp_path / "run", device="auto", per_gpu=4)


def test_a_tuned_entry_error_shows_single_braces(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('defenses = ["plain"]\n[tuned]\n"a/b/aml" = 3\n')
    with pytest.raises(RobustagError) as error:
        load_specs(path)
    assert "{ defense = spec, params = {...} }" in str(error.value) and "{{" not in str(error.value)


def test_a_bench_refused_while_checking_its_input_shows_no_progress_bars(tmp_path, robustag):
    output = refused(robustag("bench", "--datasets", "nosuch", "--out", tmp_path / "run"), "unknown dataset 'nosuch'")
    assert "cells" not in output and "0/None" not in output


def test_a_download_refused_shows_no_download_bar(robustag, tmp_path):
    output = refused(robustag("data", "download", "foo", "--data-dir", tmp_path), "unknown dataset 'foo'")
    assert "downloading" not in output


def test_synthetic_sizes_beyond_the_machines_memory_are_refused_up_front():
    with pytest.raises(RobustagError, match="needs about .* GiB, more than this machine's"):
        rt.load_dataset("synthetic:posts=100000000000")


# -- failures while writing keep what was there -------------------------------------------------------

def test_a_report_that_cannot_be_written_leaves_the_previous_one_whole(swept, monkeypatch):
    import errno

    from robustag import report

    _, run = swept
    report.write_report(run)
    before = {p.relative_to(run / "report"): p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()}

    def full_disk(table):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "render_latex", full_disk)
    with pytest.raises(RobustagError, match="No space left on device.*previous report, if any, is unchanged"):
        report.write_report(run)
    after = {p.relative_to(run / "report"): p.read_bytes() for p in (run / "report").rglob("*") if p.is_file()}
    assert after == before and not (run / ".report-new").exists()


def test_a_model_save_beyond_a_file_size_limit_fails_cleanly(planted, trained_small, tmp_path):
    import resource
    import signal

    from robustag.checkpoint import save_model

    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limits[1]))
    try:
        with pytest.raises(RobustagError, match="could not be written .*; nothing was saved"):
            save_model(tmp_path / "model.pt", trained_small.model, trained_small.config, planted)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert list(tmp_path.iterdir()) == []


# -- what a plugin author reads back -----------------------------------------------------------------

def test_training_figures_are_readable_through_run_and_results(swept, robustag, tmp_path):
    _, run = swept
    with rt.Run(run) as opened:
        histories = opened.histories()
    assert len(histories) == 4 and {"loss", "adv_loss", "valid_ndcg@3", "defense_name", "seed"} <= set(histories)
    assert histories["adv_loss"].notna().sum() == 2  # aml's own figure, on its two models
    code, output = robustag("results", run, "--histories", "--csv", tmp_path / "epochs.csv")
    assert code == 0, output
    assert len(pd.read_csv(tmp_path / "epochs.csv")) == 4


THREAT_PLUGIN = """
import torch
from robustag.attack import EmbeddingAttack

class Blind(EmbeddingAttack):
    name = "blind-kl"
    summary = "label-free, with its own description"
    knows_labels = False
    threat_model = "label-free"
    threat_description = "the model's output distribution only: it pushes the KL divergence up"

    def perturb(self, objective, deltas, radius):
        return {k: torch.zeros_like(v) for k, v in deltas.items()}
"""


def test_a_plugin_states_its_own_threat_description(planted_path, tmp_path):
    plugin = tmp_path / "blind.py"
    plugin.write_text(THREAT_PLUGIN)
    spec = spec_file(tmp_path, planted_path, 'attacks = ["blind-kl", "label-free"]\nseeds = 1\n[params]\nepochs = 1\n'
                                             'dim = 8\n')
    with rt.bench(spec, tmp_path / "run", device="cpu", plugins=[plugin]):
        pass
    threats = pd.read_csv(tmp_path / "run" / "report" / "sweep-threats.csv").set_index("attack")
    assert threats.loc["blind-kl ε=0.1", "the attacker knows"].startswith("the model's output distribution only")
    assert "pushes the model's own top tags down" in threats.loc["label-free ε=0.1", "the attacker knows"]


def test_a_nested_sweep_is_refused_by_bench_and_tune_alike(tmp_path, planted_path):
    spec = spec_file(tmp_path, planted_path, 'defenses = ["plain", "aml:eps=[[0.1,0.2]]"]\n')
    for run in (lambda: rt.bench(spec, tmp_path / "run", device="cpu"),
                lambda: rt.tune(spec, tmp_path / "tune", budget=2, device="cpu")):
        with pytest.raises(RobustagError, match="eps sweeps lists of values; a sweep is one flat list"):
            run()


def test_the_attack_function_says_where_the_module_of_its_name_is():
    import importlib

    assert 'help(importlib.import_module("robustag.attack"))' in rt.attack.__doc__
    module = importlib.import_module("robustag.attack")  # the module, as the docstring says
    assert module.__name__ == "robustag.attack" and hasattr(module, "EmbeddingAttack")


def test_a_report_says_when_a_plugins_code_changed_since_its_cells_ran(planted_path, tmp_path):
    from robustag.report import write_report

    plugin = tmp_path / "nudge_report.py"
    plugin.write_text(PLUGIN_ATTACK.format(tag="report", scale=0))
    spec = spec_file(tmp_path, planted_path, 'attacks = ["nudge-report"]\n[params]\nepochs = 1\ndim = 8\n')
    with rt.bench(spec, tmp_path / "run", device="cpu", plugins=[plugin], report=False) as run:
        config = json.loads(run.store.cells(status="done").set_index("attack_name").loc["nudge-report", "config"])
    assert config["code"]["attack"] == ATTACKS.code("nudge-report")  # the provenance of the cell
    assert "changed since" not in (write_report(tmp_path / "run") / "report.md").read_text()
    plugin.write_text(PLUGIN_ATTACK.format(tag="report", scale=0.0))
    report = (write_report(tmp_path / "run") / "report.md").read_text()
    assert "1 cells were computed by an earlier version of the attack plugin 'nudge-report'" in report


# -- results that travel with the repository (issue 24, point 6) ---------------------------------------

def test_a_run_rebuilt_from_its_archive_regenerates_the_same_report(swept, robustag, tmp_path):
    from robustag.report import write_report

    _, run = swept
    original = write_report(run)
    code, output = robustag("export", run, tmp_path / "run.zip")
    assert code == 0 and "archive:" in output, output
    code, output = robustag("import", tmp_path / "run.zip", tmp_path / "rebuilt")
    assert code == 0 and "8 cells" in output, output
    rebuilt = write_report(tmp_path / "rebuilt")
    tables = sorted(p.name for p in original.glob("*.csv"))
    assert tables and tables == sorted(p.name for p in rebuilt.glob("*.csv"))
    for name in tables:
        assert (original / name).read_text() == (rebuilt / name).read_text(), name
    with rt.Run(run) as before, rt.Run(tmp_path / "rebuilt") as after:
        assert before.store.meta("test_items") == after.store.meta("test_items") is not None
        assert before.per_post("ndcg@3").equals(after.per_post("ndcg@3"))
    refused(robustag("import", tmp_path / "run.zip", tmp_path / "rebuilt"), "already holds results.sqlite")


def test_a_bench_resumes_on_an_imported_archive_running_only_the_cells_it_lacks(swept, tmp_path):
    """benchmarks/paper-rerun.sh carries a long rerun across machines this way: a checkpoint
    archive imported into an empty folder, then the same bench with more seeds."""
    spec, run = swept
    with rt.Run(run) as opened:
        opened.export(tmp_path / "checkpoint.zip", ["ndcg@3", "f1@3", "p@3"])
    rt.Run.from_archive(tmp_path / "checkpoint.zip", tmp_path / "resumed").close()
    events = []
    with rt.bench(spec, tmp_path / "resumed", seeds=2, device="cpu", report=False,
                  on_event=lambda kind, data: events.append(kind)) as resumed, rt.Run(run) as original:
        done = resumed.store.cells(status="done")
        assert len(done) == 2 * len(original.store.cells(status="done")) == 16
        assert events.count("cell") == 8  # seed 1's cells; seed 0's came done from the archive
        kept = original.per_post("ndcg@3")
        assert resumed.per_post("ndcg@3")[kept.columns].equals(kept)  # posts × cells


def test_an_archive_can_keep_only_the_metrics_reports_test(swept, tmp_path):
    import zipfile

    _, run = swept
    with rt.Run(run) as opened:
        full, small = opened.export(tmp_path / "full.zip"), opened.export(tmp_path / "small.zip", ["ndcg@3", "f1@3", "p@3"])
    assert small.stat().st_size < full.stat().st_size
    with zipfile.ZipFile(small) as archive:
        values = np.load(archive.open("post_metrics.npz"))
        assert sorted(values["metrics"]) == ["f1@3", "ndcg@3", "p@3"]
    with rt.Run(run) as opened, pytest.raises(RobustagError, match="expected a .zip"):
        opened.export(tmp_path / "x.tar")


# -- more test posts per user (issue 24, point 5) --------------------------------------------------------

def test_more_test_posts_per_user_keep_a_training_post_and_the_paper_split_unchanged(planted_path, tmp_path):
    one = rt.load_dataset(f"tsv:{planted_path}", p_core=3)
    three = rt.load_dataset(f"tsv:{planted_path}", p_core=3, test_posts=3)
    assert one.options.describe() == {"p_core": 3, "seed": 0, "validation": True}  # keys from before stay
    per_user = np.bincount(three.test.users, minlength=three.n_users)
    assert per_user.max() == 3 and len(three.test) > 2 * len(one.test)
    assert set(np.unique(three.train.users)) == set(range(three.n_users))  # every user keeps training posts
    last = {(u, i) for u, i in zip(one.test.users, one.test.items)}
    assert last <= {(u, i) for u, i in zip(three.test.users, three.test.items)}  # the last post is still a test post
    spec = spec_file(tmp_path, planted_path, 'test_posts = 2\n[params]\nepochs = 1\ndim = 8\n')
    with rt.bench(spec, tmp_path / "run", device="cpu", report=False) as run:
        assert len(run.per_post("ndcg@3")) == len(rt.load_dataset(f"tsv:{planted_path}", p_core=3, test_posts=2).test)
    with pytest.raises(RobustagError, match="test_posts"):
        rt.load_dataset(f"tsv:{planted_path}", p_core=3, test_posts=0)


def test_models_poisoned_by_added_users_are_keyed_apart_from_those_before_the_fix(planted_path, tmp_path):
    from robustag.planning import COMPUTATION, digest, plan

    spec = load_specs(spec_file(tmp_path, planted_path, 'attacks = ["tag-promote"]\n'))
    unit = next(u for u in plan(spec).units.values() if u.poison)
    before = {"dataset": unit.dataset, "split": unit.options.describe(), "config": unit.config.describe(),
              "defense": unit.defense, "poison": unit.poison, "version": COMPUTATION}
    assert unit.key != digest(before)  # a rerun retrains it: its stored cells re-initialised every row
