"""Benchmark specs: the axes of a matrix (datasets × models × defenses × attacks × seeds),
read from a TOML file and/or CLI flags, with parameter sweeps written as lists.

    name = "default"
    datasets = ["movielens"]
    models = ["metric"]
    defenses = ["plain", "spaml-s:lambda=[0.5,1,2]"]   # [..] sweeps a parameter
    attacks = ["fgsm", "pgd", "tag-replace-20"]        # evasion and poisoning
    eps = [0.05, 0.1]                                  # every evasion attack at each budget
    seeds = 3                                          # 0, 1, 2 (or a list)
    reference = "plain"                                # the defense the tests compare against
    poison_valid = false                               # poisoning changes validation posts too?
    test_posts = 1                                     # each user's last k posts are test posts (1: the paper's)
    tuned = "tuned.toml"                               # defenses named bare run as tuned (see below)
    [params]                                           # model/training options, lists sweep
    epochs = 30
    dim = [64, 128]

`tuned` names a TOML file (relative to the spec; `robustag tune` writes one as RUN/tuned.toml)
whose `[tuned]` table maps "dataset/model/defense" to a defense spec, or is that table inline:
a defense the spec names without parameters (`aml`) runs, on that data set and model, at the
configuration tuned for it; one written with parameters runs as written.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustag.errors import RobustagError
from robustag.models import MODELS
from robustag.plugins import _split_top_level, parse_spec
from robustag.training import SHARED_OPTIONS

SPEC_KEYS = ("name", "datasets", "models", "defenses", "attacks", "eps", "seeds", "reference", "params",
             "p_core", "split_seed", "test_posts", "include", "published", "poison_valid", "tuned")


@dataclass
class BenchSpec:
    """A matrix; an axis a spec file leaves out is as small as it can be (no attack, one seed,
    the models' own training defaults)."""

    name: str = "bench"
    datasets: list[str] = field(default_factory=lambda: ["movielens"])
    models: list[str] = field(default_factory=lambda: ["metric"])
    defenses: list[str] = field(default_factory=lambda: ["plain"])
    attacks: list[str] = field(default_factory=list)
    eps: list[float] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    reference: str = "plain"
    params: dict[str, Any] = field(default_factory=dict)
    p_core: int = 10
    split_seed: int = 0
    test_posts: int = 1  # each user's last k posts are test posts (1: the paper's protocol)
    # poisoning attacks change the validation posts too (early stopping then sees poisoned data);
    # by default they change the training posts only and early stopping sees clean validation posts
    poison_valid: bool = False
    # published figures to show beside ours: "dataset/model/defense" -> {"f1@3": 0.22, ...}
    published: dict[str, dict[str, float]] = field(default_factory=dict)
    # tuned configurations: "dataset/model/defense" -> {"defense": spec, "params": {...}}, for
    # defenses named bare (params: the model options the tune swept, as they were best with it)
    tuned: dict[str, dict] = field(default_factory=dict)

    def defense_for(self, dataset: str, model: str, defense: str) -> tuple[str, dict[str, Any]]:
        """The defense spec to run on `dataset` and `model`, and the model options to run it
        with: its tuned configuration when the spec names it bare and one was tuned, else as
        written (and no options beyond the spec's)."""
        entry = self.tuned.get(f"{dataset}/{model}/{defense}") if ":" not in defense else None
        return (entry["defense"], entry["params"]) if entry else (defense, {})

    def expanded_models(self) -> list[str]:
        return [s for spec in self.models for s in expand_sweep(spec)]

    def expanded_defenses(self) -> list[str]:
        return [s for spec in self.defenses for s in expand_sweep(spec)]

    def expanded_attacks(self) -> list[str]:
        return [s for spec in self.attacks for s in expand_sweep(spec)]

    def param_grid(self) -> list[dict[str, Any]]:
        """Every combination of the [params] table (a list value is a sweep)."""
        keys = list(self.params)
        values = [v if isinstance(v, list) else [v] for v in self.params.values()]
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def default_spec() -> BenchSpec:
    """What `robustag bench` runs without a spec (benchmarks/default.toml says the same):
    a few minutes on CPU."""
    return BenchSpec(name="default", defenses=["plain", "aml", "spaml-s", "certified", "rank-adv"],
                     attacks=["fgsm", "pgd", "auto", "certified", "tag-replace-20"], seeds=[0, 1, 2], params={"epochs": 20})


def expand_sweep(spec: str) -> list[str]:
    """`spaml-s:lambda=[0.5,1],mu=[1.1,1.2]` -> the four specs of the product, in order."""
    name, values = parse_spec(spec)
    if not values:
        return [spec]
    options = []
    for key, value in values.items():
        if value.startswith("[") and value.endswith("]"):
            items = [v for v in _split_top_level(value[1:-1])]
            if not items:
                raise RobustagError(f"spec {spec!r}: empty sweep for {key}")
            if any(item.startswith("[") for item in items):  # bench and tune would read it differently
                raise RobustagError(f"spec {spec!r}: {key} sweeps lists of values; a sweep is one flat list")
            options.append([(key, v) for v in items])
        else:
            options.append([(key, value)])
    return [f"{name}:" + ",".join(f"{k}={v}" for k, v in combo) for combo in itertools.product(*options)]


def load_specs(path: Path, _including: tuple[Path, ...] = ()) -> list[BenchSpec]:
    """Read a TOML spec; `include = ["a.toml", ...]` makes one run of several specs."""
    path = Path(path)
    if path.resolve() in _including:
        chain = " → ".join(str(p) for p in [*_including, path.resolve()])
        raise RobustagError(f"spec {path}: includes itself ({chain})")
    if not path.is_file():
        raise RobustagError(f"spec {path}: file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RobustagError(f"spec {path}: not a text file (expected TOML in UTF-8)") from None
    except tomllib.TOMLDecodeError as error:
        raise RobustagError(f"spec {path}: {error}") from error
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise RobustagError(f"spec {path}: unknown key {unknown[0]!r}; known: {', '.join(SPEC_KEYS)}")
    if "include" in raw:
        parts = raw["include"]
        if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
            raise RobustagError(f"spec {path}: include must be a non-empty list of spec files, got {parts!r}")
        return [spec for part in parts for spec in load_specs(path.parent / part, (*_including, path.resolve()))]
    return [spec_from_mapping(raw, str(path), default_name=path.stem)]


def folder_name(name: str) -> str:
    """The one path component a spec's name becomes (runs/NAME): anything but letters, digits,
    '_', '.' and '-' becomes '-', and no leading dot, so a name never climbs out of runs/."""
    slug = re.sub(r"[^A-Za-z0-9_.\-]+", "-", name).lstrip(".-").rstrip("-")
    return slug or "bench"


def spec_from_mapping(raw: dict[str, Any], where: str, default_name: str = "default") -> BenchSpec:
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise RobustagError(f"spec {where}: name must be a non-empty string, got {name!r}")
    spec = BenchSpec(name=name)
    for key in ("datasets", "models", "defenses", "attacks"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise RobustagError(f"spec {where}: {key} must be a list of non-empty strings")
            if not value and key != "attacks":  # no attack is a clean-only run; no dataset runs nothing
                raise RobustagError(f"spec {where}: {key} is empty; name at least one")
            setattr(spec, key, value)
    if "seeds" in raw:
        spec.seeds = parse_seeds(raw["seeds"], where)
    if "eps" in raw:
        spec.eps = parse_budgets(raw["eps"] if isinstance(raw["eps"], list) else [raw["eps"]], f"spec {where}: eps")
    if "params" in raw:
        allowed = {*SHARED_OPTIONS, *(key for name in MODELS.names() for key in MODELS.get(name).params)} - {"seed"}
        bad = sorted(set(raw["params"]) - allowed)
        if bad:
            raise RobustagError(f"spec {where}: [params] has unknown option {bad[0]!r}; known: {', '.join(sorted(allowed))}")
        empty = [key for key, value in raw["params"].items() if value == []]
        if empty:
            raise RobustagError(f"spec {where}: [params] {empty[0]} = []: an empty sweep runs nothing; give one value or more")
        spec.params = dict(raw["params"])
    if "poison_valid" in raw:
        if not isinstance(raw["poison_valid"], bool):
            raise RobustagError(f"spec {where}: poison_valid must be true or false, got {raw['poison_valid']!r}")
        spec.poison_valid = raw["poison_valid"]
    for key, least in (("p_core", 1), ("split_seed", 0), ("test_posts", 1)):
        if key in raw:
            if isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < least:
                raise RobustagError(f"spec {where}: {key} must be a whole number ≥ {least}, got {raw[key]!r}")
            setattr(spec, key, raw[key])
    if "reference" in raw:
        names = [d.partition(":")[0] for d in spec.defenses]
        if raw["reference"] not in names:
            raise RobustagError(f"spec {where}: reference {raw['reference']!r} is not one of its defenses "
                                f"({', '.join(dict.fromkeys(names))})")
        spec.reference = raw["reference"]
    if "published" in raw:
        spec.published = parse_published(raw["published"], where)
    if "tuned" in raw:
        spec.tuned = parse_tuned(raw["tuned"], where)
    return spec


def parse_tuned(value: Any, where: str) -> dict[str, dict]:
    """A tuned table, inline or from the file it names (relative to the spec): each key
    "dataset/model/defense", each value a spec of that defense, or a table with that spec as
    `defense` and the model options it was tuned with as `params`."""
    source = where
    if isinstance(value, str):
        path = Path(where).parent / value
        if not path.is_file():
            raise RobustagError(f"spec {where}: tuned file {path} not found")
        try:
            value = tomllib.loads(path.read_text(encoding="utf-8")).get("tuned")
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise RobustagError(f"spec {where}: tuned file {path}: {error}") from None
        source = str(path)
    if not isinstance(value, dict):
        raise RobustagError(f"spec {source}: tuned must be a table of \"dataset/model/defense\" = \"spec\"")
    table = {}
    for key, entry in value.items():
        entry = {"defense": entry, "params": {}} if isinstance(entry, str) else entry
        parts = key.rsplit("/", 2)  # a tsv: data set's name may hold slashes
        if (len(parts) != 3 or not isinstance(entry, dict) or set(entry) - {"defense", "params"}
                or not isinstance(entry.get("defense"), str) or entry["defense"].partition(":")[0] != parts[2]
                or not isinstance(entry.get("params", {}), dict)):
            raise RobustagError(f"spec {source}: tuned entry {key!r} = {value[key]!r} must map dataset/model/defense "
                                "to a spec of that defense (or to { defense = spec, params = {...} })")
        table[key] = {"defense": entry["defense"], "params": dict(entry.get("params", {}))}
    return table


def parse_published(value: Any, where: str) -> dict[str, dict[str, float]]:
    """Published figures: a table of "dataset/model/defense" = { metric = number, ... }."""
    def numbers(entry) -> bool:
        return isinstance(entry, dict) and {"f1@3", "ndcg@3"} <= set(entry) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry.values())
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.count("/") >= 2 and numbers(v)
                                              for k, v in value.items()):
        raise RobustagError(f"spec {where}: published must be a table of \"dataset/model/defense\" = "
                            f"{{ \"f1@3\" = number, \"ndcg@3\" = number }}, got {value!r}")
    return {key: {metric: float(number) for metric, number in entry.items()} for key, entry in value.items()}


def parse_budgets(values: list, where: str) -> list[float]:
    """Budgets for every evasion attack: finite numbers ≥ 0, at least one."""
    try:
        budgets = [float(v) for v in values]
    except (TypeError, ValueError):
        raise RobustagError(f"{where}: expected numbers, got {values!r}") from None
    if not budgets or not all(math.isfinite(b) and b >= 0 for b in budgets):
        raise RobustagError(f"{where}: expected one or more finite budgets ≥ 0, got {values!r}")
    return budgets


def parse_seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, int) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return value
    raise RobustagError(f"{where}: seeds must be a count ≥ 1 or a list of integers, got {value!r}")


def merge_described(known: list[dict], new: list[dict]) -> list[dict]:
    """The spec descriptions a run folder keeps when several invocations fill it (say one
    `--datasets movielens`, then one `--datasets lastfm`): list fields are unions in first-seen
    order, everything else comes from the latest invocation."""
    merged = {spec["name"]: spec for spec in known}
    for spec in new:
        old = merged.get(spec["name"], {})
        merged[spec["name"]] = {
            key: list(dict.fromkeys([*old[key], *value]))
            if isinstance(value, list) and isinstance(old.get(key), list) else value
            for key, value in spec.items()
        }
    return list(merged.values())
