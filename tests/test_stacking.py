"""Stacked training: each member's result is the one it gets alone, up to rounding."""

from __future__ import annotations

import pytest
import torch

from robustag.defense import DEFENSES
from robustag.errors import RobustagError
from robustag.stacking import stackable, train_stacked
from robustag.training import default_config, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def movielens(real_data_dir):
    from robustag.preprocess import load_split

    return load_split("movielens", real_data_dir)


@pytest.mark.parametrize("model,defense", [("metric", "plain"), ("metric", "aml"), ("metric", "spaml-s"),
                                           ("pitf", "aml"), ("metric", "certified")])
def test_stacked_members_match_solo_training(movielens, model, defense):
    configs = [default_config(model, epochs=3, patience=2, seed=seed) for seed in (0, 1)]
    alone = [train(movielens, config, CPU, regime=DEFENSES.create(defense), compile=False) for config in configs]
    stacked = train_stacked(movielens, configs, CPU, DEFENSES.create(defense), compile=False)
    for solo, member in zip(alone, stacked):
        assert member.best_epoch == solo.best_epoch and len(member.history) == len(solo.history)
        for epoch_alone, epoch_stacked in zip(solo.history, member.history):
            assert epoch_stacked["valid_ndcg@3"] == pytest.approx(epoch_alone["valid_ndcg@3"], abs=1e-4)
        for table in ("user", "item", "tag"):
            assert torch.allclose(member.model.tables()[table].weight, solo.model.tables()[table].weight, atol=1e-5)
    # the seeds differ, so the members do: a stack that trained one model three times would pass the above only by luck
    assert not torch.allclose(stacked[0].model.tag.weight, stacked[1].model.tag.weight)


def test_members_stop_on_their_own(movielens):
    """With patience 1 the members stop at different epochs; each keeps its own best epoch."""
    configs = [default_config("metric", epochs=30, patience=1, seed=seed, lr=0.02) for seed in range(4)]
    stacked = train_stacked(movielens, configs, CPU, compile=False)
    alone = [train(movielens, config, CPU, compile=False) for config in configs]
    assert [len(r.history) for r in stacked] == [len(r.history) for r in alone]
    assert [r.best_epoch for r in stacked] == [r.best_epoch for r in alone]
    assert stacked[0].history[0]["stack_members"] == 4


def test_what_cannot_stack_is_refused_by_name(movielens):
    quantile = DEFENSES.create("spaml-s:pace=quantile")
    assert not stackable(default_config("metric"), quantile) and stackable(default_config("metric"), DEFENSES.create("spaml-s"))
    assert not stackable(default_config("metric"), DEFENSES.create("rank-adv"))
    assert not stackable(default_config("pop"), DEFENSES.create("plain"))
    with pytest.raises(RobustagError, match="cannot train as a stack"):
        train_stacked(movielens, [default_config("metric", seed=s) for s in (0, 1)], CPU, quantile)
    with pytest.raises(RobustagError, match="differ in seed only"):
        train_stacked(movielens, [default_config("metric", seed=0), default_config("metric", seed=1, lr=0.01)], CPU)
