"""A functional forward of Qwen2- and Llama-style ``transformers`` models over their own weights (``ch-capstone``).

The sampler (:mod:`~kltutor.capstone.sampler`) and the log-prob passes
(:mod:`~kltutor.capstone.logprobs`) run the model's layers through these functions instead of
``model.forward`` for two reasons:

- **a preallocated KV cache**: decoding writes each step's keys and values into fixed buffers, so
  every decode step has the same shapes (a CUDA graph can replay it);
- **shared prompts**: the ``G`` completions of a GRPO group share their prompt. The prompt is run
  once per distinct prompt and its keys and values are reused by every completion of the group,
  in sampling, in the reference's scoring pass and in the training forward and backward (the
  gradient of the shared prompt positions accumulates over the group, as it must);
- **no forward computed twice**: the sampler can record the output of every matrix product of the
  policy while it decodes (:class:`Activations`). The first update after sampling runs at the very
  parameters the sampler used, so its forward pass takes those outputs instead of recomputing them
  (:class:`Known`: a matrix product whose value is given and whose backward is the ordinary one);
  only the cheap elementwise parts (norms, rotary, attention, SiLU) are run again, to build the
  autograd graph. The gradient is the same function of the same numbers; the tests compare it with
  a recomputed forward and with ``model.forward``.

On the CPU, attention is two batched matrix products and a softmax over an additive mask (at these
sizes faster than the fused SDPA kernel, which on a GPU is used instead), residual additions are
folded into the matrix products (``addmm``), and the products without autograd go through
:mod:`~kltutor.capstone.fast.onednn`.

Each function follows the ``transformers`` code it replaces line by line (RMSNorm in float32,
rotary embeddings from the model's own rotary module, grouped-query attention with the model's
scaling, SiLU-gated MLP), and the tests check the hidden states, log-probs and gradients against
``model.forward``. Under bf16 autocast it computes what autocast computes: bf16 matrix products,
a float32 residual stream. :func:`support` says which models it can drive; others use
``model.forward`` (slower, same values), as every model does with ``fast=False``
(:mod:`kltutor.capstone.fast`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kltutor.capstone.fast.onednn import mm_nt, mm_tn

_TORCH = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
_GQA = _TORCH >= (2, 5)  # SDPA's enable_gqa
_RMS_NORM = hasattr(F, "rms_norm")


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active on ``device_type``, or None (torch >= 2.1)."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        on = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not on:
        return None
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


__all__ = [
    "support",
    "Weights",
    "Activations",
    "Known",
    "KnownQKV",
    "KnownSwiGLU",
    "rope_table",
    "attn_mask",
    "layer",
    "attention",
    "final_norm",
    "prompt_index",
    "completion_hidden",
]


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
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])) or getattr(
        cfg, "use_sliding_window", False
    ):
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
    forward. Otherwise (the sampler, the reference's scoring pass): the query/key/value projections
    fused into one matrix and gate/up into another (fewer, larger matrix products, the same values),
    as detached copies in ``mm_dtype`` refreshed in place by :meth:`sync` (so a captured CUDA graph
    stays valid); embeddings and norms are views of the parameters.
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
            lw = {
                "ln1": keep(lay.input_layernorm.weight),
                "eps1": float(lay.input_layernorm.variance_epsilon),
                "ln2": keep(lay.post_attention_layernorm.weight),
                "eps2": float(lay.post_attention_layernorm.variance_epsilon),
                "o": self._fuse([a.o_proj.weight]),
                "ob": self._fuse_bias([a.o_proj]),
                "down": self._fuse([m.down_proj.weight]),
                "downb": self._fuse_bias([m.down_proj]),
                "scale": float(getattr(a, "scaling", self.head_dim**-0.5)),
            }
            if live:  # separate matrices: no concatenation in the forward, no split in the backward
                for name, lin in (
                    ("q", a.q_proj),
                    ("k", a.k_proj),
                    ("v", a.v_proj),
                    ("gate", m.gate_proj),
                    ("up", m.up_proj),
                ):
                    lw[name], lw[name + "b"] = lin.weight, lin.bias
            else:
                lw |= {
                    "qkv": self._fuse([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                    "qkvb": self._fuse_bias([a.q_proj, a.k_proj, a.v_proj]),
                    "gu": self._fuse([m.gate_proj.weight, m.up_proj.weight]),
                    "gub": self._fuse_bias([m.gate_proj, m.up_proj]),
                }
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
        parts = [
            lin.bias
            if lin.bias is not None
            else torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device)
            for lin in linears
        ]
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
                dst.append(copy[start : start + p.shape[0]])
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
    back before the weight (``F.rms_norm`` computes the same arithmetic in one call; in float32, with the
    weight, bit for bit)."""
    dt = x.dtype
    if _RMS_NORM:
        if dt == torch.float32 and weight.dtype == dt:
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(dt)
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dt)


