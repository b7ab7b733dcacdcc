"""Schedules and controllers for the KL coefficient beta (introduced in ``ch-schedules``).

Every schedule is built the same way and has the same small interface:

- ``Schedule(beta, target=None, horizon=None, end=None)``: the starting beta, then the settings the
  rule reads (its :attr:`~BetaSchedule.uses`); a setting the rule does not read must stay ``None``
  (passing one is refused rather than silently ignored), so :func:`make_schedule` builds any of them
  from the same keywords;
- ``.beta``: the coefficient to use for the next batch;
- ``.update(kl, n_steps=1) -> float``: report the KL measured on the batch just trained on (and how
  many samples/steps it covered) and get the next beta.

Open-loop schedules (fixed, annealing) ignore ``kl``; controllers use it. The rules, and who they
come from -- they are different rules and are often conflated:

- :class:`FixedKL`: a constant beta.
- :class:`AdaptiveKLController`: Ziegler et al. (2019, arXiv:1909.08593, section 2.2), the
  controller of TRL's legacy ``PPOTrainer`` (``adap_kl_ctrl``) and verl's ``kl_ctrl.type=adaptive``:
  ``e = clip(KL/target - 1, -0.2, 0.2)``, ``beta <- beta * (1 + e * n_steps / horizon)``. It controls
  the KL to the *reference* policy.
- :class:`PPOPenaltyKL`: the adaptive-penalty rule of the PPO paper (Schulman et al. 2017,
  arXiv:1707.06347, section 4): halve beta when ``KL < target/1.5``, double it when
  ``KL > 1.5 * target``. In PPO it controls ``KL(pi_old || pi_theta)``, the step size of one policy
  update (a soft trust region), not the distance to a reference model.
- :class:`LinearBeta`, :class:`CosineBeta`, :class:`ExponentialBeta`: annealing from ``beta`` to
  ``end`` over ``horizon`` steps (counted in the unit of ``n_steps``: updates when ``n_steps=1``, samples
  when the trainer reports the batch size, as for the adaptive controller), then constant.
"""

from __future__ import annotations

import math
from typing import Any

from kltutor import _validation
from kltutor._validation import positive_number

__all__ = [
    "BetaSchedule",
    "FixedKL",
    "AdaptiveKLController",
    "PPOPenaltyKL",
    "LinearBeta",
    "CosineBeta",
    "ExponentialBeta",
    "SCHEDULES",
    "make_schedule",
]


def _positive(name: str, value: Any) -> float:
    return positive_number(name, value)


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r} (a NaN KL usually means a bad log-probability)")
    return v


def _non_negative(name: str, value: Any) -> float:
    return _validation.nonnegative_number(name, value)


def _count(name: str, value: Any) -> int:
    return _validation.integer(name, value, 1)


