"""Published KL settings, each with the paper's own words: ``kltutor/data/papers.json``.

Each paper row gives, for every field of :data:`FIELDS` (beta, estimator, placement, token or sequence
level, aggregation, reference policy and its updates, sampler settings), a value, the exact quote that
supports it and where it is (section, equation or caption), plus the paper's arXiv id. A value that
starts with ``"not stated"`` was not found stated in the passages checked; every other value has a quote.
``index_contradictions`` records where a widely used index states a setting the paper contradicts.

- :func:`load`, :func:`paper` read the file; :func:`validate` lists what is incomplete (the test requires
  none); :func:`table` is the book's table (rendered by ``kltutor.book.table``);
- :func:`compare` compares a config-inspector report (``kltutor.inspect.inspect_text(...).to_dict()``) with a
  paper's row and says what differs, one line each.

Introduced in chapter 8 (section "Published KL settings, checked", ``sec-practice-published-settings``).
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path

__all__ = ["DATA_PATH", "FIELDS", "load", "paper", "ids", "validate", "table", "compare"]

DATA_PATH = Path(__file__).with_name("data") / "papers.json"
FIELDS = ("beta", "estimator", "placement", "level", "aggregation", "reference", "sampler")
_ARXIV = re.compile(r"^\d{4}\.\d{4,5}$")


@cache
def _load_cached(path: str) -> dict:
    return json.loads(Path(path).read_text())


def load(path: Path | str = DATA_PATH) -> dict:
    """The whole file (cached)."""
    return _load_cached(str(path))


def ids() -> list[str]:
    """The paper ids, in the file's order."""
    return [p["id"] for p in load()["papers"]]


def paper(paper_id: str) -> dict:
    """One paper's row by id (case-insensitive), or a one-line error naming the known ids."""
    for p in load()["papers"]:
        if p["id"] == str(paper_id).lower():
            return p
    raise KeyError(f"no paper {paper_id!r}; known: {', '.join(ids())}")


def _stated(value: str) -> bool:
    return not value.lower().startswith("not stated")


def validate(data: dict | None = None) -> list[str]:
    """Every problem with the rows, one line each (empty: every row complete, every quote sourced)."""
    data = load() if data is None else data
    out = []
    seen = set()
    for p in data["papers"]:
        pid = p.get("id", "?")
        if pid in seen:
            out.append(f"{pid}: duplicate id")
        seen.add(pid)
        if not _ARXIV.match(str(p.get("arxiv", ""))):
            out.append(f"{pid}: arXiv id missing or malformed: {p.get('arxiv')!r}")
        if not p.get("title") or not p.get("name"):
            out.append(f"{pid}: no title or short name")
        for f in FIELDS:
            cell = p.get(f)
            if not isinstance(cell, dict) or not str(cell.get("value", "")).strip():
                out.append(f"{pid}.{f}: no value")
                continue
            q, w = cell.get("quote"), cell.get("where")
            if _stated(cell["value"]) and not (q and q.strip()):
                out.append(f"{pid}.{f}: a stated value without the paper's quote")
            if q and not (w and w.strip()):
                out.append(f"{pid}.{f}: a quote that does not name where it is")
        m = p.get("machine", {})
        if set(m) != {"beta", "estimator", "placement", "level"}:
            out.append(f"{pid}: 'machine' must give beta, estimator, placement, level (null when not stated)")
    known = {p["id"] for p in data["papers"]}
    for c in data.get("index_contradictions", []):
        if c.get("paper") not in known:
            out.append(f"index contradiction for unknown paper {c.get('paper')!r}")
        for k in ("index", "index_says", "paper_says", "where"):
            if not c.get(k):
                out.append(f"index contradiction for {c.get('paper')}: no {k}")
    return out


def table(with_quotes: bool = False):
    """One row per paper: its arXiv id and each field's value (and, with ``with_quotes``, quote and place)."""
    import pandas as pd

    rows = []
    for p in load()["papers"]:
        row = {"paper": p["name"], "arXiv": p["arxiv"]}
        for f in FIELDS:
            row[f] = p[f]["value"]
            if with_quotes:
                row[f"{f}: quote"] = f"\u201c{p[f]['quote']}\u201d ({p[f]['where']})" if p[f]["quote"] else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt_beta(b) -> str:
    return " or ".join(f"{x:g}" for x in b) if isinstance(b, list) else f"{b:g}"


def compare(report: dict, paper_id: str) -> list[str]:
    """What differs between a config-inspector report (``Report.to_dict()``) and a paper's row, one line each.

    Compares only what the paper states (its ``machine`` fields): whether there is a KL term at all, beta,
    estimator, placement (reward or loss) and token/sequence level; each line quotes where the paper says it.
    An empty list means nothing the paper states differs.

    >>> compare({"terms": []}, "dapo")
    []
    """
    p = paper(paper_id)
    if not isinstance(report, dict) or not isinstance(report.get("terms"), list):
        raise ValueError("report must be an inspector report as a dict (Report.to_dict()), with a 'terms' list")
    m, terms, out = p["machine"], report["terms"], []
    name = p["name"]

    def cite(field):
        c = p[field]
        return f' ({p["arxiv"]}, {c["where"]}: "{c["quote"]}")' if c.get("quote") else f" ({p['arxiv']})"

    if m["placement"] == "none":
        if terms:
            got = "; ".join(f"{t['estimator']} in the {t['placement']} with beta {t['beta']:g}" for t in terms)
            out.append(f"{name} uses no KL term{cite('placement')}; this config has {got}")
        return out
    if not terms:
        if m["placement"] is not None or (m["beta"] not in (None, 0.0)):
            out.append(
                f"{name} uses a KL term{cite('beta' if m['beta'] is not None else 'placement')}; this config has none"
            )
        return out
    if len(terms) > 1:
        out.append(f"this config has {len(terms)} KL terms; {name} describes one")
    t = terms[0]
    b = m["beta"]
    if b is not None:
        opts = b if isinstance(b, list) else [b]
        if not any(math.isclose(t["beta"], x, rel_tol=1e-9, abs_tol=1e-12) for x in opts):
            out.append(f"beta: {name} uses {_fmt_beta(b)}{cite('beta')}; this config has {t['beta']:g}")
    est = m["estimator"]
    if est is not None:
        got = t["estimator"].rstrip("+")
        want = "k3" if est == "k3-ratio" else est
        if got != want:
            out.append(f"estimator: {name} uses {est}{cite('estimator')}; this config has {t['estimator']}")
        elif est == "k3-ratio" and t.get("correction", "none") in ("none", ""):
            out.append(
                f"estimator: {name} multiplies k3 by pi_theta/pi_old{cite('estimator')}; this config has no such correction"
            )
    for f in ("placement", "level"):
        if m[f] is not None and t[f] != m[f]:
            out.append(f"{f}: {name} has {m[f]}{cite(f)}; this config has {t[f]}")
    return out