def _cast(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    return t if dtype is None else t.to(dtype)


def _rotary(x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype) -> Tensor:
    """``x * cos + rotate_half(x) * sin`` in float32 (as under autocast), cast to ``dtype``."""
    return (x * cos + x.roll(x.shape[-1] // 2, -1) * sin).to(dtype)


def _bmm_attention(dtype: torch.dtype, device) -> bool:
    """Attention by batched matrix products (float32/64 on the CPU) rather than SDPA."""
    return torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float64)


def attn_mask(allowed: Tensor, n_kv: int, n_rep: int, dtype: torch.dtype) -> Tensor:
    """The mask :func:`attention` takes, from a boolean ``allowed`` ``[N, 1, L, S]`` (True: may attend; every
    row needs one True): ``allowed`` itself for SDPA, or for the CPU's batched products an additive bias
    (0 or -inf) ``[N * n_kv, n_rep * L, S]`` (``[N * n_kv, 1, S]`` when ``L == 1``)."""
    if not _bmm_attention(dtype, allowed.device):
        return allowed
    N, _, L, S = allowed.shape
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
    if L == 1:
        return bias.expand(N, n_kv, 1, S).reshape(N * n_kv, 1, S)
    return bias[:, :, None].expand(N, n_kv, n_rep, L, S).reshape(N * n_kv, n_rep * L, S)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, time_major: bool = False) -> Tensor:
    """Grouped-query attention: ``q`` ``[N, L, H, hd]`` (``time_major``: ``[L, N, H, hd]``; any strides),
    ``k``, ``v`` ``[N, KV, S, hd]``, ``mask`` from :func:`attn_mask`. Returns ``[N, L, H*hd]`` (``[L, N, H*hd]``);
    query head ``h`` reads key/value head ``h // (H // KV)``, as ``transformers``' ``repeat_kv``."""
    if time_major:
        L, N, H, hd = q.shape
    else:
        N, L, H, hd = q.shape
    KV, S = k.shape[1], k.shape[2]
    if mask.dtype == torch.bool:  # SDPA
        qt = q.permute(1, 2, 0, 3) if time_major else q.transpose(1, 2)
        if KV == H:
            o = F.scaled_dot_product_attention(qt, k, v, attn_mask=mask, scale=scale)
        elif _GQA:
            o = F.scaled_dot_product_attention(qt, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        else:  # torch < 2.5
            n = H // KV
            o = F.scaled_dot_product_attention(
                qt, k.repeat_interleave(n, 1), v.repeat_interleave(n, 1), attn_mask=mask, scale=scale
            )
        o = o.permute(2, 0, 1, 3) if time_major else o.transpose(1, 2)
        return o.reshape(o.shape[0], o.shape[1], H * hd)
    n = H // KV  # the n query heads of one key/value head, as rows of one matrix: [N*KV, n*L, hd]
    if L == 1:
        qg = q.reshape(N * KV, n, hd)
    elif time_major:
        qg = q.reshape(L, N, KV, n, hd).permute(1, 2, 3, 0, 4).reshape(N * KV, n * L, hd)
    else:
        qg = q.reshape(N, L, KV, n, hd).permute(0, 2, 3, 1, 4).reshape(N * KV, n * L, hd)
    scores = torch.baddbmm(mask, qg, k.reshape(N * KV, S, hd).transpose(1, 2), alpha=scale)
    o = torch.bmm(torch.softmax(scores, -1), v.reshape(N * KV, S, hd))
    if L == 1:
        return o.view(1, N, H * hd) if time_major else o.view(N, 1, H * hd)
    o = o.view(N, KV, n, L, hd)
    return (
        o.permute(3, 0, 1, 2, 4).reshape(L, N, H * hd) if time_major else o.permute(0, 3, 1, 2, 4).reshape(N, L, H * hd)
    )


# ---------------------------------------------------------------------------------------------------------------
# Matrix products whose value is known (the first update after sampling)
# ---------------------------------------------------------------------------------------------------------------


def _bias_grads(g2: Tensor, rows: list[int], has_bias: list[bool], need: tuple) -> list:
    if not any(b and n for b, n in zip(has_bias, need)):
        return [None] * len(rows)
    parts = g2.sum(0).split(rows, 0)
    return [parts[i] if has_bias[i] and need[i] else None for i in range(len(rows))]


class Known(torch.autograd.Function):
    """``residual + x @ w.T + b`` whose value is already known: the forward returns ``value`` (computed
    earlier at the same parameters, by the sampler) without a matrix product; the backward is a linear
    layer's (``dx = g w``, ``dw = g^T x``, ``db = sum g``, ``d residual = g``).
    ``Known.apply(value, x, residual_or_None, w, b_or_None)``."""

    @staticmethod
    def forward(ctx, value, x, residual, w, b):
        ctx.residual, ctx.bias = residual is not None, b is not None
        ctx.save_for_backward(x, w)
        return value

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])
        gx = mm_nt(g2, w.t()).view(x.shape) if need[1] else None
        gres = g if ctx.residual and need[2] else None
        gw = mm_tn(g2, x.reshape(-1, x.shape[-1])) if need[3] else None
        gb = g2.sum(0) if ctx.bias and need[4] else None
        return None, gx, gres, gw, gb


