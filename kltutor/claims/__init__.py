"""The claim ledger: the book's central claims, each with the condition under which it holds, the
section that proves it, and a check that recomputes it (rendered as the page ``book/claims.md``).

One source per claim. A claim is argued and computed in one section of one chapter (its
``source``, a MyST label); the interview short answers (:mod:`kltutor.interview`, field
``claims``), the cheat sheet and the docstrings restate it and point at that section. The check
here recomputes the claim from :mod:`kltutor` (exact enumeration, closed forms, sympy) and raises
:class:`ClaimError` if it does not hold, so a restatement that drifts from the computation is caught
by ``tests/test_claims.py``:

- every check passes (``verify``);
- every restatement links the claim's source section;
- no restatement repeats a version of the claim that has been found wrong (``refuted``), and every
  sentence that states the claim also states its condition (``needs_condition``).

>>> from kltutor import claims
>>> claims.get("grpo-half-split-advantage").source       # the section that proves it
'sec-preference-grpo'
>>> round(claims.verify("grpo-half-split-advantage")["G=4, unbiased std"], 4)   # the check, recomputed
0.866

Checks import what they need lazily, so importing this module (and :mod:`kltutor.interview`) is cheap.
"""

from __future__ import annotations

import functools
import math
import re

from kltutor.claims import (  # noqa: F401  (each topic module registers its claims on import)
    distillation,
    estimators,
    failures,
    filters,
    fundamentals,
    libraries,
    overoptimization,
    placements,
    practice,
    preference,
    schedules,
)
from kltutor.claims._core import _REGISTRY, GROUPS, Claim, ClaimError, _require  # noqa: F401

__all__ = ["Claim", "ClaimError", "CLAIMS", "GROUPS", "get", "verify", "format_value"]

#: Every claim, in the book's order: by group (``GROUPS``), then in each module's order.
CLAIMS: tuple[Claim, ...] = tuple(sorted(_REGISTRY.values(), key=lambda c: GROUPS.index(c.group)))


def get(claim_id: str) -> Claim:
    """The claim with id ``claim_id``."""
    try:
        return _REGISTRY[claim_id]
    except KeyError:
        raise KeyError(f"no claim {claim_id!r}; ids: {', '.join(_REGISTRY)}") from None


@functools.cache
def verify(claim_id: str) -> dict[str, object]:
    """Run the claim's check; return the values it checked or raise :class:`ClaimError` (cached)."""
    return get(claim_id).check()


def format_value(value: object) -> str:
    """How the ledger prints a checked value (3 significant figures for floats)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0.0:
            return "0"
        if math.isinf(value):
            return "inf"
        return f"{value:.3g}"
    return str(value)


def _check_patterns() -> None:
    for c in CLAIMS:
        for pat in c.refuted:
            re.compile(pat)
        for trig, cond in c.needs_condition:
            re.compile(trig)
            re.compile(cond)


_check_patterns()
