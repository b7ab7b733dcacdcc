"""The question bank, the quiz, the interview chapter's coverage of the bank and the self-test page
(the derivations the interview chapter cites run in tests/test_derivations.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kltutor import interview

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = (ROOT / "book" / "10_interview_questions.md").read_text()


# --------------------------------------------------------------------------- the bank
def test_bank_has_its_questions_in_three_tiers():
    qs = interview.questions()
    assert [q.id for q in qs] == [f"Q{i}" for i in range(1, 45)]
    counts = {t: len(interview.questions(tier=t)) for t in interview.TIERS}
    assert counts == {"must-know": 15, "advanced": 19, "top-lab": 10}
    assert [q.id for q in qs if q.answered_in == "ch-practice"] == [f"Q{i}" for i in range(26, 39)]
    assert [q.id for q in qs if q.answered_in == "ch-distillation"] == [f"Q{i}" for i in range(39, 45)]
    for q in qs:
        assert q.question.strip() and q.answer.strip() and q.pitfalls
        assert set(q.chapters) <= set(interview.CHAPTER_LABELS)


def test_questions_filter_and_lookup():
    assert [q.id for q in interview.questions(chapter="ch-schedules")] == ["Q6", "Q17", "Q18", "Q25"]
    assert interview.get("q13").id == "Q13"
    with pytest.raises(KeyError):
        interview.get("Q999")
    with pytest.raises(ValueError, match="unknown tier"):
        interview.questions(tier="easy")
    with pytest.raises(ValueError, match="unknown chapter"):
        interview.questions(chapter="ch-nope")


# --------------------------------------------------------------------------- the quiz
def test_quiz_is_deterministic_given_a_seed():
    a, b = interview.quiz(n=7, seed=3), interview.quiz(n=7, seed=3)
    assert a.ids == b.ids and str(a) == str(b)
    assert len(set(a.ids)) == 7, "drawn without replacement"
    others = {tuple(interview.quiz(n=7, seed=s).ids) for s in range(10)}
    assert len(others) > 1, "different seeds must give different quizzes"


def test_quiz_question_view_has_no_answers():
    quiz = interview.quiz(n=len(interview.questions()), seed=0)
    shown = str(quiz)
    for q in interview.questions():
        assert q.question in shown
        assert q.answer not in shown
        assert not any(p in shown for p in q.pitfalls)
    assert "Answer" not in shown


def test_quiz_reveals_on_demand():
    quiz = interview.quiz(n=3, seed=5)
    first = interview.get(quiz.ids[0])
    text = quiz.reveal(0)
    assert first.answer in text and all(p in text for p in first.pitfalls)
    with pytest.raises(IndexError):
        quiz.reveal(3)


def test_quiz_by_tier_and_bad_input():
    assert all(interview.get(i).tier == "top-lab" for i in interview.quiz(n=5, seed=1, tier="top-lab").ids)
    with pytest.raises(ValueError, match="exceeds"):
        interview.quiz(n=len(interview.questions(tier="top-lab")) + 1, tier="top-lab")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            interview.quiz(n=bad)


# --------------------------------------------------------------------------- the interview chapter covers the bank
def _blocks() -> dict[str, str]:
    """The text of the interview chapter from each question's label to the next label or section."""
    parts = re.split(r"^\((sec-interview-q\d+)\)=\s*$", CHAPTER, flags=re.M)
    out = {}
    for label, body in zip(parts[1::2], parts[2::2]):
        out[label] = re.split(r"^\(sec-interview-tier\d\)=|^## ", body, flags=re.M)[0]
    return out


ANSWERED_WHERE_COMPUTED = {  # questions answered in the chapter that computes their numbers
    "ch-practice": (ROOT / "book" / "08_kl_in_practice.md").read_text(),
    "ch-distillation": (ROOT / "book" / "09_distillation.md").read_text(),
}


