"""The ledger's claims on KL in practice (see :mod:`kltutor.claims`)."""

from __future__ import annotations

import math

from kltutor.claims._core import _claim, _max_err, _require, _toy


def _practice_tables():
    """Chapter 8's random autoregressive model (its parameters cell: vocab 5, length 3, seed 0)."""
    import torch

    from kltutor import practice

    g = torch.Generator().manual_seed(0)
    ref = practice.random_logit_tables(5, 3, 1.0, g)
    pol = [1.3 * r + d for r, d in zip(ref, practice.random_logit_tables(5, 3, 0.5, g))]
    return pol, ref


@_claim(
    "sampler-k1-mismatch",
    "KL in practice",
    r"When the rollouts come from a sampler $q$ (temperature, top-p/top-k, another engine or precision) and the "
    r"trainer scores them with $\pitheta$ and $\piref$, the logged k1 averages $\KL(q\|\piref)-\KL(q\|\pitheta)$: the "
    r"objective's KL only when $q=\pitheta$, and negative when the sampler is closer to the reference than to the "
    r"policy. Scoring both models at the sampling temperature (TRL, verl) measures $\KL(\pi_T\|\pi_{\text{ref},T})\ge0$, "
    r"a third quantity. Truncation can raise or lower $\E_q[k_1]$ (it raises it when the policy is sharper than the "
    r"reference). Sequences a truncated sampler never produces contribute no gradient term of their own (their "
    r"logits still move through the softmax normalisation), and no importance weight recovers them.",
    "tokens drawn from $q$, scored by the trainer; the tempered identity needs no truncation",
    "sec-practice-sampler",
    cheatsheet=True,
    refuted=(
        r"[Tt]runcation[^.;]{0,40}\binflates\b",  # only when the policy is sharper than the reference
        r"(?:never|no) (?:gets?|get) (?:a |any )?gradient\b(?! term)",  # their logits still move
        r"get no gradient(?! term)(?! of their own)",
    ),
    needs_condition=(
        (
            r"\blogged (?:k1|KL)\b[^.;]{0,80}?\b(?:is|equals|measures|estimates)\b[^.;]{0,40}?"
            r"(?:objective's KL|KL of the objective|KL\(pi(?:_theta)?\s*\|\|\s*pi_ref\)|"
            r"\\mathrm\{KL\}\(\\pi(?:_\\theta)?\\\|\\pi_\\text\{ref\}\)|\\KL\(\\pitheta\\\|\\piref\))",
            r"on-policy|on policy|q\s*=\s*\\?pi|sampler|\bonly\b|\bnot\b|unless|whatever",
        ),
    ),
)
def _sampler_k1_mismatch():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.estimators import enumerate_autoregressive

    _require(practice_proofs.sampler_k1_expectation(), "sympy")
    pol, ref = _practice_tables()
    on = practice.sampler_mismatch(pol, ref)
    _require(
        abs(on["k1"] - on["kl_target"]) < 1e-12 and abs(on["k3"] - on["kl_target"]) < 1e-12,
        "on-policy: k1, k3 unbiased",
    )
    worst = 0.0
    _, lr = enumerate_autoregressive([practice.process_logits(t) for t in ref])
    _, lp = enumerate_autoregressive([practice.process_logits(t) for t in pol])
    for kw in (dict(temperature=0.7), dict(temperature=1.6), dict(top_k=2), dict(temperature=1.3, top_p=0.9)):
        with torch.no_grad():
            _, lq = enumerate_autoregressive([practice.process_logits(t, **kw) for t in pol])
        q = lq.sum(-1).exp()
        s = q > 0
        kl_q_ref = float((q[s] * (lq - lr).sum(-1)[s]).sum())
        kl_q_pi = float((q[s] * (lq - lp).sum(-1)[s]).sum())
        worst = max(worst, abs(practice.sampler_mismatch(pol, ref, **kw)["k1"] - (kl_q_ref - kl_q_pi)))
    _require(worst < 1e-12, "E_q[k1] = KL(q||ref) - KL(q||pi)")
    hot = practice.sampler_mismatch(pol, ref, temperature=1.6)
    _require(hot["k1"] < 0 < hot["kl_target"], "a hot sampler logs a negative k1")
    tempered = [
        practice.sampler_mismatch(pol, ref, temperature=t, scoring="tempered") for t in (0.5, 0.7, 1.6, 2.0, 3.0)
    ]
    _require(
        all(abs(m["k1"] - m["kl_scored"]) < 1e-12 and m["k1"] >= 0 for m in tempered),
        "tempered scoring: KL(pi_T||ref_T)",
    )
    topk = practice.sampler_mismatch(pol, ref, top_k=2)
    with torch.no_grad():
        _, lq = enumerate_autoregressive([practice.process_logits(t, top_k=2) for t in pol])
    seen = lq.sum(-1).exp() > 0
    pi_seq = lp.sum(-1).exp()
    reweighted = float((pi_seq[seen] * (lp - lr).sum(-1)[seen]).sum())  # E_q[(pi/q) k1] over what q can produce
    _require(
        topk["missing_mass"] > 0.1 and abs(reweighted - on["kl_target"]) > 0.01,
        "truncation: no weight recovers the rest",
    )
    flat = practice.sampler_mismatch(
        [torch.tensor([0.6, 0.4], dtype=torch.float64).log()],
        [torch.tensor([0.7, 0.3], dtype=torch.float64).log()],
        top_k=1,
    )
    _require(flat["k1"] < 0 < flat["kl_target"], "truncation can lower k1: ref (.7,.3), pi (.6,.4), top-1")
    z = torch.tensor([1.0, 0.5, -0.5], dtype=torch.float64, requires_grad=True)
    q3 = practice.process_logits(z.detach(), top_k=2)
    (g3,) = torch.autograd.grad(
        (q3 * torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64) * torch.log_softmax(z, 0)).sum(), z
    )
    _require(q3[2] == 0 and abs(float(g3[2])) > 1e-3, "a never-sampled token's logit still moves")
    return {
        "KL(pi||ref)": on["kl_target"],
        "E[k1], sampler at T = 1.6, scored at 1": hot["k1"],
        "E[k1], pi (.6,.4), ref (.7,.3), top-1": flat["k1"],
        "expected gradient on a never-sampled logit (top-k = 2)": float(g3[2]),
        "max |E_q[k1] - (KL(q||ref) - KL(q||pi))| over 4 samplers": "< 1e-12",
        "tempered scoring, T in 0.5..3: smallest E[k1] = KL(pi_T||ref_T)": min(m["k1"] for m in tempered),
        "top-k = 2: policy mass never sampled": topk["missing_mass"],
        "top-k = 2: KL recovered by weights pi/q": reweighted,
    }


