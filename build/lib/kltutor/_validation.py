"""Argument checks shared by the modules (one message for one mistake, everywhere)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["positive_number"]


def positive_number(name: str, value: Any) -> float:
    """``value`` as a float; ``TypeError`` if it is not a real number, ``ValueError`` unless finite and > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v
