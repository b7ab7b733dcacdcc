"""Checkers for the exercises of ``ch-estimators`` (the k1, k2, k3 estimators)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kltutor.estimators import k3_reference
from kltutor.exercises import CheckResult

__all__ = ["check_stable_k3", "k3_accuracy_failures", "K3_RTOL"]

#: The book's one accuracy rule for k3 (chapters 2 and 7): relative error below this on every input,
#: near 0 included, i.e. float32 accuracy. ``expm1(-l) + l`` alone fails it in float32 at |l| <~ 1e-2.
K3_RTOL = 1e-5

# log-ratios l = logp - ref_logp the checker evaluates, from tiny to large, both signs
_SMALL = [1e-7, -1e-7, 3e-5, -3e-5, 1e-3, -1e-3, 0.02, -0.02]
_MEDIUM = [0.3, -0.3, 0.7, -0.7, 2.0, -2.0, 10.0, -10.0, 40.0, -40.0]


def k3_accuracy_failures(got: Tensor, log_ratio: Tensor, rtol: float = K3_RTOL) -> list[str]:
    """The one k3 check of the book: ``got`` against k3 of ``log_ratio`` (the log-ratios the inputs encode,
    computed in 50-digit arithmetic). Returns failure messages; an empty list means every value is
    finite, non-negative and within ``rtol`` relative error (exact zero where the log-ratio is 0).
    Used by :func:`check_stable_k3` (float32 inputs) and by chapter 7's checker (float16/bfloat16 inputs)."""
    want = k3_reference(log_ratio.double())
    got = got.double()
    out: list[str] = []
    if torch.isnan(got).any():
        out.append("NaN in the output")
    if (got < 0).any():
        out.append("negative values: k3 is >= 0 for every sample")
    zero = want == 0
    rel = torch.where(zero, got.abs(), ((got - want) / torch.where(zero, torch.ones_like(want), want)).abs())
    bad = ~(rel <= rtol)
    if bad.any():
        i = int(torch.argmax(torch.where(bad, rel, torch.zeros_like(rel))))
        out.append(
            f"relative error {rel[i].item():.2e} at l={log_ratio[i].item():g} (rule: <= {rtol:g}; got "
            f"{got[i].item():.6g}, expected {want[i].item():.6g})"
        )
    return out


def check_stable_k3(fn: Callable[[Tensor, Tensor], Tensor], rtol: float = K3_RTOL) -> CheckResult:
    """Check a reader's ``k3(logp, ref_logp)``: value, sign convention, float32 accuracy near 0, shape.

    The reference is k3 = exp(-l) - 1 + l with l = logp - ref_logp, computed in 50-digit
    arithmetic for the float32 inputs. A correct, numerically stable float32 implementation has
    relative error below ``rtol`` on every input, including ``|l| = 1e-7``; the naive
    ``exp(-l) - 1 + l`` fails near 0 and a sign-flipped ratio fails everywhere away from 0.
    """
    messages: list[str] = []
    passed = True
    ells = torch.tensor(_SMALL + _MEDIUM, dtype=torch.float32)
    ref_logp = torch.full_like(ells, -1.5)
    logp = ref_logp + ells
    ell_exact = logp.double() - ref_logp.double()  # the log-ratio the float32 inputs actually encode
    want = k3_reference(ell_exact)
    try:
        got = fn(logp, ref_logp)
    except Exception as exc:
        return CheckResult("stable k3", False, [f"calling fn(logp, ref_logp) raised {type(exc).__name__}: {exc}"])
    if not isinstance(got, Tensor) or got.shape != logp.shape:
        return CheckResult(
            "stable k3",
            False,
            [f"expected a tensor of shape {tuple(logp.shape)}, got {getattr(got, 'shape', type(got))}"],
        )
    if got.dtype != torch.float32:
        passed = False
        messages.append(f"expected float32 output for float32 input, got {got.dtype}")
    rel = ((got.double() - want) / want).abs()
    big = ~(rel <= rtol)
    failures = k3_accuracy_failures(got, ell_exact, rtol)  # the one rule; the messages below say why
    if failures:
        passed = False
    med = torch.tensor([False] * len(_SMALL) + [True] * len(_MEDIUM))
    if (big & med).any():
        i = int(torch.nonzero(big & med)[0])
        messages.append(
            f"wrong value at l={ells[i].item():g}: got {got[i].item():.6g}, expected {want[i].item():.6g} "
            "(is the ratio pi_ref/pi = exp(-l), with l = logp - ref_logp?)"
        )
    elif (big & ~med).any():
        first = int(torch.nonzero(big & ~med)[0])  # the smallest |l| that fails (the list starts at 1e-7)
        messages.append(
            f"inaccurate near l = 0: relative error above {rtol:g} at l={ells[first].item():g} "
            "(exp(-l) - 1 + l cancels; expm1 helps but not enough at |l| ~ 1e-7: use the Taylor series there)"
        )
    messages += [m for m in failures if not m.startswith("relative error")]
    if passed:
        messages.append(f"relative error below {rtol:g} on {len(ells)} log-ratios from 1e-7 to 40 in float32")
    # grad must be finite, also for large positive l where k3 = l - 1 + e^{-l} is finite (a torch.where
    # whose unused branch overflows there gives NaN gradients)
    if passed:
        big = torch.tensor([1e3, 1e4, 1e5], dtype=torch.float32)
        lp = torch.cat([logp, ref_logp[:3] + big]).clone().requires_grad_(True)
        fn(lp, torch.cat([ref_logp, ref_logp[:3]])).sum().backward()
        if lp.grad is None or not torch.isfinite(lp.grad).all():
            passed = False
            messages.append("gradient is not finite (an unused torch.where branch overflowing gives NaN gradients)")
    return CheckResult("stable k3", passed, messages)
