"""Every ``--conf`` setting of the app, parsed in one place into typed settings.

``AppSettings.from_conf(conf)`` turns MONAI Label's string ``--conf key value`` pairs into the library's
dataclasses (:class:`~ss_stylegan.config.SliceConfig`, :class:`~ss_stylegan.config.ModelConfig`,
:class:`~ss_stylegan.config.TrainConfig`) plus the app's own options. A bad value raises
:class:`~ss_stylegan.config.ConfigError` naming the setting and what is allowed, so the server refuses
to start instead of failing later.

| key | default | meaning |
| --- | --- | --- |
| classes | normal,lesion | slice class names (at least two) |
| background_class | (first class) | the class that is no finding: a study's answer reports every other class |
| study_min_slices, study_min_score | 1, 0.6 | a study is positive for a class when a run of adjacent slices predicted as it reaches this many slices, counting slices with at least this score (docs/evaluation/study_level.md) |
| resolution | auto | model resolution (32, 64, 128, 256); ``auto``: the device's recipe (32 on a CPU, 128 on a GPU) |
| window | auto | intensity window: auto, lung, abdomen, brain, bone, soft_tissue, mediastinum, percentile, or C:W |
| preset | auto | model size: ``default`` (StyleGAN2-like, GPU), ``small`` (CPU servers), ``tiny`` (smoke runs); ``auto``: the recipe's (``default`` on a GPU, ``small`` on a CPU) |
| kimg | auto | training length in thousands of images shown; ``auto``: the recipe's (200) |
| steps | (unset) | training length in steps; overrides kimg |
| train_minutes | auto | training-time budget in minutes over all sessions (training ends at this or at kimg, whichever comes first); ``auto``: 30 on a CPU, none on a GPU; ``none``: kimg only |
| publish_minutes | auto | while training runs, publish a new map every this many minutes of training; ``auto``: 5 on a CPU, 10 on a GPU; ``0``: only at the end |
| batch_size | auto | images per training step; ``auto``: 32 on a GPU, 16 on a CPU |
| device | auto | cpu, cuda, cuda:N or auto (cuda when available) |
| gpus | 0 | train on several GPUs of this machine (``torch.distributed``, one process each): ``all``, a number N (the first N) or ids ``0,2``; 0: one device (``device``) |
| perplexity | auto | t-SNE perplexity (clamped for tiny datastores); ``auto``: the recipe's (30) |
| random_state | 0 | seed of training, t-SNE and random suggestions |
| checkpoint_interval | auto | training steps between checkpoints; ``auto``: 500 on a GPU, 25 on a CPU |
| suggestion_ttl | 600 | seconds a suggested slice stays reserved for the client it was given to |
| suggestion_cap | 32 | most suggestions one user (one client id without login) may hold reserved at once |
| max_upload_mb | 1024 | largest uploaded file (MB) |
| max_upload_unpacked_mb | 2048 | largest uploaded file once decompressed (MB) |
| max_upload_voxels | 268435456 | most voxels an uploaded image's header may declare (512 x 512 x 1024) |
| workspace | <studies>/.ss_stylegan | where the cache, checkpoints and slice map live |
| pipeline, strategy, classifier | best | ``best``: the pipeline measured best for W (TypiClust in W, 1-NN in the map; docs/evaluation/whole_embedding.md); ``paper``: FPS and 1-NN in the t-SNE map; ``strategy`` (typiclust, fps, random, probcover, fps_w) and ``classifier`` (nn_map, label_spreading, logistic, knn_cosine) override either half |
| create_studies | false | ``true``: start on a studies folder that does not exist yet (made empty); otherwise the server refuses |
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ss_stylegan.config import ConfigError, ModelConfig, SliceConfig, TrainConfig
from ss_stylegan.data.uploads import UploadLimits
from ss_stylegan.labelling.findings import DEFAULT_MIN_SCORE as MIN_SCORE
from ss_stylegan.labelling.findings import DEFAULT_MIN_SLICES as MIN_SLICES
from ss_stylegan.labelling.findings import StudyRule
from ss_stylegan.labelling.label_values import LabelError, parse_classes
from ss_stylegan.labelling.methods import DEFAULT_CLASSIFIER, DEFAULT_STRATEGY, pipeline_setting
from ss_stylegan.labelling.results import LabellingConfig
from ss_stylegan.labelling.validation import integer, number, only_keys, text
from ss_stylegan.model.devices import resolve_device
from ss_stylegan.training.launcher import gpus_setting
from ss_stylegan.training.recipes import PRESETS, Recipe, configs_from_recipe, get_recipe

KNOWN_KEYS = (
    "classes", "background_class", "study_min_slices", "study_min_score", "resolution", "window", "preset", "kimg",
    "steps", "train_minutes", "publish_minutes", "batch_size", "device", "perplexity", "random_state",
    "checkpoint_interval", "suggestion_ttl", "suggestion_cap", "max_upload_mb", "max_upload_unpacked_mb",
    "max_upload_voxels", "workspace", "gpus", "create_studies", "pipeline", "strategy", "classifier")
_MONAI_KEYS = ("server_mode", "models", "preload", "skip_trainers", "skip_strategies", "skip_scoring")  # MONAI Label's own
TRAIN_REQUEST_KEYS = ("kimg", "steps", "minutes", "batch_size", "device")


@dataclasses.dataclass
class AppSettings:
    """Typed settings of one server (see the module docstring for keys and defaults)."""

    classes: list[str]
    slice_cfg: SliceConfig
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    preset: str
    device: str
    perplexity: float
    random_state: int
    suggestion_ttl_s: float
    suggestion_cap: int
    upload_limits: UploadLimits
    workspace: Path
    gpus: list[int] | None = None  # GPU ids to train on, one process each; None: one device
    study_rule: StudyRule | None = None  # when a study is positive for a class; None: the defaults
    create_studies: bool = False  # start on a studies folder that does not exist (made empty)
    strategy: str = DEFAULT_STRATEGY  # the default suggestion strategy
    classifier: str = DEFAULT_CLASSIFIER  # the classifier of every answer

    @classmethod
    def from_conf(cls, conf: dict[str, str], studies: str | Path) -> AppSettings:
        """Parse MONAI Label's ``--conf`` dict.

        Raises:
            ConfigError: an unknown key or an invalid value; the message says which and what is allowed.
        """
        conf = {k: str(v) for k, v in (conf or {}).items() if k not in _MONAI_KEYS}
        unknown = sorted(set(conf) - set(KNOWN_KEYS))
        if unknown:
            raise ConfigError(f"unknown --conf setting(s) {unknown}; valid settings are {list(KNOWN_KEYS)}")
        classes = _classes(conf)
        device = resolve_device(conf.get("device", "auto"))
        # Defaults that depend on the device come from the library's recipe for it (the one the evaluation
        # measures): a CPU server trains the small network for half an hour, a GPU the full one.
        recipe = get_recipe("cpu" if device == "cpu" else "gpu")
        conf = {k: v for k, v in conf.items() if v.strip().lower() != "auto"}
        model_cfg, train_cfg = _model_and_training(conf, recipe)
        slice_cfg = SliceConfig.from_dict({"resolution": model_cfg.resolution, **_window(conf.get("window", "auto"))})
        perplexity, ttl = _float(conf, "perplexity", recipe.perplexity), _float(conf, "suggestion_ttl", 600.0)
        cap = _int(conf, "suggestion_cap", 32)
        for ok, key, what, value in ((perplexity > 0, "perplexity", "> 0", perplexity),
                                     (cap >= 1, "suggestion_cap", ">= 1", cap), (ttl > 0, "suggestion_ttl", "> 0 seconds", ttl)):
            if not ok:
                raise ConfigError(f"--conf {key} must be {what}, got {value}")
        gpus = gpus_setting(conf.get("gpus", "0"), device)
        if gpus and train_cfg.batch_size % len(gpus):
            raise ConfigError(f"--conf batch_size {train_cfg.batch_size} is split over {len(gpus)} GPUs "
                              f"(--conf gpus): use a multiple of {len(gpus)}")
        strategy, classifier = pipeline_setting(conf.get("pipeline"), conf.get("strategy"), conf.get("classifier"))
        return cls(classes=classes, slice_cfg=slice_cfg, model_cfg=model_cfg, train_cfg=train_cfg,
                   preset=conf.get("preset", recipe.preset), device=device, perplexity=perplexity,
                   random_state=_int(conf, "random_state", 0), suggestion_ttl_s=ttl, suggestion_cap=cap,
                   upload_limits=UploadLimits(max_bytes=_positive(conf, "max_upload_mb", 1024) << 20,
                                              max_unpacked_bytes=_positive(conf, "max_upload_unpacked_mb", 2048) << 20,
                                              max_voxels=_positive(conf, "max_upload_voxels", 512 * 512 * 1024)),
                   workspace=Path(conf["workspace"]) if conf.get("workspace") else Path(studies) / ".ss_stylegan",
                   gpus=gpus, study_rule=_study_rule(conf, classes), create_studies=_flag(conf, "create_studies"),
                   strategy=strategy, classifier=classifier)

    def labelling(self) -> LabellingConfig:
        """What the labelling service needs of these settings."""
        return LabellingConfig(classes=tuple(self.classes), slice_cfg=self.slice_cfg, device=self.device,
                               random_state=self.random_state, suggestion_ttl_s=self.suggestion_ttl_s,
                               suggestion_cap=self.suggestion_cap, study_rule=self.study_rule,
                               strategy=self.strategy, classifier=self.classifier)


def parse_train_request(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of a training request body, checked strictly (422 naming the field): ``kimg`` and
    ``minutes`` (the training-time budget over all sessions) positive numbers, ``steps`` and ``batch_size``
    positive integers, ``device`` a device name; nothing else."""
    only_keys(body, TRAIN_REQUEST_KEYS)
    checked: dict[str, Any] = {}
    if "kimg" in body:
        checked["kimg"] = number(body["kimg"], "kimg", minimum=0.001)
    if "minutes" in body:
        checked["minutes"] = number(body["minutes"], "minutes", minimum=0.001)
    for key in ("steps", "batch_size"):
        if key in body:
            checked[key] = integer(body[key], key, minimum=1)
    if "device" in body:
        checked["device"] = text(body["device"], "device", 16, allow_empty=False)
    return checked


