"""Chapter 5's derivations are confirmed by sympy (each proof returns True or raises)."""

import pytest

from kltutor.derivations import preference as d
from kltutor.derivations import registry


@pytest.mark.parametrize("name", d.__all__)
def test_derivation_holds(name):
    assert getattr(d, name)() is True


def test_registered():
    names = set(registry())
    assert {f"preference.{n}" for n in d.__all__} <= names
