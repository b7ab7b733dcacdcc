"""A functional forward of Qwen2- and Llama-style ``transformers`` models over their own weights (chapter 9).

The sampler (:mod:`~kltutor.capstone.sampler`) and the log-prob passes
(:mod:`~kltutor.capstone.logprobs`) run the model's layers through these functions instead of
``model.forward`` for two reasons:

- **a preallocated KV cache**: decoding writes each step's keys and values into fixed buffers, so
  every decode step has the same shapes (a CUDA graph can replay it);
- **shared prompts**: the ``G`` completions of a GRPO group share their prompt. The prompt is run
  once per distinct prompt and its keys and values are reused by every completion of the group,
  in sampling, in the reference's scoring pass and in the training forward and backward (the
  gradient of the shared prompt positions accumulates over the group, as it must).

Each function follows the ``transformers`` code it replaces line by line (RMSNorm in float32,
rotary embeddings from the model's own rotary module, grouped-query attention with the model's
scaling, SiLU-gated MLP), and the tests check the hidden states, log-probs and gradients against
``model.forward``. Under bf16 autocast it computes what autocast computes: bf16 matrix products,
a float32 residual stream. :func:`support` says which models it can drive; others use
``model.forward`` (slower, same values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_TORCH = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
_GQA = _TORCH >= (2, 5)  # SDPA's enable_gqa
_RMS_NORM = hasattr(F, "rms_norm")

__all__ = ["support", "Weights", "rope_table", "layer", "attention", "prompt_index", "completion_hidden"]


def support(model) -> str | None:
    """``None`` when these functions can drive ``model``; otherwise the reason they cannot."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in ("qwen2", "llama"):
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not implemented (qwen2, llama are)"
    base = getattr(model, "model", None)
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(base, name):
            return f"the model has no model.{name}"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act={getattr(cfg, 'hidden_act', None)!r} (only 'silu' is implemented)"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])) or getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention is not implemented"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1 is not implemented"
    if getattr(base.rotary_emb, "rope_type", "default") in ("dynamic", "longrope"):
        return f"rope_type={base.rotary_emb.rope_type!r} depends on the sequence length"
    for lay in base.layers:
        attn, mlp = getattr(lay, "self_attn", None), getattr(lay, "mlp", None)
        if attn is None or mlp is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "a layer without q/k/v/o projections"
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            return "query/key normalisation is not implemented"
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return "an MLP without gate/up/down projections"
        for norm in (lay.input_layernorm, lay.post_attention_layernorm):
            if not hasattr(norm, "variance_epsilon"):
                return "a norm that is not RMSNorm"
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return "the output layer is not a bias-free Linear"
    for attr in ("logit_scale", "final_logit_softcapping"):
        if getattr(cfg, attr, None) not in (None, 1, 1.0):
            return f"{attr} is not implemented"
    return None


