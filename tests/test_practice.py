"""kltutor.practice (chapter 8): every quantity pinned to an exact answer or an independent computation."""

import math

import pytest
import torch
from torch import nn

from kltutor import practice
from kltutor.estimators import enumerate_autoregressive
from kltutor.gradients import exact_kl_gradients
from kltutor.preference import optimal_policy
from kltutor.toys import BinaryAutoregressive

PI, REF, OLD = BinaryAutoregressive(0.3, -0.4), BinaryAutoregressive(-0.2, 0.5), BinaryAutoregressive(0.1, -0.1)


# --------------------------------------------------------------------------- sampling distributions
def brute_top_p(p, top_p):
    order = sorted(range(len(p)), key=lambda i: -p[i])
    keep, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        keep.append(i)
        mass += p[i]
    out = [p[i] if i in keep else 0.0 for i in range(len(p))]
    return [x / sum(out) for x in out]


def test_process_logits_matches_definitions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=g, dtype=torch.float64)
    assert torch.allclose(practice.process_logits(logits, temperature=0.7), torch.softmax(logits / 0.7, -1), atol=1e-15)
    k2 = practice.process_logits(logits, top_k=2)
    assert ((k2 > 0).sum(-1) == 2).all()
    top2 = logits.topk(2, -1).indices
    assert torch.allclose(k2.gather(-1, top2).sum(-1), torch.ones(50, dtype=torch.float64))
    for row in range(50):
        p = torch.softmax(logits[row] / 1.3, -1).tolist()
        want = brute_top_p(p, 0.8)
        got = practice.process_logits(logits[row], temperature=1.3, top_p=0.8).tolist()
        assert got == pytest.approx(want, abs=1e-12)
    assert torch.equal(practice.process_logits(logits, top_k=0, top_p=1.0), practice.process_logits(logits))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
    ],
)
def test_process_logits_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        practice.process_logits(torch.zeros(3), **kwargs)
    with pytest.raises(ValueError, match="NaN"):
        practice.process_logits(torch.tensor([0.0, float("nan")]))


