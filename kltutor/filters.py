"""KL-like statistics used as rejection filters, computed exactly on chapter 3's binary autoregressive toy.

Training stacks now drop whole tokens or sequences when a statistic of the log-ratio between the trainer's
policy :math:`\\pi` and the rollout engine's sampler :math:`q` is too large: DeepSeek-V3.2's off-policy
sequence masking (negative-advantage sequences only), verl's ``rollout_rs`` options, TRL's
``vllm_importance_sampling_mode="sequence_mask"`` and ``off_policy_mask_threshold``, OpenRLHF's
``--algo.advantage.is_correction_*`` gates (IcePop's token mask among them). This module states each rule
as a function of one sequence's token log-probabilities (our own code, one function per rule; the
libraries' own functions are run on the same toy by :mod:`kltutor.trainers.filters`, and the stored
verdicts must agree), enumerates every sequence of the toy, and computes

- which sequences (or tokens) each rule rejects (:func:`keep_masks`),
- the expected policy gradient it then computes (:func:`expected_gradient`), and its bias against the
  exact gradient of :math:`J(\\pi)=\\mathbb E_\\pi[R]` (:func:`exact_gradient`),
- the probability that a sequence is rejected as its length grows, for a summed and a mean statistic
  against the same threshold (:func:`rejection_by_length`).

The estimator each rule feeds is the one its library uses at the first update of a batch (``w = 1``):
``sum_t c_t(y) A(y) grad log pi(y_t | y_<t)`` with ``A = R - E_q[R]`` (the group mean of a large group drawn
from the sampler) and ``c_t`` the rule's coefficient: the sequence ratio :math:`\\pi(y)/q(y)` times the keep
mask (TRL's sequence mask, verl with ``rollout_is="sequence"``, DeepSeek-V3.2's masking on top of a
sequence-level correction), or the token ratio times the token's keep flag (OpenRLHF). Without a filter the
sequence-ratio estimator is exact (any constant baseline drops out, since :math:`\\mathbb E_\\pi[\\nabla\\log\\pi]=0`);
with one, the baseline no longer drops out and the dropped sequences' terms are missing.

Introduced in chapter 8 (section "KL estimators as rejection filters", ``sec-practice-filters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kltutor.toys.autoregressive import BinaryAutoregressive, all_binary_sequences

__all__ = [
    "TOY",
    "RULES",
    "Rule",
    "toy_models",
    "reward",
    "toy_batch",
    "keep_masks",
    "coefficients",
    "exact_gradient",
    "expected_gradient",
    "rule_table",
    "rejection_by_length",
]

#: The toy: the trainer's policy (chapter 3's), a mismatched sampler (the rollout engine), the length.
TOY = {"policy": (0.3, -0.4), "sampler": (0.7, -0.9), "seq_len": 6}


@dataclass(frozen=True)
class Rule:
    """One rejection rule: its library, the flags that turn it on, and what it computes."""

    name: str  # short unique id, e.g. "verl.seq_mean_k3"
    library: str  # "TRL", "verl", "OpenRLHF", "DeepSeek-V3.2" (the paper's rule), "none"
    flags: str  # in the library's own terms
    level: str  # "token" or "sequence": what one rejection removes
    statistic: str  # the statistic, in the book's notation
    weight: str  # "sequence" (pi(y)/q(y) on every token) or "token" (pi_t/q_t on token t)
    negative_only: bool = False  # rejects only sequences with A < 0 (DeepSeek-V3.2)


#: Every rule the chapter compares, with the thresholds it uses on the toy.
RULES: tuple[Rule, ...] = (
    Rule("none.sequence", "none", "no filter, sequence ratio", "sequence", "-", "sequence"),
    Rule("none.token", "none", "no filter, per-token ratio", "token", "-", "token"),
    Rule(
        "trl.sequence_mask",
        "TRL",
        'vllm_importance_sampling_mode="sequence_mask", vllm_importance_sampling_clip_max=3.0 (defaults)',
        "sequence",
        "pi(y)/q(y) > 3",
        "sequence",
    ),
    Rule(
        "trl.opsm",
        "TRL",
        "off_policy_mask_threshold=0.02",
        "sequence",
        "A < 0 and mean_t log(q_t/pi_t) > 0.02",
        "sequence",
        negative_only=True,
    ),
    Rule(
        "symmetric.opsm",
        "none",
        "the same statistic, both signs of A (for comparison)",
        "sequence",
        "mean_t log(q_t/pi_t) > 0.02",
        "sequence",
    ),
    Rule(
        "verl.token_k1",
        "verl",
        'rollout_rs="token_k1", rollout_rs_threshold="0.5_2.0"',
        "token",
        "log(q_t/pi_t) outside [log 0.5, log 2]",
        "sequence",
    ),
    Rule(
        "verl.token_k3",
        "verl",
        'rollout_rs="token_k3", rollout_rs_threshold=0.1',
        "token",
        "k3(pi_t/q_t) > 0.1",
        "sequence",
    ),
    Rule(
        "verl.seq_sum_k3",
        "verl",
        'rollout_rs="seq_sum_k3", rollout_rs_threshold=0.2',
        "sequence",
        "sum_t k3(pi_t/q_t) > 0.2",
        "sequence",
    ),
    Rule(
        "verl.seq_mean_k3",
        "verl",
        'rollout_rs="seq_mean_k3", rollout_rs_threshold=0.04',
        "sequence",
        "mean_t k3(pi_t/q_t) > 0.04",
        "sequence",
    ),
    Rule(
        "verl.seq_max_k2",
        "verl",
        'rollout_rs="seq_max_k2", rollout_rs_threshold=0.1',
        "sequence",
        "max_t k2 > 0.1",
        "sequence",
    ),
    Rule(
        "openrlhf.token.ratio",
        "OpenRLHF",
        "--algo.advantage.is_correction_level token (mode mask, gating ratio, threshold 0.5 5.0: IcePop-style)",
        "token",
        "pi_t/q_t outside [0.5, 5]",
        "token",
    ),
    Rule(
        "openrlhf.seq.ratio",
        "OpenRLHF",
        "--algo.advantage.is_correction_level seq (gating ratio, 0.5 5.0)",
        "sequence",
        "exp(mean_t log(pi_t/q_t)) outside [0.5, 5]",
        "token",
    ),
    Rule(
        "openrlhf.seq.binary_kl",
        "OpenRLHF",
        "--algo.advantage.is_correction_level seq --algo.advantage.is_correction_gating binary_kl "
        "--algo.advantage.is_correction_threshold 0.02",
        "sequence",
        "mean_t binKL(q_t, pi_t) > 0.02",
        "token",
    ),
    Rule(
        "openrlhf.token.tv",
        "OpenRLHF",
        "--algo.advantage.is_correction_level token --algo.advantage.is_correction_gating tv "
        "--algo.advantage.is_correction_threshold 0.15",
        "token",
        "|q_t - pi_t| > 0.15",
        "token",
    ),
)
_RULES = {r.name: r for r in RULES}


def _rule(name: str) -> Rule:
    if name not in _RULES:
        raise ValueError(f"unknown rule {name!r}; choose one of {list(_RULES)}")
    return _RULES[name]


def toy_models(policy=None, sampler=None) -> tuple[BinaryAutoregressive, BinaryAutoregressive]:
    """The trainer's policy and the rollout engine's sampler (defaults: :data:`TOY`)."""
    return BinaryAutoregressive(*(policy or TOY["policy"])), BinaryAutoregressive(*(sampler or TOY["sampler"]))


def reward(seqs: Tensor) -> Tensor:
    """The toy's task reward: the fraction of ones in the sequence, ``[n]``."""
    return seqs.mean(-1)


