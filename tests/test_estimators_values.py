"""kltutor.estimators: values pinned by hand where the other tests leave a choice open -- masks with
empty and one-token rows, 1-D input, k3's forms at large |l|, the Gaussian formulas with a policy
sigma other than 1, every moment the enumeration helpers return, and what the errors name."""

import math

import numpy as np
import pytest
import torch

from kltutor import estimators as est

D = torch.float64
LP = torch.tensor([[-0.2, -1.5, -0.7, -3.0], [-0.9, -0.1, -2.2, -0.4], [-0.3, -0.6, -0.8, -1.0]], dtype=D)
LQ = torch.tensor([[-0.5, -1.0, -0.7, -0.2], [-0.3, -0.4, -1.2, -0.9], [-0.1, -0.9, -0.2, -0.6]], dtype=D)
# row 0: three tokens then padding; row 1: one token; row 2: no response token at all
MASK = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)


def k3(x):
    return math.expm1(-x) + x


def test_estimate_kl_token_and_sequence_with_empty_and_one_token_rows():
    ell = (LP - LQ).tolist()
    toks = [ell[0][0], ell[0][1], ell[0][2], ell[1][1]]
    assert est.estimate_kl(LP, LQ, "k3", MASK).item() == pytest.approx(sum(map(k3, toks)) / 4, abs=1e-15)
    assert est.estimate_kl(LP, LQ, mask=MASK).item() == pytest.approx(sum(map(k3, toks)) / 4, abs=1e-15)  # default k3
    assert est.estimate_kl(LP, LQ, "k2", MASK).item() == pytest.approx(sum(0.5 * x * x for x in toks) / 4, abs=1e-15)
    # sequence level: the empty row is dropped, the one-token row kept
    s0, s1 = sum(ell[0][:3]), ell[1][1]
    for name, f in (("k1", lambda x: x), ("k2", lambda x: 0.5 * x * x), ("k3", k3)):
        got = est.estimate_kl(LP, LQ, name, MASK, level="sequence").item()
        assert got == pytest.approx((f(s0) + f(s1)) / 2, abs=1e-15), name
    # no mask: every token of every row
    assert est.estimate_kl(LP, LQ, "k1").item() == pytest.approx(sum(map(sum, ell)) / 12, abs=1e-15)
    full = est.estimate_kl(LP, LQ, "k3", level="sequence").item()
    assert full == pytest.approx(sum(k3(sum(r)) for r in ell) / 3, abs=1e-14)


def test_estimate_kl_one_dimensional_and_fractional_masks():
    lp, lq = LP[0], LQ[0]
    ell = (lp - lq).tolist()
    assert est.estimate_kl(lp, lq, "k3", level="sequence").item() == pytest.approx(k3(sum(ell)), abs=1e-15)
    m = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=D)  # a single token: mass exactly 1 is enough
    assert est.estimate_kl(lp, lq, "k3", m, level="sequence").item() == pytest.approx(k3(ell[0]), abs=1e-15)
    assert est.estimate_kl(lp, lq, "k1", m).item() == pytest.approx(ell[0], abs=1e-15)
    w = torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=D)
    assert est.estimate_kl(lp, lq, "k1", w).item() == pytest.approx(0.5 * ell[0] + 0.25 * (ell[1] + ell[2]), abs=1e-15)
    assert est.estimate_kl(lp, lq, "k1", w, level="sequence").item() == pytest.approx(
        0.5 * ell[0] + 0.25 * (ell[1] + ell[2]), abs=1e-15
    )


def test_validate_mask_converts_bool_and_names_the_problem():
    m = est.validate_mask(MASK, LP.shape)
    assert m.dtype == torch.float32 and m.tolist() == MASK.float().tolist()
    f = torch.ones(3, 4, dtype=D)
    assert est.validate_mask(f, LP.shape) is f
    assert est.validate_mask(None, LP.shape) is None
    with pytest.raises(ValueError, match=r"shape of the log-probabilities \(3, 4\), got \(4,\)"):
        est.validate_mask(torch.ones(4), LP.shape)
    with pytest.raises(ValueError, match="no token"):
        est.validate_mask(torch.full((3, 4), 0.0), LP.shape)


