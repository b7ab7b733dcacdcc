"""Derivations of ``ch-practice`` (KL in practice), checked by sympy.

- :func:`sampler_k1_expectation`: under a sampler ``q``, the mean of the trainer's k1 is
  ``KL(q || pi_ref) - KL(q || pi)``, not ``KL(pi || pi_ref)``.
- :func:`effective_beta_aggregation`: the coefficient each loss aggregation puts on a sequence's
  summed KL term, ``beta_eff(T)``.
- :func:`sequence_mean_stationary_point`: with per-sequence means, the update stops at
  ``pi_ref e^{(R - kappa T)/beta}/Z`` (a per-token length term, non-zero when the baseline centres the
  task reward only) instead of ``pi_ref e^{R/beta}/Z``.
- :func:`sequence_mean_baseline`: at that stationary point ``kappa E_pi[T] = E_pi[R] - b - beta KL``: with
  the task reward centred (``b = E_pi[R]``, the KL a loss term) ``kappa = -beta KL / E_pi[T] < 0``, a
  per-token length bonus of ``KL / E_pi[T]`` nats; with k1 inside the centred reward
  (``b = E_pi[R - beta l]``) ``kappa = 0``, the tilt.
- :func:`beta_zero_rich_get_richer`: without a KL term the exact policy gradient widens the logit gap
  between two equally rewarded answers at a rate proportional to their probability gap; the KL-regularised
  optimum keeps their reference ratio.
- :func:`reset_composes_tilts`: resetting the reference to the converged policy ``k`` times gives
  the tilt with ``beta / k``.
- :func:`two_kl_stationarity`: the optimum of ``E r - beta_R KL(pi||ref) - beta_L KL(ref||pi)``, and
  that the two KLs agree to second order around ``pi = pi_ref`` (so the betas add only locally).
- :func:`inverted_k3_is_chi2`: ``e^l - 1 - l`` has mean ``chi2(pi||ref) - KL(pi||ref)`` and, in the
  loss, the expected gradient of ``chi2(pi||ref)/2``.
- :func:`grpo_loss_zero_at_start`: at the first update of a batch (``w = 1``) the clipped surrogate
  with per-sequence means is exactly zero for group-centred advantages; with a token mean it is a
  length-weighted sum that is not.
"""

from __future__ import annotations

import sympy as sp

from kltutor.derivations import DerivationError, derivation, logits, require, simplex, softmax, tilt  # noqa: F401

__all__ = [
    "sampler_k1_expectation",
    "effective_beta_aggregation",
    "sequence_mean_stationary_point",
    "sequence_mean_baseline",
    "beta_zero_rich_get_richer",
    "reset_composes_tilts",
    "two_kl_stationarity",
    "inverted_k3_is_chi2",
    "grpo_loss_zero_at_start",
]


@derivation
def sampler_k1_expectation() -> bool:
    """sum_y q(y) log(pi(y)/ref(y)) = KL(q||ref) - KL(q||pi) for three outcomes, any q, pi, ref."""
    q, pi, ref = simplex("q", 3), simplex("p", 3), simplex("r", 3)
    lhs = sum(qi * sp.log(pi_i / ri) for qi, pi_i, ri in zip(q, pi, ref))
    rhs = sum(qi * sp.log(qi / ri) for qi, ri in zip(q, ref)) - sum(qi * sp.log(qi / pi_i) for qi, pi_i in zip(q, pi))
    require(sp.simplify(sp.expand_log(lhs - rhs, force=True)) == 0, "E_q[k1] identity")
    return True


@derivation
def effective_beta_aggregation() -> bool:
    """For every aggregation and several batches of lengths, the coefficient of sequence i's summed
    per-token term in ``beta * aggregate(k)``, rescaled to the form ``(1/G) sum_i beta_eff_i S_i``, is
    beta (sequence-sum), beta/T_i (sequence-mean), beta/mean(T) (token-mean), beta/L (token-sum-norm)."""
    beta, L = sp.symbols("beta L", positive=True)
    for lengths in ((1, 3), (2, 2, 5), (4, 1, 2, 7)):
        G = len(lengths)
        k = [[sp.Symbol(f"k_{i}_{t}") for t in range(T)] for i, T in enumerate(lengths)]
        seq_sum = [sum(row) for row in k]
        aggs = {
            "sequence-sum": sp.Rational(1, G) * sum(seq_sum),
            "sequence-mean": sp.Rational(1, G) * sum(s / T for s, T in zip(seq_sum, lengths)),
            "token-mean": sum(seq_sum) / sum(lengths),
            "token-sum-norm": sum(seq_sum) / (G * L),
        }
        mean_T = sp.Rational(sum(lengths), G)
        want = {
            "sequence-sum": lambda T: beta,
            "sequence-mean": lambda T: beta / T,
            "token-mean": lambda T, m=mean_T: beta / m,
            "token-sum-norm": lambda T: beta / L,
        }
        for mode, expr in aggs.items():
            for i, T in enumerate(lengths):
                # every token of sequence i has the same coefficient c_i; beta_eff = G * beta * c_i
                coeffs = {sp.simplify(sp.diff(beta * expr, k[i][t])) for t in range(T)}
                require(len(coeffs) == 1, f"{mode}: tokens of one sequence weighed differently")
                beta_eff = G * coeffs.pop()
                require(sp.simplify(beta_eff - want[mode](T)) == 0, f"{mode}, lengths {lengths}, T={T}: {beta_eff}")
    return True


