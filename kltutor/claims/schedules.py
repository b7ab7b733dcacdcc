"""The ledger's claims on beta (see :mod:`kltutor.claims`)."""

from __future__ import annotations

import math

from kltutor.claims._core import _claim, _require


@_claim(
    "beta-exchange-rate",
    "beta",
    r"Scaling the reward by $c>0$ is the same as dividing $\beta$ by $c$: $\pi^*(cr,\beta)=\pi^*(r,\beta/c)$; "
    r"$\beta$ only means something relative to the reward's scale, the estimator and the token aggregation.",
    "KL-regularised optimum",
    "sec-schedules-scale",
    cheatsheet=True,
)
def _beta_exchange_rate():
    from kltutor.derivations import schedules as schedules_proofs

    _require(schedules_proofs.reward_scale_equivalence(), "sympy")
    return {"pi*(c r, beta) = pi*(r, beta / c)": True}


@_claim(
    "kl-falls-with-beta",
    "beta",
    r"The optimum's KL and reward fall as $\beta$ grows, $d\KL/d\beta=-\mathrm{Var}_{\pi^*}(r)/\beta^3$, "
    r"$d\E[r]/d\beta=-\mathrm{Var}_{\pi^*}(r)/\beta^2$; on a finite bandit the KL never exceeds $-\log\piref(\text{best})$.",
    "KL-regularised optimum",
    "sec-schedules-monotone",
)
def _kl_falls_with_beta():
    import torch

    from kltutor.derivations import schedules as schedules_proofs
    from kltutor.toys import KLBandit

    _require(schedules_proofs.reward_derivative() and schedules_proofs.kl_derivative(), "sympy")
    bandit = KLBandit.random(8, torch.Generator().manual_seed(0))
    kls = [bandit.optimal_kl(b) for b in (100.0, 1.0, 0.1, 0.01, 0.001)]
    _require(
        all(a <= b for a, b in zip(kls, kls[1:])) and kls[0] < kls[1] and kls[-1] <= bandit.max_kl() + 1e-12,
        "monotone, capped",
    )
    return {"KL at beta = 0.001": kls[-1], "cap -log pi_ref(best)": bandit.max_kl()}


@_claim(
    "beta-symptoms",
    "beta",
    r"$\beta$ too large: the KL stays near 0 and the reward barely moves. $\beta$ too small for the reward's "
    r"scale: the KL climbs to the greedy limit and entropy collapses.",
    "exact-gradient training of a softmax bandit; with a learned reward the second case is where over-optimisation lives",
    "sec-failures-collapse",
    cheatsheet=True,
)
def _beta_symptoms():
    import torch

    from kltutor import failures as fl

    g = torch.Generator().manual_seed(0)
    reward = torch.randn(10, generator=g, dtype=torch.float64)
    ref = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    big = fl.train_bandit(ref, reward, 5.0, steps=300, lr=0.5)
    small = fl.train_bandit(ref, 5.0 * reward, 0.001, steps=300, lr=0.5)
    cap = -math.log(float(ref[int(reward.argmax())]))
    _require(big["kl"][-1] < 0.05 and small["kl"][-1] > 0.95 * cap, "symptoms")
    return {
        "KL after 300 steps, beta = 5": big["kl"][-1],
        "KL after 300 steps, beta = 0.001, reward x5": small["kl"][-1],
        "greedy cap": cap,
    }


@_claim(
    "adaptive-beta-integral",
    "beta",
    r"Ziegler et al.'s controller $\beta\leftarrow\beta(1+K_\beta e_t)$, $e_t=\operatorname{clip}(\KL_t/\KL_\text{target}-1,\pm0.2)$, "
    r"accumulates the clipped error in $\log\beta$ (integral action on $\log\beta$); one step changes $\beta$ by a "
    r"factor of at most $1\pm0.2K_\beta$.",
    r"$K_\beta$ = n_steps / horizon",
    "sec-schedules-integral",
    cheatsheet=True,
    refuted=(r"more than 20%(?![^.]*K)",),
)
def _adaptive_beta_integral():
    from kltutor import schedules as S
    from kltutor.derivations import schedules as schedules_proofs

    _require(schedules_proofs.adaptive_beta_integrates_error(), "sympy")
    c = S.AdaptiveKLController(1.0, 1.0, horizon=10)
    up = c.update(100.0, n_steps=5)
    _require(abs(up - 1.1) < 1e-12, "one step moves beta by at most 1 + 0.2 K")
    return {"beta after one step at KL = 100 x target, K = 0.5": up}


@_claim(
    "binary-optimum-raw",
    "beta",
    r"For a raw 0/1 reward with success rate $p_0$ under $\piref$, the optimum of $\E[r]-\beta\KL$ has success "
    r"rate $q^*=p_0e^{1/\beta}/(p_0e^{1/\beta}+1-p_0)$ and $\KL(\pi^*\|\piref)\le\log(1/p_0)$.",
    "the unnormalised objective (e.g. k1-in-reward with raw rewards), one prompt; not GRPO's normalised update",
    "sec-interview-q18",
)
def _binary_optimum_raw():
    import sympy as sp

    from kltutor.derivations import schedules as schedules_proofs

    _require(schedules_proofs.binary_reward_optimum(), "sympy")
    ex = schedules_proofs.binary_optimum_expressions()
    fail = float(ex["fail"].subs({ex["p0"]: sp.Rational(1, 10), ex["beta"]: sp.Rational(1, 25)}))
    return {"p0 = 0.1, beta = 0.04: failure rate of the optimum": fail, "KL cap log(1/p0)": math.log(10)}


@_claim(
    "grpo-normalised-binary",
    "beta",
    r"GRPO's group normalisation changes the objective: for a 0/1 reward its expected policy-gradient step is "
    r"$w_G(q)\,\nabla q$, with a weight that depends on the current success rate $q$ (tending to "
    r"$1/\sqrt{q(1-q)}$ as $G$ grows), not $\nabla q$. Hard and easy prompts are up-weighted, and with a KL term "
    r"the fixed point is not the raw-reward optimum $q^*(\beta)$.",
    "on-policy, one prompt, a group of $G$ samples, unbiased std, no eps; mixed groups only (equal groups give 0)",
    "sec-interview-q18",
)
def _grpo_normalised_binary():
    import torch

    from kltutor import grpo

    def weight(q: float, G: int) -> float:
        # two outcomes, logit theta: d log pi(success) = 1 - q, d log pi(failure) = -q; dq/dtheta = q (1 - q)
        tot = 0.0
        for k in range(1, G):
            a = grpo.group_advantages(torch.tensor([1.0] * k + [0.0] * (G - k), dtype=torch.float64), G, eps=0.0)
            pk = math.comb(G, k) * q**k * (1 - q) ** (G - k)
            tot += pk * (k * a[0].item() * (1 - q) + (G - k) * a[-1].item() * (-q)) / G
        return tot / (q * (1 - q))

    out = {}
    for G in (4, 256):
        ws = {q: weight(q, G) * math.sqrt(q * (1 - q)) for q in (0.1, 0.5, 0.9)}
        out[f"G = {G}: w_G(q) sqrt(q(1-q)) at q = 0.1, 0.5"] = f"{ws[0.1]:.3f}, {ws[0.5]:.3f}"
        _require(abs(ws[0.1] - ws[0.9]) < 1e-12, "symmetric in q")
        if G == 256:
            _require(all(0.98 < v <= 1.0 for v in ws.values()), "large-G limit 1/sqrt(q(1-q))")
    _require(weight(0.1, 256) > 1.5 * weight(0.5, 256), "hard prompts up-weighted")
    return out
