"""A notebook-style tour of the Python API, runnable as a script (the test suite runs it).

    ROBUSTAG_DATA_DIR=../shared/data python examples/api_tour.py [OUT_FOLDER]

Trains the metric model on MovieLens with and without SPAML-S, attacks both, runs a small
benchmark matrix and reads its results back; every step returns objects, nothing prints but
this script.
"""

import sys
import tempfile
from pathlib import Path

import robustag as rt

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "tour"

# 1. Data: a TagSplit (train / validation / test posts), p-core filtered, cached on disk.
split = rt.load_dataset("movielens")
print(split.stats())

# 2. Training: the model, its configuration, history and clean test metrics.
plain = rt.train(split, model="metric", defense="plain", seed=0, epochs=3, device="cpu")
robust = rt.train(split, model="metric", defense="spaml-s", seed=0, epochs=3, device="cpu")
print(f"clean NDCG@3: plain {plain.metrics['ndcg@3']:.4f}, spaml-s {robust.metrics['ndcg@3']:.4f}")

# 3. Attacks: a DataFrame, one row per attack; the worst case per threat in its attrs.
for trained in (plain, robust):
    table = rt.attack(trained, split, ["pgd:eps=0.1", "fgsm"])
    print(trained.defense.split(":")[0], table[["attack", "attacked_ndcg@3", "rel_drop_ndcg@3"]].round(4).to_dict("records"))
    print("  worst case per post:", [round(w["worst_ndcg@3"], 4) for w in table.attrs["worst_case"]])

# 4. A benchmark matrix: resumable, stored in OUT/results.sqlite; a Run reads it back.
with rt.bench(datasets=["movielens"], defenses=["plain", "aml"], attacks=["fgsm"], seeds=1, epochs=3,
              out=out, device="cpu", report=False) as run:
    cells = run.cells()
    print(cells[["defense_name", "attack_name", "eps", "ndcg@3"]])
    print(run.per_post("ndcg@3").shape, "(posts × cells)")
    print(run.compare(reference="plain")[["defense", "attack", "mean_diff", "wilcoxon_p"]])
    print("report:", run.report())
