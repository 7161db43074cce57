"""Count the host-device synchronisations of one training epoch on a GPU.

    python benchmarks/sync_check.py [--dataset lastfm] [--defense plain] --out FILE.json

`torch.cuda.set_sync_debug_mode("warn")` warns at every synchronising call; the warnings are
counted by the line of robustag that made them. Needs a GPU (exits with a message otherwise).
"""

from __future__ import annotations

import collections
import sys
import traceback
import warnings

import torch

from common import environment, parser, write

from robustag import paths
from robustag.defense import DEFENSES
from robustag.preprocess import load_split
from robustag.training import default_config, train


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--dataset", default="lastfm")
    options.add_argument("--defense", default="plain")
    args = options.parse_args()
    if not torch.cuda.is_available():
        sys.exit("sync_check.py: needs a CUDA device")
    device = torch.device("cuda")
    split = load_split(args.dataset, paths.data_dir())
    config = default_config("metric", epochs=1, patience=1)
    train(split, config, device)  # warm-up: allocator, kernels
    sources: collections.Counter = collections.Counter()

    def count(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "/robustag/" in f.filename]
        sources[f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "elsewhere"] += 1

    previous = warnings.showwarning
    warnings.showwarning = count
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        result = train(split, config, device, regime=DEFENSES.create(args.defense), compile=args.compile)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = previous
    batches = -(-len(split.train.triples()[0]) // config.batch_size)
    report = {"dataset": args.dataset, "defense": args.defense, **environment(device, args.compile),
              "batches_per_epoch": batches, "syncs": sum(sources.values()), "by_line": dict(sources.most_common()),
              "epoch_seconds": result.history[0]["seconds"]}
    print(report)
    write(args.out, report)


if __name__ == "__main__":
    main()
