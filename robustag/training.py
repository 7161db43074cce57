"""Training: negative sampling, Adam, early stopping on validation NDCG@3, seeded and repeatable.

A training *regime* (the hook defenses plug into) turns a batch into a loss; the default is
the model's own loss. Everything random draws from one seeded generator, so a fixed seed
gives the same numbers on CPU.
"""

from __future__ import annotations

import contextvars
import copy
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np
import torch

from robustag.allocator import keep_step_memory
from robustag.errors import ParameterError, RobustagError
from robustag.evaluation import evaluate_model
from robustag.models import MODELS, Batch, EmbeddingModel, Model
from robustag.preprocess import Posts, TagSplit

EARLY_STOP_METRIC = "ndcg@3"


# Fields of the configuration before models declared their own parameters. They stay in the
# flat description (`TrainConfig.describe`) at their old defaults, so the unit keys, stored
# cells and checkpoints of earlier run folders keep matching.
LEGACY_MODEL_FIELDS = {"margin": 0.5, "norm": "clip", "reg": 0.0, "mix": None}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (besides the data and the regime): the
    options every model shares, and `model_params`, the model's own declared parameters."""

    model: str = "metric"
    dim: int = 64
    lr: float = 1e-3
    epochs: int = 100
    batch_size: int = 1024
    negatives: int = 8
    patience: int = 10
    seed: int = 0
    model_params: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        for option in fields(self):
            if option.name in ("model_params",):
                continue
            value, kind = getattr(self, option.name), type(option.default)
            if not (isinstance(value, kind) or (kind is float and isinstance(value, int))) or isinstance(value, bool):
                raise ParameterError(option.name, f"invalid value {value!r}; expected {kind.__name__}")
        checks = {"dim": self.dim >= 1, "lr": self.lr > 0, "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1,
                  "negatives": self.negatives >= 1, "patience": self.patience >= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            value = getattr(self, bad[0])
            raise ParameterError(bad[0], f"invalid value {value!r}; expected a positive value")
        self.recipe()  # the model exists and its parameters pass their checks
        return self

    def recipe(self) -> Model:
        """The model plugin, configured with this configuration's model parameters."""
        return MODELS.create(self.model, **self.model_params)

    def describe(self) -> dict:
        """The flat description that keys a trained model (hashed into unit keys, stored with
        cells and checkpoints): shared options and model parameters side by side."""
        shared = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model_params"}
        return {**shared, **LEGACY_MODEL_FIELDS, **self.model_params}

    @classmethod
    def from_description(cls, flat: dict) -> "TrainConfig":
        """The configuration a `describe()` came from (also one written before models declared
        their parameters: the fields a model does not declare are left out)."""
        declared = MODELS.get(flat["model"]).params
        shared = {f.name: flat[f.name] for f in fields(cls) if f.name in flat and f.name != "model_params"}
        return cls(**shared, model_params={k: flat[k] for k in declared if k in flat})


SHARED_OPTIONS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("model", "model_params"))


def default_config(model: str, **overrides) -> TrainConfig:
    """The configuration of `model` (a name or a spec such as `metric:margin=1`) at its tuned
    defaults, with every non-None override applied: shared options (dim, lr, epochs,
    batch_size, negatives, patience, seed) and the model's own parameters (margin, reg, ...)."""
    cls, values = MODELS.resolve(model)
    written = {k: values.pop(k) for k in list(values) if k in SHARED_OPTIONS}  # `metric:dim=32`: a training option
    clash = [k for k, v in written.items() if overrides.get(k) is not None and str(overrides[k]) != v]
    if clash:
        raise ParameterError(clash[0], f"given as {overrides[clash[0]]!r} and as {written[clash[0]]!r} in the model "
                                       f"spec {model!r}; give it once")
    given = {**{k: _typed(k, v) for k, v in written.items()}, **{k: v for k, v in overrides.items() if v is not None}}
    own = {k: v for k, v in given.items() if k not in SHARED_OPTIONS}
    unknown = sorted(k for k in own if k not in cls.params)
    if unknown:
        raise ParameterError(unknown[0], f"model {cls.name} has no such parameter "
                                         f"(its parameters: {', '.join(cls.params) or 'none'})")
    recipe = cls(**{**values, **own})
    shared = {**cls.defaults, **{k: v for k, v in given.items() if k in SHARED_OPTIONS}}
    return TrainConfig(model=cls.name, **shared, model_params=dict(recipe.config)).validate()


