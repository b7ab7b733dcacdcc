"""Exact and Monte-Carlo gradients of every KL placement (introduced in ``ch-placements``).

On :class:`kltutor.toys.BinaryAutoregressive` every expectation over sequences is a finite sum over
the :math:`2^T` bit strings, so the *expected* gradient of each placement is computed exactly and
compared with the gradient of the exact sequence-level reverse KL
:math:`\\mathrm{KL}(\\pi_\\theta\\|\\pi_\\text{ref}) = \\mathbb{E}_{y\\sim\\pi_\\theta}[\\log\\pi_\\theta(y) - \\log\\pi_\\text{ref}(y)]`.

Per-sample gradient of each placement, with per-token log-ratios :math:`\\ell_t`,
:math:`L = \\sum_t \\ell_t`, scores :math:`g_t = \\nabla\\log\\pi_\\theta(y_t\\mid y_{<t})`:

====================  ==========================================  ======================================
placement             ``level="token"``                           ``level="sequence"``
====================  ==========================================  ======================================
``kN-in-reward``      :math:`\\sum_t g_t \\sum_{s\\ge t} k(\\ell_s)`   :math:`k(L)\\sum_t g_t`
``k1-in-loss``        :math:`\\sum_t g_t`                          :math:`\\sum_t g_t`
``k2-in-loss``        :math:`\\sum_t \\ell_t g_t`                   :math:`L \\sum_t g_t`
``k3-in-loss``        :math:`\\sum_t (1-e^{-\\ell_t}) g_t`          :math:`(1-e^{-L})\\sum_t g_t`
====================  ==========================================  ======================================

In-reward placements use the *causal return-to-go* form (``reward_form="return-to-go"``, what a
policy-gradient trainer computes with :math:`\\gamma=1`); ``reward_form="full"`` multiplies the whole
sequence's penalty by the whole sequence's score. Both have the same expectation (a penalty at
step ``s`` is independent of the score of a later step ``t > s`` given the prefix, and
:math:`\\mathbb{E}[g_t\\mid y_{<t}] = 0`); ``ch-placements`` shows it on numbers and the tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kltutor.estimators import derivative, of_log_ratio
from kltutor.placements import parse_placement, placement_names
from kltutor.toys.autoregressive import BinaryAutoregressive, all_binary_sequences

__all__ = [
    "PLACEMENT_KEYS",  # noqa: F822 (module __getattr__)
    "ESTIMATOR_PLACEMENTS",  # noqa: F822
    "per_sample_surrogate",
    "exact_kl_gradients",
    "per_sample_gradients",
    "exact_gradient_moments",
    "MCGradient",
    "mc_kl_gradients",
    "offpolicy_kl_loss_gradient",
    "expected_gradient_on_samples",
]

Level = Literal["token", "sequence"]
RewardForm = Literal["return-to-go", "full"]


def _estimator_placements() -> tuple[str, ...]:
    """The placements compared here, estimator by estimator (from :data:`kltutor.estimators.ESTIMATORS`)."""
    return placement_names(order="estimator")


def __getattr__(name: str):
    # computed on each access, so an estimator added to ESTIMATORS appears in them
    if name == "ESTIMATOR_PLACEMENTS":
        return _estimator_placements()
    if name == "PLACEMENT_KEYS":
        return ("true", *_estimator_placements())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _parse(placement: str) -> tuple[str, str]:
    if placement not in _estimator_placements():
        raise ValueError(f"unknown placement {placement!r}; choose one of {list(_estimator_placements())}")
    p = parse_placement(placement)
    return p.estimator, p.where


def _check_args(policy, reference, level: str, reward_form: str) -> None:
    for name, m in (("policy", policy), ("reference", reference)):
        if not isinstance(m, BinaryAutoregressive):
            raise TypeError(f"{name} must be a BinaryAutoregressive, got {type(m).__name__}")
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    if reward_form not in ("return-to-go", "full"):
        raise ValueError(f"reward_form must be 'return-to-go' or 'full', got {reward_form!r}")


def per_sample_surrogate(policy, reference, seqs: Tensor, placement: str, level: str, reward_form: str) -> Tensor:
    """Per-sequence scalar whose gradient (sample fixed) is the placement's per-sample gradient.

    ``placement`` is one of ``"k1-in-reward"``, ``"k1-in-loss"``, ``"k2-in-loss"``, ``"k3-in-loss"``,
    ``"k3-in-reward"``; ``level`` and ``reward_form`` as in :func:`exact_kl_gradients`.
    """
    est, where = _parse(placement)
    logp = policy.token_logprobs(seqs)
    with torch.no_grad():
        ref = reference.token_logprobs(seqs)
    lr = logp - ref
    if where == "loss":
        return of_log_ratio(est, lr).sum(-1) if level == "token" else of_log_ratio(est, lr.sum(-1))
    # in the reward: the penalty is a detached reward, reaching the parameters through the score
    lr_d = lr.detach()
    if level == "sequence":
        return logp.sum(-1) * of_log_ratio(est, lr_d.sum(-1))
    pen = of_log_ratio(est, lr_d)
    if reward_form == "full":
        return logp.sum(-1) * pen.sum(-1)
    rtg = pen.flip(-1).cumsum(-1).flip(-1)
    return (logp * rtg).sum(-1)


def exact_kl_gradients(
    policy: BinaryAutoregressive,
    reference: BinaryAutoregressive,
    seq_len: int,
    level: Level = "token",
    reward_form: RewardForm = "return-to-go",
) -> dict[str, Tensor]:
    """Exact expected gradient w.r.t. ``(a, b)`` of every placement, by enumerating all sequences.

    ``"true"`` is the autograd gradient of the exact sequence-level reverse KL. Every other key is
    :math:`\\sum_y \\pi_\\theta(y)\\,\\nabla f(y)` with the sample held fixed, where ``f`` is the
    placement's per-sample surrogate (see the module docstring). Returns tensors of shape ``[2]``.
    """
    _check_args(policy, reference, level, reward_form)
    params = [policy.a, policy.b]
    seqs = all_binary_sequences(seq_len)
    with torch.no_grad():
        probs = policy.sequence_logprobs(seqs).exp()
    out: dict[str, Tensor] = {}
    (ga, gb) = torch.autograd.grad(policy.exact_kl(reference, seq_len), params)
    out["true"] = torch.stack([ga, gb]).detach()
    for key in _estimator_placements():
        s = (probs * per_sample_surrogate(policy, reference, seqs, key, level, reward_form)).sum()
        # both parameters enter every surrogate (b multiplies c_t even where c_t = 0): no None gradient
        ga, gb = torch.autograd.grad(s, params)
        out[key] = torch.stack([ga, gb]).detach()
    return out


def per_sample_gradients(
    policy: BinaryAutoregressive,
    reference: BinaryAutoregressive,
    seqs: Tensor,
    placement: str,
    level: Level = "token",
    reward_form: RewardForm = "return-to-go",
) -> Tensor:
    """Gradient of one placement for each sequence in ``seqs``, ``[n, 2]``, in closed form.

    Uses :meth:`BinaryAutoregressive.token_scores` (no autograd), so millions of samples are cheap;
    the tests check it against autograd of the per-sample surrogate.
    """
    _check_args(policy, reference, level, reward_form)
    est, where = _parse(placement)
    scores = policy.token_scores(seqs)  # [n, T, 2]
    with torch.no_grad():
        lr = policy.token_logprobs(seqs) - reference.token_logprobs(seqs)
        L = lr.sum(-1, keepdim=True).expand_as(lr)
        if where == "loss":
            psi = derivative(est, lr) if level == "token" else derivative(est, L)
        elif level == "sequence":
            psi = of_log_ratio(est, L)
        elif reward_form == "full":
            psi = of_log_ratio(est, lr).sum(-1, keepdim=True).expand_as(lr)
        else:
            psi = of_log_ratio(est, lr).flip(-1).cumsum(-1).flip(-1)
    return (psi[..., None] * scores).sum(1)


def exact_gradient_moments(
    policy: BinaryAutoregressive,
    reference: BinaryAutoregressive,
    seq_len: int,
    level: Level = "token",
    reward_form: RewardForm = "return-to-go",
) -> dict[str, dict[str, Tensor]]:
    """Exact mean ``[2]``, covariance ``[2, 2]`` and bias ``[2]`` of each placement's per-sample gradient.

    The bias is measured against the exact reverse-KL gradient; the variance of the average over
    ``N`` independent sequences is ``covariance / N``.
    """
    true = exact_kl_gradients(policy, reference, seq_len, level, reward_form)["true"]
    seqs, probs = policy.enumerate(seq_len)
    out = {}
    for key in _estimator_placements():
        g = per_sample_gradients(policy, reference, seqs, key, level, reward_form)
        mean = (probs[:, None] * g).sum(0)
        centred = g - mean
        cov = (probs[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
        out[key] = {"mean": mean, "cov": cov, "bias": mean - true}
    return out


@dataclass
class MCGradient:
    """Monte-Carlo behaviour of one placement's gradient estimate averaged over ``n_seqs`` sequences."""

    placement: str
    n_seqs: int
    estimates: Tensor  # [n_trials, 2]
    true: Tensor  # [2], the exact reverse-KL gradient
    exact_mean: Tensor  # [2], the placement's exact expectation

    @property
    def mean(self) -> Tensor:
        return self.estimates.mean(0)

    @property
    def variance(self) -> Tensor:
        """Variance across trials of the ``n_seqs``-sample estimate, per parameter."""
        return self.estimates.var(0, unbiased=True)

    @property
    def se(self) -> Tensor:
        """Standard error of :attr:`mean`."""
        return (self.variance / self.estimates.shape[0]).sqrt()

    @property
    def bias(self) -> Tensor:
        """Measured bias against the true reverse-KL gradient."""
        return self.mean - self.true

    @property
    def mse(self) -> Tensor:
        """Mean squared error of one estimate against the true gradient, summed over parameters."""
        return (self.estimates - self.true).square().sum(-1).mean()


