"""The checks of :mod:`kltutor.trainers.grpo_extension` against the capstone, and the figures the book shows.

- :func:`agreement`: on one fixed batch (the same weights, prompts, completions, rewards), the extension's loss,
  advantages and parameter gradient against :func:`kltutor.capstone.loss.step_loss`'s;
- :func:`distributed`: the same TRL run (:mod:`kltutor.trainers.trl_capstone`) under ``torchrun`` with one and
  with two processes (gloo, the CPU), the largest parameter difference after a few optimiser steps;
- ``python -m kltutor.trainers.extension_checks`` measures both and writes ``data/trl_extension.json``, which the
  capstone chapter renders (the book's environment has no TRL). ``tests/test_trl_extension.py`` and
  ``tests/test_trl_distributed.py`` assert the same measurements with their tolerances.

Needs the ``[trainers]`` extra.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

__all__ = ["TINY", "CASES", "STALE_CASES", "DISTRIBUTED", "reference", "agreement", "distributed", "main"]

#: The tiny capstone of the tests (``tests/helpers/capstone_tiny.py`` takes it from here as TINY_SETTINGS):
#: a one-layer Qwen2 on sums up to 9 whose SFT takes a second or two.
TINY = dict(
    max_operand=9,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    sft_steps=40,
    sft_batch_size=32,
    prompts_per_step=2,
    group_size=4,
    max_new_tokens=3,
    lr=1e-3,
    format_reward=0.5,
)
BETA = 0.2
N_PROMPTS = 3
DATA_PATH = Path(__file__).with_name("data") / "trl_extension.json"

#: (placement, kl_level, importance_weighted_kl, aggregation) on an on-policy batch: every placement, both
#: levels, every aggregation at least once.
CASES = [
    ("none", "token", False, "sequence-mean"),
    ("k1-in-reward", "token", False, "sequence-mean"),
    ("k3-in-reward", "token", False, "token-mean"),
    ("k1-in-loss", "token", False, "sequence-mean"),
    ("k2-in-loss", "token", False, "sequence-sum"),
    ("k3-in-loss", "token", False, "sequence-mean"),
    ("k3-in-loss", "sequence", False, "sequence-mean"),
    ("k2-in-loss", "sequence", False, "token-mean"),
    ("exact-in-loss", "token", False, "sequence-mean"),
    ("exact-in-loss", "token", False, "token-mean"),
]
#: On a stale batch (parameters moved after sampling): the frozen in-reward penalty and both ratio corrections.
STALE_CASES = [
    ("k1-in-reward", "token", False, "sequence-mean"),
    ("k3-in-loss", "token", True, "sequence-mean"),
    ("k1-in-loss", "token", True, "token-mean"),
    ("exact-in-loss", "token", True, "sequence-sum"),
]
#: (placement, aggregation) of the one- versus two-process runs: in-reward, in-loss under the global token
#: mean, and the exact KL summed per sequence.
DISTRIBUTED = [("k1-in-reward", "sequence-mean"), ("k3-in-loss", "token-mean"), ("exact-in-loss", "sequence-sum")]
DISTRIBUTED_STEPS = 3


def reference(cache_dir) -> str:
    """The tiny capstone's SFT reference (trained once, cached in ``cache_dir``): its directory."""
    from kltutor.capstone.config import CapstoneConfig
    from kltutor.capstone.sft import reference_policy

    cfg = CapstoneConfig(**TINY, cache_dir=str(cache_dir), progress=False, device="cpu")
    return str(reference_policy(cfg)[2].path)


def _capstone_cfg(placement, level, iw, agg):
    from kltutor.capstone.config import CapstoneConfig
    from kltutor.placements import parse_placement

    return CapstoneConfig(
        **{**TINY, "prompts_per_step": N_PROMPTS},
        placement=placement,
        beta=0.0 if parse_placement(placement).is_none else BETA,
        kl_level=level,
        importance_weighted_kl=iw,
        aggregation=agg,
        updates_per_batch=2 if iw else 1,
        device="cpu",
    ).validate()


