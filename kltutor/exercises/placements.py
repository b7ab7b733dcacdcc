"""Checkers for the exercises of ``ch-placements`` (where the KL term goes).

Each checker runs the reader's function on the binary autoregressive toy, where every expectation
is an exact sum, and compares its *expected gradient* with the gradient of the exact reverse KL.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kltutor.estimators import of_log_ratio
from kltutor.exercises import CheckResult, show
from kltutor.gradients import exact_kl_gradients
from kltutor.toys.autoregressive import BinaryAutoregressive, all_binary_sequences

__all__ = ["check_sequence_k2_loss", "check_prefix_weights"]

_CASES = ((0.3, -0.4, -0.2, 0.5, 4), (-0.6, 0.8, 0.4, -0.3, 3))


def _call(name: str, fn: Callable, *args) -> tuple[Tensor | None, str | None]:
    try:
        out = fn(*args)
    except Exception as exc:  # the reader's code: report, don't crash
        return None, f"{name} raised {type(exc).__name__}: {exc}"
    if not isinstance(out, Tensor):
        return None, f"{name} must return a torch tensor, got {type(out).__name__}"
    return out, None


def check_sequence_k2_loss(fn: Callable[[Tensor, Tensor, Tensor], Tensor], tol: float = 1e-8) -> CheckResult:
    """Exercise 3.1: ``fn(logp, ref_logp, mask) -> [batch]`` the sequence-level k2 term per sequence.

    It should be ``0.5 * (sum_t mask * (logp - ref_logp))**2``; its expected gradient (sample fixed,
    sequences drawn from the policy) must equal the gradient of the exact reverse KL.
    """
    res = CheckResult("sequence-level k2 in the loss", True)
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -0.3, -0.7]], dtype=torch.float64)
    ref = torch.tensor([[-0.7, -0.4, -2.5], [-0.2, -0.3, -0.1]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    out, err = _call("fn", fn, logp, ref, mask)
    if err:
        return CheckResult(res.name, False, [err])
    want = 0.5 * ((logp - ref) * mask).sum(-1).square()
    if out.shape != want.shape:
        return CheckResult(res.name, False, [f"expected shape {tuple(want.shape)} ([batch]), got {tuple(out.shape)}"])
    if not torch.allclose(out.to(want.dtype), want, atol=tol):
        res.passed = False
        res.messages.append(f"values {show(out)} differ from {show(want)} (did you apply the mask before squaring?)")
    for a, b, a0, b0, T in _CASES:
        pi, ref_m = BinaryAutoregressive(a, b), BinaryAutoregressive(a0, b0)
        seqs = all_binary_sequences(T)
        with torch.no_grad():
            probs = pi.sequence_logprobs(seqs).exp()
            ref_lp = ref_m.token_logprobs(seqs)
        values, err = _call("fn", fn, pi.token_logprobs(seqs), ref_lp, torch.ones_like(ref_lp))
        if err:
            return CheckResult(res.name, False, [err])
        grads = torch.autograd.grad((probs * values).sum(), [pi.a, pi.b])
        got = torch.stack(list(grads)).detach()
        true = exact_kl_gradients(pi, ref_m, T)["true"]
        if not torch.allclose(got, true, atol=1e-8):
            res.passed = False
            res.messages.append(f"T={T}: expected gradient {show(got)} != reverse-KL gradient {show(true)}")
    if res.passed:
        res.messages.append("values match and the expected gradient equals the reverse-KL gradient")
    return res


def check_prefix_weights(fn: Callable[[Tensor, Tensor, Tensor], Tensor], tol: float = 1e-8) -> CheckResult:
    """Exercise 3.2: ``fn(logp, old_logp, mask) -> [batch, time]`` importance weights that make the
    token-level k3 term, computed on samples of an *old* policy, have the reverse-KL gradient.

    The weights must keep the gradient of ``logp`` (do not detach them).
    """
    res = CheckResult("off-policy importance weights", True)
    for a, b, a0, b0, T in _CASES:
        pi, ref_m = BinaryAutoregressive(a, b), BinaryAutoregressive(a0, b0)
        old = BinaryAutoregressive(a + 0.25, b - 0.3)
        seqs = all_binary_sequences(T)
        with torch.no_grad():
            q = old.sequence_logprobs(seqs).exp()
            ref_lp = ref_m.token_logprobs(seqs)
            old_lp = old.token_logprobs(seqs)
        logp = pi.token_logprobs(seqs)
        w, err = _call("fn", fn, logp, old_lp, torch.ones_like(logp))
        if err:
            return CheckResult(res.name, False, [err])
        if w.shape != logp.shape:
            return CheckResult(res.name, False, [f"weights must have shape {tuple(logp.shape)}, got {tuple(w.shape)}"])
        if not w.requires_grad:
            return CheckResult(res.name, False, ["the weights carry no gradient: the correction needs d w / d theta"])
        lr = logp - ref_lp
        term = (w * of_log_ratio("k3", lr)).sum(-1)
        got = torch.stack(list(torch.autograd.grad((q * term).sum(), [pi.a, pi.b]))).detach()
        true = exact_kl_gradients(pi, ref_m, T)["true"]
        if not torch.allclose(got, true, atol=tol):
            res.passed = False
            res.messages.append(
                f"T={T}: expected gradient {show(got)} != reverse-KL gradient {show(true)}"
                " (a per-token ratio does not correct the distribution of the prefix)"
            )
    if res.passed:
        res.messages.append("the weighted k3 term has exactly the reverse-KL gradient on stale samples")
    return res
