"""kltutor.distillation (chapter ch-distillation): every gradient pinned to an independent computation, and
bad input rejected with one-line errors."""

import itertools
import math

import pytest
import torch

from kltutor import distillation as D
from kltutor import divergences
from kltutor.exercises.distillation import check_distillation_advantages, check_top_k_kl
from kltutor.toys import BinaryAutoregressive

S, T_ = (0.3, -0.4), (-0.2, 0.5)


def models():
    return BinaryAutoregressive(*S), BinaryAutoregressive(*T_)


def sig(x):
    return 1 / (1 + math.exp(-x))


def brute(seq_len, advantage):
    """sum_y p(y) sum_t A_t(y) * score_t(y), from the model's definition with plain floats."""
    total = [0.0, 0.0]
    for seq in itertools.product([0, 1], repeat=seq_len):
        c, prob, lr, scores = 0, 1.0, [], []
        for y in seq:
            p, q = sig(S[0] + S[1] * c), sig(T_[0] + T_[1] * c)
            prob *= p if y else 1 - p
            lr.append(math.log(p if y else 1 - p) - math.log(q if y else 1 - q))
            scores.append(((y - p), (y - p) * c))
            c += y
        A = advantage(lr)
        for t, (ga, gb) in enumerate(scores):
            total[0] += prob * A[t] * ga
            total[1] += prob * A[t] * gb
    return torch.tensor(total, dtype=torch.float64)


def test_discounted_sum_by_hand():
    x = torch.tensor([[1.0, 2.0, 4.0]])
    assert torch.equal(D.discounted_sum(x, 0.0), x)
    assert torch.equal(D.discounted_sum(x, 1.0), torch.tensor([[7.0, 6.0, 4.0]]))
    assert torch.allclose(D.discounted_sum(x, 0.5), torch.tensor([[1 + 1 + 1.0, 2 + 2.0, 4.0]]))
    for bad in (-0.1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="discount must be a number in"):
            D.discounted_sum(x, bad)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_reward_gradient_against_brute_force(gamma):
    s, t = models()

    def adv(lr):
        return [sum(gamma ** (k - j) * lr[k] for k in range(j, len(lr))) for j in range(len(lr))]

    assert torch.allclose(D.reward_gradient(s, t, 4, gamma), brute(4, adv), atol=1e-12)


def test_return_to_go_is_exact_and_discount_zero_is_local():
    s, t = models()
    true = D.sequence_gradient(s, t, 5)
    assert torch.allclose(D.reward_gradient(s, t, 5, 1.0), true, atol=1e-12)
    assert torch.allclose(D.local_gradient(s, t, 5, future_discount=1.0), true, atol=1e-12)
    assert torch.allclose(D.reward_gradient(s, t, 5, 0.0), D.local_gradient(s, t, 5), atol=1e-12)
    assert (D.reward_gradient(s, t, 5, 0.0) - true).norm() > 0.5
    # one token: everything agrees
    assert torch.allclose(D.reward_gradient(s, t, 1, 0.0), D.sequence_gradient(s, t, 1), atol=1e-14)


def test_forward_sequence_gradient_by_finite_differences():
    s, t = models()
    g = D.sequence_gradient(s, t, 4, "forward")
    h = 1e-6
    for i, name in enumerate("ab"):
        vals = []
        for sign in (1, -1):
            ab = list(S)
            ab[i] += sign * h
            vals.append(float(t.exact_kl(BinaryAutoregressive(*ab), 4).detach()))
        assert abs((vals[0] - vals[1]) / (2 * h) - float(g[i])) < 1e-7, name


def test_local_gradients_by_finite_differences():
    """d/d(a,b) of E_{states ~ fixed student}[sum_t D_t(student_theta)] by central differences."""
    s, t = models()
    seqs, w = s.enumerate(4)
    h = 1e-6
    for div, beta in (("reverse", 0.5), ("forward", 0.5), ("gjsd", 0.3)):
        g = D.local_gradient(s, t, 4, div, beta)
        for i in range(2):
            vals = []
            for sign in (1, -1):
                ab = list(S)
                ab[i] += sign * h
                m = BinaryAutoregressive(*ab)
                with torch.no_grad():
                    d = D.per_state_divergence(D.toy_logits(m, seqs), D.toy_logits(t, seqs), div, beta)
                vals.append(float((w[:, None] * d).sum()))
            assert abs((vals[0] - vals[1]) / (2 * h) - float(g[i])) < 1e-7, (div, i)


