r"""On-policy distillation: the KL to a teacher as the objective (chapter ``ch-distillation``).

The student :math:`\pi_\theta` samples, the teacher :math:`\pi_T` scores, and the objective is the
sequence-level reverse KL :math:`\mathrm{KL}(\pi_\theta\|\pi_T)`. Everything here runs on chapter 3's
toy (:class:`kltutor.toys.BinaryAutoregressive`, with the *teacher* in the place of the reference), where
every expectation is a finite sum over the :math:`2^T` sequences, so each gradient below is exact:

- :func:`reward_gradient`: the per-token estimator used as a (negative) reward, with a discount
  :math:`\gamma` on the future tokens' terms (``discount=0``: each token's own term is its advantage;
  ``discount=1``: the return-to-go);
- :func:`local_gradient`: a per-token divergence over the whole vocabulary differentiated at the states
  the student visited, the states held fixed (GKD, TRL's ``DistillationTrainer``); with
  ``future_discount`` the future tokens' divergences are added as a return-to-go reward;
- :func:`sequence_gradient`: the gradient of the sequence-level reverse or forward KL itself.

:func:`generalized_jsd` is the skewed Jensen-Shannon divergence of GKD (with TRL's convention for
``beta``); :func:`truncated_kl` the top-k truncation of a per-token KL; :func:`shared_feature_forgetting`
the two-context toy of the section on forgetting.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.functional import log_softmax, logsigmoid

from kltutor import divergences
from kltutor.estimators import of_log_ratio
from kltutor.gradients import exact_kl_gradients, expected_gradient_on_samples
from kltutor.placements import returns_to_go
from kltutor.toys.autoregressive import BinaryAutoregressive, all_binary_sequences

__all__ = [
    "DIVERGENCES",
    "discounted_sum",
    "token_advantages",
    "reward_gradient",
    "toy_logits",
    "generalized_jsd",
    "per_state_divergence",
    "local_gradient",
    "sequence_gradient",
    "expected_loss_gradient",
    "gradient_rows",
    "truncated_kl",
    "truncation_rows",
    "fit_independent_student",
    "shared_feature_forgetting",
    "PUBLIC_CODE",
    "public_code_rows",
]

#: The per-state divergences of :func:`per_state_divergence` (``"gjsd"`` takes ``beta``).
DIVERGENCES = ("reverse", "forward", "gjsd")


def _check_discount(discount: float, name: str = "discount") -> float:
    if isinstance(discount, bool) or not isinstance(discount, (int, float)) or not 0.0 <= float(discount) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {discount!r}")
    return float(discount)


def _check_models(**models) -> None:
    for name, m in models.items():
        if not isinstance(m, BinaryAutoregressive):
            raise TypeError(f"{name} must be a BinaryAutoregressive, got {type(m).__name__}")


def discounted_sum(x: Tensor, discount: float) -> Tensor:
    r"""``out[..., t] = sum_{s >= t} discount**(s - t) * x[..., s]`` along the last dimension.

    ``discount=0`` returns ``x`` itself (each position keeps its own term); ``discount=1`` the return-to-go.

    >>> discounted_sum(torch.tensor([1.0, 2.0, 4.0]), 0.5)
    tensor([3., 4., 4.])
    """
    return returns_to_go(x, torch.ones_like(x), _check_discount(discount))  # no padding on the toy


def token_advantages(log_ratio: Tensor, discount: float, estimator: str = "k1") -> Tensor:
    r"""The KL side of the per-token reward: :math:`A_t=\sum_{s\ge t}\gamma^{s-t}k(\ell_s)`, ``[..., T]``.

    ``log_ratio`` is :math:`\ell_t=\log\pi_\theta(y_t\mid s_t)-\log\pi_T(y_t\mid s_t)`; the reward is
    :math:`-k(\ell_t)`, so the policy-gradient advantage is :math:`-A_t` and minimising the KL follows
    :math:`-\mathbb{E}[\sum_t A_t\nabla\log\pi_\theta(y_t\mid s_t)]`.
    """
    return discounted_sum(of_log_ratio(estimator, log_ratio.detach()), discount)


def reward_gradient(
    student: BinaryAutoregressive,
    teacher: BinaryAutoregressive,
    seq_len: int,
    discount: float,
    estimator: str = "k1",
) -> Tensor:
    r"""Exact :math:`\mathbb{E}_{y\sim\pi_\theta}[\sum_t A_t\nabla\log\pi_\theta(y_t\mid s_t)]` w.r.t. ``(a, b)``.

    The descent direction of the sequence KL that a policy-gradient trainer follows when the per-token
    estimator ``k(l_t)`` (``"k1"``: the sampled token's log-ratio, ``"k3"``) is the negative reward and
    ``discount`` sets the advantage (:func:`token_advantages`). ``discount=1`` with k1 is the exact
    gradient of :math:`\mathrm{KL}(\pi_\theta\|\pi_T)` (chapter 3's ``k1-in-reward``).
    """
    _check_models(student=student, teacher=teacher)
    _check_discount(discount)

    def loss(logp, old, ref, weights):
        adv = token_advantages(logp - ref, discount, estimator)
        return (weights[:, None] * adv * logp).sum()

    return expected_gradient_on_samples(student, student, teacher, seq_len, loss)


def toy_logits(model: BinaryAutoregressive, seqs: Tensor) -> Tensor:
    """The toy's next-token logits ``[n, T, 2]``: ``(0, a + b c_t)`` (token 0, token 1), differentiable."""
    z = model.logits(seqs)
    return torch.stack([torch.zeros_like(z), z], dim=-1)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, beta: float) -> Tensor:
    r"""GKD's generalised JSD over the last dimension, with TRL's convention for ``beta``:

    :math:`\mathrm{JSD}_\beta=\beta\,\mathrm{KL}(\pi_T\|M)+(1-\beta)\,\mathrm{KL}(\pi_\theta\|M)`,
    :math:`M=\beta\pi_T+(1-\beta)\pi_\theta`. It is 0 at ``beta`` 0 and 1 (then :math:`M` is one of the
    two), behaves like :math:`\beta\,\mathrm{KL}(\pi_T\|\pi_\theta)` near 0 and like
    :math:`(1-\beta)\,\mathrm{KL}(\pi_\theta\|\pi_T)` near 1 (``kltutor.derivations.distillation``).
    """
    b = _check_discount(beta, "beta")
    ls, lt = log_softmax(student_logits, -1), log_softmax(teacher_logits, -1)
    if b == 0.0 or b == 1.0:
        return torch.zeros(ls.shape[:-1], dtype=ls.dtype)
    lm = torch.logaddexp(ls + math.log1p(-b), lt + math.log(b))
    return b * divergences.kl_from_logits(lt, lm) + (1 - b) * divergences.kl_from_logits(ls, lm)


def per_state_divergence(student_logits: Tensor, teacher_logits: Tensor, divergence: str, beta: float = 0.5) -> Tensor:
    r"""The divergence at each state over the whole vocabulary: ``"reverse"`` :math:`\mathrm{KL}(\pi_\theta\|\pi_T)`,
    ``"forward"`` :math:`\mathrm{KL}(\pi_T\|\pi_\theta)`, ``"gjsd"`` :func:`generalized_jsd` at ``beta``."""
    if divergence == "reverse":
        return divergences.kl_from_logits(student_logits, teacher_logits)
    if divergence == "forward":
        return divergences.kl_from_logits(teacher_logits, student_logits)
    if divergence == "gjsd":
        return generalized_jsd(student_logits, teacher_logits, beta)
    raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")


def expected_loss_gradient(
    student: BinaryAutoregressive,
    teacher: BinaryAutoregressive,
    seq_len: int,
    loss: Callable[[Tensor, BinaryAutoregressive, BinaryAutoregressive], Tensor],
) -> Tensor:
    r"""Exact :math:`\mathbb{E}_{y\sim\pi_\theta}[\nabla_{(a,b)}\,\mathrm{loss}(y)]`, the sample held fixed.

    ``loss(seq, student, teacher)`` gets one sequence (``[1, T]`` bits) and the two models and returns a
    scalar: a library's distillation loss on a batch of that one sequence, its own reduction included
    (build the logits with :func:`toy_logits`). The expectation is a sum over all ``2**seq_len``
    sequences weighted by the student's probabilities: the states are the student's own.
    """
    _check_models(student=student, teacher=teacher)
    seqs = all_binary_sequences(seq_len)
    with torch.no_grad():
        weights = student.sequence_logprobs(seqs).exp()
    params = [student.a, student.b]
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(seqs.shape[0]):
        value = loss(seqs[i : i + 1], student, teacher)
        grads = torch.autograd.grad(value, params, allow_unused=True)
        g = torch.stack([torch.zeros((), dtype=torch.float64) if x is None else x.to(torch.float64) for x in grads])
        total = total + weights[i] * g
    return total


def local_gradient(
    student: BinaryAutoregressive,
    teacher: BinaryAutoregressive,
    seq_len: int,
    divergence: str = "reverse",
    beta: float = 0.5,
    future_discount: float | None = None,
) -> Tensor:
    r"""Exact expected gradient of :math:`\sum_t D(\pi_\theta(\cdot\mid s_t),\pi_T(\cdot\mid s_t))` at the
    student's states, the states held fixed (what a full-vocabulary distillation loss differentiates).

    With ``future_discount`` :math:`\gamma`, the score-function term of the future divergences is added,
    :math:`\sum_t\nabla\log\pi_\theta(y_t\mid s_t)\sum_{s>t}\gamma^{s-t}D_s`: with ``"reverse"`` and
    :math:`\gamma=1` the sum is the exact gradient of the sequence-level reverse KL.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
    seqs = all_binary_sequences(seq_len)
    _check_models(student=student, teacher=teacher)
    with torch.no_grad():
        weights = student.sequence_logprobs(seqs).exp()
        t_logits = toy_logits(teacher, seqs)
    d = per_state_divergence(toy_logits(student, seqs), t_logits, divergence, beta)  # [n, T]
    total = (weights[:, None] * d).sum()
    if future_discount is not None:
        g = _check_discount(future_discount, "future_discount")
        future = discounted_sum(d.detach(), g) - d.detach()  # sum_{s>t} g^(s-t) D_s
        total = total + (weights[:, None] * future * student.token_logprobs(seqs)).sum()
    ga, gb = torch.autograd.grad(total, [student.a, student.b])
    return torch.stack([ga, gb]).detach()


def sequence_gradient(
    student: BinaryAutoregressive, teacher: BinaryAutoregressive, seq_len: int, direction: str = "reverse"
) -> Tensor:
    r"""Gradient w.r.t. ``(a, b)`` of the sequence-level KL: ``"reverse"`` :math:`\mathrm{KL}(\pi_\theta\|\pi_T)`
    (chapter 3's ``"true"``), ``"forward"`` :math:`\mathrm{KL}(\pi_T\|\pi_\theta)`, whose gradient
    :math:`-\mathbb{E}_{y\sim\pi_T}[\nabla\log\pi_\theta(y)]` is supervised training on teacher samples."""
    _check_models(student=student, teacher=teacher)
    if direction == "reverse":
        return exact_kl_gradients(student, teacher, seq_len)["true"]
    if direction == "forward":
        return expected_gradient_on_samples(
            student, teacher, teacher, seq_len, lambda logp, old, ref, w: -(w[:, None] * logp).sum()
        )
    raise ValueError(f"direction must be 'reverse' or 'forward', got {direction!r}")


def gradient_rows(student: BinaryAutoregressive, teacher: BinaryAutoregressive, seq_len: int) -> list[dict]:
    """Every way of turning the per-token KL into a gradient, with its exact expectation and ``|bias|``
    against the gradient of the sequence-level reverse KL (the rows of the chapter's first table)."""
    true = sequence_gradient(student, teacher, seq_len)
    rows = []

    def add(name, signal, discount, g):
        rows.append(
            {
                "update": name,
                "per-token signal": signal,
                "discount": discount,
                "grad a": float(g[0]),
                "grad b": float(g[1]),
                "|bias|": float((g - true).norm()),
            }
        )

    add("sequence reverse KL (autograd)", "-", "-", true)
    for est in ("k1", "k3"):
        for disc in (1.0, 0.0):
            add(
                f"{est} as reward",
                f"{est}(l_t) of the sampled token",
                disc,
                reward_gradient(student, teacher, seq_len, disc, est),
            )
    add("full-vocabulary KL, states fixed", "KL_t over the vocabulary", 0.0, local_gradient(student, teacher, seq_len))
    add(
        "full-vocabulary KL + return-to-go",
        "KL_t over the vocabulary",
        1.0,
        local_gradient(student, teacher, seq_len, future_discount=1.0),
    )
    add("forward KL on teacher samples (SFT)", "-", "-", sequence_gradient(student, teacher, seq_len, "forward"))
    return rows


def truncated_kl(p: Tensor, q: Tensor, k: int, renormalize: bool = False) -> Tensor:
    r"""The KL(p‖q) summed over the ``k`` most probable tokens of ``p`` only (ties broken by index).

    ``renormalize=False``: :math:`\sum_{i\in\text{top-}k(p)}p_i\log(p_i/q_i)`; ``True``: the KL between
    ``p`` and ``q`` restricted to those tokens and each renormalised there. Both equal ``KL(p||q)`` at
    ``k = V``. ``p`` and ``q`` are probability vectors over the same vocabulary.
    """
    p, q = divergences.validate_distributions(p, q)
    if p.dim() != 1:
        raise ValueError(f"p and q must be vectors, got shape {tuple(p.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= p.numel():
        raise ValueError(f"k must be an integer in [1, {p.numel()}], got {k!r}")
    idx = torch.argsort(-p, stable=True)[:k]
    pk, qk = p[idx], q[idx]
    if renormalize:
        return divergences.kl(pk / pk.sum(), qk / qk.sum())
    keep = pk > 0
    return (pk[keep] * (pk[keep].log() - qk[keep].log())).sum()


def truncation_rows(p: Tensor, q: Tensor) -> list[dict]:
    """For every ``k``: the top-k truncated reverse KL(p‖q) (as is and renormalised), the forward
    KL(q‖p) over the teacher's top-k, and their biases against the full KLs (the chapter's top-k table)."""
    p, q = divergences.validate_distributions(p, q)
    rev, fwd = float(divergences.kl(p, q)), float(divergences.kl(q, p))
    rows = []
    for k in range(p.numel(), 0, -1):
        r_plain = float(truncated_kl(p, q, k))
        r_norm = float(truncated_kl(p, q, k, renormalize=True))
        f_plain = float(truncated_kl(q, p, k))
        rows.append(
            {
                "k": k,
                "student mass in top-k": float(p.sort(descending=True).values[:k].sum()),
                "reverse, top-k of student": r_plain,
                "bias": r_plain - rev,
                "reverse, renormalised": r_norm,
                "bias (renormalised)": r_norm - rev,
                "forward, top-k of teacher": f_plain,
                "bias (forward)": f_plain - fwd,
            }
        )
    return rows


def fit_independent_student(teacher: BinaryAutoregressive, seq_len: int, direction: str, a0: float) -> float:
    r"""The logit ``a`` of the best *memoryless* student (``b = 0``: i.i.d. tokens) for the teacher, by
    minimising the sequence-level ``"reverse"`` or ``"forward"`` KL with L-BFGS from ``a0``, then Newton steps
    (float64, so the stationarity condition holds to about 1e-12).

    The memoryless family cannot represent a teacher with ``b != 0``: the condition under which the
    direction of the KL decides what the student keeps.
    """
    _check_models(teacher=teacher)
    if direction not in ("reverse", "forward"):
        raise ValueError(f"direction must be 'reverse' or 'forward', got {direction!r}")
    seqs = all_binary_sequences(seq_len)
    ones = seqs.sum(-1)
    with torch.no_grad():
        t_logp = teacher.sequence_logprobs(seqs)

    def objective(a: Tensor) -> Tensor:
        student = ones * logsigmoid(a) + (seq_len - ones) * logsigmoid(-a)
        if direction == "reverse":
            return divergences.kl_from_logits(student, t_logp)
        return divergences.kl_from_logits(t_logp, student)

    a = torch.tensor(float(a0), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [a], max_iter=200, tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = objective(a)
        loss.backward()
        return loss

    opt.step(closure)
    x = a.detach().clone()
    for _ in range(5):  # Newton polish: the loss is flat to 1e-16 long before the gradient is
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(xg), xg, create_graph=True)
        (h,) = torch.autograd.grad(g, xg)
        if not float(h) > 0:
            break
        x = (x - g.detach() / h).detach()
    return float(x)


def shared_feature_forgetting(step: float, angle_deg: float, base_new: float = 0.0, base_old: float = 0.0) -> dict:
    r"""The two-context toy of the section on forgetting: one binary token, logit
    :math:`z_x=z^0_x+\theta\cdot\phi_x` in context ``x``, with unit features :math:`\phi_\text{new}` and
    :math:`\phi_\text{old}` at ``angle_deg`` degrees. Fine-tuning on the new task moves :math:`\theta` by
    ``step`` along :math:`\phi_\text{new}` (the direction of every gradient of a loss of :math:`z_\text{new}`).

    Returns the KL to the base on the new task's prompts, the KL to the base on the old task's, and the
    change of the probability of token 1 on each (the base is :math:`\theta=0`).
    """
    for name, v in (("step", step), ("angle_deg", angle_deg), ("base_new", base_new), ("base_old", base_old)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    cos = math.cos(math.radians(angle_deg))
    out = {}
    for ctx, base, shift in (("new", base_new, step), ("old", base_old, step * cos)):
        p0, p1 = (
            torch.sigmoid(torch.tensor(base, dtype=torch.float64)),
            torch.sigmoid(torch.tensor(base + shift, dtype=torch.float64)),
        )
        out[f"KL {ctx}"] = float(divergences.kl(torch.stack([1 - p1, p1]), torch.stack([1 - p0, p0])))
        out[f"change {ctx}"] = float(p1 - p0)
    return out


#: Public on-policy distillation code read for the chapter's section on teaching code: repository, the
#: commit read, file and lines, what the lines compute, and how :func:`public_code_rows` reproduces it on
#: the toy (``("reward", discount)``: the sampled token's k1 as the negative reward with that discount;
#: ``("local", None)``: the full-vocabulary reverse KL differentiated at fixed states).
PUBLIC_CODE: tuple[dict, ...] = (
    {
        "repository": "thinking-machines-lab/tinker-cookbook",
        "commit": "9dfcc3a2cf44432d621a01005073dc6d76a1e87a",
        "file": "tinker_cookbook/distillation/train_on_policy.py",
        "lines": "91-105, 147",
        "computes": "advantage -coef * (log p - log q) per token; discounted future sum only if kl_discount_factor > 0 "
        "(default 0.0)",
        "reproduce": ("reward", 0.0),
        "erratum": False,
        "note": "documented as the negative reverse KL per token; kl_discount_factor=1 gives the return-to-go",
    },
    {
        "repository": "thinking-machines-lab/tinker-cookbook",
        "commit": "9dfcc3a2cf44432d621a01005073dc6d76a1e87a",
        "file": "tinker_cookbook/distillation/train_on_policy.py",
        "lines": "104-105 with kl_discount_factor=1",
        "computes": "the same advantage summed over the tokens after it (discounted_future_sum_vectorized)",
        "reproduce": ("reward", 1.0),
        "erratum": False,
        "note": "the option that follows the sequence KL",
    },
    {
        "repository": "himsahni/nanochat",
        "commit": "afc8cc74b5305dffb66bb4d9b5c680adbe48e842",
        "file": "scripts/chat_opd.py",
        "lines": "290-291",
        "computes": "loss sum_t log p(y_t) * (log p(y_t) - log q(y_t)).detach(): each token's own log-ratio, no "
        "return-to-go",
        "reproduce": ("reward", 0.0),
        "erratum": True,
        "note": "the companion post (himsahni/himsahni.github.io@41829fd, "
        "2025-11-14-nanochat_on_policy_distillation.md, lines 96-190) derives the gradient of the sequence-level "
        "reverse KL with the sequence's log-ratio A(y) and then takes the per-step gap as the advantage",
    },
    {
        "repository": "himsahni/nanochat",
        "commit": "afc8cc74b5305dffb66bb4d9b5c680adbe48e842",
        "file": "scripts/chat_opd.py",
        "lines": "287-288 (full=True)",
        "computes": "sum_t sum_v p_v (log p_v - log q_v), differentiated through p at the sampled prefixes",
        "reproduce": ("local", None),
        "erratum": False,
        "note": "the full-vocabulary per-token reverse KL at fixed states (divided by the vocabulary size, a scale)",
    },
)


def public_code_rows(student: BinaryAutoregressive, teacher: BinaryAutoregressive, seq_len: int) -> list[dict]:
    """Each entry of :data:`PUBLIC_CODE` reproduced on the toy: its exact expected gradient and ``|bias|``
    against the gradient of the sequence-level reverse KL."""
    true = sequence_gradient(student, teacher, seq_len)
    rows = []
    for e in PUBLIC_CODE:
        kind, disc = e["reproduce"]
        g = (
            reward_gradient(student, teacher, seq_len, disc)
            if kind == "reward"
            else local_gradient(student, teacher, seq_len)
        )
        rows.append(
            {
                "repository": e["repository"],
                "commit": e["commit"][:7],
                "where": f"{e['file']}:{e['lines']}",
                "grad a": float(g[0]),
                "grad b": float(g[1]),
                "|bias|": float((g - true).norm()),
            }
        )
    return rows