def test_validate_logps_messages_name_the_tensor_and_count():
    bad = LP.clone()
    bad[0, 0], bad[2, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"^logp holds 2 non-finite"):
        est.validate_logps(bad, LQ)
    with pytest.raises(ValueError, match=r"^ref_logp holds 2 non-finite"):
        est.validate_logps(LP, bad)
    with pytest.raises(TypeError, match="got list and Tensor"):
        est.validate_logps([0.0], LQ)
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(4,\)"):
        est.validate_logps(LP, LQ[0])


def test_k3_forms_values_and_gradient_at_large_log_ratio():
    ell = torch.tensor([-3.0, -0.5, -0.1, 0.0, 0.2, 0.5, 4.0], dtype=D)
    want = [k3(x) for x in ell.tolist()]
    z = torch.zeros_like(ell)
    for fn in (est.k3, est.k3_expm1, est.k3_naive):
        assert fn(ell, z).tolist() == pytest.approx(want, abs=1e-15), fn.__name__
        assert fn(z, -ell).tolist() == pytest.approx(want, abs=1e-15), fn.__name__  # l = logp - ref_logp
    # large positive log-ratios in float32: the value is finite, and so is the gradient 1 - e^{-l}
    x = torch.tensor([600.0, 1e3, 3e4], dtype=torch.float32, requires_grad=True)
    v = est.k3(x, torch.zeros_like(x))
    (g,) = torch.autograd.grad(v.sum(), x)
    assert torch.isfinite(v).all() and v.tolist() == pytest.approx([599.0, 999.0, 29999.0])
    assert g.tolist() == [1.0, 1.0, 1.0]


def test_k3_clamped_values_and_bound():
    ell = torch.tensor([-2.0, -0.5, 0.3], dtype=D)
    z = torch.zeros_like(ell)
    # ratio pi_ref/pi = e^{-l} = 7.39, 1.65, 0.74; capped at 1.5
    want = [min(math.exp(-x), 1.5) - 1 + x for x in ell.tolist()]
    assert est.k3_clamped(ell, z, 1.5).tolist() == pytest.approx(want, abs=1e-15)
    assert est.k3_clamped(z, -ell, 1.5).tolist() == pytest.approx(want, abs=1e-15)
    assert est.k3_clamped(ell, z, 1.0001).tolist() == pytest.approx(
        [min(math.exp(-x), 1.0001) - 1 + x for x in ell.tolist()]
    )
    for bad in (1.0, 0.5, float("inf"), "2"):
        with pytest.raises(ValueError, match="max_ratio"):
            est.k3_clamped(ell, z, bad)


def test_k3_reference_on_lists_and_tensors():
    vals = [1e-8, -0.25, 3.0]
    want = [k3(x) for x in vals]
    assert est.k3_reference(vals).tolist() == pytest.approx(want, rel=1e-15)
    assert est.k3_reference(torch.tensor(vals, dtype=D), digits=30).tolist() == pytest.approx(want, rel=1e-15)
    with pytest.raises(ValueError, match="finite"):
        est.k3_reference([0.1, float("nan")])


def test_exact_moments_every_field_and_support_edge_cases():
    p, q = [0.6, 0.4], [0.3, 0.7]
    l1, l2 = math.log(2.0), math.log(4 / 7)
    kl = 0.6 * l1 + 0.4 * l2
    for name, f in (("k1", lambda x: x), ("k2", lambda x: 0.5 * x * x), ("k3", k3)):
        m = est.exact_moments(p, q, name)
        mean = 0.6 * f(l1) + 0.4 * f(l2)
        var = 0.6 * (f(l1) - mean) ** 2 + 0.4 * (f(l2) - mean) ** 2
        assert m == pytest.approx({"kl": kl, "mean": mean, "var": var, "bias": mean - kl}, abs=1e-15), name
    # a single outcome, and a reference of probability 1 where the policy lives: KL 0, nothing raised
    assert est.exact_moments([1.0], [1.0], "k3") == pytest.approx({"kl": 0.0, "mean": 0.0, "var": 0.0, "bias": 0.0})
    assert est.exact_moments([1.0, 0.0], [1.0, 0.0], "k1")["kl"] == 0.0
    with pytest.raises(ValueError, match=r"^p must be a non-empty 1-D vector"):
        est.exact_moments([[0.5, 0.5]], [0.5, 0.5], "k1")
    with pytest.raises(ValueError, match=r"^q must sum to 1"):
        est.exact_moments([0.5, 0.5], [0.5, 0.6], "k1")
    with pytest.raises(ValueError, match=r"^p must hold finite"):
        est.exact_moments([1.5, -0.5], [0.5, 0.5], "k1")


