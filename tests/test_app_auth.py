"""Every route the app serves is behind MONAI Label's auth, against a real server and a real token issuer.

The server runs with ``MONAI_LABEL_AUTH_ENABLE=true`` and its realm at a Keycloak-compatible login server on
127.0.0.1 (:mod:`token_issuer`) that signs RS256 tokens. For each route (the app's own and MONAI Label's
inherited routes that the app serves guarded): no token is 401, a token without the route's role is 403,
and a token with only that role gets through (the route's normal answer). Tokens signed by another key or
expired are 401. The Slicer client logs in with a user name and password through MONAI Label's
``/auth/token``. A source check makes sure every route handler in ``monailabel_app`` takes the dependency.
"""

from __future__ import annotations

import ast
import gzip
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import requests
from server_harness import TINY_CONF, RunningServer, start_server
from token_issuer import ALL_ROLES, TokenIssuer, new_key
from trained_datastore import copy_trained_datastore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "slicer_module" / "SSStyleGANLabel"))
from SSStyleGANLabelLib import SSGLClient  # noqa: E402
from SSStyleGANLabelLib.errors import AuthenticationError  # noqa: E402

pytestmark = pytest.mark.server

ADMIN, REVIEWER, ANNOTATOR, USER = ALL_ROLES
TRAINER = "monailabel-trainer"
READ, ANNOTATE, TRAIN, DELETE = [USER], [ANNOTATOR], [ADMIN, TRAINER], [ADMIN]
CONF = {**TINY_CONF, "suggestion_cap": "4"}
APP_DIR = Path(__file__).resolve().parent.parent / "monailabel_app"


def _nifti() -> bytes:
    data = np.zeros((16, 16, 4), np.int16)
    data[4:12, 4:12] = 400
    return gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes())


# (method, path, JSON body or upload field, roles that may call it, the answer with such a role)
ROUTES: list[tuple[str, str, Any, list[str], int]] = [
    ("PUT", "/slicelabels/", {"image": "study_00", "slice": 1, "class": "normal"}, ANNOTATE, 200),
    ("DELETE", "/slicelabels/?image=study_00&slice=9", None, ANNOTATE, 404),
    ("GET", "/slicelabels/", None, READ, 200),
    ("GET", "/slicelabels/export.csv", None, READ, 200),
    ("GET", "/slicemap/", None, READ, 200),
    ("GET", "/slicemap/slice?image=study_00&slice=3", None, READ, 200),
    ("GET", "/slicemap/picture.png", None, READ, 200),
    ("GET", "/slicemap/view?image=study_00&slice=3&window=lung", None, READ, 200),
    ("GET", "/slicemap/thumbnail?image=study_00&slice=3", None, READ, 200),
    ("GET", "/slicemap/pictures/samples.png", None, READ, 200),
    ("GET", "/slicemap/series?image=study_00", None, READ, 404),  # a single-file study
    ("POST", "/infer/classify?image=no_such", {}, READ, 404),
    ("POST", "/infer/classify", "file", READ, 200),
    ("POST", "/activelearning/fps", {"client_id": "auth-test"}, ANNOTATE, 200),
    ("POST", "/activelearning/random", {"client_id": "auth-test"}, ANNOTATE, 200),
    ("DELETE", "/activelearning/pending?client_id=auth-test", None, ANNOTATE, 200),
    ("POST", "/train/ss_stylegan", {"batch_size": 0}, TRAIN, 422),
    ("GET", "/train/", None, READ, 200),
    ("DELETE", "/train/", None, TRAIN, 200),
    ("POST", "/train/", {"ss_stylegan": {"batch_size": 0}}, TRAIN, 422),
    ("POST", "/train/no_such", {}, TRAIN, 404),
    ("GET", "/datastore/", None, READ, 200),
    ("PUT", "/datastore/image?image=auth_upload", "file", ANNOTATE, 200),
    ("DELETE", "/datastore/image?id=no_such", None, DELETE, 404),
    ("HEAD", "/datastore/image?image=study_00", None, READ, 200),
    ("GET", "/datastore/image?image=study_00", None, READ, 200),
    ("GET", "/datastore/image/info?image=study_00", None, READ, 200),
    ("PUT", "/datastore/image/info?image=study_00", {"info": "{}"}, ANNOTATE, 200),
    ("PUT", "/datastore/label?image=study_00&tag=final", "label", ANNOTATE, 200),
    ("DELETE", "/datastore/label?id=study_00&tag=no_such", None, DELETE, 404),
    ("GET", "/datastore/label?label=study_00&tag=no_such", None, READ, 404),
    ("GET", "/datastore/label/info?label=study_00&tag=final", None, READ, 200),
    ("PUT", "/datastore/label/info?label=study_00&tag=no_such", {"info": "{}"}, ANNOTATE, 404),
    ("POST", "/infer/no_such", {}, READ, 404),
    ("POST", "/activelearning/no_such", {}, ANNOTATE, 404),
    ("POST", "/scoring/no_such", {}, ANNOTATE, 404),
    ("PUT", "/model/classify", None, ANNOTATE, 404),
    ("POST", "/batch/infer/classify", {"images": ["no_such"]}, TRAIN, 404),
    ("PUT", "/session/", None, READ, 406),
    ("POST", "/reload", None, DELETE, 406),
    ("GET", "/info/", None, READ, 200),  # MONAI Label's own route: works with a valid token again
]


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    users = {"ann": ("ann-pw", [USER, ANNOTATOR]), "rita": ("rita-pw", [USER])}
    with TokenIssuer(users=users) as iss:
        yield iss


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: TokenIssuer,
           trained_template: Callable[[int], Path]) -> RunningServer:
    root = tmp_path_factory.mktemp("auth")
    copy_trained_datastore(trained_template(3), root / "studies")
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": issuer.realm_uri}
    with start_server(root / "studies", CONF, log_path=root / "server.log", env=env) as srv:
        # One label of each class, so that classifying answers whichever test runs first (random order).
        token = issuer.token("seed", [ANNOTATOR])
        for slice_index, cls in enumerate(("normal", "lesion")):
            label = {"image": "study_02", "slice": slice_index, "class": cls}
            status, body = srv.request("PUT", "/slicelabels/", label, token=token)
            assert status == 200, body
        yield srv


