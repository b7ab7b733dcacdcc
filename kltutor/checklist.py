"""The engineering checklist as runnable checks (introduced in ``ch-failures``).

:func:`check_batch` looks at one training batch and the reference model and reports every violation
it can see::

    report = check_batch(logp=logp, ref_logp=ref_logp, mask=mask, attention_mask=attention_mask,
                         prompt_mask=prompt_mask, rewards=rewards, shaped_rewards=shaped,
                         ref_model=ref_model, policy_model=policy)
    assert report.ok, report

Each check has a stable ``code`` (see :data:`CHECKS`) so a trainer can assert on it, log it, or
silence one deliberately. :func:`example_batch` builds a correct batch from a tiny model
(:class:`TinyLM`) and :func:`plant` puts any one mistake of :data:`CHECKS` into it: ``ch-failures`` and the
tests use them to show that every check fires.

(This is the *batch* checklist; :mod:`kltutor.configcheck` is the *config* inspector, which reads a
trainer's configuration file.)

:func:`diagnose_negative_kl` (``ch-practice``, ``ch-practice``) answers the question a negative logged KL
raises: which of its causes (:data:`NEGATIVE_KL_CAUSES`) a batch shows evidence of.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kltutor.estimators import of_log_ratio

__all__ = [
    "CHECKS",
    "Violation",
    "Report",
    "check_batch",
    "TinyLM",
    "token_logprobs",
    "example_batch",
    "plant",
    "NEGATIVE_KL_CAUSES",
    "NegativeKLDiagnosis",
    "diagnose_negative_kl",
]

CHECKS: dict[str, str] = {
    "ref_in_train_mode": "reference model is in train mode (dropout on): call ref_model.eval()",
    "ref_params_require_grad": "reference parameters require grad: freeze them (requires_grad_(False))",
    "ref_shares_params_with_policy": "reference shares parameter tensors with the policy: it will move with every update",
    "ref_logp_requires_grad": "ref_logp carries a gradient: compute it under torch.no_grad()",
    "shaped_rewards_require_grad": "shaped rewards carry a gradient: the KL penalty in the reward must be detached",
    "rewards_require_grad": "rewards carry a gradient: rewards are data, detach them",
    "shape_mismatch": "tensors that should be [batch, time] alike have different shapes",
    "nonfinite": "NaN or inf in a tensor",
    "logp_positive": "log-probabilities above 0: these are not log-probabilities (logits? probabilities?)",
    "mask_covers_padding": "the response mask selects padding tokens (attention_mask == 0)",
    "mask_covers_prompt": "the response mask selects prompt tokens",
    "empty_response": "a sequence has no response token under the mask",
    "low_precision_logp": "log-probabilities in float16/bfloat16: compute log-ratios and k3 in float32",
    "kl_nonzero_at_start": "policy and reference disagree at step 0: wrong reference checkpoint?",
}


@dataclass(frozen=True)
class Violation:
    """One failed check: its code (a key of :data:`CHECKS`) and a message with the specifics."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


@dataclass
class Report:
    """The result of :func:`check_batch`: the violations found and the checks that were run."""

    violations: list[Violation] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def codes(self) -> set[str]:
        return {v.code for v in self.violations}

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"checklist: {len(self.checked)} checks passed"
        return "\n".join([f"checklist: {len(self.violations)} violation(s)", *(f"  - {v}" for v in self.violations)])


def _needs_grad(t: Tensor) -> bool:
    return bool(t.requires_grad or t.grad_fn is not None)


