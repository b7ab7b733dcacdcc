"""The ledger's claims on on-policy distillation (see :mod:`kltutor.claims`)."""

from __future__ import annotations

from kltutor.claims._core import _claim, _max_err, _require, _toy

GROUP = "On-policy distillation"


@_claim(
    "distill-discount-zero-bias",
    GROUP,
    r"With the teacher's per-token log-ratio $\ell_t=\log\pitheta(y_t\mid s_t)-\log\pi_T(y_t\mid s_t)$ as the "
    r"(negative) reward of on-policy samples, the return-to-go (discount 1) gives the exact gradient of the "
    r"sequence-level $\KL(\pitheta\|\pi_T)$; discount 0 (each token's own $\ell_t$ as its advantage) gives the "
    r"expected gradient of the per-token KLs at the student's states held fixed, the same as a full-vocabulary "
    r"per-token KL loss and chapter 3's token-level k2, and misses $\mathbb{E}[\sum_t\nabla\log\pitheta(y_t\mid s_t)"
    r"\sum_{s>t}\ell_s]$. Adding the future tokens' full-vocabulary KLs as a return-to-go makes the full-vocabulary "
    r"loss exact too.",
    "on-policy samples, sequences longer than one token (for one token all agree)",
    "sec-distillation-objective",
    cheatsheet=True,
    needs_condition=(
        (
            r"(?:discount 0|discount of zero|own log-ratio|each token's own)[^.;]{0,80}?"
            r"(?:exact|unbiased|the gradient of the sequence)",
            r"\bnot\b|\bbiased\b|misses|\bonly\b|one token|states (?:held )?fixed",
        ),
    ),
)
def _check_discount_zero():
    from kltutor import distillation as D
    from kltutor import gradients as G

    s, t = _toy()
    T = 5
    true = D.sequence_gradient(s, t, T)
    rtg = D.reward_gradient(s, t, T, 1.0)
    own = D.reward_gradient(s, t, T, 0.0)
    local = D.local_gradient(s, t, T, "reverse")
    full_rtg = D.local_gradient(s, t, T, "reverse", future_discount=1.0)
    k2 = G.exact_kl_gradients(s, t, T)["k2-in-loss"]
    one = [D.reward_gradient(s, t, 1, 0.0), D.sequence_gradient(s, t, 1)]
    _require(_max_err(rtg, true) < 1e-12, "return-to-go is not exact")
    _require(_max_err(full_rtg, true) < 1e-12, "full vocabulary + return-to-go is not exact")
    _require(_max_err(own, local) < 1e-12 and _max_err(own, k2) < 1e-12, "discount 0 is not the states-fixed gradient")
    _require(float((own - true).norm()) > 0.1, "discount 0 is unexpectedly exact")
    _require(_max_err(*one) < 1e-12, "for one token discount 0 should be exact")
    return {
        "|bias| of discount 0 (T=5)": float((own - true).norm()),
        "|bias| of the return-to-go": float((rtg - true).norm()),
    }


@_claim(
    "distill-forward-vs-reverse",
    GROUP,
    r"Supervised distillation on teacher samples follows the forward $\KL(\pi_T\|\pitheta)$, on-policy distillation "
    r"the reverse $\KL(\pitheta\|\pi_T)$. Their minimisers differ only when the student cannot represent the "
    r"teacher: then the reverse fit concentrates on the teacher's dominant mode (more mass there than the teacher "
    r"puts) and the forward fit spreads mass to cover everything the teacher produces. When the student's family "
    r"contains the teacher, both reach it.",
    "a misspecified student (on the toy: a memoryless student, b = 0, for a teacher with memory)",
    "sec-distillation-directions",
    cheatsheet=True,
    needs_condition=(
        (
            r"\b(?:student|distill\w*)\b[^.;]{0,80}?\bmode[- ](?:seeking|covering)\b|"
            r"\bmode[- ](?:seeking|covering)\b[^.;]{0,80}?\b(?:student|distill\w*)\b",
            r"cannot represent|misspecifi|only when|tendency|condition|family|capacity",
        ),
    ),
)
def _check_directions():
    import torch

    from kltutor import distillation as D
    from kltutor.toys import BinaryAutoregressive

    teacher = BinaryAutoregressive(-1.5, 1.5)
    T = 5
    seqs, pt = teacher.enumerate(T)
    rev = D.fit_independent_student(teacher, T, "reverse", 0.0)
    fwd = D.fit_independent_student(teacher, T, "forward", 0.0)
    p_rev = float(BinaryAutoregressive(rev, 0.0).enumerate(T)[1][0])
    p_fwd = float(BinaryAutoregressive(fwd, 0.0).enumerate(T)[1][0])
    _require(p_rev > float(pt[0]) > p_fwd, "reverse should over-weight the all-zeros mode, forward under-weight it")
    # forward KL with b = 0 is moment matching: the mean number of ones equals the teacher's
    ones = seqs.sum(-1)
    _require(
        abs(T * float(torch.sigmoid(torch.tensor(fwd, dtype=torch.float64))) - float((pt * ones).sum())) < 1e-8,
        "forward fit is not moment matching",
    )
    s = BinaryAutoregressive(-1.5, 1.5)
    _require(float(s.exact_kl(teacher, T).detach()) == 0.0, "the full family contains the teacher")
    return {"teacher P(all zeros)": float(pt[0]), "reverse fit P(all zeros)": p_rev, "forward fit P(all zeros)": p_fwd}