def _classes(conf: dict[str, str]) -> list[str]:
    try:
        return parse_classes(conf.get("classes", "normal,lesion"))
    except LabelError as err:
        raise ConfigError(f"--conf classes: {err}") from err


def _study_rule(conf: dict[str, str], classes: list[str]) -> StudyRule:
    try:
        return StudyRule.of(classes, conf.get("background_class"), _int(conf, "study_min_slices", MIN_SLICES),
                            _float(conf, "study_min_score", MIN_SCORE))
    except ValueError as err:
        raise ConfigError(f"--conf {err}") from err


def _model_and_training(conf: dict[str, str], recipe: Recipe) -> tuple[ModelConfig, TrainConfig]:
    """The network and training settings: the device's recipe, then the ``--conf`` overrides."""
    preset = conf.get("preset", recipe.preset)
    if preset not in PRESETS:
        raise ConfigError(f"--conf preset must be one of {('auto', *PRESETS)}, got {preset!r}")
    train: dict[str, Any] = {
        "seed": _int(conf, "random_state", 0),
        "checkpoint_interval": _int(conf, "checkpoint_interval", recipe.train.checkpoint_interval),
        "milestone_minutes": _minutes(conf, "publish_minutes", recipe.train.milestone_minutes)}
    model_cfg, train_cfg = configs_from_recipe(recipe, preset=preset,
                                               resolution=_int(conf, "resolution", recipe.resolution), train=train)
    train_cfg = train_config(train_cfg, {k: conf[k] for k in ("kimg", "steps", "batch_size") if k in conf})
    if "publish_minutes" in conf:   # "none" (no periodic publishing) is None, which the overrides skip
        train_cfg = train_cfg.replace(milestone_minutes=train["milestone_minutes"])
    if "train_minutes" in conf:
        train_cfg = train_cfg.replace(max_minutes=_minutes(conf, "train_minutes", None))
    return model_cfg, train_cfg


