"""The conformance kit on every built-in plugin and the example plugin, and on broken plugins
it must catch."""

import re
from pathlib import Path

import pytest
import torch

from robustag.attack import ATTACKS, EmbeddingAttack, Param
from robustag.defense import DEFENSES, Defense
from robustag.plugins import import_plugin_file
from robustag.testing import ConformanceError, check_attack, check_defense

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_built_in_attack_conforms(name):
    passed = check_attack(ATTACKS.get(name))
    assert "spec_round_trips" in passed


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_built_in_defense_conforms(name):
    assert check_defense(DEFENSES.get(name)) == ["named", "spec_round_trips", "trains_learned_models"]


def test_the_example_plugins_conform():
    attack = import_plugin_file(REPO / "examples" / "plugins" / "random_noise.py")
    assert "perturbs_reproducibly" in check_attack(attack.RandomNoise)
    defense = import_plugin_file(REPO / "examples" / "plugins" / "noise_augmentation.py")
    assert "trains_learned_models" in check_defense(defense.NoiseAugmentation, eps=0.2)


class OverBudget(EmbeddingAttack):
    name = "kit-over-budget"
    summary = "twice its budget"

    def perturb(self, objective, deltas, radius):
        return {k: torch.ones_like(v) * 2 * radius[k] for k, v in deltas.items()}


class Unseeded(EmbeddingAttack):
    name = "kit-unseeded"
    summary = "a fresh random draw each time"

    def perturb(self, objective, deltas, radius):
        return {k: torch.rand(v.shape) * radius[k] / v.shape[-1] for k, v in deltas.items()}


class LostParameter(EmbeddingAttack):
    name = "kit-lost-parameter"
    summary = "its spec forgets a parameter"
    params = {**EmbeddingAttack.params, "strength": Param(1.0, "kept out of the spec")}

    @property
    def spec(self):
        return f"{self.name}:eps={self.eps}"

    def perturb(self, objective, deltas, radius):
        return deltas


class CheckedWithAStranger(OverBudget):
    name = "kit-checked-with-a-stranger"
    checked_with = {"exact_search": False}  # a parameter it does not have


class Frozen(Defense):
    name = "kit-frozen"
    summary = "a loss without gradients"

    def loss(self, model, batch):
        return torch.zeros((), requires_grad=True), {}


class NamedBadly(Frozen):
    name = "has space"


@pytest.mark.parametrize("cls, check, fragment", [
    (OverBudget, check_attack, "perturbs_within_contract"),
    (Unseeded, check_attack, "perturbs_reproducibly"),
    (LostParameter, check_attack, "spec_round_trips"),
    (CheckedWithAStranger, check_attack, "checked_with_its_own_parameters.*exact_search"),
    (Frozen, check_defense, "no parameter moved"),
    (NamedBadly, check_defense, "cannot be written in a spec"),
])
def test_the_kit_catches_broken_plugins(cls, check, fragment):
    with pytest.raises(ConformanceError, match=fragment):
        check(cls)


# -- a model whose declared structure disagrees with its own scores fails the kit -----------------

def _dot_product_variant(name: str, score_tags=None, directions=None):
    """The example dot-product model with one thing made wrong."""
    from robustag.models import Model

    module = import_plugin_file(Path(__file__).resolve().parents[1] / "examples" / "plugins" / "dot_product.py")
    methods = {}
    if score_tags is not None:
        methods["score_tags"] = score_tags
    if directions is not None:
        methods["score_directions"] = directions
    network = type(f"{name}Network", (module.DotProductNetwork,), methods)
    recipe = type(name, (Model,), {"name": name, "summary": "a broken variant", "params": module.DotProduct.params,
                                   "defaults": module.DotProduct.defaults,
                                   "build": lambda self, u, i, t, d: network(u, i, t, d, self.reg)})
    return recipe


@pytest.mark.parametrize("name, score_tags, directions, fragment", [
    ("flipped-training", lambda self, user, item, tags: -((user + item).unsqueeze(1) * tags).sum(-1), None,
     "pair_scores (what training optimises) disagree with score_all"),
    ("scaled-directions", None, lambda self, table: (2 * table, 2 * table), "score_directions do not reproduce"),
    ("signed-directions", None, lambda self, table: (-table, -table), "score_directions do not reproduce"),
    ("half-directions", None, lambda self, table: (table, 0 * table), "score_directions do not reproduce"),
])
def test_the_kit_catches_a_model_whose_declared_structure_disagrees_with_its_scores(name, score_tags, directions, fragment):
    from robustag.testing import check_model

    with pytest.raises(ConformanceError, match=re.escape(f"{name}: scores_agree: {fragment}")):
        check_model(_dot_product_variant(name, score_tags, directions))


def test_a_model_declaring_true_directions_passes_the_kit():
    from robustag.testing import check_model

    passed = check_model(_dot_product_variant("true-directions", directions=lambda self, table: (table, table)))
    assert "scores_agree" in passed