def toy_batch(seq_len: int | None = None, policy=None, sampler=None) -> dict[str, Tensor]:
    """Every sequence with its trainer and sampler token log-probabilities, probabilities and advantage.

    Keys: ``seqs [n, T]``, ``logp`` (trainer, detached), ``samp_logp`` (sampler), ``q`` and ``pi`` (sequence
    probabilities), ``reward`` and ``adv = reward - E_q[reward]``.
    """
    seq_len = TOY["seq_len"] if seq_len is None else seq_len
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or not 1 <= seq_len <= 14:
        raise ValueError(f"seq_len must be an integer in [1, 14] (2**seq_len sequences), got {seq_len!r}")
    pi, q = toy_models(policy, sampler)
    seqs = all_binary_sequences(seq_len)
    with torch.no_grad():
        logp, samp = pi.token_logprobs(seqs), q.token_logprobs(seqs)
    qy, py, r = samp.sum(-1).exp(), logp.sum(-1).exp(), reward(seqs)
    return {"seqs": seqs, "logp": logp, "samp_logp": samp, "q": qy, "pi": py, "reward": r, "adv": r - (qy * r).sum()}


def _k3(log_ratio: Tensor) -> Tensor:
    return torch.expm1(log_ratio) - log_ratio  # r - 1 - log r with r = pi/q: KL(q || pi) per token, >= 0


