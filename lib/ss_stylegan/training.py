"""SS-StyleGAN training loop: G and D/encoder steps, EMA, resume, metrics, image grids, progress, stop flag.

One step (batch B):

1. G step: ``Gmain`` + ``Erec`` (see :mod:`ss_stylegan.losses`), Adam step of G. The encoder's
   gradients from ``Erec`` are kept and joined by the D step's.
2. D step: ``Dmain`` + ``Enll`` on one batch of generated pairs, ``Dr1`` every ``r1_interval`` steps,
   Adam step of D (which holds the shared trunk and the encoder head).
3. ``generator_ema`` moves towards ``generator`` (half-life ``ema_kimg``).

Reproducibility: all randomness comes from a forked, seeded torch RNG (z, noise, augmentation) and
a separate CPU generator for the data order; both states are checkpointed, so a run stopped at
step k and resumed matches one that never stopped (bit-for-bit on CPU).
"""

from __future__ import annotations

import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ss_stylegan.atomic import atomic_write_bytes, atomic_write_text
from ss_stylegan.checkpoint import (
    CheckpointError,
    checkpoint_version,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ss_stylegan.config import ModelConfig, TrainConfig
from ss_stylegan.losses import SSStyleGANLoss
from ss_stylegan.networks import SSStyleGAN

logger = logging.getLogger(__name__)

GRID_SAMPLES = 16


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad data, diverged losses); the message says what to do."""


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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a CUDA request without CUDA is a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was requested but no CUDA GPU is available; use device 'cpu'")
    return device


def to_model_input(images_u8: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 slices ``[B, R, R]`` -> float32 ``[B, 1, R, R]`` in [-1, 1] on ``device``."""
    x = torch.from_numpy(np.array(images_u8, dtype=np.uint8, copy=True)).to(device=device, dtype=torch.float32)
    return (x / 127.5 - 1.0)[:, None]


def check_slices(images_u8: Any, resolution: int) -> None:
    """Raise :class:`TrainingError` unless ``images_u8`` is a uint8 array ``[N, R, R]`` with N >= 1."""
    if not isinstance(images_u8, np.ndarray):
        raise TrainingError(f"images must be a numpy array (or memmap) of uint8 slices, got {type(images_u8)}")
    if images_u8.dtype != np.uint8 or images_u8.ndim != 3 or images_u8.shape[1:] != (resolution, resolution):
        raise TrainingError(
            f"images must be uint8 [N, {resolution}, {resolution}] (the model resolution), got "
            f"{images_u8.dtype} {list(images_u8.shape)}; rebuild the slice cache at resolution {resolution}"
        )
    if images_u8.shape[0] < 1:
        raise TrainingError("no slices to train on: the studies folder yielded no usable slice")


def train(
    images_u8: np.ndarray,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
    progress_bar: bool | None = None,
    on_milestone: Callable[[Milestone], None] | None = None,
) -> TrainResult:
    """Train SS-StyleGAN on unlabelled slices, resuming from the newest good checkpoint in ``out_dir``.

    Args:
        images_u8: slices, uint8 ``[N, R, R]`` (a memmap is read batch by batch, never whole).
        model_cfg: architecture; must match an existing checkpoint when resuming.
        train_cfg: losses, optimiser, length, checkpointing.
        out_dir: outputs: ``ckpt-*.pt`` (+ ``.json`` integrity records), ``config.json``,
            ``metrics.jsonl``, ``samples.png``, ``reconstructions.png``.
        progress: called with a :class:`TrainProgress` every ``log_interval`` steps and at the end.
        should_stop: polled after every step; ``True`` writes a checkpoint and returns (``stopped=True``).
        device: ``"cpu"``, ``"cuda"``, ... ; ``None`` picks CUDA when available.
        progress_bar: show a tqdm bar on stderr; ``None`` shows it when stderr is a terminal.
        on_milestone: called with a :class:`Milestone` at each milestone of ``train_cfg`` and at the end
            (e.g. to embed and publish a map while training goes on).

    Returns:
        A :class:`TrainResult` naming the last checkpoint and its model version.
    """
    model_cfg.validate()
    train_cfg.validate()
    check_slices(images_u8, model_cfg.resolution)
    dev = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(train_cfg.seed)
        run = Trainer(images_u8, model_cfg, train_cfg, out, dev)
        if progress_bar is None:
            progress_bar = sys.stderr.isatty()
        return run.loop(progress, should_stop, progress_bar, on_milestone)


