"""The ledger's claims on KL as a filter, k1 under a tempered sampler, silent scoring bugs and published
settings (chapter 8, see :mod:`kltutor.claims`)."""

from __future__ import annotations

import math

from kltutor.claims._core import _claim, _require


@_claim(
    "kl-filter-bias",
    "KL in practice",
    r"Dropping tokens or sequences whose sampler-trainer statistic crosses a threshold (verl's rollout_rs, TRL's "
    r"sequence_mask, OpenRLHF's is_correction gates, DeepSeek-V3.2's masking) turns the exact sequence-ratio "
    r"gradient into a biased one: every rule that rejects something on the toy moves the expected gradient away "
    r"from $\nabla\E_{\pitheta}[R]$, and the libraries' own functions reject exactly the sequences the chapter's "
    r"statement of each rule does.",
    r"rollouts from a sampler $q\ne\pitheta$; estimator $\sum_tc_tA\nabla\log\pitheta(y_t)$ with $A=R-\E_q[R]$ at the "
    r"first update; the toy and thresholds of the section; a per-token ratio (OpenRLHF) is biased before any filter",
    "sec-practice-filters",
    cheatsheet=True,
)
def _kl_filter_bias():
    import torch

    from kltutor import filters as F
    from kltutor.trainers import filters as TF

    true = F.exact_gradient()
    _require(torch.allclose(F.expected_gradient("none.sequence"), true, atol=1e-14), "no filter: exact")
    table = F.rule_table().set_index("rule")
    seq_weighted = table[(table["sequences touched"] > 0) & (table["weight"] == "sequence")]
    _require(len(seq_weighted) >= 7 and (seq_weighted["|bias|"] > 0.01).all(), "every rejecting rule is biased")
    token_w = float(table.loc["none.token", "|bias|"])
    _require(token_w > 0.01, "a per-token ratio is biased before any filter")
    rejecting = seq_weighted
    b = F.toy_batch()
    for r in TF.load()["rules"]:
        ours = F.keep_masks(r["rule"], b["logp"], b["samp_logp"], b["adv"])
        _require(["".join(str(int(v)) for v in row) for row in ours.long().tolist()] == r["keep"], r["rule"])
    return {
        "sequence-weighted rules that reject something": len(rejecting),
        "smallest |bias| among them": float(rejecting["|bias|"].min()),
        "largest |bias|": float(rejecting["|bias|"].max()),
        "library masks equal to ours": len(TF.load()["rules"]),
        "per-token ratio, no filter: |bias|": token_w,
    }


@_claim(
    "kl-filter-length-bias",
    "KL in practice",
    r"Against a fixed threshold a summed per-token statistic (verl's seq_sum_*) rejects long sequences far more "
    r"often than short ones, because the sum grows with length. The per-token mean (seq_mean_*) removes the "
    r"growth of the expected statistic, not the length dependence: its rejection rate still changes with length, "
    r"through the position dependence of the per-token mismatch and, even when the mismatch is the same at every "
    r"position, through the mean's spread shrinking with length.",
    r"a fixed threshold for every length; the section's toy (threshold 0.2 on k3) and a memoryless pair "
    r"(a = 0.3 and 0.7, b = 0; threshold 0.02, just above the per-token mean)",
    "sec-practice-filters",
    cheatsheet=True,
)
def _kl_filter_length_bias():
    from kltutor import filters as F

    out = F.rejection_by_length([2, 4, 6, 8, 10, 12], 0.2)
    _require(out["sum"] == sorted(out["sum"]) and out["sum"][-1] > 0.5, "summed: rises with length")
    _require(all(m < s for m, s in zip(out["mean"][1:], out["sum"][1:])), "mean below sum")
    iid = F.rejection_by_length([2, 4, 6, 8, 10, 12], 0.02, policy=(0.3, 0.0), sampler=(0.7, 0.0))
    spread = max(iid["mean"]) - min(iid["mean"])
    _require(spread > 0.1, "memoryless pair: the mean's rejection rate should still depend on the length")
    return {
        "P(reject), sum, T = 12": out["sum"][-1],
        "P(reject), mean, T = 12": out["mean"][-1],
        "memoryless pair, mean: range of P(reject) over T = 2..12": spread,
    }


@_claim(
    "negative-only-masking-bias",
    "KL in practice",
    r"Masking only negative-advantage sequences (DeepSeek-V3.2's off-policy sequence masking, TRL's "
    r"off_policy_mask_threshold) removes exactly their terms: relative to the exact gradient it adds "
    r"$\sum_{y\ \mathrm{masked}}\pitheta(y)\,|A(y)|\,\nabla\log\pitheta(y)$, so the masked bad sequences are no longer "
    r"pushed down, and the update depends on the baseline.",
    r"sequence-ratio weights, $A=R-b$ with a constant baseline $b$; the toy of the section",
    "sec-practice-filters",
    cheatsheet=True,
)
def _negative_only_masking_bias():
    import torch

    from kltutor import filters as F

    b = F.toy_batch()
    keep = F.keep_masks("trl.opsm", b["logp"], b["samp_logp"], b["adv"])
    masked = keep[:, 0] == 0
    _require(bool(masked.any()) and bool((b["adv"][masked] < 0).all()), "only negative advantages are masked")
    pi, _ = F.toy_models()
    lp = pi.token_logprobs(b["seqs"]).sum(-1)
    extra = torch.stack(
        torch.autograd.grad((b["pi"][masked] * b["adv"][masked].abs() * lp[masked]).sum(), [pi.a, pi.b])
    )
    diff = F.expected_gradient("trl.opsm") - F.exact_gradient()
    _require(float((diff - extra.detach()).abs().max()) < 1e-12, "the bias is the masked terms")
    return {"masked sequences": int(masked.sum()), "|bias|": float(diff.norm())}


