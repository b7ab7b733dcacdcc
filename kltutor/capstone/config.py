"""Configuration of a capstone run: one dataclass, validated, with named presets (chapter ``ch-capstone``)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "REFERENCE_FIELDS",
    "CAPSTONE_PLACEMENTS",
    "CapstoneConfig",
    "CapstoneUserError",
    "ConfigError",
    "RunNotFoundError",
    "CapstoneOutOfMemoryError",
    "PRESETS",
    "preset",
    "default_cache_dir",
    "flag",
]

# The placements of kltutor.placements plus the exact full-vocabulary KL in the loss.
CAPSTONE_PLACEMENTS = (
    "none",
    "k1-in-reward",
    "k3-in-reward",
    "k1-in-loss",
    "k2-in-loss",
    "k3-in-loss",
    "exact-in-loss",
)

#: The settings that make the SFT reference policy: its cache key (:func:`kltutor.capstone.sft.reference_dir`),
#: and, with the seed, what a resumed run can never change (:data:`kltutor.capstone.rundir.FIXED_ON_RESUME`).
REFERENCE_FIELDS = (
    "max_operand",
    "model",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "sft_steps",
    "sft_batch_size",
    "sft_lr",
    "sft_seed",
)


class CapstoneUserError(Exception):
    """A mistake the user can fix (a setting, a path, a device, a run directory, a corrupt file).

    The message says what is wrong and what to do; the command line prints it on one line (after the
    flag in :attr:`field`, when there is one) and exits with code 2, without a traceback.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConfigError(CapstoneUserError, ValueError):
    """A bad value of one :class:`CapstoneConfig` field (``field`` names it)."""


class RunNotFoundError(CapstoneUserError, FileNotFoundError):
    """``resume`` names a run directory, or a checkpoint, that does not exist."""


class CapstoneOutOfMemoryError(CapstoneUserError, RuntimeError):
    """The configuration does not fit on the GPU; the message names a smaller preset and the knobs."""


def flag(field_name: str) -> str:
    """The command-line flag of a config field: ``kl_target`` -> ``--kl-target``."""
    return "--" + field_name.replace("_", "-")


