"""The built site, as a reader meets it: headless Chromium over every page of the table of contents.

Needs a built site (`python scripts/book_site.py build`, which `make test` runs first) and Debian's
chromium (`make setup-browser`). Screenshots of key pages land in _build/screenshots/.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import book_site as site_tool  # noqa: E402

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / "_build" / "screenshots"
PAGES = site_tool.toc_pages()
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
BRANCH = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"].get("branch", "main")

# Text that must not survive typesetting (outside code blocks).
RAW_MATH = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|(?<![\w$])\$[^$\s][^$]*\$(?![\w$])")

COLLECT_JS = """
() => {
  const article = document.querySelector('article.bd-article') || document.body;
  const clone = article.cloneNode(true);
  clone.querySelectorAll('pre, code, mjx-container, script, style, .cell_input, .highlight').forEach(e => e.remove());
  return {
    text: clone.innerText,
    mathNodes: document.querySelectorAll('mjx-container').length,
    mathSources: document.querySelectorAll('.math, span.math, div.math').length,
    images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    dropdowns: document.querySelectorAll('details').length,
    launch: Array.from(document.querySelectorAll('a[href*="colab.research.google.com"]')).map(a => a.href),
  };
}
"""


@pytest.fixture(scope="module")
def site():
    if not (site_tool.HTML / "index.html").exists():
        pytest.fail("no built site: run `python scripts/book_site.py build --strict` (make test does) before this test")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with site_tool.serve() as base, site_tool.browser() as browser:
        yield base, browser


def _open(browser, url):
    """Open ``url`` in a fresh page; return the page and the console errors it produced."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # Generous: in CI this runs beside nbval workers on two cores, and MathJax on a long chapter is slow.
    page.set_default_timeout(180_000)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    page.goto(url, wait_until="load")
    page.wait_for_function("!window.MathJax || (MathJax.startup && MathJax.startup.promise)", timeout=180_000)
    page.evaluate("window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
    page.wait_for_load_state("networkidle")
    return page, errors


@pytest.mark.parametrize("doc", PAGES)
def test_page_renders(site, doc):
    base, browser = site
    page, errors = _open(browser, f"{base}/{doc}.html")
    info = page.evaluate(COLLECT_JS)
    assert not errors, f"{doc}: console errors {errors}"
    raw = RAW_MATH.findall(info["text"])
    assert not raw, f"{doc}: untypeset math left in the text: {raw[:5]}"
    if info["mathSources"]:
        assert info["mathNodes"] > 0, f"{doc}: has math but MathJax typeset nothing"
    broken = [i["src"] for i in info["images"] if not i["ok"]]
    assert not broken, f"{doc}: images that did not load: {broken}"

    # Dropdowns open when clicked.
    summaries = page.locator("details > summary")
    for k in range(min(summaries.count(), 3)):
        summaries.nth(k).click()
        assert summaries.nth(k).evaluate("s => s.parentElement.open"), f"{doc}: dropdown {k} did not open"

    # Internal links resolve, anchors included.
    checked: dict[str, str] = {}
    for href in info["links"]:
        url, frag = urldefrag(href)
        if urlparse(url).netloc != urlparse(base).netloc:
            continue
        if url not in checked:
            resp = page.request.get(url)
            assert resp.ok, f"{doc}: link {href} -> HTTP {resp.status}"
            checked[url] = resp.text() if url.endswith(".html") else ""
        if frag and url.endswith(".html"):
            assert re.search(rf'id="{re.escape(frag)}"', checked[url]), f"{doc}: link {href} points at a missing anchor"

    # Chapters (notebooks) carry a Colab launch link to their own .ipynb under the repository.
    if doc.startswith("notebooks/"):
        want = (
            f"https://colab.research.google.com/github/{urlparse(REPO_URL).path.strip('/')}/blob/{BRANCH}/{doc}.ipynb"
        )
        assert want in info["launch"], f"{doc}: Colab link {info['launch']} is not {want}"
        assert (ROOT / f"{doc}.ipynb").exists()
    page.screenshot(path=str(SCREENSHOTS / (doc.replace("/", "__") + ".png")), full_page=False)
    page.close()


def test_search_finds_k3(site):
    base, browser = site
    page, errors = _open(browser, f"{base}/search.html?q=k3")
    page.wait_for_selector("ul.search li", timeout=180_000)
    hits = page.locator("ul.search li").count()
    page.screenshot(path=str(SCREENSHOTS / "search_k3.png"))
    assert hits > 0, "search for 'k3' returned nothing"
    assert not errors, f"search page console errors: {errors}"


def test_site_is_self_contained():
    """No page loads a script, stylesheet or font from another host (the site must work offline)."""
    offenders = []
    for html in site_tool.HTML.rglob("*.html"):
        text = html.read_text(errors="ignore")
        for m in re.finditer(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text):
            tag = text[max(0, m.start() - 5) : m.end()]
            if "stylesheet" in tag or "<script" in tag or "preload" in tag:
                offenders.append(f"{html.relative_to(site_tool.HTML)}: {m.group(1)}")
    assert not offenders, f"assets loaded from the network: {offenders[:10]}"


TABLES_JS = """
() => Array.from(document.querySelectorAll('div.kltutor-table')).map(box => {
  const table = box.querySelector('table');
  const r = box.getBoundingClientRect();
  return {
    hasTable: !!table,
    headers: table ? Array.from(table.querySelectorAll('thead th')).map(th => th.innerText.trim()) : [],
    cells: table ? Array.from(table.querySelectorAll('tbody td')).map(td => td.innerText.trim()) : [],
    overflowX: getComputedStyle(box).overflowX,
    scrollWidth: box.scrollWidth, clientWidth: box.clientWidth,
    left: r.left, right: r.right,
  };
})
"""


def test_result_tables_render_as_tables_that_fit_a_phone(site):
    """Chapter 4's results are HTML <table>s (kltutor.book.table), not monospaced text; at phone
    width each table scrolls inside its own box instead of widening the page."""
    base, browser = site
    page, errors = _open(browser, f"{base}/notebooks/04_beta_schedules.html")
    tables = page.evaluate(TABLES_JS)
    assert not errors, f"console errors {errors}"
    assert len(tables) >= 5 and all(t["hasTable"] for t in tables), tables
    lbfgs = [t for t in tables if "max |pi* - L-BFGS|" in t["headers"]]
    assert lbfgs and "< 1e-6" in lbfgs[0]["cells"], "the L-BFGS table is not rendered as a table with its bound"
    # the same numbers are not also shown as preformatted text
    pre_text = page.evaluate(
        "() => Array.from(document.querySelectorAll('.cell_output pre')).map(p => p.innerText).join('\\n')"
    )
    assert "max |pi* - L-BFGS|" not in pre_text
    page.close()

    phone = browser.new_page(viewport={"width": 375, "height": 812})
    phone.set_default_timeout(180_000)
    phone.goto(f"{base}/notebooks/04_beta_schedules.html", wait_until="load")
    phone.wait_for_load_state("networkidle")
    width = phone.evaluate("() => window.innerWidth")
    tables = phone.evaluate(TABLES_JS)
    assert tables
    wide = [t for t in tables if t["scrollWidth"] > t["clientWidth"]]
    assert wide, "no table is wider than a phone: this check would not notice overflow"
    for t in tables:
        assert t["overflowX"] in ("auto", "scroll"), f"a table box does not scroll: overflow-x {t['overflowX']}"
        assert t["left"] >= 0 and t["right"] <= width + 1, (
            f"a table box sticks out of the {width}px viewport: {t['right']}"
        )
    phone.locator("div.kltutor-table").first.scroll_into_view_if_needed()
    phone.screenshot(path=str(SCREENSHOTS / "phone_tables_04.png"))
    phone.close()


# --- the "Check your config" page (book/configcheck.md): the inspector in the browser, with Pyodide ----------

sys.path.insert(0, str(ROOT / "tests"))
import test_configcheck_page as cc  # noqa: E402  (the three configs, shared with the CPython test)

sys.path.insert(0, str(ROOT / "scripts"))
import configcheck_page  # noqa: E402

SHOWN_JS = """
() => {
  const r = document.getElementById('cc-result');
  const exit = r.querySelector('.cc-exit');
  return {
    text: r.innerText,
    exitCode: exit ? exit.dataset.exitCode : null,
    exitText: exit ? exit.innerText : '',
    message: (r.querySelector('.cc-message') || {}).innerText || null,
    terms: Array.from(r.querySelectorAll('tr.cc-term')).map(tr => ({
      placement: tr.querySelector('.cc-placement').innerText,
      verdict: (tr.querySelector('.cc-verdict-text') || {}).innerText || null})),
    warnings: Array.from(r.querySelectorAll('li.cc-warning')).map(li => li.dataset.code),
    links: Array.from(r.querySelectorAll('a.cc-link')).map(a => ({key: a.dataset.key, href: a.href})),
  };
}
"""


def _configcheck_page(browser, base):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(180_000)
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("request", lambda req: None if req.url.startswith(base) else problems.append(f"request to {req.url}"))
    page.goto(f"{base}/book/configcheck.html", wait_until="load")
    page.wait_for_function("window.kltutorConfigcheck && (kltutorConfigcheck.ready || kltutorConfigcheck.error)")
    state = page.evaluate("window.kltutorConfigcheck")
    assert state["ready"], f"Python did not load in the page: {state['error']}"
    return page, problems, state["loadSeconds"]


def _submit(page, text=None, file=None):
    page.evaluate("document.getElementById('cc-result').dataset.state = ''")
    if file is not None:
        page.set_input_files("#cc-file", files=[file])
    else:
        page.eval_on_selector("#cc-input", "(e, t) => { e.value = t; }", text)  # fill() types a huge paste slowly
        page.click("#cc-run")
    page.wait_for_selector("#cc-result[data-state=done]")
    return page.evaluate(SHOWN_JS)


@pytest.mark.parametrize(
    ("case", "text", "exit_code"),
    [("clean", cc.CLEAN, 0), ("double_kl", cc.DOUBLE, 1), ("unreadable", cc.UNREADABLE, 2)],
)
def test_configcheck_page_reports_what_the_inspector_reports(site, case, text, exit_code):
    """Paste a config: the page shows the same KL terms, verdicts, warnings and exit code as the inspector
    under CPython, each verdict and warning linked to a section that exists, and the exit code's meaning;
    nothing is fetched from another host."""
    base, browser = site
    page, problems, seconds = _configcheck_page(browser, base)
    want = json.loads(configcheck_page.check(text))
    shown = _submit(page, text)
    assert want["exit_code"] == exit_code
    assert shown["exitCode"] == str(exit_code), shown
    assert f"Exit code {exit_code}" in shown["exitText"] and configcheck_page.EXIT_CODES[exit_code] in shown["exitText"]
    assert "Traceback" not in shown["text"]
    if want["ok"]:
        report = want["report"]
        assert [t["placement"] for t in shown["terms"]] == [t["placement"] for t in report["terms"]]
        assert [t["verdict"] for t in shown["terms"]] == [t["verdict"] for t in report["terms"]]
        assert shown["warnings"] == [w["code"] for w in report["warnings"]]
        keys = {t["verdict"] for t in report["terms"]} | {w["code"] for w in report["warnings"]}
        keys |= {"stale" for t in report["terms"] if t["stale"]}
        assert {lk["key"] for lk in shown["links"]} == keys, "a verdict or warning shown without its section"
        for lk in shown["links"]:
            url, frag = urldefrag(lk["href"])
            resp = page.request.get(url)
            assert resp.ok and re.search(rf'id="{re.escape(frag)}"', resp.text()), lk
    else:
        assert shown["message"] and want["message"] in shown["message"]
    if case == "double_kl":
        assert len(shown["terms"]) == 2 and "two-kl-terms" in shown["warnings"]
    assert not problems, problems
    page.screenshot(path=str(SCREENSHOTS / f"configcheck_{case}.png"), full_page=True)
    page.close()


def test_configcheck_page_bad_input_gets_a_message(site):
    """An empty paste, a huge paste, binary junk (a file) and an unknown library: one clear message each."""
    base, browser = site
    page, problems, _ = _configcheck_page(browser, base)
    cases = [
        (dict(text=""), "empty"),
        (dict(text="beta: 0.1\n" * 30_000), "more than a trainer config"),
        (
            dict(file={"name": "model.bin", "mimeType": "application/octet-stream", "buffer": bytes(range(256)) * 8}),
            "not UTF-8",
        ),
        (
            dict(file={"name": "junk.yaml", "mimeType": "text/plain", "buffer": b"\x00\x01\x02binary\x03" * 50}),
            "binary",
        ),
        (dict(text="model:\n  name: llama\ntrainer:\n  epochs: 3\n"), "unknown library"),
    ]
    for kwargs, words in cases:
        shown = _submit(page, **kwargs)
        assert shown["message"] and words in shown["message"], (kwargs.get("text", "")[:40], shown)
        assert "Traceback" not in shown["text"] and not shown["terms"]
    assert not problems, problems
    page.close()


def test_llms_txt_is_the_current_book_and_its_links_resolve(site):
    """The built site serves llms.txt at its root, equal to what scripts/llms_txt.py generates from the
    current sources (tests/test_llms_txt.py checks its content), and every link in it reaches its anchor."""
    import llms_txt

    base, browser = site
    page = browser.new_page()
    resp = page.request.get(f"{base}/llms.txt")
    assert resp.ok, "no llms.txt at the site root"
    assert resp.text() == llms_txt.render(), "the built llms.txt is stale: rebuild the site"
    pages: dict[str, str] = {}
    for _, url in re.findall(r"\[([^\]]+)\]\(([^)\s]+)\)", resp.text()):
        if url.startswith(("http://", "https://")):
            continue
        path, _, frag = url.partition("#")
        if path not in pages:
            r = page.request.get(f"{base}/{path}")
            assert r.ok, f"llms.txt links {url}: HTTP {r.status}"
            pages[path] = r.text()
        if frag:
            assert re.search(rf'id="{re.escape(frag)}"', pages[path]), f"llms.txt links {url}: no such anchor"
    page.close()