def _binary_kl(p: Tensor, q: Tensor) -> Tensor:
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


def keep_masks(name: str, logp: Tensor, samp_logp: Tensor, adv: Tensor) -> Tensor:
    """The rule's keep mask ``[n, T]`` (1 = the token stays in the loss) for full-length sequences.

    ``logp``/``samp_logp`` are the trainer's and the sampler's token log-probabilities ``[n, T]``, ``adv``
    the advantages ``[n]``. Our statement of each library's rule (see :data:`RULES`); the libraries' own
    functions give the same masks (:mod:`kltutor.trainers.filters`, checked by ``make trainers-test``).
    """
    _rule(name)
    lr = logp - samp_logp  # log(pi_t / q_t)
    n, T = lr.shape
    ones = torch.ones_like(lr)
    seq = lambda keep: keep.to(lr.dtype).unsqueeze(-1).expand(n, T)  # noqa: E731
    if name.startswith("none."):
        return ones
    if name == "trl.sequence_mask":
        return seq(lr.sum(-1).exp() <= 3.0)
    if name in ("trl.opsm", "symmetric.opsm"):
        low_kl = (-lr).mean(-1) <= 0.02
        return seq(low_kl | (adv >= 0)) if name == "trl.opsm" else seq(low_kl)
    if name == "verl.token_k1":
        return ((-lr >= math.log(0.5)) & (-lr <= math.log(2.0))).to(lr.dtype)
    if name == "verl.token_k3":
        return (_k3(lr) <= 0.1).to(lr.dtype)
    if name == "verl.seq_sum_k3":
        return seq(_k3(lr).sum(-1) <= 0.2)
    if name == "verl.seq_mean_k3":
        return seq(_k3(lr).mean(-1) <= 0.04)
    if name == "verl.seq_max_k2":
        return seq((0.5 * lr**2).max(-1).values <= 0.1)
    if name == "openrlhf.token.ratio":
        w = lr.exp()
        return ((w >= 0.5) & (w <= 5.0)).to(lr.dtype)
    if name == "openrlhf.seq.ratio":
        g = lr.mean(-1).exp()
        return seq((g >= 0.5) & (g <= 5.0))
    p, q = samp_logp.exp().clamp(1e-6, 1 - 1e-6), logp.exp().clamp(1e-6, 1 - 1e-6)
    if name == "openrlhf.seq.binary_kl":
        return seq(_binary_kl(p, q).mean(-1) <= 0.02)
    return ((p - q).abs() <= 0.15).to(lr.dtype)  # openrlhf.token.tv


def coefficients(name: str, logp: Tensor, samp_logp: Tensor, keep: Tensor) -> Tensor:
    """``c_t(y)``: the keep mask times the rule's weight (the sequence ratio on every token, or each token's own ratio)."""
    lr = logp - samp_logp
    w = lr.exp() if _rule(name).weight == "token" else lr.sum(-1, keepdim=True).exp().expand_as(lr)
    return keep * w