class KnownQKV(torch.autograd.Function):
    """The query/key/value projection whose fused value ``[A, C, (H + 2 KV) * hd]`` is known, followed by
    rotary embeddings on queries and keys: returns ``q`` ``[A, C, H, hd]``, ``k``, ``v`` ``[A, C, KV, hd]``.
    The backward assembles the fused gradient once (rotary's transpose on queries and keys) and runs one
    matrix product for the input and one for the three weights.
    ``KnownQKV.apply(value, x, cos, sin, H, KV, wq, wk, wv, bq, bk, bv)``."""

    @staticmethod
    def forward(ctx, value, x, cos, sin, H, KV, wq, wk, wv, bq, bk, bv):
        A, C = value.shape[:2]
        hd = cos.shape[-1]
        qkv = value.view(A, C, H + 2 * KV, hd)
        qk = _rotary(qkv[:, :, : H + KV], cos, sin, value.dtype)
        ctx.H, ctx.KV = H, KV
        ctx.rows = [wq.shape[0], wk.shape[0], wv.shape[0]]
        ctx.bias = [bq is not None, bk is not None, bv is not None]
        ctx.save_for_backward(x, cos, sin, wq, wk, wv)
        return qk[:, :, :H], qk[:, :, H:], qkv[:, :, H + KV :]

    @staticmethod
    def backward(ctx, gq, gk, gv):
        x, cos, sin, wq, wk, wv = ctx.saved_tensors
        H, KV = ctx.H, ctx.KV
        A, C = x.shape[:2]
        hd = cos.shape[-1]
        z = lambda t, n: x.new_zeros(A, C, n, hd) if t is None else t  # noqa: E731
        gqk = torch.cat([z(gq, H), z(gk, KV)], 2)
        gqk = gqk * cos + (gqk * sin).roll(hd // 2, -1)  # rotary's transpose (roll by hd/2 is its own inverse)
        g2 = torch.cat([gqk, z(gv, KV)], 2).view(A * C, -1)
        need = ctx.needs_input_grad
        gx = mm_nt(g2, torch.cat([wq, wk, wv], 0).t()).view(x.shape) if need[1] else None
        gw = [None] * 3
        if any(need[6:9]):
            gw = [gi if n else None for gi, n in zip(mm_tn(g2, x.reshape(A * C, -1)).split(ctx.rows, 0), need[6:9])]
        return (None, gx, None, None, None, None, *gw, *_bias_grads(g2, ctx.rows, ctx.bias, need[9:12]))


class KnownSwiGLU(torch.autograd.Function):
    """``silu(gate) * up`` with ``[gate, up] = x @ [w_gate; w_up].T (+ b)``, every value known: the fused
    projection ``gu`` ``[A, C, 2 I]``, ``s = silu(gate)`` and the output ``a = s * up`` (``[A, C, I]``).
    The forward returns ``a``; the backward is autograd's for these operations (``d up = g s``,
    ``d gate = silu_backward(g up, gate)``, the same kernels) followed by the two projections' (their
    gradients taken separately: no concatenation).
    ``KnownSwiGLU.apply(gu, s, a, x, w_gate, w_up, b_gate, b_up)``."""

    @staticmethod
    def forward(ctx, gu, s, a, x, wg, wu, bg, bu):
        ctx.bias = [bg is not None, bu is not None]
        ctx.save_for_backward(gu, s, x, wg, wu)
        return a

    @staticmethod
    def backward(ctx, g):
        gu, s, x, wg, wu = ctx.saved_tensors
        gate, up = gu.chunk(2, dim=-1)
        I = wg.shape[0]
        g2u = (g * s).view(-1, I)
        g2g = torch.ops.aten.silu_backward(g * up, gate).view(-1, I)
        need = ctx.needs_input_grad
        gx = mm_nt(g2u, wu.t(), add=mm_nt(g2g, wg.t())).view(x.shape) if need[3] else None
        x2 = x.reshape(-1, x.shape[-1])
        gwg = mm_tn(g2g, x2) if need[4] else None
        gwu = mm_tn(g2u, x2) if need[5] else None
        gbg = g2g.sum(0) if ctx.bias[0] and need[6] else None
        gbu = g2u.sum(0) if ctx.bias[1] and need[7] else None
        return None, None, None, gx, gwg, gwu, gbg, gbu


def _no_grad(*ts: Tensor | None) -> bool:
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in ts)


