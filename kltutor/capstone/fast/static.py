"""The static KV cache and the CUDA-graph capture of the decode step (the capstone's fast engine, ``ch-capstone``).

:class:`StaticCache` holds one model's keys and values for ``batch`` rows x ``length`` slots, preallocated,
and runs the model's layers over it through :mod:`kltutor.capstone.fast.decoder`: every decode step has
the same shapes, so :func:`capture_graph` can record one step as a CUDA graph that
:class:`~kltutor.capstone.sampler.Sampler` replays at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kltutor.capstone.fast import decoder

__all__ = ["StaticCache", "capture_graph"]


class StaticCache:
    """The KV cache of one model: ``batch`` rows x ``length`` slots per layer, its attention mask, and its
    forward. ``record``: keep the outputs of the matrix products (:class:`~kltutor.capstone.fast.decoder.Activations`)
    in buffers of ``T`` completion columns and ``length - T`` prompt positions."""

    def __init__(self, w: decoder.Weights, batch: int, length: int, device, record_T: int = 0):
        self.w, self.B, self.S = w, batch, length
        dtype = w.mm_dtype or w.head.dtype
        shape = (batch, w.n_kv, length, w.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in w.layers]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in w.layers]
        self.cos, self.sin = decoder.rope_table(w, length, device)
        self.n_rep = w.n_heads // w.n_kv
        # which slots each row may attend to: boolean [B, 1, 1, S] for SDPA, or the additive bias of the
        # CPU's batched products [B*KV, 1, S] (decoder.attn_mask)
        self.bmm = decoder._bmm_attention(dtype, device)
        self.valid = torch.zeros(batch, 1, 1, length, dtype=torch.bool, device=device)
        self.bias = torch.zeros(batch * w.n_kv, 1, length, dtype=dtype, device=device) if self.bmm else None
        # decoder.decode_layer: the CPU's float32 decode step in fewer operations
        self.fast = self.bmm and dtype == w.embed.dtype
        self.record = None
        if record_T:  # ordinary tensors (not inference tensors): the training forward's autograd graph reads them
            with torch.inference_mode(False):
                P = length - record_T
                D, Fqkv, Fgu = w.hidden, (w.n_heads + 2 * w.n_kv) * w.head_dim, 2 * w.intermediate
                sizes = {"qkv": Fqkv, "o": D, "gu": Fgu, "s": Fgu // 2, "a": Fgu // 2, "down": D}
                self.record = {
                    "prompt": [
                        {k: torch.zeros(batch, P, f, dtype=dtype, device=device) for k, f in sizes.items()}
                        for _ in w.layers
                    ],
                    "comp": [
                        {k: torch.zeros(record_T, batch, f, dtype=dtype, device=device) for k, f in sizes.items()}
                        for _ in w.layers
                    ],
                }
                # per layer and column, the [B, F] rows an eager decode step writes its products into
                self.record["views"] = [
                    [{k: b[t] for k, b in layer.items()} for t in range(record_T)] for layer in self.record["comp"]
                ]

    def _mask(self):
        return self.bias if self.bmm else self.valid

    def open_slot(self, wpos: Tensor) -> None:
        """Slot ``wpos`` (``[1]``) now holds a key and value in every row."""
        if self.bmm:
            self.bias.index_fill_(2, wpos, 0.0)
        else:
            self.valid.index_fill_(3, wpos, True)

    def prefill(self, uids: Tensor, umask: Tensor, index: Tensor, attention_mask: Tensor) -> Tensor:
        """Run the distinct prompts ``uids`` ``[U, P]`` once, copy their keys and values into slots
        ``[0, P)`` of every row that shares them (``index`` ``[B]``); return each row's last hidden ``[B, D]``."""
        w = self.w
        U, P = uids.shape
        allowed = attention_mask.bool()
        self.valid.zero_()
        self.valid[:, 0, 0, :P] = allowed
        if self.bmm:
            B, KV = self.B, w.n_kv
            self.bias.view(B, KV, self.S).copy_(torch.where(self.valid[:, 0], 0.0, float("-inf")).expand(B, KV, self.S))
        dtype = self.k[0].dtype
        mask = decoder.attn_mask(decoder.prompt_allowed(umask), w.n_kv, self.n_rep, dtype)
        pos = (umask.cumsum(-1) - 1).clamp_min(0)
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]
        x = F.embedding(uids, w.embed, w.padding_idx)
        for li, (lw, kc, vc) in enumerate(zip(w.layers, self.k, self.v)):

            def attend(q, k, v, scale, kc=kc, vc=vc):
                k, v = k.transpose(1, 2).to(dtype).contiguous(), v.transpose(1, 2).to(dtype).contiguous()
                kc[:, :, :P] = k[index]
                vc[:, :, :P] = v[index]
                return decoder.attention(q, k, v, mask, scale)

            rec = None
            if self.record is not None:
                bufs = self.record["prompt"][li]

                def rec(name, value, bufs=bufs):
                    bufs[name][:U, :P] = value

            x = decoder.layer(w, lw, x, cos, sin, attend, rec)
        return decoder.final_norm(w, x[:, -1])[index]

    def step(self, ids: Tensor, pos: Tensor, wpos: Tensor, t: Tensor, t_int: int | None = None) -> Tensor:
        """One token per row (``ids``, rotary positions ``pos``, ``[B]``) written to slot ``wpos`` ``[1]``
        (already opened: :meth:`open_slot`); ``t`` ``[1]``: the completion column it feeds (for the
        recording; ``t_int``: the same as a number, when not captured in a graph: the products are then
        written straight into the recording). Returns the final hidden states ``[B, D]``."""
        w = self.w
        B = ids.shape[0]
        record = self.record
        if self.fast and (record is None or t_int is not None):
            cos, sin = self.cos[pos].view(B, 1, -1), self.sin[pos].view(B, 1, -1)
            x = F.embedding(ids, w.embed, w.padding_idx)
            for li, (lw, kc, vc) in enumerate(zip(w.layers, self.k, self.v)):
                dest = None if record is None else record["views"][li][t_int]
                x = decoder.decode_layer(w, lw, x, cos, sin, kc, vc, self.bias, wpos, dest)
            return decoder.final_norm(w, x)
        mask = self._mask()
        cos, sin = self.cos[pos].view(B, 1, 1, -1), self.sin[pos].view(B, 1, 1, -1)
        x = F.embedding(ids, w.embed, w.padding_idx).view(B, 1, -1)
        for li, (lw, kc, vc) in enumerate(zip(w.layers, self.k, self.v)):

            def attend(q, k, v, scale, kc=kc, vc=vc):
                kc.index_copy_(2, wpos, k.transpose(1, 2).to(kc.dtype))
                vc.index_copy_(2, wpos, v.transpose(1, 2).to(vc.dtype))
                return decoder.attention(q, kc, vc, mask, scale)

            rec = dest = None
            if record is not None:
                bufs = record["comp"][li]
                if t_int is not None:
                    dest = {k: b[t_int] for k, b in bufs.items()}
                else:

                    def rec(name, value, bufs=bufs):
                        bufs[name].index_copy_(0, t, value.view(1, B, -1))

            x = decoder.layer(w, lw, x, cos, sin, attend, rec, dest=dest)
        return decoder.final_norm(w, x[:, 0])

    def activations(self, model, U: int, P: int, n: int, owner: dict) -> decoder.Activations | None:
        """The recording of the last call (``U`` distinct prompts of ``P`` positions, ``n`` completion tokens)."""
        if self.record is None:
            return None
        prompt = [{k: b[:U, :P] for k, b in layer.items()} for layer in self.record["prompt"]]
        comp = [{k: b[1:n] for k, b in layer.items()} for layer in self.record["comp"]]
        return decoder.Activations(model, prompt, comp, owner, owner["generation"])


def capture_graph(step, st: dict, greedy: bool, compile: bool = False):
    """A CUDA graph of ``step(st, greedy)``, one decode step on the state ``st``'s buffers (first compiled by
    ``torch.compile`` with ``compile=True``); raises what capture raises. Three warm-up steps run on a side
    stream first; each warm-up and the capture start from a reset state (columns, positions, finished rows),
    and the captured step indexes with tensors only (``st["t_int"] = None``)."""
    if compile:
        step = torch.compile(step, fullgraph=False, dynamic=False)

    def reset():  # warm-up steps write into the state; keep their indices in range (prefill resets it all)
        for k in ("t", "wpos", "pos"):
            st[k].zero_()
        st["done"].zero_()
        st["t_int"] = None

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up (and compilation) outside the capture
            reset()
            step(st, greedy)
    torch.cuda.current_stream().wait_stream(stream)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(st, greedy)
    torch.cuda.synchronize()
    return graph