def tables(seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = practice.random_logit_tables(4, 3, 1.0, g)
    pol = [1.3 * r + d for r, d in zip(ref, practice.random_logit_tables(4, 3, 0.5, g))]
    return pol, ref


def test_sampler_mismatch_on_policy_is_the_kl():
    pol, ref = tables()
    m = practice.sampler_mismatch(pol, ref)
    assert m["k1"] == pytest.approx(m["kl_target"], abs=1e-12)
    assert m["k3"] == pytest.approx(m["kl_target"], abs=1e-12)
    assert m["kl_sampler_policy"] < 1e-12 and m["missing_mass"] == 0


def test_sampler_mismatch_identities():
    pol, ref = tables(1)
    for kw in (dict(temperature=1.7), dict(top_k=2), dict(temperature=0.8, top_p=0.7)):
        m = practice.sampler_mismatch(pol, ref, **kw)
        # E_q[k1] = KL(q||ref) - KL(q||pi), computed independently by enumeration
        _, lq = enumerate_autoregressive([practice.process_logits(t, **kw) for t in pol])
        _, lp = enumerate_autoregressive([practice.process_logits(t) for t in pol])
        _, lr = enumerate_autoregressive([practice.process_logits(t) for t in ref])
        q = lq.sum(-1).exp()
        s = q > 0
        kl_q_ref = float((q[s] * (lq.sum(-1)[s] - lr.sum(-1)[s])).sum())
        kl_q_pi = float((q[s] * (lq.sum(-1)[s] - lp.sum(-1)[s])).sum())
        assert m["k1"] == pytest.approx(kl_q_ref - kl_q_pi, abs=1e-12)
        assert m["kl_sampler_policy"] == pytest.approx(kl_q_pi, abs=1e-12)
    assert practice.sampler_mismatch(pol, ref, top_k=2)["missing_mass"] > 0
    t = practice.sampler_mismatch(pol, ref, temperature=1.7, scoring="tempered")
    assert t["k1"] == pytest.approx(t["kl_scored"], abs=1e-12) and t["k3"] == pytest.approx(t["kl_scored"], abs=1e-12)
    assert abs(t["kl_scored"] - t["kl_target"]) > 1e-3
    with pytest.raises(ValueError, match="scoring"):
        practice.sampler_mismatch(pol, ref, scoring="bf16")


def test_tis_exact_limits_and_monte_carlo():
    rows = {r["cap"]: r for r in practice.tis_gradient_moments(PI, PI, REF, 5, 0.1, [0, 1.0, math.inf])}
    assert all(r["bias2"] < 1e-24 for r in rows.values()), "on-policy: no bias whatever the cap"
    seq = {r["cap"]: r for r in practice.tis_gradient_moments(PI, OLD, REF, 5, 0.1, [0, 1.0, math.inf], "sequence")}
    tok = {r["cap"]: r for r in practice.tis_gradient_moments(PI, OLD, REF, 5, 0.1, [math.inf], "token")}
    assert seq[math.inf]["bias2"] < 1e-24, "untruncated sequence ratio is exact"
    assert seq[1.0]["bias2"] > 1e-8 and seq[0]["bias2"] > seq[1.0]["bias2"]
    assert tok[math.inf]["bias2"] > 1e-6, "per-token ratios do not correct the prefix"
    # Monte Carlo: sample from OLD, average the sequence-IS gradient, compare with the exact mean (5 se)
    g = torch.Generator().manual_seed(0)
    seqs = OLD.sample(200_000, 5, generator=g)
    scores = PI.token_scores(seqs)
    with torch.no_grad():
        ell = PI.token_logprobs(seqs) - REF.token_logprobs(seqs)
        w = (PI.sequence_logprobs(seqs) - OLD.sequence_logprobs(seqs)).exp()
    rtg = seqs.mean(-1)[:, None] - 0.1 * ell.flip(-1).cumsum(-1).flip(-1)
    est = (w[:, None, None] * rtg[..., None] * scores).sum(1)
    seqs_all = PI.enumerate(5)[0]
    J = (PI.sequence_logprobs(seqs_all).exp() * seqs_all.mean(-1)).sum() - 0.1 * PI.exact_kl(REF, 5)
    exact = torch.stack(torch.autograd.grad(J, [PI.a, PI.b])).detach()
    se = est.std(0) / math.sqrt(est.shape[0])
    assert ((est.mean(0) - exact).abs() < 5 * se).all(), (est.mean(0), exact, se)


def test_sampler_kl_term():
    """The in-loss KL term on a sampler's rollouts, weighted as verl ("none") and TRL ("trainer-ratio") weight it."""
    true = exact_kl_gradients(PI, REF, 5)["true"]
    kl = float(PI.exact_kl(REF, 5).detach())
    seq = practice.sampler_kl_term(PI, OLD, REF, 5, "sequence")
    assert abs(seq["value"] - kl) < 1e-12 and torch.allclose(seq["gradient"], true, atol=1e-12)
    # on-policy: unweighted k3 = the per-token forward KL; x pi/pi_old = token-level k2 (chapter 3)
    tok = exact_kl_gradients(PI, REF, 5, level="token")
    none_on = practice.sampler_kl_term(PI, PI, REF, 5, "none")
    ratio_on = practice.sampler_kl_term(PI, PI, REF, 5, "trainer-ratio")
    assert torch.allclose(ratio_on["gradient"], tok["k2-in-loss"], atol=1e-12)
    assert torch.allclose(none_on["gradient"], practice.offpolicy_kl_gradient(PI, PI, REF, 5, "k3", "none"), atol=1e-12)
    assert abs(none_on["value"] - kl) < 1e-12 and abs(ratio_on["value"] - kl) < 1e-12
    # under the sampler the two library weightings leave the value and the gradient biased
    for w in ("none", "trainer-ratio"):
        off = practice.sampler_kl_term(PI, OLD, REF, 5, w)
        assert abs(off["value"] - kl) > 1e-3 and float((off["gradient"] - true).abs().max()) > 0.05
    with pytest.raises(ValueError, match="weighting must be one of"):
        practice.sampler_kl_term(PI, OLD, REF, 5, "prefix")


def test_precision_mismatch():
    logp = torch.log(torch.full((4, 5), 0.5, dtype=torch.float64))
    mask = torch.ones(4, 5)
    z = practice.precision_mismatch(logp, logp, mask)
    assert z["max_abs"] == 0 and z["seq_k1_mean"] == 0 and z["frac_outside_clip"] == 0
    s = practice.precision_mismatch(logp + 0.3, logp, mask)
    assert s["mean_abs"] == pytest.approx(0.3) and s["frac_outside_clip"] == 1.0
    assert s["seq_k1_mean"] == pytest.approx(1.5) and s["seq_k3_mean"] == pytest.approx(5 * (math.expm1(-0.3) + 0.3))
    with pytest.raises(ValueError, match="no token"):
        practice.precision_mismatch(logp, logp, torch.zeros(4, 5))


def test_token_logprobs_at_float32_matches_a_plain_forward():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=13,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).eval()
    ids = torch.randint(0, 13, (3, 7))
    attn = torch.ones_like(ids)
    got = practice.token_logprobs_at(model, ids, attn, 4)
    with torch.no_grad():
        want = torch.log_softmax(model(ids).logits[:, 3:-1].float(), -1).gather(-1, ids[:, 4:, None]).squeeze(-1)
    assert torch.allclose(got, want.double(), atol=1e-6)
    bf = practice.token_logprobs_at(model, ids, attn, 4, torch.bfloat16)
    assert 0 < (bf - got).abs().max() < 0.5
    assert next(model.parameters()).dtype == torch.float32, "the model itself is not cast"