def _residual_linear(
    x: Tensor, a: Tensor, w: Tensor, b: Tensor | None, fuse: bool, out: Tensor | None = None
) -> Tensor:
    """``x + a @ w.T (+ b)``; ``fuse``: in one product (the residual added to its accumulator: ``addmm``, or
    :func:`mm_nt` without autograd), into ``out`` (``[rows, D]``) if given."""
    if not fuse:
        y = x + F.linear(a, w, b)
        return y if out is None else out.view(y.shape).copy_(y)
    shape = x.shape
    x2, a2 = x.reshape(-1, shape[-1]), a.reshape(-1, a.shape[-1])
    if _no_grad(x, a, w, b):
        return mm_nt(a2, w, b, add=x2, out=out).view(shape)
    return torch.addmm(x2 if b is None else x2 + b, a2, w.t(), out=out).view(shape)


def _linear(h: Tensor, w: Tensor, b: Tensor | None, out: Tensor | None) -> Tensor:
    """``F.linear`` (:func:`mm_nt` without autograd), into ``out`` (``[rows, F]``) if given."""
    if out is None and not _no_grad(h, w, b):
        return F.linear(h, w, b)
    return mm_nt(h.reshape(-1, h.shape[-1]), w, b, out=out).view(*h.shape[:-1], w.shape[0])


