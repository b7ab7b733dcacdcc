"""The capstone's sampler against a transformers forward over its own samples: the log-probs of the
sampled tokens (temperature, top-k, top-p, min_new_tokens, bf16), greedy tokens against
model.generate, per-row EOS, left padding, the reference scores, the dynamic-cache fallback, and
the shared-prompt training forward (values and gradients) against model.forward."""

import math

import pytest
import torch

from kltutor.capstone.fast import decoder
from kltutor.capstone.logprobs import hidden_states, naive_token_stats, sequence_stats
from kltutor.capstone.model import build_model, build_tokenizer
from kltutor.capstone.sampler import Sampler, filter_logits, generate_completions

PROMPTS = ["3+4=", "12+9=", "3+4=", "99+99=", "7+0=", "12+9=", "5+55=", "3+4="]  # repeats share a prompt


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("0123456789+=")


def _eos_prone(model, tok, scale=6.0):
    """Make EOS likely in some contexts (a random model never stops), so rows end at different steps."""
    with torch.no_grad():
        model.get_output_embeddings().weight[tok.eos_token_id] *= scale
    return model


@pytest.fixture(scope="module")
def models(tok):
    policy = _eos_prone(build_model(tok, 32, 2, 4, 2, 64, seed=0), tok).eval()
    ref = build_model(tok, 32, 2, 4, 2, 64, seed=1).eval()
    return policy, ref


def _hf_logits(model, ids, attn, P):
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, P - 1 : -1].float()


def _enc(tok, prompts):
    tok.padding_side = "left"
    return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


@pytest.mark.parametrize("ref_scoring", ["batched", "in-loop"])
@pytest.mark.parametrize(
    "opts",
    [
        dict(temperature=1.0),
        dict(temperature=0.7),
        dict(temperature=1.3, top_k=5),
        dict(temperature=0.8, top_p=0.8),
        dict(temperature=0.9, top_k=6, top_p=0.9),
    ],
)
def test_logp_and_scores_match_a_transformers_forward(models, tok, opts, ref_scoring):
    policy, ref = models
    s = Sampler(policy, tok, ref_model=ref, max_new_tokens=8, ref_scoring=ref_scoring, **opts)
    torch.manual_seed(0)
    b = s.sample(PROMPTS * 3)
    m = b.completion_mask.bool()
    lengths = m.sum(-1)
    assert lengths.min() < lengths.max() and b.terminated.any() and not b.terminated.all()  # per-row EOS happened
    assert b.n_prompt == max(len(p) for p in PROMPTS) and (b.attention_mask[:, 0] == 0).any()  # left padding
    ids, attn, P = b.input_ids, b.attention_mask, b.n_prompt
    logits = _hf_logits(policy, ids, attn, P)
    T = opts["temperature"]
    z = filter_logits(logits / T, opts.get("top_k", 0), opts.get("top_p", 1.0))
    expected = torch.log_softmax(z, -1).gather(-1, ids[:, P:, None]).squeeze(-1)
    # the returned logp is the truncated, renormalised distribution's, exactly where a token was drawn
    torch.testing.assert_close(b.logp[m], expected[m], rtol=0, atol=2e-5)
    assert torch.isfinite(expected[m]).all()  # every sampled token was inside the top-k / top-p set
    assert (b.logp[~m] == 0).all()
    # after the first EOS: padding, and attention_mask 0
    comp = b.completion_ids
    assert (comp[~m] == tok.pad_token_id).all() and (attn[:, P:][~m] == 0).all()
    sc = s.score(b)
    naive = naive_token_stats(logits, ids[:, P:], _hf_logits(ref, ids, attn, P), temperature=T)
    for k, v in (("ref_logp", sc.ref_logp), ("logp", sc.policy_logp), ("entropy", sc.entropy), ("kl", sc.kl)):
        torch.testing.assert_close(v[m], naive[k][m], rtol=0, atol=2e-5, msg=k)
        assert (v[~m] == 0).all()
    if "top_k" not in opts and "top_p" not in opts:  # untruncated: the trainer's log-probs are the sampler's
        torch.testing.assert_close(sc.policy_logp, b.logp, rtol=0, atol=2e-5)
    texts = [
        tok.decode([t for t in r[:n] if t != tok.eos_token_id], skip_special_tokens=True)
        for r, n in zip(comp.tolist(), lengths.tolist())
    ]
    assert b.texts == texts


