"""Reward overoptimization along the KL axis (introduced in ``ch-overoptimization``).

Three groups of tools:

- **Best-of-n, exactly.** On a discrete response set the best-of-n policy has a closed form: with
  responses ranked by reward and ``F`` the base policy's CDF over that ranking,
  ``P(best-of-n lands in rank class c) = F(c)**n - F(c-)**n``. :func:`best_of_n_policy` builds it
  (ties split in proportion to the base probabilities, as uniform tie-breaking does) and
  :func:`best_of_n_kl` returns its exact KL from the base policy, to set beside the commonly quoted
  :func:`best_of_n_kl_formula` ``log n - (n-1)/n`` -- exact only when the reward has a continuous
  distribution under the base policy, an upper bound otherwise.
- **The functional forms of Gao, Schulman and Hilton (2023).** With ``d = sqrt(KL(pi || pi_init))``:
  best-of-n ``R(d) = d (alpha - beta d)``, RL ``R(d) = d (alpha - beta log d)``. :func:`fit_form`
  fits either by linear least squares (both are linear in ``alpha, beta``), :func:`form_peak`
  locates the maximum, :func:`safe_kl_budget` turns a fit into a stopping rule.
- **A synthetic overoptimization world** (:func:`make_world`): a discrete response set with a
  known gold reward, a proxy reward fitted by Bradley--Terry logistic regression to a limited number
  of noisy comparisons (:func:`fit_bradley_terry`), and exact optimisation against the proxy by
  best-of-n (:func:`best_of_n_sweep`), by the KL-regularised optimum (:func:`tilted_sweep`) and by
  gradient ascent with or without a KL penalty (:func:`policy_gradient_path`).

Everything is exact enumeration in float64; nothing is sampled except the preference data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kltutor import divergences
from kltutor._validation import positive_number, probabilities
from kltutor.preference import optimal_policy
from kltutor.toys.bandits import softmax_policy_gradient

__all__ = [
    "kl_categorical",
    "chi2_divergence",
    "tilted_policy",
    "best_of_n_policy",
    "best_of_n_kl",
    "best_of_n_kl_formula",
    "FORMS",
    "gold_form",
    "FormFit",
    "fit_form",
    "form_peak",
    "gold_fraction_at_kl_fraction",
    "safe_kl_budget",
    "World",
    "make_world",
    "sample_comparisons",
    "fit_bradley_terry",
    "proxy_from_comparisons",
    "best_of_n_sweep",
    "tilted_sweep",
    "policy_gradient_path",
    "Spread",
    "spread",
    "fits_over_comparison_sets",
]

Form = Literal["bon", "rl"]
FORMS: tuple[str, ...] = ("bon", "rl")


# --------------------------------------------------------------------------------------------
# exact divergences on a discrete support
# --------------------------------------------------------------------------------------------
def _as_probs(p: Tensor | Sequence[float], name: str) -> Tensor:
    return probabilities(name, p, vector=True, dtype=torch.float64)


def kl_categorical(p: Tensor | Sequence[float], q: Tensor | Sequence[float]) -> float:
    """Exact KL(p || q) = sum p log(p/q) on a discrete support (0 log 0 = 0; inf where q = 0 < p)."""
    p, q = _as_probs(p, "p"), _as_probs(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    return max(float(divergences.kl(p, q)), 0.0)  # KL >= 0; clip float round-off (e.g. -1e-17 when p == q)


def chi2_divergence(p: Tensor | Sequence[float], q: Tensor | Sequence[float]) -> float:
    """Exact chi-square divergence chi2(p || q) = sum p**2 / q - 1 (inf where q = 0 < p)."""
    p, q = _as_probs(p, "p"), _as_probs(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    return float(divergences.chi2(p, q))


def _check_rewards(rewards: Tensor | Sequence[float], size: int) -> Tensor:
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.shape != (size,):
        raise ValueError(f"rewards must be a vector of length {size} (one per response), got shape {tuple(r.shape)}")
    if not torch.isfinite(r).all():
        raise ValueError("rewards hold NaN or inf")
    return r


def tilted_policy(ref_probs: Tensor | Sequence[float], rewards: Tensor | Sequence[float], beta: float) -> Tensor:
    """The KL-regularised optimum pi* = pi_ref exp(r / beta) / Z of one prompt: :func:`kltutor.preference.optimal_policy`
    on a 1-D float64 vector (lists accepted), with this module's argument checks."""
    p = _as_probs(ref_probs, "ref_probs")
    r = _check_rewards(rewards, p.numel())
    positive_number("beta", beta, strict=True)
    return optimal_policy(p, r, beta)


