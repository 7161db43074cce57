"""The Python API: every workflow of robustag is a function here that returns objects and
never prints; the command line parses flags, calls these, and prints.

    import robustag as rt

    split = rt.load_dataset("movielens", data_dir="../shared/data")      # a TagSplit
    trained = rt.train(split, model="metric", defense="spaml-s", seed=0, epochs=5)
    trained.metrics["ndcg@3"]                                            # clean test metrics
    table = rt.attack(trained, split, ["pgd:eps=0.1", "fgsm"])          # a row per attack
    table.attrs["worst_case"]                                            # per threat, per post
    run = rt.bench("benchmarks/default.toml", out="runs/x", seeds=1)     # a Run
    run.cells(); run.per_post(); run.compare(reference="plain"); run.report()
    rt.ATTACKS, rt.DEFENSES, rt.MODELS                                   # the registries

Errors are `RobustagError`s whose message names the parameter, file or plugin at fault.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from robustag import checks, paths, tuning
from robustag.attack import ATTACKS, Attack, EmbeddingAttack
from robustag.bench import RunSettings, check_settings, run_units
from robustag.certify import certifiable
from robustag.checkpoint import load_model
from robustag.halving import halving_scores
from robustag.defense import DEFENSES, Defense
from robustag.errors import ParameterError
from robustag.evaluation import Evaluation, evaluate_model
from robustag.models import MODELS
from robustag.planning import check_data, note_overridden_budgets, pending_units, plan
from robustag.preprocess import SplitOptions, TagSplit, load_split
from robustag.robustness import evade, run_attack, summarise, worst_cases
from robustag.run import Run
from robustag.spec import BenchSpec, default_spec, folder_name, load_specs, merge_described, parse_budgets, parse_seeds
from robustag.stats import TEST_ITEMS
from robustag.store import ResultStore
from robustag.training import TrainConfig, default_config, resolve_device
from robustag.training import train as fit

EventFn = Callable[[str, dict], None]


def load_plugins(files: str | Path | Sequence[str | Path]) -> list[str]:
    """Register the attacks, defenses and models of local plugin files (one, or several); returns
    their names. A file that defines none is refused (a typo would otherwise pass silently)."""
    files = [files] if isinstance(files, (str, Path)) else _expect(files, (list, tuple), "plugins", "plugin files")
    names = []
    for file in files:
        found = [name for registry in (ATTACKS, DEFENSES, MODELS) for name in registry.load_file(file)]
        if not found:
            raise ParameterError("plugins", "defines no attack, defense or model (a named subclass of "
                                 "robustag.attack.Attack, robustag.defense.Defense or robustag.models.Model)", file)
        names += found
    return names


def load_dataset(name: str, data_dir: str | Path | None = None, p_core: int = 10, split_seed: int = 0,
                 validation: bool = True, test_posts: int = 1) -> TagSplit:
    """A data set, p-core filtered and split leave-last-post-out (each user's last `test_posts`
    posts; from the on-disk cache when unchanged)."""
    _expect(name, str, "name", "a data set name (movielens, lastfm, tsv:PATH, synthetic:...)")
    if isinstance(test_posts, bool) or not isinstance(test_posts, int) or test_posts < 1:
        raise ParameterError("test_posts", "expected a whole number ≥ 1", repr(test_posts))
    return load_split(name, paths.data_dir(data_dir), SplitOptions(p_core, split_seed, validation, test_posts))


@dataclass
class Trained:
    """A trained (or loaded) model with how it was made and its clean test metrics."""

    model: object
    config: TrainConfig
    defense: str  # the canonical spec of the training regime
    device: torch.device
    evaluation: Evaluation  # clean, on the split's test posts
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    compiled: bool = False  # whether training ran its losses compiled (results differ from eager by rounding)
    split: tuple | None = None  # what it was trained for (`split_identity`): attacked on that split only

    @property
    def metrics(self) -> dict[str, float]:
        return self.evaluation.summary()


def make_defense(spec: str, model: str) -> Defense:
    """A defense, built (and so checked) before any training; only learned models have one."""
    defense = DEFENSES.create(spec)
    if defense.name != "plain" and not MODELS.resolve(model)[0].learned:
        raise ParameterError("defense", f"{model} is not a learned model; only plain applies", defense.name)
    return defense


def train(split: TagSplit, model: str = "metric", defense: str = "plain", seed: int = 0, device: str = "auto",
          compile: bool | None = None, on_epoch: Callable[[dict], None] | None = None, **params) -> Trained:
    """Train `model` under `defense` on the split's training posts (early stopping on its
    validation posts) and evaluate it on its test posts. `params` are training options
    (dim, lr, epochs, batch_size, negatives, margin, norm, reg, patience, mix); None keeps a default."""
    _expect(split, TagSplit, "split", "a TagSplit (rt.load_dataset)")
    for parameter, value in (("model", model), ("defense", defense)):
        _expect(value, str, parameter, "a spec string")
    config = default_config(model, seed=seed, **params)
    regime = make_defense(defense, model)
    torch_device = resolve_device(device)
    result = fit(split, config, torch_device, regime=regime, on_epoch=on_epoch, compile=compile)
    for note in result.notes:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    started = time.perf_counter()
    evaluation = evaluate_model(result.model, split.test, split.n_tags, torch_device)
    return Trained(result.model, result.config, regime.spec, torch_device, evaluation, result.history,
                   result.best_epoch, result.best_valid, result.train_seconds, time.perf_counter() - started, result.compiled,
                   split_identity(split))


def load(path: str | Path, split: TagSplit, device: str = "auto", defense: str = "plain") -> Trained:
    """A model saved by `robustag train --save` (or `save_model`), checked against `split`;
    `defense` is the regime a poisoning attack retrains it with."""
    torch_device = resolve_device(device)
    model, config = load_model(Path(path), split, torch_device)
    started = time.perf_counter()
    evaluation = evaluate_model(model, split.test, split.n_tags, torch_device)
    return Trained(model, config, make_defense(defense, config.model).spec, torch_device, evaluation,
                   eval_seconds=time.perf_counter() - started, split=split_identity(split))


def split_identity(split: TagSplit) -> tuple:
    """What a trained model is bound to: the data set, its split options and table sizes."""
    return split.name, split.options.describe(), (split.n_users, split.n_items, split.n_tags)


def _expect(value, kinds, parameter: str, what: str):
    """`value`, if of `kinds`; else the library's error naming the parameter (not an internal one)."""
    if not isinstance(value, kinds):
        shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
        raise ParameterError(parameter, f"expected {what}, got {type(value).__name__}", shown)
    return value