class BetaSchedule:
    """Base class: holds ``beta`` and counts updates. Subclasses implement :meth:`next_beta`.

    The constructor is the same for every schedule. ``uses`` names the settings among ``target``,
    ``horizon`` and ``end`` that the rule reads: each of them is required, every other one must be
    ``None``. ``min_beta`` is ``"positive"`` for rules that scale or interpolate beta (it must be > 0)
    and ``"non-negative"`` for a fixed beta (0 switches the penalty off).
    """

    uses: tuple[str, ...] = ()
    min_beta: str = "positive"

    def __init__(
        self, beta: float, target: float | None = None, horizon: float | None = None, end: float | None = None
    ):
        name = type(self).__name__
        self._beta = _non_negative("beta", beta) if self.min_beta == "non-negative" else _positive("beta", beta)
        for setting, value in (("target", target), ("horizon", horizon), ("end", end)):
            if setting in self.uses and value is None:
                raise TypeError(f"{name} needs {setting}")
            if setting not in self.uses and value is not None:
                raise TypeError(f"{name} does not use {setting} (it reads {', '.join(self.uses) or 'beta only'})")
        self.target = None if target is None else _positive("target", target)
        self.horizon = None if horizon is None else _positive("horizon", horizon)
        self.end = None if end is None else _positive("end", end)
        self.n_updates = 0

    @property
    def beta(self) -> float:
        """The KL coefficient to use for the next batch."""
        return self._beta

    def update(self, kl: float | None = None, n_steps: int = 1) -> float:
        """Report the KL measured on the last batch (``n_steps`` samples or steps); return the new beta.

        ``kl`` may be negative (a k1 estimate of a small KL often is) but must be finite.
        """
        n_steps = _count("n_steps", n_steps)
        kl_value = None if kl is None else _finite("kl", kl)
        self._beta = self.next_beta(kl_value, n_steps)
        self.n_updates += 1
        return self._beta

    def next_beta(self, kl: float | None, n_steps: int) -> float:  # pragma: no cover - abstract
        """The schedule's rule: the beta that follows the current one after a batch with measured ``kl``
        (already checked) and ``n_steps`` steps. Pure: :meth:`update` calls it and stores the result."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, float | int]:
        """What changes as the schedule runs (its settings come from the constructor): ``beta`` and
        ``n_updates``, and what a subclass adds. :meth:`load_state_dict` puts it back (a checkpoint)."""
        return {"beta": self._beta, "n_updates": self.n_updates}

    # the keys of a checkpoint written before state_dict existed (vars() of the schedule): the settings
    # among them were the constructor's, equal to this schedule's on a resume, and are not read
    _LEGACY_SETTINGS = frozenset({"target", "horizon", "end", "clip", "tolerance", "factor"})

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, on a schedule built with the same settings."""
        state = dict(state)
        if "_beta" in state:  # a checkpoint written before state_dict existed
            state["beta"] = state.pop("_beta")
            state = {k: v for k, v in state.items() if k not in self._LEGACY_SETTINGS}
        want = set(self.state_dict())
        if set(state) != want:
            raise ValueError(
                f"{type(self).__name__} state must hold {sorted(want)}, got {sorted(state)} (another schedule's?)"
            )
        self._load(state)

    def _load(self, state: dict) -> None:
        self._beta = _non_negative("beta", state["beta"])
        self.n_updates = _validation.integer("n_updates", state["n_updates"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self._beta:.6g}, n_updates={self.n_updates})"


class FixedKL(BetaSchedule):
    """A constant beta (0 allowed: no penalty); ``update`` only validates its input."""

    min_beta = "non-negative"

    def next_beta(self, kl: float | None, n_steps: int) -> float:
        return self._beta


class AdaptiveKLController(BetaSchedule):
    """Ziegler et al. (2019)'s controller, as in verl: steer the KL to the reference toward ``target``.

    ``e = clip(kl / target - 1, -clip, +clip)`` and ``beta <- beta * (1 + e * n_steps / horizon)``.
    The clip (0.2 in the paper and in verl) bounds how far one noisy KL measurement can move beta.
    verl 0.9.1's ``AdaptiveKLController`` (``algorithm.kl_ctrl.type: adaptive``) computes the same beta
    sequence (library fact ``verl-adaptive-kl-controller``, run by ``tests/test_library_facts.py``). History:
    written for this book after reading TRL's old ``AdaptiveKLController`` (``trl/trainer/utils.py`` at the
    development commit 001ea5fcecb5cb01d6d3944ded18947687bcd7bb, before TRL dropped its PPO trainer; it
    passed ``n_steps = batch_size`` and defaulted to ``init_kl_coef=0.2, target=6, horizon=10000``).

    Because the multiplicative step is proportional to the error, ``log beta`` accumulates the errors:
    in control terms this is an integral controller on ``log beta`` (``ch-schedules``).
    """

    uses = ("target", "horizon")

    def __init__(
        self,
        beta: float,
        target: float | None = None,
        horizon: float | None = None,
        end: float | None = None,
        *,
        clip: float = 0.2,
    ):
        super().__init__(beta, target, horizon, end)
        self.clip = _positive("clip", clip)

    def error(self, kl: float) -> float:
        """The clipped proportional error ``clip(kl/target - 1, -clip, clip)``."""
        e = _finite("kl", kl) / self.target - 1.0
        return min(max(e, -self.clip), self.clip)

    def next_beta(self, kl: float | None, n_steps: int) -> float:
        if kl is None:
            raise ValueError("AdaptiveKLController.update needs the measured kl")
        mult = 1.0 + self.error(kl) * n_steps / self.horizon
        if mult <= 0:
            raise ValueError(
                f"n_steps/horizon = {n_steps / self.horizon:.3g} is so large that beta would become <= 0; "
                "the controller assumes n_steps << horizon"
            )
        return self._beta * mult


