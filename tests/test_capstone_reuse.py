"""The capstone's speed paths against the plain computation they replace: the first update's forward
built from the sampler's recorded products (decoder.Known*) against a recomputed forward and against
model.forward (values and every parameter's gradient), when the recording may and may not be used,
the CPU's attention by batched products against SDPA, and oneDNN's products against torch's own (and the
fallback to torch's own where oneDNN must not be used)."""

import pytest
import torch
import torch.nn.functional as F

from kltutor.capstone import loop
from kltutor.capstone.config import CapstoneConfig
from kltutor.capstone.fast import decoder, onednn
from kltutor.capstone.logprobs import hidden_states, naive_token_stats, sequence_stats
from kltutor.capstone.model import build_model, build_tokenizer
from kltutor.capstone.sampler import Sampler
from tests.helpers.capstone_tiny import eos_heavy_model

PROMPTS = ["3+4=", "12+9=", "3+4=", "99+99=", "7+0=", "12+9=", "5+55=", "3+4="]  # repeats share a prompt


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("0123456789+=")


def _models(tok, seed=0):
    # the policy ends rows at different steps (EOS likely in some contexts); the reference is a plain model
    return eos_heavy_model(tok, seed, layers=2), build_model(tok, 32, 2, 4, 2, 64, seed=seed + 1).requires_grad_(False)


def _grads(policy, b, ref, weights, activations, temperature=0.9):
    st = sequence_stats(
        policy,
        b.input_ids,
        b.attention_mask,
        b.n_prompt,
        ref,
        chunk=5,
        temperature=temperature,
        prompt_index=b.prompt_index,
        activations=activations,
    )
    m = b.completion_mask.float()
    loss = (st["logp"] * weights * m).sum() + (st["kl"] * m).sum()
    return st, torch.autograd.grad(loss, list(policy.parameters()))


@pytest.mark.parametrize("backend", ["default", "onednn"])
def test_the_recorded_forward_gives_the_recomputed_values_and_gradients(tok, backend):
    if backend == "onednn" and onednn.cpu_matmul() != "onednn":
        pytest.skip("oneDNN's linear op is not usable with this torch")
    before = onednn._MATMUL["mode"]
    onednn.cpu_matmul(backend)
    try:
        policy, ref = _models(tok)
        s = Sampler(policy, tok, ref_model=ref, max_new_tokens=7, temperature=0.9)
        assert s.keep_activations  # the CPU's default
        torch.manual_seed(0)
        b = s.sample(PROMPTS * 2)
        m = b.completion_mask.bool()
        assert m.sum(-1).min() < m.sum(-1).max() and (b.attention_mask[:, 0] == 0).any()  # early EOS, left padding
        assert b.activations is not None and b.activations.usable(policy)
        w = torch.randn(m.shape, generator=torch.Generator().manual_seed(3))
        fast, g_fast = _grads(policy, b, ref, w, b.activations)
        slow, g_slow = _grads(policy, b, ref, w, None)
        # model.forward: every row in full, no shared prompt, no recording
        ids, attn, P = b.input_ids, b.attention_mask, b.n_prompt
        h = hidden_states(policy, ids, attn)[:, P - 1 : -1]
        with torch.no_grad():
            rh = hidden_states(ref, ids, attn)[:, P - 1 : -1]
        hf = naive_token_stats(
            h @ policy.get_output_embeddings().weight.T / 0.9,
            ids[:, P:],
            rh @ ref.get_output_embeddings().weight.T / 0.9,
        )
        mf = m.float()
        g_hf = torch.autograd.grad((hf["logp"] * w * mf).sum() + (hf["kl"] * mf).sum(), list(policy.parameters()))
        for k in ("logp", "entropy", "ref_logp", "kl"):
            torch.testing.assert_close(fast[k][m], slow[k][m], rtol=0, atol=2e-6, msg=k)
            torch.testing.assert_close(fast[k][m], hf[k][m], rtol=0, atol=2e-5, msg=k)
        torch.testing.assert_close(fast["logp"][m], b.logp[m], rtol=0, atol=2e-6)  # the ratio of the first update is 1
        for (name, _), a, c, d in zip(policy.named_parameters(), g_fast, g_slow, g_hf):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(a, d, rtol=1e-4, atol=1e-5, msg=name)
    finally:
        onednn.cpu_matmul(before)


