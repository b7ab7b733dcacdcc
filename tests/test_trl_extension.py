"""kltutor.trainers.grpo_extension: TRL's GRPOTrainer with the capstone's placements computes the capstone's loss.

On one fixed batch (the same weights, prompts, completions and rewards), for every placement, the extension's
loss, advantages and parameter gradient equal :func:`kltutor.capstone.loss.step_loss`'s. Both sides compute
in float32 on the CPU; the log-probabilities come from two different code paths (TRL's fused LM head, the
capstone's chunked log-softmax), which agree to a few float32 ulps, so the loss and every gradient entry must
agree to ``RTOL = 1e-5`` relative to the largest entry (about 100 float32 ulps: far below any difference
between placements, which the test also checks, and far above rounding). A stale batch (parameters moved
after sampling) checks the frozen in-reward penalty and both ratio corrections.

Needs the [trainers] extra (`make trainers-test`); skips without TRL.
"""

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytestmark = pytest.mark.trainers

sys.path.insert(0, str(Path(__file__).parent))
from capstone_tiny import TINY_SETTINGS  # noqa: E402

from kltutor.capstone.config import CAPSTONE_PLACEMENTS, CapstoneConfig  # noqa: E402

RTOL = 1e-5
BETA = 0.2
G = TINY_SETTINGS["group_size"]
N_PROMPTS = 3

# (placement, kl_level, importance_weighted_kl, aggregation): every placement, both levels, both corrections,
# every aggregation at least once.
CASES = [
    ("none", "token", False, "sequence-mean"),
    ("k1-in-reward", "token", False, "sequence-mean"),
    ("k3-in-reward", "token", False, "token-mean"),
    ("k1-in-loss", "token", False, "sequence-mean"),
    ("k2-in-loss", "token", False, "sequence-sum"),
    ("k3-in-loss", "token", False, "sequence-mean"),
    ("k3-in-loss", "sequence", False, "sequence-mean"),
    ("k2-in-loss", "sequence", False, "token-mean"),
    ("exact-in-loss", "token", False, "sequence-mean"),
    ("exact-in-loss", "token", False, "token-mean"),
]
STALE_CASES = [
    ("k1-in-reward", "token", False, "sequence-mean"),
    ("k3-in-loss", "token", True, "sequence-mean"),
    ("k1-in-loss", "token", True, "token-mean"),
    ("exact-in-loss", "token", True, "sequence-sum"),
]


def _ids(c):
    return "-".join(str(x) for x in c)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from kltutor.capstone.sft import reference_policy

    cfg = CapstoneConfig(**TINY_SETTINGS, cache_dir=str(tmp_path_factory.mktemp("cache")), progress=False, device="cpu")
    _, _, info = reference_policy(cfg)
    return str(info.path)


def _capstone_cfg(placement, level, iw, agg):
    return CapstoneConfig(
        **TINY_SETTINGS,
        placement=placement,
        beta=0.0 if placement == "none" else BETA,
        kl_level=level,
        importance_weighted_kl=iw,
        aggregation=agg,
        updates_per_batch=2 if iw else 1,
        device="cpu",
    ).validate()


def _trainer(reference, tmp_path, placement, level, iw, agg):
    from kltutor.capstone.export import trl_config_values
    from kltutor.trainers.trl_capstone import make_trainer

    cfg = _capstone_cfg(placement, level, iw, agg).replace(prompts_per_step=N_PROMPTS)
    values = trl_config_values(cfg)
    values.update(report_to="none", save_strategy="no", logging_steps=1)
    tr = make_trainer(values, reference, str(tmp_path / "out"))
    tr.model.train()
    _perturb(tr.model, seed=3, scale=0.05)  # the policy away from the reference, or every KL gradient is 0
    return tr, cfg


def _perturb(model, seed, scale):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _batch(tr, seed=0):
    from kltutor.capstone.task import AdditionTask

    g = torch.Generator().manual_seed(seed)
    task = AdditionTask(TINY_SETTINGS["max_operand"])
    prompts = [task.prompt(a, b) for a, b in task.sample(N_PROMPTS, g)]
    torch.manual_seed(seed)
    return tr._generate_and_score_completions([{"prompt": p} for p in prompts for _ in range(G)])


