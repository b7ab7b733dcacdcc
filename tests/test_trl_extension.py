"""kltutor.trainers.grpo_extension: TRL's GRPOTrainer with the capstone's placements computes the capstone's loss.

On one fixed batch (the same weights, prompts, completions and rewards), for every placement, the extension's
loss, advantages and parameter gradient equal :func:`kltutor.capstone.loss.step_loss`'s. Both sides compute
in float32 on the CPU; the log-probabilities come from two different code paths (TRL's fused LM head, the
capstone's chunked log-softmax), which agree to a few float32 ulps, so the loss and every gradient entry must
agree to ``RTOL = 1e-5`` relative to the largest entry (about 100 float32 ulps: far below any difference
between placements, which the test also checks, and far above rounding). A stale batch (parameters moved
after sampling) checks the frozen in-reward penalty and both ratio corrections. The cases and the measuring
code are in :mod:`kltutor.trainers.extension_checks`, which also writes the figures the chapter shows.

Needs the [trainers] extra (`make trainers-test`); skips without TRL.
"""

import json
import math

import pytest
import torch

pytest.importorskip("trl")
pytestmark = pytest.mark.trainers

from kltutor.capstone.config import CAPSTONE_PLACEMENTS  # noqa: E402
from kltutor.trainers import extension_checks as X  # noqa: E402

RTOL = 1e-5


def _ids(c):
    return "-".join(str(x) for x in c)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return X.reference(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def measured():
    return {}


def _check(r):
    assert r["advantages_equal"]
    assert r["loss_diff"] <= RTOL * max(1.0, abs(r["loss"])), r
    assert r["grad_diff"] <= RTOL, r
    assert float(r["grad"].norm()) > 0


@pytest.mark.parametrize("case", X.CASES, ids=_ids)
def test_on_policy_batch_matches_step_loss(reference, tmp_path, case, measured):
    r = X.agreement(reference, tmp_path, case)
    measured[case] = r
    _check(r)


def test_placements_differ(measured):
    """The agreement is not vacuous: the gradients of different placements differ by far more than RTOL."""
    if len(measured) < len(X.CASES):
        pytest.skip("needs every on-policy case")
    for case, r in measured.items():  # the figures of the report (pytest -s)
        print(f"{_ids(case):40s} loss {r['loss']:+.6f}  |loss diff| {r['loss_diff']:.1e}  grad {r['grad_diff']:.1e}")
    base = measured[X.CASES[0]]["grad"]
    for case in X.CASES[1:]:
        d = float((measured[case]["grad"] - base).abs().max()) / max(1.0, float(base.abs().max()))
        assert d > 100 * RTOL, case


@pytest.mark.parametrize("case", X.STALE_CASES, ids=_ids)
def test_stale_batch_matches_step_loss(reference, tmp_path, case):
    """Parameters moved after sampling: the in-reward penalty stays frozen, the ratio corrections apply."""
    _check(X.agreement(reference, tmp_path, case, stale=True))


def test_stored_figures_are_within_tolerance():
    """The figures the chapter shows (data/trl_extension.json) cover every case and meet the tolerances."""
    data = json.loads(X.DATA_PATH.read_text())
    got = {
        (r["placement"], r["kl_level"], r["importance_weighted_kl"], r["aggregation"], r["batch"])
        for r in data["agreement"]
    }
    want = {(*c, "on-policy") for c in X.CASES} | {(*c, "stale") for c in X.STALE_CASES}
    assert got == want
    for r in data["agreement"]:
        assert r["advantages_equal"] and r["grad_diff"] <= RTOL and r["loss_diff"] <= RTOL * max(1, abs(r["loss"]))
    assert [(r["placement"], r["aggregation"]) for r in data["distributed"]["runs"]] == X.DISTRIBUTED
    for r in data["distributed"]["runs"]:
        assert r["diff"] <= 1e-5 * r["moved"] and r["moved"] > 1e-3


def test_unknown_placement_is_one_line(tmp_path):
    from kltutor.trainers.grpo_extension import KLPlacementGRPOConfig

    with pytest.raises(ValueError) as e:
        KLPlacementGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, beta=0.1, kl_placement="k4-in-loss")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("kl_placement: unknown KL placement 'k4-in-loss'")
    for p in CAPSTONE_PLACEMENTS:
        assert p in msg


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(kl_placement="k1-in-reward", kl_level="sequence"), "kl_level"),
        (dict(kl_placement="k1-in-reward", importance_weighted_kl=True), "importance_weighted_kl"),
        (dict(kl_aggregation="mean"), "kl_aggregation"),
        (dict(kl_placement="none"), "beta"),
        (dict(epsilon_high=0.28), "epsilon_high"),
        (dict(scale_rewards="batch"), "scale_rewards"),
        (dict(kl_schedule="linear"), "beta_end"),
        (dict(kl_schedule="warmup"), "kl_schedule"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, bad, field):
    from kltutor.trainers.grpo_extension import KLPlacementGRPOConfig

    with pytest.raises(ValueError) as e:
        KLPlacementGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, beta=0.1, **bad)
    assert str(e.value).startswith(f"{field}:") and "\n" not in str(e.value), str(e.value)


