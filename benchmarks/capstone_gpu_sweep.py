"""The capstone chapter's published sweep: placements x betas x seeds on one GPU, in parallel worker
processes, with a deadline; writes the compact results the chapter renders (``results/capstone_gpu``).

    python benchmarks/capstone_gpu_sweep.py --workers 12 --deadline 300 --results results/capstone_gpu
    python benchmarks/capstone_gpu_sweep.py --preset smoke --device cpu --steps 3 --workers 2 --results /tmp/r  # rehearsal

1. The SFT reference of the preset is trained once (or loaded from the cache) in this process, and its
   greedy and sampled accuracies are checked against the range in which RL has room to improve
   (``--accuracy-range``; outside it the sweep still runs and the meta file says so).
2. Every run of the grid (``kltutor.capstone.sweep.grid_configs``: ``placement="none"`` once per
   seed) goes to a queue, seed-major, so a deadline that stops the sweep early leaves whole grids of
   the first seeds. ``--workers`` processes (spawned, one torch CPU thread each) take runs from the
   queue: small models leave a GPU mostly idle between kernel launches, so several processes share it
   well. No run starts after ``--deadline`` seconds; a run still going at ``deadline + grace`` is
   stopped, and the steps it finished are kept (every step's row is on disk when the step ends).
   With ``--size-to-budget`` the grid is sized from a measured step time first: a pilot of
   ``--pilot-steps`` steps runs once alone and once in ``--workers`` processes at the same time; the
   faster arrangement (in steps per second over all processes) is kept, and the sweep takes the
   placements in ``--placements`` order, as many as fit with every seed finishing (three seeds of a
   few placements say more than one seed of all seven), each with as many betas as then fit, and
   fewer steps only when not even two placements fit.
3. ``sweep.csv`` holds one row per (run, step): ``placement``, ``beta_init``, ``seed`` and every metric of ``kltutor.capstone.METRICS``
   (6 significant digits), and ``meta.json`` the base config, package versions, GPU name, the
   reference's accuracies, each run's finished steps and the wall time. Both files are rewritten after
   every finished run, so a sweep cut short (the machine taken back) still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kltutor.capstone.config import CAPSTONE_PLACEMENTS  # the checkout (sys.path above)

#: The order in which a budget-sized sweep keeps placements (it drops them from the end): the baseline, the
#: exact in-reward default, TRL's default, the biased in-loss pair, the exact in-loss term, the zero-gradient
#: k1, k3 in the reward; a placement added to the registry later comes last.
PRIORITY = ("none", "k1-in-reward", "k3-in-loss", "k2-in-loss", "exact-in-loss", "k1-in-loss", "k3-in-reward")
PLACEMENTS = tuple(sorted(CAPSTONE_PLACEMENTS, key=lambda p: PRIORITY.index(p) if p in PRIORITY else len(PRIORITY)))


def _run_pool(configs, workers: int, deadline: float, grace: float, on_report=None) -> tuple[dict, int]:
    """Run ``configs`` (in order) in ``workers`` spawned processes until done or ``deadline + grace``;
    returns the reports by run directory and the number of processes stopped at the deadline."""
    ctx = mp.get_context("spawn")
    jobs, done = ctx.Queue(), ctx.Queue()
    for c in configs:
        jobs.put(c.to_dict())
    procs = [
        ctx.Process(target=_worker, args=(jobs, done, deadline), daemon=True) for _ in range(min(workers, len(configs)))
    ]
    for pr in procs:
        pr.start()
    reports: dict[str, dict] = {}
    while any(pr.is_alive() for pr in procs) and time.time() < deadline + grace:
        try:
            r = done.get(timeout=1.0)
        except queue.Empty:
            continue
        reports[r["run_dir"]] = r
        if on_report:
            on_report(r)
    stopped = [pr for pr in procs if pr.is_alive()]
    for pr in stopped:
        pr.terminate()
    for pr in procs:
        pr.join(timeout=10)
    while True:  # reports that arrived while stopping
        try:
            r = done.get_nowait()
            reports[r["run_dir"]] = r
        except (queue.Empty, OSError, ValueError):
            break
    return reports, len(stopped)


def step_seconds(run_dir) -> float:
    """Median wall seconds of a run's steps after its first (compilation, allocation)."""
    import statistics

    from kltutor.capstone.rundir import METRICS_FILE, MetricsLog

    rows = MetricsLog(Path(run_dir) / METRICS_FILE).read()
    secs = [r["seconds"] for r in rows[1:]] or [r["seconds"] for r in rows]
    return statistics.median(secs) if secs else float("inf")


