"""Attack benchmark: time of each attack over all test posts of LastFM 10-core, and its effect.

    python benchmarks/attacks.py [--dataset lastfm] [--model metric] [--eps 0.1] [--device auto] [--out FILE.json]

Embedding attacks are timed best of 3 (all test posts in one batch); poisoning attacks once,
retraining included.
"""

from __future__ import annotations

import time

import torch

from common import environment, parser, record, write

from robustag import paths
from robustag.attack import ATTACKS, EmbeddingAttack
from robustag.evaluation import evaluate_model
from robustag.preprocess import load_split
from robustag.robustness import run_attack
from robustag.training import default_config, resolve_device, train

SPECS = ("fgsm", "pgd", "mim", "freelb", "pgd:targets=user+item+tag", "tag-replace-20", "tag-promote")


def attack_rows(split, model, config, device, eps: float, specs=SPECS) -> list[dict]:
    """Seconds and posts/s of each attack over all test posts (evasion best of 3), and its effect."""
    clean = evaluate_model(model, split.test, split.n_tags, device)
    rows = []
    for spec in specs:
        attack = ATTACKS.create(spec)
        if isinstance(attack, EmbeddingAttack):
            attack = ATTACKS.create(spec, eps=eps)
        repeats = 3 if isinstance(attack, EmbeddingAttack) else 1
        timings, outcome = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            outcome = run_attack(attack, model, split, config, device, clean)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - started)
        row = {
            "attack": attack.spec,
            "seconds": min(timings),
            "posts_per_second": len(split.test) / min(timings),
            "clean_ndcg@3": clean.summary()["ndcg@3"],
            "attacked_ndcg@3": outcome.evaluation.summary()["ndcg@3"],
        }
        record(rows, row)
    return rows


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--dataset", default="lastfm")
    options.add_argument("--model", default="metric")
    options.add_argument("--eps", type=float, default=0.1)
    options.add_argument("--epochs", type=int, default=20)
    args = options.parse_args()
    device = resolve_device(args.device)
    split = load_split(args.dataset, paths.data_dir())
    config = default_config(args.model, epochs=args.epochs)
    model = train(split, config, device, compile=args.compile).model
    rows = attack_rows(split, model, config, device, args.eps)
    write(args.out, {"dataset": args.dataset, "model": args.model, "test_posts": len(split.test),
                     **environment(device, args.compile), "rows": rows})


if __name__ == "__main__":
    main()
