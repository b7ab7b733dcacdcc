"""kltutor.trainers without the libraries: the harness on kltutor's own placements, and the committed results."""

import math

import pytest
import torch

from kltutor import trainers
from kltutor.placements import kl_loss, returns_to_go
from kltutor.trainers import core


@pytest.fixture(scope="module")
def toy():
    return core.toy_models()


@pytest.fixture(scope="module")
def refs(toy):
    pi, ref, _, T = toy
    return core.reference_gradients(pi, ref, T)


def _loss_setting(estimator, **kw):
    def fn(logp, ref_logp, old_logp, mask):
        return 0.5 * kl_loss(logp, ref_logp, mask, estimator=estimator, aggregation="sequence-sum", **kw)

    return core.Setting("kltutor", "test", f"test.{estimator}", "", "loss", estimator, "token", "none", fn, scale=0.5)


def _reward_setting(estimator):
    def fn(logp, ref_logp, mask):
        lr = logp - ref_logp
        k = {"k1": lr, "k3": torch.expm1(-lr) + lr}[estimator]
        return returns_to_go(-k, mask)

    return core.Setting("kltutor", "test", f"test.r.{estimator}", "", "reward", estimator, "token", "none", fn)


def test_candidates_are_far_apart(refs):
    """classify() can only be unambiguous if the candidate vectors differ by much more than its tolerance."""
    names = list(refs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert float((refs[a] - refs[b]).norm()) > 1e-2, (a, b)


@pytest.mark.parametrize(
    "estimator, verdict",
    [
        ("k1", "zero in expectation"),
        ("k2", "token-level k2 (biased for T > 1)"),
        ("k3", "per-token forward KL"),
    ],
)
def test_harness_on_kltutor_loss(toy, refs, estimator, verdict):
    pi, ref, old, T = toy
    g = core.expected_gradient(_loss_setting(estimator), pi, ref, old, T)
    assert core.classify(g, refs)[0] == verdict


def test_harness_on_kltutor_reward(toy, refs):
    pi, ref, old, T = toy
    g = core.expected_gradient(_reward_setting("k1"), pi, ref, old, T)
    assert core.classify(g, refs) == ("exact reverse-KL gradient", pytest.approx(0.0, abs=1e-12))
    g3 = core.expected_gradient(_reward_setting("k3"), pi, ref, old, T)
    assert core.classify(g3, refs)[0] == "other"


def test_stale_prefix_weight_is_exact(toy, refs):
    """The harness's stale regime agrees with chapter 3: only the prefix ratio makes k3 in the loss exact."""
    pi, ref, old, T = toy
    s = _loss_setting("k3", old_logp=None)

    def fn(logp, ref_logp, old_logp, mask):
        return 0.5 * kl_loss(
            logp, ref_logp, mask, estimator="k3", aggregation="sequence-sum", old_logp=old_logp, importance="prefix"
        )

    s.fn = fn
    g = core.expected_gradient(s, pi, ref, old, T, regime="stale")
    assert core.classify(g, refs)[0] == "exact reverse-KL gradient"


def test_bad_regime_and_placement(toy):
    pi, ref, old, T = toy
    with pytest.raises(ValueError, match="regime"):
        core.expected_gradient(_loss_setting("k1"), pi, ref, old, T, regime="later")
    with pytest.raises(ValueError, match="stale"):
        core.expected_gradient(_reward_setting("k1"), pi, ref, old, T, regime="stale")


def test_committed_results_are_consistent(refs):
    """The stored verdicts follow from the stored gradients, and the stored references are today's."""
    data = trainers.load_results()
    for k, v in data["references"].items():
        assert torch.allclose(torch.tensor(v, dtype=torch.float64), refs[k], atol=1e-9), k
    assert {"trl", "verl", "openrlhf"} <= set(data["versions"])
    true = refs["exact reverse-KL gradient"]
    names = [r["name"] for r in data["settings"]]
    assert len(names) == len(set(names))
    for r in data["settings"]:
        for regime in ("on_policy", "stale"):
            res = r.get(regime)
            if res is None:
                assert regime == "stale" and r["placement"] == "reward"
                continue
            g = torch.tensor(res["gradient"], dtype=torch.float64)
            assert core.classify(g, refs)[0] == res["verdict"], r["name"]
            assert math.isclose(float((g - true).norm()), res["bias_norm"], abs_tol=1e-9)


def test_committed_defaults():
    """What the book says about each library's default: one default per trainer, with the stored verdict."""
    data = trainers.load_results()
    defaults = {r["name"]: r["on_policy"]["verdict"] for r in data["settings"] if r["default"]}
    assert defaults == {
        "trl.grpo.k3.ratio.token": "token-level k2 (biased for T > 1)",
        "trl.rloo.k1.sequence": "exact reverse-KL gradient",
        "verl.loss.low_var_kl": "per-token forward KL",
        "verl.reward.kl": "exact reverse-KL gradient",
        "openrlhf.reward.k1": "exact reverse-KL gradient",
    }


def test_results_frame_and_lookup():
    df = trainers.results_frame()
    assert len(df) == len(trainers.load_results()["settings"])
    assert set(df["on-policy gradient"]) <= set(core.CLASSES)
    assert trainers.setting("verl.loss.low_var_kl+")["on_policy"]["verdict"] == "token-level k2 (biased for T > 1)"
    with pytest.raises(KeyError, match="no trainer setting"):
        trainers.setting("nope")


def test_compare_reports_changes():
    data = trainers.load_results()
    assert trainers.compare(data, data) == []
    import copy

    changed = copy.deepcopy(data)
    changed["settings"][0]["on_policy"]["verdict"] = "other"
    changed["versions"]["trl"] = "99.0"
    diffs = trainers.compare(changed, data)
    assert any("verdict was" in d for d in diffs) and any("version of trl" in d for d in diffs)


def test_unknown_library():
    with pytest.raises(ValueError, match="unknown library"):
        trainers.compute(["JAX-RL"])


def test_cli_show(capsys):
    from kltutor.trainers.__main__ import main

    assert main(["show"]) == 0
    assert "trl 1.16.0" in capsys.readouterr().out
