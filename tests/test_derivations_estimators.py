"""The chapter-2 derivations hold in sympy, and the fast Gaussian expectation agrees with integration."""

import sympy as sp
import pytest

from kltutor.derivations import DerivationError
from kltutor.derivations import estimators as deriv


@pytest.mark.parametrize(
    "proof",
    [
        deriv.f_nonnegative,
        deriv.k3_unbiased_categorical,
        deriv.k3_unbiased_needs_support,
        deriv.gaussian_equal_variance_moments,
        deriv.k2_bias_series,
        deriv.k2_not_f_divergence,
        deriv.control_variate_optimum,
        deriv.gaussian_k3_second_moment,
    ],
)
def test_proof_holds(proof):
    assert proof() is True


def test_mgf_expectation_matches_integration():
    z, d = sp.Symbol("z", real=True), sp.Symbol("delta", positive=True)
    expr = (z**2 + 3 * z) * sp.exp(-d * z) + z**4
    fast = deriv._E(expr)
    slow = deriv.expectation_by_integration(expr)
    assert sp.simplify(fast - slow) == 0


def test_expectation_rejects_nonlinear_exponent():
    z = sp.Symbol("z", real=True)
    with pytest.raises(DerivationError):
        deriv._E(sp.exp(z**2 / 4))


def test_k2_bias_leading_term_sign():
    ex = deriv.k2_bias_expressions()
    theta, eps = sp.symbols("theta epsilon", positive=True)
    lead = ex["bernoulli_bias_series"]
    assert lead.subs({theta: sp.Rational(3, 10), eps: 1}) < 0
    assert lead.subs({theta: sp.Rational(7, 10), eps: 1}) > 0
