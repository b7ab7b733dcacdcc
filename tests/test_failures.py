"""Each failure simulation in kltutor.failures shows its symptom (fixed seeds, exact computations)."""

import math

import pytest
import torch

from kltutor import failures as fl


def bandit(seed=0, k=10):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(k, generator=g, dtype=torch.float64)
    ref = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    return ref, r


def test_kl_collapse_with_large_beta():
    ref, r = bandit()
    base = float((ref * r).sum())
    big = fl.train_bandit(ref, r, beta=5.0, steps=300, lr=0.5)
    small = fl.train_bandit(ref, r, beta=0.01, steps=300, lr=0.5)
    assert big["kl"][-1] < 0.05
    assert big["reward"][-1] - base < 0.15 * (small["reward"][-1] - base)


def test_kl_collapse_with_low_entropy_reference():
    ref, r = bandit()
    worst = int(r.argmin())
    peaked = torch.softmax(
        torch.where(
            torch.arange(10) == worst, torch.tensor(8.0, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
        ),
        0,
    )
    normal = torch.softmax(torch.zeros(10, dtype=torch.float64), 0)
    a = fl.train_bandit(peaked, r, 0.05, steps=300, lr=0.5)
    b = fl.train_bandit(normal, r, 0.05, steps=300, lr=0.5)
    assert fl.entropy(peaked) < 0.05
    assert a["grad_norm"][0] < 0.05 * b["grad_norm"][0]
    assert a["reward"][-1] < b["reward"][-1] - 0.5


def test_kl_runaway_with_tiny_beta_and_strong_reward():
    ref, r = bandit()
    run = fl.train_bandit(ref, 5 * r, beta=0.001, steps=300, lr=0.5)
    cap = -math.log(float(ref[int(r.argmax())]))
    assert run["kl"][-1] > 0.95 * cap  # the whole budget of the best response is spent
    assert run["entropy"][-1] < 0.05
    assert all(b >= a - 1e-9 for a, b in zip(run["kl"][:100], run["kl"][1:101]))


def test_length_hacking():
    rows = fl.length_hacking([10.0, 3.0, 1.0, 0.3, 0.1])
    assert all(b > a for a, b in zip(rows["proxy"], rows["proxy"][1:]))
    assert all(b > a for a, b in zip(rows["length"], rows["length"][1:]))
    assert rows["gold"][-1] < rows["gold"][1] - 2.0
    assert rows["length"][-1] > 5 * rows["length"][0]


def test_wrong_reference():
    out = fl.wrong_reference([1.0, 0.3, 0.1])
    assert out["sft"]["kl_at_init"][0] == 0.0
    assert out["base"]["kl_at_init"][0] > 0.5
    for a, b in zip(out["sft"]["format_rate"], out["base"]["format_rate"]):
        assert b < a - 0.4
    assert out["base"]["format_rate"][0] < out["sft_format_rate"]["value"][0] / 3


def test_importance_weights_blow_up_the_estimate():
    g = torch.Generator().manual_seed(1)
    pi = torch.softmax(1.5 * torch.randn(50, generator=g, dtype=torch.float64), 0)
    ref = torch.softmax(0.5 * torch.randn(50, generator=g, dtype=torch.float64), 0)
    stale = torch.softmax(-1.0 * pi.log(), 0)  # a sampler that prefers what the policy now avoids
    on = fl.importance_weighted_kl(pi, ref, pi)
    off = fl.importance_weighted_kl(pi, ref, stale)
    clipped = fl.importance_weighted_kl(pi, ref, stale, clip=5.0)
    assert on["max_weight"] == pytest.approx(1.0)
    assert abs(on["mean"] - on["exact"]) < 5 * on["std"] / math.sqrt(500)
    assert off["max_weight"] > 50 and off["std"] > 5 * on["std"]
    assert clipped["std"] < off["std"] and abs(clipped["mean"] - clipped["exact"]) > 0.3  # bounded but biased


def test_k3_precision():
    rows = {(r["dtype"], r["log_ratio"]): r for r in fl.k3_precision([-12.0, -0.01, 0.01])}
    assert math.isinf(rows[("float16", -12.0)]["naive"])
    assert rows[("float16", -12.0)]["stable (fp32, estimators.k3)"] == pytest.approx(
        rows[("float16", -12.0)]["exact"], rel=1e-6
    )
    assert rows[("bfloat16", -0.01)]["naive"] < 0  # a "non-negative" estimator comes out negative
    for row in rows.values():
        assert row["stable (fp32, estimators.k3)"] >= 0
        assert row["stable (fp32, estimators.k3)"] == pytest.approx(row["exact"], rel=0.02)


def test_bad_input():
    ref, r = bandit()
    with pytest.raises(ValueError):
        fl.train_bandit(ref, r, beta=-0.1)
    with pytest.raises(ValueError):
        fl.train_bandit(ref, r[:-1], beta=0.1)
    with pytest.raises(ValueError):
        fl.length_hacking([0.0])
    with pytest.raises(ValueError):
        fl.importance_weighted_kl(ref, ref, ref, clip=0.0)
