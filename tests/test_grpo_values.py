"""kltutor.grpo: every field of GRPOLoss pinned by hand on a batch with a prompt, an early EOS and
unequal lengths, for each placement and aggregation; the in-reward ``kl_term`` is the mean
estimator (not beta times it); the package's outputs pass kltutor.checklist."""

import math

import pytest
import torch

from kltutor.checklist import check_batch
from kltutor.grpo import expected_in_loss_gradient, group_advantages, grpo_loss
from kltutor.placements import shaped_rewards

D = torch.float64

# 4 completions (2 prompts x group of 2), 4 positions. Row 0: a prompt token then 3 response tokens;
# row 1: an early EOS after 2 tokens; row 2: 1 token; row 3: all 4.
OLD = torch.tensor(
    [[-0.7, -0.9, -1.3, -0.2], [-0.4, -1.6, -0.8, -0.8], [-2.0, -0.5, -0.5, -0.5], [-0.3, -0.6, -1.1, -0.9]], dtype=D
)
REF = torch.tensor(
    [[-0.1, -1.2, -1.0, -0.5], [-0.9, -1.1, -0.3, -0.2], [-1.4, -0.5, -0.6, -0.1], [-0.3, -0.9, -0.7, -1.3]], dtype=D
)
MASK = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=D)
REWARDS = torch.tensor([1.0, 0.0, 0.25, 0.75], dtype=D)
LENS = [3, 2, 1, 4]


def k(name, x):
    return {"k1": x, "k2": 0.5 * x * x, "k3": math.exp(-x) - 1 + x}[name]


def resp(b, t_values):
    return [t_values[t] for t in range(4) if MASK[b, t]]


def agg(per_row, mode):
    """Hand aggregation of lists of per-token values (one list per row)."""
    if mode == "token-mean":
        return sum(map(sum, per_row)) / sum(map(len, per_row))
    if mode == "sequence-mean":
        return sum(sum(r) / len(r) for r in per_row) / len(per_row)
    return sum(map(sum, per_row)) / len(per_row)


def hand_advantages():
    out = []
    for g in (REWARDS[:2].tolist(), REWARDS[2:].tolist()):
        mean = sum(g) / 2
        std = math.sqrt(sum((x - mean) ** 2 for x in g) / 1)  # unbiased: divide by G - 1 = 1
        out += [(x - mean) / (std + 1e-6) for x in g]
    return out


def test_group_advantages_default_eps_and_dtypes():
    a = group_advantages(REWARDS, 2)
    assert a.tolist() == pytest.approx(hand_advantages(), abs=1e-15)
    assert a.dtype == D
    f32 = group_advantages(REWARDS.float(), 2)
    assert f32.dtype == torch.float32 and f32.tolist() == pytest.approx(hand_advantages(), abs=1e-6)
    # a group of 4 with a non-default eps and normalize_std=False
    r = torch.tensor([1.0, 2.0, 4.0, 9.0], dtype=D)
    std = math.sqrt(sum((x - 4.0) ** 2 for x in r.tolist()) / 3)
    assert group_advantages(r, 4, eps=0.5).tolist() == pytest.approx([(x - 4.0) / (std + 0.5) for x in r.tolist()])
    assert group_advantages(r, 4, normalize_std=False, eps=0.5).tolist() == pytest.approx([-3.0, -2.0, 0.0, 5.0])


