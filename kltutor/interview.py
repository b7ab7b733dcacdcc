"""The interview question bank (chapter ``ch-interview``): questions in three tiers, and a self-test quiz.

This module is the single source of truth for the questions. The interview chapter
(label ``ch-interview``) answers every question in full, with derivations checked by sympy in the
chapter modules of :mod:`kltutor.derivations`; the questions on KL in practice (Q26 on) are answered where
their numbers are computed, in chapter ``ch-practice`` (``Question.answered_in``); the self-test page
``book/self_test.md`` is generated from :func:`questions` by ``scripts/self_test.py``; the chapters'
"Interview check" sections can pick their questions with ``questions(chapter="ch-...")``.

Every short answer restates claims of the book; ``Question.claims`` names them (ids in
:mod:`kltutor.claims`), and ``Question.proofs`` gives the sections that prove them, which the
interview chapter links under "Checked in". ``tests/test_claims.py`` fails when a short answer
repeats a refuted version of a claim or states one without its condition.

>>> from kltutor import interview
>>> quiz = interview.quiz(n=3, seed=1)
>>> print(quiz)              # the questions only
1. Q9 (must-know). What is reward over-optimisation, and why does it happen?
2. Q37 (must-know). At step 0 the policy equals the reference, yet the logged KL is not zero. Name two silent bugs that do this or worse, and how to catch them.
3. Q5 (must-know). What are the two placements of the KL term in RLHF, and how do they differ?
>>> print(quiz.reveal(0).splitlines()[2][:60])  # the short answer (and the pitfalls) of the first one
Answer: Optimising a learned proxy reward raises the proxy m
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["TIERS", "CHAPTER_LABELS", "Question", "Quiz", "questions", "get", "quiz", "answer_label"]

#: The three tiers, in order: any LLM engineering role, research / alignment teams, top-lab depth.
TIERS: tuple[str, ...] = ("must-know", "advanced", "top-lab")

TIER_TITLES = {
    "must-know": "Tier 1: must-know",
    "advanced": "Tier 2: advanced",
    "top-lab": "Tier 3: top-lab",
}

#: The book's chapter labels (docs/CONVENTIONS.md); every question points at one or more of them.
CHAPTER_LABELS: tuple[str, ...] = (
    "ch-fundamentals",
    "ch-estimators",
    "ch-placements",
    "ch-schedules",
    "ch-preference",
    "ch-overoptimization",
    "ch-failures",
    "ch-practice",
    "ch-distillation",
    "ch-interview",
    "ch-capstone",
)


@dataclass(frozen=True)
class Question:
    """One interview question: what is asked, a short answer, the usual mistakes, where to read more,
    and the claims of the ledger (:mod:`kltutor.claims`) that the short answer restates."""

    id: str
    tier: str
    question: str
    answer: str
    pitfalls: tuple[str, ...]
    chapters: tuple[str, ...]
    answered_in: str = "ch-interview"
    claims: tuple[str, ...] = ()

    @property
    def number(self) -> int:
        return int(self.id[1:])

    @property
    def label(self) -> str:
        """The label of this question's full answer (in the interview chapter, or in ``answered_in``)."""
        return answer_label(self.id, self.answered_in)

    @property
    def proofs(self) -> tuple[str, ...]:
        """The labels of the sections that prove this answer's claims (their sources), in order, no repeats."""
        from kltutor import claims

        out: list[str] = []
        for cid in self.claims:
            src = claims.get(cid).source
            if src not in out and src != self.label:
                out.append(src)
        return tuple(out)

    def prompt(self) -> str:
        """The question as a self-test shows it: no answer."""
        return f"{self.id} ({self.tier}). {self.question}"

    def reveal(self) -> str:
        """The short answer and the pitfalls, as text."""
        lines = [f"{self.id}. {self.question}", "", f"Answer: {self.answer}", "", "Common pitfalls:"]
        lines += [f"  - {p}" for p in self.pitfalls]
        lines += ["", "Read: " + ", ".join(self.chapters) + f" (full answer: {self.label})"]
        if self.proofs:
            lines += ["Checked in: " + ", ".join(self.proofs)]
        return "\n".join(lines)


def answer_label(qid: str, chapter: str = "ch-interview") -> str:
    """The MyST label of a question's full answer in ``chapter``, e.g. ``sec-interview-q7`` or ``sec-practice-q26``."""
    return f"sec-{chapter.removeprefix('ch-')}-{qid.lower()}"


