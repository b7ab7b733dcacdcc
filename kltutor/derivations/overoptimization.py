"""Derivations of ``ch-overoptimization``, checked by sympy.

- :func:`bon_peak` and :func:`rl_peak`: the maximiser and maximum of Gao et al.'s two forms,
  ``d(alpha - b d)`` and ``d(alpha - b log d)``.
- :func:`stopping_fraction`: the fraction of the peak gold gain kept at ``lambda * KL*``.
- :func:`bon_safe_budget`: where the bon form first reaches ``rho`` times its peak.
- :func:`best_of_n_continuous_kl`: ``log n - (n-1)/n`` is the exact KL for a reward with a continuous
  distribution under the base policy (no atoms).
- :func:`mirror_descent_stays_tilted`: natural-gradient steps on ``r - beta * log(pi/pi_ref)``
  keep ``log(pi/pi_ref)`` proportional to ``r`` (up to normalisation), so a KL penalty only moves
  the policy along the same path that early stopping truncates.
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, is_zero, require  # noqa: F401

__all__ = [
    "bon_peak",
    "rl_peak",
    "stopping_fraction",
    "bon_safe_budget",
    "gao_peak_expressions",
    "best_of_n_continuous_kl",
    "best_of_n_kl_bernoulli_expressions",
    "best_of_n_kl_bound_with_ties",
    "mirror_descent_stays_tilted",
    "symbols",
]

# Gao et al.'s coefficients are (alpha, b): beta is kept for the KL coefficient (notation page).
d, alpha, b, lam, rho = sp.symbols("d alpha b lambda rho", positive=True)
n = sp.symbols("n", integer=True, positive=True)


def symbols() -> dict[str, sp.Expr]:
    """The two forms as sympy expressions, for display."""
    return {"R_bon": d * (alpha - b * d), "R_rl": d * (alpha - b * sp.log(d))}


@derivation
def bon_peak() -> bool:
    """R = d(alpha - b d): d* = alpha/(2 b), R* = alpha^2/(4 b), a maximum."""
    R = d * (alpha - b * d)
    roots = sp.solve(sp.diff(R, d), d)
    require(roots == [alpha / (2 * b)], f"stationary points {roots}")
    require(sp.simplify(R.subs(d, roots[0]) - alpha**2 / (4 * b)) == 0, "peak value")
    require(sp.simplify(sp.diff(R, d, 2)) == -2 * b, "second derivative is -2 b < 0")
    return True


@derivation
def rl_peak() -> bool:
    """R = d(alpha - b log d): d* = exp(alpha/b - 1), R* = b d*, a maximum."""
    R = d * (alpha - b * sp.log(d))
    dstar = sp.exp(alpha / b - 1)
    require(sp.simplify(sp.diff(R, d).subs(d, dstar)) == 0, "d* is stationary")
    require(sp.simplify(R.subs(d, dstar) - b * dstar) == 0, "peak value is b d*")
    require(sp.simplify(sp.diff(R, d, 2) + b / d) == 0, "second derivative -b/d < 0")
    return True


@derivation
def stopping_fraction() -> bool:
    """Stopping at KL = lambda KL* keeps 2 sqrt(lambda) - lambda (bon) or sqrt(lambda)(1 - log(lambda)/2) (rl)."""
    Rb = d * (alpha - b * d)
    db = alpha / (2 * b)
    frac_b = sp.simplify(Rb.subs(d, sp.sqrt(lam) * db) / Rb.subs(d, db))
    require(sp.simplify(frac_b - (2 * sp.sqrt(lam) - lam)) == 0, f"bon fraction {frac_b}")
    Rr = d * (alpha - b * sp.log(d))
    dr = sp.exp(alpha / b - 1)
    frac_r = sp.simplify(sp.expand_log(Rr.subs(d, sp.sqrt(lam) * dr) / Rr.subs(d, dr), force=True))
    require(sp.simplify(frac_r - sp.sqrt(lam) * (1 - sp.log(lam) / 2)) == 0, f"rl fraction {frac_r}")
    return True


@derivation
def bon_safe_budget() -> bool:
    """The bon form reaches rho R* (rising side) at d = d* (1 - sqrt(1 - rho))."""
    R = d * (alpha - b * d)
    dstar = alpha / (2 * b)
    dsafe = dstar * (1 - sp.sqrt(1 - rho))
    require(sp.simplify(R.subs(d, dsafe) - rho * alpha**2 / (4 * b)) == 0, "R(d_safe) = rho R*")
    return True


def gao_peak_expressions() -> dict[str, sp.Expr]:
    """Peak of the best-of-n gold-reward fit R(d) = d (alpha - b d), d = sqrt(KL) (Gao et al. 2023), for display:
    ``d_star``, ``kl_star``, ``R_star`` and ``half_budget_fraction`` (the gain kept at KL*/2; proved by
    :func:`bon_peak` and :func:`stopping_fraction`)."""
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
def best_of_n_continuous_kl() -> bool:
    """For a reward with a continuous distribution (no atoms), u = F(r) ~ U(0,1) and best-of-n has density
    n u^(n-1): KL = log n - (n-1)/n, for symbolic n (and, as a cross-check, for n = 1..8 one by one)."""
    u = sp.symbols("u", positive=True)
    kl = sp.integrate(n * u ** (n - 1) * sp.log(n * u ** (n - 1)), (u, 0, 1), conds="none")
    require(sp.simplify(kl - (sp.log(n) - (n - 1) / n)) == 0, f"KL must be log n - (n-1)/n, got {sp.simplify(kl)}")
    for k in range(1, 9):
        kl = sp.integrate(k * u ** (k - 1) * sp.log(k * u ** (k - 1)), (u, 0, 1))
        require(sp.simplify(kl - (sp.log(k) - sp.Rational(k - 1, k))) == 0, f"n={k}: {kl}")
    return True


@derivation
def mirror_descent_stays_tilted() -> bool:
    """ell_{t+1} = ell_t + eta (r - beta ell_t) from ell_0 = 0 gives ell_t = c_t r, c_t = (1 - (1 - eta beta)^t)/beta.

    (Normalisation adds a y-independent constant at every step, which does not change the policy.)
    So every iterate is pi_ref exp(c_t r)/Z: the tilted family, the same family early stopping walks
    along without a penalty (beta = 0 gives c_t = eta t).
    """
    eta, r, b = sp.symbols("eta r beta", positive=True)
    t = sp.symbols("t", integer=True, nonnegative=True)
    c = (1 - (1 - eta * b) ** t) / b
    require(sp.simplify(c.subs(t, 0)) == 0, "c_0 = 0")
    step = c * r + eta * (r - b * c * r)
    require(sp.simplify(step - c.subs(t, t + 1) * r) == 0, "recursion")
    require(sp.limit(c, b, 0) == eta * t, "beta -> 0 limit is eta t (no penalty)")
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
    require(is_zero(sp.simplify(kl.subs(n, 1))), "best-of-1 must have KL 0")
    return True