# --------------------------------------------------------------------------- aggregation
def test_effective_beta():
    T = [2, 4, 10]
    assert practice.effective_beta(T, "sequence-sum", 0.1).tolist() == pytest.approx([0.1] * 3)
    assert practice.effective_beta(T, "sequence-mean", 0.1).tolist() == pytest.approx([0.05, 0.025, 0.01])
    assert practice.effective_beta(T, "token-mean", 0.1).tolist() == pytest.approx([0.1 / (16 / 3)] * 3)
    assert practice.effective_beta(T, "token-sum-norm", 0.1, max_len=20).tolist() == pytest.approx([0.005] * 3)
    # the weights reproduce kltutor.placements.aggregate
    from kltutor.placements import aggregate

    x = torch.randn(3, 10, dtype=torch.float64)
    mask = (torch.arange(10)[None] < torch.tensor(T)[:, None]).double()
    for mode in ("token-mean", "sequence-mean", "sequence-sum"):
        c = practice.aggregation_weights(T, mode)
        assert float((c * (x * mask).sum(-1)).sum()) == pytest.approx(float(aggregate(x, mask, mode)), abs=1e-12)
    with pytest.raises(ValueError, match="unknown aggregation"):
        practice.aggregation_weights(T, "seq-mean")
    with pytest.raises(ValueError, match="shorter"):
        practice.aggregation_weights(T, "token-sum-norm", max_len=5)
    with pytest.raises(ValueError, match="beta"):
        practice.effective_beta(T, "token-mean", -1.0)


def test_aggregation_stationary_policy():
    g = torch.Generator().manual_seed(0)
    K = 10
    ref = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    R = (torch.arange(K) % 2).double()
    T = torch.arange(1, K + 1).double()
    beta = 0.3
    tilt = practice.aggregation_stationary_policy(ref, R, T, beta, "sequence-sum")
    assert torch.allclose(tilt, optimal_policy(ref, R, beta), atol=1e-15)
    pi = practice.aggregation_stationary_policy(ref, R, T, beta, "sequence-mean")
    b = float((pi * R).sum())
    field = (R - b - beta * (pi / ref).log()) / T  # c(T) (A - beta l) must be the same for every response
    assert float(field.max() - field.min()) < 1e-10
    # the sequence mean favours long responses among equally rewarded ones (kappa < 0)
    correct = R == 1
    mean_len = lambda p: float((p[correct] * T[correct]).sum() / p[correct].sum())  # noqa: E731
    assert mean_len(pi) > mean_len(tilt) + 1e-3


# --------------------------------------------------------------------------- references
def test_reference_resets_compose_tilts():
    p0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    r = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    run = practice.bandit_with_reference_updates(p0, r, beta=1.0, steps=3 * 400, lr=2.0, reset_every=400)
    assert run["kl_reference"][399] < 1e-12 and run["kl_reference"][799] < 1e-12
    # after 3 converged periods the policy is the tilt with beta/3
    target = optimal_policy(p0, r, 1.0 / 3)
    kl_target = float((target * (target / p0).log()).sum())
    assert run["kl_initial"][-1] == pytest.approx(kl_target, abs=1e-6)
    fixed = practice.bandit_with_reference_updates(p0, r, beta=1.0, steps=1200, lr=2.0)
    assert fixed["kl_initial"] == pytest.approx(fixed["kl_reference"])
    assert run["kl_initial"][-1] > fixed["kl_initial"][-1]
    soft = practice.bandit_with_reference_updates(p0, r, beta=1.0, steps=200, lr=2.0, soft_alpha=0.1)
    assert soft["kl_initial"][-1] > soft["kl_reference"][-1]
    with pytest.raises(ValueError, match="not both"):
        practice.bandit_with_reference_updates(p0, r, 1.0, 10, reset_every=2, soft_alpha=0.5)


