"""The capstone's KL placements inside TRL's ``GRPOTrainer`` (``[trainers]`` extra; chapter ``ch-capstone``).

TRL 1.16's ``GRPOTrainer`` has one KL term: k3 in the loss, per token, optionally times the per-token ratio
(``use_bias_correction_kl``), which chapter 3 classifies as token-level k2. :class:`KLPlacementGRPOTrainer`
subclasses it and gives it every placement of the capstone (:data:`kltutor.capstone.config.CAPSTONE_PLACEMENTS`),
chosen by the same names, computed by the same functions (:mod:`kltutor.placements`, :mod:`kltutor.grpo`):

- ``k1-in-reward``, ``k3-in-reward``: the per-token penalty ``-beta k(l_t)`` on the *sampling-time*
  log-ratio (frozen through every update on the batch), entering each token's advantage as a return-to-go
  next to the group-normalised task advantage;
- ``k1-in-loss``, ``k2-in-loss``, ``k3-in-loss``: the estimator with gradient, per token or on the sequence
  log-ratio (``kl_level``), optionally times the per-token ratio on stale batches (``importance_weighted_kl``);
- ``exact-in-loss``: the full-vocabulary KL at every completion position, computed in chunks of rows
  (``kl_chunk``; :func:`kltutor.capstone.logprobs.chunked_token_stats`), optionally times the prefix ratio
  ``prod_{s<t} w_s`` on stale batches (``importance_weighted_kl``);
- ``none``: the clipped surrogate alone.

Which TRL extension points it uses (no TRL code is copied):

- ``_calculate_rewards`` (called by ``_generate_and_score_completions`` with the rewards of *all* processes)
  is wrapped to keep those rewards; ``_generate_and_score_completions`` then replaces TRL's advantages by
  :func:`kltutor.grpo.group_advantages` (unbiased group std, ``eps = 1e-6``, optional ``clip_std``) and takes
  this process's slice, as TRL does;
- ``_compute_loss`` is replaced: the per-token log-probabilities still come from TRL's
  ``_get_per_token_logps_and_entropies`` (its fused, temperature-scaled LM head), the sampling-time and
  reference log-probabilities from TRL's batch (``old_per_token_logps``, ``ref_per_token_logps``), and the loss
  from kltutor's clipped surrogate, reward shaping and KL terms. ``exact-in-loss`` needs the whole next-token
  distribution, which TRL's fused head never forms, so it runs the (DDP-wrapped) model for its last hidden
  states and the reference model under ``no_grad``.

What TRL's machinery decides, and so what the extension cannot change:

- TRL computes ``old_per_token_logps`` only when the batch can be stale (``num_iterations > 1`` or
  ``steps_per_generation`` > ``gradient_accumulation_steps``); otherwise the loss-time policy *is* the
  sampling policy, and the in-reward penalty frozen at sampling time is the loss-time log-ratio, detached.
- TRL's log-probabilities run the model without ``position_ids``: with left-padded prompts of different
  lengths, positions count from the padding (the capstone counts from the first real token). The extension
  keeps TRL's convention everywhere so its reference and sampling log-probabilities agree with its own; the
  capstone's prompts (``max_operand <= 9``) all have one length, where the two conventions coincide.
- With ``top_p < 1`` or ``top_k > 0`` TRL scores the tempered but *untruncated* distribution, while the
  capstone's sampler records the truncated distribution's log-probabilities as the sampling policy's: the two
  agree (as the tests check) only at ``top_p = 1``, ``top_k = 0``.
- The beta schedule (``kl_schedule``) is updated once per generation batch from the k1 estimate of the
  sequence KL of the sampling policy, gathered over processes: an unbiased estimate of the exact KL the
  capstone measures (TRL never forms the full distribution at sampling time).
- ``exact-in-loss`` needs the output layer's whole weight matrix next to the last hidden states; FSDP and
  DeepSpeed ZeRO-3 keep it sharded outside the model's own forward, so the extension refuses those (DDP and
  ZeRO-2 replicate it and work). The other placements only use TRL's log-probabilities and run under all of them.
- Settings whose TRL meaning the capstone's loss has no counterpart for are refused rather than ignored:
  ``epsilon_high != epsilon``, ``delta``, ``top_entropy_quantile < 1``, ``off_policy_mask_threshold``,
  ``scale_rewards='batch'``, ``multi_objective_aggregation='normalize_then_sum'``, vLLM's importance-sampling
  correction, an entropy bonus. ``loss_type`` is ignored (``kl_aggregation`` decides).

A TRL version other than :data:`~kltutor.trainers.extension_spec.CHECKED_TRL_VERSIONS` gets a one-line
``UserWarning`` (not an error: the hooks may still hold; ``tests/test_trl_extension.py`` is the check).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from kltutor.placements import parse_placement
from kltutor.trainers.extension_spec import CHECKED_TRL_VERSIONS, EXTENSION_FIELDS, validate_settings

__all__ = ["KLPlacementGRPOConfig", "KLPlacementGRPOTrainer", "kl_placement_loss", "check_trl_version"]


def check_trl_version() -> str:
    """TRL's version; a one-line ``UserWarning`` when it is not one the extension was checked against."""
    import trl

    if trl.__version__ not in CHECKED_TRL_VERSIONS:
        warnings.warn(
            f"kltutor.trainers.grpo_extension was checked against TRL {', '.join(CHECKED_TRL_VERSIONS)}, "
            f"not {trl.__version__}: run tests/test_trl_extension.py before trusting it",
            UserWarning,
            stacklevel=3,
        )
    return trl.__version__


