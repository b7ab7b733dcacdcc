"""kltutor.placements: every returned value pinned by hand on a small batch with an early EOS,
left padding (a prompt), unequal lengths; every parameter away from its default (gamma, eps,
each aggregation, level, importance); the package's own outputs through kltutor.checklist."""

import math

import pytest
import torch

from kltutor import placements as pl
from kltutor.checklist import check_batch

D = torch.float64

# Three sequences of 5 positions. Row 0: prompt on positions 0-1, response 2-4. Row 1: response 0-1,
# then an early EOS and padding. Row 2: response 0-4 (the longest).
LOGP = torch.tensor(
    [[-0.9, -1.1, -0.5, -1.0, -2.0], [-0.1, -0.3, -0.2, -0.8, -0.4], [-1.2, -0.6, -0.3, -0.9, -1.5]], dtype=D
)
REF = torch.tensor(
    [[-0.4, -1.3, -0.7, -0.4, -2.5], [-0.2, -0.3, -0.9, -0.1, -0.6], [-1.0, -0.8, -0.3, -1.4, -1.1]], dtype=D
)
MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=D)
ELL = LOGP - REF


def k3(x):
    return math.exp(-x) - 1 + x


def rows(values):
    """Hand lists of the masked entries of each row."""
    return [[values[b][t] for t in range(5) if MASK[b, t]] for b in range(3)]


def test_aggregate_each_mode_by_hand():
    v = torch.tensor([[9.0, 9.0, 1.0, 2.0, 3.0], [4.0, 6.0, 9.0, 9.0, 9.0], [1.0, 1.0, 1.0, 1.0, 6.0]], dtype=D)
    # token-mean: every masked token weighs the same: (1+2+3 + 4+6 + 1+1+1+1+6) / 10
    assert pl.aggregate(v, MASK, "token-mean").item() == pytest.approx(26 / 10, abs=1e-15)
    assert pl.aggregate(v, MASK).item() == pytest.approx(26 / 10, abs=1e-15)  # the default
    # sequence-mean: mean per row (2, 5, 2), then over rows
    assert pl.aggregate(v, MASK, "sequence-mean").item() == pytest.approx(3.0, abs=1e-15)
    # sequence-sum: sum per row (6, 10, 10), mean over rows
    assert pl.aggregate(v, MASK, "sequence-sum").item() == pytest.approx(26 / 3, abs=1e-14)
    # a row without response tokens: sequence-mean skips it, sequence-sum counts it as 0 (documented here)
    m = MASK.clone()
    m[1] = 0
    assert pl.aggregate(v, m, "sequence-mean").item() == pytest.approx(2.0, abs=1e-15)
    assert pl.aggregate(v, m, "sequence-sum").item() == pytest.approx(16 / 3, abs=1e-14)
    assert pl.aggregate(v, m, "token-mean").item() == pytest.approx(16 / 8, abs=1e-15)


def test_aggregate_fractional_mask_weights():
    v = torch.tensor([[1.0, 3.0]], dtype=D)
    w = torch.tensor([[0.25, 0.75]], dtype=D)
    assert pl.aggregate(v, w, "token-mean").item() == pytest.approx(2.5)
    assert pl.aggregate(v, w, "sequence-mean").item() == pytest.approx(2.5)
    assert pl.aggregate(v, w, "sequence-sum").item() == pytest.approx(2.5)


def test_aggregate_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="same shape"):
        pl.aggregate(LOGP, MASK[:, :3])
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        pl.aggregate(LOGP[0], MASK[0])


def test_masked_mean_all_and_per_row():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=D)
    m = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=D)
    assert pl.masked_mean(v, m).item() == pytest.approx(2.0)
    per_row = pl.masked_mean(v, m, dim=-1)
    assert per_row.tolist() == pytest.approx([2.0, 0.0])  # an empty row is 0, not NaN
    assert pl.masked_mean(v, m, dim=0).tolist() == pytest.approx([1.0, 0.0, 3.0])


