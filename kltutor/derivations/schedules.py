"""Derivations of chapter 4, checked by sympy."""

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401
