"""The site's llms.txt (scripts/llms_txt.py, written into _build/html by scripts/book_site.py build) matches
the current book: every page of _toc.yml with its title, every claim of the ledger with its condition and a
link to the section that proves it, and no MyST markup left. tests/test_site_browser.py checks that the built
file is this one and that its links resolve on the served site."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import llms_txt  # noqa: E402

from kltutor import claims  # noqa: E402

TEXT = llms_txt.render()
LINKS = re.findall(r"\[([^\]]+)\]\(([^)\s]+)\)", TEXT)


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def test_follows_the_llms_txt_layout():
    lines = TEXT.splitlines()
    title = yaml.safe_load((ROOT / "_config.yml").read_text())["title"]
    assert lines[0] == f"# {title}" and lines[2].startswith("> ")
    assert sum(1 for line in lines if line.startswith("# ")) == 1
    assert "## Central claims" in lines and "## Optional" in lines


def test_every_page_of_the_toc_is_listed_with_its_title():
    listed = [url for _, url in LINKS if "#" not in url]
    for doc in _toc_files():
        assert f"{doc}.html" in listed, f"{doc} missing from llms.txt"
        src = llms_txt.source(doc).read_text()
        title = re.search(r"^# (.+)$", src, re.M).group(1).strip()
        assert re.search(rf"\[(\d+\. )?{re.escape(title)}\]\({re.escape(doc)}\.html\)", TEXT), title


def test_chapters_are_numbered_in_toc_order():
    numbers = [int(n) for n in re.findall(r"^- \[(\d+)\. ", TEXT, re.M)]
    chapters = [f for f in _toc_files() if f.startswith("notebooks/")]
    assert numbers == list(range(1, len(chapters) + 1))


def test_every_claim_with_its_condition_and_source():
    for c in claims.CLAIMS:
        line = next((line for line in TEXT.splitlines() if f"(claim `{c.id}`)" in line), None)
        assert line is not None, f"claim {c.id} missing"
        assert "Condition: " in line and f".html#{c.source})" in line, line
        cond = re.sub(r"\{\w+\}`[^`]*`", "", c.condition).split("$")[0].strip()[:20]
        assert cond in line, (c.id, cond)
    assert f"The {len(claims.CLAIMS)} claims" in TEXT


def test_every_link_points_at_a_page_and_label_of_the_book():
    files = set(_toc_files())
    assert LINKS
    for _text, url in LINKS:
        if url.startswith(("https://", "http://")):
            continue
        page, _, anchor = url.partition("#")
        assert page.endswith(".html") and page[:-5] in files, url
        if anchor:
            src = llms_txt.source(page[:-5]).read_text()
            assert f"({anchor})=" in src, f"{url}: no label {anchor} in {page[:-5]}"


def test_no_myst_markup_left():
    roles = re.findall(r"(?<![\w}])\{[a-z][\w:-]*\}`", TEXT)  # {ref}`...`, {glue:text}`...`, {cite}`...`
    assert not roles, roles[:5]
    for bad in ("```{", ":::", "{code-cell}"):
        assert bad not in TEXT, bad
