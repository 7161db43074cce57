"""The exact worst case against the bound and the attacks, and what each costs, on one data set
(LastFM 10-core by default): per model with a verifier (metric, FM, PITF) and budget ε,
NDCG@3 under the joint certified bound, the exact value (lower and upper means, the share of
posts solved at each cutoff), auto in full, without the verifier's witnesses, and with its APGD
members alone, the combinatorial search alone, and seconds per 1,000 posts.

    python benchmarks/verify.py [--dataset lastfm] [--epochs 10] [--models metric,fm,pitf] [--eps 0.1] --out FILE.json

Numbers are measurements, never test assertions; the committed ones are in reports/benchmarks/.
"""

from __future__ import annotations

import time

from common import dataset_run, environment, record, write

from robustag.attack import ATTACKS
from robustag.certify import certify
from robustag.evaluation import CUTOFFS
from robustag.robustness import evade
from robustag.training import default_config, train
from robustag.verify import verify


def timed(work):
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def main() -> None:
    def options(parser):
        parser.add_argument("--models", default="metric,fm,pitf")
        parser.add_argument("--eps", default="0.1")

    args, device, split = dataset_run(__doc__, epochs=10, add_options=options)
    per_1000 = 1000 / len(split.test)
    rows = []
    for name in args.models.split(","):
        model = train(split, default_config(name, epochs=args.epochs), device, compile=args.compile).model
        for eps in map(float, args.eps.split(",")):
            bound = certify(model, split.test, split.n_tags, eps, device=device)
            found, seconds = timed(lambda: verify(model, split.test, split.n_tags, eps, device=device))
            row = {"model": name, "eps": eps, "certified_ndcg@3": float(bound["ndcg@3"].mean()),
                   "exact_ndcg@3": float(found.lower["ndcg@3"].mean()), "exact_upper_ndcg@3": float(found.upper["ndcg@3"].mean()),
                   **{f"solved@{n}": float(found.solved_at(n).mean()) for n in CUTOFFS},
                   "exact_ndcg@10": float(found.lower["ndcg@10"].mean()), "exact_upper_ndcg@10": float(found.upper["ndcg@10"].mean()),
                   "verify_seconds_per_1000_posts": seconds * per_1000}
            for label, spec in (("auto", "auto"), ("auto_without_witness", "auto:witness=false"),
                                ("auto_apgd_only", "auto:witness=false,combinatorial=false"),
                                ("combinatorial", "combinatorial")):
                attacked, seconds = timed(lambda: evade(model, split, ATTACKS.create(spec, eps=eps), device))
                row[f"{label}_ndcg@3"] = attacked.summary()["ndcg@3"]
                row[f"{label}_seconds_per_1000_posts"] = seconds * per_1000
                row[f"{label}_posts_above_exact"] = int((attacked.per_post["ndcg@3"] > found.upper["ndcg@3"] + 1e-12).sum())
            row["attacks_miss_ndcg@3"] = row["auto_without_witness_ndcg@3"] - row["exact_ndcg@3"]
            row["apgd_misses_ndcg@3"] = row["auto_apgd_only_ndcg@3"] - row["exact_ndcg@3"]
            row["bound_gives_away_ndcg@3"] = row["exact_ndcg@3"] - row["certified_ndcg@3"]
            record(rows, row)
    write(args.out, {"dataset": args.dataset, "epochs": args.epochs, **environment(device, args.compile), "rows": rows})


if __name__ == "__main__":
    main()
