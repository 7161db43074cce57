"""Executors: how units run — one after another, in a local process pool, or on Ray.

Each is a small class with one method, `run(groups, setup, devices, parent)`: it runs
`worker.execute_units` on every group of units (one unit, or a stack that trains as one),
starting from the cached models `parent.cached(group)` reads, and hands each finished unit to
`parent.on_result(unit, result, device)` in this process, which alone writes the run folder
(results and model cache alike: workers need no file system shared with it). The local
executors also hand over each cell as it finishes (`parent.on_partial`), so a killed run keeps
every finished cell; on Ray a unit is handed over whole (a lost one is rerun whole anyway).
Executors know nothing of the bench that calls them (no import back), so a new one is one class
here. Groups are handed out a few at a time, so a resumed bench never holds every cached model
at once. The unit's full result still carries its checkpoint: a cell's event may arrive after
it, or not before the pool closes, and the model must not depend on that.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Protocol

from robustag.errors import RobustagError
from robustag.planning import UnitTask
from robustag.store import UnitResult
from robustag.worker import EventFn, NodeNeeds, WorkerSetup, execute_units, failed_units, threads_per_worker

ResultFn = Callable[[UnitTask, UnitResult, str], None]


@dataclass
class Parent:
    """What an executor calls in the process that owns the run folder."""

    cached: Callable[[list[UnitTask]], list[bytes | None]]  # the cached model of each unit of a group, or None
    on_result: ResultFn
    on_event: EventFn
    on_partial: Callable[[UnitResult, str], None]  # one finished cell of a running unit, and its device

    def hand_over(self, group: list[UnitTask], results: list[UnitResult], device: str) -> None:
        for unit, result in zip(group, results):
            self.on_result(unit, result, device)


class Executor(Protocol):
    def run(self, groups: list[list[UnitTask]], setup: WorkerSetup, devices: list[str], parent: Parent) -> None:
        """Run every group of units on one of `devices`; `parent.on_result` each unit as its group finishes."""


def run_bounded(groups: list[list[UnitTask]], limit: int, submit: Callable, wait_some: Callable[[list], Iterable],
                finish: Callable) -> None:
    """Keep at most `limit` groups in flight: `submit(index, group)` gives a handle,
    `wait_some(handles)` the handles finished, `finish(handle, index, group)` takes each."""
    waiting = iter(enumerate(groups))
    in_flight: dict = {}
    while True:
        while len(in_flight) < limit and (item := next(waiting, None)) is not None:
            in_flight[submit(*item)] = item
        if not in_flight:
            return
        for handle in wait_some(list(in_flight)):
            finish(handle, *in_flight.pop(handle))


class SerialExecutor:
    """In this process, one group after another, on the first device."""

    def run(self, groups, setup, devices, parent) -> None:
        for group in groups:
            results = execute_units(group, setup, devices[0], parent.cached(group), parent.on_event,
                                    lambda result: parent.on_partial(result, devices[0]))
            parent.hand_over(group, results, devices[0])


@dataclass
class PoolExecutor:
    """`workers` processes; group i runs on devices[i % len(devices)] (several per GPU when
    there are more workers than GPUs). Events (epochs, cells) come back through a queue."""

    workers: int

    def run(self, groups, setup, devices, parent) -> None:
        context = multiprocessing.get_context("spawn")  # safe with CUDA, same on every platform
        events = context.Queue()  # handed to workers at start-up: no manager process to outlive us
        if devices == ["cpu"]:
            setup = replace(setup, threads=threads_per_worker(self.workers))
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_start_worker,
                                 initargs=(os.getpid(), events)) as pool:

            def submit(index, group):
                return pool.submit(_execute_with_events, group, setup, devices[index % len(devices)], parent.cached(group))

            def wait_some(futures):
                done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(events, parent)
                return done

            run_bounded(groups, 2 * self.workers, submit, wait_some,
                        lambda future, index, group: parent.hand_over(group, future.result(), devices[index % len(devices)]))
            _drain(events, parent)
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


_PARTIAL = "partial result"  # an event queue item that carries a finished cell, not progress


def _execute_with_events(group, setup, device, cached):
    return execute_units(group, setup, device, cached, lambda kind, data: _worker_events.put((kind, data)),
                         lambda result: _worker_events.put((_PARTIAL, (result, device))))


def _drain(events, parent: Parent) -> None:
    while True:
        try:
            kind, data = events.get_nowait()
        except queue.Empty:
            return
        if kind == _PARTIAL:
            parent.on_partial(*data)
        else:
            parent.on_event(kind, data)


@dataclass
class RayExecutor:
    """One Ray task per group, asking Ray for a share of a GPU when there is one; `address`
    joins a cluster, without it Ray starts a local instance with `workers` CPUs.

    Nodes share nothing with the driver but Ray's object store: cached models go out and
    trained ones come back through it, and every node is checked first for what the units need
    (`worker.NodeNeeds`: the release, the data sets, the plugins' code), a missing piece stopping
    the bench before any work with one line naming the node. A task lost with its worker or node
    is retried `retries` times by Ray (elsewhere if the node is gone); after that its cells are
    recorded failed, for `--retry-failed` to complete."""

    address: str | None = None
    workers: int = 1
    per_gpu: int = 1
    retries: int = 3

    def run(self, groups, setup, devices, parent) -> None:
        try:
            import ray
        except ImportError as error:
            raise RobustagError("executor ray needs Ray: pip install 'robustag[ray]'") from error
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     num_cpus=None if self.address else self.workers)
        try:
            self._run(ray, groups, setup, devices, parent)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, groups, setup, devices, parent) -> None:
        gpu = 1.0 / self.per_gpu if devices != ["cpu"] else 0
        device = "cuda" if gpu else "cpu"
        setup = replace(setup, threads=1)
        check_nodes(ray, NodeNeeds.of([unit for group in groups for unit in group], setup), setup)
        remote = ray.remote(num_cpus=1, num_gpus=gpu, max_retries=self.retries)(execute_units)
        slots = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1) / (gpu or 1))

        def finish(ref, index, group):
            try:
                results = ray.get(ref)
            except ray.exceptions.RayError as error:  # the worker or its node died, retries spent
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                results = failed_units(group, f"lost on the Ray cluster after {self.retries} retries: {reason}\n"
                                              + traceback.format_exc())
            parent.hand_over(group, results, device)

        run_bounded(groups, 2 * max(1, slots), lambda index, group: remote.remote(group, setup, device, parent.cached(group)),
                    lambda refs: ray.wait(refs, num_returns=1)[0], finish)


def check_nodes(ray, needs: NodeNeeds, setup: WorkerSetup, timeout: float = 300.0) -> None:
    """Ask every live node of the cluster what it lacks of `needs`; stop with one line naming
    each node and what it lacks (a node that cannot even run robustag says so too)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(NodeNeeds.problems)
    nodes = [node for node in ray.nodes() if node["Alive"]]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(needs, setup)
            for node in nodes]
    found = []
    for node, ref in zip(nodes, refs):
        try:
            problems = ray.get(ref, timeout=timeout)
        except Exception as error:
            problems = [f"cannot run robustag ({type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''})"]
        found += [f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): {problem}" for problem in problems]
    if found:
        raise RobustagError("the Ray cluster cannot run this bench: " + "; ".join(found))
