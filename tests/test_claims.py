"""The claim ledger: every check passes, every restatement points at the claim's proof, and no
restatement contradicts a checked value or drops the condition under which a claim holds.

Restatements are the interview short answers (kltutor/interview.py), the cheat sheet, the notation
page, the package's docstrings and the chapters' prose. Each claim in kltutor.claims lists the
wrong versions that have appeared (``refuted``) and the conditions a sentence stating it must name
(``needs_condition``); the tests below scan every restatement for both.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from kltutor import claims, interview

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHEATSHEET = (BOOK / "cheatsheet.md").read_text()
INTERVIEW_CHAPTER = next(BOOK.glob("[0-9][0-9]_interview*.md")).read_text()
CHAPTERS = {
    m.group(1): path.read_text()
    for path in sorted(BOOK.glob("[0-9][0-9]_*.md"))
    if (m := re.search(r"^\((ch-[a-z]+)\)=\s*$", path.read_text(), re.M))
}


def _labels() -> set[str]:
    out: set[str] = set()
    for path in BOOK.glob("*.md"):
        out |= set(re.findall(r"^\(([A-Za-z0-9_-]+)\)=\s*$", path.read_text(), re.M))
    return out


LABELS = _labels()


# --------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("claim", claims.CLAIMS, ids=lambda c: c.id)
def test_claim_holds(claim):
    values = claims.verify(claim.id)
    assert values, "a check returns the values it checked"
    assert claim.statement.strip() and claim.condition.strip()


@pytest.mark.parametrize("claim", claims.CLAIMS, ids=lambda c: c.id)
def test_claim_source_is_a_section_of_the_book(claim):
    assert claim.source in LABELS, f"{claim.id}: no ({claim.source})= label in book/"
    assert not claim.source.startswith(("sec-cheatsheet", "claims")), "the proof lives in a chapter"


def test_claim_ids_and_groups():
    ids = [c.id for c in claims.CLAIMS]
    assert len(ids) == len(set(ids)) >= 40
    assert {c.group for c in claims.CLAIMS} == set(claims.GROUPS)
    with pytest.raises(KeyError, match="no claim"):
        claims.get("k4-is-best")


def test_a_failing_check_raises():
    bad = claims.Claim("x", "Estimators", "s", "c", "sec-estimators-k3", lambda: claims._require(False, "no"))
    with pytest.raises(claims.ClaimError, match="no"):
        bad.check()


# --------------------------------------------------------------------------- one source per claim
@pytest.mark.parametrize("q", interview.questions(), ids=lambda q: q.id)
def test_every_short_answer_names_its_claims(q):
    assert q.claims, (
        f"{q.id}: the short answer must name the claims it restates (Question(..., claims=(...))) "
        "so that it points at the sections that prove them"
    )
    for cid in q.claims:
        claims.get(cid)


def _answer_block(q) -> str:
    """The full answer of ``q`` in the chapter that answers it (``q.answered_in``): from its label to the next
    label or section heading."""
    parts = re.split(r"^\(([A-Za-z0-9_-]+)\)=\s*$", CHAPTERS[q.answered_in], flags=re.M)
    blocks = dict(zip(parts[1::2], parts[2::2]))
    assert q.label in blocks, f"{q.id}: no ({q.label})= label in the chapter {q.answered_in}"
    return re.split(r"^## ", blocks[q.label], flags=re.M)[0]


@pytest.mark.parametrize("q", interview.questions(), ids=lambda q: q.id)
def test_interview_answer_links_its_proofs(q):
    block = _answer_block(q)
    checked = re.search(r"^\*\*Checked in:\*\*(.*)$", block, re.M)
    assert checked, f"{q.id}: the full answer needs a '**Checked in:**' line linking {q.proofs}"
    linked = set(re.findall(r"\{ref\}`(?:[^`<]*<)?([A-Za-z0-9_-]+)>?`", checked.group(1)))
    missing = [p for p in q.proofs if p not in linked]
    assert not missing, f"{q.id}: '**Checked in:**' must link {missing} (the sources of its claims)"
    assert "claims" in linked, f"{q.id}: '**Checked in:**' must also link the claim ledger"


def _cheatsheet_lines() -> list[str]:
    """Table rows (headers excluded) and bullets (with their continuation lines) of the cheat sheet."""
    out: list[str] = []
    for line in CHEATSHEET.splitlines():
        s = line.strip()
        if s.startswith("|"):
            header = (
                s.startswith("| |")
                or re.fullmatch(r"\|[\s|:-]+\|", s)
                or re.match(r"\|\s*(placement|estimator|name)\s*\|", s)
            )
            if not header:
                out.append(s)
        elif s.startswith("- "):
            out.append(s)
        elif line.startswith("  ") and s and out and out[-1].startswith("- "):
            out[-1] += " " + s
    return out


@pytest.mark.parametrize("line", _cheatsheet_lines(), ids=lambda s: s[:40])
def test_every_cheatsheet_line_points_at_a_proof(line):
    refs = re.findall(r"\{ref\}`(?:[^`<]*<)?([A-Za-z0-9_-]+)>?`", line)
    proofs = [r for r in refs if r in LABELS and not r.startswith(("sec-cheatsheet", "sec-interview-q"))]
    assert proofs, f"cheat-sheet line without a link to the section that proves it: {line}"


@pytest.mark.parametrize("claim", [c for c in claims.CLAIMS if c.cheatsheet], ids=lambda c: c.id)
def test_cheatsheet_links_the_claims_it_restates(claim):
    assert re.search(rf"\{{ref\}}`(?:[^`<]*<)?{re.escape(claim.source)}>?`", CHEATSHEET), (
        f"the cheat sheet restates {claim.id} but does not link its proof {claim.source}"
    )


# --------------------------------------------------------------------------- restatements agree with the checks
def _strip_code_and_quotes(md: str) -> str:
    md = re.sub(r"^```.*?^```", " ", md, flags=re.M | re.S)  # code cells and code blocks
    md = re.sub(r"\{glue:[a-z]+\}`[^`]*`", "X", md)
    md = re.sub(r"\"[^\"\n]*\"|“[^”]*”", " ", md)  # quoted (usually refuted) claims
    return md


def _docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text())
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return "\n\n".join(d for n in nodes if (d := ast.get_docstring(n)))


def _restatements() -> dict[str, str]:
    texts = {f"{q.id} short answer": q.answer for q in interview.questions()}
    texts["cheat sheet"] = CHEATSHEET
    texts["notation page"] = (BOOK / "notation.md").read_text()
    for path in sorted((ROOT / "kltutor").rglob("*.py")):
        if "claims" in path.relative_to(ROOT).parts or path.name == "interview.py":
            continue  # the ledger itself; the bank's answers are above
        texts[f"{path.relative_to(ROOT)} docstrings"] = _docstrings(path)
    for path in sorted(BOOK.glob("[0-9][0-9]_*.md")):
        texts[path.name] = _strip_code_and_quotes(path.read_text())
    return texts


RESTATEMENTS = _restatements()


def _sentences(text: str) -> list[str]:
    text = re.sub(r"\b(e\.g|i\.e|cf|vs|et al)\.", r"\1", text)
    return [s for s in re.split(r"(?<=[.!?])\s+|\n\s*\n|\n\s*[-*] |\n(?=\s*\|)|\n(?=\s*\d+\. )", text) if s.strip()]


def _refuted_hits(claim, texts: dict[str, str]) -> list[str]:
    hits = []
    for where, text in texts.items():
        text = re.sub(r"\s+", " ", text)
        for pat in claim.refuted:
            for m in re.finditer(pat, text):
                hits.append(f"{where}: ...{text[max(0, m.start() - 60) : m.end() + 40]}...")
    return hits


def _condition_hits(claim, texts: dict[str, str]) -> list[str]:
    hits = []
    for where, text in texts.items():
        for sentence in _sentences(text):
            for trigger, condition in claim.needs_condition:
                if re.search(trigger, sentence) and not re.search(condition, sentence):
                    hits.append(f"{where}: {sentence.strip()[:300]}")
    return hits


@pytest.mark.parametrize("claim", [c for c in claims.CLAIMS if c.refuted], ids=lambda c: c.id)
def test_no_restatement_repeats_a_refuted_version(claim):
    hits = _refuted_hits(claim, RESTATEMENTS)
    assert not hits, f"{claim.id} was found wrong in this form ({claim.statement}):\n" + "\n".join(hits)


@pytest.mark.parametrize("claim", [c for c in claims.CLAIMS if c.needs_condition], ids=lambda c: c.id)
def test_restatements_state_the_condition(claim):
    hits = _condition_hits(claim, RESTATEMENTS)
    assert not hits, (
        f"{claim.id} holds only when: {claim.condition}. These sentences state it without "
        f"the condition (state it, or link the proof):\n" + "\n".join(hits)
    )


# The wrong or over-general sentences the book once printed (issue 14): every scanner must catch its own.
ONCE_PRINTED = {
    "k2-not-f-divergence": "E[k2] = E[l^2]/2 is the f-divergence with f(u) = (log u)^2/2, not the KL.",
    "simpo-length": "What keeps it in check is the length normalisation, which removes DPO's incentive to favour long answers.",
    "grpo-half-split-advantage": "For a group split half and half, the normalised advantages are $\\pm\\sqrt{G/(4(G-1))}$ whatever the gap.",
    "bon-kl": "Best-of-$n$: $\\KL\\le\\log n-\\frac{n-1}{n}$, equality only without ties.",
    "k3-float32": "Compute k3 in float32 with `expm1`; naive fp16 overflows.",
    "k2-in-loss": "k1 in the reward or k2 in the loss give the reverse-KL gradient.",
    "k3-in-loss-forward": "And on-policy k3-in-loss already has the forward-KL gradient in expectation (Q10).",
    "offpolicy-prefix-weight": "Off-policy samples need an importance weight $\\pi_\\theta/\\pi_\\text{old}$ on each term.",
    "dpo-rl-same-optimum": "Same objective and fixed point, different data: RL samples on-policy; DPO learns from a fixed set.",
    "kto-reference-point": "KTO keeps the reference and uses a batch KL estimate as its reference point.",
    "grpo-precision": "That number needs three conditions it does not state: the unbiased std, no eps, and float64.",
    "adaptive-beta-integral": "Forgetting the clip, which keeps one noisy batch from moving beta by more than 20%.",
    "k3-variance": "k3 has lower variance than k1 and is unbiased.",
    "reverse-kl-zero-forcing": "It is mode-seeking: the policy may drop modes of the reference.",
    # chapter 8, found by the ledger pass (the conditions are now stated where the claims are made)
    "negative-kl-causes": "A logged KL is a batch mean of k1. It can be negative for six different reasons.",
    "grpo-loss-zero-at-start": "The GRPO loss is β × KL term at the first update of every batch.",
    "sequence-mean-length-bias": "$\\beta/L$ per nat of sequence KL; only the per-sequence mean biases the fixed point by length.",
    # the inspector's unclamped-k3-bf16 text before TRL 1.16's fused LM head was read
    "trl-fused-lm-head-precision": "GRPOTrainer computes k3 without clamping, here from bf16 log-probabilities (bf16 is on).",
    # chapter 3, before the tempered-sampler section of chapter 8 showed the condition matters
    "k1-in-loss-zero": "Its gradient is the score, whose expectation is zero: **k1 in the loss does nothing in expectation**.",
    "inverted-k3-chi2": "Still non-negative, so nothing looks wrong on a dashboard, but its mean is $\\chi^2(\\pi\\|\\pi_\\text{ref})-\\mathrm{KL}$.",
}


@pytest.mark.parametrize("cid", sorted(ONCE_PRINTED))
def test_scanners_catch_what_was_once_printed(cid):
    claim = claims.get(cid)
    text = {"once printed": ONCE_PRINTED[cid]}
    assert _refuted_hits(claim, text) or _condition_hits(claim, text), f"{cid}'s patterns miss: {ONCE_PRINTED[cid]}"


# Wrong versions that are common in discussions of KL in practice: the scanners must catch them too.
COMMON_WRONG = [
    ("sampler-k1-mismatch", "The logged KL is the KL of the objective."),
    ("sampler-k1-mismatch", "With vLLM rollouts the logged k1 estimates KL(pi||pi_ref)."),
    ("tis-bias-variance", "A per-token importance ratio corrects the off-policy sequence gradient."),
    ("beta-zero-diversity", "With a verifiable reward, beta = 0 loses nothing."),
    ("beta-zero-diversity", "DAPO drops the KL term and the reference model, and loses nothing."),
    ("two-kl-terms", "KL in the reward and in the loss is the same as a single penalty with beta_R + beta_L."),
    ("reset-reference-tilts", "A reset reference bounds the KL to the initial model."),
    ("geomean-ratio-kl", "Multiplying the KL term by GSPO's geometric-mean ratio corrects it off-policy."),
    ("distill-discount-zero-bias", "Using each token's own log-ratio as its advantage gives the exact gradient."),
    ("distill-discount-zero-bias", "With a discount of zero the per-token reward is unbiased for the sequence KL."),
    ("distill-forward-vs-reverse", "On-policy distillation makes the student mode-seeking."),
    ("distill-forgetting-kl", "A small KL to the base model on the new task means little forgetting."),
    ("distill-estimators-topk", "A top-k truncation of the teacher's distribution is an unbiased estimate."),
]


@pytest.mark.parametrize("cid,sentence", COMMON_WRONG, ids=[f"{c}:{i}" for i, (c, _) in enumerate(COMMON_WRONG)])
def test_scanners_catch_common_wrong_versions(cid, sentence):
    claim = claims.get(cid)
    text = {"common": sentence}
    assert _refuted_hits(claim, text) or _condition_hits(claim, text), f"{cid}'s patterns miss: {sentence}"


# Numbers typed in restatements that a check computes: (pattern with one group, claim, value key, tolerance).
NUMBERS = [
    (r"(0\.8\d+)\S*\s+(?:for|at)\s+\S*G\s*=\s*4", "grpo-half-split-advantage", "G=4, unbiased std", 5e-4),
    (r"about (\d+)% of the peak gain", "gao-peak-budget", "gain kept at KL*/2, best-of-n form", 0.01),
    (r"keeps? about (\d+)% or", "gao-peak-budget", "gain kept at KL*/2, best-of-n form", 0.01),
    (r"\\ell\s*\\approx\s*(-11\.\d+)", "k3-fp16-overflow", "float16 overflow threshold", 0.01),
]


def _as_fraction(raw: str, reference: float) -> float:
    x = float(raw)
    return x / 100 if x > 1 and reference <= 1 else x


@pytest.mark.parametrize("pattern,cid,key,tol", NUMBERS, ids=[n[1] + ":" + n[2] for n in NUMBERS])
def test_typed_numbers_agree_with_the_checks(pattern, cid, key, tol):
    value = claims.verify(cid)[key]
    seen = 0
    for where, text in RESTATEMENTS.items():
        for m in re.finditer(pattern, text):
            seen += 1
            got = _as_fraction(m.group(1), abs(value))
            assert abs(got - value) <= tol, f"{where} says {m.group(0)!r}; {cid} computes {key} = {value:.6g}"
    assert seen, f"pattern {pattern!r} matches nothing any more: update or remove it"


# --------------------------------------------------------------------------- the ledger page
def _ledger_module():
    spec = importlib.util.spec_from_file_location("ledger", ROOT / "scripts" / "claims.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # re-runs every check of the ledger (about 10 s on two cores)
def test_ledger_page_is_up_to_date():
    page = (BOOK / "claims.md").read_text()
    assert _ledger_module().render() == page, "book/claims.md is out of date: run python scripts/claims.py"


def test_ledger_lists_every_claim_with_its_proof():
    page = (BOOK / "claims.md").read_text()
    for c in claims.CLAIMS:
        assert f"`{c.id}`" in page and f"{{ref}}`{c.source}`" in page
    assert "book/claims" in (ROOT / "_toc.yml").read_text(), "the ledger is in _toc.yml"
