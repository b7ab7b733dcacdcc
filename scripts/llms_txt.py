"""Write the site's ``llms.txt`` (https://llmstxt.org): the book for a language model, generated, never typed.

    python scripts/llms_txt.py [OUT]   # print it, or write it to OUT (scripts/book_site.py build writes
                                       # _build/html/llms.txt)

Everything comes from the sources: the parts, chapters and pages from ``_toc.yml`` (in its order, numbered as
the site numbers them), each page's title and one-line summary from its source (the chapter's "What you will
be able to do." paragraph, else the page's first paragraph), the central claims with their conditions from
the claim ledger :mod:`kltutor.claims`, and every link from the MyST labels in the pages' sources (a label
``(sec-x)=`` in page P is the anchor ``P.html#sec-x``, as Sphinx writes it). Links are relative to the site
root, where the file lives. ``tests/test_llms_txt.py`` checks it against the current book.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WHAT = "**What you will be able to do.**"  # how every chapter opens (docs/CONVENTIONS.md)


@dataclass
class Page:
    doc: str  # as in _toc.yml, e.g. notebooks/03_placements
    part: str
    number: int | None
    title: str
    summary: str
    labels: dict[str, str]  # label -> heading text


def source(doc: str) -> Path:
    """The MyST source of a page of the table of contents (a chapter notebook's source is book/NN_topic.md)."""
    stem = Path(doc).name
    for p in (ROOT / f"{doc}.md", ROOT / "book" / f"{stem}.md"):
        if p.exists():
            return p
    raise FileNotFoundError(f"{doc}: no source ({doc}.md or book/{stem}.md)")


def _body(text: str) -> str:
    """The Markdown of a MyST notebook without front matter and code cells."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    return re.sub(r"^(```|:::)\{code-cell\}.*?^\1\s*$", "", text, flags=re.S | re.M)


def _one_line(paragraph: str) -> str:
    return " ".join(paragraph.split())


def _page(doc: str, part: str, number: int | None) -> Page:
    body = _body(source(doc).read_text())
    labels = {}
    for m in re.finditer(r"^\(([\w-]+)\)=\s*\n+(#+)\s+(.+)$", body, re.M):
        labels[m.group(1)] = m.group(3).strip()
    title = re.search(r"^# (.+)$", body, re.M)
    if title is None:
        raise ValueError(f"{doc}: no '# title'")
    rest = body[title.end() :]
    paras = [p.strip() for p in re.split(r"\n\s*\n", rest) if p.strip()]
    what = next((p for p in paras if p.startswith(WHAT)), None)
    plain = [p for p in paras if not p.startswith(("(", "#", "```", ":::", "<", "|", "-", "*", "!", "{"))] or [""]
    summary = what[len(WHAT) :] if what else plain[0]
    return Page(doc, part, number, title.group(1).strip(), _one_line(summary), labels)


def pages() -> list[Page]:
    """Every page of _toc.yml in order; chapters of numbered parts get the site's running numbers."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    numbered_default = toc.get("defaults", {}).get("numbered", False)
    out = [_page(toc["root"], "", None)]
    n = 0

    def walk(entries, part, numbered):
        nonlocal n
        for e in entries or []:
            if "file" in e:
                num = None
                if numbered:
                    n += 1
                    num = n
                out.append(_page(e["file"], part, num))
            walk(e.get("sections"), part, False)

    for part in toc.get("parts", []):
        walk(part.get("chapters"), part.get("caption", ""), part.get("numbered", numbered_default))
    walk(toc.get("chapters"), "", numbered_default)
    return out


def _links(all_pages: list[Page]) -> dict[str, tuple[str, str]]:
    """label -> (url relative to the site root, heading text)."""
    out = {}
    for p in all_pages:
        for label, heading in p.labels.items():
            out[label] = (f"{p.doc}.html#{label}", heading)
    return out


def _glue(doc: str) -> dict[str, object]:
    """The values a chapter glues, from its executed notebook (what the site shows)."""
    nb = ROOT / "notebooks" / f"{Path(doc).name}.ipynb"
    out = {}
    if not nb.exists():
        return out
    for cell in json.loads(nb.read_text()).get("cells", []):
        for o in cell.get("outputs", []):
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            text = o.get("data", {}).get("application/papermill.record/text/plain")
            if name and text is not None:
                try:
                    out[name] = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    out[name] = text
    return out


def _myst_to_md(text: str, links: dict[str, tuple[str, str]], glue: dict | None = None) -> str:
    """MyST roles to plain Markdown: {ref}`text <label>` and {ref}`label` become links, {cite}`key` [key],
    {glue:text}`name[:format]` the value the executed notebook stored; math stays LaTeX."""

    def glued(m):
        name, _, spec = m.group(1).partition(":")
        if glue is None or name not in glue:
            raise KeyError(f"glued value {name!r} not found in the executed notebook (re-execute the chapter)")
        return format(glue[name], spec) if spec else str(glue[name])

    text = re.sub(r"\{glue(?::\w+)?\}`([^`]+)`", glued, text)
    text = re.sub(r"\{cite(?::\w+)?\}`([^`]+)`", lambda m: "[" + m.group(1).replace(",", ", ") + "]", text)

    def ref(m):
        inner = m.group(1)
        t = re.fullmatch(r"(.+?)\s*<([\w-]+)>", inner, re.S)
        text, label = (t.group(1), t.group(2)) if t else (None, inner.strip())
        if label not in links:
            raise KeyError(f"unknown label {label!r}")
        url, heading = links[label]
        return f"[{text or heading}]({url})"

    text = re.sub(r"\{ref\}`([^`]+)`", ref, text)
    return re.sub(r"\{[\w:-]+\}`([^`]+)`", r"`\1`", text)


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from kltutor import claims

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    all_pages = pages()
    links = _links(all_pages)
    root = all_pages[0]
    macros = config.get("sphinx", {}).get("config", {}).get("mathjax3_config", {}).get("tex", {}).get("macros", {})
    lines = [
        f"# {config['title']}",
        "",
        f"> {_myst_to_md(root.summary, links)}",
        "",
        f"An executable Jupyter Book with a tested companion Python package, `kltutor` (source: "
        f"{config['repository']['url']}). Every number in a chapter is computed by `kltutor` in front of the "
        "reader, every derivation is checked with sympy, and every central claim below is recomputed by a check "
        "in `kltutor.claims`. Links are relative to this file. Math is LaTeX"
        + (", with the macros " + ", ".join(f"`\\{k}` = `{v}`" for k, v in macros.items()) if macros else "")
        + ".",
        "",
        f"- [{root.title}]({root.doc}.html): {_myst_to_md(root.summary, links)}",
        "",
    ]
    part = None
    optional = []
    for p in all_pages[1:]:
        if p.number is None:
            optional.append(p)
            continue
        if p.part != part:
            part = p.part
            lines += ["", f"## {part}", ""] if part else [""]
        lines.append(f"- [{p.number}. {p.title}]({p.doc}.html): {_myst_to_md(p.summary, links, _glue(p.doc))}")
    lines.append("")
    lines += [
        "## Central claims",
        "",
        f"The {len(claims.CLAIMS)} claims of the claim ledger, each with the condition under which it holds and "
        "the section that proves it.",
        "",
    ]
    for group in claims.GROUPS:
        rows = [c for c in claims.CLAIMS if c.group == group]
        if not rows:
            continue
        lines += [f"### {group}", ""]
        for c in rows:
            url, heading = links[c.source]
            lines.append(
                f"- {_myst_to_md(c.statement, links)} Condition: {_myst_to_md(c.condition, links)}. "
                f"Proved in [{heading}]({url}) (claim `{c.id}`)."
            )
        lines.append("")
    if optional:
        lines += ["## Optional", ""]
        lines += [f"- [{p.title}]({p.doc}.html): {_myst_to_md(p.summary, links, _glue(p.doc))}" for p in optional]
        lines.append("")
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def write(out: Path) -> Path:
    out.write_text(render())
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(write(Path(sys.argv[1])))
    else:
        sys.stdout.write(render())