class Trainer:
    """State of one training run in one output folder; :func:`train` is the usual way to drive it.

    Constructing it builds the model and optimisers, resumes from the newest good checkpoint (when
    ``cfg.resume``) and writes ``config.json``; :meth:`train_step` runs one step (used by benchmarks).
    Call it inside a seeded RNG context as :func:`train` does if runs must be reproducible.
    """

    def __init__(self, images: np.ndarray, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
                 device: torch.device) -> None:
        self.images, self.model_cfg, self.cfg, self.out, self.device = images, model_cfg, cfg, out, device
        self.total = cfg.total_steps()
        self.model = SSStyleGAN(model_cfg).to(device).train()
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.loss = SSStyleGANLoss(self.model, cfg)
        r1_on = cfg.r1_interval > 0 and self.loss.r1_gamma > 0
        # Lazy R1 is added to the D loss of the same optimiser step (not a separate step as in StyleGAN2), so
        # D takes one Adam step per iteration and needs no I/(I+1) learning-rate/betas correction; the penalty
        # itself is multiplied by the interval (losses.py) so its average strength equals eager R1.
        b1, b2 = float(cfg.betas[0]), float(cfg.betas[1])
        self.opt_hparams = [{"lr": cfg.g_lr, "betas": (b1, b2)}, {"lr": cfg.d_lr, "betas": (b1, b2)}]
        self.opt_g = torch.optim.Adam(self.model.generator.parameters(), **self.opt_hparams[0])
        self.opt_d = torch.optim.Adam(self.model.discriminator.parameters(), **self.opt_hparams[1])
        self.r1_on = r1_on
        self.data_rng = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.images_seen = 0
        self.elapsed_before = 0.0
        grid_rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.grid_z = torch.randn(GRID_SAMPLES, model_cfg.z_dim, generator=grid_rng).to(device)
        n = images.shape[0]
        self.grid_idx = np.unique(np.linspace(0, n - 1, min(8, n)).round().astype(np.int64))
        if cfg.resume:
            self._resume()
        self._write_config()

    # ----------------------------------------------------------------- persistence
    def _write_config(self) -> None:
        resolved = {
            "model": self.model_cfg.to_dict(),
            "train": self.cfg.to_dict(),
            "resolved": {"total_steps": self.total, "r1_gamma": self.loss.r1_gamma, "device": str(self.device),
                         "num_images": int(self.images.shape[0]), "num_ws": self.model.generator.num_ws,
                         "shared_blocks": self.model_cfg.resolved_shared_blocks},
        }
        atomic_write_text(self.out / "config.json", json.dumps(resolved, indent=2, sort_keys=True))

    def _resume(self) -> None:
        path = latest_checkpoint(self.out)
        if path is None:
            return
        state = load_checkpoint(path, map_location="cpu")
        if state["model_config"] != self.model_cfg.to_dict():
            raise CheckpointError(
                f"{self.out} holds a checkpoint of a different model configuration ({path.name}); "
                "use another output folder, or set resume to false to start over there"
            )
        m = self.model
        m.generator.load_state_dict(state["generator"])
        m.generator_ema.load_state_dict(state["generator_ema"])
        m.discriminator.load_state_dict(state["discriminator"])
        for opt, key, hparams in zip((self.opt_g, self.opt_d), ("opt_g", "opt_d"), self.opt_hparams):
            opt.load_state_dict(state[key])
            for group in opt.param_groups:   # this run's settings win over the saved ones (e.g. a new lr)
                group.update(hparams)
        rng = state["rng"]
        torch.set_rng_state(rng["torch_cpu"])
        if self.device.type == "cuda" and rng.get("torch_cuda") is not None:
            torch.cuda.set_rng_state(rng["torch_cuda"], self.device)
        self.data_rng.set_state(rng["data"])
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.elapsed_before = float(state["elapsed"])
        self._truncate_metrics(self.step)
        logger.info("resumed from %s at step %d (%d images seen)", path.name, self.step, self.images_seen)

    def _truncate_metrics(self, step: int) -> None:
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _save(self, elapsed: float) -> Path:
        m = self.model
        state = {
            "model_config": self.model_cfg.to_dict(),
            "train_config": self.cfg.to_dict(),
            "step": self.step,
            "images_seen": self.images_seen,
            "elapsed": elapsed,
            "generator": m.generator.state_dict(),
            "generator_ema": m.generator_ema.state_dict(),
            "discriminator": m.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": {
                "torch_cpu": torch.get_rng_state(),
                "torch_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "data": self.data_rng.get_state(),
            },
        }
        path = save_checkpoint(self.out, state, keep=self.cfg.keep_checkpoints)
        self._save_grids()
        return path

    @torch.no_grad()
    def _save_grids(self) -> None:
        g = self.model.generator_ema
        samples = g.synthesis(g.mapping(self.grid_z), noise_mode="const")
        _write_png(self.out / "samples.png", _grid(samples, cols=4))
        real = to_model_input(self.images[self.grid_idx], self.device)
        recon = self.model.reconstruct(real)
        _write_png(self.out / "reconstructions.png", _grid(torch.cat([real, recon]), cols=real.shape[0]))

    # ----------------------------------------------------------------- training
    def _batch(self) -> torch.Tensor:
        idx = torch.randint(self.images.shape[0], (self.cfg.batch_size,), generator=self.data_rng).numpy()
        batch = to_model_input(self.images[np.sort(idx)], self.device)
        return batch.contiguous(memory_format=self.memory_format)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One G step, one D/encoder step and the EMA update; returns this step's named losses (0-dim tensors)."""
        cfg, loss, z_dim, b = self.cfg, self.loss, self.model_cfg.z_dim, self.cfg.batch_size
        real = self._batch()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        stats = loss.accumulate_gradients("Gmain", z=torch.randn(b, z_dim, device=self.device))
        if cfg.rec_weight > 0:
            stats |= loss.accumulate_gradients("Erec", real=real)
        self.opt_g.step()
        fake = loss.generate(torch.randn(b, z_dim, device=self.device))
        stats |= loss.accumulate_gradients("Dmain", real=real, fake=fake)
        if cfg.enc_weight > 0:
            stats |= loss.accumulate_gradients("Enll", fake=fake)
        if self.r1_on and self.step % cfg.r1_interval == 0:
            stats |= loss.accumulate_gradients("Dr1", real=real)
        self.opt_d.step()
        self.step += 1
        self.images_seen += b
        self._update_ema()
        return stats

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema_nimg = self.cfg.ema_kimg * 1000
        if self.cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.images_seen * self.cfg.ema_rampup)
        beta = 0.5 ** (self.cfg.batch_size / max(ema_nimg, 1e-8))
        g, ema = self.model.generator, self.model.generator_ema
        for p_ema, p in zip(ema.parameters(), g.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(ema.buffers(), g.buffers()):
            b_ema.copy_(b)

    def loop(self, progress: Callable[[TrainProgress], None] | None, should_stop: Callable[[], bool] | None,
             progress_bar: bool, on_milestone: Callable[[Milestone], None] | None = None) -> TrainResult:
        cfg = self.cfg
        budget = cfg.max_minutes * 60.0 if cfg.max_minutes is not None else math.inf
        start, start_step = time.perf_counter(), self.step
        paused = 0.0                       # seconds spent in milestone callbacks (not training time)
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        last_log_t, last_log_step = start, self.step
        stopped, out_of_time, last = False, self.elapsed_before >= budget, {}
        ckpt: Path | None = None
        schedule = _MilestoneSchedule(cfg, self.images_seen, self.elapsed_before)
        bar = tqdm(total=self.total, initial=self.step, disable=not progress_bar, unit="step", dynamic_ncols=True)

        def elapsed_now() -> float:
            return self.elapsed_before + time.perf_counter() - start - paused

        try:
            while self.step < self.total and not out_of_time:
                stats = self.train_step()
                for k, v in stats.items():
                    sums[k] = sums[k] + v if k in sums else v
                    counts[k] = counts.get(k, 0) + 1
                bar.update(1)
                stopped = bool(should_stop and should_stop())
                elapsed = elapsed_now()
                out_of_time = elapsed >= budget
                done = stopped or out_of_time or self.step >= self.total
                milestone = not stopped and (done or schedule.due(self.images_seen, elapsed))
                save = done or milestone or self.step % cfg.checkpoint_interval == 0
                if save or self.step % cfg.log_interval == 0:   # losses are checked before every save
                    now = time.perf_counter()
                    last = self._averages(sums, counts)
                    rate = (self.step - last_log_step) * cfg.batch_size / max(now - last_log_t, 1e-9)
                    self._log(last, elapsed - self.elapsed_before, start_step, rate, progress, bar, budget)
                    sums, counts, last_log_t, last_log_step = {}, {}, now, self.step
                if save:
                    ckpt = self._save(elapsed)
                if milestone and on_milestone is not None and ckpt is not None:
                    t0 = time.perf_counter()
                    self._milestone(on_milestone, ckpt, elapsed, final=done)
                    paused += time.perf_counter() - t0
                    last_log_t = time.perf_counter()
                if stopped:
                    logger.info("training stopped on request at step %d", self.step)
                    break
        finally:
            bar.close()
        if out_of_time:
            logger.info("training time budget of %.1f minutes reached at step %d", budget / 60, self.step)
        if ckpt is None:   # nothing left to do: the newest checkpoint already covers the run
            ckpt = latest_checkpoint(self.out) or self._save(self.elapsed_before)
            if on_milestone is not None and not stopped:
                self._milestone(on_milestone, ckpt, self.elapsed_before, final=True)
        return TrainResult(out_dir=self.out, checkpoint=ckpt, model_version=checkpoint_version(ckpt),
                           step=self.step, total_steps=self.total, images_seen=self.images_seen,
                           stopped=stopped, losses=last, elapsed=elapsed_now() if self.step > start_step
                           else self.elapsed_before, out_of_time=out_of_time and not stopped)

    def _milestone(self, callback: Callable[[Milestone], None], ckpt: Path, elapsed: float, final: bool) -> None:
        """Call ``callback`` with the model in eval mode and the training RNG streams isolated."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                callback(Milestone(step=self.step, total_steps=self.total, images_seen=self.images_seen,
                                   elapsed=elapsed, checkpoint=ckpt, model_version=checkpoint_version(ckpt),
                                   model=self.model, final=final))
        finally:
            self.model.train()

    def _averages(self, sums: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, float]:
        """Mean of each statistic over the steps that produced it; raises when training has diverged."""
        means = {k: float(v) / counts[k] for k, v in sums.items()}
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(
                f"training diverged before step {self.step}: {bad} not finite; lower g_lr/d_lr or raise "
                "r1_gamma, then resume (the last checkpoint was written before this happened)"
            )
        return means

    def _log(self, losses: dict[str, float], session_elapsed: float, start_step: int, rate: float,
             progress: Callable[[TrainProgress], None] | None, bar: Any, budget: float = math.inf) -> None:
        steps_done = self.step - start_step
        eta = (self.total - self.step) * session_elapsed / steps_done if steps_done else None
        elapsed = self.elapsed_before + session_elapsed
        if eta is not None and math.isfinite(budget):
            eta = max(0.0, min(eta, budget - elapsed))
        record = {"step": self.step, "images_seen": self.images_seen, "kimg": self.images_seen / 1000,
                  **losses, "time": round(elapsed, 3), "images_per_second": round(rate, 2)}
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in losses.items() if k.startswith("loss/")})
        logger.debug("step %d: %s", self.step, record)
        if progress is not None:
            progress(TrainProgress(step=self.step, total_steps=self.total, images_seen=self.images_seen,
                                   losses=dict(losses), elapsed=elapsed, eta_seconds=eta,
                                   images_per_second=rate))


class _MilestoneSchedule:
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


def _grid(images: torch.Tensor, cols: int) -> np.ndarray:
    """``[N, 1, R, R]`` in [-1, 1] -> uint8 mosaic ``[rows * R, cols * R]``."""
    x = ((images[:, 0].float().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    n, r, _ = x.shape
    rows = -(-n // cols)
    canvas = np.zeros((rows * r, cols * r), dtype=np.uint8)
    for i in range(n):
        canvas[(i // cols) * r:(i // cols + 1) * r, (i % cols) * r:(i % cols + 1) * r] = x[i]
    return canvas


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())

