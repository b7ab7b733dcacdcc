"""Derivations of ``ch-placements`` (where the KL term goes), checked by sympy.

Each proof returns ``True`` or raises :class:`DerivationError`. The one-token facts are proved on a
categorical policy with three symbolic logits (softmax) and a symbolic reference, and
:func:`placement_gradient_expressions` gives the exact expected gradient of every placement for one
token (the table of the interview chapter's Q5); the multi-token facts on the two-token binary
autoregressive model with symbolic parameters.
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, is_zero, kl, logits, require, softmax  # noqa: F401

__all__ = [
    "categorical",
    "zero_mean_score",
    "estimator_gradients",
    "score_function_kl_gradient",
    "k3_in_loss_is_forward_kl_gradient",
    "placement_gradient_expressions",
    "placement_gradients",
    "one_token_k2_loss_equals_k1_reward",
    "two_token_model",
    "return_to_go_equivalence",
    "token_k2_misses_cross_terms",
]


def categorical(n: int = 3):
    """Symbols of a softmax policy over ``n`` tokens and a reference: ``(theta, pi, q)``."""
    theta = logits("theta", n)
    q = sp.symbols(f"q0:{n}", positive=True)
    return theta, softmax(theta), q


_zero = is_zero


@derivation
def zero_mean_score() -> bool:
    """:math:`\\mathbb{E}_\\pi[\\nabla\\log\\pi] = 0`: so on-policy k1 in the loss has zero expected gradient."""
    theta, pi, _ = categorical()
    for th in theta:
        e = sum(p * sp.diff(sp.log(p), th) for p in pi)
        require(_zero(e), f"E[d log pi / d {th}] is not zero: {sp.simplify(e)}")
    return True


@derivation
def estimator_gradients() -> bool:
    """With the sample fixed: ``grad k1 = grad log pi``, ``grad k2 = l grad log pi``,
    ``grad k3 = (1 - exp(-l)) grad log pi``, where ``l = log pi - log pi_ref``."""
    th = sp.Symbol("theta", real=True)
    logpi = sp.Function("logpi")(th)
    logref = sp.Symbol("logref", real=True)
    ell = logpi - logref
    score = sp.diff(logpi, th)
    k = {"k1": ell, "k2": ell**2 / 2, "k3": sp.exp(-ell) - 1 + ell}
    expected = {"k1": score, "k2": ell * score, "k3": (1 - sp.exp(-ell)) * score}
    for name in k:
        require(_zero(sp.diff(k[name], th) - expected[name]), f"gradient of {name} is not {expected[name]}")
    return True


@derivation
def score_function_kl_gradient() -> bool:
    """:math:`\\nabla\\mathrm{KL}(\\pi\\|\\pi_\\text{ref}) = \\mathbb{E}_\\pi[\\ell\\,\\nabla\\log\\pi]` (q normalised)."""
    theta, pi, q = categorical()
    qn = [qi / sum(q) for qi in q]
    reverse = kl(pi, qn)
    for th in theta:
        sf = sum(p * (sp.log(p) - sp.log(r)) * sp.diff(sp.log(p), th) for p, r in zip(pi, qn))
        require(_zero(sp.diff(reverse, th) - sf), f"score-function form fails for {th}")
    return True


def placement_gradient_expressions() -> dict[str, sp.Expr]:
    """Exact expected gradients (w.r.t. the first logit) of each single-token placement, on-policy.

    The policy is a softmax over three outcomes with probabilities ``p1, p2, 1 - p1 - p2``; the
    derivative w.r.t. the first logit uses the softmax Jacobian d p_i / d theta_1 = p_i (1[i=1] - p_1).
    Keys: ``reverse_kl`` (grad KL(pi||pi_ref)), ``forward_kl`` (grad KL(pi_ref||pi)), and for the
    placements ``k1-in-reward`` (E[l * grad log pi], l detached), ``k1-in-loss`` (E[grad l]),
    ``k2-in-loss`` (E[grad l^2/2]), ``k3-in-loss`` (E[grad (e^{-l} - 1 + l)]).
    """
    p = sp.symbols("p1:4", positive=True)
    q = sp.symbols("q1:3", positive=True)
    ref = [q[0], q[1], 1 - q[0] - q[1]]
    close = {p[2]: 1 - p[0] - p[1]}

    def grad(f: sp.Expr) -> sp.Expr:  # d f(p) / d theta_1 through the softmax Jacobian
        return sum(sp.diff(f, p[i]) * p[i] * ((1 if i == 0 else 0) - p[0]) for i in range(3))

    ell = [sp.log(pi) - sp.log(r) for pi, r in zip(p, ref)]
    score = [grad(sp.log(pi)) for pi in p]
    out = {
        "reverse_kl": grad(kl(p, ref)),
        "forward_kl": grad(kl(ref, p)),
        # in reward: the KL value is a detached number multiplying the score (REINFORCE)
        "k1-in-reward": sum(pi * e * sc for pi, e, sc in zip(p, ell, score)),
        # in loss: autograd differentiates the estimator at the sampled token (samples held fixed)
        "k1-in-loss": sum(pi * grad(e) for pi, e in zip(p, ell)),
        "k2-in-loss": sum(pi * grad(e**2 / 2) for pi, e in zip(p, ell)),
        "k3-in-loss": sum(pi * grad(sp.exp(-e) - 1 + e) for pi, e in zip(p, ell)),
    }
    return {k: sp.simplify(v.subs(close)) for k, v in out.items()}


@derivation
def k3_in_loss_is_forward_kl_gradient() -> bool:
    """:math:`\\mathbb{E}_\\pi[(1 - \\pi_\\text{ref}/\\pi)\\nabla\\log\\pi] = \\nabla\\mathrm{KL}(\\pi_\\text{ref}\\|\\pi)`:
    the expected gradient of k3 in the loss is the gradient of the *forward* KL, not the reverse (one token,
    on-policy; its expected *value* is the reverse KL, :func:`kltutor.derivations.estimators.k3_unbiased_categorical`)."""
    g = placement_gradient_expressions()
    require(_zero(g["k3-in-loss"] - g["forward_kl"]), "E[grad k3] is not grad KL(ref||pi)")
    require(not _zero(g["k3-in-loss"] - g["reverse_kl"]), "k3-in-loss unexpectedly matches the reverse-KL gradient")
    return True


@derivation
def placement_gradients() -> bool:
    """The one-token table, on-policy: E[grad k1-in-loss] = 0; k1-in-reward = k2-in-loss = grad reverse KL
    = p1 (l1 - KL); grad forward KL = p1 - q1 (the k3-in-loss row: :func:`k3_in_loss_is_forward_kl_gradient`)."""
    g = placement_gradient_expressions()
    require(_zero(g["k1-in-loss"]), "E[grad k1] must be 0 (the score has mean zero)")
    require(_zero(g["k1-in-reward"] - g["reverse_kl"]), "k1-in-reward must give grad KL(pi||pi_ref)")
    require(_zero(g["k2-in-loss"] - g["reverse_kl"]), "k2-in-loss must give grad KL(pi||pi_ref) for one token")
    # closed forms: d/dtheta_1 KL(pi||pi_ref) = p1 (l1 - KL), d/dtheta_1 KL(pi_ref||pi) = p1 - q1
    p1, p2, q1, q2 = sp.symbols("p1 p2 q1 q2", positive=True)
    pi, ref = [p1, p2, 1 - p1 - p2], [q1, q2, 1 - q1 - q2]
    require(
        _zero(g["reverse_kl"] - p1 * (sp.log(p1) - sp.log(q1) - kl(pi, ref))), "grad reverse KL must be p1 (l1 - KL)"
    )
    require(_zero(g["forward_kl"] - (p1 - q1)), "grad forward KL must be p1 - q1")
    return True


@derivation
def one_token_k2_loss_equals_k1_reward() -> bool:
    """One token: ``grad (l**2/2) = l * grad log pi = stopgrad(l) * grad log pi`` per sample, so
    k2 in the loss and k1 in the reward (REINFORCE with reward ``-l``) have the same gradient."""
    th = sp.Symbol("theta", real=True)
    logpi = sp.Function("logpi")(th)
    logref, ell_detached = sp.symbols("logref ell_d", real=True)
    ell = logpi - logref
    k2_loss = sp.diff(ell**2 / 2, th)
    k1_reward = sp.diff(ell_detached * logpi, th).subs(ell_detached, ell)
    require(_zero(k2_loss - k1_reward), "k2-in-loss and k1-in-reward differ for one token")
    return True


def two_token_model():
    """Two-token binary autoregressive policy and reference with symbolic parameters.

    Returns ``(a, b, seqs, tok_logp, tok_logref)`` where ``seqs`` lists the 4 bit pairs and
    ``tok_logp[y] = (log pi(y1), log pi(y2|y1))``.
    """
    a, b, a0, b0 = sp.symbols("a b a_0 b_0", real=True)

    def logsig(z, y):
        return -sp.log(1 + sp.exp(-z)) if y == 1 else -sp.log(1 + sp.exp(z))

    seqs = [(y1, y2) for y1 in (0, 1) for y2 in (0, 1)]
    tok_logp = {y: (logsig(a, y[0]), logsig(a + b * y[0], y[1])) for y in seqs}
    tok_logref = {y: (logsig(a0, y[0]), logsig(a0 + b0 * y[0], y[1])) for y in seqs}
    return (a, b, a0, b0), seqs, tok_logp, tok_logref


def _two_token_terms():
    (a, b, a0, b0), seqs, lp, lr = two_token_model()
    prob = {y: sp.exp(lp[y][0] + lp[y][1]) for y in seqs}
    ell = {y: (lp[y][0] - lr[y][0], lp[y][1] - lr[y][1]) for y in seqs}
    score = {y: [(sp.diff(lp[y][0], v), sp.diff(lp[y][1], v)) for v in (a, b)] for y in seqs}
    return (a, b, a0, b0), seqs, prob, ell, score, lp, lr


@derivation
def return_to_go_equivalence() -> bool:
    """Two tokens: ``E[(k_1+k_2)(g_1+g_2)] = E[g_1 (k_1+k_2) + g_2 k_2]`` -- the score of a later token
    times an earlier penalty has zero mean, so the full and return-to-go forms agree in expectation."""
    (a, b, a0, b0), seqs, prob, ell, score, _, _ = _two_token_terms()
    for i, v in enumerate((a, b)):
        cross = sum(prob[y] * score[y][i][1] * ell[y][0] for y in seqs)  # E[g_2 * k1(l_1)]
        require(_zero(sp.simplify(cross)), f"E[g_2 l_1] is not zero for parameter {v}")
    return True


@derivation
def token_k2_misses_cross_terms() -> bool:
    """Two tokens: true gradient minus token-level k2-in-loss gradient ``= E[g_1 l_2]``, which is not
    zero in general; sequence-level k2 (``L grad log pi(y)``) has exactly the true gradient."""
    (a, b, a0, b0), seqs, prob, ell, score, lp, lr = _two_token_terms()
    kl_seq = sum(prob[y] * (ell[y][0] + ell[y][1]) for y in seqs)
    point = {a: sp.Rational(3, 10), b: sp.Rational(-2, 5), a0: sp.Rational(-1, 5), b0: sp.Rational(1, 2)}
    for i, v in enumerate((a, b)):
        true = sp.diff(kl_seq, v)
        tok_k2 = sum(prob[y] * (ell[y][0] * score[y][i][0] + ell[y][1] * score[y][i][1]) for y in seqs)
        cross = sum(prob[y] * score[y][i][0] * ell[y][1] for y in seqs)
        require(_zero(sp.simplify(true - tok_k2 - cross)), f"true - token k2 != E[g_1 l_2] for {v}")
        seq_k2 = sum(prob[y] * (ell[y][0] + ell[y][1]) * (score[y][i][0] + score[y][i][1]) for y in seqs)
        require(_zero(sp.simplify(true - seq_k2)), f"sequence-level k2 is not the true gradient for {v}")
        if v == a:
            require(abs(float(cross.subs(point))) > 1e-4, "the cross term vanished at the test point")
    return True
