"""kltutor.gradients: each placement's per-sample gradient against the table of the module docstring
(the one chapter 3 prints with ``inspect.getsource(G.per_sample_surrogate)``), computed by hand from the
scores; MCGradient's statistics on fixed numbers; the Monte-Carlo and off-policy helpers against
independent re-computations."""

import math

import pytest
import torch

from kltutor import estimators as est
from kltutor import gradients as G
from kltutor.toys import BinaryAutoregressive

D = torch.float64
PI, REF = (0.3, -0.4), (-0.2, 0.5)
SEQS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=D)


def sig(x):
    return 1 / (1 + math.exp(-x))


def by_hand(seq):
    """Per-token (log-ratio, score (d/da, d/db)) of one sequence, from the model's definition."""
    out, c = [], 0.0
    for y in seq:
        p, q = sig(PI[0] + PI[1] * c), sig(REF[0] + REF[1] * c)
        lp = math.log(p if y else 1 - p)
        lq = math.log(q if y else 1 - q)
        out.append((lp - lq, ((y - p), (y - p) * c)))
        c += y
    return out


K = {"k1": lambda x: x, "k2": lambda x: 0.5 * x * x, "k3": lambda x: math.expm1(-x) + x}
DK = {"k1": lambda x: 1.0, "k2": lambda x: x, "k3": lambda x: -math.expm1(-x)}


def table(placement, level, reward_form, seq):
    """The module docstring's table: sum over tokens of psi_t * g_t."""
    est, where = placement.split("-in-")
    toks = by_hand(seq)
    ells = [t[0] for t in toks]
    L = sum(ells)
    psi = []
    for i in range(len(toks)):
        if where == "loss":
            psi.append(DK[est](ells[i]) if level == "token" else DK[est](L))
        elif level == "sequence":
            psi.append(K[est](L))
        elif reward_form == "full":
            psi.append(sum(K[est](x) for x in ells))
        else:
            psi.append(sum(K[est](x) for x in ells[i:]))
    return [sum(p * t[1][j] for p, t in zip(psi, toks)) for j in range(2)]


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("reward_form", ["return-to-go", "full"])
def test_per_sample_gradients_and_surrogate_are_the_table(level, reward_form):
    pi, ref = BinaryAutoregressive(*PI), BinaryAutoregressive(*REF)
    for key in G.ESTIMATOR_PLACEMENTS:
        fast = G.per_sample_gradients(pi, ref, SEQS, key, level=level, reward_form=reward_form)
        for i in range(SEQS.shape[0]):
            want = table(key, level, reward_form, SEQS[i].tolist())
            assert fast[i].tolist() == pytest.approx(want, abs=1e-14), (key, i)
            s = G.per_sample_surrogate(pi, ref, SEQS[i : i + 1], key, level, reward_form).sum()
            g = torch.autograd.grad(s, [pi.a, pi.b], allow_unused=True)
            g = [0.0 if x is None else x.item() for x in g]
            assert g == pytest.approx(want, abs=1e-14), (key, i)


def test_per_sample_default_level_and_form():
    pi, ref = BinaryAutoregressive(*PI), BinaryAutoregressive(*REF)
    g = G.per_sample_gradients(pi, ref, SEQS, "k3-in-reward")
    assert g[0].tolist() == pytest.approx(table("k3-in-reward", "token", "return-to-go", SEQS[0].tolist()), abs=1e-14)


def test_exact_gradients_are_probability_weighted_sums_of_the_table():
    pi, ref = BinaryAutoregressive(*PI), BinaryAutoregressive(*REF)
    seqs, probs = pi.enumerate(2)
    for level in ("token", "sequence"):
        ex = G.exact_kl_gradients(pi, ref, 2, level=level, reward_form="full")
        for key in G.ESTIMATOR_PLACEMENTS:
            want = [
                sum(probs[i].item() * table(key, level, "full", seqs[i].tolist())[j] for i in range(4))
                for j in range(2)
            ]
            assert ex[key].tolist() == pytest.approx(want, abs=1e-14), (level, key)
        # the true gradient: sum_y pi(y) L(y) grad log pi(y)
        true = [
            sum(
                probs[i].item()
                * sum(t[0] for t in by_hand(seqs[i].tolist()))
                * sum(t[1][j] for t in by_hand(seqs[i].tolist()))
                for i in range(4)
            )
            for j in range(2)
        ]
        assert ex["true"].tolist() == pytest.approx(true, abs=1e-14)


