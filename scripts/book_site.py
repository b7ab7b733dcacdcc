"""Build the site from the executed notebooks, serve it, and print the study guide.

    python scripts/book_site.py assets            # fetch MathJax 3 (npm) into book/_static/mathjax
    python scripts/book_site.py build [--strict]  # assets + jupyter-book build -> _build/html
    python scripts/book_site.py serve [--port N]  # serve _build/html on 127.0.0.1
    python scripts/book_site.py pdf               # _build/study-guide.pdf (interview questions + cheat sheet)
                                                  # and _build/kltutor-book.pdf (the whole book)
    python scripts/book_site.py configcheck-time  # how long the "Check your config" page takes to load Python

The site is self-contained: MathJax and every other asset are served from _build/html, so it works
offline (tests/test_site_browser.py checks that in headless Chromium). The "Check your config" page
(book/configcheck.md) runs the package's config inspector in the reader's browser: `build` puts Pyodide
(npm) into _build/html/_static/pyodide and the inspector's source, a pure-Python PyYAML and the page's
glue (scripts/configcheck_page.py) into _build/html/_static/configcheck/bundle.zip.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import http.server
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
BUILD = ROOT / "_build"
HTML = BUILD / "html"
MATHJAX_VERSION = "3.2.2"
MATHJAX_DIR = ROOT / "book" / "_static" / "mathjax"
NODE_CACHE = ROOT / ".cache" / "node"
# Pyodide (CPython compiled to WebAssembly) from the npm registry, for the "Check your config" page. The npm
# package holds the interpreter and the standard library only (no PyYAML, no micropip): the rest comes from
# this build, see configcheck_assets().
PYODIDE_VERSION = "314.0.8"
PYODIDE_FILES = ["pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json"]
PYODIDE_DIR = HTML / "_static" / "pyodide"
CONFIGCHECK_DIR = HTML / "_static" / "configcheck"
# The inspector, under its new name first (scripts/configcheck_page.py imports it the same way).
INSPECTOR_NAMES = ("kltutor.configcheck", "kltutor.inspect")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The pages of the printable study guide, in order.
STUDY_GUIDE_PAGES = [
    "notebooks/10_interview_questions",
    "notebooks/08_kl_in_practice",
    "notebooks/09_distillation",
    "book/cheatsheet",
]


def _npm_package(name: str, version: str, marker: str) -> Path:
    """The npm package ``name@version`` in .cache/node (installed once; ``marker`` is a file it must hold)."""
    pkg = NODE_CACHE / "node_modules" / name
    meta = pkg / "package.json"
    if (pkg / marker).exists() and meta.exists() and json.loads(meta.read_text()).get("version") == version:
        return pkg
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"npm is needed once to fetch {name} for the offline site (apt-get install nodejs npm)")
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NODE_CACHE), f"{name}@{version}"],
        check=True,
    )
    if not (pkg / marker).exists():
        raise SystemExit(f"npm installed {name}@{version} without {marker}")
    return pkg


def assets() -> None:
    """Put MathJax 3 (from the npm registry) where Sphinx copies static files from."""
    marker = MATHJAX_DIR / "tex-chtml.js"
    if marker.exists():
        return
    pkg = _npm_package("mathjax", MATHJAX_VERSION, "es5/tex-chtml.js") / "es5"
    MATHJAX_DIR.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(MATHJAX_DIR, ignore_errors=True)
    # The speech-rule engine (a11y/sre) is large and loaded only on demand; keep the rest.
    shutil.copytree(pkg, MATHJAX_DIR, ignore=shutil.ignore_patterns("sre", "mathmaps"))


def _module_file(name: str, base: Path) -> Path | None:
    """The source file of module ``name`` under ``base`` (a.b -> a/b.py or a/b/__init__.py), without importing it."""
    path = base.joinpath(*name.split("."))
    for f in (path.with_suffix(".py"), path / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imports(path: Path, module: str, top: str) -> set[str]:
    """Modules of package ``top`` that ``path`` (module ``module``) imports anywhere, functions included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import mod`; non-modules drop out below
    return {m for m in found if m == top or m.startswith(top + ".")}


def inspector_sources() -> dict[str, Path]:
    """The files the config inspector needs, found from the module itself, not from a list: its package
    (``kltutor.configcheck`` and/or ``kltutor.inspect``, whichever exist), every ``kltutor`` module they import
    (also inside functions; modules that need torch come along but are imported only by verdicts that need
    them), the parent packages' ``__init__.py`` and the packages' data (their ``data/`` folders and
    pyproject.toml's package-data). Keys are paths
    inside the archive (``kltutor/...``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import kltutor

    pkg_root = Path(kltutor.__file__).resolve().parent
    base = pkg_root.parent
    todo = []
    for name in INSPECTOR_NAMES:
        f = _module_file(name, base)
        if f is not None:
            todo.append(name)
            if f.name == "__init__.py":  # the whole inspector package (its __main__, field lists...)
                todo += [f"{name}.{p.stem}" for p in f.parent.glob("*.py") if p.stem != "__init__"]
    if not todo:
        raise SystemExit(f"no config inspector found ({' or '.join(INSPECTOR_NAMES)})")
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        f = _module_file(name, base)
        if f is None:
            continue
        seen[name] = f
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imports(f, name, "kltutor"))
    files = {str(f.resolve().relative_to(base)): f for f in seen.values()}
    # package data inside the packages taken: their data/ folders, and pyproject's package-data patterns
    import tomllib

    dirs = {f.parent for f in seen.values() if f.name == "__init__.py"}
    for d in dirs:
        for f in (d / "data").rglob("*") if (d / "data").is_dir() else []:
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".py", ".pyc"):
                files[str(f.relative_to(base))] = f
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    for pattern in data.get("kltutor", []):
        for f in pkg_root.glob(pattern):
            if f.parent in dirs or f.parent.parent in dirs:
                files[str(f.relative_to(base))] = f
    return dict(sorted(files.items()))


def configcheck_assets() -> dict:
    """Put Pyodide and the inspector's bundle into the built site (_static/pyodide, _static/configcheck)."""
    import yaml as pyyaml

    pkg = _npm_package("pyodide", PYODIDE_VERSION, "pyodide.asm.wasm")
    shutil.rmtree(PYODIDE_DIR, ignore_errors=True)
    PYODIDE_DIR.mkdir(parents=True)
    for name in PYODIDE_FILES:
        shutil.copy2(pkg / name, PYODIDE_DIR / name)
    shutil.copy2(pkg / "package.json", PYODIDE_DIR / "package.json")  # version and licence (MPL-2.0)

    shutil.rmtree(CONFIGCHECK_DIR, ignore_errors=True)
    CONFIGCHECK_DIR.mkdir(parents=True)
    sources = inspector_sources()
    # PyYAML's pure-Python implementation: the .py files of the build environment's PyYAML (its libyaml
    # extension is left out; yaml/__init__.py falls back to the pure-Python loader without it).
    yaml_dir = Path(pyyaml.__file__).parent
    yaml_files = {f"yaml/{f.name}": f for f in sorted(yaml_dir.glob("*.py")) if f.name != "cyaml.py"}
    dist = importlib.metadata.distribution("PyYAML")
    licence = next((f for f in dist.files or [] if Path(f).name in ("LICENSE", "LICENSE.txt")), None)
    bundle = CONFIGCHECK_DIR / "bundle.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, f in {**sources, **yaml_files}.items():
            z.write(f, arc)
        if licence is not None:
            z.write(dist.locate_file(licence), "yaml/LICENSE")
        z.write(ROOT / "scripts" / "configcheck_page.py", "configcheck_page.py")
    manifest = {
        "pyodide": PYODIDE_VERSION,
        "pyyaml": dist.version,
        "inspector": [n for n in INSPECTOR_NAMES if f"{n.replace('.', '/')}/__init__.py" in sources],
        "files": sorted([*sources, *yaml_files, "configcheck_page.py"]),
        "bundle_bytes": bundle.stat().st_size,
    }
    (CONFIGCHECK_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(f.stat().st_size for f in PYODIDE_DIR.iterdir()) + bundle.stat().st_size
    print(f"configcheck: Pyodide {PYODIDE_VERSION} + {len(manifest['files'])} files, {size / 2**20:.1f} MiB in _static")
    return manifest


CONFIGCHECK_LEGEND = ROOT / "book" / "_configcheck_legend.md"


def configcheck_legend() -> Path:
    """Write the legend of the "Check your config" page (every verdict and warning code with its section) from
    the inspector's registry; book/configcheck.md includes it. Generated at each build, never committed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import configcheck_page

    CONFIGCHECK_LEGEND.write_text(configcheck_page.legend())
    return CONFIGCHECK_LEGEND


def build(strict: bool) -> int:
    assets()
    configcheck_legend()
    shutil.rmtree(HTML, ignore_errors=True)
    shutil.rmtree(BUILD / ".doctrees", ignore_errors=True)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    if (HTML / "index.html").exists():
        configcheck_assets()
        import llms_txt  # scripts/llms_txt.py

        try:
            print(f"llms.txt: {llms_txt.write(HTML / 'llms.txt')}")
        except (KeyError, ValueError, FileNotFoundError) as e:  # e.g. a glued value a stale notebook lacks
            print(f"llms.txt: not written: {e.args[0] if e.args else e}")
            rc = rc or 1
    print(f"site build: exit {rc} in {time.perf_counter() - t0:.1f} s -> {HTML / 'index.html'}")
    return rc


def toc_pages() -> list[str]:
    """Every page of _toc.yml, as paths without suffix (e.g. ``notebooks/01_kl_fundamentals``)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                pages.append(e["file"])
            walk(e.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path = HTML, port: int = 0):
    """Serve ``directory`` on 127.0.0.1 in a background thread; yields the base URL."""
    if not (directory / "index.html").exists():
        raise SystemExit(f"{directory} holds no built site: run `python scripts/book_site.py build` first")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def browser():
    """A headless system Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: `apt-get install chromium` (make setup-browser does it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


PRINT_CSS = """
@media print {
  .bd-header, .bd-sidebar-primary, .bd-sidebar-secondary, .header-article, .prev-next-area,
  .bd-footer, .bd-footer-article, .bd-footer-content, .cell_input, .toggle-details__summary,
  .sd-summary-up, .sd-summary-down, button, div.cell { display: none !important; }
  .bd-main .bd-content .bd-article-container { max-width: 100% !important; }
  section section, details, .sd-dropdown, .admonition, table, figure, .cell_output {
    break-inside: avoid; page-break-inside: avoid; }
  h1, h2, h3, summary { break-after: avoid; page-break-after: avoid; }
  h1 { break-before: page; }
  .bd-main .bd-content .bd-article h1:first-of-type { display: block !important; }
}
"""


def pdf(out: Path = BUILD / "study-guide.pdf") -> Path:
    """Print the study-guide pages (answers unfolded) with Chromium and join them into one PDF."""
    from pypdf import PdfWriter

    parts = []
    with serve() as base, browser() as b:
        page = b.new_page()
        for i, doc in enumerate(STUDY_GUIDE_PAGES):
            page.goto(f"{base}/{doc}.html", wait_until="load")
            page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30000)
            page.evaluate("MathJax.startup.promise")
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            page.add_style_tag(content=PRINT_CSS)
            part = BUILD / f".study-guide-{i}.pdf"
            page.pdf(
                path=str(part),
                format="A4",
                print_background=True,
                margin={"top": "15mm", "bottom": "15mm", "left": "12mm", "right": "12mm"},
            )
            parts.append(part)
    writer = PdfWriter()
    for part in parts:
        writer.append(str(part))
        part.unlink()
    with out.open("wb") as fh:
        writer.write(fh)
    print(f"study guide: {out} ({out.stat().st_size // 1024} KiB)")
    return out


BOOK_PDF = BUILD / "kltutor-book.pdf"

# The whole book as one document: every page of _toc.yml fetched into one HTML page (ids prefixed per page,
# links between pages turned into links inside the document, images made absolute), a title page and a table
# of contents in front, typeset by MathJax and printed once by Chromium, so cross-references are PDF links.
ASSEMBLE_JS = """
async ({pages, title, subtitle}) => {
  const base = location.origin;
  const index = new Map(pages.map((p, i) => [new URL(p.doc + '.html', base + '/').pathname, i]));
  const sections = [];
  for (const [i, p] of pages.entries()) {
    const url = new URL(p.doc + '.html', base + '/');
    const html = await (await fetch(url)).text();
    const doc = new DOMParser().parseFromString(html, 'text/html');
    const article = doc.querySelector('article.bd-article');
    article.querySelectorAll('[id]').forEach(e => { e.id = `p${i}-${e.id}`; });
    article.querySelectorAll('img[src]').forEach(img => { img.src = new URL(img.getAttribute('src'), url).href; });
    article.querySelectorAll('a[href]').forEach(a => {
      const target = new URL(a.getAttribute('href'), url);
      if (target.origin !== base) return;
      const j = index.get(target.pathname);
      if (j === undefined) { a.removeAttribute('href'); return; }
      a.setAttribute('href', '#' + (target.hash ? `p${j}-${target.hash.slice(1)}` : `p${j}-top`));
    });
    const section = document.createElement('section');
    section.className = 'pdf-page' + (p.number ? ' pdf-chapter' : '');
    section.id = `p${i}-top`;
    article.querySelectorAll('.toctree-wrapper').forEach(e => e.remove());  // the PDF has its own contents
    section.append(...article.childNodes);
    sections.push(section);
  }
  // title page and contents (chapters with their numbered sections, pages without numbers after them)
  const front = document.createElement('section');
  front.className = 'pdf-front';
  front.innerHTML = `<h1 class="pdf-title">${title}</h1><p class="pdf-subtitle">${subtitle}</p>`;
  const toc = document.createElement('nav');
  toc.className = 'pdf-toc';
  toc.innerHTML = '<h2 class="pdf-toc-title">Contents</h2>';
  let part = null;
  const list = document.createElement('ol');
  pages.forEach((p, i) => {
    if (i === 0) return;
    if (p.part && p.part !== part) {
      part = p.part;
      const li = document.createElement('li'); li.className = 'pdf-toc-part'; li.textContent = part; list.append(li);
    }
    const h1 = sections[i].querySelector('h1');
    const li = document.createElement('li');
    const text = h => { const c = h.cloneNode(true); c.querySelectorAll('.headerlink').forEach(e => e.remove()); return c.textContent.trim(); };
    li.className = 'pdf-toc-chapter';
    li.innerHTML = `<a href="#p${i}-top">${h1 ? text(h1) : p.doc}</a><span class="pdf-pageno" data-target="p${i}-top">000</span>`;
    list.append(li);
    if (p.number) sections[i].querySelectorAll('section > h2').forEach(h2 => {
      const sec = h2.closest('section');
      if (!sec || !sec.id) return;
      const sub = document.createElement('li');
      sub.className = 'pdf-toc-section';
      sub.innerHTML = `<a href="#${sec.id}">${text(h2)}</a><span class="pdf-pageno" data-target="${sec.id}">000</span>`;
      list.append(sub);
    });
  });
  toc.append(list);
  const article = document.querySelector('article.bd-article');
  article.replaceChildren(front, toc, ...sections);
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  document.title = title;
  if (window.MathJax && MathJax.typesetPromise) { MathJax.typesetClear && MathJax.typesetClear(); await MathJax.typesetPromise([article]); }
  await Promise.all(Array.from(document.images).map(img => img.complete ? null : new Promise(r => { img.onload = img.onerror = r; })));
  return Array.from(document.querySelectorAll('.pdf-pageno')).map(s => s.dataset.target);
}
"""

BOOK_PRINT_CSS = """
@page { size: A4; margin: 16mm 14mm 16mm 14mm; }
@media print {
  html { font-size: 10pt; }
  .bd-header, .bd-sidebar-primary, .bd-sidebar-secondary, .header-article, .bd-header-article, .prev-next-area,
  .bd-footer, .bd-footer-article, .bd-footer-content, .headerlink, button, .toggle-details__summary,
  details.hide.above-input, .cc-app, .sd-summary-up, .sd-summary-down, #pst-back-to-top, .skip-link { display: none !important; }
  .bd-main .bd-content .bd-article-container, .bd-page-width, .bd-container__inner { max-width: 100% !important; padding: 0 !important; }
  .bd-main .bd-content { justify-content: start !important; }
  .bd-main .bd-content .bd-article h1:first-of-type { display: block !important; }
  .bd-main .bd-content { margin-left: 0 !important; }
  #jb-print-docs-body, #jb-print-toc, .onlyprint { display: none !important; }
  .bd-main .bd-content table { break-inside: auto !important; }
  .table-wrapper, .pst-scrollable-table-container { overflow: visible !important; }
  .bd-article table.table { width: 100% !important; table-layout: auto; }
  .bd-article table.table td, .bd-article table.table th { overflow-wrap: break-word; }
  .pdf-page { break-before: page; }
  .pdf-front { padding-top: 30%; text-align: center; break-after: page; }
  .pdf-title { font-size: 2.6rem; }
  .pdf-subtitle { font-size: 1.1rem; color: #444; }
  .pdf-toc ol { list-style: none; padding-left: 0; }
  .pdf-toc li { display: flex; justify-content: space-between; gap: 1em; margin: 0.1em 0; break-inside: avoid; }
  .pdf-toc a { color: inherit; text-decoration: none; }
  .pdf-toc-part { font-weight: 700; margin-top: 0.8em !important; }
  .pdf-toc-chapter { font-weight: 600; }
  .pdf-toc-section { padding-left: 1.5em; font-size: 0.92em; }
  .pdf-pageno { font-variant-numeric: tabular-nums; min-width: 2.5em; text-align: right; }
  pre, .highlight pre { white-space: pre-wrap !important; overflow-wrap: anywhere; word-break: break-word;
    overflow: visible !important; font-size: 7.8pt !important; line-height: 1.3; }
  div.cell_output pre { max-height: none !important; }
  img { max-width: 100% !important; height: auto !important; }
  figure, img, .cell_output img, tr, .admonition, .math-wrapper, mjx-container[display="true"] { break-inside: avoid; }
  .kltutor-table, .table-wrapper { overflow: visible !important; }
  .kltutor-table table, table.table { font-size: 7.8pt !important; }
  .kltutor-table th, .kltutor-table td { white-space: normal !important; overflow-wrap: break-word; }
  .kltutor-table .num, .kltutor-table td:has(> .num) { white-space: nowrap !important; }
  table { break-inside: auto; } thead { display: table-header-group; }
  h1, h2, h3, h4, summary, .admonition-title { break-after: avoid; }
  mjx-container[display="true"] { overflow: visible !important; }
  a { color: #1a4f8b !important; }
}
"""


def book_pdf(out: Path = BOOK_PDF, only: list[str] | None = None) -> Path:
    """Print the whole book (every page of _toc.yml, in order) to one PDF: title page, table of contents with
    page numbers, chapters with their figures, tables and math, links between chapters as PDF links, and the
    outline (bookmarks) from the headings. Two passes: the first finds the page each entry starts on."""
    import llms_txt
    from pypdf import PdfReader

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    pages = [{"doc": p.doc, "part": p.part, "number": p.number} for p in llms_txt.pages()]
    if only:  # a preview of some pages (the root page stays: it is the shell the book is assembled in)
        pages = [p for i, p in enumerate(pages) if i == 0 or p["doc"] in only]
    subtitle = f"{config.get('author', '')}, {config.get('copyright', '')}. {config['repository']['url']}"
    with serve() as base, browser() as b:
        page = b.new_page()
        page.set_default_timeout(300_000)
        page.goto(f"{base}/{pages[0]['doc']}.html", wait_until="load")
        page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60000)
        page.evaluate("MathJax.startup.promise")
        targets = page.evaluate(ASSEMBLE_JS, {"pages": pages, "title": config["title"], "subtitle": subtitle})
        page.add_style_tag(content=BOOK_PRINT_CSS)
        page.emulate_media(media="print")
        options = dict(format="A4", print_background=True, outline=True, tagged=True, prefer_css_page_size=True)
        options["display_header_footer"] = True
        options["header_template"] = "<span></span>"
        options["footer_template"] = (
            '<div style="font-size:8px;width:100%;text-align:center;color:#666"><span class="pageNumber"></span></div>'
        )
        first = page.pdf(**options)
        # Where each entry starts: the page of the first text that follows its anchor, found by marking it.
        numbers = _anchor_pages(page, first, targets, PdfReader)
        page.evaluate(
            "numbers => document.querySelectorAll('.pdf-pageno').forEach((s, k) => { s.textContent = numbers[k]; })",
            [str(n) if n else "" for n in numbers],
        )
        page.pdf(path=str(out), **options)
    n = len(PdfReader(str(out)).pages)
    print(f"book: {out} ({n} pages, {out.stat().st_size // 1024} KiB)")
    return out


def _anchor_pages(page, pdf_bytes: bytes, targets: list[str], reader_cls) -> list[int | None]:
    """Page numbers (1-based) of the elements with ids ``targets`` in the printed PDF: each is given a unique
    marker word, printed once, and the marker looked up in the text of each page."""
    import io

    markers = page.evaluate(
        """targets => targets.map((id, k) => {
             const el = document.getElementById(id);
             if (!el) return null;
             const h = el.matches('h1, h2, h3') ? el : (el.querySelector('h1, h2, h3') || el);
             const m = document.createElement('span');
             m.className = 'pdf-marker'; m.textContent = `QQMARK${k}QQ`; m.style.fontSize = '4px';
             h.prepend(m);
             return m.textContent;
           })""",
        targets,
    )
    marked = page.pdf(format="A4", print_background=True, prefer_css_page_size=True)
    page.evaluate("document.querySelectorAll('.pdf-marker').forEach(m => m.remove())")
    reader = reader_cls(io.BytesIO(marked))
    found: dict[str, int] = {}
    for i, pg in enumerate(reader.pages, 1):
        for m in re.findall(r"QQMARK\d+QQ", pg.extract_text() or ""):
            found.setdefault(m, i)
    return [found.get(m) if m else None for m in markers]


def configcheck_time(runs: int = 5) -> list[float]:
    """Seconds from opening the "Check your config" page to a usable Check button, in a fresh browser context
    each time (no cache: what a first visit costs when the site is served from this machine)."""
    times = []
    with serve() as base, browser() as b:
        for _ in range(runs):
            ctx = b.new_context()
            page = ctx.new_page()
            t0 = time.perf_counter()
            page.goto(f"{base}/book/configcheck.html", wait_until="load")
            page.wait_for_function(
                "window.kltutorConfigcheck && (kltutorConfigcheck.ready || kltutorConfigcheck.error)", timeout=300_000
            )
            state = page.evaluate("window.kltutorConfigcheck")
            if not state["ready"]:
                raise SystemExit(f"the page did not load Python: {state['error']}")
            times.append(time.perf_counter() - t0)
            ctx.close()
    med = sorted(times)[len(times) // 2]
    print(f"configcheck page ready after {med:.1f} s (median of {runs}; all: {', '.join(f'{t:.1f}' for t in times)})")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("assets")
    b = sub.add_parser("build")
    b.add_argument("--strict", action="store_true", help="treat every Sphinx warning as an error")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=8000)
    sub.add_parser("pdf")
    t = sub.add_parser("configcheck-time")
    t.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.cmd == "assets":
        assets()
        return 0
    if args.cmd == "build":
        return build(args.strict)
    if args.cmd == "serve":
        with serve(port=args.port) as url:
            print(f"serving {HTML} at {url} (Ctrl-C to stop)")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        return 0
    if args.cmd == "configcheck-time":
        configcheck_time(args.runs)
        return 0
    if args.cmd == "pdf":
        pdf()
        book_pdf()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
