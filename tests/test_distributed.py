"""Training on two gloo processes: same losses as one process with the same global batch, exact resume, any
world size on resume, stop requests and errors. CPU only; each test starts one child process.

Tolerance of the one-process comparison. The slices and latents of a step are the same for any number of
processes, and so are the discriminator's minibatch-stddev groups (strided split); the only random draws
that differ are each process's noise inputs (augmentation is switched off here, because its draws are
per process too). So at step 1 the values that do not depend on the noise (G loss, reconstruction, R1, real
scores) agree to float rounding (1e-5), and afterwards every loss agrees within 5 % over 6 steps.
Measured on this model: one process with another noise stream differs from the plain run by at most 1.5 %,
two processes by 1.6 %, and two processes that do not average their gradients by 17 % (which the weight
check at every checkpoint also catches).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import discs

from ss_stylegan.cli import main as cli_main
from ss_stylegan.config import ModelConfig, TrainConfig
from ss_stylegan.model.checkpoint import load_checkpoint
from ss_stylegan.training.distributed import weights_checksum
from ss_stylegan.training.launcher import launch
from ss_stylegan.training.loop import TrainingError, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ModelConfig.tiny(32)
CFG = TrainConfig(batch_size=8, steps=6, checkpoint_interval=100, log_interval=1, r1_interval=2, augment="")
LOSSES = ("loss/G", "loss/D", "loss/E_nll", "loss/E_rec")
NOISE_FREE_AT_STEP_1 = ("loss/G", "loss/E_rec", "loss/D_r1", "scores/real")


def _metrics(folder: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _memmap(tmp_path: Path, images: np.ndarray) -> np.ndarray:
    path = tmp_path / "slices.npy"
    np.save(path, images)
    return np.load(path, mmap_mode="r")


def test_two_processes_give_the_losses_of_one_process(tmp_path: Path) -> None:
    images = _memmap(tmp_path, discs(40))        # children reopen the memory map
    one = train(images, TINY, CFG, tmp_path / "one", device="cpu", progress_bar=False)
    two = launch(images, TINY, CFG, tmp_path / "two", nproc=2, threads_per_process=1)
    assert (two.step, two.images_seen, two.world_size, two.stopped) == (6, 48, 2, False)
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in b] == list(range(1, 7))
    for key in NOISE_FREE_AT_STEP_1:
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-5), key
    for ra, rb in zip(a, b):
        for key in LOSSES:
            assert rb[key] == pytest.approx(ra[key], rel=5e-2), (ra["step"], key)
    w_one = load_checkpoint(one.checkpoint)["generator"]["mapping.w_avg"]
    w_two = load_checkpoint(two.checkpoint)["generator"]["mapping.w_avg"]
    assert torch.allclose(w_two, w_one, rtol=5e-2, atol=1e-3)     # averaged over the ranks, not summed
    state = load_checkpoint(two.checkpoint)
    assert state["world_size"] == 2 and len(state["rng"]["ranks"]) == 2
    resolved = json.loads((tmp_path / "two" / "config.json").read_text(encoding="utf-8"))["resolved"]
    assert resolved["world_size"] == 2 and resolved["batch_per_process"] == 4


def test_stop_and_resume_with_the_same_or_another_number_of_processes(tmp_path: Path) -> None:
    images = discs(40)
    full = launch(images, TINY, CFG, tmp_path / "full", nproc=2, threads_per_process=1)
    polls: list[int] = []
    first = launch(images, TINY, CFG, tmp_path / "split", nproc=2, threads_per_process=1,
                   should_stop=lambda: polls.append(1) is None and len(polls) >= 3)
    assert first.stopped and first.step == 3 and len(polls) == 3      # rank 0 alone asks, every rank stops
    second = launch(images, TINY, CFG, tmp_path / "split", nproc=2, threads_per_process=1)
    assert second.step == 6 and not second.stopped
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(second.checkpoint)
    for key in ("generator", "generator_ema", "discriminator"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after a 2-process resume"
    assert [r["step"] for r in _metrics(tmp_path / "split")] == list(range(1, 7))

    # the 2-process checkpoint at step 3 resumed by one process: same slices and latents from step 4 on,
    # only rank 1's noise stream is gone, so the losses stay within the tolerance of the module docstring
    single = tmp_path / "single"
    single.mkdir()
    for path in (tmp_path / "split").glob("ckpt-00000003.pt*"):
        path.replace(single / path.name)
    resumed = train(images, TINY, CFG, single, device="cpu", progress_bar=False)
    assert resumed.step == 6 and resumed.images_seen == 48 and resumed.world_size == 1
    rows = {r["step"]: r for r in _metrics(single)}
    for r in _metrics(tmp_path / "full")[3:]:
        for key in LOSSES:
            assert rows[r["step"]][key] == pytest.approx(r[key], rel=5e-2), (r["step"], key)


def test_bad_requests_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="cannot be split evenly over 3 processes"):
        launch(discs(8), TINY, CFG, tmp_path, nproc=3)
    with pytest.raises(TrainingError, match="nproc"):
        launch(discs(8), TINY, CFG, tmp_path, nproc=0)
    one = launch(discs(8), TINY, CFG.replace(steps=1), tmp_path / "one", nproc=1)   # one process: plain train()
    assert one.world_size == 1 and one.step == 1


def test_weights_checksum_sees_one_changed_bit() -> None:
    weights = [torch.randn(5, 3), torch.randn(7)]
    before = weights_checksum(weights)
    weights[1].view(torch.int32)[4] ^= 1
    assert weights_checksum(weights) != before
    assert weights_checksum(weights) == weights_checksum([w.clone() for w in weights])


def test_cli_trains_on_two_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ss_stylegan.data.synthetic import make_synthetic_datastore

    studies = tmp_path / "studies"
    make_synthetic_datastore(studies, n_studies=2, n_slices=6, size=32, random_state=0)
    run = tmp_path / "run"
    assert cli_main(["train", "--studies", str(studies), "--out", str(run), "--tiny", "--resolution", "32",
                     "--steps", "2", "--batch-size", "4", "--device", "cpu", "--nproc", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 2 and result["world_size"] == 2
    assert cli_main(["train", "--studies", str(studies), "--out", str(run), "--tiny", "--resolution", "32",
                     "--steps", "2", "--batch-size", "3", "--nproc", "2"]) == 1
    assert "cannot be split evenly" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli_main(["train", "--studies", str(studies), "--out", str(run), "--tiny", "--gpus", "all"]) == 1
        assert "needs CUDA GPUs" in capsys.readouterr().err


def test_a_process_that_cannot_start_fails_the_launch_at_once(tmp_path: Path) -> None:
    images = _memmap(tmp_path, discs(8))
    (tmp_path / "slices.npy").unlink()          # this process keeps its mapping; a child cannot open the file
    with pytest.raises(TrainingError, match="rank 1 failed to start"):
        launch(images, TINY, CFG, tmp_path / "run", nproc=2, threads_per_process=1)


def test_torchrun_starts_the_cli_as_two_ranks(tmp_path: Path) -> None:
    """The multi-machine path: torchrun's own launcher and rendezvous (here on one machine, --standalone)."""
    import os
    import subprocess
    import sys

    from ss_stylegan.data.synthetic import make_synthetic_datastore

    studies = tmp_path / "studies"
    make_synthetic_datastore(studies, n_studies=2, n_slices=6, size=32, random_state=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "lib")}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ss_stylegan",
         "train", "--studies", str(studies), "--out", str(tmp_path / "run"), "--tiny", "--resolution", "32",
         "--steps", "3", "--batch-size", "4", "--device", "cpu"],
        env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["world_size"] == 2 and printed[0]["step"] == 3   # rank 0 alone prints
    assert load_checkpoint(printed[0]["checkpoint"])["world_size"] == 2


