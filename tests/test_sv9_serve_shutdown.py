"""A stopping server does not wait forever for a client that holds a request body open:
after ``GRACEFUL_SHUTDOWN_S`` it closes the connection, stops and checkpoints the index
(a real uvicorn on a loopback port, in a thread, bounded)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

KEY = "w" * 24 + "-sv9-shutdown"


def test_server_config_bounds_the_graceful_shutdown():
    from dmlkit.cli import serve

    server = serve._server(uvicorn, lambda *a: None, "127.0.0.1", 0, lambda url: None)
    assert server.config.timeout_graceful_shutdown == serve.GRACEFUL_SHUTDOWN_S
    assert 1 <= serve.GRACEFUL_SHUTDOWN_S <= 60


def test_a_half_sent_body_does_not_keep_a_stopping_server_alive(tmp_path, monkeypatch,
                                                                 capfd):
    from dmlkit.cli import serve
    from dmlkit.index import ExactIndex
    from dmlkit.service import ApiKeys, DurableIndex, create_app

    monkeypatch.setattr(serve, "GRACEFUL_SHUTDOWN_S", 1)  # (the test need not wait long)
    index = ExactIndex(4)
    index.save(tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    urls: list[str] = []
    server = serve._server(uvicorn, create_app(store, ApiKeys([KEY])), "127.0.0.1", 0,
                           urls.append)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not urls and time.time() < deadline:
            time.sleep(0.05)
        assert urls, "the server did not start"
        port = int(urls[0].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
                           + b"\r\nContent-Type: application/json\r\nContent-Length: 1000"
                           b"\r\n\r\n" + b'{"k": 1, "')  # 10 of 1000 bytes, then nothing
            time.sleep(0.3)
            server.should_exit = True  # as SIGTERM does
            thread.join(20)
            assert not thread.is_alive(), "the server is still waiting for the body"
    finally:
        server.should_exit = server.force_exit = True
        thread.join(10)
        store.close()
    assert server.started
    err = capfd.readouterr().err  # (the cut-off request answered: no traceback logged)
    assert "Traceback" not in err and "CancelledError" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) <= 1, err
