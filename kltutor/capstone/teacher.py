r"""On-policy distillation in the capstone: the KL to a teacher as the objective (``--teacher``).

The same engine as GRPO (chapter ``ch-capstone``): the student :math:`\pi_\theta` samples, the teacher
:math:`\pi_T` scores the sampled sequences in the reference's place (so the run's KL columns,
``kl_exact_seq`` above all, measure the KL to the teacher), and the reward of token :math:`t` is
:math:`-k_t`, a per-token reverse KL to the teacher. Chapter ``ch-distillation`` derives which advantage
gives which gradient; this module computes them on the capstone's batches:

- ``estimator="k1"`` or ``"k3"``: :math:`k_t=k(\ell_t)` with :math:`\ell_t=\log\pi_\text{old}(y_t\mid s_t)
  -\log\pi_T(y_t\mid s_t)` at sampling time, and the advantage :math:`-\sum_{s\ge t}\gamma^{s-t}k_s`
  (``discount`` :math:`\gamma`): with k1 and :math:`\gamma=1` (the return-to-go) the expected gradient is
  the exact gradient of the sequence KL, with :math:`\gamma=0` it is biased
  (:func:`kltutor.distillation.reward_gradient`);
- ``estimator="exact"``: the full-vocabulary KL :math:`D_t=\mathrm{KL}(\pi_\theta(\cdot\mid s_t)\|\pi_T(\cdot\mid
  s_t))` enters the loss with its gradient at the visited states (what GKD differentiates), and the
  future tokens' KL, :math:`\sum_{s>t}\gamma^{s-t}D_s`, is the advantage of token :math:`t`; with
  :math:`\gamma=1` this is again the exact gradient (:func:`kltutor.distillation.local_gradient`).

Both models' logits are divided by the run's ``temperature``: the KL is to the teacher at that temperature.
With ``task_weight`` :math:`w>0` the task reward's group advantage (GRPO's) times :math:`w` is added to
every token's advantage. ``tests/test_capstone_teacher.py`` checks the advantages by hand and the
expected gradients against :mod:`kltutor.distillation`'s exact toy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kltutor.capstone.config import CapstoneConfig, ConfigError, flag
from kltutor.estimators import of_log_ratio
from kltutor.grpo import group_advantages
from kltutor.placements import aggregate, clipped_surrogate, returns_to_go

__all__ = [
    "REFERENCE",
    "DISTILLATION_SETTINGS",
    "distillation_settings",
    "distillation_advantages",
    "distillation_loss",
    "check_teacher",
    "load_teacher",
]

#: ``--teacher reference``: the SFT reference is the teacher.
REFERENCE = "reference"

#: The config fields that set :func:`distillation_loss` (:func:`distillation_settings`).
DISTILLATION_SETTINGS = ("group_size", "clip_eps", "clip_std", "normalize_std", "aggregation")


def distillation_settings(cfg: CapstoneConfig) -> dict:
    """The keyword arguments of :func:`distillation_loss` that a run's config fixes."""
    out = {name: getattr(cfg, name) for name in DISTILLATION_SETTINGS}
    return out | {
        "estimator": cfg.teacher_estimator,
        "discount": cfg.teacher_discount,
        "task_weight": cfg.teacher_task_weight,
    }


def _per_token_kl(old: dict, mask, estimator: str, kl=None):
    """The per-token KL ``[B, T]`` the reward is built from (detached, zero on unmasked tokens)."""
    m = mask != 0
    if estimator == "exact":
        if kl is None:
            raise ValueError("estimator='exact' needs the exact per-token KL (st['kl'])")
        values = kl.detach()
    elif estimator in ("k1", "k3"):
        values = of_log_ratio(estimator, (old["logp"] - old["ref_logp"]).detach())
    else:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of ['k1', 'k3', 'exact']")
    return torch.where(m, values, torch.zeros_like(values))


def distillation_advantages(
    old: dict,
    mask,
    rewards,
    kl=None,
    *,
    estimator: str,
    discount: float,
    task_weight: float = 0.0,
    group_size: int = 2,
    normalize_std: bool = True,
    clip_std: tuple[float, float] | None = None,
):
    r"""The per-token advantages ``[B, T]`` of on-policy distillation (zero on unmasked tokens).

    k1 and k3: :math:`A_t=-\sum_{s\ge t}\gamma^{s-t}k(\ell_s)` from the sampling-time log-ratio
    ``old["logp"] - old["ref_logp"]`` (the teacher's log-probs are ``ref_logp``); exact: the future only,
    :math:`A_t=-\sum_{s>t}\gamma^{s-t}D_s` (``kl``: the exact per-token KL; its own term is in the loss,
    :func:`distillation_loss`). Plus ``task_weight`` times the group advantage of ``rewards`` when > 0.
    """
    k = _per_token_kl(old, mask, estimator, kl)
    adv = -returns_to_go(k, mask, discount)
    if estimator == "exact":
        adv = adv + k  # the future tokens only: the own term's gradient is the loss's direct one
    if task_weight:
        task = group_advantages(rewards, group_size, normalize_std=normalize_std, clip_std=clip_std)
        adv = adv + task_weight * task.to(adv.dtype)[:, None]
    return torch.where(mask != 0, adv, torch.zeros_like(adv))


