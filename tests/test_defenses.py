"""Defenses: self-paced weights and paces, schedules, exact equivalences, bad configurations,
and that adversarial training buys robustness on data with planted structure."""

import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustag.attack import ATTACKS
from robustag.defense import DEFENSES, Defense
from robustag.evaluation import evaluate_model
from robustag.plugins import PluginError, Registry
from robustag.robustness import evade
from robustag.selfpaced import quantile_pace, quantile_threshold, self_paced_weights
from robustag.training import default_config, train

CPU = torch.device("cpu")
SOFT = ("linear", "log", "mixture")


def test_hard_weights_are_exactly_zero_or_one_at_the_threshold():
    losses = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.001, 3.0])
    weights = self_paced_weights(losses, 1.0, "hard")
    assert weights.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    scheme=st.sampled_from(SOFT),
    lam=st.floats(min_value=0.05, max_value=0.95),
    losses=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=2, max_size=40),
)
def test_soft_weights_lie_in_unit_interval_and_do_not_increase_with_the_loss(scheme, lam, losses):
    ordered = torch.tensor(sorted(losses), dtype=torch.float64)
    weights = self_paced_weights(ordered, lam, scheme)
    assert ((weights >= 0) & (weights <= 1)).all()
    assert (weights[1:] <= weights[:-1] + 1e-12).all()
    assert weights[ordered >= lam].eq(0).all() if scheme in ("linear", "log") else True


def test_linear_weights_match_the_closed_form():
    losses = torch.tensor([0.0, 0.5, 1.0, 2.0])
    assert self_paced_weights(losses, 2.0, "linear").tolist() == [1.0, 0.75, 0.5, 0.0]


@pytest.mark.parametrize("spec", ["spaml-h", "spaml-s", "spaml-s:pace=quantile", "spaml-h:pace=quantile,p0=0.2"])
def test_a_growing_pace_admits_a_non_decreasing_fraction(spec):
    defense = DEFENSES.create(spec)
    losses = torch.rand(4000, generator=torch.Generator().manual_seed(0)) * 3
    admitted = []
    for epoch in range(15):
        defense.begin_epoch(epoch, None)
        weights = self_paced_weights(losses, defense.threshold(losses), defense.scheme)
        admitted.append(float((weights > 0).float().mean()))
    assert all(b >= a for a, b in zip(admitted, admitted[1:]))
    assert admitted[-1] > admitted[0]


def test_quantile_pace_admits_the_easiest_fraction():
    losses = torch.arange(100, dtype=torch.float64)
    lam = quantile_threshold(losses, 0.3)
    assert int((self_paced_weights(losses, lam, "hard") > 0).sum()) == 30
    assert [quantile_pace(0.5, 10, e) for e in (0, 5, 10, 20)] == [0.5, 0.75, 1.0, 1.0]


def test_curriculum_schedule_is_monotone_from_start_to_full():
    defense = DEFENSES.create("curriculum:start=0.2,ramp=8,attack=pgd,steps=5,grow=steps")
    strengths, steps = [], []
    for epoch in range(12):
        defense.begin_epoch(epoch, None)
        strengths.append(defense.strength)
        steps.append(defense.adversary.steps)
    assert strengths[0] == pytest.approx(0.2) and strengths[-1] == 1.0
    assert all(b >= a for a, b in zip(strengths, strengths[1:]))
    assert all(b >= a for a, b in zip(steps, steps[1:])) and steps[0] == 1 and steps[-1] == 5


@pytest.mark.parametrize("model", ["metric", "pitf"])
def test_aml_with_beta_zero_reproduces_plain_exactly(planted, model):
    config = default_config(model, epochs=3, dim=16, seed=5)
    plain = train(planted, config, CPU, regime=DEFENSES.create("plain"))
    aml = train(planted, config, CPU, regime=DEFENSES.create("aml:beta=0"))
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in aml.history]
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, aml.model.state_dict()[key]), key


@pytest.mark.parametrize("spec", ["aml:eps=0.5", "spaml-s:eps=0.5", "certified:eps=0.5", "rank-adv:eps=0.5"])
def test_adversarial_training_is_more_robust_to_pgd_than_plain(planted, spec):
    config = default_config("pitf", epochs=40, dim=16, lr=0.01, patience=40)

    def attacked_ndcg(defense_spec):
        model = train(planted, config, CPU, regime=DEFENSES.create(defense_spec)).model
        values = [evade(model, planted, ATTACKS.create(f"pgd:eps={eps}"), CPU).summary()["ndcg@3"] for eps in (0.1, 0.2, 0.4)]
        return np.mean(values)

    assert attacked_ndcg(spec) > attacked_ndcg("plain") + 0.02


