"""The claim ledger: the book's central claims, each with the condition under which it holds, the
section that proves it, and a check that recomputes it (rendered as the page ``book/claims.md``).

One source per claim. A claim is argued and computed in one section of one chapter (its
``source``, a MyST label); the interview short answers (:mod:`kltutor.interview`, field
``claims``), the cheat sheet and the docstrings restate it and point at that section. The check
here recomputes the claim from :mod:`kltutor` (exact enumeration, closed forms, sympy) and raises
:class:`ClaimError` if it does not hold, so a restatement that drifts from the computation is caught
by ``tests/test_claims.py``:

- every check passes (``verify``);
- every restatement links the claim's source section;
- no restatement repeats a version of the claim that has been found wrong (``refuted``), and every
  sentence that states the claim also states its condition (``needs_condition``).

>>> from kltutor import claims
>>> claims.get("grpo-half-split-advantage").source       # the section that proves it
'sec-preference-grpo'
>>> round(claims.verify("grpo-half-split-advantage")["G=4, unbiased std"], 4)   # the check, recomputed
0.866

Checks import what they need lazily, so importing this module (and :mod:`kltutor.interview`) is cheap.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Claim", "ClaimError", "CLAIMS", "GROUPS", "get", "verify", "format_value"]


class ClaimError(AssertionError):
    """Raised when a check does not confirm its claim."""


def _require(condition: object, message: str) -> None:
    if not bool(condition):
        raise ClaimError(message)


@dataclass(frozen=True)
class Claim:
    """One claim of the book.

    ``statement`` and ``condition`` are MyST Markdown (they are rendered on the ledger page);
    ``source`` is the label of the section that argues and computes the claim; ``check`` recomputes
    it and returns the values it checked (name -> number, bool or short text). ``refuted`` holds
    regular expressions for wrong versions that have appeared in the book; ``needs_condition`` holds
    pairs ``(trigger, condition)``: a sentence of a restatement that matches ``trigger`` must also
    match ``condition``. ``cheatsheet`` says whether a line of the cheat sheet restates the claim.
    """

    id: str
    group: str
    statement: str
    condition: str
    source: str
    check: Callable[[], dict[str, object]] = field(repr=False)
    checked_by: str = ""
    cheatsheet: bool = False
    refuted: tuple[str, ...] = ()
    needs_condition: tuple[tuple[str, str], ...] = ()


#: Ledger sections, in the book's order.
GROUPS: tuple[str, ...] = (
    "KL divergence",
    "Estimators",
    "Placements",
    "beta",
    "Preference optimisation and GRPO",
    "Over-optimisation",
    "Failure modes",
    "KL in practice",
)

_REGISTRY: dict[str, Claim] = {}


def _claim(id: str, group: str, statement: str, condition: str, source: str, checked_by: str = "", **kw):
    def register(fn: Callable[[], dict[str, object]]) -> Callable[[], dict[str, object]]:
        if id in _REGISTRY:
            raise ValueError(f"duplicate claim id {id!r}")
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}")
        _REGISTRY[id] = Claim(
            id, group, statement, condition, source, fn, checked_by or f"kltutor.claims.{fn.__name__}", **kw
        )
        return fn

    return register


# ============================================================================ KL divergence
@_claim(
    "kl-gibbs",
    "KL divergence",
    r"$\KL(p\|q)\ge0$, with equality only when $p=q$ (Gibbs' inequality).",
    "any two distributions on the same space",
    "sec-fundamentals-properties",
    cheatsheet=True,
)
def _kl_gibbs():
    import torch

    from kltutor.divergences import kl
    from kltutor.toys.distributions import random_categorical

    P = random_categorical(2000, 8, seed=1, concentration=0.5)
    Q = random_categorical(2000, 8, seed=2, concentration=0.5)
    d = kl(P, Q)
    _require((d > 0).all(), "KL must be positive for distinct random pairs")
    _require(torch.equal(kl(P, P), torch.zeros(2000, dtype=P.dtype)), "KL(p||p) must be exactly 0")
    return {"smallest KL over 2000 random pairs": d.min().item(), "KL(p||p)": 0.0}


@_claim(
    "kl-not-a-metric",
    "KL divergence",
    r"KL is asymmetric, $\KL(p\|q)\ne\KL(q\|p)$, and violates the triangle inequality: it is not a metric.",
    "in general (the examples are Bernoulli distributions)",
    "sec-fundamentals-properties",
    cheatsheet=True,
)
def _kl_not_a_metric():
    import torch

    from kltutor.divergences import kl

    def ber(t):
        return torch.tensor([t, 1 - t], dtype=torch.float64)

    ab, ba = kl(ber(0.5), ber(0.25)).item(), kl(ber(0.25), ber(0.5)).item()
    direct = kl(ber(0.9), ber(0.1)).item()
    via = kl(ber(0.9), ber(0.5)).item() + kl(ber(0.5), ber(0.1)).item()
    _require(abs(ab - ba) > 1e-3, "asymmetry example")
    _require(direct > via, "triangle inequality must fail on the example")
    return {
        "KL(Ber(.5)||Ber(.25))": ab,
        "KL(Ber(.25)||Ber(.5))": ba,
        "KL(Ber(.9)||Ber(.1)) / via Ber(.5)": direct / via,
    }


@_claim(
    "kl-support",
    "KL divergence",
    r"$\KL(p\|q)=+\infty$ when $q(x)=0$ for some $x$ with $p(x)>0$; outcomes with $p(x)=0$ contribute nothing.",
    r"conventions $0\log\frac0q=0$, $p\log\frac p0=+\infty$",
    "sec-fundamentals-definition",
)
def _kl_support():
    import torch

    from kltutor.divergences import kl

    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    pq, qp = kl(p, q).item(), kl(q, p).item()
    _require(abs(pq - math.log(2)) < 1e-15 and qp == math.inf, "support conventions")
    return {"KL(p||q)": pq, "KL(q||p)": "inf"}


@_claim(
    "kl-chain-rule",
    "KL divergence",
    r"The sequence-level KL is the expected sum of per-token full-vocabulary KLs along the policy's "
    r"prefixes, $\KL(\pitheta\|\piref)=\E_{y\sim\pitheta}\big[\sum_t\KL(\pitheta(\cdot|s_t)\|\piref(\cdot|s_t))\big]$, "
    r"and $\sum_t\ell_t$ on one rollout is an unbiased estimate of it.",
    "autoregressive policies; prefixes drawn from the policy",
    "sec-fundamentals-token-sequence",
    cheatsheet=True,
)
def _kl_chain_rule():
    from kltutor.toys.distributions import TabularAutoregressive, expected_token_kls, sampled_log_ratio_sum, sequence_kl

    ref = TabularAutoregressive.random(4, 5, seed=40)
    pol = ref.perturbed(0.6, seed=41)
    seq = sequence_kl(pol, ref)
    per_pos = float(expected_token_kls(pol, ref).sum())
    seqs, w = pol.all_sequences(), pol.sequence_probs()
    k1_mean = float((w * sampled_log_ratio_sum(pol, ref, seqs).sum(-1)).sum())
    _require(abs(seq - per_pos) < 1e-12 and abs(seq - k1_mean) < 1e-12, "chain rule on the tabular toy")
    return {
        "sequence KL": seq,
        "|sum of expected token KLs - sequence KL|": "< 1e-12",
        "|E[sum l_t] - sequence KL|": "< 1e-12",
    }


@_claim(
    "reverse-kl-zero-forcing",
    "KL divergence",
    r"The reverse KL $\KL(\pitheta\|\piref)$ is an expectation under the policy (estimable from its rollouts) "
    r"and is infinite if the policy puts mass where $\piref$ has none (zero-forcing); the forward KL "
    r"$\KL(\piref\|\pitheta)$ is infinite if the policy drops anything $\piref$ can produce (mass-covering). "
    r"Whether a reverse-KL fit settles on one mode depends on how well the modes are separated.",
    "exact statements about supports; mode-seeking is a tendency, shown on Gaussian fits",
    "sec-fundamentals-forward-reverse",
    cheatsheet=True,
    refuted=(r"(?<!tends to be )(?<!not )\bis mode-seeking(?![^.]*(separated|tend))",),
)
def _reverse_kl_zero_forcing():
    import torch

    from kltutor.divergences import kl

    ref = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    leaves = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)  # mass where pi_ref has none
    drops = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # drops a mode of pi_ref
    _require(kl(leaves, ref).item() == math.inf and math.isfinite(kl(ref, leaves).item()), "leaving the support")
    _require(math.isfinite(kl(drops, ref).item()) and kl(ref, drops).item() == math.inf, "dropping a mode")
    return {
        "reverse KL, policy leaves the support": "inf",
        "reverse KL, policy drops a mode": kl(drops, ref).item(),
        "forward KL, policy drops a mode": "inf",
    }


@_claim(
    "forward-kl-cross-entropy",
    "KL divergence",
    r"$\KL(\piref\|\pitheta)=-H(\piref)-\E_{\piref}[\log\pitheta]$: up to a constant the forward KL is the "
    r"cross-entropy of the policy on reference samples (an SFT loss).",
    "exact identity",
    "sec-interview-q24",
    cheatsheet=True,
)
def _forward_kl_cross_entropy():

    from kltutor.divergences import kl
    from kltutor.toys.distributions import random_categorical

    P = random_categorical(200, 6, seed=3)
    Q = random_categorical(200, 6, seed=4)
    entropy = -(Q * Q.log()).sum(-1)
    cross_entropy = -(Q * P.log()).sum(-1)
    err = (kl(Q, P) - (-entropy + cross_entropy)).abs().max().item()
    _require(err < 1e-12, "forward KL = -H(ref) + cross-entropy")
    return {"max |KL(ref||pi) - (-H(ref) - E_ref log pi)| over 200 pairs": "< 1e-12"}


@_claim(
    "kl-chi2-bound",
    "KL divergence",
    r"$\KL(p\|q)\le\log(1+\chi^2(p\|q))$, with $\chi^2(p\|q)=\sum_x p(x)^2/q(x)-1$.",
    "any $p$, $q$ (Jensen on the concave logarithm)",
    "sec-fundamentals-relations",
)
def _kl_chi2_bound():
    from kltutor.derivations import fundamentals as fundamentals_proofs
    from kltutor.divergences import chi2, kl
    from kltutor.toys.distributions import random_categorical

    _require(fundamentals_proofs.kl_chi2_bound() is True, "sympy")
    P = random_categorical(2000, 8, seed=30, concentration=0.1)
    Q = random_categorical(2000, 8, seed=31, concentration=0.1)
    slack = (chi2(P, Q).log1p() - kl(P, Q)).min().item()
    _require(slack >= 0, "bound violated")
    return {"smallest slack over 2000 peaked pairs": slack}


# ============================================================================ estimators
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


# ============================================================================ placements
def _toy():
    from kltutor.toys import BinaryAutoregressive

    return BinaryAutoregressive(0.3, -0.4), BinaryAutoregressive(-0.2, 0.5)


def _max_err(a, b) -> float:
    return float((a - b).abs().max())


@_claim(
    "k1-in-reward-exact",
    "Placements",
    r"On-policy, k1 in the reward (a detached penalty in the return-to-go) gives exactly the gradient of the "
    r"sequence-level reverse KL, at any length.",
    r"samples from $\pitheta$, penalties summed over tokens (no discounting)",
    "sec-placements-exact",
    cheatsheet=True,
)
def _k1_in_reward_exact():
    from kltutor import gradients as G

    pi, ref = _toy()
    errs = [
        _max_err(G.exact_kl_gradients(pi, ref, T)["k1-in-reward"], G.exact_kl_gradients(pi, ref, T)["true"])
        for T in (1, 3, 6)
    ]
    _require(max(errs) < 1e-12, "k1-in-reward must be exact")
    return {"max error over T = 1, 3, 6": "< 1e-12"}


@_claim(
    "k1-in-loss-zero",
    "Placements",
    r"k1 in the loss has expected gradient zero: $\E_{\pitheta}[\nabla\log\pitheta]=0$.",
    r"samples from $\pitheta$",
    "sec-placements-exact",
    cheatsheet=True,
)
def _k1_in_loss_zero():
    from kltutor import gradients as G

    pi, ref = _toy()
    g = G.exact_kl_gradients(pi, ref, 5)["k1-in-loss"]
    _require(float(g.abs().max()) < 1e-12, "k1-in-loss must be zero in expectation")
    return {"max |expected gradient|, T = 5": "< 1e-12"}


@_claim(
    "k2-in-loss",
    "Placements",
    r"k2 in the loss follows the reverse-KL gradient for one token, and for sequence-level k2 "
    r"$\tfrac12(\sum_t\ell_t)^2$ at any length. Token-level k2 on sequences of $T>1$ tokens is biased: it misses "
    r"the cross terms $\E[g_t\ell_s]$, $s>t$.",
    r"samples from $\pitheta$",
    "sec-placements-exact",
    cheatsheet=True,
    needs_condition=(
        (
            r"k2[- ]in[- ](?:the )?loss`?[^.;|]{0,40}?\b(?:follows?|gives?|give|equals?|agrees?|agree|delivers?|matches|is exact)\b",
            r"one token|one-token|single token|single-step|for a token|sequence-level|summed|T\s*=\s*1|T>1|T > 1|"
            r"per-token|per token|token-level|token-local|not for",
        ),
    ),
)
def _k2_in_loss():
    from kltutor import gradients as G

    pi, ref = _toy()
    one = G.exact_kl_gradients(pi, ref, 1)
    tok = G.exact_kl_gradients(pi, ref, 5, level="token")
    seq = G.exact_kl_gradients(pi, ref, 5, level="sequence")
    _require(_max_err(one["k2-in-loss"], one["true"]) < 1e-12, "T = 1")
    _require(_max_err(seq["k2-in-loss"], seq["true"]) < 1e-12, "sequence-level k2")
    bias = _max_err(tok["k2-in-loss"], tok["true"])
    _require(bias > 0.1, "token-level k2 must be biased at T = 5")
    from kltutor.derivations import placements as placements_proofs

    _require(
        placements_proofs.one_token_k2_loss_equals_k1_reward() and placements_proofs.token_k2_misses_cross_terms(),
        "sympy",
    )
    return {"token-level k2, T = 5: largest gradient error": bias, "T = 1 or sequence-level k2": "exact (< 1e-12)"}


@_claim(
    "k3-in-loss-forward",
    "Placements",
    r"On-policy, token-level k3 in the loss follows $\sum_t\E_{s_t\sim\pitheta}\big[\nabla\KL(\piref(\cdot|s_t)\|\pitheta(\cdot|s_t))\big]$: "
    r"the forward KL *per token, at the policy's own prefixes*, with no gradient through which prefixes are visited. "
    r"For one token that is $\nabla\KL(\piref\|\pitheta)$; on sequences it is neither the reverse- nor the "
    r"forward-KL gradient of the sequence. k3 of the summed log-ratio gives the sequence forward-KL gradient.",
    r"samples from $\pitheta$",
    "sec-placements-mistakes",
    cheatsheet=True,
    needs_condition=(
        (
            r"k3[- ]in[- ](?:the )?loss`?[^.;|]{0,80}?\b(?:follows?|gives?|has|is|agrees?)\b[^.;|]{0,60}?forward[- ]KL",
            r"one token|one-token|single token|per[- ]token|prefix|sequence-level|states|for a token|"
            r"T\s*=\s*1|token-level|summed",
        ),
    ),
)
def _k3_in_loss_forward():
    import torch

    from kltutor import gradients as G
    from kltutor.derivations import placements as placements_proofs
    from kltutor.toys.autoregressive import all_binary_sequences

    _require(
        placements_proofs.k3_in_loss_is_forward_kl_gradient() and placements_proofs.placement_gradients(),
        "sympy, one token",
    )
    pi, ref = _toy()
    T = 5
    tok = G.exact_kl_gradients(pi, ref, T, level="token")
    seq = G.exact_kl_gradients(pi, ref, T, level="sequence")
    seqs = all_binary_sequences(T)
    with torch.no_grad():
        w = pi.sequence_logprobs(seqs).exp()
        q_seq = ref.sequence_logprobs(seqs).exp()
        r1 = torch.sigmoid(ref.logits(seqs))
    p1 = torch.sigmoid(pi.logits(seqs))
    fwd_t = r1 * (r1.log() - p1.log()) + (1 - r1) * ((1 - r1).log() - (1 - p1).log())
    g_tok_fwd = torch.stack(torch.autograd.grad((w[:, None] * fwd_t).sum(), [pi.a, pi.b]))
    g_seq_fwd = torch.stack(torch.autograd.grad(-(q_seq * pi.sequence_logprobs(seqs)).sum(), [pi.a, pi.b]))
    _require(_max_err(tok["k3-in-loss"], g_tok_fwd) < 1e-12, "token-level k3 = per-token forward KL at policy prefixes")
    _require(_max_err(seq["k3-in-loss"], g_seq_fwd) < 1e-12, "sequence-level k3 = sequence forward KL")
    off_fwd, off_rev = _max_err(tok["k3-in-loss"], g_seq_fwd), _max_err(tok["k3-in-loss"], tok["true"])
    _require(off_fwd > 0.05 and off_rev > 0.1, "token-level k3 is neither sequence gradient")
    return {
        "T = 5, token-level k3 vs sequence forward-KL gradient": off_fwd,
        "T = 5, token-level k3 vs reverse-KL gradient": off_rev,
    }


@_claim(
    "offpolicy-prefix-weight",
    "Placements",
    r"On stale samples (from $\piold$), a per-token importance weight $w_t$ makes an in-loss KL term exact "
    r"for one token only; on sequences the prefix product $\prod_{s\le t}w_s$ is needed.",
    r"samples from $\piold\neq\pitheta$ (several updates per batch)",
    "sec-placements-off-policy",
    needs_condition=(
        (
            r"importance weight[^.;]*(?:each|every|per)[- ](?:term|token)|(?:per-token|each token)[^.;]*importance weight",
            r"prefix|one token|single token|single-step|not enough|only",
        ),
    ),
)
def _offpolicy_prefix_weight():
    from kltutor import gradients as G
    from kltutor.toys import BinaryAutoregressive

    pi, ref = _toy()
    old = BinaryAutoregressive(0.1, -0.1)
    t1 = _max_err(
        G.offpolicy_kl_loss_gradient(pi, old, ref, 1, "k3", "token"), G.exact_kl_gradients(pi, ref, 1)["true"]
    )
    t5 = _max_err(
        G.offpolicy_kl_loss_gradient(pi, old, ref, 5, "k3", "token"), G.exact_kl_gradients(pi, ref, 5)["true"]
    )
    p5 = _max_err(
        G.offpolicy_kl_loss_gradient(pi, old, ref, 5, "k3", "prefix"), G.exact_kl_gradients(pi, ref, 5)["true"]
    )
    _require(t1 < 1e-12 and p5 < 1e-12 and t5 > 0.05, "importance weights")
    return {"T = 5, per-token weight: gradient error": t5, "T = 1 per-token, T = 5 prefix weight": "exact (< 1e-12)"}


@_claim(
    "clip-removes-in-reward-kl",
    "Placements",
    r"When PPO's clipped branch is the minimum for a token, its whole gradient is zero, KL penalty included; "
    r"a KL term in the loss keeps its gradient.",
    "KL in the reward, several updates per batch",
    "sec-placements-clipping",
)
def _clip_removes_in_reward_kl():
    import torch

    from kltutor import placements as pl

    D = torch.float64
    logp = torch.tensor([[-0.40, -1.10, -0.70]], dtype=D, requires_grad=True)
    old_logp = torch.tensor([[-0.80, -1.05, -0.70]], dtype=D)
    ref_logp = torch.tensor([[-0.10, -0.60, -0.20]], dtype=D)
    mask = torch.ones_like(old_logp)
    rewards = pl.shaped_rewards(torch.tensor([0.0], dtype=D), logp, ref_logp, mask, 0.5, estimator="k1")
    adv = pl.returns_to_go(rewards, mask)
    surr, _ = pl.clipped_surrogate(logp, old_logp, adv, mask, clip_eps=0.2)
    (g_reward,) = torch.autograd.grad(surr, logp)
    (g_loss,) = torch.autograd.grad(0.5 * pl.kl_loss(logp, ref_logp, mask, "k3"), logp)
    _require(g_reward[0, 0].item() == 0.0 and adv[0, 0].item() > 0 and g_loss[0, 0].item() != 0.0, "clipping")
    return {
        "gradient of the clipped token (KL in reward)": 0.0,
        "its gradient with k3 in the loss": g_loss[0, 0].item(),
    }


# ============================================================================ beta
@_claim(
    "beta-exchange-rate",
    "beta",
    r"Scaling the reward by $c>0$ is the same as dividing $\beta$ by $c$: $\pi^*(cr,\beta)=\pi^*(r,\beta/c)$; "
    r"$\beta$ only means something relative to the reward's scale, the estimator and the token aggregation.",
    "KL-regularised optimum",
    "sec-schedules-scale",
    cheatsheet=True,
)
def _beta_exchange_rate():
    from kltutor.derivations import schedules as schedules_proofs

    _require(schedules_proofs.reward_scale_equivalence(), "sympy")
    return {"pi*(c r, beta) = pi*(r, beta / c)": True}


@_claim(
    "kl-falls-with-beta",
    "beta",
    r"The optimum's KL and reward fall as $\beta$ grows, $d\KL/d\beta=-\mathrm{Var}_{\pi^*}(r)/\beta^3$, "
    r"$d\E[r]/d\beta=-\mathrm{Var}_{\pi^*}(r)/\beta^2$; on a finite bandit the KL never exceeds $-\log\piref(\text{best})$.",
    "KL-regularised optimum",
    "sec-schedules-monotone",
)
def _kl_falls_with_beta():
    import torch

    from kltutor.derivations import schedules as schedules_proofs
    from kltutor.toys import KLBandit

    _require(schedules_proofs.reward_derivative() and schedules_proofs.kl_derivative(), "sympy")
    bandit = KLBandit.random(8, torch.Generator().manual_seed(0))
    kls = [bandit.optimal_kl(b) for b in (100.0, 1.0, 0.1, 0.01, 0.001)]
    _require(
        all(a <= b for a, b in zip(kls, kls[1:])) and kls[0] < kls[1] and kls[-1] <= bandit.max_kl() + 1e-12,
        "monotone, capped",
    )
    return {"KL at beta = 0.001": kls[-1], "cap -log pi_ref(best)": bandit.max_kl()}


@_claim(
    "beta-symptoms",
    "beta",
    r"$\beta$ too large: the KL stays near 0 and the reward barely moves. $\beta$ too small for the reward's "
    r"scale: the KL climbs to the greedy limit and entropy collapses.",
    "exact-gradient training of a softmax bandit; with a learned reward the second case is where over-optimisation lives",
    "sec-failures-collapse",
    cheatsheet=True,
)
def _beta_symptoms():
    import torch

    from kltutor import failures as fl

    g = torch.Generator().manual_seed(0)
    reward = torch.randn(10, generator=g, dtype=torch.float64)
    ref = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    big = fl.train_bandit(ref, reward, 5.0, steps=300, lr=0.5)
    small = fl.train_bandit(ref, 5.0 * reward, 0.001, steps=300, lr=0.5)
    cap = -math.log(float(ref[int(reward.argmax())]))
    _require(big["kl"][-1] < 0.05 and small["kl"][-1] > 0.95 * cap, "symptoms")
    return {
        "KL after 300 steps, beta = 5": big["kl"][-1],
        "KL after 300 steps, beta = 0.001, reward x5": small["kl"][-1],
        "greedy cap": cap,
    }


@_claim(
    "adaptive-beta-integral",
    "beta",
    r"Ziegler et al.'s controller $\beta\leftarrow\beta(1+K_\beta e_t)$, $e_t=\operatorname{clip}(\KL_t/\KL_\text{target}-1,\pm0.2)$, "
    r"accumulates the clipped error in $\log\beta$ (integral action on $\log\beta$); one step changes $\beta$ by a "
    r"factor of at most $1\pm0.2K_\beta$.",
    r"$K_\beta$ = n_steps / horizon",
    "sec-schedules-integral",
    cheatsheet=True,
    refuted=(r"more than 20%(?![^.]*K)",),
)
def _adaptive_beta_integral():
    from kltutor import schedules as S
    from kltutor.derivations import schedules as schedules_proofs

    _require(schedules_proofs.adaptive_beta_integrates_error(), "sympy")
    c = S.AdaptiveKLController(1.0, 1.0, horizon=10)
    up = c.update(100.0, n_steps=5)
    _require(abs(up - 1.1) < 1e-12, "one step moves beta by at most 1 + 0.2 K")
    return {"beta after one step at KL = 100 x target, K = 0.5": up}


@_claim(
    "binary-optimum-raw",
    "beta",
    r"For a raw 0/1 reward with success rate $p_0$ under $\piref$, the optimum of $\E[r]-\beta\KL$ has success "
    r"rate $q^*=p_0e^{1/\beta}/(p_0e^{1/\beta}+1-p_0)$ and $\KL(\pi^*\|\piref)\le\log(1/p_0)$.",
    "the unnormalised objective (e.g. k1-in-reward with raw rewards), one prompt; not GRPO's normalised update",
    "sec-interview-q18",
)
def _binary_optimum_raw():
    import sympy as sp

    from kltutor.derivations import schedules as schedules_proofs

    _require(schedules_proofs.binary_reward_optimum(), "sympy")
    ex = schedules_proofs.binary_optimum_expressions()
    fail = float(ex["fail"].subs({ex["p0"]: sp.Rational(1, 10), ex["beta"]: sp.Rational(1, 25)}))
    return {"p0 = 0.1, beta = 0.04: failure rate of the optimum": fail, "KL cap log(1/p0)": math.log(10)}


@_claim(
    "grpo-normalised-binary",
    "beta",
    r"GRPO's group normalisation changes the objective: for a 0/1 reward its expected policy-gradient step is "
    r"$w_G(q)\,\nabla q$, with a weight that depends on the current success rate $q$ (tending to "
    r"$1/\sqrt{q(1-q)}$ as $G$ grows), not $\nabla q$. Hard and easy prompts are up-weighted, and with a KL term "
    r"the fixed point is not the raw-reward optimum $q^*(\beta)$.",
    "on-policy, one prompt, a group of $G$ samples, unbiased std, no eps; mixed groups only (equal groups give 0)",
    "sec-interview-q18",
)
def _grpo_normalised_binary():
    import torch

    from kltutor import grpo

    def weight(q: float, G: int) -> float:
        # two outcomes, logit theta: d log pi(success) = 1 - q, d log pi(failure) = -q; dq/dtheta = q (1 - q)
        tot = 0.0
        for k in range(1, G):
            a = grpo.group_advantages(torch.tensor([1.0] * k + [0.0] * (G - k), dtype=torch.float64), G, eps=0.0)
            pk = math.comb(G, k) * q**k * (1 - q) ** (G - k)
            tot += pk * (k * a[0].item() * (1 - q) + (G - k) * a[-1].item() * (-q)) / G
        return tot / (q * (1 - q))

    out = {}
    for G in (4, 256):
        ws = {q: weight(q, G) * math.sqrt(q * (1 - q)) for q in (0.1, 0.5, 0.9)}
        out[f"G = {G}: w_G(q) sqrt(q(1-q)) at q = 0.1, 0.5"] = f"{ws[0.1]:.3f}, {ws[0.5]:.3f}"
        _require(abs(ws[0.1] - ws[0.9]) < 1e-12, "symmetric in q")
        if G == 256:
            _require(all(0.98 < v <= 1.0 for v in ws.values()), "large-G limit 1/sqrt(q(1-q))")
    _require(weight(0.1, 256) > 1.5 * weight(0.5, 256), "hard prompts up-weighted")
    return out


# ============================================================================ preference optimisation and GRPO
@_claim(
    "optimal-policy",
    "Preference optimisation and GRPO",
    r"$\max_\pi\E_\pi[r]-\beta\KL(\pi\|\piref)$ has the unique maximiser $\pi^*=\piref e^{r/\beta}/Z$ with value "
    r"$\beta\log Z$, because $J(\pi)=\beta\log Z-\beta\KL(\pi\|\pi^*)$.",
    r"$\beta>0$, one prompt, any reward (Bradley–Terry is not needed)",
    "sec-preference-optimum",
    cheatsheet=True,
)
def _optimal_policy():
    from kltutor.derivations import preference as preference_proofs

    _require(preference_proofs.closed_form_optimum(), "sympy")
    return {"closed form, strict concavity, J = beta log Z - beta KL(pi||pi*)": True}


@_claim(
    "dpo-loss-gradient",
    "Preference optimisation and GRPO",
    r"Inverting $\pi^*$ gives $r=\beta\log\frac{\pi^*}{\piref}+\beta\log Z$; under Bradley–Terry $\beta\log Z$ cancels "
    r"in pairs, which gives the DPO loss; its gradient weights each pair by $\sigma(\hat r_l-\hat r_w)$.",
    "Bradley–Terry preferences; the policy class can represent the optimum",
    "sec-preference-dpo",
    cheatsheet=True,
)
def _dpo_loss_gradient():
    from kltutor.derivations import preference as preference_proofs

    _require(preference_proofs.dpo_from_optimum() and preference_proofs.dpo_gradient(), "sympy")
    return {"log Z cancels; gradient weight sigma(r_l - r_w)": True}


@_claim(
    "implicit-reward-not-kl",
    "Preference optimisation and GRPO",
    r"The implicit reward $\hat r_\theta=\beta\log(\pitheta/\piref)$ averages to $\beta\KL(\pitheta\|\piref)$ under "
    r"$\pitheta$ but to $-\beta\KL(\piref\|\pitheta)\le0$ under $\piref$: on preference data it is not a KL estimate.",
    "exact; preference data not drawn from the policy",
    "sec-preference-dpo",
)
def _implicit_reward_not_kl():
    from kltutor.derivations import preference as preference_proofs

    _require(preference_proofs.implicit_reward_mean_is_kl(), "sympy")
    return {"E_pi[r_hat] = beta KL(pi||ref), E_ref[r_hat] = -beta KL(ref||pi)": True}


def _lbfgs_tabular(loss_of_logp, n: int, init=None):
    import torch

    th = (torch.zeros(n, dtype=torch.float64) if init is None else init.clone()).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [th], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = loss_of_logp(torch.log_softmax(th, 0))
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(th.detach(), 0)


def _pairs(n: int):
    import torch

    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    return i[keep], j[keep]


@_claim(
    "dpo-rl-same-optimum",
    "Preference optimisation and GRPO",
    r"DPO and KL-regularised RL share the optimum $\pi^*$ only under Bradley–Terry with pairs that cover every "
    r"response and infinite data (the population loss). On finite data a response that wins and never loses has "
    r"no finite maximum-likelihood reward: the empirical DPO loss keeps falling as its log-ratio grows, whatever "
    r"$\beta$, while RL against a fitted reward model keeps the KL anchor (the IPO argument).",
    "population versus empirical DPO loss, tabular policy",
    "sec-preference-finite",
    cheatsheet=True,
    needs_condition=(
        (
            r"[Ss]ame (?:objective|fixed point|optimum)",
            r"Bradley|cover|infinite|population|finite data|conditions|only (?:under|when|with|in)",
        ),
    ),
)
def _dpo_rl_same_optimum():
    import torch
    import torch.nn.functional as F

    from kltutor import preference as pref

    D64 = torch.float64
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, generator=g, dtype=D64)
    ref = torch.softmax(torch.randn(5, generator=g, dtype=D64), 0)
    beta = 0.5
    i, j = _pairs(5)
    w = ref[i] * ref[j] * torch.sigmoid(r[i] - r[j])  # P(draw (i, j) and i wins)

    def population(logp):
        h = beta * ((logp[i] - ref.log()[i]) - (logp[j] - ref.log()[j]))
        return -(w * F.logsigmoid(h)).sum()

    pi = _lbfgs_tabular(population, 5, init=ref.log())
    gap = (pi - pref.optimal_policy(ref, r, beta)).abs().max().item()
    _require(gap < 1e-6, f"population DPO minimiser must be pi* (gap {gap:.1e})")
    # finite data: response 0 wins its two comparisons and never loses
    chosen, rejected = torch.tensor([0, 0, 2]), torch.tensor([1, 2, 3])
    worst = -math.inf
    for s in range(20):
        th = torch.randn(5, generator=torch.Generator().manual_seed(s), dtype=D64).mul(3).requires_grad_(True)
        lp = torch.log_softmax(th, 0)
        loss = pref.dpo_loss(lp[chosen], lp[rejected], ref.log()[chosen], ref.log()[rejected], beta).loss
        (grad,) = torch.autograd.grad(loss, th)
        worst = max(worst, grad[0].item())
    _require(worst < 0, "the never-losing response's logit must always decrease the empirical loss")
    return {
        "max |population DPO minimiser - pi*|": "< 1e-6",
        "largest d loss / d logit of the never-losing response": worst,
    }


@_claim(
    "ipo-target",
    "Preference optimisation and GRPO",
    r"IPO's population minimiser is $\piref e^{p(y\succ\mu)/\tau}/Z$, the regularised optimum of the win rate "
    r"against the data distribution $\mu$, not DPO's $\pi^*$: at $\tau=\beta$ it stays much closer to the reference.",
    r"pairs drawn from $\mu$, labels from a Bradley–Terry model",
    "sec-preference-lab",
)
def _ipo_target():
    import torch

    from kltutor import preference as pref

    D64 = torch.float64
    g = torch.Generator().manual_seed(1)
    r = torch.randn(5, generator=g, dtype=D64)
    ref = torch.softmax(torch.randn(5, generator=g, dtype=D64), 0)
    tau = 0.5
    i, j = _pairs(5)
    pw, c0 = torch.sigmoid(r[i] - r[j]), 1 / (2 * tau)
    w = ref[i] * ref[j]

    def population(logp):
        h = (logp[i] - ref.log()[i]) - (logp[j] - ref.log()[j])
        return (w * (pw * (h - c0) ** 2 + (1 - pw) * (h + c0) ** 2)).sum()

    pi = _lbfgs_tabular(population, 5, init=ref.log())
    target = pref.ipo_optimal_policy(ref, r, tau, ref)
    gap = (pi - target).abs().max().item()
    _require(gap < 1e-6, f"IPO minimiser (gap {gap:.1e})")
    kl_ipo, kl_star = (
        pref.categorical_kl(target, ref).item(),
        pref.categorical_kl(pref.optimal_policy(ref, r, tau), ref).item(),
    )
    _require(kl_ipo < kl_star, "IPO target closer to the reference")
    return {"KL(IPO target || ref)": kl_ipo, "KL(pi* || ref)": kl_star}


@_claim(
    "simpo-length",
    "Preference optimisation and GRPO",
    r"SimPO's length normalisation replaces DPO's sequence log-ratio by the mean per-token log-likelihood "
    r"$\log\pitheta(y)/|y|$ and drops the reference. It does not remove length effects: a response's probability is "
    r"$e^{|y|\cdot\text{score}/\beta}$, so a long response that is not ranked first is crushed.",
    "population SimPO loss on noisy Bradley–Terry pairs (a finite optimum exists)",
    "sec-preference-simpo-length",
    cheatsheet=True,
    refuted=(r"length[- ]normali[sz]ation[^.;]*(?<!not )\bremoves?\b",),
)
def _simpo_length():
    import torch

    from kltutor import preference as pref

    D64 = torch.float64
    r = torch.tensor([1.0, 0.5, 0.0, -0.5], dtype=D64)  # response 1 is the second best ...
    lengths = torch.tensor([3.0, 20.0, 3.0, 3.0], dtype=D64)  # ... and the only long one
    mu = torch.full((4,), 0.25, dtype=D64)
    i, j = _pairs(4)
    w, pw = mu[i] * mu[j], torch.sigmoid(r[i] - r[j])

    def population(logp):
        total = 0
        for a, b, wk, pk in zip(i.tolist(), j.tolist(), w, pw):  # pref.simpo_loss per pair: its .loss keeps the graph
            win = pref.simpo_loss(
                logp[a : a + 1], logp[b : b + 1], lengths[a : a + 1], lengths[b : b + 1], 2.0, 0.5
            ).loss
            lose = pref.simpo_loss(
                logp[b : b + 1], logp[a : a + 1], lengths[b : b + 1], lengths[a : a + 1], 2.0, 0.5
            ).loss
            total = total + wk * (pk * win + (1 - pk) * lose)
        return total

    pi = _lbfgs_tabular(population, 4)
    star = pref.optimal_policy(mu, r, 0.5)
    _require(pi[1] < pi[2:].min() / 10 and star[1] > star[2:].max(), "SimPO crushes the long second-best response")
    return {
        "SimPO optimum: P(second best, 20 tokens)": f"{pi[1].item():.1e}",
        "P(third and fourth, 3 tokens)": f"{pi[2].item():.2f}, {pi[3].item():.3f}",
        "pi* (beta = 0.5): P(second best)": f"{star[1].item():.2f}",
    }


@_claim(
    "kto-reference-point",
    "Preference optimisation and GRPO",
    r"KTO defines its reference point as $z_0=\KL(\pitheta\|\piref)$ and computes it as "
    r"$\max\big(0,\text{mean log-ratio on mismatched prompt–completion pairs}\big)$, detached: a biased estimate "
    r"(its authors' words), and 0 whenever those completions are closer to $\piref$ than to $\pitheta$.",
    "as implemented in the KTO paper and `kltutor.preference.kto_loss`",
    "sec-preference-kto-orpo",
    cheatsheet=True,
    needs_condition=(
        (
            r"KTO[^.;]{0,80}(?:KL reference point|reference point[^.;]{0,20}\b(?:is|=)|uses an? [^.;]{0,30}KL)",
            r"mismatched|biased|clamp|baseline|max\(0",
        ),
    ),
)
def _kto_reference_point():
    import torch

    from kltutor import preference as pref

    D64 = torch.float64
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=D64)
    pol = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D64)
    raw_ref = (ref * (pol.log() - ref.log())).sum().item()  # mean log-ratio over reference completions
    _require(abs(raw_ref + pref.categorical_kl(ref, pol).item()) < 1e-15, "= -KL(ref||pi)")
    # a batch holding each completion in proportion to ref (4, 3, 2, 1 copies)
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([4, 3, 2, 1]))
    out = pref.kto_loss(
        pol.log()[batch],
        ref.log()[batch],
        torch.ones(len(batch), dtype=torch.bool),
        pol.log()[batch],
        ref.log()[batch],
        0.1,
    )
    _require(out.extras["z0"].item() == 0.0 and not out.extras["z0"].requires_grad, "clamped at 0, detached")
    return {
        "mean log-ratio on reference completions": raw_ref,
        "z0": 0.0,
        "KL(pi||ref)": pref.categorical_kl(pol, ref).item(),
    }


@_claim(
    "grpo-half-split-advantage",
    "Preference optimisation and GRPO",
    r"A group whose rewards are split half and half between two values gets advantages "
    r"$\pm\sqrt{(G-1)/G}$ with GRPO's unbiased standard deviation ($\pm0.866$ at $G=4$) and $\pm1$ with the "
    r"population one, whatever the gap between the two values.",
    "$G$ even, `eps = 0`, no `clip_std`, the two values distinct in the reward's dtype",
    "sec-preference-grpo",
    refuted=(r"pm\s*\\?sqrt\{?\(?G\s*/\s*\(?4\s*\(G\s*-\s*1\)",),
)
def _grpo_half_split_advantage():
    import torch

    from kltutor import grpo

    out = {}
    for G in (2, 4, 8, 16):
        for gap in (1.0, 2e-5):
            x = torch.tensor([1.0, 1.0 + gap] * (G // 2), dtype=torch.float64)
            a = grpo.group_advantages(x, G, eps=0.0)
            pop = (x - x.mean()) / x.std(unbiased=False)
            _require(
                abs(a[1].item() - math.sqrt((G - 1) / G)) < 1e-9 and abs(pop[1].item() - 1) < 1e-9, f"G={G}, gap={gap}"
            )
        out[f"G={G}, unbiased std"] = math.sqrt((G - 1) / G)
    out["population std"] = 1.0
    return out


@_claim(
    "grpo-precision",
    "Preference optimisation and GRPO",
    r"The half-split advantage does not depend on the precision: float32 rewards give $\pm\sqrt{(G-1)/G}$ too. "
    r"Precision matters only when the gap falls below the dtype's spacing (about $1.2\times10^{-7}$ near 1 in "
    r"float32): the group then collapses to equal rewards, advantage 0 with an `eps` and NaN without.",
    "`kltutor.grpo.group_advantages` (statistics in float64 after the cast)",
    "sec-preference-grpo",
    needs_condition=((r"(?:needs?|requires?)[^.;]*float64", r"spacing|below|resolution|collapse|gap"),),
)
def _grpo_precision():
    import torch

    from kltutor import grpo

    a32 = grpo.group_advantages(torch.tensor([1.0, 1.00001] * 2, dtype=torch.float32), 4, eps=0.0)
    _require(abs(a32[1].item() - math.sqrt(0.75)) < 1e-6, "float32 gives the same advantage")
    tiny = torch.tensor([1.0, 1.0 + 5e-8] * 2, dtype=torch.float32)
    _require(bool((tiny == 1.0).all()), "5e-8 is below float32's spacing at 1")
    _require(
        torch.isnan(grpo.group_advantages(tiny, 4, eps=0.0)).all() and (grpo.group_advantages(tiny, 4) == 0).all(),
        "collapsed group",
    )
    return {"float32, gap 1e-5": a32[1].item(), "float32 spacing at 1": torch.finfo(torch.float32).eps}


@_claim(
    "group-std-bound",
    "Preference optimisation and GRPO",
    r"For rewards in $[0,1]$ a group's population variance is at most $\tfrac14$ and its unbiased variance at most "
    r"$\tfrac{G}{4(G-1)}$ (both reached by a half-0, half-1 group, $G$ even), so dividing by the std always enlarges differences.",
    r"rewards in $[0, 1]$, $G\ge2$",
    "sec-preference-grpo",
)
def _group_std_bound():
    import itertools

    import torch

    from kltutor.derivations import preference as preference_proofs

    _require(preference_proofs.group_std_bound(), "sympy")
    for G in (2, 3, 4, 5, 6):
        b = torch.tensor(list(itertools.product([0.0, 1.0], repeat=G)), dtype=torch.float64)
        _require(
            abs(b.var(-1, unbiased=False).max().item() - (0.25 if G % 2 == 0 else 0.25 - 0.25 / G**2)) < 1e-12,
            f"pop, G={G}",
        )
        _require(b.var(-1).max().item() <= G / (4 * (G - 1)) + 1e-12, f"unbiased bound, G={G}")
    return {"max unbiased std, G = 4": math.sqrt(4 / 12), "max population std": 0.5}


# ============================================================================ over-optimisation
@_claim(
    "bon-kl",
    "Over-optimisation",
    r"$\KL(\pi_\text{bon}\|\piref)\le\log n-\frac{n-1}{n}$, with equality iff the reward has no atoms under $\piref$ "
    r"(a continuous distribution). Any discrete reference gives strictly less, even when every response has its "
    r"own reward, because two of the $n$ draws can be the same response (two equally likely responses, $n=2$: 0.1308 against 0.1931).",
    "ties among the draws broken uniformly at random",
    "sec-overoptimization-best-of-n",
    cheatsheet=True,
    refuted=(r"without ties", r"never tie", r"only without ties"),
    needs_condition=(
        (
            r"(?:log n\s*-\s*\(n\s*-\s*1\)\s*/\s*n|\\log n\s*-\s*\\frac\{n-1\}\{n\}|log n-\(n-1\)/n)"
            r"[^.;]{0,60}\b(?:is (?:the )?exact|as exact|exactly|equality|equal to the KL)\b"
            r"|\b(?:equality|exact KL is|KL is exactly)\b[^.;]{0,40}(?:log n\s*-\s*\(n|\\log n\s*-\s*\\frac)",
            r"continuous|atom",
        ),
    ),
)
def _bon_kl():
    import torch

    from kltutor import overoptimization as oo
    from kltutor.derivations import overoptimization as overoptimization_proofs

    _require(overoptimization_proofs.best_of_n_continuous_kl(), "sympy, continuous case")
    _require(overoptimization_proofs.best_of_n_kl_bound_with_ties(), "sympy, 0/1 reward")
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(100):
        k = int(torch.randint(2, 30, (1,), generator=g))
        p = torch.distributions.Dirichlet(torch.ones(k, dtype=torch.float64)).sample()
        r = torch.randperm(k, generator=g).double()
        for n in (2, 8, 64):
            ratio = oo.best_of_n_kl(p, r, n) / oo.best_of_n_kl_formula(n)
            _require(ratio < 1, "distinct rewards on a discrete support: strictly below the formula")
            worst = max(worst, ratio)
    two, formula = oo.best_of_n_kl([0.5, 0.5], [0.0, 1.0], 2), oo.best_of_n_kl_formula(2)
    near = oo.best_of_n_kl([1e-3] * 1000, list(range(1000)), 4) / oo.best_of_n_kl_formula(4)
    _require(near > 0.9999, "many equally likely responses approach the continuous case")
    return {
        "two equally likely responses, n = 2: exact": two,
        "log 2 - 1/2": formula,
        "1000 equally likely responses, n = 4: exact / formula": near,
    }


@_claim(
    "bon-kl-cap",
    "Over-optimisation",
    r"Best-of-$n$'s KL never exceeds $-\log\piref(\text{top reward class})$: for a 0/1 reward at most $\log(1/p)$, however large $n$.",
    "discrete reward",
    "sec-overoptimization-best-of-n",
)
def _bon_kl_cap():
    from kltutor import overoptimization as oo

    p = 0.1
    kls = [oo.best_of_n_kl([p, 1 - p], [1.0, 0.0], n) for n in (1, 16, 256, 4096)]
    _require(all(a <= b for a, b in zip(kls, kls[1:])) and kls[-1] <= math.log(1 / p), "capped")
    return {"p = 0.1, n = 4096": kls[-1], "log(1/p)": math.log(1 / p)}


@_claim(
    "gao-peak-budget",
    "Over-optimisation",
    r"For Gao et al.'s best-of-$n$ form $R(d)=d(\alpha-b\,d)$, $d=\sqrt\KL$: $d^*=\alpha/2b$, $\KL^*=\alpha^2/4b^2$, "
    r"$R^*=\alpha^2/4b$; stopping at $\KL^*/2$ keeps $\sqrt2-\tfrac12\approx91\%$ of the peak gain (RL form "
    r"$d(\alpha-b\log d)$: $\approx95\%$).",
    "coefficients fitted on gold evaluations, for one reward model; sequence-level KL",
    "sec-overoptimization-budget",
    cheatsheet=True,
)
def _gao_peak_budget():
    from kltutor import overoptimization as oo
    from kltutor.derivations import overoptimization as overoptimization_proofs

    _require(
        overoptimization_proofs.bon_peak()
        and overoptimization_proofs.rl_peak()
        and overoptimization_proofs.stopping_fraction(),
        "sympy",
    )
    bon, rl = float(oo.gold_fraction_at_kl_fraction(0.5, "bon")), float(oo.gold_fraction_at_kl_fraction(0.5, "rl"))
    _require(abs(bon - (math.sqrt(2) - 0.5)) < 1e-12, "sqrt 2 - 1/2")
    return {"gain kept at KL*/2, best-of-n form": bon, "RL form": rl}


@_claim(
    "proxy-up-gold-down",
    "Over-optimisation",
    r"Optimising a learned proxy raises the proxy reward monotonically along the KL-regularised family while the "
    r"gold reward rises, peaks and falls.",
    "a misspecified proxy (chapter 6's linear proxy fitted to 300 comparisons); KL is the x-axis",
    "sec-overoptimization-synthetic",
    cheatsheet=True,
)
def _proxy_up_gold_down():
    import numpy as np

    from kltutor import overoptimization as oo

    world = oo.make_world(4096, 4, 1.0, seed=0)
    proxy = oo.proxy_from_comparisons(world, 300, seed=1)
    sweep = oo.tilted_sweep(world, proxy, [float(b) for b in np.logspace(1, -1.3, 24)])
    k = int(np.argmax(sweep["gold"]))
    _require(
        bool(np.all(np.diff(sweep["proxy"]) > 0)) and 0 < k < 23 and sweep["gold"][-1] < sweep["gold"][k], "inverted U"
    )
    return {
        "KL at the gold peak": sweep["kl"][k],
        "gold gain at the peak": sweep["gold"][k],
        "gold gain at the smallest beta": sweep["gold"][-1],
    }


@_claim(
    "penalty-equals-early-stopping",
    "Over-optimisation",
    r"Along natural-gradient (mirror-descent) iterates a KL penalty and early stopping trace the same gold-versus-KL "
    r"curve: every iterate is $\piref e^{c_tr}/Z$.",
    "iterates that stay in the tilted family",
    "sec-overoptimization-penalty",
)
def _penalty_equals_early_stopping():
    from kltutor.derivations import overoptimization as overoptimization_proofs

    _require(overoptimization_proofs.mirror_descent_stays_tilted(), "sympy")
    return {"iterates stay tilted": True}


@_claim(
    "token-mean-kl",
    "Over-optimisation",
    r"A logged per-token *mean* KL is the sequence KL divided by the length: for $T$ i.i.d. tokens the sequence KL is "
    r"$T$ times the token KL, so $\sqrt\KL$ budgets depend on which one is logged.",
    "i.i.d. tokens (in general: the chain rule)",
    "sec-overoptimization-seq-token",
)
def _token_mean_kl():
    import torch

    from kltutor import overoptimization as oo

    p, q = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), torch.tensor([1 / 3] * 3, dtype=torch.float64)
    sp_, sq = p, q
    for _ in range(3):
        sp_, sq = torch.outer(sp_, p).flatten(), torch.outer(sq, q).flatten()
    ratio = oo.kl_categorical(sp_, sq) / oo.kl_categorical(p, q)
    _require(abs(ratio - 4) < 1e-12, "T = 4")
    return {"sequence KL / token KL, T = 4": ratio}


# ============================================================================ failure modes
@_claim(
    "wrong-reference-step0",
    "Failure modes",
    r"With the reference equal to the checkpoint the policy starts from, the KL is exactly 0 before the first update; "
    r"a non-zero step-0 KL means the wrong reference.",
    "the reference is frozen and in eval mode",
    "sec-failures-reference",
    cheatsheet=True,
)
def _wrong_reference_step0():
    from kltutor import failures as fl

    wr = fl.wrong_reference([1.0])
    _require(wr["sft"]["kl_at_init"][0] == 0.0 and wr["base"]["kl_at_init"][0] > 0.1, "step-0 KL")
    return {"step-0 KL, reference = SFT": 0.0, "step-0 KL, reference = base": wr["base"]["kl_at_init"][0]}


@_claim(
    "importance-weighting-variance",
    "Failure modes",
    r"Importance-weighted KL estimates from a stale sampler are unbiased but their variance grows with the mismatch; "
    r"clipping the weights bounds the variance and biases the estimate.",
    r"samples from a stale policy weighted by $w=\pitheta/\piold$",
    "sec-failures-importance",
)
def _importance_weighting_variance():
    import torch

    from kltutor import failures as fl

    gi = torch.Generator().manual_seed(1)
    pi = torch.softmax(1.5 * torch.randn(50, generator=gi, dtype=torch.float64), 0)
    ref = torch.softmax(0.5 * torch.randn(50, generator=gi, dtype=torch.float64), 0)
    on = fl.importance_weighted_kl(pi, ref, pi, 64, 500, seed=0)
    stale_s = torch.softmax(-1.0 * pi.log(), 0)
    stale = fl.importance_weighted_kl(pi, ref, stale_s, 64, 500, seed=0)
    clipped = fl.importance_weighted_kl(pi, ref, stale_s, 64, 500, clip=5.0, seed=0)
    _require(stale["std"] > 3 * on["std"], "variance grows")
    _require(abs(on["mean"] - on["exact"]) < 5 * on["std"] / math.sqrt(500), "on-policy unbiased within 5 s.e.")
    _require(
        clipped["std"] < stale["std"] and abs(clipped["mean"] - clipped["exact"]) > 5 * clipped["std"] / math.sqrt(500),
        "clipping biases",
    )
    return {"sd of a 64-sample estimate, on-policy": on["std"], "stale sampler": stale["std"]}


@_claim(
    "bf16-naive-k3-negative",
    "Failure modes",
    r"Naive `exp(-l) - 1 + l` in bfloat16 returns negative values (at $\ell=\pm0.01$): a logged negative k3 is a "
    r"precision bug, not a negative KL.",
    "k3 computed in bfloat16 without upcasting",
    "sec-failures-precision",
    cheatsheet=True,
)
def _bf16_naive_k3_negative():
    import torch

    from kltutor import estimators as est

    x = torch.tensor([-0.01, 0.01], dtype=torch.bfloat16)
    naive = est.k3_naive(x, torch.zeros_like(x))
    _require((naive < 0).any() and (est.of_log_ratio("k3", x) > 0).all(), "bf16")
    return {"naive bf16 k3 at l = -0.01": naive[0].item()}


# ============================================================================ KL in practice
def _practice_tables():
    """Chapter 8's random autoregressive model (its parameters cell: vocab 5, length 3, seed 0)."""
    import torch

    from kltutor import practice

    g = torch.Generator().manual_seed(0)
    ref = practice.random_logit_tables(5, 3, 1.0, g)
    pol = [1.3 * r + d for r, d in zip(ref, practice.random_logit_tables(5, 3, 0.5, g))]
    return pol, ref


