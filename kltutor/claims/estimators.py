"""The ledger's claims on estimators (see :mod:`kltutor.claims`)."""

from __future__ import annotations

import math

from kltutor.claims._core import _claim, _require


@_claim(
    "k1-unbiased",
    "Estimators",
    r"$\E_{\pitheta}[\mathrm{k1}]=\KL(\pitheta\|\piref)$, and a single k1 sample is negative whenever the "
    r"sampled $y$ has $\piref(y)>\pitheta(y)$.",
    r"samples from $\pitheta$",
    "sec-estimators-exact",
    cheatsheet=True,
)
def _k1_unbiased():
    from kltutor import estimators as est

    p = [0.5, 0.3, 0.15, 0.05]
    q = [0.25, 0.25, 0.25, 0.25]
    m = est.exact_moments(p, q, "k1")
    _require(abs(m["mean"] - m["kl"]) < 1e-15 and m["bias"] == m["mean"] - m["kl"], "E[k1] = KL")
    p_neg = sum(a for a, b in zip(p, q) if a < b)
    _require(p_neg > 0, "some samples negative")
    return {"KL": m["kl"], "P(k1 < 0)": p_neg}


@_claim(
    "k3-unbiased",
    "Estimators",
    r"$\E_{\pitheta}[\mathrm{k3}]=\KL(\pitheta\|\piref)$, because $\E_{\pitheta}[\piref/\pitheta]=1$.",
    r"samples from $\pitheta$ and $\operatorname{supp}\piref\subseteq\operatorname{supp}\pitheta$; a reference "
    r"mass $m$ outside the policy's support biases k3 down by exactly $m$",
    "sec-estimators-k3",
    cheatsheet=True,
)
def _k3_unbiased():
    from kltutor import estimators as est
    from kltutor.derivations import estimators as estimators_proofs

    _require(estimators_proofs.k3_unbiased_categorical() and estimators_proofs.k3_unbiased_needs_support(), "sympy")
    m = est.exact_moments([0.6, 0.4, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], "k3")
    _require(abs(m["mean"] - (m["kl"] - 0.5)) < 1e-12, "support condition")
    return {"E[k3] - KL when the policy drops reference mass 0.5": m["mean"] - m["kl"]}


@_claim(
    "k3-nonnegative",
    "Estimators",
    r"$\mathrm{k3}=e^{-\ell}-1+\ell=f(-\ell)\ge0$ for every sample, with $f(x)=e^x-x-1$.",
    "exact arithmetic (naive bfloat16 arithmetic returns negative values: see the failure-modes row)",
    "sec-estimators-k3",
    cheatsheet=True,
)
def _k3_nonnegative():
    import torch

    from kltutor import estimators as est
    from kltutor.derivations import estimators as estimators_proofs

    _require(estimators_proofs.f_nonnegative(), "sympy")
    ell = torch.cat(
        [-torch.logspace(-8, 1.5, 400, dtype=torch.float64), torch.logspace(-8, 1.5, 400, dtype=torch.float64)]
    )
    v = est.k3(ell, torch.zeros_like(ell))
    _require((v >= 0).all(), "est.k3 negative somewhere")
    return {"min of k3 over 800 log-ratios in [-31.6, 31.6]": v.min().item()}


@_claim(
    "k3-lambda-one",
    "Estimators",
    r"Among the unbiased $\mathrm{k1}+\lambda(\rho-1)$, $\rho=\piref/\pitheta$, only $\lambda=1$ (k3) is "
    r"non-negative for every sample; $\lambda=1$ is the variance-optimal weight only to first order near $\pitheta=\piref$.",
    "samples from the policy",
    "sec-estimators-cv",
)
def _k3_lambda_one():
    from kltutor import estimators as est
    from kltutor.derivations import estimators as estimators_proofs

    _require(estimators_proofs.control_variate_optimum(), "sympy")
    lam = est.gaussian_k3_variance(0.0, 1.0, 0.5, 1.0)["lambda_opt"]
    _require(0.8 < lam < 1.0, "lambda* near but below 1 at delta = 0.5")
    return {"variance-optimal lambda at delta = 0.5": lam}