def _tis_toy():
    from kltutor.toys import BinaryAutoregressive

    return BinaryAutoregressive(1.0, -0.8), BinaryAutoregressive(0.5, -0.4), BinaryAutoregressive(0.0, 0.3)


@_claim(
    "tis-bias-variance",
    "KL in practice",
    r"With rollouts from a sampler $q\ne\pitheta$, weighting the policy gradient by the sequence ratio "
    r"$\pitheta(y)/q(y)$ is exact; a per-token ratio $w_t$ leaves a bias at every cap, because it does not correct the "
    r"distribution of the prefix. Truncating the sequence ratio at $C$ (TIS) lowers the variance and adds a bias that "
    r"vanishes once $C$ exceeds the largest ratio; the bias need not shrink monotonically as $C$ grows. The weights "
    r"multiply the policy-gradient term (with k1 in the reward, the penalty is part of it); TRL and verl leave an in-loss "
    r"KL term and the logged KL unweighted, so those stay estimated under $q$ (exact with $\pitheta(y)/q(y)$ on the KL "
    r"term too).",
    r"rollouts from $q$; the gradient of $\E_{\pitheta}[R]-\beta\KL(\pitheta\|\piref)$ with k1 in the reward; "
    r"the numbers are the chapter's binary toy, $T=8$",
    "sec-practice-tis",
    needs_condition=(
        (
            r"(?:per-token|token-level|each token's)\s+(?:importance\s+)?(?:ratio|weight)s?\b[^.;]{0,60}?"
            r"\b(?:corrects?|makes?\b[^.;]{0,40}\bexact|is exact|are exact|unbiased)\b",
            r"one token|single token|prefix|\bnot\b|never|bias|\bonly\b|first update",
        ),
    ),
    refuted=(
        r"[Ii]mportance weights[^.;]{0,20}(?:fix|correct) the rest",  # the libraries apply them to the pg term only
    ),
)
def _tis_bias_variance():
    import torch

    from kltutor import practice
    from kltutor.toys.autoregressive import all_binary_sequences

    pi, q, ref = _tis_toy()
    caps = [0.0, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, math.inf]
    seq = practice.tis_gradient_moments(pi, q, ref, 8, 0.1, caps, "sequence")
    tok = practice.tis_gradient_moments(pi, q, ref, 8, 0.1, caps, "token")
    seqs = all_binary_sequences(8)
    with torch.no_grad():
        max_w = float((pi.sequence_logprobs(seqs) - q.sequence_logprobs(seqs)).exp().max())
    _require(seq[-1]["bias2"] < 1e-20, "the untruncated sequence ratio is exact")
    _require(min(r["bias2"] for r in tok[1:]) > 1e-4, "per-token ratio: biased at every cap")
    truncated = seq[1:]
    _require(
        all(a["variance"] <= b["variance"] + 1e-15 for a, b in zip(truncated, truncated[1:])), "variance grows with C"
    )
    _require(all(r["bias2"] < 1e-20 for r in truncated if r["cap"] >= max_w), "no bias once C >= max ratio")
    _require(any(a["bias2"] < b["bias2"] for a, b in zip(truncated, truncated[1:])), "the bias is not monotone in C")
    best = min(truncated, key=lambda r: r["mse_64"])
    from kltutor.gradients import exact_kl_gradients

    true_kl = exact_kl_gradients(pi, ref, 8)["true"]
    kl_err = {
        w: _max_err(practice.sampler_kl_term(pi, q, ref, 8, w)["gradient"], true_kl)
        for w in ("none", "trainer-ratio", "sequence")
    }
    _require(kl_err["sequence"] < 1e-12 and min(kl_err["none"], kl_err["trainer-ratio"]) > 0.1, "KL term under q")
    return {
        "in-loss k3 under q, unweighted (verl): gradient error": kl_err["none"],
        "x pi/pi_old (TRL): gradient error": kl_err["trainer-ratio"],
        "squared bias, uncorrected": seq[0]["bias2"],
        "squared bias, per-token ratio (smallest over caps)": min(r["bias2"] for r in tok[1:]),
        "squared bias, sequence ratio untruncated": "< 1e-20",
        "largest sequence ratio": max_w,
        "variance, C = inf / C = 1": seq[-1]["variance"] / seq[1]["variance"],
        "cap with the smallest MSE (64 sequences)": best["cap"],
    }


