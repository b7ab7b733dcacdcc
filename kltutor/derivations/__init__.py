"""Every derivation of the book, in sympy, each with a function that proves it.

A proof function returns ``True`` when sympy confirms the identity and raises
:class:`DerivationError` otherwise. Chapters call them next to the prose they support; the test
suite (``tests/test_derivations.py``) runs every one in :func:`registry`. The derivations of each
chapter live in a module of their own named after the chapter's topic (``fundamentals``,
``estimators``, ``placements``, ``schedules``, ``preference``, ``overoptimization``, ``failures``,
``practice``) and register themselves with :func:`derivation`; each derivation exists once, and the
interview chapter calls the chapter modules' proofs.

The symbolic building blocks the proofs share live here, so that every module builds a softmax
policy, a point of the simplex or a tilted distribution the same way: :func:`is_zero`,
:func:`softmax`, :func:`logits`, :func:`simplex`, :func:`tilt`, :func:`kl`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy as sp

__all__ = [
    "DerivationError",
    "derivation",
    "registry",
    "check_all",
    "require",
    "is_zero",
    "logits",
    "softmax",
    "simplex",
    "tilt",
    "kl",
    "MODULES",
]


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


#: The chapter modules, in chapter order.
MODULES = (
    "fundamentals",
    "estimators",
    "placements",
    "schedules",
    "preference",
    "overoptimization",
    "failures",
    "practice",
    "distillation",
)


def _load_all() -> None:
    import importlib

    for mod in MODULES:
        importlib.import_module(f"kltutor.derivations.{mod}")


# ---------------------------------------------------------------------------------------------
# shared symbolic building blocks
# ---------------------------------------------------------------------------------------------


def is_zero(expr: sp.Expr) -> bool:
    """Whether sympy simplifies ``expr`` (expanded first) to exactly 0."""
    return sp.simplify(sp.expand(expr)) == 0


def logits(name: str = "theta", n: int = 3) -> tuple[sp.Symbol, ...]:
    """``n`` real symbols ``name0 ... name{n-1}``: the logits of a categorical policy."""
    return sp.symbols(f"{name}0:{n}", real=True)


def softmax(z: Sequence[sp.Expr]) -> list[sp.Expr]:
    """``[e^{z_i} / sum_j e^{z_j}]``: a categorical policy with symbolic logits (every outcome > 0)."""
    norm = sum(sp.exp(zi) for zi in z)
    return [sp.exp(zi) / norm for zi in z]


def simplex(name: str, n: int = 3) -> list[sp.Expr]:
    """A symbolic point of the simplex: ``n`` positive symbols ``name0 ...``, normalised by their sum."""
    x = sp.symbols(f"{name}0:{n}", positive=True)
    total = sum(x)
    return [xi / total for xi in x]


def tilt(ref: Sequence[sp.Expr], rewards: Sequence[sp.Expr], beta: sp.Expr) -> list[sp.Expr]:
    """The KL-regularised optimum ``pi_ref e^{r/beta} / Z`` (:func:`kltutor.preference.optimal_policy`)."""
    w = [q * sp.exp(r / beta) for q, r in zip(ref, rewards)]
    z = sum(w)
    return [wi / z for wi in w]


def kl(p: Sequence[sp.Expr], q: Sequence[sp.Expr]) -> sp.Expr:
    """``sum_y p(y) (log p(y) - log q(y))``: KL(p || q) of two symbolic categorical distributions."""
    return sum(a * (sp.log(a) - sp.log(b)) for a, b in zip(p, q))