@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean", "sequence-sum"])
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_in_reward_on_policy_every_field_by_hand(estimator, aggregation):
    beta = 0.3
    logp = OLD.clone().requires_grad_(True)  # on-policy: ratio 1, nothing clipped
    out = grpo_loss(
        logp, OLD, REF, MASK, REWARDS, 2, placement=f"{estimator}-in-reward", beta=beta, aggregation=aggregation
    )
    adv = hand_advantages()
    ell = (OLD - REF).tolist()
    kl_rows = [[k(estimator, x) for x in resp(b, ell[b])] for b in range(4)]
    # each token's advantage: the group advantage plus the return-to-go of -beta k
    token_adv = [[adv[b] - beta * sum(row[i:]) for i in range(len(row))] for b, row in enumerate(kl_rows)]
    assert out.loss.item() == pytest.approx(-agg(token_adv, aggregation), abs=1e-12)
    assert out.policy_loss.item() == pytest.approx(out.loss.item(), abs=0)
    # the reported KL is the aggregated estimator itself, whatever beta
    assert out.kl_term.item() == pytest.approx(agg(kl_rows, aggregation), abs=1e-13)
    assert out.clip_fraction.item() == 0.0
    again = grpo_loss(
        OLD, OLD, REF, MASK, REWARDS, 2, placement=f"{estimator}-in-reward", beta=0.01, aggregation=aggregation
    )
    assert again.kl_term.item() == pytest.approx(out.kl_term.item(), abs=1e-13)
    # gradient: d/dlogp of -w * A_t at w = 1 is -A_t times the aggregation weight of the token
    (g,) = torch.autograd.grad(out.loss, logp)
    for b in range(4):
        idx = [t for t in range(4) if MASK[b, t]]
        w = {"token-mean": 1 / 10, "sequence-mean": 1 / (4 * LENS[b]), "sequence-sum": 1 / 4}[aggregation]
        assert [g[b, t].item() for t in idx] == pytest.approx([-a * w for a in token_adv[b]], abs=1e-12)
        assert all(g[b, t].item() == 0.0 for t in range(4) if not MASK[b, t])
    for v in (out.policy_loss, out.kl_term, out.clip_fraction):
        assert not v.requires_grad


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_in_loss_fields_by_hand(estimator):
    beta = 0.2
    shift = torch.tensor(
        [[0.0, 0.3, -0.05, 0.1], [-0.4, 0.02, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, -0.01, 0.15, -0.3]], dtype=D
    )
    logp = (OLD + shift).requires_grad_(True)
    out = grpo_loss(
        logp,
        OLD,
        REF,
        MASK,
        REWARDS,
        2,
        placement=f"{estimator}-in-loss",
        beta=beta,
        clip_eps=0.25,
        aggregation="token-mean",
    )
    adv = hand_advantages()
    w = torch.exp(shift).tolist()
    ell = (OLD + shift - REF).tolist()
    surr, kl, clipped = [], [], 0
    for b in range(4):
        s_row, k_row = [], []
        for t in range(4):
            if not MASK[b, t]:
                continue
            un, cl = w[b][t] * adv[b], min(max(w[b][t], 0.75), 1.25) * adv[b]
            s_row.append(-min(un, cl))
            clipped += cl < un
            k_row.append(k(estimator, ell[b][t]))
        surr.append(s_row)
        kl.append(k_row)
    assert clipped == 2  # ratio e^0.3 with A > 0 and e^-0.4 with A < 0
    assert out.policy_loss.item() == pytest.approx(agg(surr, "token-mean"), abs=1e-12)
    assert out.kl_term.item() == pytest.approx(agg(kl, "token-mean"), abs=1e-12)
    assert out.loss.item() == pytest.approx(agg(surr, "token-mean") + beta * agg(kl, "token-mean"), abs=1e-12)
    assert out.clip_fraction.item() == pytest.approx(clipped / 10, abs=1e-15)


def test_in_loss_kl_level_and_importance_weighting():
    shift = torch.tensor(
        [[0.0, 0.1, -0.1, 0.2], [0.1, 0.1, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.0], [0.05, 0.0, 0.0, -0.1]], dtype=D
    )
    logp = OLD + shift
    ell = (logp - REF).tolist()
    seq = sum(k("k3", sum(resp(b, ell[b]))) for b in range(4)) / 4
    out = grpo_loss(logp, OLD, REF, MASK, REWARDS, 2, placement="k3-in-loss", beta=0.1, kl_level="sequence")
    assert out.kl_term.item() == pytest.approx(seq, abs=1e-13)
    w = torch.exp(shift).tolist()
    iw = [[w[b][t] * k("k3", ell[b][t]) for t in range(4) if MASK[b, t]] for b in range(4)]
    out = grpo_loss(
        logp, OLD, REF, MASK, REWARDS, 2, placement="k3-in-loss", beta=0.1, importance_weighted_kl=True
    )  # default aggregation: sequence-mean
    assert out.kl_term.item() == pytest.approx(agg(iw, "sequence-mean"), abs=1e-13)
    plain = grpo_loss(logp, OLD, REF, MASK, REWARDS, 2, placement="k3-in-loss", beta=0.1)
    kl_rows = [[k("k3", ell[b][t]) for t in range(4) if MASK[b, t]] for b in range(4)]
    assert plain.kl_term.item() == pytest.approx(agg(kl_rows, "sequence-mean"), abs=1e-13)


