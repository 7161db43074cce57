"""What the benchmark scripts share: the command line's common options, row printing and
the machine description stored beside every figure."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser with --device and --out; each script adds its own options."""
    made = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--device", default="auto")
    made.add_argument("--out", type=Path)
    made.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                      help="train compiled or eager (default: robustag's, compiled where the compiler works)")
    return made


def dataset_run(doc: str, epochs: int, add_options=None):
    """The options of a benchmark on one data set (--dataset, --epochs, --device, --compile,
    --out, and what `add_options(parser)` adds): returns (args, device, split)."""
    from robustag import paths
    from robustag.preprocess import load_split
    from robustag.training import resolve_device

    options = parser(doc)
    options.add_argument("--dataset", default="lastfm")
    options.add_argument("--epochs", type=int, default=epochs)
    if add_options:
        add_options(options)
    args = options.parse_args()
    return args, resolve_device(args.device), load_split(args.dataset, paths.data_dir())


def record(rows: list[dict], row: dict) -> None:
    """Keep a measured row and show it at once (long benchmarks report as they go)."""
    rows.append(row)
    print(json.dumps(row), flush=True)


def environment(device, compile: bool | None = None) -> dict:
    """The machine and mode of a measurement (compile None: robustag's default, see compile_mode)."""
    from robustag.training import compile_mode

    return {"device": str(device), "compile": compile_mode(compile, device)[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}


def write(path: Path | None, payload: dict) -> None:
    if path:
        path.write_text(json.dumps(payload, indent=2) + "\n")
