"""The benchmark matrix: plan units and cells, run them resumably, keep every result.

A *unit* is one trained model: (dataset, split, model config with seed, defense, poisoning
attack or none). It is trained once and evaluated in *cells*: clean, and under every evasion
attack (at every ε); a poisoned unit has one cell, its clean-test evaluation. Units and cells
are content-addressed: the key is the hash of everything that determines them, so a second
run of the same command skips what is done, and trained models are cached under
`RUN/models/<unit key>.pt`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

import robustag
from robustag.attack import ATTACKS, EmbeddingAttack
from robustag.checkpoint import load_model, save_model
from robustag.datasets import resolve_source
from robustag.defense import DEFENSES
from robustag.errors import RobustagError
from robustag.evaluation import evaluate, scores_of
from robustag.models import LEARNED_MODELS
from robustag.preprocess import SplitOptions, load_split
from robustag.robustness import evade, promotion_figures
from robustag.spec import BenchSpec
from robustag.store import ResultStore
from robustag.training import TrainConfig, default_config, resolve_device, train


def digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CellTask:
    key: str
    attack: str | None  # canonical spec; None: clean
    surface: str  # "none", "embedding" or "data"
    eps: float | None


@dataclass
class UnitTask:
    """Everything a worker needs to train one model and evaluate its cells (picklable)."""

    key: str
    dataset: str
    options: SplitOptions
    config: TrainConfig
    defense: str
    poison: str | None
    cells: list[CellTask] = field(default_factory=list)

    @property
    def label(self) -> str:
        poison = f" ← {self.poison.split(':')[0]}" if self.poison else ""
        return f"{self.dataset} {self.config.model} {self.defense.split(':')[0]}{poison} seed {self.config.seed}"


@dataclass
class Plan:
    units: dict[str, UnitTask] = field(default_factory=dict)
    rows: dict[str, list[dict]] = field(default_factory=dict)  # spec name -> cell rows

    @property
    def n_cells(self) -> int:
        return sum(len(u.cells) for u in self.units.values())

    def defense_names(self) -> list[str]:
        return list(dict.fromkeys(unit.defense.split(":")[0] for unit in self.units.values()))


def plan(specs: list[BenchSpec]) -> Plan:
    """Expand the specs into units and cells; every plugin and option is checked here, before
    anything runs. Specs that share a unit (say, the same plain model) share its training."""
    result = Plan()
    for spec in specs:
        for dataset in spec.datasets:
            resolve_source(dataset)  # an unknown data set stops here, before any work
        rows = result.rows.setdefault(spec.name, [])
        defenses = [DEFENSES.create(s) for s in spec.expanded_defenses()]
        attacks = [ATTACKS.create(s) for s in spec.expanded_attacks()]
        evasions = _with_budgets([a for a in attacks if isinstance(a, EmbeddingAttack)], spec.eps)
        poisons = [a for a in attacks if not isinstance(a, EmbeddingAttack)]
        options = SplitOptions(spec.p_core, spec.split_seed, True)
        for dataset in spec.datasets:
            for model in spec.models:
                for params in spec.param_grid():
                    for seed in spec.seeds:
                        config = default_config(model, seed=seed, **params)
                        for defense in defenses:
                            if defense.name != "plain" and model not in LEARNED_MODELS:
                                continue  # a defense is a training regime: popularity has none
                            clean_unit = _unit(result, dataset, options, config, defense.spec, None)
                            rows.append(_cell(clean_unit, None))
                            if model in LEARNED_MODELS:
                                rows += [_cell(clean_unit, attack) for attack in evasions]
                            for poison in poisons:
                                rows.append(_cell(_unit(result, dataset, options, config, defense.spec, poison.spec), poison))
    return result


def _with_budgets(evasions: list[EmbeddingAttack], budgets: list[float] | None) -> list[EmbeddingAttack]:
    if not budgets:
        return evasions
    return [ATTACKS.create(a.spec, eps=eps) for a in evasions for eps in budgets]


def _unit(plan_: Plan, dataset, options, config, defense, poison) -> UnitTask:
    key = digest({"dataset": dataset, "split": asdict(options), "config": asdict(config), "defense": defense,
                  "poison": poison, "version": robustag.__version__})
    if key not in plan_.units:
        plan_.units[key] = UnitTask(key, dataset, options, config, defense, poison)
    return plan_.units[key]


def _cell(unit: UnitTask, attack) -> dict:
    spec = attack.spec if attack is not None else None
    surface = attack.surface if attack is not None else "none"
    eps = attack.eps if isinstance(attack, EmbeddingAttack) else None
    key = digest({"unit": unit.key, "attack": spec})
    if all(c.key != key for c in unit.cells):
        unit.cells.append(CellTask(key, spec if surface == "embedding" else None, surface, eps))
    params = {k: v for k, v in asdict(unit.config).items() if k not in ("seed", "model")}
    return {
        "key": key, "unit": unit.key, "dataset": unit.dataset, "model": unit.config.model,
        "params": json.dumps(params, sort_keys=True), "seed": unit.config.seed, "defense": unit.defense,
        "defense_name": unit.defense.split(":")[0], "attack": spec, "attack_name": spec.split(":")[0] if spec else None,
        "surface": surface, "eps": eps,
        "config": json.dumps({"unit": asdict(unit.config) | {"dataset": unit.dataset, "split": asdict(unit.options),
                                                              "defense": unit.defense, "poison": unit.poison},
                              "attack": spec}, sort_keys=True),
    }


# -- running one unit (in a worker) ------------------------------------------------------------

EventFn = Callable[[str, dict], None]


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs besides its unit and device (picklable: sent to processes)."""

    data_dir: str
    model_dir: str
    plugins: tuple[str, ...] = ()
    threads: int | None = None
    compile: bool = False