# --------------------------------------------------------------------------------------------
# best-of-n
# --------------------------------------------------------------------------------------------
def best_of_n_policy(
    ref_probs: Tensor | Sequence[float],
    rewards: Tensor | Sequence[float],
    n: int,
    tie_break: Literal["random", "index"] = "random",
) -> Tensor:
    """The exact distribution of best-of-n: draw ``n`` responses from ``ref_probs``, keep the best.

    Responses are ranked by reward. For a rank class ``c`` (the responses sharing one reward value),
    ``P(class c) = F(c)**n - F(c-)**n`` with ``F(c)`` the base probability of all responses ranked
    at or below ``c`` and ``F(c-)`` of those strictly below. ``tie_break="random"`` (uniform among
    the tied draws) splits a class in proportion to the base probabilities, so ties contribute no KL;
    ``tie_break="index"`` breaks ties by position (a higher index wins), which makes every response
    its own class.
    """
    p = _as_probs(ref_probs, "ref_probs")
    r = _check_rewards(rewards, p.numel())
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if tie_break not in ("random", "index"):
        raise ValueError(f"tie_break must be 'random' or 'index', got {tie_break!r}")
    k = p.numel()
    if tie_break == "index":
        # a strict total order: reward first, position second (a higher index wins a tie)
        order = torch.tensor(sorted(range(k), key=lambda i: (r[i].item(), i)))
        class_of = torch.arange(k)
    else:
        order = torch.argsort(r, stable=True)
        _, class_of = torch.unique_consecutive(r[order], return_inverse=True)
    p_sorted = p[order]
    n_classes = int(class_of.max()) + 1
    class_mass = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, class_of, p_sorted)
    upto = torch.cumsum(class_mass, 0).clamp(max=1.0)  # F(c)
    below = torch.cat([torch.zeros(1, dtype=torch.float64), upto[:-1]])  # F(c-)
    class_prob = upto.pow(n) - below.pow(n)
    share = torch.where(class_mass[class_of] > 0, p_sorted / class_mass[class_of], torch.zeros_like(p_sorted))
    out = torch.zeros_like(p)
    out[order] = class_prob[class_of] * share
    return out / out.sum()


def best_of_n_kl(
    ref_probs: Tensor | Sequence[float],
    rewards: Tensor | Sequence[float],
    n: int,
    tie_break: Literal["random", "index"] = "random",
) -> float:
    """Exact KL(pi_bon || pi_ref) of the best-of-n policy on a discrete response set."""
    return kl_categorical(best_of_n_policy(ref_probs, rewards, n, tie_break), ref_probs)