def test_exact_moments_cov_and_bias_by_hand():
    pi, ref = BinaryAutoregressive(*PI), BinaryAutoregressive(*REF)
    seqs, probs = pi.enumerate(2)
    mom = G.exact_gradient_moments(pi, ref, 2, level="sequence")
    true = G.exact_kl_gradients(pi, ref, 2, level="sequence")["true"]
    for key in G.ESTIMATOR_PLACEMENTS:
        g = [table(key, "sequence", "return-to-go", s.tolist()) for s in seqs]
        mean = [sum(p.item() * x[j] for p, x in zip(probs, g)) for j in range(2)]
        cov = [
            [sum(p.item() * (x[i] - mean[i]) * (x[j] - mean[j]) for p, x in zip(probs, g)) for j in range(2)]
            for i in range(2)
        ]
        assert mom[key]["mean"].tolist() == pytest.approx(mean, abs=1e-14)
        assert mom[key]["cov"].flatten().tolist() == pytest.approx(sum(cov, []), abs=1e-14)
        assert mom[key]["bias"].tolist() == pytest.approx([m - t for m, t in zip(mean, true.tolist())], abs=1e-14)


def test_mc_gradient_statistics_on_fixed_numbers():
    est = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]], dtype=D)
    true = torch.tensor([2.0, 4.0], dtype=D)
    r = G.MCGradient("k3-in-loss", 10, est, true, torch.tensor([3.0, 3.0], dtype=D))
    assert r.mean.tolist() == [3.0, 3.0]
    assert r.variance.tolist() == pytest.approx([4.0, 7.0])  # unbiased: sum of squares / (3 - 1)
    assert r.se.tolist() == pytest.approx([math.sqrt(4 / 3), math.sqrt(7 / 3)])  # over the 3 trials
    assert r.bias.tolist() == [1.0, -1.0]
    # (1-2)^2 + (2-4)^2 = 5, (3-2)^2 + (6-4)^2 = 5, (5-2)^2 + (1-4)^2 = 18
    assert r.mse.item() == pytest.approx(28 / 3)


def test_mc_kl_gradients_recomputed_from_the_same_samples():
    pi, ref = BinaryAutoregressive(*PI), BinaryAutoregressive(*REF)
    mc = G.mc_kl_gradients(
        pi, ref, 3, n_seqs=5, n_trials=4, reward_form="full", generator=torch.Generator().manual_seed(7)
    )
    seqs = pi.sample(20, 3, generator=torch.Generator().manual_seed(7))
    ex = G.exact_kl_gradients(pi, ref, 3, reward_form="full")
    assert set(mc) == set(G.ESTIMATOR_PLACEMENTS)
    for key, r in mc.items():
        assert r.placement == key and r.n_seqs == 5 and r.estimates.shape == (4, 2)
        per = [table(key, "token", "full", s.tolist()) for s in seqs]
        want = [[sum(per[5 * t + i][j] for i in range(5)) / 5 for j in range(2)] for t in range(4)]
        assert r.estimates.flatten().tolist() == pytest.approx(sum(want, []), abs=1e-13), key
        assert torch.equal(r.true, ex["true"]) and torch.equal(r.exact_mean, ex[key])
    assert G.mc_kl_gradients(pi, ref, 2, n_seqs=1)["k1-in-loss"].estimates.shape == (200, 2)  # default trials
    assert G.mc_kl_gradients(pi, ref, 2, n_seqs=1, n_trials=2)["k1-in-loss"].n_seqs == 1  # smallest sizes
    for bad in (dict(n_seqs=2, n_trials=1), dict(n_seqs=0), dict(n_seqs=1.5), dict(n_seqs=2, n_trials=2.5)):
        with pytest.raises(ValueError, match="need n_seqs >= 1 and n_trials >= 2"):
            G.mc_kl_gradients(pi, ref, 3, **bad)


