"""Figures of chapter 9 (on-policy distillation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kltutor.plotting.style import COLORS, new_axes

__all__ = ["plot_distillation_gradients", "plot_fits_by_direction", "plot_top_k_bias", "plot_gjsd", "plot_forgetting"]

_PALETTE = [COLORS[c] for c in ("black", "blue", "sky", "purple", "red", "green", "orange", "grey")]


def plot_distillation_gradients(rows: Sequence[Mapping]):
    """Left: each update's exact expected gradient in the ``(a, b)`` plane, drawn from the origin. Right: its
    ``|bias|`` against the gradient of the sequence-level reverse KL (rows of ``distillation.gradient_rows``)."""
    fig, axes = new_axes(ncols=2, width=11.0, height=4.2)
    labels = [f"{r['update']} (γ={r['discount']})" if r["discount"] != "-" else r["update"] for r in rows]
    ax = axes[0]
    for i, (r, lab) in enumerate(zip(rows, labels)):
        c = _PALETTE[i % len(_PALETTE)]
        ax.annotate(
            "", xy=(r["grad a"], r["grad b"]), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": c, "lw": 1.6}
        )
        ax.plot([r["grad a"]], [r["grad b"]], "o", ms=3, color=c, label=lab)
    ax.axhline(0, color=COLORS["grey"], lw=0.8)
    ax.axvline(0, color=COLORS["grey"], lw=0.8)
    ax.set_xlabel("expected gradient, a")
    ax.set_ylabel("expected gradient, b")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[1]
    y = np.arange(len(rows))
    ax.barh(y, [r["|bias|"] for r in rows], color=[_PALETTE[i % len(_PALETTE)] for i in range(len(rows))])
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("|bias| against the sequence reverse-KL gradient")
    fig.tight_layout()
    return fig, axes


def plot_fits_by_direction(ones: Sequence[int], distributions: Mapping[str, Sequence[float]]):
    """Probability of each number of ones in a sequence under the teacher and the memoryless fits."""
    fig, ax = new_axes()
    k = np.asarray(ones)
    width = 0.8 / len(distributions)
    colors = [COLORS["black"], COLORS["blue"], COLORS["red"]]
    for i, (name, probs) in enumerate(distributions.items()):
        ax.bar(k + (i - (len(distributions) - 1) / 2) * width, probs, width, label=name, color=colors[i % 3])
    ax.set_xlabel("number of ones in the sequence")
    ax.set_ylabel("probability")
    ax.legend(fontsize=8)
    return fig, ax


def plot_top_k_bias(rows: Sequence[Mapping]):
    """Bias of the top-k truncated per-token KLs against k (rows of ``distillation.truncation_rows``)."""
    fig, ax = new_axes()
    k = [r["k"] for r in rows]
    ax.plot(k, [r["bias"] for r in rows], "o-", color=COLORS["blue"], label="reverse KL over the student's top-k")
    ax.plot(k, [r["bias (renormalised)"] for r in rows], "s--", color=COLORS["green"], label="same, both renormalised")
    ax.plot(
        k, [r["bias (forward)"] for r in rows], "^-", color=COLORS["red"], label="forward KL over the teacher's top-k"
    )
    ax.axhline(0, color=COLORS["grey"], lw=0.8)
    ax.set_xlabel("k (tokens kept)")
    ax.set_ylabel("bias (nats)")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    return fig, ax


def plot_gjsd(betas: Sequence[float], values: Sequence[float], forward: float, reverse: float, grad_norms=None):
    """The generalised JSD against ``beta`` with the two plain KLs that TRL's code returns at ``beta`` 0 and 1,
    and, with ``grad_norms`` (``beta -> norm``), the norm of the toy's expected gradient."""
    fig, axes = new_axes(ncols=2 if grad_norms else 1, width=10.0 if grad_norms else None)
    ax = axes[0] if grad_norms else axes
    ax.plot(betas, values, color=COLORS["blue"], label=r"JSD$_\beta$ (mixture formula)")
    ax.plot([0.0], [forward], "o", color=COLORS["red"], label=r"code at $\beta=0$: KL(teacher$\|$student)")
    ax.plot([1.0], [reverse], "s", color=COLORS["green"], label=r"code at $\beta=1$: KL(student$\|$teacher)")
    ax.plot(
        betas, np.asarray(betas) * forward, ":", color=COLORS["red"], lw=1, label=r"$\beta\,$KL(teacher$\|$student)"
    )
    ax.plot(
        betas,
        (1 - np.asarray(betas)) * reverse,
        ":",
        color=COLORS["green"],
        lw=1,
        label=r"$(1-\beta)\,$KL(student$\|$teacher)",
    )
    ax.set_xlabel(r"$\beta$")
    ax.set_ylabel("nats per token")
    ax.legend(fontsize=7)
    if grad_norms:
        ax = axes[1]
        inner = [x for x in grad_norms if 0.0 < x < 1.0]
        ax.plot(inner, [grad_norms[x] for x in inner], "o-", ms=3, color=COLORS["purple"], label=r"$0<\beta<1$")
        for x, c, m in ((0.0, COLORS["red"], "o"), (1.0, COLORS["green"], "s")):
            if x in grad_norms:
                ax.plot([x], [grad_norms[x]], m, color=c, label=rf"$\beta={x:g}$ (plain KL)")
        ax.legend(fontsize=7)
        ax.set_xlabel(r"$\beta$")
        ax.set_ylabel("|expected gradient| (toy, per sequence)")
    return fig, axes


def plot_forgetting(angles: Sequence[float], rows: Sequence[Mapping]):
    """KL to the base on the old task's prompts against the angle between the two tasks' features, at one
    KL to the base measured on the new task's prompts (rows of ``distillation.shared_feature_forgetting``)."""
    fig, ax = new_axes()
    ax.plot(angles, [r["KL new"] for r in rows], color=COLORS["blue"], label="KL on the new task (measured)")
    ax.plot(
        angles, [r["KL old"] for r in rows], "o-", ms=3, color=COLORS["red"], label="KL on the old task (forgetting)"
    )
    ax.set_xlabel("angle between the tasks' features (degrees)")
    ax.set_ylabel("KL to the base (nats)")
    ax.legend(fontsize=8)
    return fig, ax
