"""Unit tests of kltutor.estimators: exact moments, Monte Carlo within standard errors, stability, bad input."""

import math

import pytest
import torch

from kltutor import estimators as est

P = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
Q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)


def _mc(fn, logp, ref_logp):
    v = fn(logp, ref_logp)
    return v.mean().item(), v.std().item() / math.sqrt(v.numel()), v


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_exact_moments_match_direct_sum_and_mc(name):
    ex = est.exact_moments(P, Q, name)
    kl = (P * (P / Q).log()).sum().item()
    assert ex["kl"] == pytest.approx(kl, rel=1e-12)
    if name in ("k1", "k3"):
        assert ex["mean"] == pytest.approx(kl, rel=1e-12)
    else:
        assert ex["mean"] == pytest.approx(0.5 * (P * (P / Q).log() ** 2).sum().item(), rel=1e-12)
    gen = torch.Generator().manual_seed(1)
    idx = torch.multinomial(P, 200_000, replacement=True, generator=gen)
    mean, se, v = _mc(est.get_estimator(name), P.log()[idx], Q.log()[idx])
    assert abs(mean - ex["mean"]) < 5 * se
    # sample variance: standard error from the fourth central moment (exact, by enumeration)
    vals = est.get_estimator(name)(P.log(), Q.log())
    m4 = (P * (vals - ex["mean"]) ** 4).sum().item()
    se_var = math.sqrt((m4 - ex["var"] ** 2) / v.numel())
    assert abs(v.var().item() - ex["var"]) < 5 * se_var


def test_k3_variance_lower_than_k1_here_but_not_always():
    assert est.exact_moments(P, Q, "k3")["var"] != est.exact_moments(P, Q, "k1")["var"]
    near = [0.26, 0.24, 0.25, 0.25]
    assert est.exact_moments(near, [0.25] * 4, "k3")["var"] < est.exact_moments(near, [0.25] * 4, "k1")["var"]
    g1, g3 = est.gaussian_moments(2.0, 0.0, 1.0, "k1"), est.gaussian_moments(2.0, 0.0, 1.0, "k3")
    assert g3["var"] > g1["var"]


def test_exact_moments_support_rules():
    # policy without full support: skipped outcomes; k3 biased by the reference mass there
    p = [0.6, 0.4, 0.0]
    q = [0.3, 0.3, 0.4]
    m = est.exact_moments(p, q, "k3")
    assert m["mean"] == pytest.approx(m["kl"] - 0.4, rel=1e-12)
    with pytest.raises(ValueError, match="infinite"):
        est.exact_moments([0.5, 0.5], [1.0, 0.0], "k1")


@pytest.mark.parametrize("bad", [[0.5, 0.6], [-0.1, 1.1], [[0.5, 0.5]], [float("nan"), 1.0]])
def test_exact_moments_bad_probs(bad):
    with pytest.raises(ValueError):
        est.exact_moments(bad, [0.5, 0.5], "k1")


def test_exact_moments_bad_names_and_shapes():
    with pytest.raises(ValueError, match="unknown estimator"):
        est.exact_moments(P, Q, "k4")
    with pytest.raises(ValueError, match="same shape"):
        est.exact_moments([0.5, 0.5], [0.2, 0.3, 0.5], "k1")


@pytest.mark.parametrize("mu1,mu2,s", [(0.0, 0.5, 1.0), (1.0, -0.3, 0.7), (0.2, 1.4, 2.0)])
@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_gaussian_closed_forms_vs_quadrature(mu1, mu2, s, name):
    y = torch.linspace(mu1 - 14 * s, mu1 + 14 * s, 400_001, dtype=torch.float64)
    lp = torch.distributions.Normal(mu1, s).log_prob(y)
    lq = torch.distributions.Normal(mu2, s).log_prob(y)
    v = est.get_estimator(name)(lp, lq)
    w = lp.exp()
    mean = torch.trapezoid(w * v, y).item()
    var = torch.trapezoid(w * (v - mean) ** 2, y).item()
    ex = est.gaussian_moments(mu1, mu2, s, name)
    assert ex["mean"] == pytest.approx(mean, rel=1e-7, abs=1e-12)
    assert ex["var"] == pytest.approx(var, rel=1e-6, abs=1e-12)


