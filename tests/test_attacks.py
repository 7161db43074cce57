"""Attacks: the plugin API, the built-ins' budgets and strength, poisoning, and the example plugin."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustag.attack import ATTACKS, Attack, project, random_start, row_budget
from robustag.evaluation import evaluate_model
from robustag.plugins import PluginError, Registry, split_specs
from robustag.preprocess import load_split
from robustag.robustness import attacked_embeddings, evade, post_ranges, promotion_rate, run_attack, worst_cases
from robustag.training import default_config, train

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugins" / "random_noise.py"
CPU = torch.device("cpu")
EMBEDDING_ATTACKS = ("fgsm", "pgd", "mim", "freelb")


@pytest.fixture(scope="module")
def movielens(real_data_dir):
    split = load_split("movielens", real_data_dir)
    result = train(split, default_config("metric", dim=64, epochs=40, lr=0.005, margin=1.0), CPU)
    return split, result.model


@pytest.fixture(scope="module")
def noise_registry():
    registry = Registry("attack", Attack, "robustag.attacks", "robustag.attacks.none")
    registry.load_file(EXAMPLE)
    return registry


def _ndcg3(evaluation):
    return evaluation.summary()["ndcg@3"]


def test_pgd_hurts_at_least_as_much_as_fgsm_and_both_more_than_noise(movielens, noise_registry):
    split, model = movielens
    clean = _ndcg3(evaluate_model(model, split.test, split.n_tags))
    drops = {name: [] for name in ("random-noise", "fgsm", "pgd")}
    for eps in (0.05, 0.1, 0.2):
        for name in drops:
            attacked = _ndcg3(evade(model, split, noise_registry.create(f"{name}:eps={eps}"), CPU))
            drops[name].append(clean - attacked)
    mean = {name: np.mean(values) for name, values in drops.items()}
    assert mean["pgd"] >= mean["fgsm"] > mean["random-noise"] + 0.05
    assert mean["random-noise"] < 0.03  # noise of the same norm barely moves the ranking


@pytest.mark.parametrize("name", EMBEDDING_ATTACKS)
def test_eps_zero_leaves_metrics_exactly_unchanged(movielens, name):
    split, model = movielens
    clean = evaluate_model(model, split.test, split.n_tags)
    attacked = evade(model, split, ATTACKS.create(f"{name}:eps=0,targets=user+item+tag"), CPU)
    for key, values in clean.per_post.items():
        np.testing.assert_array_equal(attacked.per_post[key], values, err_msg=key)


@pytest.mark.parametrize("spec", ["fgsm", "pgd:steps=3,random_start=False", "mim:steps=3"])
def test_attacking_posts_in_groups_gives_what_one_batch_gives(movielens, spec):
    # each post's loss depends on its own user and item rows only: grouping is for memory
    split, model = movielens
    attack = ATTACKS.create(spec + (",eps=0.2" if ":" in spec else ":eps=0.2"))
    whole = attacked_embeddings(model, split.test, attack, CPU)
    grouped = attacked_embeddings(model, split.test, attack, CPU, max_elements=split.n_tags * 50)
    assert len(post_ranges(split.test, split.n_tags, split.n_tags * 50)) > 2
    for key in ("user", "item"):
        torch.testing.assert_close(grouped[key], whole[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(whole["user"], model.user(torch.as_tensor(split.test.users)))  # the attack moved them


def test_post_ranges_cover_every_post_once_within_the_budget(movielens):
    split, _ = movielens
    ranges = post_ranges(split.test, split.n_tags, split.n_tags * 20)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(split.test)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
    rows = [split.test.tag_indptr[stop] - split.test.tag_indptr[start] for start, stop in ranges]
    assert all(r <= 20 or stop - start == 1 for r, (start, stop) in zip(rows, ranges))


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(EMBEDDING_ATTACKS),
    norm=st.sampled_from(["l2", "linf"]),
    eps=st.floats(min_value=0.0, max_value=2.0),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_every_perturbation_stays_inside_its_budget(name, norm, eps, seed):
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(30, 6, generator=generator)
    target = torch.randn(6, generator=generator)
    attack = ATTACKS.create(f"{name}:eps={eps},norm={norm}")
    radius = {"user": row_budget(table, eps, norm), "tag": row_budget(table, eps, norm)}
    deltas = {"user": torch.zeros(30, 6), "tag": torch.zeros(30, 4, 6)}
    objective = lambda d: ((table + d["user"]) @ target) ** 2 + (d["tag"] @ target).exp().sum(1)
    out = attack.perturb(objective, deltas, radius)
    for key, delta in out.items():
        assert delta.shape == deltas[key].shape
        if norm == "l2":
            assert (delta.norm(dim=-1) <= radius[key] * (1 + 1e-5) + 1e-7).all()
        else:
            assert (delta.abs() <= radius[key] * (1 + 1e-5) + 1e-7).all()


def test_projection_and_random_start_respect_the_ball():
    generator = torch.Generator().manual_seed(0)
    big = torch.randn(100, 8, generator=generator) * 10
    radius = torch.tensor(0.3)
    assert (project(big, radius, "l2").norm(dim=-1) <= 0.3 + 1e-6).all()
    assert (project(big, radius, "linf").abs() <= 0.3).all()
    start = random_start(big, radius, "l2", generator)
    assert (start.norm(dim=-1) <= 0.3 + 1e-6).all() and start.norm(dim=-1).min() > 0


def test_tag_replace_changes_exactly_round_r_n_assignments_never_to_the_same_tag(movielens):
    split, _ = movielens
    rate = 0.2
    poisoned = ATTACKS.create("tag-replace-20").poison(split, seed=3)
    before = split.train.triples()
    after = poisoned.train.triples()
    n = split.train.n_assignments
    assert poisoned.train.n_assignments == n
    # Posts keep their (user, item) and number of tags: compare each post's tag multiset.
    np.testing.assert_array_equal(poisoned.train.users, split.train.users)
    np.testing.assert_array_equal(poisoned.train.tag_indptr, split.train.tag_indptr)
    changed = 0
    for k in range(len(split.train)):
        old = np.sort(split.train.tag_indices[split.train.tag_indptr[k]: split.train.tag_indptr[k + 1]])
        new = np.sort(poisoned.train.tag_indices[poisoned.train.tag_indptr[k]: poisoned.train.tag_indptr[k + 1]])
        changed += len(old) - _multiset_overlap(old, new)
    # A replacement can land on a tag the post already had through another replacement,
    # so the multiset view can only undercount.
    assert changed <= round(rate * n) and changed > 0.95 * round(rate * n)
    assert poisoned.test is split.test and poisoned.valid is split.valid
    assert len(before[0]) == len(after[0])


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.3, 1.0])
def test_replace_tags_changes_exactly_round_r_n_never_to_the_same_tag(rate):
    from robustag.attacks.tag_replace import replace_tags

    rng = np.random.default_rng(0)
    tags = rng.integers(0, 7, size=1001)
    new = replace_tags(tags, rate, 7, np.random.default_rng(1))
    assert (new != tags).sum() == round(rate * len(tags))
    assert new.min() >= 0 and new.max() < 7
    again = replace_tags(tags, rate, 7, np.random.default_rng(1))
    np.testing.assert_array_equal(new, again)


def _multiset_overlap(a, b):
    values, counts_a = np.unique(a, return_counts=True)
    counts_b = np.array([np.sum(b == v) for v in values])
    return int(np.minimum(counts_a, counts_b).sum())


def test_tag_promote_pushes_its_target_into_the_top_n(movielens):
    split, model = movielens
    config = default_config("metric", dim=64, epochs=40, lr=0.005, margin=1.0)
    clean = evaluate_model(model, split.test, split.n_tags)
    attack = ATTACKS.create("tag-promote:fake_users=0.2,items_per_user=40")
    outcome = run_attack(attack, model, split, config, CPU, clean)
    target = attack.target_tag(split)
    assert outcome.extra["target_tag"] == target
    assert outcome.extra["promotion@10"] > outcome.extra["clean_promotion@10"] + 0.05
    assert promotion_rate(clean, split.test, target, 10) == outcome.extra["clean_promotion@10"]


def test_targeted_evasion_promotes_its_tag_without_the_labels(movielens):
    split, model = movielens
    clean = evaluate_model(model, split.test, split.n_tags)
    attack = ATTACKS.create("targeted:eps=0.5,steps=30")
    outcome = run_attack(attack, model, split, default_config("metric"), CPU, clean)
    target = attack.target_tag(split)
    assert outcome.extra["target_tag"] == target and attack.threat_model == "targeted" and not attack.knows_labels
    assert outcome.extra["promotion@3"] > outcome.extra["clean_promotion@3"] + 0.3
    assert outcome.extra["promotion@3"] == promotion_rate(outcome.evaluation, split.test, target, 3)
    assert outcome.extra["budget_user"] > 0 and outcome.extra["budget_item"] > 0
    # the label-aware attack at the same budget promotes far less: the objective matters
    label_aware = run_attack(ATTACKS.create("pgd:eps=0.5"), model, split, default_config("metric"), CPU, clean)
    assert promotion_rate(label_aware.evaluation, split.test, target, 3) < outcome.extra["promotion@3"] - 0.2
    with pytest.raises(PluginError, match=r"targeted: target=99999 is not a tag id of movielens"):
        ATTACKS.create("targeted:target=99999").check(split)


def test_worst_case_is_the_per_post_minimum_within_each_budget(movielens):
    split, model = movielens
    clean = evaluate_model(model, split.test, split.n_tags)
    outcomes = [run_attack(ATTACKS.create(f"{a}:eps={eps}"), model, split, None, CPU, clean)
                for eps in (0.05, 0.1) for a in ("fgsm", "pgd")]
    worst = worst_cases(clean, outcomes)
    assert [(w["eps"], w["attacks"]) for w in worst] == [(0.05, 2), (0.1, 2)]
    for budget, pair in zip(worst, (outcomes[:2], outcomes[2:])):
        per_post = np.minimum(pair[0].evaluation.per_post["ndcg@3"], pair[1].evaluation.per_post["ndcg@3"])
        assert budget["worst_ndcg@3"] == pytest.approx(per_post.mean())
        assert budget["worst_ndcg@3"] <= min(o.evaluation.summary()["ndcg@3"] for o in pair)
        assert 0 < budget["broken@3"] <= 1
    # the small budget's worst case is not dragged down by the large budget's attacks
    assert worst[0]["worst_ndcg@3"] > worst[1]["worst_ndcg@3"]


# -- the plugin API --------------------------------------------------------------------------

def test_specs_are_parsed_typed_and_checked():
    attack = ATTACKS.create("pgd:eps=0.5,steps=10,norm=l2")
    assert (attack.eps, attack.steps, attack.norm) == (0.5, 10, "l2")
    assert ATTACKS.create("tag-replace-30").rate == 0.3
    assert split_specs("pgd:eps=0.5,steps=10,mim,tag-replace:rate=0.2") == [
        "pgd:eps=0.5,steps=10", "mim", "tag-replace:rate=0.2"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", r"unknown attack 'nope'; available: .*fgsm.*pgd.*tag-replace-20"),
        ("pgd:steps=ten", r"pgd: parameter steps='ten' is not a valid int"),
        ("pgd:eps=-0.1", r"pgd: parameter eps=-0.1 must be ≥ 0"),
        ("pgd:gamma=2", r"pgd: unknown parameter 'gamma'"),
        ("pgd:norm=l3", r"pgd: parameter norm='l3' must be one of l2, linf"),
        ("pgd:targets=user+bias", r"pgd: targets='user\+bias' must join some of user, item, tag"),
        ("tag-replace:rate=1.5", r"tag-replace: parameter rate=1.5 must be in \[0, 1\]"),
        ("pgd:eps", r"malformed parameter 'eps'"),
    ],
)
def test_bad_specs_give_clear_errors(spec, message):
    with pytest.raises(PluginError, match=message):
        ATTACKS.create(spec)


def test_example_plugin_loads_from_a_file(noise_registry):
    attack = noise_registry.create("random-noise:eps=0.2")
    assert attack.surface == "embedding" and "random-noise" in noise_registry.names()
    assert noise_registry.origin("random-noise").startswith("file ")


def test_example_plugin_loads_through_an_entry_point(tmp_path, monkeypatch):
    # What `pip install examples/plugins` leaves behind: the module and its dist-info.
    (tmp_path / "random_noise.py").write_text(EXAMPLE.read_text())
    dist = tmp_path / "robustag_random_noise-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: robustag-random-noise\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[robustag.test_attacks]\nrandom-noise = random_noise:RandomNoise\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("attack", Attack, "robustag.attacks", "robustag.test_attacks")
    assert "random-noise" in registry.names()
    assert "entry point 'random-noise'" in registry.origin("random-noise")
    assert registry.create("random-noise:eps=0.3").eps == 0.3
    monkeypatch.delitem(sys.modules, "random_noise", raising=False)


def test_a_broken_or_clashing_plugin_is_named(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_module\n")
    registry = Registry("attack", Attack, "robustag.attacks", "robustag.attacks.none")
    with pytest.raises(PluginError, match=r"plugins .*broken\.py: failed to import: ModuleNotFoundError"):
        registry.load_file(broken)
    clash = tmp_path / "clash.py"
    clash.write_text(textwrap.dedent('''
        from robustag.attack import IterativeAttack, EmbeddingAttack

        class MyPGD(IterativeAttack):
            name = "pgd"
            params = EmbeddingAttack.params

            def schedule(self):
                return 1, 1.0, False
    '''))
    with pytest.raises(PluginError, match=r"attack name clash: 'pgd' from file .*clash\.py is already provided by built-in"):
        registry.load_file(clash)
    with pytest.raises(PluginError, match="plugins .*missing.py: file not found"):
        registry.load_file(tmp_path / "missing.py")


def test_label_free_attack_hurts_without_ever_seeing_the_labels(movielens):
    split, model = movielens
    clean = _ndcg3(evaluate_model(model, split.test, split.n_tags))
    label_free = ATTACKS.create("label-free:eps=0.1")
    attacked = _ndcg3(evade(model, split, label_free, CPU))
    label_aware = _ndcg3(evade(model, split, ATTACKS.create("pgd:eps=0.1"), CPU))
    assert attacked < clean - 0.03  # real damage from the model's own ranking alone (0.640 -> 0.571 here)
    assert label_aware < attacked  # knowing the labels helps the attacker (0.357 here)
    # other true tags, same users and items: the label-free attack moves the rows identically
    other = split.test.subset(np.arange(len(split.test)))
    other.tag_indices[:] = (other.tag_indices + 1) % split.n_tags
    first = attacked_embeddings(model, split.test, ATTACKS.create("label-free:eps=0.1"), CPU)
    second = attacked_embeddings(model, other, ATTACKS.create("label-free:eps=0.1"), CPU)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_an_attack_gets_the_context_its_threat_model_allows(movielens, tmp_path):
    split, model = movielens
    plugin = tmp_path / "spy.py"
    plugin.write_text(textwrap.dedent("""
        from robustag.attack import EmbeddingAttack

        SEEN = []

        class Spy(EmbeddingAttack):
            name = "spy-aware"
            summary = "records what it is given"

            def perturb(self, objective, deltas, radius, context=None):
                SEEN.append((self.knows_labels, objective, context))
                return deltas

        class BlindSpy(Spy):
            name = "spy-blind"
            knows_labels = False
    """))
    registry = Registry("attack", Attack, "robustag.attacks", "robustag.attacks.none")
    registry.load_file(plugin)
    module = sys.modules[[m for m in sys.modules if m.startswith("robustag_plugin_spy")][0]]
    for name in ("spy-aware", "spy-blind"):
        evade(model, split, registry.create(name), CPU)
    (aware, objective, context), (blind, nothing, blind_context) = module.SEEN
    assert aware and callable(objective) and context.posts.n_assignments == split.test.n_assignments
    assert not blind and nothing is None and blind_context.posts.n_assignments == 0
    scores = model.score(torch.as_tensor(split.test.users), torch.as_tensor(split.test.items))
    assert torch.allclose(blind_context.clean_scores(), scores)


def test_apgd_checkpoints_follow_the_paper():
    from robustag.attacks.apgd import checkpoints

    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_needs_no_step_size_and_auto_keeps_each_posts_worst(movielens):
    split, model = movielens
    per_post = {spec: evade(model, split, ATTACKS.create(spec, eps=0.1), CPU).per_post["ndcg@3"]
                for spec in ("pgd", "pgd:steps=100", "apgd:steps=10", "apgd", "auto")}
    mean = {spec: values.mean() for spec, values in per_post.items()}
    assert mean["apgd:steps=10"] < mean["pgd"]  # 10 steps of APGD beat 10 of PGD
    assert mean["apgd"] <= mean["pgd:steps=100"] + 1e-9
    assert (per_post["auto"] <= per_post["apgd"] + 1e-12).all()  # its first member, same seed
    assert mean["auto"] <= min(mean.values()) + 1e-12


def test_sanity_checks_pass_a_sound_attack_and_fail_loudly_on_a_weak_one(movielens, tmp_path):
    import robustag as rt
    from robustag.checks import sanity_checks

    split, model = movielens
    checks = sanity_checks(model, split, "apgd:eps=0.1", CPU).copy()
    assert {c["check"]: c["passed"] for c in checks} == {
        "monotone in ε": True, "beats random noise": True, "converged": True, "large ε breaks the model": True,
        "certificate below the attack": True}
    pgd10 = {c["check"]: c for c in sanity_checks(model, split, "pgd:eps=0.1", CPU)}
    assert not pgd10["converged"]["passed"]  # 10 steps are not enough here: said, not hidden
    lazy = tmp_path / "lazy.py"
    lazy.write_text(textwrap.dedent("""
        from robustag.attack import EmbeddingAttack

        class Lazy(EmbeddingAttack):
            name = "lazy-check"
            summary = "moves nothing"

            def perturb(self, objective, deltas, radius):
                return deltas
    """))
    rt.load_plugins([lazy])
    verdicts = {c["check"]: c["passed"] for c in sanity_checks(model, split, "lazy-check:eps=0.1", CPU)}
    assert verdicts["beats random noise"] is False and verdicts["large ε breaks the model"] is False


def test_auto_is_checked_without_the_verifiers_witnesses_and_says_so(movielens, monkeypatch):
    from robustag.checks import sanity_checks

    split, model = movielens

    def no_verifier(*args, **kwargs):
        raise AssertionError("the checks ran the verifier's witnesses")

    monkeypatch.setattr(ATTACKS.get("witness"), "perturb", no_verifier)
    checks = sanity_checks(model, split, "auto:eps=0.1,steps=10,combinatorial=false", CPU)
    assert len(checks) == 5 and all(c["detail"].endswith("(checked with witness=False)") for c in checks)
    passed = {c["check"] for c in checks if c["passed"]}
    assert {"monotone in ε", "beats random noise", "large ε breaks the model", "certificate below the attack"} <= passed


def test_poison_valid_poisons_the_validation_posts_too_and_is_its_own_unit(movielens):
    from robustag.planning import plan
    from robustag.robustness import poisoned_split
    from robustag.spec import BenchSpec

    split, _ = movielens
    attack = ATTACKS.create("tag-replace-20")
    train_only, both = poisoned_split(split, attack, 0), poisoned_split(split, attack, 0, poison_valid=True)
    assert np.array_equal(train_only.valid.tag_indices, split.valid.tag_indices)
    changed = (both.valid.tag_indices != split.valid.tag_indices).mean()
    assert 0.1 < changed < 0.3 and np.array_equal(both.train.tag_indices, train_only.train.tag_indices)
    assert np.array_equal(both.test.tag_indices, split.test.tag_indices)
    keys = {flag: set(plan([BenchSpec(attacks=["fgsm", "tag-replace-20"], poison_valid=flag)]).units) for flag in (False, True)}
    assert len(keys[True] - keys[False]) == 1 and len(keys[True] & keys[False]) == 1  # only the poisoned unit moves
