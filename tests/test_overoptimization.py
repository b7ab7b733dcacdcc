"""kltutor.overoptimization: exact best-of-n, the Gao et al. forms and the synthetic world."""

import math

import pytest
import torch

from kltutor import overoptimization as oo


def test_best_of_n_two_outcomes_by_hand():
    # P(best) = 1 - (1/2)^2 = 3/4, P(worst) = 1/4
    pi = oo.best_of_n_policy([0.5, 0.5], [0.0, 1.0], 2)
    assert torch.allclose(pi, torch.tensor([0.25, 0.75], dtype=torch.float64))
    exact = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert oo.best_of_n_kl([0.5, 0.5], [0.0, 1.0], 2) == pytest.approx(exact, abs=1e-15)
    assert oo.best_of_n_kl_formula(2) == pytest.approx(math.log(2) - 0.5)
    assert exact < oo.best_of_n_kl_formula(2)


def test_best_of_n_ties():
    # all rewards equal: best-of-n is the base policy, KL = 0, whatever n
    assert oo.best_of_n_kl([0.2, 0.3, 0.5], [1.0, 1.0, 1.0], 16) == 0.0
    # a tie at the top shared by two responses of mass 1/4 each: the pair gets 1 - (1/2)^2
    pi = oo.best_of_n_policy([0.25, 0.25, 0.5], [1.0, 1.0, 0.0], 2)
    assert torch.allclose(pi, torch.tensor([0.375, 0.375, 0.25], dtype=torch.float64))
    pi_idx = oo.best_of_n_policy([0.25, 0.25, 0.5], [1.0, 1.0, 0.0], 2, tie_break="index")
    assert torch.allclose(pi_idx, torch.tensor([0.3125, 0.4375, 0.25], dtype=torch.float64))


def test_best_of_n_uniform_approaches_formula_and_stays_below():
    # many distinct equally likely outcomes approximate a continuous reward
    k = 20000
    p = torch.full((k,), 1.0 / k, dtype=torch.float64)
    r = torch.arange(k, dtype=torch.float64)
    for n in (2, 4, 16):
        exact = oo.best_of_n_kl(p, r, n)
        assert exact < oo.best_of_n_kl_formula(n)
        assert exact == pytest.approx(oo.best_of_n_kl_formula(n), abs=2e-3)


def test_best_of_n_capped_by_best_response():
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    r = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    kl = oo.best_of_n_kl(p, r, 10_000)
    assert kl == pytest.approx(-math.log(0.1), rel=1e-6)
    assert oo.best_of_n_kl_formula(10_000) > 8.0


def test_best_of_n_bad_input():
    with pytest.raises(ValueError):
        oo.best_of_n_policy([0.5, 0.6], [0, 1], 2)
    with pytest.raises(ValueError):
        oo.best_of_n_policy([0.5, 0.5], [0, 1, 2], 2)
    with pytest.raises(ValueError):
        oo.best_of_n_policy([0.5, 0.5], [0, float("nan")], 2)
    with pytest.raises(ValueError):
        oo.best_of_n_policy([0.5, 0.5], [0, 1], 0)
    with pytest.raises(ValueError):
        oo.best_of_n_policy([0.5, 0.5], [0, 1], 2, tie_break="coin")


