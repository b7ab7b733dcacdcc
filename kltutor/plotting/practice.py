"""Figures of ``ch-practice`` (KL in practice)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kltutor.plotting.style import COLORS, new_axes

__all__ = [
    "plot_sampler_temperature",
    "plot_tis",
    "plot_effective_beta",
    "plot_reference_updates",
    "plot_loss_at_start",
]


def plot_sampler_temperature(
    temperatures: Sequence[float],
    rows: Sequence[Mapping[str, float]],
    tempered: Sequence[Mapping[str, float]] | None = None,
):
    """What the logged k1 and k3 estimate when rollouts are sampled at temperature T (trainer at 1),
    against the KL of the objective; with ``tempered``, the KL between the tempered distributions."""
    fig, axes = new_axes(ncols=2, width=10.0)
    t = np.asarray(temperatures)
    target = rows[0]["kl_target"]
    ax = axes[0]
    ax.axhline(target, color=COLORS["black"], lw=1, label=r"KL($\pi\|\pi_\mathrm{ref}$) (objective)")
    ax.plot(t, [r["k1"] for r in rows], "o-", ms=3, color=COLORS["blue"], label=r"$E_q[\sum_t k_1]$ (logged k1)")
    ax.plot(t, [r["k3"] for r in rows], "o-", ms=3, color=COLORS["red"], label=r"$E_q[\sum_t k_3]$ (logged k3)")
    if tempered is not None:
        ax.plot(
            t,
            [r["kl_scored"] for r in tempered],
            "--",
            color=COLORS["green"],
            label=r"KL($\pi_T\|\pi_{\mathrm{ref},T}$) (TRL, verl)",
        )
    ax.axhline(0, color=COLORS["grey"], lw=0.8)
    ax.axvline(1, color=COLORS["grey"], lw=0.8, ls=":")
    ax.set_xlabel("sampling temperature T")
    ax.set_ylabel("nats per sequence")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(t, [r["max_k3"] for r in rows], "o-", ms=3, color=COLORS["red"], label="largest sequence k3 (scored at 1)")
    if tempered is not None:
        ax.plot(t, [r["max_k3"] for r in tempered], "--", color=COLORS["green"], label="largest sequence k3 (tempered)")
    ax.plot(t, [r["sd_k3"] for r in rows], "o-", ms=3, color=COLORS["orange"], label="sd of sequence k3 (scored at 1)")
    ax.set_yscale("log")
    ax.set_xlabel("sampling temperature T")
    ax.legend(fontsize=8)
    return fig, axes


def plot_tis(levels: Mapping[str, Sequence[Mapping[str, float]]]):
    """Squared bias and per-sequence variance of the truncated-IS policy gradient against the cap C."""
    fig, axes = new_axes(ncols=2, width=10.0)
    colors = [COLORS["blue"], COLORS["red"], COLORS["green"]]
    for (name, rows), color in zip(levels.items(), colors):
        rows = [r for r in rows if 0 < r["cap"] < np.inf]
        caps = [r["cap"] for r in rows]
        axes[0].plot(caps, [max(r["bias2"], 1e-12) for r in rows], "o-", ms=3, color=color, label=name)
        axes[1].plot(caps, [r["variance"] for r in rows], "o-", ms=3, color=color, label=name)
    axes[0].set_ylabel(r"$|E\hat g_C - \nabla J|^2$")
    axes[1].set_ylabel(r"tr Cov$(\hat g_C)$ per sequence")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("truncation cap C")
    axes[0].set_yscale("log")
    axes[0].set_ylim(bottom=3e-13)
    axes[0].axhline(1e-12, color=COLORS["grey"], lw=0.8, ls=":")
    axes[0].annotate(
        "exact (bias < 1e-12)",
        (caps[-1], 1e-12),
        xytext=(0, 4),
        textcoords="offset points",
        ha="right",
        fontsize=8,
        color=COLORS["grey"],
    )
    axes[0].legend()
    return fig, axes


def plot_effective_beta(lengths: Sequence[float], curves: Mapping[str, Sequence[float]], beta: float):
    """beta_eff(T), the coefficient on a length-T sequence's summed KL, for each aggregation."""
    fig, ax = new_axes()
    colors = [COLORS["black"], COLORS["red"], COLORS["blue"], COLORS["green"]]
    for (name, vals), color in zip(curves.items(), colors):
        ax.plot(lengths, vals, "o-", ms=3, color=color, label=name)
    ax.set_xlabel("response length T (tokens)")
    ax.set_ylabel(r"$\beta_\mathrm{eff}(T)$")
    ax.set_yscale("log")
    ax.set_title(rf"$\beta={beta:g}$", fontsize=10)
    ax.legend()
    return fig, ax


