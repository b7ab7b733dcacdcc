"""One GRPO step of the capstone against TRL's ``GRPOTrainer``, side by side in one run.

Both train the same Qwen2-architecture model (one directory written by ``save_pretrained``, loaded
by each side) on the capstone's addition task with the same settings: ``prompts x group``
completions per step, one optimizer step per generation batch, ``beta`` with k3 in the loss
(TRL's only KL placement), ``loss_type="grpo"`` / ``aggregation="sequence-mean"``, temperature 1,
no top-k / top-p, AdamW with the same learning rate and gradient clipping. Every completion is
exactly ``max_new_tokens`` long on both sides (``min_new_tokens = max_new_tokens``: EOS is
suppressed until the budget is spent), so both process the same tokens.

The two run alternately in one process: TRL's ``trainer.train()`` drives, and at the end of each
of its optimizer steps a callback runs one capstone step. The first ``--warmup`` steps of each are
excluded; the script prints the median seconds per optimizer step, completion tokens per second,
the ratio, and where the time goes (sample / score / forward / backward / other). It also prints a
physical floor: reading the policy's weights once per decode step at the measured memory
bandwidth, plus the step's least matrix FLOPs at the fastest measured matmul rate.

On the CPU the capstone runs twice per TRL step by default (``--cpu-matmul both``): with its float32
products through oneDNN (its default, :func:`kltutor.capstone.fast.onednn.cpu_matmul`) and through
torch's default (MKL, what TRL uses), so the speed-up is shown with and without the kernel choice.

    python benchmarks/capstone_throughput.py --device cpu                    # capstone only (no TRL here)
    PYTHONPATH=$PWD /work/venv-trl/bin/python benchmarks/capstone_throughput.py --device cpu
    python benchmarks/capstone_throughput.py --device cuda --quick           # sampler vs HF forward on the GPU
    python benchmarks/capstone_throughput.py --device cuda --decode-mode all # GPU sizes, bf16

``--quick`` only checks the sampler against a ``transformers`` forward over the sampled sequences
(log-probs of the sampled tokens, greedy tokens against ``model.generate``) for every decode mode
the device has, and exits with status 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kltutor.capstone.config import CapstoneConfig
from kltutor.capstone.model import build_model, build_tokenizer, load_model, quiet_transformers
from kltutor.capstone.task import AdditionTask

SIZES = {
    "cpu": dict(
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=512,
        max_operand=49,
        prompts=8,
        group=8,
        max_new_tokens=16,
        bf16=False,
        warmup=2,
        steps=10,
    ),
    "cuda": dict(
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=1536,
        max_operand=999,
        prompts=8,
        group=8,
        max_new_tokens=64,
        bf16=True,
        warmup=3,
        steps=10,
    ),
}
PHASES = ("sample", "score", "forward", "backward", "other")


class DigitMatchTask(AdditionTask):
    """The addition task with partial credit: the fraction of the answer's characters that the completion has
    at the same positions. Every completion is forced to the full length (no EOS), so the exact reward of
    :class:`AdditionTask` would be 0 for all of them and only the KL gradient would be exercised; this one
    varies within a group, so the advantages (and the policy-gradient term) are not zero. Both sides call
    :func:`digit_match` on the decoded completion text."""

    def reward(self, completion: str, terminated: bool, a: int, b: int) -> float:
        return digit_match(completion, self.answer(a, b))


def digit_match(completion: str, answer: str) -> float:
    """Fraction of ``answer``'s characters equal to ``completion``'s at the same position."""
    return sum(c == d for c, d in zip(completion, answer)) / len(answer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------------------
# the model directory both sides load
# ------------------------------------------------------------------------------------------------------------


def make_model_dir(path: Path, sz: dict, seed: int = 0) -> Path:
    task = AdditionTask(sz["max_operand"])
    tok = build_tokenizer(task.alphabet)
    model = build_model(
        tok,
        sz["hidden_size"],
        sz["num_layers"],
        sz["num_heads"],
        sz["num_kv_heads"],
        sz["intermediate_size"],
        max_positions=256,
        seed=seed,
    )
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------------------
# the capstone side
# ------------------------------------------------------------------------------------------------------------


class Capstone:
    """The capstone's GRPO step (kltutor.capstone.loop._step) on the benchmark's model and sizes."""

    def __init__(
        self,
        model_dir: Path,
        sz: dict,
        device: torch.device,
        lr: float,
        beta: float,
        seed: int,
        decode_mode: str,
        ref_scoring: str,
        matmul: str = "auto",
        phases: bool = True,
    ):
        from kltutor.capstone import loop
        from kltutor.capstone.fast import onednn

        self.loop, self.onednn, self.matmul = loop, onednn, matmul
        self.device = device
        self.cfg = CapstoneConfig(
            placement="k3-in-loss",
            beta=beta,
            max_operand=sz["max_operand"],
            prompts_per_step=sz["prompts"],
            group_size=sz["group"],
            max_new_tokens=sz["max_new_tokens"],
            temperature=1.0,
            lr=lr,
            clip_eps=0.2,
            aggregation="sequence-mean",
            updates_per_batch=1,
            max_grad_norm=1.0,
            logprob_chunk=16384,
            bf16=sz["bf16"],
            device=device.type,
            seed=seed,
            decode_mode=decode_mode,
            ref_scoring=ref_scoring,
            progress=False,
        ).validate()
        self.task = DigitMatchTask(sz["max_operand"])
        self.policy, self.tok = load_model(model_dir, device)
        self.ref, _ = load_model(model_dir, device)
        self.ref.requires_grad_(False).eval()
        self.policy.train()
        opt = loop.make_optimizer(self.policy.parameters(), lr)  # fused AdamW, as transformers' Trainer uses
        self.fused = all(g.get("fused") for g in opt.param_groups)
        self.counts = {"optimizer steps": 0, "batches": 0}
        opt.step = self._count(opt.step, "optimizer steps")
        self.sampler = loop.make_sampler(
            self.cfg, self.policy, self.ref, self.tok, self.task, device, min_new_tokens=sz["max_new_tokens"]
        )
        self.timings: dict[str, float] | None = {} if phases else None  # None: no per-phase synchronisation
        self.ctx = loop.StepContext(
            self.cfg,
            self.policy,
            self.ref,
            self.tok,
            self.task,
            opt,
            loop.make_beta_schedule(self.cfg),
            torch.Generator().manual_seed(seed),
            device,
            self.sampler,
            self.timings,
        )
        self.sampler.sample = self._count(self.sampler.sample, "batches")
        self.n = 0
        self.records: list[dict] = []

    def _count(self, fn, key):
        def counted(*a, **k):
            self.counts[key] += 1
            return fn(*a, **k)

        return counted

    def step(self) -> dict:
        timings = self.timings if self.timings is not None else {}
        timings.clear()
        before = self.onednn._MATMUL["mode"]
        self.onednn.cpu_matmul(self.matmul)  # the backend of this side's CPU products (onednn.cpu_matmul)
        try:
            _sync(self.device)
            t = time.perf_counter()
            row = self.loop._step(self.ctx, self.n)
            _sync(self.device)
            seconds = time.perf_counter() - t
        finally:
            self.onednn.cpu_matmul(before)
        self.n += 1
        phases = {k: timings.get(k, 0.0) for k in ("sample", "score", "forward", "backward")}
        phases["other"] = seconds - sum(phases.values())
        rec = {
            "seconds": seconds,
            "tokens": row.response_length * self.cfg.prompts_per_step * self.cfg.group_size,
            **phases,
        }
        self.records.append(rec)
        return rec


# ------------------------------------------------------------------------------------------------------------
# the TRL side
# ------------------------------------------------------------------------------------------------------------


def trl_available() -> str | None:
    """None if TRL can be imported, else why not."""
    try:
        import trl  # noqa: F401
        from datasets import Dataset  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


class TRLSide:
    """TRL's GRPOTrainer with the same settings; ``run(callback)`` trains ``warmup + steps`` steps and
    calls ``callback()`` after each optimizer step (where the capstone's step runs)."""

    def __init__(
        self,
        model_dir: Path,
        sz: dict,
        device: torch.device,
        lr: float,
        beta: float,
        seed: int,
        n_steps: int,
        out_dir: Path,
        gradient_checkpointing: bool,
        threads: int | None = None,
        phases: bool = True,
    ):
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        self.device, self.threads = device, threads
        self.calls: dict[str, int] = {}
        task = AdditionTask(sz["max_operand"])
        g = torch.Generator().manual_seed(seed + 1)
        pairs = task.sample(sz["prompts"] * (n_steps + 2), g)
        ds = Dataset.from_dict(
            {"prompt": [task.prompt(a, b) for a, b in pairs], "answer": [task.answer(a, b) for a, b in pairs]}
        )

        def addition_reward(prompts, completions, answer, **kwargs):
            return [digit_match(c, a) for c, a in zip(completions, answer)]

        T = sz["max_new_tokens"]
        args = GRPOConfig(
            output_dir=str(out_dir),
            per_device_train_batch_size=sz["prompts"] * sz["group"],
            num_generations=sz["group"],
            gradient_accumulation_steps=1,
            max_completion_length=T,
            generation_kwargs={"min_new_tokens": T},
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=beta,
            use_bias_correction_kl=False,  # plain k3 in the loss, as the capstone's k3-in-loss (TRL's default: True)
            loss_type="grpo",
            epsilon=0.2,
            scale_rewards="group",
            learning_rate=lr,
            weight_decay=0.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=1.0,
            max_steps=n_steps,
            seed=seed,
            gradient_checkpointing=gradient_checkpointing,
            bf16=sz["bf16"] and device.type == "cuda",
            use_cpu=device.type == "cpu",
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            model_init_kwargs={"dtype": torch.float32},
        )
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        self.trainer = GRPOTrainer(
            model=str(model_dir), reward_funcs=addition_reward, args=args, train_dataset=ds, processing_class=tok
        )
        from transformers.trainer_callback import PrinterCallback

        self.trainer.remove_callback(PrinterCallback)  # its log lines would interleave with the report
        self.timings: dict[str, float] = {}
        self._wrap(phases)

    def _timed(self, fn, name_of, sync: bool = True):
        device = self.device

        def wrapper(*a, **k):
            name = name_of()
            if sync:
                _sync(device)
            t = time.perf_counter()
            out = fn(*a, **k)
            if sync:
                _sync(device)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t
            self.calls[name] = self.calls.get(name, 0) + 1
            return out

        return wrapper

    def _wrap(self, phases: bool):
        tr = self.trainer
        tr._generate = self._timed(tr._generate, lambda: "sample", sync=phases)  # counted in any case
        if not phases:  # no synchronisation inside the step: the headline figure
            return
        tr._calculate_rewards = self._timed(tr._calculate_rewards, lambda: "score")
        tr._get_per_token_logps_and_entropies = self._timed(
            tr._get_per_token_logps_and_entropies, lambda: "forward" if torch.is_grad_enabled() else "score"
        )
        acc = tr.accelerator
        acc.backward = self._timed(acc.backward, lambda: "backward")

    def run(self, on_step, other_step, seed: int) -> None:
        """Train; around each TRL optimizer step run ``other_step()`` (the capstone's step) once, before or
        after it in a random order (seeded), so that neither side always runs with the other's caches warm;
        ``on_step(seconds, timings, first)`` gets TRL's time for the step without the other side's."""
        from transformers import TrainerCallback

        side, rng = self, random.Random(seed)

        class Alternate(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                side.settings = side.check_settings(side.threads)  # the optimizer exists from here on
                _sync(side.device)
                side.t_start, side.elapsed = time.perf_counter(), 0.0
                side.timings.clear()

            def on_step_begin(self, args, state, control, **kw):
                side.first = rng.random() < 0.5
                if side.first:
                    _sync(side.device)
                    side.elapsed += time.perf_counter() - side.t_start
                    other_step()
                    _sync(side.device)
                    side.t_start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                _sync(side.device)
                seconds = side.elapsed + time.perf_counter() - side.t_start
                on_step(seconds, dict(side.timings), side.first)
                side.timings.clear()
                if not side.first:
                    other_step()
                _sync(side.device)
                side.t_start, side.elapsed = time.perf_counter(), 0.0

        self.trainer.add_callback(Alternate())
        self.trainer.train()

    def check_settings(self, threads: int | None) -> dict:
        """What the comparison depends on, read from the live trainer (raises if one differs)."""
        tr, a = self.trainer, self.trainer.args
        opt = getattr(tr.optimizer, "optimizer", tr.optimizer)  # accelerate wraps it
        fused = all(g.get("fused") for g in opt.param_groups) if opt is not None else None
        got = {
            "use_bias_correction_kl": a.use_bias_correction_kl,
            "num_iterations": a.num_iterations,
            "steps_per_generation": a.steps_per_generation,
            "gradient_accumulation_steps": a.gradient_accumulation_steps,
            "optimizer": type(opt).__name__ if opt is not None else None,
            "fused": fused,
            "threads": torch.get_num_threads(),
        }
        want = {"use_bias_correction_kl": False, "num_iterations": 1, "steps_per_generation": 1}
        want["gradient_accumulation_steps"] = 1
        if threads:
            want["threads"] = threads
        bad = {k: (got[k], v) for k, v in want.items() if got[k] != v}
        if bad:
            raise RuntimeError(f"the comparison's settings differ from what it assumes (got, wanted): {bad}")
        return got


# ------------------------------------------------------------------------------------------------------------
# floors, checks, report
# ------------------------------------------------------------------------------------------------------------


def measured_peaks(device: torch.device) -> dict:
    """Memory bandwidth (a large copy, bytes read + written) and matmul FLOP/s on ``device``."""
    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_bytes = (2 << 30) if device.type == "cuda" else (256 << 20)
    x = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, dtype=dt, device=device)
    b = torch.randn(n, n, dtype=dt, device=device)

    def best(fn, reps):
        times = []
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t)
        return min(times[1:])

    t_copy = best(lambda: y.copy_(x), 5)
    t_mm = best(lambda: a @ b, 5)
    out = {
        "bandwidth_Bps": 2 * n_bytes / t_copy,
        "matmul_flops": 2 * n**3 / t_mm,
        "matmul_dtype": str(dt),
        "onednn_matmul_flops": None,
    }
    if device.type == "cpu":  # the capstone's products on the CPU (kltutor.capstone.fast.onednn.cpu_matmul)
        from kltutor.capstone.fast import onednn

        before = onednn._MATMUL["mode"]
        try:
            if onednn.cpu_matmul("auto") == "onednn":
                bt = b.t()
                out["onednn_matmul_flops"] = 2 * n**3 / best(lambda: onednn.mm_nt(a, bt), 5)
        finally:
            onednn.cpu_matmul(before)
    return out


