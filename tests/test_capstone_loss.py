"""The capstone's loss: every placement against hand-computed values, the beta = 0 equivalence on a
real model, and the k1-in-loss / k1-in-reward gradient expectations against the exact gradient."""

import math

import pytest
import torch

from kltutor.capstone.config import CAPSTONE_PLACEMENTS, CapstoneConfig
from kltutor.capstone.loss import loss_settings, step_loss
from kltutor.grpo import grpo_loss

BETA = 0.3
EPS = 0.2


def _batch():
    logp = torch.tensor([[-0.5, -1.2, -0.3], [-2.0, -0.1, -0.7]], dtype=torch.float64)
    old = torch.tensor([[-0.7, -1.0, -0.3], [-1.6, -0.2, -0.7]], dtype=torch.float64)
    ref = torch.tensor([[-0.9, -0.8, -0.2], [-1.5, -0.6, -0.9]], dtype=torch.float64)
    kl = torch.tensor([[0.11, 0.05, 0.02], [0.30, 0.07, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    return logp, old, ref, kl, mask, rewards


def _hand(placement: str) -> float:
    """The GRPO loss with aggregation 'sequence-mean', written out with Python floats."""
    logp, old, ref, kl, mask, rewards = (t.tolist() for t in _batch())
    mean = sum(rewards) / 2
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 1)  # unbiased, n - 1 = 1
    adv = [(r - mean) / (std + 1e-6) for r in rewards]
    est = {"k1": lambda l: l, "k2": lambda l: 0.5 * l * l, "k3": lambda l: math.exp(-l) - 1 + l}
    per_seq = []
    for b in range(2):
        n = int(sum(mask[b]))
        ells = [logp[b][t] - ref[b][t] for t in range(n)]
        old_ells = [old[b][t] - ref[b][t] for t in range(n)]  # the in-reward penalty is fixed at sampling time
        terms = []
        for t in range(n):
            a = adv[b]
            if placement.endswith("-in-reward"):
                k = est[placement[:2]]
                a = a + sum(-BETA * k(old_ells[s]) for s in range(t, n))
            w = math.exp(logp[b][t] - old[b][t])
            surr = -min(w * a, min(max(w, 1 - EPS), 1 + EPS) * a)
            if placement.endswith("-in-loss") and placement != "exact-in-loss":
                surr += BETA * est[placement[:2]](ells[t])
            if placement == "exact-in-loss":
                surr += BETA * kl[b][t]
            terms.append(surr)
        per_seq.append(sum(terms) / n)
    return sum(per_seq) / 2


@pytest.mark.parametrize("placement", CAPSTONE_PLACEMENTS)
def test_loss_matches_hand_computation(placement):
    logp, old, ref, kl, mask, rewards = _batch()
    cfg = CapstoneConfig(placement=placement, beta=BETA, group_size=2, clip_eps=EPS, aggregation="sequence-mean")
    loss, _, _ = step_loss(
        {"logp": logp, "kl": kl}, {"logp": old, "ref_logp": ref}, mask, rewards, beta=BETA, **loss_settings(cfg)
    )
    assert loss.item() == pytest.approx(_hand(placement), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("est,dk", [("k1", lambda l: 1.0), ("k2", lambda l: l), ("k3", lambda l: 1 - math.exp(-l))])
def test_in_loss_gradient_contribution(est, dk):
    """d(loss)/d logp_t minus the no-KL loss's equals beta * k'(l_t) / (n_b * B) on response tokens."""
    logp, old, ref, kl, mask, rewards = _batch()
    grads = {}
    for p in ("none", f"{est}-in-loss"):
        x = logp.clone().requires_grad_(True)
        cfg = CapstoneConfig(placement=p, beta=BETA, group_size=2, clip_eps=EPS)
        loss, _, _ = step_loss(
            {"logp": x, "kl": kl}, {"logp": old, "ref_logp": ref}, mask, rewards, beta=BETA, **loss_settings(cfg)
        )
        grads[p] = torch.autograd.grad(loss, x)[0]
    diff = grads[f"{est}-in-loss"] - grads["none"]
    for b in range(2):
        n = int(mask[b].sum())
        for t in range(3):
            expected = BETA * dk((logp[b, t] - ref[b, t]).item()) / (n * 2) if t < n else 0.0
            assert diff[b, t].item() == pytest.approx(expected, abs=1e-12)


def test_beta_zero_gives_the_same_gradient_for_every_placement(tiny_model_batch):
    """On a real Qwen2 with policy != reference: beta = 0 makes every placement the bare surrogate."""
    from kltutor.capstone.logprobs import sequence_stats

    policy, ref, batch, rewards = tiny_model_batch
    ids, attn, n_prompt = batch["input_ids"], batch["attention_mask"], batch["n_prompt"]
    mask = batch["completion_mask"].float()
    with torch.no_grad():
        old = sequence_stats(policy, ids, attn, n_prompt, ref, chunk=7)
    old = {"logp": old["logp"] - 0.05, "ref_logp": old["ref_logp"]}  # off-policy, so the ratio is not 1
    grads = {}
    for p in CAPSTONE_PLACEMENTS:
        policy.zero_grad()
        st = sequence_stats(policy, ids, attn, n_prompt, ref, chunk=7)
        loss, _, _ = step_loss(
            st, old, mask, rewards, beta=0.0, **loss_settings(CapstoneConfig(placement=p, beta=0.0, group_size=4))
        )
        loss.backward()
        grads[p] = torch.cat([q.grad.reshape(-1) for q in policy.parameters() if q.grad is not None])
    base = grads["none"]
    assert base.abs().max() > 0
    for p, g in grads.items():
        torch.testing.assert_close(g, base, rtol=1e-5, atol=1e-7, msg=f"{p} differs from none at beta=0")
    # and a positive beta does change the gradient (the test above is not vacuous)
    policy.zero_grad()
    st = sequence_stats(policy, ids, attn, n_prompt, ref, chunk=7)
    loss, _, _ = step_loss(
        st,
        old,
        mask,
        rewards,
        beta=1.0,
        **loss_settings(CapstoneConfig(placement="k3-in-loss", beta=1.0, group_size=4)),
    )
    loss.backward()
    g = torch.cat([q.grad.reshape(-1) for q in policy.parameters() if q.grad is not None])
    assert (g - base).abs().max() > 1e-4


def _per_sample_grads(placement: str, n: int, beta: float, seed: int = 0):
    """Per-sample gradients of grpo_loss wrt the logits of a categorical policy (one-token responses)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([0.5, -0.3, 1.2, 0.0, -1.0], dtype=torch.float64)
    ref_logits = torch.tensor([0.0, 0.4, 0.1, -0.5, 0.3], dtype=torch.float64)
    y = torch.multinomial(torch.softmax(theta, -1), n, replacement=True, generator=g)
    th = theta.expand(n, -1).clone().requires_grad_(True)  # one copy per sample: row i gets sample i's gradient
    logp = torch.log_softmax(th, -1).gather(-1, y[:, None])
    ref_logp = torch.log_softmax(ref_logits, -1)[y][:, None]
    mask = torch.ones_like(logp)
    rewards = torch.zeros(n, dtype=torch.float64)  # no task reward: only the KL term acts
    out = grpo_loss(
        logp,
        logp.detach(),
        ref_logp,
        mask,
        rewards,
        group_size=2,
        placement=placement,
        beta=beta,
        aggregation="sequence-sum",
    )
    (grad,) = torch.autograd.grad(out.loss * n, th)
    pi = torch.softmax(theta, -1)
    ell = torch.log_softmax(theta, -1) - torch.log_softmax(ref_logits, -1)
    exact = beta * pi * (ell - (pi * ell).sum())  # beta * grad of KL(pi || pi_ref) wrt the logits
    return grad, exact


def test_k1_in_loss_gradient_has_zero_mean_while_k1_in_reward_estimates_the_kl_gradient():
    n, beta = 20000, 0.5
    g_loss, exact = _per_sample_grads("k1-in-loss", n, beta)
    g_rew, _ = _per_sample_grads("k1-in-reward", n, beta)
    se_loss = g_loss.std(0) / math.sqrt(n)
    se_rew = g_rew.std(0) / math.sqrt(n)
    # k1-in-loss: the gradient of l = log pi(y) - log pi_ref(y) is the score, whose mean is 0
    assert (g_loss.mean(0).abs() < 5 * se_loss).all()
    # k1-in-reward: the score-function estimator of beta * grad KL
    assert ((g_rew.mean(0) - exact).abs() < 5 * se_rew).all()
    assert (exact.abs() > 10 * se_rew).any()  # and that gradient is clearly not zero


@pytest.fixture(scope="module")
def tiny_model_batch():
    from kltutor.capstone.loop import generate_completions
    from kltutor.capstone.model import build_model, build_tokenizer

    tok = build_tokenizer("0123456789+=")
    policy = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=0)
    ref = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=1)
    ref.requires_grad_(False)
    torch.manual_seed(0)
    prompts = ["3+4=", "3+4=", "3+4=", "3+4=", "12+9=", "12+9=", "12+9=", "12+9="]
    batch = generate_completions(policy, tok, prompts, max_new_tokens=4)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    return policy, ref, batch, rewards


def _exact_in_loss_expectation(importance: bool):
    """E_{y ~ pi_old}[exact-in-loss KL term] by enumerating every sequence of a tabular autoregressive
    model, as a function of the policy's tables (for autograd). The capstone's step_loss is called with the
    sampler's sequence probabilities as mask weights and 'sequence-sum', so its value is that expectation."""
    from kltutor.toys.distributions import TabularAutoregressive, full_vocab_kl_sum, sequence_kl

    ref = TabularAutoregressive.random(3, 3, seed=1)
    old = ref.perturbed(0.6, seed=2)  # the policy that sampled the batch
    tables = [t.clone().requires_grad_(True) for t in old.perturbed(0.5, seed=3).logits]  # the current policy
    policy = TabularAutoregressive(tables)
    seqs = policy.all_sequences()
    with torch.no_grad():
        weights = old.sequence_probs()
        old_logp = old.token_log_probs(seqs)
    mask = weights[:, None].expand(-1, seqs.shape[1]).contiguous()
    rewards = torch.zeros(len(seqs), dtype=torch.float64)  # equal rewards: zero advantages, only the KL term acts
    cfg = CapstoneConfig(
        placement="exact-in-loss", beta=1.0, group_size=3, aggregation="sequence-sum", importance_weighted_kl=importance
    )
    st = {"logp": policy.token_log_probs(seqs), "kl": full_vocab_kl_sum(policy, ref, seqs)}
    loss, _, _ = step_loss(st, {"logp": old_logp, "ref_logp": old_logp}, mask, rewards, beta=1.0, **loss_settings(cfg))
    expectation = loss * len(seqs)  # 'sequence-sum' averages over rows; the weights already sum to one
    all_seqs, probs = policy.all_sequences(), policy.sequence_probs()
    true_kl = (probs * (policy.log_prob(all_seqs) - ref.log_prob(all_seqs))).sum()
    with torch.no_grad():
        assert true_kl.item() == pytest.approx(sequence_kl(policy, ref), rel=1e-12)
    return expectation, true_kl, tables


def test_exact_in_loss_prefix_weight_gives_the_current_policys_sequence_kl_and_its_gradient():
    """With importance weighting, exact-in-loss weights position t by prod_{s<t} w_s: on samples of pi_old
    its expectation is KL(pi_theta || pi_ref) over sequences, exactly, and so is its gradient (chapter 3)."""
    est, true_kl, tables = _exact_in_loss_expectation(importance=True)
    assert est.item() == pytest.approx(true_kl.item(), rel=1e-12)
    g_est = torch.autograd.grad(est, tables, retain_graph=True)
    g_true = torch.autograd.grad(true_kl, tables)
    for a, b in zip(g_est, g_true):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    # without the weight the stale samples measure another quantity (the test above is not vacuous)
    plain, true_kl2, _ = _exact_in_loss_expectation(importance=False)
    assert abs(plain.item() - true_kl2.item()) > 1e-2 * true_kl2.item()


def _stale_batch(B: int = 8, T: int = 4, seed: int = 0):
    """A stale batch (policy != sampler) with groups of 4, spread rewards and padding after early EOS."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    old = logp + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)  # ratios well outside 1 +- 0.1
    ref = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    kl = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.2
    lengths = torch.tensor([4, 2, 3, 1, 4, 4, 2, 3])[:B]
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    for t in (logp, old, ref, kl):  # whatever sits after EOS must not matter
        t.masked_fill_(mask == 0, 7.0)
    rewards = torch.tensor([1.0, 0.0, 0.2, 0.9, 0.0, 0.1, 1.0, 0.5], dtype=torch.float64)[:B]
    return logp, old, ref, kl, mask, rewards


# Every setting step_loss hands on to grpo_loss, each set away from its default (the defaults would hide a
# setting that is dropped on the way).
_SETTINGS = [
    dict(placement="k3-in-loss", clip_eps=0.05),
    dict(placement="k3-in-loss", clip_std=(0.5, 0.6)),
    dict(placement="k2-in-loss", normalize_std=False),
    dict(placement="k3-in-loss", kl_level="sequence"),
    dict(placement="k3-in-loss", importance_weighted_kl=True),
    dict(placement="k1-in-reward", aggregation="token-mean", clip_eps=0.1),
]


@pytest.mark.parametrize("settings", _SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_step_loss_hands_every_setting_to_grpo_loss(settings):
    logp, old, ref, kl, mask, rewards = _stale_batch()
    cfg = CapstoneConfig(beta=BETA, group_size=4, **settings)
    loss, kl_term, clip = step_loss(
        {"logp": logp, "kl": kl}, {"logp": old, "ref_logp": ref}, mask, rewards, beta=BETA, **loss_settings(cfg)
    )
    want = grpo_loss(
        logp,
        old,
        ref,
        mask,
        rewards,
        4,
        placement=cfg.placement,
        beta=BETA,
        clip_eps=cfg.clip_eps,
        clip_std=cfg.clip_std,
        normalize_std=cfg.normalize_std,
        aggregation=cfg.aggregation,
        kl_level=cfg.kl_level,
        importance_weighted_kl=cfg.importance_weighted_kl,
    )
    assert float(loss) == pytest.approx(float(want.loss), rel=1e-12)
    assert float(kl_term) == pytest.approx(float(want.kl_term), rel=1e-12)
    assert float(clip) == pytest.approx(float(want.clip_fraction), rel=1e-12)
    default = grpo_loss(logp, old, ref, mask, rewards, 4, placement=cfg.placement, beta=BETA)
    assert abs(float(want.loss) - float(default.loss)) > 1e-6  # the setting changes the loss: it is tested


@pytest.mark.parametrize(
    "settings",
    [dict(clip_std=(0.5, 0.6)), dict(normalize_std=False), dict(clip_eps=0.05)],
    ids=["clip_std", "no-normalize-std", "clip_eps"],
)
def test_exact_in_loss_uses_the_advantage_settings(settings):
    from kltutor.grpo import group_advantages
    from kltutor.placements import aggregate, clipped_surrogate

    logp, old, ref, kl, mask, rewards = _stale_batch()
    cfg = CapstoneConfig(placement="exact-in-loss", beta=BETA, group_size=4, **settings)
    loss, _, _ = step_loss(
        {"logp": logp, "kl": kl}, {"logp": old, "ref_logp": ref}, mask, rewards, beta=BETA, **loss_settings(cfg)
    )
    adv = group_advantages(rewards, 4, normalize_std=cfg.normalize_std, clip_std=cfg.clip_std)
    surrogate, _ = clipped_surrogate(logp, old, adv, mask, cfg.clip_eps, cfg.aggregation)
    want = surrogate + BETA * aggregate(kl, mask, cfg.aggregation)
    assert float(loss) == pytest.approx(float(want), rel=1e-12)


def test_exact_in_loss_prefix_weights_by_hand_with_padding():
    """W_t = prod_{s<t} pi/pi_old over the response tokens only; padding after EOS holds garbage."""
    logp, old, ref, kl, mask, rewards = _stale_batch()
    cfg = CapstoneConfig(
        placement="exact-in-loss", beta=BETA, group_size=4, importance_weighted_kl=True, aggregation="sequence-sum"
    )
    plain = cfg.replace(importance_weighted_kl=False)
    st, o = {"logp": logp, "kl": kl}, {"logp": old, "ref_logp": ref}
    weighted = (
        step_loss(st, o, mask, rewards, beta=BETA, **loss_settings(cfg))[0]
        - step_loss(st, o, mask, rewards, beta=BETA, **loss_settings(plain))[0]
    )
    total = 0.0
    for b in range(logp.shape[0]):
        n, w = int(mask[b].sum()), 1.0
        for t in range(n):
            total += (w - 1.0) * float(kl[b, t])  # the weighted KL minus the plain one, position by position
            w *= math.exp(float(logp[b, t] - old[b, t]))
    want = BETA * total / logp.shape[0]  # sequence-sum: the per-sequence sums, averaged over the batch
    assert math.isfinite(float(weighted))
    assert float(weighted) == pytest.approx(want, rel=1e-10)
