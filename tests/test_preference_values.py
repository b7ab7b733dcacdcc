"""kltutor.preference: every field of every PreferenceLoss pinned by hand (rewards, margins,
accuracy, extras), tau / gamma / lambda / KTO weights away from their defaults, the tabular
laboratory's outputs, and what chapter 5 says of the dpo_loss source it prints."""

import math

import pytest
import torch

from kltutor import preference as pref

D = torch.float64
PW = torch.tensor([-10.0, -4.0, -6.0], dtype=D)
PL = torch.tensor([-12.0, -3.0, -6.0], dtype=D)
RW = torch.tensor([-11.0, -4.5, -5.0], dtype=D)
RL = torch.tensor([-11.0, -2.0, -7.0], dtype=D)
LW = torch.tensor([5.0, 2.0, 3.0], dtype=D)
LL = torch.tensor([4.0, 3.0, 3.0], dtype=D)


def sig(x):
    return 1 / (1 + math.exp(-x))


def ls(x):  # -log sigma(x)
    return math.log1p(math.exp(-x)) if x > -30 else -x


def test_dpo_every_field():
    beta = 0.4
    out = pref.dpo_loss(PW, PL, RW, RL, beta)
    ch = [beta * (a - b) for a, b in zip(PW.tolist(), RW.tolist())]  # 0.4, 0.2, -0.4
    rj = [beta * (a - b) for a, b in zip(PL.tolist(), RL.tolist())]  # -0.4, -0.4, 0.4
    assert out.chosen_rewards.tolist() == pytest.approx(ch, abs=1e-15)
    assert out.rejected_rewards.tolist() == pytest.approx(rj, abs=1e-15)
    assert out.margins.tolist() == pytest.approx([c - r for c, r in zip(ch, rj)], abs=1e-15)
    assert out.losses.tolist() == pytest.approx([ls(c - r) for c, r in zip(ch, rj)], abs=1e-15)
    assert out.loss.item() == pytest.approx(sum(ls(c - r) for c, r in zip(ch, rj)) / 3, abs=1e-15)
    assert out.accuracy.item() == pytest.approx(2 / 3)  # the third pair is ordered the wrong way
    assert out.extras == {}


def test_ipo_every_field_with_tau():
    tau = 0.2  # target 1 / (2 tau) = 2.5
    out = pref.ipo_loss(PW, PL, RW, RL, tau)
    cr = [a - b for a, b in zip(PW.tolist(), RW.tolist())]  # 1, 0.5, -1
    rr = [a - b for a, b in zip(PL.tolist(), RL.tolist())]  # -1, -1, 1
    assert out.losses.tolist() == pytest.approx([(c - r - 2.5) ** 2 for c, r in zip(cr, rr)], abs=1e-14)
    assert out.chosen_rewards.tolist() == pytest.approx([tau * c for c in cr], abs=1e-15)
    assert out.rejected_rewards.tolist() == pytest.approx([tau * r for r in rr], abs=1e-15)
    assert out.margins.tolist() == pytest.approx([tau * (c - r) for c, r in zip(cr, rr)], abs=1e-15)
    assert out.accuracy.item() == pytest.approx(2 / 3)
    assert out.loss.item() == pytest.approx(sum((c - r - 2.5) ** 2 for c, r in zip(cr, rr)) / 3, abs=1e-14)
    # log-ratios other than +-1, where tau * ratio and tau / ratio differ
    two = pref.ipo_loss(PW, PL - 1.0, RW - 3.0, RL, tau)  # chosen ratios 4, 3.5, 2; rejected -2, -2, 0
    assert two.chosen_rewards.tolist() == pytest.approx([0.8, 0.7, 0.4], abs=1e-15)
    assert two.rejected_rewards.tolist() == pytest.approx([-0.4, -0.4, 0.0], abs=1e-15)


