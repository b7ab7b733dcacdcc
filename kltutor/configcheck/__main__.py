"""``python -m kltutor.configcheck FILE [--json] [--trainer grpo|rloo|ppo]``: the KL terms a trainer config turns on.

Exit status: 0 clean, 1 warnings, 2 unreadable (one line on stderr naming the file and the field).
"""

from __future__ import annotations

import argparse
import json
import sys

from kltutor.configcheck import ConfigError, inspect_file


def main(argv=None, prog: str = "python -m kltutor.configcheck") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Inspect the KL terms of a TRL (GRPO/RLOO/PPO config, YAML or JSON, or a trl/accelerate launch "
        "line), verl (YAML or main_ppo launch script) or OpenRLHF (train_ppo_ray launch script) configuration.",
        epilog="exit status: 0 clean, 1 warnings, 2 unreadable",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per file (a list for several files)")
    p.add_argument(
        "--trainer", choices=["grpo", "rloo", "ppo"], help="which TRL config, when the file's fields do not tell"
    )
    args = p.parse_args(argv)
    status, out = 0, []
    for f in args.files:
        try:
            rep = inspect_file(f, trainer=args.trainer)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            if args.json:
                out.append({"file": f, "error": str(e), "exit_code": 2})
            status = 2
            continue
        status = max(status, rep.exit_code)
        if args.json:
            out.append(rep.to_dict())
        else:
            print(rep.format())
    if args.json:
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1))
    return status


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        raise SystemExit(0) from None
