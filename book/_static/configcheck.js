// The "Check your config" page (book/configcheck.md): runs kltutor's config inspector in the browser with
// Pyodide. Everything is loaded from this site (_static/pyodide, _static/configcheck/bundle.zip, built by
// scripts/book_site.py); nothing is sent anywhere. The Python side is scripts/configcheck_page.py.
const MAX_BYTES = 200000; // keep in step with configcheck_page.MAX_CHARS
const here = new URL(".", import.meta.url);
const $ = (id) => document.getElementById(id);
const status = $("cc-status");
const result = $("cc-result");
const runButton = $("cc-run");
let py = null;
let pyCheck = null;
window.kltutorConfigcheck = { ready: false, loadSeconds: null, error: null };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

// Links of the legend table on the page: "verdict or warning code" -> section href.
function legendLinks() {
  const links = {};
  document.querySelectorAll("table.cc-legend tbody tr").forEach((tr) => {
    const cells = tr.querySelectorAll("td");
    const a = cells.length >= 3 ? cells[2].querySelector("a") : null;
    if (a) links[cells[0].innerText.trim()] = { href: a.getAttribute("href"), title: a.innerText.trim() };
  });
  return links;
}

function explained(key, links) {
  const l = links[key];
  if (!l) return null;
  return el("span", { class: "cc-explained" }, " (", el("a", { href: l.href, class: "cc-link", "data-key": key }, l.title), ")");
}

function fmtBias(b) {
  if (b === null || b === undefined) return "";
  return b < 1e-6 ? "< 1e-6" : "= " + Number(b).toFixed(3);
}

function render(out) {
  const links = legendLinks();
  result.replaceChildren();
  const code = out.exit_code;
  const exit = el("p", { class: "cc-exit", "data-exit-code": code === null || code === undefined ? "" : String(code) });
  if (code !== null && code !== undefined) {
    exit.append(el("strong", {}, `Exit code ${code}`), ` (what python -m ${out.inspector || "kltutor.configcheck"} would return): ${out.meaning}.`);
  }
  if (!out.ok) {
    result.append(
      el("div", { class: "cc-message cc-" + out.kind, role: "alert" }, el("strong", {}, out.kind === "internal" ? "Cannot check: " : "Cannot read this config: "), out.message),
    );
    if (code !== null && code !== undefined) result.append(exit);
    return;
  }
  const r = out.report;
  result.append(el("p", { class: "cc-summary" }, el("strong", {}, `${r.library} ${r.trainer}`), ` — verdicts from ${r.checked_against}`));
  result.append(exit);
  if (!r.terms.length) {
    result.append(el("p", { class: "cc-noterms" }, "KL terms: none."));
  } else {
    const tbody = el("tbody");
    r.terms.forEach((t, i) => {
      const verdict = el("td", { class: "cc-verdict" });
      if (t.verdict) verdict.append(el("span", { class: "cc-verdict-text" }, t.verdict), `, |bias| ${fmtBias(t.bias_norm)}`, explained(t.verdict, links));
      else verdict.append("—");
      if (t.stale) verdict.append(el("br"), el("span", { class: "cc-stale" }, `on a stale batch: ${t.stale.verdict}, |bias| ${fmtBias(t.stale.bias_norm)}`), explained("stale", links));
      tbody.append(
        el("tr", { class: "cc-term" }, el("td", {}, String(i + 1)), el("td", { class: "cc-placement" }, t.placement), el("td", {}, t.estimator), el("td", {}, t.level), el("td", {}, String(t.beta)), el("td", {}, t.controller), el("td", {}, t.correction), verdict),
      );
    });
    const head = el("tr", {}, ...["", "in the", "estimator", "level", "β", "controller", "correction", "exact expected gradient (chapter 3 toy)"].map((h) => el("th", {}, h)));
    result.append(el("div", { class: "kltutor-table" }, el("table", { class: "cc-terms" }, el("caption", {}, "KL terms found"), el("thead", {}, head), tbody)));
  }
  if (r.notes.length) result.append(el("ul", { class: "cc-notes" }, ...r.notes.map((n) => el("li", {}, "note: " + n))));
  if (r.warnings.length) {
    result.append(
      el("ul", { class: "cc-warnings" }, ...r.warnings.map((w) => el("li", { class: "cc-warning", "data-code": w.code }, el("strong", {}, `warning [${w.code}]`), ": " + w.message, explained(w.code, links)))),
    );
  } else {
    result.append(el("p", { class: "cc-nowarnings" }, "No warnings."));
  }
}