def build_attacks(specs: str | Attack | Sequence[str | Attack], eps: Sequence[float] | None = None, seed: int | None = None) -> list[Attack]:
    """Attacks from specs; every evasion attack runs at each of `eps` when given, and takes
    `seed` unless its spec sets one. One spec may be given alone."""
    specs = [specs] if isinstance(specs, (str, Attack)) else _expect(specs, (list, tuple), "attacks", "attack specs")
    if not specs:
        raise ParameterError("attacks", "no attack given")
    eps = [eps] if isinstance(eps, (int, float)) and not isinstance(eps, bool) else eps
    budgets = parse_budgets(list(_expect(eps, (list, tuple), "eps", "budgets")), "eps") if eps is not None else [None]
    if eps is not None:
        note_overridden_budgets([s for s in specs if isinstance(s, str)], budgets)
    built = []
    for spec in specs:
        _expect(spec, (str, Attack), "attacks", "attack specs or Attack instances")
        if isinstance(spec, Attack) and ATTACKS.declared(spec.name, "name") is None:
            ATTACKS.register(type(spec), f"instance given to robustag ({type(spec).__module__})")
        text = spec.spec if isinstance(spec, Attack) else spec
        probe = ATTACKS.create(text)
        overrides = {"seed": seed} if seed is not None and "seed" in probe.params and "seed=" not in text else {}
        if isinstance(probe, EmbeddingAttack):
            built += [ATTACKS.create(text, **overrides, **({"eps": b} if b is not None else {})) for b in budgets]
        else:
            built.append(ATTACKS.create(text, **overrides))
    return built


