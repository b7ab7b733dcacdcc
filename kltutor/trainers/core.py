"""Exact expected gradients of a library's KL code on ``ch-placements``'s toy, and their classification.

A *setting* is one way a library turns a KL term on (estimator x in-reward / in-loss x its correction
flags). Its adapter wraps the library's own code in one of two shapes:

- ``placement="loss"``: ``fn(logp, ref_logp, old_logp, mask) -> scalar loss`` on a batch of one
  sequence, differentiable in ``logp``; the library's own aggregation included. ``scale`` is the factor
  the library puts in front of the per-sequence token sum on that batch (``beta / T`` for a token mean).
- ``placement="reward"``: ``fn(logp, ref_logp, mask) -> advantages [B, T]`` of the KL term alone (task
  reward zero), detached, computed by the library's reward shaping and advantage code; the policy-gradient
  loss ``-(A * logp).sum()`` is what a PPO/GRPO surrogate differentiates to at ``w = 1``.

:func:`expected_gradient` sums ``q(y) * grad L(y)`` over all ``2**T`` sequences, ``q`` the sampler's exact
probability (the policy itself, or a stale ``pi_old``), and divides by ``scale``; the result is compared
with :func:`reference_gradients` (``kltutor.gradients``, per-sequence sums, beta = 1) by :func:`classify`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kltutor import gradients as G
from kltutor.toys.autoregressive import BinaryAutoregressive, all_binary_sequences

__all__ = [
    "TOY",
    "Setting",
    "CLASSES",
    "toy_models",
    "reference_gradients",
    "expected_gradient",
    "classify",
]

# Chapter 3's parameters (book/03_placements.md, `parameters` cell): policy, reference, stale sampler, length.
TOY = {"policy": (0.3, -0.4), "reference": (-0.2, 0.5), "old": (0.1, -0.1), "seq_len": 5}

# The verdicts, in the order the book lists them.
CLASSES = (
    "exact reverse-KL gradient",
    "token-level k2 (biased for T > 1)",
    "per-token forward KL",
    "zero in expectation",
    "other",
)


@dataclass
class Setting:
    """One KL setting of one library, with the callable that runs the library's own code on a batch."""

    library: str  # "TRL", "verl", "OpenRLHF"
    trainer: str  # e.g. "GRPOTrainer", "PPO actor"
    name: str  # a short unique id, e.g. "trl.grpo.k3.ratio"
    flags: str  # how to turn it on, in the library's own terms
    placement: str  # "loss" or "reward"
    estimator: str  # "k1", "k2", "k3", "abs", "k1+" ...
    level: str  # "token" or "sequence"
    correction: str  # the correction flag(s) in force, or "none"
    fn: Callable = field(repr=False)
    scale: float = 1.0  # factor in front of the per-sequence token sum (beta / T for a token mean)
    default: bool = False  # the library's default KL setting for this trainer
    note: str = ""
    source: str = ""  # where the code lives, relative to the library's package root

    def record(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "library",
                "trainer",
                "name",
                "flags",
                "placement",
                "estimator",
                "level",
                "correction",
                "scale",
                "default",
                "note",
                "source",
            )
        }


def toy_models() -> tuple[BinaryAutoregressive, BinaryAutoregressive, BinaryAutoregressive, int]:
    """The policy, reference and stale sampler of chapter 3, and its sequence length."""
    return (
        BinaryAutoregressive(*TOY["policy"]),
        BinaryAutoregressive(*TOY["reference"]),
        BinaryAutoregressive(*TOY["old"]),
        TOY["seq_len"],
    )


def reference_gradients(policy, reference, seq_len: int) -> dict[str, Tensor]:
    """The candidate vectors a library's gradient is compared with (per-sequence sums, beta = 1)."""
    g = G.exact_kl_gradients(policy, reference, seq_len, level="token")
    return {
        "exact reverse-KL gradient": g["true"],
        "token-level k2 (biased for T > 1)": g["k2-in-loss"],
        "per-token forward KL": g["k3-in-loss"],
        "zero in expectation": torch.zeros(2, dtype=torch.float64),
    }


def expected_gradient(setting: Setting, policy, reference, old, seq_len: int, regime: str = "on-policy") -> Tensor:
    """Exact ``E_q[grad of the setting's loss] / scale`` w.r.t. ``(a, b)``, by enumerating all sequences.

    On-policy, ``q`` is the policy and ``old_logp`` equals ``logp`` (detached); for ``regime="stale"``
    (the second and later updates on a batch) ``q`` is ``old`` and ``old_logp`` its log-probabilities; only
    in-loss settings have a stale regime (an in-reward penalty is frozen at sampling time). One sequence
    per call, so a library's batch-level aggregation sees exactly one sequence of ``seq_len`` tokens.
    """
    if regime not in ("on-policy", "stale"):
        raise ValueError(f"regime must be 'on-policy' or 'stale', got {regime!r}")
    if regime == "stale" and setting.placement != "loss":
        raise ValueError(f"{setting.name}: only in-loss settings have a stale regime")
    sampler = policy if regime == "on-policy" else old
    seqs = all_binary_sequences(seq_len)
    with torch.no_grad():
        q = sampler.sequence_logprobs(seqs).exp()
        ref_all = reference.token_logprobs(seqs)
        old_all = sampler.token_logprobs(seqs)
    params = [policy.a, policy.b]
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(seqs.shape[0]):
        logp = policy.token_logprobs(seqs[i : i + 1])
        ref_logp = ref_all[i : i + 1].clone()
        old_logp = logp.detach().clone() if regime == "on-policy" else old_all[i : i + 1].clone()
        mask = torch.ones_like(ref_logp)
        if setting.placement == "loss":
            loss = setting.fn(logp, ref_logp, old_logp, mask)
        elif setting.placement == "reward":
            adv = setting.fn(logp.detach().clone(), ref_logp, mask)
            if adv.requires_grad:
                raise RuntimeError(f"{setting.name}: the advantages must be detached")
            loss = -(adv.to(logp.dtype) * logp).sum()
        else:
            raise ValueError(f"unknown placement {setting.placement!r}")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        g = torch.stack([torch.zeros((), dtype=torch.float64) if x is None else x for x in grads])
        total = total + q[i] * g.detach()
    return total / setting.scale


def classify(gradient: Tensor, references: dict[str, Tensor], rtol: float = 1e-5) -> tuple[str, float]:
    """The first candidate within ``rtol * max(1, |candidate|)`` of ``gradient``, and that distance.

    The libraries compute in float32 (OpenRLHF and verl cast log-probabilities with ``.float()``), so
    agreement is to about 1e-7 relative; the candidates differ from each other by more than 1e-2 on the
    toy (the tests check), so 1e-5 separates "equal up to float32 rounding" from "different".
    Returns ``("other", distance to the nearest candidate)`` when none matches.
    """
    best_d = float("inf")
    for name, ref in references.items():
        d = float((gradient - ref).norm())
        if d <= rtol * max(1.0, float(ref.norm())):
            return name, d
        best_d = min(best_d, d)
    return "other", best_d
