"""kltutor: the companion package of the executable book *KL Divergence in RLHF*.

Every number and figure in the book is computed by a function in this package. Every module, with
the chapter that introduces it (:data:`MODULES` holds the same map; ``tests/test_readme_map.py``
checks that both list every module, and ``scripts/chapter_map.py`` writes the README's chapter map
from it):

- :mod:`kltutor.divergences`: exact divergences between distributions (chapter 1).
- :mod:`kltutor.toys`: small models with exact answers: :mod:`kltutor.toys.distributions` (chapter 1),
  :mod:`kltutor.toys.autoregressive` (chapter 3), :mod:`kltutor.toys.bandits` (chapter 4).
- :mod:`kltutor.estimators`: the k1, k2, k3 sample estimators of KL (chapter 2).
- :mod:`kltutor.gradients`: exact and Monte-Carlo gradients of KL placements (chapter 3).
- :mod:`kltutor.placements`: KL in the reward versus KL in the loss (chapter 3).
- :mod:`kltutor.trainers`: TRL, verl and OpenRLHF's own KL code run on the exact toy (chapter 3).
- :mod:`kltutor.configcheck`: the config inspector, the KL terms of a trainer's configuration file or launch
  script (chapter 3); :mod:`kltutor.inspect` is its deprecated alias, kept for one release.
- :mod:`kltutor.schedules`: beta controllers (chapter 4).
- :mod:`kltutor.preference`: the closed-form optimum, DPO and its kin (chapter 5).
- :mod:`kltutor.grpo`: group-relative advantages and the GRPO objective (chapter 5).
- :mod:`kltutor.overoptimization`: reward overoptimization along the KL axis (chapter 6).
- :mod:`kltutor.failures`: the failure modes of KL control, simulated exactly (chapter 7).
- :mod:`kltutor.checklist`: the engineering checklist as checks on a batch (chapter 7).
- :mod:`kltutor.practice`: KL in practice: sampler mismatch, aggregation, references (chapter 8).
- :mod:`kltutor.filters`: KL-like statistics as rejection filters, exactly on the toy (chapter 8).
- :mod:`kltutor.pitfalls`: k1 under a tempered sampler, dropout when scoring, ``kl_div`` misuses (chapter 8).
- :mod:`kltutor.papers`: published KL settings, each with the paper's own words (chapter 8).
- :mod:`kltutor.distillation`: on-policy distillation, the KL to a teacher as the objective (chapter 9).
- :mod:`kltutor.interview`: the question bank, the one source of question text (chapter 10).
- :mod:`kltutor.claims`: the claim ledger, the book's central claims with their conditions and checks (chapter 10).
- :mod:`kltutor.capstone`: GRPO on a transformers model with a selectable KL placement (chapter 11).

Used by every chapter:

- :mod:`kltutor.book`: setup, glue, number formats and tables for the chapters.
- :mod:`kltutor.plotting`: the book's figures, one module per chapter topic.
- :mod:`kltutor.derivations`: every derivation of the book, checked by sympy, one module per chapter topic.
- :mod:`kltutor.exercises`: the checkers of the chapters' coding exercises, one module per chapter topic.
- :mod:`kltutor._validation`: the argument checks shared by the modules (one message per mistake).
"""

__version__ = "0.1.0"

#: Every module of the package and the label of the chapter that introduces it (``None``: every chapter).
MODULES: dict[str, str | None] = {
    "divergences": "ch-fundamentals",
    "toys.distributions": "ch-fundamentals",
    "estimators": "ch-estimators",
    "gradients": "ch-placements",
    "placements": "ch-placements",
    "toys.autoregressive": "ch-placements",
    "trainers": "ch-placements",
    "configcheck": "ch-placements",
    "inspect": "ch-placements",  # the deprecated alias of configcheck, kept for one release
    "schedules": "ch-schedules",
    "toys.bandits": "ch-schedules",
    "preference": "ch-preference",
    "grpo": "ch-preference",
    "overoptimization": "ch-overoptimization",
    "failures": "ch-failures",
    "checklist": "ch-failures",
    "practice": "ch-practice",
    "filters": "ch-practice",
    "pitfalls": "ch-practice",
    "papers": "ch-practice",
    "distillation": "ch-distillation",
    "interview": "ch-interview",
    "claims": "ch-interview",
    "capstone": "ch-capstone",
    "book": None,
    "plotting": None,
    "derivations": None,
    "exercises": None,
    "_validation": None,
}

__all__ = ["__version__", "MODULES"]