def size_to_budget(n_placements: int, n_betas: int, n_seeds: int, steps: int, runs_possible) -> tuple[int, int, int]:
    """(placements, betas, steps) of the largest grid whose every seed finishes, where ``runs_possible(s)`` is
    how many runs of ``s`` steps fit: as many placements as fit (``none`` counts once per seed), each
    with as many betas as then fit, and fewer steps only when two placements do not fit (the most that still fit ``none`` and one placement for every seed; 0: nothing fits)."""
    for k in range(n_placements, 1, -1):
        for nb in range(n_betas, 0, -1):
            if n_seeds * (1 + (k - 1) * nb) <= runs_possible(steps):
                return k, nb, steps
    fitting = [s for s in range(steps - 1, 0, -1) if n_seeds * 2 <= runs_possible(s)]
    return 2, 1, (fitting[0] if fitting else 0)


def _worker(jobs, done, deadline: float) -> None:
    """Take run configs from ``jobs`` until it is empty or the deadline has passed; report each on ``done``."""
    import torch

    from kltutor.capstone.config import CapstoneConfig
    from kltutor.capstone.loop import run

    torch.set_num_threads(1)
    os.environ["TQDM_DISABLE"] = "1"
    while time.time() < deadline:
        try:
            cfg_dict = jobs.get_nowait()
        except queue.Empty:
            return
        cfg = CapstoneConfig(**cfg_dict)
        t = time.time()
        try:
            res = run(cfg)
            done.put({"run_dir": cfg.run_dir, "ok": True, "steps": len(res.metrics), "seconds": time.time() - t})
        except Exception as e:
            done.put(
                {"run_dir": cfg.run_dir, "ok": False, "error": f"{type(e).__name__}: {e}", "seconds": time.time() - t}
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--preset", default="h100")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=200, help="GRPO steps per run")
    p.add_argument("--placements", nargs="+", default=list(PLACEMENTS))
    p.add_argument("--betas", nargs="+", type=float, default=[0.01, 0.1])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--deadline", type=float, default=300.0, help="seconds (from the start) after which no run starts")
    p.add_argument(
        "--grace", type=float, default=30.0, help="seconds after the deadline before running workers are stopped"
    )
    p.add_argument(
        "--size-to-budget",
        action="store_true",
        help="size the grid from a measured step time so that every seed of the runs it keeps finishes",
    )
    p.add_argument("--pilot-steps", type=int, default=4, help="steps of each pilot run (--size-to-budget)")
    p.add_argument(
        "--run-overhead", type=float, default=5.0, help="seconds a run spends outside its steps (model build, files)"
    )
    p.add_argument("--accuracy-range", nargs=2, type=float, default=[0.3, 0.7], metavar=("LO", "HI"))
    p.add_argument("--runs", type=Path, default=Path("runs/gpu_sweep"), help="the runs' directories")
    p.add_argument("--cache-dir", type=Path, default=None, help="reference cache (default: the capstone's)")
    p.add_argument("--results", type=Path, required=True, help="where sweep.csv and meta.json go")
    args = p.parse_args(argv)
    t0 = time.time()
    deadline = t0 + args.deadline

    import pandas as pd
    import torch

    from kltutor.capstone.config import preset
    from kltutor.capstone.loop import METRICS
    from kltutor.capstone.preflight import resolve_device
    from kltutor.capstone.rundir import METRICS_FILE, MetricsLog, package_versions, used_settings
    from kltutor.capstone.sft import reference_policy
    from kltutor.capstone.sweep import grid_configs, run_name

    os.environ.setdefault("TQDM_DISABLE", "1")
    base = preset(
        args.preset,
        steps=args.steps,
        device=args.device,
        progress=False,
        overwrite=True,
        cache_dir=str(args.cache_dir) if args.cache_dir else None,
    )
    device = resolve_device(base.device)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"sweep on {gpu}: preset {args.preset}, {args.steps} steps, {args.workers} workers, deadline {args.deadline:.0f} s",
        flush=True,
    )

    t = time.time()
    _, _, info = reference_policy(base, device)
    lo, hi = args.accuracy_range
    in_range = lo <= info.greedy_accuracy <= hi
    ref = {
        "greedy_accuracy": info.greedy_accuracy,
        "sampled_accuracy": info.sampled_accuracy,
        "n_parameters": info.n_parameters,
        "cached": info.cached,
        "seconds": time.time() - t,
        "final_sft_loss": info.sft_losses[-1] if info.sft_losses else None,
        "accuracy_range": [lo, hi],
        "greedy_accuracy_in_range": in_range,
    }
    print(
        f"reference: greedy accuracy {info.greedy_accuracy:.3f}, sampled {info.sampled_accuracy:.3f} "
        f"({'within' if in_range else 'OUTSIDE'} [{lo}, {hi}]), {info.n_parameters:,} parameters, "
        f"{ref['seconds']:.0f} s",
        flush=True,
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()

    sizing = None
    if args.size_to_budget:
        pilot_base = base.replace(steps=args.pilot_steps, overwrite=True)
        pilot = {}
        costly = "exact-in-loss" if "exact-in-loss" in args.placements else args.placements[-1]  # the slowest step
        for w in sorted({1, args.workers}):
            cfgs = grid_configs(
                [costly], args.betas[:1], list(range(100, 100 + w)), pilot_base, args.runs / f"pilot{w}"
            )
            t = time.time()
            _run_pool(cfgs, w, deadline, 0)
            per_step = max(step_seconds(c.run_dir) for c in cfgs)
            pilot[w] = {"seconds_per_step": per_step, "steps_per_second": w / per_step, "wall": time.time() - t}
            print(
                f"pilot, {w} process(es): {per_step:.3f} s per step each, {w / per_step:.1f} steps/s in all", flush=True
            )
        workers = max(pilot, key=lambda w: pilot[w]["steps_per_second"])
        left = deadline - time.time()
        t_step = pilot[workers]["seconds_per_step"] * 1.15  # a 15% margin

        def runs_possible(steps: int) -> int:
            per_run = steps * t_step + args.run_overhead
            return workers * int(max(left, 0) // per_run) if math.isfinite(per_run) else 0

        k, nb, steps = size_to_budget(len(args.placements), len(args.betas), len(args.seeds), args.steps, runs_possible)
        if steps == 0:
            print(
                f"no time for a sweep after the reference and the pilot ({left:.0f} s left): no run starts", flush=True
            )
            args.placements, args.seeds = [], []
        else:
            args.placements, args.betas = args.placements[:k], args.betas[:nb]
            if steps != args.steps:
                args.steps, base = steps, base.replace(steps=steps)
        args.workers = workers
        sizing = {"pilot": pilot, "workers": workers, "runs_possible": runs_possible(steps or 1), "seconds_left": left}
        print(
            f"sized to the budget: {workers} process(es), {sizing['runs_possible']} runs of {args.steps} steps fit in {left:.0f} s: "
            f"placements {args.placements}, betas {args.betas}, seeds {args.seeds}",
            flush=True,
        )

    configs = (
        grid_configs(args.placements, args.betas, args.seeds, base.replace(overwrite=False), args.runs)
        if args.placements and args.seeds
        else []
    )
    order = {p: i for i, p in enumerate(args.placements)}
    configs.sort(key=lambda c: (c.seed, order[c.placement], c.beta))
    configs = [c.replace(overwrite=True) for c in configs]

    def on_report(r):
        name = Path(r["run_dir"]).name
        print(
            f"[{time.time() - t0:6.0f} s] {name}: "
            + (f"{r['steps']} steps in {r['seconds']:.0f} s" if r["ok"] else f"FAILED {r['error']}"),
            flush=True,
        )
        reports[r["run_dir"]] = r
        write_results(configs, reports, 0)  # a sweep cut short keeps every finished run

    def write_results(configs, reports, n_stopped):
        frames, runs = [], []
        for c in configs:
            rows = MetricsLog(Path(c.run_dir) / METRICS_FILE).read()  # a line cut by a stopped worker is left out
            r = reports.get(c.run_dir, {})
            runs.append(
                {
                    "run": run_name(c.placement, c.beta, c.seed),
                    "placement": c.placement,
                    "beta": c.beta,
                    "seed": c.seed,
                    "steps_done": len(rows),
                    "complete": len(rows) == args.steps,
                    "seconds": r.get("seconds"),
                    "error": r.get("error"),
                }
            )
            if rows:
                df = pd.DataFrame(rows, columns=list(METRICS))
                df.insert(0, "seed", c.seed)
                df.insert(0, "beta_init", c.beta)
                df.insert(0, "placement", c.placement)
                frames.append(df)
        args.results.mkdir(parents=True, exist_ok=True)
        if frames:
            pd.concat(frames, ignore_index=True).to_csv(args.results / "sweep.csv", index=False, float_format="%.6g")
        complete = sum(r["complete"] for r in runs)
        meta = {
            "preset": args.preset,
            "steps": args.steps,
            "placements": args.placements,
            "betas": args.betas,
            "seeds": args.seeds,
            "workers": args.workers,
            "deadline_s": args.deadline,
            "base_config": {k: v for k, v in base.to_dict().items() if k not in ("run_dir", "cache_dir", "overwrite")},
            "device": gpu,
            "used": used_settings(c.run_dir for c in configs),  # precision and decode mode, from each run.json
            "versions": package_versions(),
            "reference": ref,
            "runs": runs,
            "runs_complete": complete,
            "runs_total": len(runs),
            "wall_seconds": time.time() - t0,
            "commit": os.environ.get("KLTUTOR_COMMIT"),
            "sizing": sizing,
            "stopped_at_deadline": n_stopped,
            "command": " ".join(sys.argv),
        }
        (args.results / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        return complete, runs

    reports: dict[str, dict] = {}
    reports, n_stopped = _run_pool(configs, args.workers, deadline, args.grace, on_report)
    complete, runs = write_results(configs, reports, n_stopped)
    print(
        f"{complete}/{len(runs)} runs complete, {n_stopped} stopped at the deadline; wrote {args.results}/sweep.csv "
        f"and meta.json in {time.time() - t0:.0f} s",
        flush=True,
    )
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