def test_defaults_are_k3_in_loss_beta_004_eps_02_sequence_mean():
    shift = torch.tensor(
        [[0.0, 0.19, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.21, 0.0, 0.0, 0.0]], dtype=D
    )
    logp = OLD + torch.log1p(shift)  # ratios 1.19 (inside 1 +- 0.2) and 1.21 (outside)
    out = grpo_loss(logp, OLD, REF, MASK, REWARDS, 2)
    explicit = grpo_loss(
        logp,
        OLD,
        REF,
        MASK,
        REWARDS,
        2,
        placement="k3-in-loss",
        beta=0.04,
        clip_eps=0.2,
        aggregation="sequence-mean",
        normalize_std=True,
        kl_level="token",
    )
    for f in ("loss", "policy_loss", "kl_term", "clip_fraction"):
        assert getattr(out, f).item() == getattr(explicit, f).item(), f
    assert out.loss.item() == pytest.approx(out.policy_loss.item() + 0.04 * out.kl_term.item(), abs=1e-15)
    assert out.clip_fraction.item() == pytest.approx(1 / 10)  # row 3 has A > 0; row 0 too, but 1.19 is inside


def test_none_and_beta_zero_and_clip_std_and_normalize_std():
    # token-mean weighs rows by length, so the advantages' size shows in the loss (sequence-mean of
    # on-policy advantages is 0 for every normalisation: each group's advantages sum to zero)
    adv = hand_advantages()
    none = grpo_loss(OLD, OLD, REF, MASK, REWARDS, 2, placement="none", beta=0.5, aggregation="token-mean")
    want = -sum(adv[b] * LENS[b] for b in range(4)) / 10
    assert none.loss.item() == pytest.approx(want, abs=1e-12) and none.kl_term.item() == 0.0
    assert none.kl_term.dtype == D and none.loss.item() == none.policy_loss.item()
    zero = grpo_loss(OLD, OLD, REF, MASK, REWARDS, 2, placement="k3-in-loss", beta=0.0, aggregation="token-mean")
    assert zero.loss.item() == pytest.approx(want, abs=1e-12)
    assert zero.kl_term.item() > 0  # the KL is still reported when it does not enter the loss
    zero_r = grpo_loss(OLD, OLD, REF, MASK, REWARDS, 2, placement="k3-in-reward", beta=0.0, aggregation="token-mean")
    assert zero_r.loss.item() == pytest.approx(want, abs=1e-12) and torch.isfinite(zero_r.kl_term)
    centred = [0.5, -0.5, -0.25, 0.25]
    want_dr = -sum(centred[b] * LENS[b] for b in range(4)) / 10
    dr = grpo_loss(OLD, OLD, REF, MASK, REWARDS, 2, placement="none", normalize_std=False, aggregation="token-mean")
    assert dr.loss.item() == pytest.approx(want_dr, abs=1e-15)
    clipped = grpo_loss(
        OLD, OLD, REF, MASK, REWARDS, 2, placement="none", clip_std=(1.0, 2.0), aggregation="token-mean"
    )
    # stds are sqrt(0.5) and sqrt(0.125), both raised to 1: the advantages are the centred rewards
    assert clipped.loss.item() == pytest.approx(want_dr, abs=1e-15)
    same = group_advantages(REWARDS, 2, clip_std=(0.5, 0.5))  # lo == hi is allowed: a fixed divisor
    assert same.tolist() == pytest.approx([c / 0.5 for c in centred], abs=1e-15)


def test_dtypes_follow_the_log_probabilities():
    lp, old, ref = OLD.float(), OLD.float(), REF.float()
    for placement in ("k3-in-reward", "k3-in-loss", "none"):
        out = grpo_loss(lp, old, ref, MASK, REWARDS.float(), 2, placement=placement)  # float64 mask
        assert out.loss.dtype == out.kl_term.dtype == torch.float32, placement