def train_config(base: TrainConfig, overrides: dict[str, object]) -> TrainConfig:
    """``base`` with ``kimg`` / ``steps`` / ``minutes`` / ``batch_size`` overridden (strings or numbers);
    validated."""
    changes: dict[str, object] = {}
    if "minutes" in overrides:
        changes["max_minutes"] = _number(overrides["minutes"], "minutes", float)
    if "kimg" in overrides:
        changes["kimg"] = _number(overrides["kimg"], "kimg", float)
        changes["steps"] = None
    if "steps" in overrides:
        changes["steps"] = int(_number(overrides["steps"], "steps", int))
    if "batch_size" in overrides:
        changes["batch_size"] = int(_number(overrides["batch_size"], "batch_size", int))
    return base.replace(**changes)


def _window(value: str) -> dict[str, object]:
    value = value.strip()
    if ":" in value:
        centre, width = value.split(":", 1)
        return {"window": "custom", "window_center": _number(centre, "window centre", float),
                "window_width": _number(width, "window width", float)}
    return {"window": value}


def _number(value: object, name: str, kind: type) -> float:
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}") from err


def _int(conf: dict[str, str], key: str, default: int) -> int:
    return int(_number(conf[key], f"--conf {key}", int)) if key in conf else default


def _float(conf: dict[str, str], key: str, default: float) -> float:
    return float(_number(conf[key], f"--conf {key}", float)) if key in conf else default


def _minutes(conf: dict[str, str], key: str, default: float | None) -> float | None:
    """A number of minutes >= 0; ``none`` or ``0`` mean no limit / no periodic publishing (None)."""
    if key not in conf:
        return default
    if conf[key].strip().lower() in ("none", "off"):
        return None
    value = _float(conf, key, 0.0)
    if value < 0:
        raise ConfigError(f"--conf {key} must be a number of minutes >= 0 (or none), got {conf[key]!r}")
    return value or None


def _flag(conf: dict[str, str], key: str) -> bool:
    value = conf.get(key, "false").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"--conf {key} must be true or false, got {conf[key]!r}")
    return value in ("true", "1", "yes")


def _positive(conf: dict[str, str], key: str, default: int) -> int:
    value = _int(conf, key, default)
    if value < 1:
        raise ConfigError(f"--conf {key} must be a whole number >= 1, got {value}")
    return value
