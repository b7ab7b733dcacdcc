"""Derivations of ``ch-schedules``, checked by sympy.

For the tilted optimum ``pi*_beta ∝ pi_ref exp(r/beta)`` of ``E[r] - beta KL(pi||pi_ref)``:

- :func:`reward_derivative`: ``dE[r]/dbeta = -Var_{pi*}(r) / beta**2``;
- :func:`kl_derivative`: ``dKL/dbeta = -Var_{pi*}(r) / beta**3`` (so the KL falls monotonically as
  beta grows, strictly unless the reward is constant);
- :func:`reward_scale_equivalence`: scaling the reward by ``c > 0`` is the same as dividing beta by
  ``c``: ``pi*(c r, beta) = pi*(r, beta/c)`` and ``J_{c r, beta} = c J_{r, beta/c}``.

Each is checked on a symbolic 3-armed bandit (arbitrary positive reference weights, arbitrary rewards).

- :func:`adaptive_beta_integrates_error`: the multiplicative adaptive controller integrates the KL
  error in ``log beta`` (the interview chapter's Q17);
- :func:`binary_reward_optimum` (and :func:`binary_optimum_expressions`): for a 0/1 reward the optimum's
  KL is ``E*[r]/beta - log Z`` and tends to ``log(1/p0)`` as beta -> 0 (Q18).
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, is_zero, require, simplex, tilt  # noqa: F401

__all__ = [
    "tilted_bandit",
    "reward_derivative",
    "kl_derivative",
    "reward_scale_equivalence",
    "adaptive_beta_integrates_error",
    "binary_optimum_expressions",
    "binary_reward_optimum",
]

K = 3


def tilted_bandit():
    """Symbols and expressions of the optimum on a symbolic K=3 bandit.

    Returns ``(beta, q, r, pi, mean, var, kl)`` with ``q = a / sum(a)`` the reference probabilities
    (``a`` positive symbols), ``r`` the rewards, ``pi`` the tilted optimum.
    """
    beta = sp.symbols("beta", positive=True)
    q = simplex("a", K)
    r = sp.symbols("r0:3", real=True)
    Z = sum(q[i] * sp.exp(r[i] / beta) for i in range(K))
    pi = tilt(q, r, beta)
    mean = sum(pi[i] * r[i] for i in range(K))
    var = sum(pi[i] * (r[i] - mean) ** 2 for i in range(K))
    # log(pi/q) = r/beta - log Z exactly; using it keeps the expression small.
    kl = sum(pi[i] * (r[i] / beta - sp.log(Z)) for i in range(K))
    return beta, q, r, pi, mean, var, kl


@derivation
def reward_derivative() -> bool:
    """dE_{pi*}[r]/dbeta = -Var_{pi*}(r)/beta^2."""
    beta, q, r, pi, mean, var, kl = tilted_bandit()
    diff = sp.diff(mean, beta) + var / beta**2
    require(is_zero(sp.together(diff)), f"dE[r]/dbeta + Var/beta^2 did not simplify to 0: {diff}")
    return True


@derivation
def kl_derivative() -> bool:
    """dKL(pi*||pi_ref)/dbeta = -Var_{pi*}(r)/beta^3 = (1/beta) dE[r]/dbeta <= 0."""
    beta, q, r, pi, mean, var, kl = tilted_bandit()
    diff = sp.diff(kl, beta) + var / beta**3
    require(is_zero(sp.together(diff)), f"dKL/dbeta + Var/beta^3 did not simplify to 0: {diff}")
    # and Var is a sum of non-negative terms, so the derivative is <= 0
    terms = [pi[i] * (r[i] - mean) ** 2 for i in range(K)]
    require(all(t.is_nonnegative for t in terms), "Var is not manifestly a sum of non-negative terms")
    return True


@derivation
def reward_scale_equivalence() -> bool:
    """pi*(c r, beta) = pi*(r, beta/c) and J_{c r, beta}(pi) = c * J_{r, beta/c}(pi) for every pi."""
    beta, c = sp.symbols("beta c", positive=True)
    q0, q1 = sp.symbols("q0 q1", positive=True)
    q = [q0, q1, 1 - q0 - q1]
    r = sp.symbols("r0:3", real=True)
    p0, p1 = sp.symbols("p0 p1", positive=True)
    p = [p0, p1, 1 - p0 - p1]

    def J(rr, b):
        return sum(p[i] * rr[i] - b * p[i] * sp.log(p[i] / q[i]) for i in range(K))

    scaled = [c * ri for ri in r]
    a, b_ = tilt(q, scaled, beta), tilt(q, r, beta / c)
    require(all(sp.simplify(a[i] - b_[i]) == 0 for i in range(K)), "pi*(c r, beta) != pi*(r, beta/c)")
    require(sp.simplify(sp.expand(J(scaled, beta) - c * J(r, beta / c))) == 0, "J_{cr,beta} != c J_{r,beta/c}")
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
    require(
        is_zero(first_order.subs(sp.Symbol("s"), 1) - k * sum(e)),
        "to first order, log beta must move by K times the summed error (integral action)",
    )
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
    require(is_zero(sp.simplify(1 - q - ex["fail"])), "fail must equal 1 - q")
    diff = kl - (q / beta - sp.log(z))
    diff_stable = kl - ex["kl_stable"]
    for pv in (sp.Rational(1, 10), sp.Rational(1, 2)):
        for bv in (sp.Rational(1, 25), sp.Rational(1, 3), sp.Integer(2)):
            require(
                abs(sp.N(diff.subs({p0: pv, beta: bv}), 40)) < sp.Float("1e-30"),
                "KL(pi*||pi_ref) must be E*[r]/beta - log Z",
            )
            require(
                abs(sp.N(diff_stable.subs({p0: pv, beta: bv}), 40)) < sp.Float("1e-30"),
                "the stable form must equal the Bernoulli KL",
            )
    # limit beta -> 0+: substitute beta = 1/u, u -> oo
    u = sp.symbols("u", positive=True)
    half = sp.Rational(1, 10)
    lim = sp.limit(kl.subs(beta, 1 / u).subs(p0, half), u, sp.oo)
    require(is_zero(lim - sp.log(10)), f"KL must tend to log(1/p0) as beta -> 0, got {lim}")
    return True
