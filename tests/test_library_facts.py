"""Every library fact of the book (kltutor/claims/libraries.py) against the installed TRL / verl / OpenRLHF / PEFT.

For each fact: the installed release is the pinned one, every recorded fragment is in the installed module's
source, and, where the fact is about behaviour, the library's own code run on a small input does what the book
says. Runs with the [trainers] extra (`make trainers-test`); skips cleanly without it.
"""

import dataclasses
import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

from kltutor.claims import libraries

pytestmark = pytest.mark.trainers


def _need(package):
    if libraries.installed_version(package) is None:
        pytest.skip(f"{package} is not installed (make trainers-test installs it)")


@pytest.mark.parametrize("f", libraries.FACTS, ids=lambda f: f.id)
def test_fragment_in_installed_source(f):
    package = libraries.PACKAGES[f.library]
    _need(package)
    assert libraries.installed_version(package) == libraries.VERSIONS[package], (
        f"{package} {libraries.installed_version(package)} is installed; the book describes {libraries.VERSIONS[package]}"
    )
    assert not libraries.missing_fragments(f)


def test_every_behaviour_test_exists():
    names = {f.behaviour for f in libraries.FACTS if f.behaviour}
    assert names <= set(globals()), names - set(globals())


# --- TRL ---------------------------------------------------------------------------------------------------


def test_trl_selective_log_softmax_divides_by_temperature():
    _need("trl")
    from trl.trainer.utils import selective_log_softmax

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    index = torch.randint(0, 7, (2, 3), generator=g)
    got = selective_log_softmax(logits, index, temperature=0.7)
    want = torch.log_softmax(logits / 0.7, -1).gather(-1, index[..., None]).squeeze(-1)
    assert torch.allclose(got, want, atol=1e-12)


