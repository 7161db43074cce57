"""Claims tested as stated: "A is better than B" at the level of the method, from a run's cells.

A report compares every defense with one reference. A paper claims more: that its method beats
the strongest baseline, that one variant beats another, that it loses less under an attack. A
claims file states each such claim once, before the numbers are read (a pre-registration), and
`verify_claims` tests every one the way the report tests against the reference
(`robustag.stats.compare_groups`: paired by seed, crossed seed × post model), with Holm within
each declared family (a claim's `family`; by default the whole file is one):

    [[claim]]
    id = "main-1"
    says = "SPAML-S is more accurate than the metric model trained without an adversary"
    spec = "paper-main"          # optional: the spec whose cells to read (default: any)
    better = "metric/spaml-s"    # MODEL/DEFENSE, each optionally with the options that pick
    than = "metric/plain"        # one configuration of a sweep: "metric:dim=32/aml:eps=0.1"
    metrics = ["ndcg@3", "f1@3"] # default ["ndcg@3"]
    attack = "pgd"               # optional: under this attack, "loses less" (change from clean)
    strength = 0.1               # the attack's ε or rate, when the run holds several
    datasets = ["lastfm"]        # optional: default every data set that holds both sides
    family = "Table 3"           # optional: the Holm family (default: one for the whole file)

"Better" is always "higher": a level higher than the other side's, or under an attack a change
from clean above the other side's (a smaller loss). Verdicts: `holds` (significant in the
claimed direction), `reversed` (significant against it), `equivalent within ±margin` (a claim
that declares `margin = 0.01`: two one-sided tests, Holm within the family, find the true
difference inside the margin), `inconclusive (detectable from x)` (neither: x is the smallest
difference the design would have found with 80% power), or `too few seeds` (below
`MIN_SEEDS`, no verdict); in a run
still going, "so far" where cells of the claim's models on that data set are still to run, and
`not run yet` where the claim's cells are not there.
"""

from __future__ import annotations

import functools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from robustag.errors import ParameterError, RobustagError
from robustag.display import interval_text, labelled, p_text
from robustag.plugins import parse_spec
from robustag.stats import ALPHA, MIN_SEEDS, aggregate, compare_groups, done_cells, equivalence_p, holm
from robustag.store import ResultStore

CLAIM_KEYS = {"id", "says", "spec", "better", "than", "metrics", "attack", "strength", "datasets", "family", "margin"}


@dataclass
class Claim:
    id: str
    says: str
    better: str
    than: str
    metrics: list[str] = field(default_factory=lambda: ["ndcg@3"])
    spec: str | None = None
    attack: str | None = None
    strength: float | None = None
    datasets: list[str] | None = None
    family: str = "all"
    margin: float | None = None  # equivalence margin: |true Δ| < margin counts as "no difference that matters"


def load_claims(path: str | Path) -> list[Claim]:
    """The [[claim]] tables of a TOML file; an unknown key or a missing side names the claim."""
    path = Path(path)
    if not path.is_file():
        raise RobustagError(f"claims {path}: file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise RobustagError(f"claims {path}: not TOML ({error})") from None
    claims = []
    for number, table in enumerate(raw.get("claim", []), 1):
        where = f"claims {path}, claim {table.get('id', number)!r}"
        unknown = sorted(set(table) - CLAIM_KEYS)
        missing = [key for key in ("id", "says", "better", "than") if key not in table]
        if unknown or missing:
            raise RobustagError(f"{where}: " + (f"unknown key {unknown[0]!r}; known: {', '.join(sorted(CLAIM_KEYS))}"
                                                if unknown else f"missing key {missing[0]!r}"))
        _check_claim(table, where, seen={claim.id for claim in claims})
        claims.append(Claim(**table))
    if not claims:
        raise RobustagError(f"claims {path}: no [[claim]] tables")
    return claims


def _check_claim(table: dict, where: str, seen: set[str]) -> None:
    """What a claim's keys must hold, each error naming the key."""
    if table["id"] in seen:
        raise RobustagError(f"{where}: id {table['id']!r} is used by an earlier claim; ids must be unique")
    for side in ("better", "than"):
        if not isinstance(table[side], str) or table[side].count("/") != 1:
            raise RobustagError(f"{where}: {side} {table[side]!r}: expected MODEL/DEFENSE (options optional: "
                                "metric:dim=32/aml:eps=0.1)")
        for part in table[side].split("/"):
            parse_spec(part)  # a malformed option names itself
    if table["better"] == table["than"]:
        raise RobustagError(f"{where}: better and than are both {table['better']!r}: a claim compares two configurations")
    margin = table.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0):
        raise RobustagError(f"{where}: margin must be a number > 0 (the equivalence margin), got {margin!r}")
    metrics = table.get("metrics", ["ndcg@3"])
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise RobustagError(f"{where}: metrics must be a non-empty list of metric names, got {metrics!r}")