def _call(server: RunningServer, method: str, path: str, body: Any, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body in ("file", "label"):
        return requests.request(method, server.url + path, headers=headers, timeout=60,
                                files={body: ("scan.nii.gz", _nifti())}, data={"params": "{}"})
    if isinstance(body, dict) and "info" in body:
        return requests.request(method, server.url + path, headers=headers, data=body, timeout=60)
    return requests.request(method, server.url + path, headers=headers, json=body, timeout=60)


@pytest.mark.parametrize(("method", "path", "body", "roles", "expected"), ROUTES,
                         ids=[f"{m} {p}" for m, p, *_ in ROUTES])
def test_route_needs_a_token_with_its_role(server: RunningServer, issuer: TokenIssuer, method: str, path: str,
                                           body: Any, roles: list[str], expected: int) -> None:
    assert _call(server, method, path, body, None).status_code == 401
    others = [r for r in (*ALL_ROLES, TRAINER) if r not in roles]
    wrong = _call(server, method, path, body, issuer.token("mallory", others))
    assert wrong.status_code == 403 and (method == "HEAD" or "is required" in wrong.text), wrong.text
    for role in roles:
        right = _call(server, method, path, body, issuer.token("carol", [role]))
        assert right.status_code == expected, (role, right.text[:300])


def test_forged_and_expired_tokens_are_refused(server: RunningServer, issuer: TokenIssuer) -> None:
    for token in (issuer.token("eve", ALL_ROLES, key=new_key()), issuer.token("eve", ALL_ROLES, expires_in=-60),
                  "not-a-token"):
        status, body = server.request("PUT", "/slicelabels/", {"image": "study_00", "slice": 2, "class": "lesion"},
                                      token=token)
        assert status == 401, body
    status, labels = server.request("GET", "/slicelabels/?image=study_00", token=issuer.token("rita", [USER]))
    assert status == 200 and all(r["slice"] != 2 for r in labels["labels"])  # nothing was stored


def test_labels_carry_the_signed_in_user_and_the_slicer_client_logs_in(server: RunningServer) -> None:
    client = SSGLClient(server.url, username="ann", password="ann-pw", timeout_s=60)
    record = client.put_label("study_01", 4, "lesion", user="someone-else")
    assert record.user == "ann"  # not the name the client claimed
    assert ("study_01", 4) in {label.key for label in client.labels()}
    assert len(client.suggest("fps", count=2, client_id="slicer")) == 2
    with pytest.raises(AuthenticationError):
        SSGLClient(server.url, username="ann", password="wrong", timeout_s=30).labels()
    reader = SSGLClient(server.url, username="rita", password="rita-pw", timeout_s=30)
    assert reader.labels() and reader.info().classes == ("normal", "lesion")
    with pytest.raises(AuthenticationError, match="403"):
        reader.put_label("study_01", 5, "normal", user="rita")


def test_the_suggestion_cap_counts_per_user_across_client_ids(server: RunningServer, issuer: TokenIssuer) -> None:
    token = issuer.token("dora", [ANNOTATOR])
    status, _ = server.request("POST", "/activelearning/fps", {"count": 3, "client_id": "tab-1"}, token=token)
    assert status == 200
    status, body = server.request("POST", "/activelearning/fps", {"count": 2, "client_id": "tab-2"}, token=token)
    assert status == 429 and "3 are reserved under its other client ids" in body["detail"], body
    status, _ = server.request("POST", "/activelearning/fps", {"count": 2, "client_id": "tab-1"}, token=token)
    assert status == 200  # the same client replaces its own reservations


def test_a_user_gives_back_only_their_own_suggestions(server: RunningServer, issuer: TokenIssuer) -> None:
    fay, eve = issuer.token("fay", [ANNOTATOR]), issuer.token("eve", [ANNOTATOR])
    status, body = server.request("POST", "/activelearning/fps", {"count": 3, "client_id": "shared-tab"}, token=fay)
    assert status == 200 and len(body["suggestions"]) == 3
    mine = {(s["id"], s["slice"]) for s in body["suggestions"]}
    status, body = server.request("DELETE", "/activelearning/pending?client_id=shared-tab", token=eve)
    assert status == 200 and body["released"] == []  # eve guessed the client id: fay's slices stay reserved
    status, body = server.request("DELETE", "/activelearning/pending?client_id=shared-tab", token=fay)
    assert status == 200 and {(r["image"], r["slice"]) for r in body["released"]} == mine


def _route_handlers(tree: ast.AST) -> list[ast.FunctionDef]:
    """Functions registered as routes: decorated with ``@router.<method>(...)``, passed to add_api_route by
    name, or returned by a factory whose call is passed to add_api_route (``_refusal(role, message)``)."""
    endpoints = [node.args[1] for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute) and node.func.attr == "add_api_route" and len(node.args) > 1]
    registered = {e.id for e in endpoints if isinstance(e, ast.Name)}
    factories = {e.func.id for e in endpoints if isinstance(e, ast.Call) and isinstance(e.func, ast.Name)}
    handlers = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        decorated = any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)
                        and d.func.attr in ("get", "put", "post", "delete", "head", "patch", "api_route")
                        for d in node.decorator_list)
        if decorated or node.name in registered:
            handlers.append(node)
        if node.name in factories:
            returned = {r.value.id for r in ast.walk(node)
                        if isinstance(r, ast.Return) and isinstance(r.value, ast.Name)}
            handlers += [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name in returned]
    return handlers


