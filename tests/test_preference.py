"""kltutor.preference: the closed-form optimum against a numerical optimiser, each loss against a
hand-computed value and finite differences, and bad inputs."""

import math

import pytest
import torch

from kltutor import preference as pref

D = torch.float64
torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared machine


def _setup(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n, generator=g, dtype=D)
    ref = torch.softmax(torch.randn(n, generator=g, dtype=D), -1)
    return rewards, ref


@pytest.mark.parametrize("beta", [0.3, 1.0, 4.0])
def test_optimal_policy_maximises_objective(beta):
    rewards, ref = _setup()
    star = pref.optimal_policy(ref, rewards, beta)
    num = pref.maximize_objective_numerically(ref, rewards, beta)
    assert torch.allclose(num, star, atol=1e-7)
    j_star = pref.kl_regularized_objective(star, ref, rewards, beta)
    # the optimal value is beta log Z, and J(pi) = beta log Z - beta KL(pi || pi*) for any pi
    log_z = torch.logsumexp(torch.log(ref) + rewards / beta, -1)
    assert torch.allclose(j_star, beta * log_z, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        other = torch.softmax(torch.randn(6, generator=g, dtype=D), -1)
        j = pref.kl_regularized_objective(other, ref, rewards, beta)
        assert torch.allclose(j, beta * log_z - beta * pref.categorical_kl(other, star), atol=1e-12)
        assert j < j_star


def test_optimal_policy_limits_and_stability():
    rewards, ref = _setup()
    assert torch.allclose(pref.optimal_policy(ref, rewards, 1e6), ref, atol=1e-5)  # beta -> inf: the reference
    greedy = pref.optimal_policy(ref, rewards, 1e-4)  # beta -> 0: argmax of the reward
    assert greedy.argmax() == rewards.argmax() and greedy.max() > 0.999
    big = pref.optimal_policy(ref, rewards * 1e4, 1e-3)  # r / beta ~ 1e7: no overflow
    assert torch.isfinite(big).all() and torch.allclose(big.sum(), torch.ones((), dtype=D))
    ref0 = torch.tensor([0.5, 0.5, 0.0], dtype=D)  # zero reference mass stays zero
    assert pref.optimal_policy(ref0, torch.tensor([0.0, 0.0, 100.0], dtype=D), 0.1)[2] == 0


def test_optimal_policy_bad_inputs():
    rewards, ref = _setup()
    with pytest.raises(ValueError, match="beta"):
        pref.optimal_policy(ref, rewards, 0.0)
    with pytest.raises(ValueError, match="beta"):
        pref.optimal_policy(ref, rewards, -1.0)
    with pytest.raises(ValueError, match="beta"):
        pref.optimal_policy(ref, rewards, float("nan"))
    with pytest.raises(ValueError, match="same shape"):
        pref.optimal_policy(ref, rewards[:-1], 1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        pref.optimal_policy(ref * 2, rewards, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        pref.optimal_policy(ref, torch.full_like(rewards, float("nan")), 1.0)
    with pytest.raises(ValueError, match="negative"):
        pref.optimal_policy(torch.tensor([1.5, -0.5], dtype=D), torch.zeros(2, dtype=D), 1.0)


def test_implicit_reward_pointwise_and_mean_under_policy_is_kl():
    rewards, ref = _setup()
    pi = pref.optimal_policy(ref, rewards, 0.5)
    r_hat = pref.implicit_reward(torch.log(pi), torch.log(ref), 0.5)
    assert torch.allclose(r_hat, 0.5 * (torch.log(pi) - torch.log(ref)))
    assert torch.allclose((pi * r_hat).sum(), 0.5 * pref.categorical_kl(pi, ref), atol=1e-12)
    # it is the reward up to a constant (beta log Z), so differences recover reward differences
    assert torch.allclose(r_hat - r_hat[0], rewards - rewards[0], atol=1e-12)
    with pytest.raises(ValueError, match="beta"):
        pref.implicit_reward(torch.log(pi), torch.log(ref), -1.0)
    with pytest.raises(ValueError, match="same shape"):
        pref.implicit_reward(torch.log(pi), torch.log(ref)[:2], 1.0)


PW = torch.tensor([-10.0, -4.0], dtype=D)
PL = torch.tensor([-12.0, -3.0], dtype=D)
RW = torch.tensor([-11.0, -4.5], dtype=D)
RL = torch.tensor([-11.0, -2.0], dtype=D)
LW = torch.tensor([5.0, 2.0], dtype=D)
LL = torch.tensor([4.0, 3.0], dtype=D)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_dpo_hand_computed():
    beta = 0.5
    out = pref.dpo_loss(PW, PL, RW, RL, beta)
    # pair 0: chosen ratio +1, rejected ratio -1, margin beta * 2 = 1
    # pair 1: chosen ratio +0.5, rejected ratio -1, margin beta * 1.5 = 0.75
    want = [-math.log(_sig(1.0)), -math.log(_sig(0.75))]
    assert torch.allclose(out.losses, torch.tensor(want, dtype=D))
    assert torch.allclose(out.loss, torch.tensor(sum(want) / 2, dtype=D))
    assert torch.allclose(out.chosen_rewards, torch.tensor([0.5, 0.25], dtype=D))
    assert torch.allclose(out.rejected_rewards, torch.tensor([-0.5, -0.5], dtype=D))
    assert torch.allclose(out.margins, torch.tensor([1.0, 0.75], dtype=D))
    assert out.accuracy.item() == 1.0
    # equal to the reference: log 2 per pair; extreme margins stay finite
    assert torch.allclose(pref.dpo_loss(RW, RL, RW, RL, 1.0).losses, torch.full((2,), math.log(2), dtype=D))
    far = pref.dpo_loss(
        torch.tensor([-900.0], dtype=D),
        torch.tensor([-1.0], dtype=D),
        torch.tensor([-1.0], dtype=D),
        torch.tensor([-1.0], dtype=D),
        1.0,
    )
    assert torch.allclose(far.losses, torch.tensor([899.0], dtype=D))


def test_ipo_hand_computed():
    tau = 0.25  # target margin 1 / (2 tau) = 2
    out = pref.ipo_loss(PW, PL, RW, RL, tau)
    assert torch.allclose(out.losses, torch.tensor([(2.0 - 2.0) ** 2, (1.5 - 2.0) ** 2], dtype=D))


def test_simpo_hand_computed():
    out = pref.simpo_loss(PW, PL, LW, LL, beta=2.0, gamma=0.5)
    # pair 0: 2*(-10/5) - 2*(-12/4) - 0.5 = -4 + 6 - 0.5 = 1.5 ; pair 1: 2*(-2) - 2*(-1) - 0.5 = -2.5
    assert torch.allclose(out.losses, torch.tensor([-math.log(_sig(1.5)), -math.log(_sig(-2.5))], dtype=D))
    assert out.accuracy.item() == 0.5


def test_orpo_hand_computed():
    out = pref.orpo_loss(PW, PL, LW, LL, lam=0.1)
    want = []
    for pw, pl, lw, ll in zip(PW.tolist(), PL.tolist(), LW.tolist(), LL.tolist()):
        pw_, pl_ = math.exp(pw / lw), math.exp(pl / ll)
        log_or = math.log(pw_ / (1 - pw_)) - math.log(pl_ / (1 - pl_))
        want.append(-pw / lw + 0.1 * -math.log(_sig(log_or)))
    assert torch.allclose(out.losses, torch.tensor(want, dtype=D))
    # log-odds stay accurate for a per-token probability within 1e-12 of 1
    tiny = pref.orpo_loss(
        torch.tensor([-1e-12], dtype=D),
        torch.tensor([-1.0], dtype=D),
        torch.ones(1, dtype=D),
        torch.ones(1, dtype=D),
        1.0,
    )
    assert torch.allclose(tiny.chosen_rewards, torch.tensor([math.log(1 / 1e-12)], dtype=D), rtol=1e-6)
    with pytest.raises(ValueError, match="infinite odds"):
        pref.orpo_loss(torch.tensor([0.0], dtype=D), torch.tensor([-1.0], dtype=D), torch.ones(1), torch.ones(1), 1.0)


def test_kto_hand_computed():
    beta = 1.0
    logp = torch.tensor([-2.0, -3.0, -5.0], dtype=D)
    ref = torch.tensor([-3.0, -3.0, -4.0], dtype=D)
    desirable = torch.tensor([True, False, False])
    kl_p = torch.tensor([-6.0, -6.0], dtype=D)
    kl_r = torch.tensor([-6.5, -6.3], dtype=D)  # mean log-ratio 0.4 -> z0 = 0.4
    out = pref.kto_loss(logp, ref, desirable, kl_p, kl_r, beta, desirable_weight=1.0, undesirable_weight=2.0)
    z0 = 0.4
    want = [1 - _sig(1.0 - z0), 2 * (1 - _sig(z0 - 0.0)), 2 * (1 - _sig(z0 + 1.0))]
    assert torch.allclose(out.losses, torch.tensor(want, dtype=D))
    assert math.isclose(out.extras["z0"].item(), z0, rel_tol=1e-12)
    # a negative batch log-ratio is clamped to z0 = 0
    out0 = pref.kto_loss(logp, ref, desirable, kl_r, kl_p, beta)
    assert out0.extras["z0"].item() == 0.0


def _grad_inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(-torch.rand(n, generator=g, dtype=D) * 5 - 0.1).requires_grad_(True) for _ in range(4)]


def test_gradients_match_finite_differences():
    pw, pl, rw, rl = _grad_inputs()
    lens = (torch.tensor([3.0, 5.0, 2.0], dtype=D), torch.tensor([4.0, 1.0, 6.0], dtype=D))
    assert torch.autograd.gradcheck(lambda a, b: pref.dpo_loss(a, b, rw.detach(), rl.detach(), 0.7).loss, (pw, pl))
    assert torch.autograd.gradcheck(lambda a, b: pref.ipo_loss(a, b, rw.detach(), rl.detach(), 0.3).loss, (pw, pl))
    assert torch.autograd.gradcheck(lambda a, b: pref.simpo_loss(a, b, *lens, 2.0, 0.4).loss, (pw, pl))
    assert torch.autograd.gradcheck(lambda a, b: pref.orpo_loss(a, b, *lens, 0.2).loss, (pw, pl))
    des = torch.tensor([True, False, True])
    kp, kr = torch.tensor([-3.0, -2.0], dtype=D), torch.tensor([-3.5, -2.2], dtype=D)
    assert torch.autograd.gradcheck(lambda a: pref.kto_loss(a, rw.detach(), des, kp, kr, 0.5).loss, (pw,))


def test_dpo_gradient_closed_form():
    # dL/dlog pi(y_w) = -beta sigma(r_l - r_w) / batch ; dL/dlog pi(y_l) = +beta sigma(r_l - r_w) / batch
    pw, pl, rw, rl = _grad_inputs()
    beta = 0.7
    out = pref.dpo_loss(pw, pl, rw.detach(), rl.detach(), beta)
    out.loss.backward()
    weight = torch.sigmoid(out.rejected_rewards - out.chosen_rewards)
    assert torch.allclose(pw.grad, -beta * weight / 3)
    assert torch.allclose(pl.grad, beta * weight / 3)
    assert rw.grad is None  # the reference receives no gradient


def test_ref_is_detached_and_bad_inputs():
    with pytest.raises(ValueError, match="beta"):
        pref.dpo_loss(PW, PL, RW, RL, 0.0)
    with pytest.raises(ValueError, match="tau"):
        pref.ipo_loss(PW, PL, RW, RL, -1.0)
    with pytest.raises(ValueError, match="same shape"):
        pref.dpo_loss(PW, PL[:1], RW, RL, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        pref.dpo_loss(PW, torch.tensor([float("nan"), -1.0], dtype=D), RW, RL, 0.1)
    with pytest.raises(ValueError, match="empty"):
        e = torch.empty(0, dtype=D)
        pref.dpo_loss(e, e, e, e, 0.1)
    with pytest.raises(ValueError, match="1-D"):
        pref.dpo_loss(PW[None], PL[None], RW[None], RL[None], 0.1)
    with pytest.raises(ValueError, match="positive"):
        pref.dpo_loss(-PW, PL, RW, RL, 0.1)
    with pytest.raises(ValueError, match="token counts"):
        pref.simpo_loss(PW, PL, torch.tensor([0.0, 1.0]), LL, 1.0, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        pref.simpo_loss(PW, PL, LW, LL, 1.0, -0.5)
    with pytest.raises(ValueError, match="bool"):
        pref.kto_loss(PW, RW, torch.tensor([1, 0]), PW, RW, 0.1)


def test_bradley_terry_pairs_frequencies():
    rewards = torch.tensor([0.0, 1.0], dtype=D)
    mu = torch.tensor([0.5, 0.5], dtype=D)
    n = 20000
    ch, rj = pref.bradley_terry_pairs(rewards, mu, n, torch.Generator().manual_seed(0))
    assert (ch != rj).all()
    p = _sig(1.0)
    frac = (ch == 1).double().mean().item()
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_ipo_optimal_policy_minimises_population_loss():
    # with pairs y, y' ~ mu and BT labels, the expected IPO loss is minimised by pi_ref exp(p(y > mu) / tau) / Z
    rewards, ref = _setup(n=4)
    mu = torch.full((4,), 0.25, dtype=D)
    tau = 0.5
    target = pref.ipo_optimal_policy(ref, rewards, tau, mu)
    pwin = torch.sigmoid(rewards[:, None] - rewards[None, :])

    def expected_loss(logits):
        g = torch.log_softmax(logits, -1) - torch.log(ref)
        h = g[:, None] - g[None, :]
        per = pwin * (h - 1 / (2 * tau)) ** 2  # y wins against y'
        return (mu[:, None] * mu[None, :] * per).sum()

    logits = torch.zeros(4, dtype=D, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = expected_loss(logits)
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.allclose(torch.softmax(logits.detach(), -1), target, atol=1e-6)


def test_train_tabular_dpo_reaches_optimum_with_exact_preferences():
    # rewards 0, log 2, log 4: BT probabilities 2/3, 2/3 and 4/5, so integer counts reproduce them
    # exactly (2:1, 2:1, 4:1); the DPO minimiser on these pairs is then exactly pi*
    rewards = torch.tensor([0.0, math.log(2), math.log(4)], dtype=D)
    counts = {(1, 0): 2, (0, 1): 1, (2, 1): 2, (1, 2): 1, (2, 0): 4, (0, 2): 1}
    ch = torch.tensor([a for (a, b), k in counts.items() for _ in range(k)])
    rj = torch.tensor([b for (a, b), k in counts.items() for _ in range(k)])
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    res = pref.train_tabular("dpo", ch, rj, ref, torch.ones(3), beta=0.5, steps=1500, lr=0.05)
    star = pref.optimal_policy(ref, rewards, 0.5)

    # The optimiser stops after a fixed 1500 Adam steps, not at a tolerance, so how close it gets
    # differs in the last digits from one CPU to the next (KL 6e-9 .. 4e-8 seen). What must hold on
    # any CPU is what its final gradient implies. The DPO loss is smooth and strongly convex in the
    # identifiable logit directions, so near the optimum the logits are off by H^+ g and
    # KL(pi || pi*) = 1/2 g^T H^+ F H^+ g (F = diag(pi*) - pi* pi*^T, the softmax Fisher) up to
    # third-order terms, a relative 1e-4 at |g| ~ 1e-5; a factor 1.5 covers them.
    def loss_at(logits):
        logp = torch.log_softmax(logits, -1)
        return pref.dpo_loss(logp[ch], logp[rj], ref.log()[ch], ref.log()[rj], 0.5).loss

    z = res.probs.log().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_at(z), z)
    h_pinv = torch.linalg.pinv(torch.autograd.functional.hessian(loss_at, star.log()))
    fisher = torch.diag(star) - torch.outer(star, star)
    predicted = 0.5 * g @ h_pinv @ fisher @ h_pinv @ g
    kl = pref.categorical_kl(res.probs, star)
    assert (
        g.norm() < 1e-4
    )  # 1500 steps at lr 0.05 leave |g| ~ 1e-5 (a 10x margin); far from the optimum the bound below would not apply
    assert kl <= 1.5 * predicted + 1e-15  # 1e-15: rounding of the KL itself
    # so pi is at the optimum: with |g| < 1e-4, the Hessian's smallest nonzero eigenvalue 0.045 and
    # ||F|| <= 1/4, the two lines above give KL <= 1.5 * 1/2 * 1/4 * (1e-4 / 0.045)^2 < 1e-6
    assert kl < 1e-6
    with pytest.raises(ValueError, match="unknown method"):
        pref.train_tabular("ppo", ch, rj, ref, torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="indices"):
        pref.train_tabular("dpo", ch + 5, rj, ref, torch.ones(3), 0.5)


def test_simpo_optimum_ignores_the_reference_and_dpo_does_not():
    rewards = torch.tensor([0.0, math.log(2), math.log(4)], dtype=D)
    counts = {(1, 0): 2, (0, 1): 1, (2, 1): 2, (1, 2): 1, (2, 0): 4, (0, 2): 1}
    ch = torch.tensor([a for (a, b), k in counts.items() for _ in range(k)])
    rj = torch.tensor([b for (a, b), k in counts.items() for _ in range(k)])
    lengths = torch.tensor([2.0, 5.0, 3.0], dtype=D)
    ref_a = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    ref_b = torch.tensor([0.1, 0.2, 0.7], dtype=D)
    sa = pref.train_tabular("simpo", ch, rj, ref_a, lengths, 2.0, 0.5, steps=1500, lr=0.05).probs
    sb = pref.train_tabular("simpo", ch, rj, ref_b, lengths, 2.0, 0.5, steps=1500, lr=0.05).probs
    assert (sa - sb).abs().max() < 1e-4
    da = pref.train_tabular("dpo", ch, rj, ref_a, lengths, 0.5, steps=1500, lr=0.05).probs
    db = pref.train_tabular("dpo", ch, rj, ref_b, lengths, 0.5, steps=1500, lr=0.05).probs
    assert torch.allclose(db, pref.optimal_policy(ref_b, rewards, 0.5), atol=1e-5)
    assert (da - db).abs().max() > 0.1


def test_kl_location_table_covers_the_losses():
    rows = pref.kl_location_table()
    methods = {r["method"] for r in rows}
    for name in ("DPO", "IPO", "SimPO", "KTO", "ORPO"):
        assert name in methods
    no_ref = {r["method"] for r in rows if r["reference model"] == "no"}
    assert no_ref == {"SimPO", "ORPO"}
