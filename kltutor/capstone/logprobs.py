"""Per-token log-probabilities, entropy and exact full-vocabulary KL, chunked (chapter ``ch-capstone``).

A float32 log-softmax over ``[batch, time, vocab]`` is the largest tensor of an RL step on a real
vocabulary (64 x 1024 x 152k x 4 bytes = 40 GB). These functions never build it: they take the last
hidden states, flatten ``[batch, time]`` into rows and push ``chunk`` rows at a time through the
output layer and the log-softmax; with gradient enabled each chunk is recomputed in the backward
pass (activation checkpointing), so only one chunk of logits is alive at any moment.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from kltutor.capstone.fast import decoder

__all__ = [
    "chunk_stats",
    "chunked_token_stats",
    "naive_token_stats",
    "hidden_states",
    "completion_hidden",
    "sequence_stats",
]


def chunk_stats(
    h: Tensor,
    targets: Tensor,
    head_w: Tensor,
    ref_h: Tensor | None,
    ref_w: Tensor | None,
    inv_temp: float,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """One chunk of rows ``h`` ``[N, d]`` through the output layer ``head_w`` ``[V, d]``: a ``[N, 4]`` tensor of
    the log-prob of ``targets``, the policy's entropy and, when the reference's ``ref_h`` and ``ref_w`` are
    given, the reference's log-prob of ``targets`` and the exact ``KL(pi || pi_ref)`` over the vocabulary
    (zeros otherwise). Logits are multiplied by ``inv_temp``; the log-softmax runs in ``dtype``."""
    with torch.autocast(h.device.type, enabled=False):  # the output layer and log-softmax in ``dtype``, always
        logits = (h.to(dtype) @ head_w.to(dtype).T) * inv_temp
        lsm = torch.log_softmax(logits, -1)
        logp = lsm.gather(-1, targets[:, None]).squeeze(-1)
        p = lsm.exp()
        entropy = -(p * lsm).sum(-1)
        if ref_h is None:
            return torch.stack([logp, entropy, torch.zeros_like(logp), torch.zeros_like(logp)], -1).float()
        ref_lsm = torch.log_softmax((ref_h.to(dtype) @ ref_w.to(dtype).T) * inv_temp, -1)
        ref_logp = ref_lsm.gather(-1, targets[:, None]).squeeze(-1)
        kl = (p * (lsm - ref_lsm)).sum(-1)  # KL(pi(.|s_t) || pi_ref(.|s_t)), the whole vocabulary
        return torch.stack([logp, entropy, ref_logp, kl], -1).float()


def chunked_token_stats(
    hidden: Tensor,
    head_weight: Tensor,
    targets: Tensor,
    ref_hidden: Tensor | None = None,
    ref_head_weight: Tensor | None = None,
    chunk: int = 1024,
    temperature: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Token statistics from hidden states ``[batch, time, d]`` and output weights ``[vocab, d]``.

    Returns float32 ``[batch, time]`` tensors: ``logp`` (log-prob of ``targets``), ``entropy`` of the
    policy's next-token distribution, and -- when the reference's hidden states and head are given --
    ``ref_logp`` and ``kl``, the exact :math:`\\mathrm{KL}(\\pi_\\theta(\\cdot|s_t)\\|\\pi_\\text{ref}(\\cdot|s_t))`.
    Logits are divided by ``temperature`` (the sampling distribution). The output layer and the
    log-softmax run in ``dtype`` (float32 by default, also under autocast; ``torch.bfloat16``
    imitates a bf16 inference engine). Gradients flow into ``hidden`` and ``head_weight`` (the
    reference's inputs should be detached). When all rows fit in one chunk nothing is recomputed in
    the backward pass (the chunk's activations are the same size either way).
    """
    if hidden.dim() != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [batch, time, d] and targets [batch, time]; got {tuple(hidden.shape)} and {tuple(targets.shape)}"
        )
    if (ref_hidden is None) != (ref_head_weight is None):
        raise ValueError("give both ref_hidden and ref_head_weight, or neither")
    if ref_hidden is not None and ref_hidden.shape[:2] != hidden.shape[:2]:
        raise ValueError(
            f"ref_hidden {tuple(ref_hidden.shape)} must match hidden {tuple(hidden.shape)} in batch and time"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    B, T, D = hidden.shape
    h = hidden.reshape(B * T, D)
    y = targets.reshape(B * T)
    rh = ref_hidden.reshape(B * T, -1) if ref_hidden is not None else None
    outs = []
    for s in range(0, B * T, chunk):
        args = (
            h[s : s + chunk],
            y[s : s + chunk],
            head_weight,
            rh[s : s + chunk] if rh is not None else None,
            ref_head_weight,
            1.0 / temperature,
            dtype,
        )
        if B * T > chunk and torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad):
            outs.append(checkpoint(chunk_stats, *args, use_reentrant=False))
        else:
            outs.append(chunk_stats(*args))
    out = torch.cat(outs, 0).reshape(B, T, 4)
    stats = {"logp": out[..., 0], "entropy": out[..., 1]}
    if ref_hidden is not None:
        stats["ref_logp"] = out[..., 2]
        stats["kl"] = out[..., 3]
    return stats


