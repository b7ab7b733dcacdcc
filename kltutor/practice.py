"""KL in practice: the questions practitioners keep asking, answered exactly (introduced in ``ch-practice``).

Every function here returns exact numbers (enumeration over a toy's sequences, a closed form, or a
fixed point solved to machine precision) or measures a real ``transformers`` model, so the chapter
``ch-practice`` can answer on numbers:

1. **Sampler-trainer mismatch.** :func:`process_logits` (temperature, top-k, top-p, as samplers
   apply them), :func:`random_logit_tables`, :func:`sampler_mismatch` (which KL a logged k1/k3
   estimates when the sampler is not the scored policy), :func:`tis_gradient_moments` (truncated
   importance sampling: bias and variance of the policy gradient), :func:`sampler_kl_term` (the in-loss
   KL term on a sampler's rollouts, weighted as TRL and verl weight it), :func:`token_logprobs_at` and
   :func:`precision_mismatch` (float32 against bfloat16 log-probabilities of one model).
2. **Loss aggregation.** :data:`AGGREGATIONS`, :func:`aggregation_weights`, :func:`effective_beta`,
   :func:`aggregation_stationary_policy` and :func:`aggregation_update` (the length bias of
   per-sequence means, exactly, and where the KL must sit for it),
   :data:`AGGREGATION_FLAGS` (TRL's ``loss_type`` and verl's ``loss_agg_mode``).
3. **Reference management.** :func:`bandit_with_reference_updates` (beta = 0, a reference reset every
   ``tau`` steps or soft-updated with ``alpha``), :func:`add_lora` / :func:`adapters_disabled` (a
   LoRA policy whose reference is the disabled adapter).
4. **Two KL terms.** :func:`two_kl_gradients`, :func:`two_kl_bandit_optimum`.
7. **Sequence-level importance ratios.** :func:`offpolicy_kl_gradient` with the per-token, prefix,
   sequence and geometric-mean (GSPO) weights.
8. **Slips in public code.** :data:`SLIPS` and :func:`expected_in_loss` (value and expected gradient of
   any per-token function of the log-ratio used as a loss term).

Items 5 (why the GRPO loss starts at zero) and 6 (negative KL in the logs) use
:func:`kltutor.grpo.grpo_loss`, the capstone and :func:`kltutor.checklist.diagnose_negative_kl`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from kltutor import divergences
from kltutor._validation import nonnegative_number, positive_number, probabilities
from kltutor.estimators import enumerate_autoregressive, of_log_ratio
from kltutor.gradients import exact_kl_gradients, expected_gradient_on_samples
from kltutor.preference import optimal_policy
from kltutor.toys.autoregressive import BinaryAutoregressive, all_binary_sequences
from kltutor.toys.bandits import softmax_policy_gradient

__all__ = [
    "process_logits",
    "random_logit_tables",
    "sampler_mismatch",
    "tis_gradient_moments",
    "SAMPLER_KL_WEIGHTINGS",
    "sampler_kl_term",
    "token_logprobs_at",
    "precision_mismatch",
    "AGGREGATIONS",
    "AGGREGATION_FLAGS",
    "aggregation_weights",
    "effective_beta",
    "aggregation_stationary_policy",
    "aggregation_update",
    "BASELINES",
    "bandit_with_reference_updates",
    "LoRALinear",
    "add_lora",
    "adapters_disabled",
    "two_kl_gradients",
    "two_kl_bandit_optimum",
    "offpolicy_kl_gradient",
    "OFFPOLICY_WEIGHTINGS",
    "expected_in_loss",
    "expected_in_reward",
    "SLIPS",
]


# ---------------------------------------------------------------------------------------------
# 1. Sampler-trainer mismatch
# ---------------------------------------------------------------------------------------------


def process_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """The sampling distribution over the last axis: ``softmax(logits / temperature)``, truncated.

    Applied in the order samplers use (Hugging Face's ``generate``, vLLM): temperature first, then
    top-k (keep the ``top_k`` most probable tokens), then top-p (keep the smallest set of the most
    probable tokens whose probability reaches ``top_p``), then renormalise. ``top_k=None`` or 0 and
    ``top_p=None`` or 1 switch truncation off. Returns probabilities (exact zeros outside the kept set).
    """
    if not isinstance(logits, Tensor) or logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError("logits must be a tensor with a vocabulary axis (the last one)")
    if not torch.isfinite(logits).all():
        raise ValueError("logits hold NaN or inf")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    vocab = logits.shape[-1]
    if top_k is not None and top_k != 0 and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer (or 0/None for no truncation), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    probs = torch.softmax(logits.to(torch.float64) / temperature, -1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    order = torch.argsort(probs, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(vocab, device=logits.device).expand_as(order).contiguous())
    if top_k:
        keep &= rank < top_k
    if top_p is not None and top_p < 1:
        sorted_p = torch.gather(probs * keep, -1, order)
        before = torch.cumsum(sorted_p, -1) - sorted_p  # mass strictly more probable than this token
        keep_sorted = before < top_p * (sorted_p.sum(-1, keepdim=True))
        keep &= torch.gather(keep_sorted, -1, rank)
    out = probs * keep
    return out / out.sum(-1, keepdim=True)


def random_logit_tables(
    vocab: int, seq_len: int, scale: float = 1.0, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Logits of a random autoregressive model: ``tables[t]`` has shape ``[vocab] * (t + 1)``
    (the prefix, then the next token), entries ``N(0, scale^2)``, float64."""
    if vocab < 2 or seq_len < 1 or vocab**seq_len > 200_000:
        raise ValueError(f"need vocab >= 2, seq_len >= 1 and at most 200000 sequences, got {vocab}**{seq_len}")
    return [scale * torch.randn((vocab,) * (t + 1), generator=generator, dtype=torch.float64) for t in range(seq_len)]


def _tables(logit_tables: Sequence[Tensor], **sampling) -> list[Tensor]:
    return [process_logits(t, **sampling) for t in logit_tables]


def sampler_mismatch(
    policy_logits: Sequence[Tensor],
    ref_logits: Sequence[Tensor],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    scoring: Literal["untempered", "tempered"] = "untempered",
) -> dict[str, float]:
    """Exactly what a logged KL estimates when the rollouts come from a processed sampler.

    The sampler draws from ``process_logits(policy, temperature, top_k, top_p)`` token by token.
    The trainer scores the same tokens with the policy and the reference:

    - ``scoring="untempered"``: both at temperature 1, no truncation (the sampler-trainer mismatch of
      an inference engine configured differently from the trainer);
    - ``scoring="tempered"``: both with ``logits / temperature`` and no truncation (what TRL's
      ``GRPOTrainer`` and verl do: the reference is scored at the rollout temperature too).

    Returns, exactly (enumerating every sequence): ``kl_target`` = KL(pi || pi_ref) at temperature 1
    (the objective's KL); ``kl_scored`` = KL between the two *scored* distributions (pi_T || pi_ref,T);
    ``k1``, ``k3`` = the expectations of the sequence estimates sum_t l_t and sum_t k3(l_t) under the
    sampler; ``sd_k1``, ``sd_k3`` their standard deviations for one sequence; ``max_k3`` the largest
    sequence k3 the sampler can produce; ``p_k1_negative`` = P(sum_t l_t < 0); ``kl_sampler_policy`` =
    KL(sampler || scored policy); ``missing_mass`` = the scored policy's probability of the sequences
    the sampler never produces.
    """
    if scoring not in ("untempered", "tempered"):
        raise ValueError(f"scoring must be 'untempered' or 'tempered', got {scoring!r}")
    if len(policy_logits) != len(ref_logits):
        raise ValueError("policy and reference tables must have the same length")
    t_score = temperature if scoring == "tempered" else 1.0
    _, lp_pi1 = enumerate_autoregressive(_tables(policy_logits))
    _, lp_ref1 = enumerate_autoregressive(_tables(ref_logits))
    _, lp = enumerate_autoregressive(_tables(policy_logits, temperature=t_score))
    _, lp_ref = enumerate_autoregressive(_tables(ref_logits, temperature=t_score))
    with torch.no_grad():  # truncated tokens have probability 0: log 0 = -inf, weight 0
        _, lq = enumerate_autoregressive(_tables(policy_logits, temperature=temperature, top_k=top_k, top_p=top_p))
    q = lq.sum(-1).exp()
    pi = lp.sum(-1).exp()
    pi1 = lp_pi1.sum(-1).exp()
    seen = q > 0
    ell = lp - lp_ref
    k1 = ell.sum(-1)
    k3 = of_log_ratio("k3", ell).sum(-1)

    def mean(v: Tensor) -> float:
        return float((q[seen] * v[seen]).sum())

    def sd(v: Tensor) -> float:
        m = mean(v)
        return math.sqrt(max(float((q[seen] * (v[seen] - m) ** 2).sum()), 0.0))

    kl_sp = float((q[seen] * (lq.sum(-1)[seen] - lp.sum(-1)[seen])).sum())
    return {
        "kl_target": float((pi1 * (lp_pi1 - lp_ref1).sum(-1)).sum()),
        "kl_scored": float((pi * k1).sum()),
        "k1": mean(k1),
        "sd_k1": sd(k1),
        "k3": mean(k3),
        "sd_k3": sd(k3),
        "max_k3": float(k3[seen].max()),
        "p_k1_negative": float(q[seen & (k1 < 0)].sum()),
        "kl_sampler_policy": max(kl_sp, 0.0),
        "missing_mass": float(pi[~seen].sum()),
    }


def _reward_bits(seqs: Tensor) -> Tensor:
    return seqs.mean(-1)


def tis_gradient_moments(
    policy: BinaryAutoregressive,
    sampler: BinaryAutoregressive,
    reference: BinaryAutoregressive,
    seq_len: int,
    beta: float,
    caps: Sequence[float],
    level: Literal["token", "sequence"] = "token",
    reward: Callable[[Tensor], Tensor] = _reward_bits,
) -> list[dict[str, float]]:
    """Truncated importance sampling of the policy gradient, exactly, on the binary toy.

    The objective is ``J = E_pi[R] - beta KL(pi || pi_ref)`` (``R`` = ``reward(bits)``, by default the
    fraction of ones). On-policy, its exact per-sample gradient is the k1-in-reward REINFORCE
    estimate ``g(y) = sum_t grad log pi(y_t|s_t) (R(y) - beta sum_{s>=t} l_s)``. The rollouts come from
    ``sampler`` instead; each term is weighted by

    - ``level="token"``: ``min(w_t, C)`` with ``w_t = pi(y_t|s_t)/sampler(y_t|s_t)`` (verl's and TRL's
      token-level TIS);
    - ``level="sequence"``: ``min(W, C)`` with ``W = pi(y)/sampler(y)`` on every token.

    ``caps`` lists the ``C`` values (``math.inf``: no truncation; ``0`` is read as *no correction*,
    weight 1). Returns one row per cap: the squared bias ``|E g_C - grad J|^2``, the per-sequence
    variance ``tr Cov(g_C)`` and the mean squared error of a batch of 64 sequences.
    """
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    seqs = all_binary_sequences(seq_len)
    params = [policy.a, policy.b]
    logp = policy.token_logprobs(seqs)
    with torch.no_grad():
        ref = reference.token_logprobs(seqs)
        old = sampler.token_logprobs(seqs)
        q = old.sum(-1).exp()
        R = reward(seqs).to(torch.float64)
    pi = logp.sum(-1).exp()
    J = (pi * R).sum() - beta * (pi * (logp - ref).sum(-1)).sum()
    true = torch.stack(torch.autograd.grad(J, params)).detach()
    scores = policy.token_scores(seqs)  # [n, T, 2]
    with torch.no_grad():
        ell = logp.detach() - ref
        rtg = R[:, None] - beta * ell.flip(-1).cumsum(-1).flip(-1)
        w_tok = (logp.detach() - old).exp()
        w_seq = (logp.detach().sum(-1) - old.sum(-1)).exp()[:, None].expand_as(w_tok)
    rows = []
    for cap in caps:
        if cap == 0:
            w = torch.ones_like(w_tok)
        else:
            w = (w_tok if level == "token" else w_seq).clamp(max=float(cap))
        g = ((w * rtg)[..., None] * scores).sum(1)  # [n, 2]
        mean = (q[:, None] * g).sum(0)
        var = float((q[:, None] * (g - mean) ** 2).sum())
        bias2 = float(((mean - true) ** 2).sum())
        rows.append({"cap": float(cap), "bias2": bias2, "variance": var, "mse_64": bias2 + var / 64})
    return rows


#: How a trainer weights its in-loss KL term when the rollouts come from a sampler ``q`` (another engine,
#: precision or temperature), at the first update on the batch (the trainer's ``pi_old`` is the policy itself).
#: TRL and verl multiply only the policy-gradient term by their rollout importance weights.
SAMPLER_KL_WEIGHTINGS: dict[str, str] = {
    "none": "k3 as is: verl's kl_loss, TRL with use_bias_correction_kl=False",
    "trainer-ratio": "k3 x pi/pi_old, pi_old the trainer's own score (TRL's use_bias_correction_kl): 1 in value",
    "sequence": "k3 x pi(y)/q(y) on every token: the rollout weight applied to the KL term too (exact)",
}


def sampler_kl_term(
    policy: BinaryAutoregressive,
    sampler: BinaryAutoregressive,
    reference: BinaryAutoregressive,
    seq_len: int,
    weighting: str = "none",
    estimator: str = "k3",
) -> dict[str, object]:
    """Exact expected value and gradient of an in-loss KL term ``sum_t rho_t k(l_t)`` on rollouts from ``sampler``.

    ``weighting`` (:data:`SAMPLER_KL_WEIGHTINGS`) sets ``rho_t``: ``"none"`` (1), ``"trainer-ratio"``
    (``pi/pi_old`` with ``pi_old`` the policy's own detached score: value 1, gradient ``grad log pi``) or
    ``"sequence"`` (``pi(y)/q(y)``, carrying gradient). Returns ``{"value", "gradient"}``; compare with
    ``policy.exact_kl(reference, T)`` and ``exact_kl_gradients(policy, reference, T)["true"]``.
    """
    if weighting not in SAMPLER_KL_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {tuple(SAMPLER_KL_WEIGHTINGS)}, got {weighting!r}")

    def loss(logp: Tensor, old: Tensor, ref: Tensor, q: Tensor) -> Tensor:
        if weighting == "none":
            rho = torch.ones_like(logp)
        elif weighting == "trainer-ratio":
            rho = (logp - logp.detach()).exp()
        else:
            rho = (logp - old).sum(-1, keepdim=True).exp().expand_as(logp)
        return (q * (rho * of_log_ratio(estimator, logp - ref)).sum(-1)).sum()

    seqs = all_binary_sequences(seq_len)
    with torch.no_grad():
        logp = policy.token_logprobs(seqs)
        value = float(
            loss(
                logp,
                sampler.token_logprobs(seqs),
                reference.token_logprobs(seqs),
                sampler.sequence_logprobs(seqs).exp(),
            )
        )
    return {"value": value, "gradient": expected_gradient_on_samples(policy, sampler, reference, seq_len, loss)}


def token_logprobs_at(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    n_prompt: int,
    dtype: torch.dtype = torch.float32,
    logsoftmax_dtype: torch.dtype | None = torch.float32,
) -> Tensor:
    """Log-probabilities of the completion tokens ``input_ids[:, n_prompt:]`` under a copy of ``model``
    cast to ``dtype`` (weights and activations); the log-softmax runs in ``logsoftmax_dtype``
    (``None``: in ``dtype`` too). Positions are counted from the first real token (left padding).
    Returns float64 ``[batch, T]``; ``model`` itself is not changed."""
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError("input_ids and attention_mask must be [batch, time] tensors of the same shape")
    if not 0 < n_prompt < input_ids.shape[1]:
        raise ValueError(f"n_prompt must be between 1 and the sequence length - 1, got {n_prompt}")
    m = copy.deepcopy(model).to(dtype).eval()
    pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = m(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits[:, n_prompt - 1 : -1]
        logits = logits.to(logsoftmax_dtype) if logsoftmax_dtype is not None else logits
        lsm = torch.log_softmax(logits, -1)
        out = lsm.gather(-1, input_ids[:, n_prompt:, None]).squeeze(-1)
    return out.to(torch.float64)


def precision_mismatch(logp: Tensor, other_logp: Tensor, mask: Tensor, clip_eps: float = 0.2) -> dict[str, float]:
    """How far two scorings of the same tokens disagree (e.g. float32 trainer vs bfloat16 engine).

    ``d = logp - other_logp`` per token. Returns the mean, median, 99th percentile and maximum of
    ``|d|`` over the masked tokens; the fraction of tokens whose ratio ``e^d`` leaves PPO's clip range
    ``[1 - clip_eps, 1 + clip_eps]``; and, reading ``other_logp`` as a reference scored differently
    from an identical policy, the step-0 sequence KL estimates that the mismatch alone produces:
    mean and standard deviation of ``sum_t d_t`` (k1) and the mean of ``sum_t k3(d_t)``.
    """
    if logp.shape != other_logp.shape or mask.shape != logp.shape:
        raise ValueError("logp, other_logp and mask must have the same [batch, time] shape")
    m = mask.bool()
    if not m.any():
        raise ValueError("mask selects no token")
    d = logp.double() - other_logp.double()
    a = d[m].abs()
    seq_k1 = (d * m).sum(-1)
    seq_k3 = (of_log_ratio("k3", d) * m).sum(-1)
    w = d[m].exp()
    return {
        "mean_abs": float(a.mean()),
        "median_abs": float(a.median()),
        "p99_abs": float(torch.quantile(a, 0.99)),
        "max_abs": float(a.max()),
        "frac_outside_clip": float(((w < 1 - clip_eps) | (w > 1 + clip_eps)).double().mean()),
        "seq_k1_mean": float(seq_k1.mean()),
        "seq_k1_sd": float(seq_k1.std()) if seq_k1.numel() > 1 else 0.0,
        "seq_k3_mean": float(seq_k3.mean()),
        "n_tokens": int(m.sum()),
    }


# ---------------------------------------------------------------------------------------------
# 2. Loss aggregation x KL
# ---------------------------------------------------------------------------------------------

#: The aggregations of a per-token loss ``x[i, t]`` over a batch of ``G`` sequences of lengths ``T_i``.
AGGREGATIONS: dict[str, str] = {
    "token-mean": "sum_i sum_t x[i,t] / sum_j T_j  (every token of the batch weighs the same)",
    "sequence-mean": "(1/G) sum_i (1/T_i) sum_t x[i,t]  (every sequence weighs the same: GRPO's 1/|o_i|)",
    "sequence-sum": "(1/G) sum_i sum_t x[i,t]  (the sequence-level objective)",
    "token-sum-norm": "(1/G) sum_i sum_t x[i,t] / L  (Dr. GRPO: a constant L, e.g. the maximum completion length)",
}

#: Where each aggregation lives in TRL and verl, at the releases the book pins (TRL 1.16.0, verl 0.9.1; each
#: entry is a fact of :mod:`kltutor.claims.libraries`, checked against the installed source by
#: ``tests/test_library_facts.py``).
AGGREGATION_FLAGS: list[dict[str, str]] = [
    {
        "aggregation": "sequence-mean",
        "TRL GRPOConfig.loss_type": "'grpo' (also 'sapo')",
        "verl actor.loss_agg_mode": "'seq-mean-token-mean'",
    },
    {
        "aggregation": "token-mean",
        "TRL GRPOConfig.loss_type": "'bnpo' (local batch); 'dapo' (default; global accumulated batch)",
        "verl actor.loss_agg_mode": "'token-mean' (default)",
    },
    {
        "aggregation": "token-sum-norm",
        "TRL GRPOConfig.loss_type": "'dr_grpo' (L = max_completion_length, divided by the batch size too)",
        "verl actor.loss_agg_mode": "'seq-mean-token-sum-norm' (L = loss_scale_factor, default the padded response "
        "length; averaged over sequences, as since 0.8.0)",
    },
    {
        "aggregation": "sequence-sum",
        "TRL GRPOConfig.loss_type": "'luspo' (sums each sequence's tokens, averages the sequences, as since 1.10)",
        "verl actor.loss_agg_mode": "'seq-mean-token-sum'; 'token-sum' (since 0.9.0) is G times it: a plain sum "
        "over the batch's tokens",
    },
]
AGGREGATION_SOURCES = (
    "TRL 1.16.0: trl/trainer/grpo_trainer.py (_compute_loss), trl/trainer/grpo_config.py (loss_type); "
    "verl 0.9.1: verl/trainer/ppo/core_algos.py (agg_loss), verl/workers/utils/losses.py (ppo_loss: the KL "
    "loss uses the same agg_loss); tests/test_library_facts.py checks both against the installed source"
)


def _lengths(lengths) -> Tensor:
    t = torch.as_tensor(lengths, dtype=torch.float64)
    if t.dim() != 1 or t.numel() < 1 or not torch.isfinite(t).all() or (t < 1).any():
        raise ValueError("lengths must be a non-empty 1-D list of sequence lengths >= 1")
    return t


def aggregation_weights(lengths, mode: str, max_len: float | None = None) -> Tensor:
    """The weight ``c_i`` that aggregation ``mode`` gives every token of sequence ``i`` (``[G]``).

    The aggregated loss is ``sum_i c_i sum_t x[i, t]``. ``max_len`` is Dr. GRPO's constant ``L``
    (default: the longest sequence of the batch).
    """
    T = _lengths(lengths)
    G = T.numel()
    if mode == "token-mean":
        return torch.full_like(T, 1.0 / float(T.sum()))
    if mode == "sequence-mean":
        return 1.0 / (G * T)
    if mode == "sequence-sum":
        return torch.full_like(T, 1.0 / G)
    if mode == "token-sum-norm":
        L = float(T.max()) if max_len is None else float(max_len)
        if not L >= float(T.max()):
            raise ValueError(f"max_len={max_len} is shorter than the longest sequence ({float(T.max()):g})")
        return torch.full_like(T, 1.0 / (G * L))
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {sorted(AGGREGATIONS)}")


def effective_beta(lengths, mode: str, beta: float, max_len: float | None = None) -> Tensor:
    """The coefficient on each sequence's *summed* KL estimate, ``beta_eff[i]``, written so that the KL
    part of the loss reads ``(1/G) sum_i beta_eff[i] * sum_t k[i, t]`` (the sequence-level form):
    ``beta_eff = beta * G * c_i``. ``beta`` for "sequence-sum"; ``beta / T_i`` for "sequence-mean";
    ``beta / mean(T)`` for "token-mean"; ``beta / L`` for "token-sum-norm"."""
    nonnegative_number("beta", beta, strict=True)
    c = aggregation_weights(lengths, mode, max_len)
    return beta * c.numel() * c


#: Where the KL sits relative to the group baseline (see :func:`aggregation_update`).
BASELINES: dict[str, str] = {
    "task": "b = E_pi[R]: the group centres the task reward only (KL as a loss term, e.g. k2 of the sequence "
    "log-ratio, or a k1 penalty added after the centring)",
    "shaped": "b = E_pi[R - beta l]: k1 sits in the reward before the group centring",
}


def _bandit(ref_probs, rewards) -> tuple[Tensor, Tensor]:
    """A bandit over whole responses: strictly positive reference probabilities, one finite reward each."""
    p = probabilities("ref_probs", ref_probs, vector=True, positive=True, dtype=torch.float64)
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.shape != p.shape or not torch.isfinite(r).all():
        raise ValueError(f"rewards must be finite, one per response: shape {tuple(p.shape)}, got {tuple(r.shape)}")
    return p, r


def _bandit_inputs(ref_probs, rewards, lengths, beta: float, mode: str, baseline: str):
    p, R = _bandit(ref_probs, rewards)
    T = _lengths(lengths)
    if T.shape != p.shape:
        raise ValueError(f"lengths must be one per response: shape {tuple(p.shape)}, got {tuple(T.shape)}")
    positive_number("beta", beta, strict=True)
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of {sorted(AGGREGATIONS)}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {sorted(BASELINES)}")
    return p, R, T


def aggregation_update(
    policy_probs,
    ref_probs,
    rewards,
    lengths,
    beta: float,
    mode: str,
    baseline: str = "task",
    max_len: float | None = None,
) -> Tensor:
    """The expected update of a bandit over whole responses, ``E_pi[c(T_y) (R_y - b - beta l_y) grad_z log pi(y)]``.

    ``pi = softmax(z)`` is ``policy_probs``; responses have reference probabilities, rewards ``R_y``
    and lengths ``T_y``; ``l_y = log pi(y)/pi_ref(y)``; ``c`` is the aggregation's per-token weight
    (population limit: token-mean's ``1/sum T`` becomes ``1/(G E_pi[T])``, the same for every response).
    ``baseline`` says what the group mean centres (:data:`BASELINES`): ``"task"``, ``b = E_pi[R]``
    (the KL is a loss term whose expected gradient is ``E_pi[l_y grad log pi(y)]``, k2 of the
    sequence log-ratio; or a k1 penalty added after the centring), or ``"shaped"``,
    ``b = E_pi[R - beta l]`` (k1 in the reward before the centring). Returns the update on the logits
    ``z`` (``[n]``, float64); it is zero exactly at a stationary point.
    """
    p, R, T = _bandit_inputs(ref_probs, rewards, lengths, beta, mode, baseline)
    pi = probabilities("policy_probs", policy_probs, vector=True, positive=True, dtype=torch.float64)
    if pi.shape != p.shape:
        raise ValueError(f"policy_probs must match ref_probs: shape {tuple(p.shape)}, got {tuple(pi.shape)}")
    ell = pi.log() - p.log()
    b = float((pi * R).sum()) if baseline == "task" else float((pi * (R - beta * ell)).sum())
    if mode == "token-mean":
        c = torch.full_like(T, 1.0 / float((pi * T).sum()))
    else:
        c = aggregation_weights(T, mode, max_len if max_len is not None else float(T.max())) * T.numel()
    a = c * (R - b - beta * ell)
    return pi * (a - (pi * a).sum())  # grad_z log pi(y) = e_y - pi


def aggregation_stationary_policy(
    ref_probs,
    rewards,
    lengths,
    beta: float,
    mode: str,
    max_len: float | None = None,
    tol: float = 1e-13,
    baseline: str = "task",
) -> Tensor:
    """The policy at which the aggregated GRPO-style update stops, for a bandit over whole responses.

    Responses ``y`` (one per entry) have reference probabilities, rewards ``R_y`` and lengths ``T_y``.
    In the population limit (large groups) the update is ``E_pi[c(T_y) (R_y - b - beta l_y) grad log pi(y)]``
    (:func:`aggregation_update`) with ``l_y = log pi(y)/pi_ref(y)``, ``c`` the aggregation's per-token
    weight and ``b`` the group-mean baseline. On the softmax simplex it vanishes iff
    ``c(T_y) (R_y - b - beta l_y)`` is the same for every response. A constant ``c`` (sequence-sum,
    token-mean in the limit, token-sum-norm) gives the tilted optimum ``pi_ref e^{R/beta}/Z``; ``c = 1/T``
    (sequence-mean) gives ``pi_ref e^{(R - kappa T)/beta}/Z`` with ``kappa E_pi[T] = E_pi[R] - b - beta KL``:

    - ``baseline="task"`` (``b = E_pi[R]``: the KL is a loss term, k2 of the sequence log-ratio, or a
      k1 penalty added after the centring): ``kappa = -beta KL / E_pi[T] < 0``, a per-token length
      bonus; solved here for ``kappa`` and ``b`` to ``tol``;
    - ``baseline="shaped"`` (``b = E_pi[R - beta l]``: k1 in the reward before the centring): ``kappa = 0``,
      the tilt again.
    """
    p, R, T = _bandit_inputs(ref_probs, rewards, lengths, beta, mode, baseline)
    if mode != "sequence-mean" or baseline == "shaped":
        return optimal_policy(p, R, beta)
    logp0 = p.log()

    def policy(b: float) -> Tensor:
        # normalisation fixes kappa: sum_y pi_ref e^{(R - b - kappa T)/beta} = 1, decreasing in kappa
        def excess(kappa: float) -> float:
            return float(torch.logsumexp(logp0 + (R - b - kappa * T) / beta, 0))

        lo, hi = -1.0, 1.0
        while excess(lo) < 0:
            lo *= 2
        while excess(hi) > 0:
            hi *= 2
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if excess(mid) > 0:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-15 * max(1.0, abs(mid)):
                break
        kappa = 0.5 * (lo + hi)
        return torch.softmax(logp0 + (R - b - kappa * T) / beta, 0)

    b = float((p * R).sum())
    for _ in range(10_000):
        pi = policy(b)
        b_new = float((pi * R).sum())
        if abs(b_new - b) < tol:
            return pi
        b = b_new
    raise RuntimeError("the stationary point did not converge; try a larger beta")


# ---------------------------------------------------------------------------------------------
# 3. Reference management
# ---------------------------------------------------------------------------------------------


def bandit_with_reference_updates(
    ref_probs,
    rewards,
    beta: float,
    steps: int,
    lr: float = 0.5,
    reset_every: int | None = None,
    soft_alpha: float | None = None,
    correct: Tensor | None = None,
) -> dict[str, list[float]]:
    """Exact gradient ascent on ``E_pi[r] - beta KL(pi || pi_ref_t)`` with a moving reference.

    A softmax policy over responses starts at ``ref_probs``. The reference ``pi_ref_t`` is the
    initial one (default), is replaced by the current policy every ``reset_every`` steps (a hard
    reset, TR-DPO's ``tau``), or follows the policy in logit space, ``z_ref <- alpha z + (1 - alpha)
    z_ref`` after every step (TR-DPO's soft update, ``soft_alpha``). ``beta = 0`` is the run without a
    reference. Returns per step: ``kl_initial`` = KL(pi || pi_0) (the drift from the starting
    model), ``kl_reference`` = KL(pi || pi_ref_t) (what the penalty controls), ``reward``,
    ``entropy`` and, when ``correct`` (a boolean mask) is given, ``correct_entropy`` (the entropy of pi
    restricted to the correct responses, renormalised: diversity among right answers) and ``pass1``.
    """
    p0, r = _bandit(ref_probs, rewards)
    if not (beta >= 0 and math.isfinite(beta)) or steps < 1 or not lr > 0:
        raise ValueError("need beta >= 0, steps >= 1 and lr > 0")
    if reset_every is not None and soft_alpha is not None:
        raise ValueError("choose a hard reset (reset_every) or a soft update (soft_alpha), not both")
    if reset_every is not None and (not isinstance(reset_every, int) or reset_every < 1):
        raise ValueError(f"reset_every must be a positive integer, got {reset_every!r}")
    if soft_alpha is not None and not 0 < soft_alpha <= 1:
        raise ValueError(f"soft_alpha must be in (0, 1], got {soft_alpha!r}")
    z = p0.log().clone()
    z_ref = z.clone()
    out: dict[str, list[float]] = {"kl_initial": [], "kl_reference": [], "reward": [], "entropy": []}
    if correct is not None:
        correct = torch.as_tensor(correct, dtype=torch.bool)
        out["correct_entropy"], out["pass1"] = [], []
    for step in range(1, steps + 1):
        z = z + lr * softmax_policy_gradient(z, r, beta, torch.log_softmax(z_ref, 0))
        if reset_every is not None and step % reset_every == 0:
            z_ref = z.clone()
        elif soft_alpha is not None:
            z_ref = soft_alpha * z + (1 - soft_alpha) * z_ref
        pi = torch.softmax(z, 0)
        out["kl_initial"].append(float(divergences.kl(pi, p0)))
        out["kl_reference"].append(float(divergences.kl(pi, torch.softmax(z_ref, 0))))
        out["reward"].append(float((pi * r).sum()))
        out["entropy"].append(float(-(pi * pi.log()).sum()))
        if correct is not None:
            pc = pi[correct] / pi[correct].sum()
            out["correct_entropy"].append(float(-(pc * pc.log()).sum()))
            out["pass1"].append(float(pi[correct].sum()))
    return out


class LoRALinear(nn.Module):
    """``y = base(x) + scale * B A x`` with a frozen ``base``; ``enabled=False`` returns ``base(x)``.

    ``init="zero"`` is the usual LoRA start (``A`` random, ``B = 0``): the adapted layer *is* the base
    layer until the first update. ``init="principal"`` mimics PiSSA / OLoRA / CorDA / LoftQ in PEFT:
    ``B A`` takes the top-``rank`` singular part of the weight and the *base weight is replaced by
    the residual* ``W - scale B A``, so that base + adapter still equals ``W`` at the start.
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0, init: str = "zero", seed: int = 0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1 or rank > min(base.in_features, base.out_features):
            raise ValueError(
                f"rank must be an integer in [1, {min(base.in_features, base.out_features)}], got {rank!r}"
            )
        self.base, self.scale, self.enabled = base, alpha / rank, True
        base.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        w = base.weight.data
        if init == "zero":
            a = torch.randn(rank, base.in_features, generator=gen, dtype=w.dtype) / math.sqrt(base.in_features)
            b = torch.zeros(base.out_features, rank, dtype=w.dtype)
        elif init == "principal":
            u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
            sr = s[:rank] / self.scale
            a = (sr.sqrt()[:, None] * vh[:rank]).to(w.dtype)
            b = (u[:, :rank] * sr.sqrt()[None, :]).to(w.dtype)
            base.weight.data = (w.double() - self.scale * (b.double() @ a.double())).to(w.dtype)
        else:
            raise ValueError(f"init must be 'zero' or 'principal', got {init!r}")
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(b)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.enabled:
            out = out + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)
        return out


def add_lora(
    model: nn.Module,
    rank: int = 4,
    alpha: float = 8.0,
    init: str = "zero",
    targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    seed: int = 0,
) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ends with one of ``targets`` in a :class:`LoRALinear`
    (in place); freeze everything else. Returns the wrapped modules' names."""
    names = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and n.split(".")[-1] in targets]
    if not names:
        raise ValueError(f"no nn.Linear named one of {list(targets)} in the model")
    model.requires_grad_(False)
    for i, name in enumerate(names):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, init, seed + i))
    return names


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` with every :class:`LoRALinear` switched off (the reference of a LoRA run)."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError("the model has no LoRA layers (call add_lora first)")
    states = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, s in zip(layers, states):
            m.enabled = s


# ---------------------------------------------------------------------------------------------
# 4. Two KL terms at once
# ---------------------------------------------------------------------------------------------


def two_kl_gradients(
    policy: BinaryAutoregressive, reference: BinaryAutoregressive, seq_len: int, beta_reward: float, beta_loss: float
) -> dict[str, Tensor]:
    """Exact expected gradient (w.r.t. ``(a, b)``) of the KL part of a run with k1 in the reward
    (``beta_reward``) *and* token-level k3 in the loss (``beta_loss``), on-policy.

    Returns ``combined`` (the expectation of the per-sample gradient of both terms together),
    ``reverse`` (the exact gradient of KL(pi || pi_ref)), ``k3_loss`` (the expected gradient of the
    k3-in-loss term alone) and ``naive`` = ``(beta_reward + beta_loss) * reverse`` (what "the two
    betas add up" would give). The descent direction of the penalty is ``combined``.
    """
    for name, v in (("beta_reward", beta_reward), ("beta_loss", beta_loss)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    seqs, probs = policy.enumerate(seq_len)
    logp = policy.token_logprobs(seqs)
    with torch.no_grad():
        ref = reference.token_logprobs(seqs)
        rtg = (logp.detach() - ref).flip(-1).cumsum(-1).flip(-1)  # KL-to-go, detached (in the reward)
    per_sample = beta_reward * (logp * rtg).sum(-1) + beta_loss * of_log_ratio("k3", logp - ref).sum(-1)
    combined = torch.stack(torch.autograd.grad((probs * per_sample).sum(), [policy.a, policy.b])).detach()
    ex = exact_kl_gradients(policy, reference, seq_len)
    return {
        "combined": combined,
        "reverse": ex["true"],
        "k3_loss": ex["k3-in-loss"],
        "naive": (beta_reward + beta_loss) * ex["true"],
    }


def two_kl_bandit_optimum(ref_probs, rewards, beta_reward: float, beta_loss: float) -> Tensor:
    """The maximiser of ``E_pi[r] - beta_reward KL(pi || pi_ref) - beta_loss KL(pi_ref || pi)`` over a
    categorical policy: where on-policy k1-in-reward plus k3-in-loss (one token) settle.

    Stationarity: ``r_y - beta_reward log(pi_y/pi_ref_y) + beta_loss pi_ref_y/pi_y = lambda`` for every
    ``y``; the left side decreases in ``pi_y``, so each ``pi_y(lambda)`` is a bisection and ``lambda``
    is fixed by ``sum_y pi_y = 1`` (a second bisection). Exact to about 1e-14.
    """
    p, r = _bandit(ref_probs, rewards)
    if beta_reward < 0 or beta_loss < 0 or beta_reward + beta_loss <= 0:
        raise ValueError("beta_reward and beta_loss must be >= 0 and not both 0")

    def pi_of(lam: float) -> Tensor:
        # solve in u = log pi_y on [-800, 0] ... bisection on each coordinate at once
        lo = torch.full_like(p, -745.0)
        hi = torch.full_like(p, 50.0)
        for _ in range(200):
            u = 0.5 * (lo + hi)
            f = r - beta_reward * (u - p.log()) + beta_loss * p * torch.exp(-u) - lam
            lo = torch.where(f > 0, u, lo)
            hi = torch.where(f > 0, hi, u)
        return torch.exp(0.5 * (lo + hi))

    lo, hi = float(r.min()) - 1e3, float(r.max()) + 1e3
    for _ in range(200):
        lam = 0.5 * (lo + hi)
        if float(pi_of(lam).sum()) > 1:
            lo = lam
        else:
            hi = lam
    pi = pi_of(0.5 * (lo + hi))
    return pi / pi.sum()


# ---------------------------------------------------------------------------------------------
# 7. Sequence-level importance ratios and the KL correction
# ---------------------------------------------------------------------------------------------

OFFPOLICY_WEIGHTINGS = ("none", "token", "prefix", "sequence", "sequence-geomean")


def offpolicy_kl_gradient(
    policy: BinaryAutoregressive,
    sampler: BinaryAutoregressive,
    reference: BinaryAutoregressive,
    seq_len: int,
    estimator: str = "k3",
    weighting: str = "none",
) -> Tensor:
    """Exact expected gradient of a token-level in-loss KL term, summed over tokens, on sequences from ``sampler``.

    Each token's ``k(l_t)`` is multiplied by an importance weight carrying gradient:
    ``"none"`` (1), ``"token"`` (``w_t``, TRL's ``use_bias_correction_kl`` at token level),
    ``"prefix"`` (``prod_{s<=t} w_s``), ``"sequence"`` (``prod_s w_s`` on every token) or
    ``"sequence-geomean"`` (``(prod_s w_s)^{1/T}``, the GSPO ratio that TRL's
    ``use_bias_correction_kl`` multiplies the KL by when ``importance_sampling_level="sequence"``).
    Compare with ``kltutor.gradients.exact_kl_gradients(policy, reference, T)["true"]``.
    """
    if weighting not in OFFPOLICY_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {OFFPOLICY_WEIGHTINGS}, got {weighting!r}")

    def loss(logp: Tensor, old: Tensor, ref: Tensor, q: Tensor) -> Tensor:
        log_w = logp - old
        if weighting == "none":
            rho = torch.ones_like(logp)
        elif weighting == "token":
            rho = log_w.exp()
        elif weighting == "prefix":
            rho = log_w.cumsum(-1).exp()
        elif weighting == "sequence":
            rho = log_w.sum(-1, keepdim=True).exp().expand_as(logp)
        else:
            rho = log_w.mean(-1, keepdim=True).exp().expand_as(logp)
        return (q * (rho * of_log_ratio(estimator, logp - ref)).sum(-1)).sum()

    return expected_gradient_on_samples(policy, sampler, reference, seq_len, loss)


# ---------------------------------------------------------------------------------------------
# 8. Slips in public code
# ---------------------------------------------------------------------------------------------


def expected_in_loss(
    policy: BinaryAutoregressive, reference: BinaryAutoregressive, seq_len: int, fn: Callable[[Tensor], Tensor]
) -> tuple[float, Tensor]:
    """``(E[sum_t fn(l_t)], E[grad sum_t fn(l_t)])`` on-policy, sample held fixed (a per-token loss term).

    ``fn`` maps the per-token log-ratio ``l = log pi - log pi_ref`` to the term's value; the gradient
    is what autograd gives that term in a trainer, averaged exactly over every sequence.
    """
    seqs, probs = policy.enumerate(seq_len)
    logp = policy.token_logprobs(seqs)
    with torch.no_grad():
        ref = reference.token_logprobs(seqs)
    vals = fn(logp - ref).sum(-1)
    grad = torch.stack(torch.autograd.grad((probs * vals).sum(), [policy.a, policy.b], allow_unused=True))
    return float((probs * vals.detach()).sum()), grad.detach()


def expected_in_reward(
    policy: BinaryAutoregressive, reference: BinaryAutoregressive, seq_len: int, fn: Callable[[Tensor], Tensor]
) -> Tensor:
    """Expected gradient of a KL penalty put *in the reward* as the token mean of ``fn(l_t)`` subtracted from
    the sequence's reward (REINFORCE with a sequence reward): ``E_pi[mean_t fn(l_t) * grad log pi(y)]``.

    This is the gradient of the penalty's expectation through the score function; for ``fn = k1`` it is
    exactly ``grad KL(pi || pi_ref) / T``. A trainer *descends* it (the penalty lowers the reward).
    """
    seqs, probs = policy.enumerate(seq_len)
    logp = policy.token_logprobs(seqs)
    with torch.no_grad():
        penalty = fn(logp.detach() - reference.token_logprobs(seqs)).mean(-1)
    grad = torch.autograd.grad((probs * penalty * logp.sum(-1)).sum(), [policy.a, policy.b])
    return torch.stack(grad).detach()


#: KL implementation slips found in public RLHF teaching code, each checked in the file itself at
#: the commit given. ``value`` is what the code computes from ``l = log pi - log pi_ref``.
SLIPS: list[dict] = [
    {
        "repository": "natolambert/rlhf-book",
        "commit": "a66b0bf1103b590511e0503a2e9d93faea939a49",
        "file": "code/policy_gradients/loss.py",
        "lines": "23-33 (approx_kl3)",
        "code": "log_ratio = log_probs - log_probs_ref; return torch.expm1(log_ratio) - log_ratio",
        "slip": "k3 with the ratio inverted: e^l - 1 - l instead of e^-l - 1 + l (the default kl_estimator 'kl3'; used in the loss "
        "by the GRPO-family losses and in the reward by apply_reward_kl, code/policy_gradients/utils.py:165-182, "
        "for REINFORCE/RLOO/PPO; active when beta > 0, the shipped configurations leave beta at 0.0)",
        "value": lambda l: torch.expm1(l) - l,
    },
    {
        "repository": "natolambert/rlhf-book",
        "commit": "a66b0bf1103b590511e0503a2e9d93faea939a49",
        "file": "code/policy_gradients/loss.py",
        "lines": "49-59 (approx_kl1)",
        "code": "log_ratio = log_probs - log_probs_ref; return -log_ratio",
        "slip": "k1 with the sign reversed: -l; in the reward (apply_reward_kl) the KL penalty becomes a KL bonus",
        "value": lambda l: -l,
    },
    {
        "repository": "jingyaogong/minimind",
        "commit": "d65ef2c00ebc6082f9df11541e1b191655eddb00",
        "file": "trainer/train_grpo.py",
        "lines": "159 (kl_ref_val, logged as 'kl_ref'; same in trainer/train_agent.py:343)",
        "code": "kl_ref_val = ((ref_per_token_logps - per_token_logps) * completion_mask).sum().item() / ...",
        "slip": "the logged KL is -k1 (token mean of ref - logp); the loss's k3 on line 133 is correct",
        "value": lambda l: -l,
        "logged_only": True,
    },
]
