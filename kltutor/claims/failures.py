"""The ledger's claims on failure modes (see :mod:`kltutor.claims`)."""

from __future__ import annotations

import math

from kltutor.claims._core import _claim, _require


@_claim(
    "wrong-reference-step0",
    "Failure modes",
    r"With the reference equal to the checkpoint the policy starts from, the KL is exactly 0 before the first update; "
    r"a non-zero step-0 KL means the wrong reference.",
    "the reference is frozen and in eval mode",
    "sec-failures-reference",
    cheatsheet=True,
)
def _wrong_reference_step0():
    from kltutor import failures as fl

    wr = fl.wrong_reference([1.0])
    _require(wr["sft"]["kl_at_init"][0] == 0.0 and wr["base"]["kl_at_init"][0] > 0.1, "step-0 KL")
    return {"step-0 KL, reference = SFT": 0.0, "step-0 KL, reference = base": wr["base"]["kl_at_init"][0]}


@_claim(
    "importance-weighting-variance",
    "Failure modes",
    r"Importance-weighted KL estimates from a stale sampler are unbiased but their variance grows with the mismatch; "
    r"clipping the weights bounds the variance and biases the estimate.",
    r"samples from a stale policy weighted by $w=\pitheta/\piold$",
    "sec-failures-importance",
)
def _importance_weighting_variance():
    import torch

    from kltutor import failures as fl

    gi = torch.Generator().manual_seed(1)
    pi = torch.softmax(1.5 * torch.randn(50, generator=gi, dtype=torch.float64), 0)
    ref = torch.softmax(0.5 * torch.randn(50, generator=gi, dtype=torch.float64), 0)
    on = fl.importance_weighted_kl(pi, ref, pi, 64, 500, seed=0)
    stale_s = torch.softmax(-1.0 * pi.log(), 0)
    stale = fl.importance_weighted_kl(pi, ref, stale_s, 64, 500, seed=0)
    clipped = fl.importance_weighted_kl(pi, ref, stale_s, 64, 500, clip=5.0, seed=0)
    _require(stale["std"] > 3 * on["std"], "variance grows")
    _require(abs(on["mean"] - on["exact"]) < 5 * on["std"] / math.sqrt(500), "on-policy unbiased within 5 s.e.")
    _require(
        clipped["std"] < stale["std"] and abs(clipped["mean"] - clipped["exact"]) > 5 * clipped["std"] / math.sqrt(500),
        "clipping biases",
    )
    return {"sd of a 64-sample estimate, on-policy": on["std"], "stale sampler": stale["std"]}


@_claim(
    "bf16-naive-k3-negative",
    "Failure modes",
    r"Naive `exp(-l) - 1 + l` in bfloat16 returns negative values (at $\ell=\pm0.01$): a logged negative k3 is a "
    r"precision bug, not a negative KL.",
    "k3 computed in bfloat16 without upcasting",
    "sec-failures-precision",
    cheatsheet=True,
)
def _bf16_naive_k3_negative():
    import torch

    from kltutor import estimators as est

    x = torch.tensor([-0.01, 0.01], dtype=torch.bfloat16)
    naive = est.k3_naive(x, torch.zeros_like(x))
    _require((naive < 0).any() and (est.of_log_ratio("k3", x) > 0).all(), "bf16")
    return {"naive bf16 k3 at l = -0.01": naive[0].item()}
