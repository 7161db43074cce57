"""The negative sampler's cost per epoch (every training triple, K negatives, batches of 1,024)
against the rejection sampler it replaced, on one data set; and how many host syncs each makes.

    python benchmarks/sampler.py [--dataset lastfm] --out FILE.json

Numbers are measurements, never test assertions.
"""

from __future__ import annotations

import time

import torch

from common import dataset_run, environment, record, write

from robustag.training import NegativeSampler


class RejectionSampler(NegativeSampler):
    """The sampler before (kept here only to measure against): draw, find clashes with the post's
    own tags, redraw them; `int(clash.sum())` waits on the device once per round."""

    def __init__(self, train, n_tags, generator, device):
        super().__init__(train, n_tags, generator, device)
        self.own = torch.as_tensor(self.post_index.cpu().numpy() * n_tags + train.tag_indices, device=device)
        self.syncs = 0

    def sample(self, triple_index, k):
        post = self.post_index[triple_index].unsqueeze(1) * self.n_tags
        negatives = torch.randint(self.n_tags, (len(triple_index), k), generator=self.generator, device=post.device)
        while True:
            queries = post + negatives
            slot = torch.searchsorted(self.own, queries).clamp(max=len(self.own) - 1)
            clash = self.own[slot] == queries
            n_clash = int(clash.sum())
            self.syncs += 1
            if n_clash == 0:
                return negatives
            negatives[clash] = torch.randint(self.n_tags, (n_clash,), generator=self.generator, device=post.device)


def epoch_seconds(sampler, triples: int, k: int, device) -> float:
    order = torch.randperm(triples, device=device)
    started = time.perf_counter()
    for start in range(0, triples, 1024):
        sampler.sample(order[start:start + 1024], k)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    args, device, split = dataset_run(__doc__, epochs=0)
    triples, rows = split.train.n_assignments, []
    for name, kind in (("rejection", RejectionSampler), ("inverse-transform", NegativeSampler)):
        sampler = kind(split.train, split.n_tags, torch.Generator(device=device).manual_seed(0), device)
        epoch_seconds(sampler, triples, 16, device)  # warm-up
        seconds = min(epoch_seconds(sampler, triples, 16, device) for _ in range(3))
        record(rows, {"sampler": name, "dataset": args.dataset, "triples": triples, "negatives": 16,
                      "epoch_s": seconds, "host_syncs_per_epoch": getattr(sampler, "syncs", 0) // 4})
    write(args.out, {"environment": environment(device), "rows": rows})


if __name__ == "__main__":
    main()
