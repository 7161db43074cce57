"""Tuning by successive halving: each defense's trials stopped early on their validation curve.

`robustag tune --halving` trains the configurations a full tune would (each defense's seeded
subset of its sweep, `tuning.trial_specs`), one after another, and reports each trial's
validation NDCG@3 after every epoch to an Optuna study of its defense (one per data set, model
and defense, stored in `RUN/halving.sqlite3`). The study's `SuccessiveHalvingPruner`
(asynchronous successive halving, Li et al. 2020) stops a trial at a rung — epoch
`min_epochs·reduction^k` — unless it is among the best 1/`reduction` of that defense's trials
to reach the rung; a trial that is not stopped trains until early stopping, as in a full tune.
Every defense gets the same trials count and the same schedule, so budgets stay equal; a
defense's best is the best of its trials that finished. Training is deterministic, so a
trial's curve does not depend on when it is stopped, and a rerun reaches the same decisions.

Optuna, not a hand-written scheduler: its pruners are the field's standard and its study is
the resumable record — a rerun skips finished trials and retrains the one a kill cut short
under the same Optuna trial (its rungs already passed stay passed, its values are the same).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from robustag.defense import DEFENSES
from robustag.errors import ParameterError, RobustagError
from robustag.planning import UnitTask, model_params, plan
from robustag.preprocess import load_split
from robustag.spec import BenchSpec
from robustag.training import resolve_device, train
from robustag.tuning import SCORE
from robustag.worker import EventFn

STUDIES = "halving.sqlite3"


class Pruned(Exception):
    """Raised from the epoch callback to stop a trial the pruner dropped."""


def halving_scores(trials: list[BenchSpec], folder: Path, data_dir: Path, *, min_epochs: int = 2, reduction: int = 3,
                   device: str = "auto", compile: bool | None = None, on_event: EventFn | None = None) -> pd.DataFrame:
    """Train `trials` (`tuning.trial_specs`) under successive halving; one row per trial, as
    `tuning.trial_scores` gives, with its `state` (complete or pruned)."""
    optuna = _optuna()
    for option, value, least in (("min_epochs", min_epochs, 1), ("reduction", reduction, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ParameterError(option, f"must be a whole number ≥ {least}", repr(value))
    emit = on_event or (lambda kind, data: None)
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder.resolve() / STUDIES}")
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=reduction,
                                                    min_early_stopping_rate=0)
    work = []
    studies, planned = {}, {}
    for task in plan(trials).units.values():
        name = f"{task.dataset}/{task.config.model}/{task.defense.split(':')[0]}"
        if name not in studies:
            studies[name] = optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner,
                                                load_if_exists=True)
        planned.setdefault(name, set()).add(task.key)
        stored = [t for t in studies[name].get_trials(deepcopy=False) if t.user_attrs.get("unit") == task.key]
        work.append((task, studies[name], stored))
    _refuse_foreign_trials(folder, studies, planned)
    emit("plan", {"name": "halving", "out": str(folder), "units": len(work), "cells": len(work), "pruned": 0,
                  "todo": sum(not _finished(optuna, stored) for _, _, stored in work)})
    rows = []
    for task, study, stored in work:
        finished = _finished(optuna, stored)
        trial = finished[0] if finished else _train_trial(optuna, study, stored, task, data_dir, device, compile, emit)
        rows.append(_row(task, trial))
    return pd.DataFrame(rows)


def _refuse_foreign_trials(folder: Path, studies: dict, planned: dict[str, set[str]]) -> None:
    """A study's pruner ranks each trial against all the study's trials, so one holding trials
    this plan lacks (another release, plugin code, search space or budget) would judge the new
    ones against foreign curves: refused, before any training."""
    for name, study in studies.items():
        foreign = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("unit") not in planned[name]]
        if foreign:
            raise ParameterError("out", f"{folder / STUDIES}: study {name} holds {len(foreign)} trial(s) of another "
                                 "plan (release, plugin code, search space or budget): tune into a new folder")


def _finished(optuna, stored: list) -> list:
    """The trials of a unit that ended (trained to the end, or pruned)."""
    States = optuna.trial.TrialState
    return [t for t in stored if t.state in (States.COMPLETE, States.PRUNED)]


def _train_trial(optuna, study, stored: list, task: UnitTask, data_dir: Path, device: str, compile: bool | None,
                 emit: EventFn):
    """Train `task` as a trial of `study` until it finishes or is pruned; the finished trial."""
    States = optuna.trial.TrialState
    cut_short = [t for t in stored if t.state == States.RUNNING]
    trial = optuna.trial.Trial(study, cut_short[0]._trial_id) if cut_short else study.ask()
    reported = set(cut_short[0].intermediate_values) if cut_short else set()
    trial.set_user_attr("unit", task.key)
    trial.set_user_attr("defense", task.defense)

    def report(record: dict) -> None:
        emit("epoch", {"unit": task.label, **record})
        if record["epoch"] not in reported:  # the same value, reported before the kill
            trial.report(record[SCORE], record["epoch"])
        if trial.should_prune():
            raise Pruned

    split = load_split(task.dataset, data_dir, task.options)
    emit("train", {"unit": task.label, "epochs": task.config.epochs})
    started = time.perf_counter()
    try:
        result = train(split, task.config, resolve_device(device), regime=DEFENSES.create(task.defense), compile=compile,
                       on_epoch=report)
        score = result.best_valid.get(SCORE, 0.0)
    except Pruned:
        score = None
    trial.set_user_attr("seconds", time.perf_counter() - started)
    study.tell(trial, score, state=States.PRUNED if score is None else States.COMPLETE)
    emit("unit_done", {"unit": task.label, "failed": 0, "cells": 1})
    return study.get_trials(deepcopy=False)[trial.number]


def _row(task: UnitTask, trial) -> dict:
    curve = trial.intermediate_values
    return {"dataset": task.dataset, "model": task.config.model, "params": json.dumps(model_params(task), sort_keys=True),
            "defense_name": task.defense.split(":")[0], "defense": task.defense, "seed": task.config.seed,
            "unit": task.key, SCORE: max(curve.values()) if curve else 0.0, "epochs": max(curve, default=0),
            "state": trial.state.name.lower(), "seconds": trial.user_attrs.get("seconds", 0.0)}


def _optuna():
    try:
        import optuna
    except ImportError as error:
        raise RobustagError("tune --halving needs Optuna: pip install 'robustag[tune]'") from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna
