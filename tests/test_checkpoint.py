"""Checkpoints: round trip, integrity record, truncated files detected and skipped, resume after corruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ss_stylegan.config import ModelConfig, TrainConfig
from ss_stylegan.model.checkpoint import (
    CheckpointError,
    checkpoint_version,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from ss_stylegan.training.loop import train

MODEL = ModelConfig.tiny(32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _slices(n: int = 24) -> np.ndarray:
    return (np.random.default_rng(0).random((n, 32, 32)) * 255).astype(np.uint8)


def _state(step: int) -> dict:
    return {"step": step, "model_config": MODEL.to_dict(), "weights": torch.arange(5.0) * step,
            "nested": {"betas": (0.0, 0.99), "names": ["a", "b"]}}


def test_round_trip_and_integrity_record(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _state(7))
    assert path.name == "ckpt-00000007.pt"
    record = json.loads((tmp_path / "ckpt-00000007.pt.json").read_text(encoding="utf-8"))
    assert record["size"] == path.stat().st_size and len(record["sha256"]) == 64
    state = load_checkpoint(path)
    assert state["step"] == 7 and torch.equal(state["weights"], torch.arange(5.0) * 7)
    assert state["nested"] == {"betas": (0.0, 0.99), "names": ["a", "b"]}
    assert state["model_version"] == checkpoint_version(path) == f"step00000007-{record['sha256'][:12]}"


def test_truncated_checkpoint_is_detected_and_skipped(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1), keep=5)
    last = save_checkpoint(tmp_path, _state(2), keep=5)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(last)
    assert latest_checkpoint(tmp_path).name == "ckpt-00000001.pt"
    # same size, different bytes: caught by the checksum
    last.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(last)
    # a checkpoint whose record was never written (crash between the two writes)
    (tmp_path / "ckpt-00000002.pt.json").unlink()
    with pytest.raises(CheckpointError, match="integrity record"):
        load_checkpoint(last)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "ckpt-00000099.pt")


def test_pruning_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    assert not (tmp_path / "ckpt-00000001.pt.json").exists()


def test_load_model_gives_eval_model_with_version(tmp_path: Path) -> None:
    result = train(_slices(), MODEL, TrainConfig(batch_size=4, steps=2, checkpoint_interval=1), tmp_path,
                   device="cpu", progress_bar=False)
    model = load_model(tmp_path)
    assert not model.training and not model.discriminator.training
    assert model.model_version == result.model_version and model.step == 2
    state = load_checkpoint(result.checkpoint)
    for name, value in model.generator_ema.state_dict().items():
        assert torch.equal(value, state["generator_ema"][name])
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "ckpt-00000099.pt")
    (tmp_path / "sub").mkdir()
    with pytest.raises(CheckpointError, match="train a model first"):
        load_model(tmp_path / "sub")


def test_resume_after_a_truncated_checkpoint_matches_uninterrupted_run(tmp_path: Path) -> None:
    images = _slices()
    cfg = TrainConfig(batch_size=4, steps=4, checkpoint_interval=2, keep_checkpoints=3, log_interval=1)
    full = train(images, MODEL, cfg, tmp_path / "full", device="cpu", progress_bar=False)
    part = tmp_path / "part"
    train(images, MODEL, cfg, part, device="cpu", progress_bar=False)
    newest = part / "ckpt-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])                      # cut short on disk
    with pytest.raises(CheckpointError):
        load_model(newest)
    assert latest_checkpoint(part).name == "ckpt-00000002.pt"             # the last good one is kept
    resumed = train(images, MODEL, cfg, part, device="cpu", progress_bar=False)
    assert resumed.step == 4
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for key in ("generator", "generator_ema", "discriminator"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert steps == [1, 2, 3, 4]                                          # rows past the good checkpoint dropped


def test_resume_refuses_a_different_model_config(tmp_path: Path) -> None:
    cfg = TrainConfig(batch_size=4, steps=1)
    train(_slices(), MODEL, cfg, tmp_path, device="cpu", progress_bar=False)
    with pytest.raises(CheckpointError, match="different model configuration"):
        train(_slices(), MODEL.replace(w_dim=16), cfg.replace(steps=2), tmp_path, device="cpu", progress_bar=False)


@pytest.mark.parametrize("written_as", ["ss_stylegan.checkpoint/1", "ss_stylegan.model.checkpoint/1"])
def test_checkpoints_of_every_release_load_and_a_foreign_file_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       written_as: str) -> None:
    """Checkpoints written before the library moved into subpackages say ``ss_stylegan.checkpoint/1``; those
    written by the release that moved it, ``ss_stylegan.model.checkpoint/1``. A server upgraded over either
    workspace must go on with its model."""
    import ss_stylegan.model.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "FORMAT", written_as)
    path = save_checkpoint(tmp_path / written_as.split("/")[0], _state(3))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 3
    monkeypatch.setattr(checkpoint, "FORMAT", "something.else/1")
    foreign = save_checkpoint(tmp_path / "foreign", _state(4))
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="not an SS-StyleGAN checkpoint"):
        load_checkpoint(foreign)
