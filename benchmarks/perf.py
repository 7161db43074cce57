"""Performance benchmark, in one run on one data set (LastFM 10-core by default):

- training throughput and evaluation throughput of every model (posts ranked per second),
- each defense's epoch time as a ratio to plain, with its clean and attacked metrics,
- each attack's throughput over all test posts,
- optionally (--paper-main) the wall time of `robustag bench benchmarks/paper-main.toml`.

    python benchmarks/perf.py [--dataset lastfm] [--epochs 3] [--device auto] [--compile] [--paper-main] --out FILE.json

Numbers are measurements, never test assertions; the committed ones are in reports/benchmarks/.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attacks import attack_rows
from defenses import defense_rows
from common import environment, parser, write
from foundation import model_rows

from robustag import paths
from robustag.preprocess import load_split
from robustag.training import default_config, resolve_device, train

HERE = Path(__file__).resolve().parent


def paper_main_seconds(dataset: str, device: str, compile: bool | None, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "robustag", "bench", str(HERE / "paper-main.toml"), "--datasets", dataset,
                        "--device", device, "--out", out, "--no-report", "--workers", str(workers),
                        *({True: ["--compile"], False: ["--no-compile"]}.get(compile, []))], check=True)
        return time.perf_counter() - started


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--dataset", default="lastfm")
    options.add_argument("--epochs", type=int, default=3, help="epochs per timed training run")
    options.add_argument("--eps", type=float, default=0.1)
    options.add_argument("--paper-main", action="store_true", help="also time the paper-main spec (long)")
    options.add_argument("--workers", type=int, default=1, help="bench workers for --paper-main")
    args = options.parse_args()
    device = resolve_device(args.device)
    split = load_split(args.dataset, paths.data_dir())
    config = default_config("metric", epochs=args.epochs, patience=args.epochs)
    report = {"dataset": args.dataset, **environment(device, args.compile),
              "models": model_rows(split, device, args.epochs, args.compile),
              "defenses": defense_rows(split, args.dataset, config, device, f"pgd:eps={args.eps}", args.compile)}
    model = train(split, config, device, compile=args.compile).model
    report["attacks"] = attack_rows(split, model, config, device, args.eps)
    if args.paper_main:
        report["paper_main_seconds"] = paper_main_seconds(args.dataset, args.device, args.compile, args.workers)
        report["paper_main_workers"] = args.workers
    write(args.out, report)


if __name__ == "__main__":
    main()
