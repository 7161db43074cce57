"""Certified lower bounds of the metrics under user and item embedding perturbations.

For the models whose score is affine in the user and item rows (metric, PITF, FM), the score
of tag t after perturbations δu, δi is

    s_t(u + δu, i + δi) = s_t(u, i) + δu·a_t + δi·b_t + c(δu, δi)

where c does not depend on t (so it cancels in any comparison of two tags) and the model
declares (a_t, b_t) through `EmbeddingModel.score_directions`:

- metric, s_t = −(‖u − t‖² + ‖i − t‖²) = 2(u + i)·t − 2‖t‖² − ‖u‖² − ‖i‖²: a_t = b_t = 2t
  (the squared norms of u + δu and i + δi are the same for every tag);
- PITF, s_t = u·t^U + i·t^I: a_t = t^U, b_t = t^I;
- FM, s_t = (u + i)·v_t + w_t: a_t = b_t = v_t.

So whether tag j can overtake tag t within per-row budgets ‖δu‖ ≤ r_u, ‖δi‖ ≤ r_i has a
closed form: the largest reachable difference is

    max s_j − s_t = s_j − s_t + r_u ‖a_j − a_t‖_* + r_i ‖b_j − b_t‖_*

(‖·‖_* the dual norm: L2 for an L2 budget, L1 for an L∞ one), reached at δu = r_u·(a_j −
a_t)/‖a_j − a_t‖ for L2. No perturbation can rank t below 1 + (the number of tags that can
each overtake it), since a perturbation that puts t at rank k has k − 1 tags above it, each of
which can overtake t. Each true tag t of a post thus has a certified worst rank
R(t) = 1 + #{j ≠ t : max s_j − s_t ≥ 0} (ties count as overtaking: the bound stays sound
whatever the tie-break), and under every perturbation in the budget

    hits@N ≥ #{t true : R(t) ≤ N},   DCG@N ≥ Σ_{t true, R(t) ≤ N} 1 / log2(1 + R(t)),

which give lower bounds of P@N, R@N, F1@N and NDCG@N (each is increasing in the hits and in
the DCG).

**The joint bound** (the default): one perturbation must serve every true tag of a post at
once. Under any δ, let t_1, …, t_n be the post's n true tags in the order δ ranks them. A tag
above t_k is either one of t_1 … t_{k−1} or a non-true tag ranked above t_k, t_{k+1}, …, t_n,
so able to overtake at least n − k + 1 of the true tags, each pair checked by the closed form
above (a necessary condition of overtaking them all at once). Hence

    rank(t_k) ≤ ρ_k = k + #{j not true : j can overtake ≥ n − k + 1 of the true tags},

and also rank(t_k) ≤ R_(k), the k-th smallest per-tag bound (the order statistics of ranks
bounded one by one). The k-th best true tag is certified at rank ≤ min(ρ_k, R_(k)), which is
never worse than the per-tag bound and is what DCG@N and hits@N sum over. For one true tag
it is the per-tag bound; the more true tags, the more it gains (a perturbation that pushes
one true tag down cannot push every other one down with it). `joint=False` gives the per-tag
bound alone. Both are sound, neither tight: the pairs are checked one at a time. Any attack's result is an upper bound of the true worst
case, so the truth lies between the certificate and the best attack. Perturbations of the
tag table change the scores non-linearly (and for every post at once): no certificate.
"""

from __future__ import annotations

import numpy as np
import torch

from robustag.attack import row_budget
from robustag.errors import RobustagError
from robustag.evaluation import CUTOFFS, post_tensors
from robustag.preprocess import Posts

# Elements of a (true tags × all tags) block, as for the attacks: memory stays bounded.
BLOCK_ELEMENTS = 2 ** 24


def certifiable(model) -> bool:
    """Whether the model declares the linear score directions a certificate needs."""
    return getattr(model, "score_directions", None) is not None and model.score_directions(model.tag.weight) is not None


