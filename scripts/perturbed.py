"""Run a command under perturbed floating-point numerics, to catch outputs that only one CPU reproduces.

    python scripts/perturbed.py [--variant scalar|avx2] [--show] -- COMMAND [ARGS ...]

nbval compares stored notebook outputs on whatever CPU runs the tests, and the float kernels that
torch, MKL, numpy and OpenBLAS dispatch to differ between CPUs (vector width, summation order,
exp/log implementations): results agree to rounding, not bit for bit. A cell that prints those last
bits passes on the machine that executed it and fails on the next one. `make test` therefore runs
nbval a second time under this script, which moves every kernel family off the path the local CPU
would take, so such a cell fails here, before it ships:

- ``scalar`` (default): ATen's scalar kernels (``ATEN_CPU_CAPABILITY=default``: reductions in
  another order, libm instead of SLEEF), MKL's compatibility code path (``MKL_CBWR=COMPATIBLE``),
  numpy's baseline SIMD only (its dispatch targets disabled), OpenBLAS's generic kernels
  (``OPENBLAS_CORETYPE=Prescott``), oneDNN limited to SSE4.1, one thread everywhere.
- ``avx2``: what an AVX2-only CPU computes (ATen, MKL and numpy capped at AVX2, OpenBLAS's Haswell
  kernels). On a CPU without AVX-512 that is its native path, so the variant says so and runs
  nothing.

Both also point ``KLTUTOR_CACHE`` at a fresh directory, so the capstone's reference policy is
retrained under the perturbed numerics instead of being loaded from the normal pass's cache.

What each perturbation changed when it was introduced, on an AMD EPYC (AVX-512) with torch 2.13:
``scalar`` changed the printed digits of 2 cells of the then-stored notebooks that ``avx2`` left
alone (a full-precision float repr in chapters 2 and 3), ``avx2`` changed 1 that ``scalar`` left
alone (a 1e-16 residual in chapter 5), both changed the L-BFGS gap (chapter 4), a fitted rmse
(chapter 6) and every number of the capstone's CPU run (chapter 11). docs/CONVENTIONS.md has the rule
this enforces.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile

VARIANTS = ("scalar", "avx2")


def _numpy_dispatch_targets() -> list[str]:
    """numpy's optional SIMD targets (everything above its compiled-in baseline)."""
    try:
        from numpy._core import _multiarray_umath as umath  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import _multiarray_umath as umath  # type: ignore[no-redef]
    return list(getattr(umath, "__cpu_dispatch__", []))


def _native_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def environment(variant: str) -> dict[str, str] | None:
    """The environment variables of ``variant``; None when it would not change anything on this CPU."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    targets = _numpy_dispatch_targets()
    if variant == "scalar":
        env["ATEN_CPU_CAPABILITY"] = "default"
        if targets:
            env["NPY_DISABLE_CPU_FEATURES"] = " ".join(targets)
        if x86:
            env.update(MKL_CBWR="COMPATIBLE", OPENBLAS_CORETYPE="Prescott", ONEDNN_MAX_CPU_ISA="SSE41")
        return env
    # avx2: only meaningful where the native path is wider
    if not x86 or _native_capability().upper() != "AVX512":
        return None
    above_avx2 = [t for t in targets if t.startswith(("X86_V4", "AVX512"))]
    env.update(
        ATEN_CPU_CAPABILITY="avx2",
        MKL_CBWR="AVX2",
        MKL_ENABLE_INSTRUCTIONS="AVX2",
        OPENBLAS_CORETYPE="Haswell",
        ONEDNN_MAX_CPU_ISA="AVX2",
    )
    if above_avx2:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(above_avx2)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, default="scalar")
    parser.add_argument("--show", action="store_true", help="print the environment and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    env = environment(args.variant)
    if env is None:
        print(
            f"perturbed ({args.variant}): this CPU's native kernels are already {args.variant.upper()} "
            f"or narrower ({_native_capability()}); nothing to perturb, skipped"
        )
        return 0
    if args.show:
        for key, value in sorted(env.items()):
            print(f"{key}={value}")
        return 0
    if not command:
        parser.error("give the command to run after --")
    cache = tempfile.mkdtemp(prefix="kltutor-perturbed-")
    env["KLTUTOR_CACHE"] = cache
    shown = " ".join(f"{k}={v!r}" if " " in v else f"{k}={v}" for k, v in sorted(env.items()))
    print(f"perturbed ({args.variant}): {shown}", flush=True)
    try:
        return subprocess.call(command, env={**os.environ, **env})
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