def execute_unit(task: UnitTask, setup: WorkerSetup, device: str, on_event: EventFn | None = None) -> dict:
    """Train (or load) one unit's model and evaluate its cells; a failure is recorded, not raised."""
    if setup.threads:
        torch.set_num_threads(setup.threads)
    for path in setup.plugins:
        ATTACKS.load_file(path)
        DEFENSES.load_file(path)
    emit = on_event or (lambda kind, data: None)
    torch_device = torch.device(device)
    started = time.perf_counter()
    warnings: list[str] = []
    try:
        split = load_split(task.dataset, Path(setup.data_dir), task.options)
        train_split = ATTACKS.create(task.poison).poison(split, seed=task.config.seed) if task.poison else split
        model, history, train_seconds = _trained_model(task, train_split, setup, torch_device, emit, warnings)
    except Exception:  # the whole unit failed: every cell carries the traceback
        error = traceback.format_exc()
        return {"unit": task.key, "history": [], "warnings": warnings, "results": [
            {"key": c.key, "status": "failed", "error": error, "seconds": time.perf_counter() - started} for c in task.cells]}
    results = [_evaluate_cell(cell, task, model, split, torch_device, train_seconds, emit) for cell in task.cells]
    return {"unit": task.key, "history": history, "warnings": warnings, "results": results}


def _trained_model(task: UnitTask, split, setup: WorkerSetup, device: torch.device, emit: EventFn, warnings: list[str]):
    """The unit's cached model, or a newly trained one; a cache file that does not load (cut
    short, damaged, of another split) is discarded with a warning and the model retrained."""
    path = Path(setup.model_dir) / f"{task.key}.pt"
    if task.config.model in LEARNED_MODELS and path.is_file():
        try:
            model, _, extra = load_model(path, split, device, with_extra=True)
            return model, extra.get("history", []), extra.get("train_seconds", 0.0)
        except Exception as error:
            warnings.append(f"{task.label}: cached model {path} does not load ({error}); discarded, retraining")
            path.unlink(missing_ok=True)
    emit("train", {"unit": task.label, "epochs": task.config.epochs})
    result = train(split, task.config, device, regime=DEFENSES.create(task.defense), compile=setup.compile,
                   on_epoch=lambda record: emit("epoch", {"unit": task.label, **record}))
    if task.config.model in LEARNED_MODELS:
        save_model(path, result.model, result.config, split,
                   extra={"history": result.history, "train_seconds": result.train_seconds})
    return result.model, result.history, result.train_seconds


def _evaluate_cell(cell: CellTask, task: UnitTask, model, split, device, train_seconds: float, emit: EventFn) -> dict:
    started = time.perf_counter()
    emit("cell", {"unit": task.label, "attack": cell.attack or task.poison or "clean"})
    try:
        if cell.surface == "embedding":
            evaluation = evade(model, split, ATTACKS.create(cell.attack), device)
        else:
            evaluation = evaluate(scores_of(model), split.test, split.n_tags, device)
        extra = promotion_figures(ATTACKS.create(task.poison), split, evaluation) if task.poison else {}
        return {"key": cell.key, "status": "done", "metrics": evaluation.summary(), "per_post": evaluation.per_post,
                "extra": extra, "seconds": time.perf_counter() - started, "train_seconds": train_seconds}
    except Exception:
        return {"key": cell.key, "status": "failed", "error": traceback.format_exc(),
                "seconds": time.perf_counter() - started}