def test_grpo_outputs_pass_the_checklist():
    logp = OLD.clone().requires_grad_(True)
    for placement in ("k1-in-reward", "k3-in-reward", "k3-in-loss", "none"):
        out = grpo_loss(logp, OLD, REF, MASK, REWARDS, 2, placement=placement, beta=0.1)
        for v in (out.loss, out.policy_loss, out.kl_term, out.clip_fraction):
            assert v.dim() == 0 and torch.isfinite(v)
        assert out.loss.requires_grad
    penalty = shaped_rewards(torch.zeros(4, dtype=D), logp, REF, MASK, 0.1, "k3")
    report = check_batch(logp=logp, ref_logp=REF, mask=MASK, rewards=REWARDS, shaped_rewards=penalty, first_step=False)
    assert report.ok, str(report)


def test_expected_in_loss_gradient_values():
    # two outcomes: pi = (0.5, 0.5) from zero logits, ref = (0.8, 0.2)
    logits = torch.zeros(2, dtype=D)
    ref = torch.log(torch.tensor([0.8, 0.2], dtype=D))
    v, g = expected_in_loss_gradient(logits, ref, "k1")
    kl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert v.item() == pytest.approx(kl, abs=1e-15)
    assert g.tolist() == pytest.approx([0.0, 0.0], abs=1e-15)  # E[grad log pi] = 0
    v2, g2 = expected_in_loss_gradient(logits, ref, "k2")
    l1, l2 = math.log(0.5 / 0.8), math.log(0.5 / 0.2)
    assert v2.item() == pytest.approx(0.25 * (l1 * l1 + l2 * l2), abs=1e-15)
    # grad of sum_y q(y) l(y)^2/2 w.r.t. logits, q fixed: sum_y q(y) l(y) (e_y - pi)
    assert g2.tolist() == pytest.approx([0.5 * (0.5 * l1 - 0.5 * l2), 0.5 * (0.5 * l2 - 0.5 * l1)], abs=1e-15)
    # default estimator k3; a stale sampler (0.9, 0.1)
    q = torch.tensor([0.9, 0.1], dtype=D)
    v3, _ = expected_in_loss_gradient(logits, ref, sampling_probs=q)
    assert v3.item() == pytest.approx(0.9 * k("k3", l1) + 0.1 * k("k3", l2), abs=1e-15)
    v3w, _ = expected_in_loss_gradient(logits, ref, sampling_probs=q, importance_weighted=True)
    assert v3w.item() == pytest.approx(0.5 * k("k3", l1) + 0.5 * k("k3", l2), abs=1e-15)
    with pytest.raises(ValueError, match="1-D"):
        expected_in_loss_gradient(logits[None], ref[None])
    # float32 logits are evaluated in float64; a sampler with a zero entry is a valid sampler
    v32, g32 = expected_in_loss_gradient(logits.float(), ref.float(), "k2")
    assert v32.dtype == g32.dtype == D and v32.item() == pytest.approx(v2.item(), abs=1e-7)
    q32 = torch.tensor([0.75, 0.25])  # exact in float32; its log must still be taken in float64
    v_iw32, g_iw32 = expected_in_loss_gradient(logits, ref, sampling_probs=q32, importance_weighted=True)
    v_iw64, g_iw64 = expected_in_loss_gradient(logits, ref, sampling_probs=q32.double(), importance_weighted=True)
    assert v_iw32.item() == pytest.approx(v_iw64.item(), abs=1e-15)
    assert g_iw32.tolist() == pytest.approx(g_iw64.tolist(), abs=1e-15)
    v0, _ = expected_in_loss_gradient(logits, ref, "k1", sampling_probs=torch.tensor([1.0, 0.0], dtype=D))
    assert v0.item() == pytest.approx(l1, abs=1e-15)
    for bad in (
        torch.tensor([0.5, 0.25, 0.25], dtype=D),
        torch.tensor([1.5, -0.5], dtype=D),
        torch.tensor([0.5, 0.6], dtype=D),
        torch.tensor([[0.5, 0.5]], dtype=D),
    ):
        # a one-line error that starts with the argument's name, whichever check refuses it
        with pytest.raises(ValueError, match="^sampling_probs "):
            expected_in_loss_gradient(logits, ref, sampling_probs=bad)
