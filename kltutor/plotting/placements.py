"""Figures of ``ch-placements`` (where the KL term goes)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kltutor.plotting.style import new_axes, placement_colors

__all__ = ["plot_placement_gradients_vs_length", "plot_bias_variance_vs_batch"]

_PARAMS = ("a", "b")


def plot_placement_gradients_vs_length(grads: Mapping[int, Mapping[str, object]], title: str = ""):
    """Exact expected gradient of each placement against sequence length, one panel per parameter.

    ``grads[T][placement]`` is a length-2 tensor (as returned by
    :func:`kltutor.gradients.exact_kl_gradients`); ``"true"`` is drawn in black.
    """
    lengths = sorted(grads)
    keys = list(grads[lengths[0]])
    fig, axes = new_axes(ncols=2)
    for i, ax in enumerate(axes):
        for k in keys:
            y = [float(grads[T][k][i]) for T in lengths]
            style = dict(color=placement_colors().get(k, "grey"), marker="o", ms=3)
            if k == "true":
                style.update(lw=3, alpha=0.35, ms=0)
            ax.plot(lengths, y, label=k, **style)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(f"expected gradient w.r.t. {_PARAMS[i]}")
        ax.axhline(0, color="grey", lw=0.6)
    axes[1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, axes


def plot_bias_variance_vs_batch(
    results: Mapping[int, Mapping[str, object]], exact: Mapping[str, Mapping[str, object]] | None = None
):
    """Squared bias and variance of each placement's gradient estimate against the batch size ``N``.

    ``results[N][placement]`` is a :class:`kltutor.gradients.MCGradient`; both axes logarithmic.
    With ``exact`` (from :func:`kltutor.gradients.exact_gradient_moments`) the exact squared bias and
    ``trace(cov)/N`` are drawn as thin lines under the Monte-Carlo points.
    """
    ns = np.array(sorted(results))
    keys = list(results[int(ns[0])])
    fig, (ax_b, ax_v) = new_axes(ncols=2)
    for k in keys:
        c = placement_colors().get(k, "grey")
        bias2 = [float(results[int(n)][k].bias.square().sum()) for n in ns]
        var = [float(results[int(n)][k].variance.sum()) for n in ns]
        ax_b.plot(ns, np.maximum(bias2, 1e-12), "o", color=c, ms=4, label=k)
        ax_v.plot(ns, np.maximum(var, 1e-12), "o", color=c, ms=4, label=k)
        if exact is not None:
            eb = float(exact[k]["bias"].square().sum())
            ev = float(np.trace(exact[k]["cov"].numpy()))
            if eb > 1e-20:  # an unbiased placement has no line: its measured bias is pure noise
                ax_b.plot(ns, np.full(len(ns), eb), "-", color=c, lw=1)
            ax_v.plot(ns, np.maximum(ev / ns, 1e-12), "-", color=c, lw=1)
    for ax, name in ((ax_b, "squared bias  |E[g] - grad KL|^2"), (ax_v, "variance  tr Cov[g_N]")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequences per gradient estimate N")
        ax.set_ylabel(name)
    ax_v.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig, (ax_b, ax_v)
