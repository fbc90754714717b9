"""Upload routes whose request body is capped while it arrives, before FastAPI spools it to disk.

FastAPI reads a multipart body completely (into temporary files) before a handler runs, so a size check
in the handler comes too late for a 50 GB upload. :func:`bounded_route` makes a route class that answers
413 at once when ``Content-Length`` is over the cap, and stops reading with 413 as soon as the bytes
received pass it (chunked uploads). The cap is the ``max_upload_mb`` setting plus room for the multipart
framing; the handler then checks the file itself (:func:`ss_stylegan.data.uploads.received_upload`).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

MULTIPART_SLACK = 1 << 20  # form fields and multipart headers around the file


def _too_large(limit: int) -> str:
    return (f"the request is larger than {limit / (1 << 20):.0f} MB, the most this server accepts for an upload "
            "(setting max_upload_mb)")


def bounded_route(max_bytes: Callable[[], int]) -> type[APIRoute]:
    """An :class:`APIRoute` class whose request bodies may hold at most ``max_bytes()`` bytes of file."""

    class BoundedUploadRoute(APIRoute):
        async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
            limit = max_bytes() + MULTIPART_SLACK
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length", b"").decode("latin-1")
            if declared.isdigit() and int(declared) > limit:
                await JSONResponse({"detail": _too_large(max_bytes())}, status_code=413)(scope, receive, send)
                return
            received = 0

            async def counted() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise HTTPException(status_code=413, detail=_too_large(max_bytes()))
                return message

            await super().handle(scope, counted, send)

    return BoundedUploadRoute


__all__ = ["MULTIPART_SLACK", "bounded_route"]
