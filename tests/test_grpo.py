"""kltutor.grpo: group advantages (equal rewards, near-equal rewards, clip_std) and the GRPO loss."""

import math

import pytest
import torch

from kltutor.grpo import expected_in_loss_gradient, group_advantages, grpo_loss

torch.set_num_threads(1)
D = torch.float64


def test_group_advantages_exact_values():
    r = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 9.0], dtype=D)
    a = group_advantages(r, 4, eps=0.0)
    g1 = (torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=D) - 1.5) / math.sqrt(5 / 3)  # unbiased std of 0..3
    g2 = (torch.tensor([5.0, 5.0, 5.0, 9.0], dtype=D) - 6.0) / 2.0  # unbiased std sqrt(12 / 3) = 2
    assert torch.allclose(a, torch.cat([g1, g2]))
    # each group sums to 0 and has unbiased std 1 (without eps)
    assert torch.allclose(a.view(2, 4).sum(-1), torch.zeros(2, dtype=D), atol=1e-12)
    assert torch.allclose(a.view(2, 4).std(-1), torch.ones(2, dtype=D))
    # Dr. GRPO: centred only
    assert torch.allclose(group_advantages(r, 4, normalize_std=False), r - r.view(2, 4).mean(-1).repeat_interleave(4))


def test_equal_rewards_give_zero_not_nan():
    for dtype in (torch.float32, D):
        r = torch.full((8,), 0.1, dtype=dtype)  # 0.1 is not exact in binary: the mean may differ by an ulp
        a = group_advantages(r, 4)
        assert torch.isfinite(a).all() and a.abs().max() < 1e-6
        a = group_advantages(r, 4, clip_std=(0.1, 10.0))
        assert torch.isfinite(a).all() and a.abs().max() < 1e-12
    ints = group_advantages(torch.tensor([1, 1, 0, 0]), 2)  # integer rewards are accepted
    assert ints.dtype == torch.float32 and (ints == 0).all()


def test_near_equal_rewards_blow_up_and_clip_std():
    r = torch.tensor([0.99999, 1.00001, 0.99999, 1.00001], dtype=D)
    # the seed's +-0.866 needs the unbiased std and no eps: sqrt(G / (4 (G - 1))) for a 2-2 split
    a = group_advantages(r, 4, eps=0.0)
    assert torch.allclose(a.abs(), torch.full((4,), math.sqrt(3) / 2, dtype=D), rtol=1e-9)
    assert torch.allclose(a, group_advantages(torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=D), 4, eps=0.0), rtol=1e-9)
    # eps enters the denominator: std = 2e-5 / sqrt(3) ~ 1.15e-5, so eps = 1e-6 cuts the advantage by ~8%
    std = 2e-5 / math.sqrt(3) * math.sqrt(3) / 2 * 2 / math.sqrt(3)  # = unbiased std of the group
    std = torch.tensor([0.99999, 1.00001, 0.99999, 1.00001], dtype=D).std().item()
    assert math.isclose(group_advantages(r, 4, eps=1e-6)[1].item(), 1e-5 / (std + 1e-6), rel_tol=1e-9)
    # clip_std = (0.1, 10): the tiny std is raised to 0.1, so advantages are the raw 1e-5 deviations / 0.1
    c = group_advantages(r, 4, clip_std=(0.1, 10.0))
    assert torch.allclose(c, (r - 1.0) / 0.1, atol=1e-12)
    # a std inside [lo, hi] is untouched; above hi it is clamped down
    big = torch.tensor([0.0, 10.0, 20.0, 30.0], dtype=D)
    assert torch.allclose(group_advantages(big, 4, clip_std=(0.1, 100.0)), group_advantages(big, 4, eps=0.0))
    assert torch.allclose(group_advantages(big, 4, clip_std=(0.1, 1.0)), big - 15.0)


def test_group_advantages_bad_inputs():
    r = torch.tensor([0.0, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(r.view(2, 2), 2)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(r, 1)
    with pytest.raises(ValueError, match="split"):
        group_advantages(r, 3)
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="clip_std"):
        group_advantages(r, 2, clip_std=(0.0, 1.0))
    with pytest.raises(ValueError, match="clip_std"):
        group_advantages(r, 2, clip_std=(2.0, 1.0))
    with pytest.raises(ValueError, match="clip_std"):
        group_advantages(r, 2, clip_std=0.5)
    with pytest.raises(ValueError, match="eps"):
        group_advantages(r, 2, eps=-1.0)


def _batch(seed=0, b=4, t=5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=D) * 2 - 0.1
    logp = (old + 0.05 * torch.randn(b, t, generator=g, dtype=D)).requires_grad_(True)
    ref = old + 0.1 * torch.randn(b, t, generator=g, dtype=D)
    mask = torch.ones(b, t, dtype=D)
    mask[0, 3:] = 0
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2], dtype=D)
    return logp, old, ref, mask, rewards


