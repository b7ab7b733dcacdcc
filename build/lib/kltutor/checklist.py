"""The engineering checklist as runnable checks (introduced in chapter 7).

:func:`inspect` looks at one training batch and the reference model and reports every violation it
can see::

    report = inspect(logp=logp, ref_logp=ref_logp, mask=mask, attention_mask=attention_mask,
                     prompt_mask=prompt_mask, rewards=rewards, shaped_rewards=shaped,
                     ref_model=ref_model, policy_model=policy)
    assert report.ok, report

Each check has a stable ``code`` (see :data:`CHECKS`) so a trainer can assert on it, log it, or
silence one deliberately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["CHECKS", "Violation", "Report", "inspect"]

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
    """The result of :func:`inspect`: the violations found and the checks that were run."""

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


def inspect(
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
        "ref_logp": ref_logp, "mask": mask, "attention_mask": attention_mask,
        "prompt_mask": prompt_mask, "shaped_rewards": shaped_rewards,
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
            flag("logp_positive", f"{name}: max {float(v[torch.isfinite(v)].max()) if torch.isfinite(v).any() else float('nan'):.3g}")

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
