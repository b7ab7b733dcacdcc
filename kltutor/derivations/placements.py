"""Derivations of chapter 3, checked by sympy."""

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401
