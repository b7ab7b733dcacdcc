"""One GRPO step of the capstone: the logged metrics against hand computations on a batch with early
EOS and unequal lengths, the scale of kl_term, and the in-reward penalty frozen at sampling time
(its values and its gradient do not move across updates_per_batch > 1)."""

import math

import pytest
import torch

from kltutor.capstone import loop
from kltutor.capstone.config import CapstoneConfig
from kltutor.capstone.loop import METRICS, StepRow
from kltutor.capstone.loss import loss_settings, measure, step_loss
from kltutor.capstone.model import build_tokenizer
from kltutor.capstone.task import AdditionTask
from kltutor.grpo import grpo_loss
from tests.helpers.capstone_tiny import step_context

NAN = float("nan")


def _k3(x):
    return math.exp(-x) - 1 + x


def test_metrics_are_the_step_rows_fields_in_order():
    assert METRICS == (
        "step",
        "reward",
        "accuracy",
        "kl_exact_seq",
        "kl_exact_token",
        "kl_k1_seq",
        "kl_k3_seq",
        "entropy",
        "response_length",
        "terminated",
        "clip_fraction",
        "grad_norm",
        "loss",
        "kl_term",
        "beta",
        "seconds",
        "tokens_per_second",
    )
    assert tuple(StepRow.__dataclass_fields__) == METRICS


