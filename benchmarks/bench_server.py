"""Latency of every strategy (``POST /activelearning/<strategy>``) and every classifier (``POST /infer/classify``) on
a large slice map, the state in W they need, and start-up time.

The server runs for real (subprocess on 127.0.0.1, like the tests), but the trained state is synthetic:
this script writes a workspace directly, with a random 2-D map (Gaussian blobs) of ``--slices`` slices spread over
studies of 300 slices each, W with the same blobs (``--w-dim`` dimensions, the CPU recipe's 128 by default), and
one placeholder ``.nii.gz`` file per study so the MONAI Label datastore holds the image ids (suggestions and
classification only read the map, so the files are never opened). Then, on a first server (the first classifier):

- start-up, and the time until the state in W (feature space, TypiClust's clusterings, ProbCover's balls, FPS in W)
  is built in the background, with the server's memory before and after;
- ``--labels`` slices labelled over HTTP (8 writers);
- for each strategy: its first request, one client (sequential calls), 16 clients back to back (a saturation test:
  every request queues behind the others), and 16 annotators at work (each labels the slice it was given and takes
  a random 0-2 s, ``--think``, before asking for the next);

and for each classifier, on a server of its own (``--conf classifier``): ``classify`` of one 300-slice study with
one client and 16 clients back to back, the time from sending a label to holding a classification that reflects it,
and ``GET /slicemap/`` (every slice's prediction).

Usage::

    .venv/bin/python benchmarks/bench_server.py --slices 10000 100000 1000000

Prints medians, 95th and 99th percentiles and maxima in milliseconds (client side: HTTP included). Speed is measured
here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_harness import RunningServer, start_server  # noqa: E402

from ss_stylegan.data.fingerprint import FingerprintCache  # noqa: E402
from ss_stylegan.labelling.methods import CLASSIFIERS, STRATEGIES  # noqa: E402
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.workspace import TrainingStatus, Workspace

SLICES_PER_STUDY = 300
W_DIM = 128


def write_synthetic_workspace(studies: Path, n_slices: int, random_state: int = 0, w_dim: int = W_DIM) -> None:
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
                         w=w_of(centres, xy, w_dim, rng), xy=xy.astype(np.float32),
                         model_version="bench", depths=depths, fingerprints=recorded)
    with ws.new_version(slice_map.model_version) as version:  # a published version without a model
        ws.save_map(slice_map, version)
        ws.activate(version)
    ws.write_status(TrainingStatus(state="ready", message="synthetic benchmark workspace"))


def w_of(centres: np.ndarray, xy: np.ndarray, w_dim: int, rng: np.random.Generator) -> np.ndarray:
    """W with the map's cluster structure (each blob of the map a Gaussian blob in W), built in chunks."""
    lift = rng.normal(size=(2, w_dim)).astype(np.float32)
    w = np.empty((len(xy), w_dim), dtype=np.float32)
    for start in range(0, len(xy), 100_000):
        part = xy[start:start + 100_000].astype(np.float32)
        w[start:start + len(part)] = part @ lift + rng.normal(size=(len(part), w_dim)).astype(np.float32)
    return w


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