def best_of_n_kl_formula(n: int | Tensor) -> float | Tensor:
    """The commonly quoted ``log n - (n-1)/n``.

    It is the exact KL when the reward's distribution under the base policy is continuous (every
    response distinct, no atoms); on a discrete support it is only an upper bound, and a loose one
    once ``n`` is large (the exact KL is capped at ``-log pi_ref(best response)``).
    """
    if isinstance(n, Tensor):
        if (n < 1).any():
            raise ValueError("n must be >= 1")
        n = n.to(torch.float64)
        return n.log() - (n - 1) / n
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 1:
        raise ValueError(f"n must be a number >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


# --------------------------------------------------------------------------------------------
# Gao et al. functional forms
# --------------------------------------------------------------------------------------------
def _check_form(form: str) -> str:
    if form not in FORMS:
        raise ValueError(
            f"unknown form {form!r}; choose one of {list(FORMS)} ('bon': d(alpha - beta d), 'rl': d(alpha - beta log d))"
        )
    return form


def gold_form(d: Tensor | float, alpha: float, beta: float, form: Form) -> Tensor:
    """Gao et al.'s gold-reward gain at ``d = sqrt(KL)``: ``d(alpha - beta d)`` or ``d(alpha - beta log d)``.

    ``R(0) = 0`` by definition (for the RL form, ``d log d -> 0`` as ``d -> 0``).
    """
    _check_form(form)
    d = torch.as_tensor(d, dtype=torch.float64)
    if (d < 0).any():
        raise ValueError("d = sqrt(KL) must be non-negative")
    if form == "bon":
        return d * (alpha - beta * d)
    safe = torch.where(d > 0, d, torch.ones_like(d))
    return torch.where(d > 0, d * (alpha - beta * safe.log()), torch.zeros_like(d))


@dataclass(frozen=True)
class FormFit:
    """A least-squares fit of one functional form: coefficients and the residual RMS."""

    form: str
    alpha: float
    beta: float
    rmse: float
    n_points: int

    def __call__(self, d: Tensor | float) -> Tensor:
        return gold_form(d, self.alpha, self.beta, self.form)  # type: ignore[arg-type]


_KL_ZERO = 1e-12  # a KL this small is zero up to float64 rounding


def fit_form(kl: Tensor | Sequence[float], reward_gain: Tensor | Sequence[float], form: Form) -> FormFit:
    """Fit ``R(d) = d(alpha - beta d)`` (``form="bon"``) or ``d(alpha - beta log d)`` (``"rl"``).

    ``kl`` are KL(pi || pi_init) values (nats, not their square roots) and ``reward_gain`` the gold
    reward minus that of the initial policy (the forms have ``R(0) = 0``). Both forms are linear in
    ``(alpha, beta)``, so the fit is an ordinary least-squares solve, no iterative optimiser.

    Points with ``KL <= 1e-12`` are dropped: both forms pass through the origin, so a point there
    carries no information -- and the KL of a policy equal to the initial one (best-of-1, say) is
    zero only up to float64 rounding, +-1e-17 depending on the CPU, which must not decide whether
    it is counted. KL values below ``-1e-12`` are refused.
    """
    _check_form(form)
    kl = torch.as_tensor(kl, dtype=torch.float64).flatten()
    y = torch.as_tensor(reward_gain, dtype=torch.float64).flatten()
    if kl.shape != y.shape:
        raise ValueError(f"kl and reward_gain must have the same length, got {kl.numel()} and {y.numel()}")
    if not (torch.isfinite(kl).all() and torch.isfinite(y).all()):
        raise ValueError("kl and reward_gain must be finite")
    if (kl < -_KL_ZERO).any():
        raise ValueError("KL values must be non-negative")
    keep = kl > _KL_ZERO
    if int(keep.sum()) < 2:
        raise ValueError("need at least two points with KL > 0 to fit two coefficients")
    d, y = kl[keep].sqrt(), y[keep]
    second = d * d if form == "bon" else d * d.log()
    design = torch.stack([d, -second], dim=1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution.flatten()
    resid = y - design @ coef
    return FormFit(form, float(coef[0]), float(coef[1]), float(resid.square().mean().sqrt()), int(d.numel()))


def form_peak(alpha: float, beta: float, form: Form) -> dict[str, float]:
    """The maximiser of a form: ``d*``, ``KL* = d*^2`` and the peak gain ``R(d*)``.

    bon: ``d* = alpha / (2 beta)``, ``R* = alpha^2 / (4 beta)``; rl: ``d* = exp(alpha/beta - 1)``,
    ``R* = beta d*`` (derived in :mod:`kltutor.derivations.overoptimization`). A peak exists only
    for ``beta > 0``: otherwise the form rises for ever and there is no overoptimization to stop.
    An rl peak whose KL* exceeds the float64 range (``alpha / beta`` above about 355.9) is refused
    the same way, with a ValueError.
    """
    _check_form(form)
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise ValueError("alpha and beta must be finite")
    if beta <= 0:
        raise ValueError(f"the form has no interior maximum unless beta > 0 (got beta = {beta})")
    if form == "bon":
        if alpha <= 0:
            raise ValueError("the bon form only rises above zero when alpha > 0")
        d = alpha / (2 * beta)
        value = alpha**2 / (4 * beta)
    else:
        try:
            d = math.exp(alpha / beta - 1)
        except OverflowError:
            d = math.inf
        if math.isinf(d * d):
            raise ValueError(
                f"the rl form peaks at KL* = exp(2 (alpha / beta - 1)) = e^{2 * (alpha / beta - 1):.4g}, beyond the float range"
            )
        value = beta * d
    return {"d": d, "kl": d * d, "gain": value}


def gold_fraction_at_kl_fraction(kl_fraction: float | Tensor, form: Form) -> float | Tensor:
    """Fraction of the peak gold gain kept when stopping at ``lambda * KL*`` instead of ``KL*``.

    Independent of ``alpha`` and ``beta``: bon ``2 sqrt(lambda) - lambda``; rl
    ``sqrt(lambda) (1 - log(lambda) / 2)``.
    """
    _check_form(form)
    lam = torch.as_tensor(kl_fraction, dtype=torch.float64)
    if (lam <= 0).any() or not torch.isfinite(lam).all():
        raise ValueError("kl_fraction must be positive and finite")
    s = lam.sqrt()
    out = 2 * s - lam if form == "bon" else s * (1 - 0.5 * lam.log())
    return float(out) if out.dim() == 0 else out


def safe_kl_budget(alpha: float, beta: float, form: Form, fraction: float = 0.9) -> dict[str, float]:
    """The smallest KL at which the fitted gold gain reaches ``fraction`` of its peak (rising side).

    The forms are flat near their peak, so giving up a little gold buys a large cut in KL -- and a
    margin against a peak estimated from noisy data. bon: ``d = d* (1 - sqrt(1 - fraction))``; rl:
    solved by bisection on ``(0, d*]``.
    """
    if not (0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    peak = form_peak(alpha, beta, form)
    target = fraction * peak["gain"]
    if form == "bon":
        d = peak["d"] * (1 - math.sqrt(1 - fraction))
    else:
        lo, hi = 0.0, peak["d"]
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if float(gold_form(mid, alpha, beta, "rl")) < target:
                lo = mid
            else:
                hi = mid
        d = hi
    return {
        "d": d,
        "kl": d * d,
        "gain": float(gold_form(d, alpha, beta, form)),
        "peak_kl": peak["kl"],
        "peak_gain": peak["gain"],
    }


# --------------------------------------------------------------------------------------------
# the synthetic world
# --------------------------------------------------------------------------------------------
@dataclass
class World:
    """A discrete response set: base policy, features, and the gold reward on every response.

    ``gold = features @ gold_weights - curvature / 2 * |features|^2``: quality rises along the good
    directions, but far-out, atypical responses (large feature norm) are bad -- the part of the
    truth a proxy fitted on typical responses does not see.
    """

    ref_probs: Tensor  # [K]
    features: Tensor  # [K, D]
    gold: Tensor  # [K]
    gold_weights: Tensor  # [D]
    curvature: float


def make_world(
    n_responses: int = 4096,
    n_features: int = 8,
    curvature: float = 0.5,
    ref_logit_scale: float = 1.0,
    seed: int = 0,
) -> World:
    """Build a :class:`World` with Gaussian features and log-normal-ish base probabilities."""
    if n_responses < 2 or n_features < 1:
        raise ValueError("need at least 2 responses and 1 feature")
    if curvature < 0 or ref_logit_scale < 0:
        raise ValueError("curvature and ref_logit_scale must be non-negative")
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n_responses, n_features, generator=g, dtype=torch.float64)
    weights = torch.randn(n_features, generator=g, dtype=torch.float64)
    weights = weights / weights.norm()
    ref_probs = torch.softmax(ref_logit_scale * torch.randn(n_responses, generator=g, dtype=torch.float64), 0)
    gold = features @ weights - 0.5 * curvature * features.square().sum(1)
    return World(ref_probs, features, gold, weights, curvature)


def sample_comparisons(world: World, n_pairs: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``n_pairs`` response pairs from the base policy; label them with Bradley--Terry on gold.

    Returns ``(first, second, first_wins)``: indices and a 0/1 label with
    ``P(first wins) = sigmoid(gold[first] - gold[second])``.
    """
    if n_pairs < 1:
        raise ValueError("n_pairs must be positive")
    g = torch.Generator().manual_seed(seed)
    first = torch.multinomial(world.ref_probs, n_pairs, replacement=True, generator=g)
    second = torch.multinomial(world.ref_probs, n_pairs, replacement=True, generator=g)
    p_first = torch.sigmoid(world.gold[first] - world.gold[second])
    first_wins = (torch.rand(n_pairs, generator=g, dtype=torch.float64) < p_first).to(torch.float64)
    return first, second, first_wins


def fit_bradley_terry(feature_diff: Tensor, first_wins: Tensor, l2: float = 1e-3, iters: int = 50) -> Tensor:
    """Logistic regression ``P(first wins) = sigmoid(w . (phi_first - phi_second))`` by Newton's method.

    ``l2`` is a ridge penalty ``l2/2 |w|^2`` per comparison (mean loss); it keeps the fit finite when
    the data are separable. Returns ``w``.
    """
    x = torch.as_tensor(feature_diff, dtype=torch.float64)
    y = torch.as_tensor(first_wins, dtype=torch.float64)
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"feature_diff must be [N, D] and first_wins [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("first_wins must be 0/1 labels")
    if l2 < 0:
        raise ValueError("l2 must be non-negative")
    n, dim = x.shape
    w = torch.zeros(dim, dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(x @ w)
        grad = x.T @ (p - y) / n + l2 * w
        hess = (x.T * (p * (1 - p))) @ x / n + (l2 + 1e-12) * torch.eye(dim, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if step.abs().max() < 1e-12:
            break
    return w


def proxy_from_comparisons(world: World, n_pairs: int, seed: int = 0, l2: float = 1e-3) -> Tensor:
    """The proxy reward on every response, from a BT fit to ``n_pairs`` gold-labelled comparisons."""
    first, second, wins = sample_comparisons(world, n_pairs, seed)
    w = fit_bradley_terry(world.features[first] - world.features[second], wins, l2)
    return world.features @ w


def _expect(p: Tensor, values: Tensor) -> float:
    return float((p * values).sum())


def best_of_n_sweep(world: World, proxy: Tensor, ns: Sequence[int]) -> dict[str, list[float]]:
    """Exact (KL, proxy, gold) of best-of-n against ``proxy`` for every ``n``; gains relative to n=1."""
    base_proxy, base_gold = _expect(world.ref_probs, proxy), _expect(world.ref_probs, world.gold)
    rows: dict[str, list[float]] = {"n": [], "kl": [], "kl_formula": [], "proxy": [], "gold": []}
    for n in ns:
        pi = best_of_n_policy(world.ref_probs, proxy, int(n))
        rows["n"].append(int(n))
        rows["kl"].append(kl_categorical(pi, world.ref_probs))
        rows["kl_formula"].append(float(best_of_n_kl_formula(int(n))))
        rows["proxy"].append(_expect(pi, proxy) - base_proxy)
        rows["gold"].append(_expect(pi, world.gold) - base_gold)
    return rows


def tilted_sweep(world: World, proxy: Tensor, betas: Sequence[float]) -> dict[str, list[float]]:
    """Exact (KL, proxy, gold) of the KL-regularised optimum pi_ref exp(proxy/beta)/Z for each beta."""
    base_proxy, base_gold = _expect(world.ref_probs, proxy), _expect(world.ref_probs, world.gold)
    rows: dict[str, list[float]] = {"beta": [], "kl": [], "proxy": [], "gold": []}
    for beta in betas:
        pi = tilted_policy(world.ref_probs, proxy, float(beta))
        rows["beta"].append(float(beta))
        rows["kl"].append(kl_categorical(pi, world.ref_probs))
        rows["proxy"].append(_expect(pi, proxy) - base_proxy)
        rows["gold"].append(_expect(pi, world.gold) - base_gold)
    return rows


def policy_gradient_path(
    world: World,
    proxy: Tensor,
    kl_coef: float = 0.0,
    lr: float = 1.0,
    steps: int = 300,
    natural: bool = False,
) -> dict[str, list[float]]:
    """Exact gradient ascent on ``E_pi[proxy] - kl_coef * KL(pi || pi_ref)`` over softmax logits.

    The policy starts at the base policy. ``natural=False`` takes plain gradient steps on the logits
    (the exact gradient is ``pi * (A - E_pi A)`` with ``A = proxy - kl_coef * (log pi - log pi_ref)``);
    ``natural=True`` takes mirror-descent (natural-gradient) steps ``log pi += lr * A``, whose whole
    path stays inside the tilted family pi_ref exp(c proxy). Records (KL, proxy, gold) after each step.
    """
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be non-negative, got {kl_coef}")
    if lr <= 0 or steps < 1:
        raise ValueError("lr must be positive and steps >= 1")
    ref_logp = world.ref_probs.log()
    logits = ref_logp.clone()
    base_proxy, base_gold = _expect(world.ref_probs, proxy), _expect(world.ref_probs, world.gold)
    rows: dict[str, list[float]] = {"step": [], "kl": [], "proxy": [], "gold": []}
    for t in range(1, steps + 1):
        step = softmax_policy_gradient(logits, proxy, kl_coef, ref_logp, natural=natural)
        logits = (torch.log_softmax(logits, 0) if natural else logits) + lr * step
        pi = torch.softmax(logits, 0)
        rows["step"].append(t)
        rows["kl"].append(kl_categorical(pi, world.ref_probs))
        rows["proxy"].append(_expect(pi, proxy) - base_proxy)
        rows["gold"].append(_expect(pi, world.gold) - base_gold)
    return rows


# --------------------------------------------------------------------------------------------
# uncertainty of fitted quantities
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of a quantity over repetitions (``nan`` entries ignored)."""

    mean: float
    sd: float
    n: int


def spread(values: Sequence[float] | Tensor) -> Spread:
    """:class:`Spread` of ``values``: mean, sample standard deviation (``ddof=1``) and count.

    ``nan`` entries (e.g. a fit without a peak) are left out; at least two finite values are needed.
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if torch.isinf(v).any():
        raise ValueError("values must not be infinite")
    v = v[~torch.isnan(v)]
    if v.numel() < 2:
        raise ValueError(f"need at least two finite values for a spread, got {v.numel()}")
    return Spread(float(v.mean()), float(v.std()), int(v.numel()))


def fits_over_comparison_sets(
    world: World,
    n_pairs: int,
    seeds: Sequence[int],
    ns: Sequence[int] | None = None,
    betas: Sequence[float] | None = None,
    fraction: float = 0.9,
) -> dict[str, dict[str, list[float]]]:
    """Refit the Gao forms with proxies fitted to independent comparison sets, one per seed.

    A fitted ``alpha``, ``beta`` or peak KL depends on the particular ``n_pairs`` comparisons the
    proxy was trained on; this repeats the whole pipeline -- :func:`proxy_from_comparisons` with
    each seed, :func:`best_of_n_sweep` over ``ns`` and/or :func:`tilted_sweep` over ``betas``,
    :func:`fit_form` with both forms -- so that the spread of a fitted quantity over the seeds
    (:func:`spread`) says how many of its digits mean something.

    Returns lists with one entry per seed, under three kinds of key (``<optimiser>`` is ``"bon"``
    for best-of-n, ``"tilted"`` for the KL-regularised optimum):

    - ``"<optimiser>-<form>"``: the fit, ``{"alpha", "beta", "rmse", "peak_kl", "safe_kl"}``;
      ``peak_kl`` and ``safe_kl`` (the KL reaching ``fraction`` of the fitted peak,
      :func:`safe_kl_budget`) are ``nan`` for a fit without a peak;
    - ``"<optimiser>"``: the sweep's own peak, ``{"peak_kl", "peak_gain"}`` (its argmax, no fit);
    - ``"proxy"``: ``{"cos_gold"}``, the cosine between the proxy's and the gold reward's weights.
    """
    if ns is None and betas is None:
        raise ValueError("give ns (best-of-n sweep), betas (tilted sweep) or both")
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"need at least two distinct seeds, got {seeds}")
    if not (0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    out: dict[str, dict[str, list[float]]] = {"proxy": {"cos_gold": []}}
    for seed in seeds:
        proxy = proxy_from_comparisons(world, n_pairs, seed=seed)
        w = torch.linalg.lstsq(world.features, proxy[:, None]).solution.flatten()
        out["proxy"]["cos_gold"].append(float(torch.nn.functional.cosine_similarity(w, world.gold_weights, dim=0)))
        sweeps = []
        if ns is not None:
            sweeps.append(("bon", best_of_n_sweep(world, proxy, ns)))
        if betas is not None:
            sweeps.append(("tilted", tilted_sweep(world, proxy, betas)))
        for key, rows in sweeps:
            peak = out.setdefault(key, {"peak_kl": [], "peak_gain": []})
            k = max(range(len(rows["gold"])), key=rows["gold"].__getitem__)
            peak["peak_kl"].append(rows["kl"][k])
            peak["peak_gain"].append(rows["gold"][k])
            for form in FORMS:
                fit = fit_form(rows["kl"], rows["gold"], form)  # type: ignore[arg-type]
                try:
                    budget = safe_kl_budget(fit.alpha, fit.beta, form, fraction)  # type: ignore[arg-type]
                    peak_kl, safe_kl = budget["peak_kl"], budget["kl"]
                except ValueError:  # the fitted form has no interior maximum
                    peak_kl = safe_kl = float("nan")
                entry = out.setdefault(
                    f"{key}-{form}", {"alpha": [], "beta": [], "rmse": [], "peak_kl": [], "safe_kl": []}
                )
                entry["alpha"].append(fit.alpha)
                entry["beta"].append(fit.beta)
                entry["rmse"].append(fit.rmse)
                entry["peak_kl"].append(peak_kl)
                entry["safe_kl"].append(safe_kl)
    return out
