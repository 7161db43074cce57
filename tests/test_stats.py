"""Method-level statistics: the crossed seed × post test against statsmodels, its calibration
and power on simulated per-post values (seconds), the seeds and blocks rules, and an end-to-end
null control: plain against plain from another initialisation gets no mark."""

import textwrap

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from robustag.stats import MIN_BLOCKS, crossed_test, friedman_ranking, holm
from robustag.testing import CALIBRATION_REGIMES, Regime, calibration

POSTS = 933  # LastFM's test posts
# Realistic sizes, from the committed runs: a model's mean NDCG@3 varies by 0.006–0.012 between
# seeds; per-post NDCG@3 differences between two models have a std of about 0.2.
SEED_SD, POST_SD, RESIDUAL_SD = 0.012, 0.1, 0.2


def _simulate(rng, seeds, shift=0.0, seed_sd=SEED_SD, post_sd=POST_SD):
    return (shift + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, post_sd, (1, POSTS))
            + rng.normal(0, RESIDUAL_SD, (seeds, POSTS)))


def test_the_variance_components_are_statsmodels_two_way_anova():
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(4)
    diff = _simulate(rng, 4, seed_sd=0.3)[:, :12]  # small enough for an OLS with a column per post
    long = pd.DataFrame({"d": diff.ravel(), "seed": np.repeat(np.arange(4), 12), "post": np.tile(np.arange(12), 4)})
    anova = anova_lm(ols("d ~ C(seed) + C(post)", long).fit())
    ms = (anova["sum_sq"] / anova["df"]).to_numpy()  # seed, post, residual
    result = crossed_test(diff)
    assert ms[0] > ms[2] and ms[1] > ms[2]  # both components positive: the full combination
    combined = ms[0] + ms[1] - ms[2]
    bounded = ms[0] * 3 / stats.chi2.ppf(0.25, 3)  # the seed mean square at its upper 75% limit, for the df
    df = (bounded + ms[1] - ms[2]) ** 2 / (bounded ** 2 / 3 + ms[1] ** 2 / 11 + ms[2] ** 2 / 33)
    se = np.sqrt(combined / 48)
    assert result["p"] == pytest.approx(2 * stats.t.sf(abs(diff.mean()) / se, df), rel=1e-9)
    assert result["ci_high"] - result["diff"] == pytest.approx(stats.t.ppf(0.975, df) * se, rel=1e-9)


def test_one_seed_gives_a_difference_but_no_method_level_interval():
    from robustag.display import interval_text

    result = crossed_test(_simulate(np.random.default_rng(5), 1))
    assert np.isfinite(result["diff"]) and np.isnan(result["ci_low"]) and np.isnan(result["p"])
    assert interval_text(result["diff"], result["ci_low"], result["ci_high"]).endswith(" [no interval]")
    same = crossed_test(np.full((3, 10), 0.25))  # identical differences are exact
    assert same["ci_low"] == same["ci_high"] == pytest.approx(0.25)


@pytest.mark.parametrize("regime", CALIBRATION_REGIMES, ids=lambda regime: regime.name)
def test_the_method_level_test_holds_its_level_both_ways(regime):
    """No true difference: p < 0.05 in 3.5–6.5% of 2,000 simulated designs, and the 95% interval
    holds the true mean in 93.5–96.5% (neither liberal nor conservative), from seed- to
    post-dominated, 3 to 10 seeds, 184 to 10,000 posts, posts clustered by item."""
    found = calibration(regime, 2000, seed=1)  # the true mean is 0: a rejection is a false positive
    assert 0.035 <= found["rejected"] <= 0.065 and 0.935 <= found["covered"] <= 0.965, found


def test_the_per_post_test_over_seed_means_is_far_off_with_a_seed_effect():
    rng = np.random.default_rng(3)
    rejected = np.mean([stats.ttest_1samp(_simulate(rng, 5).mean(0), 0).pvalue < 0.05 for _ in range(500)])
    assert rejected > 0.10  # why the per-post test is only a secondary figure


