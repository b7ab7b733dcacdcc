"""The reference policy: supervised fine-tuning on the task, cached on disk (chapter ``ch-capstone``)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kltutor.capstone.config import REFERENCE_FIELDS, CapstoneConfig, CapstoneUserError, default_cache_dir, flag
from kltutor.capstone.model import build_model, build_tokenizer, check_tokenizer, load_model
from kltutor.capstone.precision import Precision, resolve_precision
from kltutor.capstone.task import AdditionTask

__all__ = ["sft_batch", "train_sft", "evaluate", "ReferenceInfo", "reference_dir", "reference_policy"]


def sft_batch(task: AdditionTask, tokenizer, n: int, generator: torch.Generator, device="cpu"):
    """``n`` left-padded ``prompt + answer + EOS`` sequences and a loss mask on answer+EOS positions."""
    pairs = task.sample(n, generator)
    prompts = [task.prompt(a, b) for a, b in pairs]
    answers = [task.answer(a, b) for a, b in pairs]
    # one batched call each (the fast tokenizer encodes the whole batch at once)
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    ids = [p + a + [tokenizer.eos_token_id] for p, a in zip(p_ids, a_ids)]
    L = max(map(len, ids))
    pad = [L - len(seq) for seq in ids]  # left padding of each row
    input_ids = torch.tensor([[tokenizer.pad_token_id] * k + seq for k, seq in zip(pad, ids)], dtype=torch.long)
    attn = torch.tensor([[0] * k + [1] * len(seq) for k, seq in zip(pad, ids)], dtype=torch.long)
    loss_mask = torch.tensor([[0.0] * (k + len(p)) + [1.0] * (len(seq) - len(p)) for k, seq, p in zip(pad, ids, p_ids)])
    return input_ids.to(device), attn.to(device), loss_mask.to(device)


def train_sft(
    model,
    tokenizer,
    task: AdditionTask,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = False,
    amp: bool = False,
    precision: Precision | None = None,
) -> list[float]:
    """Teacher-forced cross-entropy on the answer tokens; returns the loss per step.

    ``precision``: a :class:`~kltutor.capstone.precision.Precision` (autocast dtype, and loss scaling for
    float16); ``amp=True`` without one: bf16 autocast. The losses stay on the device until the end, so
    the host prepares the next batch while the device works on this one."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    if precision is None:
        precision = Precision("bfloat16" if amp else "float32", "bfloat16" if amp else "float32", "amp argument")
    scaler = precision.grad_scaler(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / max(steps, 1)))
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="SFT", disable=not progress):
        ids, attn, lm = sft_batch(task, tokenizer, batch_size, gen, device)
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        with precision.autocast_context(device.type):
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        )
        loss = (nll * lm[:, 1:].reshape(-1)).sum() / lm[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        else:  # float16: scaled loss, gradients unscaled before clipping, overflowing steps skipped
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
        sched.step()
        losses.append(loss.detach())
    model.eval()
    return torch.stack(losses).tolist() if losses else []


@torch.no_grad()
def evaluate(
    model, tokenizer, task: AdditionTask, n: int = 256, seed: int = 999, greedy: bool = True, temperature: float = 1.0
) -> float:
    """Accuracy on ``n`` fresh prompts (greedy decoding by default), sampled with the capstone's
    :class:`~kltutor.capstone.sampler.Sampler` and a generator of its own (the global RNG is untouched)."""
    from kltutor.capstone.sampler import Sampler

    gen = torch.Generator().manual_seed(seed)
    pairs = task.sample(n, gen)
    device = next(model.parameters()).device
    sampler = Sampler(
        model, tokenizer, max_new_tokens=task.answer_len + 1, temperature=temperature, decode_mode="eager"
    )
    batch = sampler.sample(
        [task.prompt(a, b) for a, b in pairs], greedy=greedy, generator=torch.Generator(device).manual_seed(seed)
    )
    rewards = [
        1.0 if (t and c == task.answer(a, b)) else 0.0
        for c, t, (a, b) in zip(batch.texts, batch.terminated.tolist(), pairs)
    ]
    return sum(rewards) / n


def _cache_key(cfg: CapstoneConfig) -> str:
    # version 2: manifest.json, and the accuracies in info.json come from kltutor.capstone.sampler (version 1: model.generate)
    blob = json.dumps({f: getattr(cfg, f) for f in REFERENCE_FIELDS} | {"version": 2}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reference_dir(cfg: CapstoneConfig) -> Path:
    """Where the reference policy of ``cfg`` is (or will be) cached: ``cache_dir/reference-<hash>``."""
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return root / f"reference-{_cache_key(cfg)}"


@dataclass
class ReferenceInfo:
    """What :func:`reference_policy` knows about the reference: where it is cached, whether it was
    loaded from the cache, its size, its accuracy (greedy and sampled at temperature 1) and SFT losses."""

    path: Path
    cached: bool
    n_parameters: int
    greedy_accuracy: float
    sampled_accuracy: float
    sft_losses: list[float] = field(default_factory=list)


def verify_cached_reference(path: Path) -> None:
    """Check every file of the cached reference in ``path`` against its manifest (see
    :func:`kltutor.capstone.rundir.verify_manifest`); a problem names the file and says to delete ``path``."""
    from kltutor.capstone.rundir import verify_manifest

    verify_manifest(path, f"cached reference policy {path}", _cache_recovery(path))


def _cache_recovery(path: Path) -> str:
    return f"delete the directory {path} (rm -r '{path}') and run again to rebuild it"


def _load_cached(path: Path, device, task: AdditionTask):
    verify_cached_reference(path)
    try:
        model, tok = load_model(path, device)
        check_tokenizer(tok, task.alphabet)
        info = json.loads((path / "info.json").read_text())
        return model.eval(), tok, ReferenceInfo(path=path, cached=True, **info)
    except Exception as e:  # verified files that still fail to load were written by something else
        raise CapstoneUserError(
            f"the cached reference policy {path} cannot be loaded ({type(e).__name__}: {e}); {_cache_recovery(path)}"
        ) from None


def reference_policy(cfg: CapstoneConfig, device="cpu"):
    """``(model, tokenizer, info)``: the SFT reference, trained once and cached under ``cache_dir``
    (``info`` is a :class:`ReferenceInfo`).

    ``cfg.model=None`` builds a small Qwen2 from scratch with a character tokenizer; otherwise the
    model name or local path is loaded (``from_pretrained``) and fine-tuned the same way. The result
    is saved with ``save_pretrained`` (safetensors) in a directory named by a hash of every setting
    that affects it, so later runs (and every run of a sweep) load it instead of retraining. The
    directory is written under a temporary name with a ``manifest.json`` (sha256 of every file) and
    renamed into place; a cached reference is verified against its manifest before it is loaded.
    """
    from kltutor.capstone.model import quiet_transformers
    from kltutor.capstone.rundir import usual_permissions, write_error, write_manifest

    quiet_transformers()
    task = AdditionTask(cfg.max_operand, cfg.format_reward)
    path = reference_dir(cfg)
    if path.exists():
        return _load_cached(path, device, task)
    if cfg.model is None:
        tok = build_tokenizer(task.alphabet)
        model = build_model(
            tok,
            cfg.hidden_size,
            cfg.num_layers,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
            max_positions=64,
            seed=cfg.sft_seed,
        ).to(device)
    else:
        try:
            model, tok = load_model(cfg.model, device)
            check_tokenizer(tok, task.alphabet)
        except (OSError, ValueError) as e:
            raise CapstoneUserError(
                f"cannot use {cfg.model!r} ({type(e).__name__}: {str(e).splitlines()[0]}); pass a "
                f"local model directory (save_pretrained, safetensors) whose tokenizer writes "
                f"{task.alphabet!r} as {flag('model')}",
                "model",
            ) from None
    check_tokenizer(tok, task.alphabet)
    precision = resolve_precision(cfg, device)
    losses = (
        train_sft(
            model,
            tok,
            task,
            cfg.sft_steps,
            cfg.sft_batch_size,
            cfg.sft_lr,
            cfg.sft_seed,
            cfg.progress,
            precision=precision,
        )
        if cfg.sft_steps
        else []
    )
    info = {
        "sft_losses": losses,
        "greedy_accuracy": evaluate(model, tok, task, greedy=True),
        "sampled_accuracy": evaluate(model, tok, task, greedy=False),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "info.json").write_text(json.dumps(info))
        write_manifest(tmp)
        usual_permissions(tmp)  # a cache others may read, not mkdtemp's 0700
        tmp.rename(path)
    except Exception as e:  # a full disk, a read-only cache: nothing half-written is left
        if not path.exists():  # not a concurrent run that finished first: a real failure
            raise write_error(e, f"the reference policy to the cache {path.parent}", "cache_dir") from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    model, tok, ref_info = _load_cached(path, device, task)  # the reference every run sees is exactly the saved one
    return model, tok, ReferenceInfo(**{**ref_info.__dict__, "cached": False})
