"""``python -m kltutor.capstone export --to trl|verl|openrlhf [the usual flags]`` (chapter ``ch-capstone``).

Writes the capstone's experiment (model, placement, beta and its schedule, group size, aggregation, sampling
temperature / top-p / top-k, learning rate, steps, clip range, advantage normalisation) as another trainer's
configuration, in ``--out`` (default ``capstone-export-<target>``):

- ``trl``: ``trl_grpo.yaml`` (``GRPOConfig`` fields plus those of :mod:`kltutor.trainers.grpo_extension`, and the
  task's settings under ``kltutor_task``) and ``train_trl.sh``, which runs it with ``accelerate launch``;
- ``verl``: ``run_verl_grpo.sh``, ``python3 -m verl.trainer.main_ppo`` with Hydra overrides as in verl's
  ``examples/grpo_trainer/run_*.sh``: ``use_kl_in_reward`` + ``kl_penalty`` + ``kl_ctrl`` for an in-reward
  placement, ``use_kl_loss`` + ``kl_loss_type`` + ``kl_loss_coef`` for an in-loss one;
- ``openrlhf``: ``train_openrlhf.sh``, ``python3 -m openrlhf.cli.train_ppo_ray`` flags (``--algo.kl.*``).

A placement or setting the target cannot express is refused with one line naming what is missing and the
nearest setting it can express exactly (exit code 2). Every export is read back by the config inspector
(:func:`inspect_export`), which must report the capstone's placement and beta (``tests/test_capstone_export.py``).
What each target computes differently from the capstone even when the placement is the same (e.g. verl's GRPO
normalises an in-reward penalty with the task reward) is written into the file and printed.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from kltutor.capstone.config import CapstoneConfig, CapstoneUserError, ConfigError
from kltutor.trainers.extension_spec import TASK_KEY

__all__ = ["TARGETS", "ExportError", "trl_config_values", "export", "inspect_export", "main"]

TARGETS = ("trl", "verl", "openrlhf")
FILES = {"trl": "trl_grpo.yaml", "verl": "run_verl_grpo.sh", "openrlhf": "train_openrlhf.sh"}


class ExportError(CapstoneUserError):
    """The target cannot express the experiment; the message names what is missing and the nearest exact setting."""


def _model(cfg: CapstoneConfig) -> str:
    """The model the trainer starts from: the capstone's SFT reference (the cache directory of ``cfg``)."""
    from kltutor.capstone.sft import reference_dir

    return str(reference_dir(cfg))


# --- TRL -----------------------------------------------------------------------------------------------------


def trl_config_values(cfg: CapstoneConfig, num_processes: int = 1) -> dict:
    """The ``GRPOConfig`` + extension fields of ``cfg``'s experiment on ``num_processes`` processes (the global
    batch, ``prompts_per_step * group_size`` completions, split evenly; each update one optimiser step)."""
    cfg = cfg.resolved()
    n = cfg.prompts_per_step * cfg.group_size
    if n % num_processes:
        raise ExportError(
            f"--num-processes {num_processes} does not divide the batch of {n} completions "
            f"(prompts_per_step x group_size); choose a divisor of {n}",
            "num_processes",
        )
    return {
        "model_name_or_path": cfg.model or _model(cfg),
        # the KL term (the extension's fields; beta is TRL's own)
        "kl_placement": cfg.placement,
        "beta": 0.0 if cfg.kl_placement.is_none else float(cfg.beta),
        "kl_level": cfg.kl_level,
        "importance_weighted_kl": cfg.importance_weighted_kl,
        "kl_aggregation": cfg.aggregation,
        "kl_schedule": cfg.kl_schedule,
        "kl_target": cfg.kl_target,
        "kl_horizon": cfg.kl_horizon,
        "beta_end": cfg.beta_end,
        "clip_std": list(cfg.clip_std) if cfg.clip_std else None,
        "kl_chunk": cfg.logprob_chunk,
        # GRPO
        "num_generations": cfg.group_size,
        "per_device_train_batch_size": n // num_processes,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,
        "num_iterations": cfg.updates_per_batch,
        "max_steps": cfg.steps * cfg.updates_per_batch,
        "max_completion_length": cfg.max_new_tokens,
        "temperature": float(cfg.temperature),
        "top_p": float(cfg.top_p),
        "top_k": int(cfg.top_k),
        "epsilon": float(cfg.clip_eps),
        "scale_rewards": "group" if cfg.normalize_std else "none",
        "learning_rate": float(cfg.lr),
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": float(cfg.max_grad_norm),
        "seed": int(cfg.seed),
        "bf16": bool(cfg.bf16 and cfg.device != "cpu"),
        "use_cpu": cfg.device == "cpu",
        TASK_KEY: {"max_operand": cfg.max_operand, "format_reward": float(cfg.format_reward)},
    }


