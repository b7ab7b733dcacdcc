"""kltutor.overoptimization: every returned field pinned by hand, and every parameter off its default
(lambda != 1 in the stopping rule, both tie-break modes, fractions, l2, curvature, natural steps)."""

import math

import pytest
import torch

from kltutor import overoptimization as oo

D = torch.float64


@pytest.mark.parametrize("lam", [0.04, 0.25, 0.5, 2.0])
def test_gold_fraction_at_kl_fraction_away_from_one(lam):
    s = math.sqrt(lam)
    assert oo.gold_fraction_at_kl_fraction(lam, "bon") == pytest.approx(2 * s - lam, abs=1e-15)
    assert oo.gold_fraction_at_kl_fraction(lam, "rl") == pytest.approx(s * (1 - 0.5 * math.log(lam)), abs=1e-15)
    # the same fraction from the forms themselves, for an arbitrary (alpha, beta)
    for form, a, b in (("bon", 1.7, 0.3), ("rl", 0.9, 0.4)):
        pk = oo.form_peak(a, b, form)
        frac = float(oo.gold_form(math.sqrt(lam * pk["kl"]), a, b, form)) / pk["gain"]
        assert oo.gold_fraction_at_kl_fraction(lam, form) == pytest.approx(frac, rel=1e-12)


def test_gold_fraction_values_and_tensor_input():
    assert oo.gold_fraction_at_kl_fraction(0.25, "rl") == pytest.approx(0.5 * (1 + math.log(2)), abs=1e-15)
    assert oo.gold_fraction_at_kl_fraction(0.25, "bon") == 0.75
    out = oo.gold_fraction_at_kl_fraction(torch.tensor([0.25, 1.0], dtype=D), "rl")
    assert isinstance(out, torch.Tensor) and out.tolist() == pytest.approx([0.5 * (1 + math.log(2)), 1.0])
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="kl_fraction"):
            oo.gold_fraction_at_kl_fraction(bad, "rl")


def test_gold_form_values():
    d = torch.tensor([0.0, 0.5, 2.0], dtype=D)
    assert oo.gold_form(d, 1.0, 0.2, "bon").tolist() == pytest.approx([0.0, 0.5 * 0.9, 2.0 * 0.6])
    assert oo.gold_form(d, 1.0, 0.2, "rl").tolist() == pytest.approx(
        [0.0, 0.5 * (1 - 0.2 * math.log(0.5)), 2.0 * (1 - 0.2 * math.log(2.0))]
    )
    assert float(oo.gold_form(0.0, 1.0, 0.2, "rl")) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        oo.gold_form(-0.1, 1.0, 0.2, "bon")
    with pytest.raises(ValueError, match="unknown form"):
        oo.gold_form(0.1, 1.0, 0.2, "ppo")


def test_fit_form_fields_drop_zero_kl_and_rmse_by_hand():
    kl = [0.0, 1.0, 4.0, 9.0]
    # exact bon data with alpha = 2, beta = 0.5 except one point off by +0.3 at d = 2
    y = [0.0, 1.5, 2.0 + 0.3, 1.5]
    fit = oo.fit_form(kl, y, "bon")
    assert fit.form == "bon" and fit.n_points == 3  # the KL = 0 point is dropped
    # least squares by hand: design rows (d, -d^2) for d = 1, 2, 3
    X = torch.tensor([[1.0, -1.0], [2.0, -4.0], [3.0, -9.0]], dtype=D)
    yy = torch.tensor(y[1:], dtype=D)
    coef = torch.linalg.solve(X.T @ X, X.T @ yy)
    res = yy - X @ coef
    assert (fit.alpha, fit.beta) == pytest.approx(tuple(coef.tolist()), abs=1e-12)
    assert fit.rmse == pytest.approx(math.sqrt(float(res.square().mean())), abs=1e-12)
    assert float(fit(2.0)) == pytest.approx(2 * (fit.alpha - 2 * fit.beta), abs=1e-12)
    rl = oo.fit_form([1.0, 4.0, 9.0], [1.0, 2 * (1 - 0.1 * math.log(2)), 3 * (1 - 0.1 * math.log(3))], "rl")
    assert (rl.alpha, rl.beta, rl.rmse) == pytest.approx((1.0, 0.1, 0.0), abs=1e-12)
    with pytest.raises(ValueError, match="same length"):
        oo.fit_form([1.0, 2.0], [1.0], "bon")
    with pytest.raises(ValueError, match="non-negative"):
        oo.fit_form([1.0, -2.0], [1.0, 1.0], "bon")
    with pytest.raises(ValueError, match="finite"):
        oo.fit_form([1.0, float("nan")], [1.0, 1.0], "bon")
    with pytest.raises(ValueError, match="at least two points"):
        oo.fit_form([0.0, 0.0, 1.0], [0.0, 0.0, 1.0], "bon")


