"""Certified bounds against the attacks, and what each costs, on one data set (LastFM 10-core
by default): per learned model with a certificate, per budget ε, the certified lower bound of
NDCG@3 (joint, the default, and per tag), PGD-10, PGD-100, APGD-100 and auto (the upper bounds), the attack gap (the best attack
minus the certificate), and seconds per 1,000 posts.

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


ATTACK_SPECS = {"pgd10": "pgd", "pgd100": "pgd:steps=100", "apgd100": "apgd", "auto": "auto"}


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
            per_tag, per_tag_seconds = timed(lambda: certify(model, split.test, split.n_tags, eps, device=device, joint=False))
            row = {"model": name, "eps": eps, "certified_ndcg@3": float(bound["ndcg@3"].mean()),
                   "certify_seconds_per_1000_posts": certify_seconds * per_1000,
                   "per_tag_certified_ndcg@3": float(per_tag["ndcg@3"].mean()),
                   "per_tag_seconds_per_1000_posts": per_tag_seconds * per_1000}
            for label, spec in ATTACK_SPECS.items():
                attacked, seconds = timed(lambda: evade(model, split, ATTACKS.create(spec, eps=eps), device))
                row[f"{label}_ndcg@3"] = attacked.summary()["ndcg@3"]
                row[f"{label}_seconds_per_1000_posts"] = seconds * per_1000
            row["gap_ndcg@3"] = min(row[f"{label}_ndcg@3"] for label in ATTACK_SPECS) - row["certified_ndcg@3"]
            record(rows, row)
    write(args.out, {"dataset": args.dataset, "epochs": args.epochs, **environment(device, args.compile), "rows": rows})


if __name__ == "__main__":
    main()