def test_simpo_every_field_with_gamma():
    beta, gamma = 2.5, 0.3
    out = pref.simpo_loss(PW, PL, LW, LL, beta, gamma)
    ch = [beta * a / n for a, n in zip(PW.tolist(), LW.tolist())]  # -5, -5, -5
    rj = [beta * a / n for a, n in zip(PL.tolist(), LL.tolist())]  # -7.5, -2.5, -5
    assert out.chosen_rewards.tolist() == pytest.approx(ch, abs=1e-15)
    assert out.rejected_rewards.tolist() == pytest.approx(rj, abs=1e-15)
    assert out.margins.tolist() == pytest.approx([2.5, -2.5, 0.0], abs=1e-15)  # margins exclude gamma
    assert out.losses.tolist() == pytest.approx([ls(c - r - gamma) for c, r in zip(ch, rj)], abs=1e-15)
    assert out.accuracy.item() == pytest.approx(1 / 3)  # a tie is not a win
    g0 = pref.simpo_loss(PW, PL, LW, LL, beta, 0.0)
    assert g0.losses.tolist() == pytest.approx([ls(c - r) for c, r in zip(ch, rj)], abs=1e-15)
    ints = pref.simpo_loss(PW, PL, LW.long(), LL.long(), beta, gamma)  # integer token counts
    assert ints.losses.tolist() == pytest.approx(out.losses.tolist(), abs=0)


def test_orpo_every_field():
    lam = 0.3
    out = pref.orpo_loss(PW, PL, LW, LL, lam)
    lo_w, lo_l, nll = [], [], []
    for pw, pl, lw, ll in zip(PW.tolist(), PL.tolist(), LW.tolist(), LL.tolist()):
        a, b = math.exp(pw / lw), math.exp(pl / ll)
        lo_w.append(math.log(a / (1 - a)))
        lo_l.append(math.log(b / (1 - b)))
        nll.append(-pw / lw)
    lor = [a - b for a, b in zip(lo_w, lo_l)]
    assert out.chosen_rewards.tolist() == pytest.approx(lo_w, abs=1e-14)
    assert out.rejected_rewards.tolist() == pytest.approx(lo_l, abs=1e-14)
    assert out.margins.tolist() == pytest.approx(lor, abs=1e-14)
    assert out.extras["nll"].tolist() == pytest.approx(nll, abs=1e-15)
    assert out.extras["log_odds_ratio"].tolist() == pytest.approx(lor, abs=1e-14)
    assert out.losses.tolist() == pytest.approx([n + lam * ls(x) for n, x in zip(nll, lor)], abs=1e-14)
    assert out.accuracy.item() == pytest.approx(sum(x > 0 for x in lor) / 3)
    zero = pref.orpo_loss(PW, PL, LW, LL, 0.0)  # lambda = 0: the SFT term alone
    assert zero.losses.tolist() == pytest.approx(nll, abs=1e-15)
    # log(1 - e^x) on both sides of -log 2
    for x in (-1e-8, -0.5, -math.log(2), -0.9, -30.0):
        t = torch.tensor([x], dtype=D)
        assert pref._log1mexp(t).item() == pytest.approx(math.log(-math.expm1(x)), rel=1e-12)
    with pytest.raises(ValueError, match="lam"):
        pref.orpo_loss(PW, PL, LW, LL, -0.1)


