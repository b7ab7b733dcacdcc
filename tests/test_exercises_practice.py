"""The checkers of chapter 8's exercises accept right answers and reject the usual wrong ones."""

import torch

from kltutor.exercises.practice import check_effective_beta, check_logged_kl
from kltutor.practice import effective_beta


def test_effective_beta_checker():
    assert check_effective_beta(lambda T, mode, beta: effective_beta(T, mode, beta).tolist())
    wrong = check_effective_beta(lambda T, mode, beta: [beta] * len(T))  # "beta is beta"
    assert not wrong and "expected" in str(wrong)
    assert not check_effective_beta(lambda T, mode, beta: 1 / 0)


def k3_sum(logp, ref_logp, mask):
    l = logp - ref_logp
    return ((torch.expm1(-l) + l) * mask).sum(-1)


def test_logged_kl_checker():
    assert check_logged_kl(k3_sum)
    k1 = check_logged_kl(lambda lp, rl, m: ((lp - rl) * m).sum(-1))
    assert not k1 and "negative" in str(k1)
    neg = check_logged_kl(lambda lp, rl, m: ((rl - lp) * m).sum(-1))
    assert not neg and "sign" in str(neg)
    inverted = check_logged_kl(lambda lp, rl, m: ((torch.expm1(lp - rl) - (lp - rl)) * m).sum(-1))
    assert not inverted and "expectation" in str(inverted)
    unmasked = check_logged_kl(lambda lp, rl, m: k3_sum(lp, rl, torch.ones_like(m)))
    assert not unmasked and "mask" in str(unmasked)
    assert not check_logged_kl(lambda lp, rl, m: k3_sum(lp, rl, m)[:3])
