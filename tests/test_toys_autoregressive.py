import math

import pytest
import torch

from kltutor.toys import BinaryAutoregressive
from kltutor.toys.autoregressive import all_binary_sequences


def test_enumeration_and_probabilities_sum_to_one():
    seqs = all_binary_sequences(4)
    assert seqs.shape == (16, 4)
    assert len({tuple(r.tolist()) for r in seqs}) == 16
    _, probs = BinaryAutoregressive(0.3, -0.4).enumerate(6)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_token_logprobs_by_hand():
    m = BinaryAutoregressive(0.3, -0.4)
    lp = m.token_logprobs(torch.tensor([[1.0, 1.0, 0.0]]))[0]

    def sig(z):
        return 1 / (1 + math.exp(-z))

    want = [math.log(sig(0.3)), math.log(sig(0.3 - 0.4)), math.log(1 - sig(0.3 - 0.8))]
    assert lp.tolist() == pytest.approx(want, abs=1e-12)


def test_token_scores_match_autograd():
    m = BinaryAutoregressive(0.2, 0.7)
    seqs = all_binary_sequences(3)
    scores = m.token_scores(seqs)
    lp = m.token_logprobs(seqs)
    for i in range(seqs.shape[0]):
        for t in range(3):
            g = torch.autograd.grad(lp[i, t], [m.a, m.b], retain_graph=True)
            assert torch.stack(g).tolist() == pytest.approx(scores[i, t].tolist(), abs=1e-12)


def test_exact_kl_matches_enumeration_and_finite_differences():
    pi, ref = BinaryAutoregressive(0.3, -0.4), BinaryAutoregressive(-0.2, 0.5)
    kl = pi.exact_kl(ref, 4)
    seqs, p = pi.enumerate(4)
    _, q = ref.enumerate(4)
    assert kl.item() == pytest.approx((p * (p.log() - q.log())).sum().item(), abs=1e-12)
    assert BinaryAutoregressive(0.1, 0.1).exact_kl(BinaryAutoregressive(0.1, 0.1), 3).item() == pytest.approx(
        0, abs=1e-14
    )


def test_sampling_frequencies_match_probabilities():
    m = BinaryAutoregressive(0.4, -0.9)
    g = torch.Generator().manual_seed(0)
    n = 40000
    seqs = m.sample(n, 3, generator=g)
    all_seqs, probs = m.enumerate(3)
    idx = (seqs * torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)).sum(-1).long()
    freq = torch.bincount(idx, minlength=8).double() / n
    se = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() < 5 * se).all()


@pytest.mark.parametrize("bad", [0, -1, 2.5, 21])
def test_bad_lengths_rejected(bad):
    with pytest.raises(ValueError):
        all_binary_sequences(bad)


def test_bad_inputs_rejected():
    m = BinaryAutoregressive(0.0, 0.0)
    with pytest.raises(ValueError):
        m.token_logprobs(torch.tensor([[0.0, 2.0]]))
    with pytest.raises(ValueError):
        m.token_logprobs(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        BinaryAutoregressive(float("nan"), 0.0)
    with pytest.raises(ValueError):
        m.sample(0, 3)
