"""The chapter 1 checker accepts a correct categorical KL and rejects planted mistakes."""

import torch

from kltutor.divergences import kl
from kltutor.exercises.fundamentals import check_categorical_kl


def correct(p, q):
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def naive_nan(p, q):  # 0 * log 0 = nan
    return (p * torch.log(p / q)).sum(-1)


def swapped(p, q):
    return correct(q, p)


def log2_units(p, q):
    return correct(p, q) / torch.log(torch.tensor(2.0, dtype=p.dtype))


def sums_everything(p, q):
    return correct(p, q).sum()


def clamps_q(p, q):  # hides the +inf by clamping q
    return (torch.xlogy(p, p) - torch.xlogy(p, q.clamp_min(1e-12))).sum(-1)


def raises(p, q):
    raise RuntimeError("not implemented")


def test_accepts_correct_and_library():
    assert check_categorical_kl(correct).passed
    assert check_categorical_kl(kl).passed


def test_rejects_planted_mistakes():
    for wrong in (naive_nan, swapped, log2_units, sums_everything, clamps_q, raises):
        res = check_categorical_kl(wrong)
        assert not res.passed, wrong.__name__
        assert res.messages and "not yet" in str(res)
