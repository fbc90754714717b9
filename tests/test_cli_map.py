"""``python -m ss_stylegan map`` publishes a map that a server over the same folder serves as it is.

A tiny model is trained with the CLI at 32x32 while the server is configured for 64x64: the server must read the
slices the way the published map was made (the map records its slice settings), for suggestions, for a study
added to the folder afterwards and for the model-ready slice image.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from server_harness import TINY_CONF, start_server

from ss_stylegan.cli import main as cli_main
from ss_stylegan.data.synthetic import make_synthetic_datastore, make_synthetic_study
from ss_stylegan.workspace import Workspace

pytestmark = pytest.mark.server


def test_cli_map_is_served_as_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    studies = tmp_path / "studies"
    make_synthetic_datastore(studies, n_studies=2, n_slices=6, size=48, random_state=0)
    run = tmp_path / "run"
    assert cli_main(["train", "--studies", str(studies), "--out", str(run), "--tiny", "--resolution", "32",
                     "--steps", "3", "--batch-size", "4", "--device", "cpu"]) == 0
    capsys.readouterr()
    empty = tmp_path / "no_studies"
    empty.mkdir()
    assert cli_main(["map", "--studies", str(empty), "--model", str(run)]) == 1
    assert "no studies" in capsys.readouterr().err and not any(empty.iterdir())  # no stray workspace folder
    assert cli_main(["map", "--studies", str(studies), "--model", str(run), "--perplexity", "5"]) == 0
    published = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    slice_map = Workspace(studies / ".ss_stylegan").load_map()
    assert published["n_slices"] == len(slice_map) > 0 and published["n_images"] == 2
    assert slice_map.slice_cfg["resolution"] == 32 and slice_map.version.name == published["version"]

    conf = {**TINY_CONF, "resolution": "64"}   # a server set up for another resolution than the map's
    with start_server(studies, conf, log_path=tmp_path / "server.log") as server:
        info = server.get_json("/info/")["ss_stylegan"]
        assert info["state"] == "ready" and info["n_slices"] == len(slice_map), info
        assert info["model_version"] == published["model_version"]
        status, pick = server.request("POST", "/activelearning/fps", {})
        assert status == 200 and pick["id"] in ("study_00", "study_01"), pick
        png = requests.get(f"{server.url}/slicemap/slice", params={"image": pick["id"], "slice": pick["slice"]},
                           timeout=60)
        assert png.status_code == 200
        assert Image.open(io.BytesIO(png.content)).size == (32, 32)   # the map's resolution, not the server's 64
        status, body = server.request("PUT", "/slicelabels/", {"image": pick["id"], "slice": pick["slice"],
                                                              "class": "lesion"})
        assert status == 200, body
        # a study copied in later is placed into the map with the map's own slice settings
        make_synthetic_study(tmp_path / "new.nii.gz", n_slices=5, size=48, random_state=3)
        shutil.copy(tmp_path / "new.nii.gz", studies / "study_new.nii.gz")
        deadline = time.monotonic() + 120
        while True:
            status, answer = server.request("POST", "/infer/classify?image=study_new", {})
            if status != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == 200, (answer, server.log())
        assert answer["n_slices"] == 5 and {s["class"] for s in answer["slices"]} == {"lesion"}
        assert np.isfinite([s["score"] for s in answer["slices"]]).all()