class Weights:
    """One model's weights as these functions read them.

    ``mm_dtype=None``: the parameters themselves (gradients flow, autocast applies): the training
    forward. Otherwise (the sampler): the query/key/value projections fused into one matrix and
    gate/up into another (fewer, larger matrix products, the same values), as detached copies in
    ``mm_dtype`` refreshed in place by :meth:`sync` (so a captured CUDA graph stays valid);
    embeddings and norms are views of the parameters.
    """

    def __init__(self, model, mm_dtype: torch.dtype | None = None):
        cfg = model.config
        base = model.model
        self.mm_dtype = mm_dtype
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.intermediate = cfg.intermediate_size
        self._pairs: list[tuple[list[Tensor], Tensor]] = []  # (parameters, the copy they are concatenated into)
        live = mm_dtype is None
        keep = (lambda p: p) if live else (lambda p: None if p is None else p.detach())
        self.embed = keep(base.embed_tokens.weight)
        self.padding_idx = getattr(base.embed_tokens, "padding_idx", None)  # nn.Embedding: no gradient into this row
        self.norm_w, self.norm_eps = keep(base.norm.weight), float(base.norm.variance_epsilon)
        self.layers = []
        for lay in base.layers:
            a, m = lay.self_attn, lay.mlp
            lw = {"ln1": keep(lay.input_layernorm.weight), "eps1": float(lay.input_layernorm.variance_epsilon),
                  "ln2": keep(lay.post_attention_layernorm.weight), "eps2": float(lay.post_attention_layernorm.variance_epsilon),
                  "o": self._fuse([a.o_proj.weight]), "ob": self._fuse_bias([a.o_proj]),
                  "down": self._fuse([m.down_proj.weight]), "downb": self._fuse_bias([m.down_proj]),
                  "scale": float(getattr(a, "scaling", self.head_dim ** -0.5))}
            if live:  # separate matrices: no concatenation in the forward, no split in the backward
                for name, lin in (("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj), ("gate", m.gate_proj), ("up", m.up_proj)):
                    lw[name], lw[name + "b"] = lin.weight, lin.bias
            else:
                lw |= {"qkv": self._fuse([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                       "qkvb": self._fuse_bias([a.q_proj, a.k_proj, a.v_proj]),
                       "gu": self._fuse([m.gate_proj.weight, m.up_proj.weight]), "gub": self._fuse_bias([m.gate_proj, m.up_proj])}
            self.layers.append(lw)
        self.head = keep(model.get_output_embeddings().weight)
        self.rotary = base.rotary_emb

    def _fuse(self, params: list[Tensor]) -> Tensor:
        if self.mm_dtype is None:
            return params[0]
        if len(params) == 1 and params[0].dtype == self.mm_dtype:
            return params[0].detach()  # a view: always current
        with torch.no_grad():
            copy = torch.cat([p.detach().to(self.mm_dtype) for p in params], 0)
        self._pairs.append((list(params), copy))
        return copy

    def _fuse_bias(self, linears) -> Tensor | None:
        if all(lin.bias is None for lin in linears):
            return None
        parts = [lin.bias if lin.bias is not None else torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                                   device=lin.weight.device) for lin in linears]
        return self._fuse(parts)

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the current parameters into the copies (in place)."""
        if not self._pairs:
            return
        dst, src = [], []
        for params, copy in self._pairs:
            start = 0
            for p in params:
                dst.append(copy[start:start + p.shape[0]])
                src.append(p.detach())
                start += p.shape[0]
        torch._foreach_copy_(dst, src)


def rope_table(w: Weights, length: int, device) -> tuple[Tensor, Tensor]:
    """cos and a signed sin ``[length, head_dim]`` (float32) for positions ``0 .. length-1`` from the
    model's rotary module; the sin's first half is negated, so that ``rotate_half(x) * sin`` is
    ``x.roll(head_dim // 2, -1) * signed_sin`` (the same products, exactly)."""
    pos = torch.arange(length, device=device)[None]
    with torch.autocast(torch.device(device).type, enabled=False):
        cos, sin = w.rotary(torch.zeros(1, dtype=torch.float32, device=device), pos)
    cos, sin = cos[0].float(), sin[0].float()
    h = sin.shape[-1] // 2
    return cos, torch.cat([-sin[:, :h], sin[:, h:]], -1)


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """transformers' Qwen2RMSNorm / LlamaRMSNorm: ``weight * (x * rsqrt(mean(x^2) + eps))`` in float32, cast
    back before the weight (``F.rms_norm`` computes the bracket in one call, the same arithmetic)."""
    dt = x.dtype
    if _RMS_NORM:
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(dt)
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dt)


def _cast(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    return t if dtype is None else t.to(dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Grouped-query attention: ``q`` ``[B, H, L, hd]``, ``k``, ``v`` ``[B, KV, S, hd]``, boolean ``mask``
    ``[B, 1, L, S]`` (True: may attend; every row needs one True). Returns ``[B, L, H*hd]``."""
    B, H, L, hd = q.shape
    if k.shape[1] == H:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    elif _GQA:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    else:  # torch < 2.5
        n = H // k.shape[1]
        o = F.scaled_dot_product_attention(q, k.repeat_interleave(n, 1), v.repeat_interleave(n, 1), attn_mask=mask, scale=scale)
    return o.transpose(1, 2).reshape(B, L, H * hd)


def layer(w: Weights, lw: dict, x: Tensor, cos: Tensor, sin: Tensor, kv) -> Tensor:
    """One decoder layer on hidden states ``x`` ``[B, L, D]`` with rotary ``cos`` and signed ``sin``
    (:func:`rope_table`) ``[B, 1, L, hd]``. ``kv(k, v)`` receives this layer's new keys and values
    ``[B, KV, L, hd]`` and returns the keys, values and boolean mask ``[B, 1, L, S]`` to attend over
    (a cache, or a shared prompt's prefix)."""
    B, L, _ = x.shape
    H, KV, hd = w.n_heads, w.n_kv, w.head_dim
    mm = w.mm_dtype
    h = _cast(_rms(x, lw["ln1"], lw["eps1"]), mm)
    if "qkv" in lw:  # fused: rotary on queries and keys at once
        qkv = F.linear(h, lw["qkv"], lw["qkvb"]).view(B, L, H + 2 * KV, hd).transpose(1, 2)  # [B, H+2KV, L, hd]
        qk, v = qkv[:, :H + KV], qkv[:, H + KV:]
        qk = (qk * cos + qk.roll(hd // 2, -1) * sin).to(v.dtype)  # float32 rotary, as under autocast
        q, k = qk[:, :H], qk[:, H:]
    else:
        q = F.linear(h, lw["q"], lw["qb"]).view(B, L, H, hd).transpose(1, 2)
        k = F.linear(h, lw["k"], lw["kb"]).view(B, L, KV, hd).transpose(1, 2)
        v = F.linear(h, lw["v"], lw["vb"]).view(B, L, KV, hd).transpose(1, 2)
        q = (q * cos + q.roll(hd // 2, -1) * sin).to(v.dtype)
        k = (k * cos + k.roll(hd // 2, -1) * sin).to(v.dtype)
    keys, values, mask = kv(k, v)
    o = attention(q, keys, values, mask, lw["scale"])
    x = x + F.linear(_cast(o, mm), lw["o"], lw["ob"])
    h = _cast(_rms(x, lw["ln2"], lw["eps2"]), mm)
    if "gu" in lw:
        gate, up = F.linear(h, lw["gu"], lw["gub"]).chunk(2, dim=-1)
    else:
        gate, up = F.linear(h, lw["gate"], lw["gateb"]), F.linear(h, lw["up"], lw["upb"])
    return x + F.linear(F.silu(gate) * up, lw["down"], lw["downb"])


def final_norm(w: Weights, x: Tensor) -> Tensor:
    return _rms(x, w.norm_w, w.norm_eps)


def prompt_index(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct rows of left-padded prompts: ``(unique_ids [U, P], unique_mask [U, P], index [B])``
    with ``prompt_ids == unique_ids[index]``."""
    key = torch.where(prompt_mask.bool(), prompt_ids, torch.full_like(prompt_ids, -1))
    uniq, index = torch.unique(key, dim=0, return_inverse=True)
    umask = uniq >= 0
    return torch.where(umask, uniq, prompt_ids.new_zeros(())), umask.long(), index


def completion_hidden(model, input_ids: Tensor, attention_mask: Tensor, n_prompt: int, w: Weights | None = None,
                      index: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Final-normed hidden states ``[B, T, D]`` that predict the completion tokens ``input_ids[:, n_prompt:]``
    (position ``n_prompt - 1`` for the first, completion token ``t - 1`` for token ``t``), each distinct
    prompt run once. The values equal ``model.model(...).last_hidden_state[:, n_prompt - 1:-1]`` with
    positions counted from the first real token, on every position before a row's first EOS (after it,
    ``transformers`` would mask the keys; nothing there is used). Gradients flow into the parameters
    (``w=None``: :class:`Weights` of the parameters themselves)."""
    w = w or Weights(model)
    P = n_prompt
    dev = input_ids.device
    pmask = attention_mask[:, :P]
    uids, umask, idx = index if index is not None else prompt_index(input_ids[:, :P], pmask)
    comp = input_ids[:, P:-1]  # the last completion token predicts nothing
    B, Tm1 = comp.shape
    U = uids.shape[0]
    lengths = pmask.sum(-1)
    cos_t, sin_t = rope_table(w, P + Tm1 + 1, dev)
    # the distinct prompts: causal over real tokens; a padding query attends to itself (never used)
    upos = (umask.cumsum(-1) - 1).clamp_min(0)
    eye = torch.eye(P, dtype=torch.bool, device=dev)
    umask_b = umask.bool()
    pm = ((torch.ones(P, P, dtype=torch.bool, device=dev).tril()[None] & umask_b[:, None, :]) | eye)[:, None]
    cpos = lengths[:, None] + torch.arange(Tm1, device=dev)[None]  # rotary positions of the completion inputs
    own = torch.ones(Tm1, Tm1, dtype=torch.bool, device=dev).tril()
    cm = torch.cat([umask_b[idx][:, None, :].expand(B, Tm1, P), own[None].expand(B, Tm1, Tm1)], -1)[:, None]  # [B,1,T-1,P+T-1]
    x_u = F.embedding(uids, w.embed, w.padding_idx)
    x_c = F.embedding(comp, w.embed, w.padding_idx)
    cu, su = cos_t[upos][:, None], sin_t[upos][:, None]
    cc, sc = cos_t[cpos][:, None], sin_t[cpos][:, None]
    for lw in w.layers:
        pref = {}

        def kv_prompt(k, v):
            pref["k"], pref["v"] = k, v
            return k, v, pm

        x_u = layer(w, lw, x_u, cu, su, kv_prompt)

        def kv_comp(k, v):
            return torch.cat([pref["k"][idx], k], 2), torch.cat([pref["v"][idx], v], 2), cm

        if Tm1:
            x_c = layer(w, lw, x_c, cc, sc, kv_comp)
    first = final_norm(w, x_u[:, -1])[idx][:, None]  # [B, 1, D]: the last prompt position predicts token 0
    return torch.cat([first, final_norm(w, x_c)], 1) if Tm1 else first
