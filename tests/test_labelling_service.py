"""The labelling service's suggestions and classification keep their indexes between requests and answer as
if rebuilt.

:class:`ss_stylegan.labelling.service.LabellingService` (what the server runs) runs in the test process over
a synthetic map (placeholder study
files, as ``benchmarks/bench_server.py`` writes them: suggestions and classification read only the map).
Over a sequence of requests from several clients, label changes, a study leaving the folder and a new
map, every ``fps`` answer must equal the stateless :class:`FarthestPointSelector` over the same labelled,
reserved and removed slices, and every classification a fresh :class:`NearestNeighbourClassifier`; the
indexes must be the same objects from one request to the next while the map stays.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from ss_stylegan.classification.nearest import NearestNeighbourClassifier
from ss_stylegan.config import SliceConfig
from ss_stylegan.labelling.errors import NotReadyError
from ss_stylegan.labelling.flags import flag_of
from ss_stylegan.labelling.results import LabellingConfig
from ss_stylegan.labelling.service import LabellingService
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.selection.fps import FarthestPointSelector
from ss_stylegan.workspace import Workspace

N_STUDIES, DEPTH = 12, 40


def write_map(studies: Path, seed: int, version: str) -> SliceMap:
    rng = np.random.default_rng(seed)
    ids = [f"img_{i:02d}" for i in range(N_STUDIES)]
    studies.mkdir(exist_ok=True)
    for image_id in ids:
        (studies / f"{image_id}.nii.gz").write_bytes(b"")
    n = N_STUDIES * DEPTH
    slice_map = SliceMap(image_ids=np.repeat(ids, DEPTH), slices=np.tile(np.arange(DEPTH), N_STUDIES),
                         positions=np.zeros((n, 3)), w=rng.normal(size=(n, 4)),
                         xy=rng.normal(scale=10.0, size=(n, 2)), model_version=version,
                         depths={i: DEPTH for i in ids})
    ws = Workspace(studies / ".ss_stylegan")
    with ws.new_version(version) as folder:   # a published version (no model needed here)
        ws.save_map(slice_map, folder)
        ws.activate(folder)
    return slice_map


@pytest.fixture
def service(tmp_path: Path) -> LabellingService:
    write_map(tmp_path / "studies", 0, "v1")
    config = LabellingConfig(classes=("normal", "lesion"), slice_cfg=SliceConfig(resolution=32), suggestion_cap=8)
    svc = LabellingService(config, tmp_path / "studies", Workspace(tmp_path / "studies" / ".ss_stylegan"),
                           training_running=lambda: False)
    svc.labels.open_for_writing()
    svc.sync()   # the first sweep records the studies' fingerprints in a new map: let it finish
    svc.maps.wait_refresh()
    return svc


def row_lookup(slice_map: SliceMap) -> dict[tuple[str, int], int]:
    """``{(image, slice): row}`` of every slice, built from scratch (the stateless twin of ``MapRows``)."""
    return {(img, s): row for row, (img, s) in enumerate(zip(slice_map.image_ids.tolist(), slice_map.slices.tolist()))}


def expected_fps(svc: LabellingService, client: str, count: int) -> list[tuple[str, int]]:
    """What the stateless selector picks for ``client`` now (computed before the request reserves)."""
    slice_map = svc.slice_map()
    row_of = row_lookup(slice_map)
    removed = svc.maps.removed_rows(slice_map)
    gone = set(removed.tolist())
    labelled = [row_of[k] for k in svc.flags.usable() if k in row_of and row_of[k] not in gone]
    reserved = [row_of[k] for k in svc.pending.reserved(exclude_client=client) if k in row_of and row_of[k] not in gone]
    picks = FarthestPointSelector(start="central", random_state=svc.config.random_state).select(
        slice_map.xy, labelled=labelled, pending=reserved, count=count, exclude=removed)
    return [(str(slice_map.image_ids[p.index]), int(slice_map.slices[p.index])) for p in picks]


def expected_classes(svc: LabellingService, image_id: str) -> list[str]:
    slice_map = svc.slice_map()
    row_of = row_lookup(slice_map)
    gone = set(slice_map.image_ids[svc.maps.removed_rows(slice_map)].tolist())
    labelled = sorted((k, c) for k, c in svc.flags.usable().items() if k in row_of and k[0] not in gone)
    clf = NearestNeighbourClassifier().fit(slice_map.xy[[row_of[k] for k, _ in labelled]], [c for _, c in labelled])
    return [str(c) for c in clf.predict(slice_map.xy[slice_map.rows_of(image_id)]).labels]


def fresh_flags(svc: LabellingService) -> dict[tuple[str, int], str]:
    """Every label judged against its study now, with nothing kept from earlier calls."""
    flags = {}
    for image_id in svc.labels.images():
        records = svc.labels.records(image_id)
        state = svc.flags.study_state(image_id, records)
        flags.update({(image_id, r["slice"]): reason for r in records if (reason := flag_of(r, state))})
    return flags


def test_suggestions_and_classification_follow_every_change(service: LabellingService, tmp_path: Path) -> None:
    svc = service
    rng = np.random.default_rng(1)
    with pytest.raises(NotReadyError, match="no embedded slice is labelled"):
        svc.classify_image("img_00")
    kept: dict[str, object] = {}
    broken: set[str] = set()                       # studies changed or deleted below
    for step in range(40):
        client, count = f"client{step % 4}", int(rng.integers(1, 4))
        want = expected_fps(svc, client, count)
        got = svc.suggest("fps", count=count, client_id=client)
        assert [(s.image, s.slice) for s in got.picks] == want, step
        if kept.get("map") is not svc.slice_map():
            kept = {"map": svc.slice_map(), "fps": svc.indexes._fps[1]}
        assert svc.indexes._fps[1] is kept["fps"]          # kept, never rebuilt while the map stays
        if step % 3 == 0 and want:                 # the client labels one of its suggestions
            image, s = want[0]
            svc.set_label(image, s, "lesion" if rng.random() < 0.4 else "normal", user=client)
        if step % 7 == 6:                          # ... or another label is removed or changed
            image, s = sorted(svc.flags.usable())[int(rng.integers(0, len(svc.flags.usable())))]
            if rng.random() < 0.5:
                svc.remove_label(image, s)
            else:
                svc.set_label(image, s, "lesion")
        if svc.flags.usable():
            image_id = f"img_{int(rng.integers(0, N_STUDIES)):02d}"
            image_id = "img_04" if image_id in broken else image_id
            answer = svc.classify_image(image_id)
            assert [x.label for x in answer.slices] == expected_classes(svc, image_id), step
            for x in answer.slices:  # the neighbour is a labelled slice of the predicted class
                assert svc.flags.usable()[(x.neighbour_image, x.neighbour_slice)] == x.label
            kept.setdefault("nn", svc.indexes._nn[1])
            assert svc.indexes._nn[1] is kept["nn"]
        assert svc.flags.flags() == fresh_flags(svc), step
        if step == 20:                             # a labelled study's file changes in place (same folder stamp)
            svc.set_label("img_05", 1, "normal")
            broken.add("img_05")
            (tmp_path / "studies" / "img_05.nii.gz").write_bytes(b"other content")
            time.sleep(1.1)                        # flags notice a file changed in place within FLAGS_TTL_S
            assert ("img_05", 1) in svc.flags.flags()         # (here: it cannot be read now)
            svc.sync()
            svc.maps.wait_refresh()                     # (the map's sweep sets the study aside: it cannot be read)
        if step == 25:                             # a study leaves the folder: never suggested, not a reference
            svc.set_label("img_03", 2, "lesion")
            os.remove(tmp_path / "studies" / "img_03.nii.gz")
            broken.add("img_03")
            n_maps = len({id(kept["map"]), id(svc.slice_map())})
            svc.sync()
            svc.maps.wait_refresh()                     # (the map without it is published by a background thread)
            assert n_maps == 1 and svc.slice_map() is not kept["map"]
            assert ("img_03", 2) in svc.flags.flags()
            svc.remove_label("img_03", 2)          # a flagged label removed: its flag goes at once
            assert ("img_03", 2) not in svc.flags.flags()
    assert not any(s.image == "img_03" for s in svc.suggest("fps", count=8, client_id="last").picks)


def test_a_new_map_gets_new_indexes(service: LabellingService, tmp_path: Path) -> None:
    svc = service
    svc.set_label("img_01", 5, "normal")
    svc.set_label("img_02", 7, "lesion")
    svc.suggest("fps", client_id="a")
    svc.classify_image("img_04")
    old_fps, old_nn = svc.indexes._fps[1], svc.indexes._nn[1]
    write_map(tmp_path / "studies", 5, "v2")               # a training publishes another map
    want = expected_fps(svc, "a", 2)
    assert [(s.image, s.slice) for s in svc.suggest("fps", count=2, client_id="a").picks] == want
    assert [x.label for x in svc.classify_image("img_04").slices] == expected_classes(svc, "img_04")
    assert svc.indexes._fps[1] is not old_fps and svc.indexes._nn[1] is not old_nn


def test_the_suggestion_index_of_a_new_map_is_built_in_the_background(service: LabellingService,
                                                                       tmp_path: Path) -> None:
    svc = service
    svc.sync()                                             # a map without an index: sync starts its build
    first = svc.slice_map()
    _, thread = svc.indexes._building
    if thread is not None:
        thread.join(30)
    assert svc.indexes._fps[1] is not None and svc.indexes._fps[0]() is first
    built = svc.indexes._fps[1]
    want = expected_fps(svc, "a", 3)
    assert [(s.image, s.slice) for s in svc.suggest("fps", count=3, client_id="a").picks] == want
    assert svc.indexes._fps[1] is built                    # the suggestion used the index built in the background
    assert not svc.indexes.prepare(first)                  # nothing to build for a map that has its index
    write_map(tmp_path / "studies", 9, "v3")               # a training publishes another map
    svc.sync()
    svc.indexes.suggestions(svc.slice_map())               # waits for the background build of the new map's index
    assert svc.indexes._fps[0]() is svc.slice_map() and svc.indexes._fps[1] is not built
    want = expected_fps(svc, "b", 2)
    assert [(s.image, s.slice) for s in svc.suggest("fps", count=2, client_id="b").picks] == want


def test_the_state_in_w_is_built_only_once_something_in_w_is_asked_for(tmp_path: Path) -> None:
    """With the paper's pipeline (FPS and 1-NN in the map) a new map does not cost its state in W (seconds of
    background work per map version at a million slices) until a request asks for a strategy in W; from then on,
    every new map's state is built at once."""
    write_map(tmp_path / "studies", 0, "v1")
    config = LabellingConfig(classes=("normal", "lesion"), slice_cfg=SliceConfig(resolution=32), strategy="fps",
                             classifier="nn_map")
    svc = LabellingService(config, tmp_path / "studies", Workspace(tmp_path / "studies" / ".ss_stylegan"),
                           training_running=lambda: False)
    svc.labels.open_for_writing()
    svc.sync()
    svc.maps.wait_refresh()
    svc.set_label("img_01", 5, "normal")
    svc.set_label("img_02", 7, "lesion")
    svc.suggest("fps", client_id="a")
    svc.classify_image("img_04")
    assert not svc.uses_w() and svc.methods.status(svc.slice_map())["state"] == "not started"
    svc.suggest("typiclust", client_id="b")                     # asked for by name: its build starts now
    assert svc.uses_w() and svc.methods.status(svc.slice_map())["state"] != "not started"
    assert svc.methods.get(svc.slice_map(), wait_s=120) is not None
    assert [p.strategy for p in svc.suggest("typiclust", client_id="c").picks] == ["typiclust"]
    write_map(tmp_path / "studies", 5, "v2")                    # a training publishes another map
    svc.sync()
    assert svc.methods._kept is not None and svc.methods._kept.map_ref() is svc.slice_map()
