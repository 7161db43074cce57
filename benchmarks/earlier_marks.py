"""Before and after: every ▲/▼ of an earlier paper report against what the method-level
statistics of the rerun say about the same comparison.

An earlier report (robustag 0.1: 3 seeds, per-post Wilcoxon over seed-averaged values, Holm
over spec × metric) marked cells of its clean and robustness tables. For each mark this finds
the rerun's comparison of the same data set, model, defense and column in its
`SPEC-comparisons.csv` (the paired-by-seed difference with its 95% CI and Holm-corrected p)
and says whether the claim holds (significant, same direction), keeps its direction without
significance, or reverses.

    python benchmarks/earlier_marks.py --before-rev a1c470a --after reports/paper --out reports/paper/earlier-marks.csv

The earlier tables are read from git (`--before-rev`, path `reports/paper/`), so the rerun can
overwrite them. Writes a CSV and a Markdown table beside it (.md).
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
KEY = ["dataset", "model", "defense"]
FIRST_COLUMN = 3  # after dataset, model, defense
MARK = re.compile(r"[▲▼]")


def marked_cells(table: pd.DataFrame, spec: str) -> pd.DataFrame:
    """One row per marked cell of an earlier table: its key, column, text and direction."""
    rows = []
    for _, row in table.iterrows():
        for column in table.columns[FIRST_COLUMN:]:
            text = str(row[column])
            found = MARK.search(text)
            if found:
                rows.append({"spec": spec, **{k: row[k] for k in KEY}, "column": column, "before": text.strip(),
                             "before_direction": 1 if found.group() == "▲" else -1})
    return pd.DataFrame(rows, columns=["spec", *KEY, "column", "before", "before_direction"])


def comparison_of(column: str) -> tuple[str, str]:
    """(comparison, metric) in a comparisons table for a column of a clean or robustness table:
    a clean table's metric column is the clean comparison of that metric; a robustness table's
    attack column is the change under that attack, in NDCG@3."""
    if re.fullmatch(r"(F1|NDCG|P|R)@\d+", column):
        return "clean", column
    return f"change under {column}", "NDCG@3"


def verdict(direction: int, comparison: pd.Series | None) -> str:
    if comparison is None:
        return "not rerun"
    centre, low, high = re.findall(r"[+-]\d+\.\d+", comparison["Δ vs plain [95% CI]"])[:3]
    # The tables round to 4 decimals; the printed sign is the value's sign, so an interval
    # ending at "-0.0000" lies below zero.
    sign = lambda text: 1 if text.startswith("+") else -1
    p = comparison["p (Holm)"]
    significant = str(p).startswith("<") or (pd.notna(p) and float(p) < 0.05)
    if significant and sign(centre) == direction:
        return "holds (method level)"
    clear_of_zero = sign(low) == sign(high)
    if sign(centre) != direction and clear_of_zero:
        return "reversed"
    side = "same direction" if sign(centre) == direction else "opposite direction"
    return f"not supported after Holm ({side})" if clear_of_zero else f"not supported ({side}, CI [{low}, {high}] includes 0)"


def defense_name(label: str) -> str:
    """A defense's name from its label in a table (a tuned one carries its parameters after it)."""
    return re.split(r"[\s:(]", str(label).strip(), maxsplit=1)[0]


def claims(before: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """Each earlier mark with the rerun's figure for the same comparison and a verdict."""
    indexed = {(r["dataset"], r["model"], defense_name(r["defense"]), r["comparison"], r["metric"]): r
               for _, r in comparisons.iterrows()}
    rows = []
    for _, mark in before.iterrows():
        comparison, metric = comparison_of(mark["column"])
        found = indexed.get((mark["dataset"], mark["model"], defense_name(mark["defense"]), comparison, metric))
        rows.append({**{k: mark[k] for k in ("spec", *KEY)}, "comparison": f"{comparison}, {metric}",
                     "before (3 seeds, per-post test)": mark["before"],
                     "after: Δ vs plain [95% CI]": None if found is None else found["Δ vs plain [95% CI]"],
                     "after: p (Holm)": None if found is None else found["p (Holm)"],
                     "after: seeds": None if found is None else found["seeds"],
                     "verdict": verdict(mark["before_direction"], found)})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    cells = lambda values: "| " + " | ".join("" if pd.isna(v) else str(v) for v in values) + " |"
    return "\n".join([cells(table.columns), cells(["---"] * len(table.columns)), *map(cells, table.values)]) + "\n"


def earlier_tables(rev: str, folder: str = "reports/paper") -> dict[str, pd.DataFrame]:
    """The clean and robustness tables of `folder` at git revision `rev`, by spec name."""
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{rev}:{folder}"], capture_output=True, text=True,
                           check=True).stdout.split()
    tables = {}
    for name in names:
        found = re.fullmatch(r"(.+)-(clean|robustness)\.csv", name)
        if found:
            text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{folder}/{name}"], capture_output=True, text=True, check=True).stdout
            tables[name] = (found.group(1), pd.read_csv(io.StringIO(text), dtype=str))
    return tables


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--before-rev", required=True, help="git revision of the earlier report")
    options.add_argument("--after", type=Path, required=True, help="folder of the rerun's report (its *-comparisons.csv)")
    options.add_argument("--out", type=Path, required=True)
    args = options.parse_args()
    before = pd.concat([marked_cells(table, spec) for spec, table in earlier_tables(args.before_rev).values()],
                       ignore_index=True)
    found = sorted(args.after.glob("*-comparisons.csv"))
    comparisons = pd.concat([pd.read_csv(p, dtype=str) for p in found], ignore_index=True) if found else pd.DataFrame(
        columns=[*KEY, "comparison", "metric", "Δ vs plain [95% CI]", "p (Holm)", "seeds"])
    table = claims(before, comparisons)
    table.to_csv(args.out, index=False)
    args.out.with_suffix(".md").write_text(markdown(table))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