class Client:
    """One annotator's HTTP client: one kept connection (``keep_alive``, as a browser holds one) or a new connection
    per request (as ``urllib`` makes); each answer's ``Server-Timing`` is kept beside the client's own time."""

    def __init__(self, server: RunningServer, keep_alive: bool) -> None:
        parts = urllib.parse.urlsplit(server.url)
        self.host, self.port, self.keep_alive = parts.hostname, parts.port, keep_alive
        self.headers = {"Accept": "application/json", "Content-Type": "application/json", **server.headers()}
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: dict) -> tuple[int, dict, float, dict[str, float]]:
        """``(status, answer, client ms, {"app": ms, "handler": ms} as the server timed them)``."""
        t0 = time.perf_counter()
        if self.conn is None or not self.keep_alive:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        self.conn.request(method, path, body=json.dumps(body), headers=self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        elapsed = (time.perf_counter() - t0) * 1000.0
        timing = {}
        for item in ",".join(resp.headers.get_all("server-timing") or []).split(","):
            name, _, dur = item.strip().partition(";dur=")
            if dur:
                timing[name] = float(dur)
        if not self.keep_alive:
            self.conn.close()
        return resp.status, json.loads(raw), elapsed, timing


def annotators(server: RunningServer, rounds: int, think_s: float, strategy: str = "fps",
               keep_alive: bool = False) -> dict[str, list[float]]:
    """16 annotators at work: each asks for a suggestion, labels it, looks at the next slice for a random 0 to
    ``2 * think_s`` seconds, and asks again (staggered starts). The suggestion requests' latencies as the client saw
    them (``client``), as the server's ASGI app spent on them (``app``: from having the request to the answer's
    first byte) and in the route's handler (``handler``: the strategy's own work and the labels it reads)."""
    seen: dict[str, list[float]] = {"client": [], "app": [], "handler": []}

    def annotator(c: int) -> None:
        rng = np.random.default_rng(100 + c)
        client = Client(server, keep_alive)
        time.sleep(rng.uniform(0, 2 * think_s))
        for _ in range(rounds):
            status, body, ms, timing = client.request("POST", f"/activelearning/{strategy}",
                                                      {"count": 1, "client_id": f"annotator{c}"})
            assert status == 200, body
            seen["client"].append(ms)
            for name in ("app", "handler"):
                seen[name].append(timing.get(name, float("nan")))
            if body.get("id") is not None:
                status, answer, _, _ = client.request("PUT", "/slicelabels/", {
                    "image": body["id"], "slice": body["slice"], "class": "lesion" if rng.random() < 0.5 else "normal",
                    "user": f"annotator{c}"})
                assert status == 200, answer
            time.sleep(rng.uniform(0, 2 * think_s))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(annotator, range(16)))
    return seen


def tails(ms: list[float]) -> str:
    ms = sorted(m for m in ms if m == m)   # NaN: the answer had no such timing
    if not ms:
        return "(not timed)"

    def q(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))]
    return f"median {statistics.median(ms):7.1f}  p95 {q(0.95):7.1f}  p99 {q(0.99):7.1f}  max {ms[-1]:7.1f} ms (n={len(ms)})"


def rss_mb(pid: int | None) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def wait_for_w(server: RunningServer, timeout_s: float = 900.0) -> dict:
    t0 = time.perf_counter()
    while True:
        state = server.get_json("/info/")["ss_stylegan"]["pipelines"]["whole_embedding"]
        if state.get("state") in ("ready", "failed") or time.perf_counter() - t0 > timeout_s:
            return {**state, "waited_s": round(time.perf_counter() - t0, 1)}
        time.sleep(0.5)


def label_effect(server: RunningServer, n_slices: int, n: int = 10) -> list[float]:
    """Milliseconds from sending a label to holding a classification that reflects it (its ``label_version``)."""
    rng = np.random.default_rng(7)
    delays = []
    for k in range(n):
        row = int(rng.integers(n_slices))
        before = server.request("POST", "/infer/classify?image=img_00001", {})[1]["label_version"]
        t0 = time.perf_counter()
        status, record = server.request("PUT", "/slicelabels/", {
            "image": f"img_{row // SLICES_PER_STUDY:05d}", "slice": row % SLICES_PER_STUDY,
            "class": "normal" if k % 2 else "lesion", "user": "bench"})
        assert status == 200, record
        while True:
            status, answer = server.request("POST", "/infer/classify?image=img_00001", {})
            assert status == 200, answer
            if answer["label_version"] > before:   # the label store's version counts every change
                break
        delays.append((time.perf_counter() - t0) * 1000.0)
    return delays


