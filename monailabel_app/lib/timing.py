"""``Server-Timing`` on every answer: how long the server spent on a request, from the moment its ASGI app had it
to the first byte of the answer (``app;dur=<ms>``), and, for the routes that say so, the handler's own time
(``handler;dur=<ms>``). A browser's developer tools show both; ``benchmarks/bench_server.py`` reads them to tell a
tail made inside the server from one made on the way to it (connection set-up, the client's own threads).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Response

Scope = dict[str, Any]


class ServerTimingMiddleware:
    """Pure ASGI middleware (no body buffering): adds ``Server-Timing: app;dur=<ms>`` to HTTP answers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed_send(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                ms = (time.perf_counter() - t0) * 1000.0
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={ms:.2f}".encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed_send)


class HandlerTimer:
    """``with HandlerTimer(response):`` adds ``Server-Timing: handler;dur=<ms>`` for the block's time."""

    def __init__(self, response: Response) -> None:
        self.response = response

    def __enter__(self) -> HandlerTimer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        ms = (time.perf_counter() - self.t0) * 1000.0
        self.response.headers.append("server-timing", f"handler;dur={ms:.2f}")
