import torch

from kltutor.exercises.failures import check_shaped_rewards, check_stable_k3


def test_stable_k3_checker():
    """One rule in chapters 2 and 7: float32 accuracy near 0 too, so expm1 alone is rejected."""
    from kltutor import estimators as est

    good = lambda x: est.k3(x.float(), torch.zeros(x.shape, dtype=torch.float32))  # noqa: E731
    expm1_only = lambda x: torch.expm1(-x.float()) + x.float()  # noqa: E731
    naive = lambda x: torch.exp(-x) - 1 + x  # noqa: E731
    assert check_stable_k3(good).passed
    assert check_stable_k3(lambda x: est.of_log_ratio("k3", x)).passed
    r = check_stable_k3(expm1_only)
    assert not r.passed and "relative error" in str(r)
    assert not check_stable_k3(naive).passed


def test_shaped_rewards_checker():
    def good(logp, ref_logp, mask, rewards, beta):
        shaped = -beta * (logp - ref_logp).detach() * mask
        last = (mask * torch.arange(mask.shape[1])).argmax(1)
        shaped[torch.arange(mask.shape[0]), last] += rewards
        return shaped

    def not_detached(logp, ref_logp, mask, rewards, beta):
        shaped = -beta * (logp - ref_logp) * mask
        last = (mask * torch.arange(mask.shape[1])).argmax(1)
        return shaped.index_put((torch.arange(mask.shape[0]), last), rewards, accumulate=True)

    assert check_shaped_rewards(good).passed
    bad = check_shaped_rewards(not_detached)
    assert not bad.passed and "shaped_rewards_require_grad" in str(bad)