@_claim(
    "sampler-k1-mismatch",
    "KL in practice",
    r"When the rollouts come from a sampler $q$ (temperature, top-p/top-k, another engine or precision) and the "
    r"trainer scores them with $\pitheta$ and $\piref$, the logged k1 averages $\KL(q\|\piref)-\KL(q\|\pitheta)$: the "
    r"objective's KL only when $q=\pitheta$, and negative when the sampler is closer to the reference than to the "
    r"policy. Scoring both models at the sampling temperature (TRL, verl) measures $\KL(\pi_T\|\pi_{\text{ref},T})\ge0$, "
    r"a third quantity. Sequences a truncated sampler never produces get no gradient, and no importance weight "
    r"recovers them.",
    "tokens drawn from $q$, scored by the trainer; the tempered identity needs no truncation",
    "sec-practice-sampler",
    cheatsheet=True,
    needs_condition=(
        (
            r"\blogged (?:k1|KL)\b[^.;]{0,80}?\b(?:is|equals|measures|estimates)\b[^.;]{0,40}?"
            r"(?:objective's KL|KL of the objective|KL\(pi(?:_theta)?\s*\|\|\s*pi_ref\)|"
            r"\\mathrm\{KL\}\(\\pi(?:_\\theta)?\\\|\\pi_\\text\{ref\}\)|\\KL\(\\pitheta\\\|\\piref\))",
            r"on-policy|on policy|q\s*=\s*\\?pi|sampler|\bonly\b|\bnot\b|unless|whatever",
        ),
    ),
)
def _sampler_k1_mismatch():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.estimators import enumerate_autoregressive

    _require(practice_proofs.sampler_k1_expectation(), "sympy")
    pol, ref = _practice_tables()
    on = practice.sampler_mismatch(pol, ref)
    _require(
        abs(on["k1"] - on["kl_target"]) < 1e-12 and abs(on["k3"] - on["kl_target"]) < 1e-12,
        "on-policy: k1, k3 unbiased",
    )
    worst = 0.0
    _, lr = enumerate_autoregressive([practice.process_logits(t) for t in ref])
    _, lp = enumerate_autoregressive([practice.process_logits(t) for t in pol])
    for kw in (dict(temperature=0.7), dict(temperature=1.6), dict(top_k=2), dict(temperature=1.3, top_p=0.9)):
        with torch.no_grad():
            _, lq = enumerate_autoregressive([practice.process_logits(t, **kw) for t in pol])
        q = lq.sum(-1).exp()
        s = q > 0
        kl_q_ref = float((q[s] * (lq - lr).sum(-1)[s]).sum())
        kl_q_pi = float((q[s] * (lq - lp).sum(-1)[s]).sum())
        worst = max(worst, abs(practice.sampler_mismatch(pol, ref, **kw)["k1"] - (kl_q_ref - kl_q_pi)))
    _require(worst < 1e-12, "E_q[k1] = KL(q||ref) - KL(q||pi)")
    hot = practice.sampler_mismatch(pol, ref, temperature=1.6)
    _require(hot["k1"] < 0 < hot["kl_target"], "a hot sampler logs a negative k1")
    tempered = [
        practice.sampler_mismatch(pol, ref, temperature=t, scoring="tempered") for t in (0.5, 0.7, 1.6, 2.0, 3.0)
    ]
    _require(
        all(abs(m["k1"] - m["kl_scored"]) < 1e-12 and m["k1"] >= 0 for m in tempered),
        "tempered scoring: KL(pi_T||ref_T)",
    )
    topk = practice.sampler_mismatch(pol, ref, top_k=2)
    with torch.no_grad():
        _, lq = enumerate_autoregressive([practice.process_logits(t, top_k=2) for t in pol])
    seen = lq.sum(-1).exp() > 0
    pi_seq = lp.sum(-1).exp()
    reweighted = float((pi_seq[seen] * (lp - lr).sum(-1)[seen]).sum())  # E_q[(pi/q) k1] over what q can produce
    _require(
        topk["missing_mass"] > 0.1 and abs(reweighted - on["kl_target"]) > 0.01,
        "truncation: no weight recovers the rest",
    )
    return {
        "KL(pi||ref)": on["kl_target"],
        "E[k1], sampler at T = 1.6, scored at 1": hot["k1"],
        "max |E_q[k1] - (KL(q||ref) - KL(q||pi))| over 4 samplers": "< 1e-12",
        "tempered scoring, T in 0.5..3: smallest E[k1] = KL(pi_T||ref_T)": min(m["k1"] for m in tempered),
        "top-k = 2: policy mass never sampled": topk["missing_mass"],
        "top-k = 2: KL recovered by weights pi/q": reweighted,
    }


