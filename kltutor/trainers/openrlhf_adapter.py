"""OpenRLHF's KL code on the toy: ``compute_approx_kl``, ``compute_reward`` and ``aggregate_loss``.

OpenRLHF cannot be installed with its dependencies on a machine without CUDA: it pins ``flash-attn==2.8.3``,
whose build is a ``CUDAExtension`` (``CUDA_HOME`` must point at a CUDA toolkit; there is no CPU wheel), and
``transformers==5.15.0``, which conflicts with verl 0.9.1's ``transformers<5.11`` in one environment. The
extra therefore installs it with ``--no-deps`` (``make trainers-venv``), plus ``deepspeed`` (CPU, built
without ops), which ``openrlhf/models/utils.py`` imports at the top.

``import openrlhf.models.utils`` would first run ``openrlhf/models/__init__.py``, which imports the actor
and, through ``ring_attn_utils``, ``flash_attn``. The adapter loads the two files it needs,
``openrlhf/models/utils.py`` and ``openrlhf/models/loss.py``, from the installed package by path under an
empty ``openrlhf.models`` package object, so no ``__init__`` runs; the functions called are the installed
ones, unchanged. The return-to-go of the in-reward path is ``kltutor.placements.returns_to_go`` (OpenRLHF's
``get_cumulative_returns`` lives in ``experience_maker.py``, which imports its Ray launcher, and so vLLM and
flash-attn); with ``gamma = 1`` both are the plain suffix sum.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

from kltutor.trainers.core import TOY, Setting

LIBRARY = "OpenRLHF"
PACKAGE = "openrlhf"
BETA = 0.1
_MODULES: dict = {}


def version() -> str:
    from importlib.metadata import version as v

    return v("openrlhf")


def load() -> tuple[types.ModuleType, types.ModuleType]:
    """``openrlhf/models/utils.py`` and ``openrlhf/models/loss.py`` of the installed package, without its ``__init__``."""
    if _MODULES:
        return _MODULES["utils"], _MODULES["loss"]
    import logging
    import warnings

    import openrlhf  # its own __init__ is empty

    models_dir = Path(openrlhf.__file__).parent / "models"
    pkg = sys.modules.get("openrlhf.models")
    if pkg is None:
        pkg = types.ModuleType("openrlhf.models")
        pkg.__path__ = [str(models_dir)]
        sys.modules["openrlhf.models"] = pkg
    for name in ("utils", "loss"):
        full = f"openrlhf.models.{name}"
        if full in sys.modules:
            _MODULES[name] = sys.modules[full]
            continue
        spec = importlib.util.spec_from_file_location(full, models_dir / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)
            try:
                spec.loader.exec_module(mod)
            finally:
                logging.disable(logging.NOTSET)
        _MODULES[name] = mod
    return _MODULES["utils"], _MODULES["loss"]


def _kl_loss(estimator: str, unbiased_gradient: bool, token_level_loss: bool = True):
    utils, loss = load()

    def fn(logp, ref_logp, old_logp, mask):
        kl = utils.compute_approx_kl(
            logp, ref_logp, log_probs_old=old_logp, kl_estimator=estimator, unbiased_gradient=unbiased_gradient
        )
        kl_loss = loss.aggregate_loss(kl, mask, token_level_loss=token_level_loss)
        return kl_loss * BETA

    return fn


def _kl_reward(estimator: str):
    from kltutor.placements import returns_to_go

    utils, _ = load()

    def fn(logp, ref_logp, mask):
        kl = utils.compute_approx_kl(logp, ref_logp, kl_estimator=estimator)
        rewards = utils.compute_reward(
            torch.zeros(logp.shape[0], dtype=kl.dtype), BETA, kl, action_mask=mask, reward_clip_range=(-10.0, 10.0)
        )
        return returns_to_go(rewards.detach().to(torch.float64), mask).detach()

    return fn


def settings() -> list[Setting]:
    T = TOY["seq_len"]
    out = []
    for est in ("k1", "k2", "k3"):
        for ub in (False, True):
            flags = f"--algo.kl.use_loss --algo.kl.estimator {est}" + (" --algo.kl.unbiased_gradient" if ub else "")
            out.append(
                Setting(
                    LIBRARY,
                    "PPO actor (loss)",
                    f"openrlhf.loss.{est}{'.unbiased_gradient' if ub else ''}",
                    flags,
                    "loss",
                    est,
                    "token",
                    "straight-through k2 gradient x detached ratio w_t (clamped at 10)" if ub else "none",
                    _kl_loss(est, ub),
                    scale=BETA / T,
                    default=False,
                    source="openrlhf/models/utils.py (compute_approx_kl); openrlhf/models/loss.py (aggregate_loss)",
                    note="as composed in openrlhf/trainer/ray/ppo_actor.py::training_step",
                )
            )
    for est in ("k1", "k2", "k3"):
        out.append(
            Setting(
                LIBRARY,
                "PPO experience maker (reward)",
                f"openrlhf.reward.{est}",
                f"--algo.kl.estimator {est} (without --algo.kl.use_loss; --algo.kl.init_coef > 0)",
                "reward",
                est,
                "token",
                "none",
                _kl_reward(est),
                scale=BETA,
                default=(est == "k1"),
                source="openrlhf/models/utils.py (compute_approx_kl, compute_reward)",
                note="return-to-go with gamma = 1 (reinforce-family estimators)"
                + ("; the default: init_coef=0.01 puts k1 in the reward" if est == "k1" else ""),
            )
        )
    return out
