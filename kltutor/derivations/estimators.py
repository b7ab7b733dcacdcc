"""Derivations of ``ch-estimators`` (the k1, k2, k3 estimators), checked by sympy.

Each proof returns ``True`` or raises :class:`~kltutor.derivations.DerivationError`. The symbolic
results they establish are exposed by the ``*_expressions`` helpers so the chapter can show them.
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, is_zero, require  # noqa: F401

__all__ = [
    "f_nonnegative",
    "k3_unbiased_categorical",
    "k3_unbiased_needs_support",
    "gaussian_equal_variance_moments",
    "gaussian_moment_expressions",
    "k2_bias_series",
    "k2_bias_expressions",
    "k2_not_f_divergence",
    "k2_merge_example",
    "control_variate_optimum",
    "gaussian_k3_second_moment",
    "expectation_by_integration",
]

# z ~ N(0, 1); delta = (mu_policy - mu_ref) / sigma; l = delta z + delta^2 / 2.
_z = sp.Symbol("z", real=True)
_delta = sp.Symbol("delta", positive=True)
_phi = sp.exp(-(_z**2) / 2) / sp.sqrt(2 * sp.pi)


def _E(expr: sp.Expr) -> sp.Expr:
    """E[expr(z)] for z ~ N(0, 1) and expr a sum of terms c * z^n * exp(t z + b).

    Uses the moment generating function, E[z^n e^{tz}] = d^n/dt^n e^{t^2/2}, which is what the
    Gaussian integral gives (checked against direct integration in the test suite) and is fast.
    """
    t = sp.Symbol("t", real=True)
    total = sp.Integer(0)
    for term in sp.Add.make_args(sp.expand(sp.powsimp(sp.expand(expr), combine="exp"))):
        term = sp.powsimp(term, combine="exp")
        exp_arg = sp.Integer(0)
        rest = sp.Integer(1)
        for factor in sp.Mul.make_args(term):
            if isinstance(factor, sp.exp):
                exp_arg += factor.args[0]
            else:
                rest *= factor
        exp_arg = sp.expand(exp_arg)
        slope, offset = exp_arg.coeff(_z, 1), exp_arg.coeff(_z, 0)
        require(sp.expand(exp_arg - slope * _z - offset) == 0, f"exponent not linear in z: {exp_arg}")
        poly = sp.Poly(rest, _z)
        mgf = sp.exp(t**2 / 2)
        for (n,), c in poly.terms():
            total += c * sp.exp(offset) * sp.diff(mgf, t, n).subs(t, slope)
    return sp.simplify(total)


def expectation_by_integration(expr: sp.Expr) -> sp.Expr:
    """E[expr(z)] for z ~ N(0, 1) by direct integration (slow; used to cross-check :func:`_E`)."""
    return sp.simplify(sp.integrate(sp.expand(expr) * _phi, (_z, -sp.oo, sp.oo)))


@derivation
def f_nonnegative() -> bool:
    """f(x) = e^x - x - 1 >= 0: f(0) = 0, f'(0) = 0, f'' = e^x > 0 (strictly convex), so 0 is the global minimum."""
    x = sp.Symbol("x", real=True)
    f = sp.exp(x) - x - 1
    require(f.subs(x, 0) == 0, "f(0) != 0")
    require(sp.solve(sp.Eq(sp.diff(f, x), 0), x) == [0], "f' has a zero other than 0")
    require(sp.diff(f, x, 2) == sp.exp(x), "f'' != e^x")
    require(sp.exp(x).is_positive is True, "e^x not positive for real x")
    # k3 = f(-l): substituting x = log(pi_ref/pi) = -l gives e^{-l} + l - 1.
    ell = sp.Symbol("ell", real=True)
    require(sp.simplify(f.subs(x, -ell) - (sp.exp(-ell) - 1 + ell)) == 0, "k3 != f(-l)")
    return True