def test_kto_every_field_with_weights():
    beta = 0.5
    logp = torch.tensor([-2.0, -3.0, -5.0, -1.0], dtype=D)
    ref = torch.tensor([-3.0, -3.0, -4.0, -1.5], dtype=D)
    des = torch.tensor([True, False, False, True])
    kp = torch.tensor([-6.0, -6.0, -2.0], dtype=D)
    kr = torch.tensor([-6.3, -6.9, -2.3], dtype=D)  # mean log-ratio 0.5: z0 = 0.5
    out = pref.kto_loss(logp, ref, des, kp, kr, beta, desirable_weight=1.5, undesirable_weight=0.5)
    rho = [1.0, 0.0, -1.0, 0.5]
    z0 = 0.5
    want = [
        1.5 * (1 - sig(beta * (1.0 - z0))),
        0.5 * (1 - sig(beta * (z0 - 0.0))),
        0.5 * (1 - sig(beta * (z0 + 1.0))),
        1.5 * (1 - sig(beta * (0.5 - z0))),
    ]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-15)
    assert out.loss.item() == pytest.approx(sum(want) / 4, abs=1e-15)
    assert out.extras["z0"].item() == pytest.approx(z0, abs=1e-15)
    assert out.chosen_rewards.tolist() == pytest.approx([beta * 1.0, beta * 0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([0.0, beta * -1.0])
    assert out.margins.item() == pytest.approx(beta * 0.75 - beta * -0.5)
    assert math.isnan(out.accuracy.item())
    # default weights 1; every example desirable: no rejected side, its mean counts as 0
    one = pref.kto_loss(logp, ref, torch.ones(4, dtype=torch.bool), kp, kr, beta)
    assert one.losses.tolist() == pytest.approx([1 - sig(beta * (r - z0)) for r in rho], abs=1e-15)
    assert one.rejected_rewards.numel() == 0
    assert math.isnan(one.margins.item())  # no undesirable example: no margin, not the chosen mean alone
    none = pref.kto_loss(logp, ref, torch.zeros(4, dtype=torch.bool), kp, kr, beta)
    assert math.isnan(none.margins.item()) and none.rejected_rewards.tolist() == pytest.approx([beta * r for r in rho])
    # z0 is detached: no gradient reaches the mismatched completions
    kp_g = kp.clone().requires_grad_(True)
    lp_g = logp.clone().requires_grad_(True)
    loss = pref.kto_loss(lp_g, ref, des, kp_g, kr, beta).loss
    g_lp, g_kp = torch.autograd.grad(loss, [lp_g, kp_g], allow_unused=True)
    assert g_kp is None and g_lp is not None


def test_chapter5_dpo_source_detaches_the_reference_and_stays_finite():
    """Chapter 5 prints dpo_loss and says: per-sequence log-probs, reference detached, -logsigmoid."""
    pw, pl = PW.clone().requires_grad_(True), PL.clone().requires_grad_(True)
    rw, rl = RW.clone().requires_grad_(True), RL.clone().requires_grad_(True)
    out = pref.dpo_loss(pw, pl, rw, rl, 0.4)
    grads = torch.autograd.grad(out.loss, [pw, pl, rw, rl], allow_unused=True)
    assert grads[2] is None and grads[3] is None
    w = [sig(-m) for m in out.margins.tolist()]
    assert grads[0].tolist() == pytest.approx([-0.4 * x / 3 for x in w], abs=1e-15)
    assert grads[1].tolist() == pytest.approx([0.4 * x / 3 for x in w], abs=1e-15)
    # a margin of -2000 in float32: -log(sigmoid) would be inf; -logsigmoid is 2000
    far = pref.dpo_loss(torch.tensor([-2001.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), 1.0)
    assert far.losses.item() == pytest.approx(2000.0)
    assert out.loss.requires_grad
    for v in (out.chosen_rewards, out.rejected_rewards, out.margins, out.accuracy, out.losses):
        assert not v.requires_grad  # monitoring values are detached


def test_optimal_policy_objective_and_implicit_reward_by_hand():
    ref = torch.tensor([0.5, 0.25, 0.25], dtype=D)
    r = torch.tensor([0.0, math.log(2), math.log(4)], dtype=D)
    # beta = 1: pi* = ref * e^r / Z = (0.5, 0.5, 1) / 2
    star = pref.optimal_policy(ref, r, 1.0)
    assert star.tolist() == pytest.approx([0.25, 0.25, 0.5], abs=1e-15)
    assert pref.optimal_policy(ref, r, 0.5).tolist() == pytest.approx([0.5 / 5.5, 1 / 5.5, 4 / 5.5], abs=1e-15)
    j = pref.kl_regularized_objective(star, ref, r, 1.0)
    assert j.item() == pytest.approx(math.log(2.0), abs=1e-15)  # beta log Z, Z = 2
    assert pref.kl_regularized_objective(ref, ref, r, 3.0).item() == pytest.approx(float((ref * r).sum()), abs=1e-15)
    assert pref.kl_regularized_objective(star, ref, r, 0.0).item() == pytest.approx(float((star * r).sum()), abs=1e-15)
    assert pref.implicit_reward(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]), 0.1).tolist() == pytest.approx(
        [0.05, -0.1]
    )
    assert pref.categorical_kl(star, ref).item() == pytest.approx(
        0.5 * math.log(2) + 0.25 * 0 + 0.25 * math.log(0.5), abs=1e-15
    )
    assert (
        pref.categorical_kl(torch.tensor([0.5, 0.5, 0.0], dtype=D), torch.tensor([0.5, 0.0, 0.5], dtype=D)).item()
        == math.inf
    )
    with pytest.raises(ValueError, match="beta"):
        pref.kl_regularized_objective(star, ref, r, -1.0)
    with pytest.raises(ValueError, match="same shape"):
        pref.kl_regularized_objective(star, ref, r[:2], 1.0)


def test_win_probability_and_ipo_optimum_by_hand():
    r = torch.tensor([0.0, 1.0], dtype=D)
    mu = torch.tensor([0.25, 0.75], dtype=D)
    p = pref.win_probability_against(r, mu)
    assert p.tolist() == pytest.approx([0.25 * 0.5 + 0.75 * sig(-1.0), 0.25 * sig(1.0) + 0.75 * 0.5], abs=1e-15)
    ref = torch.tensor([0.6, 0.4], dtype=D)
    tau = 0.5
    w = [0.6 * math.exp(p[0].item() / tau), 0.4 * math.exp(p[1].item() / tau)]
    assert pref.ipo_optimal_policy(ref, r, tau, mu).tolist() == pytest.approx([x / sum(w) for x in w], abs=1e-15)
    with pytest.raises(ValueError, match="same shape"):
        pref.win_probability_against(r, torch.tensor([1.0], dtype=D))


def test_bradley_terry_pairs_are_distinct_and_reproducible():
    r = torch.tensor([0.0, 2.0, -1.0], dtype=D)
    mu = torch.tensor([0.0, 0.5, 0.5], dtype=D)  # only responses 1 and 2 can be drawn
    ch, rj = pref.bradley_terry_pairs(r, mu, 500, torch.Generator().manual_seed(3))
    assert ch.shape == rj.shape == (500,) and (ch != rj).all()
    assert set(ch.tolist()) | set(rj.tolist()) == {1, 2}
    frac = (ch == 1).double().mean().item()
    p = sig(3.0)
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / 500)
    ch2, _ = pref.bradley_terry_pairs(r, mu, 500, torch.Generator().manual_seed(3))
    assert torch.equal(ch, ch2)
    with pytest.raises(ValueError, match="two responses"):
        pref.bradley_terry_pairs(r, torch.tensor([0.0, 1.0, 0.0], dtype=D), 5)
    with pytest.raises(ValueError, match="n_pairs"):
        pref.bradley_terry_pairs(r, mu, 0)


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "orpo"])
def test_train_tabular_records_and_first_step(method):
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    ch, rj = torch.tensor([2, 1, 2]), torch.tensor([0, 0, 1])
    lengths = torch.tensor([2.0, 3.0, 4.0], dtype=D)
    res = pref.train_tabular(method, ch, rj, ref, lengths, beta=0.5, gamma=0.2, steps=7, lr=0.1, record_every=3)
    assert res.steps.tolist() == [0, 3, 6, 7]
    assert res.probs_history.shape == (4, 3) and res.loss_history.shape == (4,)
    assert torch.equal(res.probs, res.probs_history[-1])
    assert res.probs_history[0].tolist() == pytest.approx(ref.tolist(), abs=1e-15)  # theta = 0: the reference
    lw, ll = ref.log()[ch], ref.log()[rj]
    first = {
        "dpo": lambda: pref.dpo_loss(lw, ll, lw, ll, 0.5),
        "ipo": lambda: pref.ipo_loss(lw, ll, lw, ll, 0.5),
        "simpo": lambda: pref.simpo_loss(lw, ll, lengths[ch], lengths[rj], 0.5, 0.2),
        "orpo": lambda: pref.orpo_loss(lw, ll, lengths[ch], lengths[rj], 0.5),
    }[method]()
    assert res.loss_history[0].item() == pytest.approx(first.loss.item(), abs=1e-15)
    assert res.loss_history[-1] < res.loss_history[0]
    # shared features: one parameter moves every response
    feats = torch.tensor([[1.0], [0.0], [2.0]], dtype=D)
    shared = pref.train_tabular(method, ch, rj, ref, lengths, 0.5, 0.2, steps=3, lr=0.1, features=feats)
    assert shared.probs.shape == (3,) and float(shared.probs.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="features"):
        pref.train_tabular(method, ch, rj, ref, lengths, 0.5, features=torch.ones(2, 1, dtype=D))
    with pytest.raises(ValueError, match="steps"):
        pref.train_tabular(method, ch, rj, ref, lengths, 0.5, steps=0)


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "orpo"])
def test_train_tabular_is_full_batch_adam_from_the_reference(method):
    """Every recorded policy and loss equals an independent re-run of the documented loop."""
    ref = torch.tensor([0.4, 0.35, 0.25], dtype=D)
    ch, rj = torch.tensor([2, 1, 2, 0]), torch.tensor([0, 0, 1, 1])
    lengths = torch.tensor([2.0, 3.0, 4.0], dtype=D)
    feats = torch.tensor([[1.0, 0.5], [0.0, 1.0], [2.0, -1.0]], dtype=D)
    res = pref.train_tabular(
        method, ch, rj, ref, lengths.long(), beta=0.7, gamma=0.3, steps=5, lr=0.2, features=feats, record_every=2
    )
    theta = torch.zeros(2, dtype=D, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.2)
    ref_logp = ref.log()
    probs, losses = [], []
    for step in range(6):
        opt.zero_grad()
        logp = torch.log_softmax(ref_logp + feats @ theta, -1)
        lw, ll = logp[ch], logp[rj]
        if method == "dpo":
            loss = pref.dpo_loss(lw, ll, ref_logp[ch], ref_logp[rj], 0.7).loss
        elif method == "ipo":
            loss = pref.ipo_loss(lw, ll, ref_logp[ch], ref_logp[rj], 0.7).loss
        elif method == "simpo":
            loss = pref.simpo_loss(lw, ll, lengths[ch], lengths[rj], 0.7, 0.3).loss
        else:
            loss = pref.orpo_loss(lw, ll, lengths[ch], lengths[rj], 0.7).loss
        if step in (0, 2, 4, 5):
            probs.append(torch.softmax(ref_logp + feats @ theta, -1).detach().clone())
            losses.append(loss.item())
        if step == 5:
            break
        loss.backward()
        opt.step()
    assert res.steps.tolist() == [0, 2, 4, 5]
    assert res.loss_history.tolist() == pytest.approx(losses, abs=1e-14)
    assert res.probs_history.flatten().tolist() == pytest.approx(torch.stack(probs).flatten().tolist(), abs=1e-14)
    assert res.probs.tolist() == pytest.approx(probs[-1].tolist(), abs=1e-14)