_BANK: tuple[Question, ...] = (
    # ------------------------------------------------------------------ tier 1: must-know
    Question(
        "Q1",
        "must-know",
        "What is the KL divergence, and what are its three most important properties?",
        "KL(p||q) = E_{x~p}[log p(x)/q(x)]. It is non-negative and zero only when p = q (Gibbs' "
        "inequality, from Jensen), asymmetric (KL(p||q) != KL(q||p) in general), and not a metric "
        "(no symmetry, no triangle inequality). Also useful: jointly convex, additive over the "
        "chain rule (sequence KL = expected sum of per-token KLs), infinite when p puts mass where q has none.",
        (
            "Calling KL a distance: it is neither symmetric nor does it satisfy the triangle inequality.",
            "Forgetting the support condition: KL(p||q) is infinite if q(x) = 0 where p(x) > 0.",
            "Proving non-negativity with 'log is concave' applied in the wrong direction.",
        ),
        ("ch-fundamentals",),
        claims=("kl-gibbs", "kl-not-a-metric", "kl-support", "kl-chain-rule"),
    ),
    Question(
        "Q2",
        "must-know",
        "Why does RLHF add a KL penalty to the reward-maximisation objective?",
        "The reward model is a learned proxy, accurate only near the distribution it was trained on. "
        "Maximising it without a leash lets the policy drift to outputs the proxy over-scores (reward "
        "hacking: length, flattery, format tricks, degenerate text). The penalty beta*KL(pi||pi_ref) "
        "keeps the policy close to the reference where the proxy is trusted, keeps fluency and diversity, "
        "and makes the objective strictly concave with a unique optimum pi* proportional to pi_ref*exp(r/beta).",
        (
            "Saying 'it prevents overfitting' without naming the proxy-reward / distribution-shift mechanism.",
            "Forgetting that the penalty also fixes the target distribution (the closed-form optimum).",
            "Believing a KL penalty prevents reward hacking: it only limits how far the policy can go to find it.",
        ),
        ("ch-fundamentals", "ch-overoptimization", "ch-failures"),
        claims=("optimal-policy", "proxy-up-gold-down"),
    ),
    Question(
        "Q3",
        "must-know",
        "What is the k1 estimator, and why can a single sample be negative?",
        "k1 = l = log pi_theta(y) - log pi_ref(y) for y sampled from pi_theta. Its mean is exactly "
        "KL(pi_theta||pi_ref), but a single sample is negative whenever the sampled y is more likely "
        "under the reference than under the policy. KL is non-negative as an expectation, not pointwise; "
        "k1's variance is Var(l), large when the two policies differ.",
        (
            "Concluding that a negative per-token k1 is a bug, or clamping it at zero (which biases it upward).",
            "Confusing the log-ratio to the reference (l) with the PPO importance ratio w = pi_theta/pi_old.",
            "Thinking a negative batch mean of k1 means the policy is closer than zero: it is noise.",
        ),
        ("ch-estimators",),
        claims=("k1-unbiased",),
    ),
    Question(
        "Q4",
        "must-know",
        "What is the k3 estimator (Schulman 2020), and what are its properties?",
        "k3 = (pi_ref/pi_theta) - 1 - log(pi_ref/pi_theta) = e^{-l} - 1 + l. It is k1 plus the "
        "control variate e^{-l} - 1, whose mean under pi_theta is 0, so it is unbiased; it is "
        "non-negative pointwise because e^x >= 1 + x; and its variance is usually lower than k1's when "
        "the policies are close. Lower variance is not guaranteed: the control variate is the ratio "
        "pi_ref/pi_theta, whose variance is the chi-square divergence chi2(pi_ref||pi_theta), which can be "
        "huge or infinite when pi_ref has mass where pi_theta has little.",
        (
            "Stating 'k3 always has lower variance than k1': false when pi_ref/pi_theta is heavy-tailed.",
            "Writing the ratio upside down (pi_theta/pi_ref - 1 - log(pi_theta/pi_ref) has the wrong mean under pi_theta).",
            "Treating value properties (unbiased, non-negative) as if they made k3 a good loss term.",
        ),
        ("ch-estimators",),
        claims=("k3-unbiased", "k3-nonnegative", "k3-variance"),
    ),
    Question(
        "Q5",
        "must-know",
        "What are the two placements of the KL term in RLHF, and how do they differ?",
        "In reward: subtract beta*k (a detached number) from each token's reward, so the KL enters "
        "the returns/advantages and its gradient flows through the score function (PPO/InstructGPT, "
        "k1-in-reward). In loss: add beta*k to the loss and let autograd differentiate it (GRPO, "
        "k3-in-loss). The two are not the same gradient: on-policy, k1-in-reward gives the exact "
        "gradient of the sequence-level reverse KL; k1-in-loss has zero expected gradient; k2-in-loss "
        "equals k1-in-reward for one token or for k2 of the summed sequence log-ratio, while token-level "
        "k2 on longer sequences is biased; k3-in-loss follows the forward KL(pi_ref||pi_theta) per token, "
        "at the policy's own prefixes (for one token: the forward-KL gradient), not the reverse KL. "
        "In reward, the KL also passes through PPO's clip.",
        (
            "Saying the placements are equivalent because 'the objective is the same'.",
            "Believing k3-in-loss optimises the reverse KL because k3 is an unbiased estimate of its value.",
            "Forgetting to detach the KL term when it is put in the reward.",
        ),
        ("ch-placements", "ch-estimators"),
        claims=(
            "k1-in-reward-exact",
            "k1-in-loss-zero",
            "k2-in-loss",
            "k3-in-loss-forward",
            "clip-removes-in-reward-kl",
        ),
    ),
    Question(
        "Q6",
        "must-know",
        "How do you choose β, and what are the symptoms of a β that is too large or too small?",
        "beta prices one nat of KL in units of reward, so it must be set relative to the reward scale. "
        "Too large: measured KL near zero, reward flat, the policy stays at the reference. Too small: KL "
        "grows without bound, proxy reward climbs while held-out quality falls, responses get longer, "
        "repetitive or sycophantic. Practice: fix a KL budget and use an adaptive controller "
        "(Ziegler et al.) that moves beta toward a target KL; or sweep beta and pick by gold/held-out "
        "reward against measured KL.",
        (
            "Copying a beta from a paper without matching reward scale, per-token vs per-sequence KL, and estimator.",
            "Judging beta by the proxy reward curve alone.",
            "Forgetting that with group-normalised advantages (GRPO) beta competes with unit-scale advantages, not with raw reward.",
        ),
        ("ch-schedules", "ch-failures"),
        claims=("beta-exchange-rate", "beta-symptoms", "kl-falls-with-beta", "adaptive-beta-integral"),
    ),
    Question(
        "Q7",
        "must-know",
        "Does RLHF use the forward or the reverse KL, and why?",
        "RLHF penalises KL(pi_theta||pi_ref), the reverse KL (expectation under the policy being "
        "trained). It is the one that can be estimated from the policy's own rollouts, it is the "
        "regulariser that yields the closed-form optimum pi* proportional to pi_ref*exp(r/beta), and it "
        "is zero-forcing: infinite if the policy puts mass where pi_ref has none, indifferent to modes of "
        "pi_ref the policy leaves out (whether a fit then settles on one mode depends on how separated "
        "the modes are). The forward KL(pi_ref||pi_theta) is mass-covering.",
        (
            "Naming a direction without writing the formula: communities disagree on which one is 'forward'.",
            "Claiming the forward KL cannot be used: it is the cross-entropy on reference samples (SFT-style loss).",
            "Thinking the reverse KL forbids dropping modes: it penalises covering where pi_ref is small, not leaving modes.",
        ),
        ("ch-fundamentals",),
        claims=("reverse-kl-zero-forcing", "optimal-policy", "forward-kl-cross-entropy"),
    ),
    Question(
        "Q8",
        "must-know",
        "How does DPO's implicit reward relate to the KL divergence?",
        "DPO reparametrises the reward as r_theta(x,y) = beta*log(pi_theta(y|x)/pi_ref(y|x)), the "
        "sequence-level log-ratio, which is exactly what the KL-regularised optimum implies (up to "
        "beta*log Z(x), which cancels in Bradley-Terry differences). Its expectation under y~pi_theta is "
        "beta*KL(pi_theta||pi_ref), but on preference data (y not sampled from pi_theta) it is a pointwise "
        "log-ratio, not a KL estimate. The reference in the denominator is what anchors DPO to pi_ref.",
        (
            "Saying DPO has no KL: the beta-KL-regularised objective is exactly what it solves.",
            "Reading the mean implicit reward on preference data as the policy's KL.",
            "Forgetting the beta*log Z(x) term, or not knowing why it cancels.",
        ),
        ("ch-preference",),
        claims=("implicit-reward-not-kl", "dpo-loss-gradient"),
    ),
    Question(
        "Q9",
        "must-know",
        "What is reward over-optimisation, and why does it happen?",
        "Optimising a learned proxy reward raises the proxy monotonically while the true (gold) reward "
        "first rises and then falls (Goodhart's law). The proxy's errors are small on the reference "
        "distribution and grow off it; optimisation pressure selects exactly the outputs the proxy "
        "over-scores. KL from the reference is the natural x-axis: Gao et al. (2023) fit gold reward as a "
        "function of d = sqrt(KL) and found the peak moves to larger KL as the reward model grows.",
        (
            "Calling it 'overfitting' without the proxy-vs-gold mechanism.",
            "Monitoring only the proxy reward.",
            "Using the best-of-n formula for the KL of an RL policy, or an RL fit for best-of-n.",
        ),
        ("ch-overoptimization",),
        claims=("proxy-up-gold-down", "gao-peak-budget"),
    ),
    Question(
        "Q10",
        "must-know",
        "Why did GRPO use k3 instead of k1, and was that the right choice?",
        "As a value estimate k3 is unbiased, never negative and usually lower-variance than k1, which "
        "makes a logged KL readable. But GRPO puts it in the loss, where what matters is its gradient: "
        "on-policy and for one token, E[grad k3] = E[(1 - e^{-l}) grad log pi] = grad KL(pi_ref||pi_theta), "
        "the forward KL; on sequences it is that forward KL per token, at the policy's own prefixes. "
        "Near l = 0 it matches the reverse-KL gradient to first order (1 - e^{-l} = l - l^2/2 + ...), so "
        "with a small beta and a policy near the reference it behaves; it is not the gradient of the "
        "objective GRPO writes down. k1-in-reward is, at any length; so is k2 of the summed sequence "
        "log-ratio in the loss (token-level k2-in-loss only for one token).",
        (
            "Justifying a loss term by the properties of its value (unbiased, non-negative).",
            "Calling the k3 gradient an O(l^2)-biased approximation of the reverse KL without saying what it is exactly: the forward-KL gradient.",
            "Believing k1-in-loss would have worked: its expected gradient is zero.",
        ),
        ("ch-estimators", "ch-placements", "ch-preference"),
        claims=("k3-unbiased", "k3-in-loss-forward", "k1-in-loss-zero", "k2-in-loss", "k1-in-reward-exact"),
    ),
    # ------------------------------------------------------------------ tier 2: advanced
    Question(
        "Q11",
        "advanced",
        "Derive the unbiasedness of k3.",
        "With y ~ pi_theta and l = log pi_theta(y) - log pi_ref(y): E[e^{-l}] = sum_y pi_theta(y) "
        "pi_ref(y)/pi_theta(y) = sum_y pi_ref(y) = 1 (requires pi_theta > 0 wherever pi_ref > 0), "
        "E[l] = KL(pi_theta||pi_ref), so E[k3] = 1 - 1 + KL = KL.",
        (
            "Using E[pi_theta/pi_ref] = 1 under pi_theta (false: that ratio has mean 1 only under pi_ref).",
            "Forgetting the support condition that makes sum_y pi_ref(y) over the policy's support equal 1.",
        ),
        ("ch-estimators",),
        claims=("k3-unbiased",),
    ),
    Question(
        "Q12",
        "advanced",
        "Derive the k3 estimator from f(x) = e^x − x − 1.",
        "Look for an unbiased, non-negative estimator of KL(q||p) from x ~ q. Let s = p(x)/q(x); "
        "E_q[s] = 1, so -log s + lambda*(s - 1) is unbiased for every lambda. It is a convex function "
        "of s minimised at s = 1 only if lambda = 1, which makes it non-negative: k3 = (s - 1) - log s = "
        "f(log s) with f(x) = e^x - x - 1 >= 0. lambda = 1 is also the first-order-optimal control-variate "
        "coefficient near q = p. (In RLHF q = pi_theta, p = pi_ref, log s = -l.)",
        (
            "Presenting f without the control-variate argument that produces it.",
            "Choosing lambda to minimise variance in general: the variance-optimal lambda is not 1 away from q = p.",
        ),
        ("ch-estimators",),
        claims=("k3-lambda-one", "k3-nonnegative"),
    ),
    Question(
        "Q13",
        "advanced",
        "Derive the closed-form optimal policy of KL-regularised RL.",
        "Maximise J(pi) = sum_y pi(y) r(y) - beta*sum_y pi(y) log(pi(y)/pi_ref(y)) subject to sum_y pi(y) = 1. "
        "Stationarity: r(y) - beta*log(pi(y)/pi_ref(y)) - beta - mu = 0, so pi*(y) = pi_ref(y) exp(r(y)/beta)/Z "
        "with Z = sum_y pi_ref(y) exp(r(y)/beta). Uniqueness: J is strictly concave. Cleaner: "
        "J(pi) = beta*log Z - beta*KL(pi||pi*), maximised exactly at pi = pi*, with value beta*log Z. "
        "Bradley-Terry is not needed for this step; it enters when the reward is learned from preferences.",
        (
            "Dropping the normalisation constraint or the sign of the KL term.",
            "Not noticing that J(pi) = beta log Z - beta KL(pi||pi*) proves optimality and uniqueness in one line.",
            "Saying the optimum needs Bradley-Terry.",
        ),
        ("ch-preference",),
        claims=("optimal-policy",),
    ),
    Question(
        "Q14",
        "advanced",
        "Derive the DPO loss from the closed-form optimal policy.",
        "Invert pi*: r(x,y) = beta*log(pi*(y|x)/pi_ref(y|x)) + beta*log Z(x). Under Bradley-Terry, "
        "P(y_w > y_l | x) = sigmoid(r(x,y_w) - r(x,y_l)); Z(x) does not depend on y and cancels. "
        "Parametrise pi* by pi_theta and minimise the negative log-likelihood of the preferences: "
        "L_DPO = -E log sigmoid(beta*log(pi_theta(y_w)/pi_ref(y_w)) - beta*log(pi_theta(y_l)/pi_ref(y_l))).",
        (
            "Not explaining why log Z cancels (it depends on x only, and BT depends on reward differences).",
            "Forgetting that the derivation assumes pi_theta can represent pi* for the learned reward.",
        ),
        ("ch-preference",),
        claims=("dpo-loss-gradient",),
    ),
    Question(
        "Q15",
        "advanced",
        "Derive the gradient of the DPO loss.",
        "With h_theta = log(pi_theta(y_w)/pi_ref(y_w)) - log(pi_theta(y_l)/pi_ref(y_l)) (no beta) and "
        "L = -log sigmoid(beta*h_theta): d/dh[-log sigmoid(beta*h)] = -beta*sigmoid(-beta*h), and with "
        "r_theta = beta*log(pi_theta/pi_ref) this gives grad L = -beta*E[sigmoid(r_theta(y_l) - r_theta(y_w)) "
        "(grad log pi_theta(y_w) - grad log pi_theta(y_l))]. Each pair is weighted by how wrongly the "
        "implicit reward ranks it; correctly ranked pairs fade out.",
        (
            "Getting the weight's sign wrong (it is sigmoid of the loser minus the winner).",
            "Forgetting that only the difference of the two log-likelihoods is controlled: both can fall (likelihood displacement).",
        ),
        ("ch-preference",),
        claims=("dpo-loss-gradient",),
    ),
    Question(
        "Q16",
        "advanced",
        "Why is the k2 estimator biased, and by how much when the KL is small?",
        "E[k2] = E[l^2]/2 is not the KL, and not an f-divergence either: it is E[f(pi_ref/pi_theta)] with "
        "f(u) = (log u)^2/2, which is not convex (f'' < 0 for u > e). Writing the cumulants "
        "of l under pi_theta as kappa_j, the identity E[e^{-l}] = 1 gives KL = kappa_1 = kappa_2/2 - "
        "kappa_3/6 + kappa_4/24 - ..., and E[k2] = (kappa_2 + kappa_1^2)/2, so bias = kappa_1^2/2 + "
        "kappa_3/6 - kappa_4/24 + ... . For pi_theta a perturbation of size eps of pi_ref, KL = O(eps^2) "
        "and the bias is O(eps^3): k2 agrees with KL to second order. For a Gaussian log-ratio "
        "(same-variance Gaussians) the bias is exactly KL^2/2.",
        (
            "Saying 'it is a second-order approximation' without the order of the error.",
            "Expanding around the wrong ratio: under pi_theta, pi_ref/pi_theta has mean 1, pi_theta/pi_ref does not.",
        ),
        ("ch-estimators",),
        claims=("k2-bias", "k2-not-f-divergence"),
    ),
    Question(
        "Q17",
        "advanced",
        "How is the adaptive-β controller like a PID controller?",
        "Ziegler et al.'s controller: e_t = clip(KL_t/KL_target - 1, -0.2, 0.2), beta_{t+1} = beta_t (1 + K_beta e_t). "
        "The correction is proportional to the error, but it is applied to beta incrementally, so log beta "
        "accumulates the sum of past errors: in control terms it is an integral controller on log beta "
        "(a 'proportional controller in log space' in the paper's words), which is why it removes a "
        "steady-state KL error. The clip bounds each step; K_beta sets the speed. A derivative term would "
        "react to the noise of minibatch KL estimates.",
        (
            "Calling it purely proportional without noticing that beta integrates the error.",
            "Adding a D term on a noisy KL estimate without filtering.",
            "Forgetting the clip, which keeps one noisy batch from moving beta by more than a factor 1 +- 0.2*K_beta.",
        ),
        ("ch-schedules",),
        claims=("adaptive-beta-integral",),
    ),
    Question(
        "Q18",
        "advanced",
        "How do you set β in GRPO with a k3 KL term when the reward is binary (0/1)?",
        "Separate two objectives. GRPO's update: rewards are normalised within a group, so the policy term "
        "has unit-scale advantages whatever the reward's scale (a half-0/half-1 group of G gets +-sqrt((G-1)/G) "
        "with the unbiased std), a group with all-0 or all-1 rewards has zero advantage (only the KL term "
        "acts on it), and the expected step on a 0/1 reward is grad q times a weight that depends on the "
        "success rate q (about 1/sqrt(q(1-q)) for large groups), so hard and easy prompts are up-weighted: "
        "GRPO does not maximise E[r] - beta*KL of the raw reward. The raw-reward objective, for reference: "
        "with success rate p0 under pi_ref its optimum has success rate q*(beta) = p0 e^{1/beta}/(p0 e^{1/beta} "
        "+ 1 - p0) and a KL never above log(1/p0); at beta = 0.04 it already solves every solvable prompt. "
        "So pick beta from the per-token KL you can afford (or 0 with verifiable rewards and no proxy to "
        "hack), remember that k3-in-loss is not the reverse-KL gradient, and watch per-token KL and entropy.",
        (
            "Transferring beta = 0.04 from DeepSeekMath without matching normalisation, length aggregation and estimator.",
            "Forgetting that std-normalisation inflates the advantage of rare successes in hard groups.",
        ),
        ("ch-schedules", "ch-placements"),
        claims=(
            "grpo-normalised-binary",
            "binary-optimum-raw",
            "grpo-half-split-advantage",
            "k3-in-loss-forward",
            "beta-exchange-rate",
        ),
    ),
    Question(
        "Q19",
        "advanced",
        "SimPO has no reference model. Why does it still work, and can it reward-hack?",
        "SimPO uses the length-normalised log-likelihood beta/|y| log pi_theta(y|x) as its implicit reward "
        "and a target margin gamma in a Bradley-Terry loss. Nothing pulls the policy back toward a "
        "reference: the loss can be lowered without bound by pushing the loser's likelihood down. What "
        "keeps it in check is the SFT initialisation, a small learning rate and few epochs (implicit "
        "early stopping). Length normalisation changes what is scored (the mean per-token log-likelihood "
        "instead of the sequence log-ratio) but does not remove length effects: a response's probability "
        "is e^{|y| * score/beta}, so at SimPO's optimum a long response that is not ranked first is crushed. "
        "It optimises offline preference data, so it cannot exploit a reward model, but it can drift.",
        (
            "Claiming SimPO is strictly better than DPO, that length normalisation is a KL substitute, or that it removes length bias.",
            "Forgetting that without a reference the optimum of the loss is degenerate.",
        ),
        ("ch-preference",),
        claims=("simpo-length", "dpo-rl-same-optimum", "ipo-target", "kto-reference-point"),
    ),
    Question(
        "Q20",
        "advanced",
        "How are per-token KL and sequence-level KL related?",
        "By the chain rule, KL(pi_theta(.|x)||pi_ref(.|x)) over whole responses equals E_{y~pi_theta}[sum_t "
        "KL_t(s_t)], with KL_t the full-vocabulary KL at prefix s_t; the sum of sampled log-ratios sum_t l_t "
        "is an unbiased single-sample estimate of it. Its gradient is not the sum of per-token gradients: "
        "grad KL_seq = E[sum_t grad log pi(y_t|s_t) * sum_{t'>=t} l_t'] (the KL-to-go), which k1-in-reward "
        "delivers through the returns and token-local losses (k2-in-loss per token) miss; k2 of the summed "
        "log-ratio has it. Averaging over tokens instead of summing changes the objective (length weighting).",
        (
            "Reporting the token-mean KL as 'the KL' when the objective penalises the sequence KL.",
            "Including prompt or padding tokens: mask to response tokens.",
            "Assuming token-level k2-in-loss is the exact sequence-KL gradient (true for one token only).",
        ),
        ("ch-fundamentals", "ch-estimators", "ch-placements"),
        claims=("kl-chain-rule", "k1-in-reward-exact", "k2-in-loss", "token-vs-sequence-k3", "token-mean-kl"),
    ),
    # ------------------------------------------------------------------ tier 3: top-lab
    Question(
        "Q21",
        "top-lab",
        "Prove f(x) = e^x − x − 1 ≥ 0, derive the non-negativity and unbiasedness of k3, and say which "
        "property matters for KL as a loss term.",
        "f(0) = 0, f'(x) = e^x - 1 vanishes only at 0, f'' = e^x > 0: strictly convex, global minimum 0. "
        "k3 = f(-l) >= 0. Unbiasedness: E[e^{-l}] = 1 under pi_theta. Neither property matters for a loss: "
        "what matters is the expected gradient. grad k3 = (1 - e^{-l}) grad log pi_theta, whose mean is "
        "grad KL(pi_ref||pi_theta) (forward KL, for one token; per token at the policy's prefixes on "
        "sequences). Use k3 to log the KL; use k1-in-reward (or sequence-level k2-in-loss; token-level k2 "
        "only for one token) to optimise the reverse KL.",
        (
            "Treating non-negativity as what makes a loss principled.",
            "Stopping at 'first-order approximation' instead of identifying the forward-KL gradient.",
        ),
        ("ch-estimators", "ch-placements"),
        claims=("k3-nonnegative", "k3-unbiased", "k3-in-loss-forward", "k1-in-reward-exact", "k2-in-loss"),
    ),
    Question(
        "Q22",
        "top-lab",
        "Explain the equivalence between DPO's implicit reward and the policy gradient of KL-regularised RL.",
        "In the population limit (Bradley-Terry labels, pairs covering every response, infinite data) both "
        "target the same optimum pi* proportional to pi_ref exp(r/beta). RL: grad J = E_{pi_theta}[grad log "
        "pi_theta (r - beta*log(pi_theta/pi_ref))], whose stationary point is pi*; at pi* the shaped reward "
        "r - beta*log(pi*/pi_ref) = beta*log Z is constant in y, so the gradient vanishes. DPO: the reward "
        "that pi_theta is optimal for is r_theta = beta*log(pi_theta/pi_ref) (+ beta log Z), and fitting it to "
        "preferences by maximum likelihood is reward modelling in policy space. On finite data they "
        "differ (the IPO argument): a response that wins and never loses has no finite maximum-likelihood "
        "reward, so DPO's loss keeps falling as its log-ratio grows and beta does not stop it, while RL "
        "against a fitted (finite) reward model keeps the KL anchor; and RL samples on-policy, DPO does not.",
        (
            "Saying 'DPO has no RL in it' or 'DPO is identical to PPO'.",
            "Claiming the same fixed point without its conditions (Bradley-Terry, full coverage, infinite data).",
            "Not showing why the RL gradient vanishes at pi*.",
        ),
        ("ch-preference",),
        claims=("optimal-policy", "dpo-loss-gradient", "dpo-rl-same-optimum"),
    ),
    Question(
        "Q23",
        "top-lab",
        "From the √KL form of the gold-reward curve, derive a safe KL budget against over-optimisation.",
        "For best-of-n, Gao et al. fit R(d) = d(alpha - b d) with d = sqrt(KL). dR/dd = alpha - 2 b d = 0 "
        "gives d* = alpha/(2 b), KL* = alpha^2/(4 b^2), R* = alpha^2/(4 b). Stopping at half the "
        "peak KL (d = d*/sqrt 2) keeps R/R* = sqrt 2 - 1/2, about 91% of the peak gain. The coefficients "
        "must be fitted on gold or held-out evaluations, and RL follows a different functional form, so "
        "refit for RL. Best-of-n's own KL is at most log n - (n-1)/n, with equality only when the reward "
        "has a continuous distribution under pi_ref (no atoms); on a discrete support it is strictly less "
        "and never exceeds -log pi_ref(top reward class).",
        (
            "Reusing the best-of-n peak formula for an RL run.",
            "Treating a budget fitted at one reward-model size as valid for another.",
        ),
        ("ch-overoptimization",),
        claims=("gao-peak-budget", "bon-kl", "bon-kl-cap"),
    ),
    Question(
        "Q24",
        "top-lab",
        "How would you design an RLHF algorithm that uses both the reverse and the forward KL?",
        "Reverse KL(pi_theta||pi_ref) (on-policy, k1-in-reward) stops the policy from going where the "
        "reference has little mass; forward KL(pi_ref||pi_theta) = -H(pi_ref) - E_{pi_ref}[log pi_theta] stops "
        "it from dropping what the reference can do (mode collapse, loss of diversity). The forward term is "
        "cheap: a cross-entropy (SFT) loss on samples from pi_ref or on the SFT data (InstructGPT's "
        "pretraining-mix term, PPO-ptx, is a version with pretraining data); on-policy k3-in-loss also has "
        "the forward-KL gradient in expectation, per token at the policy's own prefixes. "
        "Objective: E[r] - beta_R KL(pi||pi_ref) - beta_F KL(pi_ref||pi), with separate budgets. "
        "Trade-off: the forward term resists sharpening, which is sometimes the point of RL.",
        (
            "Saying the forward KL needs impossible sampling: pi_ref samples are ordinary inference.",
            "Just 'adding both' without saying how each is estimated and what it protects.",
        ),
        ("ch-fundamentals", "ch-placements"),
        claims=("reverse-kl-zero-forcing", "forward-kl-cross-entropy", "k3-in-loss-forward", "k1-in-reward-exact"),
    ),
    Question(
        "Q25",
        "top-lab",
        "How might next-generation RLHF improve KL regularisation? Give three directions and their trade-offs.",
        "(1) Correct gradients: k1-in-reward or sequence-level k2-in-loss, with prefix-product importance "
        "weights when a batch is reused off-policy (a per-token weight is exact for one token only), k3 only for "
        "logging; costs nothing but discipline. (2) Exact per-token KL over the full vocabulary at each "
        "prefix (zero sampling noise at the token level); costs memory and bandwidth for the reference "
        "logits. (3) Budgets instead of fixed beta: constrained optimisation with a target KL per prompt or "
        "task (Lagrangian beta); needs good KL estimates and a budget you can justify. Others: other "
        "f-divergences or chi-square for heavy tails, reference resets or moving anchors, trust regions "
        "without a reference (clip only), each trading stability against how far the policy can improve.",
        (
            "Listing ideas without trade-offs.",
            "Forgetting that reference-free methods (SimPO, ORPO) already explore the KL-free end.",
        ),
        ("ch-placements", "ch-schedules", "ch-overoptimization"),
        claims=(
            "k1-in-reward-exact",
            "k2-in-loss",
            "offpolicy-prefix-weight",
            "k3-variance",
            "adaptive-beta-integral",
            "kl-chi2-bound",
        ),
    ),
    # ------------------------------------------------------------------ KL in practice (answered in ch-practice)
    Question(
        "Q26",
        "must-know",
        "Why does the GRPO loss start at zero and then rise during training?",
        "At the first update on a batch the importance ratio is 1 and the group advantages sum to zero, so with "
        "per-sequence means the surrogate term is exactly 0 whatever the rewards (with a token mean it is a "
        "length-weighted sum of the advantages, not 0 in general; a token mean is TRL's default loss_type 'dapo'). What "
        "is left is beta times the KL term, which is 0 at step 0 (policy = reference) and grows as the policy moves: "
        "with per-sequence means, one update per batch and no rollout importance weights or token masks on the policy "
        "term, the logged loss is exactly beta times the KL term. The loss value says nothing about the reward; its "
        "gradient is what trains.",
        (
            "Reading a rising GRPO loss as divergence or a bug.",
            "Forgetting that the surrogate's value is zero while its gradient is not.",
        ),
        ("ch-practice", "ch-capstone"),
        "ch-practice",
        claims=("grpo-loss-zero-at-start",),
    ),
    Question(
        "Q27",
        "must-know",
        "Your dashboard shows a negative KL to the reference. What can cause it, and how do you tell which?",
        "On-policy E[k1] = KL(pi||pi_ref) >= 0 for any reference, so a negative batch mean of k1 = sum_t l_t has few "
        "causes: plain sampling noise when the KL is small (within a few standard errors of 0); tokens that are not "
        "samples of the scored policy: rollouts drawn from another distribution (temperature, top-p/top-k, another "
        "engine or precision: E_q[l] = KL(q||ref) - KL(q||pi)), dropout left on in the policy's scoring pass (it "
        "subtracts KL(pi||pi_mask)), prompt or padding tokens under the mask; log-probabilities that do not normalise; "
        "or simply a reversed sign in the logging code. A wrong reference checkpoint does not make the expected k1 "
        "negative: it shows as a positive KL at step 0. Check the step-0 log-ratio, the mask, train/eval mode, the "
        "sampler's own log-probs, and log k3 or the exact KL next to k1 (kltutor.checklist.diagnose_negative_kl does "
        "these checks on a batch).",
        (
            "Clamping the logged KL at 0, which hides every cause.",
            "Blaming noise without computing the standard error.",
        ),
        ("ch-practice", "ch-failures", "ch-estimators"),
        "ch-practice",
        claims=("negative-kl-causes", "sampler-k1-mismatch"),
    ),
    Question(
        "Q28",
        "advanced",
        "Rollouts are sampled with temperature, top-p or by an inference engine in bf16, and the trainer scores them "
        "at temperature 1 in another precision. Which KL does the logged estimate measure, and what does truncated "
        "importance sampling do?",
        "Averaged over sampler draws q, k1 estimates KL(q||pi_ref) - KL(q||pi), not KL(pi||pi_ref); it can be negative "
        "(a hot sampler visits tokens the policy has pushed below the reference) and k3's ratio pi_ref/pi has a heavy "
        "tail there. TRL and verl divide both the policy's and the reference's logits by the sampling temperature, so "
        "they estimate KL(pi_T||pi_ref,T), a KL between tempered distributions; top-p/top-k are not applied when "
        "scoring, so truncated samples stay off-policy: truncation shifts k1 (up when the policy is sharper than the "
        "reference, down otherwise), and the sequences the sampler cannot produce contribute no gradient term of their "
        "own (their logits still move through the softmax normalisation) and no weight can recover them. Importance "
        "weights pi/q correct the policy-gradient term: a sequence-level ratio is exact, a per-token ratio does not "
        "correct the prefix, and truncating the weight at C trades a bias for a lower variance. TRL and verl apply "
        "them to that term only: an in-loss KL term and the logged KL stay estimated under the sampler.",
        (
            "Assuming the logged KL is the objective's KL whatever the sampling settings.",
            "Believing per-token importance ratios make an off-policy sequence gradient exact.",
            "Assuming the rollout importance weights also correct an in-loss KL term or the logged KL.",
        ),
        ("ch-practice", "ch-placements"),
        "ch-practice",
        claims=("sampler-k1-mismatch", "tis-bias-variance", "trl-vllm-is-pg-only", "verl-rollout-is-pg-only"),
    ),
    Question(
        "Q29",
        "advanced",
        "How do token-mean, per-sequence mean and Dr. GRPO's constant normaliser change what β means?",
        "Write the KL part of the loss as (1/G) sum_i beta_eff(T_i) sum_t k_it. Sequence-sum gives beta_eff = beta; "
        "per-sequence mean (GRPO's 1/|o_i|, TRL loss_type='grpo', verl 'seq-mean-token-mean') gives beta/T_i, so a long "
        "response pays less per nat of sequence KL; token-mean (TRL 'bnpo'/'dapo', verl 'token-mean') gives beta over "
        "the batch's mean length, the same for every sequence of a batch; Dr. GRPO's sum over a constant L (TRL "
        "'dr_grpo', verl 'seq-mean-token-sum-norm') gives beta/L. The same weight multiplies the policy-gradient term, "
        "so within a sequence beta still prices KL against advantage; across sequences only the per-sequence mean "
        "reweights by length. When the KL is a loss term (the group centres the task reward only), the per-sequence "
        "mean's stationary point carries a per-token length bonus of KL/E[T] nats; with k1 inside the group-centred "
        "reward the centring absorbs it and the fixed point is the tilt.",
        (
            "Transferring a beta between runs with different aggregations or response lengths.",
            "Thinking token-mean and sequence-mean differ only in scale.",
        ),
        ("ch-practice", "ch-placements"),
        "ch-practice",
        claims=("aggregation-effective-beta", "sequence-mean-length-bias", "trl-loss-types", "verl-agg-loss-modes"),
    ),
    Question(
        "Q30",
        "advanced",
        "What do you lose by training with β = 0 and no reference model, and what does a reference that is reset "
        "to the policy every few steps actually control?",
        "With beta = 0 nothing anchors what the reward does not see: only the reward's argmax limits the KL to the start, and "
        "among equally rewarded answers, exact policy-gradient dynamics favour those already likely (rich get "
        "richer), so diversity among correct answers collapses; with beta > 0 the optimum keeps the reference's "
        "ratios among them. A reset reference bounds the KL per period only: k converged periods give the tilt with "
        "beta/k, so the total drift keeps growing (a proximal-point scheme). A LoRA policy's disabled adapter is "
        "exactly the initial policy when the adapter starts at zero (B = 0) on a frozen base; initialisations that "
        "move part of the weight into the adapter (PiSSA, OLoRA, CorDA, LoftQ) make it a different model.",
        (
            "Saying beta = 0 is harmless because the reward is verifiable.",
            "Calling the per-period KL of a reset reference 'the KL of the run'.",
        ),
        ("ch-practice", "ch-preference"),
        "ch-practice",
        claims=("beta-zero-diversity", "reset-reference-tilts", "lora-reference-exact"),
    ),
    Question(
        "Q31",
        "advanced",
        "What happens when a run has the KL both in the reward and in the loss?",
        "The expected gradients add: beta_R times the reverse-KL gradient (k1 in the reward) plus beta_L times what the "
        "loss term follows (for k3 in the loss, per-token forward-KL gradients). On a bandit the fixed point maximises "
        "E r - beta_R KL(pi||ref) - beta_L KL(ref||pi), which is not the tilt with beta_R + beta_L: the two KLs agree "
        "only to second order around the reference. The in-reward part also passes through PPO's clip while the "
        "in-loss part does not, and a logged 'KL' may be either term.",
        ("Treating the two betas as one beta_R + beta_L.", "Double-counting one KL in the logs."),
        ("ch-practice", "ch-placements"),
        "ch-practice",
        claims=("two-kl-terms", "k3-in-loss-forward", "clip-removes-in-reward-kl"),
    ),
    Question(
        "Q32",
        "top-lab",
        "With GSPO-style sequence-level importance ratios, is multiplying the per-token KL term by the sequence "
        "ratio a correct off-policy correction?",
        "Not with GSPO's ratio. GSPO's ratio is the geometric mean (prod_t w_t)^(1/T); off-policy, "
        "E_old[(prod w)^(1/T) sum_t k_t] is not the KL under the current policy, and its gradient is not the KL's even "
        "on-policy, where every ratio is 1: the exact gradient needs the prefix-score term (sum_s g_s) sum_t k(l_t), "
        "which the full ratio's own gradient supplies, and the geometric mean's gradient (1/T) sum_s g_s supplies "
        "only 1/T of it, so its gradient is plain + (true - plain)/T (both the on-policy and the stale-batch errors "
        "are in the chapter). Exact corrections are the full sequence ratio prod_t w_t or, with lower "
        "variance, the prefix ratio prod_{s<=t} w_s for token t. TRL's use_bias_correction_kl with "
        "importance_sampling_level='sequence' multiplies the KL by the geometric-mean ratio.",
        (
            "Assuming whatever ratio the policy loss uses also corrects the KL term.",
            "Checking only the value at theta = theta_old, where every ratio is 1 but the gradients differ.",
        ),
        ("ch-practice", "ch-placements"),
        "ch-practice",
        claims=("geomean-ratio-kl", "offpolicy-prefix-weight", "trl-grpo-kl-term"),
    ),
    Question(
        "Q33",
        "top-lab",
        "A colleague writes k3 as expm1(logp - ref_logp) - (logp - ref_logp). What is wrong, and what does it "
        "optimise in the loss?",
        "It is k3 with the ratio inverted: e^l - 1 - l with l = log pi - log pi_ref instead of e^-l - 1 + l. It is still "
        "non-negative, so nothing looks wrong on a dashboard, but for one token its mean under pi is "
        "chi2(pi||pi_ref) - KL(pi||pi_ref) (summed over a response: the per-token chi2 at the policy's prefixes minus "
        "the sequence KL) and, in the loss, its expected gradient per token is that of chi2(pi||pi_ref)/2, a divergence that punishes "
        "large ratios pi/pi_ref far harder than the KL. Test estimators by exact enumeration: their mean must equal the KL.",
        (
            "Accepting an estimator because it is non-negative.",
            "Checking the formula only at l = 0, where both versions vanish.",
        ),
        ("ch-practice", "ch-estimators"),
        "ch-practice",
        claims=("inverted-k3-chi2",),
    ),
    # ------------------------------------------------ KL as a filter, tempered k1, published settings (ch-practice)
    Question(
        "Q34",
        "advanced",
        "Your trainer drops sequences whose KL between the inference engine and the trainer exceeds a threshold "
        "(verl's rollout_rs, TRL's sequence_mask, OpenRLHF's is_correction gates). Is the policy gradient still "
        "unbiased?",
        "No. With rollouts from a sampler q and the sequence ratio pi(y)/q(y) as weight, the gradient is exact; any "
        "filter that rejects something removes those sequences' terms and the baseline no longer cancels, so the "
        "expected gradient is biased (every such rule on the chapter's toy), by as much as the dropped sequences carry (the ones with the largest ratios "
        "weigh most). A per-token ratio (OpenRLHF) is biased before any filter. A summed statistic against a fixed "
        "threshold also rejects long sequences far more often than short ones; the per-token mean removes the "
        "growth of the statistic, but against one threshold its rejection rate still depends on the length. Filters trade bias for stability: measure what they drop.",
        (
            "Believing a filter only removes noise: it removes terms of the expectation.",
            "Comparing a summed statistic across lengths with one threshold.",
        ),
        ("ch-practice",),
        "ch-practice",
        claims=("kl-filter-bias", "kl-filter-length-bias"),
    ),
    Question(
        "Q35",
        "top-lab",
        "DeepSeek-V3.2 masks only negative-advantage sequences whose KL to the sampler is above a threshold. What "
        "does that do to the expected update?",
        "It removes exactly the masked sequences' terms, all with A < 0: relative to the exact gradient it adds the "
        "sum over masked sequences of pi(y)|A(y)| grad log pi(y), so those off-policy bad sequences are no longer "
        "pushed down, while every positive-advantage sequence is kept. The rule is asymmetric on purpose (a "
        "stabiliser, not a correction) and with a constant baseline the result depends on the baseline. TRL's "
        "off_policy_mask_threshold runs the same rule (GRPOTrainer.get_off_policy_mask).",
        (
            "Calling the masking an importance correction: it changes the objective's gradient.",
            "Assuming a symmetric rule would give the same update.",
        ),
        ("ch-practice",),
        "ch-practice",
        claims=("negative-only-masking-bias",),
    ),
    Question(
        "Q36",
        "advanced",
        "Rollouts are sampled at temperature 0.8 with top-p 0.9 and the loss has a k1 KL term. What happens to the "
        "policy?",
        "On-policy, k1 in the loss has zero expected gradient. Under a sampler q sharper than the policy its "
        "expected update of the logits is beta (pi - q): it lowers the tokens q favours and raises the rest, an "
        "entropy bonus nobody asked for, and with the KL term alone the policy climbs toward uniform (sequence "
        "entropy toward length x log V on the chapter's toy). Use k3 or k2 in the loss (their gradient vanishes at pi = pi_ref whatever the sampler), "
        "k1 in the reward, or the exact KL, and score with the sampler's processing or correct with the sequence "
        "ratio.",
        (
            "Believing k1 in the loss is harmless because it is zero in expectation on-policy.",
            "Reading the rising entropy as healthy exploration.",
        ),
        ("ch-practice", "ch-placements"),
        "ch-practice",
        claims=("tempered-k1-entropy-push",),
    ),
    Question(
        "Q37",
        "must-know",
        "At step 0 the policy equals the reference, yet the logged KL is not zero. Name two silent bugs that do this "
        "or worse, and how to catch them.",
        "Dropout left on when the policy scores its own tokens (train mode) while the reference is in eval mode: "
        "the same weights give different log-probabilities, so the KL to an identical model is not zero; score in "
        "eval mode (dropout off) or disable dropout. And torch.nn.functional.kl_div(input, target) computes "
        "KL(target || input) with target as probabilities: log-probability targets need log_target=True (without it "
        "the result is NaN), probabilities passed as input give a wrong, even negative, value, and the default "
        "reduction 'mean' divides by the vocabulary too. Assert KL == 0 at step 0 and check the estimator "
        "against an exact KL.",
        (
            "Blaming numerical noise for a KL that is exactly zero in eval mode.",
            "Swapping kl_div's arguments and getting the forward KL.",
        ),
        ("ch-practice",),
        "ch-practice",
        claims=("silent-scoring-bugs",),
    ),
    Question(
        "Q38",
        "advanced",
        "What beta, estimator and placement did DeepSeekMath's GRPO, DeepSeek-R1 and DAPO use for the KL term?",
        "As stated in the papers: DeepSeekMath, beta 0.04 with Schulman's unbiased (k3) estimator added to the loss, "
        "token level (Sections 4.1.1 and 4.2); DeepSeek-R1-Zero, beta 0.001 with the reference replaced by the "
        "latest policy every 400 steps; DAPO, no KL term at all (Section 2.3). TRL's paper index says the "
        "DeepSeekMath paper does not specify its hyperparameters and gives beta 0.001 (from R1); the paper states "
        "0.04. Compare your config with a row before quoting a number.",
        (
            "Quoting one beta for 'GRPO' as if every paper used it.",
            "Trusting an index over the paper's own text.",
        ),
        ("ch-practice",),
        "ch-practice",
        claims=("published-kl-settings",),
    ),
    # ------------------------------------------------------------------ on-policy distillation (Q39-Q44,
    # answered in chapter ch-distillation, where their numbers are computed)
    Question(
        "Q39",
        "must-know",
        "What does on-policy distillation optimise, and how does the per-token KL to the teacher become a reward?",
        "The student samples its own responses and the objective is the sequence-level reverse KL(student || "
        "teacher), estimated on those samples. Per token, the teacher's log-ratio l_t = log pi(y_t|s_t) - "
        "log pi_T(y_t|s_t) of the sampled token is a dense negative reward: with the return-to-go (discount 1) "
        "the policy gradient is exactly the gradient of the sequence KL; with discount 0 (each token's own l_t as "
        "its advantage, the common default) it is not: it follows the per-token KLs at the student's states held "
        "fixed and misses how a token changes the later states (on sequences longer than one token).",
        (
            "Calling the per-token log-ratio with discount 0 the gradient of the sequence KL.",
            "Sampling from the teacher and calling it on-policy: that is supervised (forward-KL) distillation.",
        ),
        ("ch-distillation", "ch-placements"),
        "ch-distillation",
        claims=("distill-discount-zero-bias",),
    ),
    Question(
        "Q40",
        "must-know",
        "Forward or reverse KL for distillation: which does supervised distillation minimise, which does "
        "on-policy distillation, and when does the choice matter?",
        "Training on teacher samples (SFT, sequence-level KD) minimises the forward KL(teacher || student); "
        "sampling from the student and scoring with the teacher minimises the reverse KL(student || teacher). "
        "The minimisers differ only when the student cannot represent the teacher: then the reverse fit "
        "concentrates on the teacher's dominant mode and the forward fit spreads mass over everything the teacher "
        "produces. When the student's family contains the teacher, both reach the teacher.",
        (
            "Saying reverse KL is always mode-seeking: it is a tendency under a misspecified student.",
            "Mixing up the directions: forward KL is the one estimated on teacher samples.",
        ),
        ("ch-distillation", "ch-fundamentals"),
        "ch-distillation",
        claims=("distill-forward-vs-reverse",),
    ),
    Question(
        "Q41",
        "advanced",
        "Discount 0 or return-to-go for the per-token KL to the teacher, and the full vocabulary or the sampled "
        "token: which combinations give the gradient of the sequence-level KL, and what do TRL and verl compute?",
        "The sampled token's log-ratio with the return-to-go is exact; with discount 0 it equals, in expectation, "
        "the full-vocabulary per-token KL differentiated at the student's states held fixed (and chapter 3's "
        "token-level k2), biased by the future tokens' KL times the score. The full-vocabulary loss becomes exact "
        "when the future tokens' KLs are added as a return-to-go reward. No loss of TRL 1.16 (GKD, "
        "DistillationTrainer) or verl 0.9.1 follows the sequence KL: each follows a per-token divergence at "
        "fixed states, except verl's k3 as a reward (its config class's default), which follows none of them; "
        "verl's YAML default (k3 in the loss) follows the per-token forward KL, not the reverse.",
        (
            "Assuming a full-vocabulary loss is exact because it has no sampling noise: it is biased for T > 1.",
            "Reading verl's k3 distillation loss as a reverse-KL objective.",
        ),
        ("ch-distillation", "ch-placements"),
        "ch-distillation",
        claims=("distill-discount-zero-bias", "distill-libraries-states-fixed"),
    ),
    Question(
        "Q42",
        "advanced",
        "How should you estimate the per-token KL to the teacher: the sampled token's k1, k3, the full vocabulary, "
        "or a top-k truncation?",
        "At one state, k1 and k3 of the sampled token are unbiased for the per-token KL (k3 with lower variance "
        "on the chapter's state), the full-vocabulary sum is exact with no variance, and a top-k truncation is "
        "deterministic but biased: the bias is not monotone in k, takes either sign, and a truncated forward KL "
        "can be negative (verl clamps its top-k loss at 0). An unbiased value is not an unbiased gradient: k3 used "
        "as a reward gives a biased gradient with either discount.",
        (
            "Assuming top-k with large k is close enough without measuring the missing mass.",
            "Treating an unbiased KL value as an unbiased gradient.",
        ),
        ("ch-distillation", "ch-estimators"),
        "ch-distillation",
        claims=("distill-estimators-topk", "distill-discount-zero-bias"),
    ),
    Question(
        "Q43",
        "top-lab",
        "What does GKD's beta do, and what happens to TRL's generalized_jsd_loss at beta = 0 and beta = 1?",
        "GKD's generalised JSD is beta KL(teacher || M) + (1 - beta) KL(student || M) with M = beta teacher + "
        "(1 - beta) student. It vanishes at both ends and behaves as beta KL(teacher || student) near 0 and "
        "(1 - beta) KL(student || teacher) near 1, so it interpolates the two directions only up to a factor that "
        "goes to zero at the ends. TRL special-cases beta = 0 and 1 to the plain forward and reverse KLs, so the "
        "loss and its gradient jump there: beta = 1e-3 gives about a thousandth of the beta = 0 gradient.",
        (
            "Expecting beta = 0.01 to behave like the forward KL at full strength.",
            "Assuming GKD's reverse-KL end is the sequence-level reverse KL: it is the per-token one at fixed states.",
        ),
        ("ch-distillation",),
        "ch-distillation",
        claims=("gkd-jsd-endpoints",),
    ),
    Question(
        "Q44",
        "top-lab",
        "Does a small KL to the base model, measured on the new task, mean little forgetting?",
        "Not by itself. The KL to the base on the new task's prompts bounds how much behaviour changed on those "
        "prompts (Pinsker: total variation at most sqrt(KL/2)) and says nothing about other prompts. Forgetting "
        "is set by how much the update moves what the old task uses: on the shared-feature toy, at the same "
        "measured KL, the old task's KL runs from the same value (aligned features) to zero (orthogonal). Measure "
        "the KL, or the old task's metrics, on the old task's prompts.",
        (
            "Reading a low on-task KL as proof of no forgetting.",
            "Measuring forgetting on the new task's distribution only.",
        ),
        ("ch-distillation",),
        "ch-distillation",
        claims=("distill-forgetting-kl",),
    ),
)