def run(n_slices: int, n_calls: int, n_labels: int, rounds: int, think_s: float, strategies: list[str],
        classifiers: list[str], w_dim: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
        studies = Path(tmp) / "studies"
        t0 = time.perf_counter()
        write_synthetic_workspace(studies, n_slices, w_dim=w_dim)
        print(f"\n== {n_slices} embedded slices ({-(-n_slices // SLICES_PER_STUDY)} studies, W of {w_dim} dimensions); "
              f"workspace written in {time.perf_counter() - t0:.1f} s")
        for k, classifier in enumerate(classifiers):
            conf = {"device": "cpu", "classifier": classifier}
            with start_server(studies, conf, log_path=Path(tmp) / f"server-{classifier}.log") as server:
                if k == 0:
                    first_server(server, n_slices, n_calls, n_labels, rounds, think_s, strategies)
                elif classifier != "nn_map":
                    print(f"state in W for {classifier}: {wait_for_w(server)}")
                path = "/infer/classify?image=img_00001"
                timed(server, "POST", path, {})   # its fit for this label state
                cls = lambda c, i: {}  # noqa: E731
                print(f"classify {classifier:16s} ({SLICES_PER_STUDY} slices)  1 client  "
                      + tails(measure(server, "POST", path, cls, n_calls, 1)))
                print(f"classify {classifier:16s} ({SLICES_PER_STUDY} slices) 16 clients back to back  "
                      + tails(measure(server, "POST", path, cls, n_calls, 16)))
                print(f"label -> classification reflecting it ({classifier})  " + tails(label_effect(server, n_slices)))
                t0 = time.perf_counter()
                server.get_json("/slicemap/", timeout_s=900)
                print(f"GET /slicemap/ with {classifier}'s predictions of every slice: "
                      f"{time.perf_counter() - t0:.1f} s; server memory {rss_mb(server.pid):.0f} MB")


def first_server(server: RunningServer, n_slices: int, n_calls: int, n_labels: int, rounds: int, think_s: float,
                 strategies: list[str]) -> None:
    print(f"start-up (process start -> /info/ answers): {server.startup_s:.1f} s; memory {rss_mb(server.pid):.0f} MB")
    state = wait_for_w(server)
    print(f"state in W (feature space, TypiClust's clusterings, ProbCover's balls, FPS in W): {state}; "
          f"server memory {rss_mb(server.pid):.0f} MB")
    t0 = time.perf_counter()
    label_slices(server, n_slices, n_labels)
    print(f"{n_labels} slices labelled over HTTP in {time.perf_counter() - t0:.1f} s")
    print(f"first classify (builds the label index): {timed(server, 'POST', '/infer/classify?image=img_00001', {}):.0f} ms")
    for strategy in strategies:
        path = f"/activelearning/{strategy}"
        first = timed(server, "POST", path, {"client_id": "warmup"})
        one = lambda c, i: {"count": 1, "client_id": f"client{c}"}  # noqa: E731
        print(f"{strategy:9s} first {first:.0f} ms;  1 client  " + tails(measure(server, "POST", path, one, n_calls, 1)))
        print(f"{strategy:9s} 16 clients back to back  " + tails(measure(server, "POST", path, one, n_calls, 16)))
        for keep_alive in (False, True):
            seen = annotators(server, rounds, think_s, strategy, keep_alive)
            how = "one kept connection each" if keep_alive else "a new connection per request"
            print(f"{strategy:9s} 16 annotators ({how}; label each suggestion, then 0-{2 * think_s:g} s before the "
                  f"next)\n{'':12s}client  {tails(seen['client'])}\n{'':12s}server  {tails(seen['app'])}\n"
                  f"{'':12s}handler {tails(seen['handler'])}")
            for i in range(16):
                server.request("DELETE", f"/activelearning/pending?client_id=annotator{i}")
        for c in ["warmup", *(f"client{i}" for i in range(16)), *(f"annotator{i}" for i in range(16))]:
            server.request("DELETE", f"/activelearning/pending?client_id={c}")
    print("info      1 client   " + tails(measure(server, "GET", "/info/", lambda c, i: {}, 20, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--calls", type=int, default=64, help="requests per measurement (multiple of 16)")
    parser.add_argument("--labels", type=int, default=100, help="slices labelled before the measurements")
    parser.add_argument("--rounds", type=int, default=8, help="suggestions each of the 16 annotators asks for")
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds an annotator takes per slice")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--classifiers", nargs="+", default=list(CLASSIFIERS), choices=CLASSIFIERS,
                        help="one server each (the classifier is a server setting)")
    parser.add_argument("--w-dim", type=int, default=128, help="W's dimensions (the CPU recipe's: 128)")
    args = parser.parse_args()
    for n in args.slices:
        run(n, args.calls, args.labels, args.rounds, args.think, args.strategies, args.classifiers, args.w_dim)


if __name__ == "__main__":
    main()
