"""How robustag's costs grow with the data: synthetic power-law data sets (`robustag.synthetic`)
from 10^4 to 10^6 posts (1,000 tags) and from 10^3 to 10^5 tags (10^5 posts); and the real
data sets, the largest being MovieLens 10M's tags with a 5-core and with no p-core.

Per size, in a fresh process (so that its peak resident memory is its own): building the split,
one training epoch of the metric model (plain, d = 64, K = 16, batch 1,024), ranking every test
post, PGD-10 and `auto` (20 APGD steps per member; cost is linear in the steps) on a fixed
sample of test posts, and the certificate on every test post; seconds, and seconds per 1,000
posts where the work is per post; and the process's peak memory.

    python benchmarks/scaling.py --out reports/benchmarks/scaling-cpu.json [--device auto] [--axes posts,tags,real]

Writes the JSON and a plot beside it (same name, .png). Numbers are measurements, never test
assertions.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import environment, parser, write

POSTS_AXIS = [(10_000, 1_000), (100_000, 1_000), (1_000_000, 1_000)]
TAGS_AXIS = [(100_000, 1_000), (100_000, 10_000), (100_000, 100_000)]
REAL_CASES = [("movielens", 10), ("lastfm", 10), ("ml10m", 5), ("ml10m", 1)]  # (data set, p-core)
ATTACK_SAMPLE = 500  # test posts attacked (the attacks' cost per post does not depend on how many)


def dataset(posts: int, tags: int) -> str:
    return f"synthetic:users={posts // 20},items={posts // 5},tags={tags},posts={posts},seed=0"


def timed(work):
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def measure(name: str, p_core: int, device_name: str) -> dict:
    """Every stage on one data set, in this process."""
    import numpy as np
    import torch

    from robustag import paths
    from robustag.attack import ATTACKS
    from robustag.certify import certify
    from robustag.evaluation import evaluate_model
    from robustag.preprocess import SplitOptions, load_split
    from robustag.robustness import evade
    from robustag.training import default_config, resolve_device, train

    device = resolve_device(device_name)
    data_dir = Path(".") if name.startswith("synthetic:") else paths.data_dir()
    split, split_seconds = timed(lambda: load_split(name, data_dir, SplitOptions(p_core=p_core), use_cache=False))
    config = default_config("metric", dim=64, epochs=1, seed=0)
    result = train(split, config, device, compile=False)  # one epoch: a compile's warm-up would be most of it
    model = result.model
    per_1000 = lambda seconds, n: seconds * 1000 / max(n, 1)
    _, evaluation_seconds = timed(lambda: evaluate_model(model, split.test, split.n_tags, device))
    sample = split.test.subset(np.arange(min(ATTACK_SAMPLE, len(split.test))))
    sampled = dataclasses.replace(split, test=sample)
    attack_seconds = {}
    for label, spec in (("pgd10", "pgd:eps=0.1"), ("auto20", "auto:eps=0.1,steps=20")):
        _, seconds = timed(lambda: evade(model, sampled, ATTACKS.create(spec), device))
        attack_seconds[label] = per_1000(seconds, len(sample))
    _, certify_seconds = timed(lambda: certify(model, split.test, split.n_tags, 0.1, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    stats = split.stats()
    return {"dataset": name, "p_core": p_core, "posts": stats["posts"], "tags": stats["tags"],
            "train_assignments": stats["train_assignments"], "test_posts": stats["test_posts"],
            "split_s": split_seconds, "epoch_s": result.history[0]["seconds"],
            "evaluation_s_per_1000": per_1000(evaluation_seconds, len(split.test)),
            "pgd10_s_per_1000": attack_seconds["pgd10"], "auto20_s_per_1000": attack_seconds["auto20"],
            "certificate_s_per_1000": per_1000(certify_seconds, len(split.test)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, axis, x in ((axes[0], "posts", "posts"), (axes[1], "tags", "tags")):
        chosen = [r for r in rows if r["axis"] == axis]
        for key, label in (("epoch_s", "epoch (s)"), ("evaluation_s_per_1000", "ranking, s / 1k test posts"),
                           ("pgd10_s_per_1000", "PGD-10, s / 1k posts"), ("auto20_s_per_1000", "auto (20 steps), s / 1k posts"),
                           ("certificate_s_per_1000", "certificate, s / 1k posts"), ("split_s", "split (s)")):
            ax.loglog([r[x] for r in chosen], [r[key] for r in chosen], marker="o", label=label)
        ax.set_xlabel(f"{x} (after the p-core filter)")
        ax.set_title(f"cost against {x}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    for axis, marker in (("posts", "o"), ("tags", "s")):
        chosen = [r for r in rows if r["axis"] == axis]
        axes[2].semilogx([r[axis] for r in chosen], [r["peak_rss_mb"] for r in chosen], marker=marker, label=f"against {axis}")
    axes[2].set_title("peak resident memory (MB)")
    axes[2].legend(fontsize=7)
    axes[2].grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--one", help="internal: measure one data set in this process")
    options.add_argument("--p-core", type=int, default=10)
    options.add_argument("--axes", default="posts,tags,real", help="which cases: posts, tags (synthetic), real")
    args = options.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.p_core, args.device)))
        return
    rows = []
    # the tag axis without the p-core filter: with 10^5 tags most would fall under 10 uses
    cases = {"posts": [(dataset(posts, tags), 10, posts) for posts, tags in POSTS_AXIS],
             "tags": [(dataset(posts, tags), 1, posts) for posts, tags in TAGS_AXIS],
             "real": [(name, p_core, None) for name, p_core in REAL_CASES]}
    for axis in args.axes.split(","):
        for name, p_core, generated in cases[axis]:
            done = subprocess.run([sys.executable, __file__, "--one", name, "--p-core", str(p_core),
                                   "--device", args.device], capture_output=True, text=True, check=True)
            row = {"axis": axis, "generated_posts": generated, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    from robustag.training import resolve_device

    write(args.out, {"environment": environment(resolve_device(args.device), False), "rows": rows})
    if args.out and {"posts", "tags"} <= {r["axis"] for r in rows}:
        plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
