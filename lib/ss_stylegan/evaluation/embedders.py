"""What the evaluation embeds slices with: pixel PCA (the baseline), SS-StyleGAN W (trained here, or
from a model folder or saved embeddings), and the two side by side.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ss_stylegan.evaluation.datasets import EvaluationError, _resize
from ss_stylegan.selection.features import prepare_features

log = logging.getLogger(__name__)

class Embedder(Protocol):
    """One embedding step: uint8 slices ``[N, R, R]`` -> vectors ``[N, D]``."""

    name: str

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------- embedders
class PixelPCAEmbedder:
    """Raw pixels -> PCA (baseline). Refitted per repeat with that repeat's seed."""

    def __init__(self, n_components: int = 50, seed: int = 0, name: str = "pixel_pca") -> None:
        self.n_components, self.seed, self.name = n_components, seed, name

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        from sklearn.decomposition import PCA

        x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
        n = min(self.n_components, x.shape[0] - 1, x.shape[1])
        return PCA(n_components=n, random_state=self.seed + repeat).fit_transform(x).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": "raw-pixel PCA", "n_components": self.n_components}


class PrecomputedEmbedder:
    """W vectors read from an npz (``embeddings`` or ``w`` key) made by an earlier run."""

    def __init__(self, path: str | Path, name: str = "ss_stylegan") -> None:
        self.path, self.name = Path(path), name
        with np.load(self.path, allow_pickle=False) as d:
            key = "embeddings" if "embeddings" in d.files else "w" if "w" in d.files else None
            if key is None:
                raise EvaluationError(f"{self.path} has no 'embeddings' (or 'w') array; it has {d.files}")
            self.W = d[key].astype(np.float32)
            self.info = json.loads(str(d["info"])) if "info" in d.files else {}

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        if self.W.shape[0] != images.shape[0]:
            raise EvaluationError(f"{self.path} holds {self.W.shape[0]} embeddings for {images.shape[0]} slices")
        return self.W

    def describe(self) -> dict[str, Any]:
        return {"kind": "precomputed SS-StyleGAN W", "path": str(self.path), "retrained_per_repeat": False,
                "made_by": self.info}


def model_diagnostics(model: Any) -> dict[str, float]:
    """How well the encoder inverts the generator: ``mu(G(w))`` against ``w`` for the EMA and the raw
    generator (1.0 = no better than the mean w; see :func:`ss_stylegan.model.embedding.w_recovery_error`)."""
    from ss_stylegan.model.embedding import w_recovery_error

    device = next(model.parameters()).device   # the live model of a milestone stays where it trains
    return {"w_recovery_ema": round(w_recovery_error(model, 512, device=device, use_ema=True), 4),
            "w_recovery_raw": round(w_recovery_error(model, 512, device=device, use_ema=False), 4)}


class CombinedEmbedder:
    """Two embeddings side by side, each standardised (W next to pixel PCA)."""

    def __init__(self, first: Embedder, second: Embedder, name: str = "combined") -> None:
        self.first, self.second, self.name = first, second, name

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        return np.concatenate([prepare_features(self.first.embed(images, repeat)),
                               prepare_features(self.second.embed(images, repeat))], axis=1)

    def describe(self) -> dict[str, Any]:
        return {"of": [self.first.name, self.second.name], "each": "standardised"}


class FixedEmbedder:
    """Embeddings already in memory (e.g. one training stage's W)."""

    def __init__(self, name: str, W: np.ndarray, info: dict[str, Any] | None = None) -> None:
        self.name, self.W, self.info = name, np.asarray(W, dtype=np.float32), dict(info or {})

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        return self.W

    def describe(self) -> dict[str, Any]:
        return self.info


