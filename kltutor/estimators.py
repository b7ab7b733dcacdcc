"""The k1, k2 and k3 sample estimators of the reverse KL (introduced in chapter 2).

For a token ``y`` sampled from the policy, with ``log_ratio`` :math:`\\ell = \\log\\pi_\\theta(y) -
\\log\\pi_\\text{ref}(y)`:

- k1 :math:`= \\ell` (unbiased, can be negative),
- k2 :math:`= \\tfrac12\\ell^2` (biased, non-negative),
- k3 :math:`= e^{-\\ell} - 1 + \\ell` (unbiased, non-negative).

All three are *elementwise* on tensors of log-probabilities and are meant for samples drawn from
the policy whose log-probabilities are ``logp``. :func:`estimate_kl` aggregates them over a masked
``[batch, time]`` tensor, per token or per sequence.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

__all__ = ["k1", "k2", "k3", "ESTIMATORS", "get_estimator", "estimate_kl", "validate_logps", "validate_mask"]


def validate_logps(logp: Tensor, ref_logp: Tensor) -> None:
    """Raise a clear error for mismatched shapes or non-finite log-probabilities."""
    if not isinstance(logp, Tensor) or not isinstance(ref_logp, Tensor):
        raise TypeError(f"logp and ref_logp must be torch tensors, got {type(logp).__name__} and {type(ref_logp).__name__}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp and ref_logp must have the same shape, got {tuple(logp.shape)} and {tuple(ref_logp.shape)}")
    for name, t in (("logp", logp), ("ref_logp", ref_logp)):
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).sum().item()
            raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf); log-probabilities of sampled tokens must be finite")


def validate_mask(mask: Tensor | None, shape: torch.Size) -> Tensor | None:
    """Check a mask's shape and that it selects at least one token; return it as a float tensor."""
    if mask is None:
        return None
    if mask.shape != shape:
        raise ValueError(f"mask must have the shape of the log-probabilities {tuple(shape)}, got {tuple(mask.shape)}")
    mask = mask.to(torch.float32) if mask.dtype == torch.bool else mask
    if not torch.isfinite(mask).all() or (mask < 0).any():
        raise ValueError("mask must hold finite, non-negative weights (1 for response tokens, 0 elsewhere)")
    if mask.sum() <= 0:
        raise ValueError("mask selects no token: the KL of an empty response is undefined")
    return mask


def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi(y) - log pi_ref(y): unbiased for KL(pi || pi_ref), negative for some samples."""
    validate_logps(logp, ref_logp)
    return logp - ref_logp


def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = (log pi(y) - log pi_ref(y))**2 / 2: non-negative, biased (second order in the log-ratio)."""
    validate_logps(logp, ref_logp)
    return 0.5 * (logp - ref_logp).square()


def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(-l) - 1 + l with l = log pi(y) - log pi_ref(y): unbiased and non-negative.

    Computed as ``expm1(-l) + l``, which keeps its relative accuracy near ``l = 0`` where the naive
    ``exp(-l) - 1 + l`` loses every significant digit to cancellation (chapter 2).
    """
    validate_logps(logp, ref_logp)
    log_ratio = logp - ref_logp
    return torch.expm1(-log_ratio) + log_ratio


ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": k1, "k2": k2, "k3": k3}


def get_estimator(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The estimator called ``name`` ("k1", "k2" or "k3"), with a clear error for anything else."""
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}") from None


def estimate_kl(
    logp: Tensor,
    ref_logp: Tensor,
    estimator: str = "k3",
    mask: Tensor | None = None,
    level: Literal["token", "sequence"] = "token",
) -> Tensor:
    """Estimate the reverse KL from log-probabilities of tokens sampled from the policy.

    ``logp`` and ``ref_logp`` are ``[batch, time]`` (or ``[time]``) log-probabilities of the sampled
    tokens under the policy and the reference; ``mask`` marks the response tokens (default: all).

    - ``level="token"``: the estimator is applied to every token and averaged over the masked
      tokens -- an estimate of the mean per-token KL.
    - ``level="sequence"``: the log-ratios are first summed over each sequence's masked tokens and the
      estimator is applied to that sum -- an estimate of the sequence-level KL
      :math:`\\mathrm{KL}(\\pi_\\theta(\\cdot|x)\\|\\pi_\\text{ref}(\\cdot|x))`, averaged over the batch.
      For k1 this equals the sum over tokens; for k2 and k3 it does not (chapter 2).
    """
    fn = get_estimator(estimator)
    validate_logps(logp, ref_logp)
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    m = validate_mask(mask, logp.shape)
    if m is None:
        m = torch.ones_like(logp)
    if level == "token":
        values = fn(logp, ref_logp)
        return (values * m).sum() / m.sum()
    if logp.dim() == 1:
        logp, ref_logp, m = logp[None], ref_logp[None], m[None]
    seq_log_ratio = ((logp - ref_logp) * m).sum(dim=-1)
    keep = m.sum(dim=-1) > 0
    values = fn(seq_log_ratio[keep], torch.zeros_like(seq_log_ratio[keep]))
    return values.mean()
