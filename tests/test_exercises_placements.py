import torch

from kltutor.exercises.placements import check_prefix_weights, check_sequence_k2_loss


def good_k2(logp, ref_logp, mask):
    return 0.5 * ((logp - ref_logp) * mask).sum(-1).square()


def token_k2(logp, ref_logp, mask):
    return (0.5 * (logp - ref_logp).square() * mask).sum(-1)


def test_sequence_k2_checker():
    assert check_sequence_k2_loss(good_k2).passed
    bad = check_sequence_k2_loss(token_k2)
    assert not bad.passed and "differ" in str(bad)
    assert not check_sequence_k2_loss(lambda *a: 1.0).passed
    assert not check_sequence_k2_loss(lambda *a: 1 / 0).passed


def test_prefix_weight_checker():
    def good(logp, old, mask):
        return torch.exp(torch.cumsum((logp - old) * mask, -1))

    def per_token(logp, old, mask):
        return torch.exp(logp - old)

    def detached(logp, old, mask):
        return torch.exp(torch.cumsum(logp - old, -1)).detach()

    assert check_prefix_weights(good).passed
    res = check_prefix_weights(per_token)
    assert not res.passed and "prefix" in str(res)
    assert not check_prefix_weights(detached).passed