# Which schedule setting each kltutor.schedules keyword comes from (BetaSchedule.uses names the keywords).
SCHEDULE_FIELDS = {"target": "kl_target", "horizon": "kl_horizon", "end": "beta_end"}
DEFAULT_KL_TARGET = 1.0
DEFAULT_KL_HORIZON = 10000


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
    kl_schedule: str = (
        "fixed"  # a name of kltutor.schedules.SCHEDULES: 'fixed', 'adaptive', 'ppo-penalty', 'linear', ...
    )
    kl_target: float | None = None  # adaptive / ppo-penalty: target sequence KL in nats (None: 1.0)
    kl_horizon: int | None = (
        None  # adaptive: horizon in samples (None: 10000); annealing: samples to reach beta_end (None: the whole run)
    )
    beta_end: float | None = None  # annealing schedules (linear, cosine, exponential): the final beta
    importance_weighted_kl: bool = (
        False  # in-loss KL on stale samples: importance weights (``ch-placements``; see loss.step_loss)
    )
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
    decode_mode: str = (
        "auto"  # sampler decode step: 'auto' (CUDA graph on a GPU, eager on the CPU), 'eager', 'cuda-graph', 'compile'
    )
    ref_scoring: str = (
        "batched"  # reference log-probs: one pass after sampling ('batched') or inside the decode loop ('in-loop')
    )
    # --- files ---
    run_dir: str | None = None  # where metrics.jsonl and checkpoints go (None: a temporary directory)
    cache_dir: str | None = None  # where reference policies are cached (None: default_cache_dir())
    checkpoint_every: int = 0  # save a checkpoint every N steps (0: never)
    resume: bool = False  # continue from run_dir's checkpoint
    overwrite: bool = False  # replace the run already in run_dir (its metrics, checkpoint and run.json)
    allow_config_change: bool = False  # resume even if settings that change the run's meaning differ from run.json
    progress: bool = True  # tqdm progress bar (TQDM_DISABLE=1 turns it off)

    def validate(self) -> CapstoneConfig:
        """Raise :class:`ConfigError` (a ``ValueError``) naming the first bad field; return ``self``."""
        from kltutor.schedules import SCHEDULES

        def bad(name: str, message: str):
            return ConfigError(message, name)

        _check_types(self)
        _check_ranges(self)
        if self.placement not in CAPSTONE_PLACEMENTS:
            raise bad(
                "placement", f"unknown KL placement {self.placement!r}; choose one of {list(CAPSTONE_PLACEMENTS)}"
            )
        if not _real(self.beta) or self.beta < 0:
            raise bad("beta", f"beta must be a finite number >= 0, got {self.beta!r}")
        if self.kl_level not in ("token", "sequence"):
            raise bad("kl_level", f"kl_level must be 'token' or 'sequence', got {self.kl_level!r}")
        if self.kl_level == "sequence" and self.placement in ("k1-in-reward", "k3-in-reward", "exact-in-loss", "none"):
            raise bad(
                "kl_level", f"kl_level='sequence' applies to the k*-in-loss placements, not to {self.placement!r}"
            )
        if self.importance_weighted_kl and self.kl_level == "sequence":
            raise bad(
                "importance_weighted_kl", "importance_weighted_kl is implemented at token level only (kl_level='token')"
            )
        if self.importance_weighted_kl and not self.placement.endswith("-in-loss"):
            raise bad(
                "importance_weighted_kl",
                f"importance_weighted_kl weights an in-loss KL term; placement "
                f"{self.placement!r} has none (drop the option or use a *-in-loss placement)",
            )
        if self.aggregation not in ("token-mean", "sequence-mean", "sequence-sum"):
            raise bad(
                "aggregation",
                f"aggregation must be 'token-mean', 'sequence-mean' or 'sequence-sum', got {self.aggregation!r}",
            )
        positive_ints = (
            "max_operand",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "sft_batch_size",
            "prompts_per_step",
            "max_new_tokens",
            "updates_per_batch",
            "logprob_chunk",
        )
        for name in positive_ints:
            v = getattr(self, name)
            if not _int(v) or v < 1:
                raise bad(name, f"{name} must be a positive integer, got {v!r}")
        for name in ("steps", "sft_steps", "checkpoint_every", "seed", "sft_seed"):
            v = getattr(self, name)
            if not _int(v) or v < 0:
                raise bad(name, f"{name} must be an integer >= 0, got {v!r}")
        if self.steps == 0:
            raise bad(
                "steps",
                "steps=0 trains nothing; pass steps >= 1 (the reference policy alone: "
                "kltutor.capstone.sft.reference_policy)",
            )
        if not _int(self.group_size) or self.group_size < 2:
            raise bad(
                "group_size",
                f"group_size must be >= 2 (GRPO compares completions of one prompt), got {self.group_size}",
            )
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise bad("hidden_size", "hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
        for name in ("temperature", "lr", "sft_lr", "clip_eps", "max_grad_norm"):
            v = getattr(self, name)
            if not _real(v) or v <= 0:
                raise bad(name, f"{name} must be a finite number > 0, got {v!r}")
        if not _real(self.format_reward) or not (0.0 <= self.format_reward < 1.0):
            raise bad("format_reward", f"format_reward must be in [0, 1), got {self.format_reward}")
        if self.clip_std is not None:
            if (
                not isinstance(self.clip_std, (tuple, list))
                or len(self.clip_std) != 2
                or not all(_real(v) for v in self.clip_std)
                or not 0 < self.clip_std[0] <= self.clip_std[1]
            ):
                raise bad("clip_std", f"clip_std must be (lo, hi) with 0 < lo <= hi, got {self.clip_std}")
            if not self.normalize_std:
                raise bad(
                    "clip_std",
                    "clip_std clamps the std that normalize_std divides by; with normalize_std=False "
                    "(Dr. GRPO) nothing is divided: drop clip_std or normalize",
                )
        if self.device not in ("auto", "cpu", "cuda"):
            raise bad("device", f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise bad("model", f"model must be a model name or a local directory, got {self.model!r}")
        if self.resume and self.run_dir is None:
            raise bad("resume", "resume=True needs the run_dir of the interrupted run")
        if self.resume and self.overwrite:
            raise bad(
                "overwrite",
                "resume and overwrite contradict each other: resume continues the run in "
                "run_dir, overwrite replaces it",
            )
        if self.allow_config_change and not self.resume:
            raise bad("allow_config_change", "allow_config_change applies to resume only")
        self._validate_schedule(SCHEDULES)
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise bad("top_p", f"top_p must be in (0, 1] (1: off), got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise bad("top_k", f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        for name, allowed in (
            ("logprob_dtype", ("float32", "bfloat16")),
            ("decode_mode", ("auto", "eager", "cuda-graph", "compile")),
            ("ref_scoring", ("batched", "in-loop")),
        ):
            if getattr(self, name) not in allowed:
                raise bad(name, f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        return self

    def _validate_schedule(self, schedules: dict) -> None:
        if self.kl_schedule not in schedules:
            raise ConfigError(
                f"unknown kl_schedule {self.kl_schedule!r}; choose one of {sorted(schedules)}", "kl_schedule"
            )
        uses = schedules[self.kl_schedule].uses
        if self.placement == "none" and self.kl_schedule != "fixed":
            raise ConfigError(
                f"placement 'none' has no KL term, so kl_schedule={self.kl_schedule!r} would steer "
                "nothing; use kl_schedule='fixed'",
                "kl_schedule",
            )
        for key, name in SCHEDULE_FIELDS.items():
            v = getattr(self, name)
            if v is None:
                continue
            if key not in uses:
                users = sorted(n for n, c in schedules.items() if key in c.uses)
                raise ConfigError(
                    f"{name} is read by the schedules {', '.join(users)} only; kl_schedule="
                    f"{self.kl_schedule!r} would ignore it (drop it or change kl_schedule)",
                    name,
                )
            if name == "kl_horizon":
                if not _int(v) or v < 1:
                    raise ConfigError(f"kl_horizon must be an integer >= 1 (samples), got {v!r}", name)
            elif not _real(v) or v <= 0:
                raise ConfigError(f"{name} must be a finite number > 0, got {v!r}", name)
        if "end" in uses and self.beta_end is None:
            raise ConfigError(
                f"kl_schedule={self.kl_schedule!r} anneals beta from beta to beta_end: set beta_end", "beta_end"
            )
        if schedules[self.kl_schedule].min_beta == "positive" and not self.beta > 0:
            raise ConfigError(
                f"kl_schedule={self.kl_schedule!r} scales or interpolates beta, which must then be > 0 "
                f"(got {self.beta!r}); use kl_schedule='fixed' for beta = 0",
                "beta",
            )

    def resolved(self) -> CapstoneConfig:
        """A validated copy with the schedule settings left at ``None`` filled in: ``kl_target`` 1.0 and
        ``kl_horizon`` 10000 samples for the controllers, the whole run (``steps * prompts_per_step *
        group_size`` samples) as the annealing horizon. Settings the schedule does not read stay ``None``."""
        from kltutor.schedules import SCHEDULES

        self.validate()
        uses = SCHEDULES[self.kl_schedule].uses
        changes = {}
        if "target" in uses and self.kl_target is None:
            changes["kl_target"] = DEFAULT_KL_TARGET
        if "horizon" in uses and self.kl_horizon is None:
            annealing = "end" in uses
            changes["kl_horizon"] = (
                self.steps * self.prompts_per_step * self.group_size if annealing else DEFAULT_KL_HORIZON
            )
        return self.replace(**changes).validate() if changes else self

    def replace(self, **changes) -> CapstoneConfig:
        """A copy with ``changes`` applied (unknown fields raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CapstoneConfig:
        """The config recorded by :meth:`to_dict` (e.g. in a run's ``run.json``); unknown keys raise
        :class:`CapstoneUserError` naming them, missing ones take the defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CapstoneUserError(f"unknown config fields {unknown} (written by another version of kltutor?)")
        data = dict(data)
        if isinstance(data.get("clip_std"), list):
            data["clip_std"] = tuple(data["clip_std"])
        return cls(**data)


def _check_types(cfg: CapstoneConfig) -> None:
    """Each field holds a value of its annotated type (a ``run.json`` edited by hand, a typo in code)."""
    import typing

    kinds = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    for name, hint in typing.get_type_hints(CapstoneConfig).items():
        v = getattr(cfg, name)
        args = typing.get_args(hint) or (hint,)
        if v is None and type(None) in args:
            continue
        t = next((a for a in args if a in kinds), None)
        if t is None:  # clip_std: checked by validate
            continue
        ok = (
            isinstance(v, bool)
            if t is bool
            else not isinstance(v, bool) and isinstance(v, (int, float) if t is float else t)
        )
        if not ok:
            none = " or None" if type(None) in args else ""
            raise ConfigError(f"{name} must be {kinds[t]}{none}, got {v!r}", name)
        if t is str and name in ("run_dir", "cache_dir") and not v.strip():
            raise ConfigError(f"{name} must name a directory, got {v!r} (leave it out for the default)", name)


def _check_ranges(cfg: CapstoneConfig) -> None:
    """The ranges of the code behind the settings (kltutor._validation): NumPy's seeds, the task's
    64-bit operands, float32 arithmetic."""
    from kltutor import _validation as V

    checks = [(V.seed, "seed"), (V.seed, "sft_seed")]
    checks.append(
        (lambda n, v: V.integer_below(n, v, 10**18, "the task draws operands as 64-bit integers"), "max_operand")
    )
    for name in ("beta", "temperature", "lr", "sft_lr", "clip_eps", "max_grad_norm", "kl_target", "beta_end"):
        checks.append((V.float32_number, name))
    for check, name in checks:
        v = getattr(cfg, name)
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)):
            continue  # None: unset; NaN and inf: validate's own messages
        if isinstance(v, int) and v < 0:
            continue  # validate's own message
        try:
            check(name, v)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e), name) from None


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


