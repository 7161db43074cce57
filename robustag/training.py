"""Training: negative sampling, Adam, early stopping on validation NDCG@3, seeded and repeatable.

A training *regime* (the hook defenses plug into) turns a batch into a loss; the default is
the model's own loss. Everything random draws from one seeded generator, so a fixed seed
gives the same numbers on CPU.
"""

from __future__ import annotations

import copy
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np
import torch

from robustag.errors import RobustagError
from robustag.evaluation import evaluate, scores_of
from robustag.models import LEARNED_MODELS, POPULARITY_MODELS, Batch, EmbeddingModel, popularity_model
from robustag.preprocess import Posts, TagSplit

EARLY_STOP_METRIC = "ndcg@3"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (besides the data and the regime)."""

    model: str = "metric"
    dim: int = 64
    lr: float = 1e-3
    epochs: int = 100
    batch_size: int = 1024
    negatives: int = 8
    margin: float = 0.5
    norm: str = "clip"
    reg: float = 0.0
    patience: int = 10
    seed: int = 0
    mix: float | None = None  # pop-mix weight on the user's tags; None: tuned on validation

    def validate(self) -> "TrainConfig":
        for option in fields(self):
            value, kind = getattr(self, option.name), float if option.name == "mix" else type(option.default)
            numeric = kind is float and isinstance(value, int)
            if (option.name == "mix" and value is None) or (isinstance(value, kind) or numeric) and not isinstance(value, bool):
                continue
            raise RobustagError(f"--{option.name.replace('_', '-')}: invalid value {value!r}; expected {kind.__name__}")
        checks = {
            "model": self.model in (*LEARNED_MODELS, *POPULARITY_MODELS),
            "dim": self.dim >= 1,
            "lr": self.lr > 0,
            "epochs": self.epochs >= 1,
            "batch-size": self.batch_size >= 1,
            "negatives": self.negatives >= 1,
            "margin": self.margin >= 0,
            "norm": self.norm in ("clip", "reg", "none"),
            "reg": self.reg >= 0,
            "patience": self.patience >= 1,
            "mix": self.mix is None or 0 <= self.mix <= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            value = getattr(self, name.replace("-", "_"))
            allowed = {
                "model": ", ".join((*LEARNED_MODELS, *POPULARITY_MODELS)),
                "norm": "clip, reg, none",
                "mix": "a weight in [0, 1]",
            }.get(name, "a positive value" if name != "margin" else "a value ≥ 0")
            raise RobustagError(f"--{name}: invalid value {value!r}; expected {allowed}")
        return self


# Defaults chosen by mean validation NDCG@3 over lastfm and movielens 10-core (never on
# test); the sweep tables are in the foundation issue's notes (benchmarks/sweep_defaults.py).
MODEL_DEFAULTS: dict[str, dict] = {
    "metric": dict(dim=128, lr=2e-3, margin=0.75, norm="clip", negatives=16),
    "pitf": dict(dim=128, lr=2e-3, reg=1e-5, negatives=8),
}


def default_config(model: str, **overrides) -> TrainConfig:
    """The tuned defaults of `model`, with any non-None override applied."""
    base = TrainConfig(model=model, **MODEL_DEFAULTS.get(model, {}))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None}).validate()


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` (CUDA when there is a GPU), `cpu`, `cuda` or `cuda:N`; anything else, or a GPU
    this machine lacks, is refused here, before any work."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise RobustagError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RobustagError(f"--device {device}: CUDA is not available on this machine; use auto or cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise RobustagError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return chosen


class NegativeSampler:
    """Draws K negatives per training triple uniformly from T \\ T+(u, i), by vectorised rejection."""

    def __init__(self, train: Posts, n_tags: int, generator: torch.Generator, device: torch.device):
        post_index = np.repeat(np.arange(len(train)), train.tag_counts())
        self.post_index = torch.as_tensor(post_index, device=device)
        # Posts are sorted and tags ascending within a post, so the keys are already sorted.
        self.keys = torch.as_tensor(post_index * n_tags + train.tag_indices, device=device)
        self.n_tags, self.generator = n_tags, generator

    def sample(self, triple_index: torch.Tensor, k: int) -> torch.Tensor:
        post = self.post_index[triple_index].unsqueeze(1) * self.n_tags
        negatives = torch.randint(self.n_tags, (len(triple_index), k), generator=self.generator, device=post.device)
        while True:
            queries = post + negatives
            slot = torch.searchsorted(self.keys, queries).clamp(max=len(self.keys) - 1)
            clash = self.keys[slot] == queries
            n_clash = int(clash.sum())
            if n_clash == 0:
                return negatives
            redraw = torch.randint(self.n_tags, (n_clash,), generator=self.generator, device=post.device)
            negatives[clash] = redraw


class TrainingRegime:
    """How a batch becomes a loss; defenses subclass this. The default is the model's own loss."""

    name = "plain"

    def begin_epoch(self, epoch: int, model: EmbeddingModel) -> None:
        """Called before each epoch (0-based): schedules, paces."""

    def loss(self, model: EmbeddingModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise and any per-batch figures worth recording (as tensors or floats)."""
        loss = model.training_loss(batch)
        return loss, {"loss": loss.detach()}


@dataclass
class TrainResult:
    model: object
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0


EpochCallback = Callable[[dict], None]


def train(
    split: TagSplit,
    config: TrainConfig,
    device: torch.device,
    regime: TrainingRegime | None = None,
    on_epoch: EpochCallback | None = None,
    compile: bool = False,
) -> TrainResult:
    """Train the configured model on `split.train`; popularity baselines are fitted instead.

    `compile=True` runs the model's per-pair losses through `torch.compile` (fused kernels for
    the (B, K, d) products that dominate an epoch); results then match the eager ones to
    floating-point rounding, not bit for bit.
    """
    config.validate()
    if config.model in POPULARITY_MODELS:
        return fit_popularity(split, config, device)
    torch.manual_seed(config.seed)
    model = build_learned(split, config).to(device)
    with compiled_losses(model, compile):
        return _fit(model, split, config, device, regime or TrainingRegime(), on_epoch)


@contextmanager
def compiled_losses(model: EmbeddingModel, enabled: bool):
    """Every regime scores pairs through `model.pair_losses`, so compiling it speeds all of
    them; the compiled function is removed afterwards so the model stays plain to save/pickle."""
    if not enabled:
        yield
        return
    model.pair_losses = torch.compile(model.pair_losses)
    try:
        # FreeLB back-propagates each ascent step's loss twice (retain_graph), which buffers
        # donated to the compiled backward would forbid.
        with torch._functorch.config.patch(donated_buffer=False):
            yield
    finally:
        del model.pair_losses


def _fit(model, split, config, device, regime, on_epoch) -> TrainResult:
    """Epochs of shuffled batches with fresh negatives until early stopping; best epoch kept."""
    generator = torch.Generator(device=device).manual_seed(config.seed)
    sampler = NegativeSampler(split.train, split.n_tags, generator, device)
    users, items, tags = (torch.as_tensor(a, device=device) for a in split.train.triples())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    result = TrainResult(model=model, config=config)
    best_state, best_score, stale = None, -1.0, 0
    started = time.perf_counter()
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        model.train()
        regime.begin_epoch(epoch, model)
        sums: dict[str, torch.Tensor] = {}
        order = torch.randperm(len(users), generator=generator, device=device)
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            batch = Batch(users[index], items[index], tags[index], sampler.sample(index, config.negatives))
            loss, figures = regime.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.after_step()
            for key, value in figures.items():  # summed on the device: one host sync per epoch
                sums[key] = sums.get(key, 0.0) + torch.as_tensor(value, dtype=torch.float64) * len(index)
        record = {"epoch": epoch + 1, **{k: float(v) / len(users) for k, v in sums.items()}}
        record["seconds"] = time.perf_counter() - epoch_start
        record.update(_validate(model, split, device))
        result.history.append(record)
        if on_epoch:
            on_epoch(record)
        score = record.get(f"valid_{EARLY_STOP_METRIC}", 0.0)
        if len(split.valid) == 0 or score > best_score:
            best_state, best_score, stale = copy.deepcopy(model.state_dict()), score, 0
            result.best_epoch = epoch + 1
            result.best_valid = {k: v for k, v in record.items() if k.startswith("valid_")}
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    result.train_seconds = time.perf_counter() - started
    return result


def build_learned(split: TagSplit, config: TrainConfig) -> EmbeddingModel:
    sizes = (split.n_users, split.n_items, split.n_tags)
    if config.model == "metric":
        return LEARNED_MODELS["metric"](*sizes, dim=config.dim, margin=config.margin, norm=config.norm, reg=config.reg)
    return LEARNED_MODELS["pitf"](*sizes, dim=config.dim, reg=config.reg)


def _validate(model, split: TagSplit, device: torch.device) -> dict[str, float]:
    if len(split.valid) == 0:
        return {}
    model.eval()
    summary = evaluate(scores_of(model), split.valid, split.n_tags, device).summary()
    return {f"valid_{k}": summary[k] for k in ("f1@3", EARLY_STOP_METRIC)}


MIX_GRID = tuple(np.round(np.linspace(0, 1, 21), 2))


def fit_popularity(split: TagSplit, config: TrainConfig, device: torch.device) -> TrainResult:
    """Popularity baselines need no training; `pop-mix` tunes its weight on validation NDCG@3."""
    sizes = (split.n_users, split.n_items, split.n_tags)
    started = time.perf_counter()
    if config.model != "pop-mix" or config.mix is not None:
        model = popularity_model(config.model, split.train, *sizes, mix=0.5 if config.mix is None else config.mix)
        return TrainResult(model=model, config=config, train_seconds=time.perf_counter() - started)
    if len(split.valid) == 0:
        raise RobustagError("pop-mix: no validation posts to tune --mix on; pass --mix or keep validation")
    history = []
    for mix in MIX_GRID:
        model = popularity_model("pop-mix", split.train, *sizes, mix=float(mix))
        score = evaluate(scores_of(model), split.valid, split.n_tags, device).summary()[EARLY_STOP_METRIC]
        history.append({"mix": float(mix), f"valid_{EARLY_STOP_METRIC}": score})
    best = max(history, key=lambda row: row[f"valid_{EARLY_STOP_METRIC}"])
    model = popularity_model("pop-mix", split.train, *sizes, mix=best["mix"])
    return TrainResult(
        model=model,
        config=replace(config, mix=best["mix"]),
        history=history,
        best_valid={f"valid_{EARLY_STOP_METRIC}": best[f"valid_{EARLY_STOP_METRIC}"]},
        train_seconds=time.perf_counter() - started,
    )