def distillation_loss(
    st: dict,
    old: dict,
    mask,
    rewards,
    *,
    estimator: str,
    discount: float,
    task_weight: float = 0.0,
    group_size: int = 2,
    clip_eps: float = 0.2,
    clip_std: tuple[float, float] | None = None,
    normalize_std: bool = True,
    aggregation: str = "sequence-mean",
):
    """The loss of one distillation update: the clipped surrogate with :func:`distillation_advantages`
    (plus, for ``estimator="exact"``, the exact KL ``st["kl"]`` with its gradient), aggregated by
    ``aggregation``. Returns ``(loss, kl_term, clip_fraction)`` like
    :func:`kltutor.capstone.loss.step_loss`; ``kl_term`` is the per-token KL of the reward (k1, k3 or
    exact) aggregated like the loss, detached."""
    adv = distillation_advantages(
        old,
        mask,
        rewards,
        st.get("kl"),
        estimator=estimator,
        discount=discount,
        task_weight=task_weight,
        group_size=group_size,
        normalize_std=normalize_std,
        clip_std=clip_std,
    )
    loss, stats = clipped_surrogate(st["logp"], old["logp"], adv, mask, clip_eps, aggregation)
    if estimator == "exact":
        loss = loss + aggregate(st["kl"], mask, aggregation)
    kl_term = aggregate(_per_token_kl(old, mask, estimator, st.get("kl")), mask, aggregation)
    return loss, kl_term.detach(), stats["clip_fraction"]


# ----------------------------------------------------------------------------------------- the teacher


def _vocabulary(directory: Path) -> tuple[int, dict]:
    """``(config.json's vocab_size, the tokenizer's vocabulary)`` of a model directory (or cached model name)."""
    from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

    if not directory.is_dir():  # --model names a model in the local Hugging Face cache
        size = AutoConfig.from_pretrained(str(directory), trust_remote_code=False).vocab_size
    else:
        size = json.loads((directory / "config.json").read_text()).get("vocab_size")
    if (directory / "tokenizer.json").is_file():  # as kltutor.capstone.model.load_model reads it
        tok = PreTrainedTokenizerFast.from_pretrained(str(directory))
    else:
        tok = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    return size, tok.get_vocab()


def _student_vocabulary(cfg: CapstoneConfig, reference_dir: Path, cached: bool) -> tuple[int, dict]:
    """The policy's ``(vocab_size, vocabulary)``: the cached reference's, else what it will be built from."""
    from kltutor.capstone.model import build_tokenizer
    from kltutor.capstone.task import AdditionTask

    if cached:
        return _vocabulary(reference_dir)
    if cfg.model is None:
        tok = build_tokenizer(AdditionTask(cfg.max_operand, cfg.format_reward).alphabet)
        return len(tok), tok.get_vocab()
    local = Path(cfg.model).expanduser()
    return _vocabulary(local if local.exists() else Path(cfg.model))


def check_teacher(cfg: CapstoneConfig, reference_dir: Path, cached: bool) -> None:
    """The teacher directory exists, holds a ``save_pretrained`` model with safetensors weights, and has
    the policy's vocabulary (same ``vocab_size`` and the same token ids), so that the per-token KL over
    the full vocabulary compares like with like; otherwise :class:`ConfigError` naming ``--teacher``."""
    if cfg.teacher is None or cfg.teacher == REFERENCE:
        return
    p = Path(cfg.teacher).expanduser()
    use = f"pass {flag('teacher')} {REFERENCE} or a directory written by save_pretrained"
    if not p.exists():
        raise ConfigError(f"the teacher {p} does not exist; {use}", "teacher")
    if not p.is_dir() or not (p / "config.json").is_file():
        raise ConfigError(f"the teacher {p} is not a model directory (no config.json); {use}", "teacher")
    if not any(p.glob("*.safetensors")):
        raise ConfigError(
            f"the teacher {p} holds no *.safetensors weights (the capstone never loads pickled weights); "
            "re-save it with save_pretrained(..., safe_serialization=True)",
            "teacher",
        )
    try:
        t_size, t_vocab = _vocabulary(p)
        s_size, s_vocab = _student_vocabulary(cfg, reference_dir, cached)
    except Exception as e:  # an unreadable config.json or tokenizer: whatever transformers raises
        raise ConfigError(
            f"the teacher {p} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); {use}", "teacher"
        ) from None
    if t_size != s_size or t_vocab != s_vocab:
        diff = sorted(set(t_vocab.items()) ^ set(s_vocab.items()))[:3]
        raise ConfigError(
            f"the teacher {p} has another vocabulary than the policy (vocab_size {t_size} vs {s_size}; "
            f"first differing token ids {diff}): the per-token KL needs the same tokens at the same ids; "
            "train the teacher with the policy's tokenizer",
            "teacher",
        )


def load_teacher(cfg: CapstoneConfig, reference, device):
    """The teacher of ``cfg`` on ``device``, frozen and in eval mode: ``reference`` itself for
    ``teacher='reference'``, else the model in the directory (checked by :func:`check_teacher`)."""
    from kltutor.capstone.model import load_model

    if cfg.teacher == REFERENCE:
        return reference
    model, _ = load_model(Path(cfg.teacher).expanduser(), device)
    return model.eval().requires_grad_(False)
