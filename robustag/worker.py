"""Running units in a worker: train (or load the cached models it is handed), evaluate their
cells, and return plain values — the trained models among them — for the parent to store. A
worker reads only the data sets and plugin files; it never writes the run folder. A failure is
recorded, never raised."""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from robustag.attack import ATTACKS
from robustag.checkpoint import checkpoint_bytes, load_model
from robustag.checks import sanity_checks
from robustag.datasets import file_sha256, resolve_source
from robustag.defense import DEFENSES
from robustag.models import MODELS
from robustag.planning import CellTask, UnitTask
from robustag.preprocess import load_split
from robustag.robustness import evaluate_cell, poisoned_split
from robustag.stacking import train_stacked
from robustag.store import CellResult, UnitResult
from robustag.synthetic import is_synthetic
from robustag.training import TrainResult, train
from robustag.version import __version__

EventFn = Callable[[str, dict], None]
PartialFn = Callable[[UnitResult], None]  # one finished cell of a unit still running


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs besides its unit and device (picklable: sent to processes)."""

    data_dir: str
    plugins: tuple[str, ...] = ()
    threads: int | None = None
    compile: bool | None = None


def execute_units(tasks: list[UnitTask], setup: WorkerSetup, device: str, cached: list[bytes | None] | None = None,
                  on_event: EventFn | None = None, on_partial: PartialFn | None = None) -> list[UnitResult]:
    """Train (or load from `cached`, a checkpoint or None per task) the models of `tasks` and
    evaluate their cells; a failure is recorded, not raised. Several tasks are a stack
    (`planning.stack_groups`: one data set, configuration but seed, defense; no poisoning),
    whose models train as one. `on_partial` gets each cell's result as soon as it is done (the
    first with the new model's checkpoint), so a run killed mid-unit keeps what was finished."""
    if setup.threads:
        torch.set_num_threads(setup.threads)
    load_plugins(setup.plugins)
    emit = on_event or (lambda kind, data: None)
    torch_device = torch.device(device)
    started = time.perf_counter()
    warnings: list[list[str]] = [[] for _ in tasks]
    try:
        split = load_split(tasks[0].dataset, Path(setup.data_dir), tasks[0].options)
        trained = _trained_models(tasks, cached or [None] * len(tasks), split, setup, torch_device, emit, warnings)
    except Exception:  # the whole unit (stack) failed: every cell carries the traceback
        return failed_units(tasks, traceback.format_exc(), time.perf_counter() - started, warnings)
    return [_evaluated_unit(task, model, checkpoint, notes, split, torch_device, emit, on_partial)
            for task, (model, checkpoint), notes in zip(tasks, trained, warnings)]


def _evaluated_unit(task: UnitTask, model: TrainResult, checkpoint: bytes | None, notes: list[str], split,
                    device: torch.device, emit: EventFn, on_partial: PartialFn | None) -> UnitResult:
    cells = []
    for cell in task.cells:
        cells.append(_evaluate_cell(cell, task, model.model, split, device, model.train_seconds, emit))
        if on_partial:
            on_partial(UnitResult(task.key, cells[-1:], model.history, [], model.compiled, checkpoint if len(cells) == 1 else None))
    return UnitResult(task.key, cells, model.history, notes, model.compiled, checkpoint)


def failed_units(tasks: list[UnitTask], error: str, seconds: float = 0.0, warnings: list[list[str]] | None = None) -> list[UnitResult]:
    """Every cell of `tasks` failed with `error` (a traceback, or why the unit was lost)."""
    return [UnitResult(task.key, [CellResult(cell.key, "failed", seconds, error=error) for cell in task.cells],
                       warnings=notes) for task, notes in zip(tasks, warnings or [[] for _ in tasks])]


def load_plugins(paths) -> None:
    for path in paths:
        for registry in (ATTACKS, DEFENSES, MODELS):
            registry.load_file(path)


