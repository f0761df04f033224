"""Interrupts of a training run: SIGTERM told apart from Ctrl-C, and the ``train.log``
line of a run an interrupt stopped."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dmlkit.training.run_dir import resume_command
from dmlkit.training.stop_message import stop_message


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt (so that atomic writes unwind and remove their
    temporary files, and every ``except KeyboardInterrupt`` handles it as Ctrl-C)."""

    def __str__(self) -> str:
        return "terminated (SIGTERM)"


def _terminate(signum: int, frame: object) -> None:  # noqa: ARG001
    raise Terminated


@contextmanager
def sigterm_as_terminated() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated`; the handler before is
    restored after. In a thread other than the main one (no handler can be set there),
    or where SIGTERM is ignored, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    if before is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def interrupt_reason(err: BaseException) -> str:
    """What stopped a run, in words: ``terminated (SIGTERM)``, ``interrupted`` (Ctrl-C,
    or SIGTERM where the handler raises a plain interrupt)."""
    return str(err) if isinstance(err, Terminated) else "interrupted"


def stop_line(trainer: Any, err: BaseException, trained: int | None) -> str:
    """:func:`~dmlkit.training.stop_message.stop_message`, an interrupt named in words
    (``(terminated (SIGTERM))``, ``(interrupted)``) instead of its exception's empty
    text (``(KeyboardInterrupt: )``). A run that diverged (``FloatingPointError``: a
    non-finite loss, embeddings or weights) is not offered a resume, which would go on
    with the same settings (another rate is refused) to the same end."""
    line = stop_message(trainer, err, trained)
    if isinstance(err, FloatingPointError) and trainer.out_dir is not None:
        resume = f"; continue with: {resume_command(trainer.out_dir)}"
        if line.endswith(resume):
            return line[: -len(resume)] + ("; a resume (same settings) would diverge again: "
                                           "train a new run")
    if not isinstance(err, KeyboardInterrupt):
        return line
    text = str(err).strip().splitlines()
    shown = f"({type(err).__name__}: {text[0][:300] if text else ''}"
    return line.replace(shown, f"({interrupt_reason(err)}", 1)


__all__ = ["Terminated", "interrupt_reason", "sigterm_as_terminated", "stop_line"]
