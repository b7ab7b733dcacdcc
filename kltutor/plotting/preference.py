"""Figures of ``ch-preference`` (preference optimisation and GRPO)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from kltutor.plotting.style import COLORS, new_axes

__all__ = [
    "METHOD_COLORS",
    "plot_preference_training",
    "plot_final_policies",
    "plot_finite_data_collapse",
    "plot_group_advantage_gap",
]

METHOD_COLORS = {
    "pi_ref": COLORS["grey"],
    "pi*": COLORS["black"],
    "IPO target": COLORS["sky"],
    "DPO": COLORS["blue"],
    "IPO": COLORS["green"],
    "SimPO": COLORS["red"],
    "ORPO": COLORS["purple"],
}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_preference_training(curves: Mapping[str, Mapping[str, Sequence[float]]]):
    """Two panels over training steps: KL(pi_theta || pi*) and KL(pi_theta || pi_ref) per method.

    ``curves[name]`` holds ``"steps"``, ``"kl_to_star"`` and ``"kl_to_ref"``.
    """
    fig, (ax1, ax2) = new_axes(ncols=2, width=9.0)
    for name, c in curves.items():
        color = METHOD_COLORS.get(name)
        ax1.plot(_np(c["steps"]), _np(c["kl_to_star"]), label=name, color=color)
        ax2.plot(_np(c["steps"]), _np(c["kl_to_ref"]), label=name, color=color)
    ax1.set_yscale("log")
    ax1.set_xlabel("Adam step")
    ax1.set_ylabel(r"KL$(\pi_\theta\,\|\,\pi^*)$")
    ax1.set_title(r"distance to the KL-regularised optimum $\pi^*$")
    ax2.set_xlabel("Adam step")
    ax2.set_ylabel(r"KL$(\pi_\theta\,\|\,\pi_\mathrm{ref})$")
    ax2.set_title("distance to the reference")
    ax1.legend()
    fig.tight_layout()
    return fig


def plot_final_policies(policies: Mapping[str, torch.Tensor], rewards: torch.Tensor, lengths: torch.Tensor):
    """Grouped bars of each policy's probabilities over the responses, sorted by reward, with the
    length of each response under its label."""
    order = np.argsort(-_np(rewards))
    n, k = len(order), len(policies)
    width = 0.8 / k
    fig, ax = new_axes(width=9.0, height=3.8)
    for j, (name, p) in enumerate(policies.items()):
        ax.bar(
            np.arange(n) + (j - (k - 1) / 2) * width,
            _np(p)[order],
            width=width,
            label=name,
            color=METHOD_COLORS.get(name),
        )
    labels = [f"r={_np(rewards)[i]:+.2f}\n|y|={int(_np(lengths)[i])}" for i in order]
    ax.set_xticks(np.arange(n), labels, fontsize=7)
    ax.set_ylabel("probability")
    ax.set_title("final policies, responses sorted by true reward")
    ax.legend(ncol=min(k, 5))
    fig.tight_layout()
    return fig


def plot_finite_data_collapse(
    steps: Mapping[str, torch.Tensor],
    mass: Mapping[str, torch.Tensor],
    target: Mapping[str, float],
    ylabel: str,
    title: str,
):
    """Probability of one response over training for several methods; ``target`` maps names to
    reference values drawn as dashed lines (e.g. the probability under pi*)."""
    fig, ax = new_axes()
    for name in mass:
        ax.plot(_np(steps[name]), _np(mass[name]), label=name, color=METHOD_COLORS.get(name))
    for name, value in target.items():
        ax.axhline(value, ls="--", lw=1, color=METHOD_COLORS.get(name, COLORS["black"]), label=f"{name} (target)")
    ax.set_xlabel("Adam step")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_group_advantage_gap(gaps: np.ndarray, advantages: Mapping[str, np.ndarray]):
    """|advantage| of the better half of a 2-2 group against the reward gap, per normalisation."""
    fig, ax = new_axes()
    for name, a in advantages.items():
        ax.plot(gaps, np.abs(a), label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("reward gap inside the group")
    ax.set_ylabel("|advantage|")
    ax.set_title("group [r, r+gap, r, r+gap]: what the normalisation hands the policy")
    ax.legend()
    fig.tight_layout()
    return fig