def _trl(cfg: CapstoneConfig, num_processes: int) -> tuple[dict[str, str], list[str]]:
    import yaml

    values = trl_config_values(cfg, num_processes)
    head = (
        "# The capstone's experiment for TRL's GRPOTrainer with kltutor's placements\n"
        "# (kltutor.trainers.grpo_extension.KLPlacementGRPOConfig); written by "
        "`python -m kltutor.capstone export --to trl`.\n"
        f"# per_device_train_batch_size is the global batch over {num_processes} process(es).\n"
    )
    body = {k: v for k, v in values.items() if k != TASK_KEY}
    text = head + yaml.safe_dump(body, sort_keys=False) + yaml.safe_dump({TASK_KEY: values[TASK_KEY]})
    launch = (
        "#!/usr/bin/env bash\n# Runs trl_grpo.yaml with the kltutor extension (pip install 'kltutor[trainers]').\n"
        "# One process: as below. Several GPUs: accelerate config (multi-GPU, DeepSpeed ZeRO-2/3 or FSDP), then\n"
        f"#   accelerate launch --num_processes N -m kltutor.trainers.trl_capstone ...  (re-export with --num-processes N)\n"
        'set -euo pipefail\ncd "$(dirname "$0")"\n'
        f"accelerate launch --num_processes {num_processes} -m kltutor.trainers.trl_capstone trl_grpo.yaml "
        f'--model {shlex.quote(values["model_name_or_path"])} "$@"\n'
    )
    return {FILES["trl"]: text, "train_trl.sh": launch}, []


# --- verl ----------------------------------------------------------------------------------------------------

VERL_LOSS_TYPE = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}
VERL_AGG = {"token-mean": "token-mean", "sequence-mean": "seq-mean-token-mean", "sequence-sum": "seq-mean-token-sum"}


def _refuse(target: str, missing: str, nearest: str, field: str | None = None):
    raise ExportError(f"{target} cannot express {missing}; nearest exact alternative: {nearest}", field)


def _common_refusals(cfg: CapstoneConfig, target: str) -> None:
    if cfg.kl_placement.exact:
        _refuse(
            target,
            "exact-in-loss (no full-vocabulary KL term: it scores sampled tokens only)",
            "--to trl (the kltutor extension), or k3-in-reward / k1-in-reward for the sequence KL's gradient",
            "placement",
        )
    if cfg.kl_level == "sequence":
        _refuse(
            target,
            "--kl-level sequence (its KL terms are per token)",
            "--kl-level token, or --to trl",
            "kl_level",
        )
    if cfg.importance_weighted_kl:
        _refuse(
            target,
            "--importance-weighted-kl (its KL loss has no differentiable ratio w_t)",
            "--no-importance-weighted-kl with --updates-per-batch 1 (on-policy), or --to trl",
            "importance_weighted_kl",
        )
    if cfg.clip_std is not None:
        _refuse(target, "--clip-std (no clamp of the group std)", "drop --clip-std, or --to trl", "clip_std")
    if cfg.kl_schedule == "adaptive":
        _refuse(
            target,
            "the capstone's adaptive controller: its adaptive controller (Ziegler et al.'s rule) is fed the mean "
            "per-token KL, the capstone's the sequence KL, so the same target means another thing",
            "--kl-schedule fixed, or --to trl",
            "kl_schedule",
        )
    if cfg.kl_schedule != "fixed":
        _refuse(
            target,
            f"--kl-schedule {cfg.kl_schedule} (its controllers: fixed, and an adaptive one on the per-token KL)",
            "--kl-schedule fixed, or --to trl",
            "kl_schedule",
        )


