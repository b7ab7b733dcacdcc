"""``python -m kltutor.trainers {show,regenerate,check}``: the trainers' KL settings on the exact toy.

- ``show`` prints the committed results (no library needed);
- ``regenerate`` re-runs the installed libraries' code and rewrites ``kltutor/trainers/data/results.json``
  (libraries that are not installed keep their stored rows);
- ``check`` re-runs them and exits 1 when a verdict, a gradient or a version differs from the stored file.
"""

from __future__ import annotations

import argparse
import sys

from kltutor import trainers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kltutor.trainers", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["show", "regenerate", "check"])
    p.add_argument(
        "--library",
        action="append",
        choices=list(trainers.ADAPTERS),
        help="only this library (repeatable); default: every installed one",
    )
    args = p.parse_args(argv)
    if args.command == "show":
        data = trainers.load_results()
        print("versions:", ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
        print(trainers.results_frame(data).to_string(index=False))
        return 0
    have = trainers.available()
    libs = args.library or [k for k, v in have.items() if v]
    missing = [k for k in libs if not have[k]]
    if missing or not libs:
        print(
            f"not installed: {', '.join(missing) or 'all three'}; install the extra: make trainers-venv",
            file=sys.stderr,
        )
        return 2
    fresh = trainers.compute(libs, progress=True)
    if args.command == "regenerate":
        path = trainers.write_results(fresh)
        print(f"wrote {path} ({len(fresh['settings'])} settings of {', '.join(libs)})")
        return 0
    diffs = trainers.compare(fresh, trainers.load_results())
    for d in diffs:
        print(d)
    print(
        "the installed libraries agree with the stored results"
        if not diffs
        else f"{len(diffs)} difference(s): run `python -m kltutor.trainers regenerate` and review chapter 3"
    )
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
