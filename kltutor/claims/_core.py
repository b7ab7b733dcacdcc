"""The ledger's machinery: :class:`Claim`, the registry and the ``_claim`` decorator that the topic
modules use, and the helpers their checks share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


class ClaimError(AssertionError):
    """Raised when a check does not confirm its claim."""


def _require(condition: object, message: str) -> None:
    if not bool(condition):
        raise ClaimError(message)


@dataclass(frozen=True)
class Claim:
    """One claim of the book.

    ``statement`` and ``condition`` are MyST Markdown (they are rendered on the ledger page);
    ``source`` is the label of the section that argues and computes the claim; ``check`` recomputes
    it and returns the values it checked (name -> number, bool or short text). ``refuted`` holds
    regular expressions for wrong versions that have appeared in the book; ``needs_condition`` holds
    pairs ``(trigger, condition)``: a sentence of a restatement that matches ``trigger`` must also
    match ``condition``. ``cheatsheet`` says whether a line of the cheat sheet restates the claim.
    """

    id: str
    group: str
    statement: str
    condition: str
    source: str
    check: Callable[[], dict[str, object]] = field(repr=False)
    checked_by: str = ""
    cheatsheet: bool = False
    refuted: tuple[str, ...] = ()
    needs_condition: tuple[tuple[str, str], ...] = ()


#: Ledger sections, in the book's order.
GROUPS: tuple[str, ...] = (
    "KL divergence",
    "Estimators",
    "Placements",
    "beta",
    "Preference optimisation and GRPO",
    "Over-optimisation",
    "Failure modes",
    "KL in practice",
    "On-policy distillation",
    "Library facts",
)

_REGISTRY: dict[str, Claim] = {}


def _claim(id: str, group: str, statement: str, condition: str, source: str, checked_by: str = "", **kw):
    def register(fn: Callable[[], dict[str, object]]) -> Callable[[], dict[str, object]]:
        if id in _REGISTRY:
            raise ValueError(f"duplicate claim id {id!r}")
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}")
        _REGISTRY[id] = Claim(
            id, group, statement, condition, source, fn, checked_by or f"{fn.__module__}.{fn.__name__}", **kw
        )
        return fn

    return register


def _toy():
    from kltutor.toys import BinaryAutoregressive

    return BinaryAutoregressive(0.3, -0.4), BinaryAutoregressive(-0.2, 0.5)


def _max_err(a, b) -> float:
    return float((a - b).abs().max())


def _lbfgs_tabular(loss_of_logp, n: int, init=None):
    import torch

    th = (torch.zeros(n, dtype=torch.float64) if init is None else init.clone()).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [th], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = loss_of_logp(torch.log_softmax(th, 0))
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(th.detach(), 0)


def _pairs(n: int):
    import torch

    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    return i[keep], j[keep]