PARENT = r"""
import sys, time
from pathlib import Path
import numpy as np
import torch.multiprocessing as mp
from ss_stylegan.config import ModelConfig, TrainConfig
from ss_stylegan.training import launcher

if __name__ == "__main__":
    rendezvous = Path(sys.argv[1])
    source = launcher._ImageSource.of(np.zeros((8, 32, 32), np.uint8))
    # rank 1 of 2, joining a group whose rank 0 never comes: it waits to join (launcher.INIT_TIMEOUT)
    child = mp.get_context("spawn").Process(target=launcher._worker, args=(
        1, 2, (rendezvous / "store").as_uri(), str(rendezvous), source, ModelConfig.tiny(32), TrainConfig(steps=1),
        str(rendezvous / "run"), "cpu", 1, launcher.os.getpid()))
    child.start()
    while not (rendezvous / "ready-1").exists():
        time.sleep(0.05)
    print(child.pid, flush=True)
    time.sleep(600)
"""


def test_a_rank_ends_when_the_launching_process_is_killed(tmp_path: Path) -> None:
    """``kill -9`` of rank 0's process (as ``DELETE /train/`` may do) must not leave a rank waiting for it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(PARENT, encoding="utf-8")
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE,
                              encoding="utf-8")
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.0)                           # the child is now waiting in init_process_group
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "rank 1 outlived the process that launched it"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"   # a zombie has ended
    except (FileNotFoundError, ProcessLookupError):
        return False