def matmul_params(model) -> int:
    """Parameters a token's forward multiplies by: every weight matrix except the input embedding (the
    tied output layer counts once, as the head)."""
    return (
        sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
        + model.get_output_embeddings().weight.numel()
    )


def step_flops(
    n_params: int, B: int, U: int, P: int, T: int, shared: bool, recompute: bool = False, reuse: bool = False
) -> float:
    """Matrix FLOPs of one step (2 per parameter per token forward, 4 per token backward; attention over
    at most P + T positions is left out). Sampling: prefill + T - 1 decode steps; the reference and the
    update run over the prompt and the completion; with ``shared`` each distinct prompt (U of them) is
    run once and the last completion token is not fed back; ``recompute``: activation checkpointing
    runs the forward twice; ``reuse``: the update's forward takes the sampler's products (no forward
    products: one optimizer step per batch, so the update runs at the sampling-time parameters)."""
    prompt = U * P if shared else B * P
    seq = prompt + B * (T - 1) if shared else B * (P + T)
    sample = prompt + B * (T - 1)
    fwd = 0 if reuse else seq * (2 if recompute else 1)
    return 2.0 * n_params * (sample + seq + fwd + 2 * seq)


def weight_shapes(model) -> dict[tuple[int, int], int]:
    """(out, in) of every weight matrix a token's forward multiplies by (the tied output layer once, as the
    head; not the input embedding), with how many matrices have that shape."""
    shapes: dict[tuple[int, int], int] = {}
    mats = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n]
    for w in mats + [model.get_output_embeddings().weight]:
        key = tuple(w.shape)
        shapes[key] = shapes.get(key, 0) + 1
    return shapes