def naive_token_stats(
    logits: Tensor, targets: Tensor, ref_logits: Tensor | None = None, temperature: float = 1.0
) -> dict[str, Tensor]:
    """The same statistics from full ``[batch, time, vocab]`` logits (the reference implementation for tests)."""
    lsm = torch.log_softmax(logits.float() / temperature, -1)
    stats = {"logp": lsm.gather(-1, targets[..., None]).squeeze(-1), "entropy": -(lsm.exp() * lsm).sum(-1)}
    if ref_logits is not None:
        ref_lsm = torch.log_softmax(ref_logits.float() / temperature, -1)
        stats["ref_logp"] = ref_lsm.gather(-1, targets[..., None]).squeeze(-1)
        stats["kl"] = (lsm.exp() * (lsm - ref_lsm)).sum(-1)
    return stats


def hidden_states(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Last hidden states ``[batch, time, d]`` of a causal LM, positions counted from the first real
    token (so left padding does not shift them)."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    out = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    return out.last_hidden_state


def completion_hidden(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    n_prompt: int,
    prompt_index=None,
    activations=None,
    fast: bool = True,
) -> Tensor:
    """The last hidden states ``[batch, T, d]`` that predict the completion tokens ``input_ids[:, n_prompt:]``:
    ``hidden_states(...)[:, n_prompt - 1:-1]``, or with ``fast`` (:mod:`kltutor.capstone.fast`), for the
    models it supports, :func:`kltutor.capstone.fast.decoder.completion_hidden` (each distinct prompt run
    once; ``prompt_index`` from :func:`kltutor.capstone.fast.decoder.prompt_index` if already known;
    ``activations``: the sampler's recording of this batch, :class:`kltutor.capstone.fast.decoder.Activations`,
    used only while :meth:`~kltutor.capstone.fast.decoder.Activations.usable`). The same values either way,
    up to rounding."""
    if fast and decoder.support(model) is None:
        return decoder.completion_hidden(
            model, input_ids, attention_mask, n_prompt, index=prompt_index, known=activations
        )
    return hidden_states(model, input_ids, attention_mask)[:, n_prompt - 1 : -1]


def sequence_stats(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    n_prompt: int,
    ref_model=None,
    chunk: int = 1024,
    temperature: float = 1.0,
    ref_hidden: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    prompt_index=None,
    activations=None,
    fast: bool = True,
) -> dict[str, Tensor]:
    """Statistics of the completion tokens ``input_ids[:, n_prompt:]`` (``[batch, time]`` each).

    The hidden state at position ``t-1`` predicts token ``t`` (:func:`completion_hidden`); only the
    completion positions are sent through the output layer. ``ref_hidden`` (the reference's last
    hidden states on the completion positions, e.g. :attr:`kltutor.capstone.sampler.Scores.ref_hidden`)
    replaces the reference's forward pass when given; ``ref_model`` still supplies its output layer.
    ``activations`` (:attr:`kltutor.capstone.sampler.SampleBatch.activations`): the policy's matrix
    products recorded while sampling this batch; while the parameters are unchanged since (the first
    update) the forward takes them instead of recomputing them. ``fast=False``: ``model.forward`` for both
    models (:mod:`kltutor.capstone.fast`).
    """
    h = completion_hidden(model, input_ids, attention_mask, n_prompt, prompt_index, activations, fast)
    targets = input_ids[:, n_prompt:]
    rh = rw = None
    if ref_model is not None:
        with torch.no_grad():
            rh = (
                ref_hidden
                if ref_hidden is not None
                else completion_hidden(ref_model, input_ids, attention_mask, n_prompt, prompt_index, fast=fast)
            )
            rw = ref_model.get_output_embeddings().weight
    return chunked_token_stats(h, model.get_output_embeddings().weight, targets, rh, rw, chunk, temperature, dtype)