@pytest.mark.parametrize("importance", ["none", "token", "prefix"])
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_offpolicy_gradient_by_enumeration(importance, estimator):
    pi, ref, old = BinaryAutoregressive(*PI), BinaryAutoregressive(*REF), BinaryAutoregressive(0.1, -0.1)
    seqs, q = old.enumerate(2)
    total = torch.zeros((), dtype=D)
    for i in range(4):
        lp = pi.token_logprobs(seqs[i : i + 1])[0]
        with torch.no_grad():
            lq = ref.token_logprobs(seqs[i : i + 1])[0]
            lo = old.token_logprobs(seqs[i : i + 1])[0]
        ell = lp - lq
        k = {"k1": ell, "k2": 0.5 * ell**2, "k3": torch.expm1(-ell) + ell}[estimator]
        if importance == "token":
            k = torch.exp(lp - lo) * k
        elif importance == "prefix":
            k = torch.exp(torch.cumsum(lp - lo, 0)) * k
        total = total + q[i] * k.sum()
    want = torch.stack(torch.autograd.grad(total, [pi.a, pi.b]))
    got = G.offpolicy_kl_loss_gradient(pi, old, ref, 2, estimator, importance)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-14)
    if estimator == "k3" and importance == "none":
        assert G.offpolicy_kl_loss_gradient(pi, old, ref, 2).tolist() == pytest.approx(want.tolist(), abs=1e-14)


def test_importance_weighted_k1_and_k3_have_the_same_expected_gradient_but_k2_not():
    """E_old[w (k3 - k1)] = sum_y (pi_ref(y) - pi(y)) = 0 at every prefix, for every theta."""
    pi, ref, old = BinaryAutoregressive(*PI), BinaryAutoregressive(*REF), BinaryAutoregressive(0.1, -0.1)
    for importance in ("token", "prefix"):
        g1, g2, g3 = (G.offpolicy_kl_loss_gradient(pi, old, ref, 3, e, importance) for e in ("k1", "k2", "k3"))
        assert torch.allclose(g1, g3, atol=1e-14)
        assert (g2 - g3).abs().max() > 1e-3


def test_exact_moments_full_form_token_level_by_hand():
    pi, ref = BinaryAutoregressive(*PI), BinaryAutoregressive(*REF)
    seqs, probs = pi.enumerate(2)
    mom = G.exact_gradient_moments(pi, ref, 2, reward_form="full")
    rtg = G.exact_gradient_moments(pi, ref, 2)
    for key in ("k1-in-reward", "k3-in-reward"):
        g = [table(key, "token", "full", s.tolist()) for s in seqs]
        mean = [sum(p.item() * x[j] for p, x in zip(probs, g)) for j in range(2)]
        cov = [
            sum(p.item() * (x[i] - mean[i]) * (x[j] - mean[j]) for p, x in zip(probs, g))
            for i in range(2)
            for j in range(2)
        ]
        assert mom[key]["cov"].flatten().tolist() == pytest.approx(cov, abs=1e-14)
        assert torch.allclose(mom[key]["mean"], rtg[key]["mean"], atol=1e-14)  # same expectation ...
        assert (mom[key]["cov"] - rtg[key]["cov"]).abs().max() > 1e-4  # ... not the same variance


def test_argument_messages_name_the_model():
    pi = BinaryAutoregressive(*PI)
    with pytest.raises(TypeError, match="^policy must be a BinaryAutoregressive, got str"):
        G.exact_kl_gradients("pi", pi, 2)
    with pytest.raises(TypeError, match="^reference must be a BinaryAutoregressive, got NoneType"):
        G.per_sample_gradients(pi, None, SEQS, "k1-in-loss")


def test_unknown_estimator_names():
    with pytest.raises(ValueError, match="unknown estimator 'k4'"):
        est.of_log_ratio("k4", torch.zeros(1))
    with pytest.raises(ValueError, match="unknown estimator 'k4'"):
        est.derivative("k4", torch.zeros(1))
    assert G.PLACEMENT_KEYS == ("true", "k1-in-reward", "k1-in-loss", "k2-in-loss", "k3-in-loss", "k3-in-reward")
