"""Training recipes: the network, training and map settings for one kind of device, by name.

One table serves the server (its ``--conf`` defaults), the CLI (``python -m ss_stylegan train --recipe``) and
the evaluation (``python -m ss_stylegan.evaluate --recipe``), so that the evaluation measures exactly what the
server runs. Network sizes have their own names (:data:`PRESETS`: ``default``, ``small``, ``tiny``); a recipe
names one of them and adds how long and how to train it.

The CPU recipe is the result of the compute-scaling study in ``docs/evaluation/`` (2-core CPU, IQ-OTH/NCCD).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ss_stylegan.config import ConfigError, ModelConfig, TrainConfig

PRESETS: dict[str, Callable[[int], ModelConfig]] = {
    "default": lambda resolution: ModelConfig(resolution=resolution),   # StyleGAN2-sized, for a GPU
    "small": ModelConfig.small,                                        # CPU servers
    "tiny": ModelConfig.tiny,                                          # tests and smoke runs
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything a device needs to train SS-StyleGAN and draw the slice map.

    Attributes:
        name: ``cpu``, ``gpu`` or ``tiny``.
        description: one line for ``/info/`` and reports.
        preset: network size, a key of :data:`PRESETS`.
        resolution: model (and slice cache) resolution.
        train: training settings, including the time budget (``max_minutes``) and how often a map is
            published while training runs (``milestone_minutes``).
        perplexity: t-SNE perplexity of the slice map.
    """

    name: str
    description: str
    preset: str
    resolution: int
    train: TrainConfig
    perplexity: float = 30.0

    def model(self, resolution: int | None = None) -> ModelConfig:
        """The network of this recipe, at ``resolution`` (default: the recipe's)."""
        return model_preset(self.preset, resolution or self.resolution)


def model_preset(name: str, resolution: int) -> ModelConfig:
    """The network preset ``name`` at ``resolution``; a clear error for an unknown name."""
    if name not in PRESETS:
        raise ConfigError(f"unknown network preset {name!r}; presets are {sorted(PRESETS)}")
    return PRESETS[name](resolution)


def _cpu() -> Recipe:
    # The study (docs/evaluation/compute_study.md): at 32x32 a 2-core CPU trains ~4x the images of 64x64 in the same
    # minutes, and a stronger reconstruction term (beta 10) made W more class-coherent per kimg; channels_last
    # measured 1.15x per step at 32 (benchmarks/bench_step.py), bf16 did not pay at 32.
    train = TrainConfig(batch_size=16, kimg=200.0, rec_weight=10.0, channels_last=True, max_minutes=30.0,
                        milestone_minutes=5.0, checkpoint_interval=25)
    return Recipe("cpu", "2-core CPU: small network at 32x32, reconstruction weight 10, 30 minutes, a new map every "
                         "5 minutes", preset="small", resolution=32, train=train, perplexity=30.0)


def _gpu() -> Recipe:
    train = TrainConfig(batch_size=32, kimg=200.0, milestone_minutes=10.0, checkpoint_interval=500)
    return Recipe("gpu", "one GPU: StyleGAN2-sized network at 128x128, 200 kimg, a new map every 10 minutes",
                  preset="default", resolution=128, train=train, perplexity=30.0)


def _tiny() -> Recipe:
    train = TrainConfig(batch_size=4, kimg=0.016, checkpoint_interval=2)
    return Recipe("tiny", "smoke test: tiny network at 32x32, seconds on a CPU", preset="tiny", resolution=32,
                  train=train, perplexity=5.0)


RECIPES: dict[str, Callable[[], Recipe]] = {"cpu": _cpu, "gpu": _gpu, "tiny": _tiny}


def get_recipe(name: str) -> Recipe:
    """The recipe ``name`` (``cpu``, ``gpu`` or ``tiny``)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; recipes are {sorted(RECIPES)}")
    return RECIPES[name]()


def recipe_for_device(device: str) -> Recipe:
    """The recipe a server on ``device`` (``cpu``, ``cuda``, ``cuda:N``) uses by default."""
    return get_recipe("cpu" if str(device).startswith("cpu") else "gpu")


def configs_from_recipe(recipe: str | Recipe | None = None, *, preset: str | None = None,
                        resolution: int | None = None, model: dict[str, Any] | None = None,
                        train: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """``(ModelConfig, TrainConfig)`` from a recipe and overrides: the one way the server, the CLI and the
    evaluation build their settings, so that the evaluation measures what the server runs.

    Args:
        recipe: a recipe or its name (``cpu``, ``gpu``, ``tiny``); None: the ``default`` network and the
            training defaults.
        preset: the network size, instead of the recipe's.
        resolution: the model resolution, instead of the recipe's (or the preset's default).
        model: network settings over the preset's (a ``model`` config section).
        train: training settings over the recipe's; ``None`` values are ignored. Giving ``kimg`` without
            ``steps`` makes the length ``kimg``'s (a recipe's ``steps`` no longer applies).

    Raises:
        ConfigError: an unknown recipe, preset or setting, or a value out of range; the message names it.
    """
    base = get_recipe(recipe) if isinstance(recipe, str) else recipe
    model = dict(model or {})
    resolution = resolution or model.get("resolution") or (base.resolution if base else ModelConfig().resolution)
    network = model_preset(preset or (base.preset if base else "default"), int(resolution))
    model_cfg = ModelConfig.from_dict({**network.to_dict(), **model, "resolution": int(resolution)})
    changes = {k: v for k, v in (train or {}).items() if v is not None}
    train_d = {**(base.train.to_dict() if base else {}), **changes}
    if "kimg" in changes and "steps" not in changes:
        train_d["steps"] = None
    return model_cfg, TrainConfig.from_dict(train_d)