@derivation
def sequence_mean_stationary_point() -> bool:
    """c(T_y) (R_y - b - beta l_y) = kappa solved for l_y: with c = 1 it is (R_y - b - kappa)/beta (the
    tilt, the constant absorbed by Z); with c = 1/T_y it is (R_y - b - kappa T_y)/beta."""
    R, b, beta, kappa, T, l = sp.symbols("R b beta kappa T l", real=True)
    for c, want in ((1, (R - b - kappa) / beta), (1 / T, (R - b - kappa * T) / beta)):
        sol = sp.solve(sp.Eq(c * (R - b - beta * l), kappa), l)
        require(len(sol) == 1 and sp.simplify(sol[0] - want) == 0, f"c={c}: {sol}")
    return True


@derivation
def sequence_mean_baseline() -> bool:
    """With l_y = (R_y - b - kappa T_y)/beta (the per-sequence-mean stationary point) on three responses:
    b = E_pi[R] gives kappa = -beta KL / E_pi[T] (KL = E_pi[l] > 0, so kappa < 0 and the per-token bonus
    -kappa/beta is KL / E_pi[T]); b = E_pi[R - beta l] gives kappa = 0."""
    pi = simplex("p", 3)
    R = sp.symbols("R0:3", real=True)
    T = sp.symbols("T0:3", positive=True)
    beta, K = sp.symbols("beta K", positive=True)
    b, kappa = sp.symbols("b kappa", real=True)
    ell = [(R[i] - b - kappa * T[i]) / beta for i in range(3)]
    kl = sum(pi[i] * ell[i] for i in range(3))
    ER, ET = sum(pi[i] * R[i] for i in range(3)), sum(pi[i] * T[i] for i in range(3))
    # task baseline: b = E[R]; KL = K fixes kappa
    sol = sp.solve(sp.Eq(kl.subs(b, ER), K), kappa)
    require(len(sol) == 1 and sp.simplify(sol[0] + beta * K / ET) == 0, f"task baseline: kappa = {sol}")
    require(sp.simplify(-sol[0] / beta - K / ET) == 0, "the per-token bonus is KL / E[T]")
    # shaped baseline: b = E[R - beta l], with l depending on b and kappa
    sol = sp.solve(sp.Eq(b, ER - beta * kl), kappa)
    require(len(sol) == 1 and sp.simplify(sol[0]) == 0, f"shaped baseline: kappa = {sol}")
    return True


@derivation
def beta_zero_rich_get_richer() -> bool:
    """Softmax bandit pi = softmax(z), beta = 0: the exact gradient of E_pi[r] is pi_y (r_y - E_pi r), so for
    two answers with the same reward the logit gap moves by (pi_y - pi_y')(r - E_pi r): the likelier one
    gains whenever the shared reward beats the mean. With beta > 0 the optimum pi_ref e^{r/beta}/Z keeps
    pi_y/pi_y' = pi_ref,y/pi_ref,y'."""
    z = logits("z", 3)
    r, r2, beta = sp.symbols("r r2 beta", positive=True)
    rew = [r, r, r2]  # answers 0 and 1 share a reward
    pi = softmax(z)
    J = sum(pi[i] * rew[i] for i in range(3))
    grad = [sp.diff(J, zi) for zi in z]
    for i in range(3):
        require(sp.simplify(grad[i] - pi[i] * (rew[i] - J)) == 0, f"d E[r] / d z_{i}")
    require(sp.simplify((grad[0] - grad[1]) - (pi[0] - pi[1]) * (r - J)) == 0, "gap grows with the probability gap")
    ref = simplex("q", 3)
    w = [ref[i] * sp.exp(rew[i] / beta) for i in range(3)]
    require(sp.simplify(w[0] / w[1] - ref[0] / ref[1]) == 0, "the tilt keeps the ratio of equally rewarded answers")
    return True


