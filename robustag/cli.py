"""The `robustag` command line (typer + rich)."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import sys
import typing
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import robustag as rt
from robustag import paths
from robustag.attack import ATTACKS, EmbeddingAttack
from robustag.checkpoint import save_model
from robustag.checks import checkable
from robustag.claims import claims_table
from robustag.display import attack_spec_labels, labelled
from robustag.defense import DEFENSES
from robustag.download import download_dataset
from robustag.errors import ParameterError, RobustagError
from robustag.evaluation import CUTOFFS
from robustag.models import MODELS
from robustag.plugins import split_specs
from robustag.preprocess import TagSplit
from robustag.provenance import versions
from robustag.spec import parse_budgets
from robustag.store import STATUSES
from robustag.training import default_config, resolve_device
from robustag.trec import write_qrels, write_run
from robustag.api import make_defense

app = typer.Typer(help="Robustness benchmarking for personalized tag recommendation.", no_args_is_help=True)
data_app = typer.Typer(help="Data sets: statistics and downloads.", no_args_is_help=True)
app.add_typer(data_app, name="data")
attacks_app = typer.Typer(help="Attack plugins.", no_args_is_help=True)
app.add_typer(attacks_app, name="attacks")
defenses_app = typer.Typer(help="Defense plugins.", no_args_is_help=True)
app.add_typer(defenses_app, name="defenses")
models_app = typer.Typer(help="Model plugins.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)

DataDirOption = typer.Option(
    None, "--data-dir", envvar=paths.DATA_DIR_ENV, help="Folder holding the data sets (or $ROBUSTAG_DATA_DIR)."
)
PCoreOption = typer.Option(10, "--p-core", help="Iterative p-core: every user, item and tag in ≥ p assignments.")
SplitSeedOption = typer.Option(0, "--split-seed", help="Seed of the tie-break between a user's last posts.")
PluginOption = typer.Option(None, "--plugin", help="Load attack, defense and model plugins from this Python file "
                            "(repeatable).")


POISON_VALID_HELP = ("Poisoning attacks change the validation posts too, so early stopping sees poisoned data "
                     "(default: training posts only; early stopping on clean validation posts).")
PoisonValidOption = typer.Option(None, "--poison-valid/--no-poison-valid", help=POISON_VALID_HELP + " Overrides the spec.")
CompileOption = typer.Option(
    None, "--compile/--no-compile",
    help="Fuse the training loss with torch.compile (about 1.5× faster epochs on LastFM; same results up to "
         "floating-point rounding). Default: on where the compiler works (a C++ compiler on CPU), else eager "
         "with a one-line note; ROBUSTAG_COMPILE=0 turns the default off.")
DefenseOption = typer.Option("plain", "--defense", help="Training regime spec, e.g. spaml-s:attack=pgd,eps=0.1,steps=3")
# The options of a training run, shared by `train` and `attack` (which trains unless --load).
DatasetOption = typer.Option("lastfm", "--dataset", "-d", help="lastfm, movielens, delicious, ml10m or tsv:PATH")
ModelOption = typer.Option("metric", "--model", "-m", help="A model spec, e.g. metric or metric:margin=1 (robustag "
                           "models list); evasion attacks need one with embeddings.")
SeedOption = typer.Option(0, help="Seed of initialisation, shuffling, negative sampling and the attacks' draws.")
SHARED_TRAINING_OPTIONS = {  # name: (type, option)
    "dim": (Optional[int], typer.Option(None, help="Embedding size d.")),
    "lr": (Optional[float], typer.Option(None, help="Adam learning rate.")),
    "epochs": (Optional[int], typer.Option(None, help="Most epochs (early stopping on validation NDCG@3).")),
    "batch_size": (Optional[int], typer.Option(None, "--batch-size")),
    "negatives": (Optional[int], typer.Option(None, help="Negative tags sampled per positive.")),
    "patience": (Optional[int], typer.Option(None, help="Epochs without validation gain before stopping.")),
}


def model_options() -> dict:
    """An option for every parameter a registered model declares (built-ins and installed
    plugins; a `--plugin` file's model takes its parameters in its spec, `-m name:key=value`),
    applying to the models that declare it."""
    declared: dict[str, tuple] = {}
    for name in MODELS.names():
        for key, param in MODELS.get(name).params.items():
            if key not in SHARED_TRAINING_OPTIONS:
                declared.setdefault(key, (param, []))[1].append(name)
    return {key: (Optional[param.type], typer.Option(None, help=f"{param.help} ({', '.join(models)}).",
                                                     show_default=False))
            for key, (param, models) in declared.items()}


TRAINING_OPTIONS = {**SHARED_TRAINING_OPTIONS, **model_options()}  # a model's own parameters apply to the models that declare them


def training_options(command):
    """Give a command every option of a training run, declared once (so `train` and `attack`
    never drift apart); the command receives them as one dict, `params`."""
    signature = inspect.signature(command)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in TRAINING_OPTIONS.items()]

    @functools.wraps(command)
    def with_options(**values):
        params = {name: values.pop(name) for name in TRAINING_OPTIONS}
        return command(**values, params=params)

    kept = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values() if p.name != "params"]
    with_options.__signature__ = signature.replace(parameters=[*kept, *extra])
    with_options.__annotations__ = {**typing.get_type_hints(command), **{n: k for n, (k, _) in TRAINING_OPTIONS.items()}}
    del with_options.__annotations__["params"]
    return with_options
DeviceOption = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")


def _load_plugins(files: Optional[list[Path]]) -> None:
    rt.load_plugins(files or [])


def _names(value: Optional[str], option: str) -> Optional[list[str]]:
    """A comma-separated option: None when not given; given but empty is an error, not the default."""
    if value is None:
        return None
    names = split_specs(value)
    if not names:
        raise RobustagError(f"{option} {value!r}: empty; name at least one, or leave the option out")
    return names


def _budgets(value: Optional[str]) -> Optional[list[float]]:
    if value is None:
        return None
    return parse_budgets([v for v in value.split(",") if v.strip()], f"--eps {value!r}")


def _output_file(path: Optional[Path], option: str) -> None:
    """Checked before any work: a result is never computed only to fail at its write."""
    if path is not None and path.is_dir():
        raise RobustagError(f"{option} {path}: is a folder; expected a file path")


def _load(dataset: str, data_dir: Optional[Path], p_core: int, split_seed: int) -> TagSplit:
    with console.status(f"loading {dataset} ({p_core}-core)"):
        return rt.load_dataset(dataset, data_dir, p_core, split_seed)


def _stdout() -> Console:
    """Results go to stdout; when it is not a terminal, wide enough that tables do not wrap."""
    return Console(width=None if sys.stdout.isatty() else 160)


def _write_json(path: Path, payload: dict) -> None:
    _writing(path, "--json", lambda: path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n"))


def _writing(path: Path, option: str, write) -> None:
    """Create the parent folders and write; an unwritable place is a one-line error naming the option."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write()
    except OSError as error:
        raise RobustagError(f"{option} {path}: cannot be written ({error.strerror or error})") from error


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@data_app.command("stats")
def data_stats(
    name: str = typer.Argument(..., help="lastfm, movielens, delicious, ml10m or tsv:PATH"),
    data_dir: Optional[Path] = DataDirOption,
    p_core: int = PCoreOption,
    split_seed: int = SplitSeedOption,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
):
    """Users, items, tags, assignments, posts and train/test posts (the paper's Table 1)."""
    stats = _load(name, data_dir, p_core, split_seed).stats()
    table = Table(title=f"{name}, {p_core}-core")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        table.add_row(key.replace("_", " "), f"{value:,}")
    _stdout().print(table)
    if json_out:
        _write_json(json_out, {"dataset": name, **stats})


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="lastfm, movielens, delicious or ml10m"),
    data_dir: Optional[Path] = DataDirOption,
    sha256: Optional[str] = typer.Option(None, help="Expected sha256 of the tag-assignment file (overrides the pinned one)."),
    url: Optional[str] = typer.Option(None, help="Fetch from this URL instead of GroupLens."),
):
    """Fetch a data set from GroupLens into the data directory, verifying its sha256."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console)
    task = progress.add_task(f"downloading {name}", total=None)

    def on_bytes(done: int, total: int | None) -> None:
        progress.start()  # shown once bytes arrive: an input refused before any shows no bar
        progress.update(task, completed=done, total=total)

    try:
        path = download_dataset(name, paths.data_dir(data_dir), sha256, url, on_bytes)
    finally:
        progress.stop()
    console.print(f"[green]verified[/green] {path}")


@app.command("train")
@training_options
def train_command(
    dataset: str = DatasetOption,
    model: str = ModelOption,
    data_dir: Optional[Path] = DataDirOption,
    p_core: int = PCoreOption,
    split_seed: int = SplitSeedOption,
    seed: int = SeedOption,
    device: str = DeviceOption,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write metrics, config, seed and history here."),
    save_run: Optional[Path] = typer.Option(None, "--save-run", help="Write the test rankings as a TREC run (and PATH.qrels)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Save the trained model (learned models) here."),
    defense: str = DefenseOption,
    compile: Optional[bool] = CompileOption,
    plugin: Optional[list[Path]] = PluginOption,
    params: dict = None,
):
    """Train a model, evaluate it on the test posts, and print the metrics."""
    _load_plugins(plugin)
    for path, option in ((json_out, "--json"), (save_run, "--save-run"), (save, "--save")):
        _output_file(path, option)
    config = _checked_training(model, defense, device, seed, params)
    if save and not config.recipe().learned:
        raise RobustagError(f"--save {save}: {config.model} is not a learned model; there is nothing to save")
    split = _load(dataset, data_dir, p_core, split_seed)
    trained = _train_with_progress(split, model, config, defense, device, compile, params)
    _stdout().print(_metrics_table(f"{model} on {dataset} ({len(split.test):,} test posts)", trained.metrics))
    if json_out:
        _write_json(json_out, {
            **_run_header(dataset, split, split_seed, trained),
            "metrics": trained.metrics,
            "best_epoch": trained.best_epoch,
            "best_valid": trained.best_valid,
            "history": trained.history,
            "train_seconds": trained.train_seconds,
            "eval_seconds": trained.eval_seconds,
        })
    if save_run:
        _writing(save_run, "--save-run", lambda: (
            write_run(save_run, split, split.test, trained.evaluation.top_tags, f"robustag-{model}"),
            write_qrels(Path(f"{save_run}.qrels"), split, split.test)))
    if save:
        _save(save, trained, split)


def _checked_training(model: str, defense: str, device: str, seed: int, params: dict):
    """Options, defense and device checked before any data is read; returns the configuration."""
    config = default_config(model, seed=seed, **params)
    make_defense(defense, model)
    resolve_device(device)
    return config


def _save(path: Path, trained: rt.Trained, split: TagSplit) -> None:
    _writing(path, "--save", lambda: save_model(path, trained.model, trained.config, split))
    console.print(f"saved model to {path}")


def _run_header(dataset: str, split: TagSplit, split_seed: int, trained: rt.Trained) -> dict:
    return {
        "dataset": dataset,
        "defense": DEFENSES.create(trained.defense).describe(),
        "split": {**split.stats(), "split_seed": split_seed},
        "model": trained.config.model,
        "config": trained.config.describe(),
        "seed": trained.config.seed,
        "device": f"{trained.device}+compile" if trained.compiled else str(trained.device),
        "versions": versions(),
    }


@app.command("attack")
@training_options
def attack_command(
    attacks: str = typer.Option("pgd,mim,fgsm", "--attacks", "-a", help="Attack specs, e.g. pgd:eps=0.5,steps=10,mim,tag-replace-20"),
    eps: Optional[str] = typer.Option(None, "--eps", help="Comma-separated budgets: every embedding attack runs at each."),
    dataset: str = DatasetOption,
    model: str = ModelOption,
    data_dir: Optional[Path] = DataDirOption,
    p_core: int = PCoreOption,
    split_seed: int = SplitSeedOption,
    seed: int = SeedOption,
    device: str = DeviceOption,
    compile: Optional[bool] = CompileOption,
    defense: str = DefenseOption,
    load: Optional[Path] = typer.Option(None, "--load", help="Attack this saved model instead of training one."),
    save: Optional[Path] = typer.Option(None, "--save", help="Save the trained model here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure here."),
    checks: bool = typer.Option(False, "--checks", help="Run the gradient-masking sanity checks of every evasion attack "
                                "(monotone in ε, beats random noise, converged, large ε, below the certificate); "
                                "exit 1 if one fails."),
    poison_valid: bool = typer.Option(False, "--poison-valid", help=POISON_VALID_HELP),
    plugin: Optional[list[Path]] = PluginOption,
    params: dict = None,
):
    """Train (or load) a model and measure what each attack does to it."""
    _load_plugins(plugin)
    for path, option in ((json_out, "--json"), (save, "--save")):
        _output_file(path, option)
    attack_list = rt.build_attacks(_names(attacks, "--attacks"), _budgets(eps), seed)
    config = _checked_attack_run(attack_list, model, defense, device, seed, params, load, save, checks)
    split = _load(dataset, data_dir, p_core, split_seed)
    for each in attack_list:
        each.check(split)  # before training: a bad target tag must not cost a training run
    if load:
        trained = rt.load(load, split, device, defense)
    else:
        trained = _train_with_progress(split, model, config, defense, device, compile, params)
        if save:
            _save(save, trained, split)
    table = _attack_with_progress(trained, split, attack_list, poison_valid)
    rows, worst, certified = table.to_dict("records"), table.attrs["worst_case"], table.attrs["certified"]
    _stdout().print(_attack_table(f"{trained.config.model} on {dataset}: clean and attacked", rows, worst, certified))
    if json_out:
        _write_json(json_out, {
            **_run_header(dataset, split, split_seed, trained),
            "eps_semantics": "eps is relative to the mean L2 norm of the rows of each perturbed embedding table (÷√d per coordinate for linf)",
            "clean": trained.metrics,
            "attacks": rows,
            "worst_case": worst,
            "certified": certified,
        })
    if checks:
        _report_checks(rt.sanity_checks(trained, split, attack_list))


def _checked_attack_run(attack_list: list, model: str, defense: str, device: str, seed: int, params: dict,
                        load: Optional[Path], save: Optional[Path], checks: bool):
    """Everything `attack` can refuse before it reads data or trains; the training configuration."""
    evasions = [a.name for a in attack_list if isinstance(a, EmbeddingAttack)]
    if evasions and not MODELS.resolve(model)[0].embeddings and not load:
        raise RobustagError(f"--attacks {evasions[0]}: perturbs embeddings, but model {model!r} has none")
    config = _checked_training(model, defense, device, seed, params)
    if checks and not any(checkable(each) for each in attack_list):
        raise RobustagError("--checks: none of these attacks has sanity checks (they test gradient-based evasion "
                            "attacks: pgd, mim, fgsm, auto, ...); leave --checks out or add one")
    if load:
        _check_loaded_options(load, model, params, defense, save, poisons=len(attack_list) - len(evasions))
    elif save and not config.recipe().learned:
        raise RobustagError(f"--save {save}: {config.model} is not a learned model; there is nothing to save")
    return config


def _attack_with_progress(trained, split, attack_list: list, poison_valid: bool):
    """`rt.attack`, with a progress bar naming the attack under way."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("attacking", total=len(attack_list))
        started = []

        def on_attack(each) -> None:
            budget = f" ε={each.eps}" if isinstance(each, EmbeddingAttack) else ""
            progress.update(task, description=f"attack {each.name}{budget}", completed=len(started))
            started.append(each)

        table = rt.attack(trained, split, attack_list, on_attack=on_attack, poison_valid=poison_valid)
        progress.update(task, completed=len(attack_list))
    return table