def _state():
    """The chapter's one state (its parameters cell: vocabulary 8, seed 0)."""
    import torch

    g = torch.Generator().manual_seed(0)
    zs = torch.randn(8, generator=g, dtype=torch.float64) * 1.5
    zt = zs + torch.randn(8, generator=g, dtype=torch.float64)
    return zs.softmax(0), zt.softmax(0)


@_claim(
    "distill-estimators-topk",
    GROUP,
    r"At one state, the sampled token's k1 and k3 (ratio teacher/student) are unbiased for the per-token "
    r"$\KL(\pitheta\|\pi_T)$ and the full-vocabulary sum is exact with no variance; a top-k truncation is "
    r"deterministic but biased, its bias is neither monotone in k nor of one sign, and a truncated forward KL can "
    r"be negative (which is why verl clamps its top-k loss at 0). An unbiased value is not an unbiased gradient: "
    r"k3 used as the reward gives a biased gradient of the sequence KL with discount 0 and with the return-to-go.",
    "one state, tokens sampled from the student; the gradient of an estimator used as a reward is another question",
    "sec-distillation-estimators",
    cheatsheet=True,
    needs_condition=((r"top-?k[^.;]{0,60}?\bunbiased\b", r"\bnot\b|\bbiased\b"),),
)
def _check_estimators():
    from kltutor import distillation as D
    from kltutor import estimators as E

    p, q = _state()
    m1, m3 = E.exact_moments(p, q, "k1"), E.exact_moments(p, q, "k3")
    _require(abs(m1["bias"]) < 1e-12 and abs(m3["bias"]) < 1e-12, "k1/k3 biased")
    rows = D.truncation_rows(p, q)
    biases = [r["bias"] for r in rows if r["k"] < len(p)]
    _require(min(biases) < 0 < max(biases), "top-k bias has one sign")
    mags = [abs(r["bias"]) for r in rows]
    _require(any(a > b for a, b in zip(mags, mags[1:])), "top-k bias is monotone in k")
    neg = min(r["forward, top-k of teacher"] for r in rows)
    _require(neg < 0, "truncated forward KL never negative")
    s, t = _toy()
    true = D.sequence_gradient(s, t, 5)
    k3_bias = [float((D.reward_gradient(s, t, 5, g, "k3") - true).norm()) for g in (0.0, 1.0)]
    _require(min(k3_bias) > 0.1, "k3 as a reward unbiased")
    return {
        "k1 variance": m1["var"],
        "k3 variance": m3["var"],
        "most negative truncated forward KL": neg,
        "|bias| of k3 as reward, discount 1": k3_bias[1],
    }


