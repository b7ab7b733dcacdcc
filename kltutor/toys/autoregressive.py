"""The binary autoregressive toy of ``ch-placements`` (after "A Comedy of Estimators").

A sequence ``y = (y_1, ..., y_T)`` of bits is generated token by token; token ``t`` is 1 with
probability :math:`\\sigma(a + b\\,c_t)`, where :math:`c_t` is the number of ones before ``t``.
Two scalar parameters, ``a`` and ``b``, make it a real autoregressive policy: the distribution of a
token depends on the prefix, so a change of the parameters changes which *states* are visited as well
as what is emitted in them -- the effect that separates token-level from sequence-level KL gradients.
With :math:`2^T` sequences, every expectation is an exact finite sum.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid

from kltutor.divergences import kl_from_logits

__all__ = ["BinaryAutoregressive", "all_binary_sequences"]


def all_binary_sequences(seq_len: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Every bit string of length ``seq_len``, as a ``[2**seq_len, seq_len]`` tensor (row i = bits of i)."""
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if seq_len > 20:
        raise ValueError(f"seq_len={seq_len} would enumerate {2**seq_len} sequences; use at most 20")
    idx = torch.arange(2**seq_len)
    shifts = torch.arange(seq_len - 1, -1, -1)
    return ((idx[:, None] >> shifts) & 1).to(dtype)


class BinaryAutoregressive(nn.Module):
    """Policy over bit strings: ``P(y_t = 1 | y_<t) = sigmoid(a + b * c_t)``, ``c_t = sum(y_<t)``.

    ``a`` and ``b`` are scalar float64 :class:`torch.nn.Parameter` s, so autograd gives exact
    gradients of anything computed from the log-probabilities.
    """

    def __init__(self, a: float, b: float):
        super().__init__()
        for name, v in (("a", a), ("b", b)):
            if not torch.isfinite(torch.as_tensor(float(v))):
                raise ValueError(f"{name} must be finite, got {v}")
        self.a = nn.Parameter(torch.tensor(float(a), dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(float(b), dtype=torch.float64))

    def __repr__(self) -> str:
        return f"BinaryAutoregressive(a={self.a.item():.4g}, b={self.b.item():.4g})"

    @staticmethod
    def _check(seqs: Tensor) -> Tensor:
        if not isinstance(seqs, Tensor) or seqs.dim() != 2 or seqs.shape[1] < 1:
            raise ValueError("sequences must be a [n, T] tensor of 0/1 bits with T >= 1")
        if not ((seqs == 0) | (seqs == 1)).all():
            raise ValueError("sequences must hold only 0 and 1")
        return seqs.to(torch.float64)

    @staticmethod
    def counts(seqs: Tensor) -> Tensor:
        """``c_t``: the number of ones before each position, ``[n, T]``."""
        seqs = BinaryAutoregressive._check(seqs)
        return torch.cumsum(seqs, dim=1) - seqs

    def logits(self, seqs: Tensor) -> Tensor:
        """``a + b * c_t`` for every position of every sequence, ``[n, T]``."""
        return self.a + self.b * self.counts(seqs)

    def token_logprobs(self, seqs: Tensor) -> Tensor:
        """``log pi(y_t | y_<t)`` of every token, ``[n, T]`` (differentiable in ``a`` and ``b``)."""
        seqs = self._check(seqs)
        z = self.logits(seqs)
        return seqs * logsigmoid(z) + (1.0 - seqs) * logsigmoid(-z)

    def sequence_logprobs(self, seqs: Tensor) -> Tensor:
        """``log pi(y)`` of every sequence, ``[n]``."""
        return self.token_logprobs(seqs).sum(-1)

    def token_scores(self, seqs: Tensor) -> Tensor:
        """Closed-form ``grad_(a,b) log pi(y_t | y_<t)``, ``[n, T, 2]``: ``(y_t - p_t) * (1, c_t)``.

        Used for fast per-sample gradients; the tests check it against autograd.
        """
        seqs = self._check(seqs)
        with torch.no_grad():
            c = self.counts(seqs)
            p = torch.sigmoid(self.a + self.b * c)
            resid = seqs - p
            return torch.stack([resid, resid * c], dim=-1)

    def enumerate(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """All ``2**seq_len`` sequences and their exact probabilities (detached), which sum to 1."""
        seqs = all_binary_sequences(seq_len)
        with torch.no_grad():
            probs = self.sequence_logprobs(seqs).exp()
        return seqs, probs

    def exact_kl(self, other: BinaryAutoregressive, seq_len: int) -> Tensor:
        """Exact sequence-level reverse KL ``KL(self || other)`` (differentiable in ``self``'s parameters)."""
        seqs = all_binary_sequences(seq_len)
        logp = self.sequence_logprobs(seqs)
        with torch.no_grad():
            ref = other.sequence_logprobs(seqs)
        return kl_from_logits(logp, ref)  # the sequences' log-probabilities are their distribution's logits

    @torch.no_grad()
    def sample(self, n: int, seq_len: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` sequences of length ``seq_len`` token by token, ``[n, seq_len]`` float64 bits."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        out = torch.zeros(n, seq_len, dtype=torch.float64)
        c = torch.zeros(n, dtype=torch.float64)
        for t in range(seq_len):
            p = torch.sigmoid(self.a + self.b * c)
            y = (torch.rand(n, generator=generator, dtype=torch.float64) < p).to(torch.float64)
            out[:, t] = y
            c = c + y
        return out