def verify_claims(run: str | Path, claims: list[Claim] | str | Path) -> pd.DataFrame:
    """One row per claim, data set and metric: both sides' seed means (levels; under an attack,
    changes from clean), the method-level
    difference (better − than; under an attack, of their changes from clean) with its 95% CI,
    p and the p Holm-corrected within the claim's family, the seeds and the verdict."""
    claims = load_claims(claims) if isinstance(claims, (str, Path)) else claims
    if not isinstance(claims, (list, tuple)) or not claims or not all(isinstance(c, Claim) for c in claims):
        raise ParameterError("claims", "expected a claims file or a non-empty list of Claim", repr(claims)[:40])
    store = ResultStore.existing(run)
    try:
        read = functools.cache(lambda spec, metrics: _spec_cells(store, spec, list(metrics), run))  # once per spec
        rows = pd.DataFrame([row for claim in claims for row in _claim_rows(store, read, claim, run)])
    finally:
        store.close()
    answered = rows[rows["seeds"].notna()] if "seeds" in rows else rows.iloc[:0]
    tested = [_equivalence(holm(family)) for _, family in answered.groupby("family", sort=False)]
    table = pd.concat([*tested, rows.drop(answered.index)]).sort_index()
    table["verdict"] = [_verdict(row) for _, row in table.iterrows()]
    return table.drop(columns=["id"], errors="ignore")


def _spec_cells(store: ResultStore, spec: str | None, metrics: list[str], run) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A spec's planned cells and its finished groups' seed means of `metrics` (None before any
    cell finished); a metric the run does not store is an error."""
    planned, cells = store.cells(spec=spec), done_cells(store, spec)
    if cells.empty:
        return planned, None
    cells = labelled(cells)
    unknown = [metric for metric in metrics if metric not in cells]
    if unknown:
        raise RobustagError(f"metric {unknown[0]!r} is not stored in {run}")
    table = aggregate(store, cells, metrics, ci_metrics=[])
    labels = dict(zip(zip(cells["model"], cells["params"], cells["defense"]), cells["model_label"] + " " + cells["defense_label"]))
    table["label"] = [labels[key] for key in zip(table["model"], table["params"], table["defense"])]
    return planned, table


def _claim_rows(store: ResultStore, read, claim: Claim, run) -> list[dict]:
    """The claim's comparisons on each data set; in a run still going, a data set where cells of
    the claim's models are still to run is flagged, or gets one row saying so (no test)."""
    try:
        planned, table = read(claim.spec, tuple(claim.metrics))
    except RobustagError as error:
        raise RobustagError(f"claim {claim.id!r}: {error}") from None
    models = {parse_spec(side.split("/")[0])[0] for side in (claim.better, claim.than)}
    if table is not None:
        _check_attack(claim, table)
    waiting = set(planned.loc[(planned["status"] == "pending") & planned["model"].isin(models), "dataset"])
    rows = []
    for dataset in claim.datasets or list(dict.fromkeys(planned["dataset"])):
        sides = [] if table is None else [_group(table, claim, dataset, side, attacked)
                                          for attacked in (True, False) if attacked or claim.attack
                                          for side in (claim.better, claim.than)]
        described = {"claim": claim.id, "family": claim.family, "says": claim.says, "dataset": dataset,
                     "better": claim.better, "than": claim.than, "margin": claim.margin}
        if not sides or any(side is None for side in sides):
            if dataset in waiting:
                rows.append({**described, "metric": ", ".join(claim.metrics), "under": _under(claim, None)})
            elif claim.datasets:
                raise RobustagError(f"claim {claim.id!r}: {dataset} lacks {claim.better} or {claim.than}"
                                    + (f" under {claim.attack}" if claim.attack else "") + f" in {run}")
            continue
        pairs = [(sides[0], sides[1])] + ([(sides[2], sides[3])] if claim.attack else [])
        for metric in claim.metrics:
            rows.append({**described, "metric": metric, "under": _under(claim, sides[0]), "unfinished": dataset in waiting,
                         **_side_means(sides, f"{metric}_mean"), **compare_groups(store, pairs, metric)})
    if not rows:
        raise RobustagError(f"claim {claim.id!r}: no data set of {run} holds both {claim.better} and {claim.than}"
                            + (f" in spec {claim.spec!r}" if claim.spec else ""))
    return rows