def test_greedy_equals_model_generate_also_after_an_update(tok):
    policy = _eos_prone(build_model(tok, 32, 2, 4, 2, 64, seed=2), tok, 10.0)  # greedy: some rows stop at once
    s = Sampler(policy, tok, max_new_tokens=8)
    enc = _enc(tok, PROMPTS)
    for round_ in range(2):
        b = s.sample(PROMPTS, greedy=True)
        with torch.no_grad():
            out = policy.generate(
                **enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
            )
        assert torch.equal(b.completion_ids, out[:, enc["input_ids"].shape[1] :]), round_
        assert round_ or (b.terminated.any() and not b.terminated.all())
        with torch.no_grad():  # an "optimizer step": the sampler must see the new weights (its fused copies re-synced)
            for p in policy.parameters():
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize(
    "opts", [dict(temperature=1.0), dict(temperature=0.6, top_k=4), dict(temperature=1.5, top_p=0.7)]
)
def test_tokens_are_drawn_from_the_documented_distribution(tok, opts):
    """First-token frequencies over n draws against the filtered softmax, within 5 standard errors."""
    model = build_model(tok, 32, 1, 2, 1, 64, seed=5).eval()
    n = 6000
    s = Sampler(model, tok, max_new_tokens=1, **opts)
    torch.manual_seed(1)
    b = s.sample(["12+34="] * n)
    enc = _enc(tok, ["12+34="])
    with torch.no_grad():
        z = model(**enc).logits[0, -1].float() / opts["temperature"]
    p = torch.softmax(filter_logits(z[None], opts.get("top_k", 0), opts.get("top_p", 1.0)), -1)[0].double()
    freq = torch.bincount(b.completion_ids[:, 0], minlength=len(p)).double() / n
    se = torch.sqrt(p * (1 - p) / n).clamp_min(1e-12)
    assert ((freq - p).abs() <= 5 * se + 1e-12).all(), (freq, p)
    assert (freq[p == 0] == 0).all()  # nothing outside the top-k / nucleus set
    torch.testing.assert_close(b.logp[:, 0].double(), torch.log(p[b.completion_ids[:, 0]]), rtol=0, atol=1e-5)


