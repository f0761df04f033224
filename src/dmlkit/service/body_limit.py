"""ASGI middleware that refuses request bodies over a size limit with a 413."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed).

    ``on_reject(scope, seconds)``, when given, is called for every 413 sent here (these
    replies never reach the application, so it is how they are counted)."""

    def __init__(self, app: Any, limit: int,
                 on_reject: Callable[[dict, float], None] | None = None) -> None:
        self.app, self.limit, self.on_reject = app, int(limit), on_reject

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(scope, send, start)
            return
        # a streamed (chunked) body is read here, up to the limit, before the app sees it:
        # raising inside the app's own read would turn into its 400 "error parsing the body"
        chunks: list[bytes] = []
        seen, more = 0, True
        while more:
            try:
                message = await receive()
            except asyncio.CancelledError:  # a stopping server gave up on this body
                task = asyncio.current_task()
                if task is not None:  # answered and ended here, on purpose
                    task.uncancel()
                await self._stopping(send)
                return
            if message["type"] != "http.request":  # the client went away
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                await self._reject(scope, send, start)
                return
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def buffered() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, buffered, send)

    @staticmethod
    async def _stopping(send: Any) -> None:
        """A 503 to a client whose body had not arrived when the server stopped (the
        request ends here, answered, so the server logs no traceback for it)."""
        body = b'{"detail":"the server is stopping and the request body was not received; '
        body += b'send the request again"}'
        try:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
        except (OSError, RuntimeError):  # the connection is already gone
            pass

    async def _reject(self, scope: dict, send: Any, start: float) -> None:
        body = f'{{"detail":"request body over {self.limit} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        if self.on_reject is not None:
            self.on_reject(scope, time.perf_counter() - start)


__all__ = ["BodyLimit"]
