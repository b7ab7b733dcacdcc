"""kltutor: the companion package of the executable book *KL Divergence in RLHF*.

Every number and figure in the book is computed by a function in this package. Modules, with the
chapter that introduces each:

- :mod:`kltutor.divergences`: exact divergences between distributions (chapter 1).
- :mod:`kltutor.estimators`: the k1, k2, k3 sample estimators of KL (chapter 2).
- :mod:`kltutor.toys`: small models with exact answers (chapters 1-3).
- :mod:`kltutor.gradients`: exact and Monte-Carlo gradients of KL placements (chapter 3).
- :mod:`kltutor.placements`: KL in the reward versus KL in the loss (chapter 3).
- :mod:`kltutor.schedules`: beta controllers (chapter 4).
- :mod:`kltutor.preference`: the closed-form optimum, DPO and its kin (chapter 5).
- :mod:`kltutor.grpo`: group-relative advantages and the GRPO objective (chapter 5).
- :mod:`kltutor.overoptimization`: reward overoptimization along the KL axis (chapter 6).
- :mod:`kltutor.practice`: KL in practice: sampler mismatch, aggregation, references (chapter 8).
- :mod:`kltutor.derivations`: every derivation of the book, checked by sympy.
- :mod:`kltutor.claims`: the claim ledger, the book's central claims with their conditions and checks.
- :mod:`kltutor.plotting`: the book's figures.
- :mod:`kltutor.capstone`: GRPO on a transformers model with a selectable KL placement (chapter 10).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
