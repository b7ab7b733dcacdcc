"""Configuration of a capstone run: one dataclass, validated, with named presets (chapter 9)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CAPSTONE_PLACEMENTS", "CapstoneConfig", "PRESETS", "preset", "default_cache_dir"]

# The placements of kltutor.placements plus the exact full-vocabulary KL in the loss.
CAPSTONE_PLACEMENTS = ("none", "k1-in-reward", "k3-in-reward", "k1-in-loss", "k2-in-loss", "k3-in-loss", "exact-in-loss")


def default_cache_dir() -> Path:
    """Where reference policies are cached: ``$KLTUTOR_CACHE`` or ``~/.cache/kltutor/capstone``."""
    return Path(os.environ.get("KLTUTOR_CACHE", Path.home() / ".cache" / "kltutor")) / "capstone"


@dataclass
class CapstoneConfig:
    """Every knob of a capstone run. Field comments are the CLI's help text."""

    # --- KL ---
    placement: str = "k1-in-reward"  # where the KL term goes (see CAPSTONE_PLACEMENTS)
    beta: float = 0.05  # KL coefficient (initial value for an adaptive schedule)
    kl_level: str = "token"  # in-loss estimators: apply per token ('token') or to the sequence log-ratio ('sequence')
    kl_schedule: str = "fixed"  # 'fixed', or a name accepted by kltutor.schedules.make_schedule (e.g. 'adaptive')
    kl_target: float = 1.0  # adaptive schedule: target sequence KL (nats)
    kl_horizon: int = 10000  # adaptive schedule: horizon in samples
    importance_weighted_kl: bool = False  # in-loss KL: weight each token by w_t = pi/pi_old (off-policy correction)
    # --- task ---
    max_operand: int = 49  # operands are integers in [0, max_operand]
    format_reward: float = 0.0  # reward for a well-formed but wrong answer (digits then EOS)
    # --- model ---
    model: str | None = None  # None: a small Qwen2 trained from scratch by SFT; else a model name or local path
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    # --- SFT (the reference policy) ---
    sft_steps: int = 300  # SFT optimiser steps (0: use the loaded model as the reference as is)
    sft_batch_size: int = 64
    sft_lr: float = 3e-3
    sft_seed: int = 1234
    # --- GRPO ---
    steps: int = 20  # RL steps (one batch of prompts each)
    prompts_per_step: int = 8
    group_size: int = 8  # completions per prompt
    max_new_tokens: int = 4
    temperature: float = 1.0
    lr: float = 1e-3
    clip_eps: float = 0.2
    clip_std: tuple[float, float] | None = None  # clamp the group std into (lo, hi)
    normalize_std: bool = True  # divide advantages by the group std (False: Dr. GRPO)
    aggregation: str = "sequence-mean"  # 'token-mean', 'sequence-mean' or 'sequence-sum'
    updates_per_batch: int = 1  # >1: several (off-policy) updates on each batch
    max_grad_norm: float = 1.0
    logprob_chunk: int = 1024  # rows of [batch*time] per chunk when computing log-softmax
    bf16: bool = True  # bf16 autocast on a GPU (ignored on the CPU)
    device: str = "auto"  # 'auto', 'cpu' or 'cuda'
    seed: int = 0
    top_p: float = 1.0  # nucleus sampling: keep the most likely tokens up to probability top_p (1: off)
    top_k: int = 0  # sample among the top_k most likely tokens (0: off)
    logprob_dtype: str = "float32"  # the sampler's logits, log-softmax and scoring pass: 'float32' or 'bfloat16'
    decode_mode: str = "auto"  # sampler decode step: 'auto' (CUDA graph on a GPU, eager on the CPU), 'eager', 'cuda-graph', 'compile'
    ref_scoring: str = "batched"  # reference log-probs: one pass after sampling ('batched') or inside the decode loop ('in-loop')
    # --- files ---
    run_dir: str | None = None  # where metrics.jsonl and checkpoints go (None: a temporary directory)
    cache_dir: str | None = None  # where reference policies are cached (None: default_cache_dir())
    checkpoint_every: int = 0  # save a checkpoint every N steps (0: never)
    resume: bool = False  # continue from run_dir's checkpoint
    progress: bool = True  # tqdm progress bar (TQDM_DISABLE=1 turns it off)

    def validate(self) -> "CapstoneConfig":
        """Raise ``ValueError`` naming the first bad field; return ``self``."""
        if self.placement not in CAPSTONE_PLACEMENTS:
            raise ValueError(f"unknown KL placement {self.placement!r}; choose one of {list(CAPSTONE_PLACEMENTS)}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if self.kl_level not in ("token", "sequence"):
            raise ValueError(f"kl_level must be 'token' or 'sequence', got {self.kl_level!r}")
        if self.kl_level == "sequence" and self.placement in ("k1-in-reward", "k3-in-reward", "exact-in-loss"):
            raise ValueError(f"kl_level='sequence' applies to the k*-in-loss placements, not to {self.placement!r}")
        if self.importance_weighted_kl and self.kl_level == "sequence":
            raise ValueError("importance_weighted_kl is implemented at token level only (kl_level='token')")
        if self.aggregation not in ("token-mean", "sequence-mean", "sequence-sum"):
            raise ValueError(f"aggregation must be 'token-mean', 'sequence-mean' or 'sequence-sum', got {self.aggregation!r}")
        positive_ints = ("max_operand", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                         "sft_batch_size", "prompts_per_step", "max_new_tokens", "updates_per_batch", "logprob_chunk")
        for name in positive_ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("steps", "sft_steps", "checkpoint_every", "kl_horizon"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO compares completions of one prompt), got {self.group_size}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
        for name in ("temperature", "lr", "sft_lr", "clip_eps", "max_grad_norm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not (0.0 <= self.format_reward < 1.0):
            raise ValueError(f"format_reward must be in [0, 1), got {self.format_reward}")
        if self.clip_std is not None:
            lo, hi = self.clip_std
            if not 0 < lo <= hi:
                raise ValueError(f"clip_std must be (lo, hi) with 0 < lo <= hi, got {self.clip_std}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.resume and self.run_dir is None:
            raise ValueError("resume=True needs the run_dir of the interrupted run")
        if self.kl_schedule != "fixed":
            try:
                from kltutor.schedules import SCHEDULES
            except ImportError:
                raise ValueError(f"kl_schedule={self.kl_schedule!r} needs kltutor.schedules, which is not installed; use 'fixed'") from None
            if self.kl_schedule not in SCHEDULES:
                raise ValueError(f"unknown kl_schedule {self.kl_schedule!r}; choose one of {sorted(SCHEDULES)}")
        if self.kl_target <= 0:
            raise ValueError(f"kl_target must be > 0, got {self.kl_target}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        for name, allowed in (("logprob_dtype", ("float32", "bfloat16")), ("decode_mode", ("auto", "eager", "cuda-graph", "compile")),
                              ("ref_scoring", ("batched", "in-loop"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        return self

    def replace(self, **changes) -> "CapstoneConfig":
        """A copy with ``changes`` applied (unknown fields raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    # The CPU: a ~43k-parameter Qwen2 on sums of numbers up to 19; finishes in well under a minute.
    # (Sizes and learning rates of 'colab' and 'h100' are starting points, not tuned results.)
    "smoke": dict(max_operand=19, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                  sft_steps=300, sft_batch_size=64, sft_lr=3e-3, steps=8, prompts_per_step=8, group_size=4,
                  max_new_tokens=3, lr=1e-4, logprob_chunk=64, device="cpu", progress=False),
    # A 16 GB Colab GPU (T4): a ~3M-parameter Qwen2 on two-digit sums.
    "colab": dict(max_operand=99, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=768,
                  sft_steps=1500, sft_batch_size=256, sft_lr=1e-3, steps=200, prompts_per_step=32, group_size=8,
                  max_new_tokens=4, lr=3e-5, logprob_chunk=4096),
    # One H100 / H200: a ~25M-parameter Qwen2, three-digit sums, large groups.
    "h100": dict(max_operand=999, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536,
                 sft_steps=4000, sft_batch_size=512, sft_lr=5e-4, steps=500, prompts_per_step=64, group_size=16,
                 max_new_tokens=5, lr=2e-5, logprob_chunk=16384),
}


def preset(name: str, **overrides) -> CapstoneConfig:
    """The config of preset ``name`` ('smoke', 'colab', 'h100') with ``overrides`` applied, validated."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return CapstoneConfig(**{**PRESETS[name], **overrides}).validate()
