"""Every derivation of the book, in sympy, each with a function that proves it.

A proof function returns ``True`` when sympy confirms the identity and raises
:class:`DerivationError` otherwise. Chapters call them next to the prose they support; the test
suite calls :func:`check_all`. The derivations of each chapter live in a module of their own and
register themselves with :func:`derivation`.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["DerivationError", "derivation", "registry", "check_all", "require"]


class DerivationError(AssertionError):
    """Raised when sympy does not confirm a derivation."""


_REGISTRY: dict[str, Callable[[], bool]] = {}


def derivation(func: Callable[[], bool]) -> Callable[[], bool]:
    """Register ``func`` (a zero-argument proof) under its module-qualified name."""
    name = f"{func.__module__.rsplit('.', 1)[-1]}.{func.__name__}"
    _REGISTRY[name] = func
    return func


def require(condition: object, message: str) -> None:
    """Raise :class:`DerivationError` with ``message`` unless ``condition`` is exactly true."""
    if not bool(condition):
        raise DerivationError(message)


def registry() -> dict[str, Callable[[], bool]]:
    """All registered proofs, by name (imports every chapter's module first)."""
    _load_all()
    return dict(_REGISTRY)


def check_all() -> dict[str, bool]:
    """Run every proof; returns ``{name: True}`` or raises on the first failure."""
    return {name: func() for name, func in registry().items()}


_MODULES = ("fundamentals", "estimators", "placements", "schedules", "preference", "overoptimization", "failures", "practice",
            "interview")


def _load_all() -> None:
    import importlib

    for mod in _MODULES:
        importlib.import_module(f"kltutor.derivations.{mod}")