def _public_routes() -> set[str]:
    """``PUBLIC_ROUTES`` of ``lib/web.py``: the page's own files and the log-in, which need no token."""
    tree = ast.parse((APP_DIR / "lib" / "web.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PUBLIC_ROUTES":
            return set(ast.literal_eval(node.value))
    raise AssertionError("lib/web.py names no PUBLIC_ROUTES")


def test_every_route_handler_takes_the_auth_dependency() -> None:
    public = _public_routes()
    assert public == {"ui_root", "ui_page", "ui_asset", "log_in"}  # a new public route is a decision: list it here
    checked = []
    for path in sorted(APP_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in _route_handlers(tree):
            if fn.name in public:
                continue
            defaults = fn.args.defaults + [d for d in fn.args.kw_defaults if d is not None]
            has_auth = any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "Depends" and d.args
                           and isinstance(d.args[0], ast.Call) and getattr(d.args[0].func, "id", "") == "RBAC"
                           for d in defaults)
            assert has_auth, f"{path.relative_to(APP_DIR)}: route handler {fn.name} has no Depends(RBAC(...))"
            checked.append(fn.name)
    assert {"put_label", "suggest", "release_suggestions", "refuse", "add_image", "batch_infer",
            "no_reload"} <= set(checked), checked
    assert len(checked) >= 30, checked  # the app's routes and the guarded MONAI Label routes


def test_the_page_is_public_but_its_session_and_data_need_a_token(server: RunningServer, issuer: TokenIssuer) -> None:
    page = requests.get(server.url + "/ui/", timeout=30)
    assert page.status_code == 200 and "<title>SS-StyleGAN Label</title>" in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("app.js", "style.css"):
        assert requests.get(f"{server.url}/ui/{name}", timeout=30).status_code == 200
    for path in ("/ui/..%2Fmain.py", "/ui/main.py", "/ui/lib%2Fweb.py", "/ui/.hidden.js"):
        assert requests.get(server.url + path, timeout=30).status_code == 404, path
    assert _call(server, "GET", "/ui/session", None, None).status_code == 401
    assert _call(server, "GET", "/ui/session", None, issuer.token("tim", [TRAINER])).status_code == 403
    reader = _call(server, "GET", "/ui/session", None, issuer.token("rita", [USER])).json()
    assert reader["user"] == "rita" and reader["auth"] is True
    assert reader["may"] == {"read": True, "annotate": False, "train": False, "admin": False}
    annotator = _call(server, "GET", "/ui/session", None, issuer.token("ann", [USER, ANNOTATOR])).json()
    assert annotator["may"]["annotate"] is True and annotator["may"]["train"] is False


def test_a_wrong_password_is_a_401_that_says_so(server: RunningServer) -> None:
    wrong = requests.post(server.url + "/auth/token", data={"username": "ann", "password": "nope"}, timeout=30)
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong user name or password"
    right = requests.post(server.url + "/auth/token", data={"username": "ann", "password": "ann-pw"}, timeout=30)
    assert right.status_code == 200 and right.json()["access_token"]


def test_every_published_operation_asks_for_a_token(server: RunningServer) -> None:
    schema = server.get_json("/openapi.json")
    operations = [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]
    open_ops = [f"{m.upper()} {p}" for p, m, op in operations if not op.get("security") and not p.startswith("/auth")]
    assert len(operations) > 40 and open_ops == [], open_ops
