"""The closed-form optimum of KL-regularised RL, DPO and its kin (introduced in ``ch-preference``).

Everything here works on *per-sequence* quantities, the way a preference trainer sees them:

- ``policy_chosen_logp``, ``policy_rejected_logp``: :math:`\\log\\pi_\\theta(y)` summed over the
  response tokens of the chosen (:math:`y_w`) and rejected (:math:`y_l`) responses, shape ``[batch]``;
- ``ref_chosen_logp``, ``ref_rejected_logp``: the same under the frozen reference;
- ``chosen_len``, ``rejected_len``: the number of response tokens, for the length-normalised losses.

Each loss returns a :class:`PreferenceLoss` with the mean loss (with gradient) and detached
monitoring quantities. The losses follow their papers' forms:

==========  =====================================================================================
DPO         :math:`-\\log\\sigma(\\beta h)`, :math:`h = \\log\\frac{\\pi_\\theta(y_w)}{\\pi_\\text{ref}(y_w)} - \\log\\frac{\\pi_\\theta(y_l)}{\\pi_\\text{ref}(y_l)}` (Rafailov et al., 2023)
IPO         :math:`(h - \\tfrac{1}{2\\tau})^2` with sequence log-probabilities (Azar et al., 2024)
SimPO       :math:`-\\log\\sigma(\\tfrac{\\beta}{|y_w|}\\log\\pi_\\theta(y_w) - \\tfrac{\\beta}{|y_l|}\\log\\pi_\\theta(y_l) - \\gamma)`, no reference (Meng et al., 2024)
KTO         :math:`\\lambda_D(1-\\sigma(\\beta(\\ell - z_0)))` / :math:`\\lambda_U(1-\\sigma(\\beta(z_0 - \\ell)))`, :math:`z_0` defined as the KL, computed as a detached, clamped batch mean on mismatched pairs (Ethayarajh et al., 2024)
ORPO        NLL of :math:`y_w` (per token) :math:`+\\ \\lambda\\cdot(-\\log\\sigma(\\log\\tfrac{\\text{odds}(y_w)}{\\text{odds}(y_l)}))`, odds of the per-token mean probability (Hong et al., 2024)
==========  =====================================================================================

The tabular helpers at the end (:func:`bradley_terry_pairs`, :func:`train_tabular`) are the
chapter's laboratory: a policy over a small set of whole responses, trained by any of the losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kltutor import divergences
from kltutor._validation import nonnegative_number, positive_number, probabilities

__all__ = [
    "optimal_policy",
    "kl_regularized_objective",
    "categorical_kl",
    "implicit_reward",
    "PreferenceLoss",
    "dpo_loss",
    "ipo_loss",
    "simpo_loss",
    "kto_loss",
    "orpo_loss",
    "win_probability_against",
    "ipo_optimal_policy",
    "bradley_terry_pairs",
    "TrainResult",
    "train_tabular",
    "LOSSES",
    "maximize_objective_numerically",
    "kl_location_table",
]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_tensors(**tensors: Tensor) -> torch.Size:
    """All tensors 1-D, the same shape, non-empty and finite; returns the common shape."""
    shape = None
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D [batch] (one value per sequence), got shape {tuple(t.shape)}")
        if shape is None:
            shape = t.shape
        elif t.shape != shape:
            names = list(tensors)
            raise ValueError(f"{names[0]} and {name} must have the same shape, got {tuple(shape)} and {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty: a loss over no pairs is undefined")
        if not torch.isfinite(t.detach()).all():
            raise ValueError(f"{name} holds NaN or inf")
    assert shape is not None
    return shape


def _check_logp(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if (t.detach() > 0).any():
            raise ValueError(f"{name} holds positive values: log-probabilities are <= 0")


def _check_pair_logps(
    policy_chosen_logp: Tensor, policy_rejected_logp: Tensor, ref_chosen_logp: Tensor, ref_rejected_logp: Tensor
) -> None:
    """The four ``[batch]`` sequence log-probabilities of a loss with a reference (DPO, IPO)."""
    tensors = {
        "policy_chosen_logp": policy_chosen_logp,
        "policy_rejected_logp": policy_rejected_logp,
        "ref_chosen_logp": ref_chosen_logp,
        "ref_rejected_logp": ref_rejected_logp,
    }
    _check_tensors(**tensors)
    _check_logp(**tensors)


def _check_lengths(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if (t <= 0).any():
            raise ValueError(f"{name} must be positive token counts")


def _check_reference_free(
    policy_chosen_logp: Tensor, policy_rejected_logp: Tensor, chosen_len: Tensor, rejected_len: Tensor
) -> None:
    """The ``[batch]`` log-probabilities and token counts of a length-normalised loss without a reference (SimPO, ORPO)."""
    _check_tensors(
        policy_chosen_logp=policy_chosen_logp,
        policy_rejected_logp=policy_rejected_logp,
        chosen_len=chosen_len,
        rejected_len=rejected_len,
    )
    _check_logp(policy_chosen_logp=policy_chosen_logp, policy_rejected_logp=policy_rejected_logp)
    _check_lengths(chosen_len=chosen_len, rejected_len=rejected_len)


def _check_probs(name: str, p: Tensor) -> Tensor:
    """Probabilities along the last axis; preference's tolerance is ``1e-6`` in float64 (``1e-4`` below)."""
    dtype = p.dtype if isinstance(p, Tensor) else torch.float64
    return probabilities(name, p, atol=1e-6 if dtype == torch.float64 else 1e-4)