def test_gaussian_moments_keys_and_messages():
    g = est.gaussian_moments(0.3, -0.1, 0.5, "k3")
    d2 = (0.4 / 0.5) ** 2
    assert g == pytest.approx({"kl": d2 / 2, "mean": d2 / 2, "var": math.expm1(d2) - d2, "bias": 0.0})
    assert est.gaussian_moments(0.3, -0.1, 0.5, "k2") == pytest.approx(
        {"kl": d2 / 2, "mean": d2 / 2 + d2**2 / 8, "var": d2**2 / 2 + d2**3 / 4, "bias": d2**2 / 8}
    )
    for i, name in enumerate(("mu_policy", "mu_ref", "sigma")):
        args = [0.0, 0.0, 1.0]
        args[i] = float("nan")
        with pytest.raises(ValueError, match=f"^{name} must be finite"):
            est.gaussian_moments(*args, "k1")


def test_k3_variance_is_finite_boundary_and_powers():
    assert not est.k3_variance_is_finite(2.0, 3.0)  # 9 > 8
    assert est.k3_variance_is_finite(2.0, 2.8)  # 7.84 < 8
    assert not est.k3_variance_is_finite(0.5, 0.75)  # 0.5625 > 0.5
    # exactly on the boundary (representable): sigma_ref^2 == 2 sigma_policy^2 -> infinite variance
    sp, sr = 0.109375, 0.15467960838455727
    assert sr**2 == 2 * sp**2
    assert not est.k3_variance_is_finite(sp, sr)
    assert est.k3_variance_is_finite(sp, 0.15467960838455724)
    for bad in ((0.0, 1.0), (1.0, 0.0), (float("inf"), 1.0), (1.0, float("nan"))):
        with pytest.raises(ValueError, match="finite and positive"):
            est.k3_variance_is_finite(*bad)


def _quadrature(mp, sp, mr, sr):
    y = np.linspace(mp - 14 * sp, mp + 14 * sp, 400_001)
    lp = -0.5 * ((y - mp) / sp) ** 2 - math.log(sp)
    lq = -0.5 * ((y - mr) / sr) ** 2 - math.log(sr)
    w = np.exp(lp) / math.sqrt(2 * math.pi)
    ell = lp - lq
    rho = np.exp(-ell)

    def e(f):
        return np.trapezoid(w * f, y)

    kl = e(ell)
    kl_rev = np.trapezoid(np.exp(lq) / math.sqrt(2 * math.pi) * (lq - lp), y)
    var_k1 = e((ell - kl) ** 2)
    m_rho = e(rho)
    var_rho = e((rho - m_rho) ** 2)
    cov = e((ell - kl) * (rho - m_rho))
    k3v = rho - 1 + ell
    var_k3 = e((k3v - e(k3v)) ** 2)
    return {
        "kl": kl,
        "var_k1": var_k1,
        "var_k3": var_k3,
        "var_rho": var_rho,
        "cov_l_rho": cov,
        "lambda_opt": -cov / var_rho,
        "kl_rev": kl_rev,
    }


@pytest.mark.parametrize("mp, sp, mr, sr", [(0.3, 0.9, -0.2, 1.1), (-0.5, 1.4, 0.4, 0.8)])
def test_gaussian_k3_variance_every_field_with_unequal_sigmas(mp, sp, mr, sr):
    out = est.gaussian_k3_variance(mp, sp, mr, sr)
    q = _quadrature(mp, sp, mr, sr)
    for key in ("kl", "var_k1", "var_k3", "var_rho", "cov_l_rho", "lambda_opt"):
        assert out[key] == pytest.approx(q[key], rel=1e-7), key
    assert out["cov_l_rho"] == pytest.approx(-q["kl"] - q["kl_rev"], rel=1e-7)
    inf = est.gaussian_k3_variance(mp, 0.5, mr, 1.0)  # 1 >= 2 * 0.25: infinite
    assert math.isinf(inf["var_k3"]) and math.isinf(inf["var_rho"]) and inf["lambda_opt"] == 0.0
    assert inf["var_k1"] == pytest.approx(_quadrature(mp, 0.5, mr, 1.0)["var_k1"], rel=1e-7)


