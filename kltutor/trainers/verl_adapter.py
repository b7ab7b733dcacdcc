"""verl's KL code on the toy: ``core_algos.kl_penalty`` / ``agg_loss`` (in the loss) and ``apply_kl_penalty``
with ``compute_gae_advantage_return`` (in the reward).

In the loss, verl's actor (``verl/workers/utils/losses.py::ppo_loss``) computes
``kl_penalty(log_prob, ref_log_prob, kl_loss_type)``, aggregates it with ``agg_loss(..., loss_agg_mode)`` and
adds ``kl_loss_coef`` times the result to the policy loss; the adapter calls those two functions the same way
(``ppo_loss`` itself wants verl's padded ``TensorDict`` batch). No importance ratio enters verl's KL loss.

In the reward, ``apply_kl_penalty`` (``verl/trainer/ppo/ray_trainer.py``) subtracts ``beta * kl_penalty(...)``
from the token-level scores; the adapter calls it on a ``DataProto`` and turns the shaped rewards into
returns-to-go with ``compute_gae_advantage_return`` (critic values 0, gamma = lambda = 1: its ``returns`` output
is then exactly the return-to-go; its ``advantages`` output is additionally whitened over the batch, which
rescales beta by a batch statistic and is left out of the exact expectation).
"""

from __future__ import annotations

import torch

from kltutor.trainers.core import TOY, Setting

LIBRARY = "verl"
PACKAGE = "verl"
BETA = 0.1

# kl_loss_type / kl_penalty names verl accepts (core_algos.kl_penalty_forward) and their estimator; each
# alias (ALIASES) runs the same branch, which the tests check on the installed library.
ESTIMATORS = {"kl": "k1", "abs": "abs", "mse": "k2", "low_var_kl": "k3"}
ALIASES = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}


def version() -> str:
    import verl

    return verl.__version__


def _quiet_import():
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            from verl.trainer.ppo import core_algos
        finally:
            logging.disable(logging.NOTSET)
    return core_algos


def _kl_loss(kl_loss_type: str, loss_agg_mode: str = "token-mean"):
    core_algos = _quiet_import()

    def fn(logp, ref_logp, old_logp, mask):
        kld = core_algos.kl_penalty(logprob=logp, ref_logprob=ref_logp, kl_penalty=kl_loss_type)
        kl_loss = core_algos.agg_loss(loss_mat=kld, loss_mask=mask.bool(), loss_agg_mode=loss_agg_mode)
        return kl_loss * BETA

    return fn


def _kl_reward(kl_penalty: str):
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            from verl import DataProto
            from verl.trainer.config import KLControlConfig
            from verl.trainer.ppo import core_algos
            from verl.trainer.ppo.ray_trainer import apply_kl_penalty
        finally:
            logging.disable(logging.NOTSET)

    def fn(logp, ref_logp, mask):
        kl_ctrl = core_algos.get_kl_controller(KLControlConfig(type="fixed", kl_coef=BETA))
        data = DataProto.from_dict(
            tensors={
                "response_mask": mask,
                "token_level_scores": torch.zeros_like(logp),
                "old_log_probs": logp,
                "ref_log_prob": ref_logp,
            }
        )
        data, _ = apply_kl_penalty(data, kl_ctrl, kl_penalty=kl_penalty)
        rewards = data.batch["token_level_rewards"]
        _, returns = core_algos.compute_gae_advantage_return(
            rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0
        )
        return returns.detach()

    return fn


def settings() -> list[Setting]:
    T = TOY["seq_len"]
    loss_src = "verl/trainer/ppo/core_algos.py (kl_penalty, agg_loss) as composed in verl/workers/utils/losses.py"
    out = []
    alias = {v: k for k, v in ALIASES.items()}
    for name, est in ESTIMATORS.items():
        for plus in ("", "+"):
            t = name + plus
            if plus and est == "k2":
                note = "'+' changes nothing for k2: 'mse+' takes the straight-through branch, whose value and gradient are k2's own"
            elif plus:
                note = "straight-through: the estimator's value, k2's gradient"
            else:
                note = ""
            default = t == "low_var_kl"
            if default:
                note = "the default kl_loss_type once use_kl_loss=True (default False)"
            names = t + (f" (or {alias[name]}{plus})" if name in alias else "")
            out.append(
                Setting(
                    LIBRARY,
                    "actor (loss)",
                    f"verl.loss.{t}",
                    f"actor_rollout_ref.actor.use_kl_loss=True, kl_loss_type={names}",
                    "loss",
                    est + plus,
                    "token",
                    "straight-through k2 gradient ('+')" if plus else "none",
                    _kl_loss(t),
                    scale=BETA / T,
                    default=default,
                    source=loss_src,
                    note=note,
                )
            )
    for name, est in ESTIMATORS.items():
        out.append(
            Setting(
                LIBRARY,
                "trainer (reward)",
                f"verl.reward.{name}",
                f"algorithm.use_kl_in_reward=True, algorithm.kl_penalty={name}"
                + (f" (or {alias[name]})" if name in alias else ""),
                "reward",
                est,
                "token",
                "none",
                _kl_reward(name),
                scale=BETA,
                default=(name == "kl"),
                source="verl/trainer/ppo/ray_trainer.py (apply_kl_penalty); core_algos.compute_gae_advantage_return",
                note="return-to-go (GAE with V = 0, gamma = lambda = 1)"
                + ("; default kl_penalty once use_kl_in_reward=True (default False)" if name == "kl" else ""),
            )
        )
    return out
