"""The browser client (``GET /ui/``) in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
against a real server over a copy of the trained datastore, and one with MONAI Label auth on.

What a labeller does is done with the mouse and the keyboard, and what the page did is checked through the
server's REST answers (``GET /slicelabels/``, a REST client's suggestion), not through the page's own state.
Screenshots go to ``test-artifacts/browser/`` (``SSGL_ARTIFACTS`` to change it). Without a browser the tests
skip, except under ``CI=true`` where they fail: CI installs chromium (``scripts/install_browser.sh``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import TINY_CONF, RunningServer, start_server
from token_issuer import TokenIssuer
from trained_datastore import copy_trained_datastore

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("SSGL_ARTIFACTS", REPO / "test-artifacts")) / "browser"
CLASSES = ("normal", "lesion")
USER, ANNOTATOR = "monailabel-user", "monailabel-annotator"


def _browser_or_reason() -> tuple[str | None, str]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None, "playwright is not installed (scripts/setup_env.sh --tests installs it)"
    path = os.environ.get("SSGL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        return None, "Debian's chromium is not installed (scripts/install_browser.sh installs it)"
    return path, ""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path, why = _browser_or_reason()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the browser tests must run in CI: {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, trained_template: Callable[[int], Path]) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("browser")
    copy_trained_datastore(trained_template(3), root / "studies")
    with start_server(root / "studies", TINY_CONF, log_path=root / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    with TokenIssuer(users={"ann": ("ann-pw", [USER, ANNOTATOR]), "rita": ("rita-pw", [USER])}) as iss:
        yield iss


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, trained_template: Callable[[int], Path],
                issuer: TokenIssuer) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("browser-auth")
    copy_trained_datastore(trained_template(3), root / "studies")
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": issuer.realm_uri}
    with start_server(root / "studies", TINY_CONF, log_path=root / "server.log", env=env,
                      token=issuer.token("tester", expires_in=7200)) as srv:
        for index, cls in ((0, "normal"), (1, "lesion")):   # a label of each class: classifying answers at once
            status, body = srv.request("PUT", "/slicelabels/", {"image": "study_02", "slice": index, "class": cls})
            assert status == 200, body
        yield srv


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(str(err)))
    yield pg
    shoot(pg, request.node.name)
    context.close()
    assert errors == [], errors  # no script error on the page


def shoot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if not pg.is_closed():
        pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def shown_slice(pg: Any) -> tuple[str, int]:
    img = pg.locator("#slice-image")
    return img.get_attribute("data-image"), int(img.get_attribute("data-slice"))


def wait_for_slice(pg: Any, different_from: tuple[str, int] | None = None, timeout_s: float = 20.0) -> tuple[str, int]:
    pg.wait_for_selector("#slice-image[data-slice]", timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    while True:
        now = shown_slice(pg)
        if now != different_from or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def labels_of(server: RunningServer) -> dict[tuple[str, int], str]:
    return {(r["image"], r["slice"]): r["class"] for r in server.get_json("/slicelabels/")["labels"]}


def test_the_page_has_one_button_per_class_and_loads_nothing_from_elsewhere(server: RunningServer, page: Any) -> None:
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    page.goto(server.url + "/ui/")
    page.wait_for_selector("#class-buttons button")
    names = [b.get_attribute("data-class") for b in page.locator("#class-buttons button").all()]
    assert names == list(CLASSES)
    wait_for_slice(page)
    image = page.locator("#slice-image")
    assert image.evaluate("img => img.naturalWidth") > 0
    foreign = [u for u in requested if not u.startswith((server.url, "blob:", "data:"))]
    assert foreign == [], foreign


def test_a_key_press_labels_the_suggested_slice_and_the_next_one_comes(server: RunningServer, page: Any) -> None:
    page.goto(server.url + "/ui/")
    first = wait_for_slice(page)
    page.keyboard.press("2")
    second = wait_for_slice(page, different_from=first)
    assert second != first
    assert labels_of(server).get(first) == "lesion"
    page.keyboard.press("u")  # undo: the label is gone and the slice is shown again
    deadline = time.monotonic() + 10
    while first in labels_of(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first not in labels_of(server)
    assert wait_for_slice(page, different_from=second) == first


def test_arrow_keys_scroll_the_study_and_a_neighbour_can_be_labelled(server: RunningServer, page: Any) -> None:
    page.goto(server.url + "/ui/")
    image, index = wait_for_slice(page)
    step = "ArrowDown" if index > 0 else "ArrowUp"
    page.keyboard.press(step)
    neighbour = wait_for_slice(page, different_from=(image, index))
    assert neighbour == (image, index - 1 if step == "ArrowDown" else index + 1)
    page.keyboard.press("1")
    deadline = time.monotonic() + 10
    while labels_of(server).get(neighbour) != "normal" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert labels_of(server).get(neighbour) == "normal"
    page.keyboard.press("Home")
    assert wait_for_slice(page, different_from=neighbour) == (image, index)
    page.keyboard.press("l")  # the lung window
    deadline = time.monotonic() + 10
    while "-1350:150" not in page.locator("#slice-caption").inner_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "-1350:150" in page.locator("#slice-caption").inner_text()


def test_a_click_on_a_map_point_opens_that_slice(server: RunningServer, page: Any) -> None:
    page.goto(server.url + "/ui/")
    wait_for_slice(page)
    page.click("nav button[data-view=map]")
    page.wait_for_selector("#map-canvas")
    deadline = time.monotonic() + 20
    while not page.evaluate("() => window.ssgl.map.loaded") and time.monotonic() < deadline:
        time.sleep(0.1)
    # the point farthest from the others' crowd: the last slice the map holds, wherever it is drawn
    target = page.evaluate("""() => {
        const m = window.ssgl.map; const i = m.n - 1; const [x, y] = m.toScreen(m.x[i], m.y[i]);
        return {x, y, image: m.image[i], slice: m.slice[i], nearest: m.nearest(x, y)}; }""")
    box = page.locator("#map-canvas").bounding_box()
    expected = page.evaluate("([i]) => [window.ssgl.map.image[i], window.ssgl.map.slice[i]]", [target["nearest"]])
    page.mouse.move(box["x"] + target["x"], box["y"] + target["y"])
    page.wait_for_selector("#map-tip:not([hidden])")
    page.mouse.click(box["x"] + target["x"], box["y"] + target["y"])
    page.wait_for_selector("#label-view:not([hidden])")
    deadline = time.monotonic() + 10
    while shown_slice(page) != tuple(expected) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shown_slice(page) == tuple(expected)
    assert "opened by you" in page.locator("#why-text").inner_text()


def test_a_study_is_classified_and_a_click_on_its_strip_opens_that_slice(server: RunningServer, page: Any) -> None:
    for index, cls in ((2, "lesion"), (3, "lesion"), (8, "normal")):
        status, body = server.request("PUT", "/slicelabels/", {"image": "study_01", "slice": index, "class": cls})
        assert status == 200, body
    page.goto(server.url + "/ui/")
    wait_for_slice(page)
    page.click("nav button[data-view=study]")
    page.wait_for_selector("#study-select option[value=study_01]", state="attached")
    page.select_option("#study-select", "study_01")
    page.click("#study-classify")
    page.wait_for_selector("#study-result:not([hidden])")
    status, answer = server.request("POST", "/infer/classify?image=study_01", {})
    assert status == 200, answer
    assert page.locator("#study-summary").inner_text() == answer["study_summary"]
    drawn = page.locator("#study-strip").get_attribute("data-runs")
    assert drawn == str([[f["class"], r["first_slice"], r["last_slice"]] for f in answer["findings"]
                         for r in f["runs"]]).replace("'", '"').replace(" ", "")
    strip = page.locator("#study-strip").bounding_box()
    n = answer["n_slices"]
    wanted = n - 2
    page.mouse.click(strip["x"] + (wanted + 0.5) * strip["width"] / n, strip["y"] + strip["height"] - 5)
    page.wait_for_selector("#label-view:not([hidden])")
    deadline = time.monotonic() + 10
    while shown_slice(page) != ("study_01", wanted) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shown_slice(page) == ("study_01", wanted)


def test_a_second_tab_gets_another_slice_and_closing_it_gives_its_slices_back(server: RunningServer,
                                                                               browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    try:
        first, second = context.new_page(), context.new_page()
        first.goto(server.url + "/ui/")
        one = wait_for_slice(first)
        time.sleep(0.5)  # the first tab's batch reserved
        second.goto(server.url + "/ui/")
        two = wait_for_slice(second)
        shoot(second, "second_tab")
        assert two != one
        second.close(run_before_unload=True)  # pagehide: the tab gives its reservations back
        time.sleep(0.5)
        strategy = server.get_json("/info/")["ss_stylegan"]["pipelines"]["strategy"]  # the page's default
        # the page asks for 3 at a time; TypiClust's clusters depend on how many are chosen and asked for
        status, answer = server.request("POST", f"/activelearning/{strategy}", {"client_id": "rest-client", "count": 3})
        assert status == 200, answer
        assert (answer["id"], answer["slice"]) == two  # free again: the strategy picks it as the tab did
        server.request("DELETE", "/activelearning/pending?client_id=rest-client")
    finally:
        context.close()


def test_log_in_shows_a_wrong_password_and_then_lets_the_annotator_label(auth_server: RunningServer,
                                                                           page: Any) -> None:
    page.goto(auth_server.url + "/ui/")
    page.wait_for_selector("#login-view:not([hidden])")
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", "not-her-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-message:has-text('Wrong user name or password')")
    shoot(page, "login_wrong_password")
    page.fill("input[name=password]", "ann-pw")
    page.keyboard.press("Enter")
    shown = wait_for_slice(page)
    assert page.locator("#class-buttons button:enabled").count() == len(CLASSES)
    page.keyboard.press("1")
    deadline = time.monotonic() + 10
    while labels_of(auth_server).get(shown) != "normal" and time.monotonic() < deadline:
        time.sleep(0.1)
    records = {(r["image"], r["slice"]): r for r in auth_server.get_json("/slicelabels/")["labels"]}
    assert records[shown]["class"] == "normal" and records[shown]["user"] == "ann"
    page.click("nav button[data-view=status]")
    page.wait_for_selector("#train-state:has-text('training')")
    assert not page.locator("#train-buttons").is_visible()  # an annotator, not a trainer


def test_a_user_without_the_annotator_role_cannot_label(auth_server: RunningServer, page: Any) -> None:
    before = labels_of(auth_server)
    page.goto(auth_server.url + "/ui/")
    page.wait_for_selector("#login-view:not([hidden])")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", "rita-pw")
    page.keyboard.press("Enter")
    page.wait_for_selector("#label-view:not([hidden])")
    page.wait_for_selector("#label-message:has-text('annotator role')")
    assert page.locator("#class-buttons button").count() == len(CLASSES)
    assert page.locator("#class-buttons button:enabled").count() == 0
    page.click("nav button[data-view=study]")  # she may read: open a slice from a study, then try to label it
    page.wait_for_selector("#study-select option[value=study_00]", state="attached")
    page.click("#study-classify")
    page.wait_for_selector("#study-result:not([hidden])")
    box = page.locator("#study-strip").bounding_box()
    page.mouse.click(box["x"] + 3, box["y"] + box["height"] - 5)
    wait_for_slice(page)
    assert page.locator("#class-buttons button:enabled").count() == 0
    page.keyboard.press("1")
    time.sleep(0.5)
    assert labels_of(auth_server) == before


def test_the_slice_image_routes_answer_and_refuse_bad_requests(server: RunningServer) -> None:
    import requests

    view = requests.get(server.url + "/slicemap/view?image=study_00&slice=3&window=-600:1500&size=64", timeout=30)
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    assert view.headers["X-Slice-Count"] == "12" and view.headers["X-Window"] == "-1350:150"
    thumb = requests.get(server.url + "/slicemap/thumbnail?image=study_00&slice=3", timeout=30)
    assert thumb.status_code == 200 and thumb.content[:8] == b"\x89PNG\r\n\x1a\n"
    for query, status, words in (("image=study_00&slice=3&window=lungs", 422, "window"),
                                 ("image=study_00&slice=3&size=5000", 422, "between 16 and 2048"),
                                 ("image=study_00&slice=12", 422, "slices 0..11"),
                                 ("image=study_00&slice=-1", 422, "slice"),
                                 ("image=..%2Fsecret&slice=0", 422, "image"),
                                 ("image=no_such&slice=0", 404, "not in the datastore")):
        answer = requests.get(f"{server.url}/slicemap/view?{query}", timeout=30)
        assert answer.status_code == status and words in answer.json()["detail"], (query, answer.text)


def test_an_uploaded_study_is_classified_and_the_labels_export_downloads(server: RunningServer, page: Any,
                                                                         tmp_path: Path) -> None:
    from ss_stylegan.data.synthetic import make_synthetic_datastore

    make_synthetic_datastore(tmp_path / "upload", n_studies=1, n_slices=10, size=32, random_state=7)
    (scan,) = sorted((tmp_path / "upload").glob("*.nii.gz"))
    status, body = server.request("PUT", "/slicelabels/", {"image": "study_02", "slice": 4, "class": "lesion"})
    assert status == 200, body
    page.goto(server.url + "/ui/")
    wait_for_slice(page)
    page.click("nav button[data-view=study]")
    page.set_input_files("#study-upload", str(scan))
    page.wait_for_selector("#study-message:has-text('uploaded, not stored')")
    assert page.locator("#study-strip").get_attribute("data-runs") is not None
    assert page.locator("#study-summary").inner_text().strip()
    assert "study_00_upload" not in server.get_json("/datastore/?output=all")["objects"]
    page.click("nav button[data-view=status]")
    with page.expect_download() as download:
        page.click("#export-labels")
    path = download.value.path()
    assert download.value.suggested_filename == "slice_labels.csv"
    text = Path(path).read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith("image") and "study_02,4,lesion" in text


def test_the_wheel_scrolls_and_the_status_view_offers_training_to_a_trainer(server: RunningServer, page: Any) -> None:
    page.goto(server.url + "/ui/")
    image, index = wait_for_slice(page)
    box = page.locator("#viewer").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    delta = 100 if index > 0 else -100  # down the rail (towards the feet) when there is a slice below
    page.mouse.wheel(0, delta)
    assert wait_for_slice(page, different_from=(image, index)) == (image, index - 1 if delta > 0 else index + 1)
    page.click("nav button[data-view=status]")
    page.wait_for_selector("#train-state:has-text('Not training')")
    assert page.locator("#train-buttons").is_visible()  # no login: every role
    assert page.locator("#train-start").is_enabled() and not page.locator("#train-stop").is_enabled()
    assert "Live map" in page.locator("#map-state").inner_text()