def _check_loaded_options(load: Path, model: str, params: dict, defense: str, save: Optional[Path], poisons: int) -> None:
    """With --load the saved model's own configuration is used (a poisoning attack retrains with
    it): options that would configure another model are refused, not silently ignored."""
    given = [f"--{name.replace('_', '-')}" for name, value in params.items() if value is not None]
    given += ["--model"] if model != "metric" else []
    given += ["--save"] if save else []
    given += ["--defense"] if defense != "plain" and not poisons else []
    if given:
        raise RobustagError(f"--load {load}: the saved model's configuration is used, so {', '.join(given)} would "
                            "change nothing (leave them out; --defense applies to a poisoning attack's retraining)")


def _report_checks(results) -> None:
    table = Table(title="sanity checks (Carlini et al. 2019)")
    for column in ("attack", "ε", "check", "verdict", "measured"):
        table.add_column(column)
    labels = attack_spec_labels(list(results["attack"]), list(results["eps"]))
    for (_, row), label in zip(results.iterrows(), labels):
        verdict = "[green]pass[/green]" if row["passed"] else "[bold red]FAIL[/bold red]"
        table.add_row(escape(label.split(" ε=")[0]), f"{row['eps']:g}", row["check"], verdict, escape(row["detail"]))
    _stdout().print(table)
    failed = results[~results["passed"]]
    if len(failed):
        console.print(f"[bold red]{len(failed)} sanity checks failed[/bold red]: "
                      + "; ".join(f"{r['attack'].split(':')[0]} ε={r['eps']:g}: {r['check']}" for _, r in failed.iterrows()))
        raise typer.Exit(1)


