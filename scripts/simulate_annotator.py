"""Play the clinician against a running server, with the sample datastore's sidecars as the answer key.

Walks the REST loop a user would: ask ``/activelearning/<strategy>`` for the next slice, label it with the
true class from the study's JSON sidecar (``PUT /slicelabels/``), repeat ``--labels`` times, then classify
every study (``POST /infer/classify``) and score the predictions of the slices nobody labelled.

Usage (server already trained on ``sample_datastore``)::

    .venv/bin/python scripts/simulate_annotator.py --studies sample_datastore --labels 10

Labels it gives are removed again at the end unless ``--keep`` is passed, so the datastore is left as found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests


def _call(method: str, url: str, **kwargs: object) -> dict:
    response = requests.request(method, url, timeout=120, **kwargs)
    if response.status_code >= 400:
        raise SystemExit(f"{method} {url} -> {response.status_code}: {response.text}")
    return response.json()


def _answer_key(studies: Path) -> dict[tuple[str, int], str]:
    key: dict[tuple[str, int], str] = {}
    for sidecar in sorted(studies.glob("*.json")):
        if sidecar.name == "datastore_v2.json":
            continue
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        for entry in meta.get("slices", []):
            key[(sidecar.stem, int(entry["slice"]))] = str(entry["class"])
    if not key:
        raise SystemExit(f"no per-slice sidecars (<image>.json with 'slices') in {studies}")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--studies", type=Path, default=Path("sample_datastore"))
    parser.add_argument("--labels", type=int, default=10, help="slices to label")
    parser.add_argument("--strategy", default="fps", choices=("fps", "random"))
    parser.add_argument("--keep", action="store_true", help="keep the labels given")
    args = parser.parse_args(argv)

    truth = _answer_key(args.studies)
    given: list[tuple[str, int]] = []
    for _ in range(args.labels):
        pick = _call("POST", f"{args.server}/activelearning/{args.strategy}", json={"client_id": "simulator"})
        if pick.get("done"):
            break
        image, index = pick["id"], int(pick["slice"])
        label = truth[(image, index)]
        _call("PUT", f"{args.server}/slicelabels/", json={"image": image, "slice": index, "class": label,
                                                          "user": "simulator"})
        given.append((image, index))
        distance = pick.get("distance")
        print(f"label {len(given):2d}: {image} slice {index:3d} = {label:8s} "
              f"(distance to nearest labelled: {'-' if distance is None else f'{distance:.2f}'})")

    images = sorted({image for image, _ in truth})
    correct = total = 0
    for image in images:
        result = _call("POST", f"{args.server}/infer/classify", params={"image": image, "output": "json"},
                       data={"params": "{}"})
        for row in result["slices"]:
            ref = (image, int(row["slice"]))
            if ref in given or ref not in truth:
                continue
            total += 1
            correct += row["class"] == truth[ref]
        print(f"{image}: summary {result['summary']}, volume class {result['volume_class']}")
    if not args.keep:
        for image, index in given:
            _call("DELETE", f"{args.server}/slicelabels/", params={"image": image, "slice": index})
    print(f"{args.strategy}: {len(given)} labels -> accuracy {correct / max(total, 1):.3f} "
          f"on {total} unlabelled slices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