@derivation
def k3_unbiased_categorical() -> bool:
    """E_pi[k3] = KL(pi||ref) for a categorical pi, ref on 3 outcomes with full support (symbolic);
    the key step is E_pi[ref/pi] = 1, and the tempting E_pi[pi/ref] = 1 is false."""
    p1, p2, q1, q2 = sp.symbols("p1 p2 q1 q2", positive=True)
    p = [p1, p2, 1 - p1 - p2]
    q = [q1, q2, 1 - q1 - q2]
    kl = sum(pi * sp.log(pi / qi) for pi, qi in zip(p, q))
    e_k3 = sum(pi * (qi / pi - 1 + sp.log(pi / qi)) for pi, qi in zip(p, q))
    require(sp.simplify(e_k3 - kl) == 0, "E[k3] != KL")
    # the key step: E_pi[ref/pi] = sum ref = 1
    require(sp.simplify(sum(pi * qi / pi for pi, qi in zip(p, q)) - 1) == 0, "E[ref/pi] != 1")
    # the tempting wrong identity: E_pi[pi/ref] is not 1 in general (it is 1 + chi2(pi||ref))
    require(not is_zero(sum(pi * pi / qi for pi, qi in zip(p, q)) - 1), "E_pi[pi/ref] = 1 would be a wrong identity")
    return True


@derivation
def k3_unbiased_needs_support() -> bool:
    """If the reference puts mass where the policy has none, E_pi[ref/pi] = 1 - ref(outside) < 1 and
    E_pi[k3] = KL - ref(outside supp pi): k3 is biased low. Shown with pi = (p, 1-p, 0), ref = (q1, q2, 1-q1-q2)."""
    p, q1, q2 = sp.symbols("p q1 q2", positive=True)
    pol = [p, 1 - p]
    ref = [q1, q2]
    kl = sum(a * sp.log(a / b) for a, b in zip(pol, ref))
    e_k3 = sum(a * (b / a - 1 + sp.log(a / b)) for a, b in zip(pol, ref))
    require(sp.simplify(e_k3 - (kl - (1 - q1 - q2))) == 0, "E[k3] != KL - ref mass outside supp pi")
    return True


def gaussian_moment_expressions() -> dict[str, sp.Expr]:
    """Exact means and variances of k1, k2, k3 for N(mu1, s^2) against N(mu2, s^2), in delta = (mu1-mu2)/s."""
    ell = _delta * _z + _delta**2 / 2
    out: dict[str, sp.Expr] = {"KL": _E(ell)}
    ests = {"k1": ell, "k2": ell**2 / 2, "k3": sp.exp(-ell) - 1 + ell}
    for name, k in ests.items():
        mean = _E(k)
        second = _E(sp.expand(k**2))
        out[f"E[{name}]"] = sp.simplify(mean)
        out[f"Var[{name}]"] = sp.simplify(sp.expand(second - mean**2))
    out["E[exp(-l)]"] = _E(sp.exp(-ell))
    out["E[exp(-2l)]"] = _E(sp.exp(-2 * ell))
    return out


@derivation
def gaussian_equal_variance_moments() -> bool:
    """The closed forms used by :func:`kltutor.estimators.gaussian_moments`, from the integrals."""
    d = _delta
    ex = gaussian_moment_expressions()
    expected = {
        "KL": d**2 / 2,
        "E[k1]": d**2 / 2,
        "Var[k1]": d**2,
        "E[k2]": d**2 / 2 + d**4 / 8,
        "Var[k2]": d**4 / 2 + d**6 / 4,
        "E[k3]": d**2 / 2,
        "Var[k3]": sp.exp(d**2) - 1 - d**2,
        "E[exp(-l)]": sp.Integer(1),
        "E[exp(-2l)]": sp.exp(d**2),
    }
    for key, val in expected.items():
        require(sp.simplify(ex[key] - val) == 0, f"{key}: sympy gives {ex[key]}, expected {val}")
    return True


def k2_bias_expressions(order: int = 5) -> dict[str, sp.Expr]:
    """E[k2] - KL = E[l^2/2 - l + 1 - e^{-l}] exactly (using E[e^{-l}] = 1); its series in l,
    and the series in eps of a Bernoulli family pi = theta, ref = theta + eps."""
    ell = sp.Symbol("ell", real=True)
    integrand = ell**2 / 2 - ell + 1 - sp.exp(-ell)
    theta, eps = sp.symbols("theta epsilon", positive=True)
    p = [theta, 1 - theta]
    # l(y) = log(pi/ref): expand each log-ratio in eps first (cheap), then the bias polynomial
    ls = [
        sp.series(-sp.log(1 + eps / theta), eps, 0, 5).removeO(),
        sp.series(-sp.log(1 - eps / (1 - theta)), eps, 0, 5).removeO(),
    ]
    bias = sp.expand(sum(a * (l**2 / 2 - l) for a, l in zip(p, ls)))
    bias_series = sum(bias.coeff(eps, k) * eps**k for k in range(4))
    kl = sp.expand(sum(a * l for a, l in zip(p, ls)))
    kl_series = sum(kl.coeff(eps, k) * eps**k for k in range(4))
    # leading term predicted by E[l^3]/6 with l ~ eps * a(y), a = d l / d eps at eps = 0
    a_vals = [sp.diff(l, eps).subs(eps, 0) for l in ls]
    predicted = sp.simplify(eps**3 * sum(pp * a**3 for pp, a in zip(p, a_vals)) / 6)
    return {
        "integrand": integrand,
        "integrand_series": sp.series(integrand, ell, 0, order).removeO(),
        "bernoulli_bias_series": sp.simplify(bias_series),
        "bernoulli_kl_series": sp.simplify(kl_series),
        "bernoulli_leading_predicted": predicted,
    }


