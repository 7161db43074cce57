"""The conformance kit: what a third-party plugin runs in its own CI (as scikit-learn's
`check_estimator`), on tiny synthetic data, in seconds.

    from robustag.testing import check_attack, check_defense, check_model

    def test_my_attack_conforms():
        check_attack(MyAttack)                 # or check_attack(MyAttack, steps=3)

Each check raises `ConformanceError` naming the plugin and the contract it breaks, and returns
the names of the checks it passed. The contracts (docs/plugins.md says them in full):

- every plugin: a name a spec can write; a summary; its spec round-trips (built from its own
  canonical spec, it has the same configuration);
- an embedding attack: perturbations with the keys and shapes it was given, finite, within
  the budget for each norm and table; the same under the same seed; a trainable one drives
  adversarial training (finite losses, parameters move, reproducible);
- a poisoning attack: a split whose validation and test posts are untouched and whose
  training posts index real users, items and tags; the same under the same seed;
- a defense: trains both learned models with finite figures, moves the parameters (its loss
  has gradients), and gives the same model under the same seed;
- a model: finite scores for every tag of every post, the same from the same seed; a learned
  one trains (finite figures, parameters move, reproducible); one with embeddings has the
  three tables, scores from embeddings that agree with `score`, and takes an evasion attack.

The kit trains eagerly: its models live for a few steps, shorter than the compiler's warm-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustag.attack import ATTACKS, Attack, DataAttack, EmbeddingAttack
from robustag.datasets import TagAssignments
from robustag.defense import DEFENSES, Defense
from robustag.plugins import NAME_PATTERN, PluginError, parse_spec
from robustag.preprocess import SplitOptions, TagSplit, build_split
from robustag.robustness import attacked_embeddings
from robustag.models import MODELS, Batch, EmbeddingModel, Model
from robustag.training import TrainingRegime, build_model, default_config, train

CPU = torch.device("cpu")


class ConformanceError(AssertionError):
    """A plugin breaks its contract; the message names the plugin and the check."""


def planted_assignments(n_users=60, n_items=80, n_tags=40, n_groups=8, posts_per_user=12, seed=0):
    """(users, items, tags, timestamps) with planted structure: each user and item belongs to a
    group, and a post's tags come mostly from its item's and its user's groups."""
    rng = np.random.default_rng(seed)
    user_group, item_group = rng.integers(n_groups, size=n_users), rng.integers(n_groups, size=n_items)
    tag_group = np.arange(n_tags) % n_groups
    rows = []
    for user in range(n_users):
        for time, item in enumerate(rng.choice(n_items, size=posts_per_user, replace=False)):
            pool = np.flatnonzero((tag_group == item_group[item]) | (tag_group == user_group[user]))
            rows += [(f"u{user}", f"i{item}", f"t{tag}", 1000 * user + time) for tag in rng.choice(pool, 3, replace=False)]
    users, items, tags, times = zip(*rows)
    return np.array(users), np.array(items), np.array(tags), np.array(times, dtype=float)


def synthetic_split(seed: int = 0) -> TagSplit:
    """A tiny planted data set (60 users, 80 items, 40 tags), 3-core, split as the real ones."""
    users, items, tags, times = planted_assignments(seed=seed)
    return build_split(TagAssignments(users, items, tags, times, Path("synthetic")), "synthetic", SplitOptions(p_core=3))