def test_gaussian_mc_within_standard_error():
    gen = torch.Generator().manual_seed(3)
    y = 0.3 + 0.8 * torch.randn(100_000, generator=gen, dtype=torch.float64)
    lp = torch.distributions.Normal(0.3, 0.8).log_prob(y)
    lq = torch.distributions.Normal(-0.2, 0.8).log_prob(y)
    for name in ("k1", "k2", "k3"):
        mean, se, _ = _mc(est.get_estimator(name), lp, lq)
        assert abs(mean - est.gaussian_moments(0.3, -0.2, 0.8, name)["mean"]) < 5 * se


def test_gaussian_k3_variance_general_vs_quadrature_and_equal_case():
    eq = est.gaussian_k3_variance(0.0, 1.0, 0.5, 1.0)
    assert eq["var_k3"] == pytest.approx(est.gaussian_moments(0.0, 0.5, 1.0, "k3")["var"], rel=1e-10)
    assert eq["var_k1"] == pytest.approx(0.25, rel=1e-12)
    mp, spp, mr, sr = 0.3, 1.0, -0.4, 1.3  # sr^2 = 1.69 < 2: finite
    y = torch.linspace(mp - 30, mp + 30, 600_001, dtype=torch.float64)
    # float64 parameters: Normal(0.3, 1.0) would hold float32 copies (0.30000001...), whose densities
    # differ from the closed form's by ~1e-8 relative -- that, not the quadrature, is what a looser test saw.
    d64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    lp = torch.distributions.Normal(d64(mp), d64(spp)).log_prob(y)
    lq = torch.distributions.Normal(d64(mr), d64(sr)).log_prob(y)
    w = lp.exp()
    out = est.gaussian_k3_variance(mp, spp, mr, sr)
    # Tolerance from the quadrature: the trapezoid rule on an analytic integrand that decays like a
    # Gaussian is exact up to terms ~exp(-2 pi^2 s^2 / h^2) (h = 1e-4: nothing), the window +-30 loses
    # < exp(-(2/1.69 - 1) 30^2 / 2) ~ 1e-36 of var_k3's slowest tail, and summing 600,001 terms in
    # float64 costs at most n * 2^-53 ~ 7e-11 relative. rel=1e-9 holds with room on any CPU's kernels.
    for key, fn in (("var_k1", est.k1), ("var_k3", est.k3)):
        v = fn(lp, lq)
        m = torch.trapezoid(w * v, y).item()
        assert out[key] == pytest.approx(torch.trapezoid(w * (v - m) ** 2, y).item(), rel=1e-9)
    assert out["kl"] == pytest.approx(torch.trapezoid(w * (lp - lq), y).item(), rel=1e-9)


def test_k3_variance_finiteness_condition():
    assert est.k3_variance_is_finite(1.0, 1.41)
    assert not est.k3_variance_is_finite(1.0, 1.42)
    assert math.isinf(est.gaussian_k3_variance(0.1, 0.2, 0.0, 1.0)["var_k3"])
    with pytest.raises(ValueError):
        est.k3_variance_is_finite(-1.0, 1.0)
    with pytest.raises(ValueError):
        est.gaussian_moments(0.0, 1.0, 0.0, "k1")


def test_k3_stable_accuracy_float32_and_float64():
    ells = torch.tensor([1e-7, -1e-7, 1e-5, -3e-4, 0.01, -0.2, 0.49, -0.51, 0.7, 5.0, -5.0, 30.0, -30.0])
    for dt, tol in (
        (torch.float32, 4 * torch.finfo(torch.float32).eps),
        (torch.float64, 8 * torch.finfo(torch.float64).eps),
    ):
        x = ells.to(dt)
        ref = est.k3_reference(x.double())
        rel = ((est.k3(x, torch.zeros_like(x)).double() - ref) / ref).abs()
        assert rel.max().item() < tol, (dt, rel)
    # the naive form is the one that fails near 0 in float32
    x = torch.tensor([1e-4], dtype=torch.float32)
    ref = est.k3_reference(x.double())
    assert ((est.k3_naive(x, torch.zeros_like(x)).double() - ref) / ref).abs().item() > 0.1
    assert ((est.k3_expm1(x, torch.zeros_like(x)).double() - ref) / ref).abs().item() > 1e-5


def test_k3_forms_agree_away_from_zero_and_gradient_finite():
    lp = torch.tensor([-0.2, -3.0, -0.01, -9.0], dtype=torch.float64, requires_grad=True)
    lq = torch.tensor([-1.0, -0.5, -0.02, -0.1], dtype=torch.float64)
    a = est.k3(lp, lq)
    assert torch.allclose(a, est.k3_naive(lp, lq), rtol=1e-10)
    a.sum().backward()
    ell = (lp - lq).detach()
    assert torch.allclose(lp.grad, 1 - torch.exp(-ell), rtol=1e-10)
    big = torch.tensor([200.0, -0.1], requires_grad=True)
    est.k3(big, torch.zeros(2)).sum().backward()
    assert torch.isfinite(big.grad).all()