def _verl(cfg: CapstoneConfig, num_processes: int) -> tuple[dict[str, str], list[str]]:
    from kltutor.placements import parse_placement

    cfg = cfg.resolved()
    _common_refusals(cfg, "verl")
    n = cfg.prompts_per_step
    A = "actor_rollout_ref"
    ov = [
        "algorithm.adv_estimator=grpo",
        f"algorithm.norm_adv_by_std_in_grpo={str(cfg.normalize_std).lower()}",
        f"data.train_batch_size={n}",
        f"data.max_response_length={cfg.max_new_tokens}",
        f"{A}.model.path={cfg.model or _model(cfg)}",
        f"{A}.actor.optim.lr={cfg.lr:g}",
        f"{A}.actor.ppo_mini_batch_size={n}",
        f"{A}.actor.ppo_epochs={cfg.updates_per_batch}",
        f"{A}.actor.clip_ratio={cfg.clip_eps:g}",
        f"{A}.actor.grad_clip={cfg.max_grad_norm:g}",
        f"{A}.actor.loss_agg_mode={VERL_AGG[cfg.aggregation]}",
        f"{A}.rollout.n={cfg.group_size}",
        f"{A}.rollout.temperature={cfg.temperature:g}",
        f"{A}.rollout.top_p={cfg.top_p:g}",
        f"{A}.rollout.top_k={cfg.top_k if cfg.top_k else -1}",
        f"{A}.rollout.response_length={cfg.max_new_tokens}",
        f"trainer.total_training_steps={cfg.steps}",
        f"trainer.n_gpus_per_node={num_processes}",
        "trainer.nnodes=1",
    ]
    notes = []
    p = parse_placement(cfg.placement) if cfg.placement != "exact-in-loss" else None
    if p is None or p.where is None:
        ov += [f"{A}.actor.use_kl_loss=false", "algorithm.use_kl_in_reward=false"]
    elif p.in_loss:
        ov += [
            f"{A}.actor.use_kl_loss=true",
            f"{A}.actor.kl_loss_type={VERL_LOSS_TYPE[p.estimator]}",
            f"{A}.actor.kl_loss_coef={cfg.beta:g}",
            "algorithm.use_kl_in_reward=false",
        ]
        if p.estimator == "k3":
            notes.append(
                "verl's low_var_kl clamps the log-ratio to [-20, 20] and k3 to [-10, 10]; the capstone does not"
            )
    else:
        ov += [
            f"{A}.actor.use_kl_loss=false",
            "algorithm.use_kl_in_reward=true",
            f"algorithm.kl_penalty={VERL_LOSS_TYPE[p.estimator]}",
            "algorithm.kl_ctrl.type=fixed",
            f"algorithm.kl_ctrl.kl_coef={cfg.beta:g}",
        ]
        notes.append(
            "verl's GRPO advantage sums the per-token penalty into the sequence score and group-normalises it "
            "with the task reward (one advantage for every token); the capstone adds the penalty's return-to-go "
            "unnormalised. Same placement and estimator; with --normalize-std verl's effective beta is "
            "beta / (group reward std)"
        )
    lines = "".join(f"    {shlex.quote(o)} \\\n" for o in ov)
    comments = "".join(f"# note: {x}\n" for x in notes)
    text = (
        "#!/usr/bin/env bash\n"
        "# The capstone's experiment for verl (GRPO), written by `python -m kltutor.capstone export --to verl`.\n"
        "# Add your data (data.train_files=..., a reward function for 'a+b=' -> the sum) and run on a Ray cluster.\n"
        f'{comments}set -x\n\npython3 -m verl.trainer.main_ppo \\\n{lines}    "$@"\n'
    )
    return {FILES["verl"]: text}, notes


# --- OpenRLHF ------------------------------------------------------------------------------------------------


