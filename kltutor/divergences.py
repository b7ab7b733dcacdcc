"""Exact divergences between distributions (introduced in :ref:`ch-fundamentals`).

Every categorical function takes two probability vectors ``p`` and ``q`` along the **last axis**
(any leading batch shape, torch tensors or numpy arrays) and returns a tensor of the batch shape.
All logarithms are natural (nats).

Conventions, stated once because each one changes the numbers:

- ``kl(p, q)`` :math:`=\\sum_x p(x)\\log\\frac{p(x)}{q(x)}` with :math:`0\\log\\frac{0}{q}=0` (also
  for :math:`q=0`) and :math:`p\\log\\frac{p}{0}=+\\infty` for :math:`p>0`.
- ``tv(p, q)`` :math:`=\\tfrac12\\sum_x|p(x)-q(x)|\\in[0,1]`.
- ``hellinger_sq(p, q)`` :math:`=H^2=\\tfrac12\\sum_x(\\sqrt{p}-\\sqrt{q})^2 = 1-\\sum_x\\sqrt{p q}\\in[0,1]`.
  With this convention :math:`H^2\\le\\tfrac12\\mathrm{KL}`; with the other common one
  (:math:`\\sum(\\sqrt p-\\sqrt q)^2`, twice as large) the bound reads :math:`H^2\\le\\mathrm{KL}`.
- ``chi2(p, q)`` :math:`=\\chi^2(p\\|q)=\\sum_x \\frac{(p-q)^2}{q}=\\sum_x\\frac{p^2}{q}-1`.
- ``js(p, q)`` :math:`=\\tfrac12\\mathrm{KL}(p\\|m)+\\tfrac12\\mathrm{KL}(q\\|m)`, :math:`m=\\tfrac12(p+q)`,
  bounded by :math:`\\log 2`.
- ``alpha_divergence(p, q, alpha)``: Amari's family
  :math:`D_\\alpha=\\frac{1}{\\alpha(1-\\alpha)}\\big(1-\\sum_x p^\\alpha q^{1-\\alpha}\\big)`, with
  :math:`D_\\alpha\\to\\mathrm{KL}(p\\|q)` as :math:`\\alpha\\to1` and :math:`\\mathrm{KL}(q\\|p)` as
  :math:`\\alpha\\to0`; :math:`\\alpha=\\tfrac12` gives :math:`4H^2`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kltutor._validation import probabilities

__all__ = [
    "kl",
    "kl_from_logits",
    "kl_gaussian",
    "js",
    "tv",
    "hellinger_sq",
    "chi2",
    "alpha_divergence",
    "inequality_slacks",
    "validate_distributions",
]


def _to_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, (np.ndarray, list, tuple, float, int, np.generic)):
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    else:
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}")
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    return t


def validate_distributions(p: Any, q: Any, atol: float | None = None) -> tuple[Tensor, Tensor]:
    """Check two categorical distributions along the last axis; return them as tensors.

    Both are promoted to a common dtype first, then checked by :func:`kltutor._validation.probabilities`:
    ``ValueError`` for different shapes, a 0-d input or an empty last axis, NaN or infinite entries,
    negative entries, or rows that do not sum to one within ``atol`` (default ``1e-9`` in float64,
    ``1e-4`` otherwise).
    """
    p = _to_tensor(p, "p")
    q = _to_tensor(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    dtype = torch.promote_types(p.dtype, q.dtype)
    return probabilities("p", p, atol=atol, dtype=dtype), probabilities("q", q, atol=atol, dtype=dtype)


def kl(p: Any, q: Any, atol: float | None = None) -> Tensor:
    """KL(p || q) = sum_x p log(p/q) along the last axis, in nats.

    ``0 log(0/q) = 0`` (for every q, including 0) and ``p log(p/0) = +inf`` for ``p > 0``.
    """
    p, q = validate_distributions(p, q, atol)
    # xlogy(0, .) = 0; xlogy(p>0, 0) = -inf, so the difference is +inf exactly where p > 0 = q.
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(dim=-1)


def kl_from_logits(logits_p: Tensor, logits_q: Tensor, dim: int = -1) -> Tensor:
    """Full-vocabulary KL(softmax(logits_p) || softmax(logits_q)) along ``dim``.

    This is the exact per-token KL of a language model at one prefix (``[batch, time, vocab]`` in,
    ``[batch, time]`` out). It works in log space (``log_softmax``), so it never forms ``0 * log 0``.
    """
    for name, t in (("logits_p", logits_p), ("logits_q", logits_q)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if t.dim() == 0 or t.shape[dim] == 0:
            raise ValueError(f"{name} needs a non-empty vocabulary axis, got shape {tuple(t.shape)}")
        if torch.isnan(t).any() or torch.isposinf(t).any():
            raise ValueError(f"{name} holds NaN or +inf; logits must be finite (-inf masks a token out)")
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"logits must have the same shape, got {tuple(logits_p.shape)} and {tuple(logits_q.shape)}")
    logp = torch.log_softmax(logits_p, dim=dim)
    logq = torch.log_softmax(logits_q, dim=dim)
    prob = logp.exp()
    terms = torch.where(prob > 0, prob * (logp - logq), torch.zeros_like(prob))
    return terms.sum(dim=dim)


def kl_gaussian(mu_p: Any, sigma_p: Any, mu_q: Any, sigma_q: Any) -> Tensor:
    """KL(N(mu_p, sigma_p^2) || N(mu_q, sigma_q^2)) in closed form; sigmas are standard deviations.

    ``log(sigma_q/sigma_p) + (sigma_p^2 + (mu_p - mu_q)^2) / (2 sigma_q^2) - 1/2``; broadcasts.
    """
    mu_p, sigma_p, mu_q, sigma_q = (
        _to_tensor(v, n) for v, n in ((mu_p, "mu_p"), (sigma_p, "sigma_p"), (mu_q, "mu_q"), (sigma_q, "sigma_q"))
    )
    for name, t in (("mu_p", mu_p), ("sigma_p", sigma_p), ("mu_q", mu_q), ("sigma_q", sigma_q)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    for name, t in (("sigma_p", sigma_p), ("sigma_q", sigma_q)):
        if (t <= 0).any():
            raise ValueError(f"{name} must be > 0 (a standard deviation), got min {t.min().item():.3g}")
    return torch.log(sigma_q / sigma_p) + (sigma_p**2 + (mu_p - mu_q) ** 2) / (2 * sigma_q**2) - 0.5


def js(p: Any, q: Any, atol: float | None = None) -> Tensor:
    """Jensen-Shannon divergence 0.5 KL(p||m) + 0.5 KL(q||m), m = (p+q)/2; in [0, log 2]."""
    p, q = validate_distributions(p, q, atol)
    m = 0.5 * (p + q)
    return 0.5 * kl(p, m, atol) + 0.5 * kl(q, m, atol)


def tv(p: Any, q: Any, atol: float | None = None) -> Tensor:
    """Total variation 0.5 * sum |p - q|; in [0, 1]."""
    p, q = validate_distributions(p, q, atol)
    return 0.5 * (p - q).abs().sum(dim=-1)


def hellinger_sq(p: Any, q: Any, atol: float | None = None) -> Tensor:
    """Squared Hellinger distance H^2 = 0.5 sum (sqrt p - sqrt q)^2 = 1 - sum sqrt(p q); in [0, 1].

    Computed from the sum of squares (not ``1 - BC``), so it stays accurate when p is close to q.
    """
    p, q = validate_distributions(p, q, atol)
    return 0.5 * (p.sqrt() - q.sqrt()).square().sum(dim=-1)


def chi2(p: Any, q: Any, atol: float | None = None) -> Tensor:
    """Pearson chi^2(p || q) = sum (p - q)^2 / q = sum p^2/q - 1; +inf if p > 0 where q = 0."""
    p, q = validate_distributions(p, q, atol)
    safe_q = torch.where(q > 0, q, torch.ones_like(q))
    terms = torch.where(
        q > 0, (p - q).square() / safe_q, torch.where(p > 0, torch.full_like(p, math.inf), torch.zeros_like(p))
    )
    return terms.sum(dim=-1)


def alpha_divergence(p: Any, q: Any, alpha: float, atol: float | None = None) -> Tensor:
    """Amari's alpha-divergence (1 - sum p^a q^(1-a)) / (a (1 - a)).

    The limits are taken exactly: ``alpha=1`` returns KL(p||q) and ``alpha=0`` returns KL(q||p)
    (chapter 1 checks the limits with sympy). Cells where both p and q are 0 contribute nothing.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite real number, got {alpha!r}")
    p, q = validate_distributions(p, q, atol)
    if alpha == 1:
        return kl(p, q, atol)
    if alpha == 0:
        return kl(q, p, atol)
    both_zero = (p == 0) & (q == 0)
    # A cell with p = 0 < q and alpha < 0 (or q = 0 < p and alpha > 1) is +inf, as it should be.
    terms = torch.where(both_zero, torch.zeros_like(p), p.pow(alpha) * q.pow(1 - alpha))
    return (1 - terms.sum(dim=-1)) / (alpha * (1 - alpha))


def inequality_slacks(p: Any, q: Any, atol: float | None = None) -> dict[str, Tensor]:
    """Slack of each classical bound between divergences (all are >= 0 when the bound holds).

    - ``pinsker``: sqrt(KL/2) - TV,
    - ``hellinger``: KL/2 - H^2 (H^2 = 1 - sum sqrt(pq)),
    - ``chi2``: log(1 + chi^2) - KL,
    - ``js``: log 2 - JS.
    """
    p, q = validate_distributions(p, q, atol)
    d = kl(p, q, atol)
    return {
        "pinsker": torch.sqrt(d / 2) - tv(p, q, atol),
        "hellinger": d / 2 - hellinger_sq(p, q, atol),
        "chi2": torch.log1p(chi2(p, q, atol)) - d,
        "js": math.log(2) - js(p, q, atol),
    }
