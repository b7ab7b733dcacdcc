"""Silent KL bugs, each reproduced exactly: k1 in the loss under a tempered or truncated sampler, dropout left
on when scoring, and ``torch.nn.functional.kl_div`` called the wrong way.

- :func:`tempered_k1_run`: the KL term alone (no task reward), trained by exact expected gradients on
  chapter 8's random autoregressive model, the rollouts drawn at temperature ``T`` and/or top-p. With k1 in
  the loss the expected logit update is ``beta (pi - q)`` (sympy: ``tempered_k1_logit_update`` in
  :mod:`kltutor.derivations.practice`): zero when ``q = pi``, an entropy push when ``q`` is sharper than
  ``pi``. k2 and k3 in the loss have zero gradient at ``pi = pi_ref`` whatever the sampler, so they stay.
- :func:`dropout_step0_kl`: the same weights scored once in train mode (dropout on) and once in eval mode
  give a non-zero KL at step 0 (a real ``transformers`` Qwen2 model, tiny, with ``attention_dropout``).
- :func:`kl_div_misuses`: what ``F.kl_div`` returns for the usual ways of calling it, against the exact KL.

Introduced in chapter 8 (sections ``sec-practice-tempered-k1`` and ``sec-practice-silent-bugs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kltutor.estimators import enumerate_autoregressive, of_log_ratio
from kltutor.practice import process_logits

__all__ = ["tempered_k1_run", "dropout_step0_kl", "kl_div_misuses"]


def _sequence_entropy(logp_seq: Tensor) -> float:
    p = logp_seq.exp()
    return float(-(p * logp_seq).sum())


def tempered_k1_run(
    ref_tables: Sequence[Tensor],
    steps: int,
    lr: float,
    beta: float = 1.0,
    estimator: str = "k1",
    temperature: float = 1.0,
    top_p: float | None = None,
    every: int = 1,
) -> dict[str, list[float]]:
    """Gradient descent on ``beta * E_q[sum_t est(l_t)]`` alone, the policy starting at the reference.

    ``ref_tables`` are logit tables (``kltutor.practice.random_logit_tables``); each step the sampler ``q`` is
    the current policy processed with ``temperature``/``top_p`` (``kltutor.practice.process_logits``), held
    fixed while the expected gradient is taken through the policy's log-probabilities (as a trainer does with
    the sampled tokens). Exact: every sequence is enumerated. Returns the step, the policy's sequence entropy
    (nats), its KL to the reference and the maximum entropy ``T log V`` every ``every`` steps.
    """
    if estimator not in ("k1", "k2", "k3"):
        raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
    for name, v in (("steps", steps), ("every", every)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for name, v in (("lr", lr), ("beta", beta)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    ref = [t.detach().to(torch.float64) for t in ref_tables]
    seqs, ref_lp = enumerate_autoregressive([torch.softmax(t, -1) for t in ref])
    idx = [tuple(seqs[:, : t + 1].T) for t in range(len(ref))]  # each token's (prefix, token) index, once

    def per_token(tables):  # [V**T, T] entries of the per-step tables at every sequence's tokens
        return torch.stack([tab[i] for tab, i in zip(tables, idx)], dim=-1)

    params = [t.clone().requires_grad_(True) for t in ref]
    vocab, T = ref[0].shape[-1], len(ref)
    out = {"step": [], "entropy": [], "kl_to_ref": [], "max_entropy": T * math.log(vocab)}
    for step in range(steps + 1):
        lp = per_token([torch.log_softmax(z, -1) for z in params])
        if step % every == 0:
            with torch.no_grad():
                seq = lp.sum(-1)
                out["step"].append(step)
                out["entropy"].append(_sequence_entropy(seq))
                out["kl_to_ref"].append(float((seq.exp() * (seq - ref_lp.sum(-1))).sum()))
        if step == steps:
            break
        with torch.no_grad():  # the sampler: the current policy, processed; a product of probabilities (exact zeros)
            q = per_token([process_logits(z, temperature=temperature, top_p=top_p) for z in params]).prod(-1)
        loss = beta * (q.unsqueeze(-1) * of_log_ratio(estimator, lp - ref_lp)).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for z, g in zip(params, grads):
                z -= lr * g
    return out


def dropout_step0_kl(p: float = 0.1, n_seqs: int = 8, seq_len: int = 12, vocab: int = 32, seed: int = 0):
    """Score the same tiny Qwen2 (``attention_dropout=p``) twice on the same tokens, as a trainer does at step 0.

    Returns the exact per-position KL between the two next-token distributions (mean over positions) and
    the mean per-token k1 on the batch's tokens, for: policy in train mode (dropout on) vs reference in eval
    mode, and both in eval mode (identical computations: zero).
    """
    if not (isinstance(p, (int, float)) and 0 <= p < 1):
        raise ValueError(f"p must be a dropout probability in [0, 1), got {p!r}")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_dropout=p,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg).double()
        ids = torch.randint(0, vocab, (n_seqs, seq_len))
        out = {}
        with torch.no_grad():
            model.eval()
            ref = torch.log_softmax(model(ids).logits[:, :-1], -1)
            for mode in ("train", "eval"):
                model.train(mode == "train")
                pol = torch.log_softmax(model(ids).logits[:, :-1], -1)
                tok = ids[:, 1:].unsqueeze(-1)
                k1 = (pol.gather(-1, tok) - ref.gather(-1, tok)).squeeze(-1)
                kl = (pol.exp() * (pol - ref)).sum(-1)
                out[mode] = {"exact_kl": float(kl.mean()), "k1": float(k1.mean()), "max_abs_k1": float(k1.abs().max())}
        model.eval()
    return out


def kl_div_misuses(logp: Tensor, ref_logp: Tensor) -> dict[str, float]:
    """``F.kl_div`` called five ways on a batch of next-token log-probabilities ``[B, V]``, and the exact KLs.

    ``F.kl_div(input, target)`` computes ``sum target * (log target - input)`` with ``target`` as
    probabilities, unless ``log_target=True``: it is ``KL(target || exp(input))``, the *forward* KL when
    ``input`` is the policy. Per row; ``reduction="batchmean"`` divides by the batch size, the default
    ``"mean"`` by the number of elements.
    """
    if logp.shape != ref_logp.shape or logp.dim() != 2:
        raise ValueError(
            f"logp and ref_logp must both be [batch, vocab]; got {tuple(logp.shape)} and {tuple(ref_logp.shape)}"
        )
    import warnings

    B = logp.shape[0]
    with warnings.catch_warnings():  # torch warns that "mean" divides by the vocabulary too: the bug shown
        warnings.simplefilter("ignore")
        mean = F.kl_div(ref_logp, logp.exp(), reduction="mean")
    reverse = float((logp.exp() * (logp - ref_logp)).sum() / B)
    forward = float((ref_logp.exp() * (ref_logp - logp)).sum() / B)
    return {
        "exact KL(pi||ref) (reverse)": reverse,
        "exact KL(ref||pi) (forward)": forward,
        "kl_div(ref_logp, logp, log_target=True, batchmean)": float(
            F.kl_div(ref_logp, logp, reduction="batchmean", log_target=True)
        ),
        "kl_div(logp, ref_logp, log_target=True, batchmean)": float(
            F.kl_div(logp, ref_logp, reduction="batchmean", log_target=True)
        ),
        "kl_div(ref_logp, logp, batchmean) [log target, no flag]": float(
            F.kl_div(ref_logp, logp, reduction="batchmean")
        ),
        "kl_div(ref_logp, logp.exp(), mean) [default reduction]": float(mean),
        "kl_div(ref_logp.exp(), logp.exp(), batchmean) [probabilities as input]": float(
            F.kl_div(ref_logp.exp(), logp.exp(), reduction="batchmean")
        ),
    }