def test_min_new_tokens_suppresses_eos_and_logp_is_the_masked_distributions(models, tok):
    policy, _ = models
    s = Sampler(policy, tok, max_new_tokens=6, min_new_tokens=6)
    torch.manual_seed(0)
    b = s.sample(PROMPTS * 4)
    assert (b.completion_mask.sum(-1) == 6).all() and not (b.completion_ids == tok.eos_token_id).any()
    logits = _hf_logits(policy, b.input_ids, b.attention_mask, b.n_prompt)
    logits[..., tok.eos_token_id] = float("-inf")
    expected = torch.log_softmax(logits, -1).gather(-1, b.completion_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(b.logp, expected, rtol=0, atol=2e-5)


def test_bf16_log_probs_reproduce_a_precision_mismatch(models, tok):
    """logprob_dtype='bfloat16': the same tokens' log-probs at bf16 precision, so a float32 trainer's
    importance ratio is no longer exactly 1 (a sampler/trainer mismatch, on a CPU)."""
    policy, ref = models
    lo = Sampler(policy, tok, ref_model=ref, max_new_tokens=6, logprob_dtype="bfloat16")
    torch.manual_seed(0)
    b = lo.sample(PROMPTS * 2)
    m = b.completion_mask.bool()
    exact = torch.log_softmax(_hf_logits(policy, b.input_ids, b.attention_mask, b.n_prompt), -1)
    exact = exact.gather(-1, b.completion_ids[..., None]).squeeze(-1)
    diff = (b.logp - exact)[m].abs()
    assert diff.max() > 1e-4  # not float32 any more ...
    assert diff.max() < 0.1 + 0.02 * exact[m].abs().max()  # ... but bf16-close (8 significant bits)
    sc = lo.score(b)
    assert (sc.policy_logp - exact)[m].abs().max() > 1e-4 and torch.isfinite(sc.kl).all()


def test_fallback_for_a_model_the_static_decoder_does_not_drive(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = _eos_prone(GPT2LMHeadModel(cfg).eval(), tok, 12.0)
    assert "gpt2" in decoder.support(model)
    s = Sampler(model, tok, ref_model=model, max_new_tokens=8, temperature=0.8)
    assert not s.static and s.decode_mode_used == "eager"
    torch.manual_seed(0)
    b = s.sample(PROMPTS * 2)
    m = b.completion_mask.bool()
    assert m.sum(-1).min() < m.sum(-1).max()
    ids, attn, P = b.input_ids, b.attention_mask, b.n_prompt
    expected = torch.log_softmax(_hf_logits(model, ids, attn, P) / 0.8, -1).gather(-1, ids[:, P:, None]).squeeze(-1)
    torch.testing.assert_close(b.logp[m], expected[m], rtol=0, atol=2e-5)
    sc = s.score(b)
    assert sc.kl[m].abs().max() < 1e-5  # the model against itself
    g = Sampler(model, tok, max_new_tokens=8).sample(PROMPTS, greedy=True)
    enc = _enc(tok, PROMPTS)
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
    assert torch.equal(g.completion_ids, out[:, enc["input_ids"].shape[1] :])


def test_shared_prompt_forward_equals_model_forward_values_and_gradients(models, tok):
    """sequence_stats through kltutor.capstone.fast.decoder (each distinct prompt once) against the model's
    own forward (every row in full): log-probs, entropy, KL and the parameters' gradients."""
    policy, ref = models
    policy = build_model(tok, 32, 2, 4, 2, 64, seed=0)
    policy.load_state_dict(models[0].state_dict())
    torch.manual_seed(0)
    b = Sampler(policy, tok, max_new_tokens=7).sample(PROMPTS * 2)
    ids, attn, P = b.input_ids, b.attention_mask, b.n_prompt
    m = b.completion_mask.float()
    assert m.sum(-1).min() < m.sum(-1).max()
    weights = torch.randn(m.shape, generator=torch.Generator().manual_seed(3))
    fast = sequence_stats(policy, ids, attn, P, ref, chunk=5)
    gf = torch.autograd.grad((fast["logp"] * weights * m).sum() + (fast["kl"] * m).sum(), list(policy.parameters()))
    h = hidden_states(policy, ids, attn)[:, P - 1 : -1]
    with torch.no_grad():
        rh = hidden_states(ref, ids, attn)[:, P - 1 : -1]
    slow = naive_token_stats(
        h @ policy.get_output_embeddings().weight.T, ids[:, P:], rh @ ref.get_output_embeddings().weight.T
    )
    gs = torch.autograd.grad((slow["logp"] * weights * m).sum() + (slow["kl"] * m).sum(), list(policy.parameters()))
    mb = m.bool()
    for k in ("logp", "entropy", "ref_logp", "kl"):
        torch.testing.assert_close(fast[k][mb], slow[k][mb], rtol=0, atol=2e-5, msg=k)
    for (name, _), a, c in zip(policy.named_parameters(), gf, gs):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5, msg=name)
    uids, umask, index = decoder.prompt_index(ids[:, :P], attn[:, :P])
    assert len(uids) == len(set(PROMPTS)) and torch.equal(
        torch.where(umask.bool(), uids, 0)[index], torch.where(attn[:, :P].bool(), ids[:, :P], 0)
    )


def test_generate_completions_keeps_its_dictionary(models, tok):
    out = generate_completions(
        models[0], tok, PROMPTS, max_new_tokens=5, temperature=0.9, generator=torch.Generator().manual_seed(0)
    )
    assert set(out) == {"input_ids", "attention_mask", "completion_mask", "n_prompt", "texts", "terminated", "logp"}
    assert isinstance(out["terminated"], list) and len(out["texts"]) == len(PROMPTS)
    again = generate_completions(
        models[0], tok, PROMPTS, max_new_tokens=5, temperature=0.9, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out["input_ids"], again["input_ids"])  # a generator makes a draw reproducible


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(temperature=0.0), "temperature"),
        (dict(min_new_tokens=9), "min_new_tokens"),
        (dict(logprob_dtype="float16"), "logprob_dtype"),
        (dict(decode_mode="jit"), "decode_mode"),
        (dict(ref_scoring="later"), "ref_scoring"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_arguments_raise_clear_errors(models, tok, kwargs, match):
    args = dict(max_new_tokens=8) | kwargs
    with pytest.raises(ValueError, match=match):
        Sampler(models[0], tok, **args)


def test_bad_inputs_raise_clear_errors(models, tok):
    s = Sampler(models[0], tok, max_new_tokens=4)
    with pytest.raises(ValueError, match="empty"):
        s.sample([])
    enc = tok(["3+4=", "12+9="], return_tensors="pt", padding=True, add_special_tokens=False, padding_side="right")
    with pytest.raises(ValueError, match="left-padded"):
        s.sample_ids(enc["input_ids"], enc["attention_mask"])
    with pytest.raises(ValueError, match="ref_model"):
        s.score(s.sample(["3+4="]))


def test_decode_mode_needs_cuda_and_falls_back_to_eager_on_the_cpu(models, tok, caplog):
    s = Sampler(models[0], tok, max_new_tokens=4, decode_mode="cuda-graph")
    assert s.decode_mode == "eager" and "needs a CUDA device" in caplog.text
    assert Sampler(models[0], tok, max_new_tokens=4).decode_mode == "eager"  # auto on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["cuda-graph", "compile"])
def test_captured_decode_step_equals_eager_on_cuda(tok, mode):
    policy = _eos_prone(build_model(tok, 32, 2, 4, 2, 64, seed=0), tok).cuda().eval()
    eager = Sampler(policy, tok, max_new_tokens=8, decode_mode="eager").sample(PROMPTS * 4, greedy=True)
    s = Sampler(policy, tok, max_new_tokens=8, decode_mode=mode)
    for _ in range(2):
        graph = s.sample(PROMPTS * 4, greedy=True)
    assert s.decode_mode_used == mode
    assert torch.equal(graph.completion_ids, eager.completion_ids)
    torch.testing.assert_close(graph.logp, eager.logp, rtol=0, atol=1e-5)
    assert math.isfinite(float(graph.logp.sum()))


def test_graph_replay_logic_with_a_simulated_cuda_graph(models, tok, monkeypatch):
    """The CUDA-graph path's control flow on the CPU: a stand-in graph records the decode step during
    "capture" (without running it, as CUDA does) and runs it on replay. Replaying must give exactly
    the eager sampler's tokens and log-probs, on every call (state reset by the prefill), and a capture
    that raises must fall back to eager with a warning."""
    import contextlib

    active = []

    class FakeGraph:
        def __init__(self):
            self.fn = None

        def replay(self):
            self.fn()

    @contextlib.contextmanager
    def fake_graph(g):
        active.append(g)
        try:
            yield
        finally:
            active.pop()

    class FakeStream:
        def wait_stream(self, other):
            pass

    for name, value in (
        ("Stream", FakeStream),
        ("stream", lambda s: contextlib.nullcontext()),
        ("current_stream", FakeStream),
        ("CUDAGraph", FakeGraph),
        ("graph", fake_graph),
        ("synchronize", lambda: None),
    ):
        monkeypatch.setattr(torch.cuda, name, value)
    policy = models[0]
    eager = Sampler(policy, tok, max_new_tokens=7, temperature=0.9, top_k=7)
    graphed = Sampler(policy, tok, max_new_tokens=7, temperature=0.9, top_k=7)
    graphed.decode_mode = "cuda-graph"
    real_step = graphed._decode_step

    def step(st, greedy, generator=None):
        if active:  # "capturing": record, do not run
            active[-1].fn = lambda: real_step(st, greedy)
            return
        real_step(st, greedy, generator)

    graphed._decode_step = step
    graphed.sample(PROMPTS * 2)  # the capture (its warm-up steps draw random numbers too)
    for seed in (0, 1):
        torch.manual_seed(seed)
        a = eager.sample(PROMPTS * 2)
        torch.manual_seed(seed)
        b = graphed.sample(PROMPTS * 2)
        assert graphed.decode_mode_used == "cuda-graph"
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.logp, b.logp)
    assert len(graphed._states) == 1 and graphed._states[(16, False)]["graph"] is not None

    broken = Sampler(policy, tok, max_new_tokens=7, temperature=0.9, top_k=7)
    broken.decode_mode = "cuda-graph"

    def boom(st, greedy, generator=None):
        if active:
            raise RuntimeError("operation not permitted when stream is capturing")
        return Sampler._decode_step(broken, st, greedy, generator)

    broken._decode_step = boom
    import logging

    logger = logging.getLogger("kltutor.capstone.sampler")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        c = broken.sample(PROMPTS * 2)
    finally:
        logger.removeHandler(handler)
    assert broken.decode_mode_used == "eager" and any("failed" in r.getMessage() for r in records)
    assert c.logp.shape == c.completion_mask.shape  # the call that failed to capture still sampled
    torch.manual_seed(0)
    c = broken.sample(PROMPTS * 2)  # no second attempt at capturing: plain eager decoding
    torch.manual_seed(0)
    assert torch.equal(c.input_ids, eager.sample(PROMPTS * 2).input_ids)


