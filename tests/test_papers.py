"""kltutor.papers: every row complete, every quote sourced, and compare() against real inspector reports."""

import json

import pytest

from kltutor import papers
from kltutor.inspect import inspect_text

VERL_K3_LOSS = """
algorithm:
  use_kl_in_reward: false
actor_rollout_ref:
  actor:
    use_kl_loss: true
    kl_loss_coef: {beta}
    kl_loss_type: low_var_kl
"""


def _report(beta=0.001):
    return inspect_text(VERL_K3_LOSS.format(beta=beta), name="ppo.yaml").to_dict()


def test_every_row_complete_and_every_quote_sourced():
    assert papers.validate() == []
    data = papers.load()
    assert len(data["papers"]) >= 12
    for p in data["papers"]:
        for f in papers.FIELDS:
            cell = p[f]
            if not cell["value"].startswith("not stated"):
                assert cell["quote"] and cell["where"], (p["id"], f)
            if cell["quote"]:
                assert cell["where"] and p["arxiv"], (p["id"], f)


def test_validate_catches_gaps():
    data = json.loads(json.dumps(papers.load()))
    data["papers"][0]["beta"] = {"value": "0.1", "quote": None, "where": None}
    data["papers"][1]["arxiv"] = "abc"
    data["papers"][2]["level"]["where"] = ""
    problems = papers.validate(data)
    assert any("without the paper's quote" in x for x in problems)
    assert any("arXiv id" in x for x in problems)
    assert any("does not name where" in x for x in problems)


def test_index_contradiction_is_recorded_with_both_quotes():
    (c,) = [c for c in papers.load()["index_contradictions"] if c["paper"] == "deepseekmath"]
    assert "0.04" in c["paper_says"] and c["paper_says"] in papers.paper("deepseekmath")["beta"]["quote"]
    assert "0fbbe3b2bb0bd98730d5d223495cd7cb627f253d" in c["index"]


def test_compare_beta_and_no_kl_papers():
    r = _report(0.04)
    assert papers.compare(r, "deepseekmath") == []
    diffs = papers.compare(_report(0.001), "deepseekmath")
    assert len(diffs) == 1 and diffs[0].startswith("beta:") and "0.04" in diffs[0] and "Section 4.2" in diffs[0]
    (d,) = papers.compare(r, "dapo")
    assert "uses no KL term" in d and "Section 2.3" in d
    assert papers.compare({"terms": []}, "dapo") == []
    assert "this config has none" in papers.compare({"terms": []}, "deepseekmath")[0]


def test_compare_estimator_placement():
    diffs = papers.compare(_report(0.02), "instructgpt")
    assert {d.split(":")[0] for d in diffs} == {"estimator", "placement"}
    (d,) = papers.compare(_report(0.04), "deepseek-v3.2")
    assert "pi_theta/pi_old" in d
    assert papers.compare(_report(0.001), "deepseek-r1") == []


def test_table_has_every_field():
    t = papers.table(with_quotes=True)
    assert len(t) == len(papers.ids()) and all(f in t.columns for f in papers.FIELDS)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: papers.paper("nope"), KeyError, "no paper"),
        (lambda: papers.compare("not a report", "dapo"), ValueError, "inspector report"),
        (lambda: papers.compare({"terms": []}, "unknown"), KeyError, "known:"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_papers_page_is_up_to_date():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, str(root / "scripts" / "papers_page.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "book/published_kl_settings" in (root / "_toc.yml").read_text()