def test_gaussian_k3_variance_equal_distributions():
    out = est.gaussian_k3_variance(0.2, 0.7, 0.2, 0.7)
    assert out["kl"] == 0.0 and out["var_k1"] == 0.0 and out["var_rho"] == pytest.approx(0.0, abs=1e-12)
    assert out["lambda_opt"] == 1.0  # no variance to reduce: the k3 weight
    unit = est.gaussian_k3_variance(0.0, 1.0, 0.0, 1.0)  # here Var(rho) is exactly 0.0 in floating point
    assert unit["var_rho"] == 0.0 and unit["lambda_opt"] == 1.0 and unit["var_k3"] == 0.0


def test_enumerate_autoregressive_order_dtype_and_zero_probabilities():
    tables = [torch.tensor([0.25, 0.75], dtype=D), torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=D)]
    seqs, lp = est.enumerate_autoregressive(tables)
    assert seqs.dtype == torch.long and seqs.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert lp.exp().flatten().tolist() == pytest.approx([0.25, 1.0, 0.25, 0.0, 0.75, 0.5, 0.75, 0.5])


def test_exact_aggregation_moments_every_field_by_hand():
    pol = [torch.tensor([0.25, 0.75], dtype=D), torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=D)]
    ref = [torch.tensor([0.5, 0.5], dtype=D), torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=D)]
    # sequences with positive probability: (0,0) 0.25, (1,0) 0.375, (1,1) 0.375; (0,1) has probability 0
    prob = [0.25, 0.375, 0.375]
    lr = [[math.log(0.5), math.log(2.0)], [math.log(1.5), 0.0], [math.log(1.5), 0.0]]
    for name, f in (("k1", lambda x: x), ("k3", k3)):
        m = est.exact_aggregation_moments(pol, ref, name)
        assert m["T"] == 2
        assert m["kl_seq"] == pytest.approx(sum(p * sum(r) for p, r in zip(prob, lr)), abs=1e-15)
        for key, v in (
            ("token", [sum(map(f, r)) / 2 for r in lr]),
            ("token_sum", [sum(map(f, r)) for r in lr]),
            ("sequence", [f(sum(r)) for r in lr]),
        ):
            mean = sum(p * x for p, x in zip(prob, v))
            var = sum(p * (x - mean) ** 2 for p, x in zip(prob, v))
            assert m[f"{key}_mean"] == pytest.approx(mean, abs=1e-15), (name, key)
            assert m[f"{key}_var"] == pytest.approx(var, abs=1e-15), (name, key)
    with pytest.raises(ValueError, match="infinite"):
        est.exact_aggregation_moments(ref, pol, "k1")


