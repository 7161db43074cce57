"""Shared fixtures: the real data directory, a private cache, and small synthetic data sets."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests and CI read the real data sets from ../shared/data unless told otherwise.
# A relative directory (`export ROBUSTAG_DATA_DIR=../shared/data`, as the README says) is taken
# from where pytest started: tests change directory.
os.environ["ROBUSTAG_DATA_DIR"] = str(Path(os.environ.get("ROBUSTAG_DATA_DIR", REPO.parent / "shared" / "data")).absolute())
# Training compiles by default; the suite trains hundreds of tiny models, for which the
# compiler's warm-up costs more than it saves. The tests of the default path unset this.
os.environ["ROBUSTAG_COMPILE"] = "0"


def pytest_collection_modifyitems(items):
    if shutil.which("c++") or shutil.which("g++"):
        return
    skip = pytest.mark.skip(reason="torch.compile on CPU needs a C++ compiler")
    for item in items:
        if item.get_closest_marker("needs_compiler"):
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Processed splits go to a cache private to this test session."""
    os.environ["ROBUSTAG_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    path = Path(os.environ["ROBUSTAG_DATA_DIR"])
    if not (path / "hetrec2011-lastfm-2k").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the real data sets are missing from {path}: CI must provide ../shared/data")
        pytest.skip(f"real data sets not found in {path}")
    return path


def planted_tsv(path: Path, **sizes) -> Path:
    """The kit's planted data set (`robustag.testing.planted_assignments`) as a TSV file."""
    from robustag.testing import planted_assignments

    users, items, tags, times = planted_assignments(**sizes)
    rows = [f"{u}\t{i}\t{t}\t{int(ts)}" for u, i, t, ts in zip(users, items, tags, times)]
    path.write_text("user\titem\ttag\ttimestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def planted_path(tmp_path_factory) -> Path:
    return planted_tsv(tmp_path_factory.mktemp("planted") / "planted.tsv")


@pytest.fixture(scope="session")
def planted(planted_path, tmp_path_factory):
    """The planted data set, processed (3-core)."""
    from robustag.preprocess import SplitOptions, load_split

    return load_split(f"tsv:{planted_path}", tmp_path_factory.mktemp("planted-split"), SplitOptions(p_core=3))


def run_main(*args) -> None:
    """`robustag ARGS` through the real entry point, for fixtures wider than one test."""
    from robustag import cli

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["robustag", *map(str, args)])
        try:
            cli.main()
        except SystemExit as exit_:
            assert exit_.code in (0, None), f"robustag {' '.join(map(str, args))} exited with {exit_.code}"


HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture(scope="session")
def hostile_run(tmp_path_factory) -> Path:
    """A finished run with report whose spec name and data set path carry HTML that would run
    script if a report let it through."""
    folder = tmp_path_factory.mktemp("hostile")
    data = folder / HOSTILE / "tags.tsv"  # the '/' of </script> makes a folder too: still one path
    data.parent.mkdir(parents=True)
    planted_tsv(data)
    spec = folder / "hostile.toml"
    spec.write_text(f"""name = {json.dumps(HOSTILE)}
datasets = [{json.dumps(f"tsv:{data}")}]
defenses = ["plain", "aml"]
attacks = ["fgsm"]
seeds = 1
p_core = 3
[params]
epochs = 2
dim = 8
""")
    run_main("bench", spec, "--out", folder / "run", "--device", "cpu")
    return folder / "run"


@pytest.fixture
def robustag(capsys, monkeypatch):
    """Run the `robustag` command as a user would (through `main`, errors and all); returns
    (exit code, everything printed)."""
    from robustag import cli

    def invoke(*args) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["robustag", *map(str, args)])
        try:
            cli.main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out + captured.err
    return invoke


def refused(result: tuple[int, str], *fragments: str) -> str:
    """A non-zero exit with one error line holding every fragment, and no traceback."""
    code, output = result
    assert code != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert errors, output
    for fragment in fragments:
        assert any(fragment in line for line in errors), (fragment, output)
    return output
