"""kltutor.divergences: hand values of every function, including inequality_slacks' four fields;
``atol`` reaching every check; dtypes (float32 kept, integers promoted); zero cells; messages."""

import math

import numpy as np
import pytest
import torch

from kltutor import divergences as dv

D = torch.float64
P = [0.5, 0.25, 0.25]
Q = [0.25, 0.25, 0.5]


def test_inequality_slacks_every_field_by_hand():
    kl = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    tv = 0.25
    h2 = 0.5 * ((math.sqrt(0.5) - 0.5) ** 2 + 0 + (0.5 - math.sqrt(0.5)) ** 2)
    chi2 = 0.25**2 / 0.25 + 0 + 0.25**2 / 0.5
    m = [0.375, 0.25, 0.375]
    js = 0.5 * sum(p * math.log(p / x) for p, x in zip(P, m)) + 0.5 * sum(q * math.log(q / x) for q, x in zip(Q, m))
    s = dv.inequality_slacks(P, Q)
    assert set(s) == {"pinsker", "hellinger", "chi2", "js"}
    assert s["pinsker"].item() == pytest.approx(math.sqrt(kl / 2) - tv, abs=1e-15)
    assert s["hellinger"].item() == pytest.approx(kl / 2 - h2, abs=1e-15)
    assert s["chi2"].item() == pytest.approx(math.log1p(chi2) - kl, abs=1e-15)
    assert s["js"].item() == pytest.approx(math.log(2) - js, abs=1e-15)
    for name, f, want in (
        ("kl", dv.kl, kl),
        ("tv", dv.tv, tv),
        ("hellinger_sq", dv.hellinger_sq, h2),
        ("chi2", dv.chi2, chi2),
        ("js", dv.js, js),
    ):
        assert f(P, Q).item() == pytest.approx(want, abs=1e-15), name


@pytest.mark.parametrize(
    "fn",
    [
        dv.kl,
        dv.js,
        dv.tv,
        dv.hellinger_sq,
        dv.chi2,
        dv.inequality_slacks,
        lambda p, q, atol=None: dv.alpha_divergence(p, q, 0.5, atol),
        lambda p, q, atol=None: dv.alpha_divergence(p, q, 1, atol),
        lambda p, q, atol=None: dv.alpha_divergence(p, q, 0, atol),
    ],
)
def test_atol_reaches_every_check(fn):
    p = [0.52, 0.25, 0.25]  # sums to 1.02
    with pytest.raises(ValueError, match="must sum to 1"):
        fn(p, Q)
    with pytest.raises(ValueError, match="must sum to 1"):
        fn(Q, p)
    out = fn(p, Q, atol=0.05)
    values = out.values() if isinstance(out, dict) else [out]
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in values)
    out = fn(Q, p, atol=0.05)
    values = out.values() if isinstance(out, dict) else [out]
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in values)


def test_default_tolerance_depends_on_dtype():
    off = torch.tensor([0.5, 0.25, 0.25 + 5e-5])
    assert dv.kl(off, off).dtype == torch.float32  # 5e-5 < 1e-4: accepted in float32, and float32 is kept
    with pytest.raises(ValueError, match=r"atol 0\.0001\)"):
        dv.kl(torch.tensor([0.5, 0.25, 0.25 + 2e-4]), off)
    with pytest.raises(ValueError, match=r"atol 1e-09\)"):
        dv.kl(off.double(), off.double())
    assert dv.kl(torch.tensor([0.5, 0.5 + 5e-10], dtype=D), torch.tensor([0.5, 0.5], dtype=D)).dtype == D


def test_inputs_are_converted_to_float_tensors():
    assert dv.kl(torch.tensor([1, 0]), torch.tensor([1, 0])).item() == 0.0  # integer tensors
    assert dv.kl(torch.tensor([1, 0]), torch.tensor([1, 0])).dtype == D
    assert dv.tv([1, 0], [0, 1]).item() == 1.0 and dv.tv([1, 0], [0, 1]).dtype == D  # integer lists
    assert dv.tv(np.array([1, 0]), np.array([0.5, 0.5])).item() == 0.5
    # numpy input is taken in float64 whatever its dtype (only torch tensors keep theirs)
    assert dv.tv(np.array([0.5, 0.5], dtype=np.float32), np.array([1.0, 0.0], dtype=np.float32)).dtype == D
    assert dv.kl_gaussian(0, 1, 1, 1).item() == 0.5 and dv.kl_gaussian(0, 1, 1, 1).dtype == D
    with pytest.raises(TypeError, match="p must be a torch tensor or a numpy array, got str"):
        dv.kl("p", Q)


