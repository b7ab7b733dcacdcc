"""Tests of kltutor.divergences: exact values, conventions at zero, Gaussian closed form, bounds, bad input."""

import math

import pytest
import torch

from kltutor.divergences import (
    alpha_divergence,
    chi2,
    hellinger_sq,
    inequality_slacks,
    js,
    kl,
    kl_from_logits,
    kl_gaussian,
    tv,
)
from kltutor.toys.distributions import random_categorical


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_kl_hand_computed_values():
    # KL((1/2,1/2) || (1/4,3/4)) = 1/2 log 2 + 1/2 log(2/3)
    assert kl(t(0.5, 0.5), t(0.25, 0.75)).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-15)
    assert kl(t(0.25, 0.75), t(0.5, 0.5)).item() == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-15
    )
    assert kl(t(0.2, 0.3, 0.5), t(0.2, 0.3, 0.5)).item() == 0.0
    # uniform q on k points: KL(p || u) = log k - H(p); for a point mass that is log k
    assert kl(t(1.0, 0.0, 0.0, 0.0), torch.full((4,), 0.25, dtype=torch.float64)).item() == pytest.approx(math.log(4))


def test_kl_zero_conventions():
    assert kl(t(0.5, 0.5, 0.0), t(0.25, 0.25, 0.5)).item() == pytest.approx(math.log(2))
    assert kl(t(0.5, 0.5, 0.0), t(0.5, 0.5, 0.0)).item() == 0.0
    assert kl(t(0.5, 0.5), t(1.0, 0.0)).item() == math.inf
    assert not torch.isnan(kl(t(0.0, 1.0), t(0.0, 1.0)))


def test_kl_batch_last_axis_and_numpy():
    p = random_categorical(5, 7, seed=1)
    q = random_categorical(5, 7, seed=2)
    out = kl(p, q)
    assert out.shape == (5,)
    for i in range(5):
        expected = sum(p[i, j].item() * math.log(p[i, j].item() / q[i, j].item()) for j in range(7))
        assert out[i].item() == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(kl(p.numpy(), q.numpy()), out)


def test_kl_from_logits_matches_kl():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 11, generator=g, dtype=torch.float64)
    b = torch.randn(3, 4, 11, generator=g, dtype=torch.float64)
    got = kl_from_logits(a, b)
    assert got.shape == (3, 4)
    assert torch.allclose(got, kl(a.softmax(-1), b.softmax(-1)), atol=1e-12)
    # a masked-out token (-inf logit) in p contributes 0
    a[..., 0] = -math.inf
    assert torch.isfinite(kl_from_logits(a, b)).all()


def test_gaussian_closed_form_values_and_quadrature():
    assert kl_gaussian(0.0, 1.0, 0.0, 1.0).item() == 0.0
    # equal variances: (mu_p - mu_q)^2 / (2 sigma^2)
    assert kl_gaussian(1.0, 2.0, -1.0, 2.0).item() == pytest.approx(4 / 8)
    # KL(N(0,1) || N(0,2^2)) = log 2 + 1/8 - 1/2
    assert kl_gaussian(0.0, 1.0, 0.0, 2.0).item() == pytest.approx(math.log(2) + 1 / 8 - 0.5)
    x = torch.linspace(-30, 30, 200_001, dtype=torch.float64)
    for mp, sp_, mq, sq in [(0.3, 0.7, -1.2, 1.9), (2.0, 2.5, 0.0, 1.0), (-1.0, 0.4, -0.8, 0.5)]:

        def d(m, s):
            return torch.distributions.Normal(
                torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
            )

        lp, lq = d(mp, sp_).log_prob(x), d(mq, sq).log_prob(x)
        numeric = torch.trapezoid(lp.exp() * (lp - lq), x).item()
        assert kl_gaussian(mp, sp_, mq, sq).item() == pytest.approx(numeric, abs=1e-9)


