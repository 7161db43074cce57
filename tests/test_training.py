"""Training: determinism, early stopping, negative sampling, and that learning beats popularity
on data with planted structure."""


import numpy as np
import pytest
import torch
from scipy import stats

from robustag.evaluation import evaluate_model
from robustag.training import NegativeSampler, default_config, train

CPU = torch.device("cpu")


def _test_metrics(split, model):
    return evaluate_model(model, split.test, split.n_tags).summary()


@pytest.mark.parametrize("model", ["metric", "pitf"])
def test_fixed_seed_reproduces_the_same_numbers(planted, model):
    config = default_config(model, epochs=3, dim=16, seed=7)
    first, second = train(planted, config, CPU), train(planted, config, CPU)
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]
    assert _test_metrics(planted, first.model) == _test_metrics(planted, second.model)
    other = train(planted, default_config(model, epochs=3, dim=16, seed=8), CPU)
    assert [r["loss"] for r in other.history] != [r["loss"] for r in first.history]


def test_negatives_never_hit_a_posts_own_tags(planted):
    generator = torch.Generator().manual_seed(0)
    sampler = NegativeSampler(planted.train, planted.n_tags, generator, CPU)
    index = torch.arange(planted.train.n_assignments)
    negatives = sampler.sample(index, 16).numpy()
    post = sampler.post_index.numpy()
    indptr, tags = planted.train.tag_indptr, planted.train.tag_indices
    for row in range(0, len(index), 7):
        own = set(tags[indptr[post[row]] : indptr[post[row] + 1]].tolist())
        assert not own & set(negatives[row].tolist())
    assert negatives.min() >= 0 and negatives.max() < planted.n_tags


@pytest.mark.parametrize("model", ["metric", "pitf"])
def test_learned_models_beat_global_popularity_on_planted_structure(planted, model):
    result = train(planted, default_config(model, epochs=40, dim=16, lr=0.01, patience=40), CPU)
    pop = train(planted, default_config("pop"), CPU)
    learned, baseline = _test_metrics(planted, result.model), _test_metrics(planted, pop.model)
    assert learned["ndcg@3"] > baseline["ndcg@3"] + 0.1
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_early_stopping_restores_the_best_epoch(planted):
    result = train(planted, default_config("metric", epochs=30, dim=16, lr=0.05, patience=2), CPU)
    scores = [r["valid_ndcg@3"] for r in result.history]
    assert result.best_epoch == int(np.argmax(scores)) + 1
    assert len(scores) < 30 or result.best_epoch is not None
    assert result.best_valid["valid_ndcg@3"] == max(scores)
    restored = evaluate_model(result.model, planted.valid, planted.n_tags).summary()["ndcg@3"]
    assert restored == pytest.approx(max(scores))


def test_metric_clip_keeps_embeddings_in_the_unit_ball(planted):
    result = train(planted, default_config("metric", epochs=2, dim=8, lr=0.1), CPU)
    for table in result.model.tables().values():
        assert table.weight.norm(dim=1).max() <= 1.0 + 1e-5


def test_pop_mix_tunes_its_weight_on_validation(planted):
    result = train(planted, default_config("pop-mix"), CPU)
    assert 0.0 <= result.config.model_params["mix"] <= 1.0 and len(result.history) == 21
    best = max(r["valid_ndcg@3"] for r in result.history)
    assert result.best_valid["valid_ndcg@3"] == best


@pytest.mark.needs_compiler
def test_compiled_training_matches_eager_training_and_leaves_a_plain_model(planted):
    # AML exercises the adversary's steps compiled as one graph (`fused_perturb`) as well.
    import importlib

    from torch._dynamo.utils import counters

    from robustag.defense import DEFENSES

    attack = importlib.import_module("robustag.attack")  # the module: `robustag.attack` is also rt.attack

    config = default_config("metric", epochs=2, dim=16, seed=3)
    eager = train(planted, config, CPU, regime=DEFENSES.create("aml"))
    compiled = train(planted, config, CPU, regime=DEFENSES.create("aml"), compile=True)
    for key in ("loss", "adv_loss"):
        assert np.allclose([r[key] for r in compiled.history], [r[key] for r in eager.history], rtol=1e-4)
    for table in ("user", "item", "tag"):
        assert torch.allclose(compiled.model.tables()[table].weight, eager.model.tables()[table].weight, atol=1e-4)
    assert "pair_losses" not in vars(compiled.model)  # the compiled wrapper is gone after training
    assert attack._fusion_failure is None  # the adversary's steps ran compiled, not through the eager fallback
    assert attack.ATTACKS.create("pgd").fusable() and not attack.ATTACKS.create("mim").fusable()  # momentum: as written
    graphs = counters["stats"]["unique_graphs"]
    again = train(planted, config, CPU, regime=DEFENSES.create("aml"), compile=True)
    assert counters["stats"]["unique_graphs"] == graphs  # a new model of the same shapes reuses the graphs: no recompile
    assert [r["loss"] for r in again.history] == [r["loss"] for r in compiled.history]  # reproducible within a mode
    assert torch.equal(again.model.tag.weight, compiled.model.tag.weight)


