"""Probe a running SS-StyleGAN Label server as a hostile or careless user would; print each probe and the
number of defects found.

Run it only against a disposable server (a copy of a small studies folder): probes upload studies, store
labels and try to write outside the studies folder. Nothing here needs the server's code, only its URL.

Probes (each is one line of the report, ``ok`` or ``DEFECT`` with the evidence):

 1. the app's routes (and MONAI Label's ``POST /reload``) with auth on and no token must all answer 401
 2. ``PUT /datastore/image?image=../<name>`` must not write outside the studies folder
 3. ``PUT /datastore/image?image=<absolute path>`` must not write there
 4. ``PUT /datastore/label`` with a tag of ``../..`` must not write outside
 5. ``PUT /datastore/label?tag=slice_class`` must not replace the app's label file
 6. ``DELETE /datastore/label?tag=slice_class`` must not delete it
 7. NaN / Infinity in each field of a label body must get 422 naming the field
 8. NaN in a training body must get 422
 9. ``"slice": true`` must be refused, not stored as 1
10. a 1 MB ``user`` and a NUL in it must be refused
11. ``GET /slicelabels/export.csv`` must not start a cell with = + - @
12. an upload whose header names another file (MetaImage ``ElementDataFile``, NRRD ``data file``, ``.nhdr``)
    must be refused
13. batch inference must refuse a path outside the studies folder
14. a NUL byte, a 300-character id, an unknown strategy or model must get a 4xx, not a 500
15. an upload whose header declares 1024^3 voxels must be refused (with the default limits)
16. one client must not be able to reserve 1000 suggestions
17. no answer may show a server path

Usage::

    python scripts/probe_security.py --url http://127.0.0.1:8000 [--token TOKEN] [--studies /path/to/studies]
        [--auth-url http://127.0.0.1:8001]

``--token``: a bearer token with every role, for a server with auth on (see ``tests/token_issuer.py``).
``--auth-url``: a server with auth on, for probe 1 (default: ``--url``). MONAI Label 0.8.5 on its own refuses
every token (it calls PyJWT 2 without ``algorithms``), so an unpatched server with auth on cannot be probed
past its login: probe it with auth off (``--url``) plus a second server with auth on (``--auth-url``).
``--studies``: the server's studies folder, when it is on this machine: probes 2-4 then also look for files
written outside it. Exit status: 0 when no defect was found and every probe ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import struct
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests

APP_ROUTES = (
    ("GET", "/slicelabels/", None), ("GET", "/slicelabels/export.csv", None),
    ("PUT", "/slicelabels/", {"image": "x", "slice": 0, "class": "normal"}),
    ("DELETE", "/slicelabels/?image=x&slice=0", None), ("GET", "/slicemap/", None),
    ("GET", "/slicemap/slice?image=x&slice=0", None), ("GET", "/slicemap/series?image=x", None),
    ("POST", "/activelearning/fps", {}), ("POST", "/activelearning/random", {}),
    ("POST", "/infer/classify?image=x", {}), ("GET", "/train/", None),
    ("POST", "/train/ss_stylegan", {"batch_size": 0}),  # would fail at once if it ever started
    ("POST", "/reload", None),  # MONAI Label's own, served without any login: it re-creates the app
)
PATH_RE = re.compile(r"(?<![\w.])/(?:tmp|home|work|root|usr|var|opt|srv|mnt|data)/[^\s'\"]+")


def small_nifti(n_slices: int = 4, size: int = 16) -> bytes:
    """A valid little NIfTI-1 study (gzip), built without any imaging library."""
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(size, size, n_slices)) * 300).astype(np.int16)
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, size, size, n_slices, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 4, 16)  # int16
    struct.pack_into("<8f", header, 76, 1, 1, 1, 2.5, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)  # scl_slope
    struct.pack_into("<h", header, 254, 1)  # sform_code
    for row, values in enumerate(((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 2.5, 0))):
        struct.pack_into("<4f", header, 280 + 16 * row, *values)
    header[344:348] = b"n+1\0"
    return gzip.compress(bytes(header) + data.tobytes(order="F"))


def nifti_declaring(shape: tuple[int, int, int]) -> bytes:
    """A gzip NIfTI header that declares ``shape`` int16 voxels but carries almost none of them."""
    header = bytearray(gzip.decompress(small_nifti())[:352])
    struct.pack_into("<8h", header, 40, 3, *shape, 1, 1, 1, 1)
    return gzip.compress(bytes(header) + b"\0" * 4096)


def escaped(resp: requests.Response, written: list[Path]) -> tuple[bool, str]:
    """A path-escape probe's verdict: the server accepted the request, or a file appeared outside."""
    return resp.ok or bool(written), f"{resp.status_code} {resp.text[:120]}" + (f"; wrote {written}" if written else "")


