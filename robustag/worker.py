"""Running units in a worker: train (or load the cached models), evaluate their cells, and
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
from robustag.models import MODELS
from robustag.planning import CellTask, UnitTask
from robustag.preprocess import load_split
from robustag.robustness import evaluate_cell, poisoned_split
from robustag.stacking import train_stacked
from robustag.store import CellResult, UnitResult
from robustag.training import TrainResult, train

EventFn = Callable[[str, dict], None]


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs besides its unit and device (picklable: sent to processes)."""

    data_dir: str
    model_dir: str
    plugins: tuple[str, ...] = ()
    threads: int | None = None
    compile: bool | None = None


def execute_units(tasks: list[UnitTask], setup: WorkerSetup, device: str, on_event: EventFn | None = None) -> list[UnitResult]:
    """Train (or load the cached) models of `tasks` and evaluate their cells; a failure is
    recorded, not raised. Several tasks are a stack (`planning.stack_groups`: one data set,
    configuration but seed, defense; no poisoning), whose models train as one."""
    if setup.threads:
        torch.set_num_threads(setup.threads)
    for path in setup.plugins:
        for registry in (ATTACKS, DEFENSES, MODELS):
            registry.load_file(path)
    emit = on_event or (lambda kind, data: None)
    torch_device = torch.device(device)
    started = time.perf_counter()
    warnings: list[list[str]] = [[] for _ in tasks]
    try:
        split = load_split(tasks[0].dataset, Path(setup.data_dir), tasks[0].options)
        trained = _trained_models(tasks, split, setup, torch_device, emit, warnings)
    except Exception:  # the whole unit (stack) failed: every cell carries the traceback
        error = traceback.format_exc()
        return [UnitResult(task.key, [CellResult(c.key, "failed", time.perf_counter() - started, error=error) for c in task.cells],
                           warnings=notes) for task, notes in zip(tasks, warnings)]
    return [UnitResult(task.key, [_evaluate_cell(cell, task, model.model, split, torch_device, model.train_seconds, emit)
                                  for cell in task.cells], model.history, notes, model.compiled)
            for task, model, notes in zip(tasks, trained, warnings)]


def _trained_models(tasks: list[UnitTask], split, setup: WorkerSetup, device: torch.device, emit: EventFn,
                    warnings: list[list[str]]) -> list[TrainResult]:
    """Each task's cached model, or a newly trained one (saved): alone, or the ones to train
    of a stack as one stack. A cache file that does not load (cut short, damaged, of another
    split) is discarded with a warning and the model retrained."""
    found = [_cached_model(task, split, setup, device, notes) for task, notes in zip(tasks, warnings)]
    todo = [k for k, model in enumerate(found) if model is None]
    if todo:
        first = tasks[todo[0]]
        seeds = ", ".join(str(tasks[k].config.seed) for k in todo)  # a stack's members train together: one line
        label = first.label if len(todo) == 1 else f"{first.label.rsplit(' seed ', 1)[0]} seeds {seeds} (one stack)"
        emit("train", {"unit": label, "epochs": first.config.epochs})
    on_epoch = [lambda record, label=tasks[k].label: emit("epoch", {"unit": label, **record}) for k in todo]
    if len(todo) > 1:
        fresh = train_stacked(split, [tasks[k].config for k in todo], device, DEFENSES.create(tasks[todo[0]].defense),
                              on_epoch=on_epoch, compile=setup.compile)
    else:
        fresh = [_train_alone(tasks[k], split, device, setup, on_epoch[0]) for k in todo]
    for k, result in zip(todo, fresh):
        if tasks[k].config.recipe().learned:
            save_model(Path(setup.model_dir) / f"{tasks[k].key}.pt", result.model, result.config, split,
                       extra={"history": result.history, "train_seconds": result.train_seconds, "compiled": result.compiled})
        warnings[k] += [f"{tasks[k].label}: {note}" for note in result.notes]
        found[k] = result
    return found


def _train_alone(task: UnitTask, split, device: torch.device, setup: WorkerSetup, on_epoch) -> TrainResult:
    train_split = poisoned_split(split, ATTACKS.create(task.poison), task.config.seed, task.poison_valid) if task.poison else split
    return train(train_split, task.config, device, regime=DEFENSES.create(task.defense), compile=setup.compile,
                 on_epoch=on_epoch)


def _cached_model(task: UnitTask, split, setup: WorkerSetup, device: torch.device, warnings: list[str]) -> TrainResult | None:
    path = Path(setup.model_dir) / f"{task.key}.pt"
    if not (task.config.recipe().learned and path.is_file()):
        return None
    try:
        model, config, extra = load_model(path, split, device, with_extra=True)
    except Exception as error:
        warnings.append(f"{task.label}: cached model {path} does not load ({error}); discarded, retraining")
        path.unlink(missing_ok=True)
        return None
    # a checkpoint older than the record of its mode: as asked now
    return TrainResult(model, config, extra.get("history", []), train_seconds=extra.get("train_seconds", 0.0),
                       compiled=extra.get("compiled", bool(setup.compile)))


def _evaluate_cell(cell: CellTask, task: UnitTask, model, split, device, train_seconds: float, emit: EventFn) -> CellResult:
    started = time.perf_counter()
    emit("cell", {"unit": task.label, "attack": cell.attack or task.poison or "clean"})
    try:
        attack = ATTACKS.create(cell.attack) if cell.surface == "embedding" else None
        evaluation, extra = evaluate_cell(model, split, device, attack, ATTACKS.create(task.poison) if task.poison else None)
        checks = _sanity_checks(cell, model, split, device) if attack is not None else []
        return CellResult(cell.key, "done", time.perf_counter() - started, evaluation.summary(), evaluation.per_post,
                          extra, checks, train_seconds)
    except Exception:
        return CellResult(cell.key, "failed", time.perf_counter() - started, error=traceback.format_exc())


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