def exact_gradient(seq_len: int | None = None, policy=None) -> Tensor:
    """``grad_(a, b) E_pi[R]``, exactly (the gradient every rule should estimate)."""
    b = toy_batch(seq_len, policy)
    pi, _ = toy_models(policy)
    lp = pi.token_logprobs(b["seqs"]).sum(-1)
    (g_a, g_b) = torch.autograd.grad((b["pi"] * b["reward"] * lp).sum(), [pi.a, pi.b])
    return torch.stack([g_a, g_b]).detach()


def expected_gradient(name: str, seq_len: int | None = None, keep: Tensor | None = None, policy=None, sampler=None):
    """``E_q[sum_t c_t A grad log pi_t]`` for the rule (or for a given keep mask ``[n, T]``), exactly."""
    b = toy_batch(seq_len, policy, sampler)
    keep = keep_masks(name, b["logp"], b["samp_logp"], b["adv"]) if keep is None else keep
    c = coefficients(name, b["logp"], b["samp_logp"], keep)
    pi, _ = toy_models(policy, sampler)
    lp = pi.token_logprobs(b["seqs"])
    surrogate = (b["q"].unsqueeze(-1) * c * b["adv"].unsqueeze(-1) * lp).sum()
    g_a, g_b = torch.autograd.grad(surrogate, [pi.a, pi.b])
    return torch.stack([g_a, g_b]).detach()


def rule_table(seq_len: int | None = None):
    """One row per rule: what it rejects (fraction of sequences touched, their sampler mass, of tokens),
    the expected gradient and its bias against the exact gradient (a pandas DataFrame)."""
    import pandas as pd

    b = toy_batch(seq_len)
    true = exact_gradient(seq_len)
    rows = []
    for r in RULES:
        keep = keep_masks(r.name, b["logp"], b["samp_logp"], b["adv"])
        touched = (keep < 1).any(-1)
        g = expected_gradient(r.name, seq_len, keep)
        rows.append(
            {
                "rule": r.name,
                "library": r.library,
                "rejects": r.statistic,
                "weight": r.weight,
                "sequences touched": int(touched.sum()),
                "sampler mass touched": float(b["q"][touched].sum()),
                "tokens rejected (sampler-weighted)": float((b["q"].unsqueeze(-1) * (1 - keep)).sum() / keep.shape[1]),
                "d/da": float(g[0]),
                "d/db": float(g[1]),
                "|bias|": float((g - true).norm()),
            }
        )
    return pd.DataFrame(rows)


def rejection_by_length(
    lengths, threshold: float, statistic: str = "k3", policy=None, sampler=None
) -> dict[str, list[float]]:
    """Probability under the sampler that a sequence is rejected, by length, for a summed and a mean statistic.

    ``statistic`` is ``"k1"`` (``log q_t/pi_t``) or ``"k3"`` (``k3(pi_t/q_t)``); a sequence is rejected when
    the sum (``"sum"``) or the mean (``"mean"``) of its per-token statistic exceeds ``threshold`` (verl's
    ``seq_sum_*`` and ``seq_mean_*`` with an upper bound). Exact, by enumeration. ``policy`` and ``sampler``
    are ``(a, b)`` pairs (default :data:`TOY`); with ``b = 0`` for both the per-token mismatch is the same at
    every position.
    """
    if statistic not in ("k1", "k3"):
        raise ValueError(f"statistic must be 'k1' or 'k3', got {statistic!r}")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    out = {"length": [], "sum": [], "mean": []}
    for T in lengths:
        b = toy_batch(int(T), policy, sampler)
        lr = b["logp"] - b["samp_logp"]
        s = _k3(lr) if statistic == "k3" else -lr
        out["length"].append(int(T))
        out["sum"].append(float(b["q"][s.sum(-1) > threshold].sum()))
        out["mean"].append(float(b["q"][s.mean(-1) > threshold].sum()))
    return out
