"""A Ctrl-C or SIGTERM arriving while a checkpoint is written stops the run after the
write, not inside it (where it failed torch's serializer half-way)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from dmlkit.training.checkpoint import atomic_write, interrupts_deferred


def test_an_interrupt_inside_a_write_lands_after_it(tmp_path):
    path = tmp_path / "checkpoint.pt"

    def write(f):
        f.write(b"first half ")
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C mid-write
        f.write(b"second half")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write)
    assert path.read_bytes() == b"first half second half"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_sigterm_reaches_the_handler_in_place_after_the_block(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            torch.save({"w": torch.ones(3)}, tmp_path / "x.pt")
            assert seen == []
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is not None
    finally:
        signal.signal(signal.SIGTERM, previous)
