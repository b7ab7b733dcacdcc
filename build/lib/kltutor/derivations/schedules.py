"""Derivations of chapter 4, checked by sympy.

For the tilted optimum ``pi*_beta ∝ pi_ref exp(r/beta)`` of ``E[r] - beta KL(pi||pi_ref)``:

- :func:`reward_derivative`: ``dE[r]/dbeta = -Var_{pi*}(r) / beta**2``;
- :func:`kl_derivative`: ``dKL/dbeta = -Var_{pi*}(r) / beta**3`` (so the KL falls monotonically as
  beta grows, strictly unless the reward is constant);
- :func:`reward_scale_equivalence`: scaling the reward by ``c > 0`` is the same as dividing beta by
  ``c``: ``pi*(c r, beta) = pi*(r, beta/c)`` and ``J_{c r, beta} = c J_{r, beta/c}``.

Each is checked on a symbolic 3-armed bandit (arbitrary positive reference weights, arbitrary rewards).
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401

__all__ = ["tilted_bandit", "reward_derivative", "kl_derivative", "reward_scale_equivalence"]

K = 3


def tilted_bandit():
    """Symbols and expressions of the optimum on a symbolic K=3 bandit.

    Returns ``(beta, q, r, pi, mean, var, kl)`` with ``q = a / sum(a)`` the reference probabilities
    (``a`` positive symbols), ``r`` the rewards, ``pi`` the tilted optimum.
    """
    beta = sp.symbols("beta", positive=True)
    a = sp.symbols("a0:3", positive=True)
    q = [ai / sum(a) for ai in a]
    r = sp.symbols("r0:3", real=True)
    w = [q[i] * sp.exp(r[i] / beta) for i in range(K)]
    Z = sum(w)
    pi = [wi / Z for wi in w]
    mean = sum(pi[i] * r[i] for i in range(K))
    var = sum(pi[i] * (r[i] - mean) ** 2 for i in range(K))
    # log(pi/q) = r/beta - log Z exactly; using it keeps the expression small.
    kl = sum(pi[i] * (r[i] / beta - sp.log(Z)) for i in range(K))
    return beta, q, r, pi, mean, var, kl


def _is_zero(expr) -> bool:
    return sp.simplify(sp.expand(expr)) == 0


@derivation
def reward_derivative() -> bool:
    """dE_{pi*}[r]/dbeta = -Var_{pi*}(r)/beta^2."""
    beta, q, r, pi, mean, var, kl = tilted_bandit()
    diff = sp.diff(mean, beta) + var / beta**2
    require(_is_zero(sp.together(diff)), f"dE[r]/dbeta + Var/beta^2 did not simplify to 0: {diff}")
    return True


@derivation
def kl_derivative() -> bool:
    """dKL(pi*||pi_ref)/dbeta = -Var_{pi*}(r)/beta^3 = (1/beta) dE[r]/dbeta <= 0."""
    beta, q, r, pi, mean, var, kl = tilted_bandit()
    diff = sp.diff(kl, beta) + var / beta**3
    require(_is_zero(sp.together(diff)), f"dKL/dbeta + Var/beta^3 did not simplify to 0: {diff}")
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

    def opt(rr, b):
        w = [q[i] * sp.exp(rr[i] / b) for i in range(K)]
        return [wi / sum(w) for wi in w]

    def J(rr, b):
        return sum(p[i] * rr[i] - b * p[i] * sp.log(p[i] / q[i]) for i in range(K))

    scaled = [c * ri for ri in r]
    a, b_ = opt(scaled, beta), opt(r, beta / c)
    require(all(sp.simplify(a[i] - b_[i]) == 0 for i in range(K)), "pi*(c r, beta) != pi*(r, beta/c)")
    require(sp.simplify(sp.expand(J(scaled, beta) - c * J(r, beta / c))) == 0, "J_{cr,beta} != c J_{r,beta/c}")
    return True
