"""The shared command line of the scripts that write a generated page (``--check`` for the tests)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(page: Path, render: Callable[[], str], doc: str, argv: list[str] | None = None) -> int:
    """Write ``render()`` to ``page``; with ``--check``, exit 1 (and say how to fix it) if ``page`` differs."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help=f"fail if {page.relative_to(ROOT)} is out of date")
    args = parser.parse_args(argv)
    text = render()
    name = page.relative_to(ROOT)
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "the script that writes it"
    if args.check:
        if not page.exists() or page.read_text() != text:
            print(f"{name} is out of date: run python scripts/{script}", file=sys.stderr)
            return 1
        print(f"{name} is up to date")
        return 0
    page.write_text(text)
    print(f"wrote {name}")
    return 0
