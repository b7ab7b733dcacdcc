"""The numeric precision of a capstone run, chosen in one place (chapter ``ch-capstone``).

``--precision`` (:attr:`~kltutor.capstone.config.CapstoneConfig.precision`) is resolved once, by
:func:`resolve_precision`, into a :class:`Precision`: the autocast dtype of the matrix products (the
parameters, the optimiser state, the log-softmax and the loss stay float32), whether the gradients need
loss scaling, and why. Every place that runs the model under autocast reads it: the GRPO update
(:mod:`kltutor.capstone.loop`), the SFT of the reference (:mod:`kltutor.capstone.sft`) and the sampler's
decode and scoring passes (:class:`~kltutor.capstone.sampler.Sampler`).

``auto`` picks

- on a GPU with bfloat16 (compute capability 8.0 and later: A100, H100, L4, ...): ``bfloat16``, float32's
  exponent range, so no loss scaling;
- on a GPU without it (the T4 of free Colab, V100: compute capability below 8.0): ``float16`` with loss
  scaling (:class:`torch.amp.GradScaler`: float16's largest value is 65504 and its smallest normal
  6.1e-5, so small gradients underflow unless the loss is scaled up before the backward pass and the
  gradients scaled back before the optimiser step; steps whose scaled gradients overflow are skipped);
- on the CPU: ``float32`` (autocast there is slower at these sizes).

An explicit ``bfloat16``, ``float16`` or ``float32`` is used as asked, on the CPU too (which rehearses a
GPU's path); ``bfloat16`` on a GPU without it is a :class:`~kltutor.capstone.config.ConfigError`. The
older ``--no-bf16`` still works: with ``precision='auto'`` it means ``float32``.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch

from kltutor.capstone.config import CapstoneConfig, ConfigError, flag

__all__ = ["Precision", "resolve_precision", "bf16_supported"]


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (``"bfloat16"``, ``"float16"`` or ``"float32"``), what was
    ``requested`` (``"auto"`` or one of those), and the ``reason`` for the choice."""

    name: str
    requested: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the matrix products (float32: no autocast)."""
        return getattr(torch, self.name)

    @property
    def autocast(self) -> bool:
        """Whether the forward passes run under :func:`torch.autocast` (``dtype``)."""
        return self.name != "float32"

    @property
    def loss_scaling(self) -> bool:
        """Whether the backward passes need a :class:`torch.amp.GradScaler` (float16 only)."""
        return self.name == "float16"

    def autocast_context(self, device_type: str):
        """``torch.autocast(device_type, dtype)``, or a context that does nothing for float32."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)

    def grad_scaler(self, device) -> torch.amp.GradScaler | None:
        """A fresh :class:`torch.amp.GradScaler` for ``device`` when float16 needs one, else ``None``."""
        return torch.amp.GradScaler(torch.device(device).type) if self.loss_scaling else None

    def as_dict(self) -> dict:
        """What ``run.json`` records."""
        return {
            "name": self.name,
            "requested": self.requested,
            "loss_scaling": self.loss_scaling,
            "reason": self.reason,
        }


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively. A GPU: compute capability 8.0 or later (torch's
    own test, without the emulation that newer torch counts as support on older GPUs: a T4 emulates bf16
    products far slower than it runs float16). The CPU: autocast supports bfloat16 on any CPU."""
    if device.type != "cuda":
        return True
    probe = torch.cuda.is_bf16_supported
    if "including_emulation" in inspect.signature(probe).parameters:
        return bool(probe(including_emulation=False))
    return bool(probe())


def _gpu_name(device: torch.device) -> str:
    try:
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        return f"{name} (compute capability {major}.{minor})"
    except (RuntimeError, AssertionError, AttributeError):  # no CUDA runtime (a test that fakes the device)
        return "this GPU"


def resolve_precision(cfg: CapstoneConfig, device) -> Precision:
    """The precision a run of ``cfg`` uses on ``device`` (see the module docstring); ``bfloat16`` asked
    for on a GPU without it raises :class:`~kltutor.capstone.config.ConfigError` naming ``--precision``."""
    device = torch.device(device)
    asked = cfg.precision
    if asked != "auto":
        if asked == "bfloat16" and not bf16_supported(device):
            raise ConfigError(
                f"{_gpu_name(device)} has no bfloat16; use {flag('precision')} float16 (with loss scaling) "
                "or float32, or auto (which picks float16 there)",
                "precision",
            )
        return Precision(asked, asked, f"{flag('precision')} {asked}")
    if not cfg.bf16:
        return Precision("float32", asked, "--no-bf16 (the older spelling of --precision float32)")
    if device.type != "cuda":
        return Precision("float32", asked, "auto: float32 on the CPU")
    if bf16_supported(device):
        return Precision("bfloat16", asked, f"auto: {_gpu_name(device)} has bfloat16")
    return Precision("float16", asked, f"auto: {_gpu_name(device)} has no bfloat16: float16 autocast with loss scaling")