def _valid_args():
    lp = {"policy_chosen_logp": PW, "policy_rejected_logp": PL, "ref_chosen_logp": RW, "ref_rejected_logp": RL}
    lens = {"chosen_len": LW, "rejected_len": LL}
    return {
        "dpo": (pref.dpo_loss, dict(lp, beta=0.4), list(lp), []),
        "ipo": (pref.ipo_loss, dict(lp, tau=0.4), list(lp), []),
        "simpo": (
            pref.simpo_loss,
            dict(policy_chosen_logp=PW, policy_rejected_logp=PL, **lens, beta=2.0, gamma=0.1),
            ["policy_chosen_logp", "policy_rejected_logp"],
            list(lens),
        ),
        "orpo": (
            pref.orpo_loss,
            dict(policy_chosen_logp=PW, policy_rejected_logp=PL, **lens, lam=0.2),
            ["policy_chosen_logp", "policy_rejected_logp"],
            list(lens),
        ),
        "kto": (
            pref.kto_loss,
            dict(
                policy_logp=PW,
                ref_logp=RW,
                desirable=torch.tensor([True, False, True]),
                policy_kl_logp=PL[:2],
                ref_kl_logp=RL[:2],
                beta=0.4,
            ),
            ["policy_logp", "ref_logp", "policy_kl_logp", "ref_kl_logp"],
            [],
        ),
    }


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "orpo", "kto"])
def test_every_tensor_argument_is_checked_and_named(method):
    fn, args, logps, lengths = _valid_args()[method]
    fn(**args)  # valid
    for name in logps + lengths:
        bad = dict(args)
        bad[name] = args[name].clone()
        bad[name][1] = float("nan")
        with pytest.raises(ValueError, match=f"^{name} holds NaN or inf"):
            fn(**bad)
        bad[name] = args[name][None]
        with pytest.raises(ValueError, match=f"^{name} must be 1-D"):
            fn(**bad)
        bad[name] = args[name][:1]
        with pytest.raises(ValueError, match=f"same shape.*{name}|{name}.*same shape"):
            fn(**bad)
    for name in logps:
        bad = dict(args)
        bad[name] = args[name].clone()
        bad[name][0] = 0.5  # a log-probability above 0 (but below 1)
        with pytest.raises(ValueError, match=f"^{name} holds positive values"):
            fn(**bad)
    for name in lengths:
        bad = dict(args)
        bad[name] = args[name].clone()
        bad[name][2] = 0.0
        with pytest.raises(ValueError, match=f"^{name} must be positive token counts"):
            fn(**bad)


