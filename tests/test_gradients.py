import pytest
import torch

from kltutor import gradients as G
from kltutor.toys import BinaryAutoregressive

PI, REF = (0.3, -0.4), (-0.2, 0.5)


def models():
    return BinaryAutoregressive(*PI), BinaryAutoregressive(*REF)


def finite_difference_kl(T, h=1e-6):
    _, ref = models()
    out = []
    for i in range(2):
        vals = []
        for s in (1, -1):
            p = list(PI)
            p[i] += s * h
            vals.append(BinaryAutoregressive(*p).exact_kl(ref, T).item())
        out.append((vals[0] - vals[1]) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("T", [1, 2, 5])
def test_true_gradient_matches_finite_differences(T):
    pi, ref = models()
    g = G.exact_kl_gradients(pi, ref, T)
    assert torch.allclose(g["true"], finite_difference_kl(T), atol=1e-7)


@pytest.mark.parametrize("T", [1, 3, 5])
def test_placement_expectations(T):
    pi, ref = models()
    tok = G.exact_kl_gradients(pi, ref, T, level="token")
    seq = G.exact_kl_gradients(pi, ref, T, level="sequence")
    fd = finite_difference_kl(T)
    # k1 in the reward (return-to-go) and sequence-level k2 in the loss are the reverse-KL gradient
    assert torch.allclose(tok["k1-in-reward"], fd, atol=1e-7)
    assert torch.allclose(seq["k2-in-loss"], fd, atol=1e-7)
    # k1 in the loss has zero expected gradient
    assert tok["k1-in-loss"].abs().max() < 1e-12 and seq["k1-in-loss"].abs().max() < 1e-12
    if T == 1:  # one token: token-level k2 in the loss equals k1 in the reward
        assert torch.allclose(tok["k2-in-loss"], tok["k1-in-reward"], atol=1e-12)
    else:  # several tokens: it misses the cross-token terms
        assert (tok["k2-in-loss"] - fd).abs().max() > 1e-2
        assert (tok["k3-in-loss"] - fd).abs().max() > 1e-2


def test_full_and_return_to_go_forms_agree_in_expectation_not_per_sample():
    pi, ref = models()
    a = G.exact_kl_gradients(pi, ref, 4, reward_form="return-to-go")
    b = G.exact_kl_gradients(pi, ref, 4, reward_form="full")
    for k in ("k1-in-reward", "k3-in-reward"):
        assert torch.allclose(a[k], b[k], atol=1e-12)
    seqs, _ = pi.enumerate(4)
    ga = G.per_sample_gradients(pi, ref, seqs, "k1-in-reward", reward_form="return-to-go")
    gb = G.per_sample_gradients(pi, ref, seqs, "k1-in-reward", reward_form="full")
    assert (ga - gb).abs().max() > 1e-3


def test_k3_in_loss_sequence_level_is_forward_kl_gradient():
    pi, ref = models()
    T = 4
    seqs, _ = pi.enumerate(T)
    with torch.no_grad():
        q = ref.sequence_logprobs(seqs).exp()
    fwd = -(q * pi.sequence_logprobs(seqs)).sum()  # KL(ref||pi) up to a constant
    g = torch.stack(torch.autograd.grad(fwd, [pi.a, pi.b]))
    assert torch.allclose(G.exact_kl_gradients(pi, ref, T, level="sequence")["k3-in-loss"], g, atol=1e-12)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_closed_form_per_sample_gradients_match_autograd(level):
    pi, ref = models()
    seqs, _ = pi.enumerate(3)
    for key in G.ESTIMATOR_PLACEMENTS:
        fast = G.per_sample_gradients(pi, ref, seqs, key, level=level)
        for i in range(seqs.shape[0]):
            s = G.per_sample_surrogate(pi, ref, seqs[i : i + 1], key, level, "return-to-go").sum()
            g = torch.autograd.grad(s, [pi.a, pi.b], allow_unused=True)
            g = torch.stack([x if x is not None else torch.zeros((), dtype=torch.float64) for x in g])
            assert torch.allclose(fast[i], g, atol=1e-12), (key, i)


def test_exact_moments_mean_matches_exact_gradients():
    pi, ref = models()
    mom = G.exact_gradient_moments(pi, ref, 4)
    ex = G.exact_kl_gradients(pi, ref, 4)
    for k in G.ESTIMATOR_PLACEMENTS:
        assert torch.allclose(mom[k]["mean"], ex[k], atol=1e-12)
        assert (torch.linalg.eigvalsh(mom[k]["cov"]) > -1e-12).all()


def test_monte_carlo_converges_within_standard_error():
    pi, ref = models()
    T, n, trials = 4, 64, 300
    mc = G.mc_kl_gradients(pi, ref, T, n_seqs=n, n_trials=trials, generator=torch.Generator().manual_seed(1))
    mom = G.exact_gradient_moments(pi, ref, T)
    for k, r in mc.items():
        assert ((r.mean - r.exact_mean).abs() <= 5 * r.se + 1e-12).all(), k
        # the across-trial variance estimates the exact cov/N (chi-square: 300 trials -> ~8% sd)
        want = torch.diagonal(mom[k]["cov"]) / n
        if want.max() > 0:
            assert torch.allclose(r.variance, want, rtol=0.35, atol=1e-12), k


def test_offpolicy_corrections():
    pi, ref = models()
    old = BinaryAutoregressive(0.1, -0.1)
    T = 4
    ex = G.exact_kl_gradients(pi, ref, T)
    # on-policy: the per-token weight reproduces token-level k2; the prefix weight the true gradient
    assert torch.allclose(G.offpolicy_kl_loss_gradient(pi, pi, ref, T, "k3", "token"), ex["k2-in-loss"], atol=1e-12)
    assert torch.allclose(G.offpolicy_kl_loss_gradient(pi, pi, ref, T, "k3", "none"), ex["k3-in-loss"], atol=1e-12)
    for est in ("k1", "k3"):
        assert torch.allclose(G.offpolicy_kl_loss_gradient(pi, old, ref, T, est, "prefix"), ex["true"], atol=1e-12)
    stale = G.offpolicy_kl_loss_gradient(pi, old, ref, T, "k3", "none")
    assert (stale - ex["k3-in-loss"]).abs().max() > 1e-2
    # one token: the per-token ratio is the whole correction
    ex1 = G.exact_kl_gradients(pi, ref, 1)
    assert torch.allclose(G.offpolicy_kl_loss_gradient(pi, old, ref, 1, "k3", "token"), ex1["true"], atol=1e-12)


def test_bad_arguments():
    pi, ref = models()
    with pytest.raises(ValueError):
        G.exact_kl_gradients(pi, ref, 3, level="batch")
    with pytest.raises(ValueError):
        G.exact_kl_gradients(pi, ref, 3, reward_form="discounted")
    with pytest.raises(TypeError):
        G.exact_kl_gradients(pi, "ref", 3)
    with pytest.raises(ValueError):
        G.per_sample_gradients(pi, ref, pi.enumerate(2)[0], "k2-in-reward")
    with pytest.raises(ValueError):
        G.mc_kl_gradients(pi, ref, 3, n_seqs=0)
    with pytest.raises(ValueError):
        G.offpolicy_kl_loss_gradient(pi, pi, ref, 3, importance="sequence")
