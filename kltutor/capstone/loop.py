"""The GRPO loop with a selectable KL placement, measured every step, resumable (chapter 9).

One step, in the book's notation (chapter 9 shows each line's source):

1. draw ``prompts_per_step`` prompts ``x`` and sample a group of ``group_size`` completions ``y ~ pi_old``
   for each (left-padded prompts, ``temperature``, stop at EOS or ``max_new_tokens``);
2. reward each completion exactly (:class:`~kltutor.capstone.task.AdditionTask`);
   with the capstone's own :class:`~kltutor.capstone.sampler.Sampler`, which returns ``old_logp``, the
   log-probs of the sampled tokens read off the logits they were drawn from;
2. reward each completion exactly (:class:`~kltutor.capstone.task.AdditionTask`);
3. score the reference on the sampled sequences (``ref_logp``), with the policy's entropy and the exact
   per-token KL on the sampled prefixes from the hidden states kept by the sampler (the measurements;
   the policy is not run again); an in-reward KL penalty is fixed here, at sampling time;
4. ``updates_per_batch`` gradient steps on the GRPO loss of :func:`kltutor.grpo.grpo_loss` (group
   advantages, clipped surrogate, and the KL at ``placement``), or, for ``"exact-in-loss"``, the
   clipped surrogate plus ``beta`` times the exact full-vocabulary KL per token;
5. the beta schedule sees the measured sequence KL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kltutor.capstone.config import CapstoneConfig
from kltutor.capstone.logprobs import sequence_stats
from kltutor.capstone.sampler import Sampler, completion_mask_from_ids, generate_completions
from kltutor.capstone.task import AdditionTask
from kltutor.estimators import k3
from kltutor.grpo import group_advantages, grpo_loss
from kltutor.placements import aggregate, clipped_surrogate

__all__ = ["completion_mask_from_ids", "generate_completions", "make_beta_schedule", "make_sampler", "RunResult", "run",
           "StepContext", "StepRow", "measure", "METRICS", "TIMING_METRICS"]


@dataclass
class StepRow:
    r"""One row of ``metrics.jsonl``: one GRPO step. Means over completions unless said otherwise;
    "masked" tokens are the completion tokens up to and including the first EOS.

    ``reward``: mean task reward; ``accuracy``: fraction of completions with reward 1;
    ``kl_exact_seq``: mean over completions of the exact KL summed over its masked tokens,
    :math:`\sum_t \mathrm{KL}(\pi_\theta(\cdot|s_t)\|\pi_\text{ref}(\cdot|s_t))`; ``kl_exact_token``: the same
    KL averaged over all masked tokens of the batch; ``kl_k1_seq`` and ``kl_k3_seq``: mean over completions
    of :math:`\sum_t k(\ell_t)` over masked tokens, with :math:`\ell_t` = ``old_logp - ref_logp``;
    ``entropy``: the policy's next-token entropy averaged over masked tokens; ``response_length``: masked
    tokens per completion; ``terminated``: fraction that emitted EOS; ``clip_fraction``, ``grad_norm``
    (before clipping) and ``loss``: means over the ``updates_per_batch`` updates; ``kl_term``: mean over
    the updates of the KL term before beta multiplies it, aggregated like the loss (``aggregation``):
    for ``*-in-loss`` the term that ``beta`` multiplies in the loss, for ``*-in-reward`` the same
    aggregate of the frozen per-token penalty ``k(l_t)``, 0 for ``none``; ``beta``: the coefficient used
    at this step; ``seconds`` and ``tokens_per_second`` (masked completion tokens per second): wall clock.
    """

    step: int
    reward: float
    accuracy: float
    kl_exact_seq: float
    kl_exact_token: float
    kl_k1_seq: float
    kl_k3_seq: float
    entropy: float
    response_length: float
    terminated: float
    clip_fraction: float
    grad_norm: float
    loss: float
    kl_term: float
    beta: float
    seconds: float
    tokens_per_second: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


METRICS = tuple(f.name for f in dataclasses.fields(StepRow))
TIMING_METRICS = ("seconds", "tokens_per_second")  # wall-clock: the only columns that differ between identical runs


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
        opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0, fused=device.type == "cuda")
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
        ctx = StepContext(cfg, policy, ref, tok, task, opt, schedule, task_gen, device,
                          make_sampler(cfg, policy, ref, tok, task, device))
        for step in bar:
            row = _step(ctx, step).as_dict()
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


@dataclass
class StepContext:
    """Everything one GRPO step reads besides its number; :func:`run` builds it once per run."""

    cfg: CapstoneConfig
    policy: torch.nn.Module
    ref: torch.nn.Module
    tokenizer: Any
    task: AdditionTask
    optimizer: torch.optim.Optimizer
    schedule: Any  # a beta controller: ``.beta`` and ``.update(kl, n_samples)`` (kltutor.schedules)
    task_gen: torch.Generator
    device: torch.device
    sampler: Sampler
    timings: dict[str, float] | None = None  # when a dict, seconds per phase are added to it (benchmarks)


def make_sampler(cfg: CapstoneConfig, policy, ref, tokenizer, task: AdditionTask, device: torch.device, **overrides) -> Sampler:
    """The :class:`~kltutor.capstone.sampler.Sampler` a run of ``cfg`` uses (``overrides``: its keyword arguments)."""
    amp = device.type == "cuda" and cfg.bf16
    longest = len(tokenizer(task.prompt(task.max_operand, task.max_operand), add_special_tokens=False)["input_ids"])
    kwargs = dict(ref_model=ref, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                  top_k=cfg.top_k, logprob_dtype=cfg.logprob_dtype, compute_dtype=torch.bfloat16 if amp else None,
                  autocast=amp, decode_mode=cfg.decode_mode, ref_scoring=cfg.ref_scoring, max_prompt_len=longest,
                  logprob_chunk=cfg.logprob_chunk)
    return Sampler(policy, tokenizer, **(kwargs | overrides))


def measure(rewards: torch.Tensor, terminated: torch.Tensor, mask: torch.Tensor, old_logp: torch.Tensor,
            ref_logp: torch.Tensor, kl: torch.Tensor, entropy: torch.Tensor) -> dict[str, float]:
    """The measurement columns of :class:`StepRow` from one sampled batch (``[B]`` and ``[B, T]`` tensors).
    Only masked tokens count: whatever the tensors hold after a completion's first EOS is ignored."""
    m = mask > 0
    n = m.sum()
    zero = torch.zeros_like(old_logp)
    per_seq = lambda x: torch.where(m, x, zero).sum(-1).mean()  # noqa: E731
    per_token = lambda x: torch.where(m, x, zero).sum() / n  # noqa: E731
    ell = torch.where(m, old_logp - ref_logp, zero)
    vals = torch.stack([rewards.float().mean(), (rewards == 1.0).float().mean(), per_seq(kl), per_token(kl),
                        per_seq(ell), per_seq(k3(ell, zero)), per_token(entropy), m.float().sum(-1).mean(),
                        terminated.float().mean()]).tolist()
    names = ("reward", "accuracy", "kl_exact_seq", "kl_exact_token", "kl_k1_seq", "kl_k3_seq", "entropy",
             "response_length", "terminated")
    return dict(zip(names, vals))


