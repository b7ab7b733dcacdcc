"""Where the KL term goes: in the reward or in the loss (introduced in ``ch-placements``).

What a trainer actually runs, on ``[batch, time]`` tensors of per-token log-probabilities of the
*sampled* tokens, with a ``mask`` that is 1 on response tokens and 0 on prompt and padding tokens.

- **In the reward** (``"k1-in-reward"``, ``"k3-in-reward"``): the estimator is computed per token,
  *detached*, multiplied by ``-beta`` and added to the per-token reward; the task's reward is put on
  the last response token. The penalty then reaches the parameters only through the policy
  gradient (score function): ``sum_t A_t * grad log pi(y_t)``.
- **In the loss** (``"k1-in-loss"``, ``"k2-in-loss"``, ``"k3-in-loss"``): the estimator is computed
  per token *with* gradient and ``beta`` times its masked mean is added to the loss, so autograd
  differentiates the estimator itself (path-wise), and nothing flows through the sampling.

Which of these have the gradient of the reverse KL in expectation is the subject of ``ch-placements``
(:mod:`kltutor.gradients` computes it exactly).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kltutor._validation import nonnegative_number
from kltutor.estimators import ESTIMATORS, check_finite, get_estimator, validate_logps, validate_mask

__all__ = [
    "PLACEMENTS",  # noqa: F822 (module __getattr__)
    "AGGREGATIONS",
    "KL_LEVELS",
    "EXACT_IN_LOSS",
    "Placement",
    "placement_names",
    "parse_placement",
    "aggregate",
    "masked_mean",
    "last_token_index",
    "shaped_rewards",
    "returns_to_go",
    "kl_loss",
    "prefix_ratio",
    "clipped_surrogate",
]

Aggregation = Literal["token-mean", "sequence-mean", "sequence-sum"]
#: The ways :func:`aggregate` reduces per-token values to a scalar (the capstone's choices too).
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)
#: The levels of an in-loss estimator (:func:`kl_loss`'s ``level``).
KL_LEVELS = ("token", "sequence")
WHERE = ("reward", "loss")

NONE = "none"
#: The exact full-vocabulary KL in the loss: needs the whole next-token distribution, so only the
#: capstone (which has it) runs it; ``parse_placement`` knows it, :func:`kl_loss` does not.
EXACT_IN_LOSS = "exact-in-loss"


@dataclass(frozen=True)
class Placement:
    """A KL placement: which estimator, and whether it sits in the reward or in the loss.

    ``estimator`` is a name of :data:`kltutor.estimators.ESTIMATORS`, ``"exact"`` for
    ``"exact-in-loss"``, ``None`` for ``"none"``; ``where`` is ``"reward"``, ``"loss"`` or ``None``.
    """

    name: str
    estimator: str | None
    where: Literal["reward", "loss"] | None

    @property
    def in_reward(self) -> bool:
        return self.where == "reward"

    @property
    def in_loss(self) -> bool:
        return self.where == "loss"

    @property
    def is_none(self) -> bool:
        """No KL term at all (``"none"``): nothing for beta or a schedule to weigh."""
        return self.where is None

    @property
    def exact(self) -> bool:
        """The exact full-vocabulary KL (``"exact-in-loss"``), not a sample estimator."""
        return self.estimator == "exact"

    @property
    def levels(self) -> tuple[str, ...]:
        """The ``kl_level`` values this placement can use: both for a sample estimator in the loss,
        ``"token"`` alone otherwise (a reward penalty and the exact KL are per token)."""
        return KL_LEVELS if self.in_loss and not self.exact else KL_LEVELS[:1]


def placement_names(*, exact: bool = False, order: Literal["where", "estimator"] = "where") -> tuple[str, ...]:
    """Every placement the book compares, derived from :data:`kltutor.estimators.ESTIMATORS` (each
    entry's ``placed``).

    ``order="where"``: ``"none"``, then the in-reward placements, then the in-loss ones (each in the
    order of ``ESTIMATORS``), then ``"exact-in-loss"`` with ``exact=True``: :data:`PLACEMENTS` and the
    capstone's ``CAPSTONE_PLACEMENTS``. ``order="estimator"``: the estimator placements alone, estimator
    by estimator (the rows of :mod:`kltutor.gradients`' tables).
    """
    if order == "estimator":
        return tuple(f"{name}-in-{w}" for name, e in ESTIMATORS.items() for w in e.placed)
    if order != "where":
        raise ValueError(f"order must be 'where' or 'estimator', got {order!r}")
    by_where = tuple(f"{name}-in-{w}" for w in WHERE for name, e in ESTIMATORS.items() if w in e.placed)
    return (NONE, *by_where, *((EXACT_IN_LOSS,) if exact else ()))


def __getattr__(name: str):
    # PLACEMENTS is computed on each access, so an estimator added to ESTIMATORS appears in it.
    if name == "PLACEMENTS":
        return placement_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_placement(name: str | Placement) -> Placement:
    """Parse ``"<estimator>-in-<reward|loss>"`` (an estimator of :data:`kltutor.estimators.ESTIMATORS`),
    ``"exact-in-loss"`` or ``"none"``; a clear error for anything else."""
    if isinstance(name, Placement):
        return name
    if name == NONE:
        return Placement(NONE, None, None)
    if name == EXACT_IN_LOSS:
        return Placement(EXACT_IN_LOSS, "exact", "loss")
    if isinstance(name, str) and "-in-" in name:
        est, where = name.split("-in-", 1)
        if est in ESTIMATORS and where in WHERE:
            return Placement(name, est, where)  # type: ignore[arg-type]
    raise ValueError(
        f"unknown KL placement {name!r}; choose one of {list(placement_names(exact=True))} "
        f"(the form is '<{'|'.join(ESTIMATORS)}>-in-<reward|loss>', 'exact-in-loss' or 'none')"
    )


def _check_beta(beta: float) -> float:
    return nonnegative_number("beta", beta)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` is non-zero (weighted by ``mask``)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp_min(1e-12)
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1e-12)


def aggregate(values: Tensor, mask: Tensor, mode: Aggregation = "token-mean") -> Tensor:
    """Reduce per-token ``values`` ``[batch, time]`` to a scalar loss.

    - ``"token-mean"``: mean over every masked token of the batch (long responses weigh more);
    - ``"sequence-mean"``: mean over each sequence's tokens, then over sequences (GRPO's original
      ``1/|o_i|`` normalisation: every sequence weighs the same);
    - ``"sequence-sum"``: sum over each sequence's tokens, mean over sequences (the sequence-level
      objective; no length normalisation).
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must have the same shape")
    if values.dim() != 2:
        raise ValueError(f"expected [batch, time] tensors, got shape {tuple(values.shape)}")
    if mode == "token-mean":
        return masked_mean(values, mask)
    if mode == "sequence-mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        return per_seq[mask.sum(-1) > 0].mean()
    if mode == "sequence-sum":
        return (values * mask).sum(-1).mean()
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {list(AGGREGATIONS)}")