@pytest.mark.parametrize(
    "method, name, value",
    [
        ("dpo", "beta", 0.0),
        ("ipo", "tau", -1.0),
        ("simpo", "beta", float("nan")),
        ("simpo", "gamma", -0.1),
        ("orpo", "lam", -1.0),
        ("kto", "beta", 0.0),
        ("kto", "desirable_weight", -1.0),
        ("kto", "undesirable_weight", float("inf")),
    ],
)
def test_every_scalar_argument_is_named(method, name, value):
    fn, args, _, _ = _valid_args()[method]
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        fn(**dict(args, **{name: value}))


def test_probability_arguments_are_checked_and_named():
    ref, r, mu = (
        torch.tensor([0.5, 0.5], dtype=D),
        torch.tensor([0.0, 1.0], dtype=D),
        torch.tensor([0.25, 0.75], dtype=D),
    )
    off = torch.tensor([0.5, 0.6], dtype=D)
    calls = [
        ("ref_probs", lambda x: pref.optimal_policy(x, r, 1.0)),
        ("p", lambda x: pref.categorical_kl(x, ref)),
        ("q", lambda x: pref.categorical_kl(ref, x)),
        ("mu", lambda x: pref.win_probability_against(r, x)),
        ("mu", lambda x: pref.ipo_optimal_policy(ref, r, 1.0, x)),
        ("mu", lambda x: pref.bradley_terry_pairs(r, x, 3)),
        ("ref_probs", lambda x: pref.maximize_objective_numerically(x, r, 1.0)),
        (
            "ref_probs",
            lambda x: pref.train_tabular("dpo", torch.tensor([1]), torch.tensor([0]), x, torch.ones(2), 1.0, steps=1),
        ),
    ]
    for name, call in calls:
        call(mu)  # valid
        with pytest.raises(ValueError, match=f"^{name} must sum to 1"):
            call(off)
        with pytest.raises(ValueError, match=f"^{name} must hold finite, non-negative"):
            call(torch.tensor([1.5, -0.5], dtype=D))
    with pytest.raises(ValueError, match="non-empty last axis"):
        pref.categorical_kl(torch.tensor(1.0, dtype=D), torch.tensor(1.0, dtype=D))
    # tolerances: 1e-6 in float64, 1e-4 in float32
    near = torch.tensor([0.5, 0.5 + 5e-5])
    assert pref.categorical_kl(near, near).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="sum to 1"):
        pref.categorical_kl(near.double(), near.double())
    assert pref.categorical_kl(torch.tensor([0.5, 0.5 + 5e-7], dtype=D), ref).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="^tau must be"):
        pref.ipo_optimal_policy(ref, r, -1.0, mu)
    with pytest.raises(ValueError, match="^beta must be a finite number > 0"):
        pref.optimal_policy(ref, r, 0.0)
    with pytest.raises(ValueError, match="^beta must be a finite number >= 0"):
        pref.kl_regularized_objective(ref, ref, r, -0.5)
    with pytest.raises(ValueError, match="sum to 1"):  # float32: 1e-4 of slack, not more
        pref.categorical_kl(torch.tensor([0.5, 0.51]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="^beta must be"):
        pref.maximize_objective_numerically(ref, r, -1.0)


def test_batched_probabilities_reduce_over_the_last_axis():
    ref = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=D)
    r = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=D)
    pi = pref.optimal_policy(ref, r, 1.0)
    e = math.e
    assert pi.flatten().tolist() == pytest.approx(
        [1 / (1 + e), e / (1 + e), 0.25 * e / (0.25 * e + 0.75), 0.75 / (0.25 * e + 0.75)]
    )
    kl = pref.categorical_kl(pi, ref)
    assert kl.shape == (2,) and kl.tolist() == pytest.approx(
        [pref.categorical_kl(pi[i], ref[i]).item() for i in range(2)]
    )
    j = pref.kl_regularized_objective(pi, ref, r, 1.0)
    assert j.tolist() == pytest.approx([math.log(0.5 + 0.5 * e), math.log(0.25 * e + 0.75)], abs=1e-15)  # beta log Z
    w = pref.win_probability_against(torch.tensor([0.0, 1.0, 3.0], dtype=D), torch.tensor([0.5, 0.25, 0.25], dtype=D))
    assert w.tolist() == pytest.approx(
        [
            0.25 + 0.25 * sig(-1) + 0.25 * sig(-3),
            0.5 * sig(1) + 0.125 + 0.25 * sig(-2),
            0.5 * sig(3) + 0.25 * sig(2) + 0.125,
        ],
        abs=1e-15,
    )


