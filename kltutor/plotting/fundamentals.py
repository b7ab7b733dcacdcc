"""Figures of :ref:`ch-fundamentals`."""

from __future__ import annotations

import math

import numpy as np
import torch

from kltutor.plotting.style import COLORS, new_axes

__all__ = ["plot_kl_asymmetry", "plot_gaussian_fits", "plot_divergence_bounds", "plot_token_vs_sequence"]


def plot_kl_asymmetry(n: int = 199):
    """KL(Ber(a) || Ber(b)) and KL(Ber(b) || Ber(a)) as heat maps over (a, b), plus their difference."""
    from kltutor.divergences import kl

    grid = torch.linspace(0.005, 0.995, n, dtype=torch.float64)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    P = torch.stack([a, 1 - a], dim=-1)
    Q = torch.stack([b, 1 - b], dim=-1)
    fwd = kl(P, Q).numpy()
    diff = fwd - kl(Q, P).numpy()
    fig, axes = new_axes(ncols=2, width=9.0, height=3.8)
    ext = [grid[0].item(), grid[-1].item(), grid[0].item(), grid[-1].item()]
    im0 = axes[0].imshow(np.log10(fwd.T + 1e-6), origin="lower", extent=ext, cmap="viridis", vmin=-3)
    axes[0].set(title=r"$\log_{10}\,\mathrm{KL}(\mathrm{Ber}(a)\,\|\,\mathrm{Ber}(b))$", xlabel="a", ylabel="b")
    fig.colorbar(im0, ax=axes[0])
    lim = np.abs(diff).max()
    im1 = axes[1].imshow(diff.T, origin="lower", extent=ext, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[1].set(
        title=r"$\mathrm{KL}(p\|q)-\mathrm{KL}(q\|p)$, $p=\mathrm{Ber}(a)$, $q=\mathrm{Ber}(b)$", xlabel="a", ylabel="b"
    )
    fig.colorbar(im1, ax=axes[1])
    for ax in axes:
        ax.grid(False)
    fig.tight_layout()
    return fig


def plot_gaussian_fits(mixtures: list, fits: list[dict], titles: list[str]):
    """One panel per target mixture: its density and each fitted Gaussian (label -> GaussianFit)."""
    fig, axes = new_axes(ncols=len(mixtures), width=4.6 * len(mixtures), height=3.6)
    axes = np.atleast_1d(axes)
    colors = [COLORS["blue"], COLORS["red"], COLORS["orange"], COLORS["green"]]
    styles = ["-", "--", ":", "-."]
    for ax, mix, panel, title in zip(axes, mixtures, fits, titles):
        lo = float((mix.means - 4 * mix.stds).min())
        hi = float((mix.means + 4 * mix.stds).max())
        x = torch.linspace(lo, hi, 600, dtype=torch.float64)
        ax.fill_between(x.numpy(), mix.log_prob(x).exp().numpy(), color=COLORS["grey"], alpha=0.35, label="target p")
        for (label, fit), c, ls in zip(panel.items(), colors, styles):
            dens = torch.exp(-0.5 * ((x - fit.mu) / fit.sigma) ** 2) / (fit.sigma * math.sqrt(2 * math.pi))
            ax.plot(x.numpy(), dens.numpy(), color=c, ls=ls, lw=2, label=label)
        ax.set(title=title, xlabel="x", ylabel="density")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_divergence_bounds(d_kl, d_tv, d_h2, d_chi2):
    """Three scatter panels: each divergence against its KL bound, with the line of equality."""
    d_kl, d_tv, d_h2, d_chi2 = (np.asarray(v, dtype=float) for v in (d_kl, d_tv, d_h2, d_chi2))
    fig, axes = new_axes(ncols=3, width=11.0, height=3.6)
    panels = [
        (np.sqrt(d_kl / 2), d_tv, r"Pinsker: $\sqrt{\mathrm{KL}/2}$", "TV"),
        (d_kl / 2, d_h2, r"$\mathrm{KL}/2$", r"$H^2=1-\sum\sqrt{pq}$"),
        (np.log1p(d_chi2), d_kl, r"$\log(1+\chi^2)$", "KL"),
    ]
    for ax, (bound, value, xl, yl) in zip(axes, panels):
        ax.scatter(bound, value, s=6, alpha=0.5, color=COLORS["blue"], lw=0)
        top = float(max(bound.max(), value.max()))
        ax.plot([0, top], [0, top], color=COLORS["black"], lw=1, label="equality")
        ax.set(xlabel=xl + " (bound)", ylabel=yl)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_token_vs_sequence(sampled, full_vocab, exact: float):
    """Histograms of the two per-sequence estimators of the sequence KL, with the exact value."""
    sampled, full_vocab = np.asarray(sampled, dtype=float), np.asarray(full_vocab, dtype=float)
    fig, ax = new_axes()
    lo, hi = min(sampled.min(), full_vocab.min()), max(sampled.max(), full_vocab.max())
    bins = np.linspace(lo, hi, 60)
    ax.hist(sampled, bins=bins, alpha=0.55, color=COLORS["orange"], label=r"$\sum_t \ell_t$ (sampled log-ratio)")
    ax.hist(full_vocab, bins=bins, alpha=0.55, color=COLORS["blue"], label=r"$\sum_t \mathrm{KL}_t$ (full vocabulary)")
    ax.axvline(exact, color=COLORS["black"], lw=1.5, label="exact sequence KL")
    ax.set(xlabel="per-sequence estimate (nats)", ylabel="count")
    ax.legend()
    fig.tight_layout()
    return fig
