"""Training on several processes with ``torch.distributed``: which process does what, and the collectives.

:func:`ss_stylegan.training.loop.train` calls :func:`context_for` and runs as one *rank* of a process group when
there is one: a group the caller already initialised (:mod:`ss_stylegan.training.launcher` does), or one described
by the environment variables ``torchrun`` sets (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), which :func:`context_for` then initialises: NCCL when training on CUDA,
gloo on a CPU. Each rank on CUDA uses ``cuda:LOCAL_RANK`` unless the device names an index.

Division of labour (see ``docs/ARCHITECTURE.md``, "Distributed training"):

* every rank holds the whole model; rank 0 broadcasts its weights once at the start;
* the global batch is split evenly (``batch_size / world_size`` per rank); after each optimiser's loss
  phases the gradients are averaged over the ranks with one ``all_reduce`` (and the mapping network's
  running ``w_avg`` with them), so every rank takes the same Adam step and the weights, the EMA
  generator and ``w_avg`` stay bitwise identical (checked at every checkpoint with :func:`weights_checksum`);
* rank 0 alone decides when to stop, log, save and pause for a milestone (a small broadcast per step on
  a gloo *control* group, which never synchronises a GPU), writes every file and runs every callback;
  the other ranks wait at a barrier of the control group, whose timeout is long enough for a milestone.

PyTorch's ``DistributedDataParallel`` is not used: its reducer expects one backward pass per forward,
while one SS-StyleGAN step runs several backward passes into overlapping parameter sets (the shared
trunk gets gradients from four loss phases) and a gradient of a gradient (R1). Averaging the gradients
once per optimiser step, as NVlabs' StyleGAN3 training loop does, is exact and needs no
``find_unused_parameters``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

CONTROL_TIMEOUT = datetime.timedelta(hours=12)
"""How long ranks wait at a control barrier (e.g. while rank 0 runs a milestone callback)."""


class DistributedError(RuntimeError):
    """The process group cannot be set up as asked; the message says what to change."""


@dataclasses.dataclass
class DistContext:
    """This process's place in a process group.

    Attributes:
        rank: global rank, 0 .. world_size - 1 (rank 0 writes files and runs callbacks).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: this rank's device.
        control: a gloo group over the same ranks for small CPU-side messages and barriers.
        owns_group: True when :func:`context_for` initialised the default group (and :meth:`close` ends it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control: dist.ProcessGroup
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self, wait: bool = True) -> None:
        """Destroy the control group, and the default group if this context created it; ``wait``: first wait
        for every rank (not after a failure, when the others may never come)."""
        if not dist.is_initialized():
            return
        if wait:
            self.barrier()
        if self.owns_group:
            dist.destroy_process_group()
        else:
            dist.destroy_process_group(self.control)

    # -- collectives over every rank ------------------------------------------------------------------------
    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Replace every tensor in ``tensors`` (any shapes, one dtype, this rank's device) by its mean over the
        ranks, with a single ``all_reduce``."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    @torch.no_grad()
    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` (e.g. parameters) on every rank with rank 0's values."""
        for t in tensors:
            dist.broadcast(t.detach(), src=0)

    def decide(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (a broadcast on the control group; the others' values are ignored)."""
        t = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(t, src=0, group=self.control)
        return t.tolist()

    def share_text(self, text: str | None) -> str | None:
        """Rank 0's ``text`` (``None`` allowed) on every rank."""
        data = b"" if text is None else text.encode("utf-8")
        size = torch.tensor([len(data) if text is not None else -1], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self.control)
        if int(size) < 0:
            return None
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main and size else \
            torch.empty(int(size), dtype=torch.uint8)
        if int(size):
            dist.broadcast(buf, src=0, group=self.control)
        return bytes(buf.tolist()).decode("utf-8")

    def gather_bytes(self, data: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``data`` (a uint8 CPU tensor of the same length on every rank), in rank order."""
        parts = [torch.empty_like(data) for _ in range(self.world_size)]
        dist.all_gather(parts, data, group=self.control)
        return parts

    def barrier(self) -> None:
        """Wait until every rank is here (control group: long timeout, no GPU synchronisation)."""
        dist.barrier(group=self.control)

    def check_identical(self, value: torch.Tensor, what: str) -> None:
        """Raise :class:`DistributedError` unless the int64 ``value`` is equal on every rank."""
        parts = self.gather_bytes(value.detach().to("cpu", torch.int64).reshape(-1).view(torch.uint8))
        if any(not torch.equal(p, parts[0]) for p in parts[1:]):
            raise DistributedError(
                f"{what} differ between ranks: the processes no longer train the same model (a rank ran "
                "different code or settings, or a GPU computed differently); restart from the last checkpoint"
            )


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset): > 1 under ``torchrun`` with several processes."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise DistributedError(f"WORLD_SIZE must be an integer, got {os.environ.get('WORLD_SIZE')!r}") from exc


def context_for(device: torch.device) -> DistContext | None:
    """This process's :class:`DistContext`, or ``None`` for a single process.

    Uses the default process group when one is initialised; otherwise initialises one from torchrun's
    environment when ``WORLD_SIZE`` > 1. ``device`` is the requested device (``cuda`` without an index
    becomes ``cuda:LOCAL_RANK``, which is made the current CUDA device).
    """
    owns = False
    if not dist.is_initialized():
        if env_world_size() <= 1:
            return None
        try:
            rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        except (KeyError, ValueError) as exc:
            raise DistributedError("WORLD_SIZE > 1 but RANK / LOCAL_RANK are missing: start with torchrun") from exc
        rank_device = rank_device_for(device, local_rank)
        dist.init_process_group(backend_for(rank_device), init_method="env://", rank=rank,
                                world_size=env_world_size(), device_id=rank_device if rank_device.type == "cuda"
                                else None)
        owns = True
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    rank_device = rank_device_for(device, local_rank)
    backend = dist.get_backend()
    if backend != backend_for(rank_device):
        raise DistributedError(
            f"the process group uses {backend} but this rank trains on {rank_device}; use nccl for CUDA "
            "and gloo for CPU training"
        )
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    logger.info("rank %d of %d on %s (%s)", rank, world, rank_device, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=rank_device, control=control,
                       owns_group=owns)


def rank_device_for(device: torch.device, local_rank: int) -> torch.device:
    """The device of the rank with ``local_rank`` on its machine: ``cuda`` -> ``cuda:local_rank`` (made current)."""
    if device.type != "cuda":
        return device
    index = device.index if device.index is not None else local_rank
    if index >= torch.cuda.device_count():
        raise DistributedError(
            f"rank with LOCAL_RANK {local_rank} needs cuda:{index} but only {torch.cuda.device_count()} GPU(s) "
            "are visible; start at most one process per GPU (torchrun --nproc-per-node)"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def weights_checksum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """An int64 checksum of the exact bits of ``tensors`` (order-independent integer sum, same on any device)."""
    total = torch.zeros((), dtype=torch.int64)
    for t in tensors:
        words = t.detach().contiguous().reshape(-1)
        words = words.view(torch.int32) if words.element_size() == 4 else words.view(torch.uint8)
        total += words.to(torch.int64).sum().cpu()
    return total