def _validate_bank() -> None:
    ids = [q.id for q in _BANK]
    numbers = [int(i[1:]) if i[:1] == "Q" and i[1:].isdigit() else -1 for i in ids]
    if numbers[:1] != [1] or any(b <= a for a, b in zip(numbers, numbers[1:])) or min(numbers) < 1:
        raise AssertionError(f"question ids must be Q1, Q2, ... in increasing order, got {ids}")
    for q in _BANK:
        if q.tier not in TIERS:
            raise AssertionError(f"{q.id}: unknown tier {q.tier!r}")
        if not q.chapters or any(c not in CHAPTER_LABELS for c in q.chapters):
            raise AssertionError(f"{q.id}: chapters must be labels from {CHAPTER_LABELS}, got {q.chapters}")
        if not q.pitfalls:
            raise AssertionError(f"{q.id}: at least one pitfall")
        if q.answered_in not in ("ch-interview", *q.chapters):
            raise AssertionError(
                f"{q.id}: answered_in {q.answered_in!r} must be the interview chapter or one of {q.chapters}"
            )


_validate_bank()


def questions(tier: str | None = None, chapter: str | None = None) -> list[Question]:
    """All questions in order, optionally only one tier or only those that point at ``chapter``."""
    if tier is not None and tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose one of {TIERS}")
    if chapter is not None and chapter not in CHAPTER_LABELS:
        raise ValueError(f"unknown chapter label {chapter!r}; choose one of {CHAPTER_LABELS}")
    return [q for q in _BANK if (tier is None or q.tier == tier) and (chapter is None or chapter in q.chapters)]


