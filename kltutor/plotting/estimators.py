"""Figures of ``ch-estimators`` (the k1, k2, k3 estimators)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kltutor.plotting.style import COLORS, new_axes

__all__ = [
    "plot_k3_construction",
    "plot_estimator_histograms",
    "plot_variance_vs_separation",
    "plot_heavy_tail",
    "plot_k3_relative_error",
]

_EST_COLORS = {"k1": COLORS["blue"], "k2": COLORS["green"], "k3": COLORS["red"]}


def plot_k3_construction(x_min: float = -3.0, x_max: float = 2.0):
    """f(x) = e^x - x - 1 and its tangent at 0: the convex function that makes k3 non-negative."""
    x = np.linspace(x_min, x_max, 400)
    fig, ax = new_axes()
    ax.plot(x, np.exp(x), color=COLORS["blue"], label=r"$e^x$")
    ax.plot(x, 1 + x, color=COLORS["grey"], ls="--", label=r"tangent $1+x$")
    ax.plot(x, np.expm1(x) - x, color=COLORS["red"], label=r"$f(x)=e^x-x-1$ (k3 with $x=-\ell$)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel(r"$x = \log(\pi_\mathrm{ref}/\pi_\theta) = -\ell$")
    ax.legend()
    ax.set_title("k3 is the gap between a convex function and its tangent")
    return fig, ax


def plot_estimator_histograms(samples: Mapping[str, np.ndarray], true_kl: float, bins: int = 60):
    """One panel per estimator: histogram of single-sample values, the true KL and the sample mean."""
    fig, axes = new_axes(ncols=len(samples), height=3.2)
    for ax, (name, vals) in zip(np.atleast_1d(axes), samples.items()):
        vals = np.asarray(vals)
        ax.hist(vals, bins=bins, color=_EST_COLORS.get(name, COLORS["grey"]), alpha=0.75, density=True)
        ax.axvline(true_kl, color="black", lw=1.5, label="true KL")
        ax.axvline(vals.mean(), color=COLORS["orange"], lw=1.5, ls="--", label="sample mean")
        ax.set_title(name)
        ax.set_xlabel("single-sample value")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    return fig, axes


def plot_variance_vs_separation(delta: np.ndarray, variances: Mapping[str, np.ndarray], crossover: float | None = None):
    """Exact variance of each estimator against the separation delta = (mu_policy - mu_ref)/sigma."""
    fig, ax = new_axes()
    for name, v in variances.items():
        ax.plot(delta, v, color=_EST_COLORS.get(name, COLORS["grey"]), label=f"Var[{name}]")
    if crossover is not None:
        ax.axvline(crossover, color=COLORS["grey"], ls=":", label=rf"crossover $\delta={crossover:.3f}$")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\delta = (\mu_\theta-\mu_\mathrm{ref})/\sigma$")
    ax.set_ylabel("variance of one sample")
    ax.set_title("Equal-variance Gaussians: k3 wins only for small separation")
    ax.legend()
    return fig, ax


def plot_heavy_tail(
    running: Mapping[str, np.ndarray], true_kl: float, sorted_k3: np.ndarray | None = None, n: np.ndarray | None = None
):
    """Left: running means of k1 and k3 against the sample count ``n`` (default 1, 2, ...);
    right: the largest k3 values against their rank (a straight line on log-log axes is a power-law tail)."""
    fig, axes = new_axes(ncols=2, height=3.4)
    ax = axes[0]
    for name, v in running.items():
        x = np.arange(1, len(v) + 1) if n is None else np.asarray(n)
        ax.plot(x, v, color=_EST_COLORS.get(name, COLORS["grey"]), label=f"running mean {name}")
    ax.axhline(true_kl, color="black", lw=1.2, label="true KL")
    ax.set_xscale("log")
    ax.set_xlabel("number of samples")
    ax.legend()
    ax.set_title("Infinite-variance k3: the mean converges slowly")
    ax = axes[1]
    if sorted_k3 is not None:
        top = np.sort(np.asarray(sorted_k3))[::-1]
        ax.loglog(np.arange(1, len(top) + 1), top, color=_EST_COLORS["k3"], marker=".", ls="none")
        ax.set_xlabel("rank")
        ax.set_ylabel("k3 value")
        ax.set_title("largest k3 samples (power-law tail)")
    fig.tight_layout()
    return fig, axes


def plot_k3_relative_error(ell: np.ndarray, errors: Mapping[str, np.ndarray], eps: Mapping[str, float] | None = None):
    """Relative error of k3 forms against |l| (log-log), one line per (form, dtype)."""
    fig, ax = new_axes(width=8.5)
    styles = {"naive": ":", "expm1": "--", "stable": "-"}
    dtype_colors = {
        "float64": COLORS["blue"],
        "float32": COLORS["red"],
        "bfloat16": COLORS["green"],
        "float16": COLORS["purple"],
    }
    for key, err in errors.items():
        form, dtype = key.split("/")
        err = np.maximum(np.asarray(err, dtype=float), 1e-18)
        ax.loglog(np.abs(ell), err, ls=styles.get(form, "-"), color=dtype_colors.get(dtype, COLORS["grey"]), label=key)
    if eps:
        for dtype, e in eps.items():
            ax.axhline(e, color=dtype_colors.get(dtype, COLORS["grey"]), lw=0.6, alpha=0.6)
    ax.set_ylim(1e-18, 1e3)  # exact results (error 0) are drawn at the floor 1e-18
    ax.set_xlabel(r"$|\ell|$ (negative $\ell$ shown)")
    ax.set_ylabel("relative error of k3")
    ax.set_title("k3 near $\\ell=0$: naive vs expm1 vs series (thin lines: machine epsilon)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig, ax
