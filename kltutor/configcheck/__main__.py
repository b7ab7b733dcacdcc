"""``python -m kltutor.configcheck FILE [--json] [--trainer grpo|rloo|ppo] [--like PAPER]``: the KL terms a trainer
config turns on, and (``--like``) what differs from a published paper's KL settings (:mod:`kltutor.papers`).

Exit status: 0 clean, 1 warnings, 2 unreadable (one line on stderr naming the file and the field). A difference
from the paper does not change it: the comparison is information, not a fault of the file.
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
    p.add_argument(
        "--like",
        metavar="PAPER",
        help="also say what differs from a paper's published KL settings, quoting the paper (ids: see "
        "kltutor.papers.ids(), e.g. deepseekmath, deepseek-r1, dapo)",
    )
    args = p.parse_args(argv)
    if args.like is not None:
        from kltutor import papers

        try:
            like = papers.paper(args.like)
        except KeyError as e:
            print(f"error: --like: {e.args[0]}", file=sys.stderr)
            return 2
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
        d = rep.to_dict()
        diffs = papers.compare(d, like["id"]) if args.like is not None else None
        if args.json:
            if diffs is not None:
                d["like"] = {"paper": like["id"], "arxiv": like["arxiv"], "differences": diffs}
            out.append(d)
        else:
            print(rep.format())
            if diffs is not None:
                head = f"compared with {like['name']} (arXiv:{like['arxiv']}): "
                print(head + ("nothing the paper states differs" if not diffs else f"{len(diffs)} difference(s)"))
                for line in diffs:
                    print(f"  - {line}")
    if args.json:
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1))
    return status


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        raise SystemExit(0) from None
