"""Start SS-StyleGAN training on several processes of this machine (one per GPU, or CPU processes).

:func:`launch` is :func:`ss_stylegan.training.loop.train` on ``nproc`` processes: the calling process becomes
rank 0 (so ``progress``, ``should_stop`` and ``on_milestone`` work exactly as with :func:`train`, with
the live model), and ranks 1 .. nproc - 1 are child processes started with ``torch.multiprocessing``
(spawn). The processes meet through a file store in a temporary folder; gloo or NCCL then connect them.

Several machines: start ``python -m ss_stylegan train`` on every machine with ``torchrun`` (see the
README); :func:`train` joins torchrun's process group by itself. :func:`launch` is for one machine.

Failure handling: a child that fails before it joins (e.g. cannot open the slices) makes :func:`launch`
raise at once; one that dies later makes rank 0's next collective fail (gloo reports the closed
connection at once; NCCL after ``INIT_TIMEOUT``), and :func:`launch` raises :class:`TrainingError`; when
rank 0 fails, :func:`launch` terminates the children, and when its process is killed (``kill -9``) the
kernel ends them (Linux: ``PR_SET_PDEATHSIG``). Nothing written so far is lost: the next run resumes from the
last checkpoint, with any number of processes.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ss_stylegan.config import ConfigError, ModelConfig, TrainConfig
from ss_stylegan.training.distributed import backend_for
from ss_stylegan.training.loop import TrainingError, train
from ss_stylegan.training.progress import Milestone, TrainProgress, TrainResult

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
INIT_TIMEOUT = datetime.timedelta(minutes=10)
"""How long the processes wait for each other when joining and in a training collective (waits while rank 0
writes a checkpoint or runs a milestone use the control group's longer timeout)."""


def parse_gpus(value: str | int) -> list[int]:
    """The GPU ids a ``gpus`` setting names: ``"all"`` (every visible GPU), ``N`` (the first N) or ``"i,j,..."``.

    Raises:
        ConfigError: an unreadable value, no CUDA GPU, or more / other GPUs than are visible.
    """
    text = str(value).strip().lower()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"gpus {value!r} needs CUDA GPUs but none is visible; train on the CPU instead")
    try:
        if text == "all":
            ids = list(range(count))
        elif "," in text:
            ids = [int(part) for part in text.split(",") if part.strip()]
        else:
            ids = list(range(int(text)))
    except ValueError as exc:
        raise ConfigError(f"gpus must be 'all', a number of GPUs or a comma list of GPU ids, got {value!r}") from exc
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= count:
        raise ConfigError(f"gpus {value!r} names GPUs {ids}, but the visible GPUs are 0..{count - 1} (each once)")
    return ids


def gpus_setting(value: str, device: str) -> list[int] | None:
    """A server's ``gpus`` setting (``--conf gpus``): ``all``, N GPUs or GPU ids ``i,j`` (as the CLI's ``--gpus``) -> their ids, checked against
    the visible GPUs; ``0`` -> None."""
    text = str(value).strip().lower().replace(" ", "")
    if text not in ("all", "") and not all(part.isdigit() for part in text.split(",")):
        raise ConfigError(f"--conf gpus must be 'all', a number of GPUs, GPU ids such as 0,2, or 0 for one device; "
                          f"got {value!r}")
    if text == "" or text.isdigit() and int(text) == 0:
        return None
    if not device.startswith("cuda"):
        raise ConfigError(f"--conf gpus {value} trains on GPUs, but the device is {device!r} (no CUDA GPU is "
                          "visible, or --conf device cpu); leave gpus unset or 0 to train on one device")
    try:
        return parse_gpus(text)
    except ConfigError as err:
        raise ConfigError(f"--conf {err}") from err