class Prober:
    def __init__(self, url: str, token: str | None, studies: Path | None, auth_url: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.auth_url = (auth_url or url).rstrip("/")
        self.token = token
        self.studies = studies.resolve() if studies else None
        self._image: str | None = None
        self.results: list[tuple[str, bool, str]] = []
        self.tag = uuid.uuid4().hex[:8]
        self.answers: list[str] = []  # every answer body, for the server-path probe

    # -- HTTP ------------------------------------------------------------------------------------------------
    def call(self, method: str, path: str, token: str | None = "default", base: str | None = None,
             **kwargs: Any) -> requests.Response:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = requests.request(method, (base or self.url) + path, headers=headers, timeout=120, **kwargs)
        self.answers.append(resp.text[:20000])
        return resp

    def _json(self, method: str, path: str, raw: str, token: str | None = "default") -> requests.Response:
        token = self.token if token == "default" else token
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        resp = requests.request(method, self.url + path, data=raw.encode(), headers=headers, timeout=120)
        self.answers.append(resp.text[:20000])
        return resp

    def record(self, name: str, outcome: bool | None, evidence: str) -> None:
        """``outcome``: True a defect, False none, None the probe could not run."""
        self.results.append((name, outcome, evidence))
        word = {True: "DEFECT", False: "ok", None: "NOTRUN"}[outcome]
        print(f"{word:6s}  {name}: {evidence}", flush=True)

    def probe(self, name: str, check: Callable[[], tuple[bool | None, str]]) -> None:
        try:
            outcome, evidence = check()
        except requests.RequestException as err:
            outcome, evidence = True, f"the server did not answer properly: {err}"
        except (RuntimeError, ValueError) as err:
            outcome, evidence = None, f"could not run: {err}"
        self.record(name, outcome, evidence)

    # -- set-up ------------------------------------------------------------------------------------------------
    def upload(self, image: str | None, content: bytes, filename: str, path: str = "/datastore/image",
               extra: dict[str, str] | None = None) -> requests.Response:
        query = {**({"image": image} if image is not None else {}), **(extra or {})}
        field = "label" if path == "/datastore/label" else "file"
        return self.call("PUT", path, params=query, files={field: (filename, content)}, data={"params": "{}"})

    def some_image(self) -> str:
        """A study of the datastore to label: one the probe uploads, else a plain id already there."""
        if self._image is None:
            image = f"probe_study_{self.tag}"
            if self.upload(image, small_nifti(), f"{image}.nii.gz").ok:
                self._image = image
            else:
                resp = self.call("GET", "/datastore/?output=all")
                objects = resp.json().get("objects", {}) if resp.ok else {}
                plain = [i for i in sorted(objects) if re.fullmatch(r"\w[\w.-]*", i)]
                if not plain:
                    raise RuntimeError("no study to label: the datastore is empty and the upload was refused")
                self._image = plain[0]
        return self._image

    def labelled_image(self) -> tuple[str, int]:
        image = self.some_image()
        resp = self._json("PUT", "/slicelabels/", json.dumps({"image": image, "slice": 0, "class": self.classes[0]}))
        if not resp.ok:
            raise RuntimeError(f"could not store a label to probe with: {resp.status_code} {resp.text[:200]}")
        return image, 0

    def label_exists(self, image: str, slice_index: int) -> bool:
        resp = self.call("GET", "/slicelabels/", params={"image": image})
        return resp.ok and any(r.get("slice") == slice_index for r in resp.json().get("labels", []))

    def outside(self, name: str) -> list[Path]:
        """Files named ``name*`` next to (above) the studies folder."""
        if self.studies is None:
            return []
        return [p for base in (self.studies.parent, self.studies.parent.parent) for p in base.glob(f"{name}*")]

    # -- the probes --------------------------------------------------------------------------------------------
    def run(self) -> int:
        info = self.call("GET", "/info/", token=None)
        if info.status_code == 401:
            if not self.token:
                sys.exit("the server asks for a login: give --token (a token with every role)")
            info = self.call("GET", "/info/")
            if info.status_code == 401:
                sys.exit("the server refuses the token (MONAI Label 0.8.5 alone refuses every token): probe it with "
                         "auth off, and give a second server with auth on as --auth-url")
        self.classes = info.json().get("labels") or ["normal", "lesion"]
        auth_on = self.call("GET", "/info/", token=None, base=self.auth_url).status_code == 401

        self.probe("1 app routes without a token (auth on)", lambda: self.no_token(auth_on))
        self.probe("2 PUT /datastore/image?image=../name", self.image_dotdot)
        self.probe("3 PUT /datastore/image?image=<absolute path>", self.image_absolute)
        self.probe("4 PUT /datastore/label with tag ../..", self.label_tag_escape)
        self.probe("5 PUT /datastore/label?tag=slice_class", self.label_tamper_put)
        self.probe("6 DELETE /datastore/label?tag=slice_class", self.label_tamper_delete)
        self.probe("7 NaN / Infinity in label fields", self.nan_label)
        self.probe("9 \"slice\": true", self.bool_slice)
        self.probe("10 1 MB user / NUL in user", self.long_user)
        self.probe("11 CSV export formulas", self.csv_formula)
        self.probe("12 uploads that name other files", self.detached_uploads)
        self.probe("13 batch infer on a path outside the studies folder", self.batch_outside)
        self.probe("14 NUL byte, 300-character id, unknown strategy / model", self.odd_names)
        self.probe("15 upload declaring 1024^3 voxels", self.voxel_bomb)
        self.probe("16 one client reserving 1000 suggestions", self.reserve_all)
        self.probe("17 server paths in answers", self.server_paths)
        self.probe("8 NaN in a training body", self.nan_train)  # last: an unguarded server starts a training
        defects = sum(1 for _, d, _ in self.results if d)
        not_run = sum(1 for _, d, _ in self.results if d is None)
        print(f"\n{defects} defect(s) in {len(self.results)} probes against {self.url}"
              + (f" (auth: {self.auth_url})" if self.auth_url != self.url else "")
              + (f"; {not_run} probe(s) could not run" if not_run else ""))
        return defects + not_run

    def no_token(self, auth_on: bool) -> tuple[bool | None, str]:
        if not auth_on:
            return None, "auth is off on this server: give a server with MONAI_LABEL_AUTH_ENABLE=true as --auth-url"
        open_routes = []
        for method, path, body in APP_ROUTES:
            resp = self.call(method, path, token=None, base=self.auth_url, json=body) if body is not None else \
                self.call(method, path, token=None, base=self.auth_url)
            if resp.status_code != 401:
                open_routes.append(f"{method} {path} -> {resp.status_code}")
        return bool(open_routes), "; ".join(open_routes) or f"all {len(APP_ROUTES)} answered 401"

    def image_dotdot(self) -> tuple[bool, str]:
        name = f"probe_escape_{self.tag}"
        resp = self.upload(f"../{name}", small_nifti(), "x.nii.gz")
        written = self.outside(name)
        return escaped(resp, written)

    def image_absolute(self) -> tuple[bool, str]:
        target = Path(tempfile.gettempdir()) / f"probe_abs_{self.tag}"
        resp = self.upload(str(target), small_nifti(), "x.nii.gz")
        written = list(target.parent.glob(f"{target.name}*"))
        return escaped(resp, written)

    def label_tag_escape(self) -> tuple[bool, str]:
        image = self.some_image()
        name = f"probe_tag_{self.tag}"
        resp = self.upload(image, small_nifti(), f"{image}.nii.gz", path="/datastore/label",
                           extra={"tag": f"../../{name}"})
        written = self.outside(name)
        return escaped(resp, written)

    def label_tamper_put(self) -> tuple[bool, str]:
        image, slice_index = self.labelled_image()
        resp = self.upload(image, b"[]", f"{image}.json", path="/datastore/label", extra={"tag": "slice_class"})
        kept = self.label_exists(image, slice_index)
        return resp.ok or not kept, f"{resp.status_code} {resp.text[:120]}; label still there: {kept}"

    def label_tamper_delete(self) -> tuple[bool, str]:
        image, slice_index = self.labelled_image()
        self.upload(image, b"[]", f"{image}.json", path="/datastore/label", extra={"tag": "slice_class"})
        self.labelled_image()
        resp = self.call("DELETE", "/datastore/label", params={"id": image, "tag": "slice_class"})
        kept = self.label_exists(image, slice_index)
        return resp.ok or not kept, f"{resp.status_code} {resp.text[:120]}; label still there: {kept}"

    def nan_label(self) -> tuple[bool, str]:
        image = self.some_image()
        bodies = {
            "slice": f'{{"image": "{image}", "slice": NaN, "class": "{self.classes[0]}"}}',
            "user": f'{{"image": "{image}", "slice": 0, "class": "{self.classes[0]}", "user": NaN}}',
            "class": f'{{"image": "{image}", "slice": 0, "class": Infinity}}',
            "image": f'{{"image": -Infinity, "slice": 0, "class": "{self.classes[0]}"}}',
        }
        bad = []
        for field, raw in bodies.items():
            resp = self._json("PUT", "/slicelabels/", raw)
            if resp.status_code != 422 or field not in resp.text:
                bad.append(f"{field} -> {resp.status_code} {resp.text[:80]}")
        return bool(bad), "; ".join(bad) or "422 naming the field, for slice, user, class and image"

    def nan_train(self) -> tuple[bool, str]:
        resp = self._json("POST", "/train/ss_stylegan", '{"kimg": NaN}')
        return resp.status_code != 422, f"{resp.status_code} {resp.text[:120]}"

    def bool_slice(self) -> tuple[bool, str]:
        image = self.some_image()
        resp = self._json("PUT", "/slicelabels/", json.dumps({"image": image, "slice": True, "class": self.classes[0]}))
        return resp.ok, f"{resp.status_code} {resp.text[:120]}"

    def long_user(self) -> tuple[bool, str]:
        image = self.some_image()
        bad = []
        for what, user in (("1 MB user", "u" * (1 << 20)), ("NUL in user", "a\u0000b")):
            resp = self._json("PUT", "/slicelabels/",
                              json.dumps({"image": image, "slice": 0, "class": self.classes[0], "user": user}))
            if resp.status_code != 422:
                bad.append(f"{what} -> {resp.status_code}")
        return bool(bad), "; ".join(bad) or "both answered 422"

    def csv_formula(self) -> tuple[bool, str]:
        image = f"=HYPERLINK(probe_{self.tag})"
        up = self.upload(image, small_nifti(), "x.nii.gz")
        if up.ok:
            self._json("PUT", "/slicelabels/", json.dumps({"image": image, "slice": 0, "class": self.classes[0]}))
        base = self.some_image()
        self._json("PUT", "/slicelabels/", json.dumps({"image": base, "slice": 0, "class": self.classes[0],
                                                       "user": "=HYPERLINK(\"http://example.org\")"}))
        resp = self.call("GET", "/slicelabels/export.csv")
        cells = [c for row in csv.reader(io.StringIO(resp.text)) for c in row]
        formulas = [c for c in cells if c[:1] in ("=", "+", "-", "@")]
        return bool(formulas), f"cells starting a formula: {formulas[:3]}" if formulas else \
            f"{len(cells)} cells, none starts with = + - @"

    def detached_uploads(self) -> tuple[bool, str]:
        target = Path(tempfile.gettempdir()) / f"probe_data_{self.tag}.raw"
        target.write_bytes(np.zeros((8, 8, 2), np.int16).tobytes())
        mha = (f"ObjectType = Image\nNDims = 3\nDimSize = 8 8 2\nElementType = MET_SHORT\n"
               f"ElementDataFile = {target}\n").encode()
        nrrd = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 2\nencoding: raw\ndata file: {target}\n\n").encode()
        accepted = []
        for filename, content in ((f"probe_mha_{self.tag}.mha", mha), (f"probe_nrrd_{self.tag}.nrrd", nrrd),
                                  (f"probe_nhdr_{self.tag}.nhdr", nrrd)):
            resp = self.upload(None, content, filename)
            if resp.ok:
                accepted.append(f"{filename} -> {resp.status_code}")
        target.unlink(missing_ok=True)
        return bool(accepted), "; ".join(accepted) or "all three refused"

    def batch_outside(self) -> tuple[bool, str]:
        target = Path(tempfile.gettempdir()) / f"probe_outside_{self.tag}.nii.gz"
        target.write_bytes(small_nifti())
        resp = self._json("POST", "/batch/infer/classify", json.dumps({"images": [str(target)]}))
        target.unlink(missing_ok=True)
        return resp.ok, f"{resp.status_code} {resp.text[:120]}"

    def odd_names(self) -> tuple[bool, str]:
        checks = [
            ("GET", "/datastore/image?image=%00"),
            ("GET", "/datastore/image/info?image=" + "a" * 300),
            ("POST", "/activelearning/no_such_strategy"),
            ("POST", "/infer/no_such_model"),
        ]
        bad = []
        for method, path in checks:
            resp = self._json(method, path, "{}") if method == "POST" else self.call(method, path)
            if resp.status_code >= 500:
                bad.append(f"{method} {path[:40]} -> {resp.status_code}")
        up = self.upload("b" * 300, small_nifti(), "x.nii.gz")
        if up.status_code >= 500:
            bad.append(f"PUT /datastore/image?image=<300 chars> -> {up.status_code}")
        return bool(bad), "; ".join(bad) or "every one answered 4xx"

    def voxel_bomb(self) -> tuple[bool, str]:
        resp = self.upload(f"probe_bomb_{self.tag}", nifti_declaring((1024, 1024, 1024)), "bomb.nii.gz")
        return resp.ok, f"{resp.status_code} {resp.text[:120]}"

    def reserve_all(self) -> tuple[bool, str]:
        resp = self._json("POST", "/activelearning/fps", json.dumps({"count": 1000, "client_id": f"hog_{self.tag}"}))
        accepted = resp.status_code not in (422, 429)
        verdict = "count 1000 was accepted (no cap; before training the answer is 409, after it every slice)" \
            if accepted else "refused"
        return accepted, f"{verdict}: {resp.status_code} {resp.text[:120]}"

    def server_paths(self) -> tuple[bool, str]:
        self.call("POST", "/infer/classify", files={"file": ("junk.nii.gz", b"not an image")}, data={"params": "{}"})
        self.call("GET", f"/datastore/image/info?image={self.some_image()}")
        self.call("GET", "/info/")
        found = sorted({m for text in self.answers for m in PATH_RE.findall(text)})
        if self.studies is not None:
            found += [str(self.studies)] if any(str(self.studies) in t for t in self.answers) else []
        return bool(found), f"paths seen: {found[:4]}" if found else f"none in {len(self.answers)} answers"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", help="bearer token with every role (server with auth on)")
    parser.add_argument("--studies", type=Path, help="the server's studies folder, when on this machine")
    parser.add_argument("--auth-url", help="a server with auth on, for probe 1 (default: --url)")
    args = parser.parse_args(argv)
    problems = Prober(args.url, args.token, args.studies, args.auth_url).run()
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