def test_last_token_index_with_prompt_early_eos_and_full_row():
    assert pl.last_token_index(MASK).tolist() == [4, 1, 4]
    assert pl.last_token_index(torch.tensor([[True, False, True, False]])).tolist() == [2]
    with pytest.raises(ValueError, match="at least one response token"):
        pl.last_token_index(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        pl.last_token_index(torch.ones(3))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_shaped_rewards_by_hand(estimator):
    beta = 0.3
    r = pl.shaped_rewards(torch.tensor([1.0, -2.0, 0.5], dtype=D), LOGP, REF, MASK, beta, estimator)
    k = (lambda x: x) if estimator == "k1" else k3
    want = [[-beta * k(ELL[b, t].item()) * MASK[b, t].item() for t in range(5)] for b in range(3)]
    want[0][4] += 1.0  # task reward on the last response token
    want[1][1] += -2.0  # the early EOS row: its last response token is position 1
    want[2][4] += 0.5
    assert r.tolist() == [pytest.approx(w, abs=1e-15) for w in want]
    assert (r[0, :2] == 0).all() and (r[1, 2:] == 0).all()  # prompt and padding carry nothing


def test_shaped_rewards_default_estimator_is_k1():
    a = pl.shaped_rewards(torch.zeros(3, dtype=D), LOGP, REF, MASK, 0.5)
    assert torch.allclose(a, -0.5 * ELL * MASK, atol=1e-15)


def test_shaped_rewards_carry_no_gradient_and_pass_the_checklist():
    logp = LOGP.clone().requires_grad_(True)
    ref = REF.clone().requires_grad_(True)  # even a reference that (wrongly) carries gradient
    for est in ("k1", "k2", "k3"):
        shaped = pl.shaped_rewards(torch.tensor([1.0, 0.0, -1.0], dtype=D), logp, ref, MASK, 0.1, est)
        assert not shaped.requires_grad and shaped.grad_fn is None
        report = check_batch(
            logp=logp, ref_logp=REF, mask=MASK, rewards=torch.tensor([1.0, 0.0, -1.0], dtype=D), shaped_rewards=shaped
        )
        assert report.ok, str(report)
        assert "shaped_rewards_require_grad" in report.checked and "nonfinite" in report.checked


def test_shaped_rewards_beta_zero_is_the_task_reward_alone():
    r = pl.shaped_rewards(torch.tensor([1.0, 2.0, 3.0], dtype=D), LOGP, REF, MASK, 0.0, "k3")
    want = torch.zeros(3, 5, dtype=D)
    want[0, 4], want[1, 1], want[2, 4] = 1.0, 2.0, 3.0
    assert torch.equal(r, want)
    with pytest.raises(ValueError, match="NaN or inf"):
        pl.shaped_rewards(torch.tensor([1.0, float("nan"), 3.0], dtype=D), LOGP, REF, MASK, 0.1)


def test_returns_to_go_gamma_one_and_below_one():
    r = torch.tensor([[5.0, 7.0, 1.0, 2.0, 3.0], [4.0, 5.0, 9.0, 9.0, 9.0], [1.0, 0.0, 0.0, 0.0, 2.0]], dtype=D)
    g1 = pl.returns_to_go(r, MASK)
    assert g1.tolist() == [[0, 0, 6, 5, 3], [9, 5, 0, 0, 0], [3, 2, 2, 2, 2]]
    g = pl.returns_to_go(r, MASK, gamma=0.5)
    # row 0: G4 = 3, G3 = 2 + 1.5, G2 = 1 + 0.5 * 3.5; the prompt positions are 0
    assert g[0].tolist() == pytest.approx([0, 0, 2.75, 3.5, 3.0])
    # row 1: the padding after the early EOS holds rewards that must not leak back
    assert g[1].tolist() == pytest.approx([6.5, 5.0, 0, 0, 0])
    # row 2: G0 = 1 + 0.5^4 * 2
    assert g[2].tolist() == pytest.approx([1.125, 0.25, 0.5, 1.0, 2.0])
    assert pl.returns_to_go(r, MASK, gamma=0.0).tolist() == (r * MASK).tolist()
    with pytest.raises(ValueError, match="same shape"):
        pl.returns_to_go(r, MASK[:, :4])


def test_kl_loss_each_estimator_aggregation_and_level_by_hand():
    fns = {"k1": lambda x: x, "k2": lambda x: 0.5 * x * x, "k3": k3}
    ell = rows(ELL.tolist())
    for est, f in fns.items():
        per_row = [[f(x) for x in row] for row in ell]
        want = {
            "token-mean": sum(map(sum, per_row)) / 10,
            "sequence-mean": sum(sum(r) / len(r) for r in per_row) / 3,
            "sequence-sum": sum(map(sum, per_row)) / 3,
        }
        for agg, w in want.items():
            got = pl.kl_loss(LOGP, REF, MASK, est, aggregation=agg).item()
            assert got == pytest.approx(w, abs=1e-14), (est, agg)
        seq = sum(f(sum(r)) for r in ell) / 3  # the estimator of each row's summed log-ratio
        assert pl.kl_loss(LOGP, REF, MASK, est, level="sequence").item() == pytest.approx(seq, abs=1e-14), est
    # the defaults: k3, token level, token-mean
    assert pl.kl_loss(LOGP, REF, MASK).item() == pytest.approx(sum(k3(x) for r in ell for x in r) / 10, abs=1e-14)


def test_kl_loss_sequence_level_skips_empty_rows():
    m = MASK.clone()
    m[1] = 0
    ell = rows(ELL.tolist())
    want = (k3(sum(ell[0])) + k3(sum(ell[2]))) / 2
    assert pl.kl_loss(LOGP, REF, m, "k3", level="sequence").item() == pytest.approx(want, abs=1e-14)
    with pytest.raises(ValueError, match="token level only"):
        pl.kl_loss(LOGP, REF, MASK, level="sequence", old_logp=LOGP)


def test_kl_loss_gradient_flows_to_logp_only():
    logp = LOGP.clone().requires_grad_(True)
    ref = REF.clone().requires_grad_(True)
    loss = pl.kl_loss(logp, ref, MASK, "k2", aggregation="sequence-sum")
    gl, gr = torch.autograd.grad(loss, [logp, ref], allow_unused=True)
    assert gr is None  # the reference is a constant
    assert torch.allclose(gl, ELL * MASK / 3, atol=1e-15)  # d(l^2/2)/dl = l, summed per row, mean over 3 rows


def test_kl_loss_importance_weights_ignore_the_prompt():
    # the prompt positions of row 0 have logp != old_logp; their ratio must not enter the prefix product
    old = LOGP + torch.tensor(
        [[0.7, -0.4, 0.1, -0.2, 0.3], [0.05, -0.1, 0.6, 0.6, 0.6], [0.0, 0.1, -0.1, 0.2, 0.0]], dtype=D
    )
    lw = (LOGP - old).tolist()
    ell = ELL.tolist()
    tok, pre = [], []
    for b in range(3):
        acc, t_sum, p_sum = 0.0, 0.0, 0.0
        for t in range(5):
            if not MASK[b, t]:
                continue
            acc += lw[b][t]
            t_sum += math.exp(lw[b][t]) * k3(ell[b][t])
            p_sum += math.exp(acc) * k3(ell[b][t])
        tok.append(t_sum)
        pre.append(p_sum)
    got_tok = pl.kl_loss(LOGP, REF, MASK, "k3", old_logp=old, aggregation="sequence-sum").item()
    got_pre = pl.kl_loss(LOGP, REF, MASK, "k3", old_logp=old, importance="prefix", aggregation="sequence-sum").item()
    assert got_tok == pytest.approx(sum(tok) / 3, abs=1e-14)
    assert got_pre == pytest.approx(sum(pre) / 3, abs=1e-14)
    # token-mean with importance weights: the weighted terms over all 10 response tokens
    got_tm = pl.kl_loss(LOGP, REF, MASK, "k3", old_logp=old).item()
    assert got_tm == pytest.approx(sum(tok) / 10, abs=1e-14)
    with pytest.raises(ValueError, match="NaN or inf"):
        pl.kl_loss(LOGP, REF, MASK, old_logp=torch.full_like(LOGP, float("nan")))


def test_clipped_surrogate_values_and_which_side_is_clipped():
    eps = 0.1
    # one token per case: ratio above 1+eps or below 1-eps, positive or negative advantage, inside the band
    old = torch.zeros(1, 6, dtype=D) - 1.0
    ratios = [1.5, 0.5, 1.5, 0.5, 1.05, 0.95]
    adv = torch.tensor([[2.0, 2.0, -2.0, -2.0, 1.0, -1.0]], dtype=D)
    logp = (old + torch.log(torch.tensor([ratios], dtype=D))).requires_grad_(True)
    mask = torch.ones(1, 6, dtype=D)
    loss, stats = pl.clipped_surrogate(logp, old, adv, mask, clip_eps=eps)
    # -min(w A, clip(w) A) per token
    per_tok = [-min(w * a, min(max(w, 1 - eps), 1 + eps) * a) for w, a in zip(ratios, adv[0].tolist())]
    assert per_tok == pytest.approx([-2.2, -1.0, 3.0, 1.8, -1.05, 0.95])
    assert loss.item() == pytest.approx(sum(per_tok) / 6, abs=1e-14)
    # clipped: (A > 0, w > 1 + eps) and (A < 0, w < 1 - eps) only -- 2 of the 6 tokens
    assert stats["clip_fraction"].item() == pytest.approx(2 / 6, abs=1e-15)
    assert stats["ratio_mean"].item() == pytest.approx(sum(ratios) / 6, abs=1e-14)
    (g,) = torch.autograd.grad(loss, logp)
    want = [0.0 if c else -w * a / 6 for c, w, a in zip([1, 0, 0, 1, 0, 0], ratios, adv[0].tolist())]
    assert g[0].tolist() == pytest.approx(want, abs=1e-14)
    assert not stats["clip_fraction"].requires_grad and not stats["ratio_mean"].requires_grad


def test_clipped_surrogate_default_eps_masks_and_aggregations():
    # the default eps is 0.2: a ratio of 1.15 is inside the band, 1.25 is clipped
    old = torch.full((2, 3), -1.0, dtype=D)
    logp = old + torch.log(torch.tensor([[1.15, 1.25, 3.0], [1.25, 1.0, 1.0]], dtype=D))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=D)  # the 3.0 ratio sits on padding
    adv = torch.tensor([1.0, -1.0], dtype=D)  # one advantage per sequence
    loss, stats = pl.clipped_surrogate(logp, old, adv, mask)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)
    assert stats["ratio_mean"].item() == pytest.approx((1.15 + 1.25 + 1.25) / 3)
    per = [[-1.15, -1.2], [1.25]]  # row 1: A < 0, w = 1.25 > 1.2: min(-1.25, -1.2) = -1.25, unclipped
    assert loss.item() == pytest.approx((-1.15 - 1.2 + 1.25) / 3)
    s_mean = pl.clipped_surrogate(logp, old, adv, mask, aggregation="sequence-mean")[0].item()
    assert s_mean == pytest.approx((sum(per[0]) / 2 + per[1][0]) / 2)
    s_sum = pl.clipped_surrogate(logp, old, adv, mask, aggregation="sequence-sum")[0].item()
    assert s_sum == pytest.approx((sum(per[0]) + per[1][0]) / 2)
    with pytest.raises(ValueError, match="clip_eps"):
        pl.clipped_surrogate(logp, old, adv, mask, clip_eps=0.0)
    with pytest.raises(ValueError, match="batch size"):
        pl.clipped_surrogate(logp, old, adv[:1], mask)


