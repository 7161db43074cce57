"""The diagnostic benchmark scripts run on planted data (their figures are in the reports)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from earlier_marks import claims, marked_cells  # noqa: E402
from selfpaced_noise import replaced_keys, tracing  # noqa: E402

from robustag.attack import ATTACKS  # noqa: E402
from robustag.training import default_config, train  # noqa: E402


def test_self_paced_admission_is_split_between_replaced_and_intact_triples(planted):
    poisoned = ATTACKS.create("tag-replace:rate=0.3").poison(planted, seed=0)
    replaced = replaced_keys(planted, poisoned)
    # every replacement is a new triple, unless it lands on a tag its post already has
    assert 0.9 * 0.3 * planted.train.n_assignments <= len(replaced) <= round(0.3 * planted.train.n_assignments)
    regime = tracing("spaml-h", torch.as_tensor(replaced), planted.n_items, planted.n_tags)
    result = train(poisoned, default_config("metric", epochs=3, dim=16, seed=0), torch.device("cpu"), regime=regime)
    share = len(replaced) / poisoned.train.n_assignments
    for epoch in result.history:
        split_mean = share * epoch["admitted_replaced"] + (1 - share) * epoch["admitted_intact"]
        assert epoch["admitted"] == pytest.approx(split_mean, abs=0.05)  # batches vary in their share of replaced
        assert 0 <= epoch["admitted_replaced"] <= 1 and 0 <= epoch["admitted_intact"] <= 1
    assert np.mean([e["adv_loss_replaced"] for e in result.history]) > np.mean([e["adv_loss_intact"] for e in result.history])


def test_tracing_refuses_a_defense_without_self_paced_weights():
    with pytest.raises(SystemExit, match="aml: not a self-paced defense"):
        tracing("aml", torch.zeros(0, dtype=torch.long), 1, 1)


REPO = Path(__file__).resolve().parents[1]


def figures_missing_from_tables(text: str, folder: Path, decimals: int = 3, tables: tuple[str, ...] = ("**/*.csv",)) -> tuple[list[str], int]:
    """The numbers with `decimals` or more decimals (with their sign where they have one) that
    `text` quotes and no CSV table under `folder` (matching one of the patterns `tables`) holds;
    and how many it quotes."""
    import re

    tables = " ".join(p.read_text() for pattern in tables for p in folder.glob(pattern))
    quoted = re.findall(rf"[+-]?\d+\.\d{{{decimals},}}", text)
    return [number for number in quoted if number not in tables], len(quoted)


def test_every_figure_the_readme_quotes_from_the_robust_training_report_is_in_its_tables():
    """The README's section on the positive control quotes only what the committed report's
    CSV tables hold (each number with 3 or more decimals, with its sign where it has one)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Defenses that answer the evaluated threat"):readme.index("## Statistics and reports")]
    missing, quoted = figures_missing_from_tables(section, REPO / "reports" / "robust-training")
    assert quoted >= 15 and not missing, f"quoted in README.md but in no table of reports/robust-training: {missing}"


@pytest.mark.parametrize("report, decimals, at_least", [("paper-tuning", 4, 20), ("paper/earlier-2026-11-30", 3, 60)])
def test_every_figure_a_report_quotes_is_in_its_own_tables(report, decimals, at_least):
    """The tuning report, and the 30 November paper run kept as written, quote only their own CSVs."""
    folder = REPO / "reports" / report
    missing, quoted = figures_missing_from_tables((folder / "README.md").read_text(), folder, decimals=decimals)
    assert quoted >= at_least and not missing, f"quoted in reports/{report}/README.md but in none of its tables: {missing}"


def stored_values(folder: Path) -> list[float]:
    """Every number the JSON, CSV and Markdown tables under `folder` hold (its README aside)."""
    import json
    import re

    def walk(value) -> list[float]:
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            return [number for item in value for number in walk(item)]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [float(value)]
        return [float(number) for number in re.findall(r"\d+\.\d+", value)] if isinstance(value, str) else []

    values = [number for path in folder.rglob("*.json") for number in walk(json.loads(path.read_text()))]
    tables = [path for pattern in ("*.csv", "*.md") for path in folder.rglob(pattern) if path.name != "README.md"]
    return values + [float(number) for path in tables for number in re.findall(r"\d+\.\d+", path.read_text())]


def test_every_figure_of_the_benchmarks_readme_rounds_a_stored_measurement():
    """reports/benchmarks/README.md quotes measurements its scripts stored (JSON, CSV): each number
    with two or more decimals is one of them rounded to the decimals shown (the scripts keep full
    precision; a ratio the README quotes is written by the script that measured it)."""
    import re

    import numpy as np

    folder = REPO / "reports" / "benchmarks"
    values = np.abs(np.array(stored_values(folder)))
    quoted = re.findall(r"(?<![\d.])\d+\.\d{2,}", (folder / "README.md").read_text())
    missing = [number for number in quoted
               if not np.any(np.abs(values - float(number)) <= 0.5 * 10.0 ** -len(number.split(".")[1]) + 1e-12)]
    assert len(quoted) >= 300 and not missing, f"quoted in reports/benchmarks/README.md but stored nowhere: {missing}"