def layer(
    w: Weights,
    lw: dict,
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    attend,
    rec=None,
    known: dict | None = None,
    dest: dict | None = None,
) -> Tensor:
    """One decoder layer on hidden states ``x`` ``[A, C, D]`` (batch-major ``[N, L, D]`` or time-major
    ``[L, N, D]``: the layer is elementwise in both leading dimensions except in ``attend``) with rotary
    ``cos`` and signed ``sin`` (:func:`rope_table`) ``[A, C, 1, hd]``. ``attend(q, k, v, scale)`` receives
    this layer's queries ``[A, C, H, hd]`` and new keys and values ``[A, C, KV, hd]`` and returns the
    attention output ``[A, C, H*hd]`` (over a cache, or a shared prompt's prefix).

    ``rec(name, value)``, if given, receives the output of each matrix product and of the MLP's
    activation: ``"qkv"`` (the fused query/key/value projection, before rotary), ``"o"`` (the residual
    stream after attention), ``"gu"`` (the fused gate/up projection), ``"s"`` (``silu(gate)``), ``"a"``
    (``silu(gate) * up``) and ``"down"`` (the residual stream after the MLP). ``known`` holds those
    values (from a recording at the same parameters): they are used through :class:`Known`,
    :class:`KnownQKV` and :class:`KnownSwiGLU` instead of being recomputed (live weights only).
    ``dest`` (fused weights, no autocast): tensors ``[A*C, F]`` the values are written into (a
    recording without copies; instead of ``rec``)."""
    A, C, _ = x.shape
    H, KV, hd = w.n_heads, w.n_kv, w.head_dim
    mm = w.mm_dtype
    fuse = (mm is None or mm == x.dtype) and x.dtype == lw["o"].dtype and _autocast_dtype(x.device.type) is None
    h = _cast(_rms(x, lw["ln1"], lw["eps1"]), mm)
    if known is not None:
        q, k, v = KnownQKV.apply(
            known["qkv"], h, cos, sin, H, KV, lw["q"], lw["k"], lw["v"], lw["qb"], lw["kb"], lw["vb"]
        )
    elif "qkv" in lw:  # fused: rotary on queries and keys at once
        qkv = _linear(h, lw["qkv"], lw["qkvb"], dest and dest["qkv"])
        if rec is not None:
            rec("qkv", qkv)
        qkv = qkv.view(A, C, H + 2 * KV, hd)
        v = qkv[:, :, H + KV :]
        qk = _rotary(qkv[:, :, : H + KV], cos, sin, v.dtype)
        q, k = qk[:, :, :H], qk[:, :, H:]
    else:
        v = F.linear(h, lw["v"], lw["vb"]).view(A, C, KV, hd)
        q = _rotary(F.linear(h, lw["q"], lw["qb"]).view(A, C, H, hd), cos, sin, v.dtype)
        k = _rotary(F.linear(h, lw["k"], lw["kb"]).view(A, C, KV, hd), cos, sin, v.dtype)
    o = _cast(attend(q, k, v, lw["scale"]), mm)
    if known is not None:
        x = Known.apply(known["o"], o, x, lw["o"], lw["ob"])
    else:
        x = _residual_linear(x, o, lw["o"], lw["ob"], fuse, dest and dest["o"])
        if rec is not None:
            rec("o", x)
    h = _cast(_rms(x, lw["ln2"], lw["eps2"]), mm)
    if known is not None:
        a = KnownSwiGLU.apply(known["gu"], known["s"], known["a"], h, lw["gate"], lw["up"], lw["gateb"], lw["upb"])
        return Known.apply(known["down"], a, x, lw["down"], lw["downb"])
    if "gu" in lw:
        gu = _linear(h, lw["gu"], lw["gub"], dest and dest["gu"])
        if rec is not None:
            rec("gu", gu)
        gate, up = gu.chunk(2, dim=-1)
    else:
        gate, up = F.linear(h, lw["gate"], lw["gateb"]), F.linear(h, lw["up"], lw["upb"])
    if dest is not None:
        a = torch.mul(torch.ops.aten.silu.out(gate, out=dest["s"].view(gate.shape)), up, out=dest["a"].view(gate.shape))
    elif rec is not None:
        s_ = F.silu(gate)
        a = s_ * up
        rec("s", s_)
        rec("a", a)
    elif _no_grad(gate, up):
        a = F.silu(gate).mul_(up)
    else:
        a = F.silu(gate) * up
    x = _residual_linear(x, a, lw["down"], lw["downb"], fuse, dest and dest["down"])
    if rec is not None:
        rec("down", x)
    return x


