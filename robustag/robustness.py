"""Robustness evaluation: a trained model, clean and under each attack, on the same test posts.

Evasion attacks perturb the embeddings of the test posts (in memory-bounded groups), pushing each post's true
tags down the ranking (the objective is a smooth NDCG of the true tags, see
`true_tag_objective`), then rank with the perturbed embeddings. Poisoning attacks retrain on the poisoned training
data with the same configuration and seed, and are evaluated on the clean test posts.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from robustag.allocator import keep_step_memory
from robustag.attack import AttackContext, Bound, DataAttack, EmbeddingAttack, row_budget
from robustag.errors import RobustagError
from robustag.evaluation import (CUTOFFS, Evaluation, contains, evaluate, evaluate_model, metrics_from_hits, post_tensors,
                                 rank_tags, relevance_keys)
from robustag.models import EmbeddingModel
from robustag.preprocess import Posts, TagSplit, replace_train
from robustag.training import TrainConfig, train

@dataclass
class AttackOutcome:
    spec: str
    surface: str
    eps: float | None
    evaluation: Evaluation
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)
    threat: tuple | None = None  # evasion: (eps, norm, targets), what a worst case groups by


# The soft rank's temperature, as a share of each post's score standard deviation.
RANK_TEMPERATURE = 0.1


def true_tag_objective(model: EmbeddingModel, posts: Posts, base: dict[str, torch.Tensor]):
    """Per post: minus a smooth NDCG of its true tags (ApproxNDCG, Qin et al. 2010).

    A tag's rank is relaxed to 1/2 + Σ_s σ((score_s − score_t)/τ) over all tags, τ = 0.1 × the
    post's score std; raising the objective pushes the true tags down the whole ranking.
    Unlike cross-entropy against all tags, which is nearly linear in the perturbation here
    (so that iterating beyond FGSM gains nothing), it weighs the competitors near the top.
    """
    device = base["user"].device
    rows = torch.as_tensor(np.repeat(np.arange(len(posts)), posts.tag_counts()), device=device)
    tags = torch.as_tensor(posts.tag_indices, device=device)
    counts = torch.as_tensor(posts.tag_counts(), device=device)
    discount = 1.0 / torch.log2(torch.arange(2, int(counts.max()) + 2, device=device, dtype=base["user"].dtype))
    ideal = torch.cumsum(discount, 0)[counts - 1]

    def objective(deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = perturbed(base, deltas)
        scores = model.score_all(emb["user"], emb["item"], emb["tag"])
        rows_scores = scores[rows]
        gain = smooth_gains(rows_scores, rows_scores.gather(1, tags.unsqueeze(1)), rank_temperature(scores)[rows])
        return -torch.zeros(len(posts), device=device, dtype=gain.dtype).index_add(0, rows, gain) / ideal

    return objective


def rank_temperature(scores: torch.Tensor) -> torch.Tensor:
    """(posts, 1): the soft rank's temperature τ of each post's ranking."""
    return RANK_TEMPERATURE * scores.detach().std(dim=1, keepdim=True).clamp_min(1e-12)


def smooth_gains(scores: torch.Tensor, tag_scores: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Per row, the smooth DCG gain 1/log2(1 + soft rank) of a tag scored `tag_scores` (rows, 1)
    in the ranking `scores` (rows, all tags); soft rank = 1/2 + Σ_s σ((score_s − score_t)/τ)."""
    soft_rank = torch.sigmoid((scores - tag_scores) / temperature).sum(1) + 0.5
    return 1.0 / torch.log2(1.0 + soft_rank)


# Posts attacked together: their soft-rank tensors (true tags × all tags) stay near this many elements.
ATTACK_ELEMENTS = 2 ** 25


def attacked_embeddings(model: EmbeddingModel, posts: Posts, attack: EmbeddingAttack, device,
                        max_elements: int = ATTACK_ELEMENTS, split: TagSplit | None = None) -> dict[str, torch.Tensor]:
    """The test posts' user and item rows and the tag table, after the attack.

    Each post's loss depends on its own rows only, so posts are attacked in groups that bound
    memory; a perturbed tag table is shared by every post, so that attack takes them all at once."""
    users, items = post_tensors(posts, device)
    with torch.no_grad():
        base = {"user": model.user(users), "item": model.item(items), "tag": model.tag.weight.detach()}
    radius = {t: row_budget(model.tables()[t].weight, attack.eps, attack.norm) for t in attack.target_tables}
    ranges = [(0, len(posts))] if "tag" in radius else post_ranges(posts, len(base["tag"]), max_elements)
    moved = [_attack_range(model, posts, base, attack, radius, start, stop, split) for start, stop in ranges]
    return {k: torch.cat([m[k] for m in moved]) if k != "tag" else moved[0][k] for k in base}


