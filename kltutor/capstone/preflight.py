"""Every check of a capstone run that can fail, done before any expensive work (chapter ``ch-capstone``).

:func:`preflight` validates the config, the device, the model source, the reference cache and the run
directory, and returns a :class:`RunPlan`; it writes nothing (it may create the cache directory).
A problem raises :class:`~kltutor.capstone.config.CapstoneUserError` with a one-line message that
names the flag or the file and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kltutor.capstone.config import CapstoneConfig, ConfigError, flag
from kltutor.capstone.precision import Precision, resolve_precision
from kltutor.capstone.rundir import RunDirPlan, plan_run_dir
from kltutor.capstone.runlock import check_not_in_use
from kltutor.capstone.teacher import check_teacher

__all__ = ["RunPlan", "preflight", "resolve_device", "check_model_source", "check_cache", "check_model_size"]


@dataclass
class RunPlan:
    """The outcome of :func:`preflight`: the resolved config and everything a run needs to start."""

    config: CapstoneConfig
    device: torch.device
    reference_dir: Path
    reference_cached: bool
    run: RunDirPlan
    precision: Precision | None = None  # resolve_precision(config, device)


def resolve_device(device: str) -> torch.device:
    """``'auto'`` -> CUDA when available, else the CPU; ``'cuda'`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device='cuda' but no CUDA GPU is available (torch.cuda.is_available() is False); use "
            f"{flag('device')} cpu (e.g. with the 'smoke' preset) or auto",
            "device",
        )
    return torch.device(device)


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def check_model_source(model: str) -> None:
    """``model`` is a local ``save_pretrained`` directory with safetensors weights, or a model name
    already in the local Hugging Face cache (the capstone downloads nothing at run time)."""
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ConfigError(
                f"{p} is not a model directory (no config.json); pass a directory written by "
                f"save_pretrained as {flag('model')}",
                "model",
            )
        if not any(p.glob("*.safetensors")):
            raise ConfigError(
                f"{p} holds no *.safetensors weights (the capstone never loads pickled weights); "
                f"re-save the model with save_pretrained(..., safe_serialization=True)",
                "model",
            )
        return
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or model.endswith("/")
    if looks_like_path:
        raise ConfigError(
            f"{p} does not exist; pass an existing model directory (or a model name) as {flag('model')}", "model"
        )
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model, "config.json")
    except Exception:  # an id the hub client refuses (bad characters, ...)
        hit = None
    if not isinstance(hit, str):
        how = "HF_HUB_OFFLINE is set and " if _offline() else ""
        raise ConfigError(
            f"{model!r} is neither a local directory nor a model in the local Hugging Face cache ({how}the "
            f"capstone downloads nothing at run time); download it first (huggingface-cli download "
            f"{model}) or pass a local directory as {flag('model')}",
            "model",
        )


def check_cache(cfg: CapstoneConfig) -> tuple[Path, bool]:
    """``(directory of the reference policy, whether it is cached)``. A cached one is verified against
    its manifest; otherwise the cache directory must be creatable and writable (nothing is created here)."""
    from kltutor.capstone.sft import reference_dir, verify_cached_reference

    path = reference_dir(cfg)
    root = path.parent
    name = "cache_dir" if cfg.cache_dir else None
    where = flag("cache_dir") if cfg.cache_dir else f"{flag('cache_dir')} (or set KLTUTOR_CACHE)"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"the cache directory {root} is a file; pass a directory as {where}", name)
    if path.exists():
        verify_cached_reference(path)
        return path, True
    p = root
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ConfigError(
            f"the cache directory {root} cannot be created: {p} is a file; pass a directory as {where}", name
        )
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(
            f"the cache directory {root} is not writable, so the reference policy could not be saved "
            f"after training; pass a writable {where}",
            name,
        )
    return path, False


def scratch_parameters(cfg: CapstoneConfig, vocab: int = 15) -> int:
    """The number of parameters of the Qwen2 that :func:`kltutor.capstone.model.build_model` builds from
    ``cfg``'s sizes (tied embeddings; ``vocab``: the character tokenizer's 12 characters and 3 special tokens)."""
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    kv = cfg.num_kv_heads * (h // cfg.num_heads)
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q (bias), k and v (bias), o
    return vocab * h + layers * (attention + 3 * h * inter + 2 * h) + h


def _memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def check_model_size(cfg: CapstoneConfig, device: torch.device) -> None:
    """The model built from scratch, with its reference copy, gradients and AdamW's two moments (five
    float32 copies, activations left out), fits in the device's memory; otherwise raise ``ConfigError``
    naming the size to lower (allocating it would fail, or be killed by the system, minutes later)."""
    if cfg.model is not None:
        return
    need = 5 * 4 * scratch_parameters(cfg)
    have = _memory_bytes(device)
    if have is None or need <= have:
        return
    mlp = 3 * cfg.hidden_size * cfg.intermediate_size >= 2 * cfg.hidden_size**2
    name = "intermediate_size" if mlp else "hidden_size"
    raise ConfigError(
        f"the model built from scratch would have {scratch_parameters(cfg):.3g} parameters, {need / 2**30:.3g} GiB "
        f"with its reference, gradients and optimiser state, more than the {have / 2**30:.3g} GiB of memory of "
        f"the {device.type.upper() if device.type == 'cuda' else 'CPU'}; lower {flag(name)} "
        f"(now {getattr(cfg, name)}) or {flag('num_layers')}",
        name,
    )


def preflight(config: CapstoneConfig) -> RunPlan:
    """Validate ``config`` and everything it points at; return the :class:`RunPlan` (nothing is written)."""
    cfg = config.validate()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg, device)  # bfloat16 asked for on a GPU without it: an error here
    check_model_size(cfg, device)
    if cfg.run_dir is not None:  # a directory another process works in: said before anything else about it
        check_not_in_use(Path(cfg.run_dir).expanduser())
    if cfg.teacher not in (None, "reference"):  # run.json records where the teacher is, wherever the run resumes
        cfg = cfg.replace(teacher=str(Path(cfg.teacher).expanduser().resolve()))
    run_plan, cfg = plan_run_dir(cfg)
    ref_dir, cached = check_cache(cfg)
    if cfg.model is not None and not cached:
        check_model_source(cfg.model)
    check_teacher(cfg, ref_dir, cached)
    return RunPlan(cfg, device, ref_dir, cached, run_plan, precision)
