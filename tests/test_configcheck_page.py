"""The "Check your config" page's Python side (scripts/configcheck_page.py) under CPython, the bundle that
scripts/book_site.py packs for the browser, and the page's legend. The page itself, in Chromium, is tested in
tests/test_site_browser.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import book_site  # noqa: E402
import configcheck_page as page  # noqa: E402

CLEAN = "beta: 0.05\nnum_generations: 2\nnormalize_advantages: false\n"  # TRL RLOO: k1 in the reward, exact
DOUBLE = (
    "actor_rollout_ref:\n  actor:\n    use_kl_loss: true\n    kl_loss_type: low_var_kl\n    kl_loss_coef: 0.001\n"
    "    loss_agg_mode: seq-mean-token-sum\nalgorithm:\n  adv_estimator: gae\n  use_kl_in_reward: true\n"
    "  kl_penalty: kl\n  kl_ctrl:\n    type: fixed\n    kl_coef: 0.05\n"
)
UNREADABLE = "beta: [0.1\nloss_type: grpo\n"


def test_clean_config():
    out = json.loads(page.check(CLEAN))
    assert out["ok"] and out["exit_code"] == 0 and out["meaning"].startswith("clean")
    (term,) = out["report"]["terms"]
    assert (term["placement"], term["estimator"], term["verdict"]) == ("reward", "k1", "exact reverse-KL gradient")
    assert out["inspector"] in page.INSPECTOR_NAMES


def test_double_kl_config():
    out = json.loads(page.check(DOUBLE))
    assert out["ok"] and out["exit_code"] == 1 and out["meaning"].startswith("warnings")
    assert sorted(t["placement"] for t in out["report"]["terms"]) == ["loss", "reward"]
    assert "two-kl-terms" in {w["code"] for w in out["report"]["warnings"]}


@pytest.mark.parametrize(
    ("text", "name", "words"),
    [
        (UNREADABLE, "pasted config", ["bad YAML", "line 2"]),
        ("", "pasted config", ["empty"]),
        ("   \n\t\n", "pasted config", ["empty"]),
        ("x" * (page.MAX_CHARS + 1), "pasted config", ["more than a trainer config"]),
        ("\x7fELF\x02\x01\x01\x00\x00\x00" * 40, "upload.bin", ["binary"]),
        ("\x01\x02\x03\x04\x05 abc", "pasted config", ["binary"]),
        ("model:\n  name: llama\ntrainer:\n  epochs: 3\n", "pasted config", ["unknown library"]),
        ("python train.py --lr 1e-5 --epochs 3\n", "pasted config", ["unknown library"]),
        ("- a\n- b\n", "pasted config", ["expected a mapping"]),
        ("{}", "pasted config", ["pasted config: "]),
        ('{"beta": 0.1,', "cfg.json", ["bad JSON"]),
    ],
)
def test_bad_input_gives_one_clear_line(text, name, words):
    out = json.loads(page.check(text, name))
    assert not out["ok"] and out["kind"] in ("input", "unreadable"), out
    msg = out["message"]
    assert "\n" not in msg and "Traceback" not in msg
    for w in words:
        assert w in msg, (w, msg)
    assert out["exit_code"] == 2 and out["meaning"].startswith("unreadable")


def test_non_text_and_internal_failures_never_raise(monkeypatch):
    assert json.loads(page.check(None))["kind"] == "input"

    class Broken:
        __name__ = "broken"

        class ConfigError(Exception):
            pass

        @staticmethod
        def inspect_text(*a):
            raise KeyError("boom")

    monkeypatch.setattr(page, "inspector", lambda: Broken)
    out = json.loads(page.check(CLEAN))
    assert out["kind"] == "internal" and "KeyError" in out["message"] and out["exit_code"] is None


def test_file_name_picks_the_parser():
    assert page._suffix("run_grpo.SH") == ".sh" and page._suffix("cfg.json") == ".json"
    assert page._suffix("pasted config") == ".yaml"


def test_the_page_works_without_torch():
    """What Pyodide has: no torch. The glue, the inspector and every verdict of the three configs run."""
    code = (
        "import sys, json; sys.modules['torch'] = None; sys.path.insert(0, 'scripts'); import configcheck_page as p; "
        f"print(json.dumps([json.loads(p.check(t))['exit_code'] for t in {[CLEAN, DOUBLE, UNREADABLE]!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [0, 1, 2]


def test_bundle_holds_the_inspector_found_from_its_package():
    files = book_site.inspector_sources()
    inspectors = [n for n in page.INSPECTOR_NAMES if f"{n.replace('.', '/')}/__init__.py" in files]
    assert inspectors, f"no inspector package in the bundle: {sorted(files)}"
    assert "kltutor/__init__.py" in files
    assert any(f.endswith(".json") for f in files), "the inspector's data (field lists, verdicts) is missing"
    for arc, path in files.items():
        assert path.is_file() and arc.startswith("kltutor/")


def test_legend_names_every_verdict_and_warning():
    """Each verdict the stored results can give and each warning code has a row, with a link, in the legend
    that the site build writes for book/configcheck.md (the page's links come from it)."""
    text = page.legend()
    rows = dict(re.findall(r"^\* - `([^`]+)`\n  - .+\n  - \{ref\}`([\w-]+)`", text, re.M))
    want = set(page.stored_verdicts()) | set(page.warning_sections()) | {"stale"}
    assert want and want == set(rows), sorted(want ^ set(rows))
    assert set(page.VERDICTS) <= set(rows)
    assert "```{include} _configcheck_legend.md" in (ROOT / "book" / "configcheck.md").read_text()
    assert book_site.CONFIGCHECK_LEGEND.name == "_configcheck_legend.md"
