"""Derivations of chapter 9 (on-policy distillation), checked by sympy.

- :func:`sampled_token_matches_full_vocabulary`: at one state, the expected score-function gradient of
  the sampled token's log-ratio, ``E_{y~p}[grad log p(y) (log p(y) - log q(y))]``, equals the gradient of
  the full-vocabulary ``KL(p || q)``: the sampled token (discount 0) and the full vocabulary (states fixed)
  have the same expected gradient, and both miss the future tokens' terms.
- :func:`gjsd_endpoints`: GKD's generalised JSD (TRL's ``beta``) vanishes at ``beta`` 0 and 1, its slope at
  0 is the forward ``KL(teacher || student)`` and at 1 minus the reverse ``KL(student || teacher)``; so near
  the endpoints it is ``beta`` (or ``1 - beta``) times a KL, while the code's endpoint branches return
  the KLs themselves.
- :func:`gjsd_student_gradient_endpoints`: the same for the gradient in the student's logits: the
  derivative in ``beta`` at 0 of ``grad JSD_beta`` is ``grad KL(teacher || student)``.
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import derivation, is_zero, kl, logits, require, simplex, softmax

__all__ = ["gjsd", "sampled_token_matches_full_vocabulary", "gjsd_endpoints", "gjsd_student_gradient_endpoints"]


def gjsd(student, teacher, beta):
    """``beta KL(teacher || M) + (1 - beta) KL(student || M)``, ``M = beta teacher + (1 - beta) student``."""
    m = [beta * t + (1 - beta) * s for s, t in zip(student, teacher)]
    return beta * kl(teacher, m) + (1 - beta) * kl(student, m)


@derivation
def sampled_token_matches_full_vocabulary() -> bool:
    """sum_y p_y d/dz_j log p_y * (log p_y - log q_y) = d/dz_j KL(p || q), softmax p, three outcomes."""
    z = logits("z", 3)
    p = softmax(z)
    q = simplex("q", 3)
    for j in range(3):
        lhs = sum(pi * sp.diff(sp.log(pi), z[j]) * (sp.log(pi) - sp.log(qi)) for pi, qi in zip(p, q))
        require(is_zero(sp.expand_log(lhs - sp.diff(kl(p, q), z[j]), force=True)), f"logit {j}")
    return True


@derivation
def gjsd_endpoints() -> bool:
    """JSD_0 = JSD_1 = 0; d/dbeta JSD at 0 = KL(teacher || student); at 1 = -KL(student || teacher)."""
    s, t = simplex("s", 3), simplex("t", 3)
    b = sp.Symbol("beta", positive=True)
    j = gjsd(s, t, b)
    require(is_zero(sp.expand_log(j.subs(b, 0), force=True)), "JSD at beta = 0")
    require(is_zero(sp.expand_log(j.subs(b, 1), force=True)), "JSD at beta = 1")
    slope0 = sp.diff(j, b).subs(b, 0)
    slope1 = sp.diff(j, b).subs(b, 1)
    require(is_zero(sp.expand_log(slope0 - kl(t, s), force=True)), "slope at 0 is the forward KL")
    require(is_zero(sp.expand_log(slope1 + kl(s, t), force=True)), "slope at 1 is minus the reverse KL")
    return True


@derivation
def gjsd_student_gradient_endpoints() -> bool:
    """d/dbeta (d/dz_j JSD_beta) at beta = 0 equals d/dz_j KL(teacher || student), student a softmax in z."""
    z = logits("z", 2)
    s = softmax(z)
    t = simplex("t", 2)
    b = sp.Symbol("beta", positive=True)
    j = gjsd(s, t, b)
    for k in range(2):
        lhs = sp.diff(j, z[k], b).subs(b, 0)
        require(is_zero(sp.expand_log(lhs - sp.diff(kl(t, s), z[k]), force=True)), f"logit {k}")
    return True
