"""Every citation under book/ resolves in references.bib, and every entry says where it appeared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIB = (ROOT / "book" / "references.bib").read_text()


def _entries() -> dict[str, str]:
    out = {}
    for m in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,(.*?)\n\}", BIB, re.S):
        kind, key, body = m.groups()
        assert key not in out, f"duplicate bib key {key}"
        out[key] = body.lower()
    return out


ENTRIES = _entries()


def _cited_keys() -> dict[str, set[str]]:
    cited: dict[str, set[str]] = {}
    for path in sorted((ROOT / "book").glob("*.md")):
        text = path.read_text()
        for m in re.finditer(r"\{cite(?::[a-z]+)?\}`([^`]+)`", text):
            for key in m.group(1).split(","):
                cited.setdefault(key.strip(), set()).add(path.name)
    return cited


def test_bib_parses():
    assert len(ENTRIES) >= 15
    assert BIB.count("@") == len(ENTRIES), "every @entry must parse"


def test_every_cited_key_resolves():
    cited = _cited_keys()
    assert cited, "the book cites something"
    missing = {k: sorted(v) for k, v in cited.items() if k not in ENTRIES}
    assert not missing, f"cited but not in references.bib: {missing}"


@pytest.mark.parametrize("key", sorted(ENTRIES))
def test_entry_has_year_and_venue(key):
    body = ENTRIES[key]
    assert re.search(r"\byear\s*=\s*\{\d{4}\}", body), f"{key}: no year"
    assert re.search(r"\b(journal|booktitle|eprint|url)\s*=", body), f"{key}: no journal, booktitle, eprint or url"


@pytest.mark.parametrize("key", sorted(k for k in ENTRIES if "eprint" in ENTRIES[k]))
def test_arxiv_ids_are_well_formed(key):
    eprint = re.search(r"eprint\s*=\s*\{([^}]*)\}", ENTRIES[key]).group(1)
    assert re.fullmatch(r"\d{4}\.\d{4,5}", eprint), f"{key}: malformed arXiv id {eprint!r}"
