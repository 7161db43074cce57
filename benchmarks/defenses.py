"""Defense benchmark: each defense's epoch time as a ratio to plain (same run, same machine),
and its clean and PGD-attacked test F1@3 / NDCG@3.

    python benchmarks/defenses.py [--datasets lastfm,movielens] [--model metric] [--epochs 30]
                                  [--defenses plain,aml,...] [--attack pgd:eps=0.1] [--device auto] [--out FILE.json]
                                  [--both-ascents]

`--both-ascents` measures every defense twice in one run, with the adversary's steps compiled
as one graph (`IterativeAttack.fused_perturb`, the default when training compiles) and as eager
steps around the compiled loss (before it).
"""

from __future__ import annotations

import statistics
from unittest.mock import patch

from common import environment, parser, record, write

from robustag import paths
from robustag.attack import ATTACKS, IterativeAttack
from robustag.defense import DEFENSES
from robustag.evaluation import evaluate_model
from robustag.preprocess import load_split
from robustag.robustness import evade
from robustag.training import default_config, resolve_device, train

FUSABLE = IterativeAttack.fusable
DEFENSE_SPECS = ("plain", "aml", "curriculum", "spaml-h", "spaml-s", "freelb", "certified", "rank-adv")


def defense_rows(split, dataset: str, config, device, attack: str, compile: bool = False,
                 defenses=DEFENSE_SPECS, fused: bool = True) -> list[dict]:
    """Median epoch time of each defense (and its ratio to the first, plain), clean and attacked metrics."""
    rows, plain_epoch = [], None
    for spec in defenses:
        with patch.object(IterativeAttack, "fusable", lambda self: fused and FUSABLE(self)):
            result = train(split, config, device, regime=DEFENSES.create(spec), compile=compile)
        epoch_seconds = statistics.median(r["seconds"] for r in result.history)
        plain_epoch = plain_epoch or epoch_seconds
        clean = evaluate_model(result.model, split.test, split.n_tags, device).summary()
        attacked = evade(result.model, split, ATTACKS.create(attack), device).summary()
        row = {
            "dataset": dataset, "defense": spec, "fused_ascent": fused, "epochs_run": len(result.history), "best_epoch": result.best_epoch,
            "epoch_seconds": epoch_seconds, "epoch_ratio_to_plain": epoch_seconds / plain_epoch,
            "clean_f1@3": clean["f1@3"], "clean_ndcg@3": clean["ndcg@3"],
            "attacked_f1@3": attacked["f1@3"], "attacked_ndcg@3": attacked["ndcg@3"],
        }
        record(rows, row)
    return rows


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--datasets", default="lastfm,movielens")
    options.add_argument("--model", default="metric")
    options.add_argument("--epochs", type=int, default=30)
    options.add_argument("--attack", default="pgd:eps=0.1")
    options.add_argument("--defenses", default=",".join(DEFENSE_SPECS), help="plain first: the ratios are to it")
    options.add_argument("--both-ascents", action="store_true", help="each defense with fused and eager adversary steps")
    args = options.parse_args()
    device = resolve_device(args.device)
    rows = []
    for dataset in args.datasets.split(","):
        split = load_split(dataset, paths.data_dir())
        for fused in (True, False) if args.both_ascents else (True,):
            rows += defense_rows(split, dataset, default_config(args.model, epochs=args.epochs), device, args.attack,
                                 args.compile, args.defenses.split(","), fused)
    write(args.out, {"model": args.model, "attack": args.attack, **environment(device, args.compile), "rows": rows})


if __name__ == "__main__":
    main()
