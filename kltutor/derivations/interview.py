"""Derivations asked for by the interview questions (chapter 8), checked by sympy."""

from kltutor.derivations import DerivationError, derivation, require  # noqa: F401
