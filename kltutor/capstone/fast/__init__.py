"""The capstone's fast engine (``ch-capstone``): what makes a step fast, kept apart from what it computes.

The readable path is ``transformers``' own: ``model.forward`` for the log-probs of a batch
(:func:`kltutor.capstone.logprobs.hidden_states`) and for sampling, one token at a time with the
model's dynamic cache (:class:`~kltutor.capstone.sampler.Sampler`). One switch, ``fast`` (the config
field :attr:`~kltutor.capstone.config.CapstoneConfig.fast`, ``--no-fast`` on the command line, the
``fast`` argument of :class:`~kltutor.capstone.sampler.Sampler` and
:func:`~kltutor.capstone.logprobs.sequence_stats`), replaces it, for the models :func:`support`
accepts (Qwen2, Llama), by the modules here; the values are the same up to float rounding (the tests
compare each piece, and whole training runs, with the readable path):

- :mod:`~kltutor.capstone.fast.decoder`: a functional forward of the model's layers over its own
  weights (shared prompts run once per group, fused projections) and the autograd functions that
  reuse the matrix products the sampler recorded (the first update after sampling);
- :mod:`~kltutor.capstone.fast.static`: the preallocated KV cache and the CUDA-graph capture of the
  decode step;
- :mod:`~kltutor.capstone.fast.onednn`: the CPU's float32 products through oneDNN (a private torch
  op), used only behind a probe and with exact float32 products.
"""

from kltutor.capstone.fast.decoder import support

__all__ = ["support"]
