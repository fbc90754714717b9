"""The browser client: its page at ``GET /ui/``, the session it asks for, the log-in it uses, and the slice
images it shows (``GET /slicemap/view``, ``GET /slicemap/thumbnail``).

The page and its scripts (``monailabel_app/web/``) are public files: a browser must load them to show the log-in
form. They are served only by name from that folder (no sub-paths), with a Content-Security-Policy that lets
the page talk to this server alone. Everything the page reads or writes goes through the REST routes, with the
same ``Depends(RBAC(role))`` as any other client; ``GET /ui/session`` says which roles the signed-in user holds,
so the page offers only what the server would allow.

``POST /auth/token`` replaces MONAI Label 0.8.5's log-in route, which answers a wrong password with a bare 500
(its token request raises): here it is a 401 saying so, and an unreachable login server is a 503.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import requests
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.security import OAuth2PasswordRequestForm
from monailabel.config import settings
from monailabel.endpoints.user.auth import token_uri

from lib.auth import ADMIN, ANNOTATE, RBAC, READ, TRAIN, User
from lib.errors import http_errors
from lib.handlers import Handlers

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
_ASSET = re.compile(r"^[a-z][a-z0-9_-]{0,40}\.(js|css|html|svg|png)$")
_TYPES = {"js": "text/javascript", "css": "text/css", "html": "text/html", "svg": "image/svg+xml", "png": "image/png"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
IMAGE_HEADERS = {"Cache-Control": "private, max-age=60", "X-Content-Type-Options": "nosniff"}
PUBLIC_ROUTES = ("ui_root", "ui_page", "ui_asset", "log_in")
"""Route handlers without a role: the page's own files and the log-in (tests/test_app_auth.py checks this list)."""


def assets() -> dict[str, Path]:
    """The files the page may load, by name (only plain names of the web folder)."""
    return {p.name: p for p in sorted(WEB_DIR.iterdir()) if p.is_file() and _ASSET.match(p.name)}


def session_of(user: User) -> dict[str, Any]:
    """``GET /ui/session``: who is signed in and what they may do (every role when auth is off)."""
    roles = set(user.roles)
    auth = bool(settings.MONAI_LABEL_AUTH_ENABLE)
    return {"user": user.username, "auth": auth, "roles": sorted(roles),
            "may": {"read": not auth or READ in roles, "annotate": not auth or ANNOTATE in roles,
                    "train": not auth or bool(roles & set(TRAIN)), "admin": not auth or ADMIN in roles}}


def log_in_answer(username: str, password: str) -> dict[str, Any]:
    """MONAI Label's password log-in with its failures told apart (see the module docstring)."""
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return {"access_token": None, "token_type": None}
    try:
        answer = requests.post(token_uri(), timeout=30, data={
            "client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID, "username": username, "password": password,
            "grant_type": "password"})
    except (requests.RequestException, ValueError, KeyError) as err:
        raise HTTPException(503, "the login server cannot be reached; try again, or ask the administrator") from err
    if answer.status_code in (400, 401):
        raise HTTPException(401, "wrong user name or password")
    if not answer.ok:
        raise HTTPException(502, f"the login server answered {answer.status_code}; ask the administrator")
    return answer.json()


def build_web_router(handlers: Handlers) -> APIRouter:
    """The page, its files, the session, the log-in and the slice images."""
    router = APIRouter()
    files = assets()

    @router.get("/ui", include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)

    @router.get("/ui/", include_in_schema=False)
    def ui_page() -> FileResponse:
        return FileResponse(files["index.html"], media_type="text/html", headers=PAGE_HEADERS)

    @router.get("/ui/session", tags=["UI"], summary="Who is signed in and what the page may offer them")
    def ui_session(user: User = Depends(RBAC("*"))) -> dict[str, Any]:
        return session_of(user)

    @router.get("/ui/{name}", include_in_schema=False)
    def ui_asset(name: str) -> FileResponse:
        path = files.get(name)
        if path is None:
            raise HTTPException(404, f"the page has no file {name[:60]!r}")
        return FileResponse(path, media_type=_TYPES[path.suffix[1:]], headers=PAGE_HEADERS)

    @router.post("/auth/token", tags=["Auth"], summary="Log in: a bearer token for a user name and password")
    def log_in(form: OAuth2PasswordRequestForm = Depends()) -> dict[str, Any]:
        return log_in_answer(form.username, form.password)

    @router.get("/slicemap/view", tags=["SliceLabels"], response_class=Response,
                summary="One slice windowed for reading (PNG, native size or ?size=), radiological display",
                responses={200: {"content": {"image/png": {}}}})
    def slice_view(user: User = Depends(RBAC(READ)), image: str = Query(...), slice: str = Query(...),
                   window: str = "auto", size: str | None = None) -> Response:
        with http_errors():
            view = handlers.slice_view(image, slice, window, size)
        return Response(view.png, media_type="image/png", headers={
            **IMAGE_HEADERS, "X-Slice": str(view.slice), "X-Slice-Count": str(view.n_slices),
            "X-Window": f"{view.window[0]:g}:{view.window[1]:g}", "Access-Control-Expose-Headers": "*"})

    @router.get("/slicemap/thumbnail", tags=["SliceLabels"], response_class=Response,
                summary="A small picture of a slice as the model saw it (PNG)",
                responses={200: {"content": {"image/png": {}}}})
    def slice_thumbnail(user: User = Depends(RBAC(READ)), image: str = Query(...), slice: str = Query(...)) -> Response:
        with http_errors():
            return Response(handlers.thumbnail(image, slice), media_type="image/png", headers=IMAGE_HEADERS)

    return router