# -- executors ----------------------------------------------------------------------------------

@dataclass
class RunSettings:
    out: Path
    data_dir: Path
    device: str = "auto"
    workers: int = 1
    per_gpu: int = 1
    executor: str = "local"
    address: str | None = None
    plugins: tuple[str, ...] = ()
    retry_failed: bool = False
    compile: bool = False

    def worker_setup(self, threads: int | None = None) -> WorkerSetup:
        return WorkerSetup(str(self.data_dir), str(self.out / "models"), self.plugins, threads, self.compile)


def devices_for(settings: RunSettings) -> list[str]:
    """The devices the units run on: one named device, or every GPU for `cuda` (and `auto` on a GPU machine)."""
    device = resolve_device(settings.device)
    if device.type == "cuda" and device.index is None:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(device)]


EXECUTORS = ("local", "ray")


def check_settings(settings: RunSettings) -> None:
    """Executor, worker counts and device, refused before a run folder is touched."""
    if settings.executor not in EXECUTORS:
        raise RobustagError(f"--executor {settings.executor!r}: expected {' or '.join(EXECUTORS)}")
    for option, value in (("--workers", settings.workers), ("--per-gpu", settings.per_gpu)):
        if value < 1:
            raise RobustagError(f"{option} {value}: expected a count ≥ 1")
    if settings.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise RobustagError("--executor ray needs Ray: pip install 'robustag[ray]'")
    devices_for(settings)


def check_data(units: list[UnitTask], data_dir: Path) -> None:
    """Every data set of these units loads (warming the split cache for the workers), and every
    poisoning attack accepts it, before a run folder is touched: bad data fails the command,
    not every cell."""
    for dataset, options in dict.fromkeys((u.dataset, u.options) for u in units):
        split = load_split(dataset, data_dir, options)
        for poison in dict.fromkeys(u.poison for u in units if u.dataset == dataset and u.poison):
            ATTACKS.create(poison).check(split)


def pending_units(plan_: Plan, store: ResultStore, retry_failed: bool) -> list[UnitTask]:
    """Units with a cell still to do (pending, or failed when --retry-failed), each with only
    those cells: adding an attack evaluates the new cells alone, and done cells are left alone."""
    if retry_failed:
        store.mark_failed_pending()
    keys = [c.key for u in plan_.units.values() for c in u.cells]
    status = store.statuses(keys)
    todo = []
    for unit in plan_.units.values():
        cells = [c for c in unit.cells if status.get(c.key) == "pending"]
        if cells:
            todo.append(replace(unit, cells=cells))
    return todo


def store_unit(store: ResultStore, unit: UnitTask, result: dict, device: str, compile: bool, on_event: EventFn) -> None:
    """Write one finished unit's cells with how it ran, and tell the progress display."""
    store.write_unit(unit.key, result["results"], result["history"], run_info(unit, device, compile))
    for message in result.get("warnings", []):
        on_event("warning", {"unit": unit.label, "message": message})
    on_event("unit_done", {"unit": unit.label, "failed": _failed(result), "cells": len(unit.cells)})


def run_info(unit: UnitTask, device: str, compile: bool = False) -> dict:
    """How a unit ran, stored with its cells; compiled training matches eager only to rounding
    (popularity models train nothing, so nothing of theirs is compiled)."""
    compiled = compile and unit.config.model in LEARNED_MODELS
    return {"device": f"{device}+compile" if compiled else device, "versions": versions(), "git": git_revision()}


@functools.cache
def versions() -> dict[str, str]:
    import numpy
    import platform

    return {"robustag": robustag.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


@functools.cache
def git_revision() -> str:
    """The commit of the code this process loaded (asked once: a run outlives later commits)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_units(units: list[UnitTask], settings: RunSettings, store: ResultStore, on_event: EventFn) -> None:
    """Execute units with the chosen executor, writing each unit's results as it completes."""
    devices = devices_for(settings)
    (settings.out / "models").mkdir(parents=True, exist_ok=True)
    if settings.executor == "ray":
        from robustag.executors import run_ray

        return run_ray(units, settings, store, devices, on_event)
    workers = settings.workers if devices == ["cpu"] else len(devices) * settings.per_gpu
    if workers <= 1:
        for unit in units:
            result = execute_unit(unit, settings.worker_setup(), devices[0], on_event=on_event)
            store_unit(store, unit, result, devices[0], settings.compile, on_event)
        return
    from robustag.executors import run_pool

    run_pool(units, settings, store, devices, workers, on_event)


def _failed(result: dict) -> int:
    return sum(r["status"] == "failed" for r in result["results"])


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)
