"""kltutor.schedules: each rule with every parameter away from its default, step by step; the
timing of annealing (which value after which update); the beta a controller produces in a
simulated run checked against the rule applied to the KL it was shown."""

import math

import pytest
import torch

from kltutor import schedules as S
from kltutor.toys.bandits import KLBandit, simulate_training


def test_adaptive_rule_with_non_default_clip_horizon_and_n_steps():
    s = S.AdaptiveKLController(0.5, target=2.0, horizon=50, clip=0.4)
    assert s.beta == 0.5 and s.n_updates == 0 and (s.target, s.horizon, s.clip) == (2.0, 50.0, 0.4)
    # kl 2.6: e = 0.3 (inside the clip of 0.4), mult = 1 + 0.3 * 5 / 50
    assert s.update(2.6, n_steps=5) == pytest.approx(0.5 * 1.03, rel=1e-14)
    # kl 5: e = 1.5 clipped to 0.4; default n_steps = 1: mult = 1 + 0.4 / 50
    assert s.update(5.0) == pytest.approx(0.5 * 1.03 * 1.008, rel=1e-14)
    # kl 0.4: e = -0.8 clipped to -0.4, mult = 1 - 0.4 * 10 / 50
    assert s.update(0.4, n_steps=10) == pytest.approx(0.5 * 1.03 * 1.008 * 0.92, rel=1e-14)
    assert s.n_updates == 3
    assert s.error(2.0 * 1.4) == pytest.approx(0.4) and s.error(2.0 * 0.6) == pytest.approx(-0.4)
    assert s.error(2.0 * 1.39) == pytest.approx(0.39)
    # a step that would drive beta to exactly 0 is refused, one just short of it is not
    t = S.AdaptiveKLController(1.0, target=1.0, horizon=10, clip=0.5)
    with pytest.raises(ValueError, match="beta would become <= 0"):
        t.update(0.0, n_steps=20)  # mult = 1 - 0.5 * 2 = 0
    assert t.update(0.0, n_steps=19) == pytest.approx(0.05)


def test_ppo_penalty_with_non_default_tolerance_and_factor():
    s = S.PPOPenaltyKL(1.0, target=0.1, tolerance=2.0, factor=3.0)
    assert s.update(0.049) == pytest.approx(1 / 3)  # below target / 2
    assert s.update(0.05) == pytest.approx(1 / 3)  # exactly at target / 2: kept
    assert s.update(0.2) == pytest.approx(1 / 3)  # exactly at 2 * target: kept
    assert s.update(0.21) == pytest.approx(1.0)  # above: times 3
    assert s.update(0.15, n_steps=7) == pytest.approx(1.0)
    assert s.n_updates == 5
    with pytest.raises(ValueError, match="needs the measured kl"):
        s.update()
    with pytest.raises(ValueError, match="> 1"):
        S.PPOPenaltyKL(1.0, 0.1, tolerance=2.0, factor=1.0)
    with pytest.raises(ValueError, match="> 1"):
        S.PPOPenaltyKL(1.0, 0.1, tolerance=1.0)


@pytest.mark.parametrize(
    "cls, at",
    [
        (S.LinearBeta, lambda u: 0.8 + (0.05 - 0.8) * u),
        (S.CosineBeta, lambda u: 0.05 + (0.8 - 0.05) * 0.5 * (1 + math.cos(math.pi * u))),
        (S.ExponentialBeta, lambda u: 0.8 * (0.05 / 0.8) ** u),
    ],
)
def test_annealing_timing(cls, at):
    """beta starts at ``beta``; after k steps (n_steps each) it is value_at(k) -- not one step late or early."""
    s = cls(0.8, horizon=4, end=0.05)
    assert s.beta == 0.8 and (s.start, s.end, s.horizon) == (0.8, 0.05, 4.0)
    seen = [s.beta]
    for k in range(1, 7):
        b = s.update(kl=123.0)  # a KL is accepted and ignored
        assert b == s.beta == pytest.approx(at(min(k, 4) / 4), rel=1e-14), k
        assert s.n_updates == k
        seen.append(b)
    assert seen[1] != seen[0] and seen[4] == pytest.approx(0.05) and seen[5] == seen[4]
    for k in range(6):
        assert s.value_at(k) == pytest.approx(at(min(k, 4) / 4), rel=1e-14)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            s.value_at(bad)
    # n_steps counts progress: two updates of 2 steps land where four updates of 1 do
    t = cls(0.8, horizon=8, end=0.05)
    assert t.update(n_steps=2) == pytest.approx(at(2 / 8), rel=1e-14)
    assert t.update(n_steps=3) == pytest.approx(at(5 / 8), rel=1e-14)
    assert t.update(n_steps=5) == pytest.approx(0.05) and t.n_updates == 3


def test_fixed_and_repr_and_make_schedule_kwargs():
    s = S.make_schedule("adaptive", beta=0.3, target=4.0, horizon=100, clip=0.1)
    assert (s.beta, s.target, s.horizon, s.clip) == (0.3, 4.0, 100.0, 0.1)
    assert s.update(8.0, n_steps=10) == pytest.approx(0.3 * 1.01)
    assert repr(s) == "AdaptiveKLController(beta=0.303, n_updates=1)"
    p = S.make_schedule("ppo-penalty", beta=0.2, target=1.0, tolerance=3.0, factor=4.0)
    assert (p.tolerance, p.factor) == (3.0, 4.0)
    f = S.FixedKL(0.07)
    assert f.update() == 0.07 and f.update(None, n_steps=3) == 0.07 and f.n_updates == 2
    assert repr(f) == "FixedKL(beta=0.07, n_updates=2)"
    with pytest.raises(ValueError, match="n_steps"):
        f.update(1.0, n_steps=True)
    with pytest.raises(TypeError, match="real number"):
        f.update("high")
    with pytest.raises(ValueError, match="horizon"):
        S.LinearBeta(1.0, horizon=0, end=0.1)
    assert S.FixedKL(0.0).update(1.0) == 0.0  # a fixed beta of 0 switches the penalty off
    assert set(S.SCHEDULES) == {"fixed", "adaptive", "ppo-penalty", "linear", "cosine", "exponential"}


