"""The book's figure style: one palette, one size, one font scale for every chapter."""

from __future__ import annotations

import matplotlib.colors
import matplotlib.pyplot as plt

__all__ = ["COLORS", "PLACEMENT_COLORS", "placement_colors", "use_book_style", "new_axes"]  # noqa: F822

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

# Colours of the placements that are not an estimator's; every estimator placement takes the next
# colour of COLORS not used here, in the order of kltutor.placements.placement_names(order="estimator").
_FIXED_PLACEMENT_COLORS = {"true": "black", "none": "grey", "exact-in-loss": "sky"}


def placement_colors() -> dict[str, str]:
    """One colour per KL placement, used by every chapter that compares placements.

    Derived from :data:`kltutor.estimators.ESTIMATORS` (through
    :func:`kltutor.placements.placement_names`), so a new estimator's placements get colours of their
    own; ``"true"`` (the exact gradient), ``"none"`` and ``"exact-in-loss"`` have fixed ones.
    """
    from kltutor.placements import placement_names

    fixed = set(_FIXED_PLACEMENT_COLORS.values())
    free = [COLORS[name] for name in COLORS if name not in fixed]
    free += [c for c in map(matplotlib.colors.to_hex, plt.get_cmap("tab10").colors) if c not in COLORS.values()]
    out = {"true": COLORS["black"], "none": COLORS["grey"]}
    for i, placement in enumerate(placement_names(order="estimator")):
        out[placement] = free[i % len(free)]
    out["exact-in-loss"] = COLORS[_FIXED_PLACEMENT_COLORS["exact-in-loss"]]
    return out


def __getattr__(name: str):
    # PLACEMENT_COLORS is computed on each access, so a new estimator's placements appear in it
    if name == "PLACEMENT_COLORS":
        return placement_colors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
