"""Derivations of chapter 5, checked by sympy."""

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401
