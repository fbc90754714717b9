"""Typed settings for every stage of SS-StyleGAN, saved as JSON beside every model.

Each dataclass has defaults that work on a CPU at 64x64. ``to_dict`` / ``from_dict`` round-trip
through JSON; ``from_dict`` rejects unknown keys with a message that lists the valid ones, so a
typo in a config file or a ``--conf`` value is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="_Settings")

RESOLUTIONS = (32, 64, 128, 256)


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
        from ss_stylegan.atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        return cls.from_dict(json.loads(Path(path).read_text()))


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
        if self.window == "custom" and (self.window_center is None or not self.window_width):
            raise ConfigError("window 'custom' needs window_center and a positive window_width")
        if not 0.0 <= self.min_foreground < 1.0:
            raise ConfigError(f"min_foreground must be in [0, 1), got {self.min_foreground}")
