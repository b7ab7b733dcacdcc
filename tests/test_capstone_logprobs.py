"""Chunked log-probs, entropy and exact KL equal the naive full-vocabulary computation."""

import pytest
import torch

from kltutor.capstone.logprobs import chunked_token_stats, naive_token_stats, sequence_stats


@pytest.mark.parametrize("chunk", [2, 7, 1000])
def test_chunked_equals_naive_values_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 3, 5, 8, 11
    h = torch.randn(B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, D, generator=g, dtype=torch.float64, requires_grad=True)
    rh = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    rw = torch.randn(V, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (B, T), generator=g)
    fast = chunked_token_stats(h, w, y, rh, rw, chunk=chunk, temperature=0.7)
    slow = naive_token_stats(h @ w.T, y, rh @ rw.T, temperature=0.7)
    for k in ("logp", "entropy", "ref_logp", "kl"):
        torch.testing.assert_close(fast[k], slow[k].to(fast[k].dtype), rtol=1e-5, atol=1e-6)
    assert (slow["kl"] >= -1e-7).all() and slow["kl"].max() > 0.1  # a real, non-trivial KL
    # gradients through the checkpointed chunks equal the naive ones
    weights = torch.randn(B, T, generator=g, dtype=torch.float64)
    gf = torch.autograd.grad(((fast["logp"] + fast["kl"]) * weights).sum(), (h, w))
    gs = torch.autograd.grad(((slow["logp"] + slow["kl"]) * weights).sum(), (h, w))
    for a, b in zip(gf, gs):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-4, atol=1e-5)


def test_sequence_stats_match_the_model_logits():
    from kltutor.capstone.model import build_model, build_tokenizer

    tok = build_tokenizer("0123456789+=")
    policy = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=0)
    ref = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=1)
    enc = tok(["3+4=7", "12+9=21"], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    n_prompt = 4
    with torch.no_grad():
        fast = sequence_stats(policy, ids, attn, n_prompt, ref, chunk=3)
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        logits = policy(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, n_prompt - 1 : -1]
        ref_logits = ref(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, n_prompt - 1 : -1]
    slow = naive_token_stats(logits, ids[:, n_prompt:], ref_logits)
    for k in ("logp", "entropy", "ref_logp", "kl"):
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise():
    h = torch.randn(2, 3, 4)
    w = torch.randn(5, 4)
    with pytest.raises(ValueError, match="targets"):
        chunked_token_stats(h, w, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="both"):
        chunked_token_stats(h, w, torch.zeros(2, 3, dtype=torch.long), ref_hidden=h)
    with pytest.raises(ValueError, match="chunk"):
        chunked_token_stats(h, w, torch.zeros(2, 3, dtype=torch.long), chunk=0)
