import math

import pytest
import torch

from kltutor import placements as pl

LOGP = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -0.3, -0.7]], dtype=torch.float64)
REF = torch.tensor([[-0.7, -0.4, -2.5], [-0.2, -0.3, -0.1]], dtype=torch.float64)
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("name", ["k1-in-reward", "k3-in-reward", "k1-in-loss", "k2-in-loss", "k3-in-loss", "none"])
def test_parse_known(name):
    p = pl.parse_placement(name)
    assert p.name == name and (p.in_reward or p.in_loss or name == "none")


@pytest.mark.parametrize("bad", ["k4-in-loss", "k1-in-value", "kl", "", "k1_in_reward", None])
def test_parse_rejects_unknown(bad):
    with pytest.raises(ValueError):
        pl.parse_placement(bad)


def test_shaped_rewards_by_hand():
    r = pl.shaped_rewards(torch.tensor([1.0, 2.0], dtype=torch.float64), LOGP, REF, MASK, beta=0.1, estimator="k1")
    lr = LOGP - REF
    want = -0.1 * lr * MASK
    want[0, 1] += 1.0
    want[1, 2] += 2.0
    assert torch.allclose(r, want)
    g = pl.returns_to_go(r, MASK)
    assert g[0].tolist() == pytest.approx([(want[0, 0] + want[0, 1]).item(), want[0, 1].item(), 0.0])
    assert g[1, 0].item() == pytest.approx(want[1].sum().item())


def test_kl_loss_token_and_sequence_by_hand():
    lr = LOGP - REF
    k3 = torch.exp(-lr) - 1 + lr
    want = (k3 * MASK).sum() / MASK.sum()
    assert pl.kl_loss(LOGP, REF, MASK, "k3").item() == pytest.approx(want.item(), abs=1e-12)
    L = (lr * MASK).sum(-1)
    assert pl.kl_loss(LOGP, REF, MASK, "k2", level="sequence").item() == pytest.approx((0.5 * L**2).mean().item())


def test_kl_loss_importance_weights_by_hand():
    old = LOGP + torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.05, -0.1]], dtype=torch.float64)
    lr = LOGP - REF
    k1 = lr
    w = torch.exp(LOGP - old)
    tok = pl.kl_loss(LOGP, REF, MASK, "k1", old_logp=old, aggregation="sequence-sum")
    assert tok.item() == pytest.approx(((w * k1 * MASK).sum(-1)).mean().item())
    cw = torch.exp(torch.cumsum((LOGP - old) * MASK, -1))
    pre = pl.kl_loss(LOGP, REF, MASK, "k1", old_logp=old, importance="prefix", aggregation="sequence-sum")
    assert pre.item() == pytest.approx(((cw * k1 * MASK).sum(-1)).mean().item())
    with pytest.raises(ValueError):
        pl.kl_loss(LOGP, REF, MASK, "k1", old_logp=old, importance="sequence")
    with pytest.raises(ValueError):
        pl.kl_loss(LOGP, REF, MASK, "k1", old_logp=old[:, :2])


def test_importance_weighted_k3_gradient_is_log_ratio_at_old_policy():
    logp = LOGP.clone().requires_grad_(True)
    loss = pl.kl_loss(logp, REF, MASK, "k3", old_logp=LOGP.clone(), aggregation="sequence-sum")
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(g, (LOGP - REF) * MASK / 2)  # mean over the 2 sequences


def test_clipping_kills_the_in_reward_kl_advantage_but_not_the_in_loss_term():
    logp = torch.tensor([[-0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.9, -1.0]], dtype=torch.float64)  # ratio exp(0.4) > 1.2 on token 0
    adv = torch.tensor([[0.7, 0.7]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    loss, stats = pl.clipped_surrogate(logp, old, adv, mask, clip_eps=0.2)
    (g,) = torch.autograd.grad(loss, logp)
    assert g[0, 0].item() == 0.0 and g[0, 1].item() != 0.0
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    ref = torch.tensor([[-1.5, -1.2]], dtype=torch.float64)
    (gk,) = torch.autograd.grad(pl.kl_loss(logp, ref, mask, "k3"), logp)
    assert gk[0, 0].item() == pytest.approx(-math.expm1(-1.0) / 2)


@pytest.mark.parametrize("beta", [-0.1, float("nan"), float("inf")])
def test_bad_beta(beta):
    with pytest.raises(ValueError):
        pl.shaped_rewards(torch.zeros(2, dtype=torch.float64), LOGP, REF, MASK, beta=beta)


def test_bad_shapes_and_masks():
    with pytest.raises(ValueError):
        pl.kl_loss(LOGP, REF[:, :2], MASK)
    with pytest.raises(ValueError):
        pl.kl_loss(LOGP, REF, torch.zeros_like(MASK))
    with pytest.raises(ValueError):
        pl.kl_loss(LOGP, REF, MASK[:, :2])
    with pytest.raises(ValueError):
        pl.kl_loss(LOGP[0], REF[0], MASK[0])
    nan = LOGP.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError):
        pl.kl_loss(nan, REF, MASK)
    with pytest.raises(ValueError):
        pl.kl_loss(LOGP, REF, MASK, level="batch")
    with pytest.raises(ValueError):
        pl.shaped_rewards(torch.zeros(3), LOGP, REF, MASK, beta=0.1)
    with pytest.raises(ValueError):
        pl.clipped_surrogate(LOGP, REF, torch.zeros(3), MASK)
    with pytest.raises(ValueError):
        pl.aggregate(LOGP, MASK, "per-batch")