@_claim(
    "k3-variance",
    "Estimators",
    r"k3 has lower variance than k1 only near the reference: for equal-variance Gaussians iff "
    r"$\delta<1.121$ (KL below 0.628 nats). Its control variate $\rho-1$ has variance "
    r"$\chi^2(\piref\|\pitheta)$, so $\mathrm{Var}[\mathrm{k3}]$ is infinite when that diverges, e.g. iff "
    r"$\sigma_\text{ref}\ge\sqrt2\,\sigma_\theta$ for Gaussians.",
    "samples from the policy; the thresholds are for Gaussian policy and reference",
    "sec-estimators-variance",
    cheatsheet=True,
    refuted=(r"k3 (?:always )?has (?:a )?lower variance(?![^.]*(near|close|usually|only|when|not))",),
)
def _k3_variance():
    import sympy as sp
    import torch

    from kltutor import estimators as est
    from kltutor.derivations import estimators as estimators_proofs
    from kltutor.divergences import chi2
    from kltutor.toys.distributions import random_categorical

    d = sp.Symbol("delta", positive=True)
    cross = float(sp.nsolve(sp.exp(d**2) - 1 - 2 * d**2, d, 1.0))
    lo = (
        est.gaussian_moments(cross - 0.01, 0.0, 1.0, "k3")["var"]
        < est.gaussian_moments(cross - 0.01, 0.0, 1.0, "k1")["var"]
    )
    hi = (
        est.gaussian_moments(cross + 0.01, 0.0, 1.0, "k3")["var"]
        > est.gaussian_moments(cross + 0.01, 0.0, 1.0, "k1")["var"]
    )
    _require(lo and hi, "crossover")
    _require(estimators_proofs.gaussian_k3_second_moment(), "sympy: finite iff s^2 < 2")
    _require(est.k3_variance_is_finite(1.0, 1.41) and not est.k3_variance_is_finite(1.0, 1.42), "sqrt(2) threshold")
    P = random_categorical(100, 6, seed=5)
    Q = random_categorical(100, 6, seed=6)
    rho = Q / P
    var_rho = (P * rho**2).sum(-1) - (P * rho).sum(-1) ** 2
    _require(torch.allclose(var_rho, chi2(Q, P), rtol=1e-10, atol=1e-12), "Var[rho] = chi2(ref||pi)")
    return {"crossover delta": cross, "crossover KL (nats)": cross**2 / 2, "max |Var[rho] - chi2(ref||pi)|": "< 1e-10"}


@_claim(
    "k2-bias",
    "Estimators",
    r"k2 is biased: $\E[\mathrm{k2}]-\KL=\tfrac12\KL^2+\tfrac16\kappa_3-\tfrac1{24}\kappa_4+\dots$ "
    r"($\kappa_j$ the cumulants of $\ell$), $O(\varepsilon^3)$ for an $\varepsilon$-perturbation, of either sign; "
    r"exactly $\KL^2/2$ for two unit-variance Gaussians.",
    "samples from the policy",
    "sec-estimators-k2-bias",
    cheatsheet=True,
)
def _k2_bias():
    from kltutor import estimators as est
    from kltutor.derivations import estimators as estimators_proofs

    _require(estimators_proofs.k2_bias_series() and estimators_proofs.gaussian_equal_variance_moments(), "sympy")
    a = est.exact_moments([0.3, 0.7], [0.4, 0.6], "k2")["bias"]
    b = est.exact_moments([0.3, 0.7], [0.2, 0.8], "k2")["bias"]
    _require(a * b < 0, "the bias takes both signs")
    return {"bias, pi=(.3,.7), ref=(.4,.6)": a, "bias, pi=(.3,.7), ref=(.2,.8)": b}


@_claim(
    "k2-not-f-divergence",
    "Estimators",
    r"$\E[\mathrm{k2}]=\E_{\pitheta}[\tfrac12\ell^2]$ is **not** an $f$-divergence: it is "
    r"$\E_{\pitheta}[f(\piref/\pitheta)]$ with $f(u)=\tfrac12(\log u)^2$, and $f''(u)=(1-\log u)/u^2<0$ for $u>e$. "
    r"It can even grow when outcomes are merged, which no $f$-divergence does.",
    "any policy and reference",
    "sec-estimators-k2-bias",
    refuted=(r"(?<!not )(?<!never )\bis (?:an?|the) \$?f\$?-divergence",),
)
def _k2_not_f_divergence():
    from kltutor.derivations import estimators as estimators_proofs

    _require(estimators_proofs.k2_not_f_divergence(), "sympy")
    ex = estimators_proofs.k2_merge_example()
    return {"E[k2], pi=(.9,.01,.09), ref=(.5,.4,.1)": ex["fine"], "after merging the last two outcomes": ex["merged"]}


