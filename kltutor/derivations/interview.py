"""Derivations asked for by the interview questions (chapter ``ch-interview``), checked by sympy.

Each ``@derivation`` function proves one answer of :mod:`kltutor.interview` and returns ``True`` or
raises :class:`~kltutor.derivations.DerivationError`. The ``*_expressions`` helpers return the sympy
expressions the chapter displays and evaluates.

The categorical proofs use a three-outcome softmax policy with symbolic logits and a symbolic,
strictly positive reference distribution: enough to exhibit every cross term, small enough for sympy.
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401

__all__ = [
    "k3_nonnegative",
    "k3_unbiased",
    "k3_from_control_variate",
    "placement_gradients",
    "placement_gradient_expressions",
    "optimal_policy",
    "dpo_logz_cancels",
    "dpo_gradient",
    "k2_bias_small_kl",
    "k2_bias_gaussian",
    "adaptive_beta_integrates_error",
    "binary_reward_optimum",
    "binary_optimum_expressions",
    "gao_bon_peak",
    "gao_peak_expressions",
    "best_of_n_kl_continuous",
    "best_of_n_kl_bernoulli_expressions",
    "best_of_n_kl_bound_with_ties",
]

_K = 3  # outcomes in the categorical proofs


def _zero(expr: sp.Expr) -> bool:
    return sp.simplify(sp.expand(expr)) == 0


def _softmax_and_ref():
    theta = sp.symbols(f"theta1:{_K + 1}", real=True)
    q = sp.symbols(f"q1:{_K + 1}", positive=True)
    z = sum(sp.exp(t) for t in theta)
    pi = [sp.exp(t) / z for t in theta]
    # a reference distribution: q_i / sum(q) keeps it normalised for any positive q
    sq = sum(q)
    ref = [qi / sq for qi in q]
    return theta, pi, ref


@derivation
def k3_nonnegative() -> bool:
    """f(x) = e^x - x - 1 >= 0 with equality only at 0, hence k3 = f(-l) >= 0."""
    x = sp.symbols("x", real=True)
    f = sp.exp(x) - x - 1
    require(f.subs(x, 0) == 0, "f(0) must be 0")
    crit = sp.solve(sp.Eq(sp.diff(f, x), 0), x)
    require(crit == [0], f"f' must vanish only at 0, got {crit}")
    require(sp.diff(f, x, 2) == sp.exp(x), "f'' must be e^x > 0 (strict convexity)")
    l = sp.symbols("ell", real=True)
    require(sp.simplify(f.subs(x, -l) - (sp.exp(-l) - 1 + l)) == 0, "k3 must equal f(-l)")
    return True


@derivation
def k3_unbiased() -> bool:
    """E_{pi}[e^{-l} - 1 + l] = KL(pi || pi_ref) for a categorical pi and pi_ref (full support)."""
    _, pi, ref = _softmax_and_ref()
    ell = [sp.log(p) - sp.log(r) for p, r in zip(pi, ref)]
    kl = sum(p * e for p, e in zip(pi, ell))
    e_k3 = sum(p * (sp.exp(-e) - 1 + e) for p, e in zip(pi, ell))
    e_ratio = sum(p * sp.exp(-e) for p, e in zip(pi, ell))
    require(_zero(e_ratio - 1), "E_pi[pi_ref/pi] must be 1")
    require(_zero(e_k3 - kl), "E[k3] must equal KL(pi||pi_ref)")
    # the tempting wrong identity: E_pi[pi/pi_ref] is not 1 in general
    wrong = sum(p * sp.exp(e) for p, e in zip(pi, ell))
    require(not _zero(wrong - 1), "E_pi[pi/pi_ref] = 1 would be a wrong identity")
    return True


@derivation
def k3_from_control_variate() -> bool:
    """-log s + lam (s - 1) is non-negative for all s > 0 only when lam = 1, which gives k3 = f(log s)."""
    s, lam = sp.symbols("s lam", positive=True)
    g = -sp.log(s) + lam * (s - 1)
    # g(1) = 0 for every lam; a non-negative function with g(1) = 0 needs g'(1) = 0
    require(g.subs(s, 1) == 0, "g(1) must vanish")
    sol = sp.solve(sp.Eq(sp.diff(g, s).subs(s, 1), 0), lam)
    require(sol == [1], f"g'(1) = 0 must force lam = 1, got {sol}")
    x = sp.symbols("x", real=True)
    require(sp.simplify(g.subs(lam, 1).subs(s, sp.exp(x)) - (sp.exp(x) - x - 1)) == 0, "lam = 1 must give f(log s)")
    return True


def placement_gradient_expressions() -> dict[str, sp.Expr]:
    """Exact expected gradients (w.r.t. the first logit) of each single-token placement, on-policy.

    The policy is a softmax over three outcomes with probabilities ``p1, p2, 1 - p1 - p2``; the
    derivative w.r.t. the first logit uses the softmax Jacobian d p_i / d theta_1 = p_i (1[i=1] - p_1).
    Keys: ``reverse_kl`` (grad KL(pi||pi_ref)), ``forward_kl`` (grad KL(pi_ref||pi)), and for the
    placements ``k1-in-reward`` (E[l * grad log pi], l detached), ``k1-in-loss`` (E[grad l]),
    ``k2-in-loss`` (E[grad l^2/2]), ``k3-in-loss`` (E[grad (e^{-l} - 1 + l)]).
    """
    p = sp.symbols("p1:4", positive=True)
    q = sp.symbols("q1:3", positive=True)
    ref = [q[0], q[1], 1 - q[0] - q[1]]
    close = {p[2]: 1 - p[0] - p[1]}

    def grad(f: sp.Expr) -> sp.Expr:  # d f(p) / d theta_1 through the softmax Jacobian
        return sum(sp.diff(f, p[i]) * p[i] * ((1 if i == 0 else 0) - p[0]) for i in range(3))

    ell = [sp.log(pi) - sp.log(r) for pi, r in zip(p, ref)]
    score = [grad(sp.log(pi)) for pi in p]
    out = {
        "reverse_kl": grad(sum(pi * e for pi, e in zip(p, ell))),
        "forward_kl": grad(sum(r * (sp.log(r) - sp.log(pi)) for pi, r in zip(p, ref))),
        # in reward: the KL value is a detached number multiplying the score (REINFORCE)
        "k1-in-reward": sum(pi * e * sc for pi, e, sc in zip(p, ell, score)),
        # in loss: autograd differentiates the estimator at the sampled token (samples held fixed)
        "k1-in-loss": sum(pi * grad(e) for pi, e in zip(p, ell)),
        "k2-in-loss": sum(pi * grad(e**2 / 2) for pi, e in zip(p, ell)),
        "k3-in-loss": sum(pi * grad(sp.exp(-e) - 1 + e) for pi, e in zip(p, ell)),
    }
    return {k: sp.simplify(v.subs(close)) for k, v in out.items()}


@derivation
def placement_gradients() -> bool:
    """On-policy, single token: E[grad k1-in-loss] = 0; k2-in-loss = k1-in-reward = grad reverse KL;
    E[grad k3-in-loss] = grad forward KL(pi_ref || pi), which differs from the reverse-KL gradient."""
    g = placement_gradient_expressions()
    require(_zero(g["k1-in-loss"]), "E[grad k1] must be 0 (the score has mean zero)")
    require(_zero(g["k1-in-reward"] - g["reverse_kl"]), "k1-in-reward must give grad KL(pi||pi_ref)")
    require(_zero(g["k2-in-loss"] - g["reverse_kl"]), "k2-in-loss must give grad KL(pi||pi_ref) for one token")
    require(_zero(g["k3-in-loss"] - g["forward_kl"]), "k3-in-loss must give grad KL(pi_ref||pi)")
    require(not _zero(g["k3-in-loss"] - g["reverse_kl"]), "k3-in-loss must differ from the reverse-KL gradient")
    # closed forms: d/dtheta_1 KL(pi||pi_ref) = p1 (l1 - KL), d/dtheta_1 KL(pi_ref||pi) = p1 - q1
    p1, p2, q1, q2 = sp.symbols("p1 p2 q1 q2", positive=True)
    pi, ref = [p1, p2, 1 - p1 - p2], [q1, q2, 1 - q1 - q2]
    kl = sum(a * (sp.log(a) - sp.log(b)) for a, b in zip(pi, ref))
    require(_zero(g["reverse_kl"] - p1 * (sp.log(p1) - sp.log(q1) - kl)), "grad reverse KL must be p1 (l1 - KL)")
    require(_zero(g["forward_kl"] - (p1 - q1)), "grad forward KL must be p1 - q1")
    return True


@derivation
def optimal_policy() -> bool:
    """J(pi) = E_pi[r] - beta KL(pi||pi_ref) = beta log Z - beta KL(pi||pi*), pi* = pi_ref e^{r/beta}/Z."""
    beta = sp.symbols("beta", positive=True)
    r = sp.symbols(f"r1:{_K + 1}", real=True)
    _, pi, ref = _softmax_and_ref()
    z = sum(rf * sp.exp(ri / beta) for rf, ri in zip(ref, r))
    star = [rf * sp.exp(ri / beta) / z for rf, ri in zip(ref, r)]
    require(_zero(sum(star) - 1), "pi* must be normalised")
    j = sum(p * ri for p, ri in zip(pi, r)) - beta * sum(p * (sp.log(p) - sp.log(rf)) for p, rf in zip(pi, ref))
    kl_star = sum(p * (sp.log(p) - sp.log(s)) for p, s in zip(pi, star))
    identity = sp.expand_log(j - (beta * sp.log(z) - beta * kl_star), force=True)
    require(_zero(identity), "J(pi) must equal beta log Z - beta KL(pi||pi*)")
    # stationarity of the Lagrangian gives the same pi*
    p, mu = sp.symbols("p mu", positive=True)
    r1, q1 = sp.symbols("r q", positive=True)
    stat = sp.solve(sp.Eq(sp.diff(p * r1 - beta * p * sp.log(p / q1) - mu * p, p), 0), p)
    require(len(stat) == 1 and _zero(stat[0] - q1 * sp.exp(r1 / beta) * sp.exp(-(mu + beta) / beta)),
            f"stationarity must give q exp(r/beta) exp(-(mu+beta)/beta), got {stat}")
    return True


@derivation
def dpo_logz_cancels() -> bool:
    """With r = beta log(pi*/pi_ref) + beta log Z(x), the Bradley-Terry margin does not contain Z."""
    beta, zx = sp.symbols("beta Z", positive=True)
    pw, pl, rw, rl = sp.symbols("pi_w pi_l ref_w ref_l", positive=True)
    margin = (beta * sp.log(pw / rw) + beta * sp.log(zx)) - (beta * sp.log(pl / rl) + beta * sp.log(zx))
    require(sp.diff(margin, zx) == 0, "log Z must cancel in the reward difference")
    require(_zero(sp.expand_log(margin - beta * (sp.log(pw / rw) - sp.log(pl / rl)), force=True)),
            "the margin must be the difference of implicit rewards")
    return True


@derivation
def dpo_gradient() -> bool:
    """d/dh [-log sigmoid(h)] = -sigmoid(-h), and sigma'(x) = sigma(x) sigma(-x)."""
    h = sp.symbols("h", real=True)
    sig = lambda x: 1 / (1 + sp.exp(-x))  # noqa: E731
    require(_zero(sp.diff(-sp.log(sig(h)), h) + sig(-h)), "d/dh[-log sigma(h)] must be -sigma(-h)")
    require(_zero(sp.diff(sig(h), h) - sig(h) * sig(-h)), "sigma' must be sigma(h) sigma(-h)")
    # chain rule through h = beta (log pi_w - log pi_l) - const: the per-pair weight is beta * sigma(-h)
    beta, a, b = sp.symbols("beta a b", real=True)  # a, b stand for log pi_theta(y_w), log pi_theta(y_l)
    hh = beta * (a - b)
    loss = -sp.log(sig(hh))
    require(_zero(sp.diff(loss, a) + beta * sig(-hh)), "dL/dlog pi(y_w) must be -beta sigma(-h)")
    require(_zero(sp.diff(loss, b) - beta * sig(-hh)), "dL/dlog pi(y_l) must be +beta sigma(-h)")
    return True