def test_form_peak_and_safe_budget_every_field():
    assert oo.form_peak(1.2, 0.3, "bon") == pytest.approx({"d": 2.0, "kl": 4.0, "gain": 1.2})
    d = math.exp(1.2 / 0.4 - 1)
    assert oo.form_peak(1.2, 0.4, "rl") == pytest.approx({"d": d, "kl": d * d, "gain": 0.4 * d})
    bon = oo.safe_kl_budget(1.2, 0.3, "bon", fraction=0.75)
    db = 2.0 * (1 - math.sqrt(0.25))
    assert bon == pytest.approx({"d": db, "kl": db * db, "gain": 0.75 * 1.2, "peak_kl": 4.0, "peak_gain": 1.2})
    assert oo.safe_kl_budget(1.2, 0.3, "bon")["d"] == pytest.approx(2.0 * (1 - math.sqrt(0.1)))  # default 0.9
    rl = oo.safe_kl_budget(1.2, 0.4, "rl", fraction=0.5)
    assert rl["gain"] == pytest.approx(0.5 * 0.4 * d, rel=1e-12) and rl["d"] < d
    assert rl["kl"] == pytest.approx(rl["d"] ** 2) and rl["peak_kl"] == pytest.approx(d * d)
    # the rising side: a smaller d gives less than the target
    assert float(oo.gold_form(rl["d"] * (1 - 1e-6), 1.2, 0.4, "rl")) < 0.5 * 0.4 * d
    full = oo.safe_kl_budget(1.2, 0.3, "bon", fraction=1.0)
    assert full["d"] == pytest.approx(2.0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            oo.safe_kl_budget(1.2, 0.3, "bon", fraction=bad)
    with pytest.raises(ValueError, match="alpha > 0"):
        oo.form_peak(-1.0, 0.3, "bon")
    with pytest.raises(ValueError, match="finite"):
        oo.form_peak(float("nan"), 0.3, "rl")
    with pytest.raises(ValueError, match="beta > 0"):
        oo.form_peak(1.0, 0.0, "rl")


def test_best_of_n_both_tie_breaks_by_hand():
    p, r = [0.5, 0.25, 0.25], [0.0, 1.0, 1.0]
    # random: the tied pair is one class of mass 1/2: P = 1 - 1/4, split by base mass
    rand = oo.best_of_n_policy(p, r, 2)
    assert rand.tolist() == pytest.approx([0.25, 0.375, 0.375], abs=1e-15)
    assert oo.best_of_n_kl(p, r, 2) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-15)
    # index: classes 0 < 1 < 2 with F = 1/2, 3/4, 1: P = 1/4, 9/16 - 1/4, 1 - 9/16
    idx = oo.best_of_n_policy(p, r, 2, tie_break="index")
    assert idx.tolist() == pytest.approx([0.25, 0.3125, 0.4375], abs=1e-15)
    want = 0.25 * math.log(0.5) + 0.3125 * math.log(1.25) + 0.4375 * math.log(1.75)
    assert oo.best_of_n_kl(p, r, 2, tie_break="index") == pytest.approx(want, abs=1e-15)
    # n = 3, unsorted rewards with a zero-probability response
    p3, r3 = [0.0, 0.6, 0.4], [5.0, 1.0, 2.0]
    pi = oo.best_of_n_policy(p3, r3, 3)
    assert pi.tolist() == pytest.approx([0.0, 0.216, 1 - 0.216], abs=1e-15)
    assert oo.best_of_n_policy(p3, r3, 1).tolist() == pytest.approx(p3, abs=1e-15)
    with pytest.raises(ValueError, match="positive integer"):
        oo.best_of_n_policy(p, r, True)


