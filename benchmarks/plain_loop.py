"""robustag's eager training epoch against a plain PyTorch loop doing the same work, side by
side in one process: the metric model (d = 128, K = 16, margin 0.75, unit-ball clipping),
Adam, batches of 1,024 on LastFM 10-core. The plain loop draws negatives uniformly from all
tags (no rejection of a post's own tags) and validates nothing; it runs twice: scoring with
the model's formula as written, and with the algebra robustag uses (the −(|u|² + |i|²) every
tag shares left out, as the hinge cancels it); and once more after robustag's run, which has
set the C allocator to keep step memory (`robustag.allocator`), so the last row is the plain
loop with everything robustag does but its bookkeeping. robustag's figures (eager, compiled,
and stacked: M seeds trained as one, `robustag.stacking`, its epoch time per model) are its
training steps only (validation apart), as in every benchmark here; every row's figure is the
median epoch after the first.

    python benchmarks/plain_loop.py [--dataset lastfm] [--epochs 4] [--members 5,15] --out FILE.json

Numbers are measurements, never test assertions.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from common import dataset_run, environment, record, write

from robustag.stacking import train_stacked
from robustag.training import default_config, train

DIM, NEGATIVES, BATCH, MARGIN, LR = 128, 16, 1024, 0.75, 0.002


def seeded_tables(sizes, device) -> tuple[list[torch.nn.Embedding], torch.optim.Adam]:
    """User, item and tag tables of the given row counts, initialised as robustag's metric
    model is, and Adam over them."""
    torch.manual_seed(0)
    tables = [torch.nn.Embedding(n, DIM).to(device) for n in sizes]
    for table in tables:
        torch.nn.init.normal_(table.weight, std=DIM ** -0.5)
    return tables, torch.optim.Adam([t.weight for t in tables], lr=LR)


def hinge_step(tables, optimizer, u, i, positive, negative, shared=0.0, scale: float = 1.0) -> None:
    """One step of the metric model's hinge from looked-up rows (positive (N, 1, d), negative
    (N, K, d)), `shared` the −(|u|² + |i|²) term if scored; Adam; back into the unit ball."""
    both = (u + i).unsqueeze(1)
    score = lambda t: 2 * (t * both).sum(-1) - 2 * t.pow(2).sum(-1) - shared
    loss = F.relu(MARGIN - score(positive) + score(negative)).mean() * scale
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for table in tables:
            table.weight.renorm_(2, 0, 1.0)


def plain_loop_epochs(split, epochs: int, device, shared_term: bool = True) -> list[float]:
    """`shared_term`: score with −(|u|² + |i|²) included, as written from the model's formula;
    without it, the algebra robustag's metric model uses (the hinge cancels that term)."""
    tables, optimizer = seeded_tables((split.n_users, split.n_items, split.n_tags), device)
    user_table, item_table, tag_table = tables
    users, items, tags = (torch.as_tensor(a, device=device) for a in split.train.triples())
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for index in torch.randperm(len(users), device=device).split(BATCH):
            u, i = user_table(users[index]), item_table(items[index])
            positive, negative = tag_table(tags[index]).unsqueeze(1), tag_table(torch.randint(split.n_tags, (len(index), NEGATIVES), device=device))
            shared = u.pow(2).sum(1, keepdim=True) + i.pow(2).sum(1, keepdim=True) if shared_term else 0.0
            hinge_step(tables, optimizer, u, i, positive, negative, shared)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    args, device, split = dataset_run(__doc__, epochs=4, add_options=lambda parser: parser.add_argument(
        "--members", default="5,15", help="stack sizes of the stacked-training rows (empty: none)"))
    rows = []
    for shared_term, what in ((True, "plain PyTorch loop"), (False, "plain PyTorch loop, robustag's algebra")):
        plain = plain_loop_epochs(split, args.epochs, device, shared_term)
        record(rows, {"what": what, "epoch_s": statistics.median(plain[1:]), "epochs_s": plain})
    config = default_config("metric", dim=DIM, negatives=NEGATIVES, batch_size=BATCH, margin=MARGIN, lr=LR,
                            epochs=args.epochs, patience=args.epochs)
    for compiled in (False, True):  # the compiled run's first epoch includes the compiler's warm-up
        epochs = [r["seconds"] for r in train(split, config, device, compile=compiled).history]
        record(rows, {"what": "robustag train " + ("compiled (the default)" if compiled else "eager (--no-compile)"),
                      "epoch_s": statistics.median(epochs[1:]), "epochs_s": epochs})
    for members in [int(m) for m in args.members.split(",") if m]:  # seeds 0..M-1 as one stack, eager
        configs = [replace(config, seed=seed) for seed in range(members)]
        epochs = [r["seconds"] for r in train_stacked(split, configs, device, compile=False)[0].history]  # per model
        record(rows, {"what": f"robustag stacked training, {members} models (eager), per model", "members": members,
                      "epoch_s": statistics.median(epochs[1:]), "epochs_s": epochs})
    plain = plain_loop_epochs(split, args.epochs, device, shared_term=False)
    record(rows, {"what": "plain PyTorch loop, robustag's algebra and allocator settings", "epoch_s": statistics.median(plain[1:]),
                  "epochs_s": plain})
    write(args.out, {"dataset": args.dataset, "environment": environment(device, False), "rows": rows})


if __name__ == "__main__":
    main()