def _tis_toy():
    from kltutor.toys import BinaryAutoregressive

    return BinaryAutoregressive(1.0, -0.8), BinaryAutoregressive(0.5, -0.4), BinaryAutoregressive(0.0, 0.3)


@_claim(
    "tis-bias-variance",
    "KL in practice",
    r"With rollouts from a sampler $q\ne\pitheta$, weighting the policy gradient by the sequence ratio "
    r"$\pitheta(y)/q(y)$ is exact; a per-token ratio $w_t$ leaves a bias at every cap, because it does not correct the "
    r"distribution of the prefix. Truncating the sequence ratio at $C$ (TIS) lowers the variance and adds a bias that "
    r"vanishes once $C$ exceeds the largest ratio; the bias need not shrink monotonically as $C$ grows.",
    r"rollouts from $q$; the gradient of $\E_{\pitheta}[R]-\beta\KL(\pitheta\|\piref)$ with k1 in the reward; "
    r"the numbers are the chapter's binary toy, $T=8$",
    "sec-practice-tis",
    needs_condition=(
        (
            r"(?:per-token|token-level|each token's)\s+(?:importance\s+)?(?:ratio|weight)s?\b[^.;]{0,60}?"
            r"\b(?:corrects?|makes?\b[^.;]{0,40}\bexact|is exact|are exact|unbiased)\b",
            r"one token|single token|prefix|\bnot\b|never|bias|\bonly\b|first update",
        ),
    ),
)
def _tis_bias_variance():
    import torch

    from kltutor import practice
    from kltutor.toys.autoregressive import all_binary_sequences

    pi, q, ref = _tis_toy()
    caps = [0.0, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, math.inf]
    seq = practice.tis_gradient_moments(pi, q, ref, 8, 0.1, caps, "sequence")
    tok = practice.tis_gradient_moments(pi, q, ref, 8, 0.1, caps, "token")
    seqs = all_binary_sequences(8)
    with torch.no_grad():
        max_w = float((pi.sequence_logprobs(seqs) - q.sequence_logprobs(seqs)).exp().max())
    _require(seq[-1]["bias2"] < 1e-20, "the untruncated sequence ratio is exact")
    _require(min(r["bias2"] for r in tok[1:]) > 1e-4, "per-token ratio: biased at every cap")
    truncated = seq[1:]
    _require(
        all(a["variance"] <= b["variance"] + 1e-15 for a, b in zip(truncated, truncated[1:])), "variance grows with C"
    )
    _require(all(r["bias2"] < 1e-20 for r in truncated if r["cap"] >= max_w), "no bias once C >= max ratio")
    _require(any(a["bias2"] < b["bias2"] for a, b in zip(truncated, truncated[1:])), "the bias is not monotone in C")
    best = min(truncated, key=lambda r: r["mse_64"])
    return {
        "squared bias, uncorrected": seq[0]["bias2"],
        "squared bias, per-token ratio (smallest over caps)": min(r["bias2"] for r in tok[1:]),
        "squared bias, sequence ratio untruncated": "< 1e-20",
        "largest sequence ratio": max_w,
        "variance, C = inf / C = 1": seq[-1]["variance"] / seq[1]["variance"],
        "cap with the smallest MSE (64 sequences)": best["cap"],
    }


