"""Checkers for the coding exercises of ``ch-preference``.

- :func:`check_dpo_loss`: implement DPO's per-pair loss from sequence log-probabilities.
- :func:`check_group_advantages`: implement GRPO's group normalisation with ``clip_std``.

Each checker compares the reader's function with :mod:`kltutor.preference` /
:mod:`kltutor.grpo` on fixed and adversarial inputs and returns a :class:`CheckResult`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kltutor.exercises import CheckResult, show
from kltutor.grpo import group_advantages
from kltutor.preference import dpo_loss

__all__ = ["check_dpo_loss", "check_group_advantages", "reference_dpo_losses"]


def reference_dpo_losses(pw: Tensor, pl: Tensor, rw: Tensor, rl: Tensor, beta: float) -> Tensor:
    """The per-pair DPO losses from :func:`kltutor.preference.dpo_loss` (the answer key)."""
    return dpo_loss(pw, pl, rw, rl, beta).losses


def _cases() -> list[tuple[str, tuple[Tensor, Tensor, Tensor, Tensor], float]]:
    g = torch.Generator().manual_seed(5)
    rand = lambda n: -torch.rand(n, dtype=torch.float64, generator=g) * 40  # noqa: E731
    return [
        ("random pairs, beta=0.1", (rand(8), rand(8), rand(8), rand(8)), 0.1),
        (
            "policy equal to the reference (loss log 2)",
            (torch.tensor([-3.0, -7.0], dtype=torch.float64),) * 2
            + (torch.tensor([-3.0, -7.0], dtype=torch.float64),) * 2,
            0.5,
        ),
        (
            "a very wrong ranking (margin -800: -log(sigmoid(.)) overflows even in float64)",
            (
                torch.tensor([-900.0], dtype=torch.float64),
                torch.tensor([-100.0], dtype=torch.float64),
                torch.tensor([-100.0], dtype=torch.float64),
                torch.tensor([-100.0], dtype=torch.float64),
            ),
            1.0,
        ),
        (
            "a very right ranking (margin +800)",
            (
                torch.tensor([-100.0], dtype=torch.float64),
                torch.tensor([-900.0], dtype=torch.float64),
                torch.tensor([-100.0], dtype=torch.float64),
                torch.tensor([-100.0], dtype=torch.float64),
            ),
            1.0,
        ),
    ]


def check_dpo_loss(fn: Callable[[Tensor, Tensor, Tensor, Tensor, float], Tensor]) -> CheckResult:
    """Check ``fn(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp, beta)``,
    which must return the ``[batch]`` per-pair DPO losses (not their mean), with a gradient that
    flows to the policy log-probabilities and none to the reference's."""
    result = CheckResult("DPO loss", True)
    for name, (pw, pl, rw, rl), beta in _cases():
        want = reference_dpo_losses(pw, pl, rw, rl, beta)
        try:
            pw_ = pw.clone().requires_grad_(True)
            got = fn(pw_, pl, rw, rl, beta)
        except Exception as exc:
            result.passed = False
            result.messages.append(f"{name}: raised {type(exc).__name__}: {exc}")
            continue
        if not isinstance(got, Tensor) or got.shape != want.shape:
            result.passed = False
            result.messages.append(
                f"{name}: expected a tensor of shape {tuple(want.shape)} (one loss per pair), got "
                f"{getattr(got, 'shape', type(got).__name__)}"
            )
            continue
        if not torch.isfinite(got).all():
            result.passed = False
            result.messages.append(f"{name}: got non-finite values {show(got)}; use a stable log-sigmoid")
            continue
        if not torch.allclose(got.detach().to(torch.float64), want, rtol=1e-6, atol=1e-9):
            result.passed = False
            result.messages.append(f"{name}: got {show(got.detach())}, expected {show(want)}")
            continue
        if not got.requires_grad:
            result.passed = False
            result.messages.append(f"{name}: the loss carries no gradient to policy_chosen_logp")
            continue
        result.messages.append(f"{name}: ok")
    return result


def check_group_advantages(fn: Callable[..., Tensor]) -> CheckResult:
    """Check ``fn(rewards, group_size, clip_std=None)`` against :func:`kltutor.grpo.group_advantages`
    with ``eps=0`` when ``clip_std`` is given (unbiased standard deviation, groups consecutive)."""
    result = CheckResult("GRPO group advantages with clip_std", True)
    cases = [
        (
            "two groups of 4",
            torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 2.0, 3.0, 5.0], dtype=torch.float64),
            4,
            (1e-3, 1e3),
        ),
        (
            "near-equal rewards, clip_std=(0.1, 10)",
            torch.tensor([0.99999, 1.00001, 0.99999, 1.00001], dtype=torch.float64),
            4,
            (0.1, 10.0),
        ),
        ("all rewards equal (must be 0, not NaN)", torch.full((6,), 0.7, dtype=torch.float64), 3, (0.1, 10.0)),
        ("large spread, clip_std=(0.1, 1)", torch.tensor([0.0, 10.0, 20.0, 30.0], dtype=torch.float64), 4, (0.1, 1.0)),
    ]
    for name, rewards, gsize, clip in cases:
        want = group_advantages(rewards, gsize, clip_std=clip)
        try:
            got = fn(rewards.clone(), gsize, clip_std=clip)
        except Exception as exc:
            result.passed = False
            result.messages.append(f"{name}: raised {type(exc).__name__}: {exc}")
            continue
        if (
            not isinstance(got, Tensor)
            or got.shape != want.shape
            or not torch.isfinite(got).all()
            or not torch.allclose(got.to(torch.float64), want, rtol=1e-6, atol=1e-9)
        ):
            result.passed = False
            result.messages.append(f"{name}: got {show(got)}, expected {show(want)}")
        else:
            result.messages.append(f"{name}: ok")
    return result
