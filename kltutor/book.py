"""Helpers used by the chapter notebooks: reproducible set-up, ``glue`` for inline numbers,
:func:`table` for result tables rendered as HTML, and :func:`below` / :func:`pm` for printing a
number only as far as it means something.

Stored outputs are compared by nbval on whatever CPU runs the tests, and float kernels differ
between CPUs in their last bits. So a cell prints a number at the precision its claim needs,
shows rounding noise as a bound (``below(err, 1e-12)`` prints ``< 1e-12`` and fails the cell if the
bound does not hold), and reports a fitted or seed-dependent number with its uncertainty
(``pm(mean, sd)`` prints ``1.74 ± 0.05``).

The chapters call :func:`setup` in their first cell and :func:`glue` wherever the prose quotes a
number, so that nothing in the text is typed by hand. ``glue`` uses MyST-NB's when it is installed
(the site build) and falls back to a plain display elsewhere (for example on Colab without the book
extras), so a chapter runs anywhere.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["setup", "glue", "is_colab", "fmt", "num", "sci", "below", "pm", "table", "Table"]


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


def num(value: Any, spec: str = ".4f") -> str:
    """``format(value, spec)``, except that a value which rounds to zero prints without a sign.

    ``num(-3e-9)`` is ``"0.0000"``, not ``"-0.0000"``: the sign of a number that rounds to zero is
    rounding noise, and it differs from one CPU to the next.
    """
    v = _as_float(value, "value")
    text = format(v, spec)
    if text.startswith("-") and not any(ch in "123456789" for ch in text.split("e")[0].split("E")[0]):
        text = text[1:]
    return text


def sci(value: Any, round_up: bool = False) -> str:
    """A bound or tolerance in compact form: ``sci(1e-12)`` is ``"1e-12"``, ``sci(1e-6)`` is ``"1e-6"``.

    ``round_up=True`` rounds a positive value *up* to one significant figure (``sci(2.38e-4, True)``
    is ``"3e-4"``), so that a printed bound is still a bound.
    """
    v = _as_float(value, "value")
    if round_up:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"round_up needs a positive finite value, got {v}")
        e = math.floor(math.log10(v))
        mantissa = math.ceil(round(v / 10.0**e, 12))
        if mantissa == 10:
            mantissa, e = 1, e + 1
        v = float(f"{mantissa}e{e}")
    if v != 0 and math.isfinite(v) and (abs(v) >= 1e4 or abs(v) < 1e-3):
        mantissa, exponent = f"{v:.6e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return f"{v:g}"


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"{what} must be a single number, got an array of shape {value.shape}")
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}") from None


def below(value: Any, bound: float) -> str:
    """Assert ``|value| < bound`` and return the text ``"< bound"`` (e.g. ``"< 1e-12"``).

    Use it for rounding noise, whose digits differ from one CPU to the next: the stored output
    shows the bound, which holds on every machine, and the cell fails if it does not. Choose the
    bound from the computation (a float64 sum of n terms of size s carries about n * s * 1.1e-16 of
    rounding) with room for other CPUs' kernels, and say why in a comment next to the call.
    """
    v = _as_float(value, "value")
    b = _as_float(bound, "bound")
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"bound must be a positive finite number, got {bound!r}")
    if not math.isfinite(v):
        raise AssertionError(f"expected |value| < {b:g}, got {v}")
    if abs(v) >= b:
        raise AssertionError(f"expected |value| < {b:g}, got {v:.3g}")
    return f"< {sci(b)}"


def pm(mean: Any, sd: Any, digits: int = 1) -> str:
    """``mean ± sd`` with ``sd`` to ``digits`` significant figures and ``mean`` to the same decimal place.

    ``pm(1.74390, 0.0523)`` is ``"1.74 ± 0.05"``: the digits printed are the ones the uncertainty
    leaves meaningful. A zero ``sd`` prints the mean with 4 significant figures and ``± 0``.
    """
    m, s = _as_float(mean, "mean"), _as_float(sd, "sd")
    if not (math.isfinite(m) and math.isfinite(s)):
        raise ValueError(f"mean and sd must be finite, got {m} and {s}")
    if s < 0:
        raise ValueError(f"sd must be non-negative, got {s}")
    if digits < 1:
        raise ValueError(f"digits must be at least 1, got {digits}")
    if s == 0:
        return f"{m:.4g} ± 0"
    decimals = digits - 1 - math.floor(math.log10(s))
    s_round = round(s, decimals)
    if s_round >= 10 ** (digits - decimals):  # 0.096 -> 0.1: one digit fewer
        decimals -= 1
        s_round = round(s, decimals)
    if decimals > 0:
        return f"{m:.{decimals}f} ± {s_round:.{decimals}f}"
    return f"{round(m, decimals):.0f} ± {s_round:.0f}"


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


class Table:
    """A result table with deterministic HTML and plain-text forms (what :func:`table` returns).

    The notebook stores both ``text/html`` (what the site shows: a real ``<table>`` that scrolls
    sideways on a phone instead of overflowing) and ``text/plain`` (what a terminal shows). Both
    are pure functions of the cell values, with no generated ids, so nbval can compare them.
    """

    def __init__(
        self,
        header: list[str],
        rows: list[list[str]],
        numeric: list[bool],
        caption: str | None = None,
        index_name: str | None = None,
    ):
        self.header, self.rows, self.numeric, self.caption = header, rows, numeric, caption
        self.index_name = index_name

    def _repr_html_(self) -> str:
        from html import escape

        def cell(tag: str, text: str, num: bool) -> str:
            cls = ' class="num"' if num else ""
            return f"<{tag}{cls}>{escape(text)}</{tag}>"

        head = "".join(cell("th", h, n) for h, n in zip(self.header, self.numeric))
        body = "\n".join(
            "<tr>" + "".join(cell("td", v, n) for v, n in zip(r, self.numeric)) + "</tr>" for r in self.rows
        )
        cap = f"<caption>{escape(self.caption)}</caption>" if self.caption else ""
        return (
            f'<div class="kltutor-table"><table class="table">{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>"
        )

    def __repr__(self) -> str:
        widths = [
            max(len(h), *(len(r[j]) for r in self.rows)) if self.rows else len(h) for j, h in enumerate(self.header)
        ]

        def line(vals):
            return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, self.numeric)).rstrip()

        out = ([self.caption] if self.caption else []) + [line(self.header)] + [line(r) for r in self.rows]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.__repr__()


def _format_value(value: Any, spec) -> str:
    if callable(spec):
        return str(spec(value))
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float)) and spec is not None:
        return num(value, spec) if isinstance(value, float) else format(value, spec)
    if isinstance(value, float):
        return num(value, ".4g")
    return str(value)


def table(df, formats: dict | str | None = None, *, index: bool = False, caption: str | None = None) -> Table:
    """Render a :class:`pandas.DataFrame` (or a list of row dicts) as a :class:`Table`.

    ``formats`` gives each column's format: a format spec (``".3f"``, ``".2e"``, ``"+.4f"``,
    ``","``) or a callable returning the text; one string applies to every float column. Columns
    without one print floats with 4 significant digits. Print numbers at the precision their claim
    needs: the stored text is what nbval compares on every machine. ``index=True`` shows the index
    as the first column.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    if index:
        df = df.reset_index()
    if isinstance(formats, str):  # one spec for every float column; integer columns print as integers
        formats = {c: formats for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    formats = dict(formats or {})
    unknown = [c for c in formats if c not in df.columns]
    if unknown:
        raise KeyError(f"formats name columns that the table does not have: {unknown}; columns: {list(df.columns)}")
    header = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    rows = [
        [_format_value(v, formats.get(c)) for c, v in zip(df.columns, r)] for r in df.itertuples(index=False, name=None)
    ]
    return Table(header, rows, numeric, caption)
