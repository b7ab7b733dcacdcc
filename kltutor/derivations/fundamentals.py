"""Derivations of chapter 1, checked by sympy."""

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401