def test_best_of_n_kl_formula_scalar_and_tensor():
    assert oo.best_of_n_kl_formula(1) == 0.0
    assert oo.best_of_n_kl_formula(4) == pytest.approx(math.log(4) - 0.75)
    assert oo.best_of_n_kl_formula(2.5) == pytest.approx(math.log(2.5) - 1.5 / 2.5)
    t = oo.best_of_n_kl_formula(torch.tensor([1, 2, 8]))
    assert t.dtype == D and t.tolist() == pytest.approx([0.0, math.log(2) - 0.5, math.log(8) - 7 / 8])
    for bad in (0, 0.5, True, "3"):
        with pytest.raises(ValueError, match="n must be"):
            oo.best_of_n_kl_formula(bad)
    with pytest.raises(ValueError, match="n must be"):
        oo.best_of_n_kl_formula(torch.tensor([2, 0]))


def test_divergence_helpers_by_hand():
    assert oo.kl_categorical([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert oo.kl_categorical([0.3, 0.7], [0.3, 0.7]) == 0.0
    assert oo.chi2_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 / 0.25 + 0.25 / 0.75 - 1)
    pi = oo.tilted_policy([0.0, 0.5, 0.5], [9.0, 0.0, 1.0], 0.5)
    assert pi.tolist() == pytest.approx([0.0, 1 / (1 + math.e**2), math.e**2 / (1 + math.e**2)])
    with pytest.raises(ValueError, match="same shape"):
        oo.kl_categorical([1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        oo.chi2_divergence([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(ValueError, match="length 2"):
        oo.tilted_policy([0.5, 0.5], [1.0], 1.0)


def small_world():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=D)
    w = torch.tensor([0.6, 0.8], dtype=D)
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    gold = f @ w - 0.5 * 0.4 * f.square().sum(1)
    return oo.World(ref, f, gold, w, 0.4)


def test_make_world_fields():
    w = oo.make_world(n_responses=50, n_features=3, curvature=0.7, ref_logit_scale=0.5, seed=4)
    assert w.features.shape == (50, 3) and w.curvature == 0.7
    assert float(w.gold_weights.norm()) == pytest.approx(1.0)
    assert torch.allclose(w.gold, w.features @ w.gold_weights - 0.35 * w.features.square().sum(1))
    assert float(w.ref_probs.sum()) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(4)
    torch.randn(50, 3, generator=g, dtype=D)
    torch.randn(3, generator=g, dtype=D)
    assert torch.allclose(w.ref_probs, torch.softmax(0.5 * torch.randn(50, generator=g, dtype=D), 0))
    with pytest.raises(ValueError, match="non-negative"):
        oo.make_world(10, 2, curvature=-1.0)


def test_sweeps_every_field_by_hand():
    world = small_world()
    proxy = torch.tensor([0.0, 1.0, 2.0], dtype=D)
    base_g = float((world.ref_probs * world.gold).sum())
    bon = oo.best_of_n_sweep(world, proxy, [1, 2])
    pi2 = torch.tensor([0.25, 0.64 - 0.25, 1 - 0.64], dtype=D)  # F = 0.5, 0.8, 1 in proxy order
    assert bon["n"] == [1, 2]
    assert bon["kl"] == pytest.approx([0.0, oo.kl_categorical(pi2, world.ref_probs)], abs=1e-15)
    assert bon["kl_formula"] == pytest.approx([0.0, math.log(2) - 0.5])
    assert bon["proxy"] == pytest.approx([0.0, float((pi2 - world.ref_probs) @ proxy)], abs=1e-15)
    assert bon["gold"] == pytest.approx([0.0, float(pi2 @ world.gold) - base_g], abs=1e-15)
    tilt = oo.tilted_sweep(world, proxy, [0.5])
    pi = torch.softmax(world.ref_probs.log() + proxy / 0.5, 0)
    assert set(tilt) == {"beta", "kl", "proxy", "gold"} and tilt["beta"] == [0.5]
    assert tilt["kl"] == pytest.approx([oo.kl_categorical(pi, world.ref_probs)], abs=1e-15)
    assert tilt["proxy"] == pytest.approx([float((pi - world.ref_probs) @ proxy)], abs=1e-15)
    assert tilt["gold"] == pytest.approx([float(pi @ world.gold) - base_g], abs=1e-15)


@pytest.mark.parametrize("natural", [False, True])
def test_policy_gradient_path_two_steps_by_hand(natural):
    world = small_world()
    proxy = torch.tensor([0.0, 1.0, 2.0], dtype=D)
    path = oo.policy_gradient_path(world, proxy, kl_coef=0.3, lr=0.5, steps=2, natural=natural)
    ref_logp = world.ref_probs.log()
    logits = ref_logp.clone()
    assert path["step"] == [1, 2]
    for t in range(2):
        logp = torch.log_softmax(logits, 0)
        pi = logp.exp()
        adv = proxy - 0.3 * (logp - ref_logp)
        logits = logp + 0.5 * adv if natural else logits + 0.5 * pi * (adv - (pi * adv).sum())
        pi = torch.softmax(logits, 0)
        assert path["kl"][t] == pytest.approx(oo.kl_categorical(pi, world.ref_probs), abs=1e-15)
        assert path["proxy"][t] == pytest.approx(float((pi - world.ref_probs) @ proxy), abs=1e-15)
        assert path["gold"][t] == pytest.approx(float((pi - world.ref_probs) @ world.gold), abs=1e-15)
    with pytest.raises(ValueError, match="kl_coef"):
        oo.policy_gradient_path(world, proxy, kl_coef=-0.1)
    with pytest.raises(ValueError, match="lr"):
        oo.policy_gradient_path(world, proxy, lr=0.0)


def test_sample_comparisons_and_bradley_terry_fit():
    world = small_world()
    first, second, wins = oo.sample_comparisons(world, 6, seed=2)
    g = torch.Generator().manual_seed(2)
    f = torch.multinomial(world.ref_probs, 6, replacement=True, generator=g)
    s = torch.multinomial(world.ref_probs, 6, replacement=True, generator=g)
    u = torch.rand(6, generator=g, dtype=D)
    assert first.tolist() == f.tolist() and second.tolist() == s.tolist()
    assert wins.tolist() == (u < torch.sigmoid(world.gold[f] - world.gold[s])).double().tolist()
    # the ridge fit solves mean_i (sigma(x_i w) - y_i) x_i + l2 w = 0
    x = torch.tensor([[1.0, 0.5], [-0.3, 1.0], [0.7, -0.2], [0.1, 0.1]], dtype=D)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=D)
    w = oo.fit_bradley_terry(x, y, l2=0.05)
    grad = x.T @ (torch.sigmoid(x @ w) - y) / 4 + 0.05 * w
    assert grad.abs().max() < 1e-12
    w0 = oo.fit_bradley_terry(x, y)  # default l2 = 1e-3: a different, larger solution
    assert (x.T @ (torch.sigmoid(x @ w0) - y) / 4 + 1e-3 * w0).abs().max() < 1e-12
    assert w0.norm() > w.norm()
    proxy = oo.proxy_from_comparisons(world, 200, seed=1, l2=0.05)
    a, b, lab = oo.sample_comparisons(world, 200, seed=1)
    assert torch.allclose(
        proxy, world.features @ oo.fit_bradley_terry(world.features[a] - world.features[b], lab, 0.05)
    )
    with pytest.raises(ValueError, match="0/1"):
        oo.fit_bradley_terry(x, torch.tensor([0.5, 0.0, 1.0, 1.0], dtype=D))
    with pytest.raises(ValueError, match="l2"):
        oo.fit_bradley_terry(x, y, l2=-1.0)
    with pytest.raises(ValueError, match="n_pairs"):
        oo.sample_comparisons(world, 0)


def test_probability_and_reward_arguments_are_checked_and_named():
    calls = [
        ("p", lambda x: oo.kl_categorical(x, [0.5, 0.5])),
        ("q", lambda x: oo.kl_categorical([0.5, 0.5], x)),
        ("p", lambda x: oo.chi2_divergence(x, [0.5, 0.5])),
        ("q", lambda x: oo.chi2_divergence([0.5, 0.5], x)),
        ("ref_probs", lambda x: oo.best_of_n_policy(x, [0.0, 1.0], 2)),
        ("ref_probs", lambda x: oo.tilted_policy(x, [0.0, 1.0], 1.0)),
    ]
    for name, call in calls:
        call([0.25, 0.75])  # valid
        with pytest.raises(ValueError, match=f"^{name} must sum to 1"):
            call([0.5, 0.6])
        with pytest.raises(ValueError, match=f"^{name} must hold finite"):
            call([float("nan"), 1.0])
        with pytest.raises(ValueError, match=f"^{name} must be a non-empty 1-D"):
            call([[0.5, 0.5]])
    for bad in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="beta"):
            oo.tilted_policy([0.5, 0.5], [0.0, 1.0], bad)
    # float32 rewards are used in float64
    r32 = torch.tensor([0.1, 0.7, 0.3])
    ref = [0.5, 0.3, 0.2]
    assert oo.tilted_policy(ref, r32, 0.3).tolist() == pytest.approx(
        oo.tilted_policy(ref, r32.double(), 0.3).tolist(), abs=1e-16
    )
    # integer rewards; F = 0.5, 0.7, 1 in reward order (responses 0, 2, 1)
    assert oo.best_of_n_policy(ref, [1, 3, 2], 2).tolist() == pytest.approx([0.25, 1 - 0.49, 0.49 - 0.25], abs=1e-15)


def test_fit_form_and_peak_boundaries():
    two = oo.fit_form([1.0, 4.0], [1.5, 2.0], "bon")  # exactly two points: an exact fit
    assert two.n_points == 2 and (two.alpha, two.beta) == pytest.approx((2.0, 0.5), abs=1e-12) and two.rmse < 1e-12
    with pytest.raises(ValueError, match="alpha > 0"):
        oo.form_peak(0.0, 0.3, "bon")
    assert oo.form_peak(0.0, 0.5, "rl")["d"] == pytest.approx(math.exp(-1))  # the rl form peaks for any alpha
    small = oo.safe_kl_budget(1.2, 0.4, "rl", fraction=0.05)  # the budget lies below d = 1
    assert small["d"] < 1 and small["gain"] == pytest.approx(0.05 * small["peak_gain"], rel=1e-9)
    out = oo.gold_fraction_at_kl_fraction(0.25, "bon")
    assert isinstance(out, float) and out == 0.75


def test_world_and_paths_defaults():
    w = oo.make_world()
    explicit = oo.make_world(n_responses=4096, n_features=8, curvature=0.5, ref_logit_scale=1.0, seed=0)
    assert torch.equal(w.features, explicit.features) and torch.equal(w.ref_probs, explicit.ref_probs)
    assert torch.equal(w.gold, explicit.gold) and w.curvature == 0.5
    tiny = oo.make_world(n_responses=2, n_features=1, curvature=0.0, ref_logit_scale=0.0, seed=3)
    assert tiny.ref_probs.tolist() == [0.5, 0.5] and torch.allclose(tiny.gold, tiny.features @ tiny.gold_weights)
    for bad in (dict(n_responses=1), dict(n_features=0), dict(ref_logit_scale=-1.0)):
        with pytest.raises(ValueError):
            oo.make_world(**bad)
    world = small_world()
    proxy = torch.tensor([0.0, 1.0, 2.0], dtype=D)
    path = oo.policy_gradient_path(world, proxy)
    same = oo.policy_gradient_path(world, proxy, kl_coef=0.0, lr=1.0, steps=300, natural=False)
    assert path == same and len(path["step"]) == 300
    assert oo.policy_gradient_path(world, proxy, steps=1)["step"] == [1]
    big = oo.make_world(n_responses=64, n_features=3, seed=2)
    a = oo.proxy_from_comparisons(big, 50)
    assert torch.equal(a, oo.proxy_from_comparisons(big, 50, seed=0, l2=1e-3))
    f0, s0, w0 = oo.sample_comparisons(big, 1)  # one pair is enough; default seed 0
    f1, s1, w1 = oo.sample_comparisons(big, 1, seed=0)
    assert (f0.tolist(), s0.tolist(), w0.tolist()) == (f1.tolist(), s1.tolist(), w1.tolist())
    assert w0.dtype == D


def test_fit_bradley_terry_input_dtypes():
    x = torch.tensor([[1.0, 0.5], [-0.3, 1.0], [0.7, -0.2], [0.1, 0.1]])
    y = [1, 0, 1, 1]
    w32 = oo.fit_bradley_terry(x, y, l2=0.05)
    w64 = oo.fit_bradley_terry(x.double(), torch.tensor(y, dtype=D), l2=0.05)
    assert w32.dtype == D and torch.equal(w32, w64)
    with pytest.raises(ValueError, match=r"feature_diff must be \[N, D\]"):
        oo.fit_bradley_terry(x[0], y)


def test_float32_probabilities_are_used_in_float64():
    p32, q32 = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])  # exact in float32
    want = sum(a * math.log(a / b) for a, b in zip(p32.double().tolist(), q32.double().tolist()))
    assert oo.kl_categorical(p32, q32) == pytest.approx(want, abs=1e-15)