def attack(trained: Trained, split: TagSplit, attacks: Sequence[str | Attack], eps: Sequence[float] | None = None,
           seed: int | None = None, on_attack: Callable[[Attack], None] | None = None,
           poison_valid: bool = False) -> pd.DataFrame:
    """Each attack against the trained model: a row per attack (clean and attacked metrics,
    drops, overlap, seconds); `attrs["worst_case"]` holds one per-post worst case per threat
    (budget, norm, tables), `attrs["certified"]` the certified lower bounds and attack gaps
    where the model allows them, and `attrs["clean"]` the clean metrics. Poisoning attacks retrain
    with the same configuration and defense, early-stopping on clean validation posts unless
    `poison_valid` (then the attack changes them too).

    (`robustag.attack` is this function. The module of the same name, the attack plugin API, is
    imported by name: `from robustag.attack import EmbeddingAttack`, or
    `help(importlib.import_module("robustag.attack"))` for all of it.)"""
    _expect(trained, Trained, "trained", "a Trained model (rt.train or rt.load)")
    _expect(split, TagSplit, "split", "a TagSplit (rt.load_dataset)")
    if trained.split is not None and trained.split != split_identity(split):
        raise ParameterError("split", f"the model was trained on {trained.split[0]} {trained.split[1]} with sizes "
                             f"{list(trained.split[2])}; this split is {split.name} {split.options.describe()} with sizes "
                             f"{[split.n_users, split.n_items, split.n_tags]}")
    built = build_attacks(attacks, eps, seed)
    for each in built:
        each.check(split)
    outcomes = []
    for each in built:
        if on_attack:
            on_attack(each)
        outcomes.append(run_attack(each, trained.model, split, trained.config, trained.device, trained.evaluation,
                                   lambda: DEFENSES.create(trained.defense), poison_valid=poison_valid))
    table = pd.DataFrame([summarise(trained.evaluation, outcome) for outcome in outcomes])
    table.attrs["worst_case"] = worst_cases(trained.evaluation, outcomes)
    table.attrs["certified"] = certified_bounds(trained, split, table.attrs["worst_case"])
    table.attrs["clean"] = trained.metrics
    return table


def sanity_checks(trained: Trained, split: TagSplit, attacks: Sequence[str | Attack],
                  eps: Sequence[float] | None = None) -> pd.DataFrame:
    """The gradient-masking checklist (`robustag.checks`) for every evasion attack of `attacks`
    (at each budget): a row per check with `passed` and what was measured."""
    rows = [row for each in build_attacks(attacks, eps) if checks.checkable(each)
            for row in checks.sanity_checks(trained.model, split, each.spec, trained.device)]
    return pd.DataFrame(rows, columns=["attack", "eps", "check", "passed", "detail"])


def certified_bounds(trained: Trained, split: TagSplit, worst: list[dict]) -> list[dict]:
    """For each threat of `worst` that has a certificate (a model with linear score directions,
    user and item rows perturbed): the certified lower bound of every metric, and the attack
    gap (the best attack's worst case minus the bound: the true worst case lies between)."""
    if not certifiable(trained.model):
        return []
    out = []
    for threat in worst:
        if "tag" in threat["targets"].split("+"):
            continue
        certified = ATTACKS.create("certified", **{key: threat[key] for key in ("eps", "norm", "targets")})
        bound = evade(trained.model, split, certified, trained.device).per_post
        row = {key: threat[key] for key in ("eps", "norm", "targets")}
        row.update({f"certified_{key}": float(values.mean()) for key, values in bound.items()})
        row.update({f"gap_{key}": threat[f"worst_{key}"] - row[f"certified_{key}"] for key in ("f1@3", "ndcg@3")})
        out.append(row)
    return out


