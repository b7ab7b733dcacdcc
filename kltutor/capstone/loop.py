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

import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kltutor.capstone.config import CapstoneConfig
from kltutor.capstone.logprobs import sequence_stats
from kltutor.capstone.task import AdditionTask
from kltutor.estimators import k3
from kltutor.grpo import group_advantages, grpo_loss
from kltutor.placements import aggregate, clipped_surrogate

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


class _FixedBeta:
    """A constant beta with the interface of kltutor.schedules (``.beta``, ``.update(kl, n_steps)``)."""

    def __init__(self, init_beta: float):
        self.beta = float(init_beta)

    def update(self, kl: float, n_steps: int) -> float:
        return self.beta


def make_beta_schedule(cfg: CapstoneConfig):
    """The beta controller named by ``cfg.kl_schedule``, from :mod:`kltutor.schedules` when available."""
    try:
        from kltutor.schedules import make_schedule
    except ImportError:
        make_schedule = None
    if make_schedule is None:
        if cfg.kl_schedule != "fixed":
            raise ValueError(f"kl_schedule={cfg.kl_schedule!r} needs kltutor.schedules, which this installation lacks; use 'fixed'")
        return _FixedBeta(cfg.beta)
    if cfg.kl_schedule == "fixed":
        return _FixedBeta(cfg.beta)
    import inspect

    from kltutor.schedules import SCHEDULES

    kwargs = {"init_beta": cfg.beta, "target": cfg.kl_target, "horizon": cfg.kl_horizon}
    cls = SCHEDULES.get(cfg.kl_schedule)
    if cls is not None:  # pass only what this controller takes (the PPO penalty has no horizon)
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return make_schedule(cfg.kl_schedule, **kwargs)


@dataclass
class RunResult:
    """What :func:`run` returns: the per-step metrics and where everything was written."""

    metrics: list[dict]
    config: CapstoneConfig
    run_dir: Path
    metrics_path: Path
    checkpoint_dir: Path
    reference_path: Path
    reference_info: dict = field(default_factory=dict)

    @property
    def frame(self):
        """The metrics as a pandas DataFrame (one row per step)."""
        import pandas as pd

        return pd.DataFrame(self.metrics, columns=list(METRICS))


def _rng_state(task_gen: torch.Generator) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "task": task_gen.get_state(), "python": random.getstate(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, task_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    task_gen.set_state(state["task"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(ckpt: Path, policy, opt, schedule, task_gen, step: int, metrics: list[dict]) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp / "policy", safe_serialization=True)
    sched_state = {k: v for k, v in vars(schedule).items() if isinstance(v, (int, float, bool, str, type(None)))}
    torch.save({"optimizer": opt.state_dict(), "rng": _rng_state(task_gen), "step": step}, tmp / "state.pt")
    (tmp / "schedule.json").write_text(json.dumps(sched_state))
    (tmp / "metrics.json").write_text(json.dumps(metrics))
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    tmp.rename(ckpt)


def _resolve_device(cfg: CapstoneConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is available; use device='cpu' (e.g. the 'smoke' preset)")
    return torch.device(cfg.device)


def _loss(cfg: CapstoneConfig, st: dict, old: dict, mask, rewards, beta: float):
    """The loss of one update: kltutor.grpo.grpo_loss, or surrogate + beta * exact KL for exact-in-loss."""
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
        kl_t = torch.exp(st["logp"] - old["logp"]) * kl_t
    kl_term = aggregate(kl_t, mask, cfg.aggregation)
    return policy_loss + beta * kl_term, kl_term.detach(), stats["clip_fraction"]


def run(config: CapstoneConfig) -> RunResult:
    """Train with GRPO from the cached SFT reference; write ``metrics.jsonl`` (one row per step).

    With ``checkpoint_every > 0`` a checkpoint (policy weights in safetensors, optimiser, RNG states,
    beta schedule, step, metrics) is written every that many steps and at the end; ``resume=True``
    continues from it, and on the CPU the resumed run's metrics equal an uninterrupted run's
    (apart from the wall-clock columns :data:`TIMING_METRICS`).
    """
    from tqdm.auto import tqdm

    from kltutor.capstone.model import load_model
    from kltutor.capstone.sft import reference_policy

    cfg = config.validate()
    device = _resolve_device(cfg)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path(tempfile.mkdtemp(prefix="kltutor-capstone-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoint"
    metrics_path = run_dir / "metrics.jsonl"
    task = AdditionTask(cfg.max_operand, cfg.format_reward)
    try:
        ref, tok, info = reference_policy(cfg, device)
        ref.requires_grad_(False)
        resuming = cfg.resume and (ckpt / "state.pt").exists()
        if cfg.resume and not resuming:
            raise FileNotFoundError(f"resume=True but {ckpt} holds no checkpoint")
        policy, _ = load_model(ckpt / "policy" if resuming else info["path"], device)
        policy.train()
        opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
        schedule = make_beta_schedule(cfg)
        task_gen = torch.Generator().manual_seed(cfg.seed)
        metrics: list[dict] = []
        start = 0
        if resuming:
            state = torch.load(ckpt / "state.pt", weights_only=True)
            opt.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"], task_gen)
            for k, v in json.loads((ckpt / "schedule.json").read_text()).items():
                setattr(schedule, k, v)
            start = state["step"]
            metrics = json.loads((ckpt / "metrics.json").read_text())
        else:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
        with open(metrics_path, "w") as f:
            for row in metrics:
                f.write(json.dumps(row) + "\n")
        disable = (not cfg.progress) or bool(os.environ.get("TQDM_DISABLE"))
        bar = tqdm(range(start, cfg.steps), desc=f"GRPO {cfg.placement} beta={cfg.beta:g}", disable=disable,
                   initial=start, total=cfg.steps)
        for step in bar:
            row = _step(cfg, policy, ref, tok, task, opt, schedule, task_gen, device, step)
            metrics.append(row)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(reward=f"{row['reward']:.2f}", kl=f"{row['kl_exact_seq']:.3f}")
            if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
                _save_checkpoint(ckpt, policy, opt, schedule, task_gen, step + 1, metrics)
    except torch.cuda.OutOfMemoryError as e:
        raise RuntimeError(
            f"GPU out of memory ({e}). This configuration does not fit: use a smaller preset "
            f"('colab' for a 16 GB GPU, 'smoke' for the CPU), or lower prompts_per_step, group_size or "
            f"logprob_chunk (now {cfg.prompts_per_step}, {cfg.group_size}, {cfg.logprob_chunk})"
        ) from e
    return RunResult(metrics, cfg, run_dir, metrics_path, ckpt, Path(info["path"]), info)


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
