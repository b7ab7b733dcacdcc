"""TRL's KL code on the toy: ``GRPOTrainer._compute_loss`` and ``RLOOTrainer``'s reward shaping, called as is.

TRL computes its KL terms inside trainer methods, not in free functions, so the adapter builds a trainer
*shell* (``object.__new__`` of the real class, no model, no dataset) carrying the attributes the method
reads, with values taken from a real ``GRPOConfig`` / ``RLOOConfig``, and replaces only the method that
runs the language model (``_get_per_token_logps_and_entropies``) by the toy's log-probabilities. Every
line of the KL, ratio, clipping and aggregation code that runs is TRL's.

TRL 1.16 has no PPO trainer: ``trl.experimental.ppo`` shipped last in TRL 1.12.0 and was removed in
1.13.0, so PPO's settings are not classified from code (the inspector still reads ``PPOConfig`` files).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch

from kltutor.trainers.core import Setting

LIBRARY = "TRL"
PACKAGE = "trl"
BETA = 0.1  # any positive beta; the harness divides it out (TRL's GRPO default is 0.0: no KL term)


def version() -> str:
    import trl

    return trl.__version__


class _Accelerator:
    """What ``_compute_loss`` asks of ``accelerate.Accelerator`` on one process (reduce / gather are the identity)."""

    num_processes = 1
    process_index = 0
    device = torch.device("cpu")

    @staticmethod
    def reduce(x, reduction="sum"):
        return x

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def shell(cls, args, **attributes):
    """A trainer of class ``cls`` without ``__init__`` (no model, no dataset): its config ``args``, a
    one-process accelerator, empty metrics, a model in training mode, and ``attributes``."""
    t = object.__new__(cls)
    t.args = args
    t.accelerator = _Accelerator()
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t.model = SimpleNamespace(training=True)
    for name, value in attributes.items():
        setattr(t, name, value)
    return t


def _grpo_shell(**overrides):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir="/tmp/kltutor-trl", report_to="none", use_cpu=True, bf16=False, beta=BETA, **overrides)
    # the attributes GRPOTrainer.__init__ copies from its config and _compute_loss reads
    return shell(
        GRPOTrainer,
        args,
        beta=args.beta,
        loss_type=args.loss_type,
        importance_sampling_level=args.importance_sampling_level,
        epsilon_low=args.epsilon,
        epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        top_entropy_quantile=args.top_entropy_quantile,
        off_policy_mask_threshold=args.off_policy_mask_threshold,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        max_completion_length=args.max_completion_length,
        current_gradient_accumulation_steps=1,
    )


def _grpo_loss(overrides: dict):
    """``fn(logp, ref_logp, old_logp, mask)`` running ``GRPOTrainer._compute_loss`` with zero advantages."""

    t = _grpo_shell(**overrides)

    def fn(logp, ref_logp, old_logp, mask):
        t._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
        b, n = logp.shape
        inputs = {
            "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
            "prompt_mask": torch.ones(b, 1, dtype=torch.long),
            "completion_ids": torch.zeros(b, n, dtype=torch.long),
            "completion_mask": mask.long(),
            "advantages": torch.zeros(b, dtype=logp.dtype),
            "ref_per_token_logps": ref_logp,
            "old_per_token_logps": old_logp,
            "num_items_in_batch": mask.sum(),
        }
        return t._compute_loss(None, inputs)

    return fn


def _rloo_advantages():
    """``fn(logp, ref_logp, mask)`` running ``RLOOTrainer._generate_and_score_completions`` on one group.

    The group is ``[y, y0]``: the toy's sequence and a fixed sibling ``y0`` with a constant log-ratio.
    RLOO's leave-one-out baseline for ``y`` is then the sibling's reward, a constant, which leaves the
    expected gradient unchanged. The task reward is zero, so the advantage of ``y`` is RLOO's KL penalty
    minus the sibling's; it is returned for every token, because RLOO's loss multiplies the sequence
    log-probability (the sum over tokens) by it.
    """
    from trl import RLOOConfig, RLOOTrainer

    args = RLOOConfig(
        output_dir="/tmp/kltutor-trl",
        report_to="none",
        use_cpu=True,
        bf16=False,
        beta=BETA,
        num_generations=2,
        per_device_train_batch_size=2,
    )
    t = shell(
        RLOOTrainer,
        args,
        beta=args.beta,
        num_generations=args.num_generations,
        normalize_advantages=args.normalize_advantages,
        reward_clip_range=args.reward_clip_range,
        mask_truncated_completions=args.mask_truncated_completions,
        pad_to_multiple_of=args.pad_to_multiple_of,
        reward_func_names=["task"],
        reward_weights=torch.ones(1),
        log_multimodal=False,
        eos_token_ids=[1],
        model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
        ref_model=SimpleNamespace(training=False, is_gradient_checkpointing=False),
        _tokenizer=SimpleNamespace(pad_token_id=0),
        _logs={
            "prompt": [],
            "completion": [],
            "rewards": defaultdict(list),
            "advantages": [],
            "extra": defaultdict(list),
            "images": [],
        },
        _pending_extra_logs={},
        _pending_metrics={},
    )
    t._calculate_rewards = lambda inputs, prompts, completions, ids: torch.zeros(len(prompts), 1, dtype=torch.float64)

    def fn(logp, ref_logp, mask):
        n = logp.shape[1]
        sib_logp = torch.full_like(logp, -0.5)  # the sibling y0: any fixed log-probabilities
        sib_ref = torch.full_like(ref_logp, -0.75)
        pol = torch.cat([logp, sib_logp]).to(torch.float64)
        ref = torch.cat([ref_logp, sib_ref]).to(torch.float64)
        t._generate = lambda prompts: ([[5], [5]], [[2] * n, [2] * n], ["y", "y0"])
        t._get_per_token_logps_and_entropies = lambda model, *a, **k: (pol if model is t.model else ref, None, None)
        out = t._generate_and_score_completions([{"prompt": "p"}, {"prompt": "p"}])
        adv = out["advantages"][:1].detach()
        return adv[:, None].expand_as(logp).clone()

    return fn


def settings() -> list[Setting]:
    from kltutor.trainers.core import TOY

    T = TOY["seq_len"]
    src = "trl/trainer/grpo_trainer.py (GRPOTrainer._compute_loss)"
    out = []
    for ratio in (False, True):
        for level in ("token", "sequence"):
            ov = {"use_bias_correction_kl": ratio, "importance_sampling_level": level}
            default = ratio and level == "token"
            corr = (
                "per-token ratio w_t (differentiable)"
                if (ratio and level == "token")
                else ("sequence ratio (geometric mean, differentiable) broadcast to tokens" if ratio else "none")
            )
            out.append(
                Setting(
                    LIBRARY,
                    "GRPOTrainer",
                    f"trl.grpo.k3.{'ratio' if ratio else 'plain'}.{level}",
                    f"beta>0, use_bias_correction_kl={ratio}, importance_sampling_level='{level}'",
                    "loss",
                    "k3",
                    "token",
                    corr,
                    _grpo_loss(ov),
                    scale=BETA / T,
                    default=default,
                    source=src,
                    note="the default once beta > 0 (GRPOConfig's default beta is 0.0: no KL term, no reference model)"
                    if default
                    else "",
                )
            )
    out.append(
        Setting(
            LIBRARY,
            "RLOOTrainer",
            "trl.rloo.k1.sequence",
            "beta>0 (RLOOConfig default beta=0.05)",
            "reward",
            "k1",
            "sequence",
            "none",
            _rloo_advantages(),
            scale=BETA,
            default=True,
            source="trl/trainer/rloo_trainer.py (RLOOTrainer._generate_and_score_completions)",
            note="sum of k1 over the sequence, subtracted from the reward; the advantage multiplies log pi(y)",
        )
    )
    return out
