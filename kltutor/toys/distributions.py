"""Small distributions with exact answers (:ref:`ch-fundamentals`; reused in ``ch-estimators``).

- :class:`GaussianMixture`: a one-dimensional mixture of Gaussians (``log_prob``, ``sample``, moments).
- :func:`fit_gaussian`: fit one Gaussian to a density by forward or reverse KL, with torch.
- :func:`random_categorical`: seeded random probability vectors (Dirichlet).
- :class:`TabularAutoregressive`: an autoregressive model over a small vocabulary whose next-token
  table depends on the whole prefix, small enough to enumerate every sequence; with
  :func:`sequence_kl`, :func:`expected_token_kls`, :func:`sampled_log_ratio_sum` and
  :func:`full_vocab_kl_sum` for the token-level vs sequence-level KL of ``ch-fundamentals``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from kltutor._validation import probabilities
from kltutor.divergences import kl_from_logits

__all__ = [
    "GaussianMixture",
    "GaussianFit",
    "fit_gaussian",
    "random_categorical",
    "TabularAutoregressive",
    "sequence_kl",
    "expected_token_kls",
    "sampled_log_ratio_sum",
    "full_vocab_kl_sum",
]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class GaussianMixture:
    """A 1-D mixture ``sum_k w_k N(mean_k, std_k^2)`` in float64."""

    def __init__(self, weights, means, stds):
        w, m, s = (torch.as_tensor(np.asarray(v, dtype=np.float64)) for v in (weights, means, stds))
        if not (w.dim() == m.dim() == s.dim() == 1) or not (len(w) == len(m) == len(s)) or len(w) == 0:
            raise ValueError("weights, means and stds must be non-empty 1-D sequences of the same length")
        if not (torch.isfinite(w).all() and torch.isfinite(m).all() and torch.isfinite(s).all()):
            raise ValueError("weights, means and stds must be finite")
        probabilities("weights", w, vector=True)
        if (s <= 0).any():
            raise ValueError(f"stds must be > 0, got {s.tolist()}")
        self.weights, self.means, self.stds = w, m, s

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density at ``x`` (any shape)."""
        x = torch.as_tensor(x, dtype=torch.float64)[..., None]
        comp = -0.5 * ((x - self.means) / self.stds) ** 2 - torch.log(self.stds) - _LOG_SQRT_2PI
        return torch.logsumexp(comp + torch.log(self.weights), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws."""
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, dtype=torch.float64, generator=generator)
        return self.means[k] + self.stds[k] * z

    def mean(self) -> float:
        return float((self.weights * self.means).sum())

    def variance(self) -> float:
        """Law of total variance: within-component plus between-component variance."""
        mu = self.mean()
        return float((self.weights * (self.stds**2 + (self.means - mu) ** 2)).sum())


@dataclass
class GaussianFit:
    """The result of :func:`fit_gaussian`: the fitted N(mu, sigma^2), the final KL and its history."""

    mu: float
    sigma: float
    kl: float
    history: list[float]


def _gauss_logpdf(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    return -0.5 * ((x - mu) / sigma) ** 2 - torch.log(sigma) - _LOG_SQRT_2PI


def fit_gaussian(
    target: GaussianMixture,
    direction: Literal["forward", "reverse"],
    init: tuple[float, float] = (0.0, 1.0),
    steps: int = 500,
    lr: float = 0.05,
    grid: Tensor | None = None,
) -> GaussianFit:
    """Fit q = N(mu, sigma^2) to ``target`` p by gradient descent (Adam on ``mu`` and ``log sigma``).

    - ``direction="forward"`` minimises KL(p || q) = E_p[log p - log q] (mass-covering); its optimum
      is the moment match ``mu = E_p[x]``, ``sigma^2 = Var_p[x]``.
    - ``direction="reverse"`` minimises KL(q || p) = E_q[log q - log p] (mode-seeking when the modes
      are well separated); it can have several local optima, so ``init`` matters.

    Both integrals are computed by the trapezoid rule on ``grid`` (default: 4001 points spanning
    the target +- 8 standard deviations), which is deterministic and accurate to many digits here.
    """
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if init[1] <= 0:
        raise ValueError(f"the initial sigma must be > 0, got {init[1]}")
    if grid is None:
        lo = float((target.means - 8 * target.stds).min())
        hi = float((target.means + 8 * target.stds).max())
        grid = torch.linspace(lo, hi, 4001, dtype=torch.float64)
    logp = target.log_prob(grid)
    mu = torch.tensor(float(init[0]), dtype=torch.float64, requires_grad=True)
    log_sigma = torch.tensor(math.log(init[1]), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([mu, log_sigma], lr=lr)

    def objective() -> Tensor:
        logq = _gauss_logpdf(grid, mu, log_sigma.exp())
        if direction == "forward":
            integrand = logp.exp() * (logp - logq)
        else:
            integrand = logq.exp() * (logq - logp)
        return torch.trapezoid(integrand, grid)

    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss = objective()
        loss.backward()
        opt.step()
        history.append(loss.item())
    with torch.no_grad():
        final = objective().item()
    return GaussianFit(mu=mu.item(), sigma=log_sigma.exp().item(), kl=final, history=history)


def random_categorical(
    n: int, k: int, seed: int = 0, concentration: float = 1.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``n`` random probability vectors of size ``k`` (rows of a ``[n, k]`` tensor), Dirichlet(concentration).

    Seeded by ``seed`` through numpy's generator, so the same call gives the same vectors anywhere.
    Small ``concentration`` (< 1) gives peaked vectors with near-zero entries; large gives near-uniform ones.
    """
    if not isinstance(n, int) or not isinstance(k, int) or n <= 0 or k <= 0:
        raise ValueError(f"n and k must be positive integers, got n={n!r}, k={k!r}")
    if not (concentration > 0 and math.isfinite(concentration)):
        raise ValueError(f"concentration must be a finite positive number, got {concentration!r}")
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.full(k, concentration), size=n)
    return torch.as_tensor(x, dtype=dtype)


