"""The wall time of one bench spec under two commits, run back to back on this machine: its
speed drifts between days by more than many changes do, so only a pair from one run compares.

    python benchmarks/wall_ab.py BEFORE AFTER [--spec benchmarks/paper-main.toml] [--datasets lastfm]
                                 [--workers 2] [--seeds N] --out FILE.json
    python benchmarks/wall_ab.py --summarise FILE.json    # rewrite a stored pair's per-epoch ratios

Each commit is exported (`git archive`) and installed without dependencies into its own
virtual environment on top of this one's packages, so each side runs its own robustag, its own
built-in plugins and its own copy of the spec, from a scratch run folder. Per side: the wall
seconds, and per trained unit its training seconds and epochs (early stopping differs between
the sides by rounding, so seconds per epoch compare more finely than wall time), and per unit
trained on both sides its seconds per epoch after / before (`per_epoch`, the figure a report quotes).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from common import environment

from robustag.training import resolve_device

REPO = Path(__file__).resolve().parents[1]


def install(commit: str, folder: Path) -> Path:
    """Export `commit` to folder/tree and install it into folder/venv; the venv's python."""
    tree, venv = folder / "tree", folder / "venv"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "shared-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(tree)], check=True)
    found = subprocess.run([str(python), "-c", "import robustag.attacks as a; print(a.__path__[0])"], cwd=folder,
                           check=True, capture_output=True, text=True).stdout.strip()
    if not found.startswith(str(venv)):  # an editable install among the shared packages would win
        raise SystemExit(f"{commit}: its venv imports robustag from {found}, not from its own install")
    return python


def timed_bench(python: Path, tree: Path, spec: str, datasets: str, workers: int, seeds: int | None, run: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([str(python.parent / "robustag"), "bench", spec, "--datasets", datasets, "--workers", str(workers),
                    *(["--seeds", str(seeds)] if seeds else []), "--no-report", "--out", str(run)], cwd=tree, check=True)
    wall = time.perf_counter() - started
    with sqlite3.connect(run / "results.sqlite") as db:
        units = db.execute("select c.unit, c.model, c.defense_name, c.seed, max(c.train_seconds), count(distinct h.epoch) "
                           "from cells c left join histories h on h.unit = c.unit group by c.unit").fetchall()
    keys = ("unit", "model", "defense", "seed", "train_seconds", "epochs")
    return {"wall_seconds": wall, "units": [dict(zip(keys, row)) for row in units]}


def per_epoch_ratios(before: dict, after: dict) -> list[dict]:
    """Per (model, defense, seed) trained on both sides: seconds per epoch, and after / before."""
    def seconds_per_epoch(side: dict) -> dict:
        return {(u["model"], u["defense"], u["seed"]): u["train_seconds"] / u["epochs"] for u in side["units"] if u["epochs"]}
    first, second = seconds_per_epoch(before), seconds_per_epoch(after)
    return [{**dict(zip(("model", "defense", "seed"), key)), "before_epoch_seconds": first[key],
             "after_epoch_seconds": second[key], "after_over_before": second[key] / first[key]}
            for key in sorted(first.keys() & second.keys())]


def summarise(path: Path) -> None:
    report = json.loads(path.read_text())
    report["per_epoch"] = per_epoch_ratios(report["before"], report["after"])
    path.write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("before", nargs="?")
    options.add_argument("after", nargs="?")
    options.add_argument("--summarise", type=Path, metavar="FILE",
                         help="recompute the per-epoch ratios of a stored pair, without rerunning it")
    options.add_argument("--spec", default="benchmarks/paper-main.toml",
                         help="a path inside each commit's tree (its own copy of the spec), or an absolute path")
    options.add_argument("--datasets", default="lastfm")
    options.add_argument("--workers", type=int, default=2)
    options.add_argument("--seeds", type=int, help="the spec's first N seeds only (default: the spec's own)")
    options.add_argument("--out", type=Path)
    args = options.parse_args()
    if args.summarise:
        return summarise(args.summarise)
    if not (args.before and args.after and args.out):
        options.error("BEFORE, AFTER and --out are needed to measure a pair")
    sides = {}
    with tempfile.TemporaryDirectory() as scratch:
        for side, commit in (("before", args.before), ("after", args.after)):
            folder = Path(scratch) / side
            python = install(commit, folder)
            revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", commit], check=True, capture_output=True,
                                      text=True).stdout.strip()
            sides[side] = {"commit": revision, **timed_bench(python, folder / "tree", args.spec, args.datasets,
                                                             args.workers, args.seeds, folder / "run")}
            print(f"{side} {revision[:10]}: {sides[side]['wall_seconds']:.0f} s", flush=True)
    report = {"spec": args.spec, "datasets": args.datasets, "workers": args.workers, "seeds": args.seeds,
              **environment(resolve_device("auto"), None), **sides,
              "per_epoch": per_epoch_ratios(sides["before"], sides["after"])}
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
