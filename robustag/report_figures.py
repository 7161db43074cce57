"""The figures of a report's section, from its aggregated tables: robustness heat maps, metric
against each attack's strength, training curves, sensitivity to a swept parameter, and the
critical-difference diagram of the defenses' ranks. Each returns (caption, PNG file name) pairs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from robustag import plots
from robustag.stats import ALPHA
from robustag.store import ResultStore


def robustness_figures(clean: pd.DataFrame, attacked: pd.DataFrame, folder: Path, slug: str) -> list[tuple[str, str]]:
    """Per data set and model configuration (a `[params]` sweep gives one each): the relative
    drop under every attack as a heat map, and NDCG@3 against each attack's strength."""
    out = []
    several = clean.groupby(["dataset", "model"])["params"].nunique()
    for (dataset, model, params), base in clean.groupby(["dataset", "model", "params"], sort=False):
        rows = attacked[(attacked["dataset"] == dataset) & (attacked["model"] == model) & (attacked["params"] == params)]
        reference = base.set_index("defense")["ndcg@3_mean"]
        frame = rows.assign(label=rows["attack_label"],
                            drop=1 - rows["ndcg@3_mean"] / rows["defense"].map(reference))
        drops = frame.pivot_table(index="defense_label", columns="label", values="drop", aggfunc="mean")
        shown = base["model_label"].iloc[0]
        name = f"{dataset}-{model}" + (f"-{_short_hash(params)}" if several[(dataset, model)] > 1 else "")
        if drops.size:
            out.append((f"Relative drop of NDCG@3 under each attack, {dataset} / {shown}",
                        plots.heatmap(drops, f"{dataset} / {shown}", folder, f"{slug}-{name}-heatmap")))
        out += _strength_curves(base, rows, dataset, shown, folder, f"{slug}-{name}")
    return out


def _short_hash(text: str) -> str:
    """Six hex digits naming a configuration in a figure's file name."""
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _strength_curves(base, rows, dataset, model, folder, prefix):
    """NDCG@3 against each attack's declared strength (ε, a poisoning rate, fake users...),
    from the clean model at strength 0; an evasion attack needs two budgets to make a curve."""
    out = []
    # one curve per configuration of an attack: everything but its strength held fixed
    fixed = rows.apply(lambda row: json.dumps({k: v for k, v in row["attack_params"].items() if k != row["strength_name"]},
                                              sort_keys=True), axis=1) if len(rows) else pd.Series(dtype=object)
    for number, ((surface, attack_name, strength, _), group) in enumerate(
            rows.assign(fixed=fixed).groupby(["surface", "attack_name", "strength_name", "fixed"])):
        if group["strength"].nunique() < (2 if surface == "embedding" else 1):
            continue
        data = {}
        for defense, per_defense in group.groupby("defense"):
            start = base[base["defense"] == defense]
            per_defense = per_defense.sort_values("strength")
            data[per_defense["defense_label"].iloc[0]] = ([0.0, *per_defense["strength"]],
                                                          [*start["ndcg@3_mean"], *per_defense["ndcg@3_mean"]],
                                                          [*start["ndcg@3_std"], *per_defense["ndcg@3_std"]])
        axis = "ε (relative to the mean row norm)" if strength == "eps" else strength
        label = group["attack_label"].iloc[0].split(" ε=")[0]
        out.append((f"NDCG@3 against the {strength} of {label}, {dataset} / {model}",
                    plots.curves(data, axis, f"{label}: {dataset} / {model}", folder,
                                 f"{prefix}-{attack_name}-{number}-{strength}")))
    return out


def training_figures(store: ResultStore, cells: pd.DataFrame, folder: Path, slug: str) -> list[tuple[str, str]]:
    histories = store.histories()
    if histories.empty or "valid_ndcg@3" not in histories:
        return []
    clean = cells[(cells["surface"] == "none")]
    out = []
    for (dataset, model, params), group in clean.groupby(["dataset", "model", "params"], sort=False):
        data = {}
        for defense, per_defense in group.groupby("defense"):
            curves = histories[histories["unit"].isin(per_defense["unit"])]
            by_epoch = curves.groupby("epoch")["valid_ndcg@3"]
            if by_epoch.ngroups:
                data[per_defense["defense_label"].iloc[0]] = (list(by_epoch.mean().index), list(by_epoch.mean()),
                                                 list(by_epoch.std().fillna(0)))
        if data:
            out.append((f"Validation NDCG@3 per epoch, {dataset} / {group['model_label'].iloc[0]}",
                        plots.curves(data, "epoch", f"training: {dataset} / {model}", folder,
                                     f"{slug}-{dataset}-{model}-{_short_hash(params)}-training")))
    return out


def sensitivity_figures(clean: pd.DataFrame, folder: Path, slug: str) -> list[tuple[str, str]]:
    """For a defense run with several values of one parameter (or a model with several
    values of one training option): NDCG@3 against that value."""
    out = []
    frame = clean.assign(model_params=clean["params"].map(json.loads))
    for column, key_of in (("defense_params", "defense_name"), ("model_params", "model")):
        for (dataset, name), group in frame.groupby(["dataset", key_of]):
            if len(group) < 3:
                continue
            settings = pd.DataFrame(list(group[column]), index=group.index)
            varying = [c for c in settings if settings[c].nunique() > 1]
            for parameter in varying:
                # one parameter at a time: the others held at their most common value
                others = [c for c in varying if c != parameter]
                held = np.logical_and.reduce([settings[c] == settings[c].mode().iloc[0] for c in others]) \
                    if others else np.ones(len(settings), dtype=bool)
                values = pd.to_numeric(settings[parameter][held], errors="coerce")
                if values.isna().any() or values.nunique() < 2:
                    continue
                ordered = group[held].assign(value=values).sort_values("value")
                data = {name: (list(ordered["value"]), list(ordered["ndcg@3_mean"]), list(ordered["ndcg@3_std"]))}
                out.append((f"Sensitivity of {name} to {parameter}, {dataset}",
                            plots.curves(data, parameter, f"{name}: {dataset}", folder,
                                         f"{slug}-{dataset}-{name}-{parameter}-sensitivity")))
    return out


def ranking_figure(ranking: dict | None, labels: dict, spec: str, folder: Path, slug: str) -> list[tuple[str, str]]:
    """The critical-difference diagram, where the rank test ran (enough blocks)."""
    if ranking is None or ranking["p_value"] is None:
        return []
    ranking["nemenyi"].index = ranking["nemenyi"].columns = ranking["nemenyi"].index.map(lambda d: labels.get(d, d))
    ranking["ranks"].index = ranking["ranks"].index.map(lambda d: labels.get(d, d))
    return [(f"Critical-difference diagram of the defenses over {ranking['blocks']} blocks "
             f"(clean NDCG@3; Nemenyi at α = {ALPHA})", plots.critical_difference(ranking, spec, folder, f"{slug}-cd"))]