def test_rl_peak_beyond_the_float_range_is_a_value_error():
    """The rl form peaks at KL* = exp(2 (alpha / beta - 1)): a fit with alpha / beta in the hundreds
    (a nearly linear sweep) puts it beyond float64, which is reported as "no usable peak" (ValueError,
    what callers such as fits_over_comparison_sets catch), not as an OverflowError or an infinite KL."""
    big = oo.form_peak(1.0, 1.0 / 300, "rl")  # KL* = e^598 < 1.8e308: still a number
    assert big["kl"] == pytest.approx(math.exp(598), rel=1e-12) and big["d"] == pytest.approx(math.exp(299), rel=1e-12)
    for alpha, beta in ((1.0, 1.0 / 400), (1.0, 1.0 / 800)):  # KL* = e^798 (d finite), d* = e^799 (exp overflows)
        with pytest.raises(ValueError, match="float range"):
            oo.form_peak(alpha, beta, "rl")
        with pytest.raises(ValueError, match="float range"):
            oo.safe_kl_budget(alpha, beta, "rl")


def test_fit_form_zero_kl_threshold_on_both_sides():
    """KL <= 1e-12 is a rounding zero, dropped (1e-12 itself included); KL >= -1e-12 is accepted
    (-1e-12 itself included), anything more negative refused."""
    kl = [-1e-12, 1e-12, 2e-12, 1.0, 4.0]
    gain = [float(oo.gold_form(math.sqrt(k), 2.0, 0.5, "bon")) if k > 0 else 0.0 for k in kl]
    fit = oo.fit_form(kl, gain, "bon")
    assert fit.n_points == 3  # 2e-12, 1 and 4 kept
    assert (fit.alpha, fit.beta) == pytest.approx((2.0, 0.5), abs=1e-9) and fit.rmse < 1e-12
    with pytest.raises(ValueError, match="non-negative"):
        oo.fit_form([-1.1e-12, 1.0, 4.0], [0.0, 1.5, 2.0], "bon")