def test_bf16_autocast_path_matches_transformers_under_autocast(tok):
    """compute_dtype=bfloat16 with autocast (what a GPU run uses), exercised on the CPU: the sampler's
    log-probs, the reference scores and the training forward are as far from a float32 forward as
    transformers' own bf16-autocast forward is (the same casts in the same places), and finite."""
    pol = _eos_prone(build_model(tok, 64, 2, 4, 2, 128, seed=0), tok)
    ref = build_model(tok, 64, 2, 4, 2, 128, seed=1)
    s = Sampler(
        pol, tok, ref_model=ref, max_new_tokens=10, compute_dtype=torch.bfloat16, autocast=True, temperature=0.8
    )
    torch.manual_seed(0)
    b = s.sample(PROMPTS * 3)
    m = b.completion_mask.bool()
    ids, attn, P = b.input_ids, b.attention_mask, b.n_prompt

    def hf(amp):
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            h = pol.model(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state[:, P - 1 : -1]
        z = (h.float() @ pol.get_output_embeddings().weight.T) / 0.8
        return torch.log_softmax(z, -1).gather(-1, ids[:, P:, None]).squeeze(-1)

    exact, hf_bf16 = hf(False), hf(True)
    hf_err = (hf_bf16 - exact)[m].abs().max().item()
    assert 0 < hf_err < 0.1
    assert (b.logp - exact)[m].abs().max().item() <= 2 * hf_err + 1e-3
    sc = s.score(b)
    assert torch.isfinite(sc.kl).all() and torch.isfinite(sc.ref_logp).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        st = sequence_stats(pol, ids, attn, P, ref, chunk=7, temperature=0.8)
    assert (st["logp"] - exact)[m].abs().max().item() <= 2 * hf_err + 1e-3
    (st["logp"] * m).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in pol.parameters())
