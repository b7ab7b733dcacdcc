"""Build the site from the executed notebooks (and, later, test it in a browser).

    python scripts/site.py build [--strict]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"


def build(strict: bool) -> int:
    if (BUILD / ".doctrees").exists() or (BUILD / "html").exists():
        shutil.rmtree(BUILD / "html", ignore_errors=True)
        shutil.rmtree(BUILD / ".doctrees", ignore_errors=True)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    print(f"site build: exit {rc} in {time.perf_counter() - t0:.1f} s -> {BUILD / 'html' / 'index.html'}")
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--strict", action="store_true", help="treat every Sphinx warning as an error")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        return build(args.strict)
    return 2


if __name__ == "__main__":
    sys.exit(main())