def test_k3_overflow_float16_and_clamped_bias():
    x = torch.tensor([-11.5], dtype=torch.float16)
    assert torch.isinf(est.k3(x, torch.zeros_like(x))).all()
    lp = torch.tensor([0.0, -3.0])
    lq = torch.zeros(2)
    c = est.k3_clamped(lp, lq, 10.0)
    assert c[0].item() == pytest.approx(0.0, abs=1e-7)
    assert c[1].item() == pytest.approx(10.0 - 1.0 - 3.0, rel=1e-6)
    with pytest.raises(ValueError):
        est.k3_clamped(lp, lq, 0.5)
    with pytest.raises(ValueError):
        est.k3_clamped(lp, lq, float("inf"))


def test_estimate_kl_levels_and_masks():
    lp = torch.tensor([[-0.1, -0.7, -2.0], [-0.3, -0.2, -5.0]])
    lq = torch.tensor([[-0.2, -0.5, -1.0], [-0.4, -0.1, -0.3]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    tok = est.k3(lp, lq)
    m = mask.float()
    assert est.estimate_kl(lp, lq, "k3", mask).item() == pytest.approx(((tok * m).sum() / m.sum()).item(), rel=1e-6)
    seq_l = ((lp - lq) * m).sum(-1)
    want = (torch.expm1(-seq_l) + seq_l).mean().item()
    assert est.estimate_kl(lp, lq, "k3", mask, level="sequence").item() == pytest.approx(want, rel=1e-6)
    # k1: sequence value = mean over sequences of the summed per-token k1
    assert est.estimate_kl(lp, lq, "k1", mask, level="sequence").item() == pytest.approx(seq_l.mean().item(), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(logp=torch.zeros(2, 3), ref_logp=torch.zeros(3, 2)), "same shape"),
        (dict(logp=torch.zeros(2, 3), ref_logp=torch.zeros(2, 3), mask=torch.zeros(2, 3)), "no token"),
        (dict(logp=torch.zeros(2, 3), ref_logp=torch.zeros(2, 3), mask=torch.ones(3)), "mask must have the shape"),
        (dict(logp=torch.tensor([0.0, float("nan")]), ref_logp=torch.zeros(2)), "non-finite"),
        (dict(logp=torch.tensor([0.0, -float("inf")]), ref_logp=torch.zeros(2)), "non-finite"),
        (dict(logp=torch.zeros(2), ref_logp=torch.zeros(2), estimator="k5"), "unknown estimator"),
        (dict(logp=torch.zeros(2), ref_logp=torch.zeros(2), level="batch"), "level"),
        (dict(logp=torch.zeros(2), ref_logp=torch.zeros(2), mask=torch.tensor([-1.0, 2.0])), "non-negative"),
    ],
)
def test_estimate_kl_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        est.estimate_kl(**kwargs)


def test_estimators_reject_non_tensors():
    with pytest.raises(TypeError):
        est.k3([0.0], torch.zeros(1))


def _tables():
    pol = [torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)]
    ref = [torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([[0.6, 0.4], [0.5, 0.5]], dtype=torch.float64)]
    return pol, ref


def test_aggregation_moments_chain_rule_and_mc():
    pol, ref = _tables()
    seqs, lp = est.enumerate_autoregressive(pol)
    _, lq = est.enumerate_autoregressive(ref)
    assert seqs.shape == (4, 2) and lp.sum(-1).exp().sum().item() == pytest.approx(1.0, rel=1e-12)
    # chain rule: KL_seq = KL(first) + E_{y1}[KL(second | y1)]
    kl1 = (pol[0] * (pol[0] / ref[0]).log()).sum()
    kl2 = sum(pol[0][a] * (pol[1][a] * (pol[1][a] / ref[1][a]).log()).sum() for a in range(2))
    for name in ("k1", "k3"):
        m = est.exact_aggregation_moments(pol, ref, name)
        assert m["kl_seq"] == pytest.approx((kl1 + kl2).item(), rel=1e-12)
        assert m["token_sum_mean"] == pytest.approx(m["kl_seq"], rel=1e-12)
        assert m["sequence_mean"] == pytest.approx(m["kl_seq"], rel=1e-12)
        assert m["token_mean"] == pytest.approx(m["kl_seq"] / 2, rel=1e-12)
    m3 = est.exact_aggregation_moments(pol, ref, "k3")
    assert m3["token_sum_var"] != pytest.approx(m3["sequence_var"], rel=1e-3)
    # Monte Carlo through estimate_kl(level="sequence") agrees with the exact sequence moments
    gen = torch.Generator().manual_seed(5)
    idx = torch.multinomial(lp.sum(-1).exp(), 100_000, replacement=True, generator=gen)
    vals = torch.stack([est.estimate_kl(lp[i : i + 1], lq[i : i + 1], "k3", level="sequence") for i in range(4)])[idx]
    assert abs(vals.mean().item() - m3["sequence_mean"]) < 5 * vals.std().item() / math.sqrt(len(idx))


