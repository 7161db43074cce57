"""Would stacking many models into one training step pay on this machine? M metric models
(d = 128, K = 16, batch 1,024 each) as one set of tables with M× the rows, each step one
batch of M × 1,024 rows (every model's indices offset into its own rows), one loss, one Adam
step, one renorm: the work of M separate models, in the fewest and largest kernels. Its
figure is the epoch time per model, against M = 1 (the same code, one model).

    python benchmarks/stacked_batch.py [--dataset lastfm] [--members 1,5,15] [--epochs 2] [--allocator] --out FILE.json

Run it once as is and once after `robustag.allocator.keep_step_memory()` (`--allocator`), alone
on the machine. Numbers are measurements, never test assertions.
"""

from __future__ import annotations

import statistics
import time

import torch

from common import dataset_run, environment, record, write
from plain_loop import BATCH, NEGATIVES, hinge_step, seeded_tables

from robustag.allocator import keep_step_memory


def stacked_epochs(split, members: int, epochs: int, device) -> list[float]:
    sizes = (split.n_users, split.n_items, split.n_tags)
    tables, optimizer = seeded_tables([n * members for n in sizes], device)
    user_table, item_table, tag_table = tables
    offset = torch.arange(members, device=device).unsqueeze(1)  # each model's first row, in units of a table
    users, items, tags = (torch.as_tensor(a, device=device) for a in split.train.triples())
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        orders = torch.stack([torch.randperm(len(users), device=device) for _ in range(members)])
        for index in orders.split(BATCH, dim=1):
            u = user_table((users[index] + offset * sizes[0]).flatten())
            i = item_table((items[index] + offset * sizes[1]).flatten())
            positive = tag_table((tags[index] + offset * sizes[2]).flatten()).unsqueeze(1)
            sampled = torch.randint(sizes[2], (*index.shape, NEGATIVES), device=device) + offset.unsqueeze(2) * sizes[2]
            hinge_step(tables, optimizer, u, i, positive, tag_table(sampled.flatten(0, 1)), scale=members)  # each model's own mean
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    def options(parser):
        parser.add_argument("--members", default="1,5,15", help="comma-separated numbers of stacked models")
        parser.add_argument("--allocator", action="store_true", help="with robustag's allocator settings")

    args, device, split = dataset_run(__doc__, epochs=2, add_options=options)
    if args.allocator:
        keep_step_memory()
    rows = []
    for count in map(int, args.members.split(",")):
        epochs = stacked_epochs(split, count, args.epochs, device)
        record(rows, {"members": count, "allocator": args.allocator, "epoch_s": statistics.median(epochs),
                      "per_model_s": statistics.median(epochs) / count, "epochs_s": epochs})
    write(args.out, {"dataset": args.dataset, "environment": environment(device, False), "rows": rows})


if __name__ == "__main__":
    main()
