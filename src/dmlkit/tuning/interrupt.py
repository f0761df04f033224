"""Ctrl-C in a tune worker: the trial it interrupts ends FAIL, and the worker stops.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, and two places
of a worker lose it: a storage callback (SQLAlchemy's connection cleanup) whose exceptions
are ignored, so the worker runs on to the end of the study; and a module imported lazily
while a class is made, where it becomes a ``RuntimeError``. :class:`SigintGuard` instead
records the first Ctrl-C and raises it only where that is safe (:meth:`interruptible`:
training, reading the data; not inside storage code, even there) or at the next check
(:meth:`check`: between storage operations, after each epoch); an error raised after it
(the ``RuntimeError`` of an import it stopped) is the interrupt. A second Ctrl-C raises
at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any


class SigintGuard:
    """Within ``with SigintGuard() as guard:``, SIGINT sets ``guard.requested``; it raises
    ``KeyboardInterrupt`` inside :meth:`interruptible` blocks and at :meth:`check`, and
    everywhere once requested before. The previous handler is restored on exit. Outside
    the main thread, or where SIGINT is ignored (a background job), nothing is installed.
    """

    def __init__(self) -> None:
        self.requested = False
        self._depth = 0  # nesting of interruptible blocks
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> SigintGuard:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous not in (signal.SIG_IGN, None):
                self._previous = previous
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        again = self.requested
        self.requested = True
        if again or (self._depth and not _fragile(frame)):
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block that a Ctrl-C interrupts at once (no storage operation in it)."""
        self.check()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed (and lost on its way)."""
        if self.requested:
            raise KeyboardInterrupt


#: code a KeyboardInterrupt must not land in: the storage's (its cleanup callbacks ignore
#: exceptions; a write it stops leaves the study half-told)
_FRAGILE = ("/sqlalchemy/", "/optuna/")


def _fragile(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers runs code of :data:`_FRAGILE`."""
    while frame is not None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if any(part in name for part in _FRAGILE):
            return True
        frame = frame.f_back
    return False


__all__ = ["SigintGuard"]
