"""Executors: how units run — one after another, in a local process pool, or on Ray.

Each is a small class with one method, `run(groups, setup, devices, on_result, on_event)`: it
runs `worker.execute_units` on every group of units (one unit, or a stack that trains as one)
and hands each finished unit to `on_result(unit, result, device)` in the parent, which alone
writes the results database. Executors know nothing of the bench that calls them (no import
back), so a new one is one class here.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Callable, Protocol

from robustag.errors import RobustagError
from robustag.planning import UnitTask
from robustag.store import UnitResult
from robustag.worker import EventFn, WorkerSetup, execute_units, threads_per_worker

ResultFn = Callable[[UnitTask, UnitResult, str], None]


class Executor(Protocol):
    def run(self, groups: list[list[UnitTask]], setup: WorkerSetup, devices: list[str], on_result: ResultFn,
            on_event: EventFn) -> None:
        """Run every group of units on one of `devices`; `on_result` each unit as its group finishes."""


def _hand_over(group: list[UnitTask], results: list[UnitResult], device: str, on_result: ResultFn) -> None:
    for unit, result in zip(group, results):
        on_result(unit, result, device)


class SerialExecutor:
    """In this process, one group after another, on the first device."""

    def run(self, groups, setup, devices, on_result, on_event) -> None:
        for group in groups:
            _hand_over(group, execute_units(group, setup, devices[0], on_event=on_event), devices[0], on_result)


@dataclass
class PoolExecutor:
    """`workers` processes; group i runs on devices[i % len(devices)] (several per GPU when
    there are more workers than GPUs). Events (epochs, cells) come back through a queue."""

    workers: int

    def run(self, groups, setup, devices, on_result, on_event) -> None:
        context = multiprocessing.get_context("spawn")  # safe with CUDA, same on every platform
        events = context.Queue()  # handed to workers at start-up: no manager process to outlive us
        if devices == ["cpu"]:
            setup = replace(setup, threads=threads_per_worker(self.workers))
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_start_worker,
                                 initargs=(os.getpid(), events)) as pool:
            futures = {}
            for index, group in enumerate(groups):
                device = devices[index % len(devices)]
                futures[pool.submit(_execute_with_events, group, setup, device)] = (group, device)
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(events, on_event)
                for future in done:
                    group, device = futures[future]
                    _hand_over(group, future.result(), device, on_result)
            _drain(events, on_event)
        events.close()


_worker_events = None  # the event queue of this worker process


def _start_worker(parent: int, events) -> None:
    """Keep the event queue, and end when the bench process dies (killed, out of memory):
    nobody would store this worker's results, and the resumed run redoes its unit anyway."""
    global _worker_events
    _worker_events = events

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _execute_with_events(group, setup, device):
    return execute_units(group, setup, device, on_event=lambda kind, data: _worker_events.put((kind, data)))


def _drain(events, on_event) -> None:
    while True:
        try:
            kind, data = events.get_nowait()
        except queue.Empty:
            return
        on_event(kind, data)


@dataclass
class RayExecutor:
    """One Ray task per group, asking Ray for a share of a GPU when there is one; `address`
    joins a cluster, without it Ray starts a local instance with `workers` CPUs."""

    address: str | None = None
    workers: int = 1
    per_gpu: int = 1

    def run(self, groups, setup, devices, on_result, on_event) -> None:
        try:
            import ray
        except ImportError as error:
            raise RobustagError("executor ray needs Ray: pip install 'robustag[ray]'") from error
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     num_cpus=None if self.address else self.workers)
        gpu = 1.0 / self.per_gpu if devices != ["cpu"] else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpu)(execute_units)
        device = "cuda" if gpu else "cpu"
        setup = replace(setup, threads=1)
        refs = {remote.remote(group, setup, device): group for group in groups}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            _hand_over(refs[done[0]], ray.get(done[0]), device, on_result)
        if started_here:
            ray.shutdown()
