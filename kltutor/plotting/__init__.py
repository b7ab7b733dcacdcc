"""The book's figures. Every figure in a chapter is drawn by a function here.

The style helpers live in :mod:`kltutor.plotting.style`; the figures of each chapter live in a
module of their own and are re-exported here, so a chapter writes ``from kltutor import plotting``
and calls ``plotting.<figure>(...)``.
"""

from kltutor.plotting.capstone import *  # noqa: F403  (the capstone chapter)
from kltutor.plotting.distillation import *  # noqa: F403  (``ch-distillation``)
from kltutor.plotting.estimators import *  # noqa: F403  (``ch-estimators``)
from kltutor.plotting.failures import *  # noqa: F403  (``ch-failures``)
from kltutor.plotting.fundamentals import *  # noqa: F403  (``ch-fundamentals``)
from kltutor.plotting.overoptimization import *  # noqa: F403  (``ch-overoptimization``)
from kltutor.plotting.placements import *  # noqa: F403  (``ch-placements``)
from kltutor.plotting.practice import *  # noqa: F403  (``ch-practice``)
from kltutor.plotting.preference import *  # noqa: F403  (``ch-preference``)
from kltutor.plotting.schedules import *  # noqa: F403  (``ch-schedules``)
from kltutor.plotting.style import COLORS, new_axes, placement_colors, use_book_style

__all__ = ["COLORS", "PLACEMENT_COLORS", "new_axes", "placement_colors", "use_book_style"]  # noqa: F405


def __getattr__(name: str):
    if name == "PLACEMENT_COLORS":  # computed on each access (kltutor.plotting.style.placement_colors)
        return placement_colors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