def _side_means(sides: list[pd.Series], column: str) -> dict:
    """Each side's seed mean: its level, or under an attack its change from clean (what Δ compares)."""
    if len(sides) == 2:
        return {"better_mean": sides[0][column], "than_mean": sides[1][column]}
    return {"better_mean": sides[0][column] - sides[2][column], "than_mean": sides[1][column] - sides[3][column]}


def _check_attack(claim: Claim, table: pd.DataFrame) -> None:
    """A claim's attack and strength must be in the run: naming what is not, and what is."""
    if not claim.attack:
        return
    attacked = table[table["attack_name"] == claim.attack]
    if attacked.empty:
        known = sorted(set(table["attack_name"].dropna()))
        raise RobustagError(f"claim {claim.id!r}: attack {claim.attack!r} is not in the run (it has "
                            f"{', '.join(known) or 'no attack'})")
    strengths = sorted(set(attacked["strength"].dropna()))
    if claim.strength is not None and not any(math.isclose(s, claim.strength) for s in strengths):
        raise RobustagError(f"claim {claim.id!r}: strength {claim.strength:g} of {claim.attack} is not in the run "
                            f"(it has {', '.join(f'{s:g}' for s in strengths) or 'none'})")


def _matches(values: pd.Series, wanted: dict) -> list[bool]:
    """Which stored option sets (dicts or JSON) hold every wanted option (compared as written)."""
    parsed = [json.loads(v) if isinstance(v, str) else v for v in values]
    return [all(str(options.get(k)) == str(v) for k, v in wanted.items()) for options in parsed]


def _group(table: pd.DataFrame, claim: Claim, dataset: str, side: str, attacked: bool) -> pd.Series | None:
    """The one aggregate row of MODEL/DEFENSE on this data set, under the claim's attack or
    clean; several (say a sweep) make the claim ambiguous, which is an error naming them."""
    (model, model_options), (defense, defense_options) = (parse_spec(part) for part in side.split("/"))
    found = table[(table["dataset"] == dataset) & (table["model"] == model) & (table["defense_name"] == defense)]
    found = found[_matches(found["params"], model_options)] if model_options else found
    found = found[_matches(found["defense_params"], defense_options)] if defense_options else found
    if attacked and claim.attack:
        found = found[found["attack_name"] == claim.attack]
        if claim.strength is not None:
            found = found[[math.isclose(s, claim.strength) for s in found["strength"]]]
    else:
        found = found[found["attack"] == ""]
    if len(found) > 1:
        raise RobustagError(f"claim {claim.id!r}: {side} on {dataset} matches {len(found)} configurations "
                            f"({'; '.join(dict.fromkeys(found['label']))}"
                            + (f"; strengths {', '.join(f'{s:g}' for s in sorted(set(found['strength'])))}"
                               if attacked and found["strength"].nunique() > 1 else "")
                            + "): pick one with its options (metric:dim=32/aml:eps=0.1), the spec, or the strength")
    return None if found.empty else found.iloc[0]


