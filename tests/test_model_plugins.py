"""Models as plugins: the built-ins and the example pass the kit; a model from a file and from
an installed package's entry point trains, is attacked and is benched like a built-in."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustag.models import MODELS, Model
from robustag.plugins import Registry, import_plugin_file
from robustag.testing import check_model
from robustag.training import TrainConfig, default_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugins" / "dot_product.py"


@pytest.mark.parametrize("name", MODELS.names())
def test_every_built_in_model_conforms(name):
    passed = check_model(MODELS.get(name))
    assert ("trains" in passed) == MODELS.get(name).learned


def test_the_example_model_conforms():
    assert "embeddings_serve_attacks" in check_model(import_plugin_file(EXAMPLE).DotProduct)


def test_a_configuration_keeps_only_what_its_model_declares():
    metric = default_config("metric:margin=1", dim=16)
    assert metric.model == "metric" and metric.model_params == {"margin": 1.0, "norm": "clip", "reg": 0.0}
    assert default_config("pitf").model_params == {"reg": 1e-5}
    # the flat description keeps the layout (and so the keys) of run folders made before
    flat = default_config("pitf", seed=2).describe()
    assert {k: flat[k] for k in ("margin", "norm", "reg", "mix", "dim", "negatives")} == {
        "margin": 0.5, "norm": "clip", "reg": 1e-5, "mix": None, "dim": 128, "negatives": 8}
    assert TrainConfig.from_description(flat) == default_config("pitf", seed=2)


def _run(*args, env=None, cwd=None):
    result = subprocess.run([sys.executable, "-m", "robustag", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_a_model_from_a_file_trains_is_attacked_and_benched(tmp_path, real_data_dir):
    common = ["--data-dir", real_data_dir, "--device", "cpu", "--plugin", EXAMPLE]
    out = tmp_path / "attack.json"
    _run("attack", "-d", "movielens", "-m", "dot-product:reg=0.0001", "--epochs", "2", "--attacks", "fgsm,tag-replace-10",
         "--json", out, *common)
    payload = json.loads(out.read_text())
    assert payload["model"] == "dot-product" and payload["config"]["reg"] == 0.0001
    assert payload["attacks"][0]["attacked_ndcg@3"] < payload["clean"]["ndcg@3"]
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "plugged"\ndatasets = ["movielens"]\nmodels = ["dot-product", "pop"]\n'
                    'defenses = ["plain", "aml"]\nattacks = ["fgsm"]\n[params]\nepochs = 2\nreg = 0.001\n')
    _run("bench", spec, "--out", tmp_path / "run", "--no-report", *common)
    _run("results", tmp_path / "run", "--csv", tmp_path / "cells.csv")
    cells = (tmp_path / "cells.csv").read_text()
    assert cells.count("dot-product") >= 4 and '\\"reg\\": 0.001' in cells.replace('""', '\\"')


def test_a_model_from_an_entry_point_is_found_and_benched(tmp_path, real_data_dir):
    site = tmp_path / "site"
    site.mkdir()
    (site / "my_dot.py").write_text(EXAMPLE.read_text().replace('"dot-product"', '"my-dot"'))
    info = site / "my_dot-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-dot\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[robustag.models]\nmy-dot = my_dot:DotProduct\n")
    sys.path.insert(0, str(site))
    try:
        registry = Registry("model", Model, "robustag.models", "robustag.models")
        assert "my-dot" in registry.names() and "entry point" in registry.origin("my-dot")
    finally:
        sys.path.remove(str(site))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listing = _run("models", "list", env=env)
    assert "my-dot" in listing
    _run("bench", "--datasets", "movielens", "--models", "my-dot", "--defenses", "plain", "--attacks", "fgsm",
         "--seeds", "1", "--epochs", "2", "--out", tmp_path / "run", "--no-report", "--data-dir", real_data_dir,
         "--device", "cpu", env=env)