@_claim(
    "aggregation-effective-beta",
    "KL in practice",
    r"Written as $\frac1G\sum_i\beta_\text{eff}(T_i)\sum_tk_{i,t}$, the KL part of the loss has $\beta_\text{eff}=\beta$ "
    r"(sequence-sum), $\beta/T_i$ (per-sequence mean, GRPO's $1/\lvert o_i\rvert$), $\beta/\bar T$ (token-mean, $\bar T$ the "
    r"batch's mean length) and $\beta/L$ (Dr. GRPO's constant $L$). The policy-gradient term gets the same weight, so "
    r"only the per-sequence mean reweights sequences by length.",
    "$G$ sequences of lengths $T_i$; the four aggregations of `kltutor.practice.AGGREGATIONS`",
    "sec-practice-aggregation",
    cheatsheet=True,
)
def _aggregation_effective_beta():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs

    _require(practice_proofs.effective_beta_aggregation(), "sympy")
    T = [10.0, 100.0]
    want = {
        "sequence-sum": [0.04, 0.04],
        "sequence-mean": [0.004, 0.0004],
        "token-mean": [0.04 / 55] * 2,
        "token-sum-norm": [0.04 / 128] * 2,
    }
    for mode, w in want.items():
        got = practice.effective_beta(T, mode, 0.04, max_len=128)
        _require(torch.allclose(got, torch.tensor(w, dtype=torch.float64), rtol=1e-12, atol=0), mode)
    return {f"beta = 0.04, lengths 10 and 100, {m}": ", ".join(f"{v:.3g}" for v in w) for m, w in want.items()}


@_claim(
    "sequence-mean-length-bias",
    "KL in practice",
    r"With a per-sequence mean ($c=1/T$) the update of a bandit over whole responses stops at "
    r"$\piref e^{(R-\kappa T)/\beta}/Z$ with $\kappa\,\E_\pi[T]=\E_\pi[R]-b-\beta\KL$. When the group baseline centres the "
    r"task reward only ($b=\E_\pi[R]$: the KL is a loss term, or a k1 penalty added after the centring), "
    r"$\kappa=-\beta\KL/\E_\pi[T]<0$: a length bonus of $\KL/\E_\pi[T]$ nats per token that lengthens equally rewarded "
    r"answers. With k1 inside the centred reward ($b=\E_\pi[R-\beta\ell]$), $\kappa=0$: the tilt, as for every constant "
    r"weight (sequence-sum, token-mean in the large-batch limit, Dr. GRPO).",
    "population limit (large groups), mean-centred group advantages, exact expected updates",
    "sec-practice-length-bias",
    needs_condition=(
        (
            r"per-token length (?:bonus|term)|fixed point by length|stationary point carries|longer ones are favoured",
            r"baseline|task reward|loss term|KL (?:sits )?in the loss|centr|k2",
        ),
    ),
)
def _sequence_mean_length_bias():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.preference import optimal_policy

    _require(practice_proofs.sequence_mean_stationary_point() and practice_proofs.sequence_mean_baseline(), "sympy")
    T = torch.arange(1, 9, dtype=torch.float64).repeat_interleave(2)
    R = torch.tensor([1.0, 0.0] * 8, dtype=torch.float64)
    ref = torch.softmax(torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0)
    beta = 0.1
    tilt = optimal_policy(ref, R, beta)
    smean = practice.aggregation_stationary_policy(ref, R, T, beta, "sequence-mean")
    _require(
        practice.aggregation_update(smean, ref, R, T, beta, "sequence-mean", "task").abs().max() < 1e-14, "stationary"
    )
    kl = float((smean * (smean / ref).log()).sum())
    bonus = float(((smean / tilt).log()[R == 1].diff() / T[R == 1].diff()).mean())
    _require(abs(bonus - kl / float((smean * T).sum())) < 1e-12 and bonus > 0, "bonus = KL / E[T]")
    correct = R == 1

    def length(p):
        return float((p[correct] * T[correct]).sum() / p[correct].sum())

    _require(length(smean) > length(tilt) and abs(length(tilt) - length(ref)) < 1e-12, "longer correct answers")
    _require(
        practice.aggregation_update(tilt, ref, R, T, beta, "sequence-mean", "task").abs().max() > 1e-3,
        "task: tilt not stationary",
    )
    worst = max(
        float(practice.aggregation_update(tilt, ref, R, T, beta, m, b).abs().max())
        for m in practice.AGGREGATIONS
        for b in practice.BASELINES
        if (m, b) != ("sequence-mean", "task")
    )
    _require(worst < 1e-14, "shaped baseline or constant weight: the tilt is stationary")
    return {
        "beta = 0.1: length bonus per token (nats)": bonus,
        "KL / E[T] at the stationary point": kl / float((smean * T).sum()),
        "E[T | correct]: reference = tilt": length(tilt),
        "E[T | correct]: per-sequence mean": length(smean),
        "largest update at the tilt, k1 inside the centred reward or a constant weight": "< 1e-14",
    }