@derivation
def reset_composes_tilts() -> bool:
    """tilt(tilt(p, r, beta), r, beta) = tilt(p, r, beta/2) and, by induction, k resets give beta/k."""
    p = simplex("p", 3)
    r = sp.symbols("r0:3", real=True)
    beta = sp.symbols("beta", positive=True)

    twice = tilt(tilt(p, r, beta), r, beta)
    once = tilt(p, r, beta / 2)
    for a, c in zip(twice, once):
        require(sp.simplify(a - c) == 0, "two tilts at beta = one tilt at beta/2")
    three = tilt(twice, r, beta)
    for a, c in zip(three, tilt(p, r, beta / 3)):
        require(sp.simplify(a - c) == 0, "three tilts at beta = one tilt at beta/3")
    return True


@derivation
def two_kl_stationarity() -> bool:
    """d/dpi_y of E r - bR KL(pi||rho) - bL KL(rho||pi) - lambda (sum pi - 1) is
    r_y - bR (log(pi_y/rho_y) + 1) + bL rho_y/pi_y - lambda; and around pi = rho both KLs equal
    (1/2) sum d_y^2/rho_y to second order (at third order the forward KL's term is twice the reverse's)."""
    n = 3
    pi = sp.symbols("pi0:3", positive=True)
    rho = sp.symbols("rho0:3", positive=True)
    r = sp.symbols("r0:3", real=True)
    bR, bL, lam, eps = sp.symbols("beta_R beta_L lambda epsilon", positive=True)
    lag = (
        sum(pi[i] * r[i] for i in range(n))
        - bR * sum(pi[i] * sp.log(pi[i] / rho[i]) for i in range(n))
        - bL * sum(rho[i] * sp.log(rho[i] / pi[i]) for i in range(n))
        - lam * (sum(pi) - 1)
    )
    for y in range(n):
        want = r[y] - bR * (sp.log(pi[y] / rho[y]) + 1) + bL * rho[y] / pi[y] - lam
        require(sp.simplify(sp.expand_log(sp.diff(lag, pi[y]) - want, force=True)) == 0, f"stationarity {y}")
    # second-order agreement: pi = rho + eps d with sum d = 0 (two free directions)
    d0, d1 = sp.symbols("d0 d1", real=True)
    d = [d0, d1, -d0 - d1]
    p = [rho[i] + eps * d[i] for i in range(n)]
    rev = sum(p[i] * sp.log(p[i] / rho[i]) for i in range(n))
    fwd = sum(rho[i] * sp.log(rho[i] / p[i]) for i in range(n))
    quad = sum(d[i] ** 2 / rho[i] for i in range(n)) / 2
    s_rev = sp.series(rev, eps, 0, 3).removeO()
    s_fwd = sp.series(fwd, eps, 0, 3).removeO()
    require(sp.simplify(s_rev - eps**2 * quad) == 0, "reverse KL to second order")
    require(sp.simplify(s_fwd - eps**2 * quad) == 0, "forward KL to second order")
    c3_rev = sp.simplify(sp.series(rev, eps, 0, 4).removeO().coeff(eps, 3))
    c3_fwd = sp.simplify(sp.series(fwd, eps, 0, 4).removeO().coeff(eps, 3))
    require(
        sp.simplify(c3_fwd - 2 * c3_rev) == 0 and sp.simplify(c3_rev) != 0,
        "third order: the forward KL's term is twice the reverse KL's (-sum d^3/(3 rho^2) vs -sum d^3/(6 rho^2))",
    )
    return True


@derivation
def inverted_k3_is_chi2() -> bool:
    """For a softmax policy over 3 outcomes and l = log(pi/rho): E_pi[e^l - 1 - l] = chi2(pi||rho) - KL(pi||rho),
    and E_pi[(e^l - 1) d log pi/dz_i] = d/dz_i [chi2(pi||rho)/2] (what autograd of the inverted k3 gives in expectation)."""
    z = logits("z", 3)
    rho = simplex("r", 3)
    pi = softmax(z)
    l = [sp.log(pi[i] / rho[i]) for i in range(3)]
    chi2 = sum(pi[i] ** 2 / rho[i] for i in range(3)) - 1
    kl = sum(pi[i] * l[i] for i in range(3))
    value = sum(pi[i] * (sp.exp(l[i]) - 1 - l[i]) for i in range(3))
    require(sp.simplify(sp.expand_log(value - (chi2 - kl), force=True)) == 0, "value")
    for j in range(3):
        score = [sp.diff(sp.log(pi[i]), z[j]) for i in range(3)]
        grad = sum(pi[i] * (sp.exp(l[i]) - 1) * score[i] for i in range(3))
        require(sp.simplify(grad - sp.diff(chi2 / 2, z[j])) == 0, f"gradient component {j}")
    return True


