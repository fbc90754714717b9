"""SS-StyleGAN training loop: G and D/encoder steps, EMA, resume, metrics, image grids, progress, stop flag.

One step (batch B):

1. G step: ``Gmain`` + ``Erec`` (see :mod:`ss_stylegan.model.losses`), Adam step of G. The encoder's
   gradients from ``Erec`` are kept and joined by the D step's.
2. D step: ``Dmain`` + ``Enll`` on one batch of generated pairs, ``Dr1`` every ``r1_interval`` steps,
   Adam step of D (which holds the shared trunk and the encoder head).
3. ``generator_ema`` moves towards ``generator`` (half-life ``ema_kimg``).

Reproducibility: the slices and latents of step k are drawn from a generator seeded by ``(seed, k)``
alone, so they do not depend on how the run was split into sessions or processes; the noise inputs and
augmentation come from a forked, seeded torch RNG whose state is checkpointed. A run stopped at step k
and resumed matches one that never stopped (bit-for-bit on CPU).

Several processes (``torch.distributed``, :mod:`ss_stylegan.training.distributed`): the global batch is split
evenly over the ranks, gradients and ``w_avg`` are averaged after each optimiser's phases, and each rank draws
its own noise and augmentation; a checkpoint resumes with any number of processes (docs/ARCHITECTURE.md,
"Distributed training", has the rules).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ss_stylegan.config import ModelConfig, TrainConfig, derive_seed
from ss_stylegan.model import devices
from ss_stylegan.model.checkpoint import (
    CheckpointError,
    checkpoint_name,
    checkpoint_version,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ss_stylegan.model.losses import SSStyleGANLoss
from ss_stylegan.model.networks import ShapeError, SSStyleGAN
from ss_stylegan.model.networks.inputs import check_slices as check_model_slices
from ss_stylegan.model.networks.inputs import to_model_input
from ss_stylegan.storage.atomic import append_line, atomic_write_text
from ss_stylegan.training.distributed import DistContext, context_for, weights_checksum
from ss_stylegan.training.images import GRID_SAMPLES, save_grids
from ss_stylegan.training.progress import (
    Milestone,
    MilestoneSchedule,
    SessionClock,
    TrainProgress,
    TrainResult,
)

logger = logging.getLogger(__name__)

_DATA_STREAM, _RANK_STREAM = 0, 1   # first word of the seed-sequence keys of the two kinds of stream


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad data, diverged losses); the message says what to do."""


def _torch_device(device: str | torch.device | None) -> torch.device:
    """The training's device; a CUDA request without CUDA (or a name that is not a device) is a
    :class:`TrainingError` that says what to use."""
    try:
        return torch.device(devices.resolve_device(device))
    except devices.DeviceError as err:
        raise TrainingError(str(err)) from err


