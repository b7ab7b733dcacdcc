"""Ctrl-C and SIGTERM during a capstone run keep the work (chapter ``ch-capstone``).

While :class:`Interrupts` is entered, SIGINT and SIGTERM are caught. Inside the training loop
(:attr:`Interrupts.deferring` set) the first one only asks the loop to stop: it finishes the step in
progress, writes a checkpoint (atomically, as every checkpoint) and raises :class:`RunInterrupted`, whose
message says how to resume. A second signal, or a signal outside the loop (while the reference policy
trains, say), raises :class:`RunInterrupted` at once. Both are ``KeyboardInterrupt``\\ s, so code that
handles Ctrl-C handles them; the command line prints their one-line message and exits with 128 + the
signal number (130 for Ctrl-C, 143 for SIGTERM). Outside the main thread nothing is installed.
"""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["Interrupts", "RunInterrupted"]

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; ``signum`` is the signal, the message says what was kept
    (``complete``: all of it, with how to resume)."""

    def __init__(self, message: str, signum: int = signal.SIGINT, complete: bool = False):
        super().__init__(message)
        self.signum = signum
        self.complete = complete


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupts:
    """``with Interrupts() as stop: ...``: catch SIGINT and SIGTERM (see the module's docstring).

    ``stop.deferring = True`` while a first signal should only set :attr:`signum` (the loop checks it
    after each step); the previous handlers are restored on exit.
    """

    def __init__(self):
        self.signum: int | None = None
        self.deferring = False
        self._previous: dict = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal_name(signum)
        if self.deferring and self.signum is None:
            self.signum = signum
            print(
                f"\n{name} received: finishing the step in progress, then writing a checkpoint so that --resume "
                f"continues the run (send {name} again, or press Ctrl-C, to stop at once without it)",
                file=sys.stderr,
                flush=True,
            )
            return
        again = " again" if self.signum is not None else ""
        self.deferring = False
        raise RunInterrupted(f"interrupted by {name}{again}: stopped at once", signum)