@_claim(
    "k3-float32",
    "Estimators",
    r"In float32, `kltutor.estimators.k3` (Taylor series for $|\ell|\le0.5$, `expm1` beyond) is accurate to a "
    r"few machine epsilons; `expm1(-l) + l` alone has relative error $\approx2\epsilon/|\ell|$ "
    r"($9\times10^{-2}$ at $\ell=10^{-6}$) and the naive `exp(-l) - 1 + l` loses every digit near 0.",
    "float32 log-ratios; cast float16/bfloat16 log-probabilities to float32 first",
    "sec-estimators-stability",
    cheatsheet=True,
    refuted=(r"float32 (?:with|using) `?expm1", r"at least `?expm1", r"estimators\.k3` uses `expm1`"),
)
def _k3_float32():
    import torch

    from kltutor import estimators as est

    out = {}
    for name, fn in (("k3", est.k3), ("expm1 form", est.k3_expm1), ("naive form", est.k3_naive)):
        x = torch.tensor([1e-6], dtype=torch.float32)
        ref = est.k3_reference(x.double())
        out[f"relative error at l = 1e-6, {name}"] = ((fn(x, torch.zeros_like(x)).double() - ref) / ref).abs().item()
    _require(out["relative error at l = 1e-6, k3"] < 1e-6, "series form")
    _require(0.05 < out["relative error at l = 1e-6, expm1 form"] < 0.2, "expm1 form ~ 2 eps / l")
    _require(out["relative error at l = 1e-6, naive form"] > 1.0, "naive form")
    grid = torch.cat([torch.logspace(-7, math.log10(40), 300), -torch.logspace(-7, math.log10(40), 300)]).float()
    ref = est.k3_reference(grid.double())
    worst = ((est.k3(grid, torch.zeros_like(grid)).double() - ref) / ref).abs().max().item()
    _require(worst < 1e-6, f"est.k3 in float32: worst relative error {worst:.2e}")
    out["worst relative error of k3 for 1e-7 <= |l| <= 40"] = "< 1e-6"
    return out


@_claim(
    "k3-fp16-overflow",
    "Estimators",
    r"$e^{-\ell}$ overflows float16 once $\ell<-11.09$; bfloat16 shares float32's range.",
    "k3 computed in float16",
    "sec-estimators-stability",
)
def _k3_fp16_overflow():
    import torch

    from kltutor.derivations import failures as failures_proofs

    _require(failures_proofs.fp16_k3_overflow(), "sympy")
    limit = -math.log(torch.finfo(torch.float16).max)
    _require(
        torch.finfo(torch.bfloat16).max == torch.finfo(torch.float32).max
        or abs(math.log(torch.finfo(torch.bfloat16).max) - math.log(torch.finfo(torch.float32).max)) < 0.01,
        "bf16 range",
    )
    return {"float16 overflow threshold": limit}


@_claim(
    "token-vs-sequence-k3",
    "Estimators",
    r"The sum of per-token k3 and k3 of the summed log-ratio have the same mean, the sequence KL, and "
    r"different variances; a per-token *mean* is a different quantity (sequence KL / length).",
    "samples from the policy, fixed length",
    "sec-estimators-aggregation",
)
def _token_vs_sequence_k3():
    import torch

    from kltutor import estimators as est

    D = torch.float64
    policy = [
        torch.tensor([0.7, 0.3], dtype=D),
        torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=D),
        torch.tensor([[[0.9, 0.1], [0.5, 0.5]], [[0.3, 0.7], [0.2, 0.8]]], dtype=D),
    ]
    ref = [
        torch.tensor([0.5, 0.5], dtype=D),
        torch.tensor([[0.6, 0.4], [0.5, 0.5]], dtype=D),
        torch.tensor([[[0.7, 0.3], [0.5, 0.5]], [[0.5, 0.5], [0.4, 0.6]]], dtype=D),
    ]
    m = est.exact_aggregation_moments(policy, ref, "k3")
    _require(abs(m["token_sum_mean"] - m["kl_seq"]) < 1e-12 and abs(m["sequence_mean"] - m["kl_seq"]) < 1e-12, "means")
    _require(abs(m["token_sum_var"] - m["sequence_var"]) > 1e-3, "variances differ")
    _require(abs(m["token_mean"] - m["kl_seq"] / 3) < 1e-12, "token mean = KL / T")
    return {
        "sequence KL": m["kl_seq"],
        "Var, summed per-token k3": m["token_sum_var"],
        "Var, sequence-level k3": m["sequence_var"],
    }
