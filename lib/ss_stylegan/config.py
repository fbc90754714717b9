"""Typed settings for every stage of SS-StyleGAN, saved as JSON beside every model.

Each dataclass has defaults that work on a CPU at 64x64. ``to_dict`` / ``from_dict`` round-trip
through JSON; ``from_dict`` rejects unknown keys with a message that lists the valid ones, so a
typo in a config file or a ``--conf`` value is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T", bound="_Settings")

RESOLUTIONS = (32, 64, 128, 256)
PRECISIONS = ("fp32", "bf16")
SLICE_WINDOWS = ("auto", "custom", "percentile", "lung", "abdomen", "soft_tissue", "mediastinum", "brain", "bone")


class ConfigError(ValueError):
    """A setting has an invalid value; the message says which and what is allowed."""


@dataclasses.dataclass
class _Settings:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        data = dict(data or {})
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown setting(s) {unknown}; valid settings are {sorted(names)}"
            )
        for key, value in list(data.items()):
            default = names[key].default
            if isinstance(default, tuple) and isinstance(value, list):
                data[key] = tuple(value)
        obj = cls(**data)
        obj.validate()
        return obj

    def replace(self: T, **changes: Any) -> T:
        obj = dataclasses.replace(self, **changes)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Raise :class:`ConfigError` when a value is out of range. Subclasses extend this."""

    def save(self, path: str | Path) -> None:
        from ss_stylegan.storage.atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclasses.dataclass
