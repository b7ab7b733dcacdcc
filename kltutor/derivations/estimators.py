"""Derivations of chapter 2, checked by sympy."""

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401
