"""A sweep over placements x betas x seeds, one run each, collected in one DataFrame (chapter ``ch-capstone``)."""

from __future__ import annotations

import itertools
from pathlib import Path

from kltutor.capstone.config import CAPSTONE_PLACEMENTS, CapstoneConfig

__all__ = ["sweep"]


def sweep(placements, betas, seeds, base_config: CapstoneConfig, out_dir: str | Path | None = None):
    """Run every ``(placement, beta, seed)``; return the metrics of all runs as one ``DataFrame``
    with columns ``placement``, ``beta_init``, ``seed`` and the per-step metrics.

    ``placement="none"`` ignores beta, so it runs once per seed (with ``beta_init = 0``). Every run
    reuses the cached reference policy. Run directories go under ``out_dir`` (or a temporary one).
    """
    import pandas as pd

    from kltutor.capstone.loop import run

    placements, betas, seeds = list(placements), list(betas), list(seeds)
    if not placements or not betas or not seeds:
        raise ValueError("placements, betas and seeds must each hold at least one value")
    for p in placements:
        if p not in CAPSTONE_PLACEMENTS:
            raise ValueError(f"unknown KL placement {p!r}; choose from {list(CAPSTONE_PLACEMENTS)}")
    frames = []
    done = set()
    for placement, beta, seed in itertools.product(placements, betas, seeds):
        beta = 0.0 if placement == "none" else float(beta)
        if (placement, beta, seed) in done:
            continue
        done.add((placement, beta, seed))
        run_dir = None if out_dir is None else str(Path(out_dir) / f"{placement}_beta{beta:g}_seed{seed}")
        res = run(base_config.replace(placement=placement, beta=beta, seed=seed, run_dir=run_dir, resume=False))
        df = res.frame
        df.insert(0, "seed", seed)
        df.insert(0, "beta_init", beta)
        df.insert(0, "placement", placement)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