BANDIT = KLBandit(
    torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64), torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
)


def test_controller_in_a_simulated_run_sees_the_measured_kl():
    """beta_{t+1} = beta_t (1 + clip(kl_measured_t / target - 1) n / horizon), for the noisy estimate."""
    ctrl = S.AdaptiveKLController(0.5, target=0.3, horizon=20, clip=0.2)
    run = simulate_training(
        BANDIT,
        ctrl,
        12,
        rate=0.3,
        n_samples=16,
        estimator="k1",
        generator=torch.Generator().manual_seed(1),
        controller_n_steps=2,
    )
    assert run.beta[0] == 0.5
    for t in range(11):
        e = min(max(run.kl_measured[t] / 0.3 - 1, -0.2), 0.2)
        assert run.beta[t + 1] == pytest.approx(run.beta[t] * (1 + e * 2 / 20), rel=1e-13), t
    assert ctrl.beta == pytest.approx(run.beta[11] * (1 + min(max(run.kl_measured[11] / 0.3 - 1, -0.2), 0.2) / 10))
    assert ctrl.n_updates == 12
    assert (run.kl_measured != run.kl).all()  # the estimate is noisy: the rule must use it, not the exact KL


def test_simulated_run_fields_by_hand():
    """Step 0 by hand: logits move 'rate' of the way to log pi*_beta; kl, reward exact; measured exact with n_samples=None."""
    run = simulate_training(BANDIT, S.FixedKL(0.5), 3, rate=0.25, n_samples=None)
    ref = BANDIT.ref_probs
    logp = torch.log(ref)
    for t in range(3):
        target = torch.log_softmax(torch.log(ref) + BANDIT.rewards / 0.5, -1)
        logp = torch.log_softmax(0.75 * logp + 0.25 * target, -1)
        pi = logp.exp()
        kl = float((pi * (logp - torch.log(ref))).sum())
        assert run.kl[t] == pytest.approx(kl, rel=1e-12)
        assert run.kl_measured[t] == run.kl[t]
        assert run.reward[t] == pytest.approx(float((pi * BANDIT.rewards).sum()), rel=1e-12)
        assert run.beta[t] == 0.5


def test_simulated_run_measures_with_the_chosen_estimator():
    g = torch.Generator().manual_seed(5)
    run = simulate_training(BANDIT, S.FixedKL(0.5), 1, rate=1.0, n_samples=8, estimator="k3", generator=g)
    pi = BANDIT.optimal_policy(0.5)  # rate 1: one step lands on pi*
    idx = torch.multinomial(pi, 8, replacement=True, generator=torch.Generator().manual_seed(5))
    ell = torch.log(pi[idx]) - torch.log(BANDIT.ref_probs[idx])
    assert run.kl_measured[0] == pytest.approx(float((torch.expm1(-ell) + ell).mean()), rel=1e-10)
    assert run.kl[0] == pytest.approx(BANDIT.optimal_kl(0.5), rel=1e-12)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda v: S.AdaptiveKLController(v, 1.0, 10), "beta"),
        (lambda v: S.AdaptiveKLController(0.1, v, 10), "target"),
        (lambda v: S.AdaptiveKLController(0.1, 1.0, v), "horizon"),
        (lambda v: S.AdaptiveKLController(0.1, 1.0, 10, clip=v), "clip"),
        (lambda v: S.PPOPenaltyKL(0.1, v), "target"),
        (lambda v: S.PPOPenaltyKL(0.1, 1.0, tolerance=v), "tolerance"),
        (lambda v: S.PPOPenaltyKL(0.1, 1.0, factor=v), "factor"),
        (lambda v: S.LinearBeta(v, horizon=5, end=0.1), "beta"),
        (lambda v: S.CosineBeta(1.0, horizon=5, end=v), "end"),
        (lambda v: S.ExponentialBeta(1.0, horizon=v, end=0.1), "horizon"),
    ],
)
def test_each_bad_argument_is_named(make, name):
    with pytest.raises(ValueError, match=f"^{name} must be a finite number > 0"):
        make(-1.0)
    with pytest.raises(TypeError, match=f"^{name} must be a real number"):
        make("x")


def test_fixed_beta_may_be_zero_but_not_negative():
    with pytest.raises(ValueError, match="^beta must be a finite number >= 0"):
        S.FixedKL(-1.0)
    with pytest.raises(TypeError, match="^beta must be a real number"):
        S.FixedKL("x")


def test_bad_counts_and_kl_are_named():
    with pytest.raises(TypeError, match="ExponentialBeta does not use target"):
        S.ExponentialBeta(1.0, 0.1, 2.5, 0.1)
    with pytest.raises(TypeError, match="LinearBeta needs end"):
        S.LinearBeta(1.0, horizon=3)
    s = S.AdaptiveKLController(0.1, 1.0, 10)
    with pytest.raises(ValueError, match="^n_steps must be an integer >= 1"):
        s.update(1.0, n_steps=-3)
    with pytest.raises(ValueError, match="^kl must be finite"):
        s.update(float("inf"))
    with pytest.raises(TypeError, match="^kl must be a real number"):
        s.error("big")
    with pytest.raises(ValueError, match="^kl must be finite"):
        s.error(float("nan"))
