"""``dmlkit serve --max-k``: the per-query neighbour limit the OpenAPI schema names is an
option of the command, checked like the other limits."""

import numpy as np
import pytest
from cli_helpers import error_line
from typer.testing import CliRunner

from dmlkit.cli.main import app

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")
pytest.importorskip("uvicorn")
runner = CliRunner()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """An index and a key file; the server's config is kept and the command stops there
    (with an error line: nothing is served)."""
    import dmlkit.service as service
    from dmlkit.index import ExactIndex

    index = ExactIndex(4)
    index.add(np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32),
              labels=np.arange(10) % 2)  # fmt: skip
    index.save(tmp_path / "idx")
    (tmp_path / "keys.txt").write_text("k" * 24 + "\n")
    seen = {}

    def keep(store, keys, embedder, config, kit=None):
        seen["config"] = config
        raise ValueError("config seen")

    monkeypatch.setattr(service, "create_app", keep)

    def serve(*extra):
        return runner.invoke(app, ["serve", "--index", str(tmp_path / "idx"),
                                   "--api-keys-file", str(tmp_path / "keys.txt"),
                                   "--port", "0", *extra])  # fmt: skip

    return serve, seen


def test_max_k_sets_the_services_neighbour_limit(served):
    serve, seen = served
    assert "config seen" in error_line(serve("--max-k", "10"))
    assert seen["config"].max_k == 10
    assert "config seen" in error_line(serve())
    assert seen["config"].max_k == 1000


def test_max_k_below_one_is_refused_before_the_index_opens(served):
    serve, seen = served
    res = serve("--max-k", "0")
    assert res.exit_code == 1
    assert "--max-k" in error_line(res)
    assert "config" not in seen
