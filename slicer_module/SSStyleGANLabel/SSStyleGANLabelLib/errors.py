"""Typed errors of the SS-StyleGAN Label client, with messages a clinician (or their IT person) can act on.

Every error raised by this package derives from :class:`SSGLError`, so the Slicer widget can show any of
them with one ``tryWithErrorDisplay`` block and a test can assert on the exact kind.
"""

from __future__ import annotations

from typing import Any


class SSGLError(Exception):
    """Base class of every error raised by ``SSStyleGANLabelLib``."""


class ClientConfigError(SSGLError, ValueError):
    """The client was given a bad setting (URL without ``http://``, empty user name, ...)."""


class ServerUnreachableError(SSGLError):
    """No HTTP answer at all: connection refused, unknown host or a timeout."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach the server at {url}: is it running? ({reason})")


class ServerError(SSGLError):
    """The server answered with an HTTP error status.

    Attributes:
        status: the HTTP status code (e.g. 404, 409, 422, 500).
        detail: the server's own explanation (FastAPI's ``detail`` field), as readable text.
        method: the HTTP method of the request.
        path: the request path (without the server URL).
    """

    def __init__(self, status: int, detail: str, method: str, path: str) -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        super().__init__(f"server refused {method} {path} (HTTP {status}): {detail}")


class AuthenticationError(ServerError):
    """The server needs credentials, or refused the ones given (HTTP 401/403, or a failed login)."""


class ProtocolError(SSGLError):
    """The server answered 200 but not in the shape of the SS-StyleGAN Label REST contract."""


class SessionError(SSGLError):
    """A user action that cannot be done in the current state (no slice loaded, unknown shortcut, ...)."""


def format_detail(payload: Any) -> str:
    """Turn a FastAPI error body into one readable line.

    FastAPI answers ``{"detail": "text"}`` for ``HTTPException`` and ``{"detail": [{"loc": [...], "msg": ...}]}``
    for request validation errors; anything else is shown as it came.

    Args:
        payload: the parsed JSON body of an error answer, or its raw text.

    Returns:
        The explanation, e.g. ``"unknown class 'tumor'; valid classes are normal, lesion"`` or
        ``"body.slice: Input should be a valid integer"``.
    """
    if isinstance(payload, dict) and "detail" in payload:
        payload = payload["detail"]
    if isinstance(payload, list):
        parts = []
        for item in payload:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(payload, dict):
        for key in ("message", "error"):
            if key in payload:
                return str(payload[key])
    text = str(payload).strip()
    return text or "(no explanation given)"