def plot_reference_updates(runs: Mapping[str, Mapping[str, Sequence[float]]]):
    """KL to the initial model (solid) and to the current reference (dashed) over training."""
    fig, axes = new_axes(ncols=2, width=10.0)
    colors = [COLORS["black"], COLORS["blue"], COLORS["red"], COLORS["green"], COLORS["purple"]]
    for (name, run), color in zip(runs.items(), colors):
        steps = np.arange(1, len(run["kl_initial"]) + 1)
        axes[0].plot(steps, run["kl_initial"], color=color, label=name)
        axes[1].plot(steps, run["kl_reference"], color=color, ls="--", label=name)
    axes[0].set_ylabel(r"KL($\pi_t\|\pi_0$): drift from the start")
    axes[1].set_ylabel(r"KL($\pi_t\|\pi_{\mathrm{ref},t}$): what beta controls")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    return fig, axes


def plot_loss_at_start(frame, title: str | None = None):
    """A capstone run's logged loss next to beta times its KL term, per step."""
    fig, ax = new_axes()
    ax.plot(frame["step"], frame["loss"], "o-", ms=4, color=COLORS["black"], label="logged GRPO loss")
    ax.plot(
        frame["step"],
        frame["beta"] * frame["kl_term"],
        "x--",
        ms=6,
        color=COLORS["red"],
        label=r"$\beta\times$ KL term",
    )
    ax.axhline(0, color=COLORS["grey"], lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend()
    return fig, ax


# --- KL as a filter, k1 under a tempered sampler (sec-practice-filters, sec-practice-tempered-k1) ----------

__all__ += ["plot_filter_rejection_by_length", "plot_tempered_k1_entropy"]


def plot_filter_rejection_by_length(by_length: Mapping[str, Sequence[float]], threshold: float, statistic: str = "k3"):
    """Probability under the sampler that a sequence is rejected, against its length, for a summed and a mean
    per-token statistic compared with the same threshold (``kltutor.filters.rejection_by_length``)."""
    fig, ax = new_axes()
    L = np.asarray(by_length["length"])
    ax.plot(
        L, by_length["sum"], "o-", ms=4, color=COLORS["red"], label=f"sum over tokens of {statistic} > {threshold:g}"
    )
    ax.plot(
        L, by_length["mean"], "s-", ms=4, color=COLORS["blue"], label=f"mean over tokens of {statistic} > {threshold:g}"
    )
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("P(rejected) under the sampler")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return fig, ax


def plot_tempered_k1_entropy(runs: Mapping[str, Mapping[str, Sequence[float]]]):
    """Sequence entropy of the policy over steps when only a KL term is trained, for several sampler/estimator
    pairs (``kltutor.pitfalls.tempered_k1_run``), with the maximum entropy ``T log V`` and the start marked."""
    fig, axes = new_axes(ncols=2, width=10.0)
    palette = [COLORS["black"], COLORS["red"], COLORS["blue"], COLORS["green"], COLORS["grey"]]
    styles = ["--", "-", "-", ":", "-."]  # the flat runs overlap: dashed and dotted keep both visible
    for (name, run), color, ls in zip(runs.items(), palette, styles):
        axes[0].plot(run["step"], run["entropy"], color=color, ls=ls, lw=2 if ls != "-" else 1.5, label=name)
        axes[1].plot(run["step"], run["kl_to_ref"], color=color, ls=ls, lw=2 if ls != "-" else 1.5, label=name)
    first = next(iter(runs.values()))
    axes[0].axhline(first["max_entropy"], color=COLORS["grey"], ls=":", lw=1, label="T log V (uniform)")
    axes[0].set_ylabel("entropy of the policy (nats, whole sequence)")
    axes[1].set_ylabel(r"KL($\pi\|\pi_\mathrm{ref}$)")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    return fig, axes