def launch(
    images_u8: np.ndarray,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    *,
    nproc: int | None = None,
    gpus: Sequence[int] | None = None,
    device: str = "cpu",
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_milestone: Callable[[Milestone], None] | None = None,
    progress_bar: bool | None = None,
    threads_per_process: int | None = None,
) -> TrainResult:
    """Train on several processes of this machine; same outputs and result as :func:`train`.

    Args:
        images_u8: slices, uint8 ``[N, R, R]``. A memory map (e.g. ``SliceCache.images``) is reopened by
            every process; an in-memory array is copied to each child.
        model_cfg, train_cfg, out_dir: as for :func:`train` (``batch_size`` is the global batch).
        nproc: number of processes (CPU: gloo processes, mainly for testing; CUDA: one per GPU).
        gpus: GPU ids, one process each (see :func:`parse_gpus`); sets ``device`` to CUDA and ``nproc``.
        device: ``"cpu"`` or ``"cuda"`` when ``gpus`` is not given.
        progress, should_stop, on_milestone, progress_bar: as for :func:`train`, in this process (rank 0).
        threads_per_process: torch CPU threads of each process (default: the cores divided among them).

    Returns:
        The :class:`TrainResult` of rank 0 (``world_size`` = number of processes).

    Raises:
        TrainingError: a process failed (its exit code and the cause are logged) or bad arguments.
    """
    if gpus is not None:
        device, nproc = "cuda", len(gpus)
    nproc = 1 if nproc is None else int(nproc)
    if nproc < 1:
        raise TrainingError(f"nproc must be >= 1, got {nproc}")
    devices = [f"cuda:{g}" for g in gpus] if gpus is not None else [device] * nproc
    kwargs = {"progress": progress, "should_stop": should_stop, "on_milestone": on_milestone,
              "progress_bar": progress_bar}
    if nproc == 1:
        return train(images_u8, model_cfg, train_cfg, out_dir, device=devices[0], **kwargs)
    if train_cfg.batch_size % nproc:
        raise TrainingError(f"batch_size {train_cfg.batch_size} cannot be split evenly over {nproc} processes; "
                            f"use a multiple of {nproc}")
    if dist.is_initialized():
        raise TrainingError("a torch.distributed process group is already running in this process; call train()")
    threads = threads_per_process or max(1, (os.cpu_count() or 1) // nproc)
    return _run_group(images_u8, model_cfg, train_cfg, out_dir, devices, threads, kwargs)


def _run_group(images_u8: np.ndarray, model_cfg: ModelConfig, train_cfg: TrainConfig, out_dir: str | Path,
               devices: list[str], threads: int, kwargs: dict[str, Any]) -> TrainResult:
    """Rank 0 here and ranks 1.. in spawned processes, one per device; the children are always reaped."""
    nproc = len(devices)
    source = _ImageSource.of(images_u8)
    rendezvous = Path(tempfile.mkdtemp(prefix="ss_stylegan_rdzv_"))
    init_method = (rendezvous / "store").as_uri()
    spawn = mp.get_context("spawn")
    children = [spawn.Process(target=_worker, name=f"ss_stylegan-rank{rank}", args=(
        rank, nproc, init_method, str(rendezvous), source, model_cfg, train_cfg, str(out_dir), devices[rank],
        threads, os.getpid()))
        for rank in range(1, nproc)]
    for child in children:
        child.start()
    threads_before = torch.get_num_threads()
    ok = False
    try:
        _wait_until_ready(children, rendezvous)
        torch.set_num_threads(threads)
        _init_group(0, nproc, init_method, devices[0])
        try:
            result = train(images_u8, model_cfg, train_cfg, out_dir, device=devices[0], **kwargs)
        finally:
            dist.destroy_process_group()
        ok = True
    except Exception as exc:
        failed = [f"rank {r} (exit code {c.exitcode})" for r, c in enumerate(children, 1) if c.exitcode not in (None, 0)]
        if failed:
            raise TrainingError(f"training process(es) {', '.join(failed)} failed (see the log above): {exc}") from exc
        raise
    finally:
        torch.set_num_threads(threads_before)
        for child in children:
            if not ok:
                child.terminate()
            child.join()
        shutil.rmtree(rendezvous, ignore_errors=True)
    failed = [f"rank {r} (exit code {c.exitcode})" for r, c in enumerate(children, 1) if c.exitcode != 0]
    if failed:
        raise TrainingError(f"training process(es) {', '.join(failed)} failed after rank 0 finished; see the log")
    return result


class _ImageSource:
    """How a child process gets the slices: the file and layout of a memory map, or the array itself."""

    def __init__(self, path: str | None, offset: int, shape: tuple[int, ...], array: np.ndarray | None) -> None:
        self.path, self.offset, self.shape, self.array = path, offset, shape, array

    @classmethod
    def of(cls, images: np.ndarray) -> _ImageSource:
        if isinstance(images, np.memmap) and getattr(images, "filename", None) and images.base is not None:
            return cls(str(images.filename), int(images.offset), tuple(images.shape), None)
        return cls(None, 0, tuple(images.shape), np.asarray(images))

    def open(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=self.shape)


def _wait_until_ready(children: list[BaseProcess], rendezvous: Path) -> None:
    """Wait until every child has opened its slices (``ready-<rank>`` files), failing at once if one dies."""
    waiting = {rank: child for rank, child in enumerate(children, 1)}
    while waiting:
        for rank, child in list(waiting.items()):
            if (rendezvous / f"ready-{rank}").exists():
                del waiting[rank]
            elif child.exitcode is not None:
                raise TrainingError(f"training process of rank {rank} failed to start (exit code {child.exitcode}); "
                                    "see its error above")
        time.sleep(0.05)


def _init_group(rank: int, world_size: int, init_method: str, device: str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend_for(dev), init_method=init_method, rank=rank, world_size=world_size,
                            timeout=INIT_TIMEOUT, device_id=dev if dev.type == "cuda" else None)


def _exit_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel send this process SIGTERM when the process that launched it ends, however it
    ends (``kill -9`` by ``DELETE /train/`` included). Otherwise a rank whose rank 0 died while it waits to
    join, or inside an NCCL collective, would hold its GPU until ``INIT_TIMEOUT``."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # no prctl: the collective's timeout still ends the rank
        logger.warning("cannot ask to end with the launching process; a rank may outlive a killed rank 0")
        return
    if os.getppid() != parent_pid:  # it ended before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(rank: int, world_size: int, init_method: str, rendezvous: str, source: _ImageSource,
            model_cfg: ModelConfig, train_cfg: TrainConfig, out_dir: str, device: str, threads: int,
            parent_pid: int) -> None:
    """Entry point of ranks 1 .. world_size - 1 (a spawned process)."""
    _exit_with_parent(parent_pid)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    images = source.open()
    (Path(rendezvous) / f"ready-{rank}").touch()
    _init_group(rank, world_size, init_method, device)
    try:
        train(images, model_cfg, train_cfg, out_dir, device=device, progress_bar=False)
    finally:
        dist.destroy_process_group()
