"""The C allocator's settings (`robustag.allocator`) on and off: eager training epochs of the
metric model (LastFM by default, d = 128, K = 16, batch 1,024), each setting in a fresh
process (the setting is per process), alternating, `--repeats` times.

    python benchmarks/allocator.py [--dataset lastfm] [--epochs 3] [--repeats 2] --out FILE.json

Numbers are measurements, never test assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import dataset_run, environment, record, write


def epochs_in_fresh_process(dataset: str, epochs: int, allocator: bool) -> list[float]:
    code = ("import json, robustag.allocator as a, torch\n"
            f"a._applied = {not allocator}  # True: as if applied already, so train leaves malloc as it is\n"
            "from robustag import paths\nfrom robustag.preprocess import load_split\n"
            "from robustag.training import default_config, train\n"
            f"split = load_split({dataset!r}, paths.data_dir())\n"
            f"config = default_config('metric', epochs={epochs}, patience={epochs})\n"
            "print(json.dumps([r['seconds'] for r in train(split, config, torch.device('cpu'), compile=False).history]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args, device, _ = dataset_run(__doc__, epochs=3, add_options=lambda parser: parser.add_argument(
        "--repeats", type=int, default=2))
    rows = []
    for repeat in range(args.repeats):
        for allocator in (False, True):
            seconds = epochs_in_fresh_process(args.dataset, args.epochs, allocator)
            record(rows, {"repeat": repeat, "allocator": allocator, "epochs_s": seconds})
    write(args.out, {"dataset": args.dataset, "environment": environment(device, False), "rows": rows})


if __name__ == "__main__":
    main()