def _under(claim: Claim, attacked: pd.Series | None) -> str:
    if not claim.attack:
        return "clean"
    if attacked is None:
        return f"change under {claim.attack}" + (f" at {claim.strength:g}" if claim.strength is not None else "")
    strength = attacked["strength"]
    named = f"{claim.attack} {attacked['strength_name']} = {strength:g}" if pd.notna(strength) else claim.attack
    return f"change under {named}"


def _equivalence(family: pd.DataFrame) -> pd.DataFrame:
    """The claims of a family that declare a margin, tested for equivalence within it (two
    one-sided tests), Holm-corrected over those claims of the family."""
    family = family.assign(p_equivalence=np.nan, p_equivalence_holm=np.nan, equivalent=False)
    declared = family["margin"].notna() & family["se"].notna()
    if declared.any():
        family.loc[declared, "p_equivalence"] = [equivalence_p(r.diff, r.se, r.df, r.margin)
                                                 for r in family[declared].itertuples()]
        reject, corrected, _, _ = multipletests(family.loc[declared, "p_equivalence"], alpha=ALPHA, method="holm")
        family.loc[declared, "p_equivalence_holm"] = corrected
        family.loc[declared, "equivalent"] = reject & (family.loc[declared, "seeds"] >= MIN_SEEDS).to_numpy()
    return family


def _verdict(row: pd.Series) -> str:
    """holds / reversed (significant either way), equivalent within ±margin (two one-sided
    tests), inconclusive (with the smallest Δ the design would have found at 80% power), too few
    seeds, or not run yet."""
    if pd.isna(row.get("seeds")):
        return "not run yet"
    if row["seeds"] < MIN_SEEDS:
        verdict = "too few seeds"
    elif row["significant"]:
        verdict = "holds" if row["diff"] > 0 else "reversed"
    elif bool(row.get("equivalent", False)):
        verdict = f"equivalent within ±{row['margin']:g}"
    else:
        verdict = f"inconclusive (detectable from {row['mde']:.4f})"
    return verdict + (" so far (the run is unfinished)" if bool(row["unfinished"]) else "")


def claims_table(verified: pd.DataFrame) -> pd.DataFrame:
    """`verify_claims`' result as a report shows it: both sides' seed means, the difference with
    its 95% CI (4 decimals; not adjusted for the family), p before and after Holm, the verdict;
    blank figures where a claim is not run yet."""
    numbers = ["better_mean", "than_mean", "diff", "ci_low", "ci_high", "mde", "p", "p_holm", "seeds"]
    verified = verified.reindex(columns=[*verified.columns.drop(numbers, errors="ignore"), *numbers])
    change = verified["under"].str.startswith("change")
    side = lambda v, signed: "" if pd.isna(v) else f"{v:+.4f}" if signed else f"{v:.4f}"
    return pd.DataFrame({
        "claim": verified["claim"], "family": verified["family"], "says": verified["says"], "dataset": verified["dataset"],
        "metric": verified["metric"].str.upper(), "comparison": verified["better"] + " vs " + verified["than"],
        "under": verified["under"],
        "better": [side(v, c) for v, c in zip(verified["better_mean"], change)],
        "than": [side(v, c) for v, c in zip(verified["than_mean"], change)],
        "Δ [95% CI]": ["" if pd.isna(r.diff) else interval_text(r.diff, r.ci_low, r.ci_high) for r in verified.itertuples()],
        "detectable Δ": verified["mde"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}"),
        "p": verified["p"].map(p_text), "p (Holm)": verified["p_holm"].map(p_text),
        "seeds": verified["seeds"].map(lambda n: "" if pd.isna(n) else str(int(n))), "verdict": verified["verdict"]})
