"""Soak: a real server under training, annotators, uploads and readers for N minutes; did anything break?

A MONAI Label server over a fresh synthetic datastore trains a tiny model the whole time (a new map every
``--publish-minutes``), while, each on its own keep-alive connection:

- ``--annotators`` annotators ask for a suggestion (``POST /activelearning/fps``, own client id) and label it
  (``PUT /slicelabels/``); before the first map, or when nothing is offered, they label a slice of their own
  study. The class of a slice is a function of the slice, so a label is never changed to another class;
- an uploader classifies a new study every few seconds (``POST /infer/classify`` with a file), and copies
  a study into the folder every minute (the live map embeds it);
- a reader polls ``/info/``, ``/train/``, ``/slicelabels/`` and ``/slicemap/``.

At the end the server is killed (``kill -9``) and started again, and every label that was acknowledged (200)
must be served. Prints requests and their status codes, 5xx answers, time-outs and connection errors, labels
lost, latency percentiles per route, and the server process's memory (RSS) growth in MB per minute over the
second half of the run (a least-squares slope over samples every 5 s).

Usage::

    .venv/bin/python benchmarks/bench_soak.py --minutes 30

Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_harness import RunningServer, start_server  # noqa: E402

from ss_stylegan.data.synthetic import make_synthetic_datastore  # noqa: E402

CLASSES = ("normal", "lesion")
TIMEOUT_S = 30.0


class Tally:
    """Status codes, errors and latencies per route, and the labels acknowledged, shared by the clients."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: collections.Counter[tuple[str, int]] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.acknowledged: dict[tuple[str, int], str] = {}
        self.server_errors: list[str] = []

    def add(self, route: str, status: int, ms: float, body: bytes) -> None:
        with self.lock:
            self.codes[(route, status)] += 1
            self.latency[route].append(ms)
            if status >= 500 and len(self.server_errors) < 20:
                self.server_errors.append(f"{route} -> {status}: {body[:300]!r}")


class Client:
    """One keep-alive connection; reconnects after an error."""

    def __init__(self, server: RunningServer, tally: Tally) -> None:
        self.server = server
        self.tally = tally
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, route: str, body: bytes | None = None,
             content_type: str = "application/json") -> tuple[int, Any]:
        headers = {"Accept": "application/json", **self.server.headers()}
        if body is not None:
            headers["Content-Type"] = content_type
        t0 = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=TIMEOUT_S)
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as err:
            kind = "timeout" if "timed out" in str(err) else type(err).__name__
            with self.tally.lock:
                self.tally.errors[f"{route}: {kind}"] += 1
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return 0, None
        self.tally.add(route, resp.status, (time.perf_counter() - t0) * 1000.0, raw)
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw


def class_of(image: str, slice_index: int) -> str:
    return CLASSES[(sum(map(ord, image)) + slice_index) % 2]


def annotator(server: RunningServer, tally: Tally, index: int, n_slices: int, stop: threading.Event) -> None:
    client, rng = Client(server, tally), random.Random(index)
    own = f"study_{index:02d}"
    while not stop.is_set():
        status, answer = client.call("POST", "/activelearning/fps", "suggest",
                                     json.dumps({"client_id": f"annotator-{index}"}).encode())
        if status == 200 and isinstance(answer, dict) and answer.get("id"):
            image, slice_index = answer["id"], int(answer["slice"])
        else:
            image, slice_index = own, rng.randrange(n_slices)
        cls = class_of(image, slice_index)
        body = json.dumps({"image": image, "slice": slice_index, "class": cls, "user": f"a{index}"}).encode()
        status, _ = client.call("PUT", "/slicelabels/", "label", body)
        if status == 200:
            with tally.lock:
                tally.acknowledged[(image, slice_index)] = cls
        stop.wait(rng.uniform(0.2, 1.0))