@derivation
def grpo_loss_zero_at_start() -> bool:
    """With w = 1 and advantages A_i - mean(A) (one group), -(1/G) sum_i (1/T_i) sum_t A_i = 0 exactly,
    while the token mean -sum_i T_i A_i / sum_i T_i is not zero unless lengths and advantages are uncorrelated."""
    G = 3
    r = sp.symbols("r0:3", real=True)
    T = sp.symbols("T0:3", positive=True)
    mean_r = sum(r) / G
    A = [ri - mean_r for ri in r]
    seq_mean = -sp.Rational(1, G) * sum(T[i] * A[i] / T[i] for i in range(G))
    require(sp.simplify(seq_mean) == 0, "sequence-mean surrogate at w = 1")
    tok_mean = -sum(T[i] * A[i] for i in range(G)) / sum(T)
    require(sp.simplify(tok_mean) != 0, "token-mean is not identically zero")
    require(sp.simplify(tok_mean.subs({T[1]: T[0], T[2]: T[0]})) == 0, "token-mean is zero for equal lengths")
    return True


# --- KL as a filter and k1 under a tempered sampler (sec-practice-tempered-k1) ------------------------------

__all__ += ["tempered_k1_logit_update", "k3_stationary_at_reference_any_sampler"]


@derivation
def tempered_k1_logit_update() -> bool:
    """With ``pi = softmax(z)`` and tokens drawn from any sampler ``q``, ``E_q[grad_z k1] = q - pi`` (k1 = log pi -
    log ref: the reference drops out), so a descent step moves ``z`` by ``lr * beta * (pi - q)``; along that
    step the entropy changes at rate ``sum_j pi_j (log pi_j + H) (q_j - pi_j)`` (a covariance under ``pi``
    between ``log pi`` and ``q/pi``), and for ``V = 2`` a sampler at temperature ``T < 1`` makes it positive."""
    z = logits("z", 3)
    q, ref = simplex("q", 3), simplex("r", 3)
    pi = softmax(z)
    k1 = [sp.log(pi[i]) - sp.log(ref[i]) for i in range(3)]
    for j in range(3):
        grad = sum(q[i] * sp.diff(k1[i], z[j]) for i in range(3))
        require(sp.simplify(grad - (q[j] - pi[j])) == 0, f"E_q[d k1 / d z_{j}] = q_{j} - pi_{j}")
    H = -sum(p * sp.log(p) for p in pi)
    step = [pi[j] - q[j] for j in range(3)]  # the descent direction of beta * E_q[k1]
    rate = sum(sp.diff(H, z[j]) * step[j] for j in range(3))
    claimed = sum(pi[j] * (sp.log(pi[j]) + H) * (q[j] - pi[j]) for j in range(3))
    require(sp.simplify(sp.expand_log(rate - claimed, force=True)) == 0, "entropy rate along pi - q")
    # V = 2, logit gap x > 0, q at temperature T: the step on the gap is sigma(x) - sigma(x / T) < 0 for T < 1
    # (the gap shrinks: entropy rises); zero at T = 1.
    x, T = sp.symbols("x T", positive=True)
    gap_step = 1 / (1 + sp.exp(-x)) - 1 / (1 + sp.exp(-x / T))
    require(sp.simplify(gap_step.subs(T, 1)) == 0, "T = 1: no step")
    s_ = sp.Symbol("s", positive=True)
    sig = 1 / (1 + sp.exp(-x * s_))
    dsig = x * sp.exp(-x * s_) / (1 + sp.exp(-x * s_)) ** 2  # > 0 for x > 0: sigma(x s) increases with s
    require(sp.simplify(sp.diff(sig, s_) - dsig) == 0, "sigma(x / T) > sigma(x) when T < 1 (s = 1/T > 1)")
    return True


@derivation
def k3_stationary_at_reference_any_sampler() -> bool:
    """k2 and k3 in the loss have zero expected gradient at ``pi = ref`` for any sampler ``q`` (their derivative
    in the log-ratio vanishes at 0); k1's does not (it is ``q - pi``)."""
    z = logits("z", 3)
    q = simplex("q", 3)
    pi = softmax(z)
    ell = sp.Symbol("ell", real=True)
    for name, k in (("k2", ell**2 / 2), ("k3", sp.exp(-ell) - 1 + ell)):
        for j in range(3):
            grad = sum(q[i] * sp.diff(k, ell).subs(ell, 0) * sp.diff(sp.log(pi[i]), z[j]) for i in range(3))
            require(sp.simplify(grad) == 0, f"{name}: zero at pi = ref")
    require(sp.diff(ell, ell) == 1, "k1's derivative in l is 1 everywhere")
    return True
