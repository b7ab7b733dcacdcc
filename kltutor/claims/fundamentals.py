"""The ledger's claims on KL divergence (see :mod:`kltutor.claims`)."""

from __future__ import annotations

import math

from kltutor.claims._core import _claim, _require


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
    r"$\KL(p\|q)\le\log(1+\chi^2(p\|q))$, with $\chi^2(p\|q)=\sum_x p(x)^2/q(x)-1$; equality when $p$ is $q$ "
    r"restricted to a subset $S$ and renormalised (both sides $-\log q(S)$). Of the four classical bounds, $\chi^2$ "
    r"and JS come closest on peaked (Dirichlet(0.1)) pairs, Pinsker and Hellinger (in absolute terms) on near-uniform "
    r"(Dirichlet(10)) pairs.",
    "any $p$, $q$ (Jensen on the concave logarithm); the regimes are chapter 1's 2000 pairs of 8 categories",
    "sec-fundamentals-relations",
    refuted=(
        r"\$?q\$? is \$?p\$? restricted",  # backwards: then q = 0 < p somewhere and both sides are +inf
        r"[Tt]he bounds are\s+tightest on the peaked",  # only chi2 and JS; Pinsker and Hellinger on Dirichlet(10)
    ),
)
def _kl_chi2_bound():
    import torch

    from kltutor.derivations import fundamentals as fundamentals_proofs
    from kltutor.divergences import chi2, inequality_slacks, kl
    from kltutor.toys.distributions import random_categorical

    _require(fundamentals_proofs.kl_chi2_bound() is True, "sympy")
    P = random_categorical(2000, 8, seed=30, concentration=0.1)
    Q = random_categorical(2000, 8, seed=31, concentration=0.1)
    slack = (chi2(P, Q).log1p() - kl(P, Q)).min().item()
    _require(slack >= 0, "bound violated")
    # equality: p = q restricted to S and renormalised; the reverse restriction gives +inf on both sides
    q = Q[0]
    S = q >= q.median()
    p = torch.where(S, q, torch.zeros_like(q)) / q[S].sum()
    gap = abs((chi2(p, q).log1p() - kl(p, q)).item())
    _require(gap < 1e-12 and abs(kl(p, q).item() + math.log(q[S].sum().item())) < 1e-12, "equality at p = q|_S")
    _require(math.isinf(kl(q, p).item()), "q = p|_S: KL(q||p) = +inf")
    # which Dirichlet concentration each bound comes closest on (chapter 1's table: seeds 30/31, 2000 x 8)
    closest = {}
    for name in ("pinsker", "hellinger", "chi2", "js"):
        mins = {}
        for conc in (0.1, 1.0, 10.0):
            Pc = random_categorical(2000, 8, seed=30, concentration=conc)
            Qc = random_categorical(2000, 8, seed=31, concentration=conc)
            mins[conc] = inequality_slacks(Pc, Qc)[name].min().item()
        closest[name] = min(mins, key=mins.get)
    _require(closest == {"pinsker": 10.0, "hellinger": 10.0, "chi2": 0.1, "js": 0.1}, f"regimes {closest}")
    return {
        "smallest slack over 2000 peaked pairs": slack,
        "|gap| at p = q restricted to S": "< 1e-12",
        "Pinsker / Hellinger closest at concentration": "10",
        "chi2 / JS closest at concentration": "0.1",
    }
