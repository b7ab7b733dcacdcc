"""Derivations of ``ch-preference``, checked by sympy.

- :func:`closed_form_optimum`: the stationary point of the Lagrangian of
  :math:`\\max_\\pi \\sum_y \\pi(y) r(y) - \\beta\\sum_y\\pi(y)\\log\\frac{\\pi(y)}{\\pi_\\text{ref}(y)}`
  on the simplex is :math:`\\pi_\\text{ref}e^{r/\\beta}/Z`; the Hessian is negative definite (strict
  concavity, so the optimum is unique) and the optimal value is :math:`\\beta\\log Z`.
- :func:`dpo_from_optimum`: inverting the optimum gives :math:`r = \\beta\\log\\frac{\\pi^*}{\\pi_\\text{ref}} + \\beta\\log Z`
  and the Bradley-Terry probability of a pair no longer contains :math:`Z`.
- :func:`dpo_gradient`: :math:`\\frac{d}{dh}[-\\log\\sigma(\\beta h)] = -\\beta\\sigma(-\\beta h)`, using
  :math:`\\sigma' = \\sigma\\cdot\\sigma(-\\cdot)`.
- :func:`implicit_reward_mean_is_kl`: :math:`\\mathbb{E}_{y\\sim\\pi}[\\beta\\log\\pi/\\pi_\\text{ref}] = \\beta\\,\\mathrm{KL}(\\pi\\|\\pi_\\text{ref})`,
  and under any other distribution it is not.
- :func:`group_std_bound`: a group of rewards in [0, 1] has variance at most 1/4.

That the k3 loss term's expected gradient is the *forward* KL's is ``ch-placements``'s
(:func:`kltutor.derivations.placements.k3_in_loss_is_forward_kl_gradient`).
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, require, tilt  # noqa: F401

__all__ = [
    "closed_form_optimum",
    "dpo_from_optimum",
    "dpo_gradient",
    "implicit_reward_mean_is_kl",
    "group_std_bound",
]

_N = 3  # number of responses in the symbolic checks (the argument does not depend on it)


def _symbols():
    p = sp.symbols(f"p0:{_N}", positive=True)
    q = sp.symbols(f"q0:{_N}", positive=True)
    r = sp.symbols(f"r0:{_N}", real=True)
    beta = sp.symbols("beta", positive=True)
    return p, q, r, beta


@derivation
def closed_form_optimum() -> bool:
    """Lagrangian stationarity, strict concavity and the optimal value :math:`\\beta\\log Z`."""
    p, q, r, beta = _symbols()
    lam = sp.symbols("lambda", real=True)
    J = sum(p[i] * r[i] - beta * p[i] * sp.log(p[i] / q[i]) for i in range(_N))
    L = J + lam * (sum(p) - 1)
    # stationarity: dL/dp_i = r_i - beta (log p_i/q_i + 1) + lambda = 0
    sols = [sp.solve(sp.diff(L, p[i]), p[i]) for i in range(_N)]
    for i, s in enumerate(sols):
        require(len(s) == 1, f"stationarity in p{i} should have one solution, got {s}")
        expected = q[i] * sp.exp(r[i] / beta) * sp.exp((lam - beta) / beta)
        require(sp.simplify(s[0] - expected) == 0, f"p{i} = {s[0]} is not q e^(r/beta) times a constant")
    # normalisation fixes the constant: exp((lambda-beta)/beta) = 1/Z
    Z = sum(q[i] * sp.exp(r[i] / beta) for i in range(_N))
    pstar = tilt(q, r, beta)
    require(sp.simplify(sum(pstar) - 1) == 0, "pi* does not sum to 1")
    # strict concavity: the Hessian of J is diag(-beta / p_i), negative definite for p_i > 0
    H = sp.hessian(J, p)
    require(sp.simplify(H - sp.diag(*[-beta / p[i] for i in range(_N)])) == sp.zeros(_N), f"unexpected Hessian {H}")
    # optimal value J(pi*) = beta log Z
    Jstar = J.subs({p[i]: pstar[i] for i in range(_N)})
    require(sp.simplify(sp.expand_log(Jstar - beta * sp.log(Z), force=True)) == 0, "J(pi*) != beta log Z")
    # and J(pi) = beta log Z - beta KL(pi || pi*) for every pi on the simplex: pi* is the unique maximiser
    kl_to_star = sum(p[i] * sp.log(p[i] / pstar[i]) for i in range(_N))
    gap = sp.expand_log(J - (beta * sp.log(Z) - beta * kl_to_star), force=True)
    gap = sp.simplify(gap.subs(p[_N - 1], 1 - sum(p[: _N - 1])))
    require(gap == 0, f"J(pi) - (beta log Z - beta KL(pi||pi*)) = {gap}, expected 0")
    return True


@derivation
def dpo_from_optimum() -> bool:
    """:math:`r = \\beta\\log(\\pi^*/\\pi_\\text{ref}) + \\beta\\log Z`; Z cancels in the BT difference."""
    _, q, r, beta = _symbols()
    Z = sum(q[i] * sp.exp(r[i] / beta) for i in range(_N))
    pstar = tilt(q, r, beta)
    implicit = [beta * sp.log(pstar[i] / q[i]) for i in range(_N)]
    for i in range(_N):
        back = sp.simplify(sp.expand_log(implicit[i] + beta * sp.log(Z), force=True))
        require(sp.simplify(back - r[i]) == 0, f"inverting pi* does not give back r{i}: {back}")
    # Bradley-Terry on the implicit rewards: the difference is free of Z and equals r0 - r1
    diff = sp.simplify(sp.expand_log(implicit[0] - implicit[1], force=True))
    require(sp.simplify(diff - (r[0] - r[1])) == 0, f"implicit reward difference {diff} != r0 - r1")
    zsym = sp.symbols("Z", positive=True)
    generic = [beta * sp.log(sp.Symbol(f"pi{i}", positive=True) / q[i]) + beta * sp.log(zsym) for i in range(2)]
    require(not (generic[0] - generic[1]).has(zsym), "log Z does not cancel in the pairwise difference")
    return True


@derivation
def dpo_gradient() -> bool:
    """:math:`\\partial_h[-\\log\\sigma(\\beta h)] = -\\beta\\,\\sigma(-\\beta h)`, with :math:`\\sigma' = \\sigma\\,\\sigma(-\\cdot)`."""
    x, h = sp.symbols("x h", real=True)
    beta = sp.symbols("beta", positive=True)
    sigma = lambda z: 1 / (1 + sp.exp(-z))  # noqa: E731
    require(sp.simplify(sp.diff(sigma(x), x) - sigma(x) * sigma(-x)) == 0, "sigma' != sigma(x) sigma(-x)")
    loss = -sp.log(sigma(beta * h))
    require(sp.simplify(sp.diff(loss, h) + beta * sigma(-beta * h)) == 0, "dL/dh != -beta sigma(-beta h)")
    # with h = log pi_w - log pi_l - const, dh/dlog pi_w = 1 and dh/dlog pi_l = -1
    lw, ll, cw, cl = sp.symbols("lw ll cw cl", real=True)
    L = -sp.log(sigma(beta * ((lw - cw) - (ll - cl))))
    weight = sigma(beta * (ll - cl) - beta * (lw - cw))  # sigma(r_l - r_w): the "misranking" weight
    require(sp.simplify(sp.diff(L, lw) + beta * weight) == 0, "dL/dlog pi(y_w) != -beta sigma(r_l - r_w)")
    require(sp.simplify(sp.diff(L, ll) - beta * weight) == 0, "dL/dlog pi(y_l) != +beta sigma(r_l - r_w)")
    return True


@derivation
def implicit_reward_mean_is_kl() -> bool:
    """Averaged under :math:`\\pi`, the implicit reward is :math:`\\beta\\,\\mathrm{KL}(\\pi\\|\\pi_\\text{ref})`;
    averaged under another distribution :math:`\\mu` it differs by :math:`\\beta\\sum(\\mu-\\pi)\\log\\pi/\\pi_\\text{ref}`."""
    p, q, _, beta = _symbols()
    m = sp.symbols(f"m0:{_N}", positive=True)
    reward = [beta * sp.log(p[i] / q[i]) for i in range(_N)]
    kl = sum(p[i] * sp.log(p[i] / q[i]) for i in range(_N))
    under_pi = sum(p[i] * reward[i] for i in range(_N))
    require(sp.simplify(under_pi - beta * kl) == 0, "E_pi[implicit reward] != beta KL")
    under_mu = sum(m[i] * reward[i] for i in range(_N))
    residual = sp.simplify(under_mu - beta * kl - beta * sum((m[i] - p[i]) * sp.log(p[i] / q[i]) for i in range(_N)))
    require(residual == 0, f"unexpected residual {residual}")
    # a concrete case where the average under mu is negative while the KL is positive
    vals = {
        p[0]: sp.Rational(1, 2),
        p[1]: sp.Rational(1, 4),
        p[2]: sp.Rational(1, 4),
        q[0]: sp.Rational(1, 4),
        q[1]: sp.Rational(1, 4),
        q[2]: sp.Rational(1, 2),
        m[0]: 0,
        m[1]: 0,
        m[2]: 1,
        beta: 1,
    }
    require(
        sp.N(under_mu.subs(vals)) < 0 < sp.N((beta * kl).subs(vals)), "the counterexample should have opposite signs"
    )
    return True


@derivation
def group_std_bound() -> bool:
    """For rewards in [0, 1], the population variance of a group is at most 1/4 (Popoviciu), reached by
    a half-0, half-1 group; the seed's bound "variance <= 1" holds but is loose by a factor of 4."""
    a = sp.symbols("a", real=True)  # fraction of ones in a binary group (the extreme points of [0,1]^G)
    var = a * (1 - a)  # population variance of a {0,1} group with a fraction a of ones
    crit = sp.solve(sp.diff(var, a), a)
    require(crit == [sp.Rational(1, 2)], f"the maximiser should be a = 1/2, got {crit}")
    require(var.subs(a, sp.Rational(1, 2)) == sp.Rational(1, 4), "max population variance != 1/4")
    G = sp.symbols("G", integer=True, positive=True)
    unbiased_max = sp.Rational(1, 4) * G / (G - 1)
    require(sp.simplify(unbiased_max.subs(G, 2) - sp.Rational(1, 2)) == 0, "G = 2: unbiased max variance should be 1/2")
    require(sp.limit(unbiased_max, G, sp.oo) == sp.Rational(1, 4), "unbiased max variance should tend to 1/4")
    return True
