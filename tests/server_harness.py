"""Start a real MONAI Label server with the SS-StyleGAN app in a subprocess, for tests and benchmarks.

Usage::

    from server_harness import start_server

    with start_server(studies_dir, conf={"resolution": "32", "preset": "tiny"}) as server:
        info = server.get_json("/info/")
        server.restart()          # same port, same studies, same conf

The server runs as ``<this python> -m monailabel.main start_server --app <repo>/monailabel_app ...`` on
127.0.0.1 and a free port, in its own process group (so MONAI Label's training subprocess is stopped with
it). Its stdout and stderr go to a log file; when the server fails to start the error carries the last
lines of that log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_START_TIMEOUT_S = 120.0

TINY_CONF: dict[str, str] = {
    "preset": "tiny", "resolution": "32", "steps": "4", "batch_size": "4", "checkpoint_interval": "2",
    "perplexity": "5", "device": "cpu",
}
"""``--conf`` for a model that trains in seconds on a CPU (tests): 4 steps of 4 slices at 32x32."""


class ServerStartError(RuntimeError):
    """The server process exited or did not answer ``GET /info/`` in time; the message holds its log tail."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, n_lines: int = 60) -> str:
    """Last ``n_lines`` lines of a log file ('' when it does not exist)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-n_lines:])


class RunningServer:
    """A MONAI Label server subprocess. Use :func:`start_server` to create one.

    Attributes:
        url: base URL without a trailing slash, e.g. ``http://127.0.0.1:41234``.
        studies: the datastore folder.
        conf: the ``--conf`` settings passed to the app.
        port: the TCP port.
        log_path: file receiving the server's stdout and stderr (appended to across restarts).
    """

    def __init__(
        self,
        studies: Path,
        conf: Mapping[str, str],
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        repo: Path = REPO,
        token: str | None = None,
    ) -> None:
        self.studies = Path(studies).resolve()
        self.conf = {str(k): str(v) for k, v in conf.items()}
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.repo = Path(repo).resolve()
        self.token = token  # sent as a bearer token by the helpers below (servers started with auth on)
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._groups: set[int] = set()  # process groups of every start, so stop() also ends orphans

    # -- lifecycle -------------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The command line that starts the server."""
        cmd = [
            sys.executable, "-m", "monailabel.main", "start_server",
            "--app", str(self.repo / "monailabel_app"),
            "--studies", str(self.studies),
            "--host", "127.0.0.1",
            "--port", str(self.port),
        ]
        for key, value in self.conf.items():
            cmd += ["--conf", key, value]
        return cmd

    def start(self) -> RunningServer:
        """Launch the subprocess and block until ``GET /info/`` answers 200.

        Raises:
            ServerStartError: the process exited, or did not answer within ``start_timeout_s``.
        """
        if self.running:
            raise RuntimeError(f"server on {self.url} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # the app's library comes from the same checkout as the app (another checkout can be benchmarked)
        env["PYTHONPATH"] = os.pathsep.join([str(self.repo / "lib"), *filter(None, [env.get("PYTHONPATH")])])
        env.update({"PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== starting: {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.studies.parent),
                env=env,
                start_new_session=True,
            )
        self._groups.add(self._proc.pid)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.kill()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        assert self._proc is not None
        deadline = t0 + self.start_timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"MONAI Label server exited with code {code} before answering /info/.\n"
                    f"--- log {self.log_path} ---\n{log_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(self.url + "/info/", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as err:
                if err.code == 401:  # auth is on: the server answers, it just wants a token
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise ServerStartError(
            f"MONAI Label server did not answer {self.url}/info/ within {self.start_timeout_s:.0f} s.\n"
            f"--- log {self.log_path} ---\n{log_tail(self.log_path)}"
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _signal_group(self, sig: int, group: int | None = None) -> None:
        assert group is not None or self._proc is not None
        try:
            os.killpg(group if group is not None else self._proc.pid, sig)  # a group we created
        except ProcessLookupError:
            pass

    def end_orphans(self) -> None:
        """SIGKILL every process left in the process groups of earlier starts (e.g. a training
        subprocess that outlived a server killed with :meth:`kill_server_only`)."""
        for group in list(self._groups):
            if self._proc is None or group != self._proc.pid:
                self._signal_group(signal.SIGKILL, group)
                self._groups.discard(group)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop gracefully (SIGTERM to the server's process group), escalating to SIGKILL after ``timeout_s``."""
        if self._proc is None:
            self.end_orphans()
            return
        if self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait(timeout=timeout_s)
        # children (e.g. a training subprocess) may outlive the server: end them too
        self._signal_group(signal.SIGKILL)
        self._proc = None
        self.end_orphans()

    def kill(self) -> None:
        """Kill the server and its children at once (SIGKILL), as a crash or power cut would."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        self._proc = None

    def kill_server_only(self) -> None:
        """SIGKILL the server process alone, as ``kill -9 <server pid>`` would: its children (a training
        subprocess) run on, orphaned. :meth:`stop` ends them later."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait(timeout=20)
        self._proc = None

    def restart(self, kill: bool = False) -> RunningServer:
        """Stop (or kill) the server and start it again on the same port with the same settings."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self, n_lines: int = 80) -> str:
        """The last lines of the server log (use in assertion messages)."""
        return log_tail(self.log_path, n_lines)

    # -- small HTTP helpers (stdlib only) ----------------------------------------------------------
    def headers(self, token: str | None = None) -> dict[str, str]:
        """``Authorization`` header for ``token`` (default: the server's token; none when both are None)."""
        token = token if token is not None else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout_s: float = 60.0,
        token: str | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """Send a JSON request (``body``, or ``raw`` bytes sent as JSON as they are); return ``(status,
        parsed JSON or text)``; HTTP errors are returned, not raised. ``token`` overrides the server's
        token ("" sends none)."""
        data = None
        headers = {"Accept": "application/json", **self.headers(token)}
        if body is not None or raw is not None:
            data = raw if raw is not None else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode("utf-8", errors="replace")
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def request_bytes(self, method: str, path: str, timeout_s: float = 60.0) -> tuple[int, bytes]:
        """Send a request without a body; return ``(status, the answer's bytes)`` (a PNG, a zip, ...)."""
        req = urllib.request.Request(self.url + path, method=method, headers=self.headers(None))
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def wait_for_training(self, timeout_s: float = 300.0, poll_s: float = 0.5) -> dict[str, Any]:
        """Block until ``/info/`` no longer reports ``training`` (after one was started); return its ss_stylegan block.

        Raises:
            AssertionError: still training after ``timeout_s`` (the message holds the server log).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            task = self.get_json("/train/")  # the latest training task (MONAI Label) + progress
            if task.get("status") not in ("SUBMITTED", "RUNNING"):  # DONE, ERROR, STOPPED or none
                return self.get_json("/info/")["ss_stylegan"]
            time.sleep(poll_s)
        raise AssertionError(f"training still running after {timeout_s:.0f} s\n--- server log ---\n{self.log()}")

    def get_json(self, path: str, timeout_s: float = 60.0) -> Any:
        """``GET path`` and return the JSON answer; raise ``AssertionError`` with the log on a non-200 answer."""
        status, payload = self.request("GET", path, timeout_s=timeout_s)
        if status != 200:
            raise AssertionError(f"GET {path} -> {status}: {payload}\n--- server log ---\n{self.log()}")
        return payload


def start_server(
    studies: Path,
    conf: dict[str, str] | None = None,
    port: int | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    repo: Path = REPO,
    token: str | None = None,
) -> RunningServer:
    """Start the SS-StyleGAN MONAI Label app over ``studies`` and wait until ``GET /info/`` answers.

    Args:
        studies: datastore folder (created by MONAI Label when missing).
        conf: ``--conf key value`` settings for the app (strings).
        port: TCP port on 127.0.0.1; a free one when None.
        log_path: where the server's stdout/stderr go; ``<studies>/../server-<port>.log`` when None.
        env: extra environment variables for the server process.
        start_timeout_s: how long to wait for ``/info/``.
        repo: the checkout whose ``monailabel_app`` and ``lib`` are served (this one by default).
        token: bearer token the helpers send (for a server started with ``MONAI_LABEL_AUTH_ENABLE``).

    Returns:
        The running server; use it as a context manager or call ``.stop()``.
    """
    studies = Path(studies).resolve()
    port = port or free_port()
    log_path = Path(log_path) if log_path else studies.parent / f"server-{port}.log"
    server = RunningServer(studies, conf or {}, port, log_path, env=env, start_timeout_s=start_timeout_s,
                           repo=repo, token=token)
    return server.start()
