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
#: What the command line (``python -m kltutor.inspect FILE``) exits with, and what it means.
EXIT_CODES = {
    0: "clean: the config was read and no warning applies",
    1: "warnings: the config was read and at least one warning below applies",
    2: "unreadable: the inspector could not read the config (the message says where)",
}
INSPECTOR_NAMES = ("kltutor.configcheck", "kltutor.inspect")
SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".sh", ".cmd")


def inspector():
    """The inspector module under whichever name this version of kltutor has."""
    missing = []
    for name in INSPECTOR_NAMES:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name not in (name, *name.split(".")[:1]):
                raise
            missing.append(name)
    raise ModuleNotFoundError(f"no config inspector in this kltutor ({' or '.join(missing)})")


def _suffix(name: str) -> str:
    """The parser the file name asks for; pasted text ("") lets the inspector decide (command or YAML/JSON)."""
    lower = name.lower()
    for s in SUFFIXES:
        if lower.endswith(s):
            return s
    return ""


def _binary(text: str) -> bool:
    if "\x00" in text or "\ufffd" in text:
        return True
    control = sum(1 for c in text[:4096] if ord(c) < 32 and c not in "\t\n\r\f")
    return control > max(2, len(text[:4096]) // 100)


def _error(message: str, exit_code: int | None = 2, kind: str = "unreadable") -> dict:
    return {"ok": False, "kind": kind, "message": message, "exit_code": exit_code, "meaning": EXIT_CODES.get(exit_code)}


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
        return _error(str(e))
    except ModuleNotFoundError as e:
        return _error(
            f"{name}: this config's verdict needs {e.name!r}, which the in-browser inspector does not have; "
            "run `python -m kltutor.inspect FILE` on your machine",
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