PRESETS: dict[str, dict] = {
    # The CPU: a ~43k-parameter Qwen2 on sums of numbers up to 19; finishes in well under a minute.
    # (Sizes and learning rates of 'colab' and 'h100' are starting points, not tuned results.)
    "smoke": dict(
        max_operand=19,
        hidden_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=96,
        sft_steps=300,
        sft_batch_size=64,
        sft_lr=3e-3,
        steps=8,
        prompts_per_step=8,
        group_size=4,
        max_new_tokens=3,
        lr=1e-4,
        logprob_chunk=64,
        device="cpu",
        progress=False,
    ),
    # A 16 GB Colab GPU (T4): a ~3M-parameter Qwen2 on two-digit sums.
    "colab": dict(
        max_operand=99,
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=768,
        sft_steps=1500,
        sft_batch_size=256,
        sft_lr=1e-3,
        steps=200,
        prompts_per_step=32,
        group_size=8,
        max_new_tokens=4,
        lr=3e-5,
        logprob_chunk=4096,
    ),
    # One H100 / H200: a ~25M-parameter Qwen2, three-digit sums, large groups.
    "h100": dict(
        max_operand=999,
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=1536,
        sft_steps=4000,
        sft_batch_size=512,
        sft_lr=5e-4,
        steps=500,
        prompts_per_step=64,
        group_size=16,
        max_new_tokens=5,
        lr=2e-5,
        logprob_chunk=16384,
    ),
}


def preset(name: str, **overrides) -> CapstoneConfig:
    """The config of preset ``name`` ('smoke', 'colab', 'h100') with ``overrides`` applied, validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}", "preset")
    return CapstoneConfig(**{**PRESETS[name], **overrides}).validate()
