"""Grid search of a model's training defaults, selected on validation NDCG@3 (never on test).

    python benchmarks/sweep_defaults.py --dataset movielens --model metric \
        --grid dim=64,128,256 --grid lr=0.001,0.002,0.005 --grid margin=0.25,0.5,1.0

Prints one row per configuration (validation and test F1@3 / NDCG@3, best epoch) as Markdown,
with pop-mix as the reference line, and marks the configuration that validation picks.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from robustag import paths
from robustag.evaluation import evaluate_model
from robustag.preprocess import load_split
from robustag.training import default_config, resolve_device, train


def parse_grid(items: list[str]) -> dict[str, list]:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        grid[key] = [_number(v) for v in values.split(",")]
    return grid


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="lastfm")
    parser.add_argument("--model", default="metric")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    split = load_split(args.dataset, paths.data_dir())
    grid = parse_grid(args.grid)
    rows = []
    reference = train(split, default_config("pop-mix"), device)
    ref_test = evaluate_model(reference.model, split.test, split.n_tags, device).summary()
    print("| config | valid F1@3 | valid NDCG@3 | test F1@3 | test NDCG@3 | best epoch | seconds |")
    print("|---|---|---|---|---|---|---|")
    print(f"| pop-mix (mix={reference.config.model_params['mix']}) | | {reference.best_valid['valid_ndcg@3']:.4f} "
          f"| {ref_test['f1@3']:.4f} | {ref_test['ndcg@3']:.4f} | | |")
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values))
        started = time.perf_counter()
        torch.manual_seed(0)
        result = train(split, default_config(args.model, epochs=args.epochs, **overrides), device)
        test = evaluate_model(result.model, split.test, split.n_tags, device).summary()
        row = (overrides, result.best_valid, test, result.best_epoch, time.perf_counter() - started)
        rows.append(row)
        _print_row(*row)
    best = max(rows, key=lambda r: r[1]["valid_ndcg@3"])
    print("\nchosen on validation:")
    _print_row(*best)


def _print_row(overrides, valid, test, best_epoch, seconds):
    label = " ".join(f"{k}={v}" for k, v in overrides.items())
    print(f"| {label} | {valid['valid_f1@3']:.4f} | {valid['valid_ndcg@3']:.4f} | {test['f1@3']:.4f} "
          f"| {test['ndcg@3']:.4f} | {best_epoch} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
