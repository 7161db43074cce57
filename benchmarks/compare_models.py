"""Paired tests between two groups of a run that differ in model (the report compares
defenses within a model): e.g. SPAML-S metric against pop-mix on the same test posts.

    python benchmarks/compare_models.py runs/paper-movielens --spec paper-main \
        --a metric/spaml-s --b pop-mix/plain [--metric ndcg@3]

Each side is MODEL/DEFENSE_NAME on clean cells; per-post values are averaged over seeds.
Prints Wilcoxon and paired-t p-values, the mean difference and Cohen's d_z per dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robustag.stats import done_cells, paired_test, seed_averaged
from robustag.store import ResultStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--spec")
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    parser.add_argument("--metric", default="ndcg@3")
    args = parser.parse_args()
    store = ResultStore(args.run)
    cells = done_cells(store, args.spec)
    cells = cells[cells["surface"] == "none"]
    for dataset, group in cells.groupby("dataset"):
        sides = []
        for side in (args.a, args.b):
            model, defense = side.split("/")
            keys = list(group[(group["model"] == model) & (group["defense_name"] == defense)]["key"])
            sides.append(seed_averaged(store, keys, args.metric) if keys else None)
        if any(s is None for s in sides):
            continue
        result = paired_test(*sides)
        print(f"{dataset}: {args.a} {sides[0].mean():.4f} vs {args.b} {sides[1].mean():.4f} ({args.metric}); "
              f"Wilcoxon p = {result['wilcoxon_p']:.3g}, paired t p = {result['ttest_p']:.3g}, "
              f"d_z = {result['effect_size']:.3f}")


if __name__ == "__main__":
    main()
