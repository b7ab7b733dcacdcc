"""kltutor.pitfalls: k1 under a tempered sampler, dropout when scoring, F.kl_div misuses, on exact toys."""

import math

import pytest
import torch

from kltutor import pitfalls as P
from kltutor import practice


@pytest.fixture(scope="module")
def ref():
    return practice.random_logit_tables(4, 2, 1.0, torch.Generator().manual_seed(0))


def test_k1_on_policy_does_not_move(ref):
    r = P.tempered_k1_run(ref, 20, 2.0, temperature=1.0)
    assert max(abs(e - r["entropy"][0]) for e in r["entropy"]) < 1e-12  # zero expected gradient: float64 noise only
    assert max(r["kl_to_ref"]) < 1e-12


@pytest.mark.parametrize("kw", [dict(temperature=0.8), dict(top_p=0.9)])
def test_k1_under_sharper_sampler_raises_entropy_monotonically(ref, kw):
    r = P.tempered_k1_run(ref, 60, 2.0, **kw)
    h = r["entropy"]
    assert all(b >= a - 1e-12 for a, b in zip(h, h[1:])) and h[-1] > h[0] + 0.1
    assert h[-1] <= r["max_entropy"] + 1e-12 and r["max_entropy"] == pytest.approx(2 * math.log(4))


def test_hot_sampler_lowers_entropy(ref):
    h = P.tempered_k1_run(ref, 30, 2.0, temperature=1.5)["entropy"]
    assert h[-1] < h[0] - 0.05  # q flatter than pi: the step pi - q sharpens pi


@pytest.mark.parametrize("est", ["k2", "k3"])
def test_k2_k3_stay_at_reference_under_tempered_sampler(ref, est):
    r = P.tempered_k1_run(ref, 20, 2.0, estimator=est, temperature=0.8)
    assert max(r["kl_to_ref"]) < 1e-12


def test_dropout_scoring():
    out = P.dropout_step0_kl(p=0.3, n_seqs=2, seq_len=6)
    assert out["eval"]["exact_kl"] == 0.0 and out["eval"]["max_abs_k1"] == 0.0  # identical computations
    assert out["train"]["exact_kl"] > 1e-6 and out["train"]["max_abs_k1"] > 1e-4


def test_kl_div_misuses():
    g = torch.Generator().manual_seed(1)
    lp = torch.log_softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), -1)
    rl = torch.log_softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), -1)
    d = P.kl_div_misuses(lp, rl)
    rev, fwd = d["exact KL(pi||ref) (reverse)"], d["exact KL(ref||pi) (forward)"]
    assert d["kl_div(ref_logp, logp, log_target=True, batchmean)"] == pytest.approx(rev, abs=1e-14)
    assert d["kl_div(logp, ref_logp, log_target=True, batchmean)"] == pytest.approx(fwd, abs=1e-14)
    assert math.isnan(d["kl_div(ref_logp, logp, batchmean) [log target, no flag]"])
    assert d["kl_div(ref_logp, logp.exp(), mean) [default reduction]"] == pytest.approx(rev / 5, abs=1e-14)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda r: P.tempered_k1_run(r, 0, 1.0), "steps"),
        (lambda r: P.tempered_k1_run(r, 1, -1.0), "lr"),
        (lambda r: P.tempered_k1_run(r, 1, 1.0, estimator="k4"), "estimator"),
        (lambda r: P.dropout_step0_kl(p=1.5), "dropout"),
        (lambda r: P.kl_div_misuses(torch.zeros(2, 3), torch.zeros(3, 3)), "batch, vocab"),
    ],
)
def test_bad_input(ref, call, match):
    with pytest.raises(ValueError, match=match):
        call(ref)
