"""The k1, k2 and k3 sample estimators of the reverse KL (introduced in ``ch-estimators``).

For a token ``y`` sampled from the policy, with ``log_ratio`` :math:`\\ell = \\log\\pi_\\theta(y) -
\\log\\pi_\\text{ref}(y)`:

- k1 :math:`= \\ell` (unbiased, can be negative),
- k2 :math:`= \\tfrac12\\ell^2` (biased, non-negative),
- k3 :math:`= e^{-\\ell} - 1 + \\ell` (unbiased, non-negative).

All three are *elementwise* on tensors of log-probabilities and are meant for samples drawn from
the policy whose log-probabilities are ``logp``. :func:`estimate_kl` aggregates them over a masked
``[batch, time]`` tensor, per token or per sequence.

``ch-estimators`` also uses the other forms of k3 (:func:`k3_naive`, :func:`k3_expm1`, the biased
:func:`k3_clamped`, the 50-digit :func:`k3_reference`) and the exact answers the tests pin the
estimators to: :func:`exact_moments` (categorical, by enumeration), :func:`gaussian_moments` and
:func:`gaussian_k3_variance` (closed forms), :func:`k3_variance_is_finite`, and
:func:`enumerate_autoregressive` / :func:`exact_aggregation_moments` (token vs sequence level).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kltutor import divergences
from kltutor._validation import probabilities

__all__ = [
    "k1",
    "k2",
    "k3",
    "k3_expm1",
    "k3_naive",
    "k3_clamped",
    "k3_reference",
    "k3_relative_error_bound",
    "exact_moments",
    "gaussian_moments",
    "gaussian_k3_variance",
    "k3_variance_is_finite",
    "enumerate_autoregressive",
    "exact_aggregation_moments",
    "ESTIMATORS",
    "Estimator",
    "get_estimator",
    "of_log_ratio",
    "derivative",
    "estimate_kl",
    "validate_logps",
    "validate_mask",
    "check_finite",
    "deferred_finiteness_checks",
]


def validate_logps(logp: Tensor, ref_logp: Tensor) -> None:
    """Raise a clear error for mismatched shapes or non-finite log-probabilities."""
    if not isinstance(logp, Tensor) or not isinstance(ref_logp, Tensor):
        raise TypeError(
            f"logp and ref_logp must be torch tensors, got {type(logp).__name__} and {type(ref_logp).__name__}"
        )
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp must have the same shape, got {tuple(logp.shape)} and {tuple(ref_logp.shape)}"
        )
    for name, t in (("logp", logp), ("ref_logp", ref_logp)):
        check_finite(name, t)


_DEFERRED: contextvars.ContextVar[list | None] = contextvars.ContextVar("kltutor_deferred_checks", default=None)
_DEFERRED_CPU: contextvars.ContextVar[bool] = contextvars.ContextVar("kltutor_deferred_cpu", default=False)


def _not_finite_message(name: str, bad: int) -> str:
    return f"{name} holds {bad} non-finite value(s) (NaN or inf); log-probabilities of sampled tokens must be finite"


def check_finite(name: str, t: Tensor) -> None:
    """``ValueError`` if ``t`` holds NaN or inf: at once, or, inside :func:`deferred_finiteness_checks`
    and for a tensor on an accelerator, when the block ends (no host synchronisation per call)."""
    pending = _DEFERRED.get()
    if pending is not None and (t.device.type != "cpu" or _DEFERRED_CPU.get()):
        pending.append((name, (~torch.isfinite(t.detach())).sum()))
        return
    if not torch.isfinite(t).all():
        raise ValueError(_not_finite_message(name, (~torch.isfinite(t)).sum().item()))


@contextlib.contextmanager
def deferred_finiteness_checks(cpu: bool = False):
    """Within the block, the finiteness checks of log-probabilities on an accelerator (:func:`check_finite`,
    every estimator's) are queued as device tensors and made once, when the block ends, with one host
    synchronisation: the capstone's training step on a GPU. The error is the same, raised at the end of
    the block instead of at the call. ``cpu=True`` defers CPU tensors' checks too (for tests); on the CPU
    a check costs no synchronisation, so by default they stay immediate."""
    pending: list = []
    token, token_cpu = _DEFERRED.set(pending), _DEFERRED_CPU.set(cpu)
    try:
        yield
    finally:
        _DEFERRED.reset(token)
        _DEFERRED_CPU.reset(token_cpu)
    if pending:
        counts = torch.stack([c.to(pending[0][1].device) for _, c in pending]).tolist()
        for (name, _), bad in zip(pending, counts):
            if bad:
                raise ValueError(_not_finite_message(name, bad))


def validate_mask(mask: Tensor | None, shape: torch.Size) -> Tensor | None:
    """Check a mask's shape and that it selects at least one token; return it as a float tensor."""
    if mask is None:
        return None
    if mask.shape != shape:
        raise ValueError(f"mask must have the shape of the log-probabilities {tuple(shape)}, got {tuple(mask.shape)}")
    mask = mask.to(torch.float32) if mask.dtype == torch.bool else mask
    if not torch.isfinite(mask).all() or (mask < 0).any():
        raise ValueError("mask must hold finite, non-negative weights (1 for response tokens, 0 elsewhere)")
    if mask.sum() <= 0:
        raise ValueError("mask selects no token: the KL of an empty response is undefined")
    return mask


def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi(y) - log pi_ref(y): unbiased for KL(pi || pi_ref), negative for some samples."""
    validate_logps(logp, ref_logp)
    return logp - ref_logp


def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = (log pi(y) - log pi_ref(y))**2 / 2: non-negative, biased (second order in the log-ratio)."""
    validate_logps(logp, ref_logp)
    return 0.5 * (logp - ref_logp).square()


# Taylor coefficients of e^{-l} - 1 + l = sum_{n>=2} (-l)^n / n!, used where |l| is small.
_SERIES_TERMS = 16
_SERIES_RADIUS = 0.5
_SERIES_COEFFS = [1.0 / math.factorial(n) for n in range(2, _SERIES_TERMS + 2)]


def _k3_series(log_ratio: Tensor) -> Tensor:
    """sum_{n=2}^{17} (-l)^n / n! by Horner; relative truncation error < 1e-18 for |l| <= 0.5."""
    x = -log_ratio
    acc = torch.zeros_like(x)
    for c in reversed(_SERIES_COEFFS):
        acc = acc * x + c
    return acc * x * x


def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    r"""k3 = exp(-l) - 1 + l with l = log pi(y) - log pi_ref(y): non-negative, and unbiased for samples
    from pi when pi_ref puts no mass outside pi's support (claim ``k3-unbiased``, chapter 2).

    Computed to full relative precision in the tensor's dtype: for ``|l| <= 0.5`` by its Taylor
    series :math:`\sum_{n\ge2}(-\ell)^n/n!` (no cancellation), elsewhere as ``expm1(-l) + l``.
    The naive ``exp(-l) - 1 + l`` (:func:`k3_naive`) loses every digit near ``l = 0``;
    ``expm1(-l) + l`` (:func:`k3_expm1`) is better but still has relative error about
    ``2 eps / |l|`` there, because ``expm1(-l)`` and ``l`` cancel to leading order (``ch-estimators``). This is
    the book's one rule for k3 (chapters 2 and 7): float32 log-ratios (cast float16/bfloat16 first) and
    this function; :func:`kltutor.exercises.estimators.k3_accuracy_failures` checks it.
    Where ``exp(-l)`` overflows the dtype the result is ``inf``, as the true value is.
    """
    validate_logps(logp, ref_logp)
    log_ratio = logp - ref_logp
    small = log_ratio.abs() <= _SERIES_RADIUS
    series = _k3_series(log_ratio.clamp(-_SERIES_RADIUS, _SERIES_RADIUS))
    return torch.where(small, series, torch.expm1(-log_ratio) + log_ratio)


def k3_expm1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 as ``expm1(-l) + l``: no overflow problem beyond the naive form's, relative error ~2 eps/|l| near 0."""
    validate_logps(logp, ref_logp)
    log_ratio = logp - ref_logp
    return torch.expm1(-log_ratio) + log_ratio


def k3_naive(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 as the textbook ``exp(-l) - 1 + l``: loses all relative precision near ``l = 0`` (do not use)."""
    validate_logps(logp, ref_logp)
    log_ratio = logp - ref_logp
    return torch.exp(-log_ratio) - 1 + log_ratio


def k3_clamped(logp: Tensor, ref_logp: Tensor, max_ratio: float) -> Tensor:
    """k3 with the ratio ``pi_ref/pi = exp(-l)`` capped at ``max_ratio`` (the "k3_clip" of some codebases).

    Caps the heavy tail and the overflow, and so is *biased* low: its expectation is
    ``KL - E[(exp(-l) - max_ratio)_+]`` (``ch-estimators``).
    """
    validate_logps(logp, ref_logp)
    if not (isinstance(max_ratio, (int, float)) and math.isfinite(max_ratio) and max_ratio > 1):
        raise ValueError(f"max_ratio must be a finite number > 1, got {max_ratio!r}")
    log_ratio = logp - ref_logp
    return torch.exp(-log_ratio).clamp(max=max_ratio) - 1 + log_ratio


@dataclass(frozen=True)
class Estimator:
    """One entry of :data:`ESTIMATORS`: everything the package needs to know about an estimator.

    - ``fn(logp, ref_logp)``: the estimator, elementwise;
    - ``derivative(l)``: ``dk/dl`` at the log-ratio ``l`` (:func:`derivative`);
    - ``placed``: where the book places it (``"reward"``, ``"loss"``), in the order its tables list
      them. Every list of placements of the package is derived from this field
      (:mod:`kltutor.placements`): ``"<name>-in-<where>"`` for each entry and each ``where``.

    Calling an entry calls ``fn``.
    """

    fn: Callable[[Tensor, Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    placed: tuple[str, ...] = ("reward", "loss")

    def __call__(self, logp: Tensor, ref_logp: Tensor) -> Tensor:
        return self.fn(logp, ref_logp)


def _dk1(log_ratio: Tensor) -> Tensor:
    return torch.ones_like(log_ratio)


def _dk2(log_ratio: Tensor) -> Tensor:
    return log_ratio


def _dk3(log_ratio: Tensor) -> Tensor:
    return -torch.expm1(-log_ratio)


#: The estimators, in the order the book introduces them: the one registry that the lists of
#: placements (:mod:`kltutor.placements`, :mod:`kltutor.gradients`, the capstone's), the figures'
#: colours (:mod:`kltutor.plotting.style`) and :func:`derivative` are derived from.
ESTIMATORS: dict[str, Estimator] = {
    "k1": Estimator(k1, _dk1, ("reward", "loss")),
    "k2": Estimator(k2, _dk2, ("loss",)),
    "k3": Estimator(k3, _dk3, ("loss", "reward")),
}


def _entry(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}") from None


def get_estimator(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The estimator called ``name`` ("k1", "k2" or "k3"), with a clear error for anything else."""
    return _entry(name).fn


def of_log_ratio(estimator: str, log_ratio: Tensor) -> Tensor:
    """The estimator ``"k1"``, ``"k2"`` or ``"k3"`` as a function of the log-ratio: ``k(l)``, elementwise.

    For code that holds ``l = logp - ref_logp`` (a summed sequence log-ratio, a toy's enumeration):
    the same functions as :data:`ESTIMATORS`, so k3 is computed by :func:`k3`'s stable rule. float16
    and bfloat16 inputs are computed, and returned, in float32 (the book's one rule for k3, chapters 2
    and 7: sixteen bits cannot hold k3 near ``l = 0``); other dtypes are kept.

    >>> of_log_ratio("k3", torch.tensor([0.0, 1.0], dtype=torch.float64))  # e^-1 - 1 + 1 at l = 1
    tensor([0.0000, 0.3679], dtype=torch.float64)
    >>> of_log_ratio("k3", torch.tensor([0.01], dtype=torch.bfloat16)).dtype
    torch.float32
    """
    fn = get_estimator(estimator)
    if log_ratio.dtype in (torch.float16, torch.bfloat16):
        log_ratio = log_ratio.float()
    return fn(log_ratio, torch.zeros_like(log_ratio))


def derivative(estimator: str, log_ratio: Tensor) -> Tensor:
    """``dk/dl`` of the estimator at the log-ratio ``l``: 1 (k1), ``l`` (k2), ``1 - e^{-l}`` (k3).

    In a loss, autograd multiplies it by the score ``grad log pi(y)`` of the sampled token: the
    per-sample gradient of every ``"<k>-in-loss"`` placement (``ch-placements``).
    """
    return _entry(estimator).derivative(log_ratio)


def estimate_kl(
    logp: Tensor,
    ref_logp: Tensor,
    estimator: str = "k3",
    mask: Tensor | None = None,
    level: Literal["token", "sequence"] = "token",
) -> Tensor:
    """Estimate the reverse KL from log-probabilities of tokens sampled from the policy.

    ``logp`` and ``ref_logp`` are ``[batch, time]`` (or ``[time]``) log-probabilities of the sampled
    tokens under the policy and the reference; ``mask`` marks the response tokens (default: all).

    - ``level="token"``: the estimator is applied to every token and averaged over the masked
      tokens -- an estimate of the mean per-token KL.
    - ``level="sequence"``: the log-ratios are first summed over each sequence's masked tokens and the
      estimator is applied to that sum -- an estimate of the sequence-level KL
      :math:`\\mathrm{KL}(\\pi_\\theta(\\cdot|x)\\|\\pi_\\text{ref}(\\cdot|x))`, averaged over the batch.
      For k1 this equals the sum over tokens; for k2 and k3 it does not (``ch-estimators``).
    """
    fn = get_estimator(estimator)
    validate_logps(logp, ref_logp)
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    m = validate_mask(mask, logp.shape)
    if m is None:
        m = torch.ones_like(logp)
    if level == "token":
        values = fn(logp, ref_logp)
        return (values * m).sum() / m.sum()
    if logp.dim() == 1:
        logp, ref_logp, m = logp[None], ref_logp[None], m[None]
    seq_log_ratio = ((logp - ref_logp) * m).sum(dim=-1)
    keep = m.sum(dim=-1) > 0
    values = fn(seq_log_ratio[keep], torch.zeros_like(seq_log_ratio[keep]))
    return values.mean()


# --------------------------------------------------------------------------------------------
# Exact answers (``ch-estimators``): moments under categorical enumeration and Gaussian closed forms.
# --------------------------------------------------------------------------------------------


def k3_relative_error_bound(log_ratio: Sequence[float] | Tensor, form: str, dtype: torch.dtype) -> Tensor:
    r"""A-priori bound on the relative rounding error of k3 evaluated in ``dtype`` by ``form``.

    ``form`` is ``"naive"`` (:func:`k3_naive`), ``"expm1"`` (:func:`k3_expm1`) or ``"stable"``
    (:func:`k3`); ``log_ratio`` holds the (exactly representable) inputs. First-order rounding
    analysis with unit roundoff ``u = finfo(dtype).eps / 2``, elementary functions (exp, expm1)
    allowed one ulp (``2u`` relative) -- the accuracy of the vectorised and scalar kernels CPUs
    dispatch to, so the bound holds on any of them:

    - naive ``(exp(-l) - 1) + l``: ``u (2 e^{-l} + |e^{-l} - 1| + k3) / k3``, i.e. about
      ``2u / (l^2 / 2)`` near 0: every digit is lost once ``l^2 < 4u``;
    - expm1 ``expm1(-l) + l``: ``u (2 |expm1(-l)| + k3) / k3``, about ``4u / |l|`` near 0;
    - stable: ``8u`` where :func:`k3` uses its series (``|l| <= 0.5``: Horner with positive
      coefficients whose successive terms shrink by ``|l|/3 <= 1/6``, so each step's rounding is
      damped, plus the coefficients' own rounding and the final ``* x * x``), the expm1 bound beyond.

    Errors measured against a float64 reference (:func:`k3_reference`) carry that reference's
    own rounding, ``2^-53``, which is added. Returns a float64 tensor (``nan`` at ``l = 0``,
    where every form returns exactly 0).
    """
    if form not in ("naive", "expm1", "stable"):
        raise ValueError(f"unknown form {form!r}; expected 'naive', 'expm1' or 'stable'")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    ell = torch.as_tensor(log_ratio, dtype=torch.float64)
    if not torch.isfinite(ell).all():
        raise ValueError("log_ratio must be finite")
    u = torch.finfo(dtype).eps / 2
    value = k3_reference(ell)
    em1 = torch.expm1(-ell)
    expm1_bound = u * (2 * em1.abs() + value) / value
    if form == "naive":
        bound = u * (2 * torch.exp(-ell) + em1.abs() + value) / value
    elif form == "expm1":
        bound = expm1_bound
    else:
        bound = torch.where(ell.abs() <= _SERIES_RADIUS, torch.full_like(ell, 8 * u), expm1_bound)
    bound = bound + torch.finfo(torch.float64).eps / 2
    return torch.where(ell == 0, torch.full_like(ell, float("nan")), bound)


def k3_reference(log_ratio: Sequence[float] | Tensor, digits: int = 50) -> Tensor:
    """k3 of each log-ratio computed in ``digits``-digit arithmetic (mpmath), returned as float64.

    The ground truth for the stability tables: the inputs are taken as exact numbers, so the
    error of a float32 / bfloat16 evaluation is measured against the value of *its own* input.
    A tensor keeps its shape (elementwise, like the estimators); a sequence gives a 1-D tensor.
    """
    import mpmath

    shape = tuple(log_ratio.shape) if isinstance(log_ratio, Tensor) else (len(log_ratio),)
    values = log_ratio.double().flatten().tolist() if isinstance(log_ratio, Tensor) else [float(v) for v in log_ratio]
    out = []
    with mpmath.workdps(digits):
        for v in values:
            if not math.isfinite(v):
                raise ValueError("k3_reference needs finite log-ratios")
            x = mpmath.mpf(v)
            out.append(float(mpmath.expm1(-x) + x))
    return torch.tensor(out, dtype=torch.float64).reshape(shape)


def exact_moments(p: Tensor | Sequence[float], q: Tensor | Sequence[float], estimator: str) -> dict[str, float]:
    r"""Exact mean and variance of one sample of ``estimator`` with ``y ~ p``, by enumeration.

    ``p`` is the policy and ``q`` the reference (both categorical over the same support); the
    estimator is applied to :math:`\ell(y) = \log p(y) - \log q(y)`. Returns ``{"kl", "mean",
    "var", "bias"}`` with ``kl`` the exact :math:`\mathrm{KL}(p\|q)`. Outcomes with ``p(y) = 0`` are
    never sampled and are skipped. If ``q(y) = 0`` where ``p(y) > 0`` the KL is infinite and every
    estimator's log-ratio is ``+inf`` on that outcome: this raises ``ValueError``.
    """
    fn = get_estimator(estimator)
    p = probabilities("p", p, vector=True, dtype=torch.float64)
    q = probabilities("q", q, vector=True, dtype=torch.float64)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    seen = p > 0
    if (q[seen] == 0).any():
        raise ValueError("q(y) = 0 on an outcome with p(y) > 0: KL(p||q) is infinite (supp p must lie in supp q)")
    pw, lp, lq = p[seen], p[seen].log(), q[seen].log()
    values = fn(lp, lq)
    mean = (pw * values).sum()
    var = (pw * (values - mean) ** 2).sum()
    kl = divergences.kl(p, q)
    return {"kl": kl.item(), "mean": mean.item(), "var": var.item(), "bias": (mean - kl).item()}


def gaussian_moments(mu_policy: float, mu_ref: float, sigma: float, estimator: str) -> dict[str, float]:
    r"""Closed-form mean and variance of ``estimator`` for ``y ~ N(mu_policy, sigma^2)`` against
    the reference ``N(mu_ref, sigma^2)`` (equal variances).

    With :math:`\delta = (\mu_\text{policy} - \mu_\text{ref})/\sigma` the log-ratio is
    :math:`\ell = \delta z + \delta^2/2`, :math:`z \sim N(0, 1)`, and (derived in
    :mod:`kltutor.derivations.estimators`): KL :math:`=\delta^2/2`; k1: mean KL, variance
    :math:`\delta^2`; k2: mean :math:`\delta^2/2 + \delta^4/8`, variance
    :math:`\delta^4/2 + \delta^6/4`; k3: mean KL, variance :math:`e^{\delta^2} - 1 - \delta^2`.
    """
    get_estimator(estimator)
    for name, v in (("mu_policy", mu_policy), ("mu_ref", mu_ref), ("sigma", sigma)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    d2 = ((mu_policy - mu_ref) / sigma) ** 2
    kl = d2 / 2
    if estimator == "k1":
        mean, var = kl, d2
    elif estimator == "k2":
        mean, var = d2 / 2 + d2**2 / 8, d2**2 / 2 + d2**3 / 4
    else:
        mean, var = kl, math.expm1(d2) - d2
    return {"kl": kl, "mean": mean, "var": var, "bias": mean - kl}


def k3_variance_is_finite(sigma_policy: float, sigma_ref: float) -> bool:
    r"""Whether k3 has finite variance for a Gaussian policy against a Gaussian reference.

    :math:`\mathrm{Var}(k_3)` is finite iff :math:`E_\pi[(\pi_\text{ref}/\pi)^2] < \infty` iff
    :math:`\sigma_\text{ref}^2 < 2\sigma_\text{policy}^2` -- whatever the means. A reference
    :math:`\sqrt2` times wider than the policy or more gives k3 infinite variance.
    """
    if not (sigma_policy > 0 and sigma_ref > 0 and math.isfinite(sigma_policy) and math.isfinite(sigma_ref)):
        raise ValueError(f"standard deviations must be finite and positive, got {sigma_policy!r}, {sigma_ref!r}")
    return sigma_ref**2 < 2 * sigma_policy**2


def gaussian_k3_variance(mu_policy: float, sigma_policy: float, mu_ref: float, sigma_ref: float) -> dict[str, float]:
    r"""Closed-form KL, Var(k1) and Var(k3) for ``y ~ N(mu_policy, sigma_policy^2)`` against
    ``N(mu_ref, sigma_ref^2)``; ``var_k3`` is ``inf`` when ``sigma_ref^2 >= 2 sigma_policy^2``.

    Uses :math:`k_3 = \ell + (\rho - 1)` with :math:`\rho = e^{-\ell} = \pi_\text{ref}/\pi`:
    :math:`\mathrm{Var}(k_3) = \mathrm{Var}(\ell) + (E_\pi[\rho^2] - 1) + 2\,\mathrm{Cov}(\ell, \rho)`
    with :math:`\mathrm{Cov}(\ell,\rho) = E_\text{ref}[\ell] - \mathrm{KL} =
    -\mathrm{KL}(\pi_\text{ref}\|\pi) - \mathrm{KL}(\pi\|\pi_\text{ref})`. Also returns
    ``lambda_opt``, the variance-minimising control-variate weight :math:`-\mathrm{Cov}/\mathrm{Var}(\rho)`.
    """
    finite = k3_variance_is_finite(sigma_policy, sigma_ref)
    sp, sr, dm = sigma_policy, sigma_ref, mu_policy - mu_ref
    kl = float(divergences.kl_gaussian(mu_policy, sp, mu_ref, sr))
    kl_rev = float(divergences.kl_gaussian(mu_ref, sr, mu_policy, sp))
    # l = c + a z^2 + b z with y = mu_policy + sp z
    a = 0.5 * (sp**2 / sr**2 - 1)
    b = sp * dm / sr**2
    var_k1 = 2 * a**2 + b**2
    cov = -kl - kl_rev
    if finite:
        A = 1 / sr**2 - 1 / (2 * sp**2)
        B = -2 * mu_ref / sr**2 + mu_policy / sp**2
        C = mu_ref**2 / sr**2 - mu_policy**2 / (2 * sp**2)
        second = sp / (sr**2 * math.sqrt(2 * A)) * math.exp(B**2 / (4 * A) - C)
        var_rho = second - 1
        var_k3 = var_k1 + var_rho + 2 * cov
        lam = -cov / var_rho if var_rho > 0 else 1.0
    else:
        var_rho = var_k3 = math.inf
        lam = 0.0
    return {"kl": kl, "var_k1": var_k1, "var_k3": var_k3, "var_rho": var_rho, "cov_l_rho": cov, "lambda_opt": lam}


def enumerate_autoregressive(tables: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    r"""Every sequence of a small autoregressive model and its per-token log-probabilities.

    ``tables[t]`` holds :math:`\pi(y_t \mid y_{<t})` with shape ``[V] * (t + 1)`` (the last axis is
    the token, the earlier ones the prefix). Returns ``(sequences [V**T, T] long, token_logp
    [V**T, T] float64)``; the probability of a sequence is ``token_logp.sum(-1).exp()``.
    """
    if len(tables) == 0:
        raise ValueError("need at least one step")
    vocab = tables[0].shape[-1]
    for t, tab in enumerate(tables):
        if tuple(tab.shape) != (vocab,) * (t + 1):
            raise ValueError(f"tables[{t}] must have shape {(vocab,) * (t + 1)}, got {tuple(tab.shape)}")
        if (tab < 0).any() or not torch.allclose(tab.sum(-1).double(), torch.ones((), dtype=torch.float64)):
            raise ValueError(
                f"tables[{t}] must hold conditional distributions (non-negative, summing to 1 over the last axis)"
            )
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=len(tables))), dtype=torch.long)
    logp = torch.stack([tables[t].double()[tuple(seqs[:, : t + 1].T)].log() for t in range(len(tables))], dim=-1)
    return seqs, logp


def exact_aggregation_moments(policy: Sequence[Tensor], ref: Sequence[Tensor], estimator: str) -> dict[str, float]:
    """Exact expectation and variance of :func:`estimate_kl` on one sampled sequence, per level.

    ``policy`` and ``ref`` are :func:`enumerate_autoregressive` tables. For one sequence ``y``:

    - ``token``: ``estimate_kl(level="token")`` = mean over the T tokens of the per-token estimator;
    - ``token_sum``: T times that, the sum of per-token estimates;
    - ``sequence``: ``estimate_kl(level="sequence")`` = the estimator of the summed log-ratio.

    Returns their means and variances under ``y ~ policy`` and the exact sequence KL.
    """
    _, lp = enumerate_autoregressive(policy)
    _, lq = enumerate_autoregressive(ref)
    fn = get_estimator(estimator)
    prob = lp.sum(-1).exp()
    keep = prob > 0
    prob, lp, lq = prob[keep], lp[keep], lq[keep]
    if not torch.isfinite(lq).all():
        raise ValueError("the reference gives probability 0 to a sequence the policy can sample: KL is infinite")
    T = lp.shape[-1]
    per_token = fn(lp, lq)
    values = {
        "token": per_token.mean(-1),
        "token_sum": per_token.sum(-1),
        "sequence": fn(lp.sum(-1), lq.sum(-1)),
    }
    out: dict[str, float] = {"kl_seq": (prob * (lp - lq).sum(-1)).sum().item(), "T": T}
    for name, v in values.items():
        mean = (prob * v).sum()
        out[f"{name}_mean"] = mean.item()
        out[f"{name}_var"] = (prob * (v - mean) ** 2).sum().item()
    return out