def test_clustered_posts_need_the_cluster_robust_post_term():
    regime = Regime("mostly items", 5, 933, 0.05, 0.05, item_share=0.8)
    rng = np.random.default_rng(4)
    unclustered = np.mean([crossed_test(regime.simulate(rng))["p"] < 0.05 for _ in range(1000)])
    assert unclustered > 0.09  # posts on one item treated as independent: too many false positives
    assert 0.035 <= calibration(regime, 1000, seed=4)["rejected"] <= 0.065  # clustered by item: the level


@pytest.mark.parametrize("effect", [2.0, 3.0])
def test_power_matches_the_closed_form_where_posts_dominate(effect):
    """Power at Δ = 2 and 3 standard errors against the noncentral t's (the design's df)."""
    regime = next(r for r in CALIBRATION_REGIMES if r.name == "post-dominated, MovieLens-like")
    found = calibration(regime, 1000, seed=5, shift=effect * 0.01)  # Var(mean) = 0.01² by construction
    critical = stats.t.ppf(0.975, found["df"])
    expected = stats.nct.sf(critical, found["df"], effect) + stats.nct.cdf(-critical, found["df"], effect)
    assert abs(found["rejected"] - expected) < 0.05, (found, expected)


def test_the_detectable_effect_is_found_with_80_percent_power():
    regime = next(r for r in CALIBRATION_REGIMES if r.name == "post-dominated, MovieLens-like")
    mde = calibration(regime, 300, seed=6)["mde"]
    assert 0.75 <= calibration(regime, 1000, seed=7, shift=mde)["rejected"] <= 0.85


def test_the_method_level_test_finds_a_real_difference():
    rng = np.random.default_rng(7)
    found = sum(crossed_test(_simulate(rng, 5, shift=0.04))["p"] < 0.05 for _ in range(300))
    assert found / 300 >= 0.9  # Δ = 0.04 NDCG@3 with 5 seeds


def test_no_mark_with_fewer_than_three_seeds():
    frame = pd.DataFrame({"p": [1e-9, 1e-9], "seeds": [2, 3], "wilcoxon_p": [1e-9, 1e-9], "ttest_p": [1e-9, 1e-9]})
    marked = holm(frame)
    assert list(marked["significant"]) == [False, True]
    assert marked["p_holm"].iloc[0] == pytest.approx(2e-9)


def _ranking_table(blocks: int, rng) -> pd.DataFrame:
    rows = []
    for block in range(blocks):
        for defense, strength in (("plain", 0.0), ("aml", 0.02), ("spaml-s", 0.04)):
            rows.append({"dataset": f"d{block}", "model": "metric", "params": "{}", "attack": "", "defense": defense,
                         "ndcg@3_mean": 0.3 + strength + rng.normal(0, 0.02)})
            rows.append({"dataset": f"d{block}", "model": "metric", "params": "{}", "attack": "pgd", "defense": defense,
                         "ndcg@3_mean": 0.1 + rng.normal(0, 0.05)})  # attacked: not an independent block
    return pd.DataFrame(rows)


def test_rank_tests_need_enough_independent_blocks():
    rng = np.random.default_rng(0)
    few = friedman_ranking(_ranking_table(MIN_BLOCKS - 1, rng), "ndcg@3")
    assert few["blocks"] == MIN_BLOCKS - 1 and few["p_value"] is None and list(few["ranks"].index)[0] == "spaml-s"
    table = _ranking_table(8, rng)
    enough = friedman_ranking(table, "ndcg@3")
    assert enough["blocks"] == 8  # clean cells only: the attacked ones are the same models
    pivot = table[table["attack"] == ""].pivot_table(index="dataset", columns="defense", values="ndcg@3_mean")
    chi2 = stats.friedmanchisquare(*[pivot[c] for c in pivot.columns]).statistic
    f_value = 7 * chi2 / (8 * 2 - chi2)
    assert enough["statistic"] == pytest.approx(f_value) and enough["p_value"] == pytest.approx(stats.f.sf(f_value, 2, 14))


