"""Figures of ``ch-failures``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kltutor.plotting.style import COLORS, new_axes

__all__ = ["plot_beta_runs", "plot_length_hacking", "plot_wrong_reference"]

_PALETTE = [COLORS["blue"], COLORS["green"], COLORS["orange"], COLORS["red"], COLORS["purple"], COLORS["black"]]


def plot_beta_runs(runs: Mapping[str, Mapping[str, Sequence[float]]], cap: float | None = None):
    """KL and expected reward against training step for several runs."""
    fig, axes = new_axes(ncols=2, width=10.0)
    for (label, run), color in zip(runs.items(), _PALETTE):
        steps = np.arange(1, len(run["kl"]) + 1)
        axes[0].plot(steps, run["kl"], color=color, label=label)
        axes[1].plot(steps, run["reward"], color=color, label=label)
    if cap is not None:
        axes[0].axhline(cap, color=COLORS["grey"], ls="--", lw=1, label=r"$-\log\pi_\mathrm{ref}(y_\mathrm{best})$")
    axes[0].set_ylabel(r"KL($\pi\,\|\,\pi_\mathrm{ref}$)")
    axes[1].set_ylabel(r"$E_\pi[r]$")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend()
    return fig, axes


def plot_length_hacking(rows: Mapping[str, Sequence[float]]):
    """Proxy, gold and mean length against sqrt(KL) when the proxy rewards length."""
    fig, axes = new_axes(ncols=2, width=10.0)
    d = np.sqrt(np.asarray(rows["kl"]))
    axes[0].plot(d, rows["proxy"], "o-", ms=3, color=COLORS["orange"], label="proxy")
    axes[0].plot(d, rows["gold"], "o-", ms=3, color=COLORS["blue"], label="gold")
    axes[0].set_ylabel("expected reward")
    axes[0].legend()
    axes[1].plot(d, rows["length"], "o-", ms=3, color=COLORS["red"])
    axes[1].set_ylabel("expected length (tokens)")
    for ax in axes:
        ax.set_xlabel(r"$\sqrt{\mathrm{KL}}$")
    return fig, axes


def plot_wrong_reference(out: Mapping[str, Mapping[str, Sequence[float]]]):
    """Rate of instruction-formatted responses at the KL-regularised optimum, by reference."""
    fig, ax = new_axes()
    for name, color in (("sft", COLORS["green"]), ("base", COLORS["red"])):
        ax.plot(out[name]["beta"], out[name]["format_rate"], "o-", color=color, label=f"reference = {name}")
    ax.axhline(out["sft_format_rate"]["value"][0], color=COLORS["green"], ls=":", lw=1, label="SFT start")
    ax.axhline(out["base_format_rate"]["value"][0], color=COLORS["red"], ls=":", lw=1, label="base model")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(r"$\beta$ (weaker penalty to the right)")
    ax.set_ylabel("formatted-response rate")
    ax.legend()
    return fig, ax
