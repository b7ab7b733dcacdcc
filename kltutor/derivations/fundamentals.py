"""Derivations of :ref:`ch-fundamentals`, checked by sympy.

Expression builders (``gaussian_kl_integral`` and friends) return the sympy objects the chapter
displays; the ``@derivation`` functions prove the identities and return ``True`` or raise
:class:`~kltutor.derivations.DerivationError`.
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401

__all__ = [
    "gaussian_symbols",
    "gaussian_kl_closed_form",
    "gaussian_kl_integral",
    "gaussian_kl_derivation",
    "gaussian_kl_nonnegative",
    "gaussian_kl_affine_invariance",
    "chain_rule_two_by_two",
    "alpha_divergence_limits",
    "hellinger_kl_bound",
    "kl_chi2_bound",
]


def gaussian_symbols():
    """Symbols ``x, mu_p, sigma_p, mu_q, sigma_q`` (real; sigmas positive)."""
    x, mu_p, mu_q = sp.symbols("x mu_p mu_q", real=True)
    sigma_p, sigma_q = sp.symbols("sigma_p sigma_q", positive=True)
    return x, mu_p, sigma_p, mu_q, sigma_q


def _normal_pdf(x, mu, sigma):
    return sp.exp(-((x - mu) ** 2) / (2 * sigma**2)) / (sigma * sp.sqrt(2 * sp.pi))


def gaussian_kl_closed_form(mu_p=None, sigma_p=None, mu_q=None, sigma_q=None):
    """log(sigma_q/sigma_p) + (sigma_p^2 + (mu_p - mu_q)^2) / (2 sigma_q^2) - 1/2, as a sympy expression."""
    _, mp, sp_, mq, sq = gaussian_symbols()
    mu_p, sigma_p = (mp if mu_p is None else mu_p), (sp_ if sigma_p is None else sigma_p)
    mu_q, sigma_q = (mq if mu_q is None else mu_q), (sq if sigma_q is None else sigma_q)
    return sp.log(sigma_q / sigma_p) + (sigma_p**2 + (mu_p - mu_q) ** 2) / (2 * sigma_q**2) - sp.Rational(1, 2)


def gaussian_kl_integral():
    """The defining integral, evaluated by sympy: int p(x) (log p(x) - log q(x)) dx over the real line.

    The log-ratio is expanded first (it is a quadratic in x), so sympy integrates a Gaussian times
    a polynomial.
    """
    x, mu_p, sigma_p, mu_q, sigma_q = gaussian_symbols()
    p = _normal_pdf(x, mu_p, sigma_p)
    log_ratio = sp.expand_log(sp.log(_normal_pdf(x, mu_p, sigma_p)) - sp.log(_normal_pdf(x, mu_q, sigma_q)), force=True)
    log_ratio = sp.expand(sp.simplify(log_ratio))
    return sp.simplify(sp.integrate(p * log_ratio, (x, -sp.oo, sp.oo)))


@derivation
def gaussian_kl_derivation() -> bool:
    """sympy's integral of the definition equals the closed form, and the density is normalised."""
    x, mu_p, sigma_p, _, _ = gaussian_symbols()
    norm = sp.integrate(_normal_pdf(x, mu_p, sigma_p), (x, -sp.oo, sp.oo))
    require(sp.simplify(norm - 1) == 0, f"the Gaussian density does not integrate to 1: {norm}")
    integral = gaussian_kl_integral()
    diff = sp.simplify(sp.expand_log(integral - gaussian_kl_closed_form(), force=True))
    require(diff == 0, f"integral and closed form differ by {diff}")
    return True


@derivation
def gaussian_kl_nonnegative() -> bool:
    """KL(N(mu_p, s_p^2) || N(mu_q, s_q^2)) = 1/2 (u - 1 - log u) + d^2/2 >= 0, with u = s_p^2/s_q^2, d = (mu_p - mu_q)/s_q.

    g(u) = u - 1 - log u is convex on u > 0 (g'' = 1/u^2 > 0) with its only stationary point at
    u = 1 where g = 0, so g >= 0 with equality iff u = 1; the second term vanishes iff mu_p = mu_q.
    """
    _, mu_p, sigma_p, mu_q, sigma_q = gaussian_symbols()
    u = sp.symbols("u", positive=True)
    g = u - 1 - sp.log(u)
    rewritten = sp.Rational(1, 2) * g.subs(u, sigma_p**2 / sigma_q**2) + (mu_p - mu_q) ** 2 / (2 * sigma_q**2)
    diff = sp.simplify(sp.expand_log(rewritten - gaussian_kl_closed_form(), force=True))
    require(diff == 0, f"the rewriting as g(u)/2 + d^2/2 is wrong by {diff}")
    require(sp.solve(sp.diff(g, u), u) == [1], "g'(u) = 0 should have the single root u = 1")
    require(sp.diff(g, u, 2).is_positive, "g''(u) = 1/u^2 should be positive on u > 0")
    require(g.subs(u, 1) == 0, "g(1) should be 0")
    return True


@derivation
def gaussian_kl_affine_invariance() -> bool:
    """KL is unchanged when both Gaussians go through the same map x -> a x + b (a != 0).

    N(mu, s^2) maps to N(a mu + b, a^2 s^2); the closed form is checked for a > 0 and a < 0.
    """
    _, mu_p, sigma_p, mu_q, sigma_q = gaussian_symbols()
    b = sp.symbols("b", real=True)
    for a in (sp.symbols("a", positive=True), -sp.symbols("c", positive=True)):
        mapped = gaussian_kl_closed_form(a * mu_p + b, sp.Abs(a) * sigma_p, a * mu_q + b, sp.Abs(a) * sigma_q)
        diff = sp.simplify(sp.expand_log(mapped - gaussian_kl_closed_form(), force=True))
        require(diff == 0, f"KL changed under x -> {a} x + b by {diff}")
    return True


