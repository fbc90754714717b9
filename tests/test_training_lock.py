"""One training per workspace across processes (``ss_stylegan.training.lock``), the training status file and stop
flag, and study fingerprints (``ss_stylegan.data.fingerprint``), with real processes and files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ss_stylegan.data.fingerprint import FingerprintCache, content_hash, stamp
from ss_stylegan.training.lock import TrainingBusyError, TrainingLock
from ss_stylegan.workspace import TrainingStatus, Workspace

LIB = str(Path(__file__).resolve().parent.parent / "lib")


def _holder(workspace: Path, ignore_stop: bool, ignore_term: bool) -> subprocess.Popen[str]:
    """A process that holds the workspace's training lock, as a training does, and says when it has it."""
    code = textwrap.dedent(f"""
        import signal, sys, time
        sys.path.insert(0, {LIB!r})
        from ss_stylegan.workspace import Workspace
        if {ignore_term}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ws = Workspace(sys.argv[1])
        with ws.training_lock().hold("training for a test"):
            print("holding", flush=True)
            while not (ws.stop_requested() and not {ignore_stop}):
                time.sleep(0.05)
            ws.clear_stop()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(workspace)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def test_holder_is_found_and_a_second_training_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    lock = ws.training_lock()
    assert lock.holder() is None
    proc = _holder(ws.root, ignore_stop=False, ignore_term=False)
    try:
        holder = lock.holder()
        assert holder is not None and holder.pid == proc.pid and holder.started <= time.time()
        with pytest.raises(TrainingBusyError, match=f"process {proc.pid}.*DELETE /train/"):
            with TrainingLock(ws.root / "train.lock", acquire_tries=2, retry_s=0.01).hold():
                pass
        assert lock.stop_holder(ws.request_stop, grace_s=10).pid == proc.pid  # the STOP file is enough
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    assert lock.holder() is None
    with lock.hold():  # free again: the file left behind blocks nothing
        assert lock.holder().pid == os.getpid()


def test_a_holder_that_ignores_stop_and_sigterm_is_killed(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    proc = _holder(ws.root, ignore_stop=True, ignore_term=True)
    try:
        t0 = time.monotonic()
        holder = ws.training_lock().stop_holder(ws.request_stop, grace_s=0.5)
        assert holder is not None and holder.pid == proc.pid
        assert proc.wait(timeout=10) == -9 and time.monotonic() - t0 < 8  # STOP, SIGTERM ignored, SIGKILL
    finally:
        proc.kill()
    assert ws.training_lock().holder() is None


def test_a_dead_holder_leaves_no_lock(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    proc = _holder(ws.root, ignore_stop=True, ignore_term=False)
    proc.kill()
    proc.wait()
    assert ws.training_lock().holder() is None
    assert ws.training_lock().stop_holder(ws.request_stop) is None


def test_fingerprints_follow_content_not_timestamps(tmp_path: Path) -> None:
    study = tmp_path / "a.nii.gz"
    study.write_bytes(b"one" * 1000)
    cache = FingerprintCache()
    first = cache.fingerprint(study)
    assert first is not None and first.sha256 == content_hash(study) and first.stamp == stamp(study)
    assert cache.fingerprint(study) is first  # unchanged stamp: no new hash
    os.utime(study, ns=(1, 1))  # touched: another stamp, the same content
    touched = cache.fingerprint(study)
    assert touched is not None and touched.stamp != first.stamp and touched.sha256 == first.sha256
    st = study.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity (a clock tick on older kernels)
    study.write_bytes(b"two" * 1000)  # same size, same times restored: ctime still moves
    os.utime(study, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = cache.fingerprint(study)
    assert changed is not None and changed.sha256 != first.sha256
    study.unlink()
    assert cache.fingerprint(study) is None and stamp(study) is None


def test_a_dicom_folder_is_one_fingerprint(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        (series / f"IM{k}.dcm").write_bytes(bytes([k]) * 100)
    before = FingerprintCache().fingerprint(series)
    assert before is not None and before.stamp.n_files == 3
    (series / "IM1.dcm").write_bytes(b"\xff" * 100)
    after = FingerprintCache().fingerprint(series)
    assert after is not None and after.sha256 != before.sha256


def test_status_and_stop_flag(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    assert ws.read_status().state == "untrained"
    ws.write_status(TrainingStatus(state="training", progress={"step": 3, "total_steps": 9}, pid=os.getpid()))
    with ws.training_lock().hold():      # its process holds the lock: the status is read as written
        status = ws.read_status()
        assert status.state == "training" and status.progress == {"step": 3, "total_steps": 9}
        assert status.updated > 0 and status.pid == os.getpid()
    status = ws.read_status()           # nobody holds it: the training is gone, and every answer says so
    assert status.state == "untrained" and status.pid is None and status.progress["phase"] == "stopped"
    assert status.message.startswith("training stopped at step 3/9")
    ws.status_path.write_text("{", encoding="utf-8")
    assert ws.read_status().state == "untrained"
    assert not ws.stop_requested()
    ws.request_stop()
    assert ws.stop_requested()
    ws.clear_stop()
    assert not ws.stop_requested()
    with pytest.raises(ValueError, match="state must be one of"):
        ws.write_status(TrainingStatus(state="bogus"))
