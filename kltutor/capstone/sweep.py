"""A sweep over placements x betas x seeds, one run each, collected in one DataFrame (chapter ``ch-capstone``)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from kltutor._validation import integer, nonnegative_number
from kltutor.capstone.config import CapstoneConfig, CapstoneUserError, ConfigError, flag
from kltutor.placements import parse_placement, placement_names

__all__ = ["sweep", "grid_configs", "run_name", "SWEEP_CSV", "SWEEP_JSON"]

SWEEP_CSV = "sweep.csv"
SWEEP_JSON = "sweep.json"


def run_name(placement: str, beta: float, seed: int) -> str:
    """The directory of one run of a sweep under ``out_dir``: ``<placement>_beta<beta>_seed<seed>``."""
    return f"{placement}_beta{beta:g}_seed{seed}"


def grid_configs(
    placements, betas, seeds, base_config: CapstoneConfig, out_dir: str | Path | None = None
) -> list[CapstoneConfig]:
    """The validated config of every run of the sweep, in order, without duplicates.

    ``placement="none"`` has no KL term: it runs once per seed, with ``beta = 0`` and a fixed
    schedule. Raises :class:`~kltutor.capstone.config.ConfigError` naming the bad value.
    """
    placements, betas, seeds = list(placements), list(betas), list(seeds)
    for name, values in (("placements", placements), ("betas", betas), ("seeds", seeds)):
        if not values:
            raise ConfigError(f"{name} must hold at least one value", name)
    if base_config.resume:
        raise ConfigError(
            "a sweep starts every run afresh and cannot resume; to continue one run of a sweep, run it "
            f"alone with {flag('run_dir')} <sweep dir>/<placement>_beta<b>_seed<s> {flag('resume')}",
            "resume",
        )
    if base_config.run_dir is not None:
        raise ConfigError(
            "a sweep puts its runs under out_dir; base_config.run_dir would be ignored (set it to None)", "run_dir"
        )
    known = placement_names(exact=True)
    for p in placements:
        if p not in known:
            raise ConfigError(f"unknown KL placement {p!r}; choose from {list(known)}", "placements")
    for b in betas:
        try:
            nonnegative_number("beta", b, strict=True)
        except ValueError:
            raise ConfigError(f"every beta of a sweep must be a finite number >= 0, got {b!r}", "betas") from None
    for s in seeds:
        try:
            integer("seed", s)
        except ValueError:
            raise ConfigError(f"every seed of a sweep must be an integer >= 0, got {s!r}", "seeds") from None
    configs, done = [], set()
    for placement, beta, seed in itertools.product(placements, betas, seeds):
        no_kl = parse_placement(placement).is_none
        beta = 0.0 if no_kl else float(beta)
        if (placement, beta, seed) in done:
            continue
        done.add((placement, beta, seed))
        changes = dict(
            placement=placement,
            beta=beta,
            seed=seed,
            resume=False,
            run_dir=None if out_dir is None else str(Path(out_dir) / run_name(placement, beta, seed)),
        )
        if no_kl:
            changes.update(kl_schedule="fixed", kl_target=None, kl_horizon=None, beta_end=None)
        try:
            configs.append(base_config.replace(**changes).validate())
        except CapstoneUserError as e:
            raise _in_sweep(e, placement, beta, seed) from None
    return configs


def _in_sweep(e: CapstoneUserError, placement: str, beta: float, seed: int) -> CapstoneUserError:
    """The same error, saying which run of the grid it is about (and naming the sweep's flag)."""
    field = {"placement": "placements", "beta": "betas", "seed": "seeds"}.get(e.field, e.field)
    return type(e)(f"sweep run placement={placement!r}, beta={beta:g}, seed={seed}: {e}", field)


def sweep(placements, betas, seeds, base_config: CapstoneConfig, out_dir: str | Path | None = None):
    """Run every ``(placement, beta, seed)``; return the metrics of all runs as one ``DataFrame``
    with columns ``placement``, ``beta_init``, ``seed`` and the per-step metrics.

    Every run's config and run directory are checked before the first run starts
    (:func:`~kltutor.capstone.preflight.preflight`). Every run reuses the cached reference policy.
    With ``out_dir``, run ``i`` writes to ``out_dir/<placement>_beta<b>_seed<s>``, ``sweep.json``
    records the grid, and ``sweep.csv`` is rewritten after each run, so the runs that finished
    survive a failure of a later one; run directories that already exist need
    ``base_config.overwrite``. Without ``out_dir`` every run gets a temporary directory.
    """
    import pandas as pd

    from kltutor.capstone.loop import run
    from kltutor.capstone.preflight import preflight
    from kltutor.capstone.rundir import atomic_write_text, package_versions

    configs = grid_configs(placements, betas, seeds, base_config, out_dir)
    out = None if out_dir is None else Path(out_dir).expanduser()
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{out} is a file, not a directory; pass a directory for the sweep", "run_dir")
        if (out / SWEEP_CSV).exists() and not base_config.overwrite:
            raise ConfigError(
                f"{out} already holds a sweep ({SWEEP_CSV}); pass {flag('overwrite')} to replace it, "
                "or another directory",
                "run_dir",
            )
        taken = [Path(c.run_dir).name for c in configs if Path(c.run_dir).exists() and any(Path(c.run_dir).iterdir())]
        if taken and not base_config.overwrite:
            raise ConfigError(
                f"{out} already holds runs of a sweep ({', '.join(taken[:3])}{', ...' if len(taken) > 3 else ''}); "
                f"pass {flag('overwrite')} to replace them, or another directory",
                "run_dir",
            )
    for cfg in configs:  # every check of every run before the first one starts
        try:
            preflight(cfg)
        except CapstoneUserError as e:
            raise _in_sweep(e, cfg.placement, cfg.beta, cfg.seed) from None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "placements": list(placements),
            "betas": list(betas),
            "seeds": list(seeds),
            "base_config": base_config.to_dict(),
            "runs": [Path(c.run_dir).name for c in configs],
            "versions": package_versions(),
        }
        atomic_write_text(out / SWEEP_JSON, json.dumps(record, indent=1))
    frames = []
    for cfg in configs:
        df = run(cfg).frame
        df.insert(0, "seed", cfg.seed)
        df.insert(0, "beta_init", cfg.beta)
        df.insert(0, "placement", cfg.placement)
        frames.append(df)
        if out is not None:
            atomic_write_text(out / SWEEP_CSV, pd.concat(frames, ignore_index=True).to_csv(index=False))
    return pd.concat(frames, ignore_index=True)