def bench(spec: str | Path | BenchSpec | Sequence[BenchSpec] | None = None, out: str | Path | None = None, *,
          data_dir: str | Path | None = None, datasets: list[str] | None = None, models: list[str] | None = None,
          defenses: list[str] | None = None, attacks: list[str] | None = None, seeds: int | list[int] | None = None,
          eps: list[float] | None = None, epochs: int | None = None, device: str = "auto", workers: int = 1,
          per_gpu: int = 1, executor: str = "local", address: str | None = None, plugins: Sequence[str | Path] = (),
          retry_failed: bool = False, prune: bool = False, reference: str | None = None, compile: bool | None = None,
          report: bool = True, poison_valid: bool | None = None, stack: int | None = None, retries: int = 3,
          on_event: EventFn | None = None) -> Run:
    """Run a benchmark matrix resumably and return its `Run` (open: close it, or use `with`).

    `spec` is a TOML file, a `BenchSpec` (or several), or None for the small default; the axis
    arguments replace the spec's. Everything (plugins, options, device, data sets) is checked
    before the run folder is touched; a second bench on the same folder is refused while one
    runs. `stack`: the most models of one configuration (seeds) trained as one
    (`robustag.stacking`; default: 1 on a CPU, where it does not pay, 8 on a GPU). `retries`
    (Ray): how often a unit lost with its worker or node is rerun before its cells are recorded
    failed, for `retry_failed` to complete later.
    `on_event(kind, data)` follows the work: "plan" (once), "train", "epoch", "cell",
    "warning", "unit_done"."""
    emit = on_event or (lambda kind, data: None)
    load_plugins(plugins)
    specs = _specs(spec)
    for each in specs:
        _override(each, datasets, models, defenses, attacks, seeds, eps, epochs)
        each.poison_valid = each.poison_valid if poison_valid is None else poison_valid
    the_plan = plan(specs)
    if reference is not None and reference not in the_plan.defense_names():
        raise ParameterError("reference", f"not a defense of this run ({', '.join(the_plan.defense_names())})",
                             repr(reference))
    name = specs[0].name if len(specs) == 1 else Path(spec).stem if isinstance(spec, (str, Path)) else "bench"
    settings = RunSettings(out=Path(out) if out else Path("runs") / folder_name(name), data_dir=paths.data_dir(data_dir),
                           device=device, workers=workers, per_gpu=per_gpu, executor=executor, address=address,
                           plugins=tuple(str(p) for p in plugins), retry_failed=retry_failed, compile=compile,
                           stack=stack, retries=retries)
    check_settings(settings)
    test_items = check_data(list(the_plan.units.values()), settings.data_dir)
    store = ResultStore(settings.out)
    try:
        with store.bench_lock():
            for spec_name, rows in the_plan.rows.items():
                store.add_cells(rows, spec_name)
            dropped = store.prune(the_plan.rows) if prune else 0
            store.set_meta("reference", reference or specs[0].reference)
            store.set_meta(TEST_ITEMS, {**store.meta(TEST_ITEMS, {}), **test_items})  # how test posts cluster
            store.set_meta("specs", merge_described(store.meta("specs", []), [asdict(each) for each in specs]))
            todo = pending_units(the_plan, store, retry_failed)
            emit("plan", {"name": name, "out": str(settings.out), "units": len(the_plan.units), "cells": the_plan.n_cells,
                          "todo": sum(len(u.cells) for u in todo), "pruned": dropped})
            run_units(todo, settings, store, emit)
    finally:
        store.close()
    run = Run(settings.out)
    if report:
        emit("report", {"folder": str(run.report())})
    return run


