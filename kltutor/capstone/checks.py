"""Small exact checks the capstone chapter (``ch-capstone``) runs next to the loop.

:func:`placement_gradient_check` pushes many one-token samples of a categorical policy through
:func:`kltutor.grpo.grpo_loss` (no task reward, so only the KL term acts) and compares the mean
gradient with respect to the logits with the exact gradients of the reverse KL
:math:`\\mathrm{KL}(\\pi_\\theta\\|\\pi_\\text{ref})` and of the forward KL
:math:`\\mathrm{KL}(\\pi_\\text{ref}\\|\\pi_\\theta)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kltutor.grpo import grpo_loss

__all__ = ["GradientCheck", "placement_gradient_check"]


@dataclass
class GradientCheck:
    """The outcome of :func:`placement_gradient_check`: tensors over the logits."""

    mean: torch.Tensor  # mean per-sample gradient of the placement's KL part
    se: torch.Tensor  # its standard error
    reverse: torch.Tensor  # exact beta * grad KL(pi || pi_ref)
    forward: torch.Tensor  # exact beta * grad KL(pi_ref || pi)


def placement_gradient_check(
    placement: str,
    n: int = 20000,
    beta: float = 1.0,
    seed: int = 0,
    logits=(0.5, -0.3, 1.2, 0.0, -1.0),
    ref_logits=(0.0, 0.4, 0.1, -0.5, 0.3),
) -> GradientCheck:
    """Mean per-sample gradient of the KL part of ``grpo_loss`` at ``placement`` (on-policy, w = 1).

    Returns a :class:`GradientCheck`: ``mean`` and ``se`` (standard error) of the gradient wrt the
    logits, and the exact ``reverse`` = beta * grad KL(pi || pi_ref) and ``forward`` = beta * grad KL(pi_ref || pi).
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor(logits, dtype=torch.float64)
    ref = torch.tensor(ref_logits, dtype=torch.float64)
    if theta.shape != ref.shape:
        raise ValueError("logits and ref_logits must have the same length")
    y = torch.multinomial(torch.softmax(theta, -1), n, replacement=True, generator=g)
    th = theta.expand(n, -1).clone().requires_grad_(True)  # row i receives sample i's gradient
    logp = torch.log_softmax(th, -1).gather(-1, y[:, None])
    ref_logp = torch.log_softmax(ref, -1)[y][:, None]
    out = grpo_loss(
        logp,
        logp.detach(),
        ref_logp,
        torch.ones_like(logp),
        torch.zeros(n, dtype=torch.float64),
        group_size=2,
        placement=placement,
        beta=beta,
        aggregation="sequence-sum",
    )
    (grad,) = torch.autograd.grad(out.loss * n, th)
    pi, rho = torch.softmax(theta, -1), torch.softmax(ref, -1)
    ell = torch.log(pi) - torch.log(rho)
    return GradientCheck(
        mean=grad.mean(0),
        se=grad.std(0) / math.sqrt(n),
        reverse=beta * pi * (ell - (pi * ell).sum()),
        forward=beta * (pi - rho),
    )
