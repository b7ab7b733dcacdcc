"""The Python side of the site's "Check your config" page (book/configcheck.md).

It runs in the reader's browser under Pyodide (scripts/book_site.py packs it, with the package's config
inspector and a pure-Python PyYAML, into ``_static/configcheck/bundle.zip``) and, unchanged, under CPython in
``tests/test_configcheck_page.py``. :func:`check` takes the pasted or uploaded text and returns a JSON string
the page renders: the inspector's report, or one clear message. It never lets a traceback reach the reader.

The inspector is imported under either of its names: ``kltutor.configcheck`` (preferred) or
``kltutor.inspect`` (the older name, kept as an alias).
"""

from __future__ import annotations

import importlib
import json

#: Larger pastes are refused before parsing: a trainer config is a few kilobytes.
MAX_CHARS = 200_000
#: What the command line (``python -m kltutor.configcheck FILE``) exits with, and what it means.
EXIT_CODES = {
    0: "clean: the config was read and no warning applies",
    1: "warnings: the config was read and at least one warning below applies",
    2: "unreadable: the inspector could not read the config (the message says where)",
}
INSPECTOR_NAMES = ("kltutor.configcheck", "kltutor.inspect")
SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".sh", ".bash", ".slurm", ".sbatch", ".cmd")

#: The verdict classes of chapter 3's table (kltutor.trainers.core.classify): what each means and the section
#: that explains it. A verdict not listed links chapter 3's table of the libraries' own code.
VERDICTS = {
    "exact reverse-KL gradient": (
        "the expected gradient of KL(π‖π_ref), the term the objective names",
        "sec-placements-exact",
    ),
    "token-level k2 (biased for T > 1)": (
        "the gradient of ½ℓ² per token: exact for one token, biased on sequences (no cross-token terms)",
        "sec-placements-definitions",
    ),
    "per-token forward KL": (
        "the gradient of KL(π_ref‖π) per token at the policy's prefixes (k3 in the loss)",
        "sec-placements-definitions",
    ),
    "zero in expectation": ("k1 in the loss: no expected gradient, only noise", "sec-placements-definitions"),
    "other": (
        "none of the above: chapter 3's table gives its distance to the true gradient",
        "sec-placements-trainers",
    ),
}
STALE = ("stale", "the verdict on the second and later updates of one batch (off-policy)", "sec-placements-off-policy")
DEFAULT_VERDICT_SECTION = "sec-placements-trainers"
#: Sections for an inspector whose WARNING_CODES is a plain tuple (the old kltutor.inspect); kltutor.configcheck
#: names each warning's section itself (WARNING_CODES: code -> label).
OLD_WARNING_SECTIONS = {
    "two-kl-terms": "sec-practice-two-kls",
    "k1-in-loss": "sec-placements-exact",
    "unclamped-k3-bf16": "sec-estimators-stability",
    "length-rescaled-beta": "sec-practice-aggregation",
}


def inspector():
    """The inspector module under whichever name this copy of kltutor has. Only a subpackage (or module) that
    sits in this kltutor's own folder counts: an editable install elsewhere must not lend its newer one."""
    from pathlib import Path

    import kltutor

    roots = [Path(p) for p in getattr(kltutor, "__path__", [])]
    for name in INSPECTOR_NAMES:
        sub = name.split(".", 1)[1]
        if any((r / sub / "__init__.py").is_file() or (r / f"{sub}.py").is_file() for r in roots):
            return importlib.import_module(name)
    raise ModuleNotFoundError(f"no config inspector in this kltutor ({' or '.join(INSPECTOR_NAMES)})")


def _suffix(name: str) -> str:
    """The parser the file name asks for. Pasted text, or a file name without a known suffix, is read as YAML
    (JSON is YAML too), and the inspector reads it as a launch command when it looks like one."""
    lower = name.lower()
    for s in SUFFIXES:
        if lower.endswith(s):
            return s
    return ".yaml"


