"""Claims tested as stated (`robustag claims`): each side found once, the same method-level
figures the report gives, Holm over the file, verdicts, and bad claims refused by name."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import robustag as rt
from robustag.claims import Claim, claims_table, load_claims, verify_claims
from robustag.errors import RobustagError
from robustag.spec import BenchSpec
from robustag.stats import aggregate, compare_to_reference, done_cells
from robustag.store import ResultStore
from conftest import run_main


@pytest.fixture(scope="module")
def claimed_run(planted_path, tmp_path_factory):
    spec = BenchSpec(name="claimed", datasets=[f"tsv:{planted_path}"], models=["metric"], defenses=["plain", "aml"],
                     attacks=["pgd:steps=3"], eps=[0.1, 0.2], seeds=[0, 1, 2], params={"epochs": 3, "dim": 8}, p_core=3)
    folder = tmp_path_factory.mktemp("claims") / "run"
    with rt.bench(spec, folder, data_dir=folder.parent, device="cpu", compile=False, report=False):
        pass
    return folder, f"tsv:{planted_path}"


def _file(path, body: str):
    path.write_text(body)
    return path


def test_a_claim_gets_the_figures_the_report_gives_and_its_mirror_the_opposite(claimed_run):
    folder, dataset = claimed_run
    claims = [Claim("clean", "AML is more accurate", "metric/aml", "metric/plain", metrics=["ndcg@3", "f1@3"]),
              Claim("mirror", "plain is more accurate", "metric/plain", "metric/aml"),
              Claim("pgd", "AML loses less under PGD", "metric/aml", "metric/plain", attack="pgd", strength=0.2,
                    family="robustness")]
    verified = verify_claims(folder, claims).set_index(["claim", "metric"])
    assert len(verified) == 4 and set(verified["dataset"]) == {dataset}
    store = ResultStore.existing(folder)
    table = aggregate(store, done_cells(store), ["ndcg@3", "f1@3"], ci_metrics=[])
    level = compare_to_reference(store, table, ["ndcg@3"], "plain").set_index("attack").loc[""]
    change = compare_to_reference(store, table, "ndcg@3", "plain", change=True)
    store.close()
    clean = verified.loc[("clean", "ndcg@3")]
    assert clean["diff"] == pytest.approx(level["diff"]) and clean["ci_low"] == pytest.approx(level["ci_low"])
    assert verified.loc[("mirror", "ndcg@3"), "diff"] == pytest.approx(-clean["diff"])
    under = change[[math.isclose(e, 0.2) for e in change["eps"]]].iloc[0]
    assert verified.loc[("pgd", "ndcg@3"), "diff"] == pytest.approx(under["diff"])
    assert verified.loc[("pgd", "ndcg@3"), "under"] == "change under pgd eps = 0.2"
    sides = verified.loc[("pgd", "ndcg@3")]  # under attack each side is its change from clean, which Δ compares
    assert sides["better_mean"] - sides["than_mean"] == pytest.approx(sides["diff"])
    # Holm within each family: the corrected p is at least the raw one, a family of one keeps it
    assert (verified["p_holm"] >= verified["p"] - 1e-12).all()
    assert verified.loc[("pgd", "ndcg@3"), "p_holm"] == pytest.approx(verified.loc[("pgd", "ndcg@3"), "p"])
    assert list(verified.index.get_level_values("claim")) == ["clean", "clean", "mirror", "pgd"]  # the file's order
    for _, row in verified.iterrows():
        expected = ("holds" if row["diff"] > 0 else "reversed") if row["significant"] else "inconclusive (detectable from "
        assert row["verdict"].startswith(expected)
        assert row["significant"] or row["verdict"] == f"inconclusive (detectable from {row['mde']:.4f})"


def test_a_claim_with_a_margin_is_tested_for_equivalence(claimed_run):
    folder, _ = claimed_run
    wide, narrow = (Claim(f"m{m}", "AML loses as much as plain", "metric/aml", "metric/plain", attack="pgd",
                          strength=0.2, margin=m) for m in (1.0, 1e-6))
    verified = verify_claims(folder, [wide, narrow]).set_index("claim")
    assert verified.loc["m1.0", "se"] > 0  # a real difference with a real spread
    assert verified.loc["m1.0", "verdict"] == "equivalent within ±1"  # NDCG@3 cannot differ by 1
    assert not verified.loc["m1e-06", "verdict"].startswith("equivalent")
    row = verified.loc["m1.0"]
    lower = stats.t.sf((row["diff"] + 1.0) / row["se"], row["df"])
    upper = stats.t.sf((1.0 - row["diff"]) / row["se"], row["df"])
    assert row["p_equivalence"] == pytest.approx(max(lower, upper))
    assert verified["p_equivalence_holm"].min() >= verified["p_equivalence"].min()  # Holm over the family's margins


def test_the_two_one_sided_tests_hold_their_level_at_the_margin():
    """A true difference exactly at the margin is declared equivalent in at most 5% of designs."""
    from robustag.stats import crossed_test, equivalence_p
    from robustag.testing import CALIBRATION_REGIMES

    regime = next(r for r in CALIBRATION_REGIMES if r.name == "post-dominated, MovieLens-like")
    rng = np.random.default_rng(11)
    results = [crossed_test(regime.simulate(rng, shift=0.03)) for _ in range(1000)]
    equivalent = np.mean([equivalence_p(r["diff"], r["se"], r["df"], 0.03) < 0.05 for r in results])
    assert 0.03 <= equivalent <= 0.065


def test_claims_command_writes_the_verdicts(claimed_run, tmp_path):
    folder, _ = claimed_run
    claims = _file(tmp_path / "claims.toml", '[[claim]]\nid = "a"\nsays = "AML beats plain"\nbetter = "metric/aml"\n'
                                             'than = "metric/plain"\nmetrics = ["ndcg@3", "f1@3"]\n')
    run_main("claims", folder, claims, "--csv", tmp_path / "verdicts.csv")
    written = pd.read_csv(tmp_path / "verdicts.csv")
    assert list(written["metric"]) == ["NDCG@3", "F1@3"] and written["seeds"].eq(3).all()
    assert written["Δ [95% CI]"].str.fullmatch(r"[+-]\d\.\d{4} \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]").all()


@pytest.mark.parametrize("body, fragment", [
    ('[[claim]]\nid = "x"\nsays = "s"\nbetter = "metric/aml"\nthan = "metric/plain"\nbogus = 1\n', "claim 'x': unknown key 'bogus'"),
    ('[[claim]]\nid = "x"\nsays = "s"\nbetter = "metric/aml"\n', "claim 'x': missing key 'than'"),
    ('[[claim]]\nid = "x"\nsays = "s"\nbetter = "aml"\nthan = "metric/plain"\n', "better 'aml': expected MODEL/DEFENSE"),
    ('title = "no claims"\n', "no [[claim]] tables"),
])
def test_a_malformed_claims_file_is_refused_naming_the_claim(tmp_path, body, fragment):
    with pytest.raises(RobustagError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_claims(_file(tmp_path / "claims.toml", body))


def test_a_claim_the_run_cannot_answer_is_refused_naming_it(claimed_run):
    folder, dataset = claimed_run
    with pytest.raises(RobustagError, match="claim 'gone': no data set of .* holds both metric/spaml-s and metric/plain"):
        verify_claims(folder, [Claim("gone", "s", "metric/spaml-s", "metric/plain")])
    with pytest.raises(RobustagError, match="claim 'two': metric/aml on .* matches 2 configurations"):
        verify_claims(folder, [Claim("two", "s", "metric/aml", "metric/plain", attack="pgd")])  # ε 0.1 and 0.2
    with pytest.raises(RobustagError, match="claim 'm': metric 'ndcg@7' is not stored"):
        verify_claims(folder, [Claim("m", "s", "metric/aml", "metric/plain", metrics=["ndcg@7"])])


def test_in_a_run_still_going_claims_say_what_is_not_run_yet(claimed_run, tmp_path):
    import shutil

    from robustag.planning import plan

    folder, dataset = claimed_run
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    more = BenchSpec(name="claimed", datasets=[dataset], models=["metric"], defenses=["plain", "aml", "spaml-s"],
                     attacks=["pgd:steps=3"], eps=[0.1, 0.2], seeds=[0, 1, 2, 3], params={"epochs": 3, "dim": 8}, p_core=3)
    store = ResultStore(copy)
    for name, rows in plan([more]).rows.items():
        store.add_cells(rows, name)  # planned, not run: a fourth seed and a new defense
    store.close()
    verified = verify_claims(copy, [Claim("new", "s", "metric/spaml-s", "metric/plain"),
                                    Claim("old", "s", "metric/aml", "metric/plain")]).set_index("claim")
    assert verified.loc["new", "verdict"] == "not run yet" and pd.isna(verified.loc["new", "p"])
    assert verified.loc["old", "verdict"].endswith("so far (the run is unfinished)") and verified.loc["old", "seeds"] == 3
    shown = claims_table(verified.reset_index()).set_index("claim")
    assert shown.loc["new", "Δ [95% CI]"] == "" and shown.loc["new", "seeds"] == ""


def test_power_designs_the_next_run_from_a_pilot(claimed_run, tmp_path):
    from robustag.stats import design_mde

    folder, _ = claimed_run
    table = rt.power(folder, effect=0.02)
    assert len(table) and set(table["seeds"]) == {3}
    for row in table.itertuples():
        components = rt.Run(folder).compare().set_index(["defense", "attack"]).loc[(row.defense, row.attack)]
        parts = (components["var_seed"], components["var_post"], components["var_residual"])
        assert design_mde(*parts, seeds=3, posts=row.posts) == pytest.approx(row.mde, rel=0.05)  # the pilot, as tested
        if not pd.isna(row.needed):
            needed = int(row.needed)
            assert design_mde(*parts, seeds=needed, posts=row.posts) <= 0.02
            assert needed == 3 or design_mde(*parts, seeds=needed - 1, posts=row.posts) > 0.02
    code = run_main("power", folder, "--effect", "0.02", "--csv", tmp_path / "power.csv")
    assert code is None and len(pd.read_csv(tmp_path / "power.csv")) == len(table)
    with pytest.raises(RobustagError, match="effect"):
        rt.power(folder, effect=0)