def tune(spec: str | Path | BenchSpec | Sequence[BenchSpec] | None = None, out: str | Path | None = None, *,
         budget: int, seed: int = 0, data_dir: str | Path | None = None, datasets: list[str] | None = None,
         models: list[str] | None = None, defenses: list[str] | None = None, epochs: int | None = None,
         device: str = "auto", workers: int = 1, plugins: Sequence[str | Path] = (), compile: bool | None = None,
         halving: bool = False, min_epochs: int = 2, reduction: int = 3, on_event: EventFn | None = None) -> tuning.Tuned:
    """Give every defense of the spec the same tuning budget on validation NDCG@3
    (`robustag.tuning`): at most `budget` configurations of each defense's sweep, trained as a
    resumable bench in `out` (default runs/NAME-tune), every trial stored with its history;
    returns the trials, each defense's best, and the tuned spec files written in `out`.
    With `halving`, the same trials run one at a time under successive halving
    (`robustag.halving`: a trial is stopped at epoch `min_epochs`·`reduction`^k unless among its
    defense's best 1/`reduction` there), each defense with the same schedule."""
    load_plugins(plugins)
    specs = _specs(spec)
    for each in specs:
        _override(each, datasets, models, defenses, None, None, None, epochs)
    name = specs[0].name if len(specs) == 1 else "bench"
    folder = Path(out) if out else Path("runs") / folder_name(f"{name}-tune")
    trials = tuning.trial_specs(specs, budget, seed)
    if halving:
        if workers != 1:
            raise ParameterError("workers", "tune --halving trains its trials one at a time, each on every core", workers)
        scores = halving_scores(trials, folder, paths.data_dir(data_dir), min_epochs=min_epochs, reduction=reduction,
                                device=device, compile=compile, on_event=on_event)
    else:
        planned = {row.key for rows in plan(trials).rows.values() for row in rows}
        with bench(trials, folder, data_dir=data_dir, device=device, workers=workers, plugins=(), compile=compile,
                   report=False, on_event=on_event) as run:
            cells = run.finished()  # the folder may hold other cells (a bench's): only the trials count
            scores = tuning.trial_scores(cells[cells["key"].isin(planned)], run.histories())
    best = tuning.best_trials(scores)
    return tuning.Tuned(folder, scores, best, tuning.write_specs(folder, specs, best, budget),
                        tuning.write_tables(folder, scores, best))


def power(run: str | Path | Run, effect: float, reference: str | None = None, metric: str = "ndcg@3",
          spec: str | None = None, seeds: int = 10) -> pd.DataFrame:
    """A finished (pilot) run's comparisons as designs (`Run.power`): what each could detect,
    and the seeds that would detect `effect` at 80% power."""
    if isinstance(run, Run):
        return run.power(effect, reference, metric, spec, seeds)
    with Run(run) as opened:
        return opened.power(effect, reference, metric, spec, seeds)


def _specs(spec) -> list[BenchSpec]:
    if spec is None:
        return [default_spec()]
    if isinstance(spec, BenchSpec):
        return [spec]
    if isinstance(spec, (str, Path)):
        return load_specs(Path(spec))
    specs = list(_expect(spec, (list, tuple), "spec", "a spec file, a BenchSpec or a list of them"))
    for each in specs:
        _expect(each, BenchSpec, "spec", "a spec file, a BenchSpec or a list of them")
    return specs


def _override(spec: BenchSpec, datasets, models, defenses, attacks, seeds, eps, epochs) -> None:
    """Axes given as arguments replace the spec's; an empty one is an error, not the default."""
    for key, value in (("datasets", datasets), ("models", models), ("defenses", defenses), ("attacks", attacks)):
        if value is not None:
            if not value:
                raise ParameterError(key, "empty; name at least one, or leave the option out")
            setattr(spec, key, list(value))
    if seeds is not None:
        spec.seeds = parse_seeds(seeds, "seeds")
    if eps is not None:
        spec.eps = parse_budgets(list(eps), "eps")
    if epochs is not None:
        spec.params = {**spec.params, "epochs": epochs}