CONTROL = textwrap.dedent('''
    """plain-again: plain training from another random initialisation (the null control)."""
    import torch

    from robustag.defense import Defense


    class PlainAgain(Defense):
        name = "plain-again"
        summary = "plain, with every table re-drawn at the start (another initialisation)"

        def begin_epoch(self, epoch, model):
            if epoch == 0:
                with torch.no_grad():
                    for table in model.tables().values():
                        table.weight.copy_(table.weight[torch.randperm(len(table.weight))])

        def loss(self, model, batch):
            loss = model.training_loss(batch)
            return loss, {"loss": loss.detach()}
''')


def test_end_to_end_null_control_gets_no_mark(tmp_path, real_data_dir):
    import robustag as rt

    plugin = tmp_path / "plain_again.py"
    plugin.write_text(CONTROL)
    with rt.bench(datasets=["movielens"], models=["metric"], defenses=["plain", "plain-again"], attacks=["fgsm"],
                  seeds=5, epochs=10, out=tmp_path / "run", data_dir=real_data_dir, device="cpu", plugins=[plugin]) as run:
        cells = run.cells(status="done")
        first = cells[(cells["attack_name"] == "clean") & (cells["seed"] == 0)].set_index("defense_name")["ndcg@3"]
        assert first["plain"] != first["plain-again"]  # the control really trains another model
    folder = tmp_path / "run" / "report"
    for table in ("default-clean", "default-robustness"):
        text = (folder / f"{table}.csv").read_text()
        assert "▲" not in text and "▼" not in text
    comparisons = pd.read_csv(folder / "default-comparisons.csv")
    assert len(comparisons) == 3 and set(comparisons["seeds"]) == {5}  # F1@3, NDCG@3 clean; NDCG@3 change under fgsm
    assert not comparisons["Δ vs plain [95% CI]"].str.contains("▲|▼").any()


def test_a_comparison_is_tested_once_per_report(tmp_path, real_data_dir):
    import robustag as rt
    from robustag.spec import BenchSpec

    specs = [BenchSpec(name=name, defenses=["plain", "aml"], attacks=attacks, seeds=[0, 1], params={"epochs": 2})
             for name, attacks in (("first", ["fgsm"]), ("second", ["fgsm", "pgd"]))]
    with rt.bench(specs, out=tmp_path / "run", data_dir=real_data_dir, device="cpu"):
        pass
    folder = tmp_path / "run" / "report"
    first = pd.read_csv(folder / "first-comparisons.csv")
    second = pd.read_csv(folder / "second-comparisons.csv")
    assert len(first) == 3  # clean F1@3 and NDCG@3, and the change under fgsm
    assert len(second) == 1 and second.loc[0, "comparison"] == "change under pgd ε=0.1"  # fgsm and clean: tested above
    assert "3 comparisons were tested in an earlier section" in (folder / "report.md").read_text()


def test_a_comparison_reads_per_post_values_from_any_reader():
    """The statistics need no results database: per-post arrays behind `per_post` and `meta`
    (a `RunReader`) give the method-level test on them."""
    from robustag.stats import compare_groups

    rng = np.random.default_rng(3)
    ours, theirs = rng.normal(0.52, 0.1, (4, 300)), rng.normal(0.50, 0.1, (4, 300))
    values = {f"ours{s}": ours[s] for s in range(4)} | {f"theirs{s}": theirs[s] for s in range(4)}

    class Arrays:
        def per_post(self, keys, metric):
            return {key: values[key] for key in keys}

        def meta(self, key, default=None):
            return default

    row = lambda name: {"cell_seeds": [0, 1, 2, 3], "cells": [f"{name}{s}" for s in range(4)], "dataset": "d"}
    found = compare_groups(Arrays(), [(row("ours"), row("theirs"))], "ndcg@3")
    assert found["diff"] == pytest.approx((ours - theirs).mean())
    assert found == {**found, **crossed_test(ours - theirs)}