def test_the_recording_is_used_only_at_the_parameters_it_was_made_with(tok):
    policy, _ = _models(tok)
    s = Sampler(policy, tok, max_new_tokens=5)
    b = s.sample(PROMPTS)
    acts = b.activations
    assert acts.usable(policy) and not acts.usable(_models(tok, seed=5)[0])  # another model
    b2 = s.sample(PROMPTS)  # the buffers now hold another batch
    assert not acts.usable(policy) and b2.activations.usable(policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    st = sequence_stats(
        policy, b2.input_ids, b2.attention_mask, b2.n_prompt, prompt_index=b2.prompt_index, activations=b2.activations
    )
    (st["logp"] * b2.completion_mask).sum().backward()
    opt.step()  # the parameters moved: the recording no longer stands for a forward pass
    assert not b2.activations.usable(policy)
    with torch.no_grad():
        later = sequence_stats(
            policy,
            b2.input_ids,
            b2.attention_mask,
            b2.n_prompt,
            prompt_index=b2.prompt_index,
            activations=b2.activations,
        )["logp"]
        fresh = sequence_stats(policy, b2.input_ids, b2.attention_mask, b2.n_prompt, prompt_index=b2.prompt_index)[
            "logp"
        ]
    assert torch.equal(later, fresh)  # refused: recomputed at the new parameters
    assert (later - st["logp"].detach()).abs().max() > 1e-4


def test_a_step_reuses_the_recording_at_its_first_update_only(tok, monkeypatch):
    calls = []
    real = decoder.completion_hidden

    def spy(model, *a, known=None, **k):
        calls.append(known is not None and known.usable(model))
        return real(model, *a, known=known, **k)

    monkeypatch.setattr(decoder, "completion_hidden", spy)
    from kltutor.capstone.task import AdditionTask

    task = AdditionTask(9)
    policy, ref = _models(tok)
    cfg = CapstoneConfig(
        max_operand=9,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=4,
        device="cpu",
        progress=False,
        placement="k3-in-loss",
        beta=0.1,
        updates_per_batch=3,
        lr=1e-3,
    ).validate()
    ctx = loop.StepContext(
        cfg,
        policy,
        ref,
        tok,
        task,
        loop.make_optimizer(policy.parameters(), cfg.lr),
        loop.make_beta_schedule(cfg),
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
        loop.make_sampler(cfg, policy, ref, tok, task, torch.device("cpu")),
    )
    loop._step(ctx, 0)
    policy_calls = calls[-3:]  # the three updates (the reference's scoring pass comes first)
    assert policy_calls == [True, False, False]


def test_keep_activations_needs_the_models_dtype_and_no_autocast(tok):
    policy, _ = _models(tok)
    with pytest.raises(ValueError, match="keep_activations"):
        Sampler(policy, tok, max_new_tokens=4, compute_dtype=torch.bfloat16, autocast=True, keep_activations=True)
    assert not Sampler(policy, tok, max_new_tokens=4, compute_dtype=torch.bfloat16, autocast=True).keep_activations
    assert Sampler(policy, tok, max_new_tokens=4, keep_activations=False).sample(PROMPTS).activations is None


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("L", [1, 5])
def test_attention_by_batched_products_equals_sdpa(L, time_major):
    g = torch.Generator().manual_seed(0)
    N, H, KV, S, hd = 3, 4, 2, 7, 8
    q = torch.randn(N, L, H, hd, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(N, KV, S, hd, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(N, KV, S, hd, generator=g, dtype=torch.float64, requires_grad=True)
    allowed = torch.rand(N, 1, L, S, generator=g) > 0.4
    allowed[..., 0] = True
    bias = decoder.attn_mask(allowed, KV, H // KV, torch.float64)
    assert bias.dtype == torch.float64  # the CPU's batched products
    qin = q.transpose(0, 1) if time_major else q
    out = decoder.attention(qin, k, v, bias, 0.3, time_major=time_major)
    out = out.transpose(0, 1) if time_major else out
    ref = (
        F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.repeat_interleave(H // KV, 1),
            v.repeat_interleave(H // KV, 1),
            attn_mask=allowed,
            scale=0.3,
        )
        .transpose(1, 2)
        .reshape(N, L, H * hd)
    )
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, c in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_products_through_onednn_equal_torchs():
    if onednn.cpu_matmul() != "onednn":
        pytest.skip("oneDNN's linear op is not usable with this torch")
    g = torch.Generator().manual_seed(0)
    x, w, b, r = (torch.randn(*s, generator=g) for s in ((50, 24), (40, 24), (40,), (50, 40)))
    gg = torch.randn(50, 40, generator=g)
    before = onednn._MATMUL["mode"]
    try:
        out = {}
        for mode in ("onednn", "default"):
            onednn.cpu_matmul(mode)
            out[mode] = (
                onednn.mm_nt(x, w, b),
                onednn.mm_nt(x, w, b, add=r),
                onednn.mm_nt(x[:, ::2], w[:, ::2]),
                onednn.mm_tn(gg, x),
                onednn.mm_tn(x, gg),
                onednn.mm_nt(x, w, out=torch.empty(50, 40)),
            )
        for a, c in zip(out["onednn"], out["default"]):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["default"][3], gg.T @ x)
        with pytest.raises(ValueError, match="cpu_matmul"):
            onednn.cpu_matmul("mkl")
    finally:
        onednn.cpu_matmul(before)


def test_the_automatic_recording_stays_within_its_memory_budget(tok, monkeypatch):
    from kltutor.capstone import sampler as sampler_module

    policy, _ = _models(tok)
    monkeypatch.setattr(sampler_module, "RECORD_BUDGET", 1000)  # bytes: far less than any batch's recording
    assert Sampler(policy, tok, max_new_tokens=4).sample(PROMPTS).activations is None
    assert Sampler(policy, tok, max_new_tokens=4, keep_activations=True).sample(PROMPTS).activations is not None
