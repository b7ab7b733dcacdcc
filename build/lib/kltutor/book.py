"""Helpers used by the chapter notebooks: reproducible set-up and ``glue`` for inline numbers.

The chapters call :func:`setup` in their first cell and :func:`glue` wherever the prose quotes a
number, so that nothing in the text is typed by hand. ``glue`` uses MyST-NB's when it is installed
(the site build) and falls back to a plain display elsewhere (for example on Colab without the book
extras), so a chapter runs anywhere.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["setup", "glue", "is_colab", "fmt"]


def is_colab() -> bool:
    """True when running inside Google Colab."""
    import sys

    return "google.colab" in sys.modules


def setup(seed: int = 0, threads: int | None = 1) -> None:
    """Make a chapter reproducible: seed every generator, fix print precision and the figure style.

    ``threads=1`` keeps CPU reductions in a fixed order, so stored outputs compare equal under
    nbval on any machine. Pass ``threads=None`` to leave torch's thread count alone.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    np.set_printoptions(precision=4, suppress=True)
    torch.set_printoptions(precision=4, sci_mode=False)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would make stored outputs differ
    from kltutor import plotting

    plotting.use_book_style()


def fmt(value: Any, digits: int = 3) -> str:
    """Format a number the way the book prints it (``digits`` significant figures)."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return f"{float(value):.{digits}g}"


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Record ``value`` under ``name`` for ``{glue:text}`name``` in the prose; return ``value``.

    Tensors are turned into Python numbers first, so the stored output is a plain, comparable value.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - exercised on Colab only
        if display:
            from IPython.display import display as _display

            _display(value)
        return value
    _glue(name, value, display=display)
    return value
