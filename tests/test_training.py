"""Training: it learns, a stopped-and-resumed run equals an uninterrupted one, outputs, errors, CLI end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ss_stylegan.cli import main as cli_main
from ss_stylegan.config import ModelConfig, TrainConfig
from ss_stylegan.model.checkpoint import load_checkpoint, load_model
from ss_stylegan.model.embedding import (
    embed_images,
    reconstruction_error,
    w_recovery_error,
)
from ss_stylegan.model.networks import SSStyleGAN
from ss_stylegan.training.images import GAP, LABEL_PX, TITLE_PX
from ss_stylegan.training.loop import TrainingError, train
from ss_stylegan.training.progress import Milestone, TrainProgress

TINY = ModelConfig.tiny(32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def discs(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Bright discs of random centre, radius and intensity on black: uint8 [n, size, size]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.25, size * 0.75, 2)
        radius, value = rng.uniform(size * 0.12, size * 0.3), rng.uniform(120, 255)
        out[i] = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, value, 0).astype(np.uint8)
    return out


def test_training_learns_encoder_and_reconstruction(tmp_path: Path) -> None:
    """About a CPU-minute of training clearly improves W recovery and reconstruction of real slices."""
    images = discs(300)
    torch.manual_seed(0)   # train() seeds its own forked RNG with the same seed: this is the untrained model
    start = SSStyleGAN(TINY).eval()
    w0, r0 = w_recovery_error(start, 128), reconstruction_error(start, images[:128])
    cfg = TrainConfig(batch_size=16, steps=90, ema_kimg=1.0, log_interval=30, checkpoint_interval=1000)
    train(images, TINY, cfg, tmp_path, device="cpu", progress_bar=False)
    model = load_model(tmp_path)
    w1, r1 = w_recovery_error(model, 128), reconstruction_error(model, images[:128])
    mean_image_mse = float((((images[:128] / 127.5 - 1) - (images / 127.5 - 1).mean(0)) ** 2).mean())
    assert w1 < 0.7 * w0, f"W recovery error {w0:.3f} -> {w1:.3f}"
    assert r1 < 0.3 * r0, f"reconstruction error {r0:.3f} -> {r1:.3f}"
    assert r1 < mean_image_mse, "G(mu(x)) should beat the mean image: mu(x) must encode the slice"


def test_stopped_and_resumed_run_matches_uninterrupted(tmp_path: Path) -> None:
    images = discs(40)
    cfg = TrainConfig(batch_size=4, steps=6, checkpoint_interval=100, log_interval=1, r1_interval=2)
    full = train(images, TINY, cfg, tmp_path / "full", device="cpu", progress_bar=False)
    calls: list[int] = []
    first = train(images, TINY, cfg, tmp_path / "split", device="cpu", progress_bar=False,
                  should_stop=lambda: calls.append(1) is None and len(calls) >= 3)
    assert first.stopped and first.step == 3 and first.checkpoint.name == "ckpt-00000003.pt"
    second = train(images, TINY, cfg, tmp_path / "split", device="cpu", progress_bar=False)
    assert not second.stopped and second.step == 6 and second.images_seen == 24
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(second.checkpoint)
    for key in ("generator", "generator_ema", "discriminator"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    rows_a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k.startswith("loss/")} == {
            k: v for k, v in rb.items() if k.startswith("loss/")}
    assert "loss/D_r1" in rows_a[0] and "loss/D_r1" not in rows_a[1]     # lazy R1 every 2nd step
    # a finished run is not trained again
    again = train(images, TINY, cfg, tmp_path / "full", device="cpu", progress_bar=False)
    assert again.step == 6 and again.checkpoint == full.checkpoint


def test_outputs_progress_and_memmap_input(tmp_path: Path) -> None:
    path = tmp_path / "slices.u8"
    mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=(20, 32, 32))
    mm[:] = discs(20)
    mm.flush()
    images = np.memmap(path, dtype=np.uint8, mode="r", shape=(20, 32, 32))
    seen: list[TrainProgress] = []
    out = tmp_path / "run"
    result = train(images, TINY, TrainConfig(batch_size=4, steps=4, log_interval=2, checkpoint_interval=2),
                   out, device="cpu", progress=seen.append, progress_bar=False)
    assert [p.step for p in seen] == [2, 4]
    last = seen[-1]
    assert last.total_steps == 4 and last.images_seen == 16 and last.eta_seconds == pytest.approx(0.0)
    assert set(last.losses) >= {"loss/G", "loss/D", "loss/E_nll", "loss/E_rec"} and last.images_per_second > 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and rows[-1]["images_seen"] == 16 and "time" in rows[-1]
    resolved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert resolved["model"] == TINY.to_dict() and resolved["resolved"]["total_steps"] == 4
    assert resolved["resolved"]["r1_gamma"] == pytest.approx(0.0002 * 32**2 / 4)
    tile = 32 * 4      # each 32x32 slice enlarged to 128 pixels, 4 px apart; titles above, row names on the left
    assert Image.open(out / "samples.png").size == (LABEL_PX + 8 * (tile + GAP), TITLE_PX + 2 * (tile + GAP))
    assert Image.open(out / "reconstructions.png").size == (LABEL_PX + 8 * (tile + GAP), TITLE_PX + 2 * (tile + GAP))
    assert result.model_version.startswith("step00000004-")
    w = embed_images(load_model(out), images, batch_size=7)
    assert w.shape == (20, TINY.w_dim) and w.dtype == np.float32 and np.isfinite(w).all()
    model = load_model(out)
    with torch.no_grad():
        ref, _ = model.encode(torch.from_numpy(np.array(images[5:6])).float()[:, None] / 127.5 - 1)
    np.testing.assert_allclose(w[5], ref[0].numpy(), rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    cfg = TrainConfig(batch_size=4, steps=1)
    with pytest.raises(TrainingError, match=r"uint8 \[N, 32, 32\].*got float64"):
        train(np.zeros((4, 32, 32)), TINY, cfg, tmp_path, device="cpu")
    with pytest.raises(TrainingError, match=r"got uint8 \[4, 64, 64\]; rebuild the slice cache at resolution 32"):
        train(np.zeros((4, 64, 64), np.uint8), TINY, cfg, tmp_path, device="cpu")
    with pytest.raises(TrainingError, match="no slices"):
        train(np.zeros((0, 32, 32), np.uint8), TINY, cfg, tmp_path, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA GPU"):
            train(discs(4), TINY, cfg, tmp_path, device="cuda")


def test_cli_train_and_embed_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ss_stylegan.data.synthetic import make_synthetic_datastore

    studies = tmp_path / "studies"
    make_synthetic_datastore(studies, n_studies=2, n_slices=6, size=48, random_state=0)
    run = tmp_path / "run"
    code = cli_main(["train", "--studies", str(studies), "--out", str(run), "--tiny", "--resolution", "32",
                     "--steps", "3", "--batch-size", "4", "--device", "cpu"])
    assert code == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["step"] == 3 and (run / "slice_config.json").exists()
    out = tmp_path / "embeddings.npz"
    assert cli_main(["embed", "--studies", str(studies), "--model", str(run), "--out", str(out)]) == 0
    with np.load(out) as npz:
        assert set(npz.files) == {"image_ids", "slice_indices", "w", "model_version"}
        n = len(npz["image_ids"])
        assert 0 < n <= 12 and npz["w"].shape == (n, TINY.w_dim) and npz["slice_indices"].shape == (n,)
        assert set(npz["image_ids"].tolist()) == {"study_00", "study_01"}
        assert str(npz["model_version"]) == trained["model_version"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["train", "--studies", str(empty), "--out", str(tmp_path / "r2"), "--tiny"]) == 1
    assert "no studies" in capsys.readouterr().err


def test_cli_picks_the_cpu_sized_network_without_a_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ss_stylegan.config import ModelConfig
    from ss_stylegan.data.synthetic import make_synthetic_datastore

    studies = tmp_path / "studies"
    make_synthetic_datastore(studies, n_studies=1, n_slices=4, size=32, random_state=0)
    run = tmp_path / "run"
    assert cli_main(["train", "--studies", str(studies), "--out", str(run), "--resolution", "32",
                     "--steps", "1", "--batch-size", "2", "--device", "cpu"]) == 0
    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert saved["model"] == ModelConfig.small(32).to_dict()  # the GPU-sized default would take days on a CPU


def test_ema_generator_follows_the_half_life(tmp_path: Path) -> None:
    from ss_stylegan.training.loop import Trainer

    cfg = TrainConfig(batch_size=4, steps=2, ema_kimg=0.01, ema_rampup=None, checkpoint_interval=100)
    trainer = Trainer(discs(8), TINY, cfg, tmp_path, torch.device("cpu"))
    before = [p.detach().clone() for p in trainer.model.generator_ema.parameters()]
    trainer.train_step()
    beta = 0.5 ** (4 / 10.0)  # half-life of 10 images, 4 images per step
    for old, new, ema in zip(before, trainer.model.generator.parameters(), trainer.model.generator_ema.parameters()):
        assert torch.allclose(ema, new.detach() + beta * (old - new.detach()), atol=1e-6)
    moved = sum(float((ema - old).abs().sum()) for old, ema in zip(before, trainer.model.generator_ema.parameters()))
    assert moved > 0  # the EMA copy really moved towards the trained generator


def test_milestones_pause_training_without_changing_it(tmp_path: Path) -> None:
    """Milestones come every milestone_kimg and at the end; their callbacks (which use the model and the RNG)
    leave the training bit-for-bit as it would have been, and their time is not training time."""
    images = discs(40)
    cfg = TrainConfig(batch_size=4, steps=10, checkpoint_interval=100, log_interval=1, r1_interval=2)
    plain = train(images, TINY, cfg, tmp_path / "plain", device="cpu", progress_bar=False)
    seen: list[tuple[int, int, bool, str]] = []
    in_callbacks = [0.0]

    def on_milestone(m: Milestone) -> None:
        t0 = time.perf_counter()
        embed_images(m.model, images[:8])     # what a publish does with the live model
        torch.randn(1000)                     # and any use of the global RNG is isolated
        time.sleep(0.3)
        assert m.checkpoint.is_file() and m.model_version == load_checkpoint(m.checkpoint)["model_version"]
        seen.append((m.step, m.images_seen, m.final, m.model_version))
        in_callbacks[0] += time.perf_counter() - t0

    t_start = time.perf_counter()
    staged = train(images, TINY, cfg.replace(milestone_kimg=0.012), tmp_path / "staged", device="cpu",
                   progress_bar=False, on_milestone=on_milestone)
    wall = time.perf_counter() - t_start
    assert [(s, n, f) for s, n, f, _ in seen] == [(3, 12, False), (6, 24, False), (9, 36, False), (10, 40, True)]
    assert in_callbacks[0] >= 1.2 and 0 < staged.elapsed <= wall - in_callbacks[0]   # callbacks: not training time
    a, b = load_checkpoint(plain.checkpoint), load_checkpoint(staged.checkpoint)
    for key in ("generator", "generator_ema", "discriminator"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    assert staged.losses == plain.losses


def test_time_budget_ends_training_with_a_final_milestone(tmp_path: Path) -> None:
    images = discs(40)
    finals: list[Milestone] = []
    cfg = TrainConfig(batch_size=4, steps=10_000, checkpoint_interval=100, max_minutes=0.02)  # 1.2 s of training
    result = train(images, TINY, cfg, tmp_path, device="cpu", progress_bar=False,
                   on_milestone=lambda m: finals.append(m) if m.final else None)
    assert result.out_of_time and not result.stopped and 0 < result.step < 10_000
    assert result.elapsed >= 1.2   # it stops at the first step that ends past the budget
    assert [m.step for m in finals] == [result.step]
    # a later run with the same budget has nothing left to do: no step, the final milestone again
    again = train(images, TINY, cfg, tmp_path, device="cpu", progress_bar=False,
                  on_milestone=lambda m: finals.append(m))
    assert again.step == result.step and again.out_of_time and [m.step for m in finals] == [result.step] * 2
    assert finals[-1].final


def test_bf16_and_channels_last_train_and_resume(tmp_path: Path) -> None:
    """The throughput options keep training finite and resumable (weights and optimiser stay float32)."""
    images = discs(40)
    cfg = TrainConfig(batch_size=4, steps=6, checkpoint_interval=3, r1_interval=2, precision="bf16",
                      channels_last=True)
    result = train(images, TINY, cfg, tmp_path, device="cpu", progress_bar=False)
    state = load_checkpoint(result.checkpoint)
    assert all(t.dtype == torch.float32 for t in state["generator"].values() if t.is_floating_point())
    assert all(np.isfinite(v) for v in result.losses.values())
    model = load_model(tmp_path)
    assert np.isfinite(embed_images(model, images[:8])).all()
    more = train(images, TINY, cfg.replace(steps=9), tmp_path, device="cpu", progress_bar=False)
    assert more.step == 9


def test_embeddings_stream_to_a_memory_mapped_file(tmp_path: Path) -> None:
    """embed_to_file gives the same W as embed_images, reading the slices from the cache file in batches, and
    writes atomically; a slice of a memory map (whose offset is its parent's) is read correctly too."""
    from ss_stylegan.model.embedding import embed_to_file, read_batches

    train(discs(8), TINY, TrainConfig(batch_size=4, steps=1), tmp_path / "run", device="cpu", progress_bar=False)
    model = load_model(tmp_path / "run")
    np.save(tmp_path / "slices.npy", discs(23, seed=4))
    images = np.load(tmp_path / "slices.npy", mmap_mode="r")
    seen: list[tuple[int, int]] = []
    w = embed_to_file(model, images, tmp_path / "w.npy", batch_size=5, progress=lambda d, t: seen.append((d, t)))
    assert isinstance(w, np.memmap) and w.shape == (23, TINY.w_dim) and w.dtype == np.float32
    np.testing.assert_allclose(w, embed_images(model, np.array(images), batch_size=7), rtol=1e-5, atol=1e-6)
    assert seen == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
    part = images[6:17]
    rows = np.concatenate([b for _, b in read_batches(part, 4)])
    np.testing.assert_array_equal(rows, np.array(part))
    before = (tmp_path / "w.npy").read_bytes()
    with open(tmp_path / "slices.npy", "r+b") as fh:     # the cache file loses its last rows while being read
        fh.truncate(fh.seek(0, 2) - 3 * 32 * 32)
    with pytest.raises(OSError, match="ended early at row 20"):
        embed_to_file(model, images, tmp_path / "w.npy", batch_size=5)
    assert (tmp_path / "w.npy").read_bytes() == before and not list(tmp_path.glob(".w.npy.*"))