def test_clipped_surrogate_advantages_are_detached():
    old = torch.full((1, 2), -1.0, dtype=D)
    adv = torch.tensor([[1.0, -1.0]], dtype=D, requires_grad=True)
    loss, _ = pl.clipped_surrogate(old.clone().requires_grad_(True), old, adv, torch.ones(1, 2, dtype=D))
    assert torch.autograd.grad(loss, adv, allow_unused=True)[0] is None


def test_placement_objects():
    p = pl.parse_placement("k3-in-reward")
    assert (p.estimator, p.where, p.in_reward, p.in_loss) == ("k3", "reward", True, False)
    q = pl.parse_placement("k2-in-loss")
    assert (q.estimator, q.where, q.in_reward, q.in_loss) == ("k2", "loss", False, True)
    n = pl.parse_placement("none")
    assert (n.estimator, n.where, n.in_reward, n.in_loss) == (None, None, False, False)
    assert pl.parse_placement(p) is p
    assert pl.PLACEMENTS == ("none", "k1-in-reward", "k3-in-reward", "k1-in-loss", "k2-in-loss", "k3-in-loss")
    for bad in ("k2-in-reward-x", "k1-in-", "-in-loss", 3):
        with pytest.raises(ValueError, match="unknown KL placement"):
            pl.parse_placement(bad)


