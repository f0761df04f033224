"""``dmlkit index build`` refuses to rebuild an index a running ``dmlkit serve`` holds:
the server's shutdown checkpoint would write its old index over the build."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")
pytest.importorskip("fcntl", reason="the index lock is a POSIX flock")

from test_serve5_store_ownership import make_index, state  # noqa: E402

from dmlkit.cli.main import app  # noqa: E402


def test_index_build_refuses_an_index_being_served_and_leaves_it(tmp_path):
    from dmlkit.service import DurableIndex

    idx = make_index(tmp_path)
    emb = tmp_path / "emb.npz"
    np.savez(emb, embeddings=np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32),
             labels=np.arange(6))
    store = DurableIndex(idx)  # as dmlkit serve holds it
    try:
        before = state(idx)
        result = CliRunner().invoke(app, ["index", "build", str(emb), "--out", str(idx)])
        assert result.exit_code != 0
        assert "in use by another dmlkit serve" in result.output
        assert state(idx) == before  # the served index is untouched
    finally:
        store.close()
    result = CliRunner().invoke(app, ["index", "build", str(emb), "--out", str(idx)])
    assert result.exit_code == 0, result.output  # once the server stopped, it builds
    assert "indexed 6 embeddings" in result.output