def get(qid: str) -> Question:
    """The question with id ``qid`` (``"Q7"`` or ``"q7"``)."""
    key = str(qid).upper()
    for q in _BANK:
        if q.id == key:
            return q
    raise KeyError(f"no question {qid!r}; ids run from Q1 to {_BANK[-1].id}")


class Quiz:
    """A shuffled selection of questions. ``print(quiz)`` shows the questions only;
    ``quiz.reveal(i)`` shows the answer to question ``i`` (0-based), on demand."""

    def __init__(self, items: list[Question]):
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self.prompts())

    @property
    def ids(self) -> list[str]:
        return [q.id for q in self._items]

    def prompts(self) -> list[str]:
        """The questions, numbered, without answers."""
        return [f"{i + 1}. {q.prompt()}" for i, q in enumerate(self._items)]

    def reveal(self, i: int) -> str:
        """The short answer and pitfalls of the ``i``-th question (0-based)."""
        if not isinstance(i, int) or not 0 <= i < len(self._items):
            raise IndexError(f"quiz has {len(self._items)} questions; index {i!r} is out of range")
        return self._items[i].reveal()

    def __str__(self) -> str:
        return "\n".join(self.prompts())

    __repr__ = __str__


def quiz(n: int = 5, seed: int = 0, tier: str | None = None) -> Quiz:
    """``n`` questions drawn without replacement, in an order fixed by ``seed``.

    The same ``(n, seed, tier)`` always gives the same quiz. ``tier`` restricts the draw to one of
    :data:`TIERS`.
    """
    pool = questions(tier=tier)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n > len(pool):
        raise ValueError(f"n={n} exceeds the {len(pool)} questions available" + (f" in tier {tier!r}" if tier else ""))
    rng = random.Random(seed)
    return Quiz(rng.sample(pool, n))
