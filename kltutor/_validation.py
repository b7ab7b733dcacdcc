"""Argument checks shared by the modules (one message for one mistake, everywhere).

Every module that takes a number or a probability vector from a reader checks it here, so the same
mistake gets the same one-line message wherever it is made:

- :func:`positive_number`, :func:`nonnegative_number`: a scalar such as ``beta``;
- :func:`number_in`, :func:`integer`, :func:`positive_integer`: a setting of a configuration (the
  capstone's :class:`~kltutor.capstone.config.CapstoneConfig`), where a bool or a string is never a number;
- :func:`probabilities`: a categorical distribution (a vector, or a batch along the last axis).

Importing it does not import torch (the capstone's configuration is checked without it).
    "seed",
    "integer_below",
    "float32_number",
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and numpy are imported where used: a config module can check numbers without them
    import torch
    from torch import Tensor

__all__ = [
    "positive_number",
    "nonnegative_number",
    "number_in",
    "integer",
    "positive_integer",
    "probabilities",
    "default_atol",
    "seed",
    "integer_below",
    "float32_number",
]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _real(name: str, value: Any, strict: bool, message: str) -> float:
    """``float(value)``; with ``strict`` only an ``int`` or ``float`` (not a bool, a string or a tensor)
    counts, and anything else is a ``ValueError`` with ``message`` (a setting read from a file or a
    command line has the wrong type: the range is what the message states)."""
    if strict:
        if not _is_number(value):
            raise ValueError(message)
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None


def positive_number(name: str, value: Any, *, strict: bool = False) -> float:
    """``value`` as a float; ``TypeError`` if it is not a real number, ``ValueError`` unless finite and > 0.
    ``strict``: only an int or a float (not a bool), else ``ValueError`` (a configuration's rule)."""
    message = f"{name} must be a finite number > 0, got {value!r}"
    v = _real(name, value, strict, message)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(message)
    return v


def nonnegative_number(name: str, value: Any, *, strict: bool = False) -> float:
    """``value`` as a float; ``TypeError`` if it is not a real number, ``ValueError`` unless finite and >= 0.
    ``strict`` as in :func:`positive_number`."""
    message = f"{name} must be a finite number >= 0, got {value!r}"
    v = _real(name, value, strict, message)
    if not math.isfinite(v) or v < 0:
        raise ValueError(message)
    return v


def number_in(name: str, value: Any, interval: str, note: str = "") -> float:
    """An int or float (not a bool) in ``interval``, written as in mathematics: ``"[0, 1)"``, ``"(0, 1]"``;
    ``ValueError`` ``"<name> must be in <interval><note>, got <value>"`` otherwise."""
    lo_closed, hi_closed = interval[0] == "[", interval[-1] == "]"
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    message = f"{name} must be in {interval}{note}, got {value!r}"
    v = _real(name, value, True, message)
    if not (lo <= v if lo_closed else lo < v) or not (v <= hi if hi_closed else v < hi):
        raise ValueError(message)
    return v


def integer(name: str, value: Any, minimum: int = 0, note: str = "") -> int:
    """An ``int`` (not a bool) ``>= minimum``; ``ValueError`` ``"<name> must be an integer >= <minimum><note>"``."""
    if not (isinstance(value, int) and not isinstance(value, bool)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{note}, got {value!r}")
    return value


def positive_integer(name: str, value: Any) -> int:
    """An ``int`` (not a bool) ``>= 1``; ``ValueError`` ``"<name> must be a positive integer"`` otherwise."""
    if not (isinstance(value, int) and not isinstance(value, bool)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def default_atol(dtype: torch.dtype) -> float:
    """How far a row of probabilities may sum from 1: ``1e-9`` in float64, ``1e-4`` in lower precision."""
    import torch

    return 1e-9 if dtype == torch.float64 else 1e-4


def probabilities(
    name: str,
    p: Any,
    *,
    vector: bool = False,
    min_size: int = 1,
    positive: bool = False,
    atol: float | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``p`` as a tensor of probabilities along its last axis, or an error that names ``name``.

    Torch tensors keep their floating dtype (integer ones become float64); numpy arrays, lists,
    tuples and numbers become float64; ``dtype`` converts first (and the tolerance follows it).
    ``vector=True`` asks for one 1-D distribution; otherwise any leading batch shape is allowed.
    Checked, in this order: the type (``TypeError``), the shape (a last axis with at least
    ``min_size`` entries), finite and non-negative entries (strictly positive with
    ``positive=True``), and every row summing to 1 within ``atol`` (default :func:`default_atol`).

    >>> probabilities("ref_probs", [0.25, 0.75], vector=True)
    tensor([0.2500, 0.7500], dtype=torch.float64)
    >>> probabilities("ref_probs", [0.5, 0.6], vector=True)
    Traceback (most recent call last):
    ...
    ValueError: ref_probs must sum to 1 (largest error 0.1 > atol 1e-09)
    """
    import numpy as np
    import torch

    if isinstance(p, torch.Tensor):
        t = p
    elif isinstance(p, (np.ndarray, np.generic, list, tuple, float, int)) and not isinstance(p, bool):
        try:
            t = torch.as_tensor(np.asarray(p, dtype=np.float64))
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a vector of numbers (probabilities), got {p!r}") from None
    else:
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(p).__name__}")
    if dtype is not None:
        t = t.to(dtype)
    elif not torch.is_floating_point(t):
        t = t.to(torch.float64)
    if vector and (t.dim() != 1 or t.numel() < min_size):
        more = f" with at least {min_size} entries" if min_size > 1 else ""
        raise ValueError(f"{name} must be a non-empty 1-D vector of probabilities{more}, got shape {tuple(t.shape)}")
    if not vector and (t.dim() == 0 or t.shape[-1] < min_size):
        raise ValueError(f"{name} must have a non-empty last axis of probabilities, got shape {tuple(t.shape)}")
    values = t.detach()
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} must hold finite, non-negative probabilities, got NaN or inf")
    if (values < 0).any():
        raise ValueError(
            f"{name} must hold finite, non-negative probabilities, got a negative entry (min {values.min().item():.3g})"
        )
    if positive and (values == 0).any():
        raise ValueError(f"{name} must be strictly positive, got a zero entry")
    tol = default_atol(t.dtype) if atol is None else atol
    err = (values.sum(dim=-1) - 1).abs().max().item()
    if not err <= tol:
        axis = "" if vector else " along its last axis"
        raise ValueError(f"{name} must sum to 1{axis} (largest error {err:.3g} > atol {tol:.1g})")
    return t


SEED_LIMIT = 2**32  # numpy.random.seed, which every run calls, takes 0 <= seed < 2**32


def seed(name: str, value: Any) -> int:
    """``value`` as an int seed: ``TypeError`` unless an integer, ``ValueError`` outside ``[0, 2**32)``.

    >>> seed("seed", 2**32)
    Traceback (most recent call last):
    ...
    ValueError: seed must be an integer in [0, 2**32 - 1] (NumPy's seed range), got 4294967296
    """
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32 - 1] (NumPy's seed range), got {value!r}")
    return int(value)


def integer_below(name: str, value: Any, limit: int, why: str) -> int:
    """``value`` as an int: ``TypeError`` unless an integer, ``ValueError`` unless ``value < limit``
    (``why`` says what the limit comes from)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not value < limit:
        raise ValueError(f"{name} must be below {limit:.3g} ({why}), got {value!r}")
    return int(value)


FLOAT32_MAX = (2 - 2**-23) * 2.0**127  # float32's largest finite value, numpy.finfo(numpy.float32).max


def float32_number(name: str, value: Any) -> float:
    """``value`` as a float: ``TypeError`` unless a real number, ``ValueError`` unless finite in float32
    (``|value| <= 3.4e38``), for a setting that ends up in a float32 tensor.

    >>> float32_number("clip_eps", 1e300)
    Traceback (most recent call last):
    ...
    ValueError: clip_eps must be at most 3.4e+38 in size (it is used in float32 arithmetic), got 1e+300
    """
    v = _real(name, value, False, "")
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
        raise ValueError(
            f"{name} must be at most {FLOAT32_MAX:.2g} in size (it is used in float32 arithmetic), got {value!r}"
        )
    return v
