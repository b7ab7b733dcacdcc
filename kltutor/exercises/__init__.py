"""Checkers for the book's coding exercises.

Each checker takes a reader's implementation, runs it against exact answers and returns a
:class:`CheckResult`; ``print(result)`` says what is right or what is wrong. The checkers of each
chapter live in a module of their own (``kltutor.exercises.estimators`` and so on).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CheckResult", "show"]


def show(values, digits: int = 6) -> str:
    """A number, tensor or (nested) list printed with ``digits`` significant figures.

    Checker messages quote the reader's values with it: full ``repr`` digits would differ in their
    last places from one CPU to the next, and six figures are plenty to see what is wrong.
    """
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (list, tuple)):
        return "[" + ", ".join(show(v, digits) for v in values) + "]"
    if isinstance(values, float):
        return f"{values:.{digits}g}"
    return str(values)


@dataclass
class CheckResult:
    """The verdict of a checker: ``passed`` and the messages explaining it."""

    name: str
    passed: bool
    messages: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        head = f"{self.name}: {'correct' if self.passed else 'not yet'}"
        return "\n".join([head, *("  - " + m for m in self.messages)])
