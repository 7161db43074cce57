"""The Python API as a notebook user meets it: the documented example runs as written, and
the objects it returns agree with what the store and the CLI say."""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

import robustag as rt

REPO = Path(__file__).resolve().parents[1]


def test_the_tour_runs_as_written(tmp_path, monkeypatch, capsys, real_data_dir):
    monkeypatch.setattr(sys, "argv", ["api_tour.py", str(tmp_path / "tour")])
    runpy.run_path(str(REPO / "examples" / "api_tour.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "clean NDCG@3: plain" in printed and "(posts × cells)" in printed
    assert (tmp_path / "tour" / "report" / "report.html").is_file()


@pytest.fixture(scope="module")
def split(real_data_dir):
    return rt.load_dataset("movielens", data_dir=real_data_dir)


def test_train_and_attack_return_objects_that_agree(split):
    trained = rt.train(split, model="metric", defense="plain", seed=0, epochs=2, dim=16, device="cpu")
    assert trained.config.epochs == 2 and trained.config.dim == 16 and len(trained.history) == 2
    assert 0 < trained.metrics["ndcg@3"] < 1
    table = rt.attack(trained, split, ["fgsm", "pgd:steps=3"], eps=[0.05, 0.1])
    assert list(table["eps"]) == [0.05, 0.1, 0.05, 0.1]
    assert (table["clean_ndcg@3"] == trained.metrics["ndcg@3"]).all()
    assert (table["attacked_ndcg@3"] <= table["clean_ndcg@3"]).all()
    assert [w["eps"] for w in table.attrs["worst_case"]] == [0.05, 0.1]
    # a metric model has a certificate: the truth lies in [certified bound, worst attack]
    certified = table.attrs["certified"]
    assert [c["eps"] for c in certified] == [0.05, 0.1]
    for bound, worst in zip(certified, table.attrs["worst_case"]):
        assert bound["certified_ndcg@3"] <= worst["worst_ndcg@3"] and bound["gap_ndcg@3"] >= 0
    assert certified[0]["certified_ndcg@3"] >= certified[1]["certified_ndcg@3"]
    pop = rt.train(split, model="pop-mix")
    assert rt.attack(pop, split, ["tag-replace-10"]).attrs["certified"] == []  # nothing to certify
    again = rt.train(split, model="metric", defense="plain", seed=0, epochs=2, dim=16, device="cpu")
    assert again.metrics == trained.metrics  # a fixed seed reproduces the same numbers


def test_library_errors_name_parameters_and_the_cli_its_flags(split, tmp_path):
    from robustag.cli import error_text

    with pytest.raises(rt.RobustagError, match="^defense aml: pop is not a learned model") as raised:
        rt.train(split, model="pop", defense="aml")
    assert error_text(raised.value).startswith("--defense aml: pop is not a learned model")
    with pytest.raises(rt.RobustagError, match=f"^load {tmp_path / 'x.pt'}: file not found") as raised:
        rt.load(tmp_path / "x.pt", split)
    assert error_text(raised.value).startswith("--load ")
    with pytest.raises(rt.RobustagError, match="^p_core 0: must be ≥ 1") as raised:
        rt.load_dataset("movielens", p_core=0)
    assert error_text(raised.value).startswith("--p-core 0: ")
    with pytest.raises(rt.RobustagError, match="^plugins .*nowhere.py: file not found") as raised:
        rt.load_plugins([tmp_path / "nowhere.py"])
    assert error_text(raised.value).startswith("--plugin ")
    with pytest.raises(rt.RobustagError, match="unknown attack"):
        rt.build_attacks(["nope"])


def test_a_run_reads_back_what_the_bench_stored(tmp_path, real_data_dir):
    with rt.bench(datasets=["movielens"], defenses=["plain"], attacks=["fgsm"], seeds=[0, 1], epochs=2,
                  out=tmp_path / "run", data_dir=real_data_dir, device="cpu", report=False) as run:
        cells = run.cells(status="done")
        assert len(cells) == 4 and set(cells["attack_name"]) == {"clean", "fgsm"}
        assert cells.loc[cells["attack_name"] == "clean", "eps"].isna().all()
        per_post = run.per_post("ndcg@3")
        assert list(per_post.columns) == list(cells["key"])
        assert np.allclose(per_post.mean().to_numpy(), cells["ndcg@3"].to_numpy())
        assert run.compare(reference="plain").empty  # nothing to compare a lone reference with
        assert run.failed == 0


def test_the_documented_example_runs_as_written(real_data_dir, tmp_path):
    """The README's example, its bench on a one-seed, two-epoch default without `auto` (whose
    verifier witnesses cost 7 s per cell here; `auto` in a bench is tested with the bounds)."""
    split = rt.load_dataset("movielens", data_dir=real_data_dir)
    trained = rt.train(split, model="metric", defense="spaml-s", seed=0)
    table = rt.attack(trained, split, ["pgd:eps=0.1", "fgsm"])
    assert list(table["attack"].str.split(":").str[0]) == ["pgd", "fgsm"] and table.attrs["worst_case"]
    with rt.bench(out=tmp_path / "x", workers=2, seeds=1, epochs=2, attacks=["fgsm", "pgd", "certified", "tag-replace-20"],
                  data_dir=real_data_dir, device="cpu") as run:
        run.cells(); run.per_post("ndcg@3"); run.compare(reference="plain"); run.report()
    assert {"metric", "pitf", "fm", "pop-mix"} <= set(rt.MODELS.names()) and "pgd" in rt.ATTACKS.names()
    assert "spaml-s" in rt.DEFENSES.names()