def post_ranges(posts: Posts, n_tags: int, max_elements: int) -> list[tuple[int, int]]:
    """Consecutive posts whose true tags × all tags fit in max_elements (at least one post each)."""
    rows = max(1, max_elements // n_tags)
    ranges, start = [], 0
    while start < len(posts):
        stop = int(np.searchsorted(posts.tag_indptr, posts.tag_indptr[start] + rows, side="right")) - 1
        ranges.append((start, max(stop, start + 1)))
        start = ranges[-1][1]
    return ranges


def _attack_range(model, posts: Posts, base, attack: EmbeddingAttack, radius, start: int, stop: int, split=None):
    """One group of posts. The threat model is enforced here: an attack that may not see the
    test labels gets no objective (it is built from them) and posts without tags."""
    part = {"user": base["user"][start:stop], "item": base["item"][start:stop], "tag": base["tag"]}
    group = posts.subset(np.arange(start, stop))
    if attack.knows_labels:
        objective, seen = true_tag_objective(model, group, part), group
    else:
        objective, seen = None, Posts(group.users, group.items, np.zeros(len(group) + 1, dtype=np.int64),
                                      np.zeros(0, dtype=np.int64))
    context = AttackContext(model, part, seen, split)
    deltas = attack.checked_perturb(objective, {t: torch.zeros_like(part[t]) for t in radius}, radius, context)
    return perturbed(part, deltas)


def perturbed(base: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v + deltas[k] if k in deltas else v for k, v in base.items()}


def margin_objective(context: AttackContext):
    """Per post, the mean over its true tags of (best wrong tag's score − the true tag's score):
    raising it pushes every true tag below the strongest competitor (a CW-style margin)."""
    posts, base = context.posts, context.base
    device = base["user"].device
    rows = torch.as_tensor(np.repeat(np.arange(len(posts)), posts.tag_counts()), device=device)
    tags = torch.as_tensor(posts.tag_indices, device=device)
    counts = torch.as_tensor(posts.tag_counts(), device=device)
    mask = torch.zeros(len(posts), len(base["tag"]), dtype=torch.bool, device=device)
    mask[rows, tags] = True

    def objective(deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = perturbed(base, deltas)
        scores = context.model.score_all(moved["user"], moved["item"], moved["tag"])
        best_wrong = scores.masked_fill(mask, float("-inf")).amax(1)
        margins = best_wrong[rows] - scores[rows, tags]
        return torch.zeros(len(posts), device=device, dtype=margins.dtype).index_add(0, rows, margins) / counts

    return objective


def post_metric(context: AttackContext, deltas: dict[str, torch.Tensor], metric: str = "ndcg@3") -> torch.Tensor:
    """Each attacked post's metric under `deltas` (the posts' true tags: label-aware only)."""
    moved, posts = perturbed(context.base, deltas), context.posts
    device = moved["user"].device
    with torch.no_grad():
        scores = context.model.score_all(moved["user"], moved["item"], moved["tag"])
        top, _ = rank_tags(scores, min(max(CUTOFFS), scores.shape[1]))
        index = torch.arange(len(posts), device=device).unsqueeze(1)
        hits = contains(relevance_keys(posts, scores.shape[1], device), index * scores.shape[1] + top)
        return metrics_from_hits(hits, torch.as_tensor(posts.tag_counts(), device=device))[metric]


def keep_worst(best: tuple | None, found: dict[str, torch.Tensor], context: AttackContext) -> tuple:
    """Per post, whichever of the kept perturbations and `found` leaves the lower NDCG@3 (the
    kept one on ties): `best` is (perturbations, per-post NDCG@3) or None. A perturbed tag table
    is shared by every post, so there the one with the lower mean wins whole."""
    metric = post_metric(context, found)
    if best is None:
        return found, metric
    kept, kept_metric = best
    if "tag" in found:
        return (found, metric) if metric.mean() < kept_metric.mean() else best
    worse = metric < kept_metric
    return {k: torch.where(worse.unsqueeze(1), found[k], kept[k]) for k in found}, torch.minimum(metric, kept_metric)


def own_top_objective(context: AttackContext, n: int):
    """The label-free objective: per post, minus a smooth NDCG of the model's own clean top-n
    tags, the attacker's stand-in for the true tags it does not know."""
    top, _ = rank_tags(context.clean_scores(), n)
    posts = context.posts
    pseudo = Posts(posts.users, posts.items, np.arange(0, n * len(posts) + 1, n, dtype=np.int64),
                   top.reshape(-1).cpu().numpy())
    return true_tag_objective(context.model, pseudo, context.base)


def promotion_objective(context: AttackContext, target: int, n: int):
    """Per post, the target tag's score minus the n-th best other tag's (a CW margin):
    positive once the target is in the top n; raising it promotes the target."""
    is_target = torch.zeros(len(context.base["tag"]), dtype=torch.bool, device=context.base["user"].device)
    is_target[target] = True

    def objective(deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = perturbed(context.base, deltas)
        scores = context.model.score_all(moved["user"], moved["item"], moved["tag"])
        nth_other = scores.masked_fill(is_target, float("-inf")).topk(n, dim=1).values[:, -1]  # as margin_objective
        return scores[:, target] - nth_other

    return objective


def absolute_budgets(model: EmbeddingModel, attack: EmbeddingAttack) -> dict[str, float]:
    """The per-row radius of each table an evasion attack perturbs, in the model's own units
    (ε is relative to each table's mean row norm; these say what it meant for this model)."""
    return {f"budget_{t}": float(row_budget(model.tables()[t].weight, attack.eps, attack.norm)) for t in attack.target_tables}


def evasion_figures(attack, model, split: TagSplit, evaluation: Evaluation) -> dict[str, float]:
    """What a cell of an evasion attack stores besides its metrics: the absolute budgets, and
    the promotion rates of an attack that promotes a tag."""
    budgets = absolute_budgets(model, attack) if isinstance(model, EmbeddingModel) else {}
    return {**budgets, **promotion_figures(attack, split, evaluation)}


def evade(model, split: TagSplit, attack: EmbeddingAttack, device) -> Evaluation:
    if not isinstance(model, EmbeddingModel):
        raise RobustagError(f"attack {attack.name}: perturbs embeddings, but model {model.name!r} has none")
    keep_step_memory()
    model.eval()
    if isinstance(attack, Bound):  # per post, the bound's values; no ranking under a perturbation exists
        bound = attack.bound(model, split.test, split.n_tags, device)
        return Evaluation(bound, np.zeros((len(split.test), 0), dtype=np.int64), np.zeros((len(split.test), 0)))
    adv = attacked_embeddings(model, split.test, attack, device, split=split)
    score_fn = lambda users, items, index: model.score_all(adv["user"][index], adv["item"][index], adv["tag"])
    return evaluate(score_fn, split.test, split.n_tags, device)


def poisoned_split(split: TagSplit, attack: DataAttack, seed: int, poison_valid: bool = False) -> TagSplit:
    """The split with its training posts poisoned, and with `poison_valid` its validation posts
    too (the same attack on them alone, with another seed; fake users keep the same ids, as
    they are numbered from the clean split's users either way)."""
    poisoned = attack.poison(split, seed=seed)
    if not poison_valid or len(split.valid) == 0:
        return poisoned
    valid = attack.poison(replace_train(split, split.valid), seed=seed + 1).train
    return dataclasses.replace(poisoned, valid=valid)


def poison(split: TagSplit, attack: DataAttack, config: TrainConfig, device, new_regime=None, on_epoch=None,
           poison_valid: bool = False):
    """Retrain on the poisoned training posts (with a fresh instance of the same defense);
    returns the poisoned split and the new model."""
    poisoned = poisoned_split(split, attack, config.seed, poison_valid)
    regime = new_regime() if new_regime else None
    return poisoned, train(poisoned, config, device, regime=regime, on_epoch=on_epoch).model


def promotion_rate(evaluation: Evaluation, posts: Posts, target: int, n: int) -> float:
    """Share of posts without the target among their true tags whose top-n holds the target."""
    has_target = np.zeros(len(posts), dtype=bool)
    post_of_tag = np.repeat(np.arange(len(posts)), posts.tag_counts())
    has_target[post_of_tag[posts.tag_indices == target]] = True
    promoted = (evaluation.top_tags[:, :n] == target).any(axis=1)
    return float(promoted[~has_target].mean()) if (~has_target).any() else 0.0


def promotion_figures(attack, split: TagSplit, evaluation: Evaluation, prefix: str = "") -> dict[str, float]:
    """For an attack that promotes a target tag: the target and its promotion@3 and @10."""
    if not hasattr(attack, "target_tag"):
        return {}
    target = attack.target_tag(split)
    return {"target_tag": int(target),
            **{f"{prefix}promotion@{n}": promotion_rate(evaluation, split.test, target, n) for n in (3, 10)}}


def overlap(clean: Evaluation, attacked: Evaluation, n: int) -> float:
    """Mean share of the clean top-n that stays in the attacked top-n (NaN for a bound: no ranking)."""
    if attacked.top_tags.shape[1] == 0:
        return float("nan")
    a, b = clean.top_tags[:, :n], attacked.top_tags[:, :n]
    common = (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1)
    return float((common / a.shape[1]).mean())


def summarise(clean: Evaluation, outcome: AttackOutcome) -> dict:
    """Clean and attacked means, absolute and relative drops, and top-N overlap."""
    row = {"attack": outcome.spec, "surface": outcome.surface, "eps": outcome.eps, "seconds": outcome.seconds}
    clean_summary, attacked_summary = clean.summary(), outcome.evaluation.summary()
    for key in clean_summary:
        before, after = clean_summary[key], attacked_summary[key]
        row[f"clean_{key}"] = before
        row[f"attacked_{key}"] = after
        row[f"drop_{key}"] = before - after
        row[f"rel_drop_{key}"] = (before - after) / before if before else 0.0
    for n in CUTOFFS:
        row[f"overlap@{n}"] = overlap(clean, outcome.evaluation, n)
    row.update(outcome.extra)
    return row


def worst_cases(clean: Evaluation, outcomes: list[AttackOutcome]) -> list[dict]:
    """One worst case per threat (budget ε, norm and perturbed tables): per post, the worst value
    over the evasion attacks under that threat (the AutoAttack rule), then averaged; `broken@N`:
    share of posts with a clean hit in the top N that some of those attacks leave with none.
    A larger budget is another threat, so a worst case never mixes budgets."""
    evasions = [o for o in outcomes if o.surface == "embedding" and o.threat is not None]  # attacks, not bounds
    threats = list(dict.fromkeys(o.threat for o in evasions))
    return [{"eps": threat[0], "norm": threat[1], "targets": threat[2],
             **_worst_case(clean, [o for o in evasions if o.threat == threat])} for threat in threats]


def _worst_case(clean: Evaluation, evasions: list[AttackOutcome]) -> dict[str, float]:
    return {"attacks": len(evasions), **worst_case(clean.per_post, [o.evaluation.per_post for o in evasions])}


def worst_case(clean: dict[str, np.ndarray], attacked: list[dict[str, np.ndarray]], metrics: list[str] | None = None,
               cutoffs=CUTOFFS) -> dict[str, float]:
    """From per-post values: each post's worst value of each metric (default: every metric of
    `clean`) over the evasion attacks of one threat, averaged over posts (`worst_<metric>`),
    and `broken@N`, the share of posts with a clean hit in the top N (`p@N` > 0) that some
    attack leaves with none. What `rt.attack` and the report's worst-case table both state."""
    out = {f"worst_{key}": float(np.min([values[key] for values in attacked], axis=0).mean()) for key in metrics or clean}
    for n in cutoffs:
        had_hit = clean[f"p@{n}"] > 0
        lost = np.any([values[f"p@{n}"] == 0 for values in attacked], axis=0)
        out[f"broken@{n}"] = float((had_hit & lost).sum() / max(had_hit.sum(), 1))
    return out


def evaluate_cell(model, split: TagSplit, device, attack: EmbeddingAttack | None = None,
                  poison: DataAttack | None = None) -> tuple[Evaluation, dict[str, float]]:
    """One cell, as a bench and `rt.attack` both evaluate it: the model on the test posts, clean
    or under the evasion `attack` (a bound gives its values instead); `poison` names the
    poisoning attack the model was trained under. Returns the per-post evaluation and the
    figures a cell keeps besides its metrics (absolute budgets, promotion rates)."""
    if attack is not None:
        evaluation = evade(model, split, attack, device)
        return evaluation, evasion_figures(attack, model, split, evaluation)
    evaluation = evaluate_model(model, split.test, split.n_tags, device)
    return evaluation, promotion_figures(poison, split, evaluation) if poison is not None else {}


def run_attack(
    attack, model, split: TagSplit, config: TrainConfig, device, clean: Evaluation, new_regime=None, on_epoch=None,
    poison_valid: bool = False,
) -> AttackOutcome:
    """One attack against one trained model: evasion on the embeddings, or poison and retrain
    (`new_regime()` makes the training regime, i.e. the defense, for the retraining)."""
    started, before = time.perf_counter(), promotion_figures(attack, split, clean, "clean_")
    if isinstance(attack, EmbeddingAttack):
        evaluation, extra = evaluate_cell(model, split, device, attack)
        threat = None if isinstance(attack, Bound) else (attack.eps, attack.norm, attack.targets)
        return AttackOutcome(attack.spec, attack.surface, attack.eps, evaluation, time.perf_counter() - started,
                             {**before, **extra}, threat)
    poisoned, retrained = poison(split, attack, config, device, new_regime, on_epoch, poison_valid)
    evaluation, extra = evaluate_cell(retrained, split, device, poison=attack)
    return AttackOutcome(attack.spec, attack.surface, None, evaluation, time.perf_counter() - started, {**before, **extra})