@derivation
def k2_bias_small_kl() -> bool:
    """For pi = pi_ref + eps * v (a perturbation of size eps), KL = O(eps^2) and E[k2] - KL = O(eps^3)."""
    eps = sp.symbols("epsilon", real=True)
    ref = [sp.Rational(1, 2), sp.Rational(1, 3), sp.Rational(1, 6)]
    v = [sp.Rational(1), sp.Rational(-1), sp.Rational(0)]  # sums to zero
    pi = [r + eps * d for r, d in zip(ref, v)]
    ell = [sp.log(p / r) for p, r in zip(pi, ref)]
    kl = sum(p * e for p, e in zip(pi, ell))
    bias = sum(p * e**2 / 2 for p, e in zip(pi, ell)) - kl
    kl_series = sp.series(kl, eps, 0, 4).removeO()
    bias_series = sp.series(bias, eps, 0, 4).removeO()
    require(all(kl_series.coeff(eps, k) == 0 for k in (0, 1)) and kl_series.coeff(eps, 2) != 0,
            "KL must start at order eps^2")
    require(all(sp.simplify(bias_series.coeff(eps, k)) == 0 for k in (0, 1, 2)),
            "the k2 bias must vanish to order eps^2")
    require(sp.simplify(bias_series.coeff(eps, 3)) != 0, "this example has a non-zero eps^3 bias")
    # the cumulant identity at order eps^3: bias = kappa_3 / 6 + O(eps^4)
    mean = sum(p * e for p, e in zip(pi, ell))
    kappa3 = sum(p * (e - mean) ** 3 for p, e in zip(pi, ell))
    k3_series = sp.series(kappa3 / 6, eps, 0, 4).removeO()
    require(sp.simplify(bias_series.coeff(eps, 3) - k3_series.coeff(eps, 3)) == 0,
            "the leading bias must be kappa_3 / 6")
    return True


