"""Tests of kltutor.toys.distributions: mixture, Gaussian fits, categoricals, the tabular AR model."""

import math

import pytest
import torch

from kltutor.divergences import kl
from kltutor.toys.distributions import (
    GaussianMixture,
    TabularAutoregressive,
    expected_token_kls,
    fit_gaussian,
    full_vocab_kl_sum,
    random_categorical,
    sampled_log_ratio_sum,
    sequence_kl,
)


def test_mixture_density_and_moments():
    mix = GaussianMixture([0.3, 0.7], [-2.0, 1.0], [0.5, 1.5])
    x = torch.linspace(-15, 15, 100_001, dtype=torch.float64)
    dens = mix.log_prob(x).exp()
    assert torch.trapezoid(dens, x).item() == pytest.approx(1.0, abs=1e-10)
    assert torch.trapezoid(x * dens, x).item() == pytest.approx(mix.mean(), abs=1e-10)
    assert torch.trapezoid((x - mix.mean()) ** 2 * dens, x).item() == pytest.approx(mix.variance(), abs=1e-9)
    s = mix.sample(200_000, torch.Generator().manual_seed(0))
    se = math.sqrt(mix.variance() / len(s))
    assert abs(s.mean().item() - mix.mean()) < 5 * se


def test_forward_fit_matches_moment_matching():
    mix = GaussianMixture([0.5, 0.5], [-2.0, 2.0], [1.0, 1.0])
    grid = torch.linspace(-10, 10, 801, dtype=torch.float64)
    fit = fit_gaussian(mix, "forward", init=(1.0, 1.0), steps=300, lr=0.05, grid=grid)
    assert fit.mu == pytest.approx(mix.mean(), abs=1e-3)
    assert fit.sigma == pytest.approx(math.sqrt(mix.variance()), abs=1e-3)


def test_reverse_fit_seeks_a_mode_when_modes_are_far():
    mix = GaussianMixture([0.5, 0.5], [-4.0, 4.0], [1.0, 1.0])
    grid = torch.linspace(-12, 12, 961, dtype=torch.float64)
    fit = fit_gaussian(mix, "reverse", init=(3.0, 1.0), steps=200, lr=0.05, grid=grid)
    assert fit.mu == pytest.approx(4.0, abs=0.05) and fit.sigma == pytest.approx(1.0, abs=0.05)
    # q sitting on one mode: KL(q||p) -> log 2 as the modes separate
    assert fit.kl == pytest.approx(math.log(2), abs=1e-3)


def test_random_categorical_seeded_and_valid():
    a = random_categorical(4, 6, seed=7)
    assert torch.equal(a, random_categorical(4, 6, seed=7))
    assert not torch.equal(a, random_categorical(4, 6, seed=8))
    assert torch.allclose(a.sum(-1), torch.ones(4, dtype=torch.float64)) and (a >= 0).all()
    with pytest.raises(ValueError):
        random_categorical(0, 3)
    with pytest.raises(ValueError):
        random_categorical(2, 3, concentration=-1.0)


def test_tabular_model_normalised_and_chain_rule():
    ref = TabularAutoregressive.random(3, 4, seed=0)
    pol = ref.perturbed(0.8, seed=1)
    assert pol.sequence_probs().sum().item() == pytest.approx(1.0, abs=1e-12)
    # sequence KL by enumeration equals kl() on the flattened sequence distribution ...
    assert sequence_kl(pol, ref) == pytest.approx(kl(pol.sequence_probs(), ref.sequence_probs()).item(), abs=1e-12)
    # ... and equals the sum over positions of the expected full-vocabulary token KL (chain rule)
    assert expected_token_kls(pol, ref).sum().item() == pytest.approx(sequence_kl(pol, ref), abs=1e-12)
    assert sequence_kl(ref, ref) == pytest.approx(0.0, abs=1e-15)


def test_tabular_conditionals_by_hand():
    logits = [torch.tensor([0.0, math.log(3.0)]), torch.tensor([[0.0, 0.0], [math.log(4.0), 0.0]])]
    m = TabularAutoregressive(logits)
    seqs = m.all_sequences()
    assert seqs.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    expected = torch.tensor([0.25 * 0.5, 0.25 * 0.5, 0.75 * 0.8, 0.75 * 0.2], dtype=torch.float64)
    assert torch.allclose(m.sequence_probs(), expected)


def test_both_estimators_unbiased_and_sample_frequencies():
    ref = TabularAutoregressive.random(3, 3, seed=2)
    pol = ref.perturbed(1.0, seed=3)
    n = 40_000
    s = pol.sample(n, torch.Generator().manual_seed(0))
    exact = sequence_kl(pol, ref)
    for est in (sampled_log_ratio_sum(pol, ref, s).sum(-1), full_vocab_kl_sum(pol, ref, s).sum(-1)):
        se = est.std().item() / math.sqrt(n)
        assert abs(est.mean().item() - exact) < 5 * se
    # exact variance ordering (Rao-Blackwell): full-vocab sum has lower variance
    seqs, w = pol.all_sequences(), pol.sequence_probs()
    a = sampled_log_ratio_sum(pol, ref, seqs).sum(-1)
    b = full_vocab_kl_sum(pol, ref, seqs).sum(-1)
    var = lambda v: (w * (v - (w * v).sum()) ** 2).sum().item()  # noqa: E731
    assert var(b) < var(a)
    # ... which is not a theorem for the sum: a 2x2 toy where the full-vocab sum is noisier
    cref = TabularAutoregressive.random(2, 2, seed=272, scale=2.0)
    cpol = TabularAutoregressive.random(2, 2, seed=1272, scale=2.0)
    seqs2, w2 = cpol.all_sequences(), cpol.sequence_probs()
    a2 = sampled_log_ratio_sum(cpol, cref, seqs2).sum(-1)
    b2 = full_vocab_kl_sum(cpol, cref, seqs2).sum(-1)
    assert (w2 * a2).sum().item() == pytest.approx((w2 * b2).sum().item(), abs=1e-12)
    var2 = lambda v: (w2 * (v - (w2 * v).sum()) ** 2).sum().item()  # noqa: E731
    assert var2(b2) > 2 * var2(a2)
    # empirical frequency of the first token matches its probability
    p0 = pol.log_tables[0].exp()
    freq = torch.bincount(s[:, 0], minlength=3).double() / n
    assert torch.all((freq - p0).abs() < 5 * torch.sqrt(p0 * (1 - p0) / n))


def test_bad_input():
    with pytest.raises(ValueError):
        GaussianMixture([0.5, 0.6], [0, 1], [1, 1])
    with pytest.raises(ValueError):
        GaussianMixture([0.5, 0.5], [0, 1], [1, 0])
    with pytest.raises(ValueError):
        fit_gaussian(GaussianMixture([1.0], [0.0], [1.0]), "sideways")
    with pytest.raises(ValueError):
        TabularAutoregressive([torch.zeros(2), torch.zeros(3, 2)])
    m = TabularAutoregressive.random(2, 3, seed=0)
    with pytest.raises(ValueError):
        m.log_prob(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError):
        m.log_prob(torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError):
        sequence_kl(m, TabularAutoregressive.random(3, 3, seed=0))