def _capstone_loss(cfg, tr, batch, old_logp):
    """step_loss on the batch, with the capstone's own log-probabilities (kltutor.capstone.logprobs)."""
    from kltutor.capstone.logprobs import sequence_stats
    from kltutor.capstone.loss import step_loss

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    P = batch["prompt_ids"].shape[1]
    exact = cfg.placement == "exact-in-loss"
    ref_model = tr.ref_model if tr.ref_model is not None else tr.model  # placement 'none' loads no reference
    st = sequence_stats(tr.model, ids, attn, P, ref_model if exact else None, cfg.logprob_chunk, cfg.temperature)
    with torch.no_grad():
        ref = sequence_stats(ref_model, ids, attn, P, None, cfg.logprob_chunk, cfg.temperature)["logp"]
    old = {"logp": st["logp"].detach() if old_logp is None else old_logp, "ref_logp": ref}
    mask = batch["completion_mask"].float()
    loss, _, _ = step_loss(cfg, st, old, mask, tr._kl_rewards.sum(-1).float(), BETA if cfg.placement != "none" else 0)
    return loss


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _compare(tr, cfg, batch, old_logp=None):
    from kltutor.grpo import group_advantages

    rewards = tr._kl_rewards.sum(-1).float()
    adv = group_advantages(rewards, G)
    assert torch.equal(batch["advantages"], adv)
    ext = tr._compute_loss(tr.model, batch)
    g_ext = _grads(tr.model, ext)
    cap = _capstone_loss(cfg, tr, batch, old_logp)
    g_cap = _grads(tr.model, cap)
    scale = max(1.0, float(g_cap.abs().max()))
    loss_diff = abs(float(ext) - float(cap))
    grad_diff = float((g_ext - g_cap).abs().max()) / scale
    assert loss_diff <= RTOL * max(1.0, abs(float(cap))), (float(ext), float(cap))
    assert grad_diff <= RTOL, grad_diff
    return float(cap), loss_diff, grad_diff, g_cap


@pytest.fixture(scope="module")
def measured():
    return {}


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_on_policy_batch_matches_step_loss(reference, tmp_path, case, measured):
    tr, cfg = _trainer(reference, tmp_path, *case)
    batch = _batch(tr)
    assert "old_per_token_logps" not in batch  # on-policy: TRL scores no separate sampling policy
    loss, dl, dg, g = _compare(tr, cfg, batch)
    measured[case] = (loss, dl, dg, g)
    assert float(g.norm()) > 0


def test_placements_differ(measured):
    """The agreement is not vacuous: the gradients of different placements differ by far more than RTOL."""
    if len(measured) < len(CASES):
        pytest.skip("needs every on-policy case")
    for case, (loss, dl, dg, _) in measured.items():  # the figures of the report (pytest -s)
        print(f"{_ids(case):40s} loss {loss:+.6f}  |loss diff| {dl:.1e}  max rel grad diff {dg:.1e}")
    base = measured[CASES[0]][3]
    for case in CASES[1:]:
        d = float((measured[case][3] - base).abs().max()) / max(1.0, float(base.abs().max()))
        assert d > 100 * RTOL, case


@pytest.mark.parametrize("case", STALE_CASES, ids=_ids)
def test_stale_batch_matches_step_loss(reference, tmp_path, case):
    """Parameters moved after sampling: the in-reward penalty stays frozen, the ratio corrections apply."""
    tr, cfg = _trainer(reference, tmp_path, *case)
    batch = _batch(tr, seed=1)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        old, _, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, attn, batch["completion_ids"].shape[1])
    _perturb(tr.model, seed=7, scale=0.02)
    batch["old_per_token_logps"] = old
    _compare(tr, cfg, batch, old_logp=old)


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
    tr, _ = _trainer(reference, tmp_path, "k3-in-reward", "token", False, "sequence-mean")
    tr.args.max_steps = 2
    out = tr.train()
    assert math.isfinite(out.training_loss)
    assert [h["beta"] for h in tr.state.log_history if "beta" in h] == [BETA, BETA]


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
