"""Stacked training: models of one configuration that differ only in seed, trained as one.

The members' embedding tables are laid end to end in one model of the same class (model m's
rows of a table of n rows per model are [m·n, (m + 1)·n)); each step's batch holds every
active member's batch, its indices offset into its own rows, so one gather, one loss, one
backward pass and one Adam step serve them all. Each member still draws from its own seeded
stream (batch order and negatives), its adversary's random starts are the ones it would draw
alone (`attack.replicated`), its budgets are its own tables' (`attack.batch_budget`), and its
gradient is its own: the stack's loss is the sum of the members' batch means, and no term
mixes members (models and defenses declare that they qualify: `stackable`, `stacks`). So a
member's result is the one it would get alone, up to floating-point rounding. Each member is
validated on its own after every epoch and early-stops on its own; a member that stops keeps
its best epoch and leaves the batch.

This pays where one small model leaves the device idle between kernel launches (a GPU). On a
CPU a step is bound by memory traffic, and M models in one batch are 2.7–3.4× slower per model
than alone (`benchmarks/stacked_batch.py`, reports/benchmarks/README.md), so the bench stacks
on GPUs only unless told otherwise (`--stack`).
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from robustag.attack import replicated
from robustag.errors import RobustagError
from robustag.models import Batch, Replicas
from robustag.preprocess import TagSplit
from robustag.training import (EarlyStopping, EpochCallback, Feed, TrainConfig, TrainingRegime, TrainResult, build_model,
                               compile_mode, compiled_losses, keep_step_memory, run_epochs)

TABLES = ("user", "item", "tag")


def stackable(config: TrainConfig, regime: TrainingRegime) -> bool:
    """Whether models of this configuration may train as a stack under this regime."""
    recipe = config.recipe()
    if not recipe.learned:
        return False
    with torch.random.fork_rng(devices=[]):  # a 1-row network tells its class; no draw from the global stream
        network = type(recipe.build(1, 1, 1, 1))
    can_stack = getattr(regime, "can_stack", lambda: type(regime) is TrainingRegime)
    return bool(getattr(network, "stackable", False) and can_stack())


def same_but_seed(configs: list[TrainConfig]) -> bool:
    first = replace(configs[0], seed=0)
    return all(replace(c, seed=0) == first for c in configs)


def train_stacked(split: TagSplit, configs: list[TrainConfig], device: torch.device, regime: TrainingRegime | None = None,
                  on_epoch: list[EpochCallback | None] | None = None, compile: bool | None = None) -> list[TrainResult]:
    """Train one model per configuration (they differ in seed only) as one stack under a fresh
    `regime`; results in the order of `configs`, each as `training.train` would give it alone.
    One regime serves all: its attack's seed is part of its spec, so the members' adversaries
    would all draw the same random starts, which `replicated` repeats for each."""
    regime = regime or TrainingRegime()
    if not configs:
        raise RobustagError("train_stacked: no configurations")
    if not same_but_seed(configs):
        raise RobustagError("train_stacked: the configurations of a stack may differ in seed only")
    if not stackable(configs[0], regime):
        raise RobustagError(f"train_stacked: model {configs[0].model} under {getattr(regime, 'name', 'this regime')} "
                            "cannot train as a stack (see stackable / stacks)")
    keep_step_memory()
    members = []
    for config in configs:
        config.validate()
        torch.manual_seed(config.seed)  # the initialisation each member would get alone
        members.append(build_model(split, config).to(device))
    compiled, note = compile_mode(compile, device)
    stack = stacked_network(split, configs[0], members, device)
    with compiled_losses(stack, compiled):
        results = run_epochs(StackFeed(stack, members, split, configs, device, on_epoch or [None] * len(configs)), regime)
    for k, result in enumerate(results):
        result.compiled, result.notes = compiled, [note] if note and k == 0 else []  # said once, not per member
    return results


def stacked_network(split: TagSplit, config: TrainConfig, members: list, device: torch.device):
    """A network of the members' class with their tables laid end to end."""
    stack = config.recipe().build(len(members) * split.n_users, len(members) * split.n_items,
                                  len(members) * split.n_tags, config.dim).to(device)
    with torch.no_grad():
        for table in TABLES:
            torch.cat([member.tables()[table].weight for member in members], out=stack.tables()[table].weight)
    return stack


def _member_rows(stack, member: int, table: str, rows_per_member: int) -> torch.Tensor:
    return stack.tables()[table].weight[member * rows_per_member:(member + 1) * rows_per_member]


class StackFeed(Feed):
    """The members' batches as one: every active member's batch, its indices offset into its
    own rows; each member validated and early-stopped on its own."""

    def __init__(self, stack, members: list, split: TagSplit, configs: list[TrainConfig], device: torch.device,
                 callbacks: list[EpochCallback | None]):
        super().__init__(stack, split, configs, device)
        self.members, self.callbacks = members, callbacks
        self.sizes = {"user": split.n_users, "item": split.n_items, "tag": split.n_tags}
        self.stopping = [EarlyStopping(TrainResult(model=m, config=c), c.patience) for m, c in zip(members, configs)]
        self.active = list(range(len(members)))
        self.started = time.perf_counter()

    def batches(self):
        users, items, tags = self.triples
        orders = [torch.randperm(len(users), generator=self.generators[m], device=self.device) for m in self.active]
        offsets = torch.as_tensor(self.active, device=self.device).unsqueeze(1)
        for start in range(0, len(users), self.config.batch_size):
            index = torch.stack([order[start:start + self.config.batch_size] for order in orders])  # (A, B)
            negatives = torch.stack([self.sampler.sample(row, self.config.negatives, self.generators[m])
                                     for m, row in zip(self.active, index)])
            batch = Batch(*(((column[index] + offsets * self.sizes[t]).flatten())
                            for column, t in ((users, "user"), (items, "item"), (tags, "tag"))),
                          (negatives + offsets.unsqueeze(2) * self.sizes["tag"]).flatten(0, 1))
            self.network.replicas = Replicas(len(self.members), offsets.squeeze(1), index.shape[1])
            yield batch, index.shape[1]

    def loss(self, regime, batch):
        with replicated(len(self.active)):
            loss, figures = super().loss(regime, batch)
        return loss * len(self.active), figures  # the sum of the members' batch means: each its own gradient

    def end_epoch(self, epoch, sums, regime, seconds) -> bool:
        self.network.replicas = None
        shared = self.figures(sums, epoch, regime, prefix="stack_")  # the stack's figures, not one member's
        for m in list(self.active):
            with torch.no_grad():
                for table in TABLES:
                    self.members[m].tables()[table].weight.copy_(_member_rows(self.network, m, table, self.sizes[table]))
            record = {**shared, "stack_members": len(self.active), "seconds": seconds / len(self.active)}
            if self.stopping[m].end_epoch(self.members[m], record, self.split, self.device, self.callbacks[m]):
                self.active.remove(m)
        return not self.active

    def finish(self) -> list[TrainResult]:
        results = [s.finish(member) for s, member in zip(self.stopping, self.members)]
        for result in results:  # each member's share of the stack's time
            result.train_seconds = (time.perf_counter() - self.started) / len(self.members)
        return results


__all__ = ["same_but_seed", "stackable", "stacked_network", "train_stacked"]
