"""Does a bench worker pay the compiler's warm-up once, or once per model? N models (seeds) of
one configuration trained one after another in this process, compiled: each model's training
time and first epoch, and how many graphs dynamo compiled in all.

    python benchmarks/compile_reuse.py [--dataset movielens] [--epochs 2] [--models 10] --out FILE.json

Numbers are measurements, never test assertions.
"""

from __future__ import annotations

from dataclasses import replace

from common import dataset_run, environment, record, write

from robustag.training import default_config, train


def main() -> None:
    args, device, split = dataset_run(__doc__, epochs=2, add_options=lambda parser: parser.add_argument(
        "--models", type=int, default=10, help="models trained one after another"))
    import torch._dynamo.utils

    config = default_config("metric", epochs=args.epochs, patience=args.epochs)
    rows = []
    for seed in range(args.models):
        result = train(split, replace(config, seed=seed), device, compile=True)
        record(rows, {"seed": seed, "train_s": result.train_seconds, "first_epoch_s": result.history[0]["seconds"]})
    compiled = dict(torch._dynamo.utils.counters["stats"])
    write(args.out, {"dataset": args.dataset, "environment": environment(device, True), "rows": rows,
                     "dynamo_stats": compiled})
    print(compiled)


if __name__ == "__main__":
    main()