def _validate(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    validate_logps(logp.detach(), ref_logp.detach())
    if logp.dim() != 2:
        raise ValueError(f"expected [batch, time] log-probabilities, got shape {tuple(logp.shape)}")
    m = validate_mask(mask, logp.shape)
    assert m is not None
    return m.to(logp.dtype)


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last non-zero mask entry of each row (the last response token); ``[batch]``."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [batch, time], got shape {tuple(mask.shape)}")
    m = mask != 0
    if not m.any(-1).all():
        raise ValueError("every sequence needs at least one response token (a row of the mask is all zero)")
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(m)
    return torch.where(m, positions, torch.full_like(positions, -1)).max(-1).values


def shaped_rewards(
    rewards: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    estimator: str = "k1",
) -> Tensor:
    """Per-token rewards with the KL penalty *in the reward* (``"<estimator>-in-reward"``).

    ``r_t = -beta * k(l_t)`` on every response token, computed from *detached* log-probabilities
    (the penalty is a reward: no gradient flows through it), plus the task reward ``rewards[b]`` on
    the last response token of sequence ``b``. Prompt and padding tokens get 0. Returns ``[batch, time]``.
    """
    beta = _check_beta(beta)
    m = _validate(logp, ref_logp, mask)
    if rewards.shape != logp.shape[:1]:
        raise ValueError(f"rewards must be [batch] = {tuple(logp.shape[:1])}, got {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards hold NaN or inf")
    penalty = get_estimator(estimator)(logp.detach(), ref_logp.detach())
    token_rewards = -beta * penalty * m
    last = last_token_index(m)
    token_rewards = token_rewards.clone()
    token_rewards[torch.arange(logp.shape[0], device=logp.device), last] += rewards.to(token_rewards.dtype)
    return token_rewards


