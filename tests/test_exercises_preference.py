"""The chapter-5 checkers accept right answers and reject common wrong ones."""

import torch
import torch.nn.functional as F

from kltutor.exercises.preference import check_dpo_loss, check_group_advantages
from kltutor.grpo import group_advantages


def test_dpo_checker():
    def right(pw, pl, rw, rl, beta):
        return -F.logsigmoid(beta * ((pw - rw) - (pl - rl)))

    def unstable(pw, pl, rw, rl, beta):  # overflows for very wrong rankings
        return -torch.log(torch.sigmoid(beta * ((pw - rw) - (pl - rl))))

    def sign_flipped(pw, pl, rw, rl, beta):
        return -F.logsigmoid(beta * ((pl - rl) - (pw - rw)))

    def mean_only(pw, pl, rw, rl, beta):
        return right(pw, pl, rw, rl, beta).mean()

    def no_reference(pw, pl, rw, rl, beta):
        return -F.logsigmoid(beta * (pw - pl))

    assert check_dpo_loss(right).passed
    for wrong in (unstable, sign_flipped, mean_only, no_reference):
        res = check_dpo_loss(wrong)
        assert not res.passed, wrong.__name__
        assert "not yet" in str(res)


def test_group_advantage_checker():
    assert check_group_advantages(lambda r, g, clip_std=None: group_advantages(r, g, clip_std=clip_std)).passed

    def population_std(r, g, clip_std=None):
        x = r.view(-1, g)
        return ((x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True).clamp(*clip_std)).reshape(-1)

    def no_clip(r, g, clip_std=None):
        x = r.view(-1, g)
        return ((x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-8)).reshape(-1)

    assert not check_group_advantages(population_std).passed
    assert not check_group_advantages(no_clip).passed

    def raises(r, g, clip_std=None):
        raise RuntimeError("not implemented")

    res = check_group_advantages(raises)
    assert not res.passed and "RuntimeError" in str(res)