def decode_layer(
    w: Weights,
    lw: dict,
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    kc: Tensor,
    vc: Tensor,
    bias: Tensor,
    wpos: Tensor,
    dest: dict | None = None,
) -> Tensor:
    """:func:`layer` for one token per row on the CPU (fused weights in the residual stream's dtype, attention
    by batched products), the same arithmetic in fewer operations: ``x`` ``[B, D]``, ``cos``/``sin``
    ``[B, 1, hd]``; the new key and value go to slot ``wpos`` ``[1]`` of the cache ``kc``, ``vc``
    ``[B, KV, S, hd]``, whose additive mask is ``bias`` ``[B*KV, 1, S]`` (:func:`attn_mask`); ``dest``: as in
    :func:`layer` (``[B, F]`` each)."""
    B = x.shape[0]
    H, KV, hd = w.n_heads, w.n_kv, w.head_dim
    S = kc.shape[2]
    out = dest or {}
    h = _rms(x, lw["ln1"], lw["eps1"])
    qkv = mm_nt(h, lw["qkv"], lw["qkvb"], out=out.get("qkv")).view(B, H + 2 * KV, hd)
    qk = _rotary(qkv[:, : H + KV], cos, sin, qkv.dtype)
    kc.index_copy_(2, wpos, qk[:, H:, None])
    vc.index_copy_(2, wpos, qkv[:, H + KV :, None])
    scores = torch.baddbmm(
        bias, qk[:, :H].reshape(B * KV, H // KV, hd), kc.view(B * KV, S, hd).transpose(1, 2), alpha=lw["scale"]
    )
    o = torch.bmm(torch.softmax(scores, -1), vc.view(B * KV, S, hd)).view(B, H * hd)
    x = mm_nt(o, lw["o"], lw["ob"], add=x, out=out.get("o"))
    h = _rms(x, lw["ln2"], lw["eps2"])
    gu = mm_nt(h, lw["gu"], lw["gub"], out=out.get("gu"))
    gate, up = gu.chunk(2, dim=-1)
    if dest is None:
        a = F.silu(gate).mul_(up)
    else:
        a = torch.mul(torch.ops.aten.silu.out(gate, out=dest["s"]), up, out=dest["a"])
    return mm_nt(a, lw["down"], lw["downb"], add=x, out=out.get("down"))


def final_norm(w: Weights, x: Tensor) -> Tensor:
    return _rms(x, w.norm_w, w.norm_eps)


def prompt_index(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct rows of left-padded prompts: ``(unique_ids [U, P], unique_mask [U, P], index [B])``
    with ``prompt_ids == unique_ids[index]``."""
    key = torch.where(prompt_mask.bool(), prompt_ids, torch.full_like(prompt_ids, -1))
    uniq, index = torch.unique(key, dim=0, return_inverse=True)
    umask = uniq >= 0
    return torch.where(umask, uniq, prompt_ids.new_zeros(())), umask.long(), index


def prompt_allowed(umask: Tensor) -> Tensor:
    """``[U, 1, P, P]``: causal attention over a left-padded prompt's real tokens; a padding query
    attends to itself (its output is never used)."""
    P = umask.shape[1]
    dev = umask.device
    eye = torch.eye(P, dtype=torch.bool, device=dev)
    tril = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
    return ((tril[None] & umask.bool()[:, None, :]) | eye)[:, None]


class Activations:
    """The outputs of a policy's matrix products recorded by the sampler (see :func:`layer`'s ``rec``):
    ``prompt[l][name]`` ``[U, P, F]`` for the distinct prompts, ``comp[l][name]`` ``[T-1, B, F]`` (time-major)
    for the completion inputs (token ``t`` feeds position ``t``, predicting token ``t + 1``). They stand
    for a forward pass only at the parameters they were recorded with: :meth:`usable` checks that
    the model is the same object, that no parameter was modified in place since (an optimizer
    step, ``load_state_dict``, ``p.add_``: each bumps the parameter's version counter) and that the
    buffers were not overwritten by a later sampling call."""

    def __init__(self, model, prompt: list[dict], comp: list[dict], owner: dict, generation: int):
        self.model, self.prompt, self.comp = model, prompt, comp
        self.versions = tuple(p._version for p in model.parameters())
        self._owner, self._generation = owner, generation

    def usable(self, model) -> bool:
        return (
            model is self.model
            and self._owner.get("generation") == self._generation
            and tuple(p._version for p in model.parameters()) == self.versions
        )


def completion_hidden(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    n_prompt: int,
    w: Weights | None = None,
    index: tuple[Tensor, Tensor, Tensor] | None = None,
    known: Activations | None = None,
) -> Tensor:
    """Final-normed hidden states ``[B, T, D]`` that predict the completion tokens ``input_ids[:, n_prompt:]``
    (position ``n_prompt - 1`` for the first, completion token ``t - 1`` for token ``t``), each distinct
    prompt run once. The values equal ``model.model(...).last_hidden_state[:, n_prompt - 1:-1]`` with
    positions counted from the first real token, on every position before a row's first EOS (after it,
    ``transformers`` would mask the keys; nothing there is used). Gradients flow into the parameters
    (``w=None``: :class:`Weights` of the parameters themselves). ``known``: the sampler's recording of
    this very batch at the current parameters (:meth:`Activations.usable`); the matrix products are
    then taken from it, not recomputed. The completions run time-major (``[T-1, B, D]``, the layout in
    which the sampler records them)."""
    w = w or Weights(model)
    P = n_prompt
    dev = input_ids.device
    pmask = attention_mask[:, :P]
    uids, umask, idx = index if index is not None else prompt_index(input_ids[:, :P], pmask)
    comp = input_ids[:, P:-1]  # the last completion token predicts nothing
    B, Tm1 = comp.shape
    if known is not None and (
        w.mm_dtype is not None
        or not known.usable(model)
        or known.comp[0]["qkv"].shape[:2] != (Tm1, B)
        or known.prompt[0]["qkv"].shape[:2] != uids.shape
    ):
        known = None
    H, KV = w.n_heads, w.n_kv
    dt = _autocast_dtype(dev.type) or w.mm_dtype or w.embed.dtype  # the dtype of queries and keys
    lengths = pmask.sum(-1)
    cos_t, sin_t = rope_table(w, P + Tm1 + 1, dev)
    upos = (umask.cumsum(-1) - 1).clamp_min(0)
    umask_b = umask.bool()
    pm = attn_mask(prompt_allowed(umask), KV, H // KV, dt)
    cpos = (
        lengths[None, :] + torch.arange(Tm1, device=dev)[:, None]
    )  # [T-1, B]: rotary positions of the completion inputs
    own = torch.ones(Tm1, Tm1, dtype=torch.bool, device=dev).tril()
    cm = attn_mask(
        torch.cat([umask_b[idx][:, None, :].expand(B, Tm1, P), own[None].expand(B, Tm1, Tm1)], -1)[:, None],
        KV,
        H // KV,
        dt,
    )  # [B, 1, T-1, P+T-1] allowed
    x_u = F.embedding(uids, w.embed, w.padding_idx)
    x_c = F.embedding(comp.t(), w.embed, w.padding_idx)  # [T-1, B, D]
    cu, su = cos_t[upos][:, :, None], sin_t[upos][:, :, None]
    cc, sc = cos_t[cpos][:, :, None], sin_t[cpos][:, :, None]
    for li, lw in enumerate(w.layers):
        pref = {}

        def attend_prompt(q, k, v, scale, pref=pref):  # called within this iteration
            pref["k"], pref["v"] = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()  # [U, KV, P, hd]
            return attention(q, pref["k"], pref["v"], pm, scale)

        x_u = layer(w, lw, x_u, cu, su, attend_prompt, known=known.prompt[li] if known else None)

        def attend_comp(q, k, v, scale, pref=pref):
            keys = torch.cat([pref["k"][idx], k.permute(1, 2, 0, 3)], 2)  # [B, KV, P+T-1, hd]
            values = torch.cat([pref["v"][idx], v.permute(1, 2, 0, 3)], 2)
            return attention(q, keys, values, cm, scale, time_major=True)

        if Tm1:
            x_c = layer(w, lw, x_c, cc, sc, attend_comp, known=known.comp[li] if known else None)
    first = final_norm(w, x_u[:, -1])[idx][:, None]  # [B, 1, D]: the last prompt position predicts token 0
    return torch.cat([first, final_norm(w, x_c).transpose(0, 1)], 1) if Tm1 else first
