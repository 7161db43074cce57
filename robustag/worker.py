"""Running one unit in a worker: train (or load the cached model), evaluate its cells, and
return plain values for the parent to store. A failure is recorded, never raised."""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from robustag.attack import ATTACKS
from robustag.checkpoint import load_model, save_model
from robustag.checks import sanity_checks
from robustag.defense import DEFENSES
from robustag.evaluation import evaluate_model
from robustag.models import MODELS
from robustag.planning import CellTask, UnitTask
from robustag.preprocess import load_split
from robustag.robustness import evade, evasion_figures, poisoned_split, promotion_figures
from robustag.training import train

EventFn = Callable[[str, dict], None]


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs besides its unit and device (picklable: sent to processes)."""

    data_dir: str
    model_dir: str
    plugins: tuple[str, ...] = ()
    threads: int | None = None
    compile: bool | None = None


def execute_unit(task: UnitTask, setup: WorkerSetup, device: str, on_event: EventFn | None = None) -> dict:
    """Train (or load) one unit's model and evaluate its cells; a failure is recorded, not raised."""
    if setup.threads:
        torch.set_num_threads(setup.threads)
    for path in setup.plugins:
        for registry in (ATTACKS, DEFENSES, MODELS):
            registry.load_file(path)
    emit = on_event or (lambda kind, data: None)
    torch_device = torch.device(device)
    started = time.perf_counter()
    warnings: list[str] = []
    try:
        split = load_split(task.dataset, Path(setup.data_dir), task.options)
        train_split = (poisoned_split(split, ATTACKS.create(task.poison), task.config.seed, task.poison_valid)
                       if task.poison else split)
        model, history, train_seconds, compiled = _trained_model(task, train_split, setup, torch_device, emit, warnings)
    except Exception:  # the whole unit failed: every cell carries the traceback
        error = traceback.format_exc()
        return {"unit": task.key, "history": [], "warnings": warnings, "results": [
            {"key": c.key, "status": "failed", "error": error, "seconds": time.perf_counter() - started} for c in task.cells]}
    results = [_evaluate_cell(cell, task, model, split, torch_device, train_seconds, emit) for cell in task.cells]
    return {"unit": task.key, "history": history, "warnings": warnings, "results": results, "compiled": compiled}


def _trained_model(task: UnitTask, split, setup: WorkerSetup, device: torch.device, emit: EventFn, warnings: list[str]):
    """The unit's cached model, or a newly trained one; a cache file that does not load (cut
    short, damaged, of another split) is discarded with a warning and the model retrained."""
    path = Path(setup.model_dir) / f"{task.key}.pt"
    learned = task.config.recipe().learned
    if learned and path.is_file():
        try:
            model, _, extra = load_model(path, split, device, with_extra=True)
            return model, extra.get("history", []), extra.get("train_seconds", 0.0), extra.get("compiled", bool(setup.compile))  # a checkpoint older than the record: as asked
        except Exception as error:
            warnings.append(f"{task.label}: cached model {path} does not load ({error}); discarded, retraining")
            path.unlink(missing_ok=True)
    emit("train", {"unit": task.label, "epochs": task.config.epochs})
    result = train(split, task.config, device, regime=DEFENSES.create(task.defense), compile=setup.compile,
                   on_epoch=lambda record: emit("epoch", {"unit": task.label, **record}))
    if learned:
        save_model(path, result.model, result.config, split,
                   extra={"history": result.history, "train_seconds": result.train_seconds, "compiled": result.compiled})
    warnings += [f"{task.label}: {note}" for note in result.notes]
    return result.model, result.history, result.train_seconds, result.compiled


def _evaluate_cell(cell: CellTask, task: UnitTask, model, split, device, train_seconds: float, emit: EventFn) -> dict:
    started = time.perf_counter()
    emit("cell", {"unit": task.label, "attack": cell.attack or task.poison or "clean"})
    try:
        if cell.surface == "embedding":
            attack = ATTACKS.create(cell.attack)
            evaluation = evade(model, split, attack, device)
            extra = evasion_figures(attack, model, split, evaluation)
            checks = _sanity_checks(cell, model, split, device)
        else:
            evaluation = evaluate_model(model, split.test, split.n_tags, device)
            extra = promotion_figures(ATTACKS.create(task.poison), split, evaluation) if task.poison else {}
            checks = []
        return {"key": cell.key, "status": "done", "metrics": evaluation.summary(), "per_post": evaluation.per_post,
                "extra": extra, "checks": checks, "seconds": time.perf_counter() - started, "train_seconds": train_seconds}
    except Exception:
        return {"key": cell.key, "status": "failed", "error": traceback.format_exc(),
                "seconds": time.perf_counter() - started}


def _sanity_checks(cell: CellTask, model, split, device) -> list[dict]:
    """The cell's sanity checks, if it asks for them; checks that crash are a failed check (the
    cell's result stands)."""
    if not cell.checks:
        return []
    try:
        return sanity_checks(model, split, cell.attack, device)
    except Exception as error:
        return [{"check": "sanity checks ran", "passed": False, "detail": f"{type(error).__name__}: {error}"}]


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)
