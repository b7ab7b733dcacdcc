"""The ledger's claims on preference optimisation and GRPO (see :mod:`kltutor.claims`)."""

from __future__ import annotations

import math

from kltutor.claims._core import _claim, _lbfgs_tabular, _pairs, _require


@_claim(
    "optimal-policy",
    "Preference optimisation and GRPO",
    r"$\max_\pi\E_\pi[r]-\beta\KL(\pi\|\piref)$ has the unique maximiser $\pi^*=\piref e^{r/\beta}/Z$ with value "
    r"$\beta\log Z$, because $J(\pi)=\beta\log Z-\beta\KL(\pi\|\pi^*)$.",
    r"$\beta>0$, one prompt, any reward (Bradley–Terry is not needed)",
    "sec-preference-optimum",
    cheatsheet=True,
)
def _optimal_policy():
    from kltutor.derivations import preference as preference_proofs

    _require(preference_proofs.closed_form_optimum(), "sympy")
    return {"closed form, strict concavity, J = beta log Z - beta KL(pi||pi*)": True}


@_claim(
    "dpo-loss-gradient",
    "Preference optimisation and GRPO",
    r"Inverting $\pi^*$ gives $r=\beta\log\frac{\pi^*}{\piref}+\beta\log Z$; under Bradley–Terry $\beta\log Z$ cancels "
    r"in pairs, which gives the DPO loss; its gradient weights each pair by $\sigma(\hat r_l-\hat r_w)$.",
    "Bradley–Terry preferences; the policy class can represent the optimum",
    "sec-preference-dpo",
    cheatsheet=True,
)
def _dpo_loss_gradient():
    from kltutor.derivations import preference as preference_proofs

    _require(preference_proofs.dpo_from_optimum() and preference_proofs.dpo_gradient(), "sympy")
    return {"log Z cancels; gradient weight sigma(r_l - r_w)": True}


@_claim(
    "implicit-reward-not-kl",
    "Preference optimisation and GRPO",
    r"The implicit reward $\hat r_\theta=\beta\log(\pitheta/\piref)$ averages to $\beta\KL(\pitheta\|\piref)$ under "
    r"$\pitheta$ but to $-\beta\KL(\piref\|\pitheta)\le0$ under $\piref$: on preference data it is not a KL estimate.",
    "exact; preference data not drawn from the policy",
    "sec-preference-dpo",
)
def _implicit_reward_not_kl():
    from kltutor.derivations import preference as preference_proofs

    _require(preference_proofs.implicit_reward_mean_is_kl(), "sympy")
    return {"E_pi[r_hat] = beta KL(pi||ref), E_ref[r_hat] = -beta KL(ref||pi)": True}


