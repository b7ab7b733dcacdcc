"""Checkers for the exercises of ``ch-overoptimization`` (reward overoptimization)."""

from __future__ import annotations

import math
from collections.abc import Callable

from kltutor import overoptimization as oo
from kltutor.exercises import CheckResult

__all__ = ["check_best_of_n_kl", "check_rl_peak"]

_CASES = [
    ("two outcomes, n=2", [0.5, 0.5], [0.0, 1.0], 2),
    ("three outcomes, n=3", [0.7, 0.2, 0.1], [0.0, 1.0, 2.0], 3),
    ("tie at the top, n=2", [0.25, 0.25, 0.5], [1.0, 1.0, 0.0], 2),
    ("all tied, n=8", [0.2, 0.3, 0.5], [1.0, 1.0, 1.0], 8),
    ("unsorted rewards, n=5", [0.1, 0.4, 0.2, 0.3], [3.0, -1.0, 0.5, 0.5], 5),
]


def check_best_of_n_kl(fn: Callable[[list[float], list[float], int], float]) -> CheckResult:
    """``fn(ref_probs, rewards, n)`` must return the exact KL(best-of-n || base), ties broken at random."""
    messages, ok = [], True
    for name, p, r, n in _CASES:
        want = oo.best_of_n_kl(p, r, n)
        try:
            got = float(fn(p, r, n))
        except Exception as exc:
            ok = False
            messages.append(f"{name}: raised {type(exc).__name__}: {exc}")
            continue
        if not math.isfinite(got) or abs(got - want) > 1e-9:
            ok = False
            hint = (
                " (did you use log n - (n-1)/n? it is only an upper bound here)"
                if abs(got - oo.best_of_n_kl_formula(n)) < 1e-9
                else ""
            )
            hint = hint or (" (ties: a class of equal rewards shares F(c)^n - F(c-)^n)" if "tie" in name else "")
            messages.append(f"{name}: expected {want:.6f}, got {got:.6f}{hint}")
        else:
            messages.append(f"{name}: {got:.6f} ok")
    return CheckResult("best-of-n KL", ok, messages)


def check_rl_peak(fn: Callable[[float, float], float]) -> CheckResult:
    """``fn(alpha, beta)`` must return the KL (not d) at which d(alpha - beta log d) peaks."""
    messages, ok = [], True
    for alpha, beta in ((1.0, 0.5), (0.6, 0.3), (2.0, 1.5)):
        want = oo.form_peak(alpha, beta, "rl")["kl"]
        try:
            got = float(fn(alpha, beta))
        except Exception as exc:
            ok = False
            messages.append(f"alpha={alpha}, beta={beta}: raised {type(exc).__name__}: {exc}")
            continue
        if not math.isclose(got, want, rel_tol=1e-6):
            ok = False
            d = oo.form_peak(alpha, beta, "rl")["d"]
            hint = " (that is d*, square it for the KL)" if math.isclose(got, d, rel_tol=1e-6) else ""
            messages.append(f"alpha={alpha}, beta={beta}: expected KL* = {want:.6f}, got {got:.6f}{hint}")
        else:
            messages.append(f"alpha={alpha}, beta={beta}: {got:.6f} ok")
    return CheckResult("RL-form peak", ok, messages)
