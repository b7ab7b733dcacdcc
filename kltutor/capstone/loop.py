"""The GRPO loop with a selectable KL placement, measured every step, resumable (chapter ``ch-capstone``).

One step, in the book's notation (the capstone chapter shows each line's source):

1. draw ``prompts_per_step`` prompts ``x`` and sample a group of ``group_size`` completions ``y ~ pi_old``
   for each (left-padded prompts, ``temperature``, stop at EOS or ``max_new_tokens``);
2. reward each completion exactly (:class:`~kltutor.capstone.task.AdditionTask`);
3. one no-grad pass of the policy and the reference over the sampled sequences gives ``old_logp``,
   ``ref_logp``, the entropy and the exact per-token KL on the sampled prefixes (the measurements);
4. ``updates_per_batch`` gradient steps on the GRPO loss of :func:`kltutor.grpo.grpo_loss` (group
   advantages, clipped surrogate, and the KL at ``placement``), or, for ``"exact-in-loss"``, the
   clipped surrogate plus ``beta`` times the exact full-vocabulary KL per token;
5. the beta schedule sees the measured sequence KL.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kltutor.capstone import rundir
from kltutor.capstone.config import CapstoneConfig, CapstoneOutOfMemoryError
from kltutor.capstone.logprobs import sequence_stats
from kltutor.capstone.task import AdditionTask
from kltutor.estimators import k3
from kltutor.grpo import group_advantages, grpo_loss
from kltutor.placements import aggregate, clipped_surrogate

if TYPE_CHECKING:
    from kltutor.capstone.sft import ReferenceInfo

__all__ = ["completion_mask_from_ids", "generate_completions", "make_beta_schedule", "RunResult", "run", "METRICS", "TIMING_METRICS"]

METRICS = ("step", "reward", "accuracy", "kl_exact_seq", "kl_exact_token", "kl_k1_seq", "kl_k3_seq", "entropy",
           "response_length", "terminated", "clip_fraction", "grad_norm", "loss", "kl_term", "beta",
           "seconds", "tokens_per_second")
TIMING_METRICS = ("seconds", "tokens_per_second")  # wall-clock: the only columns that differ between identical runs


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on every completion token up to and including the first EOS, 0 after it (``[batch, T]``, long).
    A completion without EOS (truncated at ``max_new_tokens``) is all ones."""
    is_eos = (completion_ids == eos_token_id).long()
    before = torch.cumsum(is_eos, -1) - is_eos  # number of EOS strictly before position t
    return (before == 0).long()


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
                         greedy: bool = False) -> dict:
    """Sample one completion per prompt with ``model.generate`` (left padding, EOS handling).

    Returns ``input_ids`` ``[batch, P + T]`` (prompt + completion), ``attention_mask`` (0 on padding
    and after the first EOS), ``completion_mask`` ``[batch, T]`` (1 on completion tokens up to and
    including the first EOS), ``n_prompt`` = P, the completion ``texts`` (before EOS) and
    ``terminated`` (whether EOS was emitted).
    """
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if greedy:
        kwargs.update(do_sample=False)
    else:
        kwargs.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)
    model.train(was_training)
    n_prompt = enc["input_ids"].shape[1]
    comp = out[:, n_prompt:]
    completion_mask = completion_mask_from_ids(comp, tokenizer.eos_token_id)
    terminated = (comp == tokenizer.eos_token_id).any(-1)
    texts = []
    for row, m in zip(comp.tolist(), completion_mask.tolist()):
        toks = [t for t, k in zip(row, m) if k and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return {"input_ids": out, "attention_mask": torch.cat([enc["attention_mask"], completion_mask], -1),
            "completion_mask": completion_mask, "n_prompt": n_prompt, "texts": texts,
            "terminated": terminated.tolist()}


def make_beta_schedule(cfg: CapstoneConfig):
    """The beta controller named by ``cfg.kl_schedule`` (:data:`kltutor.schedules.SCHEDULES`), built from
    ``beta``, ``kl_target``, ``kl_horizon`` and ``beta_end`` (those the schedule does not read are ``None``
    in the resolved config)."""
    from kltutor.schedules import make_schedule

    cfg = cfg.resolved()
    return make_schedule(cfg.kl_schedule, beta=cfg.beta, target=cfg.kl_target, horizon=cfg.kl_horizon, end=cfg.beta_end)


@dataclass
class RunResult:
    """What :func:`run` returns: the per-step metrics and where everything was written."""

    metrics: list[dict]
    config: CapstoneConfig
    run_dir: Path
    metrics_path: Path
    checkpoint_dir: Path
    reference_path: Path
    reference_info: "ReferenceInfo | None" = None  # None when a finished run was resumed (nothing trained)

    @property
    def frame(self):
        """The metrics as a pandas DataFrame (one row per step)."""
        import pandas as pd

        return pd.DataFrame(self.metrics, columns=list(METRICS))


def _loss(cfg: CapstoneConfig, st: dict, old: dict, mask, rewards, beta: float):
    """The loss of one update: kltutor.grpo.grpo_loss, or surrogate + beta * exact KL for exact-in-loss.

    ``importance_weighted_kl`` with ``exact-in-loss`` weights the exact KL at position t by the prefix
    ratio ``W_t = prod_{s<t} w_s`` (with gradient; ``w_s = pi_theta / pi_old`` of the sampled token):
    the exact KL already averages over the token at t, so only the prefix was sampled from pi_old.
    Then ``E_old[sum_t W_t KL_t] = sum_t E_theta[KL_t]`` is the current policy's sequence KL, and so
    is the expected gradient (the prefix weight of ``ch-placements``; tests/test_capstone_loss.py checks it
    exactly). For k*-in-loss, kltutor.grpo.grpo_loss uses the per-token ratio (``ch-placements``).
    """
    if cfg.placement != "exact-in-loss":
        out = grpo_loss(st["logp"], old["logp"], old["ref_logp"], mask, rewards, cfg.group_size,
                        placement=cfg.placement, beta=beta, clip_eps=cfg.clip_eps, clip_std=cfg.clip_std,
                        normalize_std=cfg.normalize_std, aggregation=cfg.aggregation, kl_level=cfg.kl_level,
                        importance_weighted_kl=cfg.importance_weighted_kl)
        return out.loss, out.kl_term, out.clip_fraction
    adv = group_advantages(rewards, cfg.group_size, normalize_std=cfg.normalize_std, clip_std=cfg.clip_std)
    policy_loss, stats = clipped_surrogate(st["logp"], old["logp"], adv, mask, cfg.clip_eps, cfg.aggregation)
    kl_t = st["kl"]
    if cfg.importance_weighted_kl:
        log_w = (st["logp"] - old["logp"].detach()) * (mask != 0).to(st["logp"].dtype)
        kl_t = torch.exp(torch.cumsum(log_w, -1) - log_w) * kl_t  # prod_{s<t} w_s: the prefix before t
    kl_term = aggregate(kl_t, mask, cfg.aggregation)
    return policy_loss + beta * kl_term, kl_term.detach(), stats["clip_fraction"]


def run(config: CapstoneConfig) -> RunResult:
    """Train with GRPO from the cached SFT reference; write ``metrics.jsonl`` (one row per step).

    Everything that can be checked is checked first (:func:`kltutor.capstone.preflight.preflight`:
    settings, device, model, cache, run directory). The run directory (:mod:`kltutor.capstone.rundir`)
    records the resolved config and package versions in ``run.json``; a directory that already holds
    a run needs ``resume`` or ``overwrite``. With ``checkpoint_every > 0`` a checkpoint (policy weights
    in safetensors, optimiser, RNG states, beta schedule, step, metrics) is written atomically every
    that many steps and at the end; ``resume=True`` continues from it after comparing the config with
    ``run.json``, and on the CPU the resumed run's metrics equal an uninterrupted run's (apart from
    the wall-clock columns :data:`TIMING_METRICS`). Rows of finished steps are on disk as soon as each
    step ends, whatever fails later.
    """
    from tqdm.auto import tqdm

    from kltutor.capstone.model import load_model
    from kltutor.capstone.preflight import preflight
    from kltutor.capstone.sft import reference_policy

    plan = preflight(config)  # every check first; nothing is written before it passes
    cfg, device, resume = plan.config, plan.device, plan.run.resume
    for note in plan.run.notes:
        print(f"note: {note}", file=sys.stderr)
    if plan.run.nothing_to_do:
        d = plan.run.run_dir
        return RunResult(rundir.read_checkpoint_metrics(resume.checkpoint), cfg, d, d / rundir.METRICS_FILE,
                         resume.checkpoint, plan.reference_dir)
    run_dir = rundir.open_run_dir(plan.run, cfg)
    cfg = cfg.replace(run_dir=str(run_dir))
    ckpt = run_dir / rundir.CHECKPOINT
    log = rundir.MetricsLog(run_dir / rundir.METRICS_FILE)
    metrics_path = log.path
    task = AdditionTask(cfg.max_operand, cfg.format_reward)
    try:
        ref, tok, info = reference_policy(cfg, device)
        ref.requires_grad_(False)
        saved = rundir.load_checkpoint(resume.checkpoint, device) if resume else None
        policy = saved.policy if saved else load_model(info.path, device)[0]
        policy.train()
        opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
        schedule = make_beta_schedule(cfg)
        task_gen = torch.Generator().manual_seed(cfg.seed)
        metrics: list[dict] = []
        start = 0
        if saved:
            opt.load_state_dict(saved.optimizer_state)
            for group in opt.param_groups:  # the requested lr (equal to the saved one unless allowed to change)
                group["lr"] = cfg.lr
            rundir.set_rng_state(saved.rng_state, task_gen)
            if resume.changes.schedule_changed:  # an allowed change of beta or schedule starts it afresh
                print(f"note: the beta schedule restarts at beta={cfg.beta:g} from step {saved.step + 1}", file=sys.stderr)
            else:
                rundir.restore_schedule(schedule, saved.schedule_state)
            start, metrics = saved.step, list(saved.metrics)
            dropped = len(log.read()) - len(metrics)
            if dropped > 0:
                print(f"note: {metrics_path} holds {dropped} rows after the checkpoint's step {start}; they are "
                      "recomputed", file=sys.stderr)
        else:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
        log.rewrite(metrics)
        disable = (not cfg.progress) or bool(os.environ.get("TQDM_DISABLE"))
        bar = tqdm(range(start, cfg.steps), desc=f"GRPO {cfg.placement} beta={cfg.beta:g}", disable=disable,
                   initial=start, total=cfg.steps)
        for step in bar:
            row = _step(cfg, policy, ref, tok, task, opt, schedule, task_gen, device, step)
            metrics.append(row)
            log.append(row)
            bar.set_postfix(reward=f"{row['reward']:.2f}", kl=f"{row['kl_exact_seq']:.3f}")
            if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
                rundir.save_checkpoint(ckpt, policy, opt, schedule, task_gen, step + 1, metrics)
    except torch.cuda.OutOfMemoryError as e:
        err = CapstoneOutOfMemoryError(
            f"GPU out of memory ({str(e).splitlines()[0]}). This configuration does not fit: use a smaller preset "
            f"('colab' for a 16 GB GPU, 'smoke' for the CPU), or lower prompts_per_step, group_size or "
            f"logprob_chunk (now {cfg.prompts_per_step}, {cfg.group_size}, {cfg.logprob_chunk})"
        )
        err.add_note(f"the metrics of the finished steps are in {metrics_path}")
        raise err from e
    except BaseException as e:  # whatever fails, the rows of the finished steps are on disk: say where
        e.add_note(f"the metrics of the finished steps are in {metrics_path}")
        raise
    return RunResult(metrics, cfg, run_dir, metrics_path, ckpt, info.path, info)


def _step(cfg, policy, ref, tok, task, opt, schedule, task_gen, device, step: int) -> dict:
    t0 = time.perf_counter()
    pairs = task.sample(cfg.prompts_per_step, task_gen)
    pairs = [p for p in pairs for _ in range(cfg.group_size)]  # each prompt's group is consecutive
    batch = generate_completions(policy, tok, [task.prompt(a, b) for a, b in pairs], cfg.max_new_tokens, cfg.temperature)
    rewards = torch.tensor([task.reward(c, t, a, b) for c, t, (a, b) in zip(batch["texts"], batch["terminated"], pairs)],
                           dtype=torch.float32, device=device)
    ids, attn, n_prompt = batch["input_ids"], batch["attention_mask"], batch["n_prompt"]
    mask = batch["completion_mask"].float()
    use_amp = device.type == "cuda" and cfg.bf16
    amp = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp)  # noqa: E731
    with torch.no_grad(), amp():
        old = sequence_stats(policy, ids, attn, n_prompt, ref, cfg.logprob_chunk, cfg.temperature)
    beta = float(schedule.beta)
    clip_fracs, grad_norms, losses, kl_terms = [], [], [], []
    for _ in range(cfg.updates_per_batch):
        with amp():
            st = sequence_stats(policy, ids, attn, n_prompt, ref if cfg.placement == "exact-in-loss" else None,
                                cfg.logprob_chunk, cfg.temperature)
            loss, kl_term, clip_frac = _loss(cfg, st, old, mask, rewards, beta)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss.item()} at step {step}; lower lr or beta")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)))
        opt.step()
        clip_fracs.append(float(clip_frac))
        losses.append(float(loss.detach()))
        kl_terms.append(float(kl_term))
    with torch.no_grad():
        lr_ = (old["logp"] - old["ref_logp"]) * mask
        seq_kl_exact = (old["kl"] * mask).sum(-1)
        row = {
            "step": step + 1,
            "reward": rewards.mean().item(),
            "accuracy": (rewards == 1.0).float().mean().item(),
            "kl_exact_seq": seq_kl_exact.mean().item(),
            "kl_exact_token": ((old["kl"] * mask).sum() / mask.sum()).item(),
            "kl_k1_seq": lr_.sum(-1).mean().item(),
            "kl_k3_seq": (k3(old["logp"], old["ref_logp"]) * mask).sum(-1).mean().item(),
            "entropy": ((old["entropy"] * mask).sum() / mask.sum()).item(),
            "response_length": mask.sum(-1).mean().item(),
            "terminated": float(np.mean(batch["terminated"])),
            "clip_fraction": float(np.mean(clip_fracs)),
            "grad_norm": float(np.mean(grad_norms)),
            "loss": float(np.mean(losses)),
            "kl_term": float(np.mean(kl_terms)),
            "beta": beta,
        }
    schedule.update(row["kl_exact_seq"], len(pairs))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row["seconds"] = seconds
    row["tokens_per_second"] = mask.sum().item() / seconds
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise FloatingPointError(f"metric {k} is {v} at step {step + 1}")
    return row