def test_output_dtypes_follow_the_log_probabilities():
    """float32 log-probabilities with a float64 (or bool) mask give float32 results."""
    lp, rf = LOGP.float(), REF.float()
    for m in (MASK, MASK.bool()):
        assert pl.kl_loss(lp, rf, m).dtype == torch.float32
        assert pl.kl_loss(lp, rf, m, level="sequence").dtype == torch.float32
        assert pl.clipped_surrogate(lp, rf, torch.ones(3), m)[0].dtype == torch.float32
    assert pl.returns_to_go(torch.ones(3, 5), MASK).dtype == torch.float32
    assert pl.returns_to_go(torch.ones(3, 5), MASK).tolist() == [[0, 0, 3, 2, 1], [2, 1, 0, 0, 0], [5, 4, 3, 2, 1]]


def test_one_token_rows_and_one_position_sequences():
    m = MASK.clone()
    m[0] = torch.tensor([0, 0, 0, 0, 1], dtype=D)  # row 0: a single response token
    ell = ELL.tolist()
    want = (k3(ell[0][4]) + k3(ell[1][0] + ell[1][1]) + k3(sum(ell[2]))) / 3
    assert pl.kl_loss(LOGP, REF, m, "k3", level="sequence").item() == pytest.approx(want, abs=1e-14)
    first = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=D)  # the first position alone, or last
    assert pl.last_token_index(first).tolist() == [0, 2, 1]
    one = torch.tensor([[2.0], [3.0]], dtype=D)  # sequences of length 1
    assert pl.returns_to_go(one, torch.ones(2, 1, dtype=D), gamma=0.5).tolist() == [[2.0], [3.0]]