def test_low_precision_inputs_are_computed_in_their_own_or_double_precision():
    # float32 rewards are divided by beta in the reference's float64
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    r32 = torch.tensor([0.1, 0.7, 0.3])
    assert pref.optimal_policy(ref, r32, 0.3).tolist() == pytest.approx(
        pref.optimal_policy(ref, r32.double(), 0.3).tolist(), abs=1e-16
    )
    num = pref.maximize_objective_numerically(ref.float(), r32, 0.5)
    assert num.dtype == D and num.tolist() == pytest.approx(
        pref.optimal_policy(ref, r32.double(), 0.5).tolist(), abs=1e-7
    )
    # lengths do not change the dtype of the log-probabilities
    out = pref.simpo_loss(PW.float(), PL.float(), LW, LL, 2.0, 0.1)
    assert out.chosen_rewards.dtype == out.loss.dtype == torch.float32
    out = pref.orpo_loss(PW.float(), PL.float(), LW, LL, 0.2)
    assert out.chosen_rewards.dtype == out.extras["nll"].dtype == torch.float32
    assert out.rejected_rewards.dtype == out.loss.dtype == torch.float32
    kto = pref.kto_loss(PW, RW, torch.tensor([True, True, True]), PL, RL, 0.4)
    assert kto.margins.dtype == kto.accuracy.dtype == D