def test_zero_cells_in_chi2_and_alpha():
    p, q = [0.5, 0.5, 0.0], [0.5, 0.25, 0.25]
    # both zero: contributes nothing; p = 0 < q: (0 - q)^2 / q = q
    assert dv.chi2([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]).item() == 0.0
    assert dv.chi2(p, q).item() == pytest.approx(0 + 0.0625 / 0.25 + 0.25, abs=1e-15)
    assert math.isinf(dv.chi2(q, p).item())
    t = torch.tensor([0.5, 0.5, 0.0], dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(dv.chi2(t, torch.tensor([0.5, 0.5, 0.0], dtype=D)), t)
    assert torch.isfinite(g).all()  # no 0/0 on the zero cell, even in the backward pass
    # alpha = 2: sum p^2 / q, with a cell where both are zero
    a2 = dv.alpha_divergence([0.5, 0.5, 0.0], [0.25, 0.75, 0.0], 2.0)
    assert a2.item() == pytest.approx((1 - (0.25 / 0.25 + 0.25 / 0.75)) / (2 * -1), abs=1e-15)
    # alpha = -1 with p = 0 < q: p^-1 = inf, so the divergence is +inf
    assert math.isinf(dv.alpha_divergence(p, q, -1.0).item())
    assert dv.alpha_divergence(p, q, 0.5).item() == pytest.approx(4 * dv.hellinger_sq(p, q).item(), abs=1e-15)
    for bad in (True, float("nan"), "0.5", None):
        with pytest.raises(ValueError, match="alpha must be a finite real number"):
            dv.alpha_divergence(p, q, bad)


def test_kl_from_logits_edges_and_messages():
    one = torch.zeros(2, 1)
    assert dv.kl_from_logits(one, one).tolist() == [0.0, 0.0]  # a one-token vocabulary: KL 0
    lp = torch.tensor([[0.0, math.log(3.0)]], dtype=D)
    lq = torch.tensor([[0.0, 0.0]], dtype=D)
    assert dv.kl_from_logits(lp, lq).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-15)
    assert dv.kl_from_logits(lp.T, lq.T, dim=0).item() == pytest.approx(dv.kl_from_logits(lp, lq).item(), abs=0)
    masked = torch.tensor([[0.0, -math.inf]], dtype=D)  # a token masked out of the policy
    assert dv.kl_from_logits(masked, lq).item() == pytest.approx(math.log(2), abs=1e-15)
    with pytest.raises(ValueError, match="^logits_p needs a non-empty"):
        dv.kl_from_logits(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="^logits_q needs a non-empty"):
        dv.kl_from_logits(torch.zeros(2, 3), torch.zeros(2, 0))
    with pytest.raises(ValueError, match="^logits_q holds NaN"):
        dv.kl_from_logits(torch.zeros(3), torch.tensor([0.0, math.inf, 0.0]))
    with pytest.raises(TypeError, match="^logits_p must be a torch tensor"):
        dv.kl_from_logits([0.0], torch.zeros(1))


def test_kl_gaussian_messages_name_the_argument():
    for i, name in enumerate(("mu_p", "sigma_p", "mu_q", "sigma_q")):
        args = [0.0, 1.0, 0.0, 1.0]
        args[i] = float("nan")
        with pytest.raises(ValueError, match=f"^{name} holds NaN"):
            dv.kl_gaussian(*args)
        args[i] = "x"
        with pytest.raises(TypeError, match=f"^{name} must be a torch tensor"):
            dv.kl_gaussian(*args)
    with pytest.raises(ValueError, match="^sigma_q must be > 0"):
        dv.kl_gaussian(0.0, 1.0, 0.0, 0.0)
    # broadcasting: a vector of means against one reference
    out = dv.kl_gaussian(torch.tensor([0.0, 1.0, 2.0], dtype=D), 2.0, 0.0, 1.0)
    assert out.tolist() == pytest.approx([math.log(0.5) + (4 + m * m) / 2 - 0.5 for m in (0.0, 1.0, 2.0)])


def test_validate_distributions_promotes_names_and_edges():
    p, q = dv.validate_distributions(torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75], dtype=D))
    assert p.dtype == q.dtype == D
    p, q = dv.validate_distributions(torch.tensor([0.5, 0.5], dtype=D), torch.tensor([0.25, 0.75]))
    assert p.dtype == q.dtype == D
    assert dv.kl([1.0], [1.0]).item() == 0.0  # one outcome is a distribution
    assert dv.kl(P, Q, atol=0.0).item() > 0  # rows summing to exactly 1 pass a zero tolerance
    with pytest.raises(ValueError, match=r"^p must sum to 1"):
        dv.kl([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"^q must sum to 1"):
        dv.kl([0.5, 0.5], [0.5, 0.6])
    with pytest.raises(ValueError, match=r"^q must hold finite, non-negative probabilities, got a negative"):
        dv.tv([0.5, 0.5], [1.5, -0.5])
    with pytest.raises(ValueError, match=r"^p must hold finite, non-negative probabilities, got NaN"):
        dv.tv([float("nan"), 0.5], [0.5, 0.5])
    with pytest.raises(TypeError, match=r"^q must be a torch tensor"):
        dv.kl(P, {"a": 1})
    with pytest.raises(ValueError, match="non-empty last axis"):
        dv.kl(torch.ones(2, 0), torch.ones(2, 0))
    with pytest.raises(ValueError, match="^sigma_p must be > 0"):
        dv.kl_gaussian(0.0, -1.0, 0.0, 1.0)