@derivation
def k2_bias_series() -> bool:
    """E[k2] - KL = E[l^3]/6 - E[l^4]/24 + ...: the bias is third order; for a Bernoulli family it is
    O(eps^3) with leading coefficient E[a^3]/6 (a = dl/d eps), which can have either sign, while the
    KL is O(eps^2)."""
    ell = sp.Symbol("ell", real=True)
    ex = k2_bias_expressions()
    require(sp.simplify(ex["integrand_series"] - (ell**3 / 6 - ell**4 / 24)) == 0, "series of l^2/2 - l + 1 - e^-l")
    eps = sp.Symbol("epsilon", positive=True)
    s = sp.expand(ex["bernoulli_bias_series"])
    require(sp.simplify(s.coeff(eps, 0)) == 0 and sp.simplify(s.coeff(eps, 1)) == 0, "bias has order < 2 terms")
    require(sp.simplify(s.coeff(eps, 2)) == 0, "bias has an eps^2 term")
    require(
        sp.simplify(s.coeff(eps, 3) * eps**3 - ex["bernoulli_leading_predicted"]) == 0, "eps^3 coefficient != E[a^3]/6"
    )
    # while the KL itself starts at eps^2: the bias is one order smaller than the KL
    k = sp.expand(ex["bernoulli_kl_series"])
    require(
        all(sp.simplify(k.coeff(eps, j)) == 0 for j in (0, 1)) and sp.simplify(k.coeff(eps, 2)) != 0,
        "KL must start at order eps^2",
    )
    return True


def k2_merge_example() -> dict[str, sp.Expr]:
    """E[k2] for pi = (9/10, 1/100, 9/100), ref = (1/2, 2/5, 1/10), before and after merging the last two
    outcomes (exact rationals inside the logs); KL itself for comparison."""
    pi = [sp.Rational(9, 10), sp.Rational(1, 100), sp.Rational(9, 100)]
    ref = [sp.Rational(1, 2), sp.Rational(2, 5), sp.Rational(1, 10)]

    def ek2(p, q):
        return sum(a * sp.log(a / b) ** 2 / 2 for a, b in zip(p, q))

    def kl(p, q):
        return sum(a * sp.log(a / b) for a, b in zip(p, q))

    merged_pi, merged_ref = [pi[0], pi[1] + pi[2]], [ref[0], ref[1] + ref[2]]
    return {
        "fine": float(ek2(pi, ref)),
        "merged": float(ek2(merged_pi, merged_ref)),
        "kl_fine": float(kl(pi, ref)),
        "kl_merged": float(kl(merged_pi, merged_ref)),
    }


@derivation
def k2_not_f_divergence() -> bool:
    """E_pi[l^2/2] = E_pi[f(ref/pi)] with f(u) = (log u)^2/2 is not an f-divergence: f'' = (1 - log u)/u^2
    changes sign at u = e (so does the second derivative of the mirrored u f(1/u)), and merging two outcomes
    raises E[k2] on an explicit example, which the data-processing inequality forbids for every f-divergence."""
    u = sp.Symbol("u", positive=True)
    f = sp.log(u) ** 2 / 2
    f2 = sp.simplify(sp.diff(f, u, 2))
    require(sp.simplify(f2 - (1 - sp.log(u)) / u**2) == 0, f"f'' = {f2}")
    require(sp.solve(f2, u) == [sp.E], "f'' must vanish only at u = e")
    require(f2.subs(u, 1) > 0 and f2.subs(u, 10) < 0, "f'' must change sign")
    g2 = sp.simplify(sp.diff(u * f.subs(u, 1 / u), u, 2))  # the same functional written as E_ref[g(pi/ref)]
    require(g2.subs(u, sp.Rational(1, 10)) < 0 and g2.subs(u, 1) > 0, "u f(1/u) must be non-convex too")
    ex = k2_merge_example()
    require(ex["merged"] > ex["fine"], "merging outcomes must raise E[k2] on the example")
    require(ex["kl_merged"] < ex["kl_fine"], "KL (an f-divergence) must fall when outcomes merge")
    return True