def test_beta_zero_collapses_diversity_among_correct_answers():
    p0 = torch.tensor([0.3, 0.1, 0.05, 0.55], dtype=torch.float64)
    r = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    correct = r == 1
    free = practice.bandit_with_reference_updates(p0, r, 0.0, 2000, 1.0, correct=correct)
    kept = practice.bandit_with_reference_updates(p0, r, 0.5, 2000, 1.0, correct=correct)
    pc = p0[correct] / p0[correct].sum()
    h_ref = float(-(pc * pc.log()).sum())
    assert kept["correct_entropy"][-1] == pytest.approx(h_ref, abs=1e-6), "beta > 0 keeps the reference's ratios"
    assert free["correct_entropy"][-1] < h_ref - 0.05


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj, self.other = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.other(torch.tanh(self.q_proj(x)) + self.v_proj(x))


def test_lora_zero_init_reference_is_exact_and_principal_is_not():
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    base = Block()
    before = base(x).detach()
    m = Block()
    m.load_state_dict(base.state_dict())
    assert practice.add_lora(m, rank=2) == ["q_proj", "v_proj"]
    assert torch.equal(m(x), before)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m(x).square().sum().backward()
    opt.step()
    assert not torch.equal(m(x), before), "the adapter trained"
    with practice.adapters_disabled(m):
        assert torch.equal(m(x), before), "disabled adapter = the initial policy, bit for bit"
    assert not torch.equal(m(x), before), "re-enabled on exit"
    pm = Block()
    pm.load_state_dict(base.state_dict())
    practice.add_lora(pm, rank=2, init="principal")
    assert torch.allclose(pm(x), before, atol=1e-5)
    with practice.adapters_disabled(pm):
        assert (pm(x) - before).abs().max() > 1e-2, "the base weights were replaced by the residual"
    with pytest.raises(ValueError, match="no LoRA"):
        with practice.adapters_disabled(Block()):
            pass
    with pytest.raises(ValueError, match="init"):
        practice.LoRALinear(nn.Linear(3, 3), 1, init="pissa")


# --------------------------------------------------------------------------- two KLs, sequence ratios, slips
def test_two_kl_gradients_and_bandit_optimum():
    g = practice.two_kl_gradients(PI, REF, 5, 0.1, 0.3)
    assert torch.allclose(g["combined"], 0.1 * g["reverse"] + 0.3 * g["k3_loss"], atol=1e-14)
    assert not torch.allclose(g["combined"], g["naive"], atol=1e-3)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    r = torch.tensor([1.0, 0.5, 0.0, 0.2], dtype=torch.float64)
    assert torch.allclose(practice.two_kl_bandit_optimum(p, r, 0.2, 0.0), optimal_policy(p, r, 0.2), atol=1e-12)
    pi = practice.two_kl_bandit_optimum(p, r, 0.1, 0.2)
    station = r - 0.1 * (pi / p).log() + 0.2 * p / pi
    assert float(station.max() - station.min()) < 1e-10
    with pytest.raises(ValueError):
        practice.two_kl_bandit_optimum(p, r, 0.0, 0.0)


def test_offpolicy_weightings():
    true = exact_kl_gradients(PI, REF, 5)["true"]
    for sampler in (PI, OLD):
        for w in ("prefix", "sequence"):
            assert torch.allclose(practice.offpolicy_kl_gradient(PI, sampler, REF, 5, "k3", w), true, atol=1e-12)
        assert (practice.offpolicy_kl_gradient(PI, sampler, REF, 5, "k3", "sequence-geomean") - true).abs().max() > 0.1
    k2 = exact_kl_gradients(PI, REF, 5)["k2-in-loss"]
    assert torch.allclose(practice.offpolicy_kl_gradient(PI, PI, REF, 5, "k3", "token"), k2, atol=1e-12)
    one = exact_kl_gradients(PI, REF, 1)["true"]
    for w in practice.OFFPOLICY_WEIGHTINGS[1:]:
        assert torch.allclose(practice.offpolicy_kl_gradient(PI, OLD, REF, 1, "k3", w), one, atol=1e-12), w
    with pytest.raises(ValueError, match="weighting"):
        practice.offpolicy_kl_gradient(PI, OLD, REF, 3, "k3", "geometric")


