"""Derivations of ``ch-failures``, checked by sympy.

- :func:`softmax_policy_gradient`: the exact gradient of ``E_pi[r] - beta KL(pi || pi_ref)`` with
  respect to softmax logits is ``pi * (A - E_pi[A])``, ``A = r - beta log(pi/pi_ref)`` (what
  :func:`kltutor.failures.train_bandit` uses). The factor ``pi`` is why a peaked (low-entropy)
  policy barely moves.
- :func:`fp16_k3_overflow`: ``exp(-l)`` overflows float16 (largest finite 65504) once
  ``l < -log(65504)``, about -11.09.
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, logits, require, softmax  # noqa: F401

__all__ = ["softmax_policy_gradient", "fp16_k3_overflow", "FP16_MAX"]

FP16_MAX = 65504


@derivation
def softmax_policy_gradient() -> bool:
    """d/dz_i [sum_j pi_j r_j - beta sum_j pi_j log(pi_j / q_j)] = pi_i (A_i - sum_j pi_j A_j) for 3 responses
    (what :func:`kltutor.toys.bandits.softmax_policy_gradient` computes)."""
    z = logits("z", 3)
    r = sp.symbols("r0:3", real=True)
    q = sp.symbols("q0:3", positive=True)
    beta = sp.symbols("beta", positive=True)
    pi = softmax(z)
    objective = sum(pi[j] * r[j] for j in range(3)) - beta * sum(pi[j] * sp.log(pi[j] / q[j]) for j in range(3))
    adv = [r[j] - beta * sp.log(pi[j] / q[j]) for j in range(3)]
    mean_adv = sum(pi[j] * adv[j] for j in range(3))
    for i in range(3):
        diff = sp.diff(objective, z[i]) - pi[i] * (adv[i] - mean_adv)
        require(sp.simplify(sp.expand_log(diff, force=True)) == 0, f"component {i}: {diff}")
    return True


@derivation
def fp16_k3_overflow() -> bool:
    """exp(-l) > 65504 exactly when l < -log(65504) (about -11.0898)."""
    l = sp.symbols("l", real=True)
    threshold = -sp.log(FP16_MAX)
    require(sp.solve(sp.Eq(sp.exp(-l), FP16_MAX), l) == [threshold], "threshold")
    require(abs(float(threshold) + 11.0898) < 1e-3, f"value {float(threshold)}")
    return True
