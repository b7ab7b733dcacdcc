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
- :mod:`~kltutor.capstone.decoder`: a functional Qwen2/Llama forward (KV cache, prompts shared by a group);
- :mod:`~kltutor.capstone.loop`: :func:`run` (the GRPO loop, metrics, checkpoints, resume);
- :mod:`~kltutor.capstone.sweep`: :func:`sweep` over placements x betas x seeds.

Command line: ``python -m kltutor.capstone --help``.
"""

import warnings as _warnings

# tqdm.auto warns on import in a notebook without ipywidgets; the text bar it falls back to is fine.
_warnings.filterwarnings("ignore", message="IProgress not found")

from kltutor.capstone.config import (
    CAPSTONE_PLACEMENTS,
    PRESETS,
    CapstoneConfig,
    CapstoneUserError,
    default_cache_dir,
    preset,
)
from kltutor.capstone.loop import METRICS, TIMING_METRICS, RunResult, generate_completions, run
from kltutor.capstone.sampler import Sampler
from kltutor.capstone.sweep import sweep
from kltutor.capstone.task import AdditionTask

__all__ = [
    "CAPSTONE_PLACEMENTS",
    "PRESETS",
    "CapstoneConfig",
    "CapstoneUserError",
    "default_cache_dir",
    "preset",
    "METRICS",
    "TIMING_METRICS",
    "RunResult",
    "generate_completions",
    "run",
    "sweep",
    "AdditionTask",
    "Sampler",
]