@derivation
def chain_rule_two_by_two() -> bool:
    """Chain rule on a general pair of joint distributions over {0,1} x {0,1}, symbolically.

    p(x, y) = p(x) p(y|x) with free parameters (same for q); KL(p_XY || q_XY) equals
    KL(p_X || q_X) + sum_x p(x) KL(p(.|x) || q(.|x)).
    """
    a, b0, b1, c, d0, d1 = sp.symbols("a b0 b1 c d0 d1", positive=True)
    px = {0: 1 - a, 1: a}
    qx = {0: 1 - c, 1: c}
    py = {0: {0: 1 - b0, 1: b0}, 1: {0: 1 - b1, 1: b1}}
    qy = {0: {0: 1 - d0, 1: d0}, 1: {0: 1 - d1, 1: d1}}
    joint = sum(px[i] * py[i][j] * sp.log(px[i] * py[i][j] / (qx[i] * qy[i][j])) for i in (0, 1) for j in (0, 1))
    marginal = sum(px[i] * sp.log(px[i] / qx[i]) for i in (0, 1))
    conditional = sum(px[i] * sum(py[i][j] * sp.log(py[i][j] / qy[i][j]) for j in (0, 1)) for i in (0, 1))
    diff = sp.simplify(sp.expand(sp.expand_log(joint - marginal - conditional, force=True)))
    require(diff == 0, f"chain rule fails by {diff}")
    return True


@derivation
def alpha_divergence_limits() -> bool:
    """Amari's D_alpha on a two-point space tends to KL(p||q) at alpha -> 1 and KL(q||p) at alpha -> 0.

    Both numerator N(alpha) = 1 - sum p^alpha q^(1-alpha) and denominator alpha (1 - alpha) vanish at
    the endpoints, so the limit is N'/D' there (l'Hopital); sympy's ``limit`` confirms it.
    """
    p, q, alpha = sp.symbols("p q alpha", positive=True)
    P, Q = (p, 1 - p), (q, 1 - q)
    num = 1 - sum(P[i] ** alpha * Q[i] ** (1 - alpha) for i in (0, 1))
    den = alpha * (1 - alpha)
    kl_pq = sum(P[i] * sp.log(P[i] / Q[i]) for i in (0, 1))
    kl_qp = sum(Q[i] * sp.log(Q[i] / P[i]) for i in (0, 1))
    for at, target in ((1, kl_pq), (0, kl_qp)):
        require(sp.simplify(num.subs(alpha, at)) == 0 and den.subs(alpha, at) == 0, f"not a 0/0 form at alpha={at}")
        ratio = sp.diff(num, alpha).subs(alpha, at) / sp.diff(den, alpha).subs(alpha, at)
        diff = sp.simplify(sp.expand_log(ratio - target, force=True))
        require(diff == 0, f"l'Hopital limit at alpha={at} differs from the KL by {diff}")
    # An independent check of the same limits at a rational point.
    vals = {p: sp.Rational(1, 3), q: sp.Rational(3, 4)}
    for at, target in ((1, kl_pq), (0, kl_qp)):
        lim = sp.limit((num / den).subs(vals), alpha, at)
        require(
            sp.simplify(sp.expand_log(lim - target.subs(vals), force=True)) == 0, f"sympy.limit disagrees at alpha={at}"
        )
    return True


@derivation
def hellinger_kl_bound() -> bool:
    """With H^2 = 1 - BC (BC = sum sqrt(pq), the Bhattacharyya coefficient): H^2 <= KL/2.

    Step 1 (Jensen, log concave): -KL/2 = E_p[log sqrt(q/p)] <= log E_p[sqrt(q/p)] = log BC.
    Step 2 (checked here): 1 - t <= -log t on 0 < t <= 1, so H^2 = 1 - BC <= -log BC <= KL/2.
    With the other convention H'^2 = sum (sqrt p - sqrt q)^2 = 2 H^2 the bound is H'^2 <= KL.
    """
    t = sp.symbols("t", positive=True)
    h = -sp.log(t) - (1 - t)
    require(h.subs(t, 1) == 0, "h(1) should be 0")
    dh = sp.simplify(sp.diff(h, t))
    require(sp.simplify(dh - (t - 1) / t) == 0, f"h'(t) should be (t-1)/t, got {dh}")
    # (t - 1)/t <= 0 on (0, 1]: h decreases to h(1) = 0, hence h >= 0 there.
    s = sp.symbols("s", nonnegative=True)  # t = 1/(1+s) covers (0, 1]
    require(sp.simplify(-dh.subs(t, 1 / (1 + s)) - s) == 0, "-h'(1/(1+s)) should equal s >= 0, i.e. h' <= 0 on (0, 1]")
    return True


@derivation
def kl_chi2_bound() -> bool:
    """KL(p||q) <= log(1 + chi^2(p||q)): Jensen on the concave log, with E_p[p/q] = 1 + chi^2.

    The identity E_p[p/q] = sum p^2/q = 1 + sum (p-q)^2/q is checked symbolically on three points.
    """
    p1, p2, q1, q2 = sp.symbols("p1 p2 q1 q2", positive=True)
    P, Q = (p1, p2, 1 - p1 - p2), (q1, q2, 1 - q1 - q2)
    lhs = sum(P[i] ** 2 / Q[i] for i in range(3))
    rhs = 1 + sum((P[i] - Q[i]) ** 2 / Q[i] for i in range(3))
    require(sp.simplify(lhs - rhs) == 0, "E_p[p/q] != 1 + chi^2")
    return True