def _openrlhf(cfg: CapstoneConfig, num_processes: int) -> tuple[dict[str, str], list[str]]:
    from kltutor.placements import parse_placement

    cfg = cfg.resolved()
    _common_refusals(cfg, "OpenRLHF")
    if cfg.aggregation == "sequence-sum":
        _refuse(
            "OpenRLHF",
            "--aggregation sequence-sum (its --actor.loss_agg_mode: token-mean, seq-mean-token-mean)",
            "--aggregation sequence-mean or token-mean, or --to trl",
            "aggregation",
        )
    agg = {"token-mean": "token-mean", "sequence-mean": "seq-mean-token-mean"}[cfg.aggregation]
    n = cfg.prompts_per_step
    flags = [
        ("--actor.model_name_or_path", cfg.model or _model(cfg)),
        ("--algo.advantage.estimator", "group_norm"),
        ("--rollout.n_samples_per_prompt", cfg.group_size),
        ("--rollout.batch_size", n),
        ("--train.batch_size", n * cfg.group_size),
        ("--train.max_epochs", cfg.updates_per_batch),
        ("--rollout.max_new_tokens", cfg.max_new_tokens),
        ("--rollout.temperature", f"{cfg.temperature:g}"),
        ("--rollout.top_p", f"{cfg.top_p:g}"),
        ("--actor.adam.lr", f"{cfg.lr:g}"),
        ("--actor.lr_scheduler", "constant"),
        ("--actor.lr_warmup_ratio", 0),
        ("--actor.eps_clip", f"{cfg.clip_eps:g}"),
        ("--actor.max_norm", f"{cfg.max_grad_norm:g}"),
        ("--actor.loss_agg_mode", agg),
        ("--train.seed", cfg.seed),
    ]
    switches = [] if cfg.normalize_std else ["--algo.advantage.no_std_norm"]
    notes = []
    if cfg.top_k:
        _refuse("OpenRLHF", "--top-k (its rollout has no top-k flag)", "--top-k 0, or --to trl", "top_k")
    p = parse_placement(cfg.placement)
    if p.where is None:
        flags.append(("--algo.kl.init_coef", 0))
    else:
        flags += [("--algo.kl.init_coef", f"{cfg.beta:g}"), ("--algo.kl.estimator", p.estimator)]
        if p.in_loss:
            switches.append("--algo.kl.use_loss")
        if p.in_reward:
            notes.append(
                "OpenRLHF's group_norm normalises the task reward in its group, then compute_reward adds "
                "-init_coef * k(l_t) per token and REINFORCE returns-to-go: the capstone's in-reward computation "
                "(its group std adds 1e-9, the capstone's 1e-6)"
            )
    args = [f"{k} {shlex.quote(str(v))}" for k, v in flags] + switches
    comments = "".join(f"# note: {x}\n" for x in notes)
    text = (
        "#!/usr/bin/env bash\n"
        "# The capstone's experiment for OpenRLHF, written by `python -m kltutor.capstone export --to openrlhf`.\n"
        "# Add --data.prompt_dataset and a reward (--reward.remote_url) for 'a+b=' -> the sum; run on a Ray cluster.\n"
        f"{comments}set -x\n\npython3 -m openrlhf.cli.train_ppo_ray \\\n"
        + "".join(f"    {a} \\\n" for a in args[:-1])
        + f"    {args[-1]}\n"
    )
    return {FILES["openrlhf"]: text}, notes


# --- the command ---------------------------------------------------------------------------------------------


def export(cfg: CapstoneConfig, target: str, out_dir, num_processes: int = 1) -> tuple[list[Path], list[str]]:
    """Write ``cfg``'s experiment for ``target`` into ``out_dir``; returns the files written and the notes on
    what the target computes differently. Raises :class:`ExportError` when the target cannot express it."""
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}", "to")
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ExportError(f"--num-processes must be a positive integer, got {num_processes!r}", "num_processes")
    files, notes = {"trl": _trl, "verl": _verl, "openrlhf": _openrlhf}[target](cfg, num_processes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out / name
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written, notes


def inspect_export(path):
    """The config inspector's report on an exported file (the one place this module calls the inspector)."""
    from kltutor.configcheck import inspect_file

    return inspect_file(path, trainer="grpo" if str(path).endswith(".yaml") else None)


def main(argv=None) -> int:
    from kltutor.capstone.__main__ import _one_line, _Parser, build_parser, config_from_args

    pre = _Parser(prog="python -m kltutor.capstone export", add_help=False)
    pre.add_argument("--to", choices=TARGETS, default=None)
    pre.add_argument("--out", default=None)
    pre.add_argument("--num-processes", type=int, default=1)
    pre.add_argument("-h", "--help", action="store_true")
    own, rest = pre.parse_known_args(argv)
    if own.help:
        print(
            "usage: python -m kltutor.capstone export --to {trl,verl,openrlhf} [--out DIR] [--num-processes N] "
            "[the capstone's options: python -m kltutor.capstone --help]"
        )
        return 0
    if own.to is None:
        print(f"error: export needs --to, one of {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    parser = build_parser()
    parser.prog = "python -m kltutor.capstone export"
    args = parser.parse_args(rest)
    if args.sweep or args.resume:
        print("error: export writes one experiment: drop --sweep / --resume", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
        files, notes = export(cfg, own.to, own.out or f"capstone-export-{own.to}", own.num_processes)
        for f in files:
            print(f"wrote {f}")
        for n in notes:
            print(f"note: {n}")
        try:
            rep = inspect_export(files[0])
        except ValueError as e:  # the inspector's ConfigError: a defect of the export, said in one line
            print(f"error: the config inspector cannot read {files[0]}: {_one_line(e)}", file=sys.stderr)
            return 1
        terms = ", ".join(f"{t.estimator} in the {t.placement} (beta = {t.beta:g})" for t in rep.terms) or "none"
        print(f"the config inspector reads it back as: {rep.library} {rep.trainer}; KL terms: {terms}")
        return 0
    except (CapstoneUserError, ConfigError) as e:
        where = f"--{e.field.replace('_', '-')}: " if getattr(e, "field", None) and not str(e).startswith("--") else ""
        print(f"error: {where}{_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