def product_rates(shapes, rows: list[int], device: torch.device, dtype: torch.dtype) -> dict:
    """Measured FLOP/s of ``x[M, in] @ W[out, in].T`` for every weight shape and every M in ``rows``: a
    product's rate depends on its shape (a decode step multiplies B rows, far below the peak a square
    8192 product reaches), so the floor uses each product's own rate."""
    rates = {}
    for m in sorted(set(rows)):
        for out_f, in_f in shapes:
            x = torch.randn(m, in_f, dtype=dtype, device=device)
            w = torch.randn(out_f, in_f, dtype=dtype, device=device)
            reps = 20 if device.type == "cuda" else 5
            times = []
            for _ in range(reps):
                _sync(device)
                t = time.perf_counter()
                x @ w.T
                _sync(device)
                times.append(time.perf_counter() - t)
            rates[(m, out_f, in_f)] = 2 * m * out_f * in_f / min(times[1:])
    return rates


def launch_latency(device: torch.device, n: int = 2000) -> dict:
    """Seconds per kernel in a chain of ``n`` tiny kernels, launched eagerly and replayed from a CUDA graph
    (the best a decode loop of dependent kernels can do); zero on the CPU (no launch queue)."""
    if device.type != "cuda":
        return {"eager_s": 0.0, "graph_s": 0.0}
    x = torch.zeros(1, device=device)

    def chain():
        for _ in range(n):
            x.add_(1.0)

    chain()
    torch.cuda.synchronize()
    t = time.perf_counter()
    chain()
    torch.cuda.synchronize()
    eager = (time.perf_counter() - t) / n
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        chain()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        chain()
    g.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    g.replay()
    torch.cuda.synchronize()
    return {"eager_s": eager, "graph_s": (time.perf_counter() - t) / n}


