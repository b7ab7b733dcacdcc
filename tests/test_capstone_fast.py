"""The capstone's fast engine (kltutor.capstone.fast) against the readable path it replaces: whole training
steps with every fast path on and with all of them off, and the oneDNN products' fallback."""

import pytest
import torch

from kltutor.capstone import loop
from kltutor.capstone.fast import onednn
from kltutor.capstone.model import build_tokenizer
from kltutor.capstone.task import AdditionTask
from tests.helpers.capstone_tiny import step_context

STEPS = 4


def _train(fast: bool, placement: str, steps: int = STEPS):
    """``steps`` GRPO steps of a tiny run from fixed weights and seeds; the policy and the logged rows."""
    task = AdditionTask(9, format_reward=0.5)
    ctx = step_context(
        task,
        build_tokenizer(task.alphabet),
        ref_seed=1,
        layers=2,
        placement=placement,
        beta=0.1,
        updates_per_batch=2,
        lr=1e-3,
        logprob_chunk=7,
        fast=fast,
    )
    assert ctx.sampler.static == fast and ctx.sampler.keep_activations == fast  # every CPU fast path on, or none
    torch.manual_seed(3)
    rows = [loop._step(ctx, i) for i in range(steps)]
    return ctx.policy, rows


@pytest.mark.parametrize("placement", ["k3-in-loss", "exact-in-loss", "k1-in-reward"])
def test_training_steps_with_the_fast_engine_equal_the_readable_path(placement):
    """Four steps of two updates each, fast engine on (static cache, shared prompts, the first update's
    products taken from the sampler's recording, oneDNN where it passes its probe) and off (transformers'
    model.forward throughout), from the same weights and seeds: the same samples, the same metrics and the
    same parameters afterwards.

    Tolerance: both sides compute the same float32 functions in another order, so they differ by rounding:
    a few 1e-7 relative per operation (tests/test_capstone_reuse.py bounds one forward and backward at
    rtol 1e-4, atol 1e-5). AdamW divides each gradient by its running RMS, which turns a relative gradient
    error into the same relative error of the step (lr = 1e-3 per update), so after 8 updates the
    parameters (of size ~0.02 to 1) may differ by 8 * 1e-3 * (1e-4 + rounding of a near-zero gradient):
    atol 2e-5 leaves room on every CPU (the largest difference measured on the development machine: 2.6e-6); a wrong fast path (a token sampled differently, a missing
    gradient term) moves parameters by ~1e-3 per update and fails it."""
    fast_policy, fast_rows = _train(True, placement)
    slow_policy, slow_rows = _train(False, placement)
    for a, b in zip(fast_rows, slow_rows):
        assert a.response_length == b.response_length and a.reward == b.reward  # the same samples
        for k in ("kl_exact_seq", "kl_k1_seq", "entropy", "loss", "kl_term", "grad_norm", "beta"):
            assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-4, abs=1e-6), k
    assert fast_rows[-1].kl_exact_seq > 0 and fast_rows[-1].grad_norm > 0  # the policy moved
    moved = 0.0
    for (name, p), q, p0 in zip(
        fast_policy.named_parameters(), slow_policy.parameters(), _train(True, placement, steps=0)[0].parameters()
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-5, msg=name)
        moved = max(moved, float((p - p0).detach().abs().max()))
    assert moved > 1e-3  # 8 updates of lr 1e-3 moved the parameters far more than the tolerance


def test_onednn_is_used_only_with_exact_float32_products(monkeypatch):
    """The private oneDNN op stays off (torch's own products, bit for bit) when float32 products may be
    computed in lower precision, and when its probe fails; the switch is checked at every product."""
    g = torch.Generator().manual_seed(0)
    x, w, b, r = (torch.randn(*s, generator=g) for s in ((50, 24), (40, 24), (40,), (50, 40)))
    before = onednn._MATMUL.copy()
    precision = torch.get_float32_matmul_precision()
    try:
        onednn.cpu_matmul("auto")
        for setting in ("high", "medium"):
            torch.set_float32_matmul_precision(setting)
            assert not onednn.exact_float32() and onednn.cpu_matmul() == "default"
            torch.testing.assert_close(onednn.mm_nt(x, w, b, add=r), torch.addmm(r + b, x, w.t()), rtol=0, atol=0)
            torch.testing.assert_close(onednn.mm_tn(r, x), r.t() @ x, rtol=0, atol=0)
        torch.set_float32_matmul_precision("highest")
        assert onednn.exact_float32()
        monkeypatch.setattr(onednn, "_probe_onednn", lambda: False)  # an op that fails its probe
        onednn._MATMUL["onednn"] = None
        assert onednn.cpu_matmul() == "default"
        torch.testing.assert_close(onednn.mm_nt(x, w), torch.mm(x, w.t()), rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="not usable"):
            onednn.cpu_matmul("onednn")
    finally:
        torch.set_float32_matmul_precision(precision)
        onednn._MATMUL.clear()
        onednn._MATMUL.update(before)
