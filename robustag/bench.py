"""Running a planned matrix resumably: settings checked before any work, units handed to an
executor, each finished unit written to the results database with its provenance."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from robustag.errors import ParameterError
from robustag.checkpoint import write_checkpoint
from robustag.executors import Executor, Parent, PoolExecutor, RayExecutor, SerialExecutor
from robustag.planning import UnitTask, stack_groups
from robustag.provenance import run_info
from robustag.store import ResultStore, UnitResult
from robustag.training import resolve_device
from robustag.worker import EventFn, WorkerSetup

EXECUTORS = ("local", "ray")
# Models per stack on a GPU by default. Stacking pays where one small model leaves the device
# idle between kernel launches; on a CPU, where a step is bound by memory traffic, it is slower
# (benchmarks/stacked_batch.py), so a CPU stacks only when told to.
STACK_ON_GPU = 8


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
    compile: bool | None = None  # None: compiled where the compiler works (training.compile_mode)
    stack: int | None = None  # most models trained as one stack; None: 1 on CPU, STACK_ON_GPU on a GPU
    retries: int = 3  # Ray: how often a unit lost with its worker or node is rerun before its cells are failed

    def worker_setup(self) -> WorkerSetup:
        return WorkerSetup(str(self.data_dir), self.plugins, None, self.compile)


def devices_for(settings: RunSettings) -> list[str]:
    """The devices the units run on: one named device, or every GPU for `cuda` (and `auto` on a GPU machine)."""
    device = resolve_device(settings.device)
    if device.type == "cuda" and device.index is None:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(device)]


def check_settings(settings: RunSettings) -> None:
    """Executor, worker counts and device, refused before a run folder is touched."""
    if settings.executor not in EXECUTORS:
        raise ParameterError("executor", f"expected {' or '.join(EXECUTORS)}", repr(settings.executor))
    for option, value in (("workers", settings.workers), ("per_gpu", settings.per_gpu), ("stack", 1 if settings.stack is None else settings.stack)):
        if value < 1:
            raise ParameterError(option, "expected a count ≥ 1", value)
    if settings.retries < 0:
        raise ParameterError("retries", "expected a count ≥ 0", settings.retries)
    if settings.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ParameterError("executor", "needs Ray: pip install 'robustag[ray]'", "ray")
    if devices_for(settings) == ["cpu"] and settings.per_gpu > 1:
        raise ParameterError("per_gpu", "packs units on each GPU, and this run has none (use --workers on a CPU)",
                             settings.per_gpu)


def executor_for(settings: RunSettings, devices: list[str]) -> Executor:
    if settings.executor == "ray":
        return RayExecutor(settings.address, settings.workers, settings.per_gpu, settings.retries)
    workers = settings.workers if devices == ["cpu"] else len(devices) * settings.per_gpu
    return PoolExecutor(workers) if workers > 1 else SerialExecutor()


def stack_size(settings: RunSettings, devices: list[str]) -> int:
    if settings.stack is not None:
        return settings.stack
    return STACK_ON_GPU if devices != ["cpu"] else 1


def run_units(units: list[UnitTask], settings: RunSettings, store: ResultStore, on_event: EventFn) -> None:
    """Execute units with the chosen executor (in stacks where they can), writing each cell's
    results as it completes (a unit's whole, on Ray)."""
    devices = devices_for(settings)
    models = settings.out / "models"
    models.mkdir(parents=True, exist_ok=True)

    def model_file(unit: str) -> Path:
        return models / f"{unit}.pt"

    def cached(group: list[UnitTask]) -> list[bytes | None]:
        return [model_file(u.key).read_bytes() if u.config.recipe().learned and model_file(u.key).is_file() else None
                for u in group]

    def store_cells(result: UnitResult, device: str) -> None:
        if result.checkpoint is not None:  # before its cells: a cell marked done always has its model
            write_checkpoint(model_file(result.unit), result.checkpoint)
        store.write_unit(result, run_info(device, result.compiled))

    def store_unit(unit: UnitTask, result: UnitResult, device: str) -> None:
        store_cells(result, device)  # cells stored as they finished are kept as they are
        for message in result.warnings:
            on_event("warning", {"unit": unit.label, "message": message})
        on_event("unit_done", {"unit": unit.label, "failed": result.failed, "cells": len(unit.cells)})

    groups = stack_groups(units, stack_size(settings, devices))
    executor_for(settings, devices).run(groups, settings.worker_setup(), devices,
                                        Parent(cached, store_unit, on_event, store_cells))
