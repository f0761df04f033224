"""``dmlkit serve`` refuses, before opening the index, settings under which it could not
listen or would refuse every request; a failed bind is the one "could not listen" line."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

from dmlkit.cli.main import app  # noqa: E402

runner = CliRunner()
KEY = "m" * 24 + "-mend4-key"


@pytest.fixture
def folder(tmp_path):
    from dmlkit.index import ExactIndex

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "idx")
    (tmp_path / "keys.txt").write_text(KEY + "\n")
    return tmp_path


def serve(root, *extra):
    return runner.invoke(app, ["serve", "--index", str(root / "idx"), "--api-keys-file",
                               str(root / "keys.txt"), *extra])


@pytest.mark.parametrize("args, words", [
    (["--port", "70000"], "--port must be 0..65535"),
    (["--port", "-1"], "--port must be 0..65535"),
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--max-body-mb", "0"], "--max-body-mb must be a positive number"),
    (["--max-body-mb", "nan"], "--max-body-mb must be a positive number"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    (["--verify-threshold", "nan"], "--verify-threshold must be a finite number"),
    (["--identify-threshold", "inf"], "--identify-threshold must be a finite number"),
    (["--rate", "nan"], "--rate must be a positive number"),
    (["--burst", "0"], "--burst must be >= 1"),
])
def test_bad_settings_are_one_line_before_the_index_is_opened(folder, monkeypatch, args,
                                                               words):
    import dmlkit.service

    def opened(*a, **k):  # the settings are checked first
        raise AssertionError("the index was opened")

    monkeypatch.setattr(dmlkit.service, "DurableIndex", opened)
    res = serve(folder, *args)
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {words}"), res.output


def test_service_config_refuses_limits_that_refuse_everything():
    from dmlkit.service import ServiceConfig

    for bad in ({"max_batch": 0}, {"max_body_bytes": 0}, {"rate": float("nan")},
                {"burst": 0}, {"verify_threshold": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServiceConfig(**bad)
    ServiceConfig(verify_threshold=-1.0)  # a finite one passes


@pytest.mark.parametrize("error", [OSError(99, "Cannot assign requested address"),
                                   OverflowError("bind(): port must be 0-65535.")])
def test_a_bind_error_is_the_could_not_listen_line(folder, monkeypatch, error):
    import dmlkit.cli.serve as serve_cli

    class Server:
        started = False

        def run(self):
            raise error

    monkeypatch.setattr(serve_cli, "_server", lambda *a, **k: Server())
    res = serve(folder, "--port", "8123")
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not listen on "
                                                   "127.0.0.1:8123"), res.output
    assert "choose another --port" in lines[0]
    assert "serving" not in res.output