def test_other_divergences_hand_values():
    p, q = t(0.5, 0.5, 0.0), t(0.25, 0.25, 0.5)
    assert tv(p, q).item() == pytest.approx(0.5)
    assert hellinger_sq(p, q).item() == pytest.approx(1 - 2 * math.sqrt(0.125))
    assert chi2(p, q).item() == pytest.approx(2 * 0.25**2 / 0.25 + 0.25**2 / 0.5 * 4)  # = 1
    assert chi2(p, q).item() == pytest.approx(1.0)
    assert chi2(q, p).item() == math.inf
    m = (p + q) / 2
    assert js(p, q).item() == pytest.approx(0.5 * kl(p, m).item() + 0.5 * kl(q, m).item())
    # disjoint supports: JS = log 2, TV = 1, H^2 = 1
    a, b = t(1.0, 0.0), t(0.0, 1.0)
    assert js(a, b).item() == pytest.approx(math.log(2))
    assert tv(a, b).item() == 1.0 and hellinger_sq(a, b).item() == 1.0


def test_alpha_divergence_limits_and_half():
    p = random_categorical(20, 6, seed=3)
    q = random_categorical(20, 6, seed=4)
    assert torch.equal(alpha_divergence(p, q, 1.0), kl(p, q))
    assert torch.equal(alpha_divergence(p, q, 0.0), kl(q, p))
    assert torch.allclose(alpha_divergence(p, q, 1 - 1e-6), kl(p, q), rtol=1e-4)
    assert torch.allclose(alpha_divergence(p, q, 1e-6), kl(q, p), rtol=1e-4)
    assert torch.allclose(alpha_divergence(p, q, 0.5), 4 * hellinger_sq(p, q), atol=1e-12)
    assert torch.allclose(alpha_divergence(p, q, 2.0), chi2(p, q) / 2, atol=1e-10)
    assert alpha_divergence(t(0.5, 0.5), t(1.0, 0.0), 2.0).item() == math.inf


@pytest.mark.parametrize("concentration", [0.1, 1.0, 10.0])
def test_inequalities_over_random_pairs(concentration):
    p = random_categorical(2000, 8, seed=10, concentration=concentration)
    q = random_categorical(2000, 8, seed=11, concentration=concentration)
    for name, slack in inequality_slacks(p, q).items():
        assert (slack >= -1e-12).all(), name
    d = kl(p, q)
    assert (d >= 0).all() and (kl(p, p) == 0).all()
    assert (d != kl(q, p)).any()


def test_joint_convexity_random():
    p1, p2, q1, q2 = (random_categorical(500, 5, seed=s) for s in range(4))
    lam = torch.rand(500, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    lhs = kl(lam * p1 + (1 - lam) * p2, lam * q1 + (1 - lam) * q2)
    rhs = lam[:, 0] * kl(p1, q1) + (1 - lam[:, 0]) * kl(p2, q2)
    assert (rhs - lhs >= -1e-12).all()


@pytest.mark.parametrize("fn", [kl, js, tv, hellinger_sq, chi2, lambda p, q: alpha_divergence(p, q, 0.3)])
def test_bad_input(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(t(0.5, 0.5), t(0.2, 0.3, 0.5))
    with pytest.raises(ValueError, match="negative"):
        fn(t(1.5, -0.5), t(0.5, 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        fn(t(0.5, 0.6), t(0.5, 0.5))
    with pytest.raises(ValueError, match="NaN"):
        fn(t(math.nan, 1.0), t(0.5, 0.5))
    with pytest.raises(ValueError, match="non-empty"):
        fn(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TypeError):
        fn("abc", t(0.5, 0.5))


def test_bad_gaussian_and_alpha_and_logits():
    with pytest.raises(ValueError, match="sigma_p"):
        kl_gaussian(0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="sigma_q"):
        kl_gaussian(0.0, 1.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="NaN"):
        kl_gaussian(math.nan, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        alpha_divergence(t(0.5, 0.5), t(0.5, 0.5), math.nan)
    with pytest.raises(ValueError, match="same shape"):
        kl_from_logits(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        kl_from_logits(torch.tensor([math.nan, 0.0]), torch.zeros(2))