def test_enumerate_autoregressive_bad_tables():
    with pytest.raises(ValueError):
        est.enumerate_autoregressive([])
    with pytest.raises(ValueError):
        est.enumerate_autoregressive([torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])])
    with pytest.raises(ValueError):
        est.enumerate_autoregressive([torch.tensor([0.6, 0.6])])


def test_control_variate_weight_and_k2_bias_signs():
    assert est.gaussian_k3_variance(1.0, 1.0, 0.0, 1.0)["lambda_opt"] == pytest.approx(1 / (math.e - 1), rel=1e-12)
    # lambda* minimises the variance of k1 + lambda (rho - 1): it beats lambda = 1 (k3)
    g = est.gaussian_k3_variance(0.0, 1.0, 0.5, 1.0)
    lam = g["lambda_opt"]
    assert g["var_k1"] + 2 * lam * g["cov_l_rho"] + lam**2 * g["var_rho"] < g["var_k3"]
    # k2's bias has the sign of eps (2 theta - 1) for pi = theta, ref = theta + eps (third order)
    assert est.exact_moments([0.3, 0.7], [0.4, 0.6], "k2")["bias"] < 0
    assert est.exact_moments([0.3, 0.7], [0.2, 0.8], "k2")["bias"] > 0
    assert est.gaussian_moments(0.0, 0.5, 1.0, "k2")["bias"] == pytest.approx(0.5**4 / 8, rel=1e-12)


def test_k3_relative_error_bound_holds_for_every_form_and_dtype():
    """The a-priori bound the chapter's stability table prints holds for the measured errors."""
    forms = {"naive": est.k3_naive, "expm1": est.k3_expm1, "stable": est.k3}
    mag = torch.logspace(-7, 1.5, 400, dtype=torch.float64)
    for dt in (torch.float64, torch.float32, torch.bfloat16):
        ell = torch.cat([mag, -mag]).to(dt)
        ref = est.k3_reference(ell.double())
        finite = ref < torch.finfo(dt).max / 4  # exp(-l) overflows the dtype beyond that
        for name, fn in forms.items():
            rel = ((fn(ell, torch.zeros_like(ell)).double() - ref) / ref).abs()
            bound = est.k3_relative_error_bound(ell.double(), name, dt)
            assert (rel[finite] <= bound[finite]).all(), (dt, name)
    u32 = torch.finfo(torch.float32).eps / 2
    # the shapes the chapter states: naive ~ 4u / l^2, expm1 ~ 4u / |l| near 0, stable 8u
    b = est.k3_relative_error_bound(torch.tensor([1e-4]), "naive", torch.float32)
    assert b.item() == pytest.approx(4 * u32 / 1e-8, rel=1e-3)
    b = est.k3_relative_error_bound(torch.tensor([1e-4]), "expm1", torch.float32)
    assert b.item() == pytest.approx(4 * u32 / 1e-4, rel=1e-3)
    assert est.k3_relative_error_bound(torch.tensor([0.3]), "stable", torch.float32).item() == pytest.approx(
        8 * u32, rel=1e-6
    )
    assert math.isnan(est.k3_relative_error_bound(torch.tensor([0.0]), "naive", torch.float32).item())
    with pytest.raises(ValueError, match="unknown form"):
        est.k3_relative_error_bound(torch.tensor([0.1]), "series", torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        est.k3_relative_error_bound(torch.tensor([0.1]), "naive", torch.int64)
    with pytest.raises(ValueError, match="finite"):
        est.k3_relative_error_bound(torch.tensor([float("nan")]), "naive", torch.float32)
