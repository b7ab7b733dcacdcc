"""kltutor.filters: rejection rules on the exact toy, against hand computations and the stored library verdicts."""

import pytest
import torch

from kltutor import filters as F
from kltutor.trainers import filters as TF


def test_unfiltered_sequence_ratio_is_exact():
    # E_q[(pi/q) (R - b) grad log pi] = grad E_pi[R] for any constant b (E_pi[grad log pi] = 0)
    g = F.expected_gradient("none.sequence")
    assert torch.allclose(g, F.exact_gradient(), atol=1e-14)


def test_exact_gradient_matches_finite_differences():
    b = F.toy_batch()
    a0, b0 = F.TOY["policy"]
    h = 1e-6

    def J(a, bb):
        return float((F.toy_batch(policy=(a, bb))["pi"] * b["reward"]).sum())

    fd = torch.tensor(
        [(J(a0 + h, b0) - J(a0 - h, b0)) / (2 * h), (J(a0, b0 + h) - J(a0, b0 - h)) / (2 * h)], dtype=torch.float64
    )
    assert torch.allclose(F.exact_gradient(), fd, atol=1e-8)  # central difference error ~h^2 plus 1e-16/h


def test_keep_masks_by_hand():
    # one sequence, two tokens: pi_t/q_t = 4 and 0.9
    logp = torch.log(torch.tensor([[0.8, 0.45]], dtype=torch.float64))
    samp = torch.log(torch.tensor([[0.2, 0.5]], dtype=torch.float64))
    adv = torch.tensor([-1.0], dtype=torch.float64)
    # TRL sequence mask: pi(y)/q(y) = 3.6 > 3 -> dropped
    assert F.keep_masks("trl.sequence_mask", logp, samp, adv).tolist() == [[0.0, 0.0]]
    # verl token_k1 band [0.5, 2] on q_t/pi_t = 0.25, 1.11 -> first token dropped
    assert F.keep_masks("verl.token_k1", logp, samp, adv).tolist() == [[0.0, 1.0]]
    # OPSM: mean log(q/pi) = (log 0.25 + log 1.11)/2 < 0 <= 0.02 -> kept even with A < 0
    assert F.keep_masks("trl.opsm", logp, samp, adv).tolist() == [[1.0, 1.0]]
    # OpenRLHF token ratio band [0.5, 5]: both kept; coefficient = the per-token ratio
    keep = F.keep_masks("openrlhf.token.ratio", logp, samp, adv)
    assert torch.allclose(
        F.coefficients("openrlhf.token.ratio", logp, samp, keep), torch.tensor([[4.0, 0.9]], dtype=torch.float64)
    )


def test_opsm_drops_only_negative_advantages_and_symmetric_drops_both():
    b = F.toy_batch()
    opsm = F.keep_masks("trl.opsm", b["logp"], b["samp_logp"], b["adv"])[:, 0]
    sym = F.keep_masks("symmetric.opsm", b["logp"], b["samp_logp"], b["adv"])[:, 0]
    assert (b["adv"][opsm == 0] < 0).all() and (b["adv"][sym == 0] > 0).any()
    assert ((opsm == 0) <= (sym == 0)).all()  # OPSM drops a subset of what the symmetric rule drops


def test_summed_statistic_rejects_more_as_length_grows():
    out = F.rejection_by_length([2, 4, 6, 8, 10], 0.2)
    assert out["sum"] == sorted(out["sum"]) and out["sum"][-1] > 0.5
    assert all(m <= s for m, s in zip(out["mean"], out["sum"]))


def test_rule_table_matches_the_stored_library_verdicts():
    table = F.rule_table().set_index("rule")
    for r in TF.load()["rules"]:
        assert abs(table.loc[r["rule"], "|bias|"] - r["bias_norm"]) < 1e-9, r["rule"]
        assert table.loc[r["rule"], "sequences touched"] == r["sequences_touched"], r["rule"]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: F.keep_masks("nope", torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1)), "unknown rule"),
        (lambda: F.toy_batch(0), "seq_len"),
        (lambda: F.rejection_by_length([2], -1.0), "threshold"),
        (lambda: F.rejection_by_length([2], 0.1, "k9"), "statistic"),
        (lambda: TF.library_keep("none.sequence", F.toy_batch()), "no library function"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