def _perturb(model, seed, scale):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def trainer(model_dir: str, out_dir, placement, level, iw, agg):
    """The extension's trainer for one case, its policy moved away from the reference (seeded), and its config."""
    from kltutor.capstone.export import trl_config_values
    from kltutor.trainers.trl_capstone import make_trainer

    cfg = _capstone_cfg(placement, level, iw, agg)
    values = trl_config_values(cfg)
    values.update(report_to="none", save_strategy="no", logging_steps=1)
    tr = make_trainer(values, model_dir, str(out_dir))
    tr.model.train()
    _perturb(tr.model, seed=3, scale=0.05)  # at the reference every KL gradient would be 0
    return tr, cfg


def batch(tr, seed=0):
    """One batch sampled and scored by TRL's ``_generate_and_score_completions`` (with the extension's advantages)."""
    from kltutor.capstone.task import AdditionTask

    g = torch.Generator().manual_seed(seed)
    task = AdditionTask(TINY["max_operand"])
    prompts = [task.prompt(a, b) for a, b in task.sample(N_PROMPTS, g)]
    torch.manual_seed(seed)
    return tr._generate_and_score_completions([{"prompt": p} for p in prompts for _ in range(TINY["group_size"])])


def _capstone_loss(cfg, tr, b, old_logp):
    """step_loss on the batch, with the capstone's own log-probabilities (kltutor.capstone.logprobs)."""
    from kltutor.capstone.logprobs import sequence_stats
    from kltutor.capstone.loss import loss_settings, step_loss

    ids = torch.cat([b["prompt_ids"], b["completion_ids"]], 1)
    attn = torch.cat([b["prompt_mask"], b["completion_mask"]], 1)
    P = b["prompt_ids"].shape[1]
    exact = cfg.kl_placement.exact
    ref_model = tr.ref_model if tr.ref_model is not None else tr.model  # placement 'none' loads no reference
    st = sequence_stats(tr.model, ids, attn, P, ref_model if exact else None, cfg.logprob_chunk, cfg.temperature)
    with torch.no_grad():
        ref = sequence_stats(ref_model, ids, attn, P, None, cfg.logprob_chunk, cfg.temperature)["logp"]
    old = {"logp": st["logp"].detach() if old_logp is None else old_logp, "ref_logp": ref}
    rewards = tr._kl_rewards.sum(-1).float()
    loss, _, _ = step_loss(st, old, b["completion_mask"].float(), rewards, beta=cfg.beta, **loss_settings(cfg))
    return loss


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def agreement(model_dir: str, out_dir, case, stale: bool = False) -> dict:
    """Extension versus ``step_loss`` on one batch: ``loss`` (the capstone's), ``loss_diff`` (absolute),
    ``grad_diff`` (largest entry difference over the largest capstone entry, at least 1), ``advantages_equal``,
    ``grad`` (the capstone's gradient, a tensor)."""
    from kltutor.grpo import group_advantages

    tr, cfg = trainer(model_dir, out_dir, *case)
    b = batch(tr, seed=1 if stale else 0)
    old = None
    if stale:
        ids = torch.cat([b["prompt_ids"], b["completion_ids"]], 1)
        attn = torch.cat([b["prompt_mask"], b["completion_mask"]], 1)
        with torch.no_grad():
            old, _, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, attn, b["completion_ids"].shape[1])
        _perturb(tr.model, seed=7, scale=0.02)
        b["old_per_token_logps"] = old
    elif "old_per_token_logps" in b:
        raise AssertionError("an on-policy batch should carry no old_per_token_logps")
    adv = group_advantages(tr._kl_rewards.sum(-1).float(), cfg.group_size)
    g_ext = _grads(tr.model, ext := tr._compute_loss(tr.model, b))
    g_cap = _grads(tr.model, cap := _capstone_loss(cfg, tr, b, old))
    return {
        "loss": float(cap.detach()),
        "loss_diff": abs(float(ext.detach()) - float(cap.detach())),
        "grad_diff": float((g_ext - g_cap).abs().max()) / max(1.0, float(g_cap.abs().max())),
        "advantages_equal": bool(torch.equal(b["advantages"], adv)),
        "grad": g_cap.detach(),
    }


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _run(tmp: Path, cfg, model_dir: str, nproc: int) -> dict:
    import yaml

    from kltutor.capstone.export import trl_config_values

    values = trl_config_values(cfg, nproc)
    # plain SGD, no clipping: the parameters are then linear in the summed gradients, so a wrong reduction across
    # ranks shows at the size of the update (Adam's and clipping's scale invariance would hide a factor)
    values.update(optim="sgd", max_grad_norm=1e6, report_to="none", save_strategy="no", disable_tqdm=True)
    conf = tmp / f"grpo-{nproc}.yaml"
    conf.write_text(yaml.safe_dump(values))
    out = tmp / f"params-{nproc}.pt"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = _torchrun() + ["--nproc_per_node", str(nproc), "--master_port", str(29500 + nproc), "-m"]
    cmd += ["kltutor.trainers.trl_capstone", str(conf), "--model", model_dir, "--layout-free"]
    cmd += ["--save", str(out), "--output-dir", str(tmp / f"out-{nproc}")]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"torchrun --nproc_per_node {nproc} failed:\n{r.stderr[-3000:]}")
    return torch.load(out)