@_claim(
    "tempered-k1-entropy-push",
    "KL in practice",
    r"With k1 in the loss and tokens drawn from a sampler $q$, the expected update of the policy's logits is "
    r"$\beta(\pitheta-q)$: zero on-policy, an entropy push when $q$ is sharper than $\pitheta$ (temperature below 1, "
    r"top-p, top-k), which drives the policy toward uniform. k2 or k3 in the loss keep $\piref$ as a fixed point "
    r"whatever the sampler; so does the exact KL.",
    r"the KL term trained alone by its expected gradient, starting at $\piref$; chapter 8's random autoregressive "
    r"model (vocabulary 5, length 3)",
    "sec-practice-tempered-k1",
    cheatsheet=True,
)
def _tempered_k1_entropy_push():
    import torch

    from kltutor import pitfalls, practice
    from kltutor.derivations import practice as practice_proofs

    _require(practice_proofs.tempered_k1_logit_update(), "sympy")
    _require(practice_proofs.k3_stationary_at_reference_any_sampler(), "sympy")
    ref = practice.random_logit_tables(5, 3, 1.0, torch.Generator().manual_seed(0))
    on = pitfalls.tempered_k1_run(ref, 20, 2.0, temperature=1.0)
    cold = pitfalls.tempered_k1_run(ref, 100, 2.0, temperature=0.8)
    nucleus = pitfalls.tempered_k1_run(ref, 100, 2.0, top_p=0.9)
    k3 = pitfalls.tempered_k1_run(ref, 20, 2.0, estimator="k3", temperature=0.8)
    _require(max(on["kl_to_ref"]) < 1e-12 and max(k3["kl_to_ref"]) < 1e-12, "on-policy k1 and tempered k3 stay")
    for run in (cold, nucleus):
        h = run["entropy"]
        _require(all(b >= a - 1e-12 for a, b in zip(h, h[1:])) and h[-1] > h[0] + 0.5, "entropy rises")
    return {
        "entropy at start": cold["entropy"][0],
        "entropy after 100 steps, T = 0.8": cold["entropy"][-1],
        "entropy after 100 steps, top-p = 0.9": nucleus["entropy"][-1],
        "maximum 3 log 5": cold["max_entropy"],
    }


@_claim(
    "silent-scoring-bugs",
    "KL in practice",
    r"Two silent scoring bugs: dropout left on when the policy scores its own tokens gives a KL to an identical "
    r"reference that is not zero at step 0 (exactly zero in eval mode); and torch.nn.functional.kl_div(input, "
    r"target) computes $\KL(\text{target}\|\text{input})$ with target as probabilities: log-probability targets "
    r"without log_target=True give NaN, probabilities passed as input give a wrong and possibly negative number, "
    r"and the default reduction divides by the vocabulary as well.",
    "a real transformers Qwen2 model with attention dropout 0.3; float64 batches of next-token distributions",
    "sec-practice-silent-bugs",
    cheatsheet=True,
)
def _silent_scoring_bugs():
    import torch

    from kltutor import pitfalls

    d = pitfalls.dropout_step0_kl(p=0.3, n_seqs=2, seq_len=6)
    _require(d["eval"]["exact_kl"] == 0.0 and d["train"]["exact_kl"] > 1e-6, "dropout: KL at step 0")
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), -1)
    rl = torch.log_softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), -1)
    m = pitfalls.kl_div_misuses(lp, rl)
    rev = m["exact KL(pi||ref) (reverse)"]
    _require(abs(m["kl_div(ref_logp, logp, log_target=True, batchmean)"] - rev) < 1e-12, "correct call")
    _require(math.isnan(m["kl_div(ref_logp, logp, batchmean) [log target, no flag]"]), "NaN without the flag")
    _require(abs(m["kl_div(ref_logp, logp.exp(), mean) [default reduction]"] - rev / 6) < 1e-12, "mean divides by V")
    return {"dropout p = 0.3, KL at step 0": d["train"]["exact_kl"], "eval mode": d["eval"]["exact_kl"]}


@_claim(
    "published-kl-settings",
    "KL in practice",
    r"Published KL settings differ by orders of magnitude and in kind: DeepSeekMath states $\beta=0.04$ with k3 in "
    r"the loss, DeepSeek-R1-Zero $\beta=0.001$ with the reference replaced every 400 steps, DAPO, Open-Reasoner-Zero "
    r"and Magistral use no KL term, DeepSeek-V3.2 multiplies k3 by $\pitheta/\pi_\text{old}$ and varies $\beta$ by "
    r"domain. TRL's paper index says the DeepSeekMath paper does not specify its hyperparameters and gives "
    r"$\beta=0.001$; the paper's Section 4.2 states 0.04.",
    "as stated in each paper's text (section named in the table); 'not stated' where the passages checked are silent",
    "sec-practice-published-settings",
)
def _published_kl_settings():
    from kltutor import papers

    _require(papers.validate() == [], "every row complete, every quote sourced")
    m = {p["id"]: p["machine"] for p in papers.load()["papers"]}
    _require(m["deepseekmath"]["beta"] == 0.04 and m["deepseek-r1"]["beta"] == 0.001, "betas")
    _require(all(m[k]["placement"] == "none" for k in ("dapo", "open-reasoner-zero", "magistral")), "no KL")
    (c,) = [c for c in papers.load()["index_contradictions"] if c["paper"] == "deepseekmath"]
    _require("0.04" in c["paper_says"] and c["index_value"] == "beta=0.001", "index contradiction")
    return {"papers": len(m), "DeepSeekMath beta (Section 4.2)": 0.04, "TRL paper index": "beta=0.001"}