@derivation
def k2_bias_gaussian() -> bool:
    """pi = N(0,1), pi_ref = N(mu,1): l ~ N(mu^2/2, mu^2) under pi, KL = mu^2/2, E[k2] - KL = KL^2/2."""
    mu, y = sp.symbols("mu y", real=True)
    ell = -y**2 / 2 + (y - mu) ** 2 / 2  # log N(y;0,1) - log N(y;mu,1)
    dens = sp.exp(-y**2 / 2) / sp.sqrt(2 * sp.pi)
    kl = sp.integrate(ell * dens, (y, -sp.oo, sp.oo))
    ek2 = sp.integrate(ell**2 / 2 * dens, (y, -sp.oo, sp.oo))
    require(_zero(kl - mu**2 / 2), f"KL must be mu^2/2, got {kl}")
    require(_zero(ek2 - kl - kl**2 / 2), "the k2 bias must be KL^2/2 for same-variance Gaussians")
    return True


@derivation
def adaptive_beta_integrates_error() -> bool:
    """beta_{t+1} = beta_t (1 + K e_t) gives log beta_T = log beta_0 + sum log(1 + K e_t) ~ log beta_0 + K sum e_t."""
    k = sp.symbols("K", positive=True)
    e = sp.symbols("e0:4", real=True)
    beta0 = sp.symbols("beta0", positive=True)
    beta = beta0
    for et in e:
        beta = beta * (1 + k * et)
    lhs = sp.expand_log(sp.log(beta), force=True) - sp.log(beta0)
    first_order = sp.series(lhs.subs({et: sp.Symbol("s") * et for et in e}), sp.Symbol("s"), 0, 2).removeO()
    require(_zero(first_order.subs(sp.Symbol("s"), 1) - k * sum(e)),
            "to first order, log beta must move by K times the summed error (integral action)")
    return True