class TabularAutoregressive:
    """An autoregressive model over ``vocab_size`` tokens and sequences of fixed ``length``.

    The next-token distribution may depend on the whole prefix: ``logits[t]`` has shape
    ``(vocab_size,) * t + (vocab_size,)`` (indexed by the prefix ``y_<t``, then the next token).
    With small sizes every one of the ``vocab_size ** length`` sequences can be enumerated, so all
    sequence-level and token-level quantities are exact.
    """

    def __init__(self, logits: list[Tensor]):
        if len(logits) == 0:
            raise ValueError("logits must hold one table per position (length >= 1)")
        v = logits[0].shape[-1]
        for t, table in enumerate(logits):
            if tuple(table.shape) != (v,) * (t + 1):
                raise ValueError(f"logits[{t}] must have shape {(v,) * (t + 1)}, got {tuple(table.shape)}")
            if not torch.isfinite(table).all():
                raise ValueError(f"logits[{t}] holds NaN or infinite entries")
        self.vocab_size = v
        self.length = len(logits)
        self.logits = [table.to(torch.float64) for table in logits]
        self.log_tables = [torch.log_softmax(table, dim=-1) for table in self.logits]

    @classmethod
    def random(cls, vocab_size: int, length: int, seed: int = 0, scale: float = 1.0) -> TabularAutoregressive:
        """A model with i.i.d. N(0, scale^2) logits, seeded."""
        if vocab_size < 2 or length < 1:
            raise ValueError(f"need vocab_size >= 2 and length >= 1, got {vocab_size}, {length}")
        if vocab_size**length > 200_000:
            raise ValueError("vocab_size ** length > 200000: too many sequences to enumerate")
        g = torch.Generator().manual_seed(seed)
        return cls(
            [scale * torch.randn((vocab_size,) * (t + 1), generator=g, dtype=torch.float64) for t in range(length)]
        )

    def perturbed(self, scale: float, seed: int = 0) -> TabularAutoregressive:
        """A nearby model: every logit plus N(0, scale^2) noise (a "policy" near this "reference")."""
        g = torch.Generator().manual_seed(seed)
        return TabularAutoregressive(
            [t + scale * torch.randn(t.shape, generator=g, dtype=torch.float64) for t in self.logits]
        )

    def _check_seqs(self, seqs: Tensor) -> Tensor:
        seqs = torch.as_tensor(seqs)
        if seqs.dim() != 2 or seqs.shape[1] != self.length:
            raise ValueError(f"sequences must be [n, {self.length}], got {tuple(seqs.shape)}")
        if seqs.dtype.is_floating_point or (seqs < 0).any() or (seqs >= self.vocab_size).any():
            raise ValueError(f"sequences must hold integer tokens in [0, {self.vocab_size})")
        return seqs.long()

    def conditional_log_probs(self, seqs: Tensor) -> Tensor:
        """``[n, length, vocab]``: log pi(. | y_<t) at every position of each sequence (teacher forcing)."""
        seqs = self._check_seqs(seqs)
        out = []
        for t, table in enumerate(self.log_tables):
            out.append(table[tuple(seqs[:, :t].T)] if t > 0 else table.expand(len(seqs), -1))
        return torch.stack(out, dim=1)

    def token_log_probs(self, seqs: Tensor) -> Tensor:
        """``[n, length]``: log pi(y_t | y_<t) of the tokens in ``seqs``."""
        seqs = self._check_seqs(seqs)
        return self.conditional_log_probs(seqs).gather(-1, seqs[..., None]).squeeze(-1)

    def log_prob(self, seqs: Tensor) -> Tensor:
        """``[n]``: log pi(y) = sum_t log pi(y_t | y_<t)."""
        return self.token_log_probs(seqs).sum(dim=-1)

    def all_sequences(self) -> Tensor:
        """Every sequence, ``[vocab_size ** length, length]``, in lexicographic order."""
        return torch.tensor(list(itertools.product(range(self.vocab_size), repeat=self.length)), dtype=torch.long)

    def sequence_probs(self) -> Tensor:
        """``[vocab_size ** length]``: the probability of every sequence of :meth:`all_sequences`."""
        return self.log_prob(self.all_sequences()).exp()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` sequences drawn token by token, ``[n, length]``."""
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        seqs = torch.zeros((n, self.length), dtype=torch.long)
        for t, table in enumerate(self.log_tables):
            logits = table[tuple(seqs[:, :t].T)] if t > 0 else table.expand(n, -1)
            seqs[:, t] = torch.multinomial(logits.exp(), 1, generator=generator).squeeze(-1)
        return seqs


def _check_pair(policy: TabularAutoregressive, ref: TabularAutoregressive) -> None:
    if (policy.vocab_size, policy.length) != (ref.vocab_size, ref.length):
        raise ValueError("policy and reference must share vocab_size and length")


def sequence_kl(policy: TabularAutoregressive, ref: TabularAutoregressive) -> float:
    """Exact KL(policy || ref) over whole sequences, by enumerating every sequence."""
    _check_pair(policy, ref)
    seqs = policy.all_sequences()
    logp, logq = policy.log_prob(seqs), ref.log_prob(seqs)
    return float(kl_from_logits(logp, logq))


def full_vocab_kl_sum(policy: TabularAutoregressive, ref: TabularAutoregressive, seqs: Tensor) -> Tensor:
    """``[n, length]`` full-vocabulary KL(policy(.|y_<t) || ref(.|y_<t)) at each prefix of ``seqs``.

    Sum over the last axis for the per-sequence "sum of per-token KLs"; its expectation under the
    policy is the sequence KL (chain rule).
    """
    _check_pair(policy, ref)
    lp, lq = policy.conditional_log_probs(seqs), ref.conditional_log_probs(seqs)
    return kl_from_logits(lp, lq)


def sampled_log_ratio_sum(policy: TabularAutoregressive, ref: TabularAutoregressive, seqs: Tensor) -> Tensor:
    """``[n, length]`` sampled log-ratios log policy(y_t|y_<t) - log ref(y_t|y_<t) (k1 per token)."""
    _check_pair(policy, ref)
    return policy.token_log_probs(seqs) - ref.token_log_probs(seqs)


def expected_token_kls(policy: TabularAutoregressive, ref: TabularAutoregressive) -> Tensor:
    """``[length]``: E_{y ~ policy}[KL(policy(.|y_<t) || ref(.|y_<t))] at each position, exactly."""
    seqs = policy.all_sequences()
    w = policy.sequence_probs()
    return (w[:, None] * full_vocab_kl_sum(policy, ref, seqs)).sum(dim=0)