@_claim(
    "dpo-rl-same-optimum",
    "Preference optimisation and GRPO",
    r"DPO and KL-regularised RL share the optimum $\pi^*$ only under Bradley–Terry with pairs that cover every "
    r"response and infinite data (the population loss). On finite data a response that wins and never loses has "
    r"no finite maximum-likelihood reward: the empirical DPO loss keeps falling as its log-ratio grows, whatever "
    r"$\beta$, while RL against a fitted reward model keeps the KL anchor (the IPO argument).",
    "population versus empirical DPO loss, tabular policy",
    "sec-preference-finite",
    cheatsheet=True,
    needs_condition=(
        (
            r"[Ss]ame (?:objective|fixed point|optimum)",
            r"Bradley|cover|infinite|population|finite data|conditions|only (?:under|when|with|in)",
        ),
    ),
)
def _dpo_rl_same_optimum():
    import torch
    import torch.nn.functional as F

    from kltutor import preference as pref

    D64 = torch.float64
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, generator=g, dtype=D64)
    ref = torch.softmax(torch.randn(5, generator=g, dtype=D64), 0)
    beta = 0.5
    i, j = _pairs(5)
    w = ref[i] * ref[j] * torch.sigmoid(r[i] - r[j])  # P(draw (i, j) and i wins)

    def population(logp):
        h = beta * ((logp[i] - ref.log()[i]) - (logp[j] - ref.log()[j]))
        return -(w * F.logsigmoid(h)).sum()

    pi = _lbfgs_tabular(population, 5, init=ref.log())
    gap = (pi - pref.optimal_policy(ref, r, beta)).abs().max().item()
    _require(gap < 1e-6, f"population DPO minimiser must be pi* (gap {gap:.1e})")
    # finite data: response 0 wins its two comparisons and never loses
    chosen, rejected = torch.tensor([0, 0, 2]), torch.tensor([1, 2, 3])
    worst = -math.inf
    for s in range(20):
        th = torch.randn(5, generator=torch.Generator().manual_seed(s), dtype=D64).mul(3).requires_grad_(True)
        lp = torch.log_softmax(th, 0)
        loss = pref.dpo_loss(lp[chosen], lp[rejected], ref.log()[chosen], ref.log()[rejected], beta).loss
        (grad,) = torch.autograd.grad(loss, th)
        worst = max(worst, grad[0].item())
    _require(worst < 0, "the never-losing response's logit must always decrease the empirical loss")
    return {
        "max |population DPO minimiser - pi*|": "< 1e-6",
        "largest d loss / d logit of the never-losing response": worst,
    }


@_claim(
    "ipo-target",
    "Preference optimisation and GRPO",
    r"IPO's population minimiser is $\piref e^{p(y\succ\mu)/\tau}/Z$, the regularised optimum of the win rate "
    r"against the data distribution $\mu$, not DPO's $\pi^*$: at $\tau=\beta$ it stays much closer to the reference.",
    r"pairs drawn from $\mu$, labels from a Bradley–Terry model",
    "sec-preference-lab",
)
def _ipo_target():
    import torch

    from kltutor import preference as pref

    D64 = torch.float64
    g = torch.Generator().manual_seed(1)
    r = torch.randn(5, generator=g, dtype=D64)
    ref = torch.softmax(torch.randn(5, generator=g, dtype=D64), 0)
    tau = 0.5
    i, j = _pairs(5)
    pw, c0 = torch.sigmoid(r[i] - r[j]), 1 / (2 * tau)
    w = ref[i] * ref[j]

    def population(logp):
        h = (logp[i] - ref.log()[i]) - (logp[j] - ref.log()[j])
        return (w * (pw * (h - c0) ** 2 + (1 - pw) * (h + c0) ** 2)).sum()

    pi = _lbfgs_tabular(population, 5, init=ref.log())
    target = pref.ipo_optimal_policy(ref, r, tau, ref)
    gap = (pi - target).abs().max().item()
    _require(gap < 1e-6, f"IPO minimiser (gap {gap:.1e})")
    kl_ipo, kl_star = (
        pref.categorical_kl(target, ref).item(),
        pref.categorical_kl(pref.optimal_policy(ref, r, tau), ref).item(),
    )
    _require(kl_ipo < kl_star, "IPO target closer to the reference")
    return {"KL(IPO target || ref)": kl_ipo, "KL(pi* || ref)": kl_star}


