"""Checkers for the exercises of chapter 7 (failure modes)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from kltutor.checklist import inspect
from kltutor.exercises import CheckResult

__all__ = ["check_stable_k3", "check_shaped_rewards"]


def check_stable_k3(fn: Callable[[Tensor], Tensor]) -> CheckResult:
    """``fn(log_ratio)`` must return k3 = exp(-l) - 1 + l accurately for float16/bfloat16 input."""
    values = [-12.0, -3.0, -0.01, -1e-3, 0.0, 1e-3, 0.01, 2.0, 9.0]
    exact = [math.expm1(-v) + v for v in values]
    messages, ok = [], True
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.tensor(values, dtype=dtype)
        try:
            got = fn(x).double().tolist()
        except Exception as exc:  # noqa: BLE001
            return CheckResult("stable k3", False, [f"{dtype}: raised {type(exc).__name__}: {exc}"])
        for v, g, e in zip(x.double().tolist(), got, [math.expm1(-u) + u for u in x.double().tolist()]):
            if not math.isfinite(g) or g < 0 or abs(g - e) > 1e-3 * abs(e) + 1e-9:
                ok = False
                messages.append(f"{dtype}, log_ratio={v:g}: expected {e:.6g}, got {g:.6g}")
    if ok:
        messages.append(f"accurate on {len(values)} values in float16 and bfloat16 (exact values {exact[0]:.6g} ... {exact[-1]:.6g})")
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
    except Exception as exc:  # noqa: BLE001
        return CheckResult("shaped rewards", False, [f"raised {type(exc).__name__}: {exc}"])
    report = inspect(logp=logp, ref_logp=ref_logp, mask=mask, rewards=rewards, shaped_rewards=got)
    messages = [str(v) for v in report.violations]
    ok = report.ok
    if got.shape != want.shape or not torch.allclose(got.detach(), want, atol=1e-6):
        ok = False
        messages.append(f"values differ from the expected shaped rewards:\n{want}")
    if ok:
        messages.append("values match and the checklist passes")
    return CheckResult("shaped rewards", ok, messages)
