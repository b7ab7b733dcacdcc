"""The libraries' own rejection filters run on the exact toy of :mod:`kltutor.filters`, and their stored verdicts.

For every rule of :data:`kltutor.filters.RULES` that a library implements as a function that runs on the CPU,
the library's function is called on all ``2**T`` sequences of the toy at once:

- verl: ``verl.trainer.ppo.rollout_corr_helper.compute_rollout_rejection_mask(log_ratio, response_mask,
  rollout_rs, rollout_rs_threshold)`` with ``log_ratio = logp - samp_logp`` (its docstring: "training policy
  ... to rollout policy"); its returned response mask is the keep mask;
- TRL: ``GRPOTrainer.get_off_policy_mask`` (a static method: DeepSeek-V3.2's off-policy sequence masking);
  TRL's ``sequence_mask`` mode is written inline in ``GRPOTrainer._generate_and_score_completions`` and cannot
  run without a model and vLLM, so its rule is pinned by source fragments instead (``SOURCE_FRAGMENTS``,
  checked by ``tests/test_filters_libraries.py``);
- OpenRLHF: ``openrlhf.models.loss.PolicyLoss(is_correction_level=..., is_correction_gating=...,
  is_correction_threshold=...)``; its per-token coefficient (keep x per-token ratio) is read off the gradient
  of its loss with unit advantages at ``w = 1`` (``d loss / d logp_t = -c_t / (n T)`` under its token mean);
  ``loss.py`` is loaded as chapter 3's adapter loads it (:func:`kltutor.trainers.openrlhf_adapter.load`).

:func:`compute` returns the keep masks, the expected gradients and biases (:func:`kltutor.filters.expected_gradient`
with the library's mask) and the library versions; ``python -m kltutor.trainers.filters regenerate`` writes
``kltutor/trainers/data/filters.json``, which chapter 8 reads (the book's environment has no TRL), and
``make trainers-test`` fails when an installed library no longer gives the stored verdicts.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

from kltutor import filters as F
from kltutor.trainers import load_stored, version_changes

__all__ = ["DATA_PATH", "RUNS", "SOURCE_FRAGMENTS", "library_keep", "compute", "load", "compare", "main"]

DATA_PATH = Path(__file__).with_name("data") / "filters.json"
DIGITS = 10

#: rule -> (library, how the library's function is called on the toy)
RUNS = {
    "trl.opsm": ("TRL", "GRPOTrainer.get_off_policy_mask(..., off_policy_threshold=0.02)"),
    "verl.token_k1": (
        "verl",
        'compute_rollout_rejection_mask(..., rollout_rs="token_k1", rollout_rs_threshold="0.5_2.0")',
    ),
    "verl.token_k3": ("verl", 'compute_rollout_rejection_mask(..., rollout_rs="token_k3", rollout_rs_threshold=0.1)'),
    "verl.seq_sum_k3": (
        "verl",
        'compute_rollout_rejection_mask(..., rollout_rs="seq_sum_k3", rollout_rs_threshold=0.2)',
    ),
    "verl.seq_mean_k3": (
        "verl",
        'compute_rollout_rejection_mask(..., rollout_rs="seq_mean_k3", rollout_rs_threshold=0.04)',
    ),
    "verl.seq_max_k2": (
        "verl",
        'compute_rollout_rejection_mask(..., rollout_rs="seq_max_k2", rollout_rs_threshold=0.1)',
    ),
    "openrlhf.token.ratio": ("OpenRLHF", 'PolicyLoss(is_correction_level="token", is_correction_threshold=(0.5, 5.0))'),
    "openrlhf.seq.ratio": ("OpenRLHF", 'PolicyLoss(is_correction_level="seq", is_correction_threshold=(0.5, 5.0))'),
    "openrlhf.seq.binary_kl": (
        "OpenRLHF",
        'PolicyLoss(is_correction_level="seq", is_correction_gating="binary_kl", is_correction_threshold=(0.0, 0.02))',
    ),
    "openrlhf.token.tv": (
        "OpenRLHF",
        'PolicyLoss(is_correction_level="token", is_correction_gating="tv", is_correction_threshold=(0.0, 0.15))',
    ),
}

#: Statements about the installed code that are read, not run: (library, file under site-packages, fragment).
SOURCE_FRAGMENTS = (
    ("TRL", "trl/trainer/grpo_config.py", 'default="sequence_mask"'),
    ("TRL", "trl/trainer/grpo_config.py", '- `"token_truncate"`: Token-level truncated IS (default).'),
    (
        "TRL",
        "trl/trainer/grpo_config.py",
        "vllm_importance_sampling_clip_max (`float`, *optional*, defaults to `3.0`):",
    ),
    ("TRL", "trl/trainer/grpo_trainer.py", "if self.use_vllm and self.vllm_importance_sampling_correction:"),
    ("TRL", "trl/trainer/grpo_trainer.py", "per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)"),
    ("TRL", "trl/trainer/grpo_trainer.py", "invalid_mis_mask = (vllm_importance_sampling_ratio < min_val) | ("),
    ("TRL", "trl/trainer/grpo_trainer.py", "is_pos_adv = advantages >= 0"),
    ("verl", "verl/trainer/ppo/rollout_corr_helper.py", "token_k1: torch.Tensor = -log_ratio_safe"),
    (
        "verl",
        "verl/trainer/ppo/rollout_corr_helper.py",
        "token_keep_bool = (per_token_stat >= lower_log) & (per_token_stat <= upper_log)",
    ),
    ("OpenRLHF", "openrlhf/models/loss.py", "coef = torch.where(keep, token_is, 0.0)"),
    ("OpenRLHF", "openrlhf/models/loss.py", "stat = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()"),
)

_VERSIONS = {"TRL": "trl", "verl": "verl", "OpenRLHF": "openrlhf"}


def _quiet(fn):
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            return fn()
        finally:
            logging.disable(logging.NOTSET)


def _version(library: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(_VERSIONS[library])


def library_keep(rule: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The keep mask ``[n, T]`` the library's own function gives for ``rule`` on ``batch``
    (:func:`kltutor.filters.toy_batch`), and for OpenRLHF the per-token coefficient it applies."""
    if rule not in RUNS:
        raise ValueError(f"no library function runs rule {rule!r}; runnable: {list(RUNS)}")
    logp, samp, adv = batch["logp"], batch["samp_logp"], batch["adv"]
    mask = torch.ones_like(logp)
    n, T = logp.shape
    if rule == "trl.opsm":
        from trl import GRPOTrainer

        keep = GRPOTrainer.get_off_policy_mask(
            advantages=adv.unsqueeze(-1),
            per_token_logps=logp,
            sampling_per_token_logps=samp,
            mask=mask,
            off_policy_threshold=0.02,
        )
        return keep.expand(n, T).to(logp.dtype), None
    if rule.startswith("verl."):
        helper = _quiet(lambda: __import__("verl.trainer.ppo.rollout_corr_helper", fromlist=["x"]))
        option = rule.split(".", 1)[1]
        threshold = {"token_k1": "0.5_2.0", "token_k3": 0.1, "seq_sum_k3": 0.2, "seq_mean_k3": 0.04, "seq_max_k2": 0.1}
        out, _ = helper.compute_rollout_rejection_mask(
            log_ratio=logp - samp, response_mask=mask, rollout_rs=option, rollout_rs_threshold=threshold[option]
        )
        return out.to(logp.dtype), None
    from kltutor.trainers.openrlhf_adapter import load as load_openrlhf  # loss.py without openrlhf's __init__

    PolicyLoss = load_openrlhf()[1].PolicyLoss
    _, level, gating = rule.split(".")
    thr = {"ratio": (0.5, 5.0), "binary_kl": (0.0, 0.02), "tv": (0.0, 0.15)}[gating]
    loss_fn = PolicyLoss(
        is_correction_level=level, is_correction_mode="mask", is_correction_gating=gating, is_correction_threshold=thr
    )
    lp = logp.clone().requires_grad_(True)
    loss = loss_fn(lp, logp.clone(), torch.ones_like(logp), action_mask=mask, rollout_log_probs=samp.clone())[0]
    (grad,) = torch.autograd.grad(loss, lp)
    coef = -grad * (n * T)  # token mean over n * T tokens, unit advantages, ratio 1
    return (coef > 0).to(logp.dtype), coef.detach()


