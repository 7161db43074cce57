"""Statistics over a run: mean ± std over seeds, method-level comparisons against a reference
defense with Holm–Bonferroni correction per table, and a Friedman/Nemenyi ranking over
independent blocks.

**The unit of a claim is a method (a configuration), not one trained model.** The replicates
are seeds; the test posts are repeated measures within each seed, and the same posts serve
every seed (the split is fixed). A comparison's paired differences d[s, p] (seed s, post p;
the same seed means the same initialisation and batch order for both configurations) follow
the crossed random-effects model

    d[s, p] = μ + a_s + b_p + e_sp,   a ~ N(0, σ_seed²), b ~ N(0, σ_post²), e ~ N(0, σ_res²),

the model of "stimuli as a random factor" (Clark 1973; Judd, Westfall & Kenny 2012), which
Bouthillier et al. (2021, "Accounting for variance in machine learning benchmarks") argue a
benchmark needs: a claim about μ must carry both the training randomness (seeds) and the
sampling of the test set (posts). On the complete, balanced S × P table the variance
components have closed-form ANOVA estimates (equal to REML's when none is negative), and

    Var(μ̂) = σ_seed²/S + σ_post²/P + σ_res²/(S·P),

and a t interval. Its degrees of freedom are the crux with 3–10 seeds. Satterthwaite's df,
computed from the estimates, is large exactly when MS_seed happens to be small (so the t is
large too): uncapped it rejected 7.3–8.6% at 3 seeds when seeds carry much of the variance;
capped at S − 1 (robustag ≤ 0.2) it rejected 0.4–4.3%, least where posts dominate, and lost power. robustag
takes Satterthwaite's df with MS_seed replaced by its upper 75% chi-square confidence limit,
MS_seed·(S − 1)/χ²_{0.25, S−1} (the standard error keeps the estimate): when the seed term
could matter the df shrink toward S − 1, when it cannot they stay near the posts'. The level
was chosen by simulation; `benchmarks/calibration.py` writes the table it achieves
(`reports/benchmarks/calibration.csv`: false positives within [0.035, 0.065] and coverage
within [0.935, 0.965] from seed- to post-dominated, 3 to 10 seeds, 184 to 10,000 posts, and
clustered posts), and the suite checks both bounds in each regime. A parametric bootstrap of
the t under the fitted components is as liberal as the uncapped df (it plugs in the same
estimates; it rejected up to 10.1%); a generalized (fiducial) interval was conservative at 3
seeds (2.9%). These comparison figures come from prototypes, 2,000 designs per regime.

Test posts are not independent: posts on one item share the item. Where the run stored each
test post's item (every bench does since this calibration), the post term is cluster-robust, summed per item,
C/(C − 1)·Σ_c(Σ_{p∈c}(ȳ_p − ȳ))²/P² with C − 1 df (C items); unclustered, LastFM-like item
sharing gave 8.7–11.5% false positives. Every comparison also states its minimum detectable effect
at 80% power, (t_{0.975} + t_{0.8})·SE: a "no difference" could not have seen less.

A hierarchical bootstrap resamples among only 10–126 seed multisets and its intervals
under-cover; a per-post test over seed-averaged values ignores σ_seed and rejects far too
often when seeds differ (the suite checks both calibration and power). The
sums of squares are those of statsmodels' two-way `anova_lm` (a test checks it), computed
directly because the layout is balanced (statsmodels' OLS would build a P-column design per
comparison). The per-post Wilcoxon test over seed-averaged values is kept as a secondary,
clearly labelled figure: it is about these trained models on this split.

Under attack, a comparison tests the *change*: (attacked − clean) of the configuration against
the same change of the reference, per seed and post (a difference in differences), so "loses
less under attack X" is tested as stated. Fewer than `MIN_SEEDS` seeds: no method-level claim.

Libraries: scipy.stats (t, Wilcoxon, Friedman, F), statsmodels (Holm), scikit-posthocs
(Nemenyi, critical-difference diagram).
"""

from __future__ import annotations

import json
import math
from typing import Protocol

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests


class RunReader(Protocol):
    """What the statistics read of a run (a `store.ResultStore`, or anything answering the same):
    its cells table, per-post values of cells, and metadata. Every test itself is a pure
    function of arrays (`crossed_test`, `paired_test`, `holm`, `design_mde`, ...)."""

    def cells(self, spec: str | None = None, status: str | None = None) -> pd.DataFrame: ...

    def per_post(self, cell_keys: list[str], metric: str) -> dict[str, np.ndarray]: ...

    def meta(self, key: str, default=None): ...


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