def test_masked_mean_with_mask_mass_below_one():
    v = torch.tensor([[2.0, 6.0]], dtype=D)
    w = torch.tensor([[0.125, 0.125]], dtype=D)  # total weight 1/4: the mean is still 4
    assert pl.masked_mean(v, w).item() == pytest.approx(4.0)
    assert pl.masked_mean(v, w, dim=-1).tolist() == pytest.approx([4.0])


def test_placement_names_with_two_separators_get_the_clear_error():
    for bad in ("k1-in-loss-in-reward", "k3-in-reward-in-loss"):
        with pytest.raises(ValueError, match="unknown KL placement"):
            pl.parse_placement(bad)


def test_prefix_ratio_by_hand():
    """W_t = prod_{s<t} w_s with w_s = exp(logp - old_logp); padding counts as w = 1; gradient through logp."""
    import math

    import torch

    from kltutor.placements import prefix_ratio

    logp = torch.tensor([[-0.5, -1.0, -2.0, -0.1]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.7, -0.6, -2.5, -3.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    w = prefix_ratio(logp, old, mask)
    expect = [1.0, math.exp(0.2), math.exp(0.2 - 0.4), math.exp(0.2 - 0.4 + 0.5)]  # the padded last w_s = 1
    assert torch.allclose(w, torch.tensor([expect], dtype=torch.float64), rtol=0, atol=1e-15)
    w.sum().backward()  # dW_t/dlogp_s = W_t for s < t (unpadded), 0 otherwise
    assert torch.allclose(
        logp.grad, torch.tensor([[sum(expect[1:]), sum(expect[2:]), expect[3], 0.0]], dtype=torch.float64)
    )
