"""The capstone's sampler: a static KV cache, batched decoding with per-row EOS, and the log-probs of
the sampled tokens returned from the logits they were drawn from (``ch-capstone``).

One call of :meth:`Sampler.sample` left-pads the prompts, runs the prompt through the model once
(prefill), then draws one token per row per decode step until every row has emitted EOS or the
budget ``max_new_tokens`` is spent. Every decode step is the same fixed-shape computation on
preallocated buffers (the KV cache holds ``prompt + max_new_tokens`` positions from the start), so

- the per-step work in Python does not grow with the batch: finished rows keep being computed and
  are overwritten with the pad token (per-row EOS is a mask, not a branch);
- on a GPU the decode step can be captured once as a CUDA graph (``decode_mode="cuda-graph"``) or
  compiled by ``torch.compile`` and then captured (``"compile"``), and replayed at every step; if
  capture fails the sampler logs why and decodes eagerly;
- the log-probability of each sampled token is read off the very log-softmax it was sampled from,
  so the GRPO loop gets ``old_logp`` without a second pass of the policy.

**Which distribution ``logp`` refers to.** For row ``b`` and completion position ``t`` with logits
``z`` (computed in ``logprob_dtype``), the sampler

1. divides by ``temperature``;
2. while ``t < min_new_tokens``, sets the EOS logit to ``-inf``;
3. keeps the ``top_k`` largest logits (``top_k=0``: all), setting the others to ``-inf``;
4. keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (``top_p=1``: all);
5. renormalises with a log-softmax and draws ``y_t`` from it (Gumbel-max).

``logp[b, t]`` is ``log_softmax(filtered z / temperature)[y_t]``: the log-probability of the token
under the **truncated, renormalised distribution it was actually drawn from** (the same order and
semantics as ``transformers``' temperature, top-k and top-p warpers). With ``top_k=0``, ``top_p=1``
and ``min_new_tokens=0`` this is the policy's own temperature-scaled log-probability, which is what
the trainer computes (:func:`kltutor.capstone.logprobs.sequence_stats`); with truncation the two
differ on purpose, and the importance ratio ``w = pi_theta / pi_old`` of the first update is then
not 1: that is a sampler/trainer mismatch, and ``logprob_dtype="bfloat16"`` reproduces the
precision kind of it on a CPU.

:meth:`Sampler.score` adds what the loop measures on the sampled prefixes: the reference's
log-probs ``ref_logp``, the policy's entropy and the exact KL over the whole vocabulary, and the
policy's untruncated log-probs ``policy_logp`` (all at temperature ``temperature``, never truncated,
in ``logprob_dtype``). The reference is scored either in one batched pass over the finished
sequences (``ref_scoring="batched"``) or step by step inside the decode loop (``"in-loop"``); the
policy's last hidden states are kept from decoding, so the policy is never run again. On the CPU the
sampler also keeps the output of every matrix product of the policy (``keep_activations``): the first
update after sampling runs at the same parameters and takes its forward products from them.

The static decoder (:mod:`kltutor.capstone.fast`) drives the layers of a ``transformers`` Qwen2 or Llama
model (``Qwen2ForCausalLM``, ``LlamaForCausalLM``) with their own weights; any other causal LM, and every
model with ``fast=False``, uses a plain ``transformers`` forward per step with a dynamic cache (slower,
same outputs and semantics).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from kltutor._validation import integer, number_in, positive_integer, positive_number
from kltutor.capstone.config import choices
from kltutor.capstone.fast import decoder, static
from kltutor.capstone.logprobs import chunked_token_stats, completion_hidden

__all__ = [
    "DECODE_MODES",
    "REF_SCORING",
    "LOGPROB_DTYPES",
    "SampleBatch",
    "Scores",
    "Sampler",
    "filter_logits",
    "completion_mask_from_ids",
    "generate_completions",
]

logger = logging.getLogger(__name__)

# the allowed values are the config's (declared once, with their help: kltutor.capstone.config)
DECODE_MODES = choices("decode_mode")
RECORD_BUDGET = 1 << 30  # bytes: keep_activations=None records a batch's products only up to this size
REF_SCORING = choices("ref_scoring")
LOGPROB_DTYPES = {name: getattr(torch, name) for name in choices("logprob_dtype")}


def completion_mask_from_ids(completion_ids: Tensor, eos_token_id: int) -> Tensor:
    """1 on every completion token up to and including the first EOS, 0 after it (``[batch, T]``, long).
    A completion without EOS (truncated at ``max_new_tokens``) is all ones."""
    is_eos = (completion_ids == eos_token_id).long()
    before = torch.cumsum(is_eos, -1) - is_eos  # number of EOS strictly before position t
    return (before == 0).long()


def filter_logits(z: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """``z`` ``[..., vocab]`` (already divided by the temperature) with every logit outside the
    ``top_k`` largest and outside the ``top_p`` nucleus set to ``-inf``; ``transformers``' semantics:
    top-k keeps ties at the k-th value, top-p removes the tokens of the sorted ascending cumulative
    probability ``<= 1 - top_p`` and always keeps the most likely token."""
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, idx = torch.sort(z, dim=-1, descending=False)
        cum = torch.softmax(sorted_z.float(), dim=-1).cumsum(-1)
        remove_sorted = cum <= (1.0 - top_p)
        remove_sorted[..., -1] = False
        remove = remove_sorted.scatter(-1, idx, remove_sorted)
        z = z.masked_fill(remove, float("-inf"))
    return z


# ----------------------------------------------------------------------------------------------------------------
# What the sampler returns
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SampleBatch:
    """One batch of sampled completions (``B`` rows, ``P`` prompt positions, ``T`` completion positions).

    ``input_ids`` ``[B, P+T]``: left-padded prompt then completion (pad after EOS);
    ``attention_mask`` ``[B, P+T]``: 0 on the left padding and after the first EOS;
    ``completion_mask`` ``[B, T]`` (long): 1 on completion tokens up to and including the first EOS;
    ``logp`` ``[B, T]`` (float32): log-prob of each sampled token under the distribution it was drawn
    from (see the module docstring), 0 where ``completion_mask`` is 0;
    ``terminated`` ``[B]`` (bool): EOS was emitted; ``texts``: each completion's text before EOS.
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    n_prompt: int
    logp: Tensor
    terminated: Tensor
    texts: list[str]
    policy_hidden: Tensor | None = None  # [B, T, D] last hidden states that produced each token (static decoder)
    ref_hidden: Tensor | None = None  # [B, T, D] the reference's, when scored in the decode loop
    prompt_index: tuple | None = (
        None  # (distinct prompts [U, P], their mask, row -> prompt [B]): see decoder.prompt_index
    )
    activations: decoder.Activations | None = None  # the policy's matrix products while decoding (keep_activations)

    @property
    def completion_ids(self) -> Tensor:
        return self.input_ids[:, self.n_prompt :]

    def as_dict(self) -> dict:
        """The dictionary :func:`generate_completions` has always returned (plus ``logp``)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "completion_mask": self.completion_mask,
            "n_prompt": self.n_prompt,
            "texts": self.texts,
            "terminated": self.terminated.tolist(),
            "logp": self.logp,
        }


@dataclass
class Scores:
    """What :meth:`Sampler.score` measures on a :class:`SampleBatch` (each ``[B, T]`` float32, 0 off the mask):
    ``ref_logp``, ``policy_logp`` (untruncated, temperature-scaled), ``entropy`` of the policy's
    next-token distribution and ``kl``, the exact KL(pi(.|s_t) || pi_ref(.|s_t)) over the vocabulary;
    ``ref_hidden`` ``[B, T, D]`` is kept for losses that need the reference's full distribution."""

    ref_logp: Tensor
    policy_logp: Tensor
    entropy: Tensor
    kl: Tensor
    ref_hidden: Tensor