@_claim(
    "aggregation-effective-beta",
    "KL in practice",
    r"Written as $\frac1G\sum_i\beta_\text{eff}(T_i)\sum_tk_{i,t}$, the KL part of the loss has $\beta_\text{eff}=\beta$ "
    r"(sequence-sum), $\beta/T_i$ (per-sequence mean, GRPO's $1/\lvert o_i\rvert$), $\beta/\bar T$ (token-mean, $\bar T$ the "
    r"batch's mean length) and $\beta/L$ (Dr. GRPO's constant $L$). The policy-gradient term gets the same weight, so "
    r"only the per-sequence mean reweights sequences by length.",
    "$G$ sequences of lengths $T_i$; the four aggregations of `kltutor.practice.AGGREGATIONS`",
    "sec-practice-aggregation",
    cheatsheet=True,
)
def _aggregation_effective_beta():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs

    _require(practice_proofs.effective_beta_aggregation(), "sympy")
    T = [10.0, 100.0]
    want = {
        "sequence-sum": [0.04, 0.04],
        "sequence-mean": [0.004, 0.0004],
        "token-mean": [0.04 / 55] * 2,
        "token-sum-norm": [0.04 / 128] * 2,
    }
    for mode, w in want.items():
        got = practice.effective_beta(T, mode, 0.04, max_len=128)
        _require(torch.allclose(got, torch.tensor(w, dtype=torch.float64), rtol=1e-12, atol=0), mode)
    return {f"beta = 0.04, lengths 10 and 100, {m}": ", ".join(f"{v:.3g}" for v in w) for m, w in want.items()}


