"""Latency of ``POST /activelearning/fps`` and ``POST /infer/classify`` on a large slice map, and start-up time.

The server runs for real (subprocess on 127.0.0.1, like the tests), but the trained state is synthetic:
this script writes a workspace directly, with random W vectors and a random 2-D map (Gaussian blobs) of
``--slices`` slices spread over studies of 300 slices each, and one placeholder ``.nii.gz`` file per study
so the MONAI Label datastore holds the image ids (suggestions and classification only read the map, so
the files are never opened). Then it labels ``--labels`` slices over HTTP (8 writers) and times:

- the first ``fps`` and ``classify`` requests after start-up (they build the map's suggestion and label
  indexes, which later requests keep);
- ``fps`` with one client (sequential calls) and with 16 concurrent clients sending back to back
  (``count`` 1, own client ids, so each request replaces that client's reservation: every request changes
  the FPS centres): a saturation test, every request queues behind the others;
- ``fps`` with 16 annotators at work: each labels the slice it was given and takes a random 0-2 s
  (``--think``) before asking for the next, so labels and reservations change as they would in use;
- ``classify`` of one 300-slice study with one client and 16 concurrent clients;
- server start-up (process start until ``/info/`` answers) over that datastore.

Usage::

    .venv/bin/python benchmarks/bench_server.py --slices 10000 100000 1000000

Prints medians and 95th percentiles in milliseconds (client side: HTTP included). Speed is measured here,
never asserted in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_harness import RunningServer, start_server  # noqa: E402

from ss_stylegan.data.fingerprint import FingerprintCache  # noqa: E402
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.workspace import TrainingStatus, Workspace

SLICES_PER_STUDY = 300
W_DIM = 32


def write_synthetic_workspace(studies: Path, n_slices: int, random_state: int = 0) -> None:
    """Placeholder study files + a workspace holding a random slice map of ``n_slices`` slices.

    The map records each study's fingerprint, as a training does. Without them the server's first sweep
    (a second after start-up) adopts the fingerprints of every study and publishes the map again as a new
    version: at a million slices that writes the map (seconds) and makes the next request rebuild the
    suggestion index (about 2 s), in the middle of the measurements that follow.
    """
    rng = np.random.default_rng(random_state)
    n_studies = -(-n_slices // SLICES_PER_STUDY)   # the last study may be shorter
    studies.mkdir(parents=True)
    ids = [f"img_{i:05d}" for i in range(n_studies)]
    fingerprints = FingerprintCache()
    recorded = {}
    for image_id in ids:
        path = studies / f"{image_id}.nii.gz"
        path.write_bytes(b"")
        recorded[image_id] = fingerprints.fingerprint(path).to_dict()
    image_ids = np.repeat(np.asarray(ids), SLICES_PER_STUDY)[:n_slices]
    slices = np.tile(np.arange(SLICES_PER_STUDY), n_studies)[:n_slices]
    depths = {i: SLICES_PER_STUDY for i in ids}
    depths[ids[-1]] = n_slices - (n_studies - 1) * SLICES_PER_STUDY
    centres = rng.normal(scale=30.0, size=(20, 2))
    xy = centres[rng.integers(0, 20, n_slices)] + rng.normal(size=(n_slices, 2))
    positions = np.stack([np.zeros(n_slices), np.zeros(n_slices), slices * 2.5], axis=1)
    ws = Workspace(studies / ".ss_stylegan")
    slice_map = SliceMap(image_ids=image_ids, slices=slices, positions=positions,
                         w=rng.normal(size=(n_slices, W_DIM)).astype(np.float32), xy=xy.astype(np.float32),
                         model_version="bench", depths=depths, fingerprints=recorded)
    with ws.new_version(slice_map.model_version) as version:  # a published version without a model
        ws.save_map(slice_map, version)
        ws.activate(version)
    ws.write_status(TrainingStatus(state="ready", message="synthetic benchmark workspace"))


def timed(server: RunningServer, method: str, path: str, body: dict) -> float:
    t0 = time.perf_counter()
    status, answer = server.request(method, path, body)
    elapsed = (time.perf_counter() - t0) * 1000.0
    if status != 200:
        raise RuntimeError(f"{method} {path} -> {status}: {answer}")
    return elapsed


def measure(server: RunningServer, method: str, path: str, make_body, n_calls: int, clients: int) -> list[float]:
    if clients == 1:
        return [timed(server, method, path, make_body(0, i)) for i in range(n_calls)]
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(timed, server, method, path, make_body(c, i))
                   for i in range(n_calls // clients) for c in range(clients)]
        return [f.result() for f in futures]


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):8.1f} ms   p95 {p95:8.1f} ms   (n={len(ms)})"


def label_slices(server: RunningServer, n_slices: int, n_labels: int) -> None:
    """``n_labels`` slices spread over the map, half of them of each class, written by 8 concurrent clients."""
    rng = np.random.default_rng(1)
    rows = rng.choice(n_slices, n_labels, replace=False)

    def put(k: int) -> None:
        row = int(rows[k])
        status, body = server.request("PUT", "/slicelabels/", {
            "image": f"img_{row // SLICES_PER_STUDY:05d}", "slice": row % SLICES_PER_STUDY,
            "class": "normal" if k % 2 else "lesion", "user": "bench"})
        assert status == 200, body

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, range(n_labels)))


def annotators(server: RunningServer, rounds: int, think_s: float) -> list[float]:
    """16 annotators at work: each asks for a suggestion, labels it, looks at the next slice for a random 0 to
    ``2 * think_s`` seconds, and asks again (staggered starts); the latencies of the ``fps`` requests."""
    latencies: list[float] = []

    def annotator(c: int) -> None:
        rng = np.random.default_rng(100 + c)
        time.sleep(rng.uniform(0, 2 * think_s))
        for _ in range(rounds):
            t0 = time.perf_counter()
            status, body = server.request("POST", "/activelearning/fps", {"count": 1, "client_id": f"annotator{c}"})
            latencies.append((time.perf_counter() - t0) * 1000.0)
            assert status == 200, body
            if body.get("id") is not None:
                status, answer = server.request("PUT", "/slicelabels/", {
                    "image": body["id"], "slice": body["slice"], "class": "lesion" if rng.random() < 0.5 else "normal",
                    "user": f"annotator{c}"})
                assert status == 200, answer
            time.sleep(rng.uniform(0, 2 * think_s))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(annotator, range(16)))
    return latencies


def run(n_slices: int, n_calls: int, n_labels: int, rounds: int, think_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
        studies = Path(tmp) / "studies"
        t0 = time.perf_counter()
        write_synthetic_workspace(studies, n_slices)
        print(f"\n== {n_slices} embedded slices ({-(-n_slices // SLICES_PER_STUDY)} studies); "
              f"workspace written in {time.perf_counter() - t0:.1f} s")
        with start_server(studies, {"device": "cpu"}, log_path=Path(tmp) / "server.log") as server:
            print(f"start-up (process start -> /info/ answers): {server.startup_s:.1f} s")
            t0 = time.perf_counter()
            label_slices(server, n_slices, n_labels)
            print(f"{n_labels} slices labelled over HTTP in {time.perf_counter() - t0:.1f} s")
            print(f"first fps (builds the suggestion index): "
                  f"{timed(server, 'POST', '/activelearning/fps', {'client_id': 'warmup'}):.0f} ms; first classify "
                  f"(builds the label index): {timed(server, 'POST', '/infer/classify?image=img_00001', {}):.0f} ms")

            fps = lambda c, i: {"count": 1, "client_id": f"client{c}"}  # noqa: E731
            cls = lambda c, i: {}  # noqa: E731
            print("fps       1 client   " + summary(measure(server, "POST", "/activelearning/fps", fps, n_calls, 1)))
            print("fps      16 clients back to back  "
                  + summary(measure(server, "POST", "/activelearning/fps", fps, n_calls, 16)))
            print(f"fps      16 annotators (label each suggestion, then 0-{2 * think_s:g} s before the next)  "
                  + summary(annotators(server, rounds, think_s)))
            path = "/infer/classify?image=img_00001"
            print(f"classify ({SLICES_PER_STUDY} slices)  1 client   " + summary(measure(server, "POST", path, cls,
                                                                                        n_calls, 1)))
            print(f"classify ({SLICES_PER_STUDY} slices) 16 clients back to back  "
                  + summary(measure(server, "POST", path, cls, n_calls, 16)))
            print("info      1 client   " + summary(measure(server, "GET", "/info/", cls, 20, 1)))
            server.stop()
            server.start()
            print(f"restart start-up with the map on disk: {server.startup_s:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--calls", type=int, default=64, help="requests per measurement (multiple of 16)")
    parser.add_argument("--labels", type=int, default=100, help="slices labelled before the measurements")
    parser.add_argument("--rounds", type=int, default=8, help="suggestions each of the 16 annotators asks for")
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds an annotator takes per slice")
    args = parser.parse_args()
    for n in args.slices:
        run(n, args.calls, args.labels, args.rounds, args.think)


if __name__ == "__main__":
    main()
