"""Configuration of a capstone run: one dataclass, validated, with named presets (chapter ``ch-capstone``)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from kltutor._validation import integer, nonnegative_number, number_in, positive_integer, positive_number

__all__ = [
    "REFERENCE_FIELDS",
    "CAPSTONE_PLACEMENTS",  # noqa: F822 (module __getattr__)
    "CapstoneConfig",
    "CapstoneUserError",
    "ConfigError",
    "RunNotFoundError",
    "CapstoneOutOfMemoryError",
    "PRESETS",
    "preset",
    "default_cache_dir",
    "flag",
    "choices",
    "help_text",
]

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


def _capstone_placements() -> tuple[str, ...]:
    from kltutor.placements import placement_names

    return placement_names(exact=True)


def _kl_levels() -> tuple[str, ...]:
    from kltutor.placements import KL_LEVELS

    return KL_LEVELS


def _aggregations() -> tuple[str, ...]:
    from kltutor.placements import AGGREGATIONS

    return AGGREGATIONS


def _schedules() -> tuple[str, ...]:
    from kltutor.schedules import SCHEDULES

    return tuple(SCHEDULES)


def __getattr__(name: str):
    # computed on each access (and importing this module does not import torch)
    if name == "CAPSTONE_PLACEMENTS":
        return _capstone_placements()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _setting(default, help: str, choices=None):
    """A field of :class:`CapstoneConfig` with its ``--help`` text and, if any, its allowed values
    (a tuple, or a function returning one where they come from another module)."""
    metadata = {"help": help} if choices is None else {"help": help, "choices": choices}
    return dataclasses.field(default=default, metadata=metadata)


def choices(field_name: str) -> tuple | None:
    """The allowed values of a :class:`CapstoneConfig` field (the CLI's choices and what
    :meth:`CapstoneConfig.validate` accepts), or ``None`` where any value of the type is allowed."""
    c = CapstoneConfig.__dataclass_fields__[field_name].metadata.get("choices")
    return c() if callable(c) else c


def help_text(field_name: str) -> str:
    """The ``--help`` text of a :class:`CapstoneConfig` field (``%(choices)s``: its allowed values)."""
    return CapstoneConfig.__dataclass_fields__[field_name].metadata["help"]


@dataclass
class CapstoneConfig:
    """Every knob of a capstone run. Each field's metadata holds its ``--help`` text and, for the
    fields that take one of a list of values, the list (:func:`choices`)."""

    # --- KL ---
    placement: str = _setting(
        "k1-in-reward", "where the KL term goes: one of %(choices)s", choices=_capstone_placements
    )
    beta: float = _setting(0.05, "KL coefficient beta >= 0 (the initial value for an adaptive schedule)")
    kl_level: str = _setting(
        "token",
        "in-loss estimators: 'token' (per-token estimator) or 'sequence' (estimator of the summed log-ratio)",
        choices=_kl_levels,
    )
    kl_schedule: str = _setting(
        "fixed",
        "beta schedule (kltutor.schedules): %(choices)s; 'adaptive' is Ziegler et al.'s "
        "controller, 'ppo-penalty' the PPO paper's, 'linear'/'cosine'/'exponential' anneal --beta to --beta-end",
        choices=_schedules,
    )
    kl_target: float | None = _setting(None, "adaptive and ppo-penalty: target sequence KL in nats (default 1.0)")
    kl_horizon: int | None = _setting(
        None,
        "adaptive: horizon in samples (default 10000); annealing: samples until --beta-end (default: the whole run)",
    )
    beta_end: float | None = _setting(
        None, "linear, cosine and exponential schedules: the final beta (required by them)"
    )
    importance_weighted_kl: bool = _setting(
        False,
        "in-loss KL on stale samples (--updates-per-batch > 1): k*-in-loss weight each token by "
        "w_t = pi/pi_old; exact-in-loss weights position t by the prefix ratio prod_{s<t} w_s",
    )
    # --- on-policy distillation (kltutor.capstone.teacher) ---
    teacher: str | None = _setting(
        None,
        "on-policy distillation: the reward is minus the per-token reverse KL to this teacher, 'reference' (the "
        "SFT reference) or a local model directory (save_pretrained, safetensors) with the policy's tokenizer; "
        "needs --placement none (the teacher takes the reference's place, in the KL columns too)",
    )
    teacher_estimator: str = _setting(
        "k1",
        "--teacher: the per-token KL in the reward: k1 (the sampled token's log-ratio), k3, or exact (the "
        "full-vocabulary KL, differentiated at the visited states)",
        choices=("k1", "k3", "exact"),
    )
    teacher_discount: float = _setting(
        1.0,
        "--teacher: discount in [0, 1] of the future tokens' KL in a token's advantage: 1 the return-to-go (with "
        "k1 or exact: the exact gradient of the sequence KL), 0 each token's own KL",
    )
    teacher_task_weight: float = _setting(
        0.0, "--teacher: weight >= 0 of the task reward's group advantage added to the distillation advantage"
    )
    # --- task ---
    max_operand: int = _setting(49, "prompts are 'a+b=' with a, b uniform integers in [0, max_operand]")
    format_reward: float = _setting(0.0, "reward of a well-formed wrong answer (digits then EOS), in [0, 1)")
    # --- model ---
    model: str | None = _setting(
        None,
        "start from this local model directory (or a model name already in the Hugging Face cache; nothing is "
        "downloaded); default: a small Qwen2 trained from scratch (the --hidden-size ... options)",
    )
    hidden_size: int = _setting(64, "scratch model: hidden size")
    num_layers: int = _setting(2, "scratch model: transformer layers")
    num_heads: int = _setting(4, "scratch model: attention heads")
    num_kv_heads: int = _setting(2, "scratch model: key/value heads")
    intermediate_size: int = _setting(128, "scratch model: MLP width")
    # --- SFT (the reference policy) ---
    sft_steps: int = _setting(300, "SFT steps that make the reference policy (0: the loaded model is the reference)")
    sft_batch_size: int = _setting(64, "SFT batch size")
    sft_lr: float = _setting(3e-3, "SFT learning rate")
    sft_seed: int = _setting(1234, "SFT seed (part of the cache key)")
    # --- GRPO ---
    steps: int = _setting(20, "GRPO steps (>= 1; with --resume: the total, beyond the checkpoint's step)")
    prompts_per_step: int = _setting(8, "prompts per step")
    group_size: int = _setting(8, "completions per prompt (>= 2)")
    max_new_tokens: int = _setting(4, "completion budget in tokens")
    temperature: float = _setting(1.0, "sampling temperature (log-probs use the same)")
    lr: float = _setting(1e-3, "policy learning rate (AdamW)")
    clip_eps: float = _setting(0.2, "PPO clip range epsilon")
    clip_std: tuple[float, float] | None = _setting(
        None, "clamp the group reward std into LO HI before dividing (two numbers; needs --normalize-std)"
    )
    normalize_std: bool = _setting(True, "divide advantages by the group std (--no-normalize-std: Dr. GRPO)")
    aggregation: str = _setting("sequence-mean", "loss aggregation: %(choices)s", choices=_aggregations)
    updates_per_batch: int = _setting(1, "gradient steps per sampled batch (>1 is off-policy after the first)")
    max_grad_norm: float = _setting(1.0, "gradient-norm clipping threshold")
    logprob_chunk: int = _setting(1024, "rows of [batch*time] per chunk in the log-softmax (lower it to save memory)")
    bf16: bool = _setting(
        True, "the older switch: --no-bf16 is --precision float32 where --precision is auto (--bf16: no effect)"
    )
    precision: str = _setting(
        "auto",
        "autocast dtype of the model's matrix products (kltutor.capstone.precision): auto (bfloat16 on a GPU "
        "that has it, else float16 with loss scaling; float32 on the CPU), bfloat16, float16 (with loss "
        "scaling) or float32 (no autocast)",
        choices=("auto", "bfloat16", "float16", "float32"),
    )
    device: str = _setting("auto", "%(choices)s", choices=("auto", "cpu", "cuda"))
    seed: int = _setting(0, "seed of the RL run (prompts, sampling)")
    top_p: float = _setting(
        1.0,
        "nucleus sampling: keep the most likely tokens up to total probability TOP_P (1: off); old_logp is then "
        "the truncated distribution's",
    )
    top_k: int = _setting(
        0, "sample among the TOP_K most likely tokens (0: off); old_logp is then the truncated distribution's"
    )
    logprob_dtype: str = _setting(
        "float32",
        "precision of the sampler's logits, log-softmax and scoring pass: float32 or bfloat16 (bfloat16 "
        "reproduces a sampler/trainer mismatch)",
        choices=("float32", "bfloat16"),
    )
    decode_mode: str = _setting(
        "auto",
        "sampler decode step: auto (CUDA graph on a GPU, eager on the CPU), eager, cuda-graph or compile (falls "
        "back to eager, with a warning, if capture fails)",
        choices=("auto", "eager", "cuda-graph", "compile"),
    )
    ref_scoring: str = _setting(
        "batched",
        "reference log-probs: batched (one pass after sampling) or in-loop (inside the decode loop)",
        choices=("batched", "in-loop"),
    )
    fast: bool = _setting(
        True,
        "the fast engine (kltutor.capstone.fast: static KV cache, CUDA graphs, the sampler's recorded products "
        "reused by the first update, oneDNN products on the CPU) for Qwen2/Llama models; --no-fast runs "
        "transformers' model.forward everywhere (slower; the same values up to float rounding)",
    )
    # --- files ---
    run_dir: str | None = _setting(
        None,
        "directory for run.json, metrics.jsonl and checkpoints (default: a new temporary directory); with "
        "--sweep, the sweep's directory: one sub-directory per run, sweep.json and sweep.csv",
    )
    cache_dir: str | None = _setting(
        None,
        "directory of cached reference policies (default: $KLTUTOR_CACHE/capstone or ~/.cache/kltutor/capstone)",
    )
    checkpoint_every: int = _setting(0, "write a checkpoint every N steps (0: never)")
    resume: bool = _setting(
        False, "continue the run in --run-dir from its checkpoint; options left out take the values in its run.json"
    )
    overwrite: bool = _setting(
        False, "replace the run (or sweep) already in --run-dir: its run.json, metrics.jsonl and checkpoint"
    )
    allow_config_change: bool = _setting(
        False,
        "with --resume: apply options that change what the run is (placement, beta, lr, ...; run.json records "
        "them) instead of refusing",
    )
    progress: bool = _setting(True, "tqdm progress bars (--no-progress, or TQDM_DISABLE=1, turns them off)")

    @property
    def kl_placement(self):
        """The parsed :attr:`placement` (:class:`kltutor.placements.Placement`): ``.where``, ``.exact``,
        ``.is_none``, ``.levels``... instead of comparing names."""
        from kltutor.placements import parse_placement

        return parse_placement(self.placement)

    def validate(self) -> CapstoneConfig:
        """Raise :class:`ConfigError` (a ``ValueError``) naming the first bad field; return ``self``.
        Every number goes through :mod:`kltutor._validation`; every field with :func:`choices` is checked
        against them."""
        from kltutor.schedules import SCHEDULES

        def bad(name: str, message: str):
            return ConfigError(message, name)

        _check_types(self)
        _check_ranges(self)

        def check(name: str, rule, *args) -> None:
            try:
                rule(name, getattr(self, name), *args)
            except ValueError as e:
                raise bad(name, str(e)) from None

        def check_choice(name: str) -> None:
            allowed = choices(name)
            if getattr(self, name) not in allowed:
                raise bad(name, f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")

        if self.placement not in _capstone_placements():
            raise bad(
                "placement", f"unknown KL placement {self.placement!r}; choose one of {list(_capstone_placements())}"
            )
        kl = self.kl_placement
        check("beta", _nonnegative)
        check_choice("kl_level")
        if self.kl_level not in kl.levels:
            raise bad(
                "kl_level", f"kl_level='sequence' applies to the k*-in-loss placements, not to {self.placement!r}"
            )
        if self.importance_weighted_kl and self.kl_level == "sequence":
            raise bad(
                "importance_weighted_kl", "importance_weighted_kl is implemented at token level only (kl_level='token')"
            )
        if self.importance_weighted_kl and not kl.in_loss:
            raise bad(
                "importance_weighted_kl",
                f"importance_weighted_kl weights an in-loss KL term; placement "
                f"{self.placement!r} has none (drop the option or use a *-in-loss placement)",
            )
        check_choice("aggregation")
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
            check(name, positive_integer)
        for name in ("steps", "sft_steps", "checkpoint_every", "seed", "sft_seed"):
            check(name, integer)
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
            check(name, _positive)
        check("format_reward", number_in, "[0, 1)")
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
        check_choice("device")
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
        self._validate_teacher(check, check_choice)
        check("top_p", number_in, "(0, 1]", " (1: off)")
        check("top_k", integer, 0, " (0: off)")
        for name in ("logprob_dtype", "decode_mode", "ref_scoring", "precision"):
            check_choice(name)
        if self.precision == "bfloat16" and not self.bf16:
            raise bad("precision", "precision='bfloat16' contradicts bf16=False (--no-bf16); drop one of them")
        return self

    def _validate_schedule(self, schedules: dict) -> None:
        if self.kl_schedule not in schedules:
            raise ConfigError(
                f"unknown kl_schedule {self.kl_schedule!r}; choose one of {sorted(schedules)}", "kl_schedule"
            )
        uses = schedules[self.kl_schedule].uses
        if self.kl_placement.is_none and self.kl_schedule != "fixed":
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
            try:
                if name == "kl_horizon":
                    integer(name, v, 1, " (samples)")
                else:
                    _positive(name, v)
            except ValueError as e:
                raise ConfigError(str(e), name) from None
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

    def _validate_teacher(self, check, check_choice) -> None:
        """The on-policy distillation settings (:mod:`kltutor.capstone.teacher`)."""
        check_choice("teacher_estimator")
        check("teacher_discount", number_in, "[0, 1]", " (1: the return-to-go, 0: each token's own KL)")
        check("teacher_task_weight", _nonnegative)
        if self.teacher is None:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in ("teacher_estimator", "teacher_discount", "teacher_task_weight"):
                if getattr(self, name) != defaults[name]:
                    raise ConfigError(f"{name} applies to on-policy distillation only: set teacher too", name)
            return
        if not self.teacher.strip():
            raise ConfigError(
                f"teacher must be 'reference' or a model directory, got {self.teacher!r} (leave it out: no teacher)",
                "teacher",
            )
        if not self.kl_placement.is_none:
            raise ConfigError(
                f"with a teacher the KL to the teacher is the objective and the teacher takes the reference's "
                f"place, so placement {self.placement!r} would add a second KL term to the same model; use "
                f"placement 'none' (the task reward enters through teacher_task_weight)",
                "teacher",
            )
        if self.teacher == "reference" and self.teacher_task_weight == 0:
            raise ConfigError(
                "teacher='reference' with teacher_task_weight=0 trains nothing: the policy starts as the "
                "reference, where the KL to it is 0 with gradient 0; set teacher_task_weight > 0 (the KL then "
                "regularises the task reward) or name a teacher directory",
                "teacher_task_weight",
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
    checks.append((V.float32_number, "teacher_task_weight"))
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


def _positive(name: str, value) -> float:
    return positive_number(name, value, strict=True)


def _nonnegative(name: str, value) -> float:
    return nonnegative_number(name, value, strict=True)


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