def _check_slices(images_u8: Any, resolution: int) -> None:
    """The model's input check, as a :class:`TrainingError`."""
    try:
        check_model_slices(images_u8, resolution)
    except ShapeError as err:
        raise TrainingError(str(err)) from err


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

    Under ``torch.distributed`` (a process group the caller initialised, or torchrun's environment) every
    process calls this with the same arguments; see the module docstring and :mod:`ss_stylegan.training.distributed`.
    Only rank 0 writes files and calls ``progress``, ``should_stop`` and ``on_milestone``; every rank
    returns the same :class:`TrainResult`.

    Args:
        images_u8: slices, uint8 ``[N, R, R]`` (a memmap is read batch by batch, never whole).
        model_cfg: architecture; must match an existing checkpoint when resuming.
        train_cfg: losses, optimiser, length, checkpointing. ``batch_size`` is the global batch: with W
            processes each takes ``batch_size / W`` (it must divide evenly).
        out_dir: outputs: ``ckpt-*.pt`` (+ ``.json`` integrity records), ``config.json``,
            ``metrics.jsonl``, ``samples.png``, ``reconstructions.png``. With several machines it must be
            a folder every machine sees (every rank reads the checkpoint it resumes from).
        progress: called with a :class:`TrainProgress` every ``log_interval`` steps and at the end.
        should_stop: polled after every step; ``True`` writes a checkpoint and returns (``stopped=True``).
        device: ``"cpu"``, ``"cuda"``, ... ; ``None`` picks CUDA when available. Under torch.distributed
            ``"cuda"`` means ``cuda:LOCAL_RANK``.
        progress_bar: show a tqdm bar on stderr; ``None`` shows it when stderr is a terminal.
        on_milestone: called with a :class:`Milestone` at each milestone of ``train_cfg`` and at the end
            (e.g. to embed and publish a map while training goes on).

    Returns:
        A :class:`TrainResult` naming the last checkpoint and its model version.
    """
    model_cfg.validate()
    train_cfg.validate()
    _check_slices(images_u8, model_cfg.resolution)
    dev = _torch_device(device)
    ctx = context_for(dev)
    try:
        if ctx is not None:
            dev = ctx.device
            if train_cfg.batch_size % ctx.world_size:
                raise TrainingError(
                    f"batch_size {train_cfg.batch_size} cannot be split evenly over {ctx.world_size} processes; "
                    f"use a multiple of {ctx.world_size} (each process takes batch_size / {ctx.world_size})"
                )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rng_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
            if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(train_cfg.seed)
            run = Trainer(images_u8, model_cfg, train_cfg, out, dev, dist=ctx)
            if progress_bar is None:
                progress_bar = sys.stderr.isatty()
            result = run.loop(progress, should_stop, progress_bar, on_milestone)
    except BaseException:
        if ctx is not None:
            ctx.close(wait=False)    # the other ranks fail at their next collective (or torchrun stops them)
        raise
    if ctx is not None:
        ctx.close()
    return result


class Trainer:
    """State of one training run in one output folder; :func:`train` is the usual way to drive it.

    Constructing it builds the model and optimisers, resumes from the newest good checkpoint (when
    ``cfg.resume``) and writes ``config.json``; :meth:`train_step` runs one step (used by benchmarks).
    Call it inside a seeded RNG context as :func:`train` does if runs must be reproducible. ``dist`` is
    this process's place in a process group (``None``: a single process).
    """

    def __init__(self, images: np.ndarray, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
                 device: torch.device, dist: DistContext | None = None) -> None:
        self.images, self.model_cfg, self.cfg, self.out, self.device = images, model_cfg, cfg, out, device
        self.dist = dist
        self.rank, self.world_size = (dist.rank, dist.world_size) if dist is not None else (0, 1)
        self.is_main = self.rank == 0
        self.local_batch = cfg.batch_size // self.world_size
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
        self.step = 0
        self.images_seen = 0
        self.elapsed_before = 0.0
        grid_rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.grid_z = torch.randn(GRID_SAMPLES, model_cfg.z_dim, generator=grid_rng).to(device)
        n = images.shape[0]
        self.grid_idx = np.unique(np.linspace(0, n - 1, min(8, n)).round().astype(np.int64))
        if self.rank > 0:   # rank 0 keeps the single-process noise/augmentation stream, the others their own
            torch.manual_seed(derive_seed(cfg.seed, _RANK_STREAM, self.rank))
        if cfg.resume:
            self._resume()
        if dist is not None:   # identical start on every rank, whatever each process did before
            dist.broadcast_(list(self.model.parameters()) + list(self.model.buffers()))
        if self.is_main:
            self._write_config()

    # ----------------------------------------------------------------- persistence
    def _write_config(self) -> None:
        resolved = {
            "model": self.model_cfg.to_dict(),
            "train": self.cfg.to_dict(),
            "resolved": {"total_steps": self.total, "r1_gamma": self.loss.r1_gamma, "device": str(self.device),
                         "num_images": int(self.images.shape[0]), "num_ws": self.model.generator.num_ws,
                         "shared_blocks": self.model_cfg.resolved_shared_blocks, "world_size": self.world_size,
                         "batch_per_process": self.local_batch},
        }
        atomic_write_text(self.out / "config.json", json.dumps(resolved, indent=2, sort_keys=True))

    def _resume(self) -> None:
        found = latest_checkpoint(self.out) if self.is_main else None
        if self.dist is not None:   # every rank loads the checkpoint rank 0 chose
            text = self.dist.share_text(None if found is None else str(found))
            found = None if text is None else Path(text)
        if found is None:
            return
        state = load_checkpoint(found, map_location="cpu")
        if state["model_config"] != self.model_cfg.to_dict():
            raise CheckpointError(
                f"{self.out} holds a checkpoint of a different model configuration ({found.name}); "
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
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.elapsed_before = float(state["elapsed"])
        self._restore_rng(state["rng"])
        if self.is_main:
            self._truncate_metrics(self.step)
        logger.info("resumed from %s at step %d (%d images seen)", found.name, self.step, self.images_seen)

    def _restore_rng(self, rng: dict[str, Any]) -> None:
        """This rank's noise/augmentation RNG from a checkpoint written by any number of processes."""
        ranks = rng.get("ranks") or [{"torch_cpu": rng["torch_cpu"], "torch_cuda": rng.get("torch_cuda")}]
        if self.rank >= len(ranks):   # more processes than the run that wrote it: a new stream for this rank
            torch.manual_seed(derive_seed(self.cfg.seed, _RANK_STREAM, self.rank, self.step))
            logger.info("rank %d has no saved RNG state (checkpoint of %d process(es)): new noise stream",
                        self.rank, len(ranks))
            return
        torch.set_rng_state(ranks[self.rank]["torch_cpu"])
        if self.device.type == "cuda" and ranks[self.rank].get("torch_cuda") is not None:
            torch.cuda.set_rng_state(ranks[self.rank]["torch_cuda"], self.device)

    def _rng_states(self) -> list[dict[str, torch.Tensor | None]]:
        """Every rank's RNG state, in rank order (collective under torch.distributed)."""
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        if self.dist is None:
            return [{"torch_cpu": cpu, "torch_cuda": cuda}]
        cpus = self.dist.gather_bytes(cpu)
        cudas = self.dist.gather_bytes(cuda) if cuda is not None else [None] * self.world_size
        return [{"torch_cpu": c, "torch_cuda": g} for c, g in zip(cpus, cudas)]

    def _truncate_metrics(self, step: int) -> None:
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_bytes().split(b"\n"):  # a line torn by a crash or a full disk is dropped
            try:
                if json.loads(line.decode("utf-8"))["step"] <= step:
                    kept.append(line.decode("utf-8"))
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _save(self, elapsed: float) -> Path:
        """Write a checkpoint (rank 0) and return its path; collective under torch.distributed."""
        m = self.model
        ranks = self._rng_states()
        if self.dist is not None:
            weights = list(m.generator.parameters()) + list(m.discriminator.parameters()) + \
                list(m.generator_ema.parameters()) + list(m.generator.buffers())
            self.dist.check_identical(weights_checksum(weights), f"the weights at step {self.step}")
        path = self.out / checkpoint_name(self.step)
        if self.is_main:
            state = {
                "model_config": self.model_cfg.to_dict(),
                "train_config": self.cfg.to_dict(),
                "step": self.step,
                "images_seen": self.images_seen,
                "elapsed": elapsed,
                "world_size": self.world_size,
                "generator": m.generator.state_dict(),
                "generator_ema": m.generator_ema.state_dict(),
                "discriminator": m.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "rng": {**ranks[0], "ranks": ranks},
            }
            path = save_checkpoint(self.out, state, keep=self.cfg.keep_checkpoints)
            real = to_model_input(self.images[self.grid_idx], self.device)
            save_grids(self.model, self.grid_z, real, self.out, self.step)
        return path

    # ----------------------------------------------------------------- training
    def _draws(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's share of step ``self.step``'s draw: real slices ``[b, 1, R, R]``, ``z`` for the G and
        the D step ``[b, z_dim]`` each (``b`` = batch_size / world_size: slots rank, rank + W, ...)."""
        cfg, z_dim = self.cfg, self.model_cfg.z_dim
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, _DATA_STREAM, self.step))
        idx = torch.randint(self.images.shape[0], (cfg.batch_size,), generator=gen).numpy()
        z_g = torch.randn(cfg.batch_size, z_dim, generator=gen)
        z_d = torch.randn(cfg.batch_size, z_dim, generator=gen)
        mine = slice(self.rank, None, self.world_size)
        idx = idx[mine]
        order = np.argsort(idx, kind="stable")      # read the memmap in file order, keep the slot order
        images = np.empty((len(idx), *self.images.shape[1:]), dtype=np.uint8)
        images[order] = self.images[idx[order]]
        real = to_model_input(images, self.device).contiguous(memory_format=self.memory_format)
        return real, z_g[mine].to(self.device), z_d[mine].to(self.device)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One G step, one D/encoder step and the EMA update; returns this step's named losses (0-dim tensors).

        Under torch.distributed the losses are this rank's (averaged over the ranks when logged) and the
        gradients of each optimiser, with ``w_avg``, are averaged over the ranks before its step.
        """
        cfg, loss = self.cfg, self.loss
        real, z_g, z_d = self._draws()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        stats = loss.accumulate_gradients("Gmain", z=z_g)
        if cfg.rec_weight > 0:
            stats |= loss.accumulate_gradients("Erec", real=real)
        self._average_over_ranks(self.model.generator, [self.model.generator.mapping.w_avg])
        self.opt_g.step()
        fake = loss.generate(z_d)
        stats |= loss.accumulate_gradients("Dmain", real=real, fake=fake)
        if cfg.enc_weight > 0:
            stats |= loss.accumulate_gradients("Enll", fake=fake)
        if self.r1_on and self.step % cfg.r1_interval == 0:
            stats |= loss.accumulate_gradients("Dr1", real=real)
        self._average_over_ranks(self.model.discriminator)
        self.opt_d.step()
        self.step += 1
        self.images_seen += cfg.batch_size
        self._update_ema()
        return stats

    def _average_over_ranks(self, module: torch.nn.Module, extra: list[torch.Tensor] = ()) -> None:
        """Mean over the ranks of ``module``'s gradients and of ``extra`` (one all_reduce; no-op alone)."""
        if self.dist is not None:
            self.dist.all_reduce_mean_([p.grad for p in module.parameters() if p.grad is not None] + list(extra))

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
        run = SessionClock(budget=cfg.max_minutes * 60.0 if cfg.max_minutes is not None else math.inf,
                       start=time.perf_counter(), start_step=self.step, elapsed_before=self.elapsed_before)
        run.window_t, run.window_step = run.start, self.step
        out_of_time = self.elapsed_before >= run.budget
        stopped, ckpt = False, None
        schedule = MilestoneSchedule(cfg, self.images_seen, self.elapsed_before)
        bar = tqdm(total=self.total, initial=self.step, disable=not (progress_bar and self.is_main), unit="step",
                   dynamic_ncols=True)
        try:
            while self.step < self.total and not out_of_time:
                run.add(self.train_step())
                bar.update(1)
                stopped, out_of_time, due, elapsed = self._decide(should_stop, run.elapsed(), run.budget, schedule)
                done = stopped or out_of_time or self.step >= self.total
                milestone = not stopped and (done or due)
                save = done or milestone or self.step % cfg.checkpoint_interval == 0
                if save or self.step % cfg.log_interval == 0:   # losses are checked before every save
                    self._close_window(run, elapsed, progress, bar)
                if save:
                    ckpt = self._save(elapsed)
                if milestone and on_milestone is not None and ckpt is not None:
                    t0 = time.perf_counter()
                    self._milestone(on_milestone, ckpt, elapsed, final=done)
                    run.paused += time.perf_counter() - t0
                    run.window_t = time.perf_counter()
                if save and self.dist is not None:
                    self.dist.barrier()     # no rank runs ahead while rank 0 writes or runs a milestone
                if stopped:
                    logger.info("training stopped on request at step %d", self.step)
                    break
        finally:
            bar.close()
        if out_of_time:
            logger.info("training time budget of %.1f minutes reached at step %d", run.budget / 60, self.step)
        return self._result(run, ckpt, stopped, out_of_time, on_milestone)

    def _close_window(self, run: SessionClock, elapsed: float, progress: Callable[[TrainProgress], None] | None,
                      bar: Any) -> None:
        """Average the losses of the steps since the last log, and log them (rank 0)."""
        now = time.perf_counter()
        run.last = self._averages(run.sums, run.counts)
        rate = (self.step - run.window_step) * self.cfg.batch_size / max(now - run.window_t, 1e-9)
        if self.is_main:
            self._log(run.last, elapsed - self.elapsed_before, run.start_step, rate, progress, bar, run.budget)
        run.sums, run.counts, run.window_t, run.window_step = {}, {}, now, self.step

    def _result(self, run: SessionClock, ckpt: Path | None, stopped: bool, out_of_time: bool,
                on_milestone: Callable[[Milestone], None] | None) -> TrainResult:
        if ckpt is None:   # nothing left to do: the newest checkpoint already covers the run
            ckpt = self._newest_or_save()
            if on_milestone is not None and not stopped:
                self._milestone(on_milestone, ckpt, self.elapsed_before, final=True)
        elapsed = run.elapsed() if self.step > run.start_step else self.elapsed_before
        version = checkpoint_version(ckpt) if self.is_main else ""
        if self.dist is not None:   # rank 0's path, version and time on every rank (no file read elsewhere)
            ckpt, version = Path(self.dist.share_text(str(ckpt))), self.dist.share_text(version)
            elapsed = self.dist.decide([elapsed])[0]
        return TrainResult(out_dir=self.out, checkpoint=ckpt, model_version=version,
                           step=self.step, total_steps=self.total, images_seen=self.images_seen,
                           stopped=stopped, losses=run.last, elapsed=elapsed, out_of_time=out_of_time and not stopped,
                           world_size=self.world_size)

    def _decide(self, should_stop: Callable[[], bool] | None, elapsed: float, budget: float,
                schedule: MilestoneSchedule) -> tuple[bool, bool, bool, float]:
        """``(stop requested, out of time, milestone due, elapsed)``, decided by rank 0 for every rank."""
        values = [0.0, 0.0, 0.0, elapsed]
        if self.is_main:
            stop = bool(should_stop and should_stop())
            values = [float(stop), float(elapsed >= budget), float(schedule.due(self.images_seen, elapsed)), elapsed]
        if self.dist is not None:
            values = self.dist.decide(values)
        return bool(values[0]), bool(values[1]), bool(values[2]), values[3]

    def _newest_or_save(self) -> Path:
        """The newest good checkpoint, or a new one when there is none (same decision on every rank)."""
        newest = latest_checkpoint(self.out) if self.is_main else None
        if self.dist is not None:
            text = self.dist.share_text(None if newest is None else str(newest))
            newest = None if text is None else Path(text)
        return newest if newest is not None else self._save(self.elapsed_before)

    def _milestone(self, callback: Callable[[Milestone], None], ckpt: Path, elapsed: float, final: bool) -> None:
        """Call ``callback`` (rank 0 only) with the model in eval mode and the training RNG streams isolated."""
        if not self.is_main:
            return
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
        """Mean of each statistic over the steps (and ranks) that produced it; raises when training has diverged."""
        keys = sorted(sums)
        if self.dist is not None and keys:
            stacked = torch.stack([sums[k].float() for k in keys])
            self.dist.all_reduce_mean_([stacked])
            sums = dict(zip(keys, stacked))
        means = {k: float(sums[k]) / counts[k] for k in keys}
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
        append_line(self.out / "metrics.jsonl", json.dumps(record))
        bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in losses.items() if k.startswith("loss/")})
        logger.debug("step %d: %s", self.step, record)
        if progress is not None:
            progress(TrainProgress(step=self.step, total_steps=self.total, images_seen=self.images_seen,
                                   losses=dict(losses), elapsed=elapsed, eta_seconds=eta,
                                   images_per_second=rate))


