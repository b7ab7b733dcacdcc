"""The report the config inspector returns, and the checks of values every reader shares.

:class:`Report` holds the KL terms a configuration turns on (:class:`KLTerm`, each with the verdict that
:mod:`kltutor.trainers` measured with the library's own code on chapter 3's toy), the warnings
(:class:`Finding`, codes in :data:`WARNING_CODES`) and notes, and which values came from the file and which
were assumed from the library's defaults. :class:`Values` reads a field and records where its value came
from. Pure Python (json only): the in-browser page runs this under Pyodide.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kltutor.configcheck.shell import show, unresolved

__all__ = ["ConfigError", "KLTerm", "Finding", "Report", "Values", "WARNING_CODES", "kl_related"]

#: Every warning code, with the book section that explains it.
WARNING_CODES = {
    "two-kl-terms": "sec-practice-two-kls",
    "k1-in-loss": "sec-placements-exact",
    "beta-zero-with-reference": "sec-placements-inspector",
    "ratio-with-sequence-is": "sec-practice-sequence-ratio",
    "unclamped-k3-bf16": "sec-estimators-stability",
    "length-rescaled-beta": "sec-practice-aggregation",
    "std-rescaled-beta": "sec-placements-inspector",
    "adaptive-from-zero": "sec-placements-inspector",
    "unknown-kl-field": "sec-placements-inspector",
    "unresolved-kl-field": "sec-placements-inspector",
    "length-biased-filter": "sec-practice-filters",
    "one-sided-filter": "sec-practice-filters",
}


class ConfigError(ValueError):
    """A configuration the inspector cannot read; the message is one line naming the file (and field)."""


@dataclass
class KLTerm:
    placement: str  # "reward" or "loss"
    estimator: str  # k1, k2, k3, abs (+ for verl's straight-through variants)
    level: str  # "token" or "sequence"
    beta: float
    controller: str
    correction: str
    fields: str  # the config fields that turn it on
    setting: str | None = None  # the kltutor.trainers setting id whose verdict applies
    verdict: str | None = None
    bias_norm: float | None = None
    stale: dict | None = None  # verdict on a stale batch, when the config updates several times per batch
    source: str = ""  # where the verdict comes from


@dataclass
class Finding:
    code: str
    message: str
    section: str = ""  # the book label that explains it

    def __post_init__(self):
        if not self.section:
            self.section = WARNING_CODES.get(self.code, "")


@dataclass
class Report:
    file: str
    library: str
    trainer: str
    checked_against: str  # library version whose code gave the verdicts
    terms: list[KLTerm] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    release: str = ""  # what the file says about the release it was written for
    from_file: dict[str, str] = field(default_factory=dict)  # fields the analysis read, as the file sets them
    defaults: dict[str, str] = field(default_factory=dict)  # fields the analysis read, at the library's default

    @property
    def exit_code(self) -> int:
        return 1 if self.warnings else 0

    def warn(self, code: str, message: str) -> None:
        if code not in WARNING_CODES:  # pragma: no cover - a programming error
            raise KeyError(code)
        self.warnings.append(Finding(code, message))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d

    def format(self) -> str:
        lines = [f"{self.file}: {self.library} {self.trainer} (verdicts from {self.checked_against})"]
        if self.release:
            lines.append(f"release: {self.release}")
        if not self.terms:
            lines.append("KL terms: none")
        for i, t in enumerate(self.terms, 1):
            lines.append(
                f"KL term {i}: {t.estimator} in the {t.placement}, {t.level} level, beta = {t.beta:g}, "
                f"controller: {t.controller}; correction: {t.correction}"
            )
            lines.append(f"  set by: {t.fields}")
            if t.verdict:
                b = "< 1e-6" if t.bias_norm < 1e-6 else f"= {t.bias_norm:.3f}"
                lines.append(
                    f"  exact expected gradient (chapter 3 toy): {t.verdict}, |bias| {b}"
                    + (f"  ({t.source})" if t.source else "")
                )
            if t.stale:
                lines.append(
                    f"  on a stale batch (2nd+ update): {t.stale['verdict']}, |bias| = {t.stale['bias_norm']:.3f}"
                )
        if self.from_file:
            lines.append("read from the file: " + ", ".join(f"{k}={v}" for k, v in self.from_file.items()))
        if self.defaults:
            lines.append("assumed (library defaults): " + ", ".join(f"{k}={v}" for k, v in self.defaults.items()))
        for n in self.notes:
            lines.append(f"note: {n}")
        for w in self.warnings:
            lines.append(f"warning [{w.code}]: {w.message}" + (f" (see {w.section})" if w.section else ""))
        lines.append("clean" if not self.warnings else f"{len(self.warnings)} warning(s)")
        return "\n".join(lines)


# --- values --------------------------------------------------------------------------------------------------

_KL_WORDS = re.compile(r"(^|[._\-])(kl|ref|reference|beta|init_kl_coef|kl_coef)([._\-]|$)|(^|[._\-])kl_|_kl($|[._])")


def kl_related(name: str) -> bool:
    """Whether a field's name speaks of the KL term or the reference model (then an unknown one is a warning).

    verl's ``actor_rollout_ref`` section name itself does not count (its ``ref`` subsection does).
    """
    return bool(_KL_WORDS.search(name.lstrip("-+").lower().replace("actor_rollout_ref", "")))


def _text(v) -> str:
    return show(v) if isinstance(v, str) else json.dumps(v)


class Values:
    """Reads fields of a parsed config and records, on the report, whether the file or a default gave each."""

    def __init__(self, data: dict, defaults: dict, name: str, rep: Report, label=lambda k: k):
        self.data, self.defaults, self.name, self.rep, self.label = data, defaults, name, rep, label

    def has(self, key) -> bool:
        return key in self.data and not unresolved(self.data[key])

    def get(self, key):
        shown = self.label(key)
        if key in self.data:
            v = self.data[key]
            if not unresolved(v):
                self.rep.from_file[shown] = _text(v)
                return v
            d = self.defaults.get(key)
            self.rep.warn(
                "unresolved-kl-field",
                f"{shown} = {show(v)} could not be resolved from the file; the report assumes the default {d!r}",
            )
            self.rep.defaults[shown] = _text(d)
            return d
        d = self.defaults.get(key)
        self.rep.defaults[shown] = _text(d)
        return d

    # typed reads
    def bool(self, key) -> bool:
        return as_bool(self.get(key), self.name, self.label(key))

    def num(self, key, allow_none=False) -> float | None:
        return as_num(self.get(key), self.name, self.label(key), allow_none)

    def choice(self, key, options):
        return as_choice(self.get(key), options, self.name, self.label(key))


def as_bool(v, name, key) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ConfigError(f"{name}: field {key}: expected true or false, got {show(v)!r}")


def as_num(v, name, key, allow_none=False) -> float | None:
    if v is None and allow_none:
        return None
    if isinstance(v, str) and v.strip().lower() in ("null", "none", "~") and allow_none:
        return None
    if isinstance(v, bool) or v is None:
        raise ConfigError(f"{name}: field {key}: expected a number, got {v!r}")
    try:
        x = float(v) if isinstance(v, (int, float)) else float(str(v).strip())
    except ValueError:
        raise ConfigError(f"{name}: field {key}: expected a number, got {show(v)!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{name}: field {key}: must be a finite number, got {show(v)!r}")
    return x


def as_choice(v, options, name, key):
    if isinstance(v, str):
        v = v.strip()
    if v not in options:
        raise ConfigError(f"{name}: field {key}: unknown value {show(v)!r} (accepted: {', '.join(map(str, options))})")
    return v


def unknown_fields(rep: Report, unknown: list[str], where: str, older: dict | None = None) -> None:
    """Notes for fields the inspector does not know; a warning for each whose name speaks of the KL/reference."""
    if not unknown:
        return
    older = older or {}
    old = [k for k in unknown if k in older]
    new = [k for k in unknown if k not in older]
    if old:
        rels = sorted({older[k] for k in old})
        rep.note(
            f"{len(old)} field(s) of older releases ({', '.join(rels)}), not read: "
            + ", ".join(old[:6])
            + (f" and {len(old) - 6} more" if len(old) > 6 else "")
        )
    plain = [k for k in new if not kl_related(k)]
    if plain:
        rep.note(
            f"{len(plain)} field(s) not in {where}, not read (none touches the KL or the reference by name): "
            + ", ".join(plain[:6])
            + (f" and {len(plain) - 6} more" if len(plain) > 6 else "")
        )
    for k in new:
        if kl_related(k):
            rep.warn(
                "unknown-kl-field",
                f"{k} is not in {where} and its name speaks of the KL or the reference: the report ignores it; "
                "check what it does in the release you run",
            )


# --- verdicts ------------------------------------------------------------------------------------------------

_EXACT_PATH = Path(__file__).with_name("data") / "exact_reference.json"


def verdict(term: KLTerm, stale: bool) -> KLTerm:
    """Fill in the verdict of ``term.setting`` from the stored trainer results (no torch needed)."""
    from kltutor import trainers

    try:
        r = trainers.setting(term.setting, trainers.load_results())
    except KeyError:  # pragma: no cover - every setting a reader names is stored; a guard for new readers
        raise ConfigError(f"no stored verdict for {term.setting!r}") from None
    term.verdict = r["on_policy"]["verdict"]
    term.bias_norm = r["on_policy"]["bias_norm"]
    if stale and r.get("stale"):
        term.stale = {"verdict": r["stale"]["verdict"], "bias_norm": r["stale"]["bias_norm"]}
    return term


def exact_reference(term: KLTerm, estimator: str) -> KLTerm:
    """The verdict of an estimator in the reward with the return-to-go, from kltutor's own exact gradients
    (stored in ``data/exact_reference.json``; ``tests/test_configcheck.py`` recomputes it with torch)."""
    stored = json.loads(_EXACT_PATH.read_text())[f"{estimator}-in-reward"]
    term.verdict, term.bias_norm = stored["verdict"], stored["bias_norm"]
    return term


def compute_exact_reference() -> dict:
    """Recompute ``data/exact_reference.json`` (needs torch): verdict and |bias| of k1/k3 in the reward."""
    from kltutor import gradients as G
    from kltutor.trainers import core

    pi, ref, _, T = core.toy_models()
    g = G.exact_kl_gradients(pi, ref, T)
    out = {}
    for est in ("k1", "k3"):
        vec = g[f"{est}-in-reward"]
        v, _ = core.classify(vec, core.reference_gradients(pi, ref, T))
        out[f"{est}-in-reward"] = {"verdict": v, "bias_norm": round(float((vec - g["true"]).norm()), 10)}
    return out