function show(out) {
  try {
    render(out);
  } catch (e) {
    result.replaceChildren(el("div", { class: "cc-message cc-internal", role: "alert" }, "The report could not be shown: " + e.message));
  }
  result.dataset.state = "done";
}

async function runCheck(text, name) {
  result.dataset.state = "running";
  const trainer = $("cc-trainer").value || null;
  const out = JSON.parse(pyCheck(text, name, trainer));
  show(out);
}

async function checkPasted() {
  const text = $("cc-input").value;
  if (new Blob([text]).size > MAX_BYTES) {
    show({ ok: false, kind: "input", exit_code: 2, meaning: "unreadable", message: `pasted text of ${text.length.toLocaleString()} characters is more than a trainer config (${MAX_BYTES.toLocaleString()} bytes at most here)` });
    return;
  }
  await runCheck(text, "pasted config");
}

async function checkFile(file) {
  if (file.size > MAX_BYTES) {
    show({ ok: false, kind: "input", exit_code: 2, meaning: "unreadable", message: `${file.name}: ${file.size.toLocaleString()} bytes is more than a trainer config (${MAX_BYTES.toLocaleString()} at most here)` });
    return;
  }
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(await file.arrayBuffer());
  } catch (e) {
    show({ ok: false, kind: "input", exit_code: 2, meaning: "unreadable", message: `${file.name}: not UTF-8 text (binary data?)` });
    return;
  }
  $("cc-input").value = text;
  await runCheck(text, file.name);
}

async function main() {
  if (location.protocol === "file:") {
    status.textContent = "This page needs a web server: browsers do not run WebAssembly from file:// pages. Run `python scripts/book_site.py serve` (or any static file server) and open the page through it.";
    window.kltutorConfigcheck.error = "file://";
    return;
  }
  const t0 = performance.now();
  try {
    const { loadPyodide } = await import(new URL("pyodide/pyodide.mjs", here).href);
    py = await loadPyodide({ indexURL: new URL("pyodide/", here).href, packages: [] });
    const bundle = await fetch(new URL("configcheck/bundle.zip", here));
    if (!bundle.ok) throw new Error(`configcheck/bundle.zip: HTTP ${bundle.status}`);
    py.unpackArchive(await bundle.arrayBuffer(), "zip", { extractDir: "/kltutor_site" });
    py.runPython("import sys; sys.path.insert(0, '/kltutor_site'); import configcheck_page; configcheck_page.inspector()");
    pyCheck = py.pyimport("configcheck_page").check;
  } catch (e) {
    status.textContent = "Python could not be loaded in this browser: " + (e && e.message ? e.message.split("\n")[0] : e);
    window.kltutorConfigcheck.error = String(e);
    return;
  }
  const seconds = (performance.now() - t0) / 1000;
  window.kltutorConfigcheck.loadSeconds = seconds;
  window.kltutorConfigcheck.ready = true;
  status.textContent = `Ready (Python loaded in ${seconds.toFixed(1)} s).`;
  runButton.disabled = false;
  runButton.addEventListener("click", () => checkPasted());
  $("cc-file").addEventListener("change", (ev) => {
    const f = ev.target.files && ev.target.files[0];
    if (f) checkFile(f);
  });
}

main();
