"""The loss of one GRPO update and the measurements of one sampled batch (chapter ``ch-capstone``).

Kept apart from the loop (:mod:`kltutor.capstone.loop`) so that what the capstone optimises and what it
logs are small functions with value tests (``tests/test_capstone_loss.py``, ``tests/test_capstone_step.py``)
and under mutation testing (``scripts/mutation.py``).
"""

from __future__ import annotations

import torch

from kltutor.capstone.config import CapstoneConfig
from kltutor.estimators import k3
from kltutor.grpo import group_advantages, grpo_loss
from kltutor.placements import Placement, aggregate, clipped_surrogate, parse_placement, prefix_ratio

__all__ = ["step_loss", "loss_settings", "LOSS_SETTINGS", "measure", "MEASURED"]

#: The columns :func:`measure` fills, in order.
MEASURED = (
    "reward",
    "accuracy",
    "kl_exact_seq",
    "kl_exact_token",
    "kl_k1_seq",
    "kl_k3_seq",
    "entropy",
    "response_length",
    "terminated",
)


#: The config fields that set the loss (:func:`loss_settings`); beta is not one of them: the loop
#: passes the beta of the current step, which a schedule moves away from the config's starting value.
LOSS_SETTINGS = (
    "placement",
    "group_size",
    "clip_eps",
    "clip_std",
    "normalize_std",
    "aggregation",
    "kl_level",
    "importance_weighted_kl",
)


def loss_settings(cfg: CapstoneConfig) -> dict:
    """The keyword arguments of :func:`step_loss` that a run's config fixes (every one but ``beta``)."""
    return {name: getattr(cfg, name) for name in LOSS_SETTINGS}


def step_loss(
    st: dict,
    old: dict,
    mask,
    rewards,
    *,
    beta: float,
    placement: str | Placement,
    group_size: int,
    clip_eps: float = 0.2,
    clip_std: tuple[float, float] | None = None,
    normalize_std: bool = True,
    aggregation: str = "sequence-mean",
    kl_level: str = "token",
    importance_weighted_kl: bool = False,
):
    """The loss of one update: kltutor.grpo.grpo_loss, or surrogate + beta * exact KL for exact-in-loss.

    ``st`` holds the current policy's ``logp`` (and ``kl``, the exact per-token KL, for exact-in-loss),
    ``old`` the sampling-time ``logp`` and ``ref_logp`` (the in-reward penalty is frozen on these).
    ``beta`` is this step's coefficient; the other settings are a run's (:func:`loss_settings`).
    Returns ``(loss, kl_term, clip_fraction)``; ``kl_term`` is detached.

    ``importance_weighted_kl`` with ``exact-in-loss`` weights the exact KL at position t by the prefix
    ratio ``W_t = prod_{s<t} w_s`` (with gradient; ``w_s = pi_theta / pi_old`` of the sampled token):
    the exact KL already averages over the token at t, so only the prefix was sampled from pi_old.
    Then ``E_old[sum_t W_t KL_t] = sum_t E_theta[KL_t]`` is the current policy's sequence KL, and so
    is the expected gradient (the prefix weight of ``ch-placements``; tests/test_capstone_loss.py checks it
    exactly). For k*-in-loss, kltutor.grpo.grpo_loss uses the per-token ratio (``ch-placements``).
    """
    p = parse_placement(placement)
    if not p.exact:
        out = grpo_loss(
            st["logp"],
            old["logp"],
            old["ref_logp"],
            mask,
            rewards,
            group_size,
            placement=p,
            beta=beta,
            clip_eps=clip_eps,
            clip_std=clip_std,
            normalize_std=normalize_std,
            aggregation=aggregation,
            kl_level=kl_level,
            importance_weighted_kl=importance_weighted_kl,
        )
        return out.loss, out.kl_term, out.clip_fraction
    adv = group_advantages(rewards, group_size, normalize_std=normalize_std, clip_std=clip_std)
    policy_loss, stats = clipped_surrogate(st["logp"], old["logp"], adv, mask, clip_eps, aggregation)
    kl_t = st["kl"]
    if importance_weighted_kl:
        kl_t = prefix_ratio(st["logp"], old["logp"], mask) * kl_t  # prod_{s<t} w_s: the prefix before t
    kl_term = aggregate(kl_t, mask, aggregation)
    return policy_loss + beta * kl_term, kl_term.detach(), stats["clip_fraction"]


def measure(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    mask: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    kl: torch.Tensor,
    entropy: torch.Tensor,
) -> dict[str, float]:
    """The measurement columns of :class:`StepRow` from one sampled batch (``[B]`` and ``[B, T]`` tensors).
    Only masked tokens count: whatever the tensors hold after a completion's first EOS is ignored."""
    m = mask > 0
    n = m.sum()
    zero = torch.zeros_like(old_logp)
    per_seq = lambda x: torch.where(m, x, zero).sum(-1).mean()  # noqa: E731
    per_token = lambda x: torch.where(m, x, zero).sum() / n  # noqa: E731
    ell = torch.where(m, old_logp - ref_logp, zero)
    vals = torch.stack(
        [
            rewards.float().mean(),
            (rewards == 1.0).float().mean(),
            per_seq(kl),
            per_token(kl),
            per_seq(ell),
            per_seq(k3(ell, zero)),
            per_token(entropy),
            m.float().sum(-1).mean(),
            terminated.float().mean(),
        ]
    ).tolist()
    return dict(zip(MEASURED, vals))