def done_cells(store: RunReader, spec: str | None = None) -> pd.DataFrame:
    """The finished cells, one per computation: where a run holds two cells of the same
    configuration (seed, split and attack included), as when a rerun after a release that
    changed the numbers (`version.COMPUTATION`) keys its units anew and keeps the old cells, the
    one that finished last; a report
    never averages two versions of one seed."""
    cells = flat_cells(store.cells(spec=spec, status="done"))
    computation = cells["config"].map(_without_code)  # a plugin's newer code supersedes its older cells
    return cells[~computation.loc[cells.sort_values("finished", kind="stable").index].duplicated(keep="last")
                 .reindex(cells.index)]


def _without_code(config: str) -> str:
    """A cell's configuration without its plugins' code identities (what `done_cells` dedupes on)."""
    if '"code"' not in config:
        return config
    parsed = json.loads(config)
    parsed.pop("code", None)
    return json.dumps(parsed, sort_keys=True)


def seed_averaged(store: RunReader, keys: list[str], metric: str) -> np.ndarray:
    values = store.per_post(keys, metric)
    return np.mean([values[k] for k in keys], axis=0)


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean over posts."""
    if len(values) < 2 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())
    result = stats.bootstrap((values,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=0.95,
                             method="percentile", random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def aggregate(store: RunReader, cells: pd.DataFrame, metrics: list[str], ci_metrics=None) -> pd.DataFrame:
    """One row per group (all but the seed): mean, std over seeds, n seeds, and a bootstrap CI
    for each of `ci_metrics` (default: all; the resampling is the costly part)."""
    ci_metrics = metrics if ci_metrics is None else ci_metrics
    rows = []
    for key, group in cells.groupby(GROUP, sort=False, dropna=False):
        row = dict(zip(GROUP, key))
        first = group.iloc[0]  # what a configuration declares is the same for all its seeds
        row.update({column: first[column] for column in CONFIGURATION}, seeds=len(group), cells=list(group["key"]),
                   cell_seeds=list(group["seed"]))
        for metric in metrics:
            row[f"{metric}_mean"] = float(group[metric].mean())
            row[f"{metric}_std"] = float(group[metric].std(ddof=1)) if len(group) > 1 else 0.0
            if metric in ci_metrics:
                low, high = bootstrap_ci(seed_averaged(store, list(group["key"]), metric))
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows)


MIN_SEEDS = 3  # fewer: a seed-level variance is too poorly estimated for a method-level claim


# The df of the interval: Satterthwaite's, with the seed mean square at this upper confidence
# level (its chi-square bound) in place of its estimate; the standard error keeps the estimate.
# Why, and the calibration it achieves: the module docstring.
SEED_DF_LEVEL = 0.75
POWER = 0.8  # the power at which a comparison states its minimum detectable effect


def crossed_test(diff: np.ndarray, clusters: np.ndarray | None = None) -> dict[str, float]:
    """Method-level test of the mean of paired differences `diff` (seeds × posts) under the
    crossed random-effects model of the module docstring: the mean, its 95% t interval, the
    two-sided p-value, the minimum detectable effect at 80% power (`mde`), and each component's
    share of Var(mean). `clusters` (one integer per post, say its item) makes the post term
    cluster-robust: posts of one item are not independent replicates."""
    seeds, posts = diff.shape
    mean = float(diff.mean())
    identical = np.allclose(diff, diff.flat[0])
    if seeds < 2 or identical:
        # identical differences are exact; from one seed no method-level interval exists
        bound = mean if identical else np.nan
        return {"diff": mean, "ci_low": bound, "ci_high": bound, "p": 1.0 if np.allclose(diff, 0) else np.nan,
                "df": np.nan, "se": 0.0 if identical else np.nan, "mde": 0.0 if identical else np.nan,
                "seed_share": np.nan, "post_share": np.nan, "residual_share": np.nan,
                "var_seed": np.nan, "var_post": np.nan, "var_residual": np.nan}
    by_seed, by_post = diff.mean(1), diff.mean(0)
    ms_seed = posts * np.sum((by_seed - mean) ** 2) / (seeds - 1)
    df_res = (seeds - 1) * (posts - 1)
    ms_res = np.sum((diff - by_seed[:, None] - by_post[None, :] + mean) ** 2) / df_res
    ms_post, df_post = _post_mean_square(by_post - mean, seeds, clusters)
    # Var(mean) = [MS_seed + (MS_post − MS_res)] / (SP): MS_seed carries the seed and residual
    # terms with S − 1 df; a post component estimated below zero is set to zero (dropping the
    # bracket), never the seed term.
    seed_var, post_var = (ms_seed - ms_res) / posts, (ms_post - ms_res) / seeds
    se, df = _standard_error(ms_seed, ms_post, df_post, ms_res, seeds, posts)
    critical = stats.t.ppf(0.975, df)
    p = 2 * stats.t.sf(abs(mean) / se, df) if se > 0 else (0.0 if mean != 0 else 1.0)
    parts = {"seed_share": max(seed_var, 0) / seeds, "post_share": max(post_var, 0) / posts,
             "residual_share": ms_res / (seeds * posts)}
    total = sum(parts.values()) or 1.0
    # the components themselves (σ²_seed, σ²_post as Var(mean)·P, σ²_res), for designing the next run
    components = {"var_seed": max(seed_var, 0.0), "var_post": max(post_var, 0.0), "var_residual": float(ms_res)}
    return {"diff": mean, "ci_low": mean - critical * se, "ci_high": mean + critical * se, "p": float(p),
            "df": float(df), "se": float(se), "mde": float(minimum_detectable(se, df)),
            **{k: float(v / total) for k, v in parts.items()}, **components}


def design_mde(var_seed: float, var_post: float, var_residual: float, seeds: int, posts: int) -> float:
    """The detectable effect (80% power, α = 0.05) that `crossed_test` would state for a design
    with `seeds` and `posts`, from a pilot's variance components: the mean squares such a design
    expects (P·σ²_seed + σ²_res, S·σ²_post + σ²_res, σ²_res) through the same interval."""
    ms_seed = posts * var_seed + var_residual
    ms_post = seeds * var_post + var_residual
    return float(minimum_detectable(*_standard_error(ms_seed, ms_post, posts - 1, var_residual, seeds, posts)))


def seeds_needed(var_seed: float, var_post: float, var_residual: float, posts: int, effect: float,
                 most: int = 200) -> int | None:
    """The fewest seeds (≥ 3) whose design with `posts` detects `effect` at 80% power; None when
    even `most` seeds would not (the posts' variance alone is too large: more posts are needed)."""
    for seeds in range(MIN_SEEDS, most + 1):
        if design_mde(var_seed, var_post, var_residual, seeds, posts) <= effect:
            return seeds
    return None


def equivalence_p(diff: float, se: float, df: float, margin: float) -> float:
    """Two one-sided tests (Schuirmann 1987) that the true difference lies within ±margin: the
    larger of the two one-sided p-values (equivalence at α when it is below α)."""
    if not se > 0:
        return 0.0 if abs(diff) < margin else 1.0
    return float(max(stats.t.sf((margin - diff) / se, df), stats.t.sf((diff + margin) / se, df)))


def _standard_error(ms_seed: float, ms_post: float, df_post: int, ms_res: float, seeds: int,
                    posts: int) -> tuple[float, float]:
    """The standard error of the mean and the df of its t, from the mean squares (module docstring)."""
    df_res = (seeds - 1) * (posts - 1)
    post_terms = [(ms_post, df_post), (-ms_res, df_res)] if ms_post > ms_res else []
    variance = (ms_seed + sum(ms for ms, _ in post_terms)) / (seeds * posts)
    bounded = ms_seed * (seeds - 1) / stats.chi2.ppf(1 - SEED_DF_LEVEL, seeds - 1)
    terms = [(bounded, seeds - 1), *post_terms]
    df = sum(ms for ms, _ in terms) ** 2 / sum(ms ** 2 / d for ms, d in terms)
    return float(np.sqrt(max(variance, 0.0))), float(df)


def _post_mean_square(deviations: np.ndarray, seeds: int, clusters: np.ndarray | None) -> tuple[float, int]:
    """The post term as a mean square (S·Σ(ȳ_p − ȳ)²/(P − 1)) and its df; with clusters, the
    cluster-robust form S·P·C/(C − 1)·Σ_c(Σ_{p∈c}(ȳ_p − ȳ))²/P² with C − 1 df (equal to the
    first when every post is its own cluster)."""
    posts = len(deviations)
    if clusters is None:
        return seeds * np.sum(deviations ** 2) / (posts - 1), posts - 1
    _, index = np.unique(clusters, return_inverse=True)
    sums = np.bincount(index, weights=deviations)
    count = len(sums)
    if count < 2:
        raise ValueError("clusters: the posts fall in fewer than two clusters")
    return seeds * count / (count - 1) * np.sum(sums ** 2) / posts, count - 1


def minimum_detectable(se: float, df: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true difference the two-sided test at `alpha` finds with `power`, for a
    design whose estimate has standard error `se` with `df` degrees of freedom:
    (t_{1−α/2} + t_{power}) · se (the usual normal-approximation form, with t quantiles)."""
    return (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se


def paired_test(values: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The secondary, per-post figures (these trained models, this split): Wilcoxon
    signed-rank and paired t over posts of seed-averaged values, and Cohen's d_z."""
    diff = values - reference
    if np.allclose(diff, 0):
        return {"wilcoxon_p": 1.0, "ttest_p": 1.0, "effect_size": 0.0, "mean_diff": 0.0}
    wilcoxon = stats.wilcoxon(values, reference, zero_method="zsplit")
    ttest = stats.ttest_rel(values, reference)
    sd = diff.std(ddof=1)
    return {"wilcoxon_p": float(wilcoxon.pvalue), "ttest_p": float(ttest.pvalue),
            "effect_size": float(diff.mean() / sd) if sd > 0 else 0.0, "mean_diff": float(diff.mean())}


def seed_matrix(store: RunReader, row, metric: str, seeds: list) -> np.ndarray:
    """(seeds, posts): a group's per-post values, one row per given seed."""
    key_of = dict(zip(row["cell_seeds"], row["cells"]))
    values = store.per_post([key_of[s] for s in seeds], metric)
    return np.stack([values[key_of[s]] for s in seeds])


CONTEXT = ["dataset", "model", "params", "attack"]


def _match(table: pd.DataFrame, row, defense_column: str, defense, attack) -> pd.Series | None:
    found = table[(table[defense_column] == defense) & (table["attack"] == attack)
                  & np.logical_and.reduce([table[c] == row[c] for c in CONTEXT[:3]])]
    return None if found.empty else found.iloc[0]


def compare_to_reference(store: RunReader, table: pd.DataFrame, metrics: str | list[str], reference: str,
                         change: bool = False, tested: set | None = None) -> pd.DataFrame:
    """Each group against the reference defense's group under the same dataset, model, attack
    and budget, paired by seed, for each metric: the method-level difference (`diff`, its 95%
    CI, `p`, the relative difference `rel_diff` with its CI, the variance shares) and the
    secondary per-post figures (`wilcoxon_p`, `mean_diff`). With `change`, only attacked groups,
    compared by their change from clean (difference in differences); else every group by its
    level. Holm over all the comparisons returned (one family: call it once per table);
    `significant` also needs `MIN_SEEDS` seeds. Each comparison has an `id` (its cells and
    metric); those in `tested` are left out, and the new ones are added to it, so that a report
    tests a comparison once however many of its tables show it."""
    rows = []
    for metric in [metrics] if isinstance(metrics, str) else metrics:
        rows += _comparisons(store, table, metric, reference, change)
    fresh = [row for row in rows if tested is None or row["id"] not in tested]
    if tested is not None:
        tested.update(row["id"] for row in fresh)
    frame = holm(pd.DataFrame(fresh)) if fresh else pd.DataFrame()
    frame.attrs["already_tested"] = len(rows) - len(fresh)
    return frame


def _comparisons(store: RunReader, table: pd.DataFrame, metric: str, reference: str, change: bool) -> list[dict]:
    rows = []
    for _, row in table.iterrows():
        if row["defense_name"] == reference or (change and not row["attack"]):
            continue
        theirs_row = _match(table, row, "defense_name", reference, row["attack"])
        if theirs_row is None:
            continue
        pairs = [(row, theirs_row)]
        if change:
            pairs += [(_match(table, row, "defense", row["defense"], ""), _match(table, row, "defense", theirs_row["defense"], ""))]
            if pairs[1][0] is None or pairs[1][1] is None:
                continue
        rows.append({**{c: row[c] for c in [*CONTEXT, "defense", "eps"]}, **compare_groups(store, pairs, metric)})
    return rows


def compare_groups(store: RunReader, pairs: list[tuple], metric: str) -> dict:
    """Two groups (aggregate rows: any data set, model or defense), paired by the seeds both
    have, at method level: `pairs` is [(ours, theirs)] to compare levels, or [(ours, theirs),
    (ours_clean, theirs_clean)] to compare their changes from clean (difference in
    differences). Returns the method-level difference with its CI and p (`crossed_test`), the
    difference relative to theirs (clean) level, and the secondary per-post figures; not
    Holm-corrected (`holm` over the family it belongs to)."""
    seeds = sorted(set.intersection(*(set(r["cell_seeds"]) for pair in pairs for r in pair)))
    matrices = [[seed_matrix(store, r, metric, seeds) for r in pair] for pair in pairs]  # each read once
    ours, theirs = matrices[0]
    if len(pairs) > 1:
        ours, theirs = ours - matrices[1][0], theirs - matrices[1][1]
    method = crossed_test(ours - theirs, test_clusters(store, {r["dataset"] for pair in pairs for r in pair}, ours.shape[1]))
    level = float(matrices[-1][1].mean())  # the reference's clean level
    relative = {f"rel_{k}": method[k] / level if level else np.nan for k in ("diff", "ci_low", "ci_high")}
    identity = json.dumps([metric, [sorted(r["cells"]) for pair in pairs for r in pair]])
    return {"id": identity, "metric": metric, "seeds": len(seeds), "posts": ours.shape[1],
            "kind": "change" if len(pairs) > 1 else "level",
            **method, **relative, **paired_test(ours.mean(0), theirs.mean(0))}


TEST_ITEMS = "test_items"  # meta key: per data set, the item of each test post (the clusters of posts)


def test_clusters(store: RunReader, datasets: set[str], posts: int) -> np.ndarray | None:
    """The item of each test post of the one data set compared, where the run stored them (a
    run from before robustag stored them gets none: its posts count as independent)."""
    if len(datasets) != 1:
        return None
    items = store.meta(TEST_ITEMS, {}).get(next(iter(datasets)))
    return np.asarray(items) if items is not None and len(items) == posts else None


def holm(frame: pd.DataFrame) -> pd.DataFrame:
    """Holm–Bonferroni over the rows of `frame` (one declared family), for the method-level
    p-values and for the secondary per-post ones."""
    frame = frame.copy()
    testable = frame["p"].notna()
    frame["p_holm"], frame["significant"] = np.nan, False
    if testable.any():
        reject, corrected, _, _ = multipletests(frame.loc[testable, "p"], alpha=ALPHA, method="holm")
        frame.loc[testable, "p_holm"] = corrected
        frame.loc[testable, "significant"] = reject & (frame.loc[testable, "seeds"] >= MIN_SEEDS).to_numpy()
    for test in ("wilcoxon", "ttest"):
        reject, corrected, _, _ = multipletests(frame[f"{test}_p"], alpha=ALPHA, method="holm")
        frame[f"{test}_p_holm"] = corrected
        frame[f"{test}_significant"] = reject
    return frame


MIN_BLOCKS = 5


def friedman_ranking(table: pd.DataFrame, metric: str) -> dict | None:
    """Defenses ranked by the seed-mean clean metric over *independent* blocks: one per data
    set × model, at its first setting (attacked cells of the same models, or several sizes of
    one model, are not independent blocks). Mean ranks always; the Iman–Davenport F test and
    Nemenyi's pairwise p-values only with at least `MIN_BLOCKS` blocks and when the exact test
    could reach α at all (all blocks ranking alike has probability (k!)^(1−N)): with fewer, the
    F approximation is poor (Demšar 2006 works from 5 data sets up) and a p-value would mislead.
    None with < 3 defenses or < 2 complete blocks."""
    import scikit_posthocs as sp

    clean = table[table["attack"] == ""]
    first = clean.drop_duplicates(["dataset", "model"])[["dataset", "model", "params"]]
    at_one_setting = clean.merge(first, on=["dataset", "model", "params"])
    pivot = at_one_setting.pivot_table(index=["dataset", "model"], columns="defense", values=f"{metric}_mean").dropna()
    blocks, k = pivot.shape
    if k < 3 or blocks < 2:
        return None
    ranks = pivot.rank(axis=1, ascending=False).mean().sort_values()
    result = {"blocks": int(blocks), "ranks": ranks, "statistic": None, "p_value": None, "nemenyi": None}
    if blocks < MIN_BLOCKS or math.factorial(k) ** (1 - blocks) > ALPHA:
        return result
    chi2, _ = stats.friedmanchisquare(*[pivot[c].to_numpy() for c in pivot.columns])
    f_value = (blocks - 1) * chi2 / (blocks * (k - 1) - chi2) if blocks * (k - 1) > chi2 else np.inf
    nemenyi = sp.posthoc_nemenyi_friedman(pivot.to_numpy())
    nemenyi.index = nemenyi.columns = pivot.columns
    return {**result, "statistic": float(f_value), "nemenyi": nemenyi,
            "p_value": float(stats.f.sf(f_value, k - 1, (k - 1) * (blocks - 1)))}
