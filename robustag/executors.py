"""Parallel executors for the benchmark: a local process pool, and Ray for a cluster.

Both run `bench.execute_unit` on units and hand each finished unit to the parent, which
alone writes the results database. Ray schedules with its own resources (CPUs, GPUs).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from robustag.bench import execute_unit, store_unit, threads_per_worker
from robustag.errors import RobustagError


def run_pool(units, settings, store, devices, workers, on_event) -> None:
    """`workers` processes; unit i runs on devices[i % len(devices)] (several per GPU when
    --per-gpu > 1). Events (epochs, cells) come back through a queue for the live view."""
    context = multiprocessing.get_context("spawn")  # safe with CUDA, same on every platform
    events = context.Queue()  # handed to workers at start-up: no manager process to outlive us
    setup = settings.worker_setup(threads_per_worker(workers) if devices == ["cpu"] else None)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                             initargs=(os.getpid(), events)) as pool:
        futures = {}
        for index, unit in enumerate(units):
            device = devices[index % len(devices)]
            future = pool.submit(_execute_with_events, unit, setup, device)
            futures[future] = (unit, device)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(events, on_event)
            for future in done:
                unit, device = futures[future]
                store_unit(store, unit, future.result(), device, setup.compile, on_event)
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


def _execute_with_events(unit, setup, device):
    return execute_unit(unit, setup, device, on_event=lambda kind, data: _worker_events.put((kind, data)))


def _drain(events, on_event) -> None:
    while True:
        try:
            kind, data = events.get_nowait()
        except queue.Empty:
            return
        on_event(kind, data)


def run_ray(units, settings, store, devices, on_event) -> None:
    """One Ray task per unit, asking Ray for a GPU when there is one; results are written as
    tasks finish. `--address` joins a cluster; without it Ray starts a local instance."""
    try:
        import ray
    except ImportError as error:
        raise RobustagError("--executor ray needs Ray: pip install 'robustag[ray]'") from error
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
                 num_cpus=None if settings.address else max(settings.workers, 1))
    gpu = 1.0 / settings.per_gpu if devices != ["cpu"] else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpu)(execute_unit)
    device = "cuda" if gpu else "cpu"
    setup = settings.worker_setup(threads=1)
    refs = {remote.remote(unit, setup, device): unit for unit in units}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        unit = refs[done[0]]
        store_unit(store, unit, ray.get(done[0]), device, setup.compile, on_event)
    if started_here:
        ray.shutdown()
