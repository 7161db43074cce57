"""Statistics over a run: mean ± std over seeds, bootstrap CIs over test posts, paired tests
against a reference defense with Holm–Bonferroni correction, and a Friedman/Nemenyi ranking.

All tests come from the field's libraries: scipy.stats (Wilcoxon, paired t, Friedman,
bootstrap), statsmodels (Holm), scikit-posthocs (Nemenyi, critical-difference diagram).
Per-post values are averaged over seeds before pairing (the test posts are the same for
every seed: the split is fixed), so each test pairs one value per post.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from robustag.store import ResultStore

# A configuration: the attack's canonical spec holds its budget, so no separate ε key (clean
# cells and poisoning attacks have none, and NaN keys would need a placeholder).
GROUP = ["dataset", "model", "params", "defense", "attack"]
CONFIGURATION = ["defense_name", "attack_name", "surface", "eps", "attack_params", "defense_params", "strength",
                 "strength_name"]
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000


def flat_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells with their metrics JSON spread into columns; `attack` "" for clean cells."""
    frame = frame.copy()
    metrics = frame["metrics"].map(lambda m: json.loads(m) if isinstance(m, str) and m != "null" else {})
    extra = frame["extra"].map(lambda m: json.loads(m) if isinstance(m, str) and m != "null" else {})
    wide = pd.concat([frame.drop(columns=["metrics", "extra"]), pd.DataFrame(list(metrics), index=frame.index),
                      pd.DataFrame(list(extra), index=frame.index)], axis=1)
    for column in ("attack_params", "defense_params"):  # parsed once, at plan time
        wide[column] = wide[column].map(lambda text: json.loads(text) if isinstance(text, str) else {})
    wide["attack"] = wide["attack"].fillna("")
    return wide


def done_cells(store: ResultStore, spec: str | None = None) -> pd.DataFrame:
    return flat_cells(store.cells(spec=spec, status="done"))


def seed_averaged(store: ResultStore, keys: list[str], metric: str) -> np.ndarray:
    values = store.per_post(keys, metric)
    return np.mean([values[k] for k in keys], axis=0)


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean over posts."""
    if len(values) < 2 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())
    result = stats.bootstrap((values,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=0.95,
                             method="percentile", random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def aggregate(store: ResultStore, cells: pd.DataFrame, metrics: list[str], ci_metrics=None) -> pd.DataFrame:
    """One row per group (all but the seed): mean, std over seeds, n seeds, and a bootstrap CI
    for each of `ci_metrics` (default: all; the resampling is the costly part)."""
    ci_metrics = metrics if ci_metrics is None else ci_metrics
    rows = []
    for key, group in cells.groupby(GROUP, sort=False, dropna=False):
        row = dict(zip(GROUP, key))
        first = group.iloc[0]  # what a configuration declares is the same for all its seeds
        row.update({column: first[column] for column in CONFIGURATION}, seeds=len(group), cells=list(group["key"]))
        for metric in metrics:
            row[f"{metric}_mean"] = float(group[metric].mean())
            row[f"{metric}_std"] = float(group[metric].std(ddof=1)) if len(group) > 1 else 0.0
            if metric in ci_metrics:
                low, high = bootstrap_ci(seed_averaged(store, list(group["key"]), metric))
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


def paired_test(values: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Wilcoxon signed-rank and paired t-test of per-post values, and Cohen's d_z."""
    diff = values - reference
    if np.allclose(diff, 0):
        return {"wilcoxon_p": 1.0, "ttest_p": 1.0, "effect_size": 0.0, "mean_diff": 0.0}
    wilcoxon = stats.wilcoxon(values, reference, zero_method="zsplit")
    ttest = stats.ttest_rel(values, reference)
    sd = diff.std(ddof=1)
    return {"wilcoxon_p": float(wilcoxon.pvalue), "ttest_p": float(ttest.pvalue),
            "effect_size": float(diff.mean() / sd) if sd > 0 else 0.0, "mean_diff": float(diff.mean())}


def compare_to_reference(store: ResultStore, table: pd.DataFrame, metric: str, reference: str) -> pd.DataFrame:
    """Each group against the reference defense's group under the same dataset, model, attack
    and budget; Holm–Bonferroni over all the comparisons of the table (one family)."""
    rows = []
    context = ["dataset", "model", "params", "attack"]
    for _, row in table.iterrows():
        if row["defense_name"] == reference:
            continue
        match = table[(table["defense_name"] == reference) & np.logical_and.reduce([table[c] == row[c] for c in context])]
        if match.empty:
            continue
        ours = seed_averaged(store, row["cells"], metric)
        theirs = seed_averaged(store, match.iloc[0]["cells"], metric)
        rows.append({**{c: row[c] for c in [*context, "defense", "eps"]}, "metric": metric, **paired_test(ours, theirs)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for test in ("wilcoxon", "ttest"):
        reject, corrected, _, _ = multipletests(frame[f"{test}_p"], alpha=ALPHA, method="holm")
        frame[f"{test}_p_holm"] = corrected
        frame[f"{test}_significant"] = reject
    return frame


def friedman_ranking(table: pd.DataFrame, metric: str) -> dict | None:
    """Defenses ranked over blocks (dataset × model × attack × budget) by the seed-mean metric:
    Friedman's test, mean ranks, and Nemenyi's pairwise p-values. None with < 3 defenses or
    < 2 complete blocks."""
    import scikit_posthocs as sp

    pivot = table.pivot_table(index=["dataset", "model", "params", "attack"], columns="defense",
                              values=f"{metric}_mean").dropna()
    if pivot.shape[1] < 3 or pivot.shape[0] < 2:
        return None
    statistic, p_value = stats.friedmanchisquare(*[pivot[c].to_numpy() for c in pivot.columns])
    ranks = pivot.rank(axis=1, ascending=False).mean()
    nemenyi = sp.posthoc_nemenyi_friedman(pivot.to_numpy())
    nemenyi.index = nemenyi.columns = pivot.columns
    return {"statistic": float(statistic), "p_value": float(p_value), "blocks": int(pivot.shape[0]),
            "ranks": ranks.sort_values(), "nemenyi": nemenyi}
