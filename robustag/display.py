"""How configurations and numbers are shown, the same in the report, `claims`, `results`,
`attack` and the bench summary: a label per model, defense and attack configuration that tells
apart every two configurations the rows hold (the parameters that differ between them, and
only those), and the formats of a difference with its interval and of a p-value."""

from __future__ import annotations

import json

import pandas as pd

from robustag.defense import DEFENSES
from robustag.models import MODELS


def _varies(key: str, configurations: list[dict]) -> bool:
    return len({str(p.get(key)) for p in configurations}) > 1


def _options(params: dict, keys: list[str]) -> str:
    return ",".join(f"{k}={params[k]}" for k in keys)


def defense_labels(specs: dict[str, dict]) -> dict[str, str]:
    """A readable label per defense spec (given with its parsed parameters): its name, plus
    the parameters that tell apart several configurations of the same defense (a sweep). The
    attack's own parameters follow from its name, so they count only between configurations
    with the same attack (`attack=pgd,steps=3` beside `attack=pgd,steps=10`)."""
    parsed = {spec: (spec.partition(":")[0], params) for spec, params in specs.items()}
    labels = {}
    for spec, (name, params) in parsed.items():
        siblings = [p for n, p in parsed.values() if n == name]
        same_attack = [p for p in siblings if p.get("attack") == params.get("attack")]
        declared = DEFENSES.declared(name, "params")  # None (all count) for a plugin not loaded here
        varying = sorted(k for k in params if _varies(k, siblings if declared is None or k in declared else same_attack))
        labels[spec] = name + (" " + _options(params, varying) if varying else "")
    return labels


def attack_labels(cells: pd.DataFrame) -> pd.Series:
    """clean, `pgd ε=0.1`, or a poisoning attack with its first parameter (`tag-replace rate=0.2`);
    plus every parameter (ε aside) that differs between configurations of the same attack
    among these cells, so that no two configurations share a label (`pgd steps=1 ε=0.1`)."""
    parsed = {spec: (spec.partition(":")[0], params) for spec, params in zip(cells["attack"], cells["attack_params"]) if spec}

    def label(spec: str, eps: float) -> str:
        if not spec:
            return "clean"
        name, params = parsed[spec]
        siblings = [p for n, p in parsed.values() if n == name]
        shown = [k for k in params if k != "eps" and _varies(k, siblings)]
        if pd.isna(eps) and params and not shown:
            shown = [next(iter(params))]
        text = f"{name} " + _options(params, shown)
        return text.strip() + ("" if pd.isna(eps) else f" ε={eps:g}")

    return pd.Series([label(spec, eps) for spec, eps in zip(cells["attack"], cells["eps"])], index=cells.index, dtype=object)


def model_labels(cells: pd.DataFrame) -> pd.Series:
    """A model with its embedding size (`metric (d=64)`, for a learned model) and every other
    training option that differs between configurations of the same model among these rows
    (`metric (d=64, epochs=2)` beside `metric (d=64, epochs=1)`): rows of a `[params]` sweep,
    or of a folder rerun with another `--epochs`, never share a label. `cells` has the
    columns `model` and `params` (the stored JSON of its options)."""
    parsed = [json.loads(p) if isinstance(p, str) else dict(p) for p in cells["params"]]
    by_model: dict[str, list[dict]] = {}
    for model, params in zip(cells["model"], parsed):
        by_model.setdefault(model, []).append(params)

    def label(model: str, params: dict) -> str:
        shown = [f"d={params['dim']}"] if MODELS.declared(model, "learned", True) and "dim" in params else []
        shown += [f"{k}={params[k]}" for k in sorted(params) if k != "dim" and _varies(k, by_model[model])]
        return model + (f" ({', '.join(shown)})" if shown else "")

    return pd.Series([label(m, p) for m, p in zip(cells["model"], parsed)], index=cells.index, dtype=object)


def labelled(cells: pd.DataFrame) -> pd.DataFrame:
    """Flat cells (`stats.flat_cells`) with `model_label`, `defense_label` and `attack_label`."""
    defenses = defense_labels(dict(zip(cells["defense"], cells["defense_params"])))
    return cells.assign(model_label=model_labels(cells), defense_label=cells["defense"].map(defenses),
                        attack_label=attack_labels(cells))


def attack_spec_labels(specs: list[str], budgets: list) -> list[str]:
    """Labels of canonical attack specs run side by side (`robustag attack`'s rows)."""
    from robustag.plugins import spec_values
    frame = pd.DataFrame({"attack": specs, "attack_params": [spec_values(s) for s in specs], "eps": budgets})
    return list(attack_labels(frame.assign(eps=pd.to_numeric(frame["eps"]))))


def interval_text(value: float, low: float, high: float, form: str = "+.4f") -> str:
    """A difference with its 95% interval, as every table shows one: +0.0127 [-0.0037, +0.0290]
    (from one seed: "+0.0127 [no interval]")."""
    if pd.isna(low) or pd.isna(high):
        return f"{value:{form}} [no interval]"
    return f"{value:{form}} [{low:{form}}, {high:{form}}]"


def p_text(p: float) -> str:
    return "" if pd.isna(p) else f"{p:.2g}" if p >= 0.001 else "< 0.001"
