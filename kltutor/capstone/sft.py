"""The reference policy: supervised fine-tuning on the task, cached on disk (chapter 9)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from kltutor.capstone.config import CapstoneConfig, default_cache_dir
from kltutor.capstone.model import build_model, build_tokenizer, check_tokenizer, load_model
from kltutor.capstone.task import AdditionTask

__all__ = ["sft_batch", "train_sft", "evaluate", "reference_policy"]


def sft_batch(task: AdditionTask, tokenizer, n: int, generator: torch.Generator, device="cpu"):
    """``n`` left-padded ``prompt + answer + EOS`` sequences and a loss mask on answer+EOS positions."""
    pairs = task.sample(n, generator)
    texts = [task.prompt(a, b) + task.answer(a, b) for a, b in pairs]
    prompts = [len(tokenizer(task.prompt(a, b), add_special_tokens=False)["input_ids"]) for a, b in pairs]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    L = max(map(len, ids))
    input_ids = torch.full((n, L), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((n, L), dtype=torch.long)
    loss_mask = torch.zeros((n, L), dtype=torch.float32)
    for i, (seq, p) in enumerate(zip(ids, prompts)):
        input_ids[i, L - len(seq):] = torch.tensor(seq)
        attn[i, L - len(seq):] = 1
        loss_mask[i, L - len(seq) + p:] = 1.0
    return input_ids.to(device), attn.to(device), loss_mask.to(device)


def train_sft(model, tokenizer, task: AdditionTask, steps: int, batch_size: int, lr: float, seed: int,
              progress: bool = False) -> list[float]:
    """Teacher-forced cross-entropy on the answer tokens; returns the loss per step."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / max(steps, 1)))
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="SFT", disable=not progress):
        ids, attn, lm = sft_batch(task, tokenizer, batch_size, gen, device)
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        loss = (nll * lm[:, 1:].reshape(-1)).sum() / lm[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model, tokenizer, task: AdditionTask, n: int = 256, seed: int = 999, greedy: bool = True,
             temperature: float = 1.0) -> float:
    """Accuracy on ``n`` fresh prompts (greedy decoding by default), sampled with the capstone's
    :class:`~kltutor.capstone.sampler.Sampler` and a generator of its own (the global RNG is untouched)."""
    from kltutor.capstone.sampler import Sampler

    gen = torch.Generator().manual_seed(seed)
    pairs = task.sample(n, gen)
    device = next(model.parameters()).device
    sampler = Sampler(model, tokenizer, max_new_tokens=task.answer_len + 1, temperature=temperature, decode_mode="eager")
    batch = sampler.sample([task.prompt(a, b) for a, b in pairs], greedy=greedy,
                           generator=torch.Generator(device).manual_seed(seed))
    rewards = [1.0 if (t and c == task.answer(a, b)) else 0.0
               for c, t, (a, b) in zip(batch.texts, batch.terminated.tolist(), pairs)]
    return sum(rewards) / n


def _cache_key(cfg: CapstoneConfig) -> str:
    fields = ["max_operand", "model", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
              "sft_steps", "sft_batch_size", "sft_lr", "sft_seed"]
    # version 2: the accuracies in info.json come from kltutor.capstone.sampler (version 1: model.generate)
    blob = json.dumps({f: getattr(cfg, f) for f in fields} | {"version": 2}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reference_policy(cfg: CapstoneConfig, device="cpu"):
    """``(model, tokenizer, info)``: the SFT reference, trained once and cached under ``cache_dir``.

    ``cfg.model=None`` builds a small Qwen2 from scratch with a character tokenizer; otherwise the
    model name or local path is loaded (``from_pretrained``) and fine-tuned the same way. The result
    is saved with ``save_pretrained`` (safetensors) in a directory named by a hash of every setting
    that affects it, so later runs (and every run of a sweep) load it instead of retraining.
    """
    from kltutor.capstone.model import quiet_transformers

    quiet_transformers()
    task = AdditionTask(cfg.max_operand, cfg.format_reward)
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    path = root / f"reference-{_cache_key(cfg)}"
    if (path / "info.json").exists():
        model, tok = load_model(path, device)
        check_tokenizer(tok, task.alphabet)
        return model.eval(), tok, json.loads((path / "info.json").read_text()) | {"path": str(path), "cached": True}
    if cfg.model is None:
        tok = build_tokenizer(task.alphabet)
        model = build_model(tok, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
                            cfg.intermediate_size, max_positions=64, seed=cfg.sft_seed).to(device)
    else:
        model, tok = load_model(cfg.model, device)
    check_tokenizer(tok, task.alphabet)
    losses = train_sft(model, tok, task, cfg.sft_steps, cfg.sft_batch_size, cfg.sft_lr, cfg.sft_seed, cfg.progress) if cfg.sft_steps else []
    info = {"sft_losses": losses, "greedy_accuracy": evaluate(model, tok, task, greedy=True),
            "sampled_accuracy": evaluate(model, tok, task, greedy=False),
            "n_parameters": sum(p.numel() for p in model.parameters())}
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    (path / "info.json").write_text(json.dumps(info))
    model, tok = load_model(path, device)  # the reference every run sees is exactly the saved one
    return model.eval(), tok, info | {"path": str(path), "cached": False}