def check_batch(
    *,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    attention_mask: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    rewards: Tensor | None = None,
    shaped_rewards: Tensor | None = None,
    ref_model: nn.Module | None = None,
    policy_model: nn.Module | None = None,
    first_step: bool = False,
    start_tolerance: float = 1e-3,
) -> Report:
    """Run the checklist on one batch; return a :class:`Report` (never raises on a violation).

    ``logp``, ``ref_logp``, ``mask`` (1 = response token), ``attention_mask`` (0 = padding),
    ``prompt_mask`` (1 = prompt token) and ``shaped_rewards`` are ``[batch, time]``; ``rewards`` is
    ``[batch]``. With ``first_step=True`` (the policy has not been updated yet) the masked log-ratio
    must be zero up to ``start_tolerance``: a reference that differs from the initial policy is the
    wrong checkpoint. Raises ``TypeError``/``ValueError`` only for unusable input (not tensors, no
    batch dimension).
    """
    report = Report()

    def check(code: str) -> None:
        report.checked.append(code)

    def flag(code: str, detail: str = "") -> None:
        report.violations.append(Violation(code, CHECKS[code] + (f" ({detail})" if detail else "")))

    for name, t in (("logp", logp), ("ref_logp", ref_logp), ("mask", mask)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [batch, time], got shape {tuple(logp.shape)}")

    # --- the reference model -------------------------------------------------------------------
    if ref_model is not None:
        check("ref_in_train_mode")
        training = [n for n, m in ref_model.named_modules() if m.training]
        if training:
            flag("ref_in_train_mode", f"{len(training)} module(s) in train mode")
        check("ref_params_require_grad")
        grads = [n for n, p in ref_model.named_parameters() if p.requires_grad]
        if grads:
            flag("ref_params_require_grad", f"{len(grads)} tensor(s), e.g. {grads[0]}")
        if policy_model is not None:
            check("ref_shares_params_with_policy")
            shared = {id(p) for p in ref_model.parameters()} & {id(p) for p in policy_model.parameters()}
            shared |= {p.data_ptr() for p in ref_model.parameters()} & {p.data_ptr() for p in policy_model.parameters()}
            if shared:
                flag("ref_shares_params_with_policy", f"{len(shared)} shared tensor(s)")

    # --- gradients where there must be none ----------------------------------------------------
    check("ref_logp_requires_grad")
    if _needs_grad(ref_logp):
        flag("ref_logp_requires_grad")
    if shaped_rewards is not None:
        check("shaped_rewards_require_grad")
        if _needs_grad(shaped_rewards):
            flag("shaped_rewards_require_grad")
    if rewards is not None:
        check("rewards_require_grad")
        if _needs_grad(rewards):
            flag("rewards_require_grad")

    # --- shapes and values ---------------------------------------------------------------------
    check("shape_mismatch")
    tensors: Mapping[str, Tensor | None] = {
        "ref_logp": ref_logp,
        "mask": mask,
        "attention_mask": attention_mask,
        "prompt_mask": prompt_mask,
        "shaped_rewards": shaped_rewards,
    }
    bad_shapes = [n for n, t in tensors.items() if t is not None and t.shape != logp.shape]
    if rewards is not None and rewards.shape != logp.shape[:1]:
        bad_shapes.append("rewards")
    if bad_shapes:
        flag("shape_mismatch", f"{', '.join(bad_shapes)} vs logp {tuple(logp.shape)}")
        return report  # the masked checks below would be meaningless

    check("nonfinite")
    m = mask.detach().bool()
    for name, t in (("logp", logp), ("ref_logp", ref_logp), ("rewards", rewards), ("shaped_rewards", shaped_rewards)):
        if t is None:
            continue
        values = t.detach()
        if name in ("logp", "ref_logp", "shaped_rewards"):
            values = values[m]
        if not torch.isfinite(values).all():
            flag("nonfinite", f"{name}: {int((~torch.isfinite(values)).sum())} value(s)")

    check("logp_positive")
    for name, t in (("logp", logp), ("ref_logp", ref_logp)):
        v = t.detach()[m]
        if (v > 1e-6).any():
            flag(
                "logp_positive",
                f"{name}: max {float(v[torch.isfinite(v)].max()) if torch.isfinite(v).any() else float('nan'):.3g}",
            )

    check("low_precision_logp")
    low = [n for n, t in (("logp", logp), ("ref_logp", ref_logp)) if t.dtype in (torch.float16, torch.bfloat16)]
    if low:
        flag("low_precision_logp", ", ".join(f"{n} is {dict(logp=logp, ref_logp=ref_logp)[n].dtype}" for n in low))

    # --- the mask ------------------------------------------------------------------------------
    if attention_mask is not None:
        check("mask_covers_padding")
        pad = m & ~attention_mask.detach().bool()
        if pad.any():
            flag("mask_covers_padding", f"{int(pad.sum())} token(s)")
    if prompt_mask is not None:
        check("mask_covers_prompt")
        prompt = m & prompt_mask.detach().bool()
        if prompt.any():
            flag("mask_covers_prompt", f"{int(prompt.sum())} token(s)")
    check("empty_response")
    empty = (m.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        flag("empty_response", f"rows {empty[:5]}")

    # --- step 0: the reference must be the policy's starting point -----------------------------
    if first_step:
        check("kl_nonzero_at_start")
        ell = (logp.detach().double() - ref_logp.detach().double())[m]
        ell = ell[torch.isfinite(ell)]
        if ell.numel() and float(ell.abs().max()) > start_tolerance:
            flag("kl_nonzero_at_start", f"max |log pi - log pi_ref| = {float(ell.abs().max()):.3g} on step 0")
    return report


# ---------------------------------------------------------------------------------------------
# A correct batch, and every mistake planted in it (``ch-failures``)
# ---------------------------------------------------------------------------------------------


class TinyLM(nn.Module):
    """The smallest language model the checklist needs: an embedding, dropout, a linear head.

    Each position sees only its own token (no attention), which is all the checks look at: train vs
    eval mode (the dropout), trainable and shared parameters, log-probabilities with or without a graph.
    """

    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        self.emb, self.drop, self.out = nn.Embedding(vocab, dim), nn.Dropout(0.1), nn.Linear(dim, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        return self.out(self.drop(self.emb(ids)))


def token_logprobs(model: nn.Module, ids: Tensor) -> Tensor:
    """``[batch, time - 1]`` log-probabilities of ``ids[:, 1:]``, each next token scored from the one before."""
    return torch.log_softmax(model(ids[:, :-1]), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def example_batch(seed: int = 0, first_step: bool = True) -> dict:
    """A correct batch for :func:`check_batch`: a :class:`TinyLM` policy, its frozen copy as the
    reference, three sequences of three prompt and five response tokens (the last one right-padded by
    two), k1-in-reward shaped rewards. The global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = TinyLM().eval()  # eval: a deterministic forward for the step-0 comparison
        ids = torch.randint(0, 11, (3, 9))
    ref_model = copy.deepcopy(policy).eval().requires_grad_(False)
    attention = torch.ones(3, 8)
    attention[2, -2:] = 0  # right padding
    prompt = torch.zeros(3, 8)
    prompt[:, :3] = 1  # three prompt tokens
    mask = attention * (1 - prompt)  # response tokens only
    logp = token_logprobs(policy, ids)
    with torch.no_grad():
        ref_logp = token_logprobs(ref_model, ids)
    shaped = -0.1 * (logp - ref_logp).detach() * mask
    return dict(
        logp=logp,
        ref_logp=ref_logp,
        mask=mask,
        attention_mask=attention,
        prompt_mask=prompt,
        rewards=torch.tensor([1.0, -0.5, 0.2]),
        shaped_rewards=shaped,
        ref_model=ref_model,
        policy_model=policy,
        first_step=first_step,
    )


def plant(batch: dict, code: str) -> dict:
    """A copy of ``batch`` (from :func:`example_batch`) with the mistake that check ``code`` catches.

    The result is keyword arguments for :func:`check_batch`; ``code`` is a key of :data:`CHECKS`.
    """
    if code not in CHECKS:
        raise ValueError(f"unknown check {code!r}; choose one of {sorted(CHECKS)}")
    b = dict(batch)
    policy, ref_model = b["policy_model"], b["ref_model"]
    logp, ref_logp, mask = b["logp"], b["ref_logp"], b["mask"]
    if code == "ref_in_train_mode":
        b["ref_model"] = copy.deepcopy(ref_model).train()
    elif code == "ref_params_require_grad":
        b["ref_model"] = copy.deepcopy(ref_model).requires_grad_(True)
    elif code == "ref_shares_params_with_policy":
        b["ref_model"] = policy  # the reference is the policy itself
    elif code == "ref_logp_requires_grad":
        b["ref_logp"] = ref_logp + 0 * logp  # a graph reaches ref_logp (scored outside torch.no_grad())
    elif code == "shaped_rewards_require_grad":
        b["shaped_rewards"] = -0.1 * (logp - ref_logp) * mask  # the penalty not detached
    elif code == "rewards_require_grad":
        b["rewards"] = b["rewards"] + 0 * logp.sum()
    elif code == "shape_mismatch":
        b["mask"] = mask[:, :-1]
    elif code == "nonfinite":
        b["logp"] = logp.detach().clone()
        b["logp"][0, 5] = float("nan")
    elif code == "logp_positive":
        b["logp"] = logp.detach().exp()  # probabilities where log-probabilities belong
    elif code == "mask_covers_padding":
        b["mask"] = 1 - b["prompt_mask"]  # every non-prompt position, padding included
    elif code == "mask_covers_prompt":
        b["mask"] = b["attention_mask"]  # every real token, prompt included
    elif code == "empty_response":
        b["mask"] = mask.clone()
        b["mask"][1] = 0
    elif code == "low_precision_logp":
        b["logp"], b["ref_logp"] = logp.detach().half(), ref_logp.half()
    else:  # kl_nonzero_at_start
        b["ref_logp"] = ref_logp - 0.3  # another checkpoint
    return b


# ---------------------------------------------------------------------------------------------
# Negative KL in the logs: which cause? (``ch-practice``)
# ---------------------------------------------------------------------------------------------

NEGATIVE_KL_CAUSES: dict[str, str] = {
    "mask_covers_padding": "padding tokens are under the KL mask: their log-ratios are not samples of the policy",
    "mask_covers_prompt": "prompt tokens are under the KL mask: they were not sampled from the policy, so E[l] there is not a KL",
    "dropout_active": "the policy's log-probs come from a forward pass with dropout on (train mode): noisy, and lower on average",
    "sampler_mismatch": "the tokens were sampled from another distribution than the one scored (temperature, top-p/top-k, "
    "another engine or precision): E_sampler[l] = KL(q||pi_ref) - KL(q||pi) can be negative",
    "precision_mismatch": "policy and reference log-probs are computed in different or low precision: the log-ratio "
    "is not zero where the models agree. A low-precision reference is still a normalised reference (on-policy "
    "E[k1] = KL(pi||pi_ref) >= 0); a policy scored in another precision than the one that sampled the tokens is a "
    "sampler mismatch, whose E[k1] can be negative",
    "reference_mismatch": "the log-ratio is not zero before the first update: the reference is not the initial policy "
    "(wrong checkpoint, different scoring temperature or chat template); on its own this makes the "
    "KL positive, not negative (on-policy E[k1] = KL(pi||pi_ref) >= 0 for any reference), but the "
    "penalty measures the KL to the wrong model",
    "sign_reversed": "the logged value is -k1: the code logs mean(ref_logp - logp)",
    "sampling_noise": "single-sample k1 noise: the batch mean of sum_t l_t is within a few standard errors of zero; "
    "the KL is small, not negative (log k3 or the exact KL instead)",
}


@dataclass
class NegativeKLDiagnosis:
    """What :func:`diagnose_negative_kl` found: the batch's k1 and k3 sequence estimates, the k1 on
    the valid tokens alone, and the causes with evidence, most specific first."""

    kl_k1: float
    se_k1: float
    kl_k3: float
    kl_k1_valid: float
    causes: list[Violation] = field(default_factory=list)

    @property
    def negative(self) -> bool:
        return self.kl_k1 < 0

    @property
    def codes(self) -> list[str]:
        return [v.code for v in self.causes]

    def __str__(self) -> str:
        head = (
            f"k1 = {self.kl_k1:.4g} (se {self.se_k1:.2g}) per sequence, k3 = {self.kl_k3:.4g}, "
            f"k1 on valid tokens only = {self.kl_k1_valid:.4g}"
        )
        if not self.causes:
            return head + "\nno cause found"
        return "\n".join([head, *(f"  - {v}" for v in self.causes)])


def diagnose_negative_kl(
    *,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    attention_mask: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    sampler_logp: Tensor | None = None,
    logp_repeat: Tensor | None = None,
    policy_model: nn.Module | None = None,
    first_step: bool = False,
    logged_kl: float | None = None,
    tolerance: float = 1e-3,
    z: float = 3.0,
) -> NegativeKLDiagnosis:
    """Tell, from one batch, why its logged KL is negative (or what would make it so).

    On-policy ``E[k1] = KL(pi || pi_ref) >= 0`` for any reference, so a negative expected k1 needs tokens
    that are not samples of the scored policy, log-probabilities that do not normalise, or a reversed sign;
    a reference that is not the initial policy is reported too (``first_step=True``), because it changes
    what the KL measures, although it cannot make it negative on its own (chapter 8,
    ``sec-practice-negative-kl``).

    ``logp``, ``ref_logp``, ``mask`` (and the optional ``attention_mask``, ``prompt_mask``) are as in
    :func:`check_batch`. The optional evidence, each enabling one test:

    - ``sampler_logp``: the log-probs the *sampler* reported for the same tokens (an inference
      engine's, or the policy's at the sampling temperature / after top-p): ``sampler_mismatch`` when
      they differ from ``logp`` by more than ``tolerance`` (the report then gives the k1 reweighted by
      ``pi/q`` per sequence, the estimate of KL(pi||pi_ref) the batch supports);
    - ``logp_repeat``: a second forward pass of the policy on the same batch: ``dropout_active`` when
      the two differ; ``policy_model``: ``dropout_active`` when a dropout module with ``p > 0`` (or an
      attention dropout in the config) is in train mode;
    - ``first_step=True``: the policy has not been updated, so every log-ratio must be zero:
      ``precision_mismatch`` when the dtypes differ or are 16-bit, else ``reference_mismatch``;
    - ``logged_kl``: the value the dashboard shows; ``sign_reversed`` when it matches ``-k1``.

    ``sampling_noise`` is reported when the batch's k1 is negative but within ``z`` standard errors
    of zero. Never raises on a diagnosis; raises ``ValueError`` for unusable input.
    """
    for name, t in (("logp", logp), ("ref_logp", ref_logp), ("mask", mask)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
    if logp.dim() != 2 or ref_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            f"logp, ref_logp and mask must be [batch, time] of one shape, got "
            f"{tuple(logp.shape)}, {tuple(ref_logp.shape)}, {tuple(mask.shape)}"
        )
    for name, t in (
        ("attention_mask", attention_mask),
        ("prompt_mask", prompt_mask),
        ("sampler_logp", sampler_logp),
        ("logp_repeat", logp_repeat),
    ):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} must have shape {tuple(logp.shape)}, got {tuple(t.shape)}")
    m = mask.detach().bool()
    if not m.any():
        raise ValueError("mask selects no token")
    lp, rl = logp.detach().double(), ref_logp.detach().double()
    if not torch.isfinite((lp - rl)[m]).all():
        raise ValueError("logp or ref_logp holds NaN or inf under the mask (run check_batch() first)")
    ell = torch.where(m, lp - rl, torch.zeros_like(lp))
    rows = m.any(-1)
    seq = ell.sum(-1)[rows]
    k3 = of_log_ratio("k3", ell).sum(-1)[rows]  # k3(0) = 0 off the mask
    n = seq.numel()
    se = float(seq.std() / math.sqrt(n)) if n > 1 else float("inf")
    valid = m.clone()
    causes: list[Violation] = []

    def add(code: str, detail: str) -> None:
        causes.append(Violation(code, NEGATIVE_KL_CAUSES[code] + f" ({detail})"))

    for code, other, bad in (
        ("mask_covers_padding", attention_mask, lambda o: m & ~o.detach().bool()),
        ("mask_covers_prompt", prompt_mask, lambda o: m & o.detach().bool()),
    ):
        if other is None:
            continue
        wrong = bad(other)
        if wrong.any():
            valid &= ~wrong
            add(code, f"{int(wrong.sum())} token(s) contribute {float(ell[wrong].sum()) / n:+.4g} per sequence")
    k1_valid = float(torch.where(valid, ell, torch.zeros_like(ell)).sum(-1)[rows].mean())

    dropout = []
    if policy_model is not None:
        dropout = [
            name
            for name, mod in policy_model.named_modules()
            if isinstance(mod, nn.Dropout) and mod.p > 0 and mod.training
        ]
        cfg = getattr(policy_model, "config", None)
        if policy_model.training and cfg is not None and float(getattr(cfg, "attention_dropout", 0.0) or 0.0) > 0:
            dropout.append(f"config.attention_dropout={cfg.attention_dropout}")
    if logp_repeat is not None:
        diff = (logp_repeat.detach().double() - lp)[m].abs().max()
        if float(diff) > tolerance:
            dropout.append(f"two forward passes differ by up to {float(diff):.3g}")
    if dropout:
        add("dropout_active", "; ".join(dropout[:3]) + (f" and {len(dropout) - 3} more" if len(dropout) > 3 else ""))

    if sampler_logp is not None:
        d = lp - sampler_logp.detach().double()
        gap = d[m].abs().max()
        if float(gap) > tolerance:
            w = torch.exp(torch.where(m, d, torch.zeros_like(d)).sum(-1)[rows])
            reweighted = float((w * seq).sum() / w.sum())
            add(
                "sampler_mismatch",
                f"|logp - sampler_logp| up to {float(gap):.3g}, mean {float(d[m].mean()):+.3g}; "
                f"k1 reweighted by pi/q per sequence: {reweighted:+.4g}",
            )

    if first_step:
        worst = float(ell[m].abs().max())
        if worst > tolerance:
            low = {torch.float16, torch.bfloat16}
            if logp.dtype != ref_logp.dtype or logp.dtype in low or ref_logp.dtype in low:
                add("precision_mismatch", f"dtypes {logp.dtype} and {ref_logp.dtype}; max |l| = {worst:.3g} at step 0")
            else:
                add(
                    "reference_mismatch", f"max |l| = {worst:.3g}, mean per sequence {float(seq.mean()):+.4g} at step 0"
                )

    kl = float(seq.mean())
    if logged_kl is not None and kl != 0 and abs(logged_kl + kl) <= 1e-6 + 1e-3 * abs(kl) and logged_kl * kl < 0:
        add("sign_reversed", f"logged {logged_kl:+.4g}, k1 of this batch {kl:+.4g}")
    if kl < 0 and abs(kl) <= z * se:
        add(
            "sampling_noise",
            f"k1 = {kl:+.4g} is {abs(kl) / se:.2f} standard errors from 0; k3 = {float(k3.mean()):.4g}",
        )
    return NegativeKLDiagnosis(kl, se, float(k3.mean()), k1_valid, causes)
