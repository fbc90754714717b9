"""HTTP client for the SS-StyleGAN Label MONAI Label server, using only the Python standard library.

3D Slicer's Python has no guaranteed ``requests``; ``urllib.request`` is always there. Every call maps one
route of the REST contract (``docs/ARCHITECTURE.md``) and returns a typed record from :mod:`.records`.
Failures are typed (:mod:`.errors`): no answer -> :class:`ServerUnreachableError`, an HTTP error status ->
:class:`ServerError` carrying the status code and the server's ``detail`` text.

Credentials follow MONAI Label: ``POST /auth/token`` with a form ``username`` / ``password`` returns a bearer
token (``access_token`` is null when the server runs without authentication, and then no header is sent).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .atomicfile import write_bytes_atomic
from .errors import AuthenticationError, ClientConfigError, ProtocolError, ServerError, ServerUnreachableError, format_detail
from .records import Classification, ModelState, SliceLabel, Suggestion

logger = logging.getLogger(__name__)

TRAINER = "ss_stylegan"
CLASSIFIER = "classify"
STRATEGIES = ("typiclust", "fps", "random", "probcover", "fps_w")
"""The server's strategies (``GET /info/``'s ``ss_stylegan.pipelines`` describes each): TypiClust in W, the server's
default since it measured best; the paper's FPS in the t-SNE map; random; ProbCover and FPS in W."""
_FILENAME_RE = re.compile(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", re.IGNORECASE)


class SSGLClient:
    """One connection to an SS-StyleGAN Label server.

    Args:
        url: server address, e.g. ``http://127.0.0.1:8000`` (a trailing slash is ignored).
        username: optional user name for MONAI Label authentication.
        password: password for ``username``.
        timeout_s: seconds to wait for any one answer.
    """

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        parsed = urllib.parse.urlparse((url or "").strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ClientConfigError(
                f"server URL {url!r} is not an http(s) address; enter it like http://127.0.0.1:8000"
            )
        if password and not username:
            raise ClientConfigError("a password was given without a user name; enter both or neither")
        self.url = urllib.parse.urlunparse(parsed._replace(path=parsed.path.rstrip("/"))).rstrip("/")
        self.username = username or None
        self.password = password or ""
        self.timeout_s = float(timeout_s)
        self._token: str | None = None
        self._logged_in = False

    # -- low level -------------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        files: Mapping[str, Path] | None = None,
        authorise: bool = True,
        retry_login: bool = True,
    ) -> tuple[bytes, Mapping[str, str]]:
        """Send one request; return ``(body, headers)`` of a 2xx answer or raise a typed error."""
        if authorise and self.username and not self._logged_in:
            self.login()
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if files:
            data, content_type = _multipart(form or {}, files)
            headers["Content-Type"] = content_type
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if authorise and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        logger.debug("%s %s", method, url)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                return resp.read(), dict(resp.headers.items())
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                payload: Any = json.loads(raw.decode("utf-8", errors="replace"))
            except json.JSONDecodeError:
                payload = raw.decode("utf-8", errors="replace")
            detail = format_detail(payload)
            if err.code == 401 and authorise and self.username and retry_login:
                self._logged_in, self._token = False, None  # the token may have expired: log in once more
                return self._send(method, path, query, json_body, form, files, authorise, retry_login=False)
            if err.code in (401, 403):
                hint = "" if self.username else "; this server needs a login: enter a user name and password"
                raise AuthenticationError(err.code, detail + hint, method, path) from None
            raise ServerError(err.code, detail, method, path) from None
        except urllib.error.URLError as err:
            raise ServerUnreachableError(self.url, _reason(err.reason)) from None
        except (TimeoutError, socket.timeout):
            raise ServerUnreachableError(self.url, f"no answer within {self.timeout_s:g} s") from None
        except ConnectionError as err:
            raise ServerUnreachableError(self.url, _reason(err)) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        body, _ = self._send(method, path, **kwargs)
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ProtocolError(f"{method} {path} did not answer JSON (got {body[:120]!r})") from None

    # -- connection ------------------------------------------------------------------------------
    def login(self) -> str | None:
        """Fetch a bearer token with the credentials given (MONAI Label ``POST /auth/token``).

        Returns:
            The token, or None when the server runs without authentication (MONAI Label then has no
            ``/auth/`` routes at all, or answers a null token).

        Raises:
            AuthenticationError: the server refused the user name / password.
        """
        if not self.username:
            raise ClientConfigError("no user name given: create the client with username= and password=")
        try:
            answer = self._json(
                "POST", "/auth/token", form={"username": self.username, "password": self.password}, authorise=False
            )
        except ServerError as err:
            if err.status == 404:
                answer = {"access_token": None}
            else:
                raise AuthenticationError(
                    err.status, f"login as '{self.username}' failed: {err.detail}", "POST", "/auth/token"
                ) from None
        self._token = answer.get("access_token") if isinstance(answer, dict) else None
        self._logged_in = True
        if self._token is None:
            logger.info("server %s runs without authentication; credentials are not needed", self.url)
        return self._token

    @property
    def auth_enabled(self) -> bool:
        """Whether the server asks for credentials (MONAI Label ``GET /auth/``; absent when auth is off)."""
        try:
            answer = self._json("GET", "/auth/", authorise=False)
        except ServerError as err:
            if err.status == 404:
                return False
            raise
        return bool(answer.get("enabled")) if isinstance(answer, dict) else False

    def raw_info(self) -> dict[str, Any]:
        """The whole ``GET /info/`` answer as the server sent it."""
        return self._json("GET", "/info/")

    def info(self) -> ModelState:
        """Classes, model state, counts and training progress (``GET /info/``)."""
        return ModelState.from_info(self.raw_info())

    # -- training --------------------------------------------------------------------------------
    def start_training(
        self, kimg: float | None = None, batch_size: int | None = None, device: str | None = None
    ) -> dict[str, Any]:
        """Start SS-StyleGAN training on every slice of the datastore (``POST /train/ss_stylegan``).

        Raises:
            ServerError: 429/409 when a training already runs.
        """
        params = {k: v for k, v in (("kimg", kimg), ("batch_size", batch_size), ("device", device)) if v is not None}
        return self._json("POST", f"/train/{TRAINER}", json_body=params)

    def stop_training(self) -> dict[str, Any]:
        """Stop the running training (``DELETE /train/``)."""
        return self._json("DELETE", "/train/")

    def training_status(self) -> dict[str, Any]:
        """MONAI Label's status of the last training task (``GET /train/?check_if_running=false``).

        Returns:
            The status dict, or ``{}`` when no training was ever started on this server.
        """
        try:
            return self._json("GET", "/train/", query={"check_if_running": "false"})
        except ServerError as err:
            if err.status == 404:
                return {}
            raise

    # -- selection and labels --------------------------------------------------------------------
    def suggest(self, strategy: str = "typiclust", count: int = 1, client_id: str | None = None) -> list[Suggestion]:
        """Ask for the next slice(s) to label (``POST /activelearning/<strategy>``).

        Args:
            strategy: one of :data:`STRATEGIES` (``typiclust`` in W, ``fps`` in the map as the paper does, ...).
            count: how many suggestions to return at once (>= 1).
            client_id: who asks; the server keeps each client's pending suggestions apart.

        Returns:
            The suggestions, best first; an empty list when every slice is labelled.

        Raises:
            ServerError: 409 before the model is trained.
        """
        if count < 1:
            raise ClientConfigError(f"count must be at least 1, got {count}")
        body: dict[str, Any] = {"count": int(count)}
        if client_id:
            body["client_id"] = client_id
        answer = self._json("POST", f"/activelearning/{urllib.parse.quote(strategy)}", json_body=body)
        if not isinstance(answer, dict) or answer.get("done") or "id" not in answer:
            logger.info("no more suggestions: %s", answer.get("message", "") if isinstance(answer, dict) else answer)
            return []
        items = answer.get("suggestions") or [answer]
        return [Suggestion.from_json(item, strategy) for item in items]

    def release_suggestions(self, client_id: str) -> list[tuple[str, int]]:
        """Give back the suggestions reserved for ``client_id`` and not labelled
        (``DELETE /activelearning/pending``), so other annotators are offered those slices now.

        Returns:
            The ``(image, slice)`` keys the server gave back.
        """
        if not client_id:
            raise ClientConfigError("client_id is required: it names whose suggestions to give back")
        answer = self._json("DELETE", "/activelearning/pending?" + urllib.parse.urlencode({"client_id": client_id}))
        if not isinstance(answer, dict) or not isinstance(answer.get("released"), list):
            raise ProtocolError(f"DELETE /activelearning/pending answered {str(answer)[:120]!r}, not a list of "
                                "released slices")
        return [(str(item["image"]), int(item["slice"])) for item in answer["released"]]

    def put_label(self, image: str, slice_index: int, class_name: str, user: str) -> SliceLabel:
        """Store (or replace) the class of one slice (``PUT /slicelabels/``).

        Raises:
            ServerError: 404 for an unknown image; 422 for an unknown class (the message lists the valid
                ones) or a slice index out of range.
        """
        body = {"image": image, "slice": int(slice_index), "class": class_name, "user": user}
        return SliceLabel.from_json(self._json("PUT", "/slicelabels/", json_body=body))

    def delete_label(self, image: str, slice_index: int) -> None:
        """Remove the label of one slice (``DELETE /slicelabels/?image=&slice=``)."""
        self._send("DELETE", "/slicelabels/", query={"image": image, "slice": int(slice_index)})

    def labels(self, image: str | None = None) -> list[SliceLabel]:
        """All stored slice labels, or those of one image (``GET /slicelabels/``)."""
        answer = self._json("GET", "/slicelabels/", query={"image": image})
        records = answer.get("labels") if isinstance(answer, dict) else None
        if records is None:
            raise ProtocolError(f"GET /slicelabels/ answered without a 'labels' list: {answer!r:.200}")
        return [SliceLabel.from_json(r) for r in records]

    def export_csv(self) -> str:
        """The server's CSV of all labels: ``image,slice,class,user,timestamp`` (``GET /slicelabels/export.csv``)."""
        body, _ = self._send("GET", "/slicelabels/export.csv")
        return body.decode("utf-8")

    # -- map and classification ------------------------------------------------------------------
    def slice_map(self) -> dict[str, Any]:
        """The t-SNE map of every embedded slice (``GET /slicemap/``); parse with ``mapview.MapPoints``."""
        return self._json("GET", "/slicemap/")

    def slice_png(self, image: str, slice_index: int) -> bytes:
        """One slice as the model sees it, as PNG bytes (``GET /slicemap/slice?image=&slice=``).

        Canonical RAS orientation (rows run towards R, columns towards A), the server's intensity window,
        resized to the model resolution: a thumbnail of exactly what the map was made from.

        Raises:
            ServerError: 404 unknown image, 422 slice out of range (the message gives the range), 409 before
                training.
        """
        body, _ = self._send("GET", "/slicemap/slice", query={"image": image, "slice": int(slice_index)})
        if not body.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ProtocolError(f"GET /slicemap/slice did not answer a PNG image (got {body[:40]!r})")
        return body

    def classify(self, image: str) -> Classification:
        """Classify every slice of a datastore study (``POST /infer/classify?image=<id>``).

        Raises:
            ServerError: 409 before training or before any label; 404 for an unknown image.
        """
        answer = self._json(
            "POST", f"/infer/{CLASSIFIER}", query={"image": image, "output": "json"}, form={"params": "{}"}
        )
        return Classification.from_json(answer, image)

    def classify_file(self, path: str | Path) -> Classification:
        """Classify a study that is not in the datastore by uploading its file."""
        path = Path(path)
        if not path.is_file():
            raise ClientConfigError(f"cannot classify {path}: no such file")
        answer = self._json(
            "POST", f"/infer/{CLASSIFIER}", query={"output": "json"}, form={"params": "{}"}, files={"file": path}
        )
        return Classification.from_json(answer, path.name)

    def download_image(self, image: str, folder: str | Path) -> Path:
        """Download a study (``GET /datastore/image?image=<id>``) into ``folder``, keeping its file extension.

        The file is written to a temporary name and renamed, so a cut download never looks complete.

        Returns:
            The path of the downloaded file, e.g. ``folder/study_001.nii.gz``.
        """
        body, headers = self._send("GET", "/datastore/image", query={"image": image})
        name = _filename(headers) or f"{image}.nii.gz"
        name = os.path.basename(name)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        write_bytes_atomic(target, body)
        return target

    def download_series(self, image: str, folder: str | Path) -> Path:
        """Download a DICOM series study (``GET /slicemap/series?image=<id>``, a zip) into ``folder``.

        The files are unpacked into a temporary sibling folder that is renamed to ``folder`` at the end, so a
        cut download never looks complete. ``folder`` must not exist or be empty.

        Returns:
            The series' first file by name (Slicer reads the whole series from it).

        Raises:
            ServerError: 404 for an unknown image or one that is a single file (use :meth:`download_image`).
        """
        body, _ = self._send("GET", "/slicemap/series", query={"image": image})
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        unpacked = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                names = [info.filename for info in archive.infolist()]
                bad = [n for n in names if n != os.path.basename(n) or n.startswith(".")]
                if bad or not names:
                    raise ProtocolError(
                        f"GET /slicemap/series answered an archive that is not one flat series: {bad or 'empty'}")
                archive.extractall(unpacked)
            if folder.is_dir():
                folder.rmdir()  # an empty leftover; a folder with files is refused here
            os.replace(unpacked, folder)
        except zipfile.BadZipFile:
            shutil.rmtree(unpacked, ignore_errors=True)
            raise ProtocolError(f"GET /slicemap/series did not answer a zip archive (got {body[:40]!r})") from None
        except BaseException:
            shutil.rmtree(unpacked, ignore_errors=True)
            raise
        return folder / sorted(names)[0]


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "no answer in time"
    return str(reason)


def _filename(headers: Mapping[str, str]) -> str | None:
    for key, value in headers.items():
        if key.lower() == "content-disposition":
            match = _FILENAME_RE.search(value)
            if match:
                return urllib.parse.unquote(match.group(1))
    return None


def _multipart(form: Mapping[str, str], files: Mapping[str, Path]) -> tuple[bytes, str]:
    """Encode form fields and files as ``multipart/form-data``; return ``(body, content type)``."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in form.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + str(value).encode()
            + b"\r\n"
        )
    for name, path in files.items():
        path = Path(path)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        chunks.append(head.encode() + path.read_bytes() + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