#: Kernels a decode step needs at least, per layer and once: q/k/v (one fused product), rotary embedding,
#: attention, output projection, residual add, norm, gate/up (one fused product), activation x up, down
#: projection, residual add, norm; then the head, the temperature/softmax, the sampling draw and the write
#: into the token buffer.
MIN_KERNELS_PER_LAYER, MIN_KERNELS_ONCE = 11, 4


def floor_estimate(
    shapes, n_layers: int, sz: dict, prompt_len: int, peaks: dict, rates: dict, latency: dict, reuse: bool
) -> dict:
    """A physical lower bound of one step of the least work (shared prompts; ``reuse``: no forward products
    in the update). Each of the T - 1 decode steps must read the policy's weights once (memory bandwidth)
    or do its matrix products at their measured rates at M = B rows (whichever is slower), plus a chain of
    at least ``MIN_KERNELS_PER_LAYER * layers + MIN_KERNELS_ONCE`` dependent kernels at the measured
    CUDA-graph latency per kernel (GPU). Prefill (M = U * P rows), the reference and the update (M = the
    step's tokens; the backward's two products per matrix counted at the forward's rate for the same
    shape) are matrix FLOPs at their own shapes' measured rates."""
    B, U, T = sz["prompts"] * sz["group"], sz["prompts"], sz["max_new_tokens"]
    P = prompt_len
    seq = U * P + B * (T - 1)

    def seconds(m: int, mult: float = 1.0) -> float:
        return sum(mult * n * 2 * m * o * i / rates[(m, o, i)] for (o, i), n in shapes.items())

    n_params = sum(n * o * i for (o, i), n in shapes.items())
    weight_bytes = 2 if sz["bf16"] else 4
    step_bytes = n_params * weight_bytes
    kernels = MIN_KERNELS_PER_LAYER * n_layers + MIN_KERNELS_ONCE
    per_decode = max(step_bytes / peaks["bandwidth_Bps"], seconds(B)) + kernels * latency["graph_s"]
    t_decode = (T - 1) * per_decode
    t_prefill = seconds(U * P)
    t_rest = seconds(seq) * (1 + (0 if reuse else 1) + 2)  # reference, update forward, backward (2 products)
    return {
        "n_params_matmul": n_params,
        "decode_s": t_decode,
        "decode_bytes": (T - 1) * step_bytes,
        "decode_kernels_per_step": kernels,
        "latency_per_kernel_s": latency,
        "prefill_s": t_prefill,
        "flops_s": t_prefill + t_rest,
        "flops": 2.0 * n_params * (U * P + seq * (1 + (0 if reuse else 1) + 2)),
        "floor_s": t_decode + t_prefill + t_rest,
    }


