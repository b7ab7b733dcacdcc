"""kltutor.toys: values of the bandit's exact quantities on a 3-arm example by hand, and the toy
models' log-probabilities run through kltutor.checklist (finite, <= 0, ref detached, masks)."""

import math

import numpy as np
import pytest
import torch

from kltutor.checklist import check_batch
from kltutor.toys import BinaryAutoregressive, KLBandit, TabularAutoregressive

D = torch.float64
BANDIT = KLBandit(torch.tensor([0.5, 0.25, 0.25], dtype=D), torch.tensor([0.0, math.log(2), math.log(2)], dtype=D))


def test_bandit_exact_quantities_by_hand():
    # beta = 1: pi* = (0.5, 0.5, 0.5) / 1.5
    pi = BANDIT.optimal_policy(1.0)
    assert pi.tolist() == pytest.approx([1 / 3] * 3, abs=1e-15)
    assert BANDIT.optimal_reward(1.0) == pytest.approx(2 / 3 * math.log(2), abs=1e-15)
    kl = 1 / 3 * math.log(2 / 3) + 2 / 3 * math.log(4 / 3)
    assert BANDIT.optimal_kl(1.0) == pytest.approx(kl, abs=1e-15)
    r = [0.0, math.log(2), math.log(2)]
    m = 2 / 3 * math.log(2)
    assert BANDIT.reward_variance(1.0) == pytest.approx(sum((x - m) ** 2 for x in r) / 3, abs=1e-15)
    assert BANDIT.objective(pi, 1.0).item() == pytest.approx(math.log(1.5), abs=1e-15)  # beta log Z
    assert BANDIT.max_kl() == pytest.approx(math.log(2), abs=1e-15)  # -log of the best arms' mass 1/2
    assert BANDIT.beta_for_kl(kl) == pytest.approx(1.0, rel=1e-9)
    c = BANDIT.curves([1.0, 2.0])
    assert set(c) == {"beta", "reward", "kl", "variance"} and isinstance(c["kl"], np.ndarray)
    assert c["kl"][0] == pytest.approx(kl) and c["reward"][1] == pytest.approx(BANDIT.optimal_reward(2.0))
    assert c["variance"][1] == pytest.approx(BANDIT.reward_variance(2.0))
    assert BANDIT.scaled(2.0).optimal_policy(2.0).tolist() == pytest.approx(pi.tolist(), abs=1e-15)
    assert BANDIT.n_arms == 3
    with pytest.raises(ValueError, match="unreachable"):
        BANDIT.beta_for_kl(math.log(2))


def test_binary_autoregressive_outputs_pass_the_checklist():
    pi, ref = BinaryAutoregressive(0.3, -0.4), BinaryAutoregressive(-0.2, 0.5)
    seqs = pi.sample(6, 4, generator=torch.Generator().manual_seed(0))
    logp = pi.token_logprobs(seqs)
    with torch.no_grad():
        ref_logp = ref.token_logprobs(seqs)
    mask = torch.ones_like(logp)
    report = check_batch(logp=logp, ref_logp=ref_logp, mask=mask)
    assert report.ok, str(report)
    assert check_batch(logp=logp, ref_logp=pi.token_logprobs(seqs).detach(), mask=mask, first_step=True).ok
    assert not check_batch(logp=logp, ref_logp=ref_logp, mask=mask, first_step=True).ok  # a different reference
    # a reference computed with gradient is caught
    assert "ref_logp_requires_grad" in check_batch(logp=logp, ref_logp=ref.token_logprobs(seqs), mask=mask).codes


def test_tabular_autoregressive_outputs_pass_the_checklist():
    ref = TabularAutoregressive.random(3, 4, seed=1)
    pol = ref.perturbed(0.3, seed=2)
    seqs = pol.sample(5, generator=torch.Generator().manual_seed(3))
    logp, ref_logp = pol.token_log_probs(seqs), ref.token_log_probs(seqs)
    mask = torch.tensor([[0, 1, 1, 1]] * 5, dtype=D)  # first position: a prompt
    prompt = 1 - mask
    assert check_batch(
        logp=logp, ref_logp=ref_logp, mask=mask, prompt_mask=prompt, attention_mask=torch.ones_like(mask)
    ).ok
    assert (logp <= 0).all() and torch.isfinite(logp).all()
    # the conditionals each sum to one and the chosen token's log-prob is the gathered one
    cond = pol.conditional_log_probs(seqs)
    assert torch.allclose(cond.exp().sum(-1), torch.ones(5, 4, dtype=D))
    assert torch.equal(cond.gather(-1, seqs[..., None]).squeeze(-1), logp)
