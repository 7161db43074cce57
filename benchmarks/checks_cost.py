"""Seconds of one attack's sanity checks on a trained model, each run of the attack timed,
as declared (`checked_with`) or with it emptied (every run the attack exactly as specified).

    python benchmarks/checks_cost.py --model-file RUN/models/KEY.pt [--dataset lastfm]
                                     [--attack auto:eps=0.2] [--unfixed] [--out FILE.json]
"""

from __future__ import annotations

import time

from common import environment, parser, record, write

import robustag as rt
import robustag.checks as checks
from robustag.attack import ATTACKS
from robustag.training import resolve_device


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--model-file", required=True)
    options.add_argument("--dataset", default="lastfm")
    options.add_argument("--attack", default="auto:eps=0.2")
    options.add_argument("--unfixed", action="store_true", help="empty the attack's checked_with first")
    args = options.parse_args()
    split = rt.load_dataset(args.dataset)
    model = rt.load(args.model_file, split, device=args.device).model
    if args.unfixed:
        ATTACKS.get(args.attack.split(":")[0]).checked_with = {}
    runs: list[dict] = []
    evade = checks.evade

    def timed(model, split, attack, device, *rest, **options):
        started = time.perf_counter()
        evaluation = evade(model, split, attack, device, *rest, **options)
        record(runs, {"run": attack.spec, "seconds": time.perf_counter() - started})
        return evaluation

    checks.evade = timed
    started = time.perf_counter()
    device = resolve_device(args.device)
    rows = checks.sanity_checks(model, split, args.attack, device)
    write(args.out, {"attack": args.attack, "unfixed": args.unfixed, "seconds": time.perf_counter() - started,
                     **environment(device), "runs": runs, "checks": rows})
    print(f"{args.attack}: {time.perf_counter() - started:.1f} s, passed {[row['passed'] for row in rows]}")


if __name__ == "__main__":
    main()
