"""Checkers for the exercises of :ref:`ch-fundamentals`.

:func:`check_categorical_kl` tests a reader's ``kl(p, q)`` for categorical distributions along the
last axis against exact answers, including the conventions at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from kltutor.divergences import kl as reference_kl
from kltutor.exercises import CheckResult, show

__all__ = ["check_categorical_kl"]


def _cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    s = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731  (a scalar expected value)
    cases = [
        ("identical distributions give 0", t(0.2, 0.3, 0.5), t(0.2, 0.3, 0.5), s(0.0)),
        (
            "KL(p||q) for p=(1/2,1/2), q=(1/4,3/4) is log 2 - (1/2) log 3",
            t(0.5, 0.5),
            t(0.25, 0.75),
            s(math.log(2) - 0.5 * math.log(3)),
        ),
        (
            "the order of arguments: KL(q||p) for the same pair",
            t(0.25, 0.75),
            t(0.5, 0.5),
            s(0.75 * math.log(1.5) + 0.25 * math.log(0.5)),
        ),
        ("0 log(0/q) = 0: a zero in p contributes nothing", t(0.5, 0.5, 0.0), t(0.25, 0.25, 0.5), s(math.log(2))),
        ("0 log(0/0) = 0: zeros in both contribute nothing", t(0.5, 0.5, 0.0), t(0.5, 0.5, 0.0), s(0.0)),
        ("p log(p/0) = +inf: q misses mass of p", t(0.5, 0.5), t(1.0, 0.0), s(math.inf)),
    ]
    p = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.5], [0.3, 0.3, 0.4]], dtype=torch.float64)
    cases.append(("a batch: one KL per row (sum over the last axis only)", p, q, reference_kl(p, q)))
    return cases


def check_categorical_kl(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], atol: float = 1e-9) -> CheckResult:
    """Check ``fn(p, q)`` = KL(p || q) in nats, summed over the last axis, with the conventions at 0."""
    result = CheckResult(name="categorical KL", passed=True)
    for label, p, q, expected in _cases():
        try:
            got = torch.as_tensor(fn(p.clone(), q.clone()), dtype=torch.float64)
        except Exception as exc:  # a reader's code may raise anything; report it
            result.passed = False
            result.messages.append(f"{label}: raised {type(exc).__name__}: {exc}")
            continue
        if got.shape != expected.shape:
            result.passed = False
            result.messages.append(f"{label}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
            continue
        same_inf = torch.isinf(expected) == torch.isinf(got)
        finite = torch.isfinite(expected)
        ok = (
            bool(same_inf.all())
            and not torch.isnan(got).any()
            and bool(torch.allclose(got[finite], expected[finite], atol=atol, rtol=0))
        )
        if torch.isinf(expected).any():
            ok = ok and bool((got[torch.isinf(expected)] > 0).all())
        if not ok:
            result.passed = False
            result.messages.append(f"{label}: expected {show(expected)}, got {show(got)}")
    if result.passed:
        result.messages.append(f"all {len(_cases())} cases agree with the exact answers")
    return result
