"""Checker for the coding exercise of ``ch-schedules``: implement the adaptive KL controller."""

from __future__ import annotations

import math
from collections.abc import Callable

from kltutor.exercises import CheckResult
from kltutor.schedules import AdaptiveKLController

__all__ = ["CASES", "check_adaptive_update"]

# (beta, measured kl, target, n_steps, horizon): small errors, errors beyond the +-0.2 clip on both
# sides, a negative (k1) KL estimate, and a large n_steps/horizon.
CASES = [
    (0.1, 6.3, 6.0, 128, 10_000),
    (0.1, 5.4, 6.0, 128, 10_000),
    (0.2, 12.0, 6.0, 128, 10_000),
    (0.2, 0.5, 6.0, 256, 10_000),
    (0.05, -0.01, 0.1, 64, 1_000),
    (1.0, 0.1, 0.1, 512, 1_000),
    (0.02, 0.3, 0.1, 1, 10),
]


def check_adaptive_update(update: Callable[[float, float, float, int, int], float]) -> CheckResult:
    """Check ``update(beta, kl, target, n_steps, horizon) -> new beta`` against Ziegler et al.'s rule."""
    messages: list[str] = []
    ok = True
    for beta, kl, target, n_steps, horizon in CASES:
        expected = AdaptiveKLController(beta, target, horizon).update(kl, n_steps=n_steps)
        try:
            got = float(update(beta, kl, target, n_steps, horizon))
        except Exception as exc:  # a reader's bug: report it, do not crash the notebook
            ok = False
            messages.append(f"update{(beta, kl, target, n_steps, horizon)} raised {type(exc).__name__}: {exc}")
            continue
        if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
            ok = False
            unclipped = beta * (1 + (kl / target - 1) * n_steps / horizon)
            hint = ""
            if math.isclose(got, unclipped, rel_tol=1e-9):
                hint = " (this is the unclipped update: clip the error to [-0.2, 0.2])"
            messages.append(
                f"beta={beta}, kl={kl}, target={target}, n_steps={n_steps}, horizon={horizon}: "
                f"expected {expected:.6g}, got {got:.6g}{hint}"
            )
    if ok:
        messages.append(f"all {len(CASES)} cases match, including errors beyond the clip and a negative KL estimate")
    return CheckResult("adaptive KL controller", ok, messages)
