"""GRPO: group-relative advantages and the GRPO objective with a selectable KL placement (``ch-preference``).

Shapes: a batch holds ``n_prompts * group_size`` completions, grouped consecutively (the completions
of prompt ``i`` are rows ``i*group_size ... (i+1)*group_size - 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kltutor._validation import nonnegative_number, probabilities
from kltutor.placements import (
    Aggregation,
    Placement,
    aggregate,
    clipped_surrogate,
    kl_loss,
    parse_placement,
    returns_to_go,
    shaped_rewards,
)

__all__ = ["group_advantages", "GRPOLoss", "grpo_loss", "placement_loss", "expected_in_loss_gradient"]


def group_advantages(
    rewards: Tensor,
    group_size: int,
    normalize_std: bool = True,
    clip_std: tuple[float, float] | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """``A_i = (r_i - mean(group)) / std(group)`` for each completion (``[n_prompts * group_size]``).

    ``std`` is the sample standard deviation (``unbiased=True``, as in the GRPO reference code).
    ``clip_std=(lo, hi)`` clamps the group's std into ``[lo, hi]`` before dividing (Liu, Liu and
    Liu, "Rethinking KL Divergence in RLHF", March 2025, section 4): a group whose rewards differ
    only by numerical noise then gets advantages of the size of that noise instead of order one. Without it, ``eps`` keeps a group of *equal* rewards at 0 (not NaN).
    ``normalize_std=False`` gives the mean-centred advantages (Dr. GRPO).

    The statistics are computed in float64 whatever the input dtype. Note what the normalisation
    does to a group split half and half between two values: the advantages are
    :math:`\\pm\\sqrt{(G-1)/G}` with ``eps=0`` (0.866 for G=4; :math:`\\pm1` with the population std)
    *whatever the size of the gap*, so a gap of 2e-5 (noise) and a gap of 1 (a real difference) get
    the same push, in float32 as in float64; ``eps`` and ``clip_std`` are what tell them apart
    (claim ``grpo-half-split-advantage`` in :mod:`kltutor.claims`, proved in the section
    ``sec-preference-grpo``).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [n_prompts * group_size], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare completions, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards hold NaN or inf")
    if not (eps >= 0.0):
        raise ValueError(f"eps must be >= 0, got {eps}")
    if clip_std is not None and (not isinstance(clip_std, (tuple, list)) or len(clip_std) != 2):
        raise ValueError(f"clip_std must be a pair (lo, hi), got {clip_std!r}")
    g = rewards.view(-1, group_size).to(torch.float64)
    centred = g - g.mean(-1, keepdim=True)
    if normalize_std:
        std = g.std(-1, unbiased=True, keepdim=True)
        if clip_std is not None:
            lo, hi = clip_std
            if not 0 < lo <= hi:
                raise ValueError(f"clip_std must be (lo, hi) with 0 < lo <= hi, got {clip_std}")
            std = std.clamp(lo, hi)
        else:
            std = std + eps
        centred = centred / std
    return centred.reshape(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


@dataclass
class GRPOLoss:
    """The pieces of one GRPO loss evaluation (all scalars)."""

    loss: Tensor
    policy_loss: Tensor
    kl_term: Tensor
    clip_fraction: Tensor


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    rewards: Tensor,
    group_size: int,
    placement: str = "k3-in-loss",
    beta: float = 0.04,
    clip_eps: float = 0.2,
    clip_std: tuple[float, float] | None = None,
    normalize_std: bool = True,
    aggregation: Aggregation = "sequence-mean",
    kl_level: str = "token",
    importance_weighted_kl: bool = False,
) -> GRPOLoss:
    """The GRPO loss with the KL term at ``placement``.

    - ``*-in-loss``: ``clipped surrogate(group advantages) + beta * kl_loss(...)``.
    - ``*-in-reward``: the per-token penalty ``-beta * k(l_t)`` is added to the reward. It is a
      reward, so it is computed at sampling time, from ``old_logp - ref_logp`` (the policy that
      sampled the batch), and stays frozen through every update on the batch, as in verl's
      ``apply_kl_penalty`` (library fact ``verl-kl-in-reward-old-logprobs``); on-policy (``old_logp == logp``) this is the same number. GRPO has one advantage per
      sequence, so the shaped reward enters as each token's return-to-go
      (``task advantage + sum_{s>=t} -beta k(l_s)``): the KL penalty of later tokens reaches the
      score of earlier ones, exactly as in the in-reward policy gradient (``ch-placements``).
    - ``none``: the clipped surrogate alone.
    """
    _sample_placement(placement)
    beta = nonnegative_number("beta", beta)
    if logp.dim() != 2:
        raise ValueError(f"logp must be [batch, time], got shape {tuple(logp.shape)}")
    if rewards.shape != logp.shape[:1]:
        raise ValueError(
            f"rewards must be [batch] = {tuple(logp.shape[:1])}, one per completion, got {tuple(rewards.shape)}"
        )
    adv = group_advantages(rewards, group_size, normalize_std=normalize_std, clip_std=clip_std)
    return placement_loss(
        logp,
        old_logp,
        ref_logp,
        mask,
        adv,
        placement=placement,
        beta=beta,
        clip_eps=clip_eps,
        aggregation=aggregation,
        kl_level=kl_level,
        importance_weighted_kl=importance_weighted_kl,
    )


