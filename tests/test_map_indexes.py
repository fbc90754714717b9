"""The per-map indexes of the labelling service (``labelling/indexes.py``), each against its stateless twin: the
row lookup, the FPS index (built in the background) and the 1-NN label index, over label changes, flags and
studies that left the folder."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from ss_stylegan.classification.nearest import NearestNeighbourClassifier
from ss_stylegan.labelling.errors import NotReadyError
from ss_stylegan.labelling.indexes import MapIndexes, MapRows
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.selection.fps import FarthestPointSelector

CLASSES = ("normal", "lesion")


def _map(n_images: int = 12, depth: int = 20, seed: int = 0) -> SliceMap:
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"img{i:02d}" for i in range(n_images)], depth)
    slices = np.tile(np.arange(depth), n_images)
    n = len(ids)
    return SliceMap(image_ids=ids, slices=slices, positions=np.zeros((n, 3)), w=rng.normal(size=(n, 8)),
                    xy=rng.normal(size=(n, 2)) * 10, model_version="m", depths={f"img{i:02d}": depth
                                                                               for i in range(n_images)})


def _row_of(slice_map: SliceMap) -> dict[tuple[str, int], int]:
    return {(img, s): r for r, (img, s) in enumerate(zip(slice_map.image_ids.tolist(), slice_map.slices.tolist()))}


def test_map_rows_finds_every_slice_and_nothing_else() -> None:
    slice_map = _map()
    rows = MapRows(slice_map)
    for key, row in _row_of(slice_map).items():
        assert rows.get(key) == row
    assert rows.get(("img00", 99)) is None and rows.get(("nope", 0)) is None


def test_the_fps_index_is_built_in_the_background_once_and_picks_as_the_stateless_selector() -> None:
    slice_map = _map()
    indexes = MapIndexes(random_state=0, classes=CLASSES)
    assert indexes.prepare(slice_map) is True
    assert indexes.prepare(slice_map) is False           # being built, or built: not again
    index = indexes.suggestions(slice_map)               # waits for the background build
    assert indexes.suggestions(slice_map) is index
    labelled, pending = [3, 150], [42]
    got = index.select(labelled=labelled, pending=pending, count=5)
    want = FarthestPointSelector(start="central", random_state=0).select(slice_map.xy, labelled=labelled,
                                                                        pending=pending, count=5)
    assert got == want


def test_a_replaced_map_is_not_kept_alive_by_its_indexes() -> None:
    indexes = MapIndexes(random_state=0, classes=CLASSES)
    old = _map(seed=1)
    indexes.suggestions(old)
    indexes.rows(old)
    gone = weakref.ref(old)
    new = _map(seed=2)
    assert indexes.suggestions(new) is not None
    del old
    gc.collect()
    assert gone() is None


def test_the_label_index_follows_the_labels_the_flags_and_the_removed_studies() -> None:
    slice_map = _map()
    row_of = _row_of(slice_map)
    indexes = MapIndexes(random_state=0, classes=CLASSES)
    none_removed = np.zeros(0, dtype=np.int64)
    with pytest.raises(NotReadyError, match="label at least one slice of each class"):
        indexes.predict(slice_map, slice_map.xy, 0, dict, {}, none_removed)
    rng = np.random.default_rng(3)
    labels: dict[tuple[str, int], str] = {}
    for version in range(1, 8):
        for _ in range(6):    # labels come, change and go between calls
            key = (f"img{rng.integers(12):02d}", int(rng.integers(20)))
            if key in labels and rng.random() < 0.3:
                del labels[key]
            else:
                labels[key] = CLASSES[int(rng.integers(2))]
        flagged = dict.fromkeys(list(labels)[:1], "the study changed")
        removed = slice_map.rows_of("img05") if version % 2 else none_removed
        if all(k in flagged or k[0] == "img05" and version % 2 for k in labels):
            continue
        prediction, classes = indexes.predict(slice_map, slice_map.xy, version, lambda: dict(labels), flagged,
                                              removed)
        usable = sorted((k, c) for k, c in labels.items() if k not in flagged and not (k[0] == "img05" and version % 2))
        twin = NearestNeighbourClassifier().fit(slice_map.xy[[row_of[k] for k, _ in usable]], [c for _, c in usable])
        expected = twin.predict(slice_map.xy)
        assert list(prediction.labels) == list(expected.labels)
        np.testing.assert_allclose(prediction.distance, expected.distance)
        assert set(prediction.neighbour.tolist()) <= {row_of[k] for k, _ in usable}   # map rows
