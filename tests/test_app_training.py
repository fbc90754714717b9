"""One training at a time across server restarts, against a real server and a real training process.

``kill -9`` of the server alone leaves its training subprocess running (as it does in production). The
restarted server must find it through the workspace's training lock, report it, refuse a second training
(through ``POST /train/ss_stylegan`` and MONAI Label's generic ``POST /train/`` alike) and stop it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from server_harness import TINY_CONF, RunningServer, start_server

from ss_stylegan.data.synthetic import make_synthetic_datastore

pytestmark = pytest.mark.server

LONG = {"steps": 100000}  # a training that runs until it is stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
        return fh.read().split(") ")[1][0] != "Z"  # a zombie is dead


@pytest.fixture
def server(tmp_path: Path) -> RunningServer:
    """An untrained server of the test's own: a training stopped by another test would leave its progress
    (step, pid) in ``GET /train/``, where the next test would take it for its own training's."""
    make_synthetic_datastore(tmp_path / "studies", n_studies=2, n_slices=8, size=32, random_state=3)
    with start_server(tmp_path / "studies", TINY_CONF, log_path=tmp_path / "server.log") as srv:
        yield srv


def _wait_training_steps(server: RunningServer, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = server.get_json("/train/")["ss_stylegan"]
        if progress.get("progress", {}).get("step", 0) >= 1:
            return progress
        time.sleep(0.3)
    raise AssertionError(f"training did not start within {timeout_s} s\n{server.log()}")


def test_a_restarted_server_finds_reports_and_stops_the_training_left_running(server: RunningServer) -> None:
    status, task = server.request("POST", "/train/ss_stylegan", LONG)
    assert status == 200, task
    pid = _wait_training_steps(server)["pid"]
    assert _alive(pid)
    server.kill_server_only()  # kill -9 <server>: the training runs on, orphaned
    time.sleep(1.0)
    assert _alive(pid)
    server.start()

    status, report = server.request("GET", "/train/")
    assert status == 200 and report["status"] == "RUNNING" and report["pid"] == pid, report
    assert "earlier server process" in report["detail"] and "DELETE /train/" in report["detail"]
    assert server.get_json("/info/")["ss_stylegan"]["state"] == "training"
    for path, body in (("/train/ss_stylegan", {}), ("/train/", {}), ("/train/ss_stylegan", LONG)):
        status, refused = server.request("POST", path, body)
        assert status == 409 and f"process {pid}" in refused["detail"], (path, refused)
    assert server.request("GET", "/train/?check_if_running=true")[1]["pid"] == pid

    status, stopped = server.request("DELETE", "/train/", timeout_s=120)
    assert status == 200 and stopped["status"] == "STOPPED" and stopped["pid"] == pid, stopped
    assert not _alive(pid)
    assert server.request("GET", "/train/?check_if_running=true")[0] == 404
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["state"] == "untrained" and "resumes" in block["message"], block


def test_the_generic_train_route_obeys_the_same_rule(server: RunningServer) -> None:
    status, started = server.request("POST", "/train/", {"ss_stylegan": LONG})
    assert status == 200 and started["ss_stylegan"]["result"]["status"] in ("SUBMITTED", "RUNNING"), started
    for path, body in (("/train/", {}), ("/train/ss_stylegan", {})):
        status, refused = server.request("POST", path, body)
        assert status == 409 and "already running" in refused["detail"], refused
    tasks = server.get_json("/train/?all=true")["tasks"]
    assert len([t for t in tasks if t["status"] in ("SUBMITTED", "RUNNING")]) == 1  # nothing queued behind it
    pid = _wait_training_steps(server)["pid"]
    status, stopped = server.request("DELETE", "/train/", timeout_s=120)
    assert status == 200 and stopped["status"] == "STOPPED"
    assert not _alive(pid) and server.get_json("/info/")["ss_stylegan"]["state"] == "untrained"


def _training_answers(server: RunningServer) -> dict[str, dict]:
    """Every answer that reports the training: ``GET /train/``'s block, ``/info/``'s ``train_stats`` and its
    ``ss_stylegan`` block."""
    info = server.get_json("/info/")
    return {"GET /train/": server.get_json("/train/")["ss_stylegan"],
            "/info/ train_stats": info["train_stats"]["ss_stylegan"], "/info/ ss_stylegan": info["ss_stylegan"]}


@pytest.mark.parametrize("how", ["DELETE /train/", "kill -9"])
def test_after_a_stop_or_a_kill_every_training_answer_agrees(server: RunningServer, how: str) -> None:
    status, _ = server.request("POST", "/train/ss_stylegan", LONG)
    assert status == 200
    pid = _wait_training_steps(server)["pid"]
    if how == "kill -9":
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    else:
        assert server.request("DELETE", "/train/", timeout_s=120)[0] == 200
    assert not _alive(pid)
    time.sleep(0.5)
    answers = _training_answers(server)
    for where, block in answers.items():
        assert block["state"] == "untrained", (where, block)          # no map was published yet
        assert block.get("pid") is None, (where, block)
        assert "training stopped at step" in block["message"] and "resumes" in block["message"], (where, block)
    assert {k: v for k, v in answers["GET /train/"].items() if k != "learning"} == answers["/info/ train_stats"]