def _sample_placement(placement) -> Placement:
    p = parse_placement(placement)
    if p.exact:
        raise ValueError(
            f"placement {p.name!r} needs the full next-token distribution, which grpo_loss does not see "
            "(kltutor.capstone computes it); choose a sample estimator's placement"
        )
    return p


def placement_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    advantages: Tensor,
    placement: str = "k3-in-loss",
    beta: float = 0.04,
    clip_eps: float = 0.2,
    aggregation: Aggregation = "sequence-mean",
    kl_level: str = "token",
    importance_weighted_kl: bool = False,
) -> GRPOLoss:
    """:func:`grpo_loss` from per-sequence ``advantages`` (``[batch]``) instead of rewards: the KL term at
    ``placement`` around the clipped surrogate, for a caller whose batch need not hold whole groups (the TRL
    extension, :mod:`kltutor.trainers.grpo_extension`). The placements are as in :func:`grpo_loss`."""
    p = _sample_placement(placement)
    m = mask.to(logp.dtype)
    kl_term = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if p.in_reward and beta > 0:
        penalty = shaped_rewards(
            torch.zeros_like(advantages), old_logp, ref_logp, m, beta, p.estimator
        )  # -beta k(l_old), frozen
        token_adv = advantages[:, None] * m + returns_to_go(penalty, m)
        policy_loss, stats = clipped_surrogate(logp, old_logp, token_adv, m, clip_eps, aggregation)
        with torch.no_grad():
            kl_term = aggregate(-penalty / beta, m, aggregation)
        loss = policy_loss
    else:
        policy_loss, stats = clipped_surrogate(logp, old_logp, advantages, m, clip_eps, aggregation)
        loss = policy_loss
        if p.in_loss:
            kl_term = kl_loss(
                logp,
                ref_logp,
                m,
                p.estimator,
                level=kl_level,
                old_logp=old_logp if importance_weighted_kl else None,
                aggregation=aggregation,
            )
            loss = loss + beta * kl_term
    return GRPOLoss(
        loss=loss, policy_loss=policy_loss.detach(), kl_term=kl_term.detach(), clip_fraction=stats["clip_fraction"]
    )


def expected_in_loss_gradient(
    logits: Tensor,
    ref_logp: Tensor,
    estimator: str = "k3",
    sampling_probs: Tensor | None = None,
    importance_weighted: bool = False,
) -> tuple[Tensor, Tensor]:
    """Exact expectation of what ``<estimator>-in-loss`` computes for a categorical policy.

    The policy is ``softmax(logits)`` over a finite set of outcomes (one token, or whole responses).
    A trainer samples ``y`` from ``sampling_probs`` (default: the policy itself, i.e. on-policy),
    computes the estimator on ``log_ratio = logp[y] - ref_logp[y]`` and lets autograd differentiate
    it; the sampling weights are *not* differentiated. Enumerating the outcomes gives the exact
    expectations: returns ``(expected value, expected gradient w.r.t. logits)``.
    ``importance_weighted=True`` multiplies each term by ``w = pi_theta / pi_sampling`` (with
    gradient), as in :func:`kltutor.placements.kl_loss` with ``old_logp``.
    """
    from kltutor.estimators import get_estimator

    fn = get_estimator(estimator)
    if logits.dim() != 1 or ref_logp.shape != logits.shape:
        raise ValueError("logits and ref_logp must be 1-D over the same outcomes")
    theta = logits.detach().to(torch.float64).clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    if sampling_probs is None:
        q = torch.exp(logp).detach()
    else:
        q = probabilities("sampling_probs", sampling_probs, vector=True, dtype=torch.float64)
        if q.shape != logits.shape:
            raise ValueError(
                f"sampling_probs must be a probability vector over the same {logits.shape[0]} outcomes, got shape {tuple(q.shape)}"
            )
    values = fn(logp, ref_logp.to(torch.float64))
    if importance_weighted:
        values = torch.exp(logp - torch.log(q)) * values
    expected = (q * values).sum()
    (grad,) = torch.autograd.grad(expected, theta)
    return expected.detach(), grad
