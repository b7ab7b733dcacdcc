"""The capstone's on-policy distillation mode (``--teacher``): the advantages against hand-computed values,
the expected gradient of the engine's loss against kltutor.distillation's exact toy, the settings it
refuses, and a short run on the CPU that logs the exact KL to the teacher falling."""

import math
import os

import pytest
import torch

from kltutor.capstone import CapstoneConfig, run
from kltutor.capstone.config import ConfigError
from kltutor.capstone.sft import reference_policy
from kltutor.capstone.teacher import distillation_advantages, distillation_loss
from kltutor.distillation import local_gradient, reward_gradient, sequence_gradient, toy_logits
from kltutor.divergences import kl_from_logits
from kltutor.toys.autoregressive import BinaryAutoregressive, all_binary_sequences
from tests.helpers.capstone_tiny import TINY_SETTINGS

os.environ.setdefault("TQDM_DISABLE", "1")

# the sampled tokens' log-probs of the student (at sampling time) and of the teacher; the second
# completion ended after two tokens (its third position holds junk that must not count)
OLD = torch.tensor([[-0.7, -1.0, -0.3], [-1.6, -0.2, 5.0]], dtype=torch.float64)
TEACHER = torch.tensor([[-0.9, -0.8, -0.2], [-1.5, -0.6, -9.0]], dtype=torch.float64)
KL = torch.tensor([[0.11, 0.05, 0.02], [0.30, 0.07, 8.0]], dtype=torch.float64)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
REWARDS = torch.tensor([1.0, 0.0], dtype=torch.float64)


def _hand(estimator: str, discount: float, task_weight: float = 0.0) -> list[list[float]]:
    """The advantages written out with Python floats."""
    k = {"k1": lambda l: l, "k3": lambda l: math.exp(-l) - 1 + l}
    mean = sum(REWARDS.tolist()) / 2
    std = math.sqrt(sum((r - mean) ** 2 for r in REWARDS.tolist()))  # unbiased, n - 1 = 1
    task = [(r - mean) / (std + 1e-6) for r in REWARDS.tolist()]
    out = []
    for b in range(2):
        n = int(MASK[b].sum())
        if estimator == "exact":
            own = [KL[b, t].item() for t in range(n)]
            first = 1  # the future tokens only: the own term is differentiated in the loss
        else:
            own = [k[estimator](OLD[b, t].item() - TEACHER[b, t].item()) for t in range(n)]
            first = 0
        row = [
            -sum(discount ** (s - t) * own[s] for s in range(t + first, n)) + task_weight * task[b] for t in range(n)
        ]
        out.append(row + [0.0] * (3 - n))
    return out


@pytest.mark.parametrize(
    "estimator, discount, task_weight",
    [("k1", 0.0, 0.0), ("k1", 1.0, 0.0), ("k1", 0.5, 0.0), ("k3", 1.0, 0.0), ("exact", 1.0, 0.0), ("exact", 0.0, 0.0),
     ("k1", 1.0, 0.5)],
)  # fmt: skip
def test_advantages_match_hand_computation(estimator, discount, task_weight):
    adv = distillation_advantages(
        {"logp": OLD, "ref_logp": TEACHER},
        MASK,
        REWARDS,
        KL,
        estimator=estimator,
        discount=discount,
        task_weight=task_weight,
        group_size=2,
    )
    torch.testing.assert_close(adv, torch.tensor(_hand(estimator, discount, task_weight), dtype=torch.float64))


def test_discount_0_and_return_to_go_spelled_out():
    """The two advantages the chapter compares, as numbers: k1, l = old - teacher = [0.2, -0.2, -0.1] and [-0.1, 0.4]."""
    old = {"logp": OLD, "ref_logp": TEACHER}
    kw = dict(estimator="k1", group_size=2)
    own = distillation_advantages(old, MASK, REWARDS, discount=0.0, **kw)
    rtg = distillation_advantages(old, MASK, REWARDS, discount=1.0, **kw)
    torch.testing.assert_close(own[0], torch.tensor([-0.2, 0.2, 0.1], dtype=torch.float64))
    torch.testing.assert_close(rtg[0], torch.tensor([0.1, 0.3, 0.1], dtype=torch.float64))
    torch.testing.assert_close(rtg[1], torch.tensor([-0.3, -0.4, 0.0], dtype=torch.float64))


def _engine_gradient(student, teacher, seq_len, estimator, discount):
    """E_{y ~ student}[grad of the engine's loss on y], by enumeration (each sequence a batch of one, on-policy)."""
    seqs = all_binary_sequences(seq_len)
    with torch.no_grad():
        weights = student.sequence_logprobs(seqs).exp()
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(seqs.shape[0]):
        y = seqs[i : i + 1]
        logp = student.token_logprobs(y)
        with torch.no_grad():
            t_logp = teacher.token_logprobs(y)
            t_logits = toy_logits(teacher, y)
        st = {"logp": logp, "kl": kl_from_logits(toy_logits(student, y), t_logits)}
        old = {"logp": logp.detach(), "ref_logp": t_logp}
        loss, _, _ = distillation_loss(
            st,
            old,
            torch.ones_like(logp),
            torch.zeros(1, dtype=torch.float64),
            estimator=estimator,
            discount=discount,
            aggregation="sequence-sum",  # the sum over tokens: the sequence-level objective
        )
        ga, gb = torch.autograd.grad(loss, [student.a, student.b])
        total = total + weights[i] * torch.stack([ga, gb])
    return total


