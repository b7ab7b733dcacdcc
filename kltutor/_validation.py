"""Argument checks shared by the modules (one message for one mistake, everywhere).

Every module that takes a number or a probability vector from a reader checks it here, so the same
mistake gets the same one-line message wherever it is made:

- :func:`positive_number`, :func:`nonnegative_number`: a scalar such as ``beta``;
- :func:`probabilities`: a categorical distribution (a vector, or a batch along the last axis);
- :func:`seed`, :func:`integer_below`, :func:`float32_number`: the ranges the code behind a setting can
  take (NumPy's seeds, 64-bit integers, float32 arithmetic), so that a value beyond them is refused up
  front instead of failing deep inside a run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "positive_number",
    "nonnegative_number",
    "probabilities",
    "default_atol",
    "seed",
    "integer_below",
    "float32_number",
]


def _real(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None


def positive_number(name: str, value: Any) -> float:
    """``value`` as a float; ``TypeError`` if it is not a real number, ``ValueError`` unless finite and > 0."""
    v = _real(name, value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def nonnegative_number(name: str, value: Any) -> float:
    """``value`` as a float; ``TypeError`` if it is not a real number, ``ValueError`` unless finite and >= 0."""
    v = _real(name, value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def default_atol(dtype: torch.dtype) -> float:
    """How far a row of probabilities may sum from 1: ``1e-9`` in float64, ``1e-4`` in lower precision."""
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
    if isinstance(p, Tensor):
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
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32 - 1] (NumPy's seed range), got {value!r}")
    return int(value)


def integer_below(name: str, value: Any, limit: int, why: str) -> int:
    """``value`` as an int: ``TypeError`` unless an integer, ``ValueError`` unless ``value < limit``
    (``why`` says what the limit comes from)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not value < limit:
        raise ValueError(f"{name} must be below {limit:.3g} ({why}), got {value!r}")
    return int(value)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def float32_number(name: str, value: Any) -> float:
    """``value`` as a float: ``TypeError`` unless a real number, ``ValueError`` unless finite in float32
    (``|value| <= 3.4e38``), for a setting that ends up in a float32 tensor.

    >>> float32_number("clip_eps", 1e300)
    Traceback (most recent call last):
    ...
    ValueError: clip_eps must be at most 3.4e+38 in size (it is used in float32 arithmetic), got 1e+300
    """
    v = _real(name, value)
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
        raise ValueError(
            f"{name} must be at most {FLOAT32_MAX:.2g} in size (it is used in float32 arithmetic), got {value!r}"
        )
    return v
