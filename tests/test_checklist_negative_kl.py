"""kltutor.checklist.diagnose_negative_kl names each cause of a negative logged KL from a batch."""

import copy

import pytest
import torch
from torch import nn

from kltutor.checklist import NEGATIVE_KL_CAUSES, diagnose_negative_kl

V, B, T, P = 7, 64, 10, 3  # vocabulary, batch, time, prompt tokens


class TinyLM(nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.emb, self.drop, self.out = nn.Embedding(V, 16), nn.Dropout(dropout), nn.Linear(16, V)

    def forward(self, ids):
        return self.out(self.drop(self.emb(ids)))


def token_logp(model, ids, temperature=1.0):
    return torch.log_softmax(model(ids[:, :-1]) / temperature, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


@torch.no_grad()
def sample(model, n, temperature=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, 1), generator=g)
    for _ in range(T):
        p = torch.softmax(model(ids[:, -1:])[:, -1] / temperature, -1)
        ids = torch.cat([ids, torch.multinomial(p, 1, generator=g)], 1)
    return ids


def setup(ref_shift=0.3, seed=0):
    torch.manual_seed(seed)
    ref = TinyLM().eval()
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        policy.out.bias += ref_shift * torch.randn(V)  # a policy that has moved away from the reference
    mask = torch.ones(B, T)
    mask[:, :P] = 0  # the first P positions are the prompt
    prompt = 1 - mask
    return policy, ref, mask, prompt


def test_cause_list_is_documented():
    assert set(NEGATIVE_KL_CAUSES) >= {
        "mask_covers_padding",
        "mask_covers_prompt",
        "dropout_active",
        "sampler_mismatch",
        "precision_mismatch",
        "reference_mismatch",
        "sign_reversed",
        "sampling_noise",
    }


def test_clean_on_policy_batch_has_positive_kl_and_no_cause():
    policy, ref, mask, prompt = setup(ref_shift=1.0)
    ids = sample(policy, B)
    with torch.no_grad():
        logp, ref_logp = token_logp(policy, ids), token_logp(ref, ids)
    d = diagnose_negative_kl(logp=logp, ref_logp=ref_logp, mask=mask, prompt_mask=prompt, policy_model=policy)
    assert d.kl_k1 > 0 and d.kl_k3 > 0 and d.causes == [] and not d.negative
    assert "no cause found" in str(d)


def test_sampling_noise_when_the_kl_is_tiny():
    # a policy a hair away from the reference: KL ~ 1e-4 per sequence, k1's noise much larger
    for seed in range(20):
        policy, ref, mask, prompt = setup(ref_shift=0.01, seed=seed)
        ids = sample(policy, B, seed=seed)
        with torch.no_grad():
            logp, ref_logp = token_logp(policy, ids), token_logp(ref, ids)
        d = diagnose_negative_kl(logp=logp, ref_logp=ref_logp, mask=mask)
        if d.negative:
            assert d.codes == ["sampling_noise"], str(d)
            assert d.kl_k3 >= 0
            return
    pytest.fail("no negative k1 batch in 20 seeds")


def test_sampler_mismatch_temperature():
    policy, ref, mask, prompt = setup(ref_shift=1.0)
    ids = sample(policy, B, temperature=3.0)  # a hot sampler, scored at temperature 1
    with torch.no_grad():
        logp, ref_logp = token_logp(policy, ids), token_logp(ref, ids)
        sampler_logp = token_logp(policy, ids, temperature=3.0)
    d = diagnose_negative_kl(logp=logp, ref_logp=ref_logp, mask=mask, sampler_logp=sampler_logp)
    assert "sampler_mismatch" in d.codes, str(d)
    assert "reweighted" in str(d)
    # and without the sampler's log-probs the same batch shows no sampler evidence
    assert "sampler_mismatch" not in diagnose_negative_kl(logp=logp, ref_logp=ref_logp, mask=mask).codes


def test_dropout_from_the_model_and_from_two_passes():
    torch.manual_seed(0)
    ref = TinyLM(dropout=0.3).eval()
    policy = copy.deepcopy(ref).train()  # dropout left on
    ids = sample(ref, B)
    mask = torch.ones(B, T)
    logp1, logp2 = token_logp(policy, ids).detach(), token_logp(policy, ids).detach()
    with torch.no_grad():
        ref_logp = token_logp(ref, ids)
    d = diagnose_negative_kl(logp=logp1, ref_logp=ref_logp, mask=mask, policy_model=policy)
    assert "dropout_active" in d.codes
    d2 = diagnose_negative_kl(logp=logp1, ref_logp=ref_logp, mask=mask, logp_repeat=logp2)
    assert "dropout_active" in d2.codes and "two forward passes" in str(d2)
    # dropout lowers the log-probs of the policy's own tokens on average: k1 at step 0 is negative
    assert d.kl_k1 < 0
    assert (
        "dropout_active"
        not in diagnose_negative_kl(logp=logp1, ref_logp=ref_logp, mask=mask, policy_model=policy.eval()).codes
    )


def test_mask_over_prompt_and_padding():
    policy, ref, mask, prompt = setup(ref_shift=0.5)
    ids = sample(policy, B)
    with torch.no_grad():
        logp, ref_logp = token_logp(policy, ids), token_logp(ref, ids)
    attention = torch.ones(B, T)
    attention[:, -2:] = 0  # right padding
    good = mask * attention
    d = diagnose_negative_kl(
        logp=logp, ref_logp=ref_logp, mask=torch.ones(B, T), attention_mask=attention, prompt_mask=prompt
    )
    assert {"mask_covers_padding", "mask_covers_prompt"} <= set(d.codes)
    want = float(((logp - ref_logp) * good).sum(-1).mean())
    assert d.kl_k1_valid == pytest.approx(want, abs=1e-6)


def test_reference_and_precision_mismatch_at_step_zero():
    policy, ref, mask, prompt = setup(ref_shift=0.0)
    ids = sample(policy, B)
    with torch.no_grad():
        logp, ref_logp = token_logp(policy, ids), token_logp(ref, ids)
    assert diagnose_negative_kl(logp=logp, ref_logp=ref_logp, mask=mask, first_step=True).causes == []
    other = TinyLM().eval()  # a different checkpoint
    with torch.no_grad():
        wrong = token_logp(other, ids)
    d = diagnose_negative_kl(logp=logp, ref_logp=wrong, mask=mask, first_step=True)
    assert d.codes[0] == "reference_mismatch"
    with torch.no_grad():
        bf16 = token_logp(copy.deepcopy(ref).to(torch.bfloat16), ids)
    d = diagnose_negative_kl(logp=logp, ref_logp=bf16, mask=mask, first_step=True)
    assert "precision_mismatch" in d.codes and "reference_mismatch" not in d.codes


def test_sign_reversed():
    policy, ref, mask, prompt = setup(ref_shift=1.0)
    ids = sample(policy, B)
    with torch.no_grad():
        logp, ref_logp = token_logp(policy, ids), token_logp(ref, ids)
    k1 = float(((logp - ref_logp) * mask).sum(-1).mean())
    assert "sign_reversed" in diagnose_negative_kl(logp=logp, ref_logp=ref_logp, mask=mask, logged_kl=-k1).codes
    assert "sign_reversed" not in diagnose_negative_kl(logp=logp, ref_logp=ref_logp, mask=mask, logged_kl=k1).codes


def test_bad_input():
    z = torch.zeros(2, 3)
    with pytest.raises(TypeError):
        diagnose_negative_kl(logp=[0.0], ref_logp=z, mask=z)
    with pytest.raises(ValueError, match="one shape"):
        diagnose_negative_kl(logp=z, ref_logp=torch.zeros(2, 4), mask=z)
    with pytest.raises(ValueError, match="no token"):
        diagnose_negative_kl(logp=z, ref_logp=z, mask=z)
    with pytest.raises(ValueError, match="NaN"):
        diagnose_negative_kl(logp=torch.full((2, 3), float("nan")), ref_logp=z, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="sampler_logp"):
        diagnose_negative_kl(logp=z, ref_logp=z, mask=torch.ones(2, 3), sampler_logp=torch.zeros(3))