def mc_kl_gradients(
    policy: BinaryAutoregressive,
    reference: BinaryAutoregressive,
    seq_len: int,
    n_seqs: int,
    n_trials: int = 200,
    level: Level = "token",
    reward_form: RewardForm = "return-to-go",
    generator: torch.Generator | None = None,
) -> dict[str, MCGradient]:
    """Sample ``n_trials`` batches of ``n_seqs`` sequences from the policy; one gradient per batch.

    Each placement's batch estimate is the mean of its per-sample gradients over the batch (the same
    sampled batch is shared by all placements, as in one training step).
    """
    _check_args(policy, reference, level, reward_form)
    if not isinstance(n_seqs, int) or n_seqs < 1 or not isinstance(n_trials, int) or n_trials < 2:
        raise ValueError(f"need n_seqs >= 1 and n_trials >= 2 integers, got {n_seqs!r}, {n_trials!r}")
    exact = exact_kl_gradients(policy, reference, seq_len, level, reward_form)
    seqs = policy.sample(n_seqs * n_trials, seq_len, generator=generator)
    out = {}
    for key in _estimator_placements():
        g = per_sample_gradients(policy, reference, seqs, key, level, reward_form)
        est = g.reshape(n_trials, n_seqs, 2).mean(1)
        out[key] = MCGradient(key, n_seqs, est, exact["true"], exact[key])
    return out


