"""Command line: ``python -m kltutor.capstone --preset smoke --placement k1-in-reward --beta 0.05``.

Every field of :class:`~kltutor.capstone.config.CapstoneConfig` is an option; ``--sweep`` runs a grid
of placements x betas x seeds instead of a single run. A mistake (a bad value, an option the mode
would ignore, a path, a device, a run directory, a corrupt file) is one line on stderr that names the
flag or the file and what to do, with exit code 2; nothing of an existing run is changed by it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import types
import typing
from pathlib import Path

from kltutor.capstone.config import CAPSTONE_PLACEMENTS, PRESETS, CapstoneConfig, CapstoneUserError, ConfigError, flag
from kltutor.schedules import SCHEDULES

HELP = {
    "placement": f"where the KL term goes: one of {', '.join(CAPSTONE_PLACEMENTS)}",
    "beta": "KL coefficient beta >= 0 (the initial value for an adaptive schedule)",
    "kl_level": "in-loss estimators: 'token' (per-token estimator) or 'sequence' (estimator of the summed log-ratio)",
    "kl_schedule": f"beta schedule (kltutor.schedules): {', '.join(SCHEDULES)}; 'adaptive' is Ziegler et al.'s "
    "controller, 'ppo-penalty' the PPO paper's, 'linear'/'cosine'/'exponential' anneal --beta to --beta-end",
    "kl_target": "adaptive and ppo-penalty: target sequence KL in nats (default 1.0)",
    "kl_horizon": "adaptive: horizon in samples (default 10000); annealing: samples until --beta-end (default: the whole run)",
    "beta_end": "linear, cosine and exponential schedules: the final beta (required by them)",
    "importance_weighted_kl": "in-loss KL on stale samples (--updates-per-batch > 1): k*-in-loss weight each token by "
    "w_t = pi/pi_old; exact-in-loss weights position t by the prefix ratio prod_{s<t} w_s",
    "max_operand": "prompts are 'a+b=' with a, b uniform integers in [0, max_operand]",
    "format_reward": "reward of a well-formed wrong answer (digits then EOS), in [0, 1)",
    "model": "start from this local model directory (or a model name already in the Hugging Face cache; nothing is "
    "downloaded); default: a small Qwen2 trained from scratch (the --hidden-size ... options)",
    "hidden_size": "scratch model: hidden size",
    "num_layers": "scratch model: transformer layers",
    "num_heads": "scratch model: attention heads",
    "num_kv_heads": "scratch model: key/value heads",
    "intermediate_size": "scratch model: MLP width",
    "sft_steps": "SFT steps that make the reference policy (0: the loaded model is the reference)",
    "sft_batch_size": "SFT batch size",
    "sft_lr": "SFT learning rate",
    "sft_seed": "SFT seed (part of the cache key)",
    "steps": "GRPO steps (>= 1; with --resume: the total, beyond the checkpoint's step)",
    "prompts_per_step": "prompts per step",
    "group_size": "completions per prompt (>= 2)",
    "max_new_tokens": "completion budget in tokens",
    "temperature": "sampling temperature (log-probs use the same)",
    "lr": "policy learning rate (AdamW)",
    "clip_eps": "PPO clip range epsilon",
    "clip_std": "clamp the group reward std into LO HI before dividing (two numbers; needs --normalize-std)",
    "normalize_std": "divide advantages by the group std (--no-normalize-std: Dr. GRPO)",
    "aggregation": "loss aggregation: token-mean, sequence-mean or sequence-sum",
    "updates_per_batch": "gradient steps per sampled batch (>1 is off-policy after the first)",
    "max_grad_norm": "gradient-norm clipping threshold",
    "logprob_chunk": "rows of [batch*time] per chunk in the log-softmax (lower it to save memory)",
    "bf16": "bf16 autocast on a GPU (--no-bf16 to disable; ignored on the CPU)",
    "device": "auto, cpu or cuda",
    "seed": "seed of the RL run (prompts, sampling)",
    "top_p": "nucleus sampling: keep the most likely tokens up to total probability TOP_P (1: off); old_logp is then the truncated distribution's",
    "top_k": "sample among the TOP_K most likely tokens (0: off); old_logp is then the truncated distribution's",
    "logprob_dtype": "precision of the sampler's logits, log-softmax and scoring pass: float32 or bfloat16 (bfloat16 reproduces a sampler/trainer mismatch)",
    "decode_mode": "sampler decode step: auto (CUDA graph on a GPU, eager on the CPU), eager, cuda-graph or compile (falls back to eager, with a warning, if capture fails)",
    "ref_scoring": "reference log-probs: batched (one pass after sampling) or in-loop (inside the decode loop)",
    "run_dir": "directory for run.json, metrics.jsonl and checkpoints (default: a new temporary directory); with "
    "--sweep, the sweep's directory: one sub-directory per run, sweep.json and sweep.csv",
    "cache_dir": "directory of cached reference policies (default: $KLTUTOR_CACHE/capstone or ~/.cache/kltutor/capstone)",
    "checkpoint_every": "write a checkpoint every N steps (0: never)",
    "resume": "continue the run in --run-dir from its checkpoint; options left out take the values in its run.json",
    "overwrite": "replace the run (or sweep) already in --run-dir: its run.json, metrics.jsonl and checkpoint",
    "allow_config_change": "with --resume: apply options that change what the run is (placement, beta, lr, ...; "
    "run.json records them) instead of refusing",
    "progress": "tqdm progress bars (--no-progress, or TQDM_DISABLE=1, turns them off)",
}


def _base_type(t):
    """``int`` for ``int`` and ``int | None``, etc."""
    args = (
        [a for a in typing.get_args(t) if a is not type(None)]
        if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union
        else [t]
    )
    return args[0] if len(args) == 1 and args[0] in (int, float, str, bool) else str


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr (exit code 2), not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (python -m kltutor.capstone --help lists every option)\n")


CHOICES = {
    "placement": CAPSTONE_PLACEMENTS,
    "kl_schedule": tuple(SCHEDULES),
    "kl_level": ("token", "sequence"),
    "aggregation": ("token-mean", "sequence-mean", "sequence-sum"),
    "device": ("auto", "cpu", "cuda"),
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m kltutor.capstone",
        description="GRPO with a selectable KL placement on a small transformers model (kltutor's capstone chapter). "
        "Options left out take the preset's value, then CapstoneConfig's default.",
        epilog="With --resume, options left out take the values in the run's run.json. Every mistake is one line "
        "on stderr that names the flag or the file, with exit code 2.",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="smoke (the default): the CPU, under a minute; colab: a 16 GB GPU; h100: one H100/H200; "
        "--resume takes the run's settings instead",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        default=False,
        help="run a grid --placements x --betas x --seeds instead of one run (not with --placement, --beta, "
        "--seed, --resume); writes sweep.csv in --run-dir (default: a new temporary directory)",
    )
    p.add_argument(
        "--placements",
        nargs="+",
        default=None,
        help=f"sweep: placements (default: all of {', '.join(CAPSTONE_PLACEMENTS)})",
    )
    p.add_argument("--betas", nargs="+", type=float, default=None, help="sweep: betas (default: 0.05)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="sweep: seeds (default: 0)")
    hints = typing.get_type_hints(CapstoneConfig)
    smoke = CapstoneConfig(**PRESETS["smoke"])
    for f in dataclasses.fields(CapstoneConfig):
        h = HELP[f.name]
        v = getattr(smoke, f.name)
        if v is not None and not (
            isinstance(v, bool) and hints[f.name] is bool and f.name in ("resume", "overwrite", "allow_config_change")
        ):
            shown = " ".join(map(str, v)) if isinstance(v, tuple) else v
            h += f" (default: {shown}{' with --preset smoke' if f.name in PRESETS['smoke'] else ''})"
        t = _base_type(hints[f.name])
        if t is bool:
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=h)
        elif f.name == "clip_std":
            p.add_argument(flag(f.name), nargs=2, type=float, metavar=("LO", "HI"), default=None, help=h)
        elif f.name in CHOICES:
            p.add_argument(flag(f.name), choices=CHOICES[f.name], default=None, help=h)
        else:
            p.add_argument(flag(f.name), type=t, default=None, help=h)
    return p


ARCHITECTURE = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")


def _given(args: argparse.Namespace) -> dict:
    """The config options given on the command line (``None``: left out)."""
    out = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(CapstoneConfig) if getattr(args, f.name) is not None
    }
    if "clip_std" in out:
        out["clip_std"] = tuple(out["clip_std"])
    return out


def _refuse(given: dict, names, why: str) -> None:
    for n in names:
        if n in given:
            raise ConfigError(f"{flag(n)} {why}", n)


def config_from_args(args: argparse.Namespace) -> CapstoneConfig:
    """The validated config the options ask for (on ``--resume``: run.json's, with the options given applied)."""
    given = _given(args)
    if args.sweep:
        _refuse(given, ("placement", "beta", "seed"), "sets one run; a sweep takes --placements, --betas and --seeds")
        _refuse(
            given,
            ("resume", "allow_config_change"),
            "cannot be used with --sweep: a sweep starts every run afresh "
            "(resume one of its runs alone with --run-dir <sweep dir>/<run> --resume)",
        )
    else:
        for name in ("placements", "betas", "seeds"):
            if getattr(args, name) is not None:
                raise ConfigError(f"--{name} applies to --sweep only; for one run use {flag(name[:-1])}", name)
    if given.get("model") is not None:
        _refuse(given, ARCHITECTURE, "sizes the model built from scratch; --model loads its own architecture")
    if given.get("placement") == "none":
        _refuse(given, ("beta",), "weights the KL term, and --placement none has none")
    if given.get("sft_steps") == 0:
        _refuse(
            given, ("sft_batch_size", "sft_lr"), "is not used with --sft-steps 0 (no SFT: the model is the reference)"
        )
    if given.get("resume"):
        if args.preset is not None:
            raise ConfigError("--resume takes the run's settings from its run.json; leave --preset out", "preset")
        if given.get("run_dir") is None:
            raise ConfigError("--resume needs the --run-dir of the run to continue", "resume")
        from kltutor.capstone.rundir import read_run_record

        run_dir = Path(given["run_dir"]).expanduser()
        if run_dir.is_dir():  # otherwise the run's own checks say what is wrong with it
            base = CapstoneConfig.from_dict(read_run_record(run_dir)["config"]).to_dict()
            base.update(resume=False, overwrite=False, allow_config_change=False)
            return CapstoneConfig.from_dict({**base, **given}).validate()
    cfg = CapstoneConfig(**{**PRESETS[args.preset or "smoke"], **given})
    return cfg if args.sweep else cfg.validate()  # a sweep validates each of its runs (the placement is not set here)


def _main_sweep(args: argparse.Namespace, cfg: CapstoneConfig) -> int:
    from kltutor.capstone.sweep import SWEEP_CSV, sweep

    placements = args.placements or list(CAPSTONE_PLACEMENTS)
    betas = args.betas or [0.05]
    seeds = args.seeds or [0]
    out = (
        Path(cfg.run_dir).expanduser()
        if cfg.run_dir
        else Path(tempfile.gettempdir()) / f"kltutor-sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    )
    df = sweep(placements, betas, seeds, cfg.replace(run_dir=None), out_dir=out)
    last = df.groupby(["placement", "beta_init", "seed"]).tail(1)
    print(last[["placement", "beta_init", "seed", "reward", "kl_exact_seq", "entropy"]].round(4).to_string(index=False))
    print(f"wrote {out / SWEEP_CSV}")
    return 0


def _main_run(cfg: CapstoneConfig) -> int:
    from kltutor.capstone.loop import run

    res = run(cfg)
    print(json.dumps(res.metrics[-1] if res.metrics else {}, indent=1))
    print(f"metrics: {res.metrics_path}")
    return 0


def _one_line(e: BaseException) -> str:
    parts = [str(e)] + list(getattr(e, "__notes__", []))
    return "; ".join(" ".join(p.split()) for p in parts if p)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "export":  # python -m kltutor.capstone export --to trl|verl|openrlhf ...
        from kltutor.capstone import export

        return export.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        return _main_sweep(args, cfg) if args.sweep else _main_run(cfg)
    except CapstoneUserError as e:
        where = f"{flag(e.field)}: " if e.field and not str(e).startswith("--") else ""
        print(f"error: {where}{_one_line(e)}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # the run diverged: not a mistake in the input, but nothing to trace either
        print(f"error: the run diverged: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"interrupted; {_one_line(e) or 'nothing was written yet'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