def distributed(model_dir: str, tmp, placement: str, aggregation: str) -> dict:
    """One process versus two (torchrun, gloo), the same global batch, ``DISTRIBUTED_STEPS`` SGD steps:
    ``diff`` (largest parameter difference) and ``moved`` (largest parameter movement of the one-process run)."""
    from safetensors.torch import load_file

    from kltutor.capstone.config import CapstoneConfig

    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = CapstoneConfig(**TINY, placement=placement, beta=0.1, aggregation=aggregation, device="cpu")
    cfg = cfg.replace(steps=DISTRIBUTED_STEPS, lr=0.05)
    one = _run(tmp, cfg, model_dir, 1)
    two = _run(tmp, cfg, model_dir, 2)
    start = load_file(str(Path(model_dir) / "model.safetensors"))
    start.setdefault("lm_head.weight", start["model.embed_tokens.weight"])  # tied embeddings
    return {
        "diff": max(float((one[k] - two[k]).abs().max()) for k in one),
        "moved": max(float((one[k] - start[k]).abs().max()) for k in one),
    }


def main(argv=None) -> int:
    import trl

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model = reference(d / "cache")
        rows = []
        for stale, cases in ((False, CASES), (True, STALE_CASES)):
            for i, case in enumerate(cases):
                r = agreement(model, d / f"o{i}", case, stale=stale)
                rows.append(
                    dict(zip(("placement", "kl_level", "importance_weighted_kl", "aggregation"), case))
                    | {"batch": "stale" if stale else "on-policy"}
                    | {k: r[k] for k in ("loss", "loss_diff", "grad_diff", "advantages_equal")}
                )
                print(rows[-1], flush=True)
        dist = []
        for placement, agg in DISTRIBUTED:
            r = distributed(model, d / f"dist-{placement}", placement, agg)
            dist.append({"placement": placement, "aggregation": agg, **r})
            print(dist[-1], flush=True)
    data = {
        "generated_by": "python -m kltutor.trainers.extension_checks",
        "versions": {
            "trl": trl.__version__,
            "torch": torch.__version__.split("+")[0],
            "python": platform.python_version(),
        },
        "beta": BETA,
        "agreement": rows,
        "distributed": {"steps": DISTRIBUTED_STEPS, "optimizer": "sgd, lr 0.05, no clipping", "runs": dist},
    }
    DATA_PATH.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {DATA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