@dataclass
class KLPlacementGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the capstone's KL settings (:data:`~kltutor.trainers.extension_spec.EXTENSION_FIELDS`).

    ``beta`` is the KL coefficient (the schedule's initial value); the other TRL fields keep their meaning.
    A bad value raises ``ValueError`` naming the field (the capstone's own rules)."""

    kl_placement: str = field(default=EXTENSION_FIELDS["kl_placement"], metadata={"help": "capstone placement"})
    kl_level: str = field(default=EXTENSION_FIELDS["kl_level"], metadata={"help": "'token' or 'sequence'"})
    importance_weighted_kl: bool = field(default=False, metadata={"help": "ratio-weighted in-loss KL"})
    kl_aggregation: str = field(default=EXTENSION_FIELDS["kl_aggregation"], metadata={"help": "loss aggregation"})
    kl_schedule: str = field(default="fixed", metadata={"help": "kltutor.schedules name"})
    kl_target: float | None = field(default=None, metadata={"help": "controller target KL (nats)"})
    kl_horizon: int | None = field(default=None, metadata={"help": "controller / annealing horizon (samples)"})
    beta_end: float | None = field(default=None, metadata={"help": "annealing: final beta"})
    clip_std: list[float] | None = field(default=None, metadata={"help": "[lo, hi] clamp of the group std"})
    kl_chunk: int = field(default=1024, metadata={"help": "exact-in-loss: rows per chunk"})

    def __post_init__(self):
        super().__post_init__()
        validate_settings(self.extension_values(), self.beta, normalize_std=self.scale_rewards not in ("none", False))
        if parse_placement(self.kl_placement).is_none and self.beta != 0:
            raise ValueError(
                f"beta: placement 'none' has no KL term; set beta=0 (got {self.beta:g}: TRL would load a reference "
                "model for nothing)"
            )
        if self.kl_placement != "none" and self.beta == 0:
            raise ValueError(f"beta: placement {self.kl_placement!r} needs beta > 0 (or use kl_placement='none')")
        eps_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        refused = {
            "epsilon_high": eps_high != self.epsilon,
            "delta": self.delta is not None,
            "top_entropy_quantile": self.top_entropy_quantile < 1.0,
            "off_policy_mask_threshold": self.off_policy_mask_threshold is not None,
            "scale_rewards": self.scale_rewards == "batch",
            "multi_objective_aggregation": self.multi_objective_aggregation != "sum_then_normalize",
            "vllm_importance_sampling_correction": self.use_vllm and self.vllm_importance_sampling_correction,
            "entropy_coef": bool(getattr(self, "entropy_coef", 0.0)),
        }
        for name, bad in refused.items():
            if bad:
                raise ValueError(
                    f"{name}: the capstone's loss (kltutor.trainers.grpo_extension) has no counterpart for "
                    f"{name}={getattr(self, name)!r}; leave it at TRL's default"
                )

    def extension_values(self) -> dict:
        return {k: getattr(self, k) for k in EXTENSION_FIELDS}


def kl_placement_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    placement: str,
    beta: float,
    clip_eps: float,
    aggregation: str,
    kl_level: str = "token",
    importance_weighted_kl: bool = False,
    exact_kl: torch.Tensor | None = None,
):
    """The capstone's loss of one update (:func:`kltutor.capstone.loss.step_loss`) from per-sequence
    ``advantages`` instead of rewards (a TRL micro-batch need not hold whole groups).

    Returns ``(loss, kl_term)``: ``kl_term`` (detached) is the aggregated term beta multiplies (the frozen
    penalty's aggregate for in-reward placements). ``exact_kl``: the per-token full-vocabulary KL (with
    gradient) for ``exact-in-loss``. ``aggregate`` is the capstone's, over this batch.
    """
    from kltutor.grpo import placement_loss
    from kltutor.placements import aggregate, clipped_surrogate, prefix_ratio

    if not parse_placement(placement).exact:
        out = placement_loss(
            logp,
            old_logp,
            ref_logp,
            mask,
            advantages,
            placement=placement,
            beta=beta,
            clip_eps=clip_eps,
            aggregation=aggregation,
            kl_level=kl_level,
            importance_weighted_kl=importance_weighted_kl,
        )
        return out.loss, out.kl_term
    m = mask.to(logp.dtype)
    policy_loss, _ = clipped_surrogate(logp, old_logp, advantages, m, clip_eps, aggregation)
    kl_t = prefix_ratio(logp, old_logp, m) * exact_kl if importance_weighted_kl else exact_kl  # prod_{s<t} w_s
    kl_term = aggregate(kl_t, m, aggregation)
    return policy_loss + beta * kl_term, kl_term.detach()


class KLPlacementGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with the capstone's KL placement (see the module docstring); takes a
    :class:`KLPlacementGRPOConfig` as ``args`` and every other argument of ``GRPOTrainer``."""

    def __init__(self, *args, **kwargs):
        check_trl_version()
        cfg = kwargs.get("args", args[2] if len(args) > 2 else None)
        if not isinstance(cfg, KLPlacementGRPOConfig):
            raise TypeError("KLPlacementGRPOTrainer needs args=KLPlacementGRPOConfig(...) (the capstone's KL fields)")
        super().__init__(*args, **kwargs)
        from kltutor.schedules import make_schedule

        c = cfg
        if parse_placement(c.kl_placement).exact and (self.is_fsdp_enabled or _zero_stage(self) == 3):
            raise ValueError(
                "kl_placement: exact-in-loss multiplies the last hidden states by the whole output layer, which "
                "FSDP and DeepSpeed ZeRO-3 keep sharded outside the model's forward; use DDP or ZeRO-2, or k3-in-reward"
            )
        self.kl_placement = c.kl_placement
        self.kl_schedule = make_schedule(
            c.kl_schedule,
            beta=c.beta,
            target=_target(c),
            horizon=_horizon(c, self.accelerator.num_processes),
            end=c.beta_end,
        )
        self._batch_beta = float(self.kl_schedule.beta)
        self._kl_rewards = None

    # -- advantages: the capstone's group normalisation on the rewards of every process --------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._kl_rewards = rewards_per_func  # every process's rows, in TRL's (group-consecutive) order
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        from kltutor.grpo import group_advantages

        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return out
        w = self.reward_weights.to(self._kl_rewards.device)
        if torch.isnan(self._kl_rewards).all(dim=1).any():
            raise ValueError(
                "a completion got no reward from any reward function (None): the capstone's "
                "advantages need every reward"
            )
        rewards = (self._kl_rewards * w[None]).nansum(dim=1)
        adv = group_advantages(
            rewards.float(),
            self.num_generations,
            normalize_std=self.args.scale_rewards not in ("none", False),
            clip_std=tuple(self.args.clip_std) if self.args.clip_std else None,
        )
        n = len(inputs)
        out["advantages"] = adv[self.accelerator.process_index * n : (self.accelerator.process_index + 1) * n].to(
            out["advantages"].device
        )
        self._update_beta(out)
        return out

    def _update_beta(self, out) -> None:
        """Fix this generation batch's beta, then feed the schedule the batch's k1 sequence KL (all processes)."""
        self._batch_beta = float(self.kl_schedule.beta)
        if self.args.kl_schedule == "fixed" or "ref_per_token_logps" not in out:
            return
        m = out["completion_mask"].float()
        old = out.get("old_per_token_logps")
        if old is None:  # on-policy: the sampling policy is the current one
            with torch.no_grad():
                old, _, _ = self._get_per_token_logps_and_entropies(
                    self.model,
                    torch.cat([out["prompt_ids"], out["completion_ids"]], 1),
                    torch.cat([out["prompt_mask"], out["completion_mask"]], 1),
                    out["completion_ids"].size(1),
                )
        seq = ((old - out["ref_per_token_logps"]) * m).sum(-1)
        total = self.accelerator.reduce(torch.stack([seq.sum(), torch.tensor(float(seq.numel()))]), reduction="sum")
        kl = float(total[0] / total[1])
        self._metrics["train"]["kl_schedule_input"].append(kl)  # what the schedule saw (k1 sequence KL)
        if math.isfinite(kl):
            self.kl_schedule.update(kl, int(total[1]))

    # -- the loss -------------------------------------------------------------------------------------------------

    def _exact_stats(self, model, input_ids, attention_mask, n_completion):
        """Per-token log-probs and full-vocabulary ``KL(pi || pi_ref)`` of the completion positions, chunked."""
        from kltutor.capstone.logprobs import chunked_token_stats

        def last_hidden(m):
            out = m(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
            return out.hidden_states[-1][:, -n_completion - 1 : -1]

        policy = self.accelerator.unwrap_model(model)
        h = last_hidden(model)  # through the wrapper (DDP / FSDP), so gradients are reduced as usual
        with torch.no_grad():
            ref = self.ref_model if self.ref_model is not None else None
            if ref is None:
                raise ValueError("exact-in-loss needs TRL's reference model (beta > 0, no PEFT adapter)")
            rh = last_hidden(ref)
            rw = self.accelerator.unwrap_model(ref).get_output_embeddings().weight
        targets = input_ids[:, -n_completion:]
        return chunked_token_stats(
            h,
            policy.get_output_embeddings().weight,
            targets,
            rh,
            rw,
            chunk=self.args.kl_chunk,
            temperature=self.temperature,
        )

    def _compute_loss(self, model, inputs):
        args = self.args
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        T = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        exact = parse_placement(self.kl_placement).exact
        exact_kl = None
        if exact:
            st = self._exact_stats(model, input_ids, attention_mask, T)
            logp, exact_kl = st["logp"], st["kl"]
        else:
            logp, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask, T)
        old = inputs.get("old_per_token_logps")
        old = logp.detach() if old is None else old  # TRL omits it exactly when the batch is on-policy
        loss, kl_term = kl_placement_loss(
            logp,
            old,
            inputs.get("ref_per_token_logps"),
            mask,
            inputs["advantages"],
            self.kl_placement,
            self._batch_beta,
            self.epsilon_low,
            args.kl_aggregation,
            kl_level=args.kl_level,
            importance_weighted_kl=args.importance_weighted_kl,
            exact_kl=exact_kl,
        )
        mode = "train" if self.model.training else "eval"
        loss = loss * self._across_ranks(mask, inputs, mode)
        tokens = mask.sum().float()
        totals = self.accelerator.reduce(torch.stack([kl_term.float() * tokens, tokens]).detach(), reduction="sum")
        self._metrics[mode]["kl"].append(float(totals[0] / totals[1].clamp(min=1.0)))
        self._metrics[mode]["beta"].append(self._batch_beta)
        return loss

    def _across_ranks(self, mask, inputs, mode) -> float | torch.Tensor:
        """The factor that makes the mean over processes (DDP's gradient average) and the sum over gradient
        accumulation steps equal the capstone's aggregate over the whole optimiser batch.

        Sequence aggregations: every process holds the same number of sequences, so the mean of the
        processes' means is the global mean; divide by the accumulation steps. Token mean: this batch's
        mean times ``local tokens / (global tokens / processes)``, the global token count taken from TRL's
        ``num_items_in_batch`` (the generation batch), scaled to one accumulation window as TRL's ``dapo``."""
        accum = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        accum = accum if mode == "train" else 1.0
        if self.args.kl_aggregation != "token-mean":
            return 1.0 / accum
        local = mask.sum().clamp(min=1.0)
        window = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            window = window * accum / self.args.steps_per_generation
        return local / window


def _zero_stage(trainer) -> int | None:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    return None if plugin is None else plugin.zero_stage


def _target(cfg: KLPlacementGRPOConfig):
    """The controller's target with the capstone's default (kltutor.capstone.config.CapstoneConfig.resolved)."""
    from kltutor.capstone.config import DEFAULT_KL_TARGET
    from kltutor.schedules import SCHEDULES

    if cfg.kl_target is None and "target" in SCHEDULES[cfg.kl_schedule].uses:
        return DEFAULT_KL_TARGET
    return cfg.kl_target


def _horizon(cfg: KLPlacementGRPOConfig, num_processes: int):
    """The schedule horizon in samples with the capstone's defaults (CapstoneConfig.resolved): the
    controllers' 10000, the annealing schedules' whole run (every process's samples of every step)."""
    from kltutor.capstone.config import DEFAULT_KL_HORIZON
    from kltutor.schedules import SCHEDULES

    uses = SCHEDULES[cfg.kl_schedule].uses
    if cfg.kl_horizon is not None or "horizon" not in uses:
        return cfg.kl_horizon
    if "end" in uses:
        per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * num_processes
        return cfg.max_steps * per_step // max(1, cfg.num_iterations)
    return DEFAULT_KL_HORIZON
