"""A KL-regularised K-armed bandit with an exact optimum for every beta (``ch-schedules``).

One prompt, K responses ("arms"), a reference policy ``ref_probs`` and a deterministic reward per
arm. For the objective ``J(pi) = E_pi[r] - beta * KL(pi || pi_ref)`` the maximiser is the tilted
reference ``pi*_beta ∝ pi_ref * exp(r / beta)``, so the reward and the KL of the optimum are exact
functions of beta: ``E[r](beta)`` rises and ``KL(beta)`` falls as beta shrinks, and

    dE[r]/dbeta = -Var_{pi*}(r) / beta**2,      dKL/dbeta = -Var_{pi*}(r) / beta**3.

:func:`simulate_training` turns the bandit into a stand-in for an RLHF run: at each step the policy's
logits move a fraction ``rate`` of the way toward the optimum for the *current* beta, and the KL the
controller sees is a k1 or k3 sample mean over ``n_samples`` arms drawn from the policy (computed with
:mod:`kltutor.estimators`), so it is noisy exactly as a minibatch estimate is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kltutor import divergences
from kltutor._validation import positive_number, probabilities
from kltutor.estimators import estimate_kl, get_estimator
from kltutor.preference import optimal_policy

__all__ = ["KLBandit", "simulate_training", "TrainingRun", "softmax_policy_gradient"]

D64 = torch.float64


def _as_vector(name: str, x) -> Tensor:
    t = torch.as_tensor(x, dtype=D64)
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"{name} must be a 1-D vector with at least 2 arms, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds non-finite values")
    return t


def _check_beta(beta) -> float:
    return positive_number("beta", beta)


def softmax_policy_gradient(
    logits: Tensor, rewards: Tensor, beta: float, ref_logp: Tensor, natural: bool = False
) -> Tensor:
    """The exact ascent direction on softmax logits ``z`` for ``J(pi) = E_pi[r] - beta KL(pi || pi_ref)``.

    With ``pi = softmax(z)`` and the per-response advantage ``A = r - beta (log pi - log pi_ref)``, the
    gradient is ``dJ/dz = pi * (A - E_pi[A])`` (``natural=False``); ``natural=True`` returns ``A``
    itself, the mirror-descent (natural-gradient) step on ``log pi`` (up to a constant). Over the last
    axis; ``beta = 0`` drops the KL term. The one implementation of this step: chapter 6's gradient
    path, chapter 7's KL collapse and runaway, chapter 8's moving reference all call it.
    """
    logp = torch.log_softmax(logits, -1)
    adv = rewards - beta * (logp - ref_logp)
    if natural:
        return adv
    pi = logp.exp()
    return pi * (adv - (pi * adv).sum(-1, keepdim=True))


@dataclass(frozen=True)
class KLBandit:
    """A bandit with reference probabilities ``ref_probs`` (> 0, summing to 1) and ``rewards``."""

    ref_probs: Tensor
    rewards: Tensor

    def __post_init__(self):
        r = _as_vector("rewards", self.rewards)
        # strictly positive: the KL to the reference must be finite
        ref = probabilities("ref_probs", self.ref_probs, vector=True, min_size=2, positive=True, dtype=D64)
        if ref.shape != r.shape:
            raise ValueError(
                f"ref_probs and rewards must have the same shape, got {tuple(ref.shape)} and {tuple(r.shape)}"
            )
        object.__setattr__(self, "ref_probs", ref / ref.sum())
        object.__setattr__(self, "rewards", r)

    @classmethod
    def random(cls, n_arms: int, generator: torch.Generator | None = None, ref_temperature: float = 1.0) -> KLBandit:
        """Standard-normal rewards and a softmax reference of standard-normal logits / ``ref_temperature``."""
        if n_arms < 2:
            raise ValueError(f"n_arms must be >= 2, got {n_arms}")
        r = torch.randn(n_arms, generator=generator, dtype=D64)
        ref = torch.softmax(torch.randn(n_arms, generator=generator, dtype=D64) / ref_temperature, -1)
        return cls(ref, r)

    @property
    def n_arms(self) -> int:
        return self.rewards.numel()

    def scaled(self, c: float) -> KLBandit:
        """The same bandit with every reward multiplied by ``c > 0``."""
        return KLBandit(self.ref_probs, self.rewards * _check_beta(c))

    # exact quantities -------------------------------------------------------------------------
    def optimal_policy(self, beta: float) -> Tensor:
        """The maximiser of ``E[r] - beta KL(pi||pi_ref)``: ``pi_ref exp(r/beta) / Z`` (:func:`kltutor.preference.optimal_policy`)."""
        return optimal_policy(self.ref_probs, self.rewards, _check_beta(beta))

    def expected_reward(self, pi: Tensor) -> Tensor:
        return (pi * self.rewards).sum(-1)

    def kl(self, pi: Tensor) -> Tensor:
        """Exact ``KL(pi || pi_ref)`` (0 log 0 = 0)."""
        pi = torch.as_tensor(pi, dtype=D64)
        return divergences.kl(pi, self.ref_probs.expand_as(pi))

    def objective(self, pi: Tensor, beta: float) -> Tensor:
        """``J(pi) = E_pi[r] - beta KL(pi||pi_ref)``."""
        return self.expected_reward(pi) - _check_beta(beta) * self.kl(pi)

    def optimal_reward(self, beta: float) -> float:
        return self.expected_reward(self.optimal_policy(beta)).item()

    def optimal_kl(self, beta: float) -> float:
        return self.kl(self.optimal_policy(beta)).item()

    def reward_variance(self, beta: float) -> float:
        """``Var_{pi*_beta}(r)``: it sets both derivatives, ``dE[r]/dbeta = -Var/beta^2``, ``dKL/dbeta = -Var/beta^3``."""
        pi = self.optimal_policy(beta)
        m = (pi * self.rewards).sum()
        return (pi * (self.rewards - m) ** 2).sum().item()

    def curves(self, betas) -> dict[str, np.ndarray]:
        """Exact ``reward``, ``kl`` and ``variance`` of the optimum on a grid of betas."""
        betas = np.asarray(betas, dtype=float)
        out = {"beta": betas, "reward": [], "kl": [], "variance": []}
        for b in betas:
            pi = self.optimal_policy(float(b))
            out["reward"].append(self.expected_reward(pi).item())
            out["kl"].append(self.kl(pi).item())
            out["variance"].append(self.reward_variance(float(b)))
        return {k: np.asarray(v) for k, v in out.items()}

    def max_kl(self) -> float:
        """``sup_beta KL(pi*_beta || pi_ref) = -log pi_ref(best arms)``: the KL of the greedy limit beta -> 0."""
        best = self.rewards == self.rewards.max()
        return -math.log(self.ref_probs[best].sum().item())

    def beta_for_kl(self, target: float, lo: float = 1e-6, hi: float = 1e6, iters: int = 200) -> float:
        """The beta whose optimum has ``KL = target`` (bisection in log beta; KL is decreasing in beta)."""
        t = _check_beta(target)
        if t >= self.max_kl():
            raise ValueError(
                f"target KL {t:.4g} is unreachable: no beta gives more than {self.max_kl():.4g} nats on this bandit"
            )
        a, b = math.log(lo), math.log(hi)
        for _ in range(iters):
            m = 0.5 * (a + b)
            if self.optimal_kl(math.exp(m)) > t:
                a = m
            else:
                b = m
        return math.exp(0.5 * (a + b))

    def maximize_numerically(self, beta: float, steps: int = 500) -> Tensor:
        """Maximise ``J`` over softmax logits with L-BFGS, knowing nothing of the closed form."""
        b = _check_beta(beta)
        logits = torch.zeros(self.n_arms, dtype=D64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [logits],
            lr=1.0,
            max_iter=steps,
            tolerance_grad=1e-14,
            tolerance_change=1e-16,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            logp = torch.log_softmax(logits, -1)
            pi = logp.exp()
            loss = -((pi * self.rewards).sum() - b * (pi * (logp - torch.log(self.ref_probs))).sum())
            loss.backward()
            return loss

        opt.step(closure)
        return torch.softmax(logits.detach(), -1)


@dataclass
class TrainingRun:
    """The trace of :func:`simulate_training`, one entry per step."""

    beta: np.ndarray  # beta used at each step
    kl: np.ndarray  # exact KL(pi_t || pi_ref) after the step
    kl_measured: np.ndarray  # the noisy estimate the controller saw
    reward: np.ndarray  # exact E_{pi_t}[r] after the step


def simulate_training(
    bandit: KLBandit,
    schedule,
    n_steps: int,
    rate: float = 0.1,
    n_samples: int = 64,
    estimator: str = "k3",
    generator: torch.Generator | None = None,
    controller_n_steps: int = 1,
) -> TrainingRun:
    """A stand-in for an RLHF run on the bandit, driven by ``schedule`` (see :mod:`kltutor.schedules`).

    The policy starts at the reference. At step t, with ``beta_t = schedule.beta``, its logits move a
    fraction ``rate`` toward those of ``pi*_{beta_t}`` (``log pi_{t+1} = (1-rate) log pi_t + rate log
    pi*`` up to normalisation); the KL is then measured by drawing ``n_samples`` arms from ``pi_{t+1}``
    and averaging ``estimator`` ("k1" or "k3") over them, and ``schedule.update(measured,
    controller_n_steps)`` gives ``beta_{t+1}``. ``n_samples=None`` measures the exact KL (no noise).

    Because every ``pi*_beta`` is a tilt of ``pi_ref``, so is every ``pi_t``: the policy is
    ``pi*`` at an effective beta that lags behind the schedule's.
    """
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if n_samples is not None and (not isinstance(n_samples, int) or n_samples < 1):
        raise ValueError(f"n_samples must be an integer >= 1 or None, got {n_samples!r}")
    get_estimator(estimator)  # a clear error for an unknown name
    log_ref = torch.log(bandit.ref_probs)
    logp = log_ref.clone()
    rec = {k: np.empty(n_steps) for k in ("beta", "kl", "kl_measured", "reward")}
    for t in range(n_steps):
        beta = schedule.beta
        target_logp = torch.log(bandit.optimal_policy(beta))
        logp = torch.log_softmax((1 - rate) * logp + rate * target_logp, -1)
        pi = logp.exp()
        kl = bandit.kl(pi).item()
        if n_samples is None:
            measured = kl
        else:
            idx = torch.multinomial(pi, n_samples, replacement=True, generator=generator)
            measured = estimate_kl(logp[idx], log_ref[idx], estimator=estimator).item()
        rec["beta"][t] = beta
        rec["kl"][t] = kl
        rec["kl_measured"][t] = measured
        rec["reward"][t] = bandit.expected_reward(pi).item()
        schedule.update(measured, n_steps=controller_n_steps)
    return TrainingRun(**rec)
