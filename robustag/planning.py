"""Planning a benchmark matrix: specs → units (one trained model each) and cells (one
evaluation each), content-addressed, and what of them is left to do.

A *unit* is one trained model: (dataset, split, model config with seed, defense, poisoning
attack or none). It is trained once and evaluated in *cells*: clean, and under every evasion
attack (at every ε); a poisoned unit has one cell, its clean-test evaluation. Units and cells
are keyed by the hash of everything that determines them, so a second run of the same plan
skips what is done, and trained models are cached under `RUN/models/<unit key>.pt`. Every
plugin and option is built here, before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from robustag.attack import ATTACKS, EmbeddingAttack
from robustag.checks import checkable
from robustag.datasets import resolve_source
from robustag.defense import DEFENSES
from robustag.errors import ParameterError, RobustagError
from robustag.models import MODELS
from robustag.plugins import parse_spec
from robustag.preprocess import SplitOptions, load_split
from robustag.spec import BenchSpec
from robustag.stacking import stackable
from robustag.store import CellRow, ResultStore
from robustag.version import COMPUTATION
from robustag.training import SHARED_OPTIONS, TrainConfig, check_negatives, default_config


def digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CellTask:
    key: str
    attack: str | None  # canonical spec; None: clean
    surface: str  # "none", "embedding" or "data"
    eps: float | None
    checks: bool = False  # run the attack's sanity checks too (the first seed of a spec)


@dataclass
class UnitTask:
    """Everything a worker needs to train one model and evaluate its cells (picklable)."""

    key: str
    dataset: str
    options: SplitOptions
    config: TrainConfig
    defense: str
    poison: str | None
    cells: list[CellTask] = field(default_factory=list)
    poison_valid: bool = False  # the poisoning attack changes the validation posts too

    @property
    def label(self) -> str:
        poison = f" ← {self.poison.split(':')[0]}" if self.poison else ""
        return f"{self.dataset} {self.config.model} {self.defense.split(':')[0]}{poison} seed {self.config.seed}"


@dataclass
class Plan:
    units: dict[str, UnitTask] = field(default_factory=dict)
    rows: dict[str, list[CellRow]] = field(default_factory=dict)  # spec name -> planned cells

    @property
    def n_cells(self) -> int:
        return sum(len(u.cells) for u in self.units.values())

    def defense_names(self) -> list[str]:
        return list(dict.fromkeys(unit.defense.split(":")[0] for unit in self.units.values()))


def plan(specs: list[BenchSpec]) -> Plan:
    """Expand the specs into units and cells; every plugin and option is checked here, before
    anything runs. Specs that share a unit (say, the same plain model) share its training."""
    result = Plan()
    for spec in specs:
        for dataset in spec.datasets:
            resolve_source(dataset)  # an unknown data set stops here, before any work
        rows = result.rows.setdefault(spec.name, [])
        defenses = spec.expanded_defenses()
        attacks = [ATTACKS.create(s) for s in spec.expanded_attacks()]
        if spec.eps:
            note_overridden_budgets(spec.expanded_attacks(), spec.eps)
        evasions = _with_budgets([a for a in attacks if isinstance(a, EmbeddingAttack)], spec.eps)
        poisons = [a for a in attacks if not isinstance(a, EmbeddingAttack)]
        options = SplitOptions(spec.p_core, spec.split_seed, True, spec.test_posts)
        for dataset in spec.datasets:
            for model in spec.expanded_models():
                for params in _checked_grid(spec, model):
                    for seed in spec.seeds:
                        recipe = default_config(model, seed=seed, **_declared(model, params)).recipe()
                        for written in defenses:
                            if written.partition(":")[0] != "plain" and not recipe.learned:
                                continue  # a defense is a training regime: popularity has none
                            chosen, tuned_params = _tuned(spec, dataset, recipe.name, written)
                            config = default_config(model, seed=seed, **_declared(model, {**params, **tuned_params}))
                            defense = DEFENSES.create(chosen)
                            clean_unit = _unit(result, dataset, options, config, defense.spec, None)
                            rows.append(_cell(clean_unit, None))
                            if recipe.embeddings:
                                first_seed = seed == spec.seeds[0]
                                rows += [_cell(clean_unit, attack, first_seed and checkable(attack)) for attack in evasions]
                            for poison in poisons:
                                unit = _unit(result, dataset, options, config, defense.spec, poison.spec, spec.poison_valid)
                                rows.append(_cell(unit, poison))
    return result


def _checked_grid(spec: BenchSpec, model: str) -> list[dict]:
    """The spec's [params] combinations, each checked as `model`'s options: a bad value is named
    as the spec writes it (`[params] dim`), not as a command-line flag."""
    grid = spec.param_grid()
    for params in grid:
        try:
            default_config(model, **_declared(model, params))
        except ParameterError as error:
            where = f"[params] {error.parameter}" if error.parameter in params else f"model {model!r}: {error.parameter}"
            raise RobustagError(f"spec {spec.name}: {error.naming(where)}") from None
    return grid


def _tuned(spec: BenchSpec, dataset: str, model: str, defense: str) -> tuple[str, dict]:
    """The defense spec to run and the model options it was tuned with: tuned where the spec has
    a tuned table. A bare-named defense with parameters to tune that the table lacks is refused,
    not run at its defaults unnoticed."""
    chosen, params = spec.defense_for(dataset, model, defense)
    if spec.tuned and chosen == defense and ":" not in defense and DEFENSES.declared(defense, "params"):
        raise ParameterError("tuned", f"spec {spec.name}: no tuned configuration of {defense} for {dataset}/{model} "
                                      "(tune it, or write the defense with its parameters)")
    return chosen, params


def _declared(model: str, params: dict) -> dict:
    """The [params] of a spec that apply to `model`: the shared options and its own parameters
    (a spec's `margin` applies to `metric`, not to `pitf`)."""
    own = MODELS.resolve(model)[0].params
    return {k: v for k, v in params.items() if k in SHARED_OPTIONS or k in own}


def note_overridden_budgets(written: list[str], budgets: list[float]) -> None:
    """An attack written with its own ε runs at the given budgets instead: say so, once."""
    own = [spec for spec in written if "eps" in parse_spec(spec)[1]]
    if own:
        warnings.warn(f"{', '.join(own)}: the budgets {', '.join(f'{b:g}' for b in budgets)} given for every evasion "
                      "attack replace the eps written in the spec", UserWarning, stacklevel=2)


def _with_budgets(evasions: list[EmbeddingAttack], budgets: list[float] | None) -> list[EmbeddingAttack]:
    if not budgets:
        return evasions
    return [ATTACKS.create(a.spec, eps=eps) for a in evasions for eps in budgets]


def _unit(plan_: Plan, dataset, options, config, defense, poison, poison_valid: bool = False) -> UnitTask:
    identity = {"dataset": dataset, "split": options.describe(), "config": config.describe(), "defense": defense,
                "poison": poison, "version": COMPUTATION}
    poison_valid = bool(poison and poison_valid)
    if poison_valid:  # only then in the key: the keys of every other unit stay as they were
        identity["poison_valid"] = True
    if poison and ATTACKS.declared(poison.partition(":")[0], "adds_users", False):
        identity["added_users"] = "drawn after the real rows"  # models from before re-initialised every row
    code = plugin_code(config.model, defense, poison)
    if code:  # a plugin from outside robustag: its code determines the model (built-ins leave keys as they were)
        identity["code"] = code
    key = digest(identity)
    if key not in plan_.units:
        plan_.units[key] = UnitTask(key, dataset, options, config, defense, poison, poison_valid=poison_valid)
    return plan_.units[key]


def _cell(unit: UnitTask, attack, checks: bool = False) -> CellRow:
    spec = attack.spec if attack is not None else None
    surface = attack.surface if attack is not None else "none"
    eps = attack.eps if isinstance(attack, EmbeddingAttack) else None
    code = plugin_code(unit.config.model, unit.defense, unit.poison, spec if surface == "embedding" else None)
    attack_code = code.get("attack")
    key = digest({"unit": unit.key, "attack": spec, **({"code": attack_code} if attack_code else {})})
    task = CellTask(key, spec if surface == "embedding" else None, surface, eps, checks)
    known = [k for k, c in enumerate(unit.cells) if c.key == key]
    if not known:
        unit.cells.append(task)
    elif checks:  # a spec that shares the cell wants its checks
        unit.cells[known[0]] = task
    config = {"unit": unit.config.describe() | {"dataset": unit.dataset, "split": unit.options.describe(),
                                                "defense": unit.defense, "poison": unit.poison, "poison_valid": unit.poison_valid},
              "attack": spec, **({"code": code} if code else {})}
    return CellRow.planned(key, unit.key, unit.dataset, unit.config.model, model_params(unit), unit.config.seed, unit.defense,
                           spec, surface, eps, attack.strength if attack is not None else None, config)


def model_params(unit: UnitTask) -> dict:
    """The unit's model configuration but seed and model name (a cell's `params` column)."""
    return {k: v for k, v in unit.config.describe().items() if k not in ("seed", "model")}


def plugin_code(model: str, defense: str, poison: str | None, attack: str | None = None) -> dict[str, str]:
    """The code identities (`Registry.code`) of the plugins from outside robustag that a unit
    (model, defense, poisoning attack) or a cell (and its evasion attack) runs: keyed into what
    they compute, and kept in the cell's configuration as its provenance."""
    found = (("model", MODELS.code(model)), ("defense", DEFENSES.code(defense)),
             ("poison", ATTACKS.code(poison) if poison else None), ("attack", ATTACKS.code(attack) if attack else None))
    return {kind: code for kind, code in found if code}



def pending_units(plan_: Plan, store: ResultStore, retry_failed: bool) -> list[UnitTask]:
    """Units with a cell still to do (pending, or failed when --retry-failed), each with only
    those cells: adding an attack evaluates the new cells alone, and done cells are left alone."""
    keys = [c.key for u in plan_.units.values() for c in u.cells]
    if retry_failed:
        store.mark_failed_pending(keys)  # the planned cells only: another plan's failures stay as they are
    status = store.statuses(keys)
    todo = []
    for unit in plan_.units.values():
        cells = [c for c in unit.cells if status.get(c.key) == "pending"]
        if cells:
            todo.append(replace(unit, cells=cells))
    return todo



def stack_groups(units: list[UnitTask], size: int) -> list[list[UnitTask]]:
    """The units as groups that train together: units of one data set, split, configuration
    but seed and defense, with no poisoning (whose training data differs by seed), whose model
    and defense can stack (`stacking.stackable`), up to `size` per group, in plan order; every
    other unit alone."""
    groups: dict[tuple, list[list[UnitTask]]] = {}
    ordered: list[list[UnitTask]] = []
    for unit in units:
        key = (unit.dataset, unit.options, digest(replace(unit.config, seed=0).describe()), unit.defense)
        if size > 1 and unit.poison is None and stackable(unit.config, DEFENSES.create(unit.defense)):
            open_groups = groups.setdefault(key, [])
            if open_groups and len(open_groups[-1]) < size:
                open_groups[-1].append(unit)
                continue
            open_groups.append([unit])
            ordered.append(open_groups[-1])
        else:
            ordered.append([unit])
    return ordered


def check_data(units: list[UnitTask], data_dir: Path) -> dict[str, list[int]]:
    """Every data set of these units loads (warming the split cache for the workers), and every
    attack accepts it, before a run folder is touched: bad data fails the command,
    not every cell. Returns the item of each test post per data set (how posts cluster)."""
    items = {}
    for dataset, options in dict.fromkeys((u.dataset, u.options) for u in units):
        split = load_split(dataset, data_dir, options)
        items[dataset] = split.test.items.tolist()
        same = [u for u in units if u.dataset == dataset]
        if any(u.config.recipe().learned for u in same):
            check_negatives(split.train, split.n_tags, dataset)
        attacks = [u.poison for u in same if u.poison] + [c.attack for u in same for c in u.cells if c.attack]
        for attack in dict.fromkeys(attacks):
            ATTACKS.create(attack).check(split)
    return items