def test_trl_fused_lm_head_log_softmax_in_float32():
    _need("trl")
    from trl.kernels import ChunkedLogProbFunction

    g = torch.Generator().manual_seed(0)
    hidden = (2 * torch.randn(6, 16, generator=g)).bfloat16()
    weight = torch.randn(50, 16, generator=g).bfloat16()
    targets = torch.randint(0, 50, (6,), generator=g)
    logp = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 32, None, 1.0, ("entropy",))[0]
    assert logp.dtype == torch.float32
    # float32 log-softmax of the bf16 product, to float32 rounding (logits of size ~10: 1e-5 is a few ulps)
    bf16_logits = (hidden @ weight.t()).float()
    want = torch.log_softmax(bf16_logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    assert (logp - want).abs().max() < 1e-5
    # ... which is not the float64 log-softmax of the exact product: the logits' bf16 rounding stays
    exact = torch.log_softmax(hidden.double() @ weight.double().t(), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert (logp.double() - exact).abs().max() > 1e-3


def _trl_defaults(cls):
    return {
        f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


def test_trl_grpo_config_defaults():
    _need("trl")
    from trl import GRPOConfig

    d = _trl_defaults(GRPOConfig)
    assert d["beta"] == 0.0 and d["loss_type"] == "dapo" and d["use_bias_correction_kl"] is True
    assert d["importance_sampling_level"] == "token"


def test_trl_is_weight_before_kl_and_defaults():
    """The vLLM IS ratio multiplies the policy-gradient term only: the KL part of the loss does not change with it."""
    _need("trl")
    from trl import GRPOConfig

    from kltutor.trainers import trl_adapter

    d = _trl_defaults(GRPOConfig)
    assert d["vllm_importance_sampling_correction"] is True
    assert d["vllm_importance_sampling_mode"] == "sequence_mask" and d["vllm_importance_sampling_clip_max"] == 3.0

    g = torch.Generator().manual_seed(1)
    logp = (-torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.1).requires_grad_(True)
    ref = -torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.1
    mask = torch.ones(3, 4, dtype=torch.long)
    adv = torch.tensor([1.0, -0.5, -0.5], dtype=torch.float64)

    def loss(beta, ratio):
        t = trl_adapter._grpo_shell(loss_type="grpo")
        t.beta = beta
        t.use_vllm = t.vllm_importance_sampling_correction = True
        t.vllm_importance_sampling_mode = "token_truncate"
        t._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
        inputs = {
            "prompt_ids": torch.zeros(3, 1, dtype=torch.long),
            "prompt_mask": torch.ones(3, 1, dtype=torch.long),
            "completion_ids": torch.zeros(3, 4, dtype=torch.long),
            "completion_mask": mask,
            "advantages": adv,
            "ref_per_token_logps": ref,
            "old_per_token_logps": logp.detach(),
            "num_items_in_batch": mask.sum(),
            "importance_sampling_ratio": ratio,
        }
        out = t._compute_loss(None, inputs)
        return out, t._metrics["train"]["kl"][-1] if beta else None

    ones = torch.ones(3, 4, dtype=torch.float64)
    weights = 0.5 + torch.rand(3, 4, generator=g, dtype=torch.float64)
    (l1, kl1), (lw, klw) = loss(0.1, ones), loss(0.1, weights)
    (p1, _), (pw, _) = loss(0.0, ones), loss(0.0, weights)
    grads = [torch.autograd.grad(x, logp, retain_graph=True)[0] for x in (l1, p1, lw, pw)]
    assert torch.allclose(grads[0] - grads[1], grads[2] - grads[3], atol=1e-12), "KL gradient: no IS ratio in it"
    assert not torch.allclose(grads[1], grads[3]), "the policy-gradient term is weighted"
    k3 = torch.expm1(ref - logp.detach()) - (ref - logp.detach())
    assert abs(float(kl1) - float(k3.mean())) < 1e-9 and abs(float(klw) - float(kl1)) < 1e-12, "logged kl: plain k3"


def test_trl_lora_fallback_not_taken_with_installed_peft():
    _need("trl")
    _need("peft")
    from packaging.version import Version

    v = Version(libraries.installed_version("peft"))
    assert not (Version("0.17.0") <= v < Version("0.20.0")), "the base-model fallback applies only to PEFT 0.17-0.19"


def test_trl_has_no_ppo():
    _need("trl")
    assert importlib.util.find_spec("trl.experimental.ppo") is None


# --- verl --------------------------------------------------------------------------------------------------


def _verl():
    _need("verl")
    from kltutor.trainers import verl_adapter

    return verl_adapter._quiet_import()


def test_verl_rollout_is_defaults():
    ca = _verl()
    from verl.trainer.config.algorithm import RolloutCorrectionConfig
    from verl.workers.config import ActorConfig

    d = RolloutCorrectionConfig()
    assert d.rollout_is == "sequence" and d.rollout_is_threshold == 2.0
    # the weights multiply the policy-gradient losses: doubling them doubles the pg loss
    g = torch.Generator().manual_seed(2)
    lp = -torch.rand(2, 3, generator=g, dtype=torch.float64)
    adv = torch.randn(2, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    cfg = ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=1, rollout_n=1)
    a, _ = ca.compute_policy_loss_vanilla(lp, lp, adv, mask, "token-mean", cfg, rollout_is_weights=torch.ones_like(lp))
    b, _ = ca.compute_policy_loss_vanilla(
        lp, lp, adv, mask, "token-mean", cfg, rollout_is_weights=2 * torch.ones_like(lp)
    )
    assert torch.allclose(b, 2 * a)
    # the KL block of ppo_loss never reads the rollout weights
    from kltutor.claims.libraries import source_text

    src = source_text("verl.workers.utils.losses")
    kl_block = src[src.index("if config.use_kl_loss:") : src.index('metrics["kl_loss"]')]
    assert "rollout_is" not in kl_block


def test_verl_agg_loss_modes():
    ca = _verl()
    x = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    sums, lens = (x * m).sum(-1), m.sum(-1).double()
    want = {
        "token-mean": sums.sum() / lens.sum(),
        "token-sum": sums.sum(),
        "seq-mean-token-mean": (sums / lens).mean(),
        "seq-mean-token-sum": sums.mean(),
        "seq-mean-token-sum-norm": sums.mean() / x.shape[-1],  # averaged over sequences, then / L
    }
    for mode, w in want.items():
        got = ca.agg_loss(loss_mat=x, loss_mask=m, loss_agg_mode=mode)
        assert math.isclose(float(got), float(w), rel_tol=1e-12), mode


def test_verl_clamp_and_straight_through():
    ca = _verl()
    ref = torch.tensor([[0.0]], dtype=torch.float64)
    far = torch.tensor([[-12.0]], dtype=torch.float64, requires_grad=True)  # k3 = e^12 - 13 > 10: clamped
    (g_plain,) = torch.autograd.grad(ca.kl_penalty(far, ref, "low_var_kl").sum(), far)
    v_plus = ca.kl_penalty(far, ref, "low_var_kl+")
    (g_plus,) = torch.autograd.grad(v_plus.sum(), far)
    assert float(g_plain) == 0.0, "a clamped k3 token passes no gradient"
    assert float(v_plus) == 10.0 and float(g_plus) == -12.0, "'+': clamped value, unclamped k2 gradient l"
    near = torch.tensor([[-0.3, 0.8]], dtype=torch.float64, requires_grad=True)
    ref2 = torch.zeros(1, 2, dtype=torch.float64)
    for name in ("mse", "mse+", "k2+"):
        v = ca.kl_penalty(near, ref2, name)
        (gv,) = torch.autograd.grad(v.sum(), near)
        assert torch.allclose(v, 0.5 * near.detach() ** 2) and torch.allclose(gv, near.detach()), name


def test_verl_adaptive_controller_is_kltutors():
    """verl's adaptive controller and kltutor.schedules.AdaptiveKLController give the same beta sequence."""
    ca = _verl()
    from verl.trainer.config import KLControlConfig

    from kltutor import schedules as S

    theirs = ca.get_kl_controller(KLControlConfig(type="adaptive", kl_coef=0.1, target_kl=1.0, horizon=50))
    ours = S.AdaptiveKLController(0.1, 1.0, 50)
    beta = 0.1
    for kl in (0.2, 3.0, 1.1, 0.95, 0.0, 7.0):
        theirs.update(kl, 8)
        beta = ours.update(kl, 8)
        assert math.isclose(theirs.value, beta, rel_tol=1e-12), kl
    assert KLControlConfig().type == "fixed"


# --- OpenRLHF ----------------------------------------------------------------------------------------------


def test_openrlhf_clamp_and_straight_through():
    _need("openrlhf")
    from kltutor.trainers import openrlhf_adapter

    compute_approx_kl = openrlhf_adapter.load()[0].compute_approx_kl
    base = torch.tensor([[0.0]], dtype=torch.float64)
    lp = torch.tensor([[-9.0]], dtype=torch.float64, requires_grad=True)  # k3 = e^9 - 10 > 10: clamped
    (g_plain,) = torch.autograd.grad(compute_approx_kl(lp, base, kl_estimator="k3").sum(), lp)
    assert float(g_plain) == 0.0, "a clamped token passes no gradient"
    old = torch.tensor([[-9.5]], dtype=torch.float64)
    v = compute_approx_kl(lp, base, log_probs_old=old, kl_estimator="k3", unbiased_gradient=True)
    (g_ub,) = torch.autograd.grad(v.sum(), lp)
    w = math.exp(0.5)
    # OpenRLHF computes in float32 (log_probs.float()): 1e-6 relative
    assert float(v) == 10.0 and math.isclose(float(g_ub), w * -9.0, rel_tol=1e-6), "clamped value, gradient w * l"
    far_old = torch.tensor([[-20.0]], dtype=torch.float64)
    v = compute_approx_kl(lp, base, log_probs_old=far_old, kl_estimator="k3", unbiased_gradient=True)
    (g_cap,) = torch.autograd.grad(v.sum(), lp)
    assert math.isclose(float(g_cap), 10.0 * -9.0, rel_tol=1e-6), "the weight is clamped at 10"


# --- every library name the book mentions exists in the installed release ------------------------------------

_HISTORY = re.compile(r"older releases|history|shipped last|old `PPOTrainer`|development commit", re.I)
_LIBRARY = re.compile(r"\b(?:TRL|verl|OpenRLHF|PEFT)\b")


def _named_identifiers():
    """(file, name, sentence) for every backticked config key, flag or code name in a sentence about a library."""
    root = Path(__file__).resolve().parents[1] / "book"
    out = []
    for path in sorted(root.glob("0[1-8]_*.md")) + [root / "cheatsheet.md"]:
        text = re.sub(r"^```.*?^```", " ", path.read_text(), flags=re.M | re.S)
        text = re.sub(r"\{glue:[a-z]+\}`[^`]*`", "X", text)
        for sentence in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
            if not _LIBRARY.search(sentence) or _HISTORY.search(sentence):
                continue
            for tok in re.findall(r"`([^`]+)`", sentence):
                m = re.match(r"^(--[a-z_.]+|[A-Za-z_][A-Za-z0-9_.]*)(?:\s*[=:(]\s*.*)?$", tok)
                if not m or m.group(1).startswith("kltutor"):
                    continue
                name = m.group(1)
                if "_" in name or "." in name or name.startswith("--"):
                    out.append((path.name, name, " ".join(sentence.split())[:120]))
    return out


@pytest.fixture(scope="module")
def installed_sources():
    texts = []
    for package in ("trl", "verl", "openrlhf", "peft"):
        _need(package)
        root = Path(importlib.util.find_spec(package).origin).parent
        for path in root.rglob("*"):
            if path.suffix in (".py", ".yaml") and path.is_file():
                texts.append(path.stem)  # module names (train_ppo_ray) count too
                texts.append(path.read_text(errors="ignore"))
    return "\n".join(texts)


def test_every_named_identifier_is_in_the_installed_source(installed_sources):
    """A flag, config key or function the book names next to TRL / verl / OpenRLHF / PEFT exists in the pinned
    release (a dotted verl key by its last component; an OpenRLHF flag verbatim), unless the sentence marks it
    as history."""
    names = _named_identifiers()
    assert len(names) > 40
    missing = []
    for where, name, sentence in names:
        key = name if name.startswith("--") else name.rsplit(".", 1)[-1]
        if key not in installed_sources:
            missing.append(f"{where}: {name!r} in: {sentence}")
    assert not missing, "\n".join(missing)