def _attack_table(title: str, rows: list[dict], worst: list[dict], certified: list[dict]) -> Table:
    caption = "ε relative to the mean row norm of each perturbed table" + (
        "; the true worst case lies between the certified bound and the worst case of the attacks" if certified else "")
    table = Table(title=title, caption=caption)
    for column in ("attack", "ε", "F1@3 clean", "F1@3 attacked", "rel. drop", "NDCG@3 clean", "NDCG@3 attacked",
                   "rel. drop", "overlap@3", "seconds"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    labels = attack_spec_labels([row["attack"] for row in rows], [row["eps"] for row in rows])
    for row, label in zip(rows, labels):
        table.add_row(
            escape(label.split(" ε=")[0]), "" if row["eps"] is None else f"{row['eps']:g}",
            f"{row['clean_f1@3']:.4f}", f"{row['attacked_f1@3']:.4f}", f"{row['rel_drop_f1@3']:.1%}",
            f"{row['clean_ndcg@3']:.4f}", f"{row['attacked_ndcg@3']:.4f}", f"{row['rel_drop_ndcg@3']:.1%}",
            f"{row['overlap@3']:.3f}", f"{row['seconds']:.1f}",
        )
    for budget in worst:  # one per threat: a worst case over several budgets would mix threats
        table.add_row(f"worst case ε={budget['eps']:g} {budget['norm']} {budget['targets']}", f"{budget['eps']:g}", "", f"{budget['worst_f1@3']:.4f}",
                      "", "", f"{budget['worst_ndcg@3']:.4f}", "", f"broken@3 {budget['broken@3']:.1%}", "")
    for bound in certified:  # no perturbation in the budget can go below these
        table.add_row(f"certified bound ε={bound['eps']:g} {bound['norm']} {bound['targets']}", f"{bound['eps']:g}", "",
                      f"{bound['certified_f1@3']:.4f}", "", "", f"{bound['certified_ndcg@3']:.4f}", "",
                      f"gap {bound['gap_ndcg@3']:.4f}", "")
    return table


@attacks_app.command("list")
def attacks_list(plugin: Optional[list[Path]] = PluginOption):
    """Every attack with its threat surface and parameters."""
    _load_plugins(plugin)
    extra = lambda cls: {"surface": cls.surface, "trainable": "yes" if cls.trainable else "no",
                         "threat model": cls.threat_label()}
    table = _plugin_table("attacks", ATTACKS, extra)
    for name, spec in ATTACKS.presets().items():
        cls = ATTACKS.resolve(spec)[0]
        table.add_row(name, cls.surface, "", cls.threat_label(), f"preset: {spec}", "built-in preset")
    _stdout().print(table)


@models_app.command("list")
def models_list(plugin: Optional[list[Path]] = PluginOption):
    """Every model with its parameters and what applies to it (defenses need a learned model,
    evasion attacks one with embeddings)."""
    _load_plugins(plugin)
    yes = lambda flag: "yes" if flag else "no"
    _stdout().print(_plugin_table("models", MODELS, lambda cls: {
        "learned": yes(cls.learned), "embeddings": yes(cls.embeddings),
        "tuned defaults": ", ".join(f"{k}={v}" for k, v in cls.defaults.items())}))


@defenses_app.command("list")
def defenses_list(plugin: Optional[list[Path]] = PluginOption):
    """Every defense with its parameters (adversarial ones take an attack spec)."""
    _load_plugins(plugin)
    _stdout().print(_plugin_table("defenses", DEFENSES, lambda cls: {"adversarial": "yes" if cls.uses_attack else "no"}))


def _plugin_table(title: str, registry, extra) -> Table:
    names = registry.names()
    extra_columns = list(extra(registry.get(names[0]))) if names else []
    table = Table(title=title)
    for column in ("name", *extra_columns, "parameters (default): meaning", "origin"):
        table.add_column(column)
    for name in names:
        cls = registry.get(name)
        params = "\n".join(f"{k}={p.default!r}: {p.help}" for k, p in cls.params.items()) or "(none)"
        table.add_row(name, *extra(cls).values(), f"{cls.summary}\n{params}", registry.origin(name))
    return table


def _train_with_progress(split: TagSplit, model: str, config, defense: str, device: str, compile: Optional[bool],
                         params: dict) -> rt.Trained:
    train = lambda on_epoch=None: rt.train(split, model, defense, config.seed, device, compile, on_epoch, **params)
    if not config.recipe().learned:
        with console.status(f"fitting {config.model}"):
            return train()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        name = config.model + (f" + {defense.split(':')[0]}" if defense.split(":")[0] != "plain" else "")
        task = progress.add_task(f"training {name}", total=config.epochs, info="")

        def on_epoch(record: dict) -> None:
            info = f"loss {record.get('loss', float('nan')):.4f}  valid ndcg@3 {record.get('valid_ndcg@3', float('nan')):.4f}"
            progress.update(task, advance=1, info=info)

        trained = train(on_epoch)
        progress.update(task, total=len(trained.history))  # early stopping ends the bar where it stopped
        return trained


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("N", justify="right")
    for name in ("P", "R", "F1", "NDCG"):
        table.add_column(f"{name}@N", justify="right")
    for n in CUTOFFS:
        table.add_row(str(n), *(f"{metrics[f'{m}@{n}']:.4f}" for m in ("p", "r", "f1", "ndcg")))
    return table


@app.command("bench")
def bench_command(
    spec_file: Optional[Path] = typer.Argument(None, help="A TOML benchmark spec (default: a small built-in one)."),
    datasets: Optional[str] = typer.Option(None, help="Comma-separated datasets (overrides the spec)."),
    models: Optional[str] = typer.Option(None, help="Comma-separated models."),
    defenses: Optional[str] = typer.Option(None, help="Defense specs, e.g. plain,aml,spaml-s:lambda=[0.5,1]"),
    attacks: Optional[str] = typer.Option(None, help="Attack specs, evasion and poisoning, e.g. pgd,mim,tag-replace-20"),
    seeds: Optional[int] = typer.Option(None, help="Number of seeds (0..N-1)."),
    eps: Optional[str] = typer.Option(None, help="Comma-separated budgets for every evasion attack."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Most training epochs."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/SPEC_NAME)."),
    data_dir: Optional[Path] = DataDirOption,
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    executor: str = typer.Option("local", help="local (process pool) or ray."),
    workers: int = typer.Option(1, min=1, help="Worker processes (local executor, CPU)."),
    per_gpu: int = typer.Option(1, "--per-gpu", min=1, help="Units packed on each GPU at once."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (executor ray)."),
    retries: int = typer.Option(3, min=0, help="Executor ray: reruns of a unit lost with its worker or node before "
                                "its cells are recorded failed."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Rerun the cells that failed."),
    prune: bool = typer.Option(False, "--prune", help="Drop stored cells of these specs that the plan no longer has."),
    reference: Optional[str] = typer.Option(None, help="Defense the paired tests compare against (default: the spec's, plain)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write RUN/report at the end."),
    poison_valid: Optional[bool] = PoisonValidOption,
    compile: Optional[bool] = CompileOption,
    stack: Optional[int] = typer.Option(None, min=1, help="Most models of one configuration (its seeds) trained as one "
                                        "(default: 8 on a GPU; 1 on a CPU, where stacking is slower)."),
    plugin: Optional[list[Path]] = PluginOption,
):
    """Run a benchmark matrix (datasets × models × defenses × attacks × seeds), resumably."""
    with BenchProgress() as live:
        run = rt.bench(
            spec_file, out, data_dir=data_dir, datasets=_names(datasets, "--datasets"), models=_names(models, "--models"),
            defenses=_names(defenses, "--defenses"), attacks=_names(attacks, "--attacks"), seeds=seeds,
            eps=_budgets(eps), epochs=epochs, device=device, workers=workers, per_gpu=per_gpu, executor=executor,
            address=address, plugins=plugin or (), retry_failed=retry_failed, prune=prune, reference=reference,
            compile=compile, report=report, poison_valid=poison_valid, stack=stack, retries=retries,
            on_event=live.on_event)
    with run:
        _stdout().print(summary_table(run))
        failed = run.failed
    if failed:
        console.print(f"[yellow]{failed} cells failed[/yellow]; see `robustag results {escape(str(run.folder))} "
                      "--status failed`, rerun with --retry-failed")
        raise typer.Exit(1)


def summary_table(run: rt.Run) -> Table:
    """The table printed at the end of `robustag bench`: NDCG@3 per group, mean ± std over seeds."""
    cells = run.finished()
    table = Table(title="NDCG@3, mean ± std over seeds")
    for column in ("dataset", "model", "defense", "attack", "seeds", "NDCG@3", "F1@3"):
        table.add_column(column)
    if cells.empty:
        return table
    for _, group in labelled(cells).groupby(["dataset", "model", "params", "defense", "attack"], sort=False):
        first = group.iloc[0]
        table.add_row(*(escape(first[c]) for c in ("dataset", "model_label", "defense_label", "attack_label")), str(len(group)),
                      f"{group['ndcg@3'].mean():.4f} ± {group['ndcg@3'].std(ddof=1) if len(group) > 1 else 0:.4f}",
                      f"{group['f1@3'].mean():.4f}")
    return table


class BenchProgress:
    """The live view: overall progress with ETA, the model in training and its epoch."""

    def __init__(self):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)

    def __enter__(self):
        self.overall = self.progress.add_task("cells", total=None, info="")
        self.current = self.progress.add_task("", total=None, info="")
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def on_event(self, kind: str, data: dict) -> None:
        self.progress.start()  # from the first event on: a bench refused while it checks its input shows no bars
        if kind == "plan":
            if data["pruned"]:
                self.progress.console.print(f"pruned {data['pruned']} stale cells")
            self.progress.console.print(f"{escape(data['name'])}: {data['units']} models, {data['cells']} cells; "
                                        f"{data['todo']} cells to run in {escape(data['out'])}")
            self.progress.update(self.overall, total=data["cells"], completed=data["cells"] - data["todo"])
        elif kind == "train":
            self.progress.update(self.current, description=f"training {data['unit']}", total=data["epochs"], completed=0, info="")
        elif kind == "epoch":
            info = f"epoch {data['epoch']}  valid ndcg@3 {data.get('valid_ndcg@3', float('nan')):.4f}"
            self.progress.update(self.current, completed=data["epoch"], info=info)
        elif kind == "cell":
            self.progress.update(self.current, description=f"evaluating {data['unit']}", info=data["attack"].split(",")[0])
        elif kind == "unit_done":
            self.progress.advance(self.overall, data.get("cells", 1))
        elif kind == "warning":
            self.progress.console.print(f"[yellow]warning:[/yellow] {escape(data['message'])}")
        elif kind == "report":
            self.progress.console.print(f"report: {escape(data['folder'])}")


@app.command("tune")
def tune_command(
    spec_file: Optional[Path] = typer.Argument(None, help="A TOML spec whose defenses give their parameters as sweeps."),
    budget: int = typer.Option(..., min=1, help="Most configurations trained per defense (a seeded random subset)."),
    datasets: Optional[str] = typer.Option(None, help="Comma-separated datasets (overrides the spec)."),
    models: Optional[str] = typer.Option(None, help="Comma-separated models."),
    defenses: Optional[str] = typer.Option(None, help='Defense sweeps, e.g. "plain,aml:eps=[0.05,0.1],beta=[0.5,1,2]"'),
    epochs: Optional[int] = typer.Option(None, min=1, help="Most training epochs."),
    seed: int = typer.Option(0, help="Seed of the random subset (the trials train with the spec's first seed)."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/SPEC_NAME-tune)."),
    data_dir: Optional[Path] = DataDirOption,
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    workers: int = typer.Option(1, min=1, help="Worker processes (CPU)."),
    halving: bool = typer.Option(False, "--halving", help="Stop trials early by successive halving on the validation "
                                 "curve (Optuna), the same schedule for every defense."),
    min_epochs: int = typer.Option(2, "--min-epochs", min=1, help="--halving: the first rung's epoch."),
    reduction: int = typer.Option(3, min=2, help="--halving: rungs at min-epochs·reduction^k; 1/reduction go on."),
    compile: Optional[bool] = CompileOption,
    plugin: Optional[list[Path]] = PluginOption,
):
    """Tune every defense with the same budget on validation NDCG@3; write the best as a spec."""
    with BenchProgress() as live:
        tuned = rt.tune(spec_file, out, budget=budget, seed=seed, data_dir=data_dir, datasets=_names(datasets, "--datasets"),
                        models=_names(models, "--models"), defenses=_names(defenses, "--defenses"), epochs=epochs,
                        device=device, workers=workers, plugins=plugin or (), compile=compile, halving=halving,
                        min_epochs=min_epochs, reduction=reduction, on_event=live.on_event)
    table = Table(title=f"Tuning trials: {len(tuned.trials)} (best of each defense marked ★)")
    states = "state" in tuned.trials
    for column in ("dataset", "model", "defense", "valid NDCG@3", "epochs", *(["state"] if states else [])):
        table.add_column(column)
    chosen = set(tuned.best["unit"])
    for _, row in tuned.trials.sort_values(["dataset", "model", "defense_name", "valid_ndcg@3"], ascending=[True, True, True, False]).iterrows():
        mark = " ★" if row["unit"] in chosen else ""
        table.add_row(escape(row["dataset"]), escape(row["model"]), escape(row["defense"]) + mark,
                      f"{row['valid_ndcg@3']:.4f}", str(int(row["epochs"])), *([row["state"]] if states else []))
    _stdout().print(table)
    for path in tuned.specs:
        _stdout().print(f"tuned spec: {escape(str(path))}")
    for path in tuned.tables:
        _stdout().print(f"tuning table: {escape(str(path))}")


@app.command("results")
def results_command(
    run: Path = typer.Argument(..., help="A run folder written by robustag bench."),
    spec: Optional[str] = typer.Option(None, help="Only the cells of this spec."),
    status: Optional[str] = typer.Option(None, help="pending, done or failed."),
    dataset: Optional[str] = typer.Option(None),
    defense: Optional[str] = typer.Option(None, help="Defense name."),
    attack: Optional[str] = typer.Option(None, help="Attack name ('clean' for none)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Export the listed cells (metrics flattened) as CSV."),
    parquet: Optional[Path] = typer.Option(None, "--parquet", help="Export as Parquet (needs pyarrow)."),
    histories: bool = typer.Option(False, "--histories", help="Export the per-epoch training records (every figure "
                                   "a model and its defense recorded) instead of the cells, with --csv or --parquet."),
):
    """List and filter the cells of a run; export them."""
    if status is not None and status not in STATUSES:
        raise RobustagError(f"--status {status!r}: expected one of {', '.join(STATUSES)}")
    for path, option in ((csv, "--csv"), (parquet, "--parquet")):
        _output_file(path, option)
    if parquet and importlib.util.find_spec("pyarrow") is None:
        raise RobustagError("--parquet needs pyarrow: pip install pyarrow")
    if histories and not (csv or parquet):
        raise RobustagError("--histories: name where to write them (--csv FILE or --parquet FILE)")
    with rt.Run(run) as opened:
        frame = opened.histories(spec=spec) if histories else opened.cells(spec=spec, status=status)
    if histories:
        _export(frame, csv, parquet)
        _stdout().print(f"{len(frame)} epochs of {frame['unit'].nunique() if len(frame) else 0} trained models written")
        return
    for column, value in (("dataset", dataset), ("defense_name", defense), ("attack_name", attack)):
        if value:
            frame = frame[frame[column] == value]
    table = Table(title=f"{run}: {len(frame)} cells")
    for column in ("dataset", "model", "seed", "defense", "attack", "status", "f1@3", "ndcg@3", "seconds"):
        table.add_column(column)
    for _, row in labelled(frame).iterrows():
        table.add_row(escape(row["dataset"]), escape(row["model_label"]), str(row["seed"]), escape(row["defense_label"]),
                      escape(row["attack_label"]), row["status"],
                      _fmt(row.get("f1@3")), _fmt(row.get("ndcg@3")), _fmt(row.get("seconds"), "{:.1f}"))
    _stdout().print(table)
    _export(frame, csv, parquet)


def _export(frame: pd.DataFrame, csv: Optional[Path], parquet: Optional[Path]) -> None:
    if csv:
        _writing(csv, "--csv", lambda: frame.to_csv(csv, index=False))
    if parquet:
        _writing(parquet, "--parquet", lambda: frame.to_parquet(parquet, index=False))


def _fmt(value, pattern: str = "{:.4f}") -> str:
    return "" if value is None or pd.isna(value) else pattern.format(value)


@app.command("claims")
def claims_command(
    run: Path = typer.Argument(..., help="A run folder written by robustag bench."),
    claims_file: Path = typer.Argument(..., metavar="claims_file", help="A TOML file of \\[\\[claim]] tables."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the verdicts as CSV."),
):
    """Test stated claims ("A is better than B", "loses less under X") at method level, Holm within each family."""
    _output_file(csv, "--csv")
    shown = claims_table(rt.verify_claims(run, claims_file))
    table = Table(title=f"{len(shown)} comparisons of {shown['claim'].nunique()} claims ({claims_file})")
    columns = ("claim", "dataset", "metric", "comparison", "under", "Δ [95% CI]", "detectable Δ", "p", "p (Holm)", "seeds",
               "verdict")
    for column in columns:
        table.add_column(column)
    for _, row in shown.iterrows():
        table.add_row(*(escape(str(row[c])) for c in columns))
    _show(table, shown, csv)


@app.command("power")
def power_command(
    run: Path = typer.Argument(..., help="A finished run, the pilot."),
    effect: float = typer.Option(..., help="The difference to detect (say 0.01 NDCG@3)."),
    reference: Optional[str] = typer.Option(None, help="Defense compared against (default: the run's)."),
    metric: str = typer.Option("ndcg@3"),
    seeds: int = typer.Option(10, min=3, help="Also state the effect detectable with this many seeds."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the table as CSV."),
):
    """Design the next run from a pilot: per comparison, the effect it could detect and the seeds needed for --effect."""
    _output_file(csv, "--csv")
    table = rt.power(run, effect, reference, metric, seeds=seeds)
    shown = Table(title=f"Seeds to detect Δ = {effect:g} {metric.upper()} at 80% power (α = 0.05), from {run}")
    for column in ("dataset", "model", "defense", "comparison", "seeds", "posts", "detectable now", "seeds needed",
                   f"detectable at {seeds} seeds"):
        shown.add_column(column)
    for _, row in table.iterrows():
        needed = "more posts needed" if pd.isna(row["needed"]) else str(int(row["needed"]))
        shown.add_row(escape(row["dataset"]), escape(row["model"]), escape(row["defense"].split(":")[0]),
                      escape(row["attack"].split(",")[0] or "clean"), str(row["seeds"]), str(row["posts"]),
                      f"{row['mde']:.4f}", needed, f"{row[f'mde_at_{seeds}_seeds']:.4f}")
    _show(shown, table, csv)


def _show(table: Table, frame: pd.DataFrame, csv: Optional[Path]) -> None:
    """Print a command's table, and write the frame it shows as CSV where asked."""
    _stdout().print(table)
    _export(frame, csv, None)


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="A run folder written by robustag bench."),
    archive: Path = typer.Argument(..., help="The archive to write (a .zip)."),
    metrics: Optional[str] = typer.Option(None, help="Keep the per-post values of these metrics only, e.g. "
                                          "ndcg@3,f1@3,p@3 (what reports and claims test)."),
):
    """Write a run's results as one portable archive: reports and claims regenerate from it."""
    _output_file(archive, "archive")
    with rt.Run(run) as opened:
        written = opened.export(archive, _names(metrics, "--metrics"))
    console.print(f"archive: {escape(str(written))} ({written.stat().st_size / 2**20:.1f} MiB)")


@app.command("import")
def import_command(
    archive: Path = typer.Argument(..., help="An archive written by robustag export."),
    run: Path = typer.Argument(..., help="A new run folder to rebuild it in."),
):
    """Rebuild a run folder from an archive (then `robustag report RUN`, `claims`, `power`)."""
    with rt.Run.from_archive(archive, run) as opened:
        console.print(f"{escape(str(opened.folder))}: {len(opened.cells())} cells")


@app.command("report")
def report_command(
    run: Path = typer.Argument(..., help="A run folder written by robustag bench."),
    reference: Optional[str] = typer.Option(None, help="Defense the paired tests compare against, in this report "
                                            "(default: the run's)."),
    specs: Optional[str] = typer.Option(None, help="Comma-separated specs of the run to report (default: all)."),
):
    """Write RUN/report/: Markdown, HTML, LaTeX, CSV and plots, with significance tests."""
    with rt.Run(run) as opened:
        console.print(f"report: {escape(str(opened.report(reference, _names(specs, '--specs'))))}")


FLAGS = {"plugins": "--plugin"}  # library parameters whose flag is not --NAME-WITH-DASHES


def error_text(error: RobustagError) -> str:
    """What the command line says: the flag where the library names its parameter."""
    if isinstance(error, ParameterError):
        return error.naming(FLAGS.get(error.parameter, "--" + error.parameter.replace("_", "-")))
    return str(error)


def main() -> None:
    warnings.formatwarning = lambda message, category, *_, **__: f"warning: {message}\n"  # one line, no source
    try:
        app()
    except RobustagError as error:
        console.print(f"[bold red]error:[/bold red] {escape(error_text(error))}", soft_wrap=True)  # one line, never wrapped
        sys.exit(2)
