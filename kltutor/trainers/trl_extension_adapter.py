"""kltutor's TRL extension (:mod:`kltutor.trainers.grpo_extension`) on chapter 3's toy, through the same harness.

Like :mod:`~kltutor.trainers.trl_adapter`, a trainer *shell* (``object.__new__`` of
:class:`~kltutor.trainers.grpo_extension.KLPlacementGRPOTrainer`, its attributes from a real
``KLPlacementGRPOConfig``) runs the extension's own ``_compute_loss`` with TRL's log-probability method
replaced by the toy's. The aggregation is ``sequence-sum``, so on the harness's one-sequence batch the factor
in front of the token sum is ``beta``.

- in-loss placements: the loss itself (``placement="loss"``; the stale regime passes the sampler's
  log-probabilities as TRL's ``old_per_token_logps``);
- in-reward placements: the advantages the extension's surrogate multiplies, read off its gradient with
  respect to the log-probabilities at ``w = 1`` (``-dL/d logp_t``, exact for the sequence-sum surrogate), so the
  harness's ``-(A * logp).sum()`` is differentiated exactly as the extension's loss is;
- ``exact-in-loss`` is not run: the harness passes sampled-token log-probabilities only, and the full-vocabulary
  KL needs the whole next-token distribution (chapter 3 derives its gradient exactly instead);
- ``none`` has no KL term.
"""

from __future__ import annotations

import torch

from kltutor.trainers.core import Setting

LIBRARY = "TRL+kltutor"
PACKAGE = "trl"
BETA = 0.1


def version() -> str:
    import trl

    return trl.__version__


def _shell(placement: str, level: str, iw: bool):
    from kltutor.trainers.grpo_extension import KLPlacementGRPOConfig, KLPlacementGRPOTrainer
    from kltutor.trainers.trl_adapter import shell

    args = KLPlacementGRPOConfig(
        output_dir="/tmp/kltutor-trl",
        report_to="none",
        use_cpu=True,
        bf16=False,
        beta=BETA,
        kl_placement=placement,
        kl_level=level,
        importance_weighted_kl=iw,
        kl_aggregation="sequence-sum",
    )
    return shell(
        KLPlacementGRPOTrainer,
        args,
        kl_placement=placement,
        _batch_beta=BETA,
        epsilon_low=args.epsilon,
        current_gradient_accumulation_steps=1,
    )


def _inputs(logp, ref_logp, old_logp, mask):
    b, n = logp.shape
    return {
        "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
        "prompt_mask": torch.ones(b, 1, dtype=torch.long),
        "completion_ids": torch.zeros(b, n, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": torch.zeros(b, dtype=logp.dtype),
        "ref_per_token_logps": ref_logp,
        "old_per_token_logps": old_logp,
        "num_items_in_batch": mask.sum(),
    }


def _loss_fn(placement, level, iw):
    t = _shell(placement, level, iw)

    def fn(logp, ref_logp, old_logp, mask):
        t._get_per_token_logps_and_entropies = lambda *a, **k: (logp, None, None)
        return t._compute_loss(None, _inputs(logp, ref_logp, old_logp, mask))

    return fn


def _reward_fn(placement):
    t = _shell(placement, "token", False)

    def fn(logp, ref_logp, mask):
        x = logp.detach().clone().requires_grad_(True)
        t._get_per_token_logps_and_entropies = lambda *a, **k: (x, None, None)
        loss = t._compute_loss(None, _inputs(x, ref_logp, x.detach(), mask))
        (g,) = torch.autograd.grad(loss, x)
        return -g.detach()

    return fn


def settings() -> list[Setting]:
    from kltutor.placements import parse_placement
    from kltutor.trainers.extension_spec import placement_names, setting_id

    src = "kltutor/trainers/grpo_extension.py (KLPlacementGRPOTrainer._compute_loss)"
    out = []
    for name in placement_names():
        if name in ("none", "exact-in-loss"):
            continue
        p = parse_placement(name)
        variants = [("token", False), ("sequence", False), ("token", True)] if p.in_loss else [("token", False)]
        for level, iw in variants:
            flags = f"kl_placement='{name}', beta>0" + (f", kl_level='{level}'" if p.in_loss else "")
            flags += ", importance_weighted_kl=True" if iw else ""
            out.append(
                Setting(
                    LIBRARY,
                    "KLPlacementGRPOTrainer",
                    setting_id(name, level, iw),
                    flags,
                    "loss" if p.in_loss else "reward",
                    p.estimator,
                    level,
                    "per-token ratio w_t (differentiable)" if iw else "none",
                    _loss_fn(name, level, iw) if p.in_loss else _reward_fn(name),
                    scale=BETA,
                    default=False,  # a library's defaults are TRL's own rows; the extension's field default is k3-in-loss
                    source=src,
                    note="the capstone's placement in TRL's GRPOTrainer (kltutor.trainers.grpo_extension)",
                )
            )
    return out