@_claim(
    "simpo-length",
    "Preference optimisation and GRPO",
    r"SimPO's length normalisation replaces DPO's sequence log-ratio by the mean per-token log-likelihood "
    r"$\log\pitheta(y)/|y|$ and drops the reference. It does not remove length effects: a response's probability is "
    r"$e^{|y|\cdot\text{score}/\beta}$, so a long response that is not ranked first is crushed.",
    "population SimPO loss on noisy Bradley–Terry pairs (a finite optimum exists)",
    "sec-preference-simpo-length",
    cheatsheet=True,
    refuted=(r"length[- ]normali[sz]ation[^.;]*(?<!not )\bremoves?\b",),
)
def _simpo_length():
    import torch

    from kltutor import preference as pref

    D64 = torch.float64
    r = torch.tensor([1.0, 0.5, 0.0, -0.5], dtype=D64)  # response 1 is the second best ...
    lengths = torch.tensor([3.0, 20.0, 3.0, 3.0], dtype=D64)  # ... and the only long one
    mu = torch.full((4,), 0.25, dtype=D64)
    i, j = _pairs(4)
    w, pw = mu[i] * mu[j], torch.sigmoid(r[i] - r[j])

    def population(logp):
        total = 0
        for a, b, wk, pk in zip(i.tolist(), j.tolist(), w, pw):  # pref.simpo_loss per pair: its .loss keeps the graph
            win = pref.simpo_loss(
                logp[a : a + 1], logp[b : b + 1], lengths[a : a + 1], lengths[b : b + 1], 2.0, 0.5
            ).loss
            lose = pref.simpo_loss(
                logp[b : b + 1], logp[a : a + 1], lengths[b : b + 1], lengths[a : a + 1], 2.0, 0.5
            ).loss
            total = total + wk * (pk * win + (1 - pk) * lose)
        return total

    pi = _lbfgs_tabular(population, 4)
    star = pref.optimal_policy(mu, r, 0.5)
    _require(pi[1] < pi[2:].min() / 10 and star[1] > star[2:].max(), "SimPO crushes the long second-best response")
    return {
        "SimPO optimum: P(second best, 20 tokens)": f"{pi[1].item():.1e}",
        "P(third and fourth, 3 tokens)": f"{pi[2].item():.2f}, {pi[3].item():.3f}",
        "pi* (beta = 0.5): P(second best)": f"{star[1].item():.2f}",
    }


@_claim(
    "kto-reference-point",
    "Preference optimisation and GRPO",
    r"KTO defines its reference point as $z_0=\KL(\pitheta\|\piref)$ and computes it as "
    r"$\max\big(0,\text{mean log-ratio on mismatched prompt–completion pairs}\big)$, detached: a biased estimate "
    r"(its authors' words), and 0 whenever those completions are closer to $\piref$ than to $\pitheta$.",
    "as implemented in the KTO paper and `kltutor.preference.kto_loss`",
    "sec-preference-kto-orpo",
    cheatsheet=True,
    needs_condition=(
        (
            r"KTO[^.;]{0,80}(?:KL reference point|reference point[^.;]{0,20}\b(?:is|=)|uses an? [^.;]{0,30}KL)",
            r"mismatched|biased|clamp|baseline|max\(0",
        ),
    ),
)
def _kto_reference_point():
    import torch

    from kltutor import preference as pref

    D64 = torch.float64
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=D64)
    pol = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D64)
    raw_ref = (ref * (pol.log() - ref.log())).sum().item()  # mean log-ratio over reference completions
    _require(abs(raw_ref + pref.categorical_kl(ref, pol).item()) < 1e-15, "= -KL(ref||pi)")
    # a batch holding each completion in proportion to ref (4, 3, 2, 1 copies)
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([4, 3, 2, 1]))
    out = pref.kto_loss(
        pol.log()[batch],
        ref.log()[batch],
        torch.ones(len(batch), dtype=torch.bool),
        pol.log()[batch],
        ref.log()[batch],
        0.1,
    )
    _require(out.extras["z0"].item() == 0.0 and not out.extras["z0"].requires_grad, "clamped at 0, detached")
    return {
        "mean log-ratio on reference completions": raw_ref,
        "z0": 0.0,
        "KL(pi||ref)": pref.categorical_kl(pol, ref).item(),
    }