def _typed(option: str, text: str):
    """A shared option's value written in a model spec (`metric:dim=32`), as its field's type."""
    kind = type(next(f.default for f in fields(TrainConfig) if f.name == option))
    try:
        return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        raise ParameterError(option, f"invalid value {text!r}; expected {kind.__name__}") from None


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` (CUDA when there is a GPU), `cpu`, `cuda` or `cuda:N`; anything else, or a GPU
    this machine lacks, is refused here, before any work."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ParameterError("device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("device", "CUDA is not available on this machine; use auto or cpu", device)
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ParameterError("device", f"this machine has {torch.cuda.device_count()} GPU(s), "
                                       f"cuda:0 to cuda:{torch.cuda.device_count() - 1}", device)
    return chosen


def check_negatives(train: Posts, n_tags: int, dataset: str = "the data set") -> None:
    """Every training post leaves some tag out, so a negative can be drawn for it (a post that
    carries every tag has an empty complement, and a ranking loss needs a negative)."""
    full = int((train.tag_counts() >= n_tags).sum())
    if full:
        raise RobustagError(f"{dataset}: {full} training posts carry all {n_tags} of its tags, so no negative tag can "
                            "be drawn for them (a ranking loss needs one); use a data set with more tags, or posts "
                            "that leave some tags out")


class NegativeSampler:
    """Draws K negatives per training triple uniformly from T \\ T+(u, i), with no rejection loop
    and no host round trip (nothing waits on the device's answer, so a GPU never stalls here).

    Inverse transform over each post's complement: with the post's positive tags sorted,
    p_0 < p_1 < ..., the r-th tag not among them (r uniform in [0, T − |T+|)) is
    r + #{m : p_m − m ≤ r}, as every positive at or below the answer pushes it up by one. The
    shifted positives p_m − m are non-decreasing within a post, so one sorted array of keys
    (post·T + p_m − m) answers every count with a single searchsorted."""

    def __init__(self, train: Posts, n_tags: int, generator: torch.Generator, device: torch.device):
        check_negatives(train, n_tags)
        counts = train.tag_counts()
        post_index = np.repeat(np.arange(len(train)), counts)
        rank_in_post = np.arange(len(post_index)) - np.repeat(train.tag_indptr[:-1], counts)
        # Posts are sorted and tags ascending within a post, so the keys are already sorted.
        self.keys = torch.as_tensor(post_index * n_tags + train.tag_indices - rank_in_post, device=device)
        self.post_index = torch.as_tensor(post_index, device=device)
        self.first_key = torch.as_tensor(train.tag_indptr[:-1], device=device)
        self.free = torch.as_tensor(n_tags - counts, device=device)  # the size of each post's complement
        self.n_tags, self.generator = n_tags, generator

    def sample(self, triple_index: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """K negatives for each triple, drawn from `generator` (default: the sampler's own)."""
        post = self.post_index[triple_index].unsqueeze(1)
        free = self.free[post]
        uniform = torch.rand((len(triple_index), k), generator=generator or self.generator, device=post.device,
                             dtype=torch.float64)
        rank = torch.minimum((uniform * free).long(), free - 1)  # the rank-th tag of the complement
        below = torch.searchsorted(self.keys, post * self.n_tags + rank, right=True) - self.first_key[post]
        return rank + below


class TrainingRegime:
    """How a batch becomes a loss; defenses subclass this. The default is the model's own loss."""

    name = "plain"

    def begin_epoch(self, epoch: int, model: EmbeddingModel) -> None:
        """Called before each epoch (0-based): schedules, paces."""

    def loss(self, model: EmbeddingModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise and any per-batch figures worth recording (as tensors or floats)."""
        loss = model.training_loss(batch)
        return loss, {"loss": loss.detach()}

    def end_epoch(self, epoch: int, model: EmbeddingModel) -> None:
        """Called after each epoch's steps, before validation: checks deferred so that no step waits."""


@dataclass
class TrainResult:
    model: object
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    compiled: bool = False  # whether the losses ran compiled (the store records the mode)
    notes: list[str] = field(default_factory=list)  # what a user should hear (a compile fallback)


EpochCallback = Callable[[dict], None]


def train(
    split: TagSplit,
    config: TrainConfig,
    device: torch.device,
    regime: TrainingRegime | None = None,
    on_epoch: EpochCallback | None = None,
    compile: bool | None = None,
) -> TrainResult:
    """Train the configured model on `split.train`; popularity baselines are fitted instead.

    Compiled by default (`compile=None`, see `compile_mode`): the model's per-pair losses run
    through `torch.compile` (fused kernels for the (B, K, d) products that dominate an epoch);
    results then match eager ones to floating-point rounding, not bit for bit.
    """
    config.validate()
    keep_step_memory()
    recipe = config.recipe()
    if not recipe.learned:
        return fit_untrained(recipe, split, config, device)
    compiled, note = compile_mode(compile, device)
    torch.manual_seed(config.seed)
    model = build_model(split, config).to(device)
    with compiled_losses(model, compiled):
        result, = run_epochs(SoloFeed(model, split, config, device, on_epoch), regime or TrainingRegime())
    result.compiled, result.notes = compiled, [note] if note else []
    return result


COMPILE_VARIABLE = "ROBUSTAG_COMPILE"
_compiler_problems: dict[str, str | None] = {}  # device type -> why torch.compile fails there (None: it works)
_noted: set[str] = set()


def compile_mode(requested: bool | None, device: torch.device) -> tuple[bool, str | None]:
    """Whether training compiles, and the one-line note to give (once per process) when the
    default wanted to but cannot. `requested` None is the default: compile unless
    ROBUSTAG_COMPILE=0, and only where a tiny function compiles and runs on `device` (a C++
    compiler on CPU, Triton on GPU); False never compiles; True compiles or fails loudly."""
    if requested is not None:
        return requested, None
    if os.environ.get(COMPILE_VARIABLE, "1").strip().lower() in ("0", "off", "false", "no"):
        return False, None
    problem = compiler_problem(device)
    if problem is None:
        return True, None
    note = None if device.type in _noted else f"torch.compile does not work on {device.type} here ({problem}); training eagerly"
    _noted.add(device.type)
    return False, note


def compiler_problem(device: torch.device) -> str | None:
    """Why `torch.compile` fails on this device type, or None; probed once per process."""
    if device.type not in _compiler_problems:
        try:
            torch.compile(lambda x: (x * x).sum())(torch.ones(8, device=device))
            _compiler_problems[device.type] = None
        except Exception as error:  # any failure of the compiler stack means: train eagerly
            _compiler_problems[device.type] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    return _compiler_problems[device.type]


_compiling = contextvars.ContextVar("robustag_compiling", default=False)


def compiling() -> bool:
    """Whether training runs compiled here (a regime may compile its own steps too)."""
    return _compiling.get()


@contextmanager
def compiled_losses(model: EmbeddingModel, enabled: bool):
    """Every regime scores pairs through `model.pair_losses`, so compiling it speeds all of
    them; the compiled function is removed afterwards so the model stays plain to save/pickle."""
    if not enabled:
        yield
        return
    model.pair_losses = torch.compile(model.pair_losses)
    token = _compiling.set(True)
    try:
        # FreeLB back-propagates each ascent step's loss twice (retain_graph), which buffers
        # donated to the compiled backward would forbid. A plugin model whose losses the
        # compiler cannot take runs them eagerly instead of failing (torch logs why).
        with torch._functorch.config.patch(donated_buffer=False), torch._dynamo.config.patch(suppress_errors=True):
            yield
    finally:
        _compiling.reset(token)
        del model.pair_losses


class Feed:
    """What `run_epochs` trains: a network and the batches of the model or models it holds, each
    model drawing its batch order and negatives from its own seeded stream. `SoloFeed` is one
    model; `stacking.StackFeed` holds several laid end to end. A feed says how a batch becomes
    the loss to back-propagate, and records each epoch and early-stops its models."""

    def __init__(self, network, split: TagSplit, configs: list[TrainConfig], device: torch.device):
        self.network, self.split, self.config, self.device = network, split, configs[0], device
        self.generators = [torch.Generator(device=device).manual_seed(c.seed) for c in configs]
        self.sampler = NegativeSampler(split.train, split.n_tags, self.generators[0], device)
        self.triples = tuple(torch.as_tensor(a, device=device) for a in split.train.triples())

    def batches(self):
        """An epoch's (batch, rows per model) in order."""
        raise NotImplementedError

    def loss(self, regime: TrainingRegime, batch: Batch) -> tuple[torch.Tensor, dict]:
        return regime_loss(regime, self.network, batch)

    def end_epoch(self, epoch: int, sums: dict, regime: TrainingRegime, seconds: float) -> bool:
        """Record the epoch and validate; True when every model has stopped."""
        raise NotImplementedError

    def finish(self) -> list[TrainResult]:
        raise NotImplementedError

    def figures(self, sums: dict, epoch: int, regime: TrainingRegime, prefix: str = "") -> dict:
        """The epoch's record: the batch figures as means over the training triples, checked finite."""
        record = {"epoch": epoch + 1, **{prefix + k: float(v) / len(self.triples[0]) for k, v in sums.items()}}
        check_finite(record, regime)
        return record


class SoloFeed(Feed):
    """One model trained alone (`train`)."""

    def __init__(self, model, split: TagSplit, config: TrainConfig, device: torch.device, on_epoch: EpochCallback | None):
        super().__init__(model, split, [config], device)
        self.on_epoch = on_epoch
        self.stopping = EarlyStopping(TrainResult(model=model, config=config), config.patience)

    def batches(self):
        users, items, tags = self.triples
        order = torch.randperm(len(users), generator=self.generators[0], device=self.device)
        for start in range(0, len(order), self.config.batch_size):
            index = order[start : start + self.config.batch_size]
            yield Batch(users[index], items[index], tags[index], self.sampler.sample(index, self.config.negatives)), len(index)

    def end_epoch(self, epoch, sums, regime, seconds) -> bool:
        record = {**self.figures(sums, epoch, regime), "seconds": seconds}
        return self.stopping.end_epoch(self.network, record, self.split, self.device, self.on_epoch)

    def finish(self) -> list[TrainResult]:
        return [self.stopping.finish(self.network)]


def run_epochs(feed: Feed, regime: TrainingRegime) -> list[TrainResult]:
    """The epoch loop of every training, alone or stacked: shuffled batches with fresh
    negatives, one Adam step each, until the feed's models early-stop; best epochs kept."""
    optimizer = torch.optim.Adam(feed.network.parameters(), lr=feed.config.lr)
    for epoch in range(feed.config.epochs):
        epoch_start = time.perf_counter()
        feed.network.train()
        regime.begin_epoch(epoch, feed.network)
        sums: dict[str, torch.Tensor] = {}
        for batch, rows in feed.batches():
            loss, figures = feed.loss(regime, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            feed.network.after_step()
            add_figures(sums, figures, rows)
        regime.end_epoch(epoch, feed.network)
        if feed.end_epoch(epoch, sums, regime, time.perf_counter() - epoch_start):
            break
    return feed.finish()


def regime_loss(regime: TrainingRegime, model: EmbeddingModel, batch: Batch) -> tuple[torch.Tensor, dict]:
    """`regime.loss`, its answer checked (a plugin defense's mistake named, not a traceback
    from inside the loop): a scalar loss tensor and a dict of figures."""
    answer = regime.loss(model, batch)
    if (not isinstance(answer, tuple) or len(answer) != 2 or not isinstance(answer[0], torch.Tensor)
            or answer[0].numel() != 1 or not isinstance(answer[1], dict)):
        got = type(answer).__name__ if not isinstance(answer, tuple) else f"a tuple of {len(answer)}"
        raise RobustagError(f"defense {getattr(regime, 'name', type(regime).__name__)}: loss() returned {got}; "
                            "expected (loss, figures): a scalar tensor and a dict of per-batch figures")
    return answer


def check_finite(record: dict, regime: TrainingRegime) -> None:
    """Stop a training whose figures (its loss above all) became NaN or infinite: its metrics
    would mean nothing. Checked once per epoch, where the figures reach the host anyway."""
    broken = {k: v for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
    if broken:
        key, value = next(iter(broken.items()))
        raise RobustagError(f"defense {getattr(regime, 'name', type(regime).__name__)}: its training figure {key!r} "
                            f"became {value} in epoch {record['epoch']}; training stopped (a learning rate or "
                            "weight too large, or a bug in the defense)")


def add_figures(sums: dict[str, torch.Tensor], figures: dict, rows: int) -> None:
    """Add a batch's figures (means over its `rows`) to the epoch's sums, on the device: one
    host sync per epoch, not per batch."""
    for key, value in figures.items():
        sums[key] = sums.get(key, 0.0) + torch.as_tensor(value, dtype=torch.float64) * rows


class EarlyStopping:
    """Validates after each epoch, keeps the parameters of the best epoch by validation NDCG@3,
    and says when `patience` epochs have passed without a better one (with no validation
    posts, every epoch is the best)."""

    def __init__(self, result: TrainResult, patience: int):
        self.result, self.patience = result, patience
        self.best_state, self.best_score, self.stale = None, -1.0, 0
        self.started = time.perf_counter()

    def end_epoch(self, model, record: dict, split: TagSplit, device, on_epoch: EpochCallback | None) -> bool:
        """Validate, record the epoch; True when training should stop."""
        record.update(_validate(model, split, device))
        self.result.history.append(record)
        if on_epoch:
            on_epoch(record)
        score = record.get(f"valid_{EARLY_STOP_METRIC}", 0.0)
        if len(split.valid) == 0 or score > self.best_score:
            self.best_state, self.best_score, self.stale = copy.deepcopy(model.state_dict()), score, 0
            self.result.best_epoch = record["epoch"]
            self.result.best_valid = {k: v for k, v in record.items() if k.startswith("valid_")}
            return False
        self.stale += 1
        return self.stale >= self.patience

    def finish(self, model) -> TrainResult:
        """The result, with the best epoch's parameters loaded into `model`."""
        model.load_state_dict(self.best_state)
        model.eval()
        self.result.train_seconds = time.perf_counter() - self.started
        return self.result


def build_model(split: TagSplit, config: TrainConfig) -> EmbeddingModel:
    """A learned model's network for this split (seed torch first for a reproducible start).
    Users a poisoning attack added get rows drawn after every other parameter, so the real
    users', items' and tags' starting rows are the ones the clean model starts from: the
    attack's measured effect holds no re-initialisation noise."""
    recipe = config.recipe()
    model = recipe.build(split.n_users - split.added_users, split.n_items, split.n_tags, config.dim)
    if not split.added_users:
        return model
    grown = recipe.build(split.n_users, split.n_items, split.n_tags, config.dim)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            target = grown.state_dict()[name]
            (target[: len(value)] if value.dim() else target).copy_(value)  # the user table: its first rows
    return grown


def _validate(model, split: TagSplit, device: torch.device) -> dict[str, float]:
    if len(split.valid) == 0:
        return {}
    model.eval()
    summary = evaluate_model(model, split.valid, split.n_tags, device).summary()
    return {f"valid_{k}": summary[k] for k in ("f1@3", EARLY_STOP_METRIC)}


def fit_untrained(recipe, split: TagSplit, config: TrainConfig, device: torch.device) -> TrainResult:
    """A model that needs no training (the popularity baselines); what it tuned on validation
    is in its history, and in the configuration returned."""
    started = time.perf_counter()
    model, history = recipe.fit(split, device)
    tuned = replace(config, model_params=dict(recipe.config))
    best = {k: v for k, v in max(history, key=lambda row: row.get(f"valid_{EARLY_STOP_METRIC}", 0)).items()
            if k.startswith("valid_")} if history else {}
    return TrainResult(model=model, config=tuned, history=history, best_valid=best,
                       train_seconds=time.perf_counter() - started)
