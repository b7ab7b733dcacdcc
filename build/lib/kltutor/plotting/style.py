"""The book's figure style: one palette, one size, one font scale for every chapter."""

from __future__ import annotations

import matplotlib.pyplot as plt

__all__ = ["COLORS", "PLACEMENT_COLORS", "use_book_style", "new_axes"]

# A colour-blind-safe palette (Okabe-Ito).
COLORS = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "red": "#D55E00",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
    "grey": "#999999",
}

# One colour per KL placement, used by every chapter that compares placements.
PLACEMENT_COLORS = {
    "true": COLORS["black"],
    "none": COLORS["grey"],
    "k1-in-reward": COLORS["blue"],
    "k1-in-loss": COLORS["orange"],
    "k2-in-loss": COLORS["green"],
    "k3-in-loss": COLORS["red"],
    "k3-in-reward": COLORS["purple"],
    "exact-in-loss": COLORS["sky"],
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (called by :func:`kltutor.book.setup`)."""
    plt.rcParams.update(
        {
            "figure.figsize": (7.0, 4.0),
            "figure.dpi": 100,
            "savefig.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": plt.cycler(color=list(COLORS.values())),
            "font.size": 10,
            "legend.frameon": False,
            "svg.hashsalt": "kltutor",
        }
    )


def new_axes(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None, **kwargs):
    """A figure with ``nrows`` x ``ncols`` axes at the book's size; returns ``(fig, axes)``."""
    w = width if width is not None else 4.2 * ncols if ncols > 1 else 7.0
    h = height if height is not None else 3.6 * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=True, **kwargs)
    return fig, axes
