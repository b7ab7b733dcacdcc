"""Derivations of chapter 7, checked by sympy."""

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401
