"""Recorded server answers, so the module's self-test runs where no server can (Slicer's ctest).

:class:`RecordingProxy` stands between a client and a real server and keeps every exchange (request, status,
content type, body). :class:`ReplayServer` answers the same requests from such a recording on 127.0.0.1: the
answers to one request come back in the order they were recorded (the last one repeats), so a client that
makes the same calls sees the same server. ``pytest`` records the module's self-test against a real MONAI
Label server; the recording shipped with the module (``Resources/Testing/labelling_loop.json``) is what the
self-test replays inside Slicer.

Standard library only (Slicer's Python).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

Exchange = Dict[str, Any]
FORWARDED_HEADERS = ("Content-Type", "Authorization", "Accept")
KEPT_HEADERS = ("Content-Type", "Content-Disposition")


def _key(method: str, path: str) -> str:
    return f"{method} {path}"


class _Server:
    """An HTTP server on 127.0.0.1 (a free port) in a daemon thread, answering with ``answer``."""

    def __init__(self, answer: Callable[[str, str, Dict[str, str], bytes], Tuple[int, Dict[str, str], bytes]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = answer(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: Any) -> None:   # quiet: the test says what failed
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ssgl-recording", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "_Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordingProxy(_Server):
    """Forward every request to ``upstream`` and record the exchange; :meth:`save` writes the recording."""

    def __init__(self, upstream: str, timeout_s: float = 120.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.timeout_s = timeout_s
        self.exchanges: List[Exchange] = []
        self._lock = threading.Lock()
        super().__init__(self._forward)

    def _forward(self, method: str, path: str, headers: Dict[str, str], body: bytes
                 ) -> Tuple[int, Dict[str, str], bytes]:
        sent = {k: v for k, v in headers.items() if k in FORWARDED_HEADERS}
        request = urllib.request.Request(self.upstream + path, data=body or None, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                status, answer, got = resp.status, resp.read(), dict(resp.headers.items())
        except urllib.error.HTTPError as err:
            status, answer, got = err.code, err.read(), dict(err.headers.items())
        kept = {k: v for k, v in got.items() if k in KEPT_HEADERS}
        with self._lock:
            self.exchanges.append({"method": method, "path": path, "status": status, "headers": kept,
                                   "body": base64.b64encode(answer).decode("ascii")})
        return status, kept, answer

    def save(self, path: str) -> str:
        """Write the recording as JSON (atomically) and return its path."""
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"format": 1, "exchanges": self.exchanges}, fh, indent=0)
        os.replace(tmp, path)
        return path


class ReplayServer(_Server):
    """Answer from a recording (a :meth:`RecordingProxy.save` file or its exchanges). A request that was never
    recorded is answered 404 with a message naming it, so a test that drifted from its recording says where."""

    def __init__(self, recording: "str | List[Exchange]") -> None:
        if isinstance(recording, str):
            with open(recording, encoding="utf-8") as fh:
                recording = json.load(fh)["exchanges"]
        self._queues: Dict[str, List[Exchange]] = {}
        for exchange in recording:
            self._queues.setdefault(_key(exchange["method"], exchange["path"]), []).append(exchange)
        self._lock = threading.Lock()
        self.unanswered: List[str] = []
        super().__init__(self._replay)

    def _replay(self, method: str, path: str, headers: Dict[str, str], body: bytes
                ) -> Tuple[int, Dict[str, str], bytes]:
        with self._lock:
            queue: Optional[List[Exchange]] = self._queues.get(_key(method, path))
            if not queue:
                self.unanswered.append(_key(method, path))
                detail = json.dumps({"detail": f"no recorded answer for {method} {path}"}).encode()
                return 404, {"Content-Type": "application/json"}, detail
            exchange = queue.pop(0) if len(queue) > 1 else queue[0]
        return int(exchange["status"]), dict(exchange["headers"]), base64.b64decode(exchange["body"])
