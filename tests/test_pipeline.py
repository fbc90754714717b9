"""map_from_checkpoint on a real slice cache and checkpoint: a large cache's embeddings are streamed to a
memory-mapped file (the same map as in memory, nothing left on disk), and publishing a map writes its
arrays to the version folder without holding them in memory again."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ss_stylegan.config import ModelConfig, SliceConfig, TrainConfig
from ss_stylegan.data.cache import SliceCache, find_studies
from ss_stylegan.data.synthetic import make_synthetic_datastore
from ss_stylegan.maps import build as pipeline
from ss_stylegan.maps.build import EMBEDDINGS_DIR, map_from_checkpoint
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.training.loop import train
from ss_stylegan.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ModelConfig.tiny(32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SliceCache, Path]:
    """A slice cache of three synthetic studies and a checkpoint of a tiny model trained two steps on it."""
    root = tmp_path_factory.mktemp("pipeline")
    make_synthetic_datastore(root / "studies", n_studies=3, n_slices=12, size=32, random_state=5)
    cache = SliceCache.build(find_studies(root / "studies"), SliceConfig(resolution=32), root / "cache")
    result = train(np.asarray(cache.images), TINY, TrainConfig(batch_size=4, steps=2, checkpoint_interval=2),
                   root / "run", device="cpu", progress_bar=False)
    return cache, result.checkpoint


def _mapped_file(a: np.ndarray) -> bool:
    """Whether ``a``'s memory is a memory-mapped file (through any chain of views)."""
    import mmap

    base = a
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


def test_a_large_cache_is_embedded_into_a_memory_mapped_file(trained: tuple[SliceCache, Path],
                                                              tmp_path: Path) -> None:
    cache, checkpoint = trained
    kwargs = dict(perplexity=5.0, random_state=0, batch_size=8, errors={"bad": "unreadable"}, training={"step": 2})
    in_memory, _ = map_from_checkpoint(cache, checkpoint, **kwargs)                      # small: kept in memory
    streamed, projector = map_from_checkpoint(cache, checkpoint, stream_bytes=0, **kwargs)

    assert not _mapped_file(in_memory.w) and _mapped_file(streamed.w) and not streamed.w.flags.writeable
    np.testing.assert_array_equal(streamed.w, in_memory.w)         # same batches through the same encoder
    np.testing.assert_array_equal(streamed.xy, in_memory.xy)
    np.testing.assert_array_equal(streamed.image_ids, cache.image_ids)
    assert streamed.errors == {"bad": "unreadable"} and streamed.training == {"step": 2}
    assert len(streamed) == len(cache) and streamed.model_version == projector.model_version_
    assert list((cache.cache_dir / EMBEDDINGS_DIR).iterdir()) == []   # unlinked once mapped: nothing left

    # publishing the streamed map writes the memory-mapped w into the version folder
    ws = Workspace(tmp_path / "ws")
    with ws.new_version(streamed.model_version) as version:
        ws.save_map(streamed, version)
        ws.activate(version)
    np.testing.assert_array_equal(ws.load_map().w, in_memory.w)


def test_files_of_processes_that_died_are_removed(trained: tuple[SliceCache, Path]) -> None:
    cache, checkpoint = trained
    folder = cache.cache_dir / EMBEDDINGS_DIR
    folder.mkdir(exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    left = [folder / f"w-{dead}-1.npy", folder / f".w-{dead}-2.npy.abc123.tmp"]   # finished, half-written
    mine = folder / "w-1-3.npy"                # pid 1 runs: another process's file being written is kept
    for path in [*left, mine]:
        path.write_bytes(b"x")
    try:
        map_from_checkpoint(cache, checkpoint, perplexity=5.0, random_state=0, stream_bytes=0)
        assert sorted(folder.iterdir()) == [mine]
    finally:  # the cache is the module's: leave its embeddings folder as it was
        for path in [*left, mine]:
            path.unlink(missing_ok=True)


def test_publishing_writes_the_arrays_without_copying_them_in_memory(tmp_path: Path) -> None:
    """save_map streams the archive into the file: the memory it allocates stays a few chunks, not the map
    (through a BytesIO it held the whole archive: 143 MiB allocated for this 100 MiB w)."""
    n, w_dim = 400_000, 64                              # w: 100 MiB, memory-mapped like a large map's
    w = np.lib.format.open_memmap(tmp_path / "w.npy", mode="w+", dtype=np.float32, shape=(n, w_dim))
    for start in range(0, n, 50_000):
        w[start : start + 50_000] = np.arange(start, start + 50_000, dtype=np.float32)[:, None]
    w.flush()
    w = np.load(tmp_path / "w.npy", mmap_mode="r")
    slice_map = SliceMap(image_ids=np.repeat([f"img_{i:04d}" for i in range(n // 100)], 100),
                         slices=np.tile(np.arange(100), n // 100), positions=np.zeros((n, 3)), w=w,
                         xy=np.zeros((n, 2)), model_version="big")
    assert _mapped_file(slice_map.w)                   # SliceMap keeps the mapping, no copy
    ws = Workspace(tmp_path / "ws")
    with ws.new_version("big") as version:
        tracemalloc.start()
        try:
            ws.save_map(slice_map, version)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        ws.activate(version)
    assert peak < 60 * 2**20, f"publishing allocated {peak / 2**20:.0f} MiB for a {w.nbytes / 2**20:.0f} MiB w"
    loaded = ws.load_map()
    assert loaded.w.shape == (n, w_dim) and loaded.w[123_456, 7] == 123_456 and loaded.w[-1, 0] == n - 1


def test_threshold_is_on_the_size_of_the_embeddings(trained: tuple[SliceCache, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cache, checkpoint = trained
    streamed: list[int] = []
    real = pipeline._embed_streamed
    monkeypatch.setattr(pipeline, "_embed_streamed", lambda *a: streamed.append(1) or real(*a))
    size = len(cache) * TINY.w_dim * 4
    map_from_checkpoint(cache, checkpoint, perplexity=5.0, random_state=0, stream_bytes=size)
    assert streamed == []
    map_from_checkpoint(cache, checkpoint, perplexity=5.0, random_state=0, stream_bytes=size - 1)
    assert streamed == [1]
