"""kltutor.toys.bandits: the closed form is the maximiser, KL is monotone in beta, runs behave."""

import math

import numpy as np
import pytest
import torch

from kltutor import schedules as S
from kltutor.preference import optimal_policy
from kltutor.toys.bandits import KLBandit, simulate_training


@pytest.fixture
def bandit():
    return KLBandit.random(6, torch.Generator().manual_seed(3))


@pytest.mark.parametrize("beta", [0.05, 0.3, 1.0, 5.0])
def test_closed_form_maximises_objective(bandit, beta):
    pi = bandit.optimal_policy(beta)
    numeric = bandit.maximize_numerically(beta)
    assert torch.allclose(pi, numeric, atol=1e-6)
    # no random policy beats it, and J(pi*) = beta log Z
    torch.manual_seed(0)
    others = torch.distributions.Dirichlet(torch.ones(6, dtype=torch.float64)).sample((200,))
    assert (bandit.objective(others, beta) <= bandit.objective(pi, beta) + 1e-12).all()
    log_z = torch.logsumexp(torch.log(bandit.ref_probs) + bandit.rewards / beta, -1)
    assert bandit.objective(pi, beta).item() == pytest.approx(beta * log_z.item(), rel=1e-10)


def test_kl_decreases_and_reward_decreases_in_beta(bandit):
    c = bandit.curves(np.logspace(-1, 2, 200))  # below ~0.05 the optimum is greedy to float64 precision
    assert (np.diff(c["kl"]) < 0).all()
    assert (np.diff(c["reward"]) < 0).all()
    assert c["kl"][0] <= bandit.max_kl() + 1e-12


@pytest.mark.parametrize("beta", [0.1, 0.7, 3.0])
def test_derivatives_match_variance(bandit, beta):
    h = 1e-5 * beta
    d_reward = (bandit.optimal_reward(beta + h) - bandit.optimal_reward(beta - h)) / (2 * h)
    d_kl = (bandit.optimal_kl(beta + h) - bandit.optimal_kl(beta - h)) / (2 * h)
    var = bandit.reward_variance(beta)
    assert d_reward == pytest.approx(-var / beta**2, rel=1e-6)
    assert d_kl == pytest.approx(-var / beta**3, rel=1e-6)


def test_reward_scale_equals_beta_over_c(bandit):
    for c in (0.1, 3.0, 100.0):
        assert torch.allclose(bandit.scaled(c).optimal_policy(0.5), bandit.optimal_policy(0.5 / c), atol=1e-14)


def test_beta_for_kl_inverts(bandit):
    b = bandit.beta_for_kl(0.3)
    assert bandit.optimal_kl(b) == pytest.approx(0.3, rel=1e-9)
    with pytest.raises(ValueError, match="unreachable"):
        bandit.beta_for_kl(bandit.max_kl() + 0.1)


def test_tilted_policy_is_stable_for_tiny_beta(bandit):
    pi = optimal_policy(bandit.ref_probs, bandit.rewards, 1e-8)
    assert torch.isfinite(pi).all() and pi[bandit.rewards.argmax()].item() == pytest.approx(1.0)


def test_exact_run_with_fixed_beta_converges_to_optimum(bandit):
    run = simulate_training(bandit, S.FixedKL(0.5), 300, rate=0.1, n_samples=None)
    assert run.kl[-1] == pytest.approx(bandit.optimal_kl(0.5), rel=1e-9)
    assert (np.diff(run.kl) > 0).all()  # the KL grows toward its limit from the reference


def test_adaptive_controller_reaches_target_without_noise(bandit):
    target = 0.5
    run = simulate_training(bandit, S.AdaptiveKLController(0.05, target, horizon=20), 1500, rate=0.1, n_samples=None)
    assert run.kl[-1] == pytest.approx(target, rel=1e-3)
    assert run.beta[-1] == pytest.approx(bandit.beta_for_kl(target), rel=1e-3)


def test_measured_kl_is_unbiased_sample_mean(bandit):
    # with a fixed beta the policy at each step is known; the k1 estimate must average to the exact KL
    g = torch.Generator().manual_seed(1)
    run = simulate_training(bandit, S.FixedKL(0.3), 400, rate=1.0, n_samples=32, estimator="k1", generator=g)
    err = run.kl_measured - run.kl
    se = err.std(ddof=1) / math.sqrt(len(err))
    assert abs(err.mean()) < 5 * se


def test_bad_inputs():
    with pytest.raises(ValueError, match="strictly positive"):
        KLBandit(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        KLBandit(torch.tensor([0.3, 0.3]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="same shape"):
        KLBandit(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="non-finite"):
        KLBandit(torch.tensor([0.5, 0.5]), torch.tensor([float("nan"), 0.0]))
    b = KLBandit(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            b.optimal_policy(bad)
    with pytest.raises(ValueError, match="rate"):
        simulate_training(b, S.FixedKL(1.0), 10, rate=0.0)
    with pytest.raises(ValueError, match="unknown estimator"):
        simulate_training(b, S.FixedKL(1.0), 10, estimator="k9")