def _trained_models(tasks: list[UnitTask], cached: list[bytes | None], split, setup: WorkerSetup, device: torch.device,
                    emit: EventFn, warnings: list[list[str]]) -> list[tuple[TrainResult, bytes | None]]:
    """Each task's cached model, or a newly trained one with its checkpoint for the parent to
    cache: alone, or the ones to train of a stack as one stack. A cached model that does not
    load (cut short, damaged, of another split) is retrained, with a warning."""
    found = [_cached_model(task, data, split, setup, device, notes) for task, data, notes in zip(tasks, cached, warnings)]
    checkpoints: list[bytes | None] = [None] * len(tasks)
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
            checkpoints[k] = checkpoint_bytes(result.model, result.config, split, extra={
                "history": result.history, "train_seconds": result.train_seconds, "compiled": result.compiled})
        warnings[k] += [f"{tasks[k].label}: {note}" for note in result.notes]
        found[k] = result
    return list(zip(found, checkpoints))


def _train_alone(task: UnitTask, split, device: torch.device, setup: WorkerSetup, on_epoch) -> TrainResult:
    train_split = poisoned_split(split, ATTACKS.create(task.poison), task.config.seed, task.poison_valid) if task.poison else split
    return train(train_split, task.config, device, regime=DEFENSES.create(task.defense), compile=setup.compile,
                 on_epoch=on_epoch)


def _cached_model(task: UnitTask, data: bytes | None, split, setup: WorkerSetup, device: torch.device,
                  warnings: list[str]) -> TrainResult | None:
    if data is None or not task.config.recipe().learned:
        return None
    try:
        model, config, extra = load_model(data, split, device, with_extra=True)
    except Exception as error:
        warnings.append(f"{task.label}: cached model models/{task.key}.pt does not load ({error}); retraining (the new one replaces it)")
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


@dataclass(frozen=True)
class NodeNeeds:
    """What a machine must have to run a bench's units as the driver would: the same robustag
    release, each data set's file with the same content, and each plugin the units name with the
    same code (`Registry.code`, the identity that keys their results). Checked on every node of a
    cluster before any unit runs, since nodes share no file system with the driver."""

    release: str
    datasets: tuple[tuple[str, str | None], ...]  # (name, sha256 of its file on the driver; None: synthetic or absent there)
    plugins: tuple[tuple[str, str, str | None], ...]  # (kind, spec, code on the driver)

    @classmethod
    def of(cls, tasks: list[UnitTask], setup: WorkerSetup) -> "NodeNeeds":
        load_plugins(setup.plugins)
        datasets = sorted({(task.dataset, _fingerprint(task.dataset, setup.data_dir)) for task in tasks})
        named = {("model", task.config.model) for task in tasks} | {("defense", task.defense) for task in tasks}
        named |= {("attack", spec) for task in tasks for spec in [task.poison, *(c.attack for c in task.cells)] if spec}
        plugins = sorted((kind, spec, _REGISTRIES[kind].code(spec)) for kind, spec in named)
        return cls(__version__, tuple(datasets), tuple(plugins))

    def problems(self, setup: WorkerSetup) -> list[str]:
        """What this machine lacks or has otherwise, one line each; [] when it can run the units."""
        if __version__ != self.release:
            return [f"robustag {__version__} is installed, the driver runs {self.release}"]
        try:
            load_plugins(setup.plugins)
        except Exception as error:
            return [f"plugin files: {error}"]
        found = []
        for name, fingerprint in self.datasets:
            here = _fingerprint(name, setup.data_dir)
            if here is None and not is_synthetic(name):
                found.append(f"data set {name}: file not found: {resolve_source(name).path(Path(setup.data_dir))}")
            elif fingerprint is not None and here != fingerprint:
                found.append(f"data set {name}: {resolve_source(name).path(Path(setup.data_dir))} differs from the driver's")
        for kind, spec, code in self.plugins:
            try:
                here = _REGISTRIES[kind].code(spec)
            except Exception as error:
                found.append(f"{kind} {spec}: {error}")
                continue
            if here != code:
                found.append(f"{kind} {spec}: its code differs from the driver's ({here or 'built-in'} here, {code or 'built-in'} there)")
        return found


_REGISTRIES = {"model": MODELS, "defense": DEFENSES, "attack": ATTACKS}


def _fingerprint(dataset: str, data_dir: str) -> str | None:
    if is_synthetic(dataset):
        return None
    path = resolve_source(dataset).path(Path(data_dir))
    return file_sha256(path) if path.is_file() else None
