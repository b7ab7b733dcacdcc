"""Derivations of chapter 6, checked by sympy."""

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401
