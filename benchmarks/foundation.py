"""Foundation benchmark: training throughput and evaluation time of each model on LastFM 10-core.

    python benchmarks/foundation.py [--dataset lastfm] [--epochs 3] [--device auto] [--out FILE.json]

Training throughput is training triples per second over the epochs' training steps (the
per-epoch validation is timed apart); evaluation time is the full ranking of all tags for all
test posts, best of 3.
"""

from __future__ import annotations

import time


from common import environment, parser, record, write

from robustag import paths
from robustag.evaluation import evaluate, scores_of
from robustag.preprocess import load_split
from robustag.training import default_config, resolve_device, train


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def model_rows(split, device, epochs: int) -> list[dict]:
    """Training throughput and evaluation time of every model."""
    rows = []
    for model in ("metric", "pitf", "pop", "pop-user", "pop-item", "pop-mix"):
        learned = model in ("metric", "pitf")
        config = default_config(model, epochs=epochs, patience=epochs) if learned else default_config(model, mix=0.5)
        result = train(split, config, device)
        row = {"model": model}
        if result.history:
            train_seconds = sum(r["seconds"] for r in result.history)
            row["epoch_seconds"] = train_seconds / len(result.history)
            row["triples_per_second"] = split.train.n_assignments * len(result.history) / train_seconds
        row["eval_seconds"] = best_of(3, lambda: evaluate(scores_of(result.model), split.test, split.n_tags, device))
        row["posts_per_second"] = len(split.test) / row["eval_seconds"]
        record(rows, row)
    return rows


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--dataset", default="lastfm")
    options.add_argument("--epochs", type=int, default=3)
    args = options.parse_args()
    device = resolve_device(args.device)
    split = load_split(args.dataset, paths.data_dir())
    rows = model_rows(split, device, args.epochs)
    report = {"dataset": args.dataset, "train_triples": split.train.n_assignments, "test_posts": len(split.test),
              "tags": split.n_tags, **environment(device), "rows": rows}
    write(args.out, report)


if __name__ == "__main__":
    main()
