"""What a training reports while it runs: progress, milestones (the moments a map is published), the result."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ss_stylegan.config import TrainConfig
from ss_stylegan.model.networks import SSStyleGAN


@dataclass
class TrainProgress:
    """What a progress callback receives (every ``log_interval`` steps and at the end)."""

    step: int
    total_steps: int
    images_seen: int
    losses: dict[str, float]
    elapsed: float                  # seconds of training so far, over all resumed sessions
    eta_seconds: float | None       # estimated seconds to the end, None before the first measurement
    images_per_second: float


@dataclass
class TrainResult:
    """Outcome of :func:`train`."""

    out_dir: Path
    checkpoint: Path
    model_version: str
    step: int
    total_steps: int
    images_seen: int
    stopped: bool                   # True when should_stop() ended the run early
    losses: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0            # seconds of training over all sessions (milestone callbacks not counted)
    out_of_time: bool = False       # True when the max_minutes budget ended the run
    world_size: int = 1             # processes that trained this session (torch.distributed)


@dataclass
class Milestone:
    """A pause in training for :func:`train`'s ``on_milestone``, right after a checkpoint was written.

    Milestones come every ``milestone_minutes`` of training time and/or ``milestone_kimg`` thousand images,
    and once at the end when training finishes or its time budget runs out (``final``), but not when a
    stop was requested. ``model`` is the live model: use it read-only, under ``torch.no_grad()``. The time a
    callback takes is not training time, and it cannot change the training (its RNG use is isolated).
    """

    step: int
    total_steps: int
    images_seen: int
    elapsed: float                  # seconds of training over all sessions
    checkpoint: Path
    model_version: str
    model: SSStyleGAN
    final: bool


class MilestoneSchedule:
    """When the next milestone is due: every ``milestone_kimg`` images and/or ``milestone_minutes`` of training
    time, counted from zero (a resumed run keeps the grid of the run it continues)."""

    def __init__(self, cfg: TrainConfig, images_seen: int, elapsed: float) -> None:
        self.every_img = cfg.milestone_kimg * 1000.0 if cfg.milestone_kimg else None
        self.every_s = cfg.milestone_minutes * 60.0 if cfg.milestone_minutes else None
        self.next_img = self._after(images_seen, self.every_img)
        self.next_s = self._after(elapsed, self.every_s)

    @staticmethod
    def _after(value: float, every: float | None) -> float:
        return math.inf if every is None else (math.floor(value / every) + 1) * every

    def due(self, images_seen: int, elapsed: float) -> bool:
        hit = images_seen >= self.next_img or elapsed >= self.next_s
        if hit:
            self.next_img = self._after(images_seen, self.every_img)
            self.next_s = self._after(elapsed, self.every_s)
        return hit


@dataclasses.dataclass
class SessionClock:
    """One call of :meth:`~ss_stylegan.training.loop.Trainer.loop`: its clock, and the losses summed since the last log."""

    budget: float                  # seconds of training allowed over all sessions
    start: float                   # perf_counter at the start of this session
    start_step: int
    elapsed_before: float          # seconds trained in earlier sessions
    paused: float = 0.0            # seconds spent in milestone callbacks (not training time)
    sums: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    window_t: float = 0.0
    window_step: int = 0
    last: dict[str, float] = dataclasses.field(default_factory=dict)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start - self.paused

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1
