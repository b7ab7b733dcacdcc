"""Every chapter follows the book's template (docs/CONVENTIONS.md) and is wired into the site."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))
TOC = (ROOT / "_toc.yml").read_text()
SECTIONS = ["Common mistakes", "Interview check", "Summary", "Exercises"]


def test_there_are_chapters():
    assert len(CHAPTERS) >= 2


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_template(source: Path):
    text = source.read_text()
    assert re.search(r"^\(ch-[a-z-]+\)=\s*\n# ", text, re.M), "a chapter starts with its (ch-...)= label and a title"
    assert "**What you will be able to do.**" in text
    nb = jupytext.read(source)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "hide-input" in code[0].metadata.get("tags", []), "the first code cell (install + imports) is hidden"
    assert "parameters" in code[1].metadata.get("tags", []), "the second code cell holds the papermill parameters"
    headings = [m.group(1).strip() for m in re.finditer(r"^## (.+)$", text, re.M)]
    positions = []
    for name in SECTIONS:
        hits = [i for i, h in enumerate(headings) if h.startswith(name)]
        assert hits, f"missing section '## {name}'"
        positions.append(hits[0])
    assert positions == sorted(positions), f"the closing sections must come in the order {SECTIONS}"
    assert f"notebooks/{source.stem}" in TOC, "the chapter is not in _toc.yml"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_every_glued_name_is_defined(source: Path):
    """Each {glue:...}`name` in the prose is produced by a glue("name", ...) call in a cell."""
    text = source.read_text()
    used = {m.group(1) for m in re.finditer(r"\{glue(?::\w+)?\}`([A-Za-z0-9_]+)", text)}
    defined = set(re.findall(r"glue\(\s*[\"']([A-Za-z0-9_]+)[\"']", text))
    defined |= set(re.findall(r"glue\(\s*f[\"']([A-Za-z0-9_]+)\{", text))  # prefix of an f-string name
    missing = {u for u in used if u not in defined and not any(u.startswith(d) for d in defined)}
    assert not missing, f"glued in prose but never produced by a cell: {sorted(missing)}"


def test_config_declares_the_repository_once():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = config["repository"]["url"]
    assert url.startswith("https://github.com/")
    for source in CHAPTERS:
        first = [c for c in jupytext.read(source).cells if c.cell_type == "code"][0].source
        assert url in first, f"{source.name}: the Colab cell must install from {url}"


def _code_cells(source: Path):
    return [c for c in jupytext.read(source).cells if c.cell_type == "code"]


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_tables_are_tables(source: Path):
    """Result tables go through kltutor.book.table (an HTML <table>), never print(df.to_string())."""
    import ast

    assert "to_string(" not in source.read_text(), "print a DataFrame with book.table(df, formats), not to_string()"
    for cell in _code_cells(source):
        try:
            body = ast.parse(cell.source).body
        except SyntaxError:  # IPython magics; no chapter uses them today
            continue
        for stmt in body[:-1]:
            # a bare table(...) expression displays only as the cell's last statement
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                f = stmt.value.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                assert name != "table", (
                    f"{source.name}: book.table(...) is not the last statement; wrap it in display(...)"
                )


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_outputs_kept_out_of_nbval_say_what_they_assert(source: Path):
    """A cell tagged nbval-ignore-output still asserts what is robust about its result."""
    for cell in _code_cells(source):
        if "nbval-ignore-output" in cell.metadata.get("tags", []):
            assert "assert" in cell.source, (
                f"{source.name}: an nbval-ignore-output cell without an assert checks nothing"
            )
