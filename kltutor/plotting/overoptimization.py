"""Figures of ``ch-overoptimization``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kltutor.plotting.style import COLORS, new_axes

__all__ = ["plot_best_of_n_kl", "plot_overoptimization", "plot_peak_vs_data", "plot_penalty_vs_early_stopping"]


def plot_best_of_n_kl(ns: Sequence[int], exact: Mapping[str, Sequence[float]], formula: Sequence[float]):
    """Exact best-of-n KL on discrete supports against the quoted log n - (n-1)/n."""
    fig, ax = new_axes()
    ax.plot(ns, formula, color=COLORS["black"], lw=2, label=r"$\log n - (n-1)/n$ (continuous reward)")
    palette = [COLORS["blue"], COLORS["orange"], COLORS["green"], COLORS["red"], COLORS["purple"]]
    for (label, values), color in zip(exact.items(), palette):
        ax.plot(ns, values, "o-", ms=3, color=color, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("n")
    ax.set_ylabel(r"KL($\pi_{\mathrm{bon}}\,\|\,\pi_{\mathrm{ref}}$) [nats]")
    ax.legend()
    return fig, ax


def plot_overoptimization(
    bon: Mapping[str, Sequence[float]], tilted: Mapping[str, Sequence[float]], fits: Mapping[str, object]
):
    """Proxy and gold gain against sqrt(KL) for best-of-n and the tilted optimum, with fitted forms."""
    fig, axes = new_axes(ncols=2, width=10.0, sharey=True)
    for ax, rows, title, key in (
        (axes[0], bon, "best-of-n", "bon"),
        (axes[1], tilted, r"$\pi_\mathrm{ref}\,e^{r_\mathrm{proxy}/\beta}/Z$", "tilted"),
    ):
        d = np.sqrt(np.asarray(rows["kl"]))
        ax.plot(d, rows["proxy"], "o-", ms=3, color=COLORS["orange"], label="proxy reward")
        ax.plot(d, rows["gold"], "o-", ms=3, color=COLORS["blue"], label="gold reward")
        grid = np.linspace(1e-4, d.max(), 200)
        for form, style in (("bon", "--"), ("rl", ":")):
            fit = fits.get(f"{key}-{form}")
            if fit is not None:
                ax.plot(grid, fit(grid).numpy(), style, color=COLORS["black"], label=f"fit: {form} form")
        ax.axhline(0, color=COLORS["grey"], lw=0.8)
        ax.set_title(title)
        ax.set_xlabel(r"$d=\sqrt{\mathrm{KL}(\pi\,\|\,\pi_\mathrm{ref})}$")
    axes[0].set_ylabel("gain over the base policy")
    axes[0].legend()
    return fig, axes


def plot_peak_vs_data(curves: Mapping[int, Mapping[str, Sequence[float]]]):
    """Gold gain against sqrt(KL) (tilted optimum) for proxies fitted to different amounts of data."""
    fig, ax = new_axes()
    palette = [COLORS["sky"], COLORS["blue"], COLORS["green"], COLORS["purple"], COLORS["red"]]
    for (n_pairs, rows), color in zip(curves.items(), palette):
        d = np.sqrt(np.asarray(rows["kl"]))
        g = np.asarray(rows["gold"])
        ax.plot(d, g, "-", color=color, label=f"{n_pairs} comparisons")
        i = int(np.argmax(g))
        ax.plot(d[i], g[i], "o", color=color)
    ax.set_xlabel(r"$\sqrt{\mathrm{KL}}$")
    ax.set_ylabel("gold gain")
    ax.legend()
    return fig, ax


def plot_penalty_vs_early_stopping(paths: Mapping[str, Mapping[str, Sequence[float]]]):
    """Gold and proxy gain against sqrt(KL) along optimisation paths with different KL penalties."""
    fig, axes = new_axes(ncols=2, width=10.0)
    palette = [COLORS["black"], COLORS["blue"], COLORS["green"], COLORS["red"]]
    for (label, rows), color in zip(paths.items(), palette):
        d = np.sqrt(np.asarray(rows["kl"]))
        axes[0].plot(d, rows["proxy"], "-", color=color, label=label)
        axes[1].plot(d, rows["gold"], "-", color=color, label=label)
        axes[1].plot(d[-1], rows["gold"][-1], "o", color=color)
    axes[0].set_title("proxy")
    axes[1].set_title("gold")
    for ax in axes:
        ax.set_xlabel(r"$\sqrt{\mathrm{KL}}$")
    axes[0].set_ylabel("gain over the base policy")
    axes[1].legend()
    return fig, axes
