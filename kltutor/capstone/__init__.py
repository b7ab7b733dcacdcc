"""The capstone (chapter ``ch-capstone``): GRPO on a transformers causal LM with a selectable KL placement.

- :mod:`~kltutor.capstone.config`: :class:`CapstoneConfig`, the presets ``smoke`` (CPU), ``colab``, ``h100``,
  and :class:`CapstoneUserError` (every mistake a user can fix);
- :mod:`~kltutor.capstone.task`: the verifiable addition task and its exact reward;
- :mod:`~kltutor.capstone.model`: the character tokenizer, the small Qwen2, the loader;
- :mod:`~kltutor.capstone.sft`: the SFT reference policy, cached on disk;
- :mod:`~kltutor.capstone.logprobs`: chunked log-probs, entropy and exact full-vocabulary KL;
- :mod:`~kltutor.capstone.preflight`: every check of a run before any expensive work;
- :mod:`~kltutor.capstone.rundir`: the run directory (run.json, metrics.jsonl, atomic verified checkpoints);
- :mod:`~kltutor.capstone.sampler`: the sampler (static KV cache, per-row EOS, sampling-time log-probs);
- :mod:`~kltutor.capstone.fast`: the fast engine behind one switch (``fast``): a functional Qwen2/Llama forward
  with a static KV cache, CUDA graphs, reused products, oneDNN; ``fast=False`` is ``model.forward`` throughout;
- :mod:`~kltutor.capstone.loop`: :func:`run` (the GRPO loop, metrics, checkpoints, resume);
- :mod:`~kltutor.capstone.sweep`: :func:`sweep` over placements x betas x seeds.

Command line: ``python -m kltutor.capstone --help``.
"""

import importlib as _importlib
import sys as _sys
import types as _types
import warnings as _warnings

# tqdm.auto warns on import in a notebook without ipywidgets; the text bar it falls back to is fine.
_warnings.filterwarnings("ignore", message="IProgress not found")

# Imported on first use, so that ``import kltutor.capstone.config`` (or the CLI's --help) does not
# import torch and transformers.
_EXPORTS = {
    "CAPSTONE_PLACEMENTS": "config",
    "PRESETS": "config",
    "CapstoneConfig": "config",
    "CapstoneUserError": "config",
    "default_cache_dir": "config",
    "preset": "config",
    "METRICS": "loop",
    "TIMING_METRICS": "loop",
    "RunResult": "loop",
    "generate_completions": "loop",
    "run": "loop",
    "sweep": "sweep",
    "AdditionTask": "task",
    "Sampler": "sampler",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])


class _Package(_types.ModuleType):
    """``kltutor.capstone.sweep`` stays the function :func:`~kltutor.capstone.sweep.sweep` when the module of
    the same name is imported (the import system would otherwise set the attribute to the module)."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
