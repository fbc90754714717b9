"""Checkpoints: ``state_dict``s + optimiser and RNG states + JSON configs, written atomically and verified.

A checkpoint ``ckpt-00001000.pt`` (``torch.save`` of plain dicts and tensors, no pickled code) has an
integrity record ``ckpt-00001000.pt.json`` beside it: size, sha256, step and the model version. The
record is written after the checkpoint, so a checkpoint without a matching record (a crash between
the two writes, a file cut short on disk, bit rot) fails :func:`load_checkpoint` with
:class:`CheckpointError` and is never loaded; :func:`latest_checkpoint` falls back to the newest
good one. Loads use ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from ss_stylegan.config import ModelConfig
from ss_stylegan.model.networks import SSStyleGAN
from ss_stylegan.storage.atomic import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

FORMAT = "ss_stylegan.checkpoint/1"
"""What a checkpoint says it is. A name for the file format, not the module's path: when the library moved into
subpackages (commit 4522bdb) it was changed with the module's name by mistake, and every earlier checkpoint was
refused; checkpoints written since then carry that name, which is read too (:data:`READ_FORMATS`)."""
READ_FORMATS = frozenset({FORMAT, "ss_stylegan.model.checkpoint/1"})
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or incompatible; the message says which and what to do."""


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(out_dir: str | Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as ``<out_dir>/ckpt-<step>.pt`` plus its integrity record, then prune old ones.

    Args:
        out_dir: training output folder.
        state: plain dict with at least ``step`` (int) and ``model_config`` (dict); values must be
            tensors, numbers, strings, lists, tuples or dicts of those (``weights_only`` loadable).
        keep: newest checkpoints to keep; older ones are deleted only after this one and its record are written.

    Returns:
        Path of the checkpoint written.
    """
    out_dir = Path(out_dir)
    step = int(state["step"])
    path = out_dir / checkpoint_name(step)
    atomic_write(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))   # streamed, not held in memory
    digest = _sha256(path)                  # hash what reached the disk (fsynced by atomic_write)
    record = {"format": FORMAT, "file": path.name, "size": path.stat().st_size, "sha256": digest, "step": step,
              "model_version": model_version(step, digest)}
    atomic_write_text(_record_path(path), json.dumps(record, indent=2))
    _prune(out_dir, keep)
    return path


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_record(path: str | Path) -> dict[str, Any]:
    """Verify a checkpoint against its integrity record and return the record (size, sha256, step, version)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    rec_path = _record_path(path)
    try:
        record = json.loads(rec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} has no readable integrity record {rec_path.name} ({exc}); it was not "
            "completely written. Delete it and resume from an earlier checkpoint or retrain."
        ) from exc
    size = path.stat().st_size
    if size != record.get("size"):
        raise CheckpointError(
            f"checkpoint {path} is {size} bytes but {record.get('size')} were written: the file is "
            "truncated or was replaced. Delete it and resume from an earlier checkpoint or retrain."
        )
    if _sha256(path) != record.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} does not match its sha256 checksum: the file is corrupted. "
            "Delete it and resume from an earlier checkpoint or retrain."
        )
    return record


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify and load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: missing, truncated, corrupted or of an unknown format.
    """
    record = read_record(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad archive
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") not in READ_FORMATS:
        raise CheckpointError(f"checkpoint {path} is not an SS-StyleGAN checkpoint (format {FORMAT} expected)")
    state["model_version"] = record["model_version"]
    return state


def checkpoint_version(path: str | Path) -> str:
    """Model version recorded for a checkpoint (reads the integrity record only; no hashing)."""
    path = Path(path)
    try:
        return str(json.loads(_record_path(path).read_text(encoding="utf-8"))["model_version"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} has no readable integrity record: {exc}") from exc


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoint files in ``out_dir``, oldest first (verification not done here)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if _NAME.match(p.name))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``out_dir`` that passes its integrity check; bad ones are logged and skipped."""
    for path in reversed(list_checkpoints(out_dir)):
        try:
            read_record(path)
        except CheckpointError as exc:
            logger.warning("skipping checkpoint: %s", exc)
            continue
        return path
    return None


def _prune(out_dir: Path, keep: int) -> None:
    paths = list_checkpoints(out_dir)
    for path in paths[: max(len(paths) - keep, 0)]:
        path.unlink(missing_ok=True)
        _record_path(path).unlink(missing_ok=True)


def model_version(step: int, sha256: str) -> str:
    """Version string stored with embeddings: training step plus a short hash of the checkpoint bytes."""
    return f"step{step:08d}-{sha256[:12]}"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest good checkpoint of a training output folder."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(
                f"no valid checkpoint in {path}: train a model first (python -m ss_stylegan train ...)"
            )
        return found
    return path


def load_model(out_dir_or_path: str | Path, device: str | torch.device = "cpu") -> SSStyleGAN:
    """Build an :class:`SSStyleGAN` from a checkpoint (or the newest good one in a folder), in eval mode.

    The returned model carries ``model.model_version`` and ``model.step``.
    """
    path = resolve_checkpoint(out_dir_or_path)
    state = load_checkpoint(path, map_location="cpu")
    model = SSStyleGAN(ModelConfig.from_dict(state["model_config"]))
    try:
        model.generator.load_state_dict(state["generator"])
        model.generator_ema.load_state_dict(state["generator_ema"])
        model.discriminator.load_state_dict(state["discriminator"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its model config: {exc}") from exc
    model.model_version = state["model_version"]
    model.step = int(state["step"])
    return model.to(device).eval()
