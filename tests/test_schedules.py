"""kltutor.schedules: each rule step by step against hand-computed values; bad input."""

import math

import pytest

from kltutor import schedules as S


def test_fixed_never_moves():
    s = S.FixedKL(0.05)
    for kl in (0.0, 10.0, -1.0):
        assert s.update(kl) == 0.05
    assert s.beta == 0.05 and s.n_updates == 3


def test_adaptive_follows_ziegler_rule_by_hand():
    s = S.AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    # kl=6.3: error 0.05, mult 1 + 0.05*128/10000 = 1.00064
    assert s.update(6.3, n_steps=128) == pytest.approx(0.2 * 1.00064, rel=1e-12)
    # kl=12: error 1.0 clipped to 0.2, mult 1 + 0.2*128/10000 = 1.00256
    assert s.update(12.0, n_steps=128) == pytest.approx(0.2 * 1.00064 * 1.00256, rel=1e-12)
    # kl=0 (or negative): error clipped to -0.2, mult 1 - 0.2*100/10000 = 0.998
    assert s.update(-0.5, n_steps=100) == pytest.approx(0.2 * 1.00064 * 1.00256 * 0.998, rel=1e-12)
    # on target: no change
    b = s.beta
    assert s.update(6.0, n_steps=128) == b


def test_adaptive_error_is_clipped_symmetrically():
    s = S.AdaptiveKLController(1.0, target=0.1, horizon=100)
    assert s.error(0.1) == 0.0
    assert s.error(0.11) == pytest.approx(0.1)
    assert s.error(1.0) == 0.2 and s.error(0.0) == -0.2
    assert S.AdaptiveKLController(1.0, 0.1, 100, clip=0.5).error(1.0) == 0.5


def test_ppo_penalty_halves_doubles_and_keeps():
    s = S.PPOPenaltyKL(1.0, target=0.01)
    assert s.update(0.006) == 0.5  # < 0.01/1.5 = 0.00667
    assert s.update(0.007) == 0.5  # inside the band
    assert s.update(0.0149) == 0.5  # inside (< 0.015)
    assert s.update(0.016) == 1.0  # > 1.5 * target
    assert s.update(1e3, n_steps=999) == 2.0  # n_steps is ignored, the factor is fixed


def test_annealing_endpoints_and_shapes():
    lin, cos, exp = (
        S.LinearBeta(1.0, end=0.1, horizon=10),
        S.CosineBeta(1.0, end=0.1, horizon=10),
        S.ExponentialBeta(1.0, end=0.1, horizon=10),
    )
    for s in (lin, cos, exp):
        assert s.value_at(0) == pytest.approx(1.0) and s.value_at(10) == pytest.approx(0.1)
        assert s.value_at(25) == pytest.approx(0.1)  # constant after the end
        vals = [s.update() for _ in range(12)]
        assert all(a >= b for a, b in zip(vals, vals[1:]))
        assert vals[-1] == pytest.approx(0.1)
    assert lin.value_at(5) == pytest.approx(0.55)
    assert cos.value_at(5) == pytest.approx(0.55)  # cos midpoint equals linear midpoint
    assert cos.value_at(2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert exp.value_at(5) == pytest.approx(math.sqrt(0.1))
    # annealing upward works too
    assert S.LinearBeta(0.01, end=0.1, horizon=4).value_at(2) == pytest.approx(0.055)


def test_make_schedule_builds_each_and_rejects_unknown():
    assert isinstance(S.make_schedule("fixed", beta=0.1), S.FixedKL)
    assert isinstance(S.make_schedule("adaptive", beta=0.1, target=1, horizon=10), S.AdaptiveKLController)
    assert isinstance(S.make_schedule("ppo-penalty", beta=0.1, target=1), S.PPOPenaltyKL)
    for name in ("linear", "cosine", "exponential"):
        assert S.make_schedule(name, beta=1, end=0.1, horizon=5).beta == 1.0
    with pytest.raises(ValueError, match="unknown beta schedule 'pid'"):
        S.make_schedule("pid", beta=0.1)
    with pytest.raises(TypeError, match="bad arguments"):
        S.make_schedule("fixed", init_beta=0.1)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_beta_target_horizon(bad):
    if bad != 0.0:  # a fixed beta of 0 is allowed (no penalty); the rules that scale beta need > 0
        with pytest.raises(ValueError):
            S.FixedKL(bad)
    with pytest.raises(ValueError):
        S.AdaptiveKLController(bad, 1.0, 10)
    with pytest.raises(ValueError, match="target"):
        S.AdaptiveKLController(0.1, bad, 10)
    with pytest.raises(ValueError, match="horizon"):
        S.AdaptiveKLController(0.1, 1.0, bad)
    with pytest.raises(ValueError, match="target"):
        S.PPOPenaltyKL(0.1, bad)
    with pytest.raises(ValueError):
        S.LinearBeta(bad, end=0.1, horizon=10)


def test_every_schedule_has_the_same_constructor():
    """make_schedule passes the same keywords to every rule; a setting the rule does not read is refused."""
    assert S.FixedKL(0.0).beta == 0.0 and S.FixedKL(0.0).update(5.0) == 0.0
    for name, cls in S.SCHEDULES.items():
        given = {"target": 1.0, "horizon": 10, "end": 0.5}
        s = S.make_schedule(name, beta=0.2, **{k: v for k, v in given.items() if k in cls.uses})
        assert type(s) is cls and s.beta == 0.2
        for k in set(given) - set(cls.uses):
            with pytest.raises(TypeError, match=f"does not use {k}"):
                S.make_schedule(name, beta=0.2, **{j: v for j, v in given.items() if j in cls.uses or j == k})
        for k in cls.uses:
            with pytest.raises(TypeError, match=f"needs {k}"):
                S.make_schedule(name, beta=0.2, **{j: v for j, v in given.items() if j in cls.uses and j != k})
    with pytest.raises(ValueError, match="beta"):
        S.AdaptiveKLController(0.0, 1.0, 10)  # a multiplicative rule never leaves 0


def test_annealing_counts_n_steps():
    s = S.LinearBeta(1.0, end=0.1, horizon=100)
    assert s.update(n_steps=50) == pytest.approx(0.55)  # half the horizon in one report
    assert s.update(n_steps=64) == pytest.approx(0.1)


def test_bad_updates():
    s = S.AdaptiveKLController(0.1, 1.0, 10)
    with pytest.raises(ValueError, match="finite"):
        s.update(float("nan"))
    with pytest.raises(ValueError, match="needs the measured kl"):
        s.update(None)
    with pytest.raises(ValueError, match="n_steps"):
        s.update(1.0, n_steps=0)
    with pytest.raises(ValueError, match="beta would become"):
        S.AdaptiveKLController(0.1, 1.0, 10).update(0.0, n_steps=100)
    with pytest.raises(TypeError):
        S.FixedKL("a lot")
    with pytest.raises(ValueError):
        S.PPOPenaltyKL(0.1, 1.0, tolerance=0.9)
