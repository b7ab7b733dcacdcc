"""Figures of ``ch-schedules`` (beta schedules)."""

from __future__ import annotations

import numpy as np

from kltutor.plotting.style import COLORS, new_axes

__all__ = ["plot_reward_kl_vs_beta", "plot_controller_runs", "plot_annealing", "plot_reward_scale"]


def plot_reward_kl_vs_beta(curves: dict, marks: dict | None = None):
    """Exact E[r] and KL of the optimum against beta (log axis); ``marks``: {label: beta} verticals."""
    fig, (a1, a2) = new_axes(ncols=2)
    a1.semilogx(curves["beta"], curves["reward"], color=COLORS["blue"])
    a1.set_xlabel(r"$\beta$")
    a1.set_ylabel(r"$\mathbb{E}_{\pi^*_\beta}[r]$")
    a2.loglog(curves["beta"], curves["kl"], color=COLORS["red"])
    a2.set_xlabel(r"$\beta$")
    a2.set_ylabel(r"$\mathrm{KL}(\pi^*_\beta\|\pi_\mathrm{ref})$ (nats)")
    for label, b in (marks or {}).items():
        for ax in (a1, a2):
            ax.axvline(b, color=COLORS["grey"], ls=":", lw=1)
        a2.annotate(label, (b, a2.get_ylim()[0]), rotation=90, va="bottom", ha="right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_controller_runs(runs: dict, target: float, title: str | None = None):
    """beta (log) and KL over steps for several runs {name: TrainingRun}; the target KL dashed."""
    fig, (a1, a2) = new_axes(ncols=2)
    colors = list(COLORS.values())
    for i, (name, run) in enumerate(runs.items()):
        c = colors[i % len(colors)]
        steps = np.arange(1, len(run.beta) + 1)
        a1.semilogy(steps, run.beta, color=c, label=name)
        a2.plot(steps, run.kl, color=c, label=name)
    a2.axhline(target, color=COLORS["black"], ls="--", lw=1, label="target")
    a1.set_xlabel("step")
    a1.set_ylabel(r"$\beta$")
    a2.set_xlabel("step")
    a2.set_ylabel(r"exact KL$(\pi_t\|\pi_\mathrm{ref})$")
    a2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_annealing(schedules: dict, n_steps: int):
    """beta against step for open-loop schedules {name: schedule with value_at}."""
    fig, ax = new_axes()
    k = np.arange(n_steps + 1)
    for name, s in schedules.items():
        ax.plot(k, [s.value_at(int(i)) for i in k], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel(r"$\beta$")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_reward_scale(betas, kl_by_scale: dict):
    """KL of the optimum against beta for several reward scales {c: kl array}."""
    fig, ax = new_axes()
    for c, kl in kl_by_scale.items():
        ax.loglog(betas, kl, label=f"reward x {c:g}")
    ax.set_xlabel(r"$\beta$")
    ax.set_ylabel(r"$\mathrm{KL}(\pi^*_\beta\|\pi_\mathrm{ref})$")
    ax.legend()
    fig.tight_layout()
    return fig