class _Phases:
    """``with phases("sample"): ...`` adds the block's seconds to ``timings["sample"]`` (synchronising a GPU
    first, so the time is the block's own); does nothing when ``timings`` is None."""

    def __init__(self, timings: dict | None, device: torch.device):
        self.timings, self.cuda = timings, device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.timings is None:
            yield
            return
        if self.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t


def _step(ctx: StepContext, step: int) -> StepRow:
    """One GRPO step (sample, reward, score, ``updates_per_batch`` updates, measure); returns its metrics row."""
    cfg, device, policy = ctx.cfg, ctx.device, ctx.policy
    phase = _Phases(ctx.timings, device)
    t0 = time.perf_counter()
    with phase("sample"):
        pairs = ctx.task.sample(cfg.prompts_per_step, ctx.task_gen)
        pairs = [p for p in pairs for _ in range(cfg.group_size)]  # each prompt's group is consecutive
        batch = ctx.sampler.sample([ctx.task.prompt(a, b) for a, b in pairs])
    with phase("score"):
        term = batch.terminated.tolist()
        rewards = torch.tensor([ctx.task.reward(c, t, a, b) for c, t, (a, b) in zip(batch.texts, term, pairs)],
                               dtype=torch.float32, device=device)
        scores = ctx.sampler.score(batch)
    ids, attn, n_prompt = batch.input_ids, batch.attention_mask, batch.n_prompt
    mask = batch.completion_mask.float()
    old = {"logp": batch.logp, "ref_logp": scores.ref_logp}  # sampling-time: the in-reward penalty is frozen on these
    exact = cfg.placement == "exact-in-loss"
    use_amp = device.type == "cuda" and cfg.bf16
    beta = float(ctx.schedule.beta)
    clip_fracs, grad_norms, losses, kl_terms = [], [], [], []
    for _ in range(cfg.updates_per_batch):
        with phase("forward"), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            st = sequence_stats(policy, ids, attn, n_prompt, ctx.ref if exact else None, cfg.logprob_chunk,
                                cfg.temperature, ref_hidden=scores.ref_hidden if exact else None,
                                prompt_index=batch.prompt_index)
            loss, kl_term, clip_frac = _loss(cfg, st, old, mask, rewards, beta)
        with phase("backward"):
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with phase("optimizer"):
            grad_norms.append(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm))
            ctx.optimizer.step()
        clip_fracs.append(torch.as_tensor(clip_frac, dtype=torch.float32, device=device))
        losses.append(loss.detach().float())
        kl_terms.append(torch.as_tensor(kl_term, dtype=torch.float32, device=device))
    # one host synchronisation for every update's numbers
    per_update = torch.stack([torch.stack(v).float() for v in (losses, clip_fracs, grad_norms, kl_terms)]).tolist()
    for u, value in enumerate(per_update[0]):
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value} at step {step} (update {u + 1}); lower lr or beta")
    with torch.no_grad():
        measured = measure(rewards, batch.terminated, mask, old["logp"], old["ref_logp"], scores.kl, scores.entropy)
    ctx.schedule.update(measured["kl_exact_seq"], len(pairs))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row = StepRow(step=step + 1, **measured, clip_fraction=float(np.mean(per_update[1])),
                  grad_norm=float(np.mean(per_update[2])), loss=float(np.mean(per_update[0])),
                  kl_term=float(np.mean(per_update[3])), beta=beta, seconds=seconds,
                  tokens_per_second=measured["response_length"] * len(pairs) / seconds)
    for k, v in row.as_dict().items():
        if isinstance(v, float) and not math.isfinite(v):
            raise FloatingPointError(f"metric {k} is {v} at step {step + 1}")
    return row
