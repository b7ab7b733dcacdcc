"""kltutor.failures: every returned field recomputed by hand from the documented construction
(first steps of the bandit, the length and reference worlds, importance weights with a clip,
the precision table)."""

import math

import pytest
import torch

from kltutor import estimators as est
from kltutor import failures as fl

D = torch.float64


def test_entropy_by_hand():
    assert fl.entropy([0.5, 0.25, 0.25, 0.0]) == pytest.approx(1.5 * math.log(2), abs=1e-15)
    assert fl.entropy([1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        fl.entropy([1.0])


@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_train_bandit_two_steps_by_hand(beta):
    ref = [0.5, 0.3, 0.2]
    r = [0.0, 1.0, 3.0]
    out = fl.train_bandit(ref, r, beta=beta, steps=2, lr=0.5)
    assert set(out) == {"kl", "reward", "entropy", "grad_norm"} and all(len(v) == 2 for v in out.values())
    logits = [math.log(x) for x in ref]
    for t in range(2):
        z = sum(math.exp(x) for x in logits)
        pi = [math.exp(x) / z for x in logits]
        adv = [ri - beta * (math.log(p) - math.log(q)) for ri, p, q in zip(r, pi, ref)]
        mean = sum(p * a for p, a in zip(pi, adv))
        grad = [p * (a - mean) for p, a in zip(pi, adv)]
        logits = [x + 0.5 * g for x, g in zip(logits, grad)]
        z = sum(math.exp(x) for x in logits)
        pi = [math.exp(x) / z for x in logits]
        assert out["grad_norm"][t] == pytest.approx(math.sqrt(sum(g * g for g in grad)), abs=1e-15)
        assert out["kl"][t] == pytest.approx(sum(p * math.log(p / q) for p, q in zip(pi, ref)), abs=1e-15)
        assert out["reward"][t] == pytest.approx(sum(p * x for p, x in zip(pi, r)), abs=1e-15)
        assert out["entropy"][t] == pytest.approx(-sum(p * math.log(p) for p in pi), abs=1e-15)
    with pytest.raises(ValueError, match="strictly positive"):
        fl.train_bandit([1.0, 0.0], [0.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="beta"):
        fl.train_bandit(ref, r, -0.1)


def _length_world(n, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=g, dtype=D)
    u = torch.rand(n, generator=g, dtype=D)
    length = 1 + torch.floor(torch.log(u) / math.log(5 / 6))
    ref = torch.softmax(torch.randn(n, generator=g, dtype=D) * 0.5, 0)
    return q, length, ref


def test_length_hacking_fields_with_non_default_parameters():
    out = fl.length_hacking(
        [0.5, 4.0], n_responses=300, length_bonus=0.3, ideal_length=5.0, overlength_cost=0.2, seed=3
    )
    q, length, ref = _length_world(300, 3)
    gold = q - 0.2 * torch.clamp(length - 5.0, min=0)
    proxy = q + 0.3 * length
    assert out["beta"] == [0.5, 4.0]
    for i, beta in enumerate((0.5, 4.0)):
        pi = torch.softmax(ref.log() + proxy / beta, 0)
        assert out["kl"][i] == pytest.approx(float((pi * (pi / ref).log()).sum()), abs=1e-14)
        assert out["proxy"][i] == pytest.approx(float((pi * proxy).sum()), abs=1e-14)
        assert out["gold"][i] == pytest.approx(float((pi * gold).sum()), abs=1e-14)
        assert out["length"][i] == pytest.approx(float((pi * length).sum()), abs=1e-14)
    assert float(length.min()) >= 1 and (length == length.round()).all()
    with pytest.raises(ValueError, match="positive"):
        fl.length_hacking([0.0])


def test_wrong_reference_fields_by_hand():
    out = fl.wrong_reference([0.5, 2.0], n_responses=200, format_boost=1.5, seed=2)
    g = torch.Generator().manual_seed(2)
    formatted = torch.rand(200, generator=g) < 0.5
    reward = torch.randn(200, generator=g, dtype=D)
    base_logits = torch.randn(200, generator=g, dtype=D) - 2.0 * formatted.double()
    base = torch.softmax(base_logits, 0)
    sft = torch.softmax(base_logits + 1.5 * formatted.double(), 0)

    def kl(p, q):
        return float((p * (p / q).log()).sum())

    assert out["sft_format_rate"]["value"] == pytest.approx([float(sft[formatted].sum())])
    assert out["base_format_rate"]["value"] == pytest.approx([float(base[formatted].sum())])
    for name, ref in (("sft", sft), ("base", base)):
        rows = out[name]
        assert rows["beta"] == [0.5, 2.0]
        assert rows["kl_at_init"] == pytest.approx([kl(sft, ref)] * 2, abs=1e-14)
        for i, beta in enumerate((0.5, 2.0)):
            pi = torch.softmax(ref.log() + reward / beta, 0)
            assert rows["kl"][i] == pytest.approx(kl(pi, ref), abs=1e-14)
            assert rows["reward"][i] == pytest.approx(float((pi * reward).sum()), abs=1e-14)
            assert rows["format_rate"][i] == pytest.approx(float(pi[formatted].sum()), abs=1e-14)
    assert out["sft"]["kl_at_init"][0] == 0.0 and out["base"]["kl_at_init"][0] > 0


def test_importance_weighted_kl_fields_and_clip():
    pi, ref, old = [0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.2, 0.3, 0.5]
    out = fl.importance_weighted_kl(pi, ref, old, n_samples=16, n_batches=5, clip=2.0, seed=5)
    g = torch.Generator().manual_seed(5)
    idx = torch.multinomial(torch.tensor(old, dtype=D), 80, replacement=True, generator=g).view(5, 16)
    p, q, o = (torch.tensor(x, dtype=D) for x in (pi, ref, old))
    ell = p.log()[idx] - q.log()[idx]
    w = (p[idx] / o[idx]).clamp(max=2.0)
    est = (w * (torch.expm1(-ell) + ell)).mean(1)
    assert out["exact"] == pytest.approx(sum(a * math.log(a / b) for a, b in zip(pi, ref)), abs=1e-15)
    assert out["mean"] == pytest.approx(float(est.mean()), abs=1e-15)
    assert out["std"] == pytest.approx(float(est.std()), abs=1e-15)  # across the batches, unbiased
    assert out["max_weight"] == pytest.approx(float(w.max()), abs=1e-15) and out["max_weight"] <= 2.0
    unclipped = fl.importance_weighted_kl(pi, ref, old, n_samples=16, n_batches=5, seed=5)
    assert unclipped["max_weight"] == pytest.approx(3.5) and unclipped["mean"] != out["mean"]
    with pytest.raises(ValueError, match="cover"):
        fl.importance_weighted_kl(pi, ref, [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="clip"):
        fl.importance_weighted_kl(pi, ref, old, clip=0.0)


def test_k3_precision_rows_and_forms():
    rows = fl.k3_precision([1e-3, -2.0], dtypes=(torch.float16, torch.float32))
    assert [r["dtype"] for r in rows] == ["float16", "float16", "float32", "float32"]
    assert [r["log_ratio"] for r in rows] == [1e-3, -2.0, 1e-3, -2.0]
    for r in rows:
        assert r["exact"] == pytest.approx(math.expm1(-r["log_ratio"]) + r["log_ratio"], rel=1e-15)
        dt = getattr(torch, r["dtype"])
        x = torch.tensor(r["log_ratio"], dtype=torch.float64).to(dt)
        assert r["naive"] == float((torch.exp(-x) - 1 + x).double())
        x32 = x.float()
        assert r["stable (fp32, estimators.k3)"] == float(est.k3(x32, torch.zeros_like(x32)).double())
    # fp16 naive k3 of 1e-3 loses the value entirely; the stable form keeps it to a few digits
    assert rows[0]["naive"] != pytest.approx(rows[0]["exact"], rel=0.1)
    assert rows[0]["stable (fp32, estimators.k3)"] == pytest.approx(rows[0]["exact"], rel=2e-2)
    assert est.of_log_ratio("k3", torch.tensor([0.5], dtype=torch.bfloat16)).dtype == torch.float32
    assert est.of_log_ratio("k3", torch.tensor([1e-4], dtype=D)).item() == pytest.approx(
        math.expm1(-1e-4) + 1e-4, rel=1e-15
    )
    assert est.of_log_ratio("k3", torch.tensor([0.5], dtype=D)).dtype == D
