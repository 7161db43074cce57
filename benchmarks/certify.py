"""Certified bounds against the attacks, and what each costs, on one data set (LastFM 10-core
by default): per learned model with a certificate, per budget ε, the certified lower bound of
NDCG@3, PGD-10 and PGD-100 (the upper bounds), the attack gap, and seconds per 1,000 posts.

    python benchmarks/certify.py [--dataset lastfm] [--epochs 10] [--device auto] --out FILE.json

Numbers are measurements, never test assertions; the committed ones are in reports/benchmarks/.
"""

from __future__ import annotations

import time

from common import dataset_run, environment, record, write

from robustag.attack import ATTACKS
from robustag.certify import certify
from robustag.robustness import evade
from robustag.training import default_config, train


def timed(work):
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def main() -> None:
    args, device, split = dataset_run(__doc__, epochs=10)
    per_1000 = 1000 / len(split.test)
    rows = []
    for name in ("metric", "pitf", "fm"):
        model = train(split, default_config(name, epochs=args.epochs), device, compile=args.compile).model
        for eps in (0.05, 0.1, 0.2):
            bound, certify_seconds = timed(lambda: certify(model, split.test, split.n_tags, eps, device=device))
            row = {"model": name, "eps": eps, "certified_ndcg@3": float(bound["ndcg@3"].mean()),
                   "certify_seconds_per_1000_posts": certify_seconds * per_1000}
            for steps in (10, 100):
                attacked, seconds = timed(lambda: evade(model, split, ATTACKS.create(f"pgd:eps={eps},steps={steps}"), device))
                row[f"pgd{steps}_ndcg@3"] = attacked.summary()["ndcg@3"]
                row[f"pgd{steps}_seconds_per_1000_posts"] = seconds * per_1000
            row["gap_ndcg@3"] = min(row["pgd10_ndcg@3"], row["pgd100_ndcg@3"]) - row["certified_ndcg@3"]
            record(rows, row)
    write(args.out, {"dataset": args.dataset, "epochs": args.epochs, **environment(device, args.compile), "rows": rows})


if __name__ == "__main__":
    main()