@_claim(
    "sequence-mean-length-bias",
    "KL in practice",
    r"With a per-sequence mean ($c=1/T$) the update of a bandit over whole responses stops at "
    r"$\piref e^{(R-\kappa T)/\beta}/Z$ with $\kappa\,\E_\pi[T]=\E_\pi[R]-b-\beta\KL$. When the group baseline centres the "
    r"task reward only ($b=\E_\pi[R]$: the KL is a loss term, or a k1 penalty added after the centring), "
    r"$\kappa=-\beta\KL/\E_\pi[T]<0$: a length bonus of $\KL/\E_\pi[T]$ nats per token that lengthens equally rewarded "
    r"answers. With k1 inside the centred reward ($b=\E_\pi[R-\beta\ell]$), $\kappa=0$: the tilt, as for every constant "
    r"weight (sequence-sum, token-mean in the large-batch limit, Dr. GRPO).",
    "population limit (large groups), mean-centred group advantages, exact expected updates",
    "sec-practice-length-bias",
    needs_condition=(
        (
            r"per-token length (?:bonus|term)|fixed point by length|stationary point carries|longer ones are favoured",
            r"baseline|task reward|loss term|KL (?:sits )?in the loss|centr|k2",
        ),
    ),
)
def _sequence_mean_length_bias():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.preference import optimal_policy

    _require(practice_proofs.sequence_mean_stationary_point() and practice_proofs.sequence_mean_baseline(), "sympy")
    T = torch.arange(1, 9, dtype=torch.float64).repeat_interleave(2)
    R = torch.tensor([1.0, 0.0] * 8, dtype=torch.float64)
    ref = torch.softmax(torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0)
    beta = 0.1
    tilt = optimal_policy(ref, R, beta)
    smean = practice.aggregation_stationary_policy(ref, R, T, beta, "sequence-mean")
    _require(
        practice.aggregation_update(smean, ref, R, T, beta, "sequence-mean", "task").abs().max() < 1e-14, "stationary"
    )
    kl = float((smean * (smean / ref).log()).sum())
    bonus = float(((smean / tilt).log()[R == 1].diff() / T[R == 1].diff()).mean())
    _require(abs(bonus - kl / float((smean * T).sum())) < 1e-12 and bonus > 0, "bonus = KL / E[T]")
    correct = R == 1

    def length(p):
        return float((p[correct] * T[correct]).sum() / p[correct].sum())

    _require(length(smean) > length(tilt) and abs(length(tilt) - length(ref)) < 1e-12, "longer correct answers")
    _require(
        practice.aggregation_update(tilt, ref, R, T, beta, "sequence-mean", "task").abs().max() > 1e-3,
        "task: tilt not stationary",
    )
    worst = max(
        float(practice.aggregation_update(tilt, ref, R, T, beta, m, b).abs().max())
        for m in practice.AGGREGATIONS
        for b in practice.BASELINES
        if (m, b) != ("sequence-mean", "task")
    )
    _require(worst < 1e-14, "shaped baseline or constant weight: the tilt is stationary")
    return {
        "beta = 0.1: length bonus per token (nats)": bonus,
        "KL / E[T] at the stationary point": kl / float((smean * T).sum()),
        "E[T | correct]: reference = tilt": length(tilt),
        "E[T | correct]: per-sequence mean": length(smean),
        "largest update at the tilt, k1 inside the centred reward or a constant weight": "< 1e-14",
    }