def binary_optimum_expressions() -> dict[str, sp.Expr]:
    """Optimum of E[r] - beta KL for a 0/1 reward with success rate ``p0`` under the reference.

    Keys: ``q`` (success rate of pi*), ``fail`` (1 - q, written without cancellation), ``kl``
    (KL(pi*||pi_ref) as a Bernoulli KL), ``kl_stable`` (the same value as -fail/beta - log(p0 + (1-p0)
    e^{-1/beta}), safe to evaluate for small beta), symbols ``p0`` and ``beta``.
    """
    p0, beta = sp.symbols("p0 beta", positive=True)
    z = p0 * sp.exp(1 / beta) + (1 - p0)
    q = p0 * sp.exp(1 / beta) / z
    small = (1 - p0) * sp.exp(-1 / beta)
    fail = small / (p0 + small)
    kl = q * sp.log(q / p0) + (1 - q) * sp.log((1 - q) / (1 - p0))
    kl_stable = -fail / beta - sp.log(p0 + small)
    return {"q": q, "fail": fail, "kl": kl, "kl_stable": kl_stable, "p0": p0, "beta": beta}


@derivation
def binary_reward_optimum() -> bool:
    """For a 0/1 reward, KL(pi*||pi_ref) = q/beta - log Z, and it tends to log(1/p0) as beta -> 0."""
    ex = binary_optimum_expressions()
    q, kl, p0, beta = ex["q"], ex["kl"], ex["p0"], ex["beta"]
    z = p0 * sp.exp(1 / beta) + (1 - p0)
    require(_zero(sp.simplify(1 - q - ex["fail"])), "fail must equal 1 - q")
    diff = kl - (q / beta - sp.log(z))
    diff_stable = kl - ex["kl_stable"]
    for pv in (sp.Rational(1, 10), sp.Rational(1, 2)):
        for bv in (sp.Rational(1, 25), sp.Rational(1, 3), sp.Integer(2)):
            require(abs(sp.N(diff.subs({p0: pv, beta: bv}), 40)) < sp.Float("1e-30"),
                    "KL(pi*||pi_ref) must be E*[r]/beta - log Z")
            require(abs(sp.N(diff_stable.subs({p0: pv, beta: bv}), 40)) < sp.Float("1e-30"),
                    "the stable form must equal the Bernoulli KL")
    # limit beta -> 0+: substitute beta = 1/u, u -> oo
    u = sp.symbols("u", positive=True)
    half = sp.Rational(1, 10)
    lim = sp.limit(kl.subs(beta, 1 / u).subs(p0, half), u, sp.oo)
    require(_zero(lim - sp.log(10)), f"KL must tend to log(1/p0) as beta -> 0, got {lim}")
    return True