class GANEmbedder:
    """Train SS-StyleGAN on every slice (no labels), then embed each slice as mu(x) in W.

    Trains once (repeat 0) unless ``retrain_per_repeat``; the trained model and ``embeddings.npz``
    are kept under ``out_dir`` so a later run can reuse them with ``--embeddings``. Slices are resized to
    the model's resolution when the data has another one (the pixel baseline keeps the data's own).

    ``on_stage(W, milestone, model_diagnostics)`` is called at each training milestone
    (``train_cfg.milestone_minutes`` / ``milestone_kimg``) with every slice embedded by the model of that
    moment and :func:`model_diagnostics` of it: the anytime evaluation.
    The final model's W is what :meth:`embed` returns; ``on_stage`` is not called for it.
    """

    def __init__(self, model_cfg: Any, train_cfg: Any, out_dir: Path, device: str = "cpu",
                 retrain_per_repeat: bool = False, model_dir: Path | None = None,
                 max_train_seconds: float | None = None, name: str = "ss_stylegan",
                 on_stage: Callable[[np.ndarray, Any, dict[str, float]], None] | None = None) -> None:
        self.model_cfg, self.out_dir = model_cfg, Path(out_dir)
        if max_train_seconds is not None:
            train_cfg = train_cfg.replace(max_minutes=max_train_seconds / 60.0)
        self.train_cfg = train_cfg
        self.device, self.retrain_per_repeat, self.model_dir, self.name = device, retrain_per_repeat, model_dir, name
        self.on_stage = on_stage
        self.final_diagnostics: dict[str, float] = {}
        self._cache: dict[int, np.ndarray] = {}
        self.train_seconds: list[float] = []
        self.trained: list[dict[str, Any]] = []
        self.model_versions: list[str] = []

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        key = repeat if self.retrain_per_repeat else 0
        if key not in self._cache:
            if images.shape[1] != self.model_cfg.resolution:
                images = _resize(images, self.model_cfg.resolution)
            self._cache[key] = self._train_and_embed(images, key)
        return self._cache[key]

    def _train_and_embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        from ss_stylegan.model.checkpoint import load_model
        from ss_stylegan.model.embedding import embed_images
        from ss_stylegan.training.loop import train
        from ss_stylegan.training.progress import Milestone

        run_dir = self.model_dir or (self.out_dir / (f"gan_repeat{repeat}" if self.retrain_per_repeat else "gan"))
        if self.model_dir is None:
            cfg = self.train_cfg.replace(seed=self.train_cfg.seed + repeat)

            def stage(m: Milestone) -> None:
                if self.on_stage is not None and not m.final:
                    self.on_stage(embed_images(m.model, images, 256, self.device), m, model_diagnostics(m.model))

            result = train(images, self.model_cfg, cfg, run_dir, device=self.device, progress=_log_progress,
                           progress_bar=False, on_milestone=stage if self.on_stage is not None else None)
            self.train_seconds.append(result.elapsed)
            self.trained.append({"steps": result.step, "planned_steps": result.total_steps,
                                 "stopped_by_time_limit": result.out_of_time, "images_seen": result.images_seen,
                                 "train_seconds": round(result.elapsed, 1),
                                 "final_losses": {k: round(float(v), 4) for k, v in result.losses.items()}})
            log.info("SS-StyleGAN trained for %.0f s (repeat %d)", result.elapsed, repeat)
        model = load_model(run_dir, self.device)
        if self.model_dir is not None:   # report how the reused model was trained, not this run's settings
            from ss_stylegan.config import TrainConfig
            from ss_stylegan.model.checkpoint import load_checkpoint, resolve_checkpoint

            self.train_cfg = TrainConfig.from_dict(load_checkpoint(resolve_checkpoint(run_dir))["train_config"])
        self.model_versions.append(str(model.model_version))
        self.final_diagnostics = model_diagnostics(model)
        W = np.asarray(embed_images(model, images, 256, self.device), dtype=np.float32)
        info = json.dumps(self.describe())
        np.savez(self.out_dir / f"embeddings_repeat{repeat}.npz", embeddings=W, info=np.array(info))
        return W

    def describe(self) -> dict[str, Any]:
        return {"kind": "SS-StyleGAN W (mu of the encoder)", "model": self.model_cfg.to_dict(),
                "train": self.train_cfg.to_dict(), "device": self.device,
                "retrained_per_repeat": self.retrain_per_repeat, "model_dir": str(self.model_dir or ""),
                "train_seconds": [round(s, 1) for s in self.train_seconds], "trained": self.trained,
                "model_versions": self.model_versions}


def _log_progress(p: Any) -> None:
    log.info("GAN step %d/%d, %.0f s, %.1f img/s, losses %s", p.step, p.total_steps, p.elapsed,
             p.images_per_second, {k: round(float(v), 3) for k, v in p.losses.items()})
