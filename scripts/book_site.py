"""Build the site from the executed notebooks, serve it, and print the study guide.

    python scripts/book_site.py assets            # fetch MathJax 3 (npm) into book/_static/mathjax
    python scripts/book_site.py build [--strict]  # assets + jupyter-book build -> _build/html
    python scripts/book_site.py serve [--port N]  # serve _build/html on 127.0.0.1
    python scripts/book_site.py pdf               # _build/study-guide.pdf (interview questions + cheat sheet)

The site is self-contained: MathJax and every other asset are served from _build/html, so it works
offline (tests/test_site_browser.py checks that in headless Chromium).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
HTML = BUILD / "html"
MATHJAX_VERSION = "3.2.2"
MATHJAX_DIR = ROOT / "book" / "_static" / "mathjax"
NODE_CACHE = ROOT / ".cache" / "node"
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


def assets() -> None:
    """Put MathJax 3 (from the npm registry) where Sphinx copies static files from."""
    marker = MATHJAX_DIR / "tex-chtml.js"
    if marker.exists():
        return
    pkg = NODE_CACHE / "node_modules" / "mathjax" / "es5"
    if not (pkg / "tex-chtml.js").exists():
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed once to fetch MathJax for the offline site (apt-get install nodejs npm)")
        subprocess.run(
            [
                npm,
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(NODE_CACHE),
                f"mathjax@{MATHJAX_VERSION}",
            ],
            check=True,
        )
    MATHJAX_DIR.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(MATHJAX_DIR, ignore_errors=True)
    # The speech-rule engine (a11y/sre) is large and loaded only on demand; keep the rest.
    shutil.copytree(pkg, MATHJAX_DIR, ignore=shutil.ignore_patterns("sre", "mathmaps"))


def build(strict: bool) -> int:
    assets()
    shutil.rmtree(HTML, ignore_errors=True)
    shutil.rmtree(BUILD / ".doctrees", ignore_errors=True)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "--builder", "html"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("assets")
    b = sub.add_parser("build")
    b.add_argument("--strict", action="store_true", help="treat every Sphinx warning as an error")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=8000)
    sub.add_parser("pdf")
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
    if args.cmd == "pdf":
        pdf()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
