"""The server offers every pipeline (issue 19): a route per strategy, the measured best as its default, the paper's
one setting away, and every classification answer naming its classifier and the label state it reflects.

Real servers on 127.0.0.1 over copies of the trained datastore: one with the defaults, one with
``--conf pipeline paper --conf classifier logistic``.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from server_harness import TINY_CONF, RunningServer, start_server
from trained_datastore import copy_trained_datastore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "monailabel_app"))
from lib.configs.settings import AppSettings  # noqa: E402

from ss_stylegan.config import ConfigError  # noqa: E402
from ss_stylegan.labelling.methods import CLASSIFIERS, STRATEGIES  # noqa: E402

pytestmark = pytest.mark.server


def _serve(root: Path, template: Path, conf: dict[str, str]) -> RunningServer:
    copy_trained_datastore(template, root / "studies")
    return start_server(root / "studies", {**TINY_CONF, **conf}, log_path=root / "server.log")


def _wait_for_w(server: RunningServer, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = server.get_json("/info/")["ss_stylegan"]["pipelines"]["whole_embedding"]
        if state.get("state") == "ready" or time.monotonic() > deadline:
            return state
        time.sleep(0.3)


def _label(server: RunningServer, image: str, index: int, cls: str) -> None:
    status, body = server.request("PUT", "/slicelabels/", {"image": image, "slice": index, "class": cls})
    assert status == 200, body


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory, trained_template: Callable[[int], Path]
                   ) -> Iterator[RunningServer]:
    with _serve(tmp_path_factory.mktemp("pipelines-default"), trained_template(3), {}) as server:
        yield server


@pytest.fixture(scope="module")
def paper_server(tmp_path_factory: pytest.TempPathFactory, trained_template: Callable[[int], Path]
                 ) -> Iterator[RunningServer]:
    conf = {"pipeline": "paper", "classifier": "logistic"}
    with _serve(tmp_path_factory.mktemp("pipelines-paper"), trained_template(3), conf) as server:
        yield server


def test_the_default_is_the_measured_best_and_every_pipeline_is_listed(default_server: RunningServer) -> None:
    info = default_server.get_json("/info/")
    pipelines = info["ss_stylegan"]["pipelines"]
    assert (pipelines["strategy"], pipelines["classifier"]) == ("typiclust", "nn_map")
    assert list(pipelines["strategies"]) == list(STRATEGIES) and list(pipelines["classifiers"]) == list(CLASSIFIERS)
    assert list(info["strategies"])[0] == "typiclust" and set(info["strategies"]) == set(STRATEGIES)
    state = _wait_for_w(default_server)
    assert state["state"] == "ready" and state["slices"] == info["ss_stylegan"]["n_slices"], state
    assert state["dimensions"] <= 32 and 0 < state["kept_variance"] <= 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_has_its_route_and_says_why(default_server: RunningServer, strategy: str) -> None:
    _wait_for_w(default_server)
    client = f"pipes-{strategy}"
    status, answer = default_server.request("POST", f"/activelearning/{strategy}", {"client_id": client, "count": 2})
    assert status == 200, answer
    assert [s["strategy"] for s in answer["suggestions"]] == [strategy, strategy]
    assert len({(s["id"], s["slice"]) for s in answer["suggestions"]}) == 2 and answer["reason"]
    other = default_server.request("POST", f"/activelearning/{strategy}", {"client_id": client + "-b", "count": 2})[1]
    mine = {(s["id"], s["slice"]) for s in answer["suggestions"]}
    assert not mine & {(s["id"], s["slice"]) for s in other["suggestions"]}   # reserved slices count as chosen
    for name in (client, client + "-b"):
        default_server.request("DELETE", f"/activelearning/pending?client_id={name}")


def test_answers_say_how_long_the_server_spent_on_them(default_server: RunningServer) -> None:
    """``Server-Timing`` (what ``benchmarks/bench_server.py`` reads to tell the server's time from the way to it):
    the app's time on every answer, errors too, and the handler's own time, within it, on a suggestion."""
    def timings(req: urllib.request.Request) -> dict[str, float]:
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                values = resp.headers.get_all("server-timing")
        except urllib.error.HTTPError as err:
            values = err.headers.get_all("server-timing")
        pairs = [item.strip().split(";dur=") for item in ",".join(values or []).split(",") if item.strip()]
        return {name: float(ms) for name, ms in pairs}

    headers = {"Content-Type": "application/json", **default_server.headers()}
    suggest = timings(urllib.request.Request(default_server.url + "/activelearning/random", method="POST",
                                             data=b'{"client_id": "timed"}', headers=headers))
    assert set(suggest) == {"app", "handler"} and 0 < suggest["handler"] <= suggest["app"], suggest
    refused = timings(urllib.request.Request(default_server.url + "/activelearning/nonsense", method="POST",
                                             data=b"{}", headers=headers))
    assert set(refused) == {"app"} and refused["app"] > 0, refused
    default_server.request("DELETE", "/activelearning/pending?client_id=timed")


def test_a_classification_names_its_classifier_and_label_state(default_server: RunningServer) -> None:
    _label(default_server, "study_00", 1, "normal")
    _label(default_server, "study_00", 6, "lesion")
    status, answer = default_server.request("POST", "/infer/classify?image=study_01", {})
    assert status == 200, answer
    assert answer["classifier"] == "nn_map" and answer["label_version"] >= 2
    points = default_server.get_json("/slicemap/")
    assert points["classifier"] == "nn_map" and points["label_version"] == answer["label_version"]


def test_the_papers_pipeline_is_one_setting_away_and_a_classifier_in_w_answers(paper_server: RunningServer) -> None:
    info = paper_server.get_json("/info/")
    assert info["ss_stylegan"]["pipelines"]["strategy"] == "fps" and list(info["strategies"])[0] == "fps"
    assert _wait_for_w(paper_server)["state"] == "ready"
    _label(paper_server, "study_00", 1, "normal")
    _label(paper_server, "study_00", 6, "lesion")
    status, first = paper_server.request("POST", "/infer/classify?image=study_01", {})
    assert status == 200, first
    assert first["classifier"] == "logistic" and "warning" not in first
    for s in first["slices"]:
        assert sum(s["scores"].values()) == pytest.approx(1.0)
        assert (s["neighbour"]["image"], s["neighbour"]["slice"]) in {("study_00", 1), ("study_00", 6)}
    points = paper_server.get_json("/slicemap/")
    assert points["classifier"] == "logistic" and all(p is not None for p in points["points"]["prediction"])
    # a new label is in the very next answer
    _label(paper_server, "study_01", 2, "lesion")
    status, second = paper_server.request("POST", "/infer/classify?image=study_01", {})
    assert second["label_version"] == first["label_version"] + 1
    assert any(s["neighbour"]["image"] == "study_01" for s in second["slices"])


def test_unknown_pipeline_settings_are_refused_with_what_is_allowed(tmp_path: Path) -> None:
    for conf, words in (({"pipeline": "fast"}, "--conf pipeline must be one of ['best', 'paper']"),
                        ({"strategy": "coreset"}, "--conf strategy must be one of"),
                        ({"classifier": "svm"}, "--conf classifier must be one of")):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            AppSettings.from_conf(conf, tmp_path)
    settings = AppSettings.from_conf({"pipeline": "paper", "strategy": "probcover"}, tmp_path)
    assert (settings.strategy, settings.classifier) == ("probcover", "nn_map")