def test_a_compiler_failure_on_the_fused_steps_falls_back_to_the_eager_steps_with_one_warning(monkeypatch):
    import importlib

    attack = importlib.import_module("robustag.attack")

    def broken(*args):
        raise RuntimeError("cannot trace this model\nsecond line")

    monkeypatch.setattr(attack, "_compiled_steps", lambda: broken)
    monkeypatch.setattr(attack, "_fusion_failure", None)
    pgd = attack.ATTACKS.create("pgd:steps=4,random_start=true")
    target = torch.tensor([[3.0, -4.0]])
    objective = lambda deltas: -((deltas["user"] - target) ** 2).sum(dim=-1)  # climbs towards the target
    radius = {"user": torch.tensor(1.0)}
    eager = pgd.perturb(objective, {"user": torch.zeros(1, 2)}, radius)
    pgd._generator = None  # the same random start again
    with pytest.warns(UserWarning, match="run eagerly from now on.*RuntimeError: cannot trace this model\\)"):
        with attack.fused_ascent(True):
            fallen_back = pgd.perturb(objective, {"user": torch.zeros(1, 2)}, radius)
    assert torch.equal(fallen_back["user"], eager["user"]) and eager["user"].norm() <= 1 + 1e-6
    assert attack._fusion_failure == "RuntimeError: cannot trace this model" and not pgd.fusable()


def test_without_a_working_compiler_the_default_trains_eagerly_with_one_note(planted, monkeypatch, recwarn):
    import robustag as rt
    from robustag import training

    monkeypatch.delenv("ROBUSTAG_COMPILE")
    monkeypatch.setattr(training, "_compiler_problems", {"cpu": "InvalidCxxCompiler: no working C++ compiler found"})
    monkeypatch.setattr(training, "_noted", set())
    config = default_config("metric", epochs=1, dim=8)
    first, second = train(planted, config, CPU), train(planted, config, CPU)
    assert not first.compiled and not second.compiled
    assert first.notes == ["torch.compile does not work on cpu here (InvalidCxxCompiler: no working C++ compiler found); "
                           "training eagerly"] and second.notes == []  # once per process
    with pytest.raises(Exception):  # asked for explicitly, a broken compiler is an error, not a fallback
        monkeypatch.setattr(torch, "compile", lambda fn: (_ for _ in ()).throw(RuntimeError("no compiler")))
        train(planted, config, CPU, compile=True)
    monkeypatch.setattr(training, "_noted", set())
    trained = rt.train(planted, "metric", epochs=1, dim=8, device="cpu")  # the API passes the note on as a warning
    assert not trained.compiled and [str(w.message) for w in recwarn] == [first.notes[0]]
    monkeypatch.setenv("ROBUSTAG_COMPILE", "0")
    assert training.compile_mode(None, CPU) == (False, None)  # turned off: nothing probed, nothing to say


def test_popularity_ties_go_to_the_most_popular_tag():
    """A user whose own frequencies tie (0.5, 0.5) gets the globally more popular tag first,
    even where float32 would swallow the tie-break (0.5 + 1e-6·f == 0.5)."""
    from robustag.models.popularity import PopularityModel
    from robustag.preprocess import Posts

    # user 0 tags 1 and 3 once each; tag 3 is more popular overall (user 1), and 200 other tags
    # keep every global frequency small (1e-6 · f below float32's resolution at 0.5)
    other = np.arange(4, 204)
    users = np.concatenate([[0, 0, 1, 1], np.full(len(other), 2)])
    tags = np.concatenate([[1, 3, 3, 3], other])
    train_posts = Posts.from_triples(users, np.zeros(len(users), dtype=np.int64), tags)
    model = PopularityModel(train_posts, 3, 1, 204, user_weight=1.0, item_weight=0.0)
    scores = model.score(torch.tensor([0]), torch.tensor([0]))
    assert scores.dtype == torch.float64
    assert torch.argsort(scores[0], descending=True, stable=True)[:2].tolist() == [3, 1]


def test_negatives_are_uniform_over_each_posts_complement():
    """The inverse-transform sampler: every tag a post lacks equally often, its own tags never."""
    from robustag.preprocess import Posts

    # post 0 has tags {0, 2, 3, 7} of 9; post 1 has {8}
    posts = Posts(np.array([0, 1]), np.array([0, 1]), np.array([0, 4, 5]), np.array([0, 2, 3, 7, 8]))
    sampler = NegativeSampler(posts, 9, torch.Generator().manual_seed(0), CPU)
    for triple, own in ((0, {0, 2, 3, 7}), (4, {8})):
        draws = sampler.sample(torch.full((20000,), triple), 5).numpy().ravel()
        counts = np.bincount(draws, minlength=9)
        assert all(counts[t] == 0 for t in own)
        free = [counts[t] for t in range(9) if t not in own]
        assert stats.chisquare(free).pvalue > 0.001  # uniform over the complement


def test_the_allocator_keeps_step_memory_on_glibc_unless_the_user_set_it_and_results_do_not_change(planted):
    """In a fresh process (the setting is per process) glibc takes both settings, and with the
    user's own MALLOC_* variables there is nothing to set; training gives the same numbers either way."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator settings are glibc's")
    code = "import robustag.allocator as a; print(a.keep_step_memory(), a._applied)"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split() == ["True", "True"]
    mine = {**env, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    assert subprocess.run([sys.executable, "-c", code], env=mine, capture_output=True, text=True, check=True).stdout.split() == ["True", "True"]
    import robustag.allocator as allocator

    config = default_config("metric", dim=8, epochs=2, patience=2)
    applied, allocator._applied = allocator._applied, True  # as if already applied: train leaves malloc as it is
    try:
        before = train(planted, config, torch.device("cpu")).history
    finally:
        allocator._applied = applied
    assert allocator.keep_step_memory()
    after = train(planted, config, torch.device("cpu")).history
    assert [r["loss"] for r in before] == [r["loss"] for r in after]
