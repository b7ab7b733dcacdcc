"""kltutor: the companion package of the executable book *KL Divergence in RLHF*.

Every number and figure in the book is computed by a function in this package. Every module, with
the chapter that introduces it (:data:`MODULES` holds the same map; ``tests/test_readme_map.py``
checks that both list every module, and ``scripts/chapter_map.py`` writes the README's chapter map
from it):

- :mod:`kltutor.divergences`: exact divergences between distributions (``ch-fundamentals``).
- :mod:`kltutor.toys`: small models with exact answers: :mod:`kltutor.toys.distributions` (``ch-fundamentals``),
  :mod:`kltutor.toys.autoregressive` (``ch-placements``), :mod:`kltutor.toys.bandits` (``ch-schedules``).
- :mod:`kltutor.estimators`: the k1, k2, k3 sample estimators of KL (``ch-estimators``).
- :mod:`kltutor.gradients`: exact and Monte-Carlo gradients of KL placements (``ch-placements``).
- :mod:`kltutor.placements`: KL in the reward versus KL in the loss (``ch-placements``).
- :mod:`kltutor.trainers`: TRL, verl and OpenRLHF's own KL code run on the exact toy (``ch-placements``).
- :mod:`kltutor.configcheck`: the config inspector, the KL terms of a trainer's configuration file or launch
  script (``ch-placements``); :mod:`kltutor.inspect` is its deprecated alias, kept for one release.
- :mod:`kltutor.schedules`: beta controllers (``ch-schedules``).
- :mod:`kltutor.preference`: the closed-form optimum, DPO and its kin (``ch-preference``).
- :mod:`kltutor.grpo`: group-relative advantages and the GRPO objective (``ch-preference``).
- :mod:`kltutor.overoptimization`: reward overoptimization along the KL axis (``ch-overoptimization``).
- :mod:`kltutor.failures`: the failure modes of KL control, simulated exactly (``ch-failures``).
- :mod:`kltutor.checklist`: the engineering checklist as checks on a batch (``ch-failures``).
- :mod:`kltutor.practice`: KL in practice: sampler mismatch, aggregation, references (``ch-practice``).
- :mod:`kltutor.filters`: KL-like statistics as rejection filters, exactly on the toy (``ch-practice``).
- :mod:`kltutor.pitfalls`: k1 under a tempered sampler, dropout when scoring, ``kl_div`` misuses (``ch-practice``).
- :mod:`kltutor.papers`: published KL settings, each with the paper's own words (``ch-practice``).
- :mod:`kltutor.distillation`: on-policy distillation, the KL to a teacher as the objective (``ch-distillation``).
- :mod:`kltutor.interview`: the question bank, the one source of question text (``ch-interview``).
- :mod:`kltutor.claims`: the claim ledger, the book's central claims with their conditions and checks (``ch-interview``).
- :mod:`kltutor.capstone`: GRPO on a transformers model with a selectable KL placement (``ch-capstone``).

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