def uploader(server: RunningServer, tally: Tally, spare: list[Path], stop: threading.Event) -> None:
    client = Client(server, tally)
    copied = 0
    next_copy = time.monotonic() + 60.0
    while not stop.is_set():
        study = spare[random.randrange(len(spare))]
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{study.name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + study.read_bytes() + \
            f"\r\n--{boundary}--\r\n".encode()
        client.call("POST", "/infer/classify", "classify upload", body, f"multipart/form-data; boundary={boundary}")
        if time.monotonic() >= next_copy and copied < len(spare):
            shutil.copyfile(spare[copied], server.studies / f"added_{copied:02d}.nii.gz")
            copied += 1
            next_copy += 60.0
        stop.wait(3.0)


def reader(server: RunningServer, tally: Tally, stop: threading.Event) -> None:
    client = Client(server, tally)
    paths = [("/info/", "info"), ("/train/", "train status"), ("/slicelabels/", "labels"), ("/slicemap/", "map")]
    k = 0
    while not stop.is_set():
        path, route = paths[k % len(paths)]
        client.call("GET", path, route)
        k += 1
        stop.wait(0.5)


def memory_sampler(server: RunningServer, samples: list[tuple[float, float]], stop: threading.Event) -> None:
    process = psutil.Process(server.pid)
    t0 = time.monotonic()
    while not stop.wait(5.0):
        try:
            samples.append(((time.monotonic() - t0) / 60.0, process.memory_info().rss / 2**20))
        except psutil.Error:
            return


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(minutes, MB)`` points, in MB per minute."""
    if len(points) < 2:
        return float("nan")
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--slices", type=int, default=24, help="slices per study")
    parser.add_argument("--publish-minutes", type=float, default=3.0)
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the server process (repeatable), e.g. MALLOC_ARENA_MAX=2")
    args = parser.parse_args(argv)
    server_env = dict(item.split("=", 1) for item in args.server_env)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        studies, spare = Path(tmp) / "studies", Path(tmp) / "spare"
        make_synthetic_datastore(studies, n_studies=args.annotators, n_slices=args.slices, size=48, random_state=0)
        make_synthetic_datastore(spare, n_studies=40, n_slices=args.slices, size=48, random_state=1)
        spare_files = sorted(spare.glob("*.nii.gz"))
        conf = {"preset": "tiny", "resolution": "32", "device": "cpu", "steps": "10000000", "batch_size": "8",
                "train_minutes": str(args.minutes), "publish_minutes": str(args.publish_minutes),
                "checkpoint_interval": "200", "perplexity": "10"}
        tally, samples, stop = Tally(), [], threading.Event()
        with start_server(studies, conf, log_path=Path(tmp) / "server.log", env=server_env or None) as server:
            status, answer = server.request("POST", "/train/ss_stylegan", {})
            print(f"training started: {status} {str(answer)[:120]}", flush=True)
            threads = [threading.Thread(target=annotator, args=(server, tally, i, args.slices, stop))
                       for i in range(args.annotators)]
            threads += [threading.Thread(target=uploader, args=(server, tally, spare_files, stop)),
                        threading.Thread(target=reader, args=(server, tally, stop)),
                        threading.Thread(target=memory_sampler, args=(server, samples, stop))]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            while time.monotonic() - t0 < args.minutes * 60.0:
                time.sleep(min(60.0, args.minutes * 60.0 - (time.monotonic() - t0)))
                done = sum(tally.codes.values())
                print(f"{(time.monotonic() - t0) / 60:.1f} min: {done} requests, "
                      f"{sum(n for (r, s), n in tally.codes.items() if s >= 500)} 5xx, "
                      f"{sum(tally.errors.values())} errors, {len(tally.acknowledged)} labels, "
                      f"RSS {samples[-1][1] if samples else float('nan'):.0f} MB", flush=True)
            stop.set()
            for t in threads:
                t.join(TIMEOUT_S + 5)
            server.restart(kill=True)
            stored = {(r["image"], r["slice"]): r["class"] for r in server.get_json("/slicelabels/")["labels"]}
        lost = {k: c for k, c in tally.acknowledged.items() if stored.get(k) != c}
        second_half = [p for p in samples if p[0] >= args.minutes / 2]
        print(f"\nsoak of {args.minutes:g} minutes: {sum(tally.codes.values())} requests")
        for (route, status), n in sorted(tally.codes.items()):
            print(f"  {route:16s} {status}: {n}")
        for route, ms in sorted(tally.latency.items()):
            ms.sort()
            print(f"  {route:16s} median {statistics.median(ms):.1f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms, "
                  f"p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms")
        print(f"5xx answers: {sum(n for (r, s), n in tally.codes.items() if s >= 500)}")
        for line in tally.server_errors:
            print(f"  {line}")
        print(f"time-outs and connection errors: {dict(tally.errors) or 0}")
        print(f"labels acknowledged: {len(tally.acknowledged)}, lost after kill -9 and restart: {len(lost)}"
              + (f" e.g. {list(lost.items())[:5]}" if lost else ""))
        print(f"server RSS: {samples[0][1] if samples else float('nan'):.0f} MB at the start, "
              f"{samples[-1][1] if samples else float('nan'):.0f} MB at the end; growth over the second half "
              f"{slope(second_half):.2f} MB/min ({len(second_half)} samples)")


if __name__ == "__main__":
    main()
