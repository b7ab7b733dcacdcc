"""The README's chapter map, kltutor/__init__.py's module list and docs/CONVENTIONS.md cannot go stale."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kltutor

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "kltutor"
LABELS = {
    m.group(1)
    for p in (ROOT / "book").glob("[0-9][0-9]_*.md")
    for m in [re.search(r"^\((ch-[a-z-]+)\)=", p.read_text(), re.M)]
    if m
}


def test_readme_chapter_map_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chapter_map.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_init_lists_every_module():
    """kltutor.MODULES and the package docstring name every module and subpackage, each with a real chapter."""
    found = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    found |= {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    found = (found - {"toys"}) | {f"toys.{p.stem}" for p in (PKG / "toys").glob("*.py") if p.stem != "__init__"}
    assert set(kltutor.MODULES) == found
    for module, label in kltutor.MODULES.items():
        assert f":mod:`kltutor.{module}`" in kltutor.__doc__, f"kltutor/__init__.py's docstring does not list {module}"
        assert label is None or label in LABELS, f"{module}: unknown chapter label {label}"


def test_per_chapter_subpackages_are_named_after_topics():
    """plotting/, derivations/ and exercises/ have one module per chapter topic (its label without ch-)."""
    topics = {label.removeprefix("ch-") for label in LABELS}
    for sub, shared in (("plotting", {"style"}), ("derivations", set()), ("exercises", set())):
        stems = {p.stem for p in (PKG / sub).glob("*.py")} - {"__init__"} - shared
        assert stems <= topics, f"kltutor/{sub}: modules not named after a chapter topic: {sorted(stems - topics)}"


def test_conventions_point_only_inside_the_repository():
    text = (ROOT / "docs" / "CONVENTIONS.md").read_text()
    assert not re.search(r"(?<![\w.])(\.\./|/work/|~/)", text), "docs/CONVENTIONS.md points outside the repository"
    for path in re.findall(r"`((?:book|docs|kltutor|scripts|tests|benchmarks|notebooks)/[\w./-]+)`", text):
        if re.search(r"NN|<|\*", path):
            continue  # a pattern, not a file
        assert (ROOT / path).exists(), f"docs/CONVENTIONS.md names {path}, which does not exist"
