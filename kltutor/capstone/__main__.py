"""Command line: ``python -m kltutor.capstone --preset smoke --placement k1-in-reward --beta 0.05``.

Every field of :class:`~kltutor.capstone.config.CapstoneConfig` is an option; ``--sweep`` runs a grid
of placements x betas x seeds instead of a single run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from kltutor.capstone.config import CAPSTONE_PLACEMENTS, PRESETS, CapstoneConfig

HELP = {
    "placement": f"where the KL term goes: one of {', '.join(CAPSTONE_PLACEMENTS)}",
    "beta": "KL coefficient beta >= 0 (the initial value for an adaptive schedule)",
    "kl_level": "in-loss estimators: 'token' (per-token estimator) or 'sequence' (estimator of the summed log-ratio)",
    "kl_schedule": "'fixed', 'adaptive' (kltutor.schedules.AdaptiveKLController), 'ppo-penalty', ...: a name of kltutor.schedules.SCHEDULES",
    "kl_target": "adaptive schedule: target sequence KL in nats",
    "kl_horizon": "adaptive schedule: horizon in samples",
    "importance_weighted_kl": "weight the in-loss KL of each token by w_t = pi/pi_old (off-policy correction)",
    "max_operand": "prompts are 'a+b=' with a, b uniform integers in [0, max_operand]",
    "format_reward": "reward of a well-formed wrong answer (digits then EOS), in [0, 1)",
    "model": "start from this model name or local directory (from_pretrained); default: a small Qwen2 trained from scratch",
    "hidden_size": "scratch model: hidden size", "num_layers": "scratch model: transformer layers",
    "num_heads": "scratch model: attention heads", "num_kv_heads": "scratch model: key/value heads",
    "intermediate_size": "scratch model: MLP width",
    "sft_steps": "SFT steps that make the reference policy (0: the loaded model is the reference)",
    "sft_batch_size": "SFT batch size", "sft_lr": "SFT learning rate", "sft_seed": "SFT seed (part of the cache key)",
    "steps": "GRPO steps", "prompts_per_step": "prompts per step", "group_size": "completions per prompt (>= 2)",
    "max_new_tokens": "completion budget in tokens", "temperature": "sampling temperature (log-probs use the same)",
    "lr": "policy learning rate (AdamW)", "clip_eps": "PPO clip range epsilon",
    "clip_std": "clamp the group reward std into LO HI before dividing (two numbers)",
    "normalize_std": "divide advantages by the group std (--no-normalize-std: Dr. GRPO)",
    "aggregation": "loss aggregation: token-mean, sequence-mean or sequence-sum",
    "updates_per_batch": "gradient steps per sampled batch (>1 is off-policy after the first)",
    "max_grad_norm": "gradient-norm clipping threshold",
    "logprob_chunk": "rows of [batch*time] per chunk in the log-softmax (lower it to save memory)",
    "bf16": "bf16 autocast on a GPU (--no-bf16 to disable; ignored on the CPU)",
    "device": "auto, cpu or cuda", "seed": "seed of the RL run (prompts, sampling)",
    "top_p": "nucleus sampling: keep the most likely tokens up to total probability TOP_P (1: off); old_logp is then the truncated distribution's",
    "top_k": "sample among the TOP_K most likely tokens (0: off); old_logp is then the truncated distribution's",
    "logprob_dtype": "precision of the sampler's logits, log-softmax and scoring pass: float32 or bfloat16 (bfloat16 reproduces a sampler/trainer mismatch)",
    "decode_mode": "sampler decode step: auto (CUDA graph on a GPU, eager on the CPU), eager, cuda-graph or compile (falls back to eager, with a warning, if capture fails)",
    "ref_scoring": "reference log-probs: batched (one pass after sampling) or in-loop (inside the decode loop)",
    "run_dir": "directory for metrics.jsonl and checkpoints (default: a new temporary directory)",
    "cache_dir": "directory of cached reference policies (default: $KLTUTOR_CACHE/capstone or ~/.cache/kltutor/capstone)",
    "checkpoint_every": "write a checkpoint every N steps (0: never)",
    "resume": "continue the run in --run-dir from its checkpoint",
    "progress": "tqdm progress bars (--no-progress, or TQDM_DISABLE=1, turns them off)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kltutor.capstone",
        description="GRPO with a selectable KL placement on a small transformers model (kltutor chapter 9). "
                    "Options left out take the preset's value, then CapstoneConfig's default.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke",
                   help="smoke: the CPU, under a minute; colab: a 16 GB GPU; h100: one H100/H200")
    p.add_argument("--sweep", action="store_true",
                   help="run a grid: --placements x --betas x --seeds; writes sweep.csv in --run-dir")
    p.add_argument("--placements", nargs="+", default=list(CAPSTONE_PLACEMENTS), help="sweep: placements")
    p.add_argument("--betas", nargs="+", type=float, default=[0.05], help="sweep: betas")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="sweep: seeds")
    hints = typing.get_type_hints(CapstoneConfig)
    for f in dataclasses.fields(CapstoneConfig):
        flag = "--" + f.name.replace("_", "-")
        h = HELP[f.name]
        t = hints[f.name]
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=h)
        elif f.name == "clip_std":
            p.add_argument(flag, nargs=2, type=float, metavar=("LO", "HI"), default=None, help=h)
        elif f.name == "placement":
            p.add_argument(flag, choices=CAPSTONE_PLACEMENTS, default=None, help=h)
        else:
            base = int if t in (int,) else float if t in (float,) else str
            p.add_argument(flag, type=base, default=None, help=h)
    return p


def config_from_args(args: argparse.Namespace) -> CapstoneConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(CapstoneConfig) if getattr(args, f.name) is not None}
    if "clip_std" in overrides:
        overrides["clip_std"] = tuple(overrides["clip_std"])
    return CapstoneConfig(**{**PRESETS[args.preset], **overrides}).validate()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.sweep:
        from kltutor.capstone.sweep import sweep

        out = Path(cfg.run_dir or ".")
        df = sweep(args.placements, args.betas, args.seeds, cfg, out_dir=out)
        df.to_csv(out / "sweep.csv", index=False)
        last = df.groupby(["placement", "beta_init", "seed"]).tail(1)
        print(last[["placement", "beta_init", "seed", "reward", "kl_exact_seq", "entropy"]].round(4).to_string(index=False))
        print(f"wrote {out / 'sweep.csv'}")
        return 0
    from kltutor.capstone.loop import run

    res = run(cfg)
    print(json.dumps(res.metrics[-1] if res.metrics else {}, indent=1))
    print(f"metrics: {res.metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
