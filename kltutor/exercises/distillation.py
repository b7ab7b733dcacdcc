"""Checkers for the exercises of chapter 9 (on-policy distillation)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kltutor.distillation import sequence_gradient, truncated_kl
from kltutor.exercises import CheckResult, show
from kltutor.gradients import expected_gradient_on_samples
from kltutor.toys import BinaryAutoregressive

__all__ = ["check_distillation_advantages", "check_top_k_kl"]


def check_distillation_advantages(fn: Callable[[Tensor], Tensor]) -> CheckResult:
    """``fn(log_ratio) -> advantages``, both ``[n, T]``: from the per-token log-ratios
    ``log pi_student(y_t|s_t) - log pi_teacher(y_t|s_t)`` of sampled sequences, the per-token weights ``A_t``
    such that ``E[sum_t A_t grad log pi_student(y_t|s_t)]`` is the exact gradient of the sequence-level
    ``KL(student || teacher)`` (the KL side: the policy-gradient advantage is ``-A_t``). Checked by
    enumerating every sequence of the binary toy for two student/teacher pairs and two lengths."""
    pairs = [((0.3, -0.4), (-0.2, 0.5)), ((0.8, -0.9), (-0.3, 0.6))]
    messages, ok = [], True
    for s, t in pairs:
        student, teacher = BinaryAutoregressive(*s), BinaryAutoregressive(*t)
        for T in (3, 5):
            true = sequence_gradient(student, teacher, T)

            def loss(logp, old, ref, weights):
                adv = fn((logp - ref).detach().clone())
                if not isinstance(adv, Tensor) or adv.shape != logp.shape:
                    raise ValueError(f"advantages must be a tensor of shape {tuple(logp.shape)}")
                return (weights[:, None] * adv.detach().to(logp.dtype) * logp).sum()

            try:
                got = expected_gradient_on_samples(student, student, teacher, T, loss)
            except Exception as exc:
                return CheckResult("distillation advantages", False, [f"raised {type(exc).__name__}: {exc}"])
            if (got - true).norm() > 1e-9:
                ok = False
                msg = f"student {s}, teacher {t}, T={T}: expected gradient {show(got)}, the KL's is {show(true)}"
                probe = torch.tensor([[0.5, -0.25, 0.125]], dtype=torch.float64)
                own = fn(probe.clone())
                if isinstance(own, Tensor) and own.shape == probe.shape and torch.allclose(own.double(), probe):
                    msg += " (each token's own log-ratio, discount 0, misses the KL of the tokens after it)"
                messages.append(msg)
                break
        if not ok:
            break
    if ok:
        messages.append("exact on both toys at T = 3 and T = 5")
    return CheckResult("distillation advantages", ok, messages)


def check_top_k_kl(fn: Callable[[Tensor, Tensor, int], Tensor]) -> CheckResult:
    """``fn(p, q, k)`` must return ``sum_{i in top-k(p)} p_i log(p_i / q_i)``: the KL(p||q) truncated to the
    ``k`` most probable tokens of ``p`` (no renormalisation), for every ``k``."""
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(6, generator=g, dtype=torch.float64) * 1.5
    p, q = zs.softmax(0), (zs + torch.randn(6, generator=g, dtype=torch.float64)).softmax(0)
    for k in range(1, 7):
        want = float(truncated_kl(p, q, k))
        try:
            got = float(fn(p.clone(), q.clone(), k))
        except Exception as exc:
            return CheckResult("top-k KL", False, [f"k={k}: raised {type(exc).__name__}: {exc}"])
        if abs(got - want) > 1e-10:
            hint = ""
            if abs(got - float(truncated_kl(p, q, k, renormalize=True))) < 1e-10:
                hint = " (that is the renormalised version)"
            return CheckResult("top-k KL", False, [f"k={k}: expected {want:.6g}, got {got:.6g}{hint}"])
    return CheckResult("top-k KL", True, ["right for k = 1 ... 6"])