STUDENT, TEACHER_TOY, T = (0.3, -0.8), (-0.5, 1.2), 3


@pytest.mark.parametrize(
    "estimator, discount, expected",
    [
        ("k1", 1.0, lambda s, t: sequence_gradient(s, t, T)),  # the return-to-go: exact
        ("exact", 1.0, lambda s, t: sequence_gradient(s, t, T)),  # local KL + future KL: exact
        ("k1", 0.0, lambda s, t: reward_gradient(s, t, T, 0.0)),  # each token's own KL: the chapter's biased row
        ("k3", 1.0, lambda s, t: reward_gradient(s, t, T, 1.0, "k3")),
        ("exact", 0.0, lambda s, t: local_gradient(s, t, T)),  # GKD's local gradient
        ("k1", 0.5, lambda s, t: reward_gradient(s, t, T, 0.5)),
    ],
)
def test_expected_gradient_matches_the_chapters_exact_toy(estimator, discount, expected):
    student, teacher = BinaryAutoregressive(*STUDENT), BinaryAutoregressive(*TEACHER_TOY)
    got = _engine_gradient(student, teacher, T, estimator, discount)
    want = expected(student, teacher)
    torch.testing.assert_close(got, want.to(torch.float64), rtol=1e-9, atol=1e-12)


def test_discount_0_is_not_the_sequence_gradient():
    """The condition matters: on this toy the discount-0 direction is measurably off (chapter ch-distillation)."""
    student, teacher = BinaryAutoregressive(*STUDENT), BinaryAutoregressive(*TEACHER_TOY)
    true = sequence_gradient(student, teacher, T)
    for estimator in ("k1", "exact"):
        g = _engine_gradient(student, teacher, T, estimator, 0.0)
        assert (g - true).norm() > 0.05 * true.norm(), estimator


@pytest.mark.parametrize(
    "changes, field, match",
    [
        (dict(teacher="reference", teacher_task_weight=1.0), "teacher", "use placement 'none'"),
        (dict(teacher="reference", placement="none"), "teacher_task_weight", "trains nothing"),
        (dict(teacher_estimator="exact"), "teacher_estimator", "applies to on-policy distillation only"),
        (dict(teacher_discount=0.0), "teacher_discount", "applies to on-policy distillation only"),
        (dict(teacher="x", placement="none", teacher_discount=1.5), "teacher_discount", r"must be in \[0, 1\]"),
        (dict(teacher="x", placement="none", teacher_task_weight=-1.0), "teacher_task_weight", ">= 0"),
        (dict(teacher=" ", placement="none"), "teacher", "'reference' or a model directory"),
    ],
)
def test_settings_it_refuses(changes, field, match):
    with pytest.raises(ConfigError, match=match) as e:
        CapstoneConfig(**changes).validate()
    assert e.value.field == field


def test_a_short_run_logs_the_exact_kl_to_the_teacher_falling(capstone_cache, tmp_path):
    """The tiny reference (40 SFT steps) teaches a student trained for 5: exact estimator, return-to-go."""
    base = dict(TINY_SETTINGS, device="cpu", progress=False, cache_dir=str(capstone_cache))
    _, _, teacher = reference_policy(CapstoneConfig(**base).validate(), "cpu")
    cfg = CapstoneConfig(
        **base
        | dict(
            sft_steps=5,
            placement="none",
            teacher=str(teacher.path),
            teacher_estimator="exact",
            steps=STEPS,
            prompts_per_step=8,
            lr=LR,
            run_dir=str(tmp_path / "run"),
        )
    )
    f = run(cfg).frame
    assert f.notna().all().all() and all(map(math.isfinite, f.drop(columns=["step"]).to_numpy().ravel()))
    kl = f["kl_exact_seq"].to_numpy()
    assert (kl >= 0).all()
    # with the exact estimator, the reward's KL is the logged exact KL of the sampled batch
    quarter = STEPS // 4
    assert kl[-quarter:].mean() < 0.8 * kl[:quarter].mean(), kl


STEPS, LR = 16, 3e-3


def test_reference_as_teacher_is_the_kl_to_the_start_and_a_run_resumes(capstone_cache, tmp_path):
    """teacher='reference' with the task reward: the KL columns are to the reference (0 at step 1, where the
    policy is the reference), and a resumed distillation run equals an uninterrupted one (the CPU)."""
    from kltutor.capstone import METRICS, TIMING_METRICS

    cfg = CapstoneConfig(
        **dict(TINY_SETTINGS, device="cpu", progress=False, cache_dir=str(capstone_cache))
        | dict(placement="none", teacher="reference", teacher_task_weight=1.0, teacher_estimator="k3", steps=4)
        | dict(checkpoint_every=2, teacher_discount=0.5)
    )
    full = run(cfg.replace(run_dir=str(tmp_path / "full")))
    assert abs(full.frame["kl_exact_seq"].iloc[0]) < 1e-5  # float32 rounding of two equal models' log-softmax
    assert full.frame["kl_exact_seq"].iloc[-1] > 0  # the policy moved away from its teacher
    run(cfg.replace(run_dir=str(tmp_path / "cut"), steps=2))
    resumed = run(cfg.replace(run_dir=str(tmp_path / "cut"), resume=True))
    cols = [c for c in METRICS if c not in TIMING_METRICS]
    assert full.frame[cols].equals(resumed.frame[cols])
