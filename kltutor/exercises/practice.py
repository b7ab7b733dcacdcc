"""Checkers for the exercises of ``ch-practice`` (KL in practice)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from kltutor.estimators import of_log_ratio
from kltutor.exercises import CheckResult
from kltutor.practice import AGGREGATIONS, effective_beta
from kltutor.toys import BinaryAutoregressive

__all__ = ["check_effective_beta", "check_logged_kl"]


def check_effective_beta(fn: Callable[[Sequence[int], str, float], Sequence[float]]) -> CheckResult:
    """``fn(lengths, mode, beta)`` must return, per sequence, the coefficient ``beta_eff`` that the
    aggregation ``mode`` (a key of :data:`kltutor.practice.AGGREGATIONS`; for "token-sum-norm" the
    constant is the longest length of the batch) puts on that sequence's summed KL term, written as
    ``(1/G) sum_i beta_eff[i] sum_t k[i, t]``."""
    batches = [[3], [1, 4], [2, 2, 9], [5, 1, 7, 3]]
    messages, ok = [], True
    for mode in AGGREGATIONS:
        for lengths in batches:
            want = effective_beta(lengths, mode, 0.1).tolist()
            try:
                got = [float(v) for v in fn(list(lengths), mode, 0.1)]
            except Exception as exc:
                return CheckResult(
                    "effective beta", False, [f"{mode}, lengths {lengths}: raised {type(exc).__name__}: {exc}"]
                )
            if len(got) != len(want) or any(abs(g - w) > 1e-9 for g, w in zip(got, want)):
                ok = False
                messages.append(
                    f"{mode}, lengths {lengths}: expected {[round(w, 6) for w in want]}, got {[round(g, 6) for g in got]}"
                )
                break
    if ok:
        messages.append(f"right for all {len(AGGREGATIONS)} aggregations on {len(batches)} batches")
    return CheckResult("effective beta", ok, messages)


def check_logged_kl(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> CheckResult:
    """``fn(logp, ref_logp, mask) -> [batch]`` must be a per-sequence KL estimate that is never
    negative and whose expectation under the policy is exactly KL(pi || pi_ref) (checked by
    enumerating every sequence of the binary toy, with a ragged mask)."""
    pi, ref = BinaryAutoregressive(0.8, -0.9), BinaryAutoregressive(-0.3, 0.6)
    T = 6
    seqs, probs = pi.enumerate(T)
    with torch.no_grad():
        logp, ref_logp = pi.token_logprobs(seqs), ref.token_logprobs(seqs)
    mask = torch.ones_like(logp)
    messages = []
    try:
        out = fn(logp.clone(), ref_logp.clone(), mask.clone())
    except Exception as exc:
        return CheckResult("logged KL", False, [f"raised {type(exc).__name__}: {exc}"])
    if not isinstance(out, Tensor) or out.shape != (seqs.shape[0],):
        return CheckResult(
            "logged KL",
            False,
            [f"expected a [batch] tensor of shape {(seqs.shape[0],)}, got {getattr(out, 'shape', type(out).__name__)}"],
        )
    out = out.double()
    kl = float(pi.exact_kl(ref, T).detach())
    mean = float((probs * out).sum())
    ok = True
    if (out < -1e-12).any():
        ok = False
        messages.append(
            f"{int((out < -1e-12).sum())} sequences get a negative value (minimum {float(out.min()):.4g}): "
            "a logged KL built from k1 can go negative; which estimator cannot?"
        )
    if abs(mean - kl) > 1e-9:
        ok = False
        hint = " (the negative of the KL: is the sign of the log-ratio reversed?)" if abs(mean + kl) < 1e-9 else ""
        messages.append(f"expectation under the policy is {mean:.6f}, the KL is {kl:.6f}{hint}")
    # padding must not count: the last two positions masked out
    short = mask.clone()
    short[:, -2:] = 0
    want = float((probs * (of_log_ratio("k3", logp - ref_logp) * short).sum(-1)).sum())
    got = float((probs * fn(logp.clone(), ref_logp.clone(), short).double()).sum())
    if abs(got - want) > 1e-9:
        ok = False
        messages.append(
            "with a mask over the last two tokens the estimate changes wrongly: masked tokens must not count"
        )
    if ok:
        messages.append(f"non-negative on all {seqs.shape[0]} sequences, expectation {mean:.6f} = KL, mask respected")
    return CheckResult("logged KL", ok, messages)
