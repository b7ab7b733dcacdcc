"""Tokenizer and model: a character-level tokenizer built locally, a small Qwen2 built from a config,
and one loader for a local path or a model name (chapter ``ch-capstone``). No remote code, no pickle."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

__all__ = [
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "build_model",
    "load_model",
    "check_tokenizer",
    "quiet_transformers",
    "progress_bars",
]

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"}


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and info logs when ``TQDM_DISABLE`` is set."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if os.environ.get("TQDM_DISABLE"):
        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """Inside the block, transformers' own progress bars (loading and saving weights) are on only if
    ``enabled`` (a run's ``progress``); their previous state is restored afterwards."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def build_tokenizer(alphabet: str):
    """A character-level ``PreTrainedTokenizerFast`` (one token per character) built with ``tokenizers``.

    Ids 0, 1, 2 are ``<pad>``, ``<bos>``, ``<eos>``; then the characters of ``alphabet`` in order.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))
    if not chars:
        raise ValueError("the alphabet is empty")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for c in chars:
        vocab[c] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tok.padding_side = "left"
    return tok


def build_model(
    tokenizer,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 64,
    seed: int = 0,
):
    """A freshly initialised ``Qwen2ForCausalLM`` sized for ``tokenizer`` (same architecture as the GPU runs)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    return model


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load ``(model, tokenizer)`` from a local directory (``save_pretrained``) or a model name.

    safetensors weights only, never remote code. A local directory holding a ``tokenizer.json`` is
    loaded as a ``PreTrainedTokenizerFast`` (so the character tokenizer stays exactly itself).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    path = Path(name_or_path)
    if path.is_dir() and (path / "tokenizer.json").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False)
    kwargs = {"trust_remote_code": False, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs).to(device)
    tok.padding_side = "left"
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return model, tok


def check_tokenizer(tokenizer, alphabet: str) -> None:
    """Raise ``ValueError`` unless ``tokenizer`` has an EOS and a pad token and round-trips every
    character the task writes (each digit must survive ``decode(encode(c))``)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: completions could never end (set tokenizer.eos_token)")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token (needed for left-padded generation)")
    missing = []
    for c in alphabet:
        try:
            ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        except Exception:  # e.g. a WordLevel vocabulary without an unknown token refuses the character
            missing.append(c)
            continue
        unk = getattr(tokenizer, "unk_token_id", None)
        if not ids or (unk is not None and unk in ids) or tokenizer.decode(ids, skip_special_tokens=True) != c:
            missing.append(c)
    if missing:
        raise ValueError(
            f"the tokenizer cannot represent {''.join(missing)!r}, which the task needs "
            f"(required characters: {alphabet!r})"
        )