@pytest.mark.parametrize("model", ["metric", "pitf"])
@pytest.mark.parametrize("spec", ["curriculum", "spaml-h", "spaml-s:scheme=mixture", "freelb", "aml:attack=mim,steps=2"])
def test_every_defense_trains_and_records_its_figures(planted, model, spec):
    result = train(planted, default_config(model, epochs=2, dim=8), CPU, regime=DEFENSES.create(spec))
    record = result.history[-1]
    assert {"loss", "adv_loss", "valid_f1@3", "valid_ndcg@3", "seconds"} <= set(record)
    if spec.startswith("spaml"):
        assert 0 <= record["admitted"] <= 1 and 0 <= record["mean_weight"] <= 1 and record["lambda"] > 0
    assert evaluate_model(result.model, planted.test, planted.n_tags).summary()["ndcg@10"] > 0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("spaml-s:eps=-0.5", r"spaml-s: pgd: parameter eps=-0.5 must be ≥ 0"),
        ("spaml-s:lambda=0", r"spaml-s: parameter lambda=0.0 must be > 0"),
        ("spaml-h:lambda=-1", r"spaml-h: parameter lambda=-1.0 must be > 0"),
        ("spaml-s:mu=0.9", r"spaml-s: parameter mu=0.9 must be ≥ 1"),
        ("aml:attack=tag-replace-20", r"aml: attack 'tag-replace' cannot make adversarial training samples"),
        ("spaml-s:scheme=log,lambda=1.5", r"the log scheme needs 0 < lambda < 1"),
        ("spaml-s:gamma=x", r"spaml-s: parameter gamma='x' is not a valid float"),
        ("curriculum:bogus=1", r"curriculum: unknown parameter 'bogus'"),
        ("certified:targets=tag", r"certified: parameter targets='tag' must be one of user, item, user\+item"),
        ("rank-adv:targets=user+tag", r"rank-adv: its adversary moves user and item rows only"),
        ("rank-adv:scheme=bogus", r"rank-adv: parameter scheme='bogus' must be one of none, hard"),
    ],
)
def test_bad_configurations_fail_before_training(spec, message):
    with pytest.raises(PluginError, match=message):
        DEFENSES.create(spec)


def test_certified_training_needs_a_model_with_linear_score_directions(planted):
    model = train(planted, default_config("metric", epochs=1, dim=8), CPU).model
    model.score_directions = lambda tag_table: None
    with pytest.raises(PluginError, match="certified: model MetricModel declares no linear score directions"):
        DEFENSES.create("certified").begin_epoch(0, model)  # refused before the first training step


def test_a_third_party_defense_loads_from_a_file(tmp_path, planted):
    path = tmp_path / "my_defense.py"
    path.write_text(textwrap.dedent('''
        from robustag.defense import Defense
        from robustag.plugins import Param

        class ScaledLoss(Defense):
            name = "scaled"
            summary = "the model's loss, scaled"
            params = {"scale": Param(2.0, "factor")}

            def loss(self, model, batch):
                loss = self.scale * model.training_loss(batch)
                return loss, {"loss": loss.detach()}
    '''))
    registry = Registry("defense", Defense, "robustag.defenses", "robustag.defenses.none")
    assert registry.load_file(path) == ["scaled"]
    defense = registry.create("scaled:scale=3")
    result = train(planted, default_config("metric", epochs=1, dim=8), CPU, regime=defense)
    assert result.history[0]["loss"] > 0


@pytest.mark.parametrize("how, fragment", [("over", "goes .* over its l2 budget"), ("nan", "holds NaN or infinite")])
def test_a_training_adversary_out_of_budget_stops_training_at_the_epochs_end(planted, how, fragment):
    """In training the value checks wait on the device (no step syncs) and are read once per
    epoch: a bad perturbation still stops training, naming the attack, after the first epoch."""
    aml = DEFENSES.create("aml")
    bad = (lambda v, r: v + 100 * r) if how == "over" else (lambda v, r: torch.full_like(v, float("nan")))
    aml.adversary.perturb = lambda objective, deltas, radius: {k: bad(v, radius[k]) for k, v in deltas.items()}
    epochs = []
    with pytest.raises(PluginError, match=f"attack pgd: perturbation '(user|item)' {fragment}"):
        train(planted, default_config("metric", epochs=3, dim=8), torch.device("cpu"), regime=aml,
              on_epoch=epochs.append, compile=False)
    assert epochs == []  # raised before the first epoch's validation: nothing recorded as if it were fine