def offpolicy_kl_loss_gradient(
    policy: BinaryAutoregressive,
    sampler: BinaryAutoregressive,
    reference: BinaryAutoregressive,
    seq_len: int,
    estimator: str = "k3",
    importance: Literal["none", "token", "prefix"] = "none",
) -> Tensor:
    """Exact expected gradient of the token-level in-loss KL term on sequences drawn from ``sampler``.

    The term is :func:`kltutor.placements.kl_loss` itself, evaluated on every sequence with the
    sampler's probability as the mask weight (so its aggregation is the exact expectation):

    - ``importance="none"``: the plain estimator on stale samples (what a trainer computes on the
      second and later updates of a batch without correction);
    - ``"token"``: each token weighted by ``w_t = pi_theta/pi_old`` (``kl_loss(old_logp=...)``);
    - ``"prefix"``: each token weighted by the cumulative ratio ``prod_{s<=t} w_s``.
    """
    from kltutor.placements import kl_loss

    if importance not in ("none", "token", "prefix"):
        raise ValueError(f"importance must be 'none', 'token' or 'prefix', got {importance!r}")

    def loss(logp: Tensor, old: Tensor, ref: Tensor, weights: Tensor) -> Tensor:
        mask = weights[:, None].expand_as(logp).contiguous()
        kw = {} if importance == "none" else {"old_logp": old, "importance": importance}
        # "sequence-sum" averages over rows; the weights already sum to one
        return kl_loss(logp, ref, mask, estimator=estimator, aggregation="sequence-sum", **kw) * logp.shape[0]

    return expected_gradient_on_samples(policy, sampler, reference, seq_len, loss)


def expected_gradient_on_samples(
    policy: BinaryAutoregressive,
    sampler: BinaryAutoregressive,
    reference: BinaryAutoregressive,
    seq_len: int,
    loss,
) -> Tensor:
    """The exact gradient w.r.t. ``(a, b)`` of ``loss(logp, old_logp, ref_logp, weights)`` over every sequence.

    ``logp`` (with gradient), ``old_logp`` and ``ref_logp`` are the ``[2**T, T]`` token log-probabilities
    of every sequence under the policy, the ``sampler`` and the reference; ``weights`` are the sampler's
    sequence probabilities, so a ``loss`` that weights each sequence's term by them is the expectation
    of that term over samples from ``sampler``. :func:`offpolicy_kl_loss_gradient` and
    :func:`kltutor.practice.offpolicy_kl_gradient` are built on it.
    """
    seqs = all_binary_sequences(seq_len)
    with torch.no_grad():
        weights = sampler.sequence_logprobs(seqs).exp()
        ref = reference.token_logprobs(seqs)
        old = sampler.token_logprobs(seqs)
    logp = policy.token_logprobs(seqs)
    ga, gb = torch.autograd.grad(loss(logp, old, ref, weights), [policy.a, policy.b])
    return torch.stack([ga, gb]).detach()