def test_generalized_jsd_definition_and_endpoints():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(2, 5, generator=g, dtype=torch.float64)
    p, q = zs.softmax(0), zt.softmax(0)
    for beta in (0.1, 0.5, 0.9):
        m = beta * q + (1 - beta) * p
        want = beta * divergences.kl(q, m) + (1 - beta) * divergences.kl(p, m)
        assert abs(float(D.generalized_jsd(zs, zt, beta)) - float(want)) < 1e-14
    assert float(D.generalized_jsd(zs, zt, 0.0)) == 0.0 == float(D.generalized_jsd(zs, zt, 1.0))
    eps = 1e-6
    assert abs(float(D.generalized_jsd(zs, zt, eps)) / eps - float(divergences.kl(q, p))) < 1e-5
    assert abs(float(D.generalized_jsd(zs, zt, 1 - eps)) / eps - float(divergences.kl(p, q))) < 1e-5
    with pytest.raises(ValueError, match="beta must be a number in"):
        D.generalized_jsd(zs, zt, 1.5)
    with pytest.raises(ValueError, match="unknown divergence"):
        D.per_state_divergence(zs, zt, "jeffreys")


def test_truncated_kl_by_hand():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    full = float(divergences.kl(p, q))
    assert abs(float(D.truncated_kl(p, q, 3)) - full) < 1e-15
    assert abs(float(D.truncated_kl(p, q, 1)) - 0.5 * math.log(2.5)) < 1e-15
    assert abs(float(D.truncated_kl(p, q, 2)) - (0.5 * math.log(2.5) + 0.0)) < 1e-15
    want = divergences.kl(torch.tensor([0.5, 0.3]) / 0.8, torch.tensor([0.2, 0.3]) / 0.5)
    assert abs(float(D.truncated_kl(p, q, 2, renormalize=True)) - float(want)) < 1e-7
    assert float(D.truncated_kl(p, q, 1, renormalize=True)) == 0.0
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="k must be an integer"):
            D.truncated_kl(p, q, bad)
    rows = D.truncation_rows(p, q)
    assert [r["k"] for r in rows] == [3, 2, 1] and abs(rows[0]["bias"]) < 1e-15


def test_fits_by_direction():
    teacher = BinaryAutoregressive(-1.5, 1.5)
    seqs, pt = teacher.enumerate(5)
    fwd = D.fit_independent_student(teacher, 5, "forward", 0.0)
    mean = float((pt * seqs.sum(-1)).sum()) / 5
    assert abs(fwd - math.log(mean / (1 - mean))) < 1e-10  # forward KL = moment matching
    rev = D.fit_independent_student(teacher, 5, "reverse", 0.0)
    # a stationary point of the reverse KL: central difference of the objective vanishes
    kl = lambda a: float(BinaryAutoregressive(a, 0.0).exact_kl(teacher, 5).detach())  # noqa: E731
    assert abs(kl(rev + 1e-5) - kl(rev - 1e-5)) / 2e-5 < 1e-7
    assert kl(rev) < kl(fwd)
    with pytest.raises(ValueError, match="direction must be"):
        D.fit_independent_student(teacher, 5, "sideways", 0.0)


def test_shared_feature_forgetting():
    aligned = D.shared_feature_forgetting(1.0, 0.0, 0.2, -0.3)
    assert abs(aligned["change new"] - (sig(1.2) - sig(0.2))) < 1e-15
    assert abs(aligned["change old"] - (sig(0.7) - sig(-0.3))) < 1e-15
    ortho = D.shared_feature_forgetting(1.0, 90.0)
    assert ortho["KL old"] < 1e-30 and abs(ortho["change old"]) < 1e-16
    p1, p0 = sig(0.5), 0.5
    want = p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))
    assert abs(D.shared_feature_forgetting(1.0, 60.0)["KL old"] - want) < 1e-12
    with pytest.raises(ValueError, match="step must be a finite number"):
        D.shared_feature_forgetting(float("nan"), 0.0)


def test_bad_models_are_rejected():
    s, _ = models()
    with pytest.raises(TypeError, match="teacher must be a BinaryAutoregressive"):
        D.reward_gradient(s, "teacher", 3, 1.0)
    with pytest.raises(ValueError, match="direction must be"):
        D.sequence_gradient(s, s, 3, "both")


def test_public_code_rows():
    s, t = models()
    rows = D.public_code_rows(s, t, 5)
    assert len(rows) == len(D.PUBLIC_CODE) >= 2
    assert {e["repository"] for e in D.PUBLIC_CODE} >= {"thinking-machines-lab/tinker-cookbook", "himsahni/nanochat"}
    assert all(len(e["commit"]) == 40 for e in D.PUBLIC_CODE)
    assert rows[1]["|bias|"] < 1e-12 and rows[0]["|bias|"] > 0.5
    assert abs(rows[2]["|bias|"] - rows[3]["|bias|"]) < 1e-12  # sampled token, discount 0 == full vocabulary


def test_exercise_checkers():
    assert check_distillation_advantages(lambda lr: D.discounted_sum(lr, 1.0))
    wrong = check_distillation_advantages(lambda lr: lr)
    assert not wrong and "discount 0" in str(wrong)
    assert not check_distillation_advantages(lambda lr: lr.sum(-1))
    assert check_top_k_kl(lambda p, q, k: D.truncated_kl(p, q, k))
    assert "renormalised" in str(check_top_k_kl(lambda p, q, k: D.truncated_kl(p, q, k, renormalize=True)))