def test_implicit_reward_and_orpo_edge_checks():
    with pytest.raises(TypeError, match="torch tensors"):
        pref.implicit_reward([0.0], torch.zeros(1), 1.0)
    with pytest.raises(TypeError, match="torch tensors"):
        pref.implicit_reward(torch.zeros(1), [0.0], 1.0)
    with pytest.raises(ValueError, match="finite"):
        pref.implicit_reward(torch.zeros(2), torch.tensor([0.0, float("nan")]), 1.0)
    with pytest.raises(ValueError, match="^beta must be"):
        pref.implicit_reward(torch.zeros(2), torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="infinite odds"):  # a rejected response of probability 1
        pref.orpo_loss(PW, torch.tensor([-1.0, 0.0, -2.0], dtype=D), LW, LL, 0.2)
    with pytest.raises(ValueError, match=r"^rewards and mu must be 1-D of the same shape"):
        pref.bradley_terry_pairs(torch.zeros(3, dtype=D), torch.tensor([0.5, 0.5], dtype=D), 2)
    ch, rj = pref.bradley_terry_pairs(torch.zeros(2, dtype=D), torch.tensor([0.5, 0.5], dtype=D), 1)
    assert ch.shape == (1,) and ch.item() != rj.item()


def test_kto_default_weights_on_undesirable_examples():
    logp, ref = torch.tensor([-2.0, -4.0], dtype=D), torch.tensor([-3.0, -3.0], dtype=D)
    out = pref.kto_loss(logp, ref, torch.tensor([False, False]), logp, ref, 0.5)  # z0 = max(0, 0) = 0
    assert out.losses.tolist() == pytest.approx([1 - sig(0.5 * (0 - 1.0)), 1 - sig(0.5 * (0 + 1.0))], abs=1e-15)