# --------------------------------------------------------------------------------------------
# the closed-form optimum
# --------------------------------------------------------------------------------------------


def categorical_kl(p: Tensor, q: Tensor) -> Tensor:
    """Exact :math:`\\mathrm{KL}(p\\|q) = \\sum_y p(y)\\log\\frac{p(y)}{q(y)}` over the last axis.

    Terms with :math:`p(y)=0` contribute 0; :math:`q(y)=0 < p(y)` gives ``inf``. It is
    :func:`kltutor.divergences.kl` with this module's tolerance on the sums (``1e-6`` in float64: the
    policies of a tabular training run are renormalised softmaxes).
    """
    p, q = _check_probs("p", p), _check_probs("q", q)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    return divergences.kl(p, q, atol=math.inf)  # checked above, with this module's tolerance


def optimal_policy(ref_probs: Tensor, rewards: Tensor, beta: float) -> Tensor:
    """The maximiser of :math:`\\mathbb{E}_{\\pi}[r] - \\beta\\,\\mathrm{KL}(\\pi\\|\\pi_\\text{ref})`.

    :math:`\\pi^*(y) = \\pi_\\text{ref}(y)\\,e^{r(y)/\\beta} / Z` with
    :math:`Z = \\sum_y \\pi_\\text{ref}(y) e^{r(y)/\\beta}`, computed as a softmax of
    :math:`\\log\\pi_\\text{ref} + r/\\beta` so that large :math:`r/\\beta` cannot overflow. Works
    over the last axis (a batch of prompts is ``[n_prompts, n_responses]``). Responses with
    :math:`\\pi_\\text{ref}(y)=0` keep probability 0: the KL term forbids leaving the reference's support.

    >>> ref, r = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.0, math.log(3)], dtype=torch.float64)
    >>> optimal_policy(ref, r, beta=1.0)  # pi_ref e^r / Z = (0.5, 1.5) / 2
    tensor([0.2500, 0.7500], dtype=torch.float64)
    """
    beta = positive_number("beta", beta)
    ref_probs = _check_probs("ref_probs", ref_probs)
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards must be a torch tensor, got {type(rewards).__name__}")
    if rewards.shape != ref_probs.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and ref_probs {tuple(ref_probs.shape)} must have the same shape"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards hold NaN or inf")
    logits = torch.log(ref_probs) + rewards.to(ref_probs.dtype) / beta  # log 0 = -inf stays -inf
    return torch.softmax(logits, dim=-1)