def test_grpo_k3_in_loss_matches_hand_assembly():
    logp, old, ref, mask, rewards = _batch()
    beta = 0.04
    out = grpo_loss(logp, old, ref, mask, rewards, 2, placement="k3-in-loss", beta=beta, aggregation="sequence-mean")
    adv = group_advantages(rewards, 2)
    w = torch.exp(logp - old)
    surr = -torch.minimum(w * adv[:, None], torch.clamp(w, 0.8, 1.2) * adv[:, None])
    ell = logp - ref
    k3 = torch.exp(-ell) - 1 + ell
    per_seq = ((surr + beta * k3) * mask).sum(-1) / mask.sum(-1)  # DeepSeekMath: 1/|o_i| sum_t, then 1/G sum_i
    assert torch.allclose(out.loss, per_seq.mean())
    assert torch.allclose(out.kl_term, ((k3 * mask).sum(-1) / mask.sum(-1)).mean())
    (g1,) = torch.autograd.grad(out.loss, logp)
    (g2,) = torch.autograd.grad(per_seq.mean(), logp)
    assert torch.allclose(g1, g2)


def test_grpo_loss_placements_and_bad_inputs():
    logp, old, ref, mask, rewards = _batch()
    none = grpo_loss(logp, old, ref, mask, rewards, 2, placement="none")
    assert none.kl_term.item() == 0.0
    shaped = grpo_loss(logp, old, ref, mask, rewards, 2, placement="k1-in-reward", beta=0.1)
    assert torch.isfinite(shaped.loss) and shaped.kl_term.item() != 0.0
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logp, old, ref, mask, rewards, 2, beta=-0.1)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logp, old, ref, mask, rewards, 2, beta=float("nan"))
    with pytest.raises(ValueError, match="rewards"):
        grpo_loss(logp, old, ref, mask, rewards[:2], 2)
    with pytest.raises(ValueError, match="placement"):
        grpo_loss(logp, old, ref, mask, rewards, 2, placement="k4-in-loss")


def _kl(p, q):
    return (p * (torch.log(p) - torch.log(q))).sum()


def test_expected_in_loss_gradients_by_enumeration():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, generator=g, dtype=D)
    ref_logp = torch.log_softmax(torch.randn(6, generator=g, dtype=D), -1)
    th = logits.clone().requires_grad_(True)
    (g_rev,) = torch.autograd.grad(_kl(torch.softmax(th, -1), ref_logp.exp()), th)
    th = logits.clone().requires_grad_(True)
    (g_fwd,) = torch.autograd.grad(_kl(ref_logp.exp(), torch.softmax(th, -1)), th)
    pi = torch.softmax(logits, -1)
    # k3 in the loss: value = reverse KL, gradient = forward-KL gradient
    v3, g3 = expected_in_loss_gradient(logits, ref_logp, "k3")
    assert torch.allclose(v3, _kl(pi, ref_logp.exp()))
    assert torch.allclose(g3, g_fwd, atol=1e-12)
    assert (g3 - g_rev).abs().max() > 1e-2
    # k2 in the loss: gradient = reverse-KL gradient; k1 in the loss: zero expected gradient
    _, g2 = expected_in_loss_gradient(logits, ref_logp, "k2")
    assert torch.allclose(g2, g_rev, atol=1e-12)
    _, g1 = expected_in_loss_gradient(logits, ref_logp, "k1")
    assert torch.allclose(g1, torch.zeros_like(g1), atol=1e-12)
    # stale sampler: the plain value is off, the importance-weighted one is the reverse KL again
    old = torch.softmax(logits + torch.randn(6, generator=g, dtype=D), -1)
    v_off, _ = expected_in_loss_gradient(logits, ref_logp, "k3", sampling_probs=old)
    v_iw, g_iw = expected_in_loss_gradient(logits, ref_logp, "k3", sampling_probs=old, importance_weighted=True)
    assert not torch.allclose(v_off, v3)
    assert torch.allclose(v_iw, v3)
    with pytest.raises(ValueError, match="sampling_probs"):
        expected_in_loss_gradient(logits, ref_logp, "k3", sampling_probs=old * 2)
    with pytest.raises(ValueError, match="estimator"):
        expected_in_loss_gradient(logits, ref_logp, "k5")