def gao_peak_expressions() -> dict[str, sp.Expr]:
    """Peak of the best-of-n gold-reward fit R(d) = d (alpha - b d), d = sqrt(KL) (Gao et al. 2023)."""
    alpha, b, d = sp.symbols("alpha b d", positive=True)
    r = d * (alpha - b * d)
    d_star = sp.solve(sp.diff(r, d), d)[0]
    return {
        "R": r,
        "d_star": d_star,
        "kl_star": d_star**2,
        "R_star": sp.simplify(r.subs(d, d_star)),
        "half_budget_fraction": sp.nsimplify(sp.simplify(r.subs(d, d_star / sp.sqrt(2)) / r.subs(d, d_star))),
        "alpha": alpha,
        "b": b,
        "d": d,
    }


@derivation
def gao_bon_peak() -> bool:
    """d* = alpha/(2b), KL* = alpha^2/(4b^2), R* = alpha^2/(4b); at KL*/2 the gain is sqrt(2) - 1/2 of R*."""
    ex = gao_peak_expressions()
    alpha, b = ex["alpha"], ex["b"]
    require(_zero(ex["d_star"] - alpha / (2 * b)), "d* must be alpha/(2b)")
    require(_zero(ex["kl_star"] - alpha**2 / (4 * b**2)), "KL* must be alpha^2/(4b^2)")
    require(_zero(ex["R_star"] - alpha**2 / (4 * b)), "R* must be alpha^2/(4b)")
    require(_zero(ex["half_budget_fraction"] - (sp.sqrt(2) - sp.Rational(1, 2))), "half budget must keep sqrt(2) - 1/2")
    return True


@derivation
def best_of_n_kl_continuous() -> bool:
    """A reward with a continuous distribution (no atoms): the best-of-n density is n F^{n-1} f and its KL is log n - (n-1)/n."""
    n = sp.symbols("n", positive=True, integer=True)
    u = sp.symbols("u", positive=True)
    # in the quantile variable u = F(y) the reference is uniform and best-of-n has density n u^(n-1)
    kl = sp.integrate(n * u ** (n - 1) * sp.log(n * u ** (n - 1)), (u, 0, 1), conds="none")
    require(_zero(sp.simplify(kl - (sp.log(n) - (n - 1) / n))), f"KL must be log n - (n-1)/n, got {sp.simplify(kl)}")
    return True


def best_of_n_kl_bernoulli_expressions() -> dict[str, sp.Expr]:
    """Best-of-n over a reference whose reward is 1 with probability p (0 otherwise), ties broken at random.

    Best-of-n returns a reward-1 sample with probability 1 - (1-p)^n, uniformly within each tie
    class, so its KL to the reference is that of two Bernoulli distributions.
    """
    p = sp.symbols("p", positive=True)
    n = sp.symbols("n", positive=True, integer=True)
    q = 1 - (1 - p) ** n
    kl = q * sp.log(q / p) + (1 - q) * sp.log((1 - q) / (1 - p))
    return {"q": q, "kl": kl, "bound": sp.log(n) - (n - 1) / n, "p": p, "n": n}


@derivation
def best_of_n_kl_bound_with_ties() -> bool:
    """With ties the formula is only an upper bound: a 0/1 reward gives a KL strictly below it."""
    ex = best_of_n_kl_bernoulli_expressions()
    kl, bound, p, n = ex["kl"], ex["bound"], ex["p"], ex["n"]
    for nv in (2, 4, 16, 64):
        for pv in (sp.Rational(1, 100), sp.Rational(1, 10), sp.Rational(1, 2), sp.Rational(9, 10)):
            gap = (bound - kl).subs({n: nv, p: pv})
            require(sp.N(gap, 30) > 0, f"with ties the KL must be below the bound (n={nv}, p={pv})")
    # n = 1: best-of-1 is the reference itself
    require(_zero(sp.simplify(kl.subs(n, 1))), "best-of-1 must have KL 0")
    return True
