"""The whole book as one PDF (`make pdf` -> _build/kltutor-book.pdf, scripts/book_site.py book_pdf), opened
and read: its page count, every page of the table of contents present under its title, a table of contents
whose page numbers are right, cross-references that are links inside the PDF, an outline, and no raw LaTeX
or MyST markup left in the typeset text (code listings, in the monospaced font, are left out of that check).

Needs a built site and Chromium, like the browser test; prints the PDF first if it is missing or older than
the site (a few minutes on two cores)."""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import book_site as site_tool  # noqa: E402
import llms_txt  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RAW = re.compile(
    r"\\[A-Za-z]+\{|\\[()\[\]]|\$\$|\$[^$\s][^$]{0,80}\$"  # LaTeX left untypeset
    r"|\{(?:ref|glue|cite|numref|doc|eq)[:\w]*\}|```|:::|\{code-cell\}|^\((?:sec|ch)-[\w-]+\)=",  # MyST
    re.M,
)


def _squash(text: str) -> str:
    """One line, soft hyphens dropped and ligatures (fi, fl) split, as the titles are written."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).replace("\u00ad", "")).strip()


@pytest.fixture(scope="module")
def book():
    from pypdf import PdfReader

    index = site_tool.HTML / "index.html"
    if not index.exists():
        pytest.fail("no built site: run `python scripts/book_site.py build --strict` first")
    pdf = site_tool.BOOK_PDF
    if not pdf.exists() or pdf.stat().st_mtime < index.stat().st_mtime:
        site_tool.book_pdf()
    reader = PdfReader(str(pdf))
    pages = []  # (all text, text outside the monospaced font) per page
    for page in reader.pages:
        prose: list[str] = []

        def visit(text, cm, tm, font, size, prose=prose):
            name = str((font or {}).get("/BaseFont", ""))
            if "Mono" not in name and "Courier" not in name:
                prose.append(text)

        full = page.extract_text(visitor_text=visit) or ""
        pages.append((full, "".join(prose)))
    return reader, pages


def test_page_count(book):
    reader, pages = book
    toc = llms_txt.pages()
    assert len(reader.pages) >= 2 + 2 * len(toc), f"{len(reader.pages)} pages for {len(toc)} book pages"


def test_every_title_is_in_the_pdf_and_the_contents_gives_its_page(book):
    reader, pages = book
    texts = [_squash(full) for full, _ in pages]
    contents = " ".join(texts[1:6])
    for p in llms_txt.pages()[1:]:
        title = _squash(re.sub(r"\$[^$]*\$", "", p.title))
        label = f"{p.number}. {title}" if p.number else title
        m = re.search(re.escape(label) + r" (\d+)", contents)
        assert m, f"{label!r} is not in the table of contents"
        start = int(m.group(1))
        assert title in texts[start - 1], f"{label!r}: the contents says page {start}, which does not start it"


def test_no_raw_latex_or_myst_left(book):
    _, pages = book
    found = [(i + 1, m.group(0)) for i, (_, prose) in enumerate(pages) for m in RAW.finditer(prose)]
    assert not found, f"raw markup in the typeset text (page, text): {found[:10]}"


def test_cross_references_are_links_inside_the_pdf(book):
    reader, _ = book
    internal, external_local = 0, []
    for page in reader.pages:
        for annot in page.get("/Annots") or []:
            a = annot.get_object()
            if a.get("/Subtype") != "/Link":
                continue
            action = a.get("/A")
            uri = action.get_object().get("/URI") if action is not None else None
            if uri is not None:
                if "127.0.0.1" in str(uri) or "localhost" in str(uri):
                    external_local.append(str(uri))
            elif a.get("/Dest") is not None or action is not None:
                internal += 1
    assert not external_local, f"links to the local build server left in the PDF: {external_local[:5]}"
    assert internal >= 3 * len(llms_txt.pages()), f"only {internal} links inside the PDF"


def test_outline_has_every_chapter(book):
    reader, _ = book

    def titles(items):
        for it in items:
            if isinstance(it, list):
                yield from titles(it)
            else:
                yield _squash(it.title)

    outline = " | ".join(titles(reader.outline))
    for p in llms_txt.pages()[1:]:
        if p.number:
            assert _squash(re.sub(r"\$[^$]*\$", "", p.title))[:30] in outline, p.title
