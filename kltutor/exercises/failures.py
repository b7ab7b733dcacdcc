"""Checkers for the exercises of ``ch-failures`` (failure modes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kltutor.checklist import check_batch
from kltutor.exercises import CheckResult
from kltutor.exercises.estimators import K3_RTOL, k3_accuracy_failures

__all__ = ["check_stable_k3", "check_shaped_rewards"]

# log-ratios the checker evaluates (both signs, tiny to large), as float16/bfloat16 values
_VALUES = [-12.0, -3.0, -0.3, -0.01, -1e-3, -1e-5, 0.0, 1e-5, 1e-3, 0.01, 0.3, 2.0, 9.0]


def check_stable_k3(fn: Callable[[Tensor], Tensor]) -> CheckResult:
    """``fn(log_ratio)`` must return k3 = exp(-l) - 1 + l of float16 and bfloat16 log-ratios to the book's
    one accuracy rule (:data:`kltutor.exercises.estimators.K3_RTOL`, float32 accuracy, small ``|l|`` included),
    as a float32 (or float64) tensor. The check is :func:`kltutor.exercises.estimators.k3_accuracy_failures`,
    the same as chapter 2's; the reference is the exact k3 of the float16/bfloat16 values themselves.
    Casting to float32 and calling :func:`kltutor.estimators.k3` passes; ``expm1`` in float32 does not."""
    messages, ok = [], True
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.tensor(_VALUES, dtype=dtype)
        try:
            got = fn(x)
        except Exception as exc:
            return CheckResult("stable k3", False, [f"{dtype}: raised {type(exc).__name__}: {exc}"])
        if not isinstance(got, Tensor) or got.shape != x.shape:
            return CheckResult("stable k3", False, [f"{dtype}: expected a tensor of shape {tuple(x.shape)}"])
        if got.dtype not in (torch.float32, torch.float64):
            ok = False
            messages.append(
                f"{dtype}: returned {got.dtype}; compute and return k3 in float32 (a 16-bit result cannot meet the rule)"
            )
            continue
        failures = k3_accuracy_failures(got, x.double())
        if failures:
            ok = False
            messages += [f"{dtype}: {m}" for m in failures]
    if ok:
        messages.append(
            f"within {K3_RTOL:g} relative error on {len(_VALUES)} log-ratios from 1e-5 to 12 in float16 and bfloat16"
        )
    return CheckResult("stable k3", ok, messages)


def check_shaped_rewards(fn: Callable[[Tensor, Tensor, Tensor, Tensor, float], Tensor]) -> CheckResult:
    """``fn(logp, ref_logp, mask, rewards, beta)`` must return k1-in-reward shaped rewards ``[B, T]``:
    ``-beta * (logp - ref_logp)`` on response tokens, plus the sequence reward on the last response
    token, zero elsewhere, and detached from the graph."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, requires_grad=True)
    logp = torch.nn.functional.logsigmoid(logits)
    ref_logp = torch.nn.functional.logsigmoid(torch.randn(2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.float32)
    rewards = torch.tensor([1.0, -2.0])
    beta = 0.1
    want = -beta * (logp - ref_logp).detach() * mask
    want[0, 3] += 1.0
    want[1, 4] += -2.0
    try:
        got = fn(logp, ref_logp, mask, rewards, beta)
    except Exception as exc:
        return CheckResult("shaped rewards", False, [f"raised {type(exc).__name__}: {exc}"])
    report = check_batch(logp=logp, ref_logp=ref_logp, mask=mask, rewards=rewards, shaped_rewards=got)
    messages = [str(v) for v in report.violations]
    ok = report.ok
    if got.shape != want.shape or not torch.allclose(got.detach(), want, atol=1e-6):
        ok = False
        messages.append(f"values differ from the expected shaped rewards:\n{want}")
    if ok:
        messages.append("values match and the checklist passes")
    return CheckResult("shaped rewards", ok, messages)