def _binary(text: str) -> bool:
    if "\x00" in text or "\ufffd" in text:
        return True
    control = sum(1 for c in text[:4096] if ord(c) < 32 and c not in "\t\n\r\f")
    return control > max(2, len(text[:4096]) // 100)


def _error(message: str, exit_code: int | None = 2, kind: str = "unreadable", mod=None) -> dict:
    return {
        "ok": False,
        "kind": kind,
        "message": message,
        "exit_code": exit_code,
        "meaning": EXIT_CODES.get(exit_code),
        "inspector": getattr(mod, "__name__", None),
    }


def check_dict(text: str, name: str = "pasted config", trainer: str | None = None) -> dict:
    """The page's result as a dict (see :func:`check`)."""
    if not isinstance(text, str):
        return _error("the input is not text", kind="input")
    if len(text) > MAX_CHARS:
        return _error(
            f"{name}: {len(text):,} characters is more than a trainer config ({MAX_CHARS:,} at most here); "
            "paste only the config file or the launch command",
            kind="input",
        )
    if not text.strip():
        return _error(
            f"{name}: empty: paste a TRL, verl or OpenRLHF config (YAML, JSON or a launch command)", kind="input"
        )
    if _binary(text):
        return _error(
            f"{name}: this looks like binary data, not a config in YAML, JSON or a command line", kind="input"
        )
    trainer = (trainer or "").strip().lower() or None
    try:
        mod = inspector()
    except Exception as e:  # the bundle is broken: say so in one line
        return _error(f"the config inspector could not be loaded ({type(e).__name__}: {e})", None, "internal")
    try:
        rep = mod.inspect_text(text, name, _suffix(name), trainer)
    except mod.ConfigError as e:
        return _error(str(e), mod=mod)
    except ModuleNotFoundError as e:
        return _error(
            f"{name}: this config's verdict needs {e.name!r}, which the in-browser inspector does not have; "
            f"run `python -m {mod.__name__} FILE` on your machine",
            None,
            "internal",
        )
    except RecursionError:
        return _error(f"{name}: nested too deeply to be a trainer config")
    except Exception as e:  # a bug in the inspector, not the reader's mistake: one line, never a traceback
        return _error(f"{name}: the inspector failed ({type(e).__name__}: {e}); please report it", None, "internal")
    d = rep.to_dict()
    return {
        "ok": True,
        "kind": "report",
        "report": d,
        "text": rep.format(),
        "exit_code": rep.exit_code,
        "meaning": EXIT_CODES[rep.exit_code],
        "inspector": mod.__name__,
    }


def check(text: str, name: str = "pasted config", trainer: str | None = None) -> str:
    """Inspect ``text`` (``name`` is shown in messages; its suffix, if any, picks the parser) and return JSON:
    ``{"ok": true, "report": {...}, "exit_code": 0|1, "meaning": ...}`` or ``{"ok": false, "message": ...}``."""
    try:
        out = check_dict(text, name, trainer)
    except Exception as e:  # last resort: the page must never show a traceback
        out = _error(f"unexpected failure ({type(e).__name__}: {e})", None, "internal")
    return json.dumps(out, default=str)


# --- the page's legend (written by scripts/book_site.py build, included by book/configcheck.md) ------------------


def warning_sections(mod=None) -> dict[str, str]:
    """Every warning code of the inspector and the label of the section that explains it."""
    codes = (mod or inspector()).WARNING_CODES
    if isinstance(codes, dict):
        return dict(codes)
    return {c: OLD_WARNING_SECTIONS.get(c, "sec-placements-inspector") for c in codes}


def stored_verdicts() -> list[str]:
    """Every verdict in the stored results of the libraries' KL code (kltutor/trainers/data/results.json)."""
    from kltutor import trainers

    found: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            v = x.get("verdict")
            if isinstance(v, str) and v not in found:
                found.append(v)
            for y in x.values():
                walk(y)
        elif isinstance(x, list):
            for y in x:
                walk(y)

    walk(trainers.load_results())
    return found


def legend() -> str:
    """The MyST table of every verdict and warning the report can show, each with a {ref} to its section (the
    page's script takes its links from this table, so a label that moves breaks the strict site build)."""
    rows = []
    for v in [*VERDICTS, *(v for v in stored_verdicts() if v not in VERDICTS)]:
        meaning, section = VERDICTS.get(v, ("see chapter 3's table", DEFAULT_VERDICT_SECTION))
        rows.append(("verdict", v, meaning, section))
    rows.append(("verdict", STALE[0], STALE[1], STALE[2]))
    rows += [
        ("warning", code, "the report says what it found", section) for code, section in warning_sections().items()
    ]
    lines = [
        "<!-- Generated by scripts/book_site.py build from scripts/configcheck_page.py and the inspector's"
        " WARNING_CODES; do not edit. -->",
        ":::{list-table}",
        ":header-rows: 1",
        ":class: cc-legend",
        "",
        "* - in the report",
        "  - what it is",
        "  - explained in",
    ]
    for kind, key, meaning, section in rows:
        lines += [f"* - `{key}`", f"  - {kind}{': ' + meaning if meaning else ''}", f"  - {{ref}}`{section}`"]
    return "\n".join([*lines, ":::", ""])