def certify(model, posts: Posts, n_tags: int, eps: float, norm: str = "l2", targets: str = "user+item",
            device: torch.device | str = "cpu", cutoffs=CUTOFFS, joint: bool = True) -> dict[str, np.ndarray]:
    """Per post, certified lower bounds of p@N, r@N, f1@N and ndcg@N under perturbations of
    the user and/or item rows within `eps` (relative, as the attacks' budgets), and the mean of
    its true tags' certified worst ranks (`worst_rank@mean`); `joint`: one perturbation for all
    of a post's true tags (the module docstring), else each tag bounded on its own."""
    tables = tuple(t for t in targets.split("+") if t)
    if "tag" in tables or not set(tables) <= {"user", "item"}:
        raise RobustagError(f"certify: targets={targets!r}; only user and item perturbations have a certificate")
    directions = model.score_directions(model.tag.weight.detach())
    if directions is None:
        raise RobustagError(f"certify: model {getattr(model, 'name', type(model).__name__)!r} declares no linear "
                            "score directions (score_directions); no certificate")
    device = torch.device(device)
    radius = {t: float(row_budget(model.tables()[t].weight, eps, norm)) if t in tables else 0.0 for t in ("user", "item")}
    a, b = (d.detach().to(device, torch.float64) for d in directions)
    users, items = post_tensors(posts, device)
    with torch.no_grad():
        scores = model.score(users, items).to(torch.float64)
    rows = np.repeat(np.arange(len(posts)), posts.tag_counts())
    true_tags = torch.as_tensor(posts.tag_indices, device=device)
    worst = torch.empty(len(true_tags), dtype=torch.float64, device=device)
    step = max(1, BLOCK_ELEMENTS // (n_tags * (1 if norm == "l2" else max(a.shape[1], 1))))
    same = torch.equal(a, b)  # metric and FM: one direction for user and item
    for first, last in _post_blocks(posts.tag_indptr, step):  # whole posts: the joint bound needs all their tags
        start, stop = int(posts.tag_indptr[first]), int(posts.tag_indptr[last])
        tags, post_rows = true_tags[start:stop], torch.as_tensor(rows[start:stop], device=device)
        gap = scores[post_rows] - scores[post_rows].gather(1, tags.unsqueeze(1))  # s_j − s_t, (k, T)
        if same:
            reach = (radius["user"] + radius["item"]) * _dual_distances(a, tags, norm)
        else:
            reach = radius["user"] * _dual_distances(a, tags, norm) + radius["item"] * _dual_distances(b, tags, norm)
        overtakes = gap + reach >= -1e-9 * (1 + scores[post_rows].abs().amax(1, keepdim=True))
        ranks = overtakes.sum(1).to(torch.float64)  # t itself is counted: rank = 1 + others
        worst[start:stop] = _joint_ranks(overtakes, tags, post_rows - first, ranks) if joint else ranks
    return bounds_from_ranks(worst.cpu().numpy(), posts, cutoffs)


def _post_blocks(indptr: np.ndarray, step: int) -> list[tuple[int, int]]:
    """Consecutive runs of whole posts holding about `step` true tags each (a post with more
    is a block of its own)."""
    blocks, first = [], 0
    while first < len(indptr) - 1:
        last = max(first + 1, int(np.searchsorted(indptr, indptr[first] + step, side="right")) - 1)
        blocks.append((first, min(last, len(indptr) - 1)))
        first = blocks[-1][1]
    return blocks


def _joint_ranks(overtakes: torch.Tensor, tags: torch.Tensor, local_post: torch.Tensor,
                 single: torch.Tensor) -> torch.Tensor:
    """The joint bound (module docstring): for the true tags of a block of whole posts (rows of
    `overtakes`, in post order), min(ρ_k, R_(k)) for k = 1 … n of each post, written back over
    its tags (best first). `single` holds the per-tag bounds R(t)."""
    posts = int(local_post[-1]) + 1
    n_true = torch.bincount(local_post, minlength=posts)
    reach = torch.zeros(posts, overtakes.shape[1], dtype=torch.int32, device=overtakes.device)
    reach.index_add_(0, local_post, overtakes.to(torch.int32))  # per post: how many of its true tags j overtakes
    reach[local_post, tags] = 0  # a true tag above t_k is one of t_1 … t_{k−1}, counted in k
    starts = torch.cumsum(n_true, 0) - n_true
    position = torch.arange(len(tags), device=tags.device) - starts[local_post]  # k − 1 within its post
    widest = int(n_true.max())
    sorted_single = torch.full((posts, widest), float("inf"), dtype=torch.float64, device=single.device)
    sorted_single[local_post, position] = single
    sorted_single = sorted_single.sort(1).values
    joint = torch.empty_like(sorted_single)
    for k in range(1, widest + 1):
        joint[:, k - 1] = k + (reach >= (n_true - k + 1).unsqueeze(1)).sum(1)
    return torch.minimum(joint, sorted_single)[local_post, position]


def _dual_distances(directions: torch.Tensor, tags: torch.Tensor, norm: str) -> torch.Tensor:
    """(k, T): ‖d_j − d_t‖ in the dual norm of the budget (L2 for L2, L1 for L∞) between each
    given tag t and every tag j; the L2 one by matrix products, with no (k, T, d) tensor."""
    if norm == "linf":
        return torch.linalg.vector_norm(directions.unsqueeze(0) - directions[tags].unsqueeze(1), ord=1, dim=-1)
    squares = directions.pow(2).sum(1)
    return (squares.unsqueeze(0) + squares[tags].unsqueeze(1) - 2 * directions[tags] @ directions.T).clamp_min(0).sqrt()


def bounds_from_ranks(worst_rank: np.ndarray, posts: Posts, cutoffs=CUTOFFS) -> dict[str, np.ndarray]:
    """Per post, the metric lower bounds implied by each true tag's certified worst rank."""
    rows = np.repeat(np.arange(len(posts)), posts.tag_counts())
    n_true = posts.tag_counts().astype(float)
    out = {}
    for n in cutoffs:
        inside = worst_rank <= n
        hits = np.bincount(rows, weights=inside.astype(float), minlength=len(posts))
        dcg = np.bincount(rows, weights=np.where(inside, 1.0 / np.log2(1.0 + worst_rank), 0.0), minlength=len(posts))
        ideal = np.cumsum(1.0 / np.log2(np.arange(2, n + 2)))[np.minimum(n_true, n).astype(int) - 1]
        precision, recall = hits / n, hits / n_true
        out[f"p@{n}"], out[f"r@{n}"] = precision, recall
        out[f"f1@{n}"] = np.where(hits > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        out[f"ndcg@{n}"] = dcg / ideal
    out["worst_rank@mean"] = np.bincount(rows, weights=worst_rank, minlength=len(posts)) / n_true
    return out


def worst_case_shift(model, embeddings, radius: dict[str, torch.Tensor], norm: str = "l2") -> torch.Tensor:
    """(B, K): how far perturbations of the user and item rows within `radius` (absolute, keys
    "user" / "item"; a missing key: that row is not perturbed) can raise each negative's score
    above the positive's: r_u‖a_n − a_p‖_* + r_i‖b_n − b_p‖_*, the closed form above.

    Every built-in pair loss (hinge, BPR) is non-decreasing in s_n − s_p, so the exact worst
    case of a pair's loss is `pair_loss(s_p, s_n + shift)`: no ascent steps. The maximum is per
    pair (each negative gets its own δ), an upper bound of the maximum over one δ shared by
    the K negatives of a triple. Its gradient is the loss's gradient at the maximiser
    (Danskin's theorem), as adversarial training needs; the budgets carry no gradient."""
    shift = embeddings.negative.new_zeros(embeddings.negative.shape[:2])
    positive, negative = model.score_directions(embeddings.positive.unsqueeze(1)), model.score_directions(embeddings.negative)
    if negative[0] is negative[1] and positive[0] is positive[1]:  # one direction (the metric model): one distance
        total = sum(radius[t] for t in ("user", "item") if t in radius)
        return shift + total * _pair_dual_distances(negative[0], positive[0], norm)
    for k, table in enumerate(("user", "item")):
        if table in radius:
            shift = shift + radius[table] * _pair_dual_distances(negative[k], positive[k], norm)
    return shift


def _pair_dual_distances(negative: torch.Tensor, positive: torch.Tensor, norm: str) -> torch.Tensor:
    """(B, K): ‖d_n − d_p‖ in the dual norm; the L2 one from the Gram identity, with no
    (B, K, d) difference tensor to build and back-propagate through."""
    if norm == "linf":
        return torch.linalg.vector_norm(negative - positive, ord=1, dim=-1)
    squares = negative.pow(2).sum(-1) + positive.pow(2).sum(-1) - 2 * (negative * positive).sum(-1)
    return squares.clamp_min(1e-12).sqrt()  # the floor keeps the gradient finite when n and p coincide


def worst_case_pair_losses(model, embeddings, radius: dict[str, torch.Tensor], norm: str = "l2") -> torch.Tensor:
    """(B, K): each pair loss at its exact worst case (see `worst_case_shift`)."""
    positive, negative = model.pair_scores(embeddings)
    return model.pair_loss(positive, negative + worst_case_shift(model, embeddings, radius, norm))