def check_attack(cls: type, **params) -> list[str]:
    """Run the attack contract on `cls` built with `params` (its defaults otherwise)."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise ConformanceError(f"{cls!r}: not a subclass of robustag.attack.Attack")
    checks = [_named, _spec_round_trips]
    if issubclass(cls, EmbeddingAttack):
        checks += [_checked_with_its_own_parameters, _perturbs_within_contract, _perturbs_reproducibly]
        if cls.trainable:
            checks.append(_drives_adversarial_training)
    elif issubclass(cls, DataAttack):
        checks += [_poisons_training_posts_only, _poisons_reproducibly]
    return _run(cls, params, checks)


def check_defense(cls: type, **params) -> list[str]:
    """Run the defense contract on `cls` built with `params` (its defaults otherwise)."""
    if not (isinstance(cls, type) and issubclass(cls, Defense)):
        raise ConformanceError(f"{cls!r}: not a subclass of robustag.defense.Defense")
    return _run(cls, params, [_named, _spec_round_trips, _trains_learned_models])


def check_model(cls: type, **params) -> list[str]:
    """Run the model contract on `cls` built with `params` (its defaults otherwise)."""
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ConformanceError(f"{cls!r}: not a subclass of robustag.models.Model")
    checks = [_named, _spec_round_trips, _scores_every_tag]
    if cls.learned:
        checks.append(_trains)
    if cls.embeddings:
        checks += [_embeddings_serve_attacks, _scores_agree]
    return _run(cls, params, checks)


def _run(cls, params: dict, checks) -> list[str]:
    for check in checks:
        try:
            check(cls, params)
        except ConformanceError:
            raise
        except Exception as error:  # a plugin may fail in any way: say which contract it broke
            raise ConformanceError(f"{cls.name}: {check.__name__.strip('_')}: {type(error).__name__}: {error}") from error
    return [check.__name__.strip("_") for check in checks]


def _fail(cls, check: str, message: str):
    raise ConformanceError(f"{cls.name}: {check}: {message}")


def _named(cls, params) -> None:
    if not isinstance(cls.name, str) or not re.fullmatch(NAME_PATTERN, cls.name):
        _fail(cls, "named", f"name {cls.name!r} cannot be written in a spec (letters, digits, '_', '.', '-')")
    if not cls.summary:
        _fail(cls, "named", "no summary (one line for `robustag attacks list` / `defenses list`)")


def _spec_round_trips(cls, params) -> None:
    """Built from its own spec, the plugin is the same, at its defaults and with each
    parameter moved off its default (a spec that forgets a parameter shows here)."""
    for variant in [params, *_altered(cls, params)]:
        plugin = cls(**variant)
        again = cls(**parse_spec(plugin.spec)[1])
        if again.spec != plugin.spec or again.config != plugin.config:
            _fail(cls, "spec_round_trips", f"{plugin.config} gives the spec {plugin.spec!r}, which builds {again.config}")


def _checked_with_its_own_parameters(cls, params) -> None:
    """What `checked_with` fixes for the sanity checks builds the attack (no unknown name, a valid value)."""
    cls(**{**params, **cls.checked_with})


def _other_values(value) -> list:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        return [value * 2 + 1]
    return []


def _altered(cls, params: dict) -> list[dict]:
    """`params` with one declared parameter at another valid value, for each that has one."""
    candidates = []
    for key, param in cls.params.items():
        value = params.get(key, param.default)
        options = [c for c in (param.choices or ()) if c != value] or _other_values(value)
        candidates += [{**params, key: option} for option in options[:1]]
    return _accepted(cls, candidates)


def _accepted(cls, candidates: list[dict]) -> list[dict]:
    """The parameter sets the plugin accepts (it may refuse a value it cannot serve)."""
    found = []
    for candidate in candidates:
        try:
            cls(**candidate)
        except PluginError:
            continue
        found.append(candidate)
    return found


# -- embedding attacks ------------------------------------------------------------------------

_SETUP: dict = {}


def _setup():
    """The synthetic split and a metric model trained on it for 3 epochs (made once)."""
    if not _SETUP:
        split = synthetic_split()
        _SETUP["split"] = split
        _SETUP["model"] = train(split, default_config("metric", dim=8, epochs=3, seed=0), CPU, compile=False).model
    return _SETUP["split"], _SETUP["model"]


def _variants(cls, params) -> list[dict]:
    """The attack at each norm and with the tag table perturbed too, where it declares and
    accepts those."""
    changes = [(key, value) for key, value in (("norm", "linf"), ("targets", "user+item+tag"))
               if key in cls.params and key not in params]
    return [params, *_accepted(cls, [{**params, key: value} for key, value in changes])]


def _perturbs_within_contract(cls, params) -> None:
    split, model = _setup()
    for variant in _variants(cls, params):
        attacked = attacked_embeddings(model, split.test, cls(**variant), CPU, split=split)  # checks keys, shapes, NaN, budget
        if not all(torch.isfinite(v).all() for v in attacked.values()):
            _fail(cls, "perturbs_within_contract", f"{variant}: non-finite attacked embeddings")


def _perturbs_reproducibly(cls, params) -> None:
    split, model = _setup()
    first, second = (attacked_embeddings(model, split.test, cls(**params), CPU, split=split) for _ in range(2))
    if not all(torch.equal(first[k], second[k]) for k in first):
        _fail(cls, "perturbs_reproducibly", "two instances with the same parameters perturb differently (seed it)")


def _drives_adversarial_training(cls, params) -> None:
    if cls.name not in ATTACKS.names():
        ATTACKS.register(cls, "robustag.testing")  # a defense finds its attack by name
    _check_training(cls, DEFENSES.get("aml"), {"attack": cls(**params).spec}, "drives_adversarial_training")


# -- poisoning attacks ------------------------------------------------------------------------

def _poisons_training_posts_only(cls, params) -> None:
    split = synthetic_split()
    attack = cls(**params)
    attack.check(split)
    poisoned = attack.poison(split, seed=0)
    if not isinstance(poisoned, TagSplit):
        _fail(cls, "poisons_training_posts_only", f"poison returned {type(poisoned).__name__}, not a TagSplit")
    for part in ("valid", "test"):
        before, after = getattr(split, part), getattr(poisoned, part)
        if not all(np.array_equal(getattr(before, f), getattr(after, f)) for f in ("users", "items", "tag_indices")):
            _fail(cls, "poisons_training_posts_only", f"the {part} posts changed")
    train_posts = poisoned.train
    bounds = {"users": len(poisoned.user_labels), "items": poisoned.n_items, "tag_indices": poisoned.n_tags}
    for field, bound in bounds.items():
        values = getattr(train_posts, field)
        if len(values) and (values.min() < 0 or values.max() >= bound):
            _fail(cls, "poisons_training_posts_only", f"training {field} outside 0..{bound - 1}")


def _poisons_reproducibly(cls, params) -> None:
    split = synthetic_split()
    first, second = (cls(**params).poison(split, seed=3).train for _ in range(2))
    if not all(np.array_equal(getattr(first, f), getattr(second, f)) for f in ("users", "items", "tag_indices")):
        _fail(cls, "poisons_reproducibly", "two poisonings with the same seed differ")


# -- models -----------------------------------------------------------------------------------

def _model_config(cls, params):
    if cls.name not in MODELS.names():
        MODELS.register(cls, "robustag.testing")  # configurations name their model
    return default_config(cls(**params).spec, dim=8, epochs=2, seed=0)


def _scores_every_tag(cls, params) -> None:
    """Trained (or fitted) on the synthetic split: finite scores (posts, tags) for every
    test post, the same from the same seed."""
    split = synthetic_split()
    config = _model_config(cls, params)
    runs = [train(split, config, CPU, compile=False).model for _ in range(2)]
    users, items = torch.as_tensor(split.test.users), torch.as_tensor(split.test.items)
    with torch.no_grad():
        first, second = (model.score(users, items) for model in runs)
    if first.shape != (len(split.test), split.n_tags) or not torch.isfinite(first).all():
        _fail(cls, "scores_every_tag", f"score gave {tuple(first.shape)} (finite: {bool(torch.isfinite(first).all())}), "
                                       f"expected finite ({len(split.test)}, {split.n_tags})")
    if not torch.equal(first, second):
        _fail(cls, "scores_every_tag", "two fits from the same seed score differently")


def _trains(cls, params) -> None:
    _model_config(cls, params)
    _check_training(cls, TrainingRegime, {}, "trains", models=(cls(**params).spec,))


def _embeddings_serve_attacks(cls, params) -> None:
    """An embedding model: its three tables, scores from embeddings that agree with `score`,
    and an evasion attack within budget on them."""
    split = synthetic_split()
    model = train(split, _model_config(cls, params), CPU, compile=False).model
    if not isinstance(model, EmbeddingModel) or set(model.tables()) != {"user", "item", "tag"}:
        _fail(cls, "embeddings_serve_attacks", "not an EmbeddingModel with user, item and tag tables")
    users, items = torch.as_tensor(split.test.users), torch.as_tensor(split.test.items)
    with torch.no_grad():
        direct = model.score_all(model.user(users), model.item(items), model.tag.weight)
        if not torch.allclose(direct, model.score(users, items), atol=1e-5):
            _fail(cls, "embeddings_serve_attacks", "score_all of its own embeddings disagrees with score")
    attacked_embeddings(model, split.test, ATTACKS.create("pgd:eps=0.1,steps=3"), CPU)


def _scores_agree(cls, params) -> None:
    """What training optimises is what ranking uses: the score differences between tags that
    the pair loss sees (`pair_scores`) equal those of `score_all`; and declared
    `score_directions` reproduce how every tag's score moves under a perturbation of the user
    and item rows (a sign error, swapped or scaled directions would make certificates wrong)."""
    split = synthetic_split()
    model = train(split, _model_config(cls, params), CPU, compile=False).model
    generator = torch.Generator().manual_seed(0)
    users, items = torch.as_tensor(split.test.users), torch.as_tensor(split.test.items)
    tags = torch.randint(split.n_tags, (len(users), 5), generator=generator)
    with torch.no_grad():
        ranked = model.score_all(model.user(users), model.item(items), model.tag.weight).gather(1, tags)
        positive, negative = model.pair_scores(model.embed(Batch(users, items, tags[:, 0], tags[:, 1:])))
        trained_gaps, ranked_gaps = positive - negative, ranked[:, :1] - ranked[:, 1:]
        if not torch.allclose(trained_gaps, ranked_gaps, rtol=1e-4, atol=1e-4):
            same_sign = float((torch.sign(trained_gaps) == torch.sign(ranked_gaps)).float().mean())
            _fail(cls, "scores_agree", "pair_scores (what training optimises) disagree with score_all (what ranking "
                                       f"uses) on score differences between tags (same sign on {same_sign:.0%} of pairs)")
        directions = model.score_directions(model.tag.weight)
        if directions is not None:
            _check_directions(cls, model, users, items, directions, generator)


def _check_directions(cls, model, users, items, directions, generator) -> None:
    """s_t(u + δu, i + δi) − s_t(u, i) − δu·a_t − δi·b_t must be the same for every tag t."""
    user, item = model.user(users), model.item(items)
    delta_user = 0.01 * torch.randn(user.shape, generator=generator)
    delta_item = 0.01 * torch.randn(item.shape, generator=generator)
    change = (model.score_all(user + delta_user, item + delta_item, model.tag.weight)
              - model.score_all(user, item, model.tag.weight))
    a, b = directions
    residual = change - delta_user @ a.T - delta_item @ b.T
    spread = (residual - residual.mean(1, keepdim=True)).abs().max()
    scale = change.abs().max().clamp_min(1e-12)
    if spread > 1e-3 * scale + 1e-6:
        _fail(cls, "scores_agree", f"score_directions do not reproduce how scores move under a perturbation of the "
                                   f"user and item rows (off by {float(spread / scale):.1%} of the change)")


# -- defenses ---------------------------------------------------------------------------------

def _trains_learned_models(cls, params) -> None:
    _check_training(cls, cls, params, "trains_learned_models")


def _check_training(plugin, defense_cls, params: dict, check: str, models=("metric", "pitf")) -> None:
    """Each model trains 2 epochs under the defense: finite figures, parameters that move,
    and the same model from the same seed."""
    split = synthetic_split()
    for model in models:
        config = default_config(model, dim=8, epochs=2, seed=0)
        initial = _initial_state(split, config)
        runs = [train(split, config, CPU, regime=defense_cls(**params), compile=False) for _ in range(2)]
        for record in runs[0].history:
            bad = [k for k, v in record.items() if isinstance(v, float) and not np.isfinite(v)]
            if bad:
                _fail(plugin, check, f"{model}: epoch {record['epoch']} has non-finite {', '.join(bad)}")
        state = runs[0].model.state_dict()
        if all(torch.equal(state[k], initial[k]) for k in state):
            _fail(plugin, check, f"{model}: no parameter moved (does the loss have gradients?)")
        if not all(torch.equal(state[k], runs[1].model.state_dict()[k]) for k in state):
            _fail(plugin, check, f"{model}: two runs from the same seed differ (draw from a seeded generator)")


def _initial_state(split: TagSplit, config) -> dict:
    """The parameters training starts from (it seeds torch, then builds the model)."""
    torch.manual_seed(config.seed)
    return build_model(split, config).state_dict()


# -- calibration of the method-level test -----------------------------------------------------------

@dataclass(frozen=True)
class Regime:
    """A design and where the variance of a paired difference's mean comes from: shares of
    Var(mean) due to seeds, posts (and, clustered, their items) and the residual."""

    name: str
    seeds: int
    posts: int
    seed_share: float
    post_share: float
    item_share: float = 0.0  # > 0: posts fall on items LastFM-like (933 posts on 673 items)

    def items(self) -> np.ndarray | None:
        """The item of each post (posts/933·673 items: every item one post, the rest by popularity)."""
        if not self.item_share:
            return None
        rng = np.random.default_rng(9)
        count = round(self.posts * 673 / 933)
        weights = 1 / np.arange(1, count + 1)
        extra = rng.choice(count, self.posts - count, p=weights / weights.sum())
        return rng.permutation(np.concatenate([np.arange(count), extra]))

    def simulate(self, rng: np.random.Generator, shift: float = 0.0, scale: float = 0.01) -> np.ndarray:
        """One (seeds, posts) matrix of differences with mean `shift`, Var(mean) = scale²."""
        seeds, posts, items = self.seeds, self.posts, self.items()
        residual = 1 - self.seed_share - self.post_share - self.item_share
        diff = (shift + rng.normal(0, scale * np.sqrt(self.seed_share * seeds), (seeds, 1))
                + rng.normal(0, scale * np.sqrt(self.post_share * posts), (1, posts))
                + rng.normal(0, scale * np.sqrt(residual * seeds * posts), (seeds, posts)))
        if items is not None:  # an item effect shared by its posts: Var of the mean = σ²·Σ n_c² / P²
            sizes = np.bincount(items)
            sd = scale * np.sqrt(self.item_share) * posts / np.sqrt((sizes ** 2).sum())
            diff += rng.normal(0, sd, len(sizes))[items][None, :]
        return diff


CALIBRATION_REGIMES = (
    Regime("seed-dominated, 3 seeds", 3, 933, 0.6, 0.2),
    Regime("seed-dominated, 5 seeds", 5, 933, 0.6, 0.2),
    Regime("suite sizes, 5 seeds", 5, 933, 0.66, 0.15),
    Regime("post-dominated, MovieLens-like", 5, 184, 0.0, 0.75),
    Regime("post-dominated, 3 seeds", 3, 184, 0.0, 0.75),
    Regime("mixed, 10 seeds", 10, 933, 0.3, 0.4),
    Regime("seed-dominated, 3 seeds, 184 posts", 3, 184, 0.9, 0.05),
    Regime("10,000 posts", 5, 10000, 0.3, 0.4),
    Regime("clustered by item, 5 seeds", 5, 933, 0.05, 0.25, item_share=0.4),
    Regime("clustered by item, 3 seeds", 3, 933, 0.05, 0.25, item_share=0.4),
)


def calibration(regime: Regime, runs: int, seed: int = 0, shift: float = 0.0) -> dict[str, float]:
    """`robustag.stats.crossed_test` on `runs` simulated designs of `regime` (posts clustered by
    item where it has items): the share of runs whose p < 0.05 and whose 95% interval holds
    the true mean `shift`, and the mean minimum detectable effect."""
    from robustag.stats import crossed_test

    rng = np.random.default_rng(seed)
    items = regime.items()
    results = [crossed_test(regime.simulate(rng, shift), items) for _ in range(runs)]
    return {"rejected": float(np.mean([r["p"] < 0.05 for r in results])),
            "covered": float(np.mean([r["ci_low"] <= shift <= r["ci_high"] for r in results])),
            "mde": float(np.mean([r["mde"] for r in results])), "df": float(np.median([r["df"] for r in results]))}
