"""kltutor.checklist.inspect flags every planted violation and passes a correct set-up."""

import copy

import pytest
import torch
from torch import nn

from kltutor.checklist import CHECKS, inspect


class TinyLM(nn.Module):
    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.out(self.drop(self.emb(ids)))


def token_logp(model, ids):
    logits = model(ids[:, :-1])
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def correct_setup(first_step=True):
    torch.manual_seed(0)
    policy = TinyLM()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    policy.eval()  # deterministic forward for the step-0 comparison
    ids = torch.randint(0, 11, (3, 9))
    attention = torch.ones(3, 8)
    attention[2, -2:] = 0  # right padding on the last row
    prompt = torch.zeros(3, 8)
    prompt[:, :3] = 1
    mask = attention * (1 - prompt)
    logp = token_logp(policy, ids)
    with torch.no_grad():
        ref_logp = token_logp(ref, ids)
    rewards = torch.tensor([1.0, -0.5, 0.2])
    shaped = -0.1 * (logp - ref_logp).detach() * mask
    batch = dict(logp=logp, ref_logp=ref_logp, mask=mask, attention_mask=attention, prompt_mask=prompt,
                 rewards=rewards, shaped_rewards=shaped, ref_model=ref, policy_model=policy, first_step=first_step)
    return batch


def test_correct_setup_passes():
    report = inspect(**correct_setup())
    assert report.ok, str(report)
    assert len(report.checked) >= 12
    assert "passed" in str(report)


def plant(name):
    b = correct_setup()
    if name == "ref_in_train_mode":
        b["ref_model"].train()
    elif name == "ref_params_require_grad":
        b["ref_model"].out.weight.requires_grad_(True)
    elif name == "ref_logp_requires_grad":
        b["ref_logp"] = b["ref_logp"] + 0 * b["logp"]
    elif name == "shaped_rewards_require_grad":
        b["shaped_rewards"] = -0.1 * (b["logp"] - b["ref_logp"]) * b["mask"]
    elif name == "rewards_require_grad":
        b["rewards"] = b["rewards"] + 0 * b["logp"].sum()
    elif name == "shape_mismatch":
        b["mask"] = b["mask"][:, :-1]
    elif name == "nonfinite":
        b["logp"] = b["logp"].detach().clone()
        b["logp"][0, 4] = float("nan")
    elif name == "logp_positive":
        b["logp"] = b["logp"].detach().exp()
    elif name == "mask_covers_padding":
        b["mask"] = b["mask"].clone()
        b["mask"][2, -1] = 1
    elif name == "mask_covers_prompt":
        b["mask"] = b["attention_mask"].clone()  # every real token, prompt included
    elif name == "empty_response":
        b["mask"] = b["mask"].clone()
        b["mask"][1] = 0
    elif name == "low_precision_logp":
        b["logp"], b["ref_logp"] = b["logp"].half(), b["ref_logp"].half()
    elif name == "kl_nonzero_at_start":
        b["ref_logp"] = b["ref_logp"] - 0.2
    return b


@pytest.mark.parametrize("code", sorted(CHECKS))
def test_each_planted_violation_is_flagged(code):
    if code == "ref_shares_params_with_policy":
        # shared tensors: a shallow copy of the policy used as the reference
        b = correct_setup()
        ref = copy.copy(b["policy_model"])
        b["ref_model"] = ref
        report = inspect(**b)
        assert code in report.codes
        return
    report = inspect(**plant(code))
    assert code in report.codes, str(report)


def test_clean_report_codes_and_bad_input():
    with pytest.raises(TypeError):
        inspect(logp=[0.0], ref_logp=torch.zeros(1, 1), mask=torch.ones(1, 1))
    with pytest.raises(ValueError):
        inspect(logp=torch.zeros(3), ref_logp=torch.zeros(3), mask=torch.ones(3))
