"""The GRPO loop with a selectable KL placement, measured every step, resumable (chapter ``ch-capstone``).

One step, in the book's notation (the capstone chapter shows each line's source):

1. draw ``prompts_per_step`` prompts ``x`` and sample a group of ``group_size`` completions ``y ~ pi_old``
   for each (left-padded prompts, ``temperature``, stop at EOS or ``max_new_tokens``) with the capstone's
   own :class:`~kltutor.capstone.sampler.Sampler`, which returns ``old_logp``, the log-probs of the
   sampled tokens read off the logits they were drawn from;
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
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kltutor.capstone import rundir
from kltutor.capstone.config import CapstoneConfig, CapstoneOutOfMemoryError, CapstoneUserError
from kltutor.capstone.interrupts import Interrupts, RunInterrupted, signal_name
from kltutor.capstone.logprobs import sequence_stats
from kltutor.capstone.loss import loss_settings, measure, step_loss
from kltutor.capstone.precision import Precision, resolve_precision
from kltutor.capstone.sampler import Sampler, completion_mask_from_ids, generate_completions
from kltutor.capstone.task import AdditionTask
from kltutor.capstone.teacher import distillation_loss, distillation_settings, load_teacher
from kltutor.estimators import deferred_finiteness_checks

if TYPE_CHECKING:
    from kltutor.capstone.sft import ReferenceInfo

__all__ = [
    "completion_mask_from_ids",
    "generate_completions",
    "make_beta_schedule",
    "make_optimizer",
    "make_sampler",
    "RunResult",
    "run",
    "StepContext",
    "StepRow",
    "METRICS",
    "TIMING_METRICS",
]


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
    (before clipping; under float16 loss scaling, over the updates not skipped for overflow, NaN if
    all were) and ``loss``: means over the ``updates_per_batch`` updates; ``kl_term``: mean over
    the updates of the KL term before beta multiplies it, aggregated like the loss (``aggregation``):
    for ``*-in-loss`` the term that ``beta`` multiplies in the loss, for ``*-in-reward`` the same
    aggregate of the frozen per-token penalty ``k(l_t)``, 0 for ``none``; ``beta``: the coefficient used
    at this step; ``seconds`` and ``tokens_per_second`` (masked completion tokens per second): wall clock.
    With a teacher (on-policy distillation, :mod:`kltutor.capstone.teacher`) the teacher is the reference
    of every KL column, and ``kl_term`` is the per-token KL of the reward (k1, k3 or exact) so aggregated.
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
    reference_info: ReferenceInfo | None = None  # None when a finished run was resumed (nothing trained)
    precision: Precision | None = None  # the resolved precision (kltutor.capstone.precision), also in run.json
    decode_mode_used: str | None = None  # what the sampler's decode step ran as (a fallback shows), also in run.json

    @property
    def frame(self):
        """The metrics as a pandas DataFrame (one row per step)."""
        import pandas as pd

        return pd.DataFrame(self.metrics, columns=list(METRICS))


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

    One process at a time works in a run directory (:class:`~kltutor.capstone.runlock.RunLock`). A
    first Ctrl-C or SIGTERM ends the run after the step in progress with a checkpoint
    (:mod:`kltutor.capstone.interrupts`); a failure before the first step puts the directory back as it
    was (:func:`kltutor.capstone.rundir.undo_start`), so the same command can run again.
    """
    from kltutor.capstone.model import progress_bars
    from kltutor.capstone.preflight import preflight
    from kltutor.capstone.runlock import RunLock

    plan = preflight(config)  # every check first; nothing is written before it passes
    bars = plan.config.progress and not os.environ.get("TQDM_DISABLE")
    with RunLock(plan.run.run_dir) as lock, Interrupts() as stop, progress_bars(bars):
        if lock.path is not None:  # the directory's checks again, now that no other process can change it
            plan.run, plan.config = rundir.plan_run_dir(plan.config)
            plan.run.notes[:0] = lock.notes
        return _run(plan, stop)