def kl_regularized_objective(probs: Tensor, ref_probs: Tensor, rewards: Tensor, beta: float) -> Tensor:
    """:math:`J(\\pi) = \\sum_y \\pi(y) r(y) - \\beta\\,\\mathrm{KL}(\\pi\\|\\pi_\\text{ref})` (exact).

    At the optimum :math:`J(\\pi^*) = \\beta\\log Z`.
    """
    beta = nonnegative_number("beta", beta)
    if rewards.shape != probs.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and probs {tuple(probs.shape)} must have the same shape")
    return (probs * rewards).sum(-1) - beta * categorical_kl(probs, ref_probs)


def implicit_reward(logp: Tensor, ref_logp: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward :math:`\\beta\\log\\frac{\\pi_\\theta(y)}{\\pi_\\text{ref}(y)}`, pointwise.

    One value per sequence (``logp`` and ``ref_logp`` are summed over its tokens). It is the reward
    *up to the prompt-dependent constant* :math:`\\beta\\log Z(x)` for which :math:`\\pi_\\theta` would
    be the KL-regularised optimum. It is **not** a KL: only its average under :math:`y\\sim\\pi_\\theta`
    equals :math:`\\beta\\,\\mathrm{KL}(\\pi_\\theta\\|\\pi_\\text{ref})`.
    """
    beta = positive_number("beta", beta)
    if not isinstance(logp, Tensor) or not isinstance(ref_logp, Tensor):
        raise TypeError("logp and ref_logp must be torch tensors")
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp must have the same shape, got {tuple(logp.shape)} and {tuple(ref_logp.shape)}"
        )
    if not (torch.isfinite(logp.detach()).all() and torch.isfinite(ref_logp.detach()).all()):
        raise ValueError("logp and ref_logp must be finite")
    return beta * (logp - ref_logp)


# --------------------------------------------------------------------------------------------
# the losses
# --------------------------------------------------------------------------------------------


@dataclass
class PreferenceLoss:
    """A preference loss and what a trainer logs next to it.

    ``loss`` is the batch mean (with gradient); the rest are detached ``[batch]`` tensors, except
    ``accuracy`` (a scalar: the fraction of pairs whose chosen reward exceeds the rejected one).
    ``chosen_rewards`` / ``rejected_rewards`` are each method's own implicit reward (for DPO and IPO
    :math:`\\beta\\log\\pi_\\theta/\\pi_\\text{ref}`; for SimPO the length-normalised
    :math:`\\beta\\log\\pi_\\theta/|y|`; for ORPO the log-odds). ``extras`` holds method-specific
    quantities (KTO's reference point ``z0``, a clamped batch baseline computed on mismatched pairs;
    ORPO's ``nll`` and ``log_odds_ratio``).
    """

    loss: Tensor
    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    margins: Tensor
    accuracy: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


def _pack(losses: Tensor, chosen: Tensor, rejected: Tensor, **extras: Tensor) -> PreferenceLoss:
    chosen, rejected = chosen.detach(), rejected.detach()
    margins = chosen - rejected
    return PreferenceLoss(
        loss=losses.mean(),
        losses=losses.detach(),
        chosen_rewards=chosen,
        rejected_rewards=rejected,
        margins=margins,
        accuracy=(margins > 0).to(chosen.dtype).mean(),
        extras={k: v.detach() for k, v in extras.items()},
    )


def dpo_loss(
    policy_chosen_logp: Tensor,
    policy_rejected_logp: Tensor,
    ref_chosen_logp: Tensor,
    ref_rejected_logp: Tensor,
    beta: float,
) -> PreferenceLoss:
    """DPO (Rafailov et al., 2023): :math:`-\\log\\sigma\\big(\\beta[(\\log\\pi_\\theta(y_w) - \\log\\pi_\\text{ref}(y_w)) - (\\log\\pi_\\theta(y_l) - \\log\\pi_\\text{ref}(y_l))]\\big)`.

    ``-logsigmoid`` is used rather than ``-log(sigmoid(.))``: the sigmoid of a margin below about
    -709 (float64) or -88 (float32) is 0, and its log is ``-inf``.
    """
    beta = positive_number("beta", beta)
    _check_pair_logps(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp)
    chosen = beta * (policy_chosen_logp - ref_chosen_logp.detach())
    rejected = beta * (policy_rejected_logp - ref_rejected_logp.detach())
    losses = -F.logsigmoid(chosen - rejected)
    return _pack(losses, chosen, rejected)


def ipo_loss(
    policy_chosen_logp: Tensor,
    policy_rejected_logp: Tensor,
    ref_chosen_logp: Tensor,
    ref_rejected_logp: Tensor,
    tau: float,
) -> PreferenceLoss:
    """IPO (Azar et al., 2024, the sampled loss of their Eq. 17): :math:`(h - \\tfrac{1}{2\\tau})^2`.

    :math:`h = \\log\\frac{\\pi_\\theta(y_w)\\pi_\\text{ref}(y_l)}{\\pi_\\theta(y_l)\\pi_\\text{ref}(y_w)}` uses
    *sequence* log-probabilities, as in the paper (TRL's ``loss_type="ipo"`` averages over tokens
    instead). The square regresses the log-ratio margin onto a finite target, so deterministic
    preferences no longer drive it to infinity. ``chosen_rewards`` are reported as
    :math:`\\tau\\log\\pi_\\theta/\\pi_\\text{ref}` (:math:`\\tau` plays the role of DPO's :math:`\\beta`).
    """
    tau = positive_number("tau", tau)
    _check_pair_logps(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp)
    chosen_ratio = policy_chosen_logp - ref_chosen_logp.detach()
    rejected_ratio = policy_rejected_logp - ref_rejected_logp.detach()
    h = chosen_ratio - rejected_ratio
    losses = (h - 1.0 / (2.0 * tau)) ** 2
    return _pack(losses, tau * chosen_ratio, tau * rejected_ratio)


def simpo_loss(
    policy_chosen_logp: Tensor,
    policy_rejected_logp: Tensor,
    chosen_len: Tensor,
    rejected_len: Tensor,
    beta: float,
    gamma: float,
) -> PreferenceLoss:
    """SimPO (Meng et al., 2024): :math:`-\\log\\sigma\\big(\\tfrac{\\beta}{|y_w|}\\log\\pi_\\theta(y_w) - \\tfrac{\\beta}{|y_l|}\\log\\pi_\\theta(y_l) - \\gamma\\big)`.

    No reference model: nothing in the loss measures the distance to :math:`\\pi_\\text{ref}`.
    (TRL writes the margin as ``gamma_beta_ratio`` :math:`=\\gamma/\\beta` inside the bracket
    multiplied by :math:`\\beta`; that is the same loss.)
    """
    beta = positive_number("beta", beta)
    gamma = nonnegative_number("gamma", gamma)
    _check_reference_free(policy_chosen_logp, policy_rejected_logp, chosen_len, rejected_len)
    chosen = beta * policy_chosen_logp / chosen_len.to(policy_chosen_logp.dtype)
    rejected = beta * policy_rejected_logp / rejected_len.to(policy_rejected_logp.dtype)
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return _pack(losses, chosen, rejected)


def kto_loss(
    policy_logp: Tensor,
    ref_logp: Tensor,
    desirable: Tensor,
    policy_kl_logp: Tensor,
    ref_kl_logp: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PreferenceLoss:
    """KTO (Ethayarajh et al., 2024) on unpaired examples labelled desirable or undesirable.

    With the sequence log-ratio :math:`\\ell(y) = \\log\\pi_\\theta(y) - \\log\\pi_\\text{ref}(y)` and the reference point
    :math:`z_0 = \\max\\big(0, \\operatorname{mean}_j[\\log\\pi_\\theta(y'_j) - \\log\\pi_\\text{ref}(y'_j)]\\big)`,
    computed on *mismatched* completions :math:`y'_j` (``policy_kl_logp``, ``ref_kl_logp``: each
    prompt paired with another prompt's completion) and detached:

    - desirable :math:`y`: :math:`\\lambda_D\\,(1 - \\sigma(\\beta(\\ell(y) - z_0)))`,
    - undesirable :math:`y`: :math:`\\lambda_U\\,(1 - \\sigma(\\beta(z_0 - \\ell(y))))`.

    The paper defines :math:`z_0 = \\mathrm{KL}(\\pi_\\theta\\|\\pi_\\text{ref})` and computes it this way,
    a biased estimate in its authors' words: the mismatched completions are not samples of
    :math:`\\pi_\\theta`, so it is a batch-level log-ratio average clamped at 0 (claim
    ``kto-reference-point`` in :mod:`kltutor.claims`). ``chosen_rewards`` holds :math:`\\beta\\ell` of
    the desirable examples and ``rejected_rewards`` that of the undesirable ones (different sizes:
    ``margins`` is the difference of their means, NaN when one side has no example; ``accuracy``
    is not defined and set to NaN).
    """
    beta = positive_number("beta", beta)
    desirable_weight = nonnegative_number("desirable_weight", desirable_weight)
    undesirable_weight = nonnegative_number("undesirable_weight", undesirable_weight)
    _check_tensors(policy_logp=policy_logp, ref_logp=ref_logp)
    _check_tensors(policy_kl_logp=policy_kl_logp, ref_kl_logp=ref_kl_logp)
    _check_logp(policy_logp=policy_logp, ref_logp=ref_logp, policy_kl_logp=policy_kl_logp, ref_kl_logp=ref_kl_logp)
    if not isinstance(desirable, Tensor) or desirable.dtype != torch.bool or desirable.shape != policy_logp.shape:
        raise ValueError(f"desirable must be a bool tensor of shape {tuple(policy_logp.shape)}")
    z0 = (policy_kl_logp - ref_kl_logp).mean().clamp_min(0.0).detach()
    rho = policy_logp - ref_logp.detach()
    losses = torch.where(
        desirable,
        desirable_weight * (1.0 - torch.sigmoid(beta * (rho - z0))),
        undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - rho))),
    )
    rewards = (beta * rho).detach()
    chosen, rejected = rewards[desirable], rewards[~desirable]
    margin = chosen.mean() - rejected.mean()  # the mean of an empty side is NaN, and so is the margin
    return PreferenceLoss(
        loss=losses.mean(),
        losses=losses.detach(),
        chosen_rewards=chosen,
        rejected_rewards=rejected,
        margins=margin,
        accuracy=torch.full((), float("nan"), dtype=rewards.dtype),
        extras={"z0": z0},
    )


def _log1mexp(x: Tensor) -> Tensor:
    """:math:`\\log(1 - e^{x})` for :math:`x < 0`, accurate at both ends (Maechler, 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    policy_chosen_logp: Tensor,
    policy_rejected_logp: Tensor,
    chosen_len: Tensor,
    rejected_len: Tensor,
    lam: float,
) -> PreferenceLoss:
    """ORPO (Hong et al., 2024): :math:`\\mathcal{L}_\\text{SFT} + \\lambda\\,\\mathcal{L}_\\text{OR}`.

    With the per-token mean log-probability :math:`\\bar\\ell(y) = \\log\\pi_\\theta(y)/|y|`, the
    probability :math:`P(y) = e^{\\bar\\ell(y)}` and its odds :math:`P/(1-P)`:

    - :math:`\\mathcal{L}_\\text{SFT} = -\\bar\\ell(y_w)` (the per-token NLL of the chosen response),
    - :math:`\\mathcal{L}_\\text{OR} = -\\log\\sigma\\big(\\log\\frac{\\text{odds}(y_w)}{\\text{odds}(y_l)}\\big)`,
      with :math:`\\log\\text{odds} = \\bar\\ell - \\log(1-e^{\\bar\\ell})` computed stably.

    No reference model. ``chosen_rewards`` are the log-odds; ``extras`` has ``nll`` and ``log_odds_ratio``.
    A response of probability 1 (``logp == 0``) has infinite odds and is rejected with an error.
    """
    lam = nonnegative_number("lam", lam)
    _check_reference_free(policy_chosen_logp, policy_rejected_logp, chosen_len, rejected_len)
    if (policy_chosen_logp.detach() >= 0).any() or (policy_rejected_logp.detach() >= 0).any():
        raise ValueError("ORPO needs log-probabilities < 0: a response of probability 1 has infinite odds")
    mean_w = policy_chosen_logp / chosen_len.to(policy_chosen_logp.dtype)
    mean_l = policy_rejected_logp / rejected_len.to(policy_rejected_logp.dtype)
    log_odds_w = mean_w - _log1mexp(mean_w)
    log_odds_l = mean_l - _log1mexp(mean_l)
    log_odds_ratio = log_odds_w - log_odds_l
    nll = -mean_w
    losses = nll + lam * (-F.logsigmoid(log_odds_ratio))
    return _pack(losses, log_odds_w, log_odds_l, nll=nll, log_odds_ratio=log_odds_ratio)


# --------------------------------------------------------------------------------------------
# the tabular laboratory
# --------------------------------------------------------------------------------------------


def win_probability_against(rewards: Tensor, mu: Tensor) -> Tensor:
    """:math:`p(y \\succ \\mu) = \\sum_{y'} \\mu(y')\\,\\sigma(r(y) - r(y'))` under Bradley-Terry."""
    mu = _check_probs("mu", mu)
    if rewards.shape != mu.shape or rewards.dim() != 1:
        raise ValueError("rewards and mu must be 1-D of the same shape")
    return (torch.sigmoid(rewards[:, None] - rewards[None, :]) * mu[None, :]).sum(-1)


def ipo_optimal_policy(ref_probs: Tensor, rewards: Tensor, tau: float, mu: Tensor) -> Tensor:
    """The minimiser of the population IPO loss when pairs are drawn independently from ``mu``.

    :math:`\\pi_\\text{IPO}(y) \\propto \\pi_\\text{ref}(y)\\exp(p(y\\succ\\mu)/\\tau)` (Azar et al.,
    2024, with :math:`\\Psi` the identity): IPO's target is the KL-regularised optimum of the *win
    probability* against ``mu``, not of the Bradley-Terry reward, so at :math:`\\tau=\\beta` it is a
    different policy from DPO's :math:`\\pi^*`.
    """
    tau = positive_number("tau", tau)
    return optimal_policy(ref_probs, win_probability_against(rewards, mu), tau)


def bradley_terry_pairs(
    rewards: Tensor, mu: Tensor, n_pairs: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample ``n_pairs`` preference pairs: :math:`y, y' \\sim \\mu` independently (distinct), and
    :math:`y` is chosen with probability :math:`\\sigma(r(y) - r(y'))`. Returns ``(chosen, rejected)``
    index tensors."""
    mu = _check_probs("mu", mu)
    if rewards.shape != mu.shape or rewards.dim() != 1:
        raise ValueError("rewards and mu must be 1-D of the same shape")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if (mu > 0).sum() < 2:
        raise ValueError("mu must put mass on at least two responses to form pairs")
    a = torch.empty(0, dtype=torch.long)
    b = torch.empty(0, dtype=torch.long)
    while a.numel() < n_pairs:  # rejection of y == y'
        x = torch.multinomial(mu.double(), 2 * n_pairs, replacement=True, generator=generator)
        y = torch.multinomial(mu.double(), 2 * n_pairs, replacement=True, generator=generator)
        keep = x != y
        a, b = torch.cat([a, x[keep]]), torch.cat([b, y[keep]])
    a, b = a[:n_pairs], b[:n_pairs]
    p = torch.sigmoid(rewards.double()[a] - rewards.double()[b])
    first_wins = torch.rand(n_pairs, dtype=torch.float64, generator=generator) < p
    return torch.where(first_wins, a, b), torch.where(first_wins, b, a)


@dataclass
class TrainResult:
    """What :func:`train_tabular` returns: the final policy and its trajectory."""

    probs: Tensor  # final policy over responses
    steps: Tensor  # the recorded steps
    probs_history: Tensor  # [n_records, n_responses]
    loss_history: Tensor  # [n_records]


LOSSES = ("dpo", "ipo", "simpo", "orpo")


def train_tabular(
    method: str,
    chosen: Tensor,
    rejected: Tensor,
    ref_probs: Tensor,
    lengths: Tensor,
    beta: float,
    gamma: float = 0.0,
    steps: int = 2000,
    lr: float = 0.05,
    features: Tensor | None = None,
    record_every: int = 50,
) -> TrainResult:
    """Train a policy over a finite set of responses with a preference loss (full batch, Adam).

    The policy is :math:`\\pi_\\theta = \\operatorname{softmax}(\\log\\pi_\\text{ref} + \\Phi\\theta)`,
    started at :math:`\\theta=0`, i.e. at the reference. ``features`` :math:`\\Phi` defaults to the
    identity (a *tabular* policy: one free logit per response); a ``[n_responses, d]`` matrix gives a
    log-linear policy whose responses share parameters, so pushing on seen responses moves unseen ones.
    ``beta`` is DPO's/SimPO's :math:`\\beta`, IPO's :math:`\\tau` and ORPO's :math:`\\lambda`;
    ``gamma`` is SimPO's margin. Each response :math:`y` has ``lengths[y]`` tokens.
    """
    if method not in LOSSES:
        raise ValueError(f"unknown method {method!r}; choose one of {list(LOSSES)}")
    ref_probs = _check_probs("ref_probs", ref_probs)
    n = ref_probs.shape[-1]
    if ref_probs.dim() != 1 or lengths.shape != ref_probs.shape:
        raise ValueError("ref_probs and lengths must be 1-D over the same responses")
    if chosen.shape != rejected.shape or chosen.dim() != 1 or chosen.numel() == 0:
        raise ValueError("chosen and rejected must be non-empty 1-D index tensors of the same shape")
    if chosen.min() < 0 or rejected.min() < 0 or chosen.max() >= n or rejected.max() >= n:
        raise ValueError(f"chosen/rejected indices must lie in [0, {n})")
    if steps < 1 or record_every < 1:
        raise ValueError("steps and record_every must be >= 1")
    phi = torch.eye(n, dtype=torch.float64) if features is None else features.to(torch.float64)
    if phi.dim() != 2 or phi.shape[0] != n:
        raise ValueError(f"features must be [n_responses={n}, d], got shape {tuple(phi.shape)}")
    ref_logp = torch.log(ref_probs.to(torch.float64))
    lengths = lengths.to(torch.float64)
    theta = torch.zeros(phi.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)

    def loss_fn() -> Tensor:
        logp = torch.log_softmax(ref_logp + phi @ theta, dim=-1)
        lw, ll = logp[chosen], logp[rejected]
        if method == "dpo":
            return dpo_loss(lw, ll, ref_logp[chosen], ref_logp[rejected], beta).loss
        if method == "ipo":
            return ipo_loss(lw, ll, ref_logp[chosen], ref_logp[rejected], beta).loss
        if method == "simpo":
            return simpo_loss(lw, ll, lengths[chosen], lengths[rejected], beta, gamma).loss
        # ORPO needs per-token probabilities below 1; a whole response of probability 1 is excluded
        return orpo_loss(lw.clamp_max(-1e-12), ll.clamp_max(-1e-12), lengths[chosen], lengths[rejected], beta).loss

    records, probs_hist, loss_hist = [], [], []
    for step in range(steps + 1):
        opt.zero_grad()
        loss = loss_fn()
        if step % record_every == 0 or step == steps:
            with torch.no_grad():
                records.append(step)
                probs_hist.append(torch.softmax(ref_logp + phi @ theta, -1).detach().clone())
                loss_hist.append(loss.detach().clone())
        if step == steps:
            break
        loss.backward()
        opt.step()
    probs = probs_hist[-1]
    return TrainResult(
        probs=probs,
        steps=torch.tensor(records),
        probs_history=torch.stack(probs_hist),
        loss_history=torch.stack(loss_hist),
    )


def maximize_objective_numerically(ref_probs: Tensor, rewards: Tensor, beta: float, max_iter: int = 500) -> Tensor:
    """Maximise :math:`J(\\pi)` over the simplex numerically, with L-BFGS on softmax logits.

    It knows nothing of the closed form: the chapter and the tests use it to check
    :func:`optimal_policy` against a generic optimiser.
    """
    beta = positive_number("beta", beta)
    ref = _check_probs("ref_probs", ref_probs).to(torch.float64)
    r = rewards.to(torch.float64)
    logits = torch.zeros_like(ref, requires_grad=True)
    opt = torch.optim.LBFGS(
        [logits],
        max_iter=max_iter,
        tolerance_grad=1e-13,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        p = torch.softmax(logits, -1)
        logp = torch.log_softmax(logits, -1)
        j = (p * r).sum(-1) - beta * (p * (logp - torch.log(ref))).sum(-1)
        loss = -j.sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(logits.detach(), -1)


def kl_location_table() -> list[dict[str, str]]:
    """Where the KL (or its stand-in) sits in each method: one row per method, for the chapter's table."""
    # pragma: no mutate block -- prose cells, not values (chapter 5's stored table output pins them)
    return [
        {
            "method": "PPO-RLHF (InstructGPT)",
            "reference model": "yes",
            "where the KL sits": "explicit: -beta*k1 per token in the reward",
            "what it regularises towards": "pi_ref, via the reverse KL",
        },
        {
            "method": "GRPO (DeepSeekMath)",
            "reference model": "yes",
            "where the KL sits": "explicit: +beta*k3 per token in the loss",
            "what it regularises towards": "pi_ref; on-policy its gradient is the forward KL's, per token at the policy's prefixes",
        },
        {
            "method": "DPO",
            "reference model": "yes",
            "where the KL sits": "implicit: beta*log(pi/pi_ref) inside the sigmoid",
            "what it regularises towards": "pi* = pi_ref exp(r/beta)/Z, only with enough pairs covering every response",
        },
        {
            "method": "IPO",
            "reference model": "yes",
            "where the KL sits": "implicit: log-ratio margin regressed onto 1/(2 tau)",
            "what it regularises towards": "pi_ref exp(p(y > mu)/tau)/Z (a win-rate optimum, not the BT-reward one)",
        },
        {
            "method": "KTO",
            "reference model": "yes",
            "where the KL sits": "implicit: log-ratio minus z0 (defined as the KL; computed on mismatched pairs)",
            "what it regularises towards": "pi_ref (z0 is detached and clamped at 0)",
        },
        {
            "method": "SimPO",
            "reference model": "no",
            "where the KL sits": "absent: length-normalised log-prob and margin gamma",
            "what it regularises towards": "nothing: the optimum does not depend on pi_ref",
        },
        {
            "method": "ORPO",
            "reference model": "no",
            "where the KL sits": "absent: SFT NLL + odds-ratio term",
            "what it regularises towards": "the chosen responses (the SFT term), not pi_ref",
        },
    ]