# ----------------------------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------------------------


class Sampler:
    """Batched sampling from ``model`` with a static KV cache (see the module docstring).

    ``ref_model``: the reference, for :meth:`score` (and for ``ref_scoring="in-loop"``).
    ``compute_dtype``: the dtype of the decoder's matrix products (``torch.bfloat16`` imitates bf16
    autocast: bf16 matmuls, float32 residual stream, norms and softmax); default: the model's dtype.
    ``autocast``: run the batched passes (:meth:`score`'s reference forward, the dynamic-cache fallback)
    under autocast, in ``compute_dtype`` when that is float16 or bfloat16 (else bfloat16); a run's
    :class:`~kltutor.capstone.precision.Precision` sets both. ``decode_mode``: ``"auto"`` (a CUDA graph on a GPU, eager on the CPU),
    ``"eager"``, ``"cuda-graph"`` or ``"compile"`` (``torch.compile`` then a CUDA graph); a failed
    capture falls back to eager with a logged warning (:attr:`decode_mode_used` says what ran).
    ``max_prompt_len``: the longest prompt expected (tokens), to size the cache once; a longer one
    resizes it (and recaptures). ``keep_activations``: record the policy's matrix products while
    decoding (:attr:`SampleBatch.activations`, :class:`kltutor.capstone.fast.decoder.Activations`), so that
    the first update after sampling need not recompute them; ``None`` (default): on the CPU without
    autocast, for batches whose recording fits in :data:`RECORD_BUDGET` bytes. ``fast=False``: none of
    :mod:`kltutor.capstone.fast` (no static cache, no graph, no recording): the model's own forward
    with its dynamic cache at every step, the readable path (same values up to rounding).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        ref_model=None,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_new_tokens: int = 0,
        logprob_dtype: str = "float32",
        compute_dtype: torch.dtype | None = None,
        autocast: bool = False,
        decode_mode: str = "auto",
        ref_scoring: str = "batched",
        max_prompt_len: int = 0,
        logprob_chunk: int = 1024,
        check_every: int | None = None,
        keep_activations: bool | None = None,
        fast: bool = True,
    ):
        positive_integer("max_new_tokens", max_new_tokens)
        positive_number("temperature", temperature, strict=True)
        number_in("top_p", top_p, "(0, 1]")
        integer("top_k", top_k, 0, " (0: off)")
        if not (isinstance(min_new_tokens, int) and 0 <= min_new_tokens <= max_new_tokens):
            raise ValueError(f"min_new_tokens must be an integer in [0, max_new_tokens], got {min_new_tokens!r}")
        if logprob_dtype not in LOGPROB_DTYPES:
            raise ValueError(f"logprob_dtype must be one of {list(LOGPROB_DTYPES)}, got {logprob_dtype!r}")
        if decode_mode not in DECODE_MODES:
            raise ValueError(f"decode_mode must be one of {list(DECODE_MODES)}, got {decode_mode!r}")
        if ref_scoring not in REF_SCORING:
            raise ValueError(f"ref_scoring must be one of {list(REF_SCORING)}, got {ref_scoring!r}")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs an EOS and a pad token")
        self.model, self.ref_model, self.tokenizer = model, ref_model, tokenizer
        self.max_new_tokens, self.min_new_tokens = max_new_tokens, min_new_tokens
        self.temperature, self.top_p, self.top_k = float(temperature), float(top_p), int(top_k)
        self.logprob_dtype = LOGPROB_DTYPES[logprob_dtype]
        self.logprob_chunk, self.autocast = logprob_chunk, autocast
        self.ref_scoring = ref_scoring
        self.device = next(model.parameters()).device
        self.compute_dtype = compute_dtype or next(model.parameters()).dtype
        half = (torch.float16, torch.bfloat16)
        self.autocast_dtype = self.compute_dtype if self.compute_dtype in half else torch.bfloat16
        self.eos, self.pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
        self.max_prompt_len = int(max_prompt_len)
        cuda = self.device.type == "cuda"
        self.check_every = check_every or (8 if cuda else 1)  # steps between "all rows done?" checks (a GPU sync)
        if decode_mode == "auto":
            decode_mode = "cuda-graph" if cuda else "eager"
        if decode_mode != "eager" and not cuda:
            logger.warning("decode_mode=%r needs a CUDA device; decoding eagerly on %s", decode_mode, self.device)
            decode_mode = "eager"
        self.decode_mode = decode_mode
        self.decode_mode_used = decode_mode
        self.fast = bool(fast)
        reason = decoder.support(model) if fast else "fast=False"
        if reason is None and ref_model is not None and ref_scoring == "in-loop":
            reason = decoder.support(ref_model)
        self.static = reason is None
        self.fallback_reason = reason
        if not self.static:
            if fast:
                logger.warning(
                    "static decoder unavailable (%s): sampling with the model's own forward per step", reason
                )
            self.decode_mode_used = "eager"
        self._pw = decoder.Weights(model, self.compute_dtype) if self.static else None
        self._rw = (
            decoder.Weights(ref_model, self.compute_dtype)
            if self.static and ref_model is not None and ref_scoring == "in-loop"
            else None
        )
        self._rw_batched = None  # the reference's fused weights for score()'s batched pass (made when first needed)
        same_dtype = self.compute_dtype == next(model.parameters()).dtype
        # on the CPU (eager, no autocast) the first update reuses the sampler's products, when their recording
        # fits in RECORD_BUDGET bytes per batch (decided per batch size, see _alloc)
        self._record_auto = keep_activations is None
        if keep_activations is None:
            keep_activations = self.static and not cuda and not autocast and same_dtype
        if keep_activations and not (self.static and same_dtype and not autocast):
            raise ValueError(
                "keep_activations needs the static decoder, compute_dtype equal to the model's dtype and no autocast"
            )
        self.keep_activations = bool(keep_activations)
        self._eos_bias = None  # [T, V]: -inf on EOS while t < min_new_tokens, else 0 (added to the logits)
        if min_new_tokens:
            V = model.get_output_embeddings().weight.shape[0]
            self._eos_bias = torch.zeros(max_new_tokens, V, dtype=self.logprob_dtype, device=self.device)
            self._eos_bias[:min_new_tokens, self.eos] = float("-inf")
        self._states: dict = {}  # (batch, greedy) -> buffers, KV caches and the captured graph

    # -- public ---------------------------------------------------------------------------------------------------

    def sample(self, prompts: list[str], greedy: bool = False, generator: torch.Generator | None = None) -> SampleBatch:
        """Sample one completion per prompt (left padding; ``greedy=True``: argmax decoding)."""
        if not prompts:
            raise ValueError("prompts is empty")
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        return self.sample_ids(
            enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), greedy, generator
        )

    @torch.no_grad()
    def sample_ids(
        self, input_ids: Tensor, attention_mask: Tensor, greedy: bool = False, generator: torch.Generator | None = None
    ) -> SampleBatch:
        """:meth:`sample` from left-padded token ids ``[B, P]`` and their attention mask."""
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must be [batch, prompt] of one shape, got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("prompts must be left-padded (the last prompt position is padding in some row)")
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device).long()
        index = decoder.prompt_index(input_ids, attention_mask)
        acts = None
        with torch.autocast(self.device.type, enabled=False), torch.inference_mode():
            if self.static:
                *out, acts = self._decode_static(input_ids, attention_mask, index, greedy, generator)
            else:
                out = (*self._decode_dynamic(input_ids, attention_mask, greedy, generator), None, None)
        # copies made outside inference mode: ordinary tensors, usable as constants in the training graph
        comp, logp, hid, rhid = (None if t is None else t.clone(memory_format=torch.contiguous_format) for t in out)
        cmask = completion_mask_from_ids(comp, self.eos)
        terminated = (comp == self.eos).any(-1)
        logp = torch.where(cmask.bool(), logp, torch.zeros_like(logp))
        rows = [[t for t, k in zip(r, m) if k and t != self.eos] for r, m in zip(comp.tolist(), cmask.tolist())]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return SampleBatch(
            torch.cat([input_ids, comp], -1),
            torch.cat([attention_mask, cmask], -1),
            cmask,
            input_ids.shape[1],
            logp,
            terminated,
            texts,
            hid,
            rhid,
            index,
            acts,
        )

    @torch.no_grad()
    def score(self, batch: SampleBatch) -> Scores:
        """The reference's log-probs, the policy's entropy and untruncated log-probs, and the exact
        per-token KL to the reference, on the sampled prefixes (see :class:`Scores`)."""
        if self.ref_model is None:
            raise ValueError("score() needs the Sampler's ref_model")
        P = batch.n_prompt
        ids, attn = batch.input_ids, batch.attention_mask
        amp = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast else contextlib.nullcontext()
        with amp:
            rh = batch.ref_hidden
            if rh is None:
                if self.static and decoder.support(self.ref_model) is None:  # fused copies of the reference's weights
                    if self._rw_batched is None:
                        self._rw_batched = decoder.Weights(self.ref_model, self.compute_dtype)
                    self._rw_batched.sync()
                    rh = decoder.completion_hidden(self.ref_model, ids, attn, P, self._rw_batched, batch.prompt_index)
                else:
                    rh = completion_hidden(self.ref_model, ids, attn, P, batch.prompt_index, fast=self.fast)
            ph = batch.policy_hidden
            if ph is None:
                ph = completion_hidden(self.model, ids, attn, P, batch.prompt_index, fast=self.fast)
        st = chunked_token_stats(
            ph,
            self.model.get_output_embeddings().weight.detach(),
            ids[:, P:],
            rh,
            self.ref_model.get_output_embeddings().weight.detach(),
            self.logprob_chunk,
            self.temperature,
            dtype=self.logprob_dtype,
        )
        m = batch.completion_mask.bool()
        z = lambda t: torch.where(m, t, torch.zeros_like(t))  # noqa: E731
        return Scores(
            ref_logp=z(st["ref_logp"]),
            policy_logp=z(st["logp"]),
            entropy=z(st["entropy"]),
            kl=z(st["kl"]),
            ref_hidden=rh,
        )

    # -- token choice ---------------------------------------------------------------------------------------------

    def _pick(self, h: Tensor, st: dict, greedy: bool, generator) -> None:
        """Choose the next token of every row from final hidden states ``h`` ``[B, D]``; write token, logp
        and hidden state into column ``st['t']`` of the output buffers; advance the per-row state."""
        ld = self.logprob_dtype
        w = self._pw.head
        inv_t = 1.0 / self.temperature
        bias = None if self._eos_bias is None else self._eos_bias.index_select(0, st["t"])  # [1, V]
        # z = logits / temperature (+ the EOS mask): [B, V] in logprob_dtype, as in logprobs.chunk_stats
        if h.dtype == ld and w.dtype == ld:
            if bias is not None:
                z = torch.addmm(bias, h, w.t(), alpha=inv_t)
            else:
                z = torch.mm(h, w.t())
                if inv_t != 1.0:
                    z.mul_(inv_t)
        else:
            z = h.to(ld) @ w.to(ld).t()
            if inv_t != 1.0:
                z = z * inv_t
            if bias is not None:
                z = z + bias
        z = filter_logits(z, self.top_k, self.top_p)
        lsm = torch.log_softmax(z, dim=-1)
        if greedy:
            tok = lsm.argmax(-1)
        else:
            u = torch.rand(lsm.shape, dtype=torch.float32, device=lsm.device, generator=generator)
            tok = (lsm.float() - u.log_().neg_().log_()).argmax(
                -1
            )  # Gumbel-max (log(-log u)): a draw from softmax(lsm)
        logp = lsm.gather(-1, tok[:, None]).view(-1).float()
        done = st["done"]
        tok.masked_fill_(done, self.pad)
        logp = logp.masked_fill(done, 0.0)
        st["out_tok"].index_copy_(0, st["t"], tok[None])
        st["out_logp"].index_copy_(0, st["t"], logp[None])
        st["out_h"].index_copy_(0, st["t"], h[None].to(st["out_h"].dtype))
        done.logical_or_(tok == self.eos)
        st["cur"].copy_(tok)

    # -- the static decoder ---------------------------------------------------------------------------------------

    def _alloc(self, B: int, P: int, greedy: bool) -> dict:
        S = max(P, self.max_prompt_len) + self.max_new_tokens
        s = self._states.get((B, greedy))
        if s is not None and s["S"] >= P + self.max_new_tokens:
            return s
        dev, D, T = self.device, self._pw.hidden, self.max_new_tokens
        record = self.keep_activations
        if record and self._record_auto:  # the recording's size: B rows x (S - T + T) positions x layers x widths
            w = self._pw
            width = (w.n_heads + 2 * w.n_kv) * w.head_dim + 2 * w.hidden + 4 * w.intermediate
            nbytes = B * S * len(w.layers) * width * w.embed.element_size()
            record = nbytes <= RECORD_BUDGET
        s = {
            "B": B,
            "S": S,
            "greedy": greedy,
            "pol": static.StaticCache(self._pw, B, S, dev, record_T=T if record else 0),
            "ref": static.StaticCache(self._rw, B, S, dev) if self._rw is not None else None,
            "generation": 0,  # sampling calls on these buffers (an Activations of an older call is stale)
            "t_int": None,  # the decode step's column as a number (eager decoding only; None while capturing)
            "cur": torch.full((B,), self.pad, dtype=torch.long, device=dev),
            "pos": torch.zeros(B, dtype=torch.long, device=dev),
            "wpos": torch.zeros(1, dtype=torch.long, device=dev),
            "t": torch.zeros(1, dtype=torch.long, device=dev),
            "done": torch.zeros(B, dtype=torch.bool, device=dev),
            # outputs are time-major ([T, B, ...]): each step writes one contiguous row
            "out_tok": torch.full((T, B), self.pad, dtype=torch.long, device=dev),
            "out_logp": torch.zeros(T, B, dtype=torch.float32, device=dev),
            "out_h": torch.zeros(T, B, D, dtype=torch.float32, device=dev),
            "out_rh": torch.zeros(T, B, D, dtype=torch.float32, device=dev),
            "graph": None,
            "graph_failed": False,
        }
        self._states[(B, greedy)] = s
        return s

    def _decode_step(self, st: dict, greedy: bool, generator=None) -> None:
        """One decode step on the state's buffers (no host synchronisation: capturable; ``st["t_int"]``:
        the step's column as a number when decoding eagerly, else None)."""
        if st["ref"] is not None:
            st["ref"].open_slot(st["wpos"])
            rh = st["ref"].step(st["cur"], st["pos"], st["wpos"], st["t"])
            st["out_rh"].index_copy_(0, st["t"], rh[None].float())
        st["pol"].open_slot(st["wpos"])
        h = st["pol"].step(st["cur"], st["pos"], st["wpos"], st["t"], st["t_int"])
        self._pick(h, st, greedy, generator)
        st["wpos"].add_(1)
        st["pos"].add_(1)
        st["t"].add_(1)

    def _capture(self, st: dict, greedy: bool):
        """A CUDA graph of one decode step (:func:`kltutor.capstone.fast.static.capture_graph`); ``None`` (and a
        warning) if it fails."""
        try:
            return static.capture_graph(self._decode_step, st, greedy, compile=self.decode_mode == "compile")
        except Exception as e:
            logger.warning("decode_mode=%r failed (%s: %s); decoding eagerly", self.decode_mode, type(e).__name__, e)
            self.decode_mode_used = "eager"
            st["graph_failed"] = True
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
            return None

    def _decode_static(self, input_ids: Tensor, attention_mask: Tensor, index, greedy: bool, generator):
        B, P = input_ids.shape
        st = self._alloc(B, P, greedy)
        self._pw.sync()
        if self._rw is not None:
            self._rw.sync()
        use_graph = (
            self.decode_mode != "eager" and generator is None and self.max_new_tokens > 1 and not st["graph_failed"]
        )
        if use_graph and st["graph"] is None:
            st["graph"] = self._capture(st, greedy)
        use_graph = use_graph and st["graph"] is not None
        if use_graph:
            self.decode_mode_used = self.decode_mode
        # prefill: each distinct prompt once; keys and values into slots [0, P) of its rows
        uids, umask, idx = index
        st["generation"] += 1
        st["done"].zero_()
        st["t"].zero_()
        st["out_tok"].fill_(self.pad)
        if st["ref"] is not None:
            st["out_rh"][0] = st["ref"].prefill(uids, umask, idx, attention_mask).float()
        h = st["pol"].prefill(uids, umask, idx, attention_mask)
        st["pos"].copy_(attention_mask.sum(-1))
        st["wpos"].fill_(P)
        self._pick(h, st, greedy, generator)
        st["t"].fill_(1)
        n = 1
        while n < self.max_new_tokens:
            if self.min_new_tokens <= n and n % self.check_every == 0 and bool(st["done"].all()):
                break
            if use_graph:
                st["t_int"] = None
                st["graph"].replay()
            else:
                st["t_int"] = n
                self._decode_step(st, greedy, generator)
            n += 1
        rh = st["out_rh"][:n].transpose(0, 1) if st["ref"] is not None else None
        with torch.inference_mode(False):  # views made here are ordinary tensors (the training graph reads them)
            acts = st["pol"].activations(self.model, uids.shape[0], P, n, st)
        return st["out_tok"][:n].t(), st["out_logp"][:n].t(), st["out_h"][:n].transpose(0, 1), rh, acts

    # -- the fallback: the model's own forward with a dynamic cache -----------------------------------------------

    def _decode_dynamic(self, input_ids: Tensor, attention_mask: Tensor, greedy: bool, generator):
        from transformers import DynamicCache

        model = self.model
        base = model.base_model
        try:
            cache = DynamicCache(config=model.config)
        except TypeError:
            cache = DynamicCache()
        cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        B, P = input_ids.shape
        T = self.max_new_tokens
        st = {
            "t": torch.zeros(1, dtype=torch.long, device=self.device),
            "done": torch.zeros(B, dtype=torch.bool, device=self.device),
            "cur": torch.full((B,), self.pad, dtype=torch.long, device=self.device),
            "out_tok": torch.full((T, B), self.pad, dtype=torch.long, device=self.device),
            "out_logp": torch.zeros(T, B, dtype=torch.float32, device=self.device),
            "out_h": torch.zeros(T, B, base.config.hidden_size, dtype=torch.float32, device=self.device),
        }
        self._pw = self._pw or _HeadOnly(model)
        attn = attention_mask
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        ids = input_ids
        was_training = model.training
        model.eval()
        amp = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast else contextlib.nullcontext()
        n = 0
        try:
            while n < T:
                with amp:
                    out = base(
                        input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **{cache_kw: cache}
                    )
                h = out.last_hidden_state[:, -1].float()
                self._pick(h, st, greedy, generator)
                n += 1
                st["t"].add_(1)
                if n >= self.min_new_tokens and bool(st["done"].all()):
                    break
                ids = st["cur"][:, None]
                pos = pos[:, -1:] + 1
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], -1)
        finally:
            model.train(was_training)
        return st["out_tok"][:n].t().contiguous(), st["out_logp"][:n].t().contiguous()


class _HeadOnly:
    """The output layer of a model the static decoder cannot drive (what :meth:`Sampler._pick` reads)."""

    def __init__(self, model):
        self.head = model.get_output_embeddings().weight.detach()

    def sync(self) -> None:
        pass


def generate_completions(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    **sampler_kwargs,
) -> dict:
    """Sample one completion per prompt with a one-off eager :class:`Sampler`; returns
    :meth:`SampleBatch.as_dict`: ``input_ids`` ``[batch, P + T]``, ``attention_mask`` (0 on padding and
    after the first EOS), ``completion_mask`` ``[batch, T]``, ``n_prompt`` = P, ``texts`` (before
    EOS), ``terminated`` (EOS emitted, a list) and ``logp`` (see the module docstring)."""
    sampler_kwargs.setdefault("decode_mode", "eager")
    s = Sampler(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, **sampler_kwargs)
    return s.sample(prompts, greedy=greedy, generator=generator).as_dict()
