"""Figures of the capstone chapter (``ch-capstone``): training curves per placement and KL estimates vs the exact KL."""

from __future__ import annotations

from kltutor.plotting.style import COLORS, new_axes, placement_colors

__all__ = ["capstone_curves", "capstone_kl_estimates"]

_LABELS = {
    "reward": "reward",
    "accuracy": "accuracy",
    "kl_exact_seq": "exact KL per sequence (nats)",
    "kl_exact_token": "exact KL per token (nats)",
    "entropy": "entropy per token (nats)",
    "response_length": "response length (tokens)",
    "kl_k1_seq": "k1 estimate of sequence KL",
    "kl_k3_seq": "k3 estimate of sequence KL",
    "clip_fraction": "clip fraction",
    "grad_norm": "gradient norm",
    "beta": "beta",
}


def capstone_curves(df, metrics=("reward", "kl_exact_seq", "entropy", "response_length"), title: str | None = None):
    """One panel per metric, one line per (placement, beta): the mean over seeds at each step,
    with the min-max band over seeds when there are several. ``df`` is :func:`kltutor.capstone.sweep`'s output."""
    missing = {"placement", "beta_init", "seed", "step", *metrics} - set(df.columns)
    if missing:
        raise ValueError(f"the sweep frame lacks columns {sorted(missing)}")
    ncols = 2
    nrows = (len(metrics) + 1) // 2
    fig, axes = new_axes(ncols=ncols, nrows=nrows, width=9.0, height=3.0 * nrows)
    axes = axes.reshape(-1) if hasattr(axes, "reshape") else [axes]
    betas = sorted(df.loc[df["placement"] != "none", "beta_init"].unique()) or [0.0]
    styles = ["-", "--", ":", "-."]
    for ax, metric in zip(axes, metrics):
        for (placement, beta), g in df.groupby(["placement", "beta_init"], sort=False):
            stats = g.groupby("step")[metric].agg(["mean", "min", "max"])
            ls = styles[betas.index(beta) % len(styles)] if beta in betas else "-"
            label = placement if len(betas) == 1 or placement == "none" else f"{placement}, beta={beta:g}"
            color = placement_colors().get(placement, COLORS["black"])
            ax.plot(stats.index, stats["mean"], ls, color=color, label=label, lw=1.5)
            if g["seed"].nunique() > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.15, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel(_LABELS.get(metric, metric))
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(labels) - 1) // 4), 1, 1))
    return fig


def capstone_kl_estimates(df):
    """The k1 and k3 sample estimates of the sequence KL against the exact (full-vocabulary,
    Rao-Blackwellised) value on the same sampled prefixes, one point per step of every run."""
    for c in ("kl_exact_seq", "kl_k1_seq", "kl_k3_seq"):
        if c not in df.columns:
            raise ValueError(f"the frame lacks column {c!r}")
    fig, ax = new_axes()
    ax.scatter(df["kl_exact_seq"], df["kl_k1_seq"], s=12, color=COLORS["blue"], label="k1 (sum of log-ratios)")
    ax.scatter(df["kl_exact_seq"], df["kl_k3_seq"], s=12, color=COLORS["red"], marker="x", label="k3 (sum over tokens)")
    hi = float(max(df["kl_exact_seq"].max(), df["kl_k1_seq"].max(), df["kl_k3_seq"].max(), 1e-3))
    lo = float(min(0.0, df["kl_k1_seq"].min()))
    ax.plot([lo, hi], [lo, hi], color=COLORS["black"], lw=1, label="y = x")
    ax.set_xlabel("exact KL per sequence on the sampled prefixes (nats)")
    ax.set_ylabel("sample estimate (nats)")
    ax.legend()
    fig.tight_layout()
    return fig