def test_other_trl_version_warns(monkeypatch):
    import trl

    from kltutor.trainers.grpo_extension import check_trl_version

    monkeypatch.setattr(trl, "__version__", "9.9.9")
    with pytest.warns(UserWarning, match=r"checked against TRL 1\.16\.0, not 9\.9\.9"):
        check_trl_version()


def test_training_runs_and_logs(reference, tmp_path):
    """Two real optimiser steps of TRL's loop with an in-reward placement: finite loss, the logged beta."""
    tr, _ = X.trainer(reference, tmp_path, "k3-in-reward", "token", False, "sequence-mean")
    tr.args.max_steps = 2
    out = tr.train()
    assert math.isfinite(out.training_loss)
    assert [h["beta"] for h in tr.state.log_history if "beta" in h] == [X.BETA, X.BETA]


def _capstone_setting(ext):
    """The capstone's own composition of the same KL term (kltutor.placements, as grpo_loss composes it)."""
    from kltutor.placements import kl_loss, returns_to_go, shaped_rewards
    from kltutor.trainers.core import Setting

    beta = ext.scale
    if ext.placement == "loss":
        iw = ext.correction != "none"

        def fn(logp, ref_logp, old_logp, mask):
            return beta * kl_loss(
                logp, ref_logp, mask, ext.estimator, ext.level, old_logp if iw else None, "sequence-sum"
            )

    else:

        def fn(logp, ref_logp, mask):
            pen = shaped_rewards(
                torch.zeros(logp.shape[0], dtype=logp.dtype), logp, ref_logp, mask, beta, ext.estimator
            )
            return returns_to_go(pen, mask)

    return Setting("capstone", "step_loss", ext.name, "", ext.placement, ext.estimator, ext.level, "", fn, scale=beta)


def test_toy_verdicts_equal_the_capstone_placements():
    """Chapter 3's harness: the extension's exact expected gradient equals the capstone's placement's, on policy
    and on a stale batch, so it gets the same verdict; and the stored rows (results.json) are these."""
    from kltutor import trainers
    from kltutor.trainers import core, trl_extension_adapter

    pi, ref, old, T = core.toy_models()
    refs = core.reference_gradients(pi, ref, T)
    stored = {r["name"]: r for r in trainers.load_results()["settings"] if r["library"] == "TRL+kltutor"}
    settings = trl_extension_adapter.settings()
    assert {s.name for s in settings} == set(stored)
    for s in settings:
        cap = _capstone_setting(s)
        for regime in ("on-policy", "stale") if s.placement == "loss" else ("on-policy",):
            g_ext = core.expected_gradient(s, pi, ref, old, T, regime)
            g_cap = core.expected_gradient(cap, pi, ref, old, T, regime)
            assert torch.allclose(g_ext, g_cap, rtol=0, atol=1e-12), (s.name, regime)
            key = regime.replace("-", "_")
            assert core.classify(g_ext, refs)[0] == stored[s.name][key]["verdict"], (s.name, regime)


def test_adaptive_schedule_follows_the_measured_kl(reference, tmp_path):
    """kl_schedule='adaptive': the second step's beta is the capstone's controller (kltutor.schedules) updated
    with the first batch's k1 sequence KL over its samples."""
    from kltutor.schedules import make_schedule

    tr, _ = X.trainer(reference, tmp_path, "k1-in-reward", "token", False, "sequence-mean")
    tr.args.kl_schedule, tr.args.kl_target = "adaptive", 0.01
    tr.kl_schedule = make_schedule("adaptive", beta=X.BETA, target=0.01, horizon=100)
    tr.args.max_steps = 2
    tr.train()
    logs = [h for h in tr.state.log_history if "beta" in h]
    expect = make_schedule("adaptive", beta=X.BETA, target=0.01, horizon=100)
    expect.update(logs[0]["kl_schedule_input"], X.N_PROMPTS * X.TINY["group_size"])
    assert logs[0]["beta"] == X.BETA and logs[1]["beta"] == pytest.approx(expect.beta, rel=1e-6)
    assert logs[1]["beta"] != X.BETA


def test_trl_capstone_cli_bad_yaml_is_one_line(reference, tmp_path, capsys):
    import yaml

    from kltutor.capstone.config import CapstoneConfig
    from kltutor.capstone.export import trl_config_values
    from kltutor.trainers import trl_capstone

    values = trl_config_values(CapstoneConfig(**X.TINY, placement="k3-in-loss", beta=0.1, device="cpu"))
    values["kl_placement"] = "k9-in-loss"
    conf = tmp_path / "bad.yaml"
    conf.write_text(yaml.safe_dump(values))
    assert trl_capstone.main([str(conf), "--model", reference, "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: kl_placement: unknown KL placement 'k9-in-loss'")