@_claim(
    "beta-zero-diversity",
    "KL in practice",
    r"With $\beta=0$ (no reference model, as in DAPO and Dr. GRPO) only the reward's argmax limits the drift, and exact "
    r"policy-gradient dynamics widen the logit gap between equally rewarded answers in proportion to their probability "
    r"gap: the likelier correct answer takes over and the entropy among correct answers falls at every step. With "
    r"$\beta>0$ the optimum $\piref e^{r/\beta}/Z$ keeps the reference's ratios among equally rewarded answers exactly.",
    r"a softmax bandit trained by its exact gradient; for $\beta>0$ a statement about the optimum",
    "sec-practice-reference",
    refuted=(
        r"(?:β|\\beta|beta)\s*=\s*0\b[^.;]{0,60}\b(?:loses nothing|costs nothing|is harmless|is free)\b",
        r"(?:DAPO|Dr\.? GRPO|dropping the (?:KL|reference))[^.;]{0,60}\b(?:loses nothing|costs nothing|nothing is lost|is harmless)\b",
    ),
)
def _beta_zero_diversity():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs

    _require(practice_proofs.beta_zero_rich_get_richer(), "sympy")
    p_ref = torch.tensor([0.30, 0.10, 0.05, 0.55], dtype=torch.float64)
    r = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    ok = r == 1
    pc = p_ref[ok] / p_ref[ok].sum()
    h_ref = float(-(pc * pc.log()).sum())
    free = practice.bandit_with_reference_updates(p_ref, r, 0.0, 900, 4.0, correct=ok)
    kept = practice.bandit_with_reference_updates(p_ref, r, 0.5, 900, 4.0, correct=ok)
    h = free["correct_entropy"]
    _require(
        h[0] < h_ref and all(b < a for a, b in zip(h, h[1:])),
        "beta = 0: entropy among correct answers falls every step",
    )
    _require(abs(kept["correct_entropy"][-1] - h_ref) < 1e-8, "beta > 0: the reference's ratios are kept")
    return {
        "entropy among correct answers, reference": h_ref,
        "after 900 steps, beta = 0": h[-1],
        "after 900 steps, beta = 0.5": kept["correct_entropy"][-1],
        "KL to the start, beta = 0": free["kl_initial"][-1],
    }