def test_measure_against_a_hand_computation_with_early_eos():
    """Three completions of lengths 2, 4 and 1 (EOS included); after EOS the tensors hold garbage
    (even NaN), which must not reach any metric."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    old = torch.tensor([[-0.5, -1.2, 9.0, NAN], [-2.0, -0.1, -0.7, -0.3], [-0.2, NAN, -50.0, 3.0]])
    ref = torch.tensor([[-0.9, -0.8, -9.0, 1.0], [-1.5, -0.6, -0.9, -0.1], [-0.4, 2.0, NAN, -1.0]])
    kl = torch.tensor([[0.11, 0.05, NAN, 7.0], [0.30, 0.07, 0.0, 0.2], [0.01, 5.0, 5.0, NAN]])
    ent = torch.tensor([[1.0, 0.5, NAN, 9.0], [2.0, 1.5, 0.5, 0.25], [0.75, NAN, 3.0, 3.0]])
    rewards = torch.tensor([1.0, 0.5, 0.0])
    terminated = torch.tensor([True, False, True])
    got = measure(rewards, terminated, mask, old, ref, kl, ent)
    lens = [2, 4, 1]
    ell = [[old[b, t].item() - ref[b, t].item() for t in range(n)] for b, n in enumerate(lens)]
    hand = {
        "reward": 0.5,
        "accuracy": 1 / 3,
        "kl_exact_seq": (0.11 + 0.05 + 0.30 + 0.07 + 0.0 + 0.2 + 0.01) / 3 - 0.0,
        "kl_exact_token": (0.11 + 0.05 + 0.30 + 0.07 + 0.0 + 0.2 + 0.01) / 7,
        "kl_k1_seq": sum(sum(r) for r in ell) / 3,
        "kl_k3_seq": sum(sum(_k3(x) for x in r) for r in ell) / 3,
        "entropy": (1.0 + 0.5 + 2.0 + 1.5 + 0.5 + 0.25 + 0.75) / 7,
        "response_length": 7 / 3,
        "terminated": 2 / 3,
    }
    assert set(got) == set(hand)
    for k, v in hand.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k


def _loss_batch():
    logp = torch.tensor(
        [[-0.5, -1.2, -0.3, -1.0], [-2.0, -0.1, -0.7, -0.2], [-0.3, -0.4, -0.5, -0.6], [-1.1, -0.9, -0.2, -0.4]],
        dtype=torch.float64,
    )
    old = logp + torch.tensor(
        [[0.05, -0.08, 0.02, 0.0], [-0.04, 0.03, 0.0, 0.1], [0.0, 0.06, -0.02, 0.0], [0.07, -0.01, 0.03, 0.0]],
        dtype=torch.float64,
    )
    ref = logp + torch.tensor(
        [[0.4, -0.3, 0.2, 0.1], [-0.5, 0.6, 0.1, 0.0], [0.3, 0.2, -0.4, 0.0], [-0.2, 0.5, 0.3, 0.0]],
        dtype=torch.float64,
    )
    kl = torch.tensor(
        [[0.11, 0.05, 0.02, 0.3], [0.30, 0.07, 0.01, 0.0], [0.2, 0.1, 0.05, 0.0], [0.04, 0.06, 0.08, 0.0]],
        dtype=torch.float64,
    )
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    return logp, old, ref, kl, mask, rewards


def _agg(values, mask, mode):
    per_seq = [[values[b][t] for t in range(len(mask[b])) if mask[b][t]] for b in range(len(mask))]
    if mode == "token-mean":
        flat = [v for r in per_seq for v in r]
        return sum(flat) / len(flat)
    if mode == "sequence-mean":
        return sum(sum(r) / len(r) for r in per_seq) / len(per_seq)
    return sum(sum(r) for r in per_seq) / len(per_seq)


@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean", "sequence-sum"])
@pytest.mark.parametrize(
    "placement", ["k1-in-loss", "k2-in-loss", "k3-in-loss", "k1-in-reward", "k3-in-reward", "exact-in-loss", "none"]
)
def test_kl_term_is_the_term_beta_multiplies(placement, aggregation):
    """kl_term is reported before beta, aggregated like the loss: for in-loss placements exactly
    (loss - policy loss) / beta; for in-reward ones the frozen penalty k(old - ref); hand-computed."""
    logp, old, ref, kl, mask, rewards = _loss_batch()
    beta = 0.3
    cfg = CapstoneConfig(placement=placement, beta=beta, group_size=2, aggregation=aggregation)
    loss, kl_term, _ = step_loss(
        {"logp": logp, "kl": kl}, {"logp": old, "ref_logp": ref}, mask, rewards, beta=beta, **loss_settings(cfg)
    )
    est = {"k1": lambda x: x, "k2": lambda x: 0.5 * x * x, "k3": _k3}
    L, O, R, K, M = (t.tolist() for t in (logp, old, ref, kl, mask))
    if placement == "none":
        expected = 0.0
    elif placement == "exact-in-loss":
        expected = _agg(K, M, aggregation)
    else:
        k = est[placement[:2]]
        src = O if placement.endswith("-in-reward") else L  # the in-reward penalty is the sampling policy's
        expected = _agg([[k(src[b][t] - R[b][t]) for t in range(4)] for b in range(4)], M, aggregation)
    assert float(kl_term) == pytest.approx(expected, rel=1e-12, abs=1e-14)
    if placement.endswith("-in-loss"):
        cfg0 = cfg.replace(beta=0.0)
        loss0, _, _ = step_loss(
            {"logp": logp, "kl": kl}, {"logp": old, "ref_logp": ref}, mask, rewards, beta=0.0, **loss_settings(cfg0)
        )
        assert (loss - loss0).item() == pytest.approx(beta * expected, rel=1e-12, abs=1e-14)


def test_in_reward_gradient_uses_the_frozen_penalty():
    """d loss / d logp_t of k3-in-reward on unclipped tokens is -w_t (A_b + G_t) / (n_b B), with the
    return-to-go G_t of -beta k3(old - ref): whatever the current logp, the penalty per unit of ratio
    is the same number (the old code recomputed it from logp)."""
    logp, old, ref, _, mask, rewards = _loss_batch()
    beta, B = 0.3, 4
    from kltutor.grpo import group_advantages

    adv = group_advantages(rewards, 2).tolist()
    grads = []
    for shift in (0.0, 0.04):  # two "updates": the current policy moved, the batch did not
        x = (logp + shift * torch.arange(16, dtype=torch.float64).reshape(4, 4).sin()).requires_grad_(True)
        out = grpo_loss(x, old, ref, mask, rewards, 2, placement="k3-in-reward", beta=beta, aggregation="sequence-mean")
        (g,) = torch.autograd.grad(out.loss, x)
        w = torch.exp(x.detach() - old)
        assert ((w - 1).abs()[mask > 0] < 0.2).all()  # no token clipped
        for b in range(B):
            n = int(mask[b].sum())
            pen = [-beta * _k3(old[b, s].item() - ref[b, s].item()) for s in range(n)]
            for t in range(n):
                expected = -w[b, t].item() * (adv[b] + sum(pen[t:])) / (n * B)
                assert g[b, t].item() == pytest.approx(expected, rel=1e-10, abs=1e-13)
        grads.append(g / w)  # gradient per unit of importance ratio
    torch.testing.assert_close(grads[0] * mask, grads[1] * mask, rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def tiny_ctx_parts():
    task = AdditionTask(9, format_reward=0.5)  # well-formed wrong answers earn 0.5: rewards differ within groups
    return task, build_tokenizer(task.alphabet)


def test_in_reward_penalty_does_not_move_across_updates(tiny_ctx_parts, monkeypatch):
    """A real step with updates_per_batch=3 at a large learning rate: the policy's log-probs move
    between updates, the penalty fed to the returns-to-go and the reported kl_term do not."""
    import kltutor.grpo as grpo

    seen = []
    import kltutor.capstone.loss as capstone_loss

    real_rtg, real_loss = grpo.returns_to_go, capstone_loss.grpo_loss

    def rtg(penalty, m, *a, **k):
        seen.append(("penalty", penalty.detach().clone()))
        return real_rtg(penalty, m, *a, **k)

    def loss(logp, old_logp, ref_logp, mask, *a, **k):
        out = real_loss(logp, old_logp, ref_logp, mask, *a, **k)
        seen.append(
            ("logp", logp.detach().clone(), out.kl_term.item(), old_logp.clone(), ref_logp.clone(), mask.clone())
        )
        return out

    monkeypatch.setattr(grpo, "returns_to_go", rtg)
    monkeypatch.setattr(capstone_loss, "grpo_loss", loss)
    torch.manual_seed(0)
    ctx = step_context(*tiny_ctx_parts, ref_seed=1, placement="k3-in-reward", beta=0.5, updates_per_batch=3, lr=0.05)
    row = loop._step(ctx, 0)
    penalties = [s[1] for s in seen if s[0] == "penalty"]
    calls = [s for s in seen if s[0] == "logp"]
    assert len(penalties) == len(calls) == 3
    _, logp1, _, old, ref, mask = calls[0]
    logp3 = calls[2][1]
    m = mask > 0
    assert (logp3 - logp1)[m].abs().max() > 1e-2  # the policy moved between updates ...
    for p in penalties[1:]:
        assert torch.equal(p, penalties[0])  # ... the penalty did not
    from kltutor.estimators import k3

    torch.testing.assert_close(penalties[0], -0.5 * k3(old, ref) * mask)  # -beta k3(old - ref): sampling time
    assert (k3(logp3, ref) - k3(old, ref))[m].abs().max() > 1e-3  # recomputing it (the old code) would have moved it
    assert calls[0][2] == calls[1][2] == calls[2][2] == pytest.approx(row.kl_term, rel=1e-6)


@pytest.mark.parametrize("placement", ["k3-in-loss", "exact-in-loss", "k1-in-reward"])
def test_a_real_step_logs_consistent_metrics(tiny_ctx_parts, placement):
    torch.manual_seed(1)
    ctx = step_context(*tiny_ctx_parts, placement=placement, beta=0.1, updates_per_batch=2, lr=1e-3)
    rows = [loop._step(ctx, i) for i in range(2)]
    first = rows[0]
    assert first.step == 1 and rows[1].step == 2
    assert abs(first.kl_exact_seq) < 1e-5 and abs(first.kl_k1_seq) < 1e-5  # step 1: policy == reference
    assert 0 <= first.clip_fraction <= 1 and first.response_length >= 1
    assert rows[1].grad_norm > 0 and rows[1].kl_exact_seq > 0  # the policy moved
    assert first.tokens_per_second == pytest.approx(first.response_length * 16 / first.seconds, rel=1e-9)
    assert set(ctx.timings) == {"sample", "score", "forward", "backward", "optimizer"}
    assert all(math.isfinite(v) for v in first.as_dict().values())


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.2), "top_p"),
        (dict(top_k=-3), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(logprob_dtype="fp8"), "logprob_dtype"),
        (dict(decode_mode="graph"), "decode_mode"),
        (dict(ref_scoring="never"), "ref_scoring"),
    ],
)
def test_sampling_options_are_validated(changes, match):
    with pytest.raises(ValueError, match=match):
        CapstoneConfig(**changes).validate()


def test_sampling_options_from_the_command_line():
    from kltutor.capstone.__main__ import build_parser, config_from_args

    cfg = config_from_args(
        build_parser().parse_args(
            [
                "--top-p",
                "0.9",
                "--top-k",
                "5",
                "--logprob-dtype",
                "bfloat16",
                "--decode-mode",
                "eager",
                "--ref-scoring",
                "in-loop",
            ]
        )
    )
    assert (cfg.top_p, cfg.top_k, cfg.logprob_dtype, cfg.decode_mode, cfg.ref_scoring) == (
        0.9,
        5,
        "bfloat16",
        "eager",
        "in-loop",
    )


def test_a_run_with_the_sampling_options(tiny_ctx_parts, tmp_path):
    """top-p / top-k / bf16 log-probs / in-loop reference through a real step: every metric finite, and
    with bf16 log-probs the first update's importance ratio is no longer exactly 1 (clipping can occur)."""
    torch.manual_seed(0)
    ctx = step_context(
        *tiny_ctx_parts,
        ref_seed=1,
        placement="k3-in-loss",
        beta=0.1,
        top_p=0.9,
        top_k=6,
        temperature=0.8,
        logprob_dtype="bfloat16",
        ref_scoring="in-loop",
        lr=1e-3,
    )
    assert ctx.sampler.ref_scoring == "in-loop" and ctx.sampler.top_k == 6
    row = loop._step(ctx, 0)
    assert all(math.isfinite(v) for v in row.as_dict().values())