def _run(plan, stop: Interrupts) -> RunResult:
    """:func:`run` once the checks have passed and the run directory is locked (``plan``: a
    :class:`~kltutor.capstone.preflight.RunPlan`)."""
    from tqdm.auto import tqdm

    from kltutor.capstone.model import load_model
    from kltutor.capstone.sft import reference_policy

    cfg, device, resume = plan.config, plan.device, plan.run.resume
    for note in plan.run.notes:
        print(f"note: {note}", file=sys.stderr)
    if plan.run.nothing_to_do:
        d = plan.run.run_dir
        return RunResult(
            rundir.read_checkpoint_metrics(resume.checkpoint),
            cfg,
            d,
            d / rundir.METRICS_FILE,
            resume.checkpoint,
            plan.reference_dir,
        )
    metrics_path, started = None, False
    try:
        run_dir = rundir.open_run_dir(plan.run, cfg)
        cfg = cfg.replace(run_dir=str(run_dir))
        precision = plan.precision or resolve_precision(cfg, device)
        rundir.update_run_record(run_dir, precision=precision.as_dict())
        ckpt = run_dir / rundir.CHECKPOINT
        log = rundir.MetricsLog(run_dir / rundir.METRICS_FILE)
        metrics_path = log.path
        task = AdditionTask(cfg.max_operand, cfg.format_reward)
        ref, tok, info = reference_policy(cfg, device)
        ref.requires_grad_(False)
        if cfg.teacher is not None:  # on-policy distillation: the teacher scores in the reference's place
            ref = load_teacher(cfg, ref, device)
        saved = rundir.load_checkpoint(resume.checkpoint, device) if resume else None
        policy = saved.policy if saved else load_model(info.path, device)[0]
        policy.train()
        opt = make_optimizer(policy.parameters(), cfg.lr)
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
                print(
                    f"note: the beta schedule restarts at beta={cfg.beta:g} from step {saved.step + 1}", file=sys.stderr
                )
            else:
                rundir.restore_schedule(schedule, saved.schedule_state)
            start, metrics = saved.step, list(saved.metrics)
            dropped = len(log.read()) - len(metrics)
            if dropped > 0:
                print(
                    f"note: {metrics_path} holds {dropped} rows after the checkpoint's step {start}; they are "
                    "recomputed",
                    file=sys.stderr,
                )
        else:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
        log.rewrite(metrics)
        disable = (not cfg.progress) or bool(os.environ.get("TQDM_DISABLE"))
        bar = tqdm(
            range(start, cfg.steps),
            desc=f"GRPO {cfg.placement} beta={cfg.beta:g}",
            disable=disable,
            initial=start,
            total=cfg.steps,
        )
        ctx = StepContext(
            cfg,
            policy,
            ref,
            tok,
            task,
            opt,
            schedule,
            task_gen,
            device,
            make_sampler(cfg, policy, ref, tok, task, device),
            precision=precision,
            scaler=precision.grad_scaler(device),
        )
        decode_mode = None
        stop.deferring = True  # from here a first Ctrl-C or SIGTERM ends the run after the step, with a checkpoint
        for step in bar:
            row = _step(ctx, step).as_dict()
            metrics.append(row)
            log.append(row)
            if ctx.sampler.decode_mode_used != decode_mode:  # known after the first sampling (a capture may fail)
                decode_mode = ctx.sampler.decode_mode_used
                rundir.update_run_record(run_dir, decode_mode_used=decode_mode)
            if not started:
                started = True
                rundir.commit_start(plan.run)
            bar.set_postfix(reward=f"{row['reward']:.2f}", kl=f"{row['kl_exact_seq']:.3f}")
            due = cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps)
            if due or (stop.signum is not None and step + 1 < cfg.steps):
                rundir.save_checkpoint(ckpt, policy, opt, schedule, task_gen, step + 1, metrics)
            if stop.signum is not None and step + 1 < cfg.steps:
                raise RunInterrupted(
                    f"interrupted by {signal_name(stop.signum)} after step {step + 1} of {cfg.steps}: its checkpoint "
                    f"is in {ckpt} and its metrics in {metrics_path}; continue the run with: python -m "
                    f"kltutor.capstone --run-dir {run_dir} --resume",
                    stop.signum,
                    complete=True,
                )
        stop.deferring = False
    except BaseException as e:  # say where the rows of the finished steps are, or undo a start that did none
        stop.deferring = False
        if isinstance(e, RunInterrupted) and e.complete:
            raise
        note = (
            f"the metrics of the finished steps are in {metrics_path}"
            if started
            else f"it stopped before its first step: {rundir.undo_start(plan.run)}"
        )
        if isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "can't allocate" in str(e)):
            err = CapstoneOutOfMemoryError(
                f"{'GPU' if device.type == 'cuda' else 'CPU'} out of memory ({str(e).splitlines()[0]}). This "
                f"configuration does not fit: use a smaller preset ('colab' for a 16 GB GPU, 'smoke' for the CPU), "
                f"or lower prompts_per_step, group_size or logprob_chunk (now {cfg.prompts_per_step}, "
                f"{cfg.group_size}, {cfg.logprob_chunk})"
            )
        elif isinstance(e, OSError) and not isinstance(e, CapstoneUserError):
            err = rundir.write_error(e, e.filename or "the run's files", "run_dir")
        else:
            e.add_note(note)
            raise
        err.add_note(note)
        raise err from e
    return RunResult(metrics, cfg, run_dir, metrics_path, ckpt, info.path, info, precision, decode_mode)


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
    precision: Precision | None = None  # None: resolve_precision(cfg, device)
    scaler: torch.amp.GradScaler | None = None  # float16's loss scaling (precision.grad_scaler)


