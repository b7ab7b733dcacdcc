"""The chapter-4 checker accepts a correct controller and rejects common wrong ones."""

from kltutor.exercises.schedules import check_adaptive_update


def correct(beta, kl, target, n_steps, horizon):
    e = min(max(kl / target - 1, -0.2), 0.2)
    return beta * (1 + e * n_steps / horizon)


def unclipped(beta, kl, target, n_steps, horizon):
    return beta * (1 + (kl / target - 1) * n_steps / horizon)


def additive(beta, kl, target, n_steps, horizon):
    e = min(max(kl / target - 1, -0.2), 0.2)
    return beta + e * n_steps / horizon


def wrong_sign(beta, kl, target, n_steps, horizon):
    e = min(max(kl / target - 1, -0.2), 0.2)
    return beta * (1 - e * n_steps / horizon)


def crashes(beta, kl, target, n_steps, horizon):
    raise RuntimeError("not implemented")


def test_accepts_correct():
    res = check_adaptive_update(correct)
    assert res.passed and "all 7 cases match" in str(res)


def test_rejects_unclipped_with_hint():
    res = check_adaptive_update(unclipped)
    assert not res.passed and "unclipped" in str(res)


def test_rejects_other_mistakes():
    for fn in (additive, wrong_sign, crashes):
        res = check_adaptive_update(fn)
        assert not res.passed and res.messages