def quick_check(device: torch.device, log=print) -> bool:
    """The sampler's log-probs against a ``transformers`` forward over its own samples, and greedy tokens
    against ``model.generate``, for every decode mode (and both precisions on a GPU). True if all agree."""
    from kltutor.capstone.sampler import DECODE_MODES, Sampler, filter_logits

    task = AdditionTask(999)
    tok = build_tokenizer(task.alphabet)
    model = build_model(tok, 64, 2, 4, 2, 128, max_positions=128, seed=3).to(device).eval()
    with torch.no_grad():  # make EOS likely in some contexts, so rows finish at different steps
        model.get_output_embeddings().weight[tok.eos_token_id] *= 6.0
    ref = build_model(tok, 64, 2, 4, 2, 128, max_positions=128, seed=4).to(device).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [task.prompt(a, b) for a, b in task.sample(24, g)]
    modes = [m for m in DECODE_MODES if m != "auto"] if device.type == "cuda" else ["eager"]
    settings = [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9, top_k=8)]
    ok = True

    def hf_logp(ids, attn, P, temperature, top_k=0, top_p=1.0, amp=False):
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            h = model.model(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state[:, P - 1 : -1]
        z = (h.float() @ model.get_output_embeddings().weight.float().T) * (1.0 / temperature)
        z = filter_logits(z, top_k, top_p)
        return torch.log_softmax(z, -1).gather(-1, ids[:, P:, None]).squeeze(-1)

    precisions = [("float32", None, False)] + (
        [("bf16-autocast", torch.bfloat16, True)] if device.type == "cuda" else []
    )
    for mode in modes:
        for prec, cdt, amp in precisions:
            if mode == "compile" and prec == "float32":
                continue  # one compilation is enough to check the compiled path (bf16 below)
            for s in settings[:1] if mode == "compile" else settings:
                sampler = Sampler(
                    model,
                    tok,
                    ref_model=ref,
                    max_new_tokens=12,
                    decode_mode=mode,
                    compute_dtype=cdt,
                    autocast=amp,
                    max_prompt_len=8,
                    **s,
                )
                torch.manual_seed(0)
                draws = [sampler.sample(prompts) for _ in range(2)]  # the second replays the captured graph
                b = draws[1]
                m = b.completion_mask.bool()
                hf = hf_logp(b.input_ids, b.attention_mask, b.n_prompt, **s, amp=amp)
                err = (hf - b.logp).abs()[m].max().item()
                if amp:  # bf16: the sampler's error vs a float32 forward must be of the size of HF's own bf16 error
                    exact = hf_logp(b.input_ids, b.attention_mask, b.n_prompt, **s)
                    hf_err = (hf - exact).abs()[m].max().item()
                    own = (b.logp - exact).abs()[m].max().item()
                    good = own <= 3 * hf_err + 0.02
                    detail = f"|sampler - fp32 forward| {own:.2e}, |HF bf16 - fp32 forward| {hf_err:.2e}"
                else:
                    good = err < 1e-3
                    detail = f"max |logp - HF forward| {err:.2e}"
                lengths = b.completion_mask.sum(-1)
                good = good and bool(torch.isfinite(b.logp).all())
                fell_back = sampler.decode_mode_used != mode  # a requested mode that fell back is a failure
                same_draws = torch.equal(draws[0].completion_ids, draws[1].completion_ids)  # a replay must redraw
                good = good and not fell_back and not same_draws
                if fell_back:
                    detail += f"; FELL BACK to {sampler.decode_mode_used}"
                if same_draws:
                    detail += "; two calls drew the same samples"
                ok &= good
                log(
                    f"  {'ok ' if good else 'BAD'} mode={sampler.decode_mode_used:10s} {prec:13s} {s}: {detail}; "
                    f"lengths {int(lengths.min())}..{int(lengths.max())}, terminated {int(b.terminated.sum())}/{len(prompts)}"
                )
            if prec == "float32":
                good, detail = frequency_check(model, tok, prompts[0], mode, device)
                ok &= good
                log(f"  {'ok ' if good else 'BAD'} mode={mode:10s} first-token frequencies: {detail}")
            # greedy tokens against model.generate (float32 only: bf16 argmax ties may differ)
            if prec == "float32" and mode != "compile":
                sampler = Sampler(model, tok, max_new_tokens=12, decode_mode=mode, max_prompt_len=8)
                b = sampler.sample(prompts, greedy=True)
                enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                with torch.no_grad():
                    out = model.generate(
                        **enc,
                        max_new_tokens=12,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id,
                    )
                gen = out[:, enc["input_ids"].shape[1] :]
                T = min(gen.shape[1], b.completion_ids.shape[1])
                same = torch.equal(gen[:, :T], b.completion_ids[:, :T]) and gen.shape[1] == b.completion_ids.shape[1]
                ok &= same
                log(
                    f"  {'ok ' if same else 'BAD'} mode={sampler.decode_mode_used:10s} greedy tokens == model.generate: {same}"
                )
    return ok


def frequency_check(model, tok, prompt: str, mode: str, device: torch.device, n: int = 4096) -> tuple[bool, str]:
    """The first completion token of ``prompt`` drawn ``n`` times (one batch, repeated calls so a captured
    graph is replayed) against the model's own distribution: a chi-square goodness-of-fit test over the
    tokens of expected count >= 5 (the rest pooled), at the 0.1% level (Wilson-Hilferty quantile), so a
    sampler that drew from the wrong distribution, or replayed the same noise, fails."""
    from kltutor.capstone.sampler import Sampler

    sampler = Sampler(model, tok, max_new_tokens=1, decode_mode=mode, max_prompt_len=8)
    counts = torch.zeros(model.get_output_embeddings().weight.shape[0], dtype=torch.float64)
    batch = 256
    for _ in range(n // batch):
        b = sampler.sample([prompt] * batch)
        counts += torch.bincount(b.completion_ids[:, 0].cpu(), minlength=counts.numel()).double()
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False).to(device)
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits[0, -1].double(), -1).cpu()
    expected = probs * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    dof = int(keep.sum()) - 1
    z = 3.090  # the standard normal's 99.9% quantile
    crit = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    return (
        chi2 < crit,
        f"chi2 {chi2:.1f} < {crit:.1f} ({dof} dof, {int(counts.sum())} draws, mode used {sampler.decode_mode_used})",
    )


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def bootstrap_median(xs: list[float], seed: int, n: int = 4000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``xs`` (``n`` resamples, seeded)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    lo = meds[int((1 - level) / 2 * n)]
    hi = meds[min(n - 1, int((1 + level) / 2 * n))]
    return lo, hi


def paired_ratios(cap_recs: dict[str, list[dict]], trl_recs: list[dict], name: str, warmup: int, seed: int) -> dict:
    """Per round (one TRL step and the capstone's steps next to it), TRL's seconds over the capstone's: the
    median of these paired ratios with a bootstrap 95% interval. Pairing cancels what drifts over a run
    (another process, the clock, the allocator), which a ratio of two medians does not."""
    out = {}
    for k, recs in cap_recs.items():
        pairs = [t["seconds"] / c["seconds"] for t, c in zip(trl_recs[warmup:], recs[warmup:])]
        if len(pairs) < 2:
            continue
        lo, hi = bootstrap_median(pairs, seed)
        med = statistics.median(pairs)
        out[k] = {"median": med, "ci95": [lo, hi], "n": len(pairs), "ratios": pairs}
        print(
            f"{k} speed-up over {name}: {med:.2f}x (median of {len(pairs)} paired per-step ratios, 95% CI {lo:.2f}-{hi:.2f})"
        )
    return out


def report(sides: dict[str, list[dict]], warmup: int) -> dict:
    out = {}
    lines = []
    for name, recs in sides.items():
        recs = recs[warmup:]
        if not recs:
            continue
        sec = _median([r["seconds"] for r in recs])
        tok = _median([r["tokens"] / r["seconds"] for r in recs])
        br = {p: _median([r[p] for r in recs]) for p in PHASES}
        out[name] = {
            "median_s_per_step": sec,
            "completion_tokens_per_s": tok,
            "breakdown_median_s": br,
            "n_steps": len(recs),
            "all_s": [r["seconds"] for r in recs],
        }
        share = "  ".join(f"{p} {br[p]:.4f} ({100 * br[p] / sec:.0f}%)" for p in PHASES)
        lines.append(f"{name:28s} {sec:9.4f} s/step  {tok:10.0f} tok/s   {share}")
    print("\n".join(lines))
    names = list(out)
    others = [n for n in names if not n.startswith("capstone")]
    for cap in [n for n in names if n.startswith("capstone")]:
        for other in others or [n for n in names if n != "capstone" and cap == "capstone"]:
            ratio = out[other]["median_s_per_step"] / out[cap]["median_s_per_step"]
            out[f"ratio_vs_{other}" if cap == "capstone" else f"ratio_{cap}_vs_{other}"] = ratio
            print(f"{cap} speed-up over {other}: {ratio:.2f}x (median s/step ratio)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--quick", action="store_true", help="only check the sampler against a transformers forward; exit 1 on mismatch"
    )
    p.add_argument("--steps", type=int, default=None, help="measured steps per side (default: the device's)")
    p.add_argument("--warmup", type=int, default=None, help="excluded first steps per side (default: the device's)")
    p.add_argument(
        "--decode-mode",
        default="auto",
        choices=["auto", "eager", "cuda-graph", "compile", "all"],
        help="the capstone sampler's decode mode; 'all' times sampling in each mode first and uses the fastest",
    )
    p.add_argument(
        "--ref-scoring",
        default="batched",
        choices=["batched", "in-loop", "both"],
        help="how the capstone scores the reference; 'both' (with --no-trl) alternates the two",
    )
    p.add_argument(
        "--trl",
        choices=["default", "no-ckpt", "both"],
        default="both",
        help="TRL configuration(s): its defaults (gradient checkpointing on), gradient checkpointing off "
        "(no recomputed forward), or one run of each, each alternating with the capstone",
    )
    p.add_argument("--no-trl", action="store_true", help="capstone only")
    p.add_argument(
        "--cpu-matmul",
        choices=["auto", "onednn", "default", "both"],
        default="both",
        help="the capstone's float32 products on the CPU (kltutor.capstone.fast.onednn.cpu_matmul): oneDNN, torch's "
        "default (MKL), or both (two capstone sides, each alternating with TRL); TRL always uses torch's default",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default on the CPU: 1, since OpenMP threads on a shared, loaded machine "
        "spin-wait and make both sides several times slower; on a GPU: torch's)",
    )
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--phases",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the phases of each step (synchronising a GPU at each phase boundary); --no-phases for the "
        "headline figure, which then has no breakdown",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    quiet_transformers()
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
        import trl

        env["trl"] = trl.__version__
    except Exception:
        pass
    print("environment:", json.dumps(env))
    if args.quick:
        ok = quick_check(device)
        print("quick check:", "PASSED" if ok else "FAILED")
        return 0 if ok else 1

    sz = dict(SIZES[device.type])
    warmup = sz["warmup"] if args.warmup is None else args.warmup
    steps = sz["steps"] if args.steps is None else args.steps
    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kltutor-bench-"))
    model_dir = make_model_dir(work / "model", sz, args.seed)
    print(f"sizes: {json.dumps(sz)}; model directory {model_dir}")

    decode_mode = args.decode_mode
    if decode_mode == "all":
        decode_mode = pick_decode_mode(model_dir, sz, device, args)
    if args.ref_scoring == "both" and not args.no_trl:
        print("error: --ref-scoring both compares the capstone with itself: add --no-trl", file=sys.stderr)
        return 2
    from kltutor.capstone.fast import onednn

    scoring = "batched" if args.ref_scoring == "both" else args.ref_scoring
    # the headline row uses the same float32 matrix library on both sides (torch's default); oneDNN second
    backends = {"both": ["default", "onednn"], "auto": ["auto"], "onednn": ["onednn"], "default": ["default"]}[
        args.cpu_matmul
    ]
    if device.type != "cpu":
        backends = ["auto"]  # the choice concerns the CPU's products only
    elif args.ref_scoring == "both":
        backends = backends[:1]
    if "onednn" in backends and onednn.cpu_matmul("auto") != "onednn":
        print("oneDNN's linear op is not usable with this torch: the capstone uses torch's default products")
        backends = [b for b in backends if b != "onednn"] or ["default"]
    caps = {
        ("capstone" if i == 0 else "capstone, oneDNN products"): Capstone(
            model_dir, sz, device, args.lr, args.beta, args.seed, decode_mode, scoring, matmul=m, phases=args.phases
        )
        for i, m in enumerate(backends)
    }
    cap = caps["capstone"]
    if device.type == "cpu":
        print(
            "capstone products on the CPU: "
            + ", ".join(
                f"{k}: {'oneDNN' if c.matmul == 'onednn' else 'torch default (MKL)' if c.matmul == 'default' else onednn.cpu_matmul()}"
                for k, c in caps.items()
            )
            + ("" if args.no_trl else "; TRL: torch default (MKL)")
        )
    n_params = sum(p.numel() for p in cap.policy.parameters())
    prompt_len = len(
        cap.tok(cap.task.prompt(sz["max_operand"], sz["max_operand"]), add_special_tokens=False)["input_ids"]
    )
    print(
        f"model: {n_params:,} parameters ({matmul_params(cap.policy):,} in matrices a token multiplies by); {sz['prompts']} prompts x {sz['group']} completions x {sz['max_new_tokens']} "
        f"tokens (forced: min_new_tokens = max_new_tokens on both sides); prompts up to {prompt_len} tokens"
    )

    n_matmul = matmul_params(cap.policy)
    B, U, T = sz["prompts"] * sz["group"], sz["prompts"], sz["max_new_tokens"]
    reuse = cap.sampler.keep_activations  # the first update takes the sampler's products (the CPU)
    flops = {
        "capstone (shared prompts" + (", forward reused)" if reuse else ")"): step_flops(
            n_matmul, B, U, prompt_len, T, shared=True, reuse=reuse
        ),
        "TRL": step_flops(n_matmul, B, U, prompt_len, T, shared=False),
        "TRL, gradient checkpointing": step_flops(n_matmul, B, U, prompt_len, T, shared=False, recompute=True),
    }
    print("matrix GFLOP per step: " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in flops.items()))

    why_not = "--no-trl" if args.no_trl else trl_available()
    variants = {"default": [True], "no-ckpt": [False], "both": [True, False]}[args.trl]
    results, settings = {}, {}
    order_rng = random.Random(args.seed + 1)
    t0 = time.perf_counter()
    if why_not is None:
        for ckpt in variants:
            name = "TRL GRPOTrainer" + (" (grad. ckpt: its default)" if ckpt else " (no grad. ckpt)")
            cap_recs: dict[str, list[dict]] = {k: [] for k in caps}
            trl_recs: list[dict] = []
            print(f"\n--- capstone vs {name}, alternating, {warmup} + {steps} steps each")
            try:
                trl_side = TRLSide(
                    model_dir,
                    sz,
                    device,
                    args.lr,
                    args.beta,
                    args.seed,
                    warmup + steps,
                    work / f"trl-{int(ckpt)}",
                    ckpt,
                    threads,
                    args.phases,
                )

                def after_trl_step(seconds, timings, first, trl_recs=trl_recs):
                    phases = {k: timings.get(k, 0.0) for k in ("sample", "score", "forward", "backward")}
                    phases["other"] = seconds - sum(phases.values())
                    trl_recs.append({"seconds": seconds, "tokens": B * T, "capstone_first": first, **phases})

                def capstone_steps(cap_recs=cap_recs):
                    for k in order_rng.sample(list(caps), len(caps)):  # the capstone sides, in random order too
                        cap_recs[k].append(caps[k].step())

                trl_side.run(after_trl_step, capstone_steps, args.seed)
                trl_steps = trl_side.trainer.state.global_step
                settings[name] = trl_side.settings | {
                    "optimizer steps per generation batch": trl_steps / max(1, trl_side.calls.get("sample", 0))
                }
                del trl_side
            except Exception as e:
                print(f"TRL failed: {type(e).__name__}: {e}")
                why_not = f"TRL failed ({type(e).__name__})"
                break
            results[name] = report({**cap_recs, name: trl_recs}, warmup)
            results[name]["paired"] = paired_ratios(cap_recs, trl_recs, name, warmup, args.seed)
            if args.json:  # written after each comparison, so a run cut short keeps what it measured
                args.json.write_text(json.dumps({"partial": True, "results": results, "environment": env}, default=str))
    for k, c in caps.items():  # one optimizer step per sampled batch on the capstone side too, fused AdamW
        per_batch = c.counts["optimizer steps"] / max(1, c.counts["batches"])
        settings[k] = {"fused": c.fused, "optimizer steps per generation batch": per_batch}
    for name, st in settings.items():
        print(f"settings checked, {name}: {json.dumps(st)}")
    fused = {st.get("fused") for st in settings.values()}
    steps_per_batch = {st["optimizer steps per generation batch"] for st in settings.values()}
    if len(fused) > 1 or steps_per_batch - {1.0}:
        raise SystemExit(f"the two sides differ in a setting the comparison depends on: {settings}")
    if why_not is not None and args.ref_scoring == "both":
        print("capstone with the reference scored in one batched pass vs inside the decode loop, alternating")
        other = Capstone(model_dir, sz, device, args.lr, args.beta, args.seed, decode_mode, "in-loop")
        recs = {"capstone": [], "capstone, reference in-loop": []}
        for _ in range(warmup + steps):
            recs["capstone"].append(cap.step())
            recs["capstone, reference in-loop"].append(other.step())
        results["reference scoring"] = report(recs, warmup)
    elif why_not is not None:
        print(f"TRL not run ({why_not}); timing the capstone alone")
        alone: dict[str, list[dict]] = {k: [] for k in caps}
        for _ in range(warmup + steps):
            for k, c in caps.items():
                alone[k].append(c.step())
        results["capstone alone"] = report(alone, warmup)
    print(f"\nwall time {time.perf_counter() - t0:.1f} s; capstone decode mode used: {cap.sampler.decode_mode_used}")
    peaks = measured_peaks(device)
    dnn = peaks.get("onednn_matmul_flops")
    print(
        f"measured on this device: {peaks['bandwidth_Bps'] / 1e9:.0f} GB/s copy bandwidth, {peaks['matmul_flops'] / 1e9:.0f} "
        f"GFLOP/s {peaks['matmul_dtype']} matmul (torch's default)"
        + (f", {dnn / 1e9:.0f} GFLOP/s through oneDNN" if dnn else "")
    )
    shapes = weight_shapes(cap.policy)
    dtype = torch.bfloat16 if (sz["bf16"] and device.type == "cuda") else torch.float32
    seq_rows = U * prompt_len + B * (T - 1)
    rates = product_rates(shapes, [B, U * prompt_len, seq_rows], device, dtype)
    latency = launch_latency(device)
    floor = floor_estimate(shapes, sz["num_layers"], sz, prompt_len, peaks, rates, latency, reuse=reuse)
    floor["peaks"] = peaks
    floor["rates"] = {f"M={m} {o}x{i}": r for (m, o, i), r in rates.items()}
    print(
        "measured product rates (GFLOP/s) at the step's own shapes: "
        + ", ".join(f"M={m} {o}x{i}: {r / 1e9:.0f}" for (m, o, i), r in sorted(rates.items()))
    )
    if device.type == "cuda":
        print(
            f"kernel launch latency: {latency['eager_s'] * 1e6:.2f} us eager, {latency['graph_s'] * 1e6:.2f} us "
            f"replayed from a CUDA graph; a decode step needs at least {floor['decode_kernels_per_step']} kernels"
        )
    print(
        f"physical floor: {floor['floor_s'] * 1e3:.2f} ms/step (decode: {T - 1} steps, each reading the weights "
        f"({floor['decode_bytes'] / 1e6:.1f} MB in all) or doing its products at M = {B}, whichever is slower, plus "
        f"its kernel chain: {floor['decode_s'] * 1e3:.2f} ms; prefill, reference and update: "
        f"{floor['flops'] / 1e9:.2f} GFLOP at their shapes' rates, {floor['flops_s'] * 1e3:.2f} ms)"
    )
    for name, r in results.items():
        for side, v in r.items():
            if isinstance(v, dict) and "median_s_per_step" in v:
                print(f"  {name}: {side} at {v['median_s_per_step'] / floor['floor_s']:.1f}x the floor")
    res = {
        "results": results,
        "floor": floor,
        "flops_per_step": flops,
        "environment": env,
        "sizes": sz,
        "warmup": warmup,
        "decode_mode": cap.sampler.decode_mode_used,
        "ref_scoring": args.ref_scoring,
        "cpu_matmul": {k: c.matmul for k, c in caps.items()},
        "settings": settings,
        "command": " ".join(sys.argv),
    }
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


def pick_decode_mode(model_dir: Path, sz: dict, device: torch.device, args) -> str:
    """Time the capstone's sampling alone in every decode mode the device has; return the fastest."""
    modes = ["eager", "cuda-graph", "compile"] if device.type == "cuda" else ["eager"]
    times = {}
    for mode in modes:
        cap = Capstone(model_dir, sz, device, args.lr, args.beta, args.seed, mode, args.ref_scoring)
        prompts = [
            cap.task.prompt(a, b)
            for a, b in cap.task.sample(sz["prompts"], torch.Generator().manual_seed(0))
            for _ in range(sz["group"])
        ]
        t_all = []
        for i in range(8):
            _sync(device)
            t = time.perf_counter()
            cap.sampler.sample(prompts)
            _sync(device)
            if i >= 3:
                t_all.append(time.perf_counter() - t)
        used = cap.sampler.decode_mode_used
        times[mode] = statistics.median(t_all)
        print(f"decode mode {mode:10s} (ran as {used}): sampling {times[mode] * 1e3:.2f} ms per batch")
        if used != mode:
            times[mode] = math.inf
        del cap
    best = min(times, key=times.get)
    print(f"decode mode chosen: {best}")
    return best


if __name__ == "__main__":
    sys.exit(main())