@_claim(
    "beta-zero-diversity",
    "KL in practice",
    r"With $\beta=0$ (no reference model, as in DAPO and Dr. GRPO) only the reward's argmax limits the drift, and exact "
    r"policy-gradient dynamics widen the logit gap between equally rewarded answers in proportion to their probability "
    r"gap: the likelier correct answer takes over and the entropy among correct answers falls at every step. With "
    r"$\beta>0$ the optimum $\piref e^{r/\beta}/Z$ keeps the reference's ratios among equally rewarded answers exactly.",
    r"a softmax bandit trained by its exact gradient; for $\beta>0$ a statement about the optimum",
    "sec-practice-reference",
    refuted=(
        r"(?:β|\\beta|beta)\s*=\s*0\b[^.;]{0,60}\b(?:loses nothing|costs nothing|is harmless|is free)\b",
        r"(?:DAPO|Dr\.? GRPO|dropping the (?:KL|reference))[^.;]{0,60}\b(?:loses nothing|costs nothing|nothing is lost|is harmless)\b",
    ),
)
def _beta_zero_diversity():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs

    _require(practice_proofs.beta_zero_rich_get_richer(), "sympy")
    p_ref = torch.tensor([0.30, 0.10, 0.05, 0.55], dtype=torch.float64)
    r = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    ok = r == 1
    pc = p_ref[ok] / p_ref[ok].sum()
    h_ref = float(-(pc * pc.log()).sum())
    free = practice.bandit_with_reference_updates(p_ref, r, 0.0, 900, 4.0, correct=ok)
    kept = practice.bandit_with_reference_updates(p_ref, r, 0.5, 900, 4.0, correct=ok)
    h = free["correct_entropy"]
    _require(
        h[0] < h_ref and all(b < a for a, b in zip(h, h[1:])),
        "beta = 0: entropy among correct answers falls every step",
    )
    _require(abs(kept["correct_entropy"][-1] - h_ref) < 1e-8, "beta > 0: the reference's ratios are kept")
    return {
        "entropy among correct answers, reference": h_ref,
        "after 900 steps, beta = 0": h[-1],
        "after 900 steps, beta = 0.5": kept["correct_entropy"][-1],
        "KL to the start, beta = 0": free["kl_initial"][-1],
    }


@_claim(
    "reset-reference-tilts",
    "KL in practice",
    r"A reference reset to the policy every $\tau$ steps bounds the KL of each period only: if every period converges, "
    r"$k$ resets compose to $\pi_0e^{kr/\beta}/Z$, the fixed-reference optimum with $\beta/k$, so the drift from the "
    r"start keeps growing (a proximal-point method).",
    "hard resets; each period run to convergence",
    "sec-practice-reference",
    needs_condition=(
        (r"(?:reset|moving|updated) reference[^.;]{0,60}\bbounds?\b", r"period|\beach\b|per-|step size|not the total"),
    ),
)
def _reset_reference_tilts():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.preference import optimal_policy

    _require(practice_proofs.reset_composes_tilts(), "sympy")
    p_ref = torch.tensor([0.30, 0.10, 0.05, 0.55], dtype=torch.float64)
    r = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    composed = p_ref
    for _ in range(3):
        composed = optimal_policy(composed, r, 0.5)
    _require(
        torch.allclose(composed, optimal_policy(p_ref, r, 0.5 / 3), rtol=1e-12, atol=1e-15), "3 tilts = tilt at beta/3"
    )
    fixed = practice.bandit_with_reference_updates(p_ref, r, 0.5, 900, 4.0)
    hard = practice.bandit_with_reference_updates(p_ref, r, 0.5, 900, 4.0, reset_every=300)
    tilt3 = optimal_policy(p_ref, r, 0.5 / 3)
    kl3 = float((tilt3 * (tilt3 / p_ref).log()).sum())
    _require(
        abs(hard["kl_initial"][-1] - kl3) < 0.01, "the run reaches the tilt at beta/3 (converged periods, to 0.01)"
    )
    _require(
        max(hard["kl_reference"]) <= max(fixed["kl_reference"]) + 1e-9 < hard["kl_initial"][-1],
        "per period bounded, total not",
    )
    return {
        "KL to the start after 3 periods": hard["kl_initial"][-1],
        "KL of the tilt at beta/3": kl3,
        "KL to the start, fixed reference": fixed["kl_initial"][-1],
    }