def _r(v) -> list[float]:
    return [round(float(x), DIGITS) + 0.0 for x in v]


def compute(rules=None) -> dict:
    """Run each library's function on the toy: keep masks (one '0'/'1' string per sequence), gradients, biases."""
    rules = list(RUNS) if rules is None else list(rules)
    batch = F.toy_batch()
    true = F.exact_gradient()
    versions = {"torch": torch.__version__.split("+")[0], "python": platform.python_version()}
    rows = []
    for rule in rules:
        library, call = RUNS[rule]
        versions[_VERSIONS[library]] = _version(library)
        keep, coef = library_keep(rule, batch)
        g = F.expected_gradient(rule, keep=keep)
        row = {
            "rule": rule,
            "library": library,
            "call": call,
            "keep": ["".join(str(int(v)) for v in row) for row in keep.round().long().tolist()],
            "sequences_touched": int((keep < 1).any(-1).sum()),
            "gradient": _r(g),
            "bias_norm": round(float((g - true).norm()), DIGITS),
        }
        if coef is not None:
            ours = F.coefficients(rule, batch["logp"], batch["samp_logp"], keep)
            row["coefficient_equals_ours"] = bool((coef - ours).abs().max() < 1e-12)  # float64 rounding only
        rows.append(row)
    return {
        "generated_by": "python -m kltutor.trainers.filters regenerate",
        "toy": {k: list(v) if isinstance(v, tuple) else v for k, v in F.TOY.items()},
        "exact_gradient": _r(true),
        "versions": versions,
        "rules": rows,
    }