@_claim(
    "reset-reference-tilts",
    "KL in practice",
    r"A reference reset to the policy every $\tau$ steps bounds the KL of each period only: if every period converges, "
    r"$k$ resets compose to $\pi_0e^{kr/\beta}/Z$, the fixed-reference optimum with $\beta/k$, so the drift from the "
    r"start keeps growing (a proximal-point method).",
    "hard resets; each period run to convergence",
    "sec-practice-reference",
    needs_condition=(
        (r"(?:reset|moving|updated) reference[^.;]{0,60}\bbounds?\b", r"period|\beach\b|per-|step size|not the total"),
    ),
)
def _reset_reference_tilts():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.preference import optimal_policy

    _require(practice_proofs.reset_composes_tilts(), "sympy")
    p_ref = torch.tensor([0.30, 0.10, 0.05, 0.55], dtype=torch.float64)
    r = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    composed = p_ref
    for _ in range(3):
        composed = optimal_policy(composed, r, 0.5)
    _require(
        torch.allclose(composed, optimal_policy(p_ref, r, 0.5 / 3), rtol=1e-12, atol=1e-15), "3 tilts = tilt at beta/3"
    )
    fixed = practice.bandit_with_reference_updates(p_ref, r, 0.5, 900, 4.0)
    hard = practice.bandit_with_reference_updates(p_ref, r, 0.5, 900, 4.0, reset_every=300)
    tilt3 = optimal_policy(p_ref, r, 0.5 / 3)
    kl3 = float((tilt3 * (tilt3 / p_ref).log()).sum())
    _require(
        abs(hard["kl_initial"][-1] - kl3) < 0.01, "the run reaches the tilt at beta/3 (converged periods, to 0.01)"
    )
    _require(
        max(hard["kl_reference"]) <= max(fixed["kl_reference"]) + 1e-9 < hard["kl_initial"][-1],
        "per period bounded, total not",
    )
    return {
        "KL to the start after 3 periods": hard["kl_initial"][-1],
        "KL of the tilt at beta/3": kl3,
        "KL to the start, fixed reference": fixed["kl_initial"][-1],
    }