def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """AdamW without weight decay, with torch's fused kernel where the device has one (CUDA; the CPU from
    torch 2.4): what ``transformers``' Trainer (and so TRL) uses by default. The same update rule as the
    per-tensor loop, in one kernel per parameter."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or torch
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def make_sampler(
    cfg: CapstoneConfig, policy, ref, tokenizer, task: AdditionTask, device: torch.device, **overrides
) -> Sampler:
    """The :class:`~kltutor.capstone.sampler.Sampler` a run of ``cfg`` uses (``overrides``: its keyword arguments)."""
    precision = resolve_precision(cfg, device)
    longest = len(tokenizer(task.prompt(task.max_operand, task.max_operand), add_special_tokens=False)["input_ids"])
    kwargs = dict(
        ref_model=ref,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        logprob_dtype=cfg.logprob_dtype,
        compute_dtype=precision.dtype if precision.autocast else None,
        autocast=precision.autocast,
        decode_mode=cfg.decode_mode,
        ref_scoring=cfg.ref_scoring,
        fast=cfg.fast,
        max_prompt_len=longest,
        logprob_chunk=cfg.logprob_chunk,
    )
    return Sampler(policy, tokenizer, **(kwargs | overrides))


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


@deferred_finiteness_checks()
def _step(ctx: StepContext, step: int) -> StepRow:
    """One GRPO step (sample, reward, score, ``updates_per_batch`` updates, measure); returns its metrics row.
    On a GPU the estimators check the log-probabilities' finiteness once, at the end of the step."""
    cfg, device, policy = ctx.cfg, ctx.device, ctx.policy
    phase = _Phases(ctx.timings, device)
    t0 = time.perf_counter()
    with phase("sample"):
        pairs = ctx.task.sample(cfg.prompts_per_step, ctx.task_gen)
        pairs = [p for p in pairs for _ in range(cfg.group_size)]  # each prompt's group is consecutive
        batch = ctx.sampler.sample([ctx.task.prompt(a, b) for a, b in pairs])
    with phase("score"):
        term = batch.terminated.tolist()
        rewards = torch.tensor(
            [ctx.task.reward(c, t, a, b) for c, t, (a, b) in zip(batch.texts, term, pairs)],
            dtype=torch.float32,
            device=device,
        )
        scores = ctx.sampler.score(batch)
    ids, attn, n_prompt = batch.input_ids, batch.attention_mask, batch.n_prompt
    mask = batch.completion_mask.float()
    old = {"logp": batch.logp, "ref_logp": scores.ref_logp}  # sampling-time: the in-reward penalty is frozen on these
    exact = cfg.kl_placement.exact or (cfg.teacher is not None and cfg.teacher_estimator == "exact")
    if ctx.precision is None:  # a context built by hand: the run's choice, with its scaler
        ctx.precision = resolve_precision(cfg, device)
        ctx.scaler = ctx.scaler or ctx.precision.grad_scaler(device)
    precision, scaler = ctx.precision, ctx.scaler
    beta = float(ctx.schedule.beta)
    clip_fracs, grad_norms, losses, kl_terms = [], [], [], []
    for u in range(cfg.updates_per_batch):
        with phase("forward"), precision.autocast_context(device.type):
            # the first update runs at the sampling-time parameters: it reuses the sampler's matrix products
            st = sequence_stats(
                policy,
                ids,
                attn,
                n_prompt,
                ctx.ref if exact else None,
                cfg.logprob_chunk,
                cfg.temperature,
                ref_hidden=scores.ref_hidden if exact else None,
                prompt_index=batch.prompt_index,
                activations=batch.activations if u == 0 else None,
                fast=cfg.fast,
            )
            if cfg.teacher is None:
                loss, kl_term, clip_frac = step_loss(st, old, mask, rewards, beta=beta, **loss_settings(cfg))
            else:
                loss, kl_term, clip_frac = distillation_loss(st, old, mask, rewards, **distillation_settings(cfg))
        with phase("backward"):
            ctx.optimizer.zero_grad(set_to_none=True)
            (loss if scaler is None else scaler.scale(loss)).backward()
        with phase("optimizer"):
            if scaler is None:
                grad_norms.append(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm))
                ctx.optimizer.step()
            else:  # float16: unscale, clip, step unless the scaled gradients overflowed (then skipped)
                scaler.unscale_(ctx.optimizer)
                grad_norms.append(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm))
                scaler.step(ctx.optimizer)
                scaler.update()
        clip_fracs.append(torch.as_tensor(clip_frac, dtype=torch.float32, device=device))
        losses.append(loss.detach().float())
        kl_terms.append(torch.as_tensor(kl_term, dtype=torch.float32, device=device))
    # one host synchronisation for every update's numbers (and one, at the end, for the finiteness checks)
    per_update = torch.stack([torch.stack(v).float() for v in (losses, clip_fracs, grad_norms, kl_terms)]).tolist()
    for u, value in enumerate(per_update[0]):
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value} at step {step} (update {u + 1}); lower lr or beta")
    norms = per_update[2]
    if scaler is not None:  # an update whose float16 gradients overflowed was skipped (the scaler then shrinks)
        norms = [v for v in norms if math.isfinite(v)] or [float("nan")]
    with torch.no_grad():
        measured = measure(rewards, batch.terminated, mask, old["logp"], old["ref_logp"], scores.kl, scores.entropy)
    ctx.schedule.update(measured["kl_exact_seq"], len(pairs))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row = StepRow(
        step=step + 1,
        **measured,
        clip_fraction=float(np.mean(per_update[1])),
        grad_norm=float(np.mean(norms)),
        loss=float(np.mean(per_update[0])),
        kl_term=float(np.mean(per_update[3])),
        beta=beta,
        seconds=seconds,
        tokens_per_second=measured["response_length"] * len(pairs) / seconds,
    )
    for k, v in row.as_dict().items():
        if isinstance(v, float) and not math.isfinite(v) and not (k == "grad_norm" and scaler is not None):
            raise FloatingPointError(f"metric {k} is {v} at step {step + 1}")
    return row