def test_spread_in_float64_with_two_values_and_ddof_one():
    # mean and sd by hand: sd = sqrt(sum (x - mean)^2 / (n - 1))
    s = oo.spread([0.1, 0.2, 0.4])
    m = (0.1 + 0.2 + 0.4) / 3
    assert s.mean == pytest.approx(m, rel=1e-15)
    assert s.sd == pytest.approx(math.sqrt(((0.1 - m) ** 2 + (0.2 - m) ** 2 + (0.4 - m) ** 2) / 2), rel=1e-14)
    two = oo.spread([1.0, float("nan"), 3.0])  # two finite values are enough
    assert (two.mean, two.n) == (2.0, 2) and two.sd == pytest.approx(math.sqrt(2.0), rel=1e-15)


def test_fits_over_comparison_sets_every_field_by_hand():
    """Seed by seed, every field is the single-seed pipeline's (proxy -> sweep -> fit_form ->
    safe_kl_budget at the given fraction); a fit without a peak gives nan; fraction's range is (0, 1]."""
    world = oo.make_world(64, 2, 0.0, seed=0)
    ns, betas, seeds = [1, 2, 4, 8], [4.0, 2.0, 1.0], [0, 1]
    out = oo.fits_over_comparison_sets(world, 50, seeds, ns, betas, fraction=0.5)
    nans = 0
    for i, seed in enumerate(seeds):
        proxy = oo.proxy_from_comparisons(world, 50, seed=seed)
        first, second, wins = oo.sample_comparisons(world, 50, seed)
        w = oo.fit_bradley_terry(world.features[first] - world.features[second], wins)  # the proxy's weights
        cos = float(w @ world.gold_weights / (w.norm() * world.gold_weights.norm()))
        assert out["proxy"]["cos_gold"][i] == pytest.approx(cos, rel=1e-9)
        for key, rows in (
            ("bon", oo.best_of_n_sweep(world, proxy, ns)),
            ("tilted", oo.tilted_sweep(world, proxy, betas)),
        ):
            k = max(range(len(rows["gold"])), key=rows["gold"].__getitem__)
            assert out[key]["peak_kl"][i] == pytest.approx(rows["kl"][k], rel=1e-12)
            assert out[key]["peak_gain"][i] == pytest.approx(rows["gold"][k], rel=1e-12)
            for form in oo.FORMS:
                fit, got = oo.fit_form(rows["kl"], rows["gold"], form), out[f"{key}-{form}"]
                assert (got["alpha"][i], got["beta"][i], got["rmse"][i]) == pytest.approx(
                    (fit.alpha, fit.beta, fit.rmse), rel=1e-9
                )
                try:
                    want = oo.safe_kl_budget(fit.alpha, fit.beta, form, 0.5)
                except ValueError:
                    assert math.isnan(got["peak_kl"][i]) and math.isnan(got["safe_kl"][i])
                    nans += 1
                    continue
                assert got["peak_kl"][i] == pytest.approx(want["peak_kl"], rel=1e-9)
                assert got["safe_kl"][i] == pytest.approx(want["kl"], rel=1e-9)
                if form == "bon":  # d = d* (1 - sqrt(1 - fraction)): KL = KL* (1 - sqrt(1/2))^2
                    assert got["safe_kl"][i] == pytest.approx(got["peak_kl"][i] * (1 - math.sqrt(0.5)) ** 2, rel=1e-9)
    # seed 0's best-of-n sweep still rises at n = 8 (fitted beta < 0: no peak), and its tilted sweep is
    # so nearly linear that the rl form's peak lies beyond float64 (alpha / beta > 356)
    assert out["bon-bon"]["beta"][0] < -0.01 and math.isnan(out["bon-bon"]["peak_kl"][0])
    assert out["tilted-rl"]["alpha"][0] / out["tilted-rl"]["beta"][0] > 500 and math.isnan(
        out["tilted-rl"]["safe_kl"][0]
    )
    assert nans >= 2
    # fraction = 1: the budget is the peak itself
    full = oo.fits_over_comparison_sets(world, 50, seeds, betas=betas, fraction=1.0)
    assert full["tilted-bon"]["safe_kl"] == pytest.approx(full["tilted-bon"]["peak_kl"], rel=1e-9)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            oo.fits_over_comparison_sets(world, 50, seeds, betas=betas, fraction=bad)