class SliceConfig(_Settings):
    """How volumes become model-ready 2-D slices (see :mod:`ss_stylegan.data`)."""

    resolution: int = 64                 # output side length in pixels (square)
    window: str = "auto"                 # "auto", a named CT window ("lung", "abdomen", "brain", "bone",
                                         # "soft_tissue", "mediastinum"), "custom" or "percentile"
    window_center: float | None = None   # HU centre, used when window == "custom"
    window_width: float | None = None    # HU width, used when window == "custom"
    percentiles: tuple[float, float] = (0.5, 99.5)  # robust range when the data is not HU
    min_foreground: float = 0.02         # slices with a smaller fraction of non-background pixels are skipped
    max_slices_per_study: int | None = None  # optional cap (evenly spaced) for very long studies

    def validate(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ConfigError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if self.window not in SLICE_WINDOWS:
            named = [w for w in SLICE_WINDOWS if w != "custom"]
            raise ConfigError(f"unknown window {self.window!r}; valid windows are {named}, or centre:width in HU "
                              "such as 40:400")
        if self.window == "custom" and (
            self.window_center is None or self.window_width is None or not self.window_width > 0
        ):
            raise ConfigError("window 'custom' needs window_center and a positive window_width")
        if not 0.0 <= self.min_foreground < 1.0:
            raise ConfigError(f"min_foreground must be in [0, 1), got {self.min_foreground}")
        if self.max_slices_per_study is not None and self.max_slices_per_study < 1:
            raise ConfigError(f"max_slices_per_study must be None or >= 1, got {self.max_slices_per_study}")


@dataclasses.dataclass
class ModelConfig(_Settings):
    """Architecture of the SS-StyleGAN networks (see :mod:`ss_stylegan.model.networks`).

    The defaults are StyleGAN2's (``paper256``-like, as used by the SS-StyleGAN paper) and meant for a
    GPU; :meth:`tiny` gives a model that trains on a CPU in seconds (tests, smoke runs).
    """

    resolution: int = 64                 # image side length R; one of RESOLUTIONS
    img_channels: int = 1                # channels of the images (1 for CT slices)
    z_dim: int = 512                     # latent z dimensionality
    w_dim: int = 512                     # intermediate latent W dimensionality (the embedding size)
    mapping_layers: int = 8              # fully connected layers in the mapping network z -> w
    mapping_lr_multiplier: float = 0.01  # learning-rate multiplier of the mapping network
    channel_base: int = 16384            # channels at resolution r are min(channel_base // r, channel_max)
    channel_max: int = 512               # upper bound on channels of any layer
    shared_blocks: int | None = None     # discriminator blocks shared with the encoder; None: all but the last
    mbstd_group_size: int = 4            # minibatch-stddev group size in the discriminator (not the encoder)
    logvar_min: float = -8.0             # encoder log-variance is clamped to [logvar_min, logvar_max]
    logvar_max: float = 4.0

    @classmethod
    def tiny(cls, resolution: int = 32) -> ModelConfig:
        """A small model for tests and CPU smoke runs (seconds per hundred steps at 32x32)."""
        return cls(resolution=resolution, z_dim=32, w_dim=32, mapping_layers=2,
                   channel_base=512, channel_max=32, mbstd_group_size=4)

    @classmethod
    def small(cls, resolution: int = 64) -> ModelConfig:
        """A CPU-sized model for servers without a GPU (at 64x64 about 14x faster to train than the defaults)."""
        return cls(resolution=resolution, z_dim=128, w_dim=128, mapping_layers=4,
                   channel_base=4096, channel_max=128)

    @property
    def num_blocks(self) -> int:
        """Residual discriminator blocks, one per halving from ``resolution`` down to 4."""
        return int(math.log2(self.resolution)) - 2

    @property
    def resolved_shared_blocks(self) -> int:
        """``shared_blocks`` with ``None`` resolved to all blocks but the last."""
        return self.num_blocks - 1 if self.shared_blocks is None else self.shared_blocks

    def channels(self) -> dict[int, int]:
        """Channels per resolution ``{4: c4, 8: c8, ..., R: cR}``."""
        res = [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]
        return {r: max(1, min(self.channel_base // r, self.channel_max)) for r in res}

    def validate(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ConfigError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        for name in ("img_channels", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.shared_blocks is not None and not 0 <= self.shared_blocks <= self.num_blocks:
            raise ConfigError(
                f"shared_blocks must be between 0 and {self.num_blocks} at resolution {self.resolution} "
                f"(or null for all but the last), got {self.shared_blocks}"
            )
        if self.mbstd_group_size < 0:
            raise ConfigError(f"mbstd_group_size must be >= 0 (0 disables it), got {self.mbstd_group_size}")
        if not self.logvar_min < self.logvar_max:
            raise ConfigError(f"logvar_min must be < logvar_max, got {self.logvar_min}, {self.logvar_max}")


@dataclasses.dataclass
class TrainConfig(_Settings):
    """How SS-StyleGAN is trained (see :mod:`ss_stylegan.training.loop` and :mod:`ss_stylegan.model.losses`)."""

    batch_size: int = 32                 # images per step
    kimg: float = 500.0                  # training length in thousands of real images shown ...
    steps: int | None = None             # ... or in steps (overrides kimg when set)
    g_lr: float = 0.0025                 # Adam learning rate of the generator
    d_lr: float = 0.0025                 # Adam learning rate of the discriminator and encoder
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas (StyleGAN2)
    r1_gamma: float | None = None        # R1 weight gamma; None: StyleGAN2-ADA heuristic 2e-4 * R^2 / batch
    r1_interval: int = 16                # lazy R1: applied every r1_interval steps (0 disables)
    enc_weight: float = 1.0              # lambda: encoder negative log-likelihood on generated pairs (Eq. 2),
                                         # applied to the per-dimension mean (Eq. 2 / w_dim) so that one
                                         # value suits every w_dim
    rec_weight: float = 1.0              # beta: reconstruction MSE of real x against G(mu(x)) (Eq. 1)
    augment: str = "color,translation,cutout"  # DiffAugment policy for images fed to D; "" disables
    precision: str = "fp32"              # "bf16": forward passes in bfloat16 autocast (weights, optimiser and
                                         # losses stay float32; pays on CPUs with AMX/AVX512-BF16 and on GPUs)
    channels_last: bool = False          # NHWC memory layout for the convolutions
    ema_kimg: float = 10.0               # half-life of the generator EMA in thousands of images
    ema_rampup: float | None = 0.05      # EMA half-life at most this fraction of images seen (None: off)
    seed: int = 0                        # seeds every random draw (z, noise, augmentation, data order)
    checkpoint_interval: int = 500       # steps between checkpoints (and image grids)
    keep_checkpoints: int = 2            # newest checkpoints kept on disk (older good ones are a fallback)
    log_interval: int = 10               # steps between metrics.jsonl lines / progress callbacks
    resume: bool = True                  # continue from the newest valid checkpoint in the output folder
    max_minutes: float | None = None     # training-time budget in minutes over all sessions (None: kimg/steps only);
                                         # training ends at whichever of the two comes first
    milestone_minutes: float | None = None  # pause every this many minutes of training time for the caller's
                                         # on_milestone (e.g. to publish a map); None: no time milestones
    milestone_kimg: float | None = None  # ... or every this many thousand images (both may be set)

    def total_steps(self) -> int:
        """Number of optimisation steps this configuration runs."""
        if self.steps is not None:
            return int(self.steps)
        return max(1, int(math.ceil(self.kimg * 1000.0 / self.batch_size)))

    def resolved_r1_gamma(self, resolution: int) -> float:
        """R1 weight, using the StyleGAN2-ADA heuristic when ``r1_gamma`` is ``None``."""
        if self.r1_gamma is not None:
            return float(self.r1_gamma)
        return 0.0002 * resolution**2 / self.batch_size

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.steps is None and not self.kimg > 0:
            raise ConfigError(f"kimg must be > 0 (or set steps), got {self.kimg}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        for name in ("g_lr", "d_lr", "ema_kimg"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("max_minutes", "milestone_minutes", "milestone_kimg"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 or null, got {value}")
        for name in ("enc_weight", "rec_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.r1_gamma is not None and self.r1_gamma < 0:
            raise ConfigError(f"r1_gamma must be >= 0 or null, got {self.r1_gamma}")
        for name in ("r1_interval",):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("checkpoint_interval", "keep_checkpoints", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        known = {"color", "translation", "cutout"}
        unknown = [p for p in self.augment.split(",") if p and p not in known]
        if unknown:
            raise ConfigError(f"augment: unknown policy {unknown}; use a comma list of {sorted(known)} or ''")


def derive_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for the random stream ``key`` of a run seeded with ``seed``.

    The one seed derivation of the project: the training seeds each step's draws with
    ``derive_seed(seed, stream, step)``; a server draws its ``n``-th random suggestion from
    ``derive_seed(random_state, n)``, so calls differ and a run replayed from the same seed repeats.
    """
    if any(int(k) != k or k < 0 for k in key):
        raise ValueError(f"a seed key must be non-negative integers, got {key!r}")
    sequence = np.random.SeedSequence(entropy=int(seed) & 0xFFFFFFFFFFFFFFFF, spawn_key=tuple(int(k) for k in key))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))
