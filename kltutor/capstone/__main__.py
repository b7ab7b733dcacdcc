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
import signal
import sys
import tempfile
import time
import types
import typing
from pathlib import Path

from kltutor.capstone.config import (
    PRESETS,
    CapstoneConfig,
    CapstoneUserError,
    ConfigError,
    choices,
    flag,
    help_text,
)
from kltutor.placements import parse_placement


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
        help=f"sweep: placements (default: all of {', '.join(choices('placement'))})",
    )
    p.add_argument("--betas", nargs="+", type=float, default=None, help="sweep: betas (default: 0.05)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="sweep: seeds (default: 0)")
    hints = typing.get_type_hints(CapstoneConfig)
    smoke = CapstoneConfig(**PRESETS["smoke"])
    for f in dataclasses.fields(CapstoneConfig):
        h = help_text(f.name)
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
        elif choices(f.name) is not None:
            p.add_argument(flag(f.name), choices=choices(f.name), default=None, help=h)
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
    if "placement" in given and parse_placement(given["placement"]).is_none:
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
        if given["run_dir"].strip() and run_dir.is_dir():  # otherwise the run's own checks say what is wrong
            base = CapstoneConfig.from_dict(read_run_record(run_dir)["config"]).to_dict()
            base.update(resume=False, overwrite=False, allow_config_change=False)
            return CapstoneConfig.from_dict({**base, **given}).validate()
    cfg = CapstoneConfig(**{**PRESETS[args.preset or "smoke"], **given})
    return cfg if args.sweep else cfg.validate()  # a sweep validates each of its runs (the placement is not set here)


def _main_sweep(args: argparse.Namespace, cfg: CapstoneConfig) -> int:
    from kltutor.capstone.sweep import SWEEP_CSV, SWEEP_JSON, sweep

    placements = args.placements or list(choices("placement"))
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
    _print_used([out / Path(c) for c in json.loads((out / SWEEP_JSON).read_text())["runs"]])
    return 0


def _print_used(run_dirs) -> None:
    """The precision and decode mode the runs resolved (from their run.json): the lines
    benchmarks/colab_session.sh and the chapter's GPU cell print too."""
    from kltutor.capstone.rundir import used_settings

    used = used_settings(run_dirs)
    print(f"precision used: {used['precision']}")
    print(f"decode mode used: {used['decode_mode_used']}")


def _main_run(cfg: CapstoneConfig) -> int:
    from kltutor.capstone.loop import run

    res = run(cfg)
    print(json.dumps(res.metrics[-1] if res.metrics else {}, indent=1))
    print(f"metrics: {res.metrics_path}")
    _print_used([res.run_dir])
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
    except OSError as e:  # a full disk or a file system refusing a write outside the run's own handling
        print(f"error: {_one_line(e)}; free space on that disk or fix its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (kltutor.capstone.interrupts): exit 128 + the signal
        text = _one_line(e) or "nothing was written yet"
        print(text if text.startswith("interrupted") else f"interrupted; {text}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
