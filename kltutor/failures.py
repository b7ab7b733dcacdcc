"""Small, exact simulations of the ways KL control fails (introduced in ``ch-failures``).

Each function runs in well under a second, is deterministic given its seed, and returns plain
numbers a chapter can print and a test can assert on:

- :func:`train_bandit`: exact policy-gradient ascent on ``E_pi[r] - beta KL(pi || pi_ref)`` over a
  softmax policy on ``K`` responses -- *KL collapse* (``beta`` too large, or a reference with too
  little entropy) and *KL runaway* (``beta`` too small against a strong reward).
- :func:`length_hacking`: a proxy reward with an exploitable length bonus, optimised exactly.
- :func:`wrong_reference`: the KL anchored to the pre-trained base instead of the SFT checkpoint.
- :func:`importance_weighted_kl`: a KL estimated from stale samples with importance ratios.
- :func:`k3_precision`: k3 in float16 / bfloat16, naive (:func:`kltutor.estimators.k3_naive`) and stable
  (:func:`kltutor.estimators.of_log_ratio`: float32 and :func:`kltutor.estimators.k3`) forms, against float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from kltutor import divergences, estimators
from kltutor._validation import nonnegative_number, positive_number, probabilities
from kltutor.preference import optimal_policy
from kltutor.toys.bandits import softmax_policy_gradient

__all__ = [
    "entropy",
    "train_bandit",
    "length_hacking",
    "wrong_reference",
    "importance_weighted_kl",
    "k3_precision",
]


def _every_beta_positive(beta) -> None:
    try:
        positive_number("beta", beta)
    except (TypeError, ValueError):
        raise ValueError(f"every beta must be positive, got {beta}") from None


def _probs(p: Tensor | Sequence[float], name: str) -> Tensor:
    return probabilities(name, p, vector=True, min_size=2, dtype=torch.float64)


def _kl(p: Tensor, q: Tensor) -> float:
    """KL(p || q) as a float (:func:`kltutor.divergences.kl`), float round-off below 0 clipped to 0."""
    return max(float(divergences.kl(p, q)), 0.0)


def entropy(p: Tensor | Sequence[float]) -> float:
    """Shannon entropy in nats."""
    p = _probs(p, "p")
    s = p > 0
    return float(-(p[s] * p[s].log()).sum())


def train_bandit(
    ref_probs: Tensor | Sequence[float],
    rewards: Tensor | Sequence[float],
    beta: float,
    steps: int = 200,
    lr: float = 1.0,
) -> dict[str, list[float]]:
    """Exact gradient ascent on softmax logits for ``E_pi[r] - beta KL(pi || pi_ref)``, from pi_ref.

    The gradient with respect to the logits is ``pi * (A - E_pi[A])`` with
    ``A = r - beta (log pi - log pi_ref)``. Returns per-step ``kl``, ``reward``, ``entropy`` and
    ``grad_norm`` (of the logits' gradient).
    """
    p = _probs(ref_probs, "ref_probs")
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.shape != p.shape or not torch.isfinite(r).all():
        raise ValueError("rewards must be finite, one per response")
    nonnegative_number("beta", beta)
    if steps < 1 or lr <= 0:
        raise ValueError("steps must be >= 1 and lr > 0")
    p = probabilities("ref_probs", p, positive=True)  # the reference must cover every response
    ref_logp = p.log()
    logits = ref_logp.clone()
    out: dict[str, list[float]] = {"kl": [], "reward": [], "entropy": [], "grad_norm": []}
    for _ in range(steps):
        grad = softmax_policy_gradient(logits, r, beta, ref_logp)
        logits = logits + lr * grad
        pi = torch.softmax(logits, 0)
        out["kl"].append(_kl(pi, p))
        out["reward"].append(float((pi * r).sum()))
        out["entropy"].append(entropy(pi))
        out["grad_norm"].append(float(grad.norm()))
    return out


def length_hacking(
    betas: Sequence[float],
    n_responses: int = 2000,
    length_bonus: float = 0.15,
    ideal_length: float = 8.0,
    overlength_cost: float = 0.1,
    seed: int = 0,
) -> dict[str, list[float]]:
    """A proxy that likes length, optimised exactly by pi_ref exp(proxy / beta) / Z.

    Each response has a quality ``q ~ N(0, 1)`` and a length ``L`` (drawn geometric with mean 6);
    the base policy's probabilities are random and independent of both. Gold reward: ``q - overlength_cost * max(0, L - ideal_length)``.
    Proxy: ``q + length_bonus * L`` -- a reward model that learned "longer is better" from data where
    that held. Returns, per beta, the KL and the expected proxy, gold and length.
    """
    if length_bonus < 0 or overlength_cost < 0:
        raise ValueError("length_bonus and overlength_cost must be non-negative")
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_responses, generator=g, dtype=torch.float64)
    u = torch.rand(n_responses, generator=g, dtype=torch.float64)
    length = 1 + torch.floor(torch.log(u) / math.log(5 / 6))  # geometric, mean 6
    ref = torch.softmax(torch.randn(n_responses, generator=g, dtype=torch.float64) * 0.5, 0)
    gold = q - overlength_cost * torch.clamp(length - ideal_length, min=0)
    proxy = q + length_bonus * length
    out: dict[str, list[float]] = {"beta": [], "kl": [], "proxy": [], "gold": [], "length": []}
    for beta in betas:
        _every_beta_positive(beta)
        pi = optimal_policy(ref, proxy, beta)
        out["beta"].append(float(beta))
        out["kl"].append(_kl(pi, ref))
        out["proxy"].append(float((pi * proxy).sum()))
        out["gold"].append(float((pi * gold).sum()))
        out["length"].append(float((pi * length).sum()))
    return out


def wrong_reference(
    betas: Sequence[float],
    n_responses: int = 1000,
    format_boost: float = 3.0,
    seed: int = 0,
) -> dict[str, dict[str, list[float]]]:
    """The KL anchored to the pre-trained base instead of the SFT checkpoint the policy starts from.

    Half of the responses follow the instruction format (``formatted``). The base model produces them
    rarely; SFT multiplies their odds by ``exp(format_boost)``. The task reward ``r ~ N(0, 1)`` does
    not look at the format. For each beta the KL-regularised optimum is computed against either
    reference; returned per reference: the KL *at initialisation* (the policy starts at SFT), the
    optimum's KL, reward and rate of formatted responses.
    """
    g = torch.Generator().manual_seed(seed)
    formatted = torch.rand(n_responses, generator=g) < 0.5
    reward = torch.randn(n_responses, generator=g, dtype=torch.float64)
    base_logits = torch.randn(n_responses, generator=g, dtype=torch.float64) - 2.0 * formatted.double()
    base = torch.softmax(base_logits, 0)
    sft = torch.softmax(base_logits + format_boost * formatted.double(), 0)
    out: dict[str, dict[str, list[float]]] = {}
    for name, ref in (("sft", sft), ("base", base)):
        rows: dict[str, list[float]] = {"beta": [], "kl_at_init": [], "kl": [], "reward": [], "format_rate": []}
        for beta in betas:
            _every_beta_positive(beta)
            pi = optimal_policy(ref, reward, beta)
            rows["beta"].append(float(beta))
            rows["kl_at_init"].append(_kl(sft, ref))
            rows["kl"].append(_kl(pi, ref))
            rows["reward"].append(float((pi * reward).sum()))
            rows["format_rate"].append(float(pi[formatted].sum()))
        out[name] = rows
    out["sft_format_rate"] = {"value": [float(sft[formatted].sum())]}
    out["base_format_rate"] = {"value": [float(base[formatted].sum())]}
    return out


def importance_weighted_kl(
    policy: Tensor | Sequence[float],
    ref: Tensor | Sequence[float],
    sampler: Tensor | Sequence[float],
    n_samples: int = 64,
    n_batches: int = 500,
    clip: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Estimate KL(policy || ref) with k3 on samples from a stale ``sampler``, weighted by w = pi/pi_old.

    Returns the exact KL, the mean and standard deviation of the batch estimates over ``n_batches``
    batches of ``n_samples``, and the largest weight seen. ``clip`` caps the weights (biased, bounded).
    """
    pi, q, old = _probs(policy, "policy"), _probs(ref, "ref"), _probs(sampler, "sampler")
    if not (pi.shape == q.shape == old.shape):
        raise ValueError("policy, ref and sampler must have the same shape")
    if ((old == 0) & (pi > 0)).any():
        raise ValueError("the sampler must cover the policy's support")
    if clip is not None and clip <= 0:
        raise ValueError("clip must be positive")
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(old, n_samples * n_batches, replacement=True, generator=g).view(n_batches, n_samples)
    k3 = estimators.k3(pi.log()[idx], q.log()[idx])
    w = pi[idx] / old[idx]
    if clip is not None:
        w = w.clamp(max=clip)
    est = (w * k3).mean(1)
    return {"exact": _kl(pi, q), "mean": float(est.mean()), "std": float(est.std()), "max_weight": float(w.max())}


def k3_precision(
    log_ratios: Sequence[float], dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16, torch.float32)
) -> list[dict[str, float | str]]:
    """k3 of each log-ratio in each dtype, naive and stable, next to the float64 value."""
    rows: list[dict[str, float | str]] = []
    ref = torch.tensor(list(log_ratios), dtype=torch.float64)
    exact = estimators.of_log_ratio("k3", ref)
    for dtype in dtypes:
        lr = ref.to(dtype)
        naive = estimators.k3_naive(lr, torch.zeros_like(lr)).double()
        stable = estimators.of_log_ratio("k3", lr).double()
        for i, value in enumerate(ref.tolist()):
            rows.append(
                {
                    "dtype": str(dtype).replace("torch.", ""),
                    "log_ratio": value,
                    "exact": float(exact[i]),
                    "naive": float(naive[i]),
                    "stable (fp32, estimators.k3)": float(stable[i]),
                }
            )
    return rows