@pytest.mark.parametrize("q", interview.questions(), ids=lambda q: q.id)
def test_every_question_is_answered_in_the_interview_chapter(q):
    if q.answered_in in ANSWERED_WHERE_COMPUTED:  # answered where its numbers are computed
        text = ANSWERED_WHERE_COMPUTED[q.answered_in]
        block = text.split(f"({q.label})=", 1)[1] if f"({q.label})=" in text else ""
        assert block, f"chapter {q.answered_in} has no ({q.label})= block"
        block = re.split(r"^\(sec-", block, flags=re.M)[0]
        assert re.search(rf"^### {q.id}\. \S", block, re.M), f"missing heading '### {q.id}.'"
        assert ":::{dropdown} What to say in an interview" in block, "the answer must be folded in a dropdown"
        assert "{ref}`" in block or "{glue:text}`" in block, "the answer must point at the chapter's numbers"
        return
    blocks = _blocks()
    assert q.label in blocks, f"the interview chapter has no ({q.label})= block"
    block = blocks[q.label]
    assert re.search(rf"^### {q.id}\. \S", block, re.M), f"missing heading '### {q.id}.'"
    assert ":::{dropdown} Answer" in block, "the answer must be folded in a dropdown"
    answer = block.split(":::{dropdown} Answer", 1)[1]
    assert "\n:::" in answer, "the dropdown must be closed"
    assert "**Pitfalls.**" in answer, "the answer must list the common pitfalls"
    assert "{ref}`" in answer, "the answer must link into the book"


CHAPTER_FILES = {
    label: path
    for path in sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))
    for label in re.findall(r"^\((ch-[a-z-]+)\)=", path.read_text(), re.M)
}


@pytest.mark.parametrize("q", interview.questions(), ids=lambda q: q.id)
def test_full_answer_heading_is_the_bank_text(q):
    """The bank is the one source of question text: a full answer's heading quotes it exactly."""
    text = CHAPTER_FILES[q.answered_in].read_text()
    headings = re.findall(rf"^### {q.id}\. (.+)$", text, re.M)
    assert headings == [q.question], f"{q.id}: heading {headings} differs from the bank's {q.question!r}"


@pytest.mark.parametrize("path", sorted(CHAPTER_FILES.values()), ids=lambda p: p.stem)
def test_interview_check_quotes_the_bank(path):
    """Numbered questions of a chapter's Interview check are bank questions, quoted exactly, that the bank
    lists for this chapter (docs/CONVENTIONS.md); unnumbered follow-ups are the chapter's own."""
    text = path.read_text()
    label = re.search(r"^\((ch-[a-z-]+)\)=", text, re.M).group(1)
    section = text.split("\n## Interview check", 1)[1].split("\n## ", 1)[0]
    assert not re.search(r"^\d+\. ", section, re.M), "questions are bold paragraphs, not a numbered list"
    for qid, quoted in re.findall(r"^\*\*(Q\d+)\. (.+?)\*\*\s*$", section, re.M | re.S):
        q = interview.get(qid)
        assert " ".join(quoted.split()) == q.question, f"{qid}: {quoted!r} is not the bank's {q.question!r}"
        assert label in q.chapters, f"{qid} is asked in {label}, but the bank does not list that chapter"


def test_interview_chapter_tiers_follow_the_bank():
    order = [m.group(1) for m in re.finditer(r"^### (Q\d+)\.", CHAPTER, re.M)]
    assert order == [q.id for q in interview.questions() if q.answered_in == "ch-interview"]
    for tier_no, tier in enumerate(interview.TIERS, start=1):
        heading = CHAPTER.index(f"(sec-interview-tier{tier_no})=")
        first = [q for q in interview.questions(tier=tier) if q.answered_in == "ch-interview"][0]
        assert heading < CHAPTER.index(f"({first.label})=")


# --------------------------------------------------------------------------- self-test page
def test_self_test_page_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "self_test.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_self_test_page_lists_questions_only():
    page = (ROOT / "book" / "self_test.md").read_text()
    for q in interview.questions():
        assert q.question in page and f"<{q.label}>" in page
        assert q.answer not in page
