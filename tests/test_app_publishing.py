"""Maps published while training runs, against a real server and a real training process.

The server is started with a training-time budget (``--conf train_minutes``) of 24 seconds and a new map
every 3 seconds of training (``--conf publish_minutes``), so one training publishes several maps.
Suggestions must work from the first map on, while training continues, labels made on an early map must
carry over to the later ones, and ``/info/`` must say which map is live and how far its model was trained.
"""

from __future__ import annotations

import time

import pytest
from server_harness import TINY_CONF, RunningServer, start_server

from ss_stylegan.data.synthetic import make_synthetic_datastore

pytestmark = pytest.mark.server

BUDGET_MINUTES = 0.4        # 24 s of training time (the pauses to publish are not counted)
PUBLISH_MINUTES = 0.05      # a map every 3 s of training


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root = tmp_path_factory.mktemp("publishing")
    make_synthetic_datastore(root / "studies", n_studies=2, n_slices=8, size=32, random_state=5)
    conf = {**TINY_CONF, "steps": "100000", "checkpoint_interval": "1000",
            "train_minutes": str(BUDGET_MINUTES), "publish_minutes": str(PUBLISH_MINUTES)}
    with start_server(root / "studies", conf, log_path=root / "server.log") as srv:
        yield srv


def test_maps_are_published_while_training_runs_and_labels_carry_over(server: RunningServer) -> None:
    settings = server.get_json("/info/")["ss_stylegan"]["settings"]
    assert settings["train_minutes"] == BUDGET_MINUTES and settings["publish_minutes"] == PUBLISH_MINUTES
    status, task = server.request("POST", "/train/ss_stylegan", {})
    assert status == 200, task

    # the first map arrives while training goes on: suggestions and labels work on it
    deadline = time.monotonic() + 240
    early = None
    while time.monotonic() < deadline:
        block = server.get_json("/info/")["ss_stylegan"]
        if block["map"] is not None:
            early = block
            break
        time.sleep(0.1)
    assert early is not None, server.log()
    assert early["map"]["training"]["final"] is False, early["map"]
    assert early["map"]["training"]["step"] >= 1 and early["map"]["version"]
    status, picked = server.request("POST", "/activelearning/fps", {"count": 1, "client_id": "early"})
    assert status == 200, picked
    label = {"image": picked["id"], "slice": picked["slice"], "class": "lesion", "user": "alice"}
    status, stored = server.request("PUT", "/slicelabels/", label)
    assert status == 200, stored

    done = server.wait_for_training(timeout_s=300)
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["state"] == "ready", (done, block)
    final = block["map"]
    assert final["training"]["final"] is True and final["version"] != early["map"]["version"]
    assert final["training"]["step"] > early["map"]["training"]["step"]
    # the budget ended it: the last map's model trained for the budget (training time, pauses excluded)
    assert BUDGET_MINUTES <= final["training"]["minutes"] < BUDGET_MINUTES + 0.2, final
    assert block["progress"]["maps_published"] >= 2 and block["progress"]["out_of_time"] is True, block["progress"]
    # the label made on the first map is still there and drives the classification of the final one
    assert [r for r in server.get_json("/slicelabels/")["labels"] if (r["image"], r["slice"]) == (label["image"], label["slice"])]
    status, answer = server.request("POST", f"/infer/classify?image={label['image']}", {})
    assert status == 200, answer
    assert answer["model_version"] == final["model_version"]
