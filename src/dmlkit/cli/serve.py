"""``dmlkit serve``: the HTTP service over a run's model and an index."""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from dmlkit.cli._errors import one_line

#: seconds a stopping server (SIGTERM, Ctrl-C) waits for requests in flight before it
#: closes their connections and checkpoints the index (a client that never finishes
#: sending its body must not keep the server alive)
GRACEFUL_SHUTDOWN_S = 15


def register(app: typer.Typer) -> None:
    @app.command("serve", help=(
        "Serve /embed, /search, /verify, /identify, /items, /health and /metrics.\n\n"
        f"SIGTERM or Ctrl-C stops it: requests in flight get up to {GRACEFUL_SHUTDOWN_S} "
        "seconds to finish, then the index is checkpointed (exit status 130 after Ctrl-C, 0 "
        "after SIGTERM)."))
    def serve(
        run: Path = typer.Option(None, "--run", help="Run directory (its model embeds inputs "
                                 "with torch; not with --onnx)."),
        index: Path = typer.Option(..., "--index", help="Index directory (dmlkit index build)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback "
                                 "unless told otherwise)."),
        port: int = typer.Option(8000, "--port"),
        api_keys_file: Path = typer.Option(None, "--api-keys-file", help="One key per line "
                                           "(else DMLKIT_API_KEYS, comma-separated)."),
        onnx: Path = typer.Option(None, "--onnx", help="Serve this ONNX export (dmlkit "
                                  "export) through onnxruntime instead of a --run."),
        verifier: Path = typer.Option(None, "--verifier", help="A saved Verifier for /verify."),
        verify_threshold: float = typer.Option(
            None, "--verify-threshold", help="/verify accepts pairs whose score is >= this; "
            "the score is the similarity (cosine, ip index) or, on an l2 index, the negative "
            "squared distance (so e.g. -1.0)."),
        identify_threshold: float = typer.Option(
            None, "--identify-threshold", help="/identify knows a query when its nearest "
            "labelled item's score passes this: similarity >= it (cosine, ip index) or, on "
            "an l2 index, squared distance <= it, as /search and /identify report scores."),
        max_batch: int = typer.Option(1024, "--max-batch", help="Most rows of one request."),
        max_k: int = typer.Option(1000, "--max-k", help="Most neighbours per query (k)."),
        max_body_mb: float = typer.Option(8.0, "--max-body-mb", help="Largest request body."),
        rate: float = typer.Option(50.0, "--rate", help="Requests per second per key."),
        burst: int = typer.Option(100, "--burst"),
        checkpoint_every: int = typer.Option(
            1000, "--checkpoint-every", help="Logged writes between index checkpoints (1: "
            "after every write)."),
    ) -> None:
        """Serve /embed, /search, /verify, /identify, /items, /health and /metrics."""
        try:  # the settings first: before the index is opened (and locked)
            check_settings(port=port, max_batch=max_batch, max_k=max_k, max_body_mb=max_body_mb,
                           rate=rate, burst=burst, checkpoint_every=checkpoint_every,
                           verify_threshold=verify_threshold,
                           identify_threshold=identify_threshold, verifier=verifier)
            import uvicorn

            from dmlkit.service import (
                ApiKeys,
                DurableIndex,
                ServiceConfig,
                create_app,
                load_embedder,
            )
            from dmlkit.service.embedders import check_one_model

            check_one_model(run, onnx)  # before the index is opened
            keys = ApiKeys.from_sources(api_keys_file)
            store = DurableIndex(index, checkpoint_every=checkpoint_every)
            try:
                embedder = load_embedder(run, onnx)
                kit = None
                if verifier is not None:
                    from dmlkit.apps import Verifier

                    kit = Verifier.load(verifier)
                config = ServiceConfig(
                    max_body_bytes=int(max_body_mb * (1 << 20)), max_batch=max_batch,
                    max_k=max_k, rate=rate, burst=burst, verify_threshold=verify_threshold,
                    identify_threshold=identify_threshold)
                application = create_app(store, keys, embedder, config, kit)
            except BaseException:
                store.close(checkpoint=False)  # not served: the log stays as it was
                raise
        except (ImportError, ValueError, OSError, RuntimeError) as err:
            # RuntimeError: IndexInUseError, another server already owns the index; OSError:
            # a file that cannot be read (FileNotFoundError among them)
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(1) from None
        skipped = (f"; {store.skipped} skipped, already in the checkpoint or not applicable"
                   if store.skipped else "")
        server = _server(uvicorn, application, host, port, lambda url: typer.echo(
            f"serving {store.ntotal} items (replayed {store.replayed} logged writes"
            f"{skipped}) on {url}", err=True))
        interrupted, reason = False, "the reason is above"
        try:
            server.run()
        except KeyboardInterrupt:  # (Ctrl-C, or SIGTERM, once the server has stopped)
            interrupted = True
        except SystemExit:  # uvicorn could not listen (it logged why): nothing served
            if server.started:
                raise
        except (OSError, OverflowError) as err:  # a bind that failed before uvicorn's own
            if server.started:
                raise
            reason = one_line(err)
        finally:
            try:  # a server that never listened leaves the index as it found it
                store.close(checkpoint=server.started)
            except RuntimeError as err:  # InconsistentIndexError: nothing corrupt is saved
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(1) from None
        if server.started and signal.SIGINT in server.signals:  # Ctrl-C, after a clean stop
            raise typer.Exit(130)
        if not server.started:
            if interrupted:
                raise typer.Exit(130)
            typer.echo(f"error: could not listen on {host}:{port} ({reason}: the "
                       "port is in use by another program, or the address is not this "
                       "machine's); "
                       "nothing was served and the index is unchanged: choose another --port "
                       "or --host", err=True)
            raise typer.Exit(1)