def test_the_paper_report_quotes_only_the_reruns_tables_and_its_claims_as_tested():
    """Every figure of reports/paper/README.md is in the two 5-seed runs' CSVs (not the earlier
    report's; the top level holds the newer rerun, `earlier-2026-11-30/` the run its sentences
    compare with), and each cell of its claims table ("Δ [95% CI], Holm p: verdict") is one row
    of paper-claims.csv."""
    import re

    import pandas as pd

    folder = REPO / "reports" / "paper"
    readme = (folder / "README.md").read_text()
    missing, quoted = figures_missing_from_tables(readme, folder, tables=("earlier-2026-11-30/*.csv", "*.csv"))
    assert quoted >= 60 and not missing, f"quoted in reports/paper/README.md but in none of the rerun's tables: {missing}"
    claims = pd.read_csv(folder / "paper-claims.csv", dtype=str).fillna("")
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "Holm p: verdict" not in line and "---" not in line]
    cell = r"([+-]\d\.\d{4} \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]), ([^ :|]+): ([^|]+?) \|"
    checked = 0
    for line in rows:
        for difference, p, verdict in re.findall(cell, line):
            (row,) = claims[(claims["Δ [95% CI]"] == difference) & (claims["metric"] == "NDCG@3")].to_dict("records")
            assert row["p (Holm)"] == p and row["verdict"] == verdict, (line, row)
            checked += 1
    assert checked >= 20


def test_the_readme_summary_of_the_paper_rerun_quotes_only_its_tables():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("The SPAML paper's claims are tested"):readme.index("## Benchmarks: specs")]
    missing, quoted = figures_missing_from_tables(section, REPO / "reports" / "paper", decimals=4, tables=("*.csv",))
    assert quoted >= 8 and not missing, f"quoted in README.md but in no table of reports/paper: {missing}"


def test_the_committed_paper_tables_regenerate_from_the_committed_run(tmp_path):
    """A fresh clone rebuilds the paper run's results from reports/paper/paper-run.zip (no
    retraining) and the report of its first spec is the committed one, table for table."""
    import robustag as rt

    committed = REPO / "reports" / "paper"
    rebuilt = rt.Run.from_archive(committed / "paper-run.zip", tmp_path / "paper").report(specs=["paper-main"])
    tables = sorted(p.name for p in rebuilt.glob("paper-main-*.csv"))
    assert len(tables) == 2  # clean and comparisons: paper-main has no attack
    for name in tables:
        assert (rebuilt / name).read_text() == (committed / name).read_text(), name


def test_each_earlier_mark_is_met_by_the_reruns_method_level_figure_and_a_verdict():
    import pandas as pd

    earlier = pd.DataFrame({"dataset": ["lastfm"] * 5, "model": ["metric (d=128)"] * 5,
                            "defense": ["aml", "spaml-h", "spaml-s", "curriculum", "rank-adv"],
                            "NDCG@3": ["0.55 ± 0.01 ▲", "0.56 ± 0.01 ▼", "0.57 ± 0.01 ▲", "0.58 ± 0.01 ▲", "0.5 ▼"],
                            "F1@3": ["0.39"] * 5})
    before = marked_cells(earlier, "paper-main")
    assert list(before["before_direction"]) == [1, -1, 1, 1, -1] and set(before["column"]) == {"NDCG@3"}
    rerun = pd.DataFrame({"dataset": ["lastfm"] * 4, "model": ["metric (d=128)"] * 4,
                          "defense": ["aml (eps=0.2, beta=2)", "spaml-h", "spaml-s", "rank-adv"],
                          "comparison": ["clean"] * 4, "metric": ["NDCG@3"] * 4,
                          "Δ vs plain [95% CI]": ["+0.0200 [+0.0100, +0.0300] ▲", "+0.0100 [+0.0050, +0.0150]",
                                                  "+0.0040 [-0.0100, +0.0180]", "-0.0076 [-0.0152, -0.0000]"],
                          "p (Holm)": ["< 0.001", "0.2", "1", "0.5"], "seeds": ["5"] * 4})
    verdicts = list(claims(before, rerun)["verdict"])
    assert verdicts[0] == "holds (method level)"  # a tuned defense's label still finds its comparison
    assert verdicts[1] == "reversed"  # marked ▼, the rerun's CI lies above 0
    assert verdicts[2].startswith("not supported (same direction") and verdicts[3] == "not rerun"
    # A bound rounded to "-0.0000" is still below zero: the interval excludes it.
    assert verdicts[4] == "not supported after Holm (same direction)"


def test_every_paper_claim_names_a_spec_and_sides_that_the_paper_specs_run():
    from robustag.claims import load_claims
    from robustag.spec import load_specs

    repo = Path(__file__).resolve().parents[1]
    specs = {spec.name: spec for spec in load_specs(repo / "benchmarks" / "paper.toml")}
    claims = load_claims(repo / "benchmarks" / "paper-claims.toml")
    assert len(claims) >= 14
    for claim in claims:
        spec = specs[claim.spec]
        for side in (claim.better, claim.than):
            model, defense = side.split("/")
            assert model in spec.models and defense in spec.defenses, (claim.id, side)
        named = [a.split(":")[0] for a in spec.attacks]
        assert claim.attack is None or any(n == claim.attack or n.startswith(claim.attack + "-") for n in named), claim.id
