"""Buying power with data: the paper's leave-last-post-out protocol against each user's last k
posts as test posts, on one data set. For each protocol, a 5-seed bench of the metric model
under plain and AML (at their defaults, a fixed number of epochs), then what the method-level
comparison of AML against plain (clean NDCG@3) could detect, its interval's width, where its
variance comes from, and what the protocol costs (test posts, training posts, training time).

    python benchmarks/test_posts.py --dataset lastfm --protocols 1,3 --epochs 10 --out reports/benchmarks/test-posts-lastfm.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import robustag as rt
from robustag.spec import BenchSpec


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--dataset", default="lastfm")
    options.add_argument("--protocols", default="1,3", help="test posts per user, comma-separated")
    options.add_argument("--epochs", type=int, default=10)
    options.add_argument("--seeds", type=int, default=5)
    options.add_argument("--workers", type=int, default=2)
    options.add_argument("--runs", type=Path, default=Path("runs/test-posts"))
    options.add_argument("--out", type=Path, default=Path("reports/benchmarks/test-posts-lastfm.csv"))
    args = options.parse_args()
    rows = []
    for k in (int(p) for p in args.protocols.split(",")):
        spec = BenchSpec(name=f"test-posts-{k}", datasets=[args.dataset], defenses=["plain", "aml"],
                         seeds=list(range(args.seeds)), params={"epochs": args.epochs}, test_posts=k)
        started = time.perf_counter()
        with rt.bench(spec, args.runs / f"k{k}", workers=args.workers, report=False) as run:
            wall = time.perf_counter() - started
            comparison = run.compare("plain").iloc[0]
            train_seconds = run.cells(status="done")["train_seconds"].sum()
        split = rt.load_dataset(args.dataset, test_posts=k)
        rows.append({"dataset": args.dataset, "test posts per user": k, "test posts": len(split.test),
                     "training posts": len(split.train), "seeds": int(comparison["seeds"]),
                     "Δ aml − plain (clean NDCG@3)": comparison["diff"], "CI low": comparison["ci_low"],
                     "CI high": comparison["ci_high"], "detectable Δ": comparison["mde"],
                     "seed share": comparison["seed_share"], "post share": comparison["post_share"],
                     "training s (all models)": train_seconds, "wall s": wall})
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False, float_format="%.4f")


if __name__ == "__main__":
    main()