def test_slips_are_documented_and_reproduced():
    for s in practice.SLIPS:
        assert {"repository", "commit", "file", "lines", "code", "slip", "value"} <= set(s)
        assert len(s["commit"]) == 40
    inverted = practice.SLIPS[0]["value"]
    assert float(inverted(torch.tensor(1.0))) == pytest.approx(math.e - 2)
    # one token: value chi2 - KL, expected gradient = gradient of chi2/2
    value, grad = practice.expected_in_loss(PI, REF, 1, inverted)
    p = torch.sigmoid(PI.a)
    q = torch.sigmoid(REF.a).detach()
    chi2 = p**2 / q + (1 - p) ** 2 / (1 - q) - 1
    kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    assert value == pytest.approx(float((chi2 - kl).detach()), abs=1e-12)
    (ga,) = torch.autograd.grad(chi2 / 2, PI.a)
    assert float(grad[0]) == pytest.approx(float(ga), abs=1e-12) and abs(float(grad[1])) < 1e-15
    v1, g1 = practice.expected_in_loss(PI, REF, 4, practice.SLIPS[1]["value"])
    assert v1 == pytest.approx(-float(PI.exact_kl(REF, 4).detach()), abs=1e-12) and g1.abs().max() < 1e-12
    # in the reward, k1 gives exactly grad KL / T, and the reversed sign exactly its negative
    true4 = exact_kl_gradients(PI, REF, 4)["true"]
    assert torch.allclose(practice.expected_in_reward(PI, REF, 4, lambda l: l), true4 / 4, atol=1e-14)
    assert torch.allclose(practice.expected_in_reward(PI, REF, 4, practice.SLIPS[1]["value"]), -true4 / 4, atol=1e-14)


# --------------------------------------------------------------------------- where the KL sits decides the length bias
def test_aggregation_update_baselines():
    g = torch.Generator().manual_seed(3)
    K = 8
    ref = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    R = (torch.arange(K) % 2).double()
    T = torch.arange(1, K + 1).double()
    beta = 0.2
    tilt = optimal_policy(ref, R, beta)
    smean = practice.aggregation_stationary_policy(ref, R, T, beta, "sequence-mean")
    # the solver's answer is a zero of the update; the tilt is one for every other case
    assert practice.aggregation_update(smean, ref, R, T, beta, "sequence-mean").abs().max() < 1e-14
    assert practice.aggregation_update(tilt, ref, R, T, beta, "sequence-mean").abs().max() > 1e-3
    for mode in practice.AGGREGATIONS:
        assert practice.aggregation_update(tilt, ref, R, T, beta, mode, "shaped").abs().max() < 1e-14
    assert torch.equal(
        practice.aggregation_stationary_policy(ref, R, T, beta, "sequence-mean", baseline="shaped"), tilt
    )
    # the per-token length bonus is KL / E[T] at the stationary point
    kl = float((smean * (smean / ref).log()).sum())
    bonus = float(((smean / tilt).log()[R == 1].diff() / T[R == 1].diff()).mean())
    assert bonus == pytest.approx(kl / float((smean * T).sum()), abs=1e-12)


def test_aggregation_update_bad_input():
    ref = torch.tensor([0.5, 0.5], dtype=torch.float64)
    R, T = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="baseline"):
        practice.aggregation_update(ref, ref, R, T, 0.1, "sequence-mean", "reward")
    with pytest.raises(ValueError, match="aggregation"):
        practice.aggregation_update(ref, ref, R, T, 0.1, "mean")
    with pytest.raises(ValueError, match="policy_probs"):
        practice.aggregation_update(torch.tensor([1.0, 0.0], dtype=torch.float64), ref, R, T, 0.1, "sequence-mean")
    with pytest.raises(ValueError, match="beta"):
        practice.aggregation_stationary_policy(ref, R, T, float("nan"), "sequence-mean")