def check_settings(*, port: int, max_batch: int, max_body_mb: float, rate: float,
                   max_k: int = 1000,
                   burst: int, checkpoint_every: int, verify_threshold: float | None,
                   identify_threshold: float | None, verifier: Path | None = None) -> None:
    """Refuse ``dmlkit serve`` settings under which the server could not listen or would
    refuse every request, or that contradict each other, with a one-line ``ValueError``
    naming the option."""
    if verifier is not None and verify_threshold is not None:
        raise ValueError("--verify-threshold would be ignored with --verifier (the verifier "
                         "decides with the threshold it was fitted with): drop "
                         "--verify-threshold, or drop --verifier to use it")
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be 0..65535 (0 picks a free port), got {port}")
    from dmlkit.service.limits import (  # the service's own rules, under the option names
        check_at_least_one,
        check_checkpoint_every,
        check_rate,
        check_threshold,
    )

    check_at_least_one(max_batch, name="--max-batch")
    check_at_least_one(max_k, name="--max-k")
    check_at_least_one(burst, name="--burst")
    check_checkpoint_every(checkpoint_every, name="--checkpoint-every", rule=">= 1")
    if not math.isfinite(max_body_mb) or int(max_body_mb * (1 << 20)) < 1:
        raise ValueError(f"--max-body-mb must be a positive number of megabytes (e.g. 8), "
                         f"got {max_body_mb}")
    check_rate(rate, name="--rate",
               rule="a positive number of requests per second (e.g. 50)")
    for option, threshold in (("--verify-threshold", verify_threshold),
                              ("--identify-threshold", identify_threshold)):
        check_threshold(threshold, name=option,
                        rule="a finite number (a score, as /search reports them)")


def _server(uvicorn: Any, application: Any, host: str, port: int,
            announce: Callable[[str], None]) -> Any:
    """A uvicorn server of ``application`` that calls ``announce(url)`` once it listens
    (``server.started``), with the port it bound (``--port 0`` picks a free one)."""

    class _Server(uvicorn.Server):
        signals: list[int]  # the signals that stopped it (SIGINT: Ctrl-C)

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.signals.append(sig)
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = [s.getsockname() for srv in getattr(self, "servers", [])
                         for s in (srv.sockets or ())]
                at = bound[0][1] if bound else port
                announce(f"http://{host}:{at}")

    server = _Server(uvicorn.Config(application, host=host, port=port, log_level="warning",
                                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    server.signals = []
    return server