class PPOPenaltyKL(BetaSchedule):
    """The adaptive-penalty rule of the PPO paper (Schulman et al. 2017, section 4).

    If ``kl < target / tolerance``: ``beta /= factor``; if ``kl > target * tolerance``:
    ``beta *= factor``; otherwise unchanged (the paper uses ``tolerance=1.5``, ``factor=2``).
    ``n_steps`` is ignored: the rule fires once per policy update.
    """

    uses = ("target",)

    def __init__(
        self,
        beta: float,
        target: float | None = None,
        horizon: float | None = None,
        end: float | None = None,
        *,
        tolerance: float = 1.5,
        factor: float = 2.0,
    ):
        super().__init__(beta, target, horizon, end)
        self.tolerance = _positive("tolerance", tolerance)
        self.factor = _positive("factor", factor)
        if self.tolerance <= 1 or self.factor <= 1:
            raise ValueError(f"tolerance and factor must be > 1, got {tolerance!r} and {factor!r}")

    def next_beta(self, kl: float | None, n_steps: int) -> float:
        if kl is None:
            raise ValueError("PPOPenaltyKL.update needs the measured kl")
        if kl < self.target / self.tolerance:
            return self._beta / self.factor
        if kl > self.target * self.tolerance:
            return self._beta * self.factor
        return self._beta


class _Annealing(BetaSchedule):
    """beta(k) = f(k / horizon) between ``beta`` (the start) and ``end`` for k = 0..horizon, then ``end``.

    ``k`` counts what ``update`` reports in ``n_steps``: one per update by default.
    """

    uses = ("horizon", "end")

    def __init__(
        self, beta: float, target: float | None = None, horizon: float | None = None, end: float | None = None
    ):
        super().__init__(beta, target, horizon, end)
        self.start = self._beta
        self.progress = 0

    def value_at(self, k: int) -> float:
        """beta after ``k`` steps (in the unit of ``n_steps``)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an integer >= 0, got {k!r}")
        return self._interp(min(k, self.horizon) / self.horizon)

    def _interp(self, u: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def next_beta(self, kl: float | None, n_steps: int) -> float:
        self.progress += n_steps
        return self.value_at(self.progress)

    def state_dict(self) -> dict[str, float | int]:
        return {**super().state_dict(), "start": self.start, "progress": self.progress}

    def _load(self, state: dict) -> None:
        super()._load(state)
        self.start = _positive("start", state["start"])
        self.progress = _validation.integer("progress", state["progress"])


class LinearBeta(_Annealing):
    """Linear annealing: ``beta = start + (end - start) * u``, ``u = k / horizon``."""

    def _interp(self, u: float) -> float:
        return self.start + (self.end - self.start) * u


class CosineBeta(_Annealing):
    """Cosine annealing: ``beta = end + (start - end) * (1 + cos(pi u)) / 2``."""

    def _interp(self, u: float) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * u))


class ExponentialBeta(_Annealing):
    """Geometric annealing: ``beta = start * (end / start) ** u`` (linear in log beta)."""

    def _interp(self, u: float) -> float:
        return self.start * (self.end / self.start) ** u


SCHEDULES: dict[str, type[BetaSchedule]] = {
    "fixed": FixedKL,
    "adaptive": AdaptiveKLController,
    "ppo-penalty": PPOPenaltyKL,
    "linear": LinearBeta,
    "cosine": CosineBeta,
    "exponential": ExponentialBeta,
}


def make_schedule(name: str, **kwargs: Any) -> BetaSchedule:
    """Build the schedule called ``name`` (one of :data:`SCHEDULES`) from keyword arguments
    (``beta``, and the settings among ``target``, ``horizon``, ``end`` it :attr:`~BetaSchedule.uses`).

    >>> make_schedule("adaptive", beta=0.1, target=6.0, horizon=10_000).beta
    0.1
    >>> make_schedule("linear", beta=1.0, end=0.1, horizon=10).value_at(5)
    0.55
    """
    try:
        cls = SCHEDULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown beta schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TypeError(f"bad arguments for schedule {name!r}: {exc}") from None