def test_estimators_of_a_log_ratio_and_their_derivatives_by_hand():
    ell = torch.tensor([-0.7, 0.0, 0.3, 2.0], dtype=D)
    k = {
        "k1": [-0.7, 0.0, 0.3, 2.0],
        "k2": [0.245, 0.0, 0.045, 2.0],
        "k3": [math.expm1(0.7) - 0.7, 0.0, math.expm1(-0.3) + 0.3, math.expm1(-2.0) + 2.0],
    }
    dk = {
        "k1": [1.0, 1.0, 1.0, 1.0],
        "k2": [-0.7, 0.0, 0.3, 2.0],
        "k3": [-math.expm1(0.7), 0.0, -math.expm1(-0.3), -math.expm1(-2.0)],
    }
    for name in ("k1", "k2", "k3"):
        assert est.of_log_ratio(name, ell).tolist() == pytest.approx(k[name], abs=1e-15)
        assert est.derivative(name, ell).tolist() == pytest.approx(dk[name], abs=1e-15)
        # the derivative is autograd's of the value
        x = ell.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(est.of_log_ratio(name, x).sum(), x)
        assert g.tolist() == pytest.approx(dk[name], abs=1e-12)
    # sixteen-bit log-ratios are computed (and returned) in float32; float64 stays float64
    half = torch.tensor([0.01], dtype=torch.bfloat16)
    assert est.of_log_ratio("k3", half).dtype == torch.float32
    assert est.of_log_ratio("k3", half).item() == pytest.approx(est.k3(half.float(), torch.zeros(1)).item(), rel=1e-7)
    assert est.of_log_ratio("k1", ell).dtype == D and est.derivative("k2", ell.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown estimator 'k4'"):
        est.of_log_ratio("k4", ell)
    with pytest.raises(ValueError, match="unknown estimator 'k4'"):
        est.derivative("k4", ell)


def test_exact_moments_work_in_float64_and_want_1d_vectors():
    """float32 probabilities are computed in float64 (the moments of the float64 values); a 2-D q is named."""
    p32, q32 = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])  # exact in float32
    exact = est.exact_moments(p32.double().tolist(), q32.double().tolist(), "k3")
    assert est.exact_moments(p32, q32, "k3") == pytest.approx(exact, abs=1e-15)
    with pytest.raises(ValueError, match=r"^q must be a non-empty 1-D vector"):
        est.exact_moments([0.5, 0.5], [[0.5, 0.5]], "k1")


def test_k3_relative_error_bound_keeps_the_input_shape():
    """Elementwise like the estimators it bounds: a [2, 2] batch of log-ratios gives a [2, 2] bound,
    entry by entry the bound of the flat input; an empty batch keeps its shape too."""
    ell = torch.tensor([[0.3, -1.0], [1.0, 2.0]], dtype=D)
    for form in ("naive", "expm1", "stable"):
        b = est.k3_relative_error_bound(ell, form, torch.float32)
        assert b.shape == (2, 2)
        flat = est.k3_relative_error_bound(ell.flatten(), form, torch.float32)
        assert torch.allclose(b.flatten(), flat, rtol=1e-14, atol=0)
    assert est.k3_relative_error_bound(torch.zeros(0, 3, dtype=D), "naive", torch.float32).shape == (0, 3)
    ref = est.k3_reference(ell)
    assert ref.shape == (2, 2) and ref.flatten().tolist() == pytest.approx([k3(x) for x in (0.3, -1.0, 1.0, 2.0)])


def test_k3_relative_error_bound_formula_by_formula():
    """Each form's bound evaluated by hand where the forms differ by O(1) factors (l = +-1), plus the
    float64 reference's own rounding 2^-53; the stable form's 8u on the series' closed radius |l| <= 0.5
    (where :func:`k3` uses the series), the expm1 bound just beyond it. Python floats in, float64 out."""
    e, r = math.e, 2.0**-53
    for dt in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        u = torch.finfo(dt).eps / 2
        # l = 1: e^{-l} = k3 = 1/e; l = -1: e^{-l} = e, k3 = e - 2
        naive = est.k3_relative_error_bound([1.0, -1.0], "naive", dt)
        assert naive.dtype == D
        # u (2 e^{-l} + |e^{-l} - 1| + k3) / k3
        assert naive.tolist() == pytest.approx([u * (2 + e) + r, u * (4 * e - 3) / (e - 2) + r], rel=1e-13)
        # u (2 |e^{-l} - 1| + k3) / k3
        expm1 = est.k3_relative_error_bound([1.0, -1.0], "expm1", dt)
        assert expm1.tolist() == pytest.approx([u * (2 * e - 1) + r, u * (3 * e - 4) / (e - 2) + r], rel=1e-13)
        above = math.nextafter(0.5, 1.0)
        stable = est.k3_relative_error_bound([1.0, -1.0, 0.5, -0.5, 0.3, above], "stable", dt)
        k3_above = k3(above)
        beyond = u * (2 * -math.expm1(-above) + k3_above) / k3_above + r  # about 8.4 u
        want = [expm1[0].item(), expm1[1].item(), 8 * u + r, 8 * u + r, 8 * u + r, beyond]
        assert stable.tolist() == pytest.approx(want, rel=1e-13)
    # in float64 the total is exact: 8 * 2^-53 + 2^-53
    assert est.k3_relative_error_bound([0.3], "stable", D).item() == 9 * r