@derivation
def control_variate_optimum() -> bool:
    """k1 + lam (rho - 1), rho = ref/pi with E[rho] = 1: Var is minimised at lam* = -Cov(l, rho)/Var(rho);
    for equal-variance Gaussians lam* = delta^2 / (e^{delta^2} - 1) -> 1 as delta -> 0, and lam = 1 is the
    only weight making the estimator >= 0 for every sample (its derivative in l at 0 is 1 - lam)."""
    lam = sp.Symbol("lambda", real=True)
    vl, vr, c = sp.symbols("V_l V_rho C", real=True)
    var = vl + 2 * lam * c + lam**2 * vr
    sol = sp.solve(sp.diff(var, lam), lam)
    require(len(sol) == 1 and sp.simplify(sol[0] + c / vr) == 0, "optimal lambda")
    d = _delta
    ell = d * _z + d**2 / 2
    rho = sp.exp(-ell)
    cov = _E(ell * rho) - _E(ell) * 1
    var_rho = _E(rho**2) - 1
    lam_star = sp.simplify(-cov / var_rho)
    require(sp.simplify(lam_star - d**2 / (sp.exp(d**2) - 1)) == 0, f"Gaussian lambda* = {lam_star}")
    require(sp.limit(lam_star, d, 0) == 1, "lambda* does not tend to 1")
    x = sp.Symbol("ell", real=True)
    g = x + lam * (sp.exp(-x) - 1)
    require(sp.diff(g, x).subs(x, 0) == 1 - lam, "slope at 0")
    # in the ratio s = ref/pi = e^{-l}: g(s) = -log s + lam (s - 1) vanishes at s = 1, so staying >= 0
    # needs g'(1) = 0, which forces lam = 1; and g with lam = 1 is f(log s) = s - 1 - log s (k3)
    s_ = sp.Symbol("s", positive=True)
    g_s = -sp.log(s_) + lam * (s_ - 1)
    require(g_s.subs(s_, 1) == 0, "g(1) must vanish")
    require(sp.solve(sp.Eq(sp.diff(g_s, s_).subs(s_, 1), 0), lam) == [1], "g'(1) = 0 must force lam = 1")
    y = sp.Symbol("x", real=True)
    require(sp.simplify(g_s.subs(lam, 1).subs(s_, sp.exp(y)) - (sp.exp(y) - y - 1)) == 0, "lam = 1 must give f(log s)")
    return True


@derivation
def gaussian_k3_second_moment() -> bool:
    """E_pi[(ref/pi)^2] for pi = N(0, 1), ref = N(0, s^2): finite iff s^2 < 2, equal to 1/(s sqrt(2 - s^2))."""
    s = sp.Symbol("s", positive=True)
    y = sp.Symbol("y", real=True)
    pol = sp.exp(-(y**2) / 2) / sp.sqrt(2 * sp.pi)
    ref = sp.exp(-(y**2) / (2 * s**2)) / (s * sp.sqrt(2 * sp.pi))
    integrand = sp.simplify(ref**2 / pol)
    # the exponent's y^2 coefficient decides convergence: -1/s^2 + 1/2 must be negative
    coeff = sp.simplify(sp.expand(sp.log(integrand)).coeff(y, 2))
    require(sp.simplify(coeff - (sp.Rational(1, 2) - 1 / s**2)) == 0, f"exponent coefficient {coeff}")
    region = sp.solve(sp.Lt(coeff, 0), s)
    require(region == sp.Lt(s, sp.sqrt(2)), f"convergence region is {region}, expected s < sqrt(2)")
    val = sp.integrate(integrand.subs(s, sp.Rational(6, 5)), (y, -sp.oo, sp.oo))
    require(sp.simplify(val - 1 / (sp.Rational(6, 5) * sp.sqrt(2 - sp.Rational(36, 25)))) == 0, f"s=6/5 gives {val}")
    div = sp.integrate(integrand.subs(s, 2), (y, -sp.oo, sp.oo))
    require(div == sp.oo, f"s=2 should diverge, got {div}")
    return True
