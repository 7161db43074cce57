"""Equal tuning budgets: search each defense's declared parameters on validation NDCG@3.

A comparison in which only the reference was tuned favours it. `robustag tune` gives every
defense of a spec the same budget: its parameters (and its attack's) are given as sweeps,

    robustag tune --datasets movielens --budget 8 \\
        --defenses "plain,aml:eps=[0.05,0.1,0.2],beta=[0.5,1,2],spaml-s:lambda=[0.5,1,2],mu=[1.05,1.1,1.2]"

and at most `budget` configurations of each defense are trained: all of them when the sweep
has no more, else a seeded random subset (random search, Bergstra & Bengio 2012, which at
equal budget does as well as a grid when few parameters matter). Every trial is a unit of an
ordinary bench in the run folder (resumable; stored with its per-epoch history in
results.sqlite); its score is its best validation NDCG@3, the epoch early stopping keeps.
Test posts are never looked at. The best configuration of each defense is written as a spec
(`RUN/tuned-DATASET-MODEL.toml`) to run with more seeds, and all of them as a `[tuned]` table
(`RUN/tuned.toml`) that any spec can name (`tuned = "tuned.toml"`) to run its bare-named
defenses at their tuned configurations; `RUN/trials.csv` and `RUN/best.csv` record every trial
and each defense's choice. Options of the model given as sweeps in [params]
(`margin = [0.5, 1]`, `lr = [...]`) are searched jointly with each defense's parameters, within
the same budget, and the table keeps the ones each defense was best with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from robustag.errors import ParameterError
from robustag.models import MODELS
from robustag.plugins import parse_spec
from robustag.spec import BenchSpec, expand_sweep
from robustag.training import SHARED_OPTIONS

SCORE = "valid_ndcg@3"


@dataclass
class Tuned:
    """What `robustag.tune` returns: every trial with its validation score, the best of each
    defense, the spec files written and the CSV tables of both."""

    folder: Path
    trials: pd.DataFrame
    best: pd.DataFrame
    specs: list[Path]
    tables: list[Path]


def trial_specs(specs: list[BenchSpec], budget: int, seed: int = 0) -> list[BenchSpec]:
    """The trials of each spec: for every defense, at most `budget` of its configurations
    joined with the [params] combinations the spec sweeps (a seeded random subset of that
    product, in order), with no attack and one seed (the spec's first). One spec per [params]
    combination, naming the defense configurations tried with it."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ParameterError("budget", "must be a whole number ≥ 1", repr(budget))
    rng = np.random.default_rng(seed)
    trials = []
    for spec in specs:
        fixed = [m for m in spec.expanded_models() if not MODELS.declared(parse_spec(m)[0], "learned", True)]
        if fixed:
            raise ParameterError("models", f"{fixed[0]!r} learns nothing, so it has no training or defense to tune; "
                                           "leave it out of the tune (bench it as it is)")
        swept_models = [m for m in spec.models if len(expand_sweep(m)) > 1]
        if swept_models:
            raise ParameterError("models", f"tune sweeps a model's parameters through [params], not in its name "
                                           f"({swept_models[0]!r})")
        combinations = spec.param_grid()
        tried: list[list[str]] = [[] for _ in combinations]
        for defense in spec.defenses:
            candidates = [(k, d) for k in range(len(combinations)) for d in expand_sweep(defense)]
            if len(candidates) > budget:
                candidates = [candidates[k] for k in sorted(rng.choice(len(candidates), budget, replace=False))]
            for k, configuration in candidates:
                tried[k].append(configuration)
        trials += [replace(spec, params=combination, defenses=defenses, attacks=[], eps=None, seeds=spec.seeds[:1])
                   for combination, defenses in zip(combinations, tried) if defenses]
    return trials


def swept_params(specs: list[BenchSpec]) -> list[str]:
    """The [params] options the specs sweep (tuned together with each defense)."""
    return sorted({k for spec in specs for k, v in spec.params.items() if isinstance(v, list)})


def trial_scores(cells: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """One row per trained trial: its configuration, best validation NDCG@3 and epochs run.
    `cells`: the finished cells, one per configuration (`stats.done_cells`), so a trial rerun
    after a release that changed the numbers is listed once."""
    clean = cells[cells["attack"] == ""]
    per_unit = histories.groupby("unit").agg(**{SCORE: (SCORE, "max"), "epochs": ("epoch", "max")})
    columns = ["dataset", "model", "params", "defense_name", "defense", "seed", "unit"]
    return clean[columns].merge(per_unit, left_on="unit", right_index=True)


def best_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trial with the best validation NDCG@3 of each data set, model and defense, over its
    configurations and the swept [params] (the first in sweep order on ties); under successive
    halving, of the trials that finished (a pruned trial's score is of a shorter training)."""
    keys = ["dataset", "model", "defense_name"]
    if "state" in trials:
        trials = trials[trials["state"] == "complete"]
    return trials.loc[trials.groupby(keys, sort=False)[SCORE].idxmax()].reset_index(drop=True)


def write_tables(folder: Path, trials: pd.DataFrame, best: pd.DataFrame) -> list[Path]:
    """Every trial and each defense's best as CSV (`RUN/trials.csv`, `RUN/best.csv`; scores to 4
    decimals, as reports quote them), the tuning record a report commits."""
    columns = ["dataset", "model", "defense_name", "defense", SCORE, "epochs",
               *(["state", "seconds"] if "state" in trials else [])]  # halving: how each trial ended, its cost
    written = []
    for name, frame in (("trials.csv", trials), ("best.csv", best)):
        path = Path(folder) / name
        frame[columns].to_csv(path, index=False, float_format="%.4f")
        written.append(path)
    return written


def write_specs(folder: Path, specs: list[BenchSpec], best: pd.DataFrame, budget: int) -> list[Path]:
    """The `[tuned]` table of every best configuration (`RUN/tuned.toml`), and one spec per data
    set and model that runs every defense at it."""
    table = Path(folder) / "tuned.toml"
    table.write_text(tuned_table(best, budget, swept_params(specs)))
    written = []
    for (dataset, model), group in best.groupby(["dataset", "model"], sort=False):
        source = next(s for s in specs if dataset in s.datasets and model in s.models)
        path = Path(folder) / f"tuned-{_slug(dataset)}-{_slug(model)}.toml"
        scores = ", ".join(f"{d} {v:.4f}" for d, v in zip(group["defense_name"], group[SCORE]))
        fixed = {k: v for k, v in source.params.items() if not isinstance(v, list)}
        lines = [f"# robustag tune: each defense's best of at most {budget} configurations on validation NDCG@3",
                 f"# (seed {source.seeds[0]}; best scores: {scores}). Run it with more seeds.",
                 f'name = "{source.name}-tuned"', f"datasets = {json.dumps([dataset])}", f"models = {json.dumps([model])}",
                 f"defenses = {json.dumps(list(group['defense_name']))}", "attacks = []", "seeds = 5",
                 f'reference = "{source.reference}"', f"p_core = {source.p_core}", f"split_seed = {source.split_seed}",
                 f'tuned = "{table.name}"']
        if fixed:
            lines += ["[params]", *(f"{k} = {json.dumps(v)}" for k, v in fixed.items())]
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    return [*written, table]


def tuned_table(best: pd.DataFrame, budget: int, swept: list[str] = ()) -> str:
    """Every tuned configuration as the `[tuned]` table a spec's `tuned` key reads: the defense's
    spec, with the swept [params] it was best with where the tune swept any."""
    lines = [f"# robustag tune: each defense's best of at most {budget} configurations on validation NDCG@3.",
             "# A spec with `tuned = \"this file\"` runs each defense it names bare at these configurations.", "[tuned]"]
    for row in best.itertuples():
        key = json.dumps(f"{row.dataset}/{row.model}/{row.defense_name}")
        own = MODELS.declared(row.model, "params", {})
        params = {k: v for k, v in json.loads(row.params).items() if k in swept and (k in SHARED_OPTIONS or k in own)}
        if params:
            inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in params.items())
            lines.append(f"{key} = {{ defense = {json.dumps(row.defense)}, params = {{ {inline} }} }}")
        else:
            lines.append(f"{key} = {json.dumps(row.defense)}")
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)