@_claim(
    "gkd-jsd-endpoints",
    GROUP,
    r"GKD's generalised JSD, $\beta\,\KL(\pi_T\|M)+(1-\beta)\,\KL(\pitheta\|M)$ with $M=\beta\pi_T+(1-\beta)\pitheta$ "
    r"(TRL's convention), vanishes at $\beta=0$ and $\beta=1$ and behaves as $\beta\,\KL(\pi_T\|\pitheta)$ near 0 and "
    r"$(1-\beta)\,\KL(\pitheta\|\pi_T)$ near 1: it interpolates the two directions only up to a factor that goes to "
    r"zero at the ends. TRL's `generalized_jsd_loss` returns the plain KLs at exactly 0 and 1, so its loss and "
    r"gradient jump there ($\beta=10^{-3}$ gives about $10^{-3}$ of the $\beta=0$ gradient).",
    "TRL 1.16.0's code; the mixture formula for 0 < beta < 1",
    "sec-distillation-gjsd",
    cheatsheet=True,
)
def _check_gjsd():
    from kltutor import distillation as D
    from kltutor.derivations import distillation as proofs

    _require(proofs.gjsd_endpoints() and proofs.gjsd_student_gradient_endpoints(), "sympy")
    s, t = _toy()
    T = 5
    fwd = D.local_gradient(s, t, T, "forward")
    near0 = D.local_gradient(s, t, T, "gjsd", 1e-3)
    ratio = float(near0.norm() / fwd.norm())
    _require(abs(ratio - 1e-3) < 1e-5, "near beta = 0 the gradient is not beta times the forward one")
    return {"|grad at beta=1e-3| / |grad at beta=0|": ratio}


@_claim(
    "distill-libraries-states-fixed",
    GROUP,
    r"No on-policy distillation loss of TRL 1.16.0 (`GKDTrainer`, `DistillationTrainer`) or verl 0.9.1 follows the "
    r"gradient of the sequence-level $\KL(\pitheta\|\pi_T)$: every setting classified follows a per-token "
    r"divergence at the student's states held fixed, except verl's k3 as a reward (its config class's default), "
    r"which follows none of the candidates. verl's YAML default (k3 in the loss) follows the per-token forward KL.",
    "on student samples, one update per batch; the verdicts are stored and re-checked by `make trainers-test`",
    "sec-distillation-libraries",
    cheatsheet=True,
)
def _check_libraries():
    import torch

    from kltutor.trainers import core
    from kltutor.trainers import distillation as TD

    data = TD.load()
    s, t, _, T = core.toy_models()
    refs = TD.reference_gradients(s, t, T)
    for name, v in data["references"].items():
        _require(_max_err(refs[name], torch.tensor(v, dtype=refs[name].dtype)) < 1e-9, f"stored {name}")
    verdicts = {r["name"]: r["verdict"] for r in data["settings"]}
    _require(TD.CANDIDATES[0] not in verdicts.values(), "a library follows the sequence KL")
    _require(verdicts["verl.distill.k3.loss"] == TD.CANDIDATES[2], "verl default")
    _require(verdicts["verl.distill.k3.reward"] == "other", "verl class default")
    fixed = [c for c in TD.CANDIDATES if c.endswith("states fixed")]
    others = {n: v for n, v in verdicts.items() if v not in fixed}
    _require(list(others) == ["verl.distill.k3.reward"], f"settings outside the states-fixed candidates: {others}")
    return {"settings classified": len(verdicts), "verl YAML default": verdicts["verl.distill.k3.loss"]}


@_claim(
    "distill-forgetting-kl",
    GROUP,
    r"The KL to the base model measured on the new task's prompts bounds how much behaviour changed on those "
    r"prompts (Pinsker: total variation at most $\sqrt{\KL/2}$) and says nothing about other prompts: on the "
    r"shared-feature toy, at the same measured KL, the old task's KL runs from the same value (aligned features) "
    r"to zero (orthogonal features).",
    "the two-context toy: one binary token, linear shared features, the update along the new task's feature",
    "sec-distillation-forgetting",
    cheatsheet=True,
    needs_condition=(
        (
            r"(?:small|low) KL[^.;?]{0,60}?(?:little|no|less) forgetting(?!\?)",
            r"\bnot\b|only|nothing|unless|depends",
        ),
    ),
)
def _check_forgetting():
    import math

    from kltutor import distillation as D

    aligned = D.shared_feature_forgetting(1.0, 0.0)
    ortho = D.shared_feature_forgetting(1.0, 90.0)
    _require(abs(aligned["KL old"] - aligned["KL new"]) < 1e-12 and ortho["KL old"] < 1e-12, "range of forgetting")
    _require(abs(aligned["change new"]) <= math.sqrt(aligned["KL new"] / 2), "Pinsker")
    return {"KL new": aligned["KL new"], "KL old, aligned": aligned["KL old"], "KL old, orthogonal": ortho["KL old"]}