def test_tilted_policy_and_divergences():
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    pi = oo.tilted_policy(p, [0.0, math.log(3.0)], 1.0)
    assert torch.allclose(pi, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert oo.chi2_divergence(pi, p) == pytest.approx(0.25**2 / 0.5 + 0.75**2 / 0.5 - 1)
    assert oo.kl_categorical(pi, p) <= math.log1p(oo.chi2_divergence(pi, p))
    with pytest.raises(ValueError):
        oo.tilted_policy(p, [0.0, 1.0], -0.1)
    assert oo.kl_categorical([1.0, 0.0], [0.0, 1.0]) == math.inf


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_recovers_known_parameters(form):
    alpha, beta = 1.3, 0.4
    kl = torch.linspace(0.05, 12.0, 40, dtype=torch.float64)
    clean = oo.gold_form(kl.sqrt(), alpha, beta, form)
    fit = oo.fit_form(kl, clean, form)
    assert fit.alpha == pytest.approx(alpha, abs=1e-10) and fit.beta == pytest.approx(beta, abs=1e-10)
    # with noise of sd 0.02 the coefficients stay within a few standard errors
    g = torch.Generator().manual_seed(0)
    noisy = clean + 0.02 * torch.randn(kl.shape, generator=g, dtype=torch.float64)
    fit = oo.fit_form(kl, noisy, form)
    assert fit.alpha == pytest.approx(alpha, abs=0.03) and fit.beta == pytest.approx(beta, abs=0.02)
    assert fit.rmse == pytest.approx(0.02, rel=0.35)


def test_peaks_and_budget_match_closed_forms():
    assert oo.form_peak(1.0, 0.25, "bon") == pytest.approx({"d": 2.0, "kl": 4.0, "gain": 1.0})
    pk = oo.form_peak(1.0, 0.5, "rl")
    assert pk["d"] == pytest.approx(math.e) and pk["gain"] == pytest.approx(0.5 * math.e)
    # numeric argmax agrees
    grid = torch.linspace(1e-6, 10, 200001, dtype=torch.float64)
    for form, a, b in (("bon", 1.0, 0.25), ("rl", 1.0, 0.5)):
        vals = oo.gold_form(grid, a, b, form)
        assert grid[vals.argmax()].item() == pytest.approx(oo.form_peak(a, b, form)["d"], abs=1e-3)
    for form, a, b in (("bon", 1.0, 0.25), ("rl", 1.0, 0.5)):
        safe = oo.safe_kl_budget(a, b, form, 0.9)
        assert safe["gain"] == pytest.approx(0.9 * safe["peak_gain"], rel=1e-9)
        assert safe["kl"] < safe["peak_kl"]
    assert oo.gold_fraction_at_kl_fraction(0.5, "bon") == pytest.approx(2 * math.sqrt(0.5) - 0.5)
    assert oo.gold_fraction_at_kl_fraction(1.0, "rl") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        oo.form_peak(1.0, -0.1, "bon")
    with pytest.raises(ValueError):
        oo.fit_form([1.0, 2.0], [0.1, 0.2], "cubic")
    with pytest.raises(ValueError):
        oo.fit_form([1.0], [0.1], "bon")


def test_bradley_terry_recovers_weights():
    g = torch.Generator().manual_seed(3)
    w = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    y = (torch.rand(20000, generator=g, dtype=torch.float64) < torch.sigmoid(x @ w)).double()
    w_hat = oo.fit_bradley_terry(x, y, l2=0.0)
    # standard error of each coefficient is about 1/sqrt(N * var) ~ 0.01; allow 5 se
    assert torch.allclose(w_hat, w, atol=0.05)
    with pytest.raises(ValueError):
        oo.fit_bradley_terry(x, y[:-1])


def test_world_shows_overoptimization_and_data_moves_peak():
    world = oo.make_world(4096, 4, 1.0, 1.0, seed=0)
    betas = [float(b) for b in torch.logspace(1, -1.3, 24)]
    peaks = {}
    for n_pairs in (100, 10000):
        proxy = oo.proxy_from_comparisons(world, n_pairs, seed=1)
        rows = oo.tilted_sweep(world, proxy, betas)
        gold = torch.tensor(rows["gold"])
        i = int(gold.argmax())
        assert 0 < i < len(betas) - 1, "gold peaks in the interior: an inverted U"
        assert rows["proxy"][-1] == max(rows["proxy"]), "proxy keeps rising"
        assert rows["gold"][-1] < gold[i] - 0.2
        peaks[n_pairs] = (rows["kl"][i], float(gold[i]))
    assert peaks[10000][1] > peaks[100][1]


def test_natural_gradient_penalty_equals_early_stopping():
    world = oo.make_world(512, 4, 1.0, 1.0, seed=0)
    proxy = oo.proxy_from_comparisons(world, 300, seed=1)
    free = oo.policy_gradient_path(world, proxy, 0.0, lr=0.02, steps=400, natural=True)
    pen = oo.policy_gradient_path(world, proxy, 0.5, lr=0.02, steps=400, natural=True)
    # each penalised iterate is a tilted policy: the same (KL, gold) curve as the free path
    kl_free, gold_free = torch.tensor(free["kl"]), torch.tensor(free["gold"])
    for kl, gold in zip(pen["kl"][::40], pen["gold"][::40]):
        j = int((kl_free - kl).abs().argmin())
        assert abs(kl_free[j] - kl) < 0.02
        assert gold == pytest.approx(float(gold_free[j]), abs=0.02)
    with pytest.raises(ValueError):
        oo.policy_gradient_path(world, proxy, -1.0)


def test_fit_ignores_a_rounding_zero_kl_whatever_its_sign():
    """Best-of-1's KL is 0 only up to rounding (+-1e-17, CPU-dependent): it must not change the fit."""
    alpha, beta = 1.3, 0.4
    kl = torch.linspace(0.05, 6.0, 20, dtype=torch.float64)
    gain = oo.gold_form(kl.sqrt(), alpha, beta, "bon") + 0.01 * torch.cos(7 * kl)  # not an exact fit: rmse > 0
    fits = [
        oo.fit_form(
            torch.cat([torch.tensor([z], dtype=torch.float64), kl]),
            torch.cat([torch.tensor([z0], dtype=torch.float64), gain]),
            "bon",
        )
        for z, z0 in ((0.0, 0.0), (5.6e-17, 1e-17), (-5.6e-17, -2e-17))
    ]
    assert all(f.n_points == 20 for f in fits)
    # the same 20 points; equal to rounding only (MKL's least squares may differ in the last bit
    # with the memory alignment of its input)
    for f in fits[1:]:
        assert (f.alpha, f.beta, f.rmse) == pytest.approx((fits[0].alpha, fits[0].beta, fits[0].rmse), rel=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        oo.fit_form([-1e-3, 1.0, 2.0], [0.0, 0.1, 0.2], "bon")


def test_spread_is_mean_and_sample_sd_without_nans():
    s = oo.spread([1.0, 2.0, 3.0, float("nan")])
    assert (s.mean, s.n) == (2.0, 3) and s.sd == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two finite"):
        oo.spread([1.0, float("nan")])
    with pytest.raises(ValueError, match="infinite"):
        oo.spread([1.0, math.inf])


def test_fits_over_comparison_sets_repeat_the_pipeline_and_shrink_with_data():
    world = oo.make_world(512, 3, 1.0, seed=0)
    ns, betas = [1, 2, 4, 8, 16, 32, 64], [float(b) for b in torch.logspace(1, -1, 12)]
    out = oo.fits_over_comparison_sets(world, 200, [3, 4, 5], ns, betas)
    assert set(out) == {"bon-bon", "bon-rl", "tilted-bon", "tilted-rl", "bon", "tilted", "proxy"}
    # entry k is exactly the single-seed pipeline with seed k
    proxy = oo.proxy_from_comparisons(world, 200, seed=4)
    sweep = oo.tilted_sweep(world, proxy, betas)
    fit = oo.fit_form(sweep["kl"], sweep["gold"], "bon")
    # equal to rounding (least squares in MKL is not bitwise reproducible across memory alignments)
    assert out["tilted-bon"]["alpha"][1] == pytest.approx(fit.alpha, rel=1e-12)
    assert out["tilted-bon"]["rmse"][1] == pytest.approx(fit.rmse, rel=1e-12)
    peak = oo.form_peak(fit.alpha, fit.beta, "bon")["kl"]
    assert out["tilted-bon"]["peak_kl"][1] == pytest.approx(peak)
    k = max(range(len(betas)), key=sweep["gold"].__getitem__)
    assert out["tilted"]["peak_kl"][1] == pytest.approx(sweep["kl"][k], rel=1e-12)
    assert out["tilted"]["peak_gain"][1] == pytest.approx(max(sweep["gold"]), rel=1e-12)
    assert all(-1 <= c <= 1 for c in out["proxy"]["cos_gold"])
    assert all(s < p for s, p in zip(out["tilted-bon"]["safe_kl"], out["tilted-bon"]["peak_kl"]))
    # the spread over comparison sets is the finite-data uncertainty: 50x the data, a smaller spread
    seeds = list(range(8))
    few = oo.spread(oo.fits_over_comparison_sets(world, 100, seeds, betas=betas)["tilted-bon"]["alpha"])
    many = oo.spread(oo.fits_over_comparison_sets(world, 5000, seeds, betas=betas)["tilted-bon"]["alpha"])
    assert many.sd < few.sd / 2
    only_tilted = oo.fits_over_comparison_sets(world, 100, [0, 1], betas=betas)
    assert set(only_tilted) == {"tilted-bon", "tilted-rl", "tilted", "proxy"}
    with pytest.raises(ValueError, match="ns"):
        oo.fits_over_comparison_sets(world, 100, [0, 1])
    with pytest.raises(ValueError, match="distinct seeds"):
        oo.fits_over_comparison_sets(world, 100, [0, 0], betas=betas)
