"""The verifiable task: small-number addition ``"23+41="`` -> ``"64"``, rewarded exactly (chapter ``ch-capstone``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AdditionTask"]


@dataclass(frozen=True)
class AdditionTask:
    """Prompts ``"a+b="`` with ``a, b`` uniform in ``[0, max_operand]``; the answer is ``str(a+b)``.

    The reward is computed from the completion text (everything before the first EOS):
    1 for exactly the right number terminated by EOS, ``format_reward`` for digits terminated by EOS
    that are the wrong number, 0 otherwise (no EOS within the budget, or a non-digit).
    """

    max_operand: int = 49
    format_reward: float = 0.0

    @property
    def alphabet(self) -> str:
        """Every character a prompt or an answer can contain."""
        return "0123456789+="

    @property
    def answer_len(self) -> int:
        return len(str(2 * self.max_operand))

    def sample(self, n: int, generator: torch.Generator) -> list[tuple[int, int]]:
        """``n`` operand pairs drawn with ``generator`` (so a run's prompts are reproducible)."""
        ab = torch.randint(0, self.max_operand + 1, (n, 2), generator=generator)
        return [(int(a), int(b)) for a, b in ab.tolist()]

    @staticmethod
    def prompt(a: int, b: int) -> str:
        return f"{a}+{b}="

    @staticmethod
    def answer(a: int, b: int) -> str:
        return str(a + b)

    def reward(self, completion: str, terminated: bool, a: int, b: int) -> float:
        """The exact reward of one completion (the text before EOS; ``terminated``: EOS was emitted)."""
        if not terminated:
            return 0.0
        if completion == self.answer(a, b):
            return 1.0
        if completion.isdigit():
            return self.format_reward
        return 0.0
