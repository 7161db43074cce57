"""Foundation benchmark: training throughput and evaluation time of each model on LastFM 10-core.

    python benchmarks/foundation.py [--dataset lastfm] [--epochs 3] [--device auto] [--out FILE.json]

Training throughput is training triples per second in the median epoch's training steps (the
per-epoch validation is timed apart; the first epoch, which pays for `--compile`, is reported
apart); evaluation time is the full ranking of all tags for all
test posts, best of 3.
"""

from __future__ import annotations

import statistics
import time

from common import dataset_run, environment, record, write

from robustag.evaluation import evaluate_model
from robustag.models import MODELS
from robustag.training import default_config, train


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def model_rows(split, device, epochs: int, compile: bool = False) -> list[dict]:
    """Training throughput and evaluation time of every model."""
    rows = []
    for model in ("metric", "pitf", "fm", "pop", "pop-user", "pop-item", "pop-mix"):
        learned = MODELS.declared(model, "learned", True)
        config = default_config(model, epochs=epochs, patience=epochs) if learned else default_config(
            model, **({"mix": 0.5} if model == "pop-mix" else {}))
        result = train(split, config, device, compile=compile)
        row = {"model": model}
        if result.history:
            row["first_epoch_seconds"] = result.history[0]["seconds"]
            row["epoch_seconds"] = statistics.median(r["seconds"] for r in result.history)
            row["triples_per_second"] = split.train.n_assignments / row["epoch_seconds"]
        row["eval_seconds"] = best_of(3, lambda: evaluate_model(result.model, split.test, split.n_tags, device))
        row["posts_per_second"] = len(split.test) / row["eval_seconds"]
        record(rows, row)
    return rows


def main() -> None:
    args, device, split = dataset_run(__doc__, epochs=3)
    rows = model_rows(split, device, args.epochs, args.compile)
    report = {"dataset": args.dataset, "train_triples": split.train.n_assignments, "test_posts": len(split.test),
              "tags": split.n_tags, **environment(device, args.compile), "rows": rows}
    write(args.out, report)


if __name__ == "__main__":
    main()