def test_train_tabular_defaults_and_argument_checks():
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    ch, rj = torch.tensor([2, 1]), torch.tensor([0, 2])
    lengths = torch.tensor([2, 3, 4])
    default = pref.train_tabular("simpo", ch, rj, ref, lengths, beta=2.0)
    explicit = pref.train_tabular(
        "simpo", ch, rj, ref, lengths.double(), beta=2.0, gamma=0.0, steps=2000, lr=0.05, record_every=50
    )
    assert default.steps.tolist() == list(range(0, 2001, 50))
    assert torch.equal(default.probs_history, explicit.probs_history)
    assert torch.equal(default.loss_history, explicit.loss_history)
    one = pref.train_tabular("dpo", ch[:1], rj[:1], ref, lengths, 1.0, steps=1, record_every=1)  # one pair, one step
    assert one.steps.tolist() == [0, 1]
    # float32 inputs are trained in float64 (Adam's normalised first steps would amplify float32 rounding)
    f32 = pref.train_tabular("dpo", ch, rj, ref.float(), lengths, 1.0, steps=3, lr=0.1, features=torch.eye(3))
    f64 = pref.train_tabular("dpo", ch, rj, ref.float().double(), lengths, 1.0, steps=3, lr=0.1)
    assert f32.probs.dtype == D and torch.equal(f32.probs_history, f64.probs_history)
    pairs, index, counts = "non-empty 1-D index tensors", r"indices must lie in \[0, 3\)", "steps and record_every"
    bad = [
        (dict(ref_probs=ref[None]), "1-D over the same responses"),
        (dict(lengths=lengths[:2]), "1-D over the same"),
        (dict(chosen=ch[:1]), pairs),
        (dict(chosen=ch[None], rejected=rj[None]), pairs),
        (dict(chosen=ch[:0], rejected=rj[:0]), pairs),
        (dict(chosen=torch.tensor([-1, 0])), index),
        (dict(rejected=torch.tensor([0, -1])), index),
        (dict(chosen=torch.tensor([3, 0])), index),
        (dict(rejected=torch.tensor([0, 3])), index),
        (dict(steps=0), counts),
        (dict(record_every=0), counts),
    ]
    for b, match in bad:
        kw = dict(method="dpo", chosen=ch, rejected=rj, ref_probs=ref, lengths=lengths, beta=1.0, steps=1)
        kw.update(b)
        with pytest.raises(ValueError, match=match):
            pref.train_tabular(**kw)


def test_train_tabular_orpo_with_a_response_of_probability_one_in_float64():
    """log_softmax gives exactly 0 for a response whose rivals are 1e-18 likely: ORPO is fed -1e-12, not 0."""
    ref = torch.tensor([1.0, 1e-18, 1e-18], dtype=D)  # sums to 1 in float64
    for ch, rj in (([0], [1]), ([1], [0])):
        res = pref.train_tabular("orpo", torch.tensor(ch), torch.tensor(rj), ref, torch.ones(3), 0.5, steps=2)
        assert torch.isfinite(res.loss_history).all()


def test_categorical_kl_takes_lists_as_float64():
    assert pref.categorical_kl([0.25, 0.75], [0.5, 0.5]).item() == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-15
    )
    assert pref.categorical_kl([0.25, 0.75], [0.5, 0.5]).dtype == torch.float64