def returns_to_go(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``G_t = sum_{s >= t} gamma^(s-t) r_s`` over response tokens (0 on masked-out positions), along the
    last dimension (``[..., T]``: a batch ``[B, T]``, or one sequence ``[T]``)."""
    if token_rewards.shape != mask.shape:
        raise ValueError("token_rewards and mask must have the same shape")
    m = mask.to(token_rewards.dtype)
    out = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[..., 0])
    for t in range(token_rewards.shape[-1] - 1, -1, -1):
        running = token_rewards[..., t] * m[..., t] + gamma * running
        out[..., t] = running
    return out * m


def kl_loss(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    estimator: str = "k3",
    level: Literal["token", "sequence"] = "token",
    old_logp: Tensor | None = None,
    aggregation: Aggregation = "token-mean",
    importance: Literal["token", "prefix"] = "token",
) -> Tensor:
    """The KL term *in the loss* (``"<estimator>-in-loss"``), to be multiplied by beta and added.

    ``logp`` carries gradient; ``ref_logp`` is treated as a constant (the reference is frozen).

    - ``level="token"``: the estimator is applied to each token's log-ratio and aggregated with
      ``aggregation``, as TRL, verl and OpenRLHF do.
    - ``level="sequence"``: the estimator is applied to each sequence's summed log-ratio, then
      averaged over sequences.
    - ``old_logp``: when the batch was sampled by an older policy (several updates per batch), each
      token's term is weighted by the importance ratio ``w_t = exp(logp - old_logp)`` (with
      gradient), so that its expectation under the sampling policy is the expectation under the
      current one at that state (chapter 3, off-policy correction). Token level only.
      ``importance="token"`` (default) uses the per-token ratio; its gradient at ``theta = theta_old``
      is ``(k(l_t) + k'(l_t)) * grad log pi(y_t)``: ``l_t * grad log pi(y_t)`` for k3 (per sample),
      ``(l_t + 1) * grad log pi(y_t)`` for k1 (the same in expectation), i.e. token-level k2's. ``importance="prefix"``
      uses the cumulative ratio ``prod_{s<=t} w_s`` over response tokens, which also corrects the
      distribution of the prefix: with k1 or k3 its expected gradient is exactly the gradient of the
      sequence-level reverse KL under the current policy (chapter 3 measures both exactly).
    """
    m = _validate(logp, ref_logp, mask)
    fn = get_estimator(estimator)
    ref_logp = ref_logp.detach()
    if level == "token":
        values = fn(logp, ref_logp)
        if old_logp is not None:
            if old_logp.shape != logp.shape:
                raise ValueError(f"old_logp must have shape {tuple(logp.shape)}, got {tuple(old_logp.shape)}")
            check_finite("old_logp", old_logp)
            log_w = (logp - old_logp.detach()) * (m != 0).to(logp.dtype)
            if importance == "prefix":
                log_w = torch.cumsum(log_w, dim=-1)
            elif importance != "token":
                raise ValueError(f"importance must be 'token' or 'prefix', got {importance!r}")
            values = torch.exp(log_w) * values
        return aggregate(values, m, aggregation)
    if level == "sequence":
        if old_logp is not None:
            raise ValueError("the importance-weighted correction is implemented at token level only")
        seq = ((logp - ref_logp) * m).sum(-1)
        keep = m.sum(-1) > 0
        return fn(seq[keep], torch.zeros_like(seq[keep])).mean()
    raise ValueError(f"level must be one of {list(KL_LEVELS)}, got {level!r}")


def prefix_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """``W_t = prod_{s<t} w_s``, ``w_s = pi_theta / pi_old`` of the sampled token (with gradient through
    ``logp``; padding counts as ``w = 1``): the importance weight of the prefix before position t. A term
    that already averages over the token at t (the exact full-vocabulary KL) needs only this weight to be
    the current policy's expectation on a batch sampled by ``pi_old`` (``ch-placements``)."""
    log_w = (logp - old_logp.detach()) * (mask != 0).to(logp.dtype)
    return torch.exp(torch.cumsum(log_w, -1) - log_w)


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    aggregation: Aggregation = "token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate loss ``-min(w A, clip(w, 1-eps, 1+eps) A)``, aggregated.

    ``advantages`` is ``[batch]`` (one per sequence, as in GRPO) or ``[batch, time]`` (per token, e.g.
    returns-to-go of shaped rewards). Returns the loss and monitoring statistics: the fraction of
    tokens whose ratio was clipped, and the mean ratio.
    """
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    m = _validate(logp, old_logp, mask)
    if advantages.dim() == 1:
        if advantages.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages [batch] must have batch size {logp.shape[0]}, got {advantages.shape[0]}")
        advantages = advantages[:, None].expand_as(logp)
    elif advantages.shape != logp.shape:
        raise ValueError(f"advantages must be [batch] or {tuple(logp.shape)}, got {tuple(advantages.shape)}")
    advantages = advantages.detach()
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate(per_token, m, aggregation)
    with torch.no_grad():
        was_clipped = (clipped < unclipped).to(m.dtype)  # the min picked the clipped branch
        stats = {
            "clip_fraction": masked_mean(was_clipped, m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats
