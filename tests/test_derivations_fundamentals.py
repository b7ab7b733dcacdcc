"""The sympy derivations of chapter 1 must all be confirmed."""

import pytest
import sympy as sp

from kltutor.derivations import fundamentals as f
from kltutor.derivations import registry

NAMES = [
    "gaussian_kl_derivation",
    "gaussian_kl_nonnegative",
    "gaussian_kl_affine_invariance",
    "chain_rule_two_by_two",
    "alpha_divergence_limits",
    "hellinger_kl_bound",
    "kl_chi2_bound",
]


@pytest.mark.parametrize("name", NAMES)
def test_derivation_confirmed(name):
    assert getattr(f, name)() is True
    assert f"fundamentals.{name}" in registry()


def test_closed_form_numeric_value():
    expr = f.gaussian_kl_closed_form(0, 1, 0, 2)
    assert float(expr) == pytest.approx(float(sp.log(2) + sp.Rational(1, 8) - sp.Rational(1, 2)))
