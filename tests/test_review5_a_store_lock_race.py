"""The store's lock file: one removed between the exclusive create and the plain open is
created again by this store, which then removes it on close."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")


def test_a_lock_file_removed_before_the_plain_open_is_made_again_and_removed_on_close(
        tmp_path, monkeypatch):
    import dmlkit.service.store as store
    from dmlkit.index import ExactIndex
    from dmlkit.service import DurableIndex

    index = ExactIndex(4)
    index.add(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    index.save(tmp_path / "idx")
    real_open = os.open
    raced = []

    def racing_open(path, flags, mode=0o777):
        # the first exclusive create finds another store's lock file, which its owner
        # removes before this store's plain open
        if flags & os.O_EXCL and not raced:
            raced.append(path)
            raise FileExistsError(path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(store.os, "open", racing_open)
    durable = DurableIndex(tmp_path / "idx")
    monkeypatch.setattr(store.os, "open", real_open)
    assert raced
    assert durable._made_lock
    durable.close(checkpoint=False)
    assert not durable.lock_path.exists()