@_claim(
    "lora-reference-exact",
    "KL in practice",
    r"With a LoRA adapter that starts at zero ($B=0$) on frozen base weights, switching the adapter off gives the initial "
    r"policy exactly, at every step; initialisations that move part of the weight into the adapter (PEFT's PiSSA, OLoRA, "
    r"CorDA, LoftQ) rewrite the base, so the disabled adapter is a different model.",
    "base weights frozen; the reference scored with the adapter disabled",
    "sec-practice-reference",
)
def _lora_reference_exact():
    import copy

    import torch
    from torch import nn

    from kltutor import practice

    g = torch.Generator().manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(16, 6)
            with torch.no_grad():
                for lin in (self.q_proj, self.down_proj):
                    lin.weight.copy_(0.5 * torch.randn(lin.weight.shape, generator=g))
                    lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))

        def forward(self, x):
            return torch.log_softmax(self.down_proj(torch.tanh(self.q_proj(x))), -1)

    base = Tiny().double()
    x = torch.randn(32, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        initial = base(x)
    zero = copy.deepcopy(base)
    practice.add_lora(zero, rank=2, init="zero")
    opt = torch.optim.SGD([p for p in zero.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        (-zero(x)[:, 0].mean()).backward()
        opt.step()
    with torch.no_grad(), practice.adapters_disabled(zero):
        off = zero(x)
    with torch.no_grad():
        moved = float((zero(x) - initial).abs().max())
    _require(
        torch.equal(off, initial) and moved > 1e-3,
        "zero start: the disabled adapter is the initial policy, bit for bit",
    )
    principal = copy.deepcopy(base)
    practice.add_lora(principal, rank=2, init="principal")
    with torch.no_grad(), practice.adapters_disabled(principal):
        off_p = principal(x)
    gap = float((off_p - initial).abs().max())
    _require(gap > 0.1, "principal start: the disabled adapter is another model")
    return {
        "zero start, 3 updates: max |reference - initial|": 0.0,
        "max |policy - initial| after them": moved,
        "principal start: max |reference - initial| (log-probs)": gap,
    }


@_claim(
    "two-kl-terms",
    "KL in practice",
    r"With k1 in the reward ($\beta_R$) and token-level k3 in the loss ($\beta_L$) the expected gradients add, the betas "
    r"do not: $\beta_R\nabla\KL(\pitheta\|\piref)$ plus $\beta_L$ times k3's per-token forward-KL gradient, not "
    r"$(\beta_R+\beta_L)\nabla\KL(\pitheta\|\piref)$. On a one-token bandit the fixed point maximises "
    r"$\E[r]-\beta_R\KL(\pi\|\piref)-\beta_L\KL(\piref\|\pi)$, not the tilt with $\beta_R+\beta_L$; the two KLs agree to "
    r"second order around $\piref$ and differ at the third.",
    "on-policy",
    "sec-practice-two-kls",
    refuted=(
        r"(?:same as|equivalent to|amounts to|acts as) (?:one|a single) [^.;]{0,30}(?:β|\\beta|beta)_?\{?R\}?\s*\+\s*(?:β|\\beta|beta)_?\{?L",
    ),
)
def _two_kl_terms():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.preference import optimal_policy

    _require(practice_proofs.two_kl_stationarity(), "sympy")
    pi, ref = _toy()
    g = practice.two_kl_gradients(pi, ref, 5, 0.1, 0.1)
    _require(_max_err(g["combined"], 0.1 * g["reverse"] + 0.1 * g["k3_loss"]) < 1e-14, "gradients add")
    off = _max_err(g["combined"], g["naive"]) / float(g["naive"].abs().max())
    _require(off > 0.1, "not (beta_R + beta_L) x reverse")
    p = torch.tensor([0.1, 0.2, 0.3, 0.3, 0.1], dtype=torch.float64)
    r = torch.tensor([1.0, 0.6, 0.0, 0.0, 0.3], dtype=torch.float64)
    both = practice.two_kl_bandit_optimum(p, r, 0.1, 0.1)
    resid = r - 0.1 * (both / p).log() + 0.1 * p / both
    _require(float(resid.max() - resid.min()) < 1e-9, "stationarity of E r - bR KL(pi||ref) - bL KL(ref||pi)")
    tilt = optimal_policy(p, r, 0.2)
    kl_both, kl_tilt = float((both * (both / p).log()).sum()), float((tilt * (tilt / p).log()).sum())
    _require(abs(kl_both - kl_tilt) > 0.05, "not the tilt at beta_R + beta_L")
    return {
        "T = 5 toy, beta_R = beta_L = 0.1: relative gap to (beta_R + beta_L) x reverse-KL gradient": off,
        "bandit, beta_R = beta_L = 0.1: KL(pi||ref)": kl_both,
        "tilt at beta = 0.2: KL(pi||ref)": kl_tilt,
    }


@_claim(
    "grpo-loss-zero-at-start",
    "KL in practice",
    r"At the first update on a batch ($w=1$), with group-centred advantages and per-sequence means, the GRPO surrogate is "
    r"exactly 0 whatever the rewards, and the KL term is 0 at step 0: with one update per batch the logged loss is "
    r"$\beta$ times the KL term and rises because the KL does, while its gradient is not zero. With a token mean the "
    r"surrogate is $-\sum_iT_iA_i/\sum_iT_i$, zero only when lengths and advantages are uncorrelated.",
    'first update on each batch; per-sequence mean aggregation (TRL `loss_type="grpo"`, verl `seq-mean-token-mean`)',
    "sec-practice-loss-zero",
    cheatsheet=True,
    needs_condition=(
        (
            r"(?<![Ww]hy the )(?<![Ww]hy does the )GRPO loss(?: curve)?\b[^.;]{0,60}?(?:starts? at (?:0|zero)|is (?:exactly )?(?:0|zero)\b|"
            r"(?:is|equals) (?:β|\\beta|beta)\s*(?:×|\\times|times|\*))",
            r"per-sequence|sequence-mean|sequence mean|1/T|token[- ]mean|aggregation",
        ),
    ),
)
def _grpo_loss_zero_at_start():
    import torch

    from kltutor.derivations import practice as practice_proofs
    from kltutor.grpo import grpo_loss

    _require(practice_proofs.grpo_loss_zero_at_start(), "sympy")
    D64 = torch.float64
    lp0 = torch.log(
        torch.tensor(
            [[0.5, 0.4, 0.6, 0.0], [0.3, 0.2, 0.0, 0.0], [0.9, 0.7, 0.8, 0.5], [0.6, 0.0, 0.0, 0.0]], dtype=D64
        ).clamp_min(1e-3)
    ).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=D64)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=D64)
    out = {}
    for agg in ("sequence-mean", "token-mean"):
        res = grpo_loss(
            lp0,
            lp0.detach(),
            lp0.detach(),
            mask,
            rewards,
            group_size=4,
            placement="k3-in-loss",
            beta=0.1,
            aggregation=agg,
        )
        (grad,) = torch.autograd.grad(res.loss, lp0)
        out[agg] = (float(res.loss.detach()), float(grad.norm()), float(res.kl_term))
    _require(
        abs(out["sequence-mean"][0]) < 1e-15 and out["sequence-mean"][1] > 0.1 and out["sequence-mean"][2] == 0.0,
        "per-sequence mean: value 0, gradient not",
    )
    _require(abs(out["token-mean"][0]) > 1e-3, "token mean: not 0 with unequal lengths")
    return {
        "loss at step 0, per-sequence mean": "< 1e-15",
        "its gradient norm": out["sequence-mean"][1],
        "loss at step 0, token mean": out["token-mean"][0],
    }


@_claim(
    "negative-kl-causes",
    "KL in practice",
    r"On-policy, $\E_{\pitheta}[\mathrm{k1}]=\KL(\pitheta\|\piref)\ge0$ for every reference, so a wrong reference "
    r"checkpoint makes the step-0 KL positive, not negative. A negative *expected* k1 means the tokens were not samples "
    r"of the scored policy (sampler settings or another engine: $\KL(q\|\piref)-\KL(q\|\pitheta)$; dropout in the scoring "
    r"pass, which subtracts $\E_\text{mask}\KL(\pi\|\pi_\text{mask})$; prompt or padding under the mask), log-probabilities "
    r"that do not normalise, or a reversed sign; otherwise a negative batch mean is noise.",
    r"$\piref$ a normalised distribution over the sampled tokens; exact arithmetic",
    "sec-practice-negative-kl",
    cheatsheet=True,
    refuted=(r"\bsix (?:different )?(?:reasons|causes)\b",),
    needs_condition=(
        (
            r"(?=[\s\S]*\bnegative)[\s\S]*(?:reference that is not the initial|wrong reference|mismatched reference)",
            r"does not|doesn't|cannot|never|not make|positive|\\ge\s*0|≥\s*0|on its own",
        ),
    ),
)
def _negative_kl_causes():
    import torch

    from kltutor.divergences import kl
    from kltutor.toys.distributions import random_categorical

    pi = random_categorical(1, 6, seed=11)[0]
    refs = random_categorical(2000, 6, seed=12, concentration=0.3)
    on_policy = kl(pi.expand_as(refs), refs)  # E_pi[k1] = KL(pi || ref) for each wrong reference
    _require((on_policy > 0).all(), "on-policy k1 has a positive mean for every wrong reference")
    # dropout in the scoring pass of a small network; tokens sampled from the eval-mode policy (= reference at step 0)
    g = torch.Generator().manual_seed(13)
    w1, w2, x = (
        torch.randn(16, 8, generator=g, dtype=torch.float64),
        torch.randn(6, 16, generator=g, dtype=torch.float64),
        torch.randn(8, generator=g, dtype=torch.float64),
    )
    h = torch.tanh(w1 @ x)
    eval_logp = torch.log_softmax(w2 @ h, -1)
    masks = (torch.rand(200, 16, generator=g, dtype=torch.float64) > 0.1).double() / 0.9
    drop_logp = torch.log_softmax((masks * h) @ w2.T, -1)
    per_mask = (eval_logp.exp() * (drop_logp - eval_logp)).sum(-1)  # E_pi[k1] at step 0, one mask each
    _require(
        torch.allclose(per_mask, -kl(eval_logp.exp().expand_as(drop_logp), drop_logp.exp()), rtol=1e-10, atol=1e-14),
        "= -KL(pi||pi_mask)",
    )
    _require((per_mask < 0).all(), "every dropout mask lowers the expected k1")
    return {
        "on-policy E[k1], smallest over 2000 wrong references": on_policy.min().item(),
        "step 0, dropout p = 0.1 in the scoring pass: E[k1] averaged over 200 masks": per_mask.mean().item(),
        "largest over the masks": per_mask.max().item(),
    }


@_claim(
    "geomean-ratio-kl",
    "KL in practice",
    r"Multiplying the per-token KL term by GSPO's geometric-mean sequence ratio $(\prod_tw_t)^{1/T}$ (TRL's "
    r'`use_bias_correction_kl` with `importance_sampling_level="sequence"`) does not correct it: its expected gradient is '
    r"wrong even at the first update, where every ratio is 1, because the weight's own gradient $\frac1T\sum_sg_s$ "
    r"multiplies every token's term. The full ratio $\prod_tw_t$ and the prefix ratio $\prod_{s\le t}w_s$ are exact; at "
    r"the first update the per-token ratio $w_t$ turns k3's gradient into token-level k2's.",
    r"token-level k3 in the loss; samples from $\piold$ ($=\pitheta$ at the first update)",
    "sec-practice-sequence-ratio",
    needs_condition=(
        (
            r"(?:GSPO|geometric[- ]mean)[^.;]{0,60}?\b(?:corrects?|is exact|unbiased)\b",
            r"\bnot\b|never|n't|\bno\b|wrong|biased",
        ),
    ),
)
def _geomean_ratio_kl():
    from kltutor import gradients as G
    from kltutor import practice
    from kltutor.toys import BinaryAutoregressive

    pi, ref = _toy()
    old = BinaryAutoregressive(0.1, -0.1)
    true = G.exact_kl_gradients(pi, ref, 5)["true"]
    out = {}
    for name, sampler in (("first update", pi), ("stale samples", old)):
        for w in ("prefix", "sequence"):
            _require(
                _max_err(practice.offpolicy_kl_gradient(pi, sampler, ref, 5, "k3", w), true) < 1e-12, f"{w}, {name}"
            )
        err = _max_err(practice.offpolicy_kl_gradient(pi, sampler, ref, 5, "k3", "sequence-geomean"), true)
        _require(err > 0.1, f"geometric mean, {name}")
        out[f"geometric-mean ratio, {name}: gradient error"] = err
    tok = practice.offpolicy_kl_gradient(pi, pi, ref, 5, "k3", "token")
    _require(
        _max_err(tok, G.exact_kl_gradients(pi, ref, 5, level="token")["k2-in-loss"]) < 1e-12,
        "per-token ratio = token k2",
    )
    out["prefix or full ratio"] = "exact (< 1e-12)"
    return out


@_claim(
    "inverted-k3-chi2",
    "KL in practice",
    r"k3 written with the ratio inverted, $e^{\ell}-1-\ell$, is non-negative, but its mean is "
    r"$\chi^2(\pitheta\|\piref)-\KL(\pitheta\|\piref)$ per token (on sequences: the per-token $\chi^2$ at the policy's "
    r"prefixes, summed, minus the sequence KL), and in the loss it follows the gradient of $\tfrac12\chi^2$ per token, a "
    r"penalty far harsher than the KL on large $\pitheta/\piref$.",
    r"samples from $\pitheta$",
    "sec-practice-slips",
    needs_condition=((r"mean (?:under \\?pi )?is \$?\\?chi\^?2", r"per token|per-token|one token|each token|prefix"),),
)
def _inverted_k3_chi2():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.toys.autoregressive import all_binary_sequences

    _require(practice_proofs.inverted_k3_is_chi2(), "sympy, one token")
    pi, ref = _toy()
    T = 5
    value, grad = practice.expected_in_loss(pi, ref, T, lambda l: torch.expm1(l) - l)
    seqs = all_binary_sequences(T)
    with torch.no_grad():
        w = pi.sequence_logprobs(seqs).exp()
        seq_chi2 = float((w**2 / ref.sequence_logprobs(seqs).exp()).sum() - 1)
        r1 = torch.sigmoid(ref.logits(seqs))
        kl_seq = float(pi.exact_kl(ref, T))
    p1 = torch.sigmoid(pi.logits(seqs))
    chi_t = p1**2 / r1 + (1 - p1) ** 2 / (1 - r1) - 1
    per_token = float((w[:, None] * chi_t.detach()).sum())
    g_half = torch.stack(torch.autograd.grad((w[:, None] * chi_t / 2).sum(), [pi.a, pi.b]))
    _require(abs(value - (per_token - kl_seq)) < 1e-12, "mean = sum of per-token chi2 - KL")
    _require(abs(value - (seq_chi2 - kl_seq)) > 0.1, "not the sequence chi2")
    _require(_max_err(grad, g_half) < 1e-12, "gradient of chi2/2 per token")
    _require(abs((math.e - 2) - (math.exp(-1) - 1 + 1)) > 0.3, "at l = 1: e - 2 against e^-1")
    return {
        "T = 5: mean of the inverted k3": value,
        "sum of per-token chi2 - KL": per_token - kl_seq,
        "sequence chi2 - KL": seq_chi2 - kl_seq,
        "KL": kl_seq,
    }


CLAIMS: tuple[Claim, ...] = tuple(_REGISTRY.values())


def get(claim_id: str) -> Claim:
    """The claim with id ``claim_id``."""
    try:
        return _REGISTRY[claim_id]
    except KeyError:
        raise KeyError(f"no claim {claim_id!r}; ids: {', '.join(_REGISTRY)}") from None


@functools.cache
def verify(claim_id: str) -> dict[str, object]:
    """Run the claim's check; return the values it checked or raise :class:`ClaimError` (cached)."""
    return get(claim_id).check()


def format_value(value: object) -> str:
    """How the ledger prints a checked value (3 significant figures for floats)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0.0:
            return "0"
        if math.isinf(value):
            return "inf"
        return f"{value:.3g}"
    return str(value)


def _check_patterns() -> None:
    for c in CLAIMS:
        for pat in c.refuted:
            re.compile(pat)
        for trig, cond in c.needs_condition:
            re.compile(trig)
            re.compile(cond)


_check_patterns()