@_claim(
    "lora-reference-exact",
    "KL in practice",
    r"With a LoRA adapter that starts at zero ($B=0$) on frozen base weights, switching the adapter off gives the initial "
    r"policy exactly, at every step; initialisations that move part of the weight into the adapter (PEFT's PiSSA, OLoRA, "
    r"CorDA, LoftQ) rewrite the base, so the disabled adapter is a different model.",
    "base weights frozen; the reference scored with the adapter disabled",
    "sec-practice-reference",
)
def _lora_reference_exact():
    import copy

    import torch
    from torch import nn

    from kltutor import practice

    g = torch.Generator().manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(16, 6)
            with torch.no_grad():
                for lin in (self.q_proj, self.down_proj):
                    lin.weight.copy_(0.5 * torch.randn(lin.weight.shape, generator=g))
                    lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))

        def forward(self, x):
            return torch.log_softmax(self.down_proj(torch.tanh(self.q_proj(x))), -1)

    base = Tiny().double()
    x = torch.randn(32, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        initial = base(x)
    zero = copy.deepcopy(base)
    practice.add_lora(zero, rank=2, init="zero")
    opt = torch.optim.SGD([p for p in zero.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        (-zero(x)[:, 0].mean()).backward()
        opt.step()
    with torch.no_grad(), practice.adapters_disabled(zero):
        off = zero(x)
    with torch.no_grad():
        moved = float((zero(x) - initial).abs().max())
    _require(
        torch.equal(off, initial) and moved > 1e-3,
        "zero start: the disabled adapter is the initial policy, bit for bit",
    )
    principal = copy.deepcopy(base)
    practice.add_lora(principal, rank=2, init="principal")
    with torch.no_grad(), practice.adapters_disabled(principal):
        off_p = principal(x)
    gap = float((off_p - initial).abs().max())
    _require(gap > 0.1, "principal start: the disabled adapter is another model")
    return {
        "zero start, 3 updates: max |reference - initial|": 0.0,
        "max |policy - initial| after them": moved,
        "principal start: max |reference - initial| (log-probs)": gap,
    }


@_claim(
    "two-kl-terms",
    "KL in practice",
    r"With k1 in the reward ($\beta_R$) and token-level k3 in the loss ($\beta_L$) the expected gradients add, the betas "
    r"do not: $\beta_R\nabla\KL(\pitheta\|\piref)$ plus $\beta_L$ times k3's per-token forward-KL gradient, not "
    r"$(\beta_R+\beta_L)\nabla\KL(\pitheta\|\piref)$. On a one-token bandit the fixed point maximises "
    r"$\E[r]-\beta_R\KL(\pi\|\piref)-\beta_L\KL(\piref\|\pi)$, not the tilt with $\beta_R+\beta_L$; the two KLs agree to "
    r"second order around $\piref$ and differ at the third. Against that tilt the forward term keeps a floor under "
    r"low-probability (here zero-reward) responses and puts more mass on the best response, taking it from the middle "
    r"ones; the reward can end below or above the tilt's, depending on the betas.",
    "on-policy; the bandit is chapter 8's five-response example",
    "sec-practice-two-kls",
    refuted=(
        r"keeps more weight on low-reward responses",  # and on the best one; the reward can exceed the tilt's
        r"(?:same as|equivalent to|amounts to|acts as) (?:one|a single) [^.;]{0,30}(?:β|\\beta|beta)_?\{?R\}?\s*\+\s*(?:β|\\beta|beta)_?\{?L",
    ),
)
def _two_kl_terms():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.preference import optimal_policy

    _require(practice_proofs.two_kl_stationarity(), "sympy")
    pi, ref = _toy()
    g = practice.two_kl_gradients(pi, ref, 5, 0.1, 0.1)
    _require(_max_err(g["combined"], 0.1 * g["reverse"] + 0.1 * g["k3_loss"]) < 1e-14, "gradients add")
    off = _max_err(g["combined"], g["naive"]) / float(g["naive"].abs().max())
    _require(off > 0.1, "not (beta_R + beta_L) x reverse")
    p = torch.tensor([0.1, 0.2, 0.3, 0.3, 0.1], dtype=torch.float64)
    r = torch.tensor([1.0, 0.6, 0.0, 0.0, 0.3], dtype=torch.float64)
    both = practice.two_kl_bandit_optimum(p, r, 0.1, 0.1)
    resid = r - 0.1 * (both / p).log() + 0.1 * p / both
    _require(float(resid.max() - resid.min()) < 1e-9, "stationarity of E r - bR KL(pi||ref) - bL KL(ref||pi)")
    tilt = optimal_policy(p, r, 0.2)
    kl_both, kl_tilt = float((both * (both / p).log()).sum()), float((tilt * (tilt / p).log()).sum())
    _require(abs(kl_both - kl_tilt) > 0.05, "not the tilt at beta_R + beta_L")
    zero, best, middle = r == 0, int(r.argmax()), (r > 0) & (r < r.max())
    rew = {}
    for bR, bL in ((0.1, 0.1), (0.0, 0.2), (0.05, 0.3)):
        b2, t2 = practice.two_kl_bandit_optimum(p, r, bR, bL), optimal_policy(p, r, bR + bL)
        _require((b2[zero] > t2[zero]).all() and b2[best] > t2[best] and b2[middle].sum() < t2[middle].sum(), "shape")
        rew[(bR, bL)] = float((b2 * r).sum() - (t2 * r).sum())
    _require(rew[(0.1, 0.1)] < 0 < rew[(0.05, 0.3)], "the reward is below the tilt's for some betas, above for others")
    return {
        "reward - tilt's reward, (0.1, 0.1)": rew[(0.1, 0.1)],
        "(0.05, 0.3)": rew[(0.05, 0.3)],
        "T = 5 toy, beta_R = beta_L = 0.1: relative gap to (beta_R + beta_L) x reverse-KL gradient": off,
        "bandit, beta_R = beta_L = 0.1: KL(pi||ref)": kl_both,
        "tilt at beta = 0.2: KL(pi||ref)": kl_tilt,
    }


@_claim(
    "grpo-loss-zero-at-start",
    "KL in practice",
    r"At the first update on a batch ($w=1$), with group-centred advantages and per-sequence means, the GRPO surrogate is "
    r"exactly 0 whatever the rewards, and the KL term is 0 at step 0: with one update per batch and no rollout "
    r"importance weights or token masks on the policy term, the logged loss is exactly $\beta$ times the KL term and "
    r"rises because the KL does, while its gradient is not zero. With a token mean (TRL's default `loss_type`, "
    r"'dapo') the surrogate is $-\sum_iT_iA_i/\sum_iT_i$, zero only when lengths and advantages are uncorrelated.",
    'first update on each batch (one update per batch); per-sequence mean aggregation (TRL `loss_type="grpo"`, verl '
    "`seq-mean-token-mean`); no rollout importance weights or token masks on the policy term",
    "sec-practice-loss-zero",
    cheatsheet=True,
    needs_condition=(
        (
            r"(?<![Ww]hy the )(?<![Ww]hy does the )GRPO loss(?: curve)?\b[^.;]{0,60}?(?:starts? at (?:0|zero)|is (?:exactly )?(?:0|zero)\b|"
            r"(?:is|equals) (?:β|\\beta|beta)\s*(?:×|\\times|times|\*))",
            r"per-sequence|sequence-mean|sequence mean|1/T|token[- ]mean|aggregation",
        ),
        (
            r"\bloss\b[^.;]{0,40}\b(?:is|equals)\b[^.;]{0,25}?(?:exactly )?(?:β|\\beta|beta)\s*(?:×|\\times|times)",
            r"per-sequence|sequence-mean|sequence mean|one update|conditions|first update",
        ),
    ),
    refuted=(r"mostly beta\s*\*\s*KL", r"loss is (?:mostly|roughly) (?:β|beta)"),
)
def _grpo_loss_zero_at_start():
    import torch

    from kltutor.derivations import practice as practice_proofs
    from kltutor.grpo import grpo_loss

    _require(practice_proofs.grpo_loss_zero_at_start(), "sympy")
    D64 = torch.float64
    lp0 = torch.log(
        torch.tensor(
            [[0.5, 0.4, 0.6, 0.0], [0.3, 0.2, 0.0, 0.0], [0.9, 0.7, 0.8, 0.5], [0.6, 0.0, 0.0, 0.0]], dtype=D64
        ).clamp_min(1e-3)
    ).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=D64)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=D64)
    out = {}
    for agg in ("sequence-mean", "token-mean"):
        res = grpo_loss(
            lp0,
            lp0.detach(),
            lp0.detach(),
            mask,
            rewards,
            group_size=4,
            placement="k3-in-loss",
            beta=0.1,
            aggregation=agg,
        )
        (grad,) = torch.autograd.grad(res.loss, lp0)
        out[agg] = (float(res.loss.detach()), float(grad.norm()), float(res.kl_term))
    _require(
        abs(out["sequence-mean"][0]) < 1e-15 and out["sequence-mean"][1] > 0.1 and out["sequence-mean"][2] == 0.0,
        "per-sequence mean: value 0, gradient not",
    )
    _require(abs(out["token-mean"][0]) > 1e-3, "token mean: not 0 with unequal lengths")
    return {
        "loss at step 0, per-sequence mean": "< 1e-15",
        "its gradient norm": out["sequence-mean"][1],
        "loss at step 0, token mean": out["token-mean"][0],
    }


@_claim(
    "negative-kl-causes",
    "KL in practice",
    r"On-policy, $\E_{\pitheta}[\mathrm{k1}]=\KL(\pitheta\|\piref)\ge0$ for every reference, so a wrong reference "
    r"checkpoint makes the step-0 KL positive, not negative. A negative *expected* k1 means the tokens were not samples "
    r"of the scored policy (sampler settings, another engine, or the policy scored in another precision than the one that "
    r"sampled: $\KL(q\|\piref)-\KL(q\|\pitheta)$; dropout in the scoring "
    r"pass, which subtracts $\E_\text{mask}\KL(\pi\|\pi_\text{mask})$; prompt or padding under the mask), log-probabilities "
    r"that do not normalise, or a reversed sign; otherwise a negative batch mean is noise.",
    r"$\piref$ a normalised distribution over the sampled tokens; exact arithmetic",
    "sec-practice-negative-kl",
    cheatsheet=True,
    refuted=(
        r"\bsix (?:different )?(?:reasons|causes)\b",
        r"mismatched reference\*\* \(`reference_mismatch`, `precision_mismatch`\)",  # a low-precision *policy* is a cause
    ),
    needs_condition=(
        (
            r"(?=[\s\S]*\bnegative)[\s\S]*(?:reference that is not the initial|wrong reference|mismatched reference)",
            r"does not|doesn't|cannot|never|not make|positive|\\ge\s*0|≥\s*0|on its own",
        ),
    ),
)
def _negative_kl_causes():
    import torch

    from kltutor.divergences import kl
    from kltutor.toys.distributions import random_categorical

    pi = random_categorical(1, 6, seed=11)[0]
    refs = random_categorical(2000, 6, seed=12, concentration=0.3)
    on_policy = kl(pi.expand_as(refs), refs)  # E_pi[k1] = KL(pi || ref) for each wrong reference
    _require((on_policy > 0).all(), "on-policy k1 has a positive mean for every wrong reference")
    # dropout in the scoring pass of a small network; tokens sampled from the eval-mode policy (= reference at step 0)
    g = torch.Generator().manual_seed(13)
    w1, w2, x = (
        torch.randn(16, 8, generator=g, dtype=torch.float64),
        torch.randn(6, 16, generator=g, dtype=torch.float64),
        torch.randn(8, generator=g, dtype=torch.float64),
    )
    h = torch.tanh(w1 @ x)
    eval_logp = torch.log_softmax(w2 @ h, -1)
    masks = (torch.rand(200, 16, generator=g, dtype=torch.float64) > 0.1).double() / 0.9
    drop_logp = torch.log_softmax((masks * h) @ w2.T, -1)
    per_mask = (eval_logp.exp() * (drop_logp - eval_logp)).sum(-1)  # E_pi[k1] at step 0, one mask each
    _require(
        torch.allclose(per_mask, -kl(eval_logp.exp().expand_as(drop_logp), drop_logp.exp()), rtol=1e-10, atol=1e-14),
        "= -KL(pi||pi_mask)",
    )
    _require((per_mask < 0).all(), "every dropout mask lowers the expected k1")
    return {
        "on-policy E[k1], smallest over 2000 wrong references": on_policy.min().item(),
        "step 0, dropout p = 0.1 in the scoring pass: E[k1] averaged over 200 masks": per_mask.mean().item(),
        "largest over the masks": per_mask.max().item(),
    }


@_claim(
    "geomean-ratio-kl",
    "KL in practice",
    r"Multiplying the per-token KL term by GSPO's geometric-mean sequence ratio $(\prod_tw_t)^{1/T}$ (TRL's "
    r'`use_bias_correction_kl` with `importance_sampling_level="sequence"`) does not correct it: its expected gradient is '
    r"wrong even at the first update, where every ratio is 1: the weight's own gradient $\frac1T\sum_sg_s$ supplies only "
    r"$1/T$ of the prefix-score term $(\sum_sg_s)\sum_tk_3(\ell_t)$ that the KL gradient needs, so its gradient is "
    r"plain k3's $+$ (true $-$ plain)$/T$. The full ratio $\prod_tw_t$ and the prefix ratio $\prod_{s\le t}w_s$ are exact; at "
    r"the first update the per-token ratio $w_t$ turns k3's gradient into token-level k2's.",
    r"token-level k3 in the loss; samples from $\piold$ ($=\pitheta$ at the first update); the 1/T identity on-policy",
    "sec-practice-sequence-ratio",
    refuted=(r"adds a term the KL does not have",),
    needs_condition=(
        (
            r"(?:GSPO|geometric[- ]mean)[^.;]{0,60}?\b(?:corrects?|is exact|unbiased)\b",
            r"\bnot\b|never|n't|\bno\b|wrong|biased",
        ),
    ),
)
def _geomean_ratio_kl():
    from kltutor import gradients as G
    from kltutor import practice
    from kltutor.toys import BinaryAutoregressive

    pi, ref = _toy()
    old = BinaryAutoregressive(0.1, -0.1)
    true = G.exact_kl_gradients(pi, ref, 5)["true"]
    out = {}
    for name, sampler in (("first update", pi), ("stale samples", old)):
        for w in ("prefix", "sequence"):
            _require(
                _max_err(practice.offpolicy_kl_gradient(pi, sampler, ref, 5, "k3", w), true) < 1e-12, f"{w}, {name}"
            )
        err = _max_err(practice.offpolicy_kl_gradient(pi, sampler, ref, 5, "k3", "sequence-geomean"), true)
        _require(err > 0.1, f"geometric mean, {name}")
        out[f"geometric-mean ratio, {name}: gradient error"] = err
    plain = practice.offpolicy_kl_gradient(pi, pi, ref, 5, "k3", "none")
    geo = practice.offpolicy_kl_gradient(pi, pi, ref, 5, "k3", "sequence-geomean")
    _require(_max_err(geo, plain + (true - plain) / 5) < 1e-12, "on-policy: plain + (true - plain) / T")
    out["on-policy: |geomean - (plain + (true - plain)/T)|"] = "< 1e-12"
    tok = practice.offpolicy_kl_gradient(pi, pi, ref, 5, "k3", "token")
    _require(
        _max_err(tok, G.exact_kl_gradients(pi, ref, 5, level="token")["k2-in-loss"]) < 1e-12,
        "per-token ratio = token k2",
    )
    out["prefix or full ratio"] = "exact (< 1e-12)"
    return out


@_claim(
    "inverted-k3-chi2",
    "KL in practice",
    r"k3 written with the ratio inverted, $e^{\ell}-1-\ell$, is non-negative, but its mean is "
    r"$\chi^2(\pitheta\|\piref)-\KL(\pitheta\|\piref)$ per token (on sequences: the per-token $\chi^2$ at the policy's "
    r"prefixes, summed, minus the sequence KL), and in the loss it follows the gradient of $\tfrac12\chi^2$ per token, a "
    r"penalty far harsher than the KL on large $\pitheta/\piref$.",
    r"samples from $\pitheta$",
    "sec-practice-slips",
    needs_condition=((r"mean (?:under \\?pi )?is \$?\\?chi\^?2", r"per token|per-token|one token|each token|prefix"),),
)
def _inverted_k3_chi2():
    import torch

    from kltutor import practice
    from kltutor.derivations import practice as practice_proofs
    from kltutor.toys.autoregressive import all_binary_sequences

    _require(practice_proofs.inverted_k3_is_chi2(), "sympy, one token")
    pi, ref = _toy()
    T = 5
    value, grad = practice.expected_in_loss(pi, ref, T, lambda l: torch.expm1(l) - l)
    seqs = all_binary_sequences(T)
    with torch.no_grad():
        w = pi.sequence_logprobs(seqs).exp()
        seq_chi2 = float((w**2 / ref.sequence_logprobs(seqs).exp()).sum() - 1)
        r1 = torch.sigmoid(ref.logits(seqs))
        kl_seq = float(pi.exact_kl(ref, T))
    p1 = torch.sigmoid(pi.logits(seqs))
    chi_t = p1**2 / r1 + (1 - p1) ** 2 / (1 - r1) - 1
    per_token = float((w[:, None] * chi_t.detach()).sum())
    g_half = torch.stack(torch.autograd.grad((w[:, None] * chi_t / 2).sum(), [pi.a, pi.b]))
    _require(abs(value - (per_token - kl_seq)) < 1e-12, "mean = sum of per-token chi2 - KL")
    _require(abs(value - (seq_chi2 - kl_seq)) > 0.1, "not the sequence chi2")
    _require(_max_err(grad, g_half) < 1e-12, "gradient of chi2/2 per token")
    _require(abs((math.e - 2) - (math.exp(-1) - 1 + 1)) > 0.3, "at l = 1: e - 2 against e^-1")
    return {
        "T = 5: mean of the inverted k3": value,
        "sum of per-token chi2 - KL": per_token - kl_seq,
        "sequence chi2 - KL": seq_chi2 - kl_seq,
        "KL": kl_seq,
    }