def load(path: Path | str = DATA_PATH) -> dict:
    """The stored verdicts (no library needed)."""
    return load_stored(path, "filter verdicts", "python -m kltutor.trainers.filters regenerate")


def compare(fresh: dict, stored: dict, tol: float = 1e-9) -> list[str]:
    """Differences between a fresh :func:`compute` and the stored file, one line each (empty: they agree)."""
    out = version_changes(fresh, stored)
    old = {r["rule"]: r for r in stored["rules"]}
    for r in fresh["rules"]:
        s = old.get(r["rule"])
        if s is None:
            out.append(f"{r['rule']}: not in the stored file")
            continue
        if s["keep"] != r["keep"]:
            out.append(f"{r['rule']}: the library now keeps different tokens")
        d = max(abs(x - y) for x, y in zip(s["gradient"], r["gradient"]))
        if d > tol:
            out.append(f"{r['rule']}: gradient moved by {d:.2e}")
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m kltutor.trainers.filters", description="the libraries' rejection filters on the toy"
    )
    p.add_argument("command", choices=["regenerate", "check"])
    args = p.parse_args(argv)
    try:
        fresh = compute()
    except ImportError as e:
        print(f"a library is missing ({e}); install the extra: make trainers-venv", file=sys.stderr)
        return 2
    if args.command == "regenerate":
        DATA_PATH.write_text(json.dumps(fresh, indent=1) + "\n")
        print(f"wrote {DATA_PATH} ({len(fresh['rules'])} rules)")
        return 0
    diffs = compare(fresh, load())
    print("\n".join(diffs) or "the installed libraries agree with the stored filter verdicts")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