@_claim(
    "grpo-half-split-advantage",
    "Preference optimisation and GRPO",
    r"A group whose rewards are split half and half between two values gets advantages "
    r"$\pm\sqrt{(G-1)/G}$ with GRPO's unbiased standard deviation ($\pm0.866$ at $G=4$) and $\pm1$ with the "
    r"population one, whatever the gap between the two values.",
    "$G$ even, `eps = 0`, no `clip_std`, the two values distinct in the reward's dtype",
    "sec-preference-grpo",
    refuted=(r"pm\s*\\?sqrt\{?\(?G\s*/\s*\(?4\s*\(G\s*-\s*1\)",),
)
def _grpo_half_split_advantage():
    import torch

    from kltutor import grpo

    out = {}
    for G in (2, 4, 8, 16):
        for gap in (1.0, 2e-5):
            x = torch.tensor([1.0, 1.0 + gap] * (G // 2), dtype=torch.float64)
            a = grpo.group_advantages(x, G, eps=0.0)
            pop = (x - x.mean()) / x.std(unbiased=False)
            _require(
                abs(a[1].item() - math.sqrt((G - 1) / G)) < 1e-9 and abs(pop[1].item() - 1) < 1e-9, f"G={G}, gap={gap}"
            )
        out[f"G={G}, unbiased std"] = math.sqrt((G - 1) / G)
    out["population std"] = 1.0
    return out


@_claim(
    "grpo-precision",
    "Preference optimisation and GRPO",
    r"The half-split advantage does not depend on the precision: float32 rewards give $\pm\sqrt{(G-1)/G}$ too. "
    r"Precision matters only when the gap falls below the dtype's spacing (about $1.2\times10^{-7}$ near 1 in "
    r"float32): the group then collapses to equal rewards, advantage 0 with an `eps` and NaN without.",
    "`kltutor.grpo.group_advantages` (statistics in float64 after the cast)",
    "sec-preference-grpo",
    needs_condition=((r"(?:needs?|requires?)[^.;]*float64", r"spacing|below|resolution|collapse|gap"),),
)
def _grpo_precision():
    import torch

    from kltutor import grpo

    a32 = grpo.group_advantages(torch.tensor([1.0, 1.00001] * 2, dtype=torch.float32), 4, eps=0.0)
    _require(abs(a32[1].item() - math.sqrt(0.75)) < 1e-6, "float32 gives the same advantage")
    tiny = torch.tensor([1.0, 1.0 + 5e-8] * 2, dtype=torch.float32)
    _require(bool((tiny == 1.0).all()), "5e-8 is below float32's spacing at 1")
    _require(
        torch.isnan(grpo.group_advantages(tiny, 4, eps=0.0)).all() and (grpo.group_advantages(tiny, 4) == 0).all(),
        "collapsed group",
    )
    return {"float32, gap 1e-5": a32[1].item(), "float32 spacing at 1": torch.finfo(torch.float32).eps}


@_claim(
    "group-std-bound",
    "Preference optimisation and GRPO",
    r"For rewards in $[0,1]$ a group's population variance is at most $\tfrac14$ and its unbiased variance at most "
    r"$\tfrac{G}{4(G-1)}$ (both reached by a half-0, half-1 group, $G$ even), so dividing by the std always enlarges differences.",
    r"rewards in $[0, 1]$, $G\ge2$",
    "sec-preference-grpo",
)
def _group_std_bound():
    import itertools

    import torch

    from kltutor.derivations import preference as preference_proofs

    _require(preference_proofs.group_std_bound(), "sympy")
    for G in (2, 3, 4, 5, 6):
        b = torch.tensor(list(itertools.product([0.0, 1.0], repeat=G)), dtype=torch.float64)
        _require(
            abs(b.var(-1, unbiased=False).max().item() - (0.25 if G % 2 == 0 else 0.25 - 0.25 / G**2)) < 1e-12,
            f"pop, G={G}",
        )
        _require(b.var(-1).max().item() <= G / (4 * (G - 1)) + 1e-12, f"unbiased bound, G={G}")
    return {"max unbiased std, G = 4": math.sqrt(4 / 12), "max population std": 0.5}
