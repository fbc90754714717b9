"""Throughput and latency of ``PUT /slicelabels/`` with concurrent writers, on one or more checkouts.

Each checkout (``--repo``, default this one) is served by a real MONAI Label server on 127.0.0.1 over its own
fresh synthetic datastore (no training: labels are accepted before training). ``--writers`` threads, each
with its own keep-alive HTTP connection, write ``--writes`` labels in total, in two patterns:

- ``spread``: writer *i* labels slices of study *i* (annotators on different studies);
- ``one-image``: every writer labels slices of the same study (the worst case for a per-study file).

After each run every acknowledged label is read back (``GET /slicelabels/``); a missing one is reported.
Runs alternate between the checkouts (``--rounds``) so that background load on a shared machine hits them
alike. Prints writes per second and median / p95 / p99 latency in milliseconds.

``--open-labels N`` also times how long each checkout's store takes to open a folder of N labels (its
start-up replay), in a process of its own: for a checkout whose store is the SQLite database, a database of
N rows, and the first open of a folder of the journal store (the one-time migration); for one whose store is
the journal, N labels in per-image snapshots, and N labels in the journal alone (a server killed before any
compaction). The folders are written directly in each format, 1,000 labels per image.

Usage::

    git worktree add /tmp/before <commit>      # the store before a change, beside this checkout
    .venv/bin/python benchmarks/bench_label_writes.py --repo /tmp/before --repo . --writers 8 --writes 1600 \
        --open-labels 1000000

Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_harness import RunningServer, start_server  # noqa: E402

from ss_stylegan.data.synthetic import make_synthetic_datastore  # noqa: E402

N_SLICES = 64


def put_labels(server: RunningServer, jobs: list[tuple[str, int, str]], latencies: list[float],
               failures: list[str]) -> None:
    """Write ``jobs`` (image, slice, class) one after the other on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Content-Type": "application/json", **server.headers()}
    try:
        for image, slice_index, cls in jobs:
            body = json.dumps({"image": image, "slice": slice_index, "class": cls, "user": "bench"})
            t0 = time.perf_counter()
            conn.request("PUT", "/slicelabels/", body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            latencies.append((time.perf_counter() - t0) * 1000.0)
            if resp.status != 200:
                failures.append(f"{image}[{slice_index}] -> {resp.status}: {payload[:200]!r}")
    finally:
        conn.close()


def run_pattern(server: RunningServer, pattern: str, writers: int, writes: int, n_studies: int,
                round_index: int) -> dict[str, float]:
    per_writer = writes // writers
    cls = ("normal", "lesion")[round_index % 2]  # every write changes the stored class
    jobs: list[list[tuple[str, int, str]]] = []
    for w in range(writers):
        image = f"study_{(w % n_studies) if pattern == 'spread' else 0:02d}"
        slices = [(w * per_writer + k) % N_SLICES if pattern == "one-image" else k % N_SLICES
                  for k in range(per_writer)]
        jobs.append([(image, s, cls) for s in slices])
    latencies: list[float] = []
    failures: list[str] = []
    threads = [threading.Thread(target=put_labels, args=(server, j, latencies, failures)) for j in jobs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    stored = {(r["image"], r["slice"]): r["class"] for r in server.get_json("/slicelabels/")["labels"]}
    lost = sum(1 for j in jobs for image, s, c in j if stored.get((image, s)) != c)
    ms = sorted(latencies)
    return {
        "writes_per_s": len(ms) / elapsed,
        "median_ms": statistics.median(ms),
        "p95_ms": ms[int(0.95 * (len(ms) - 1))],
        "p99_ms": ms[int(0.99 * (len(ms) - 1))],
        "failed": len(failures),
        "lost": lost,
    }


_OPEN = r"""
import json, os, sqlite3, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], "lib"))
try:
    import ss_stylegan.labelling.label_store as labels
except ImportError:  # a checkout from before the library was split into subpackages
    import ss_stylegan.labels as labels
folder, n = sys.argv[2], int(sys.argv[3])
def record(k):
    return {"image": f"img{k // 1000:05d}", "slice": k % 1000, "class": ("normal", "lesion")[k % 2], "user": "bench",
            "timestamp": "2026-12-07T10:00:00+0000"}
def snapshots(dest):
    os.makedirs(dest)
    for start in range(0, n, 1000):
        recs = [record(k) for k in range(start, min(n, start + 1000))]
        with open(os.path.join(dest, recs[0]["image"] + ".json"), "w") as fh:
            json.dump(recs, fh, indent=1)
def journal(dest):
    os.makedirs(dest)
    with open(os.path.join(dest, ".journal.jsonl"), "w") as fh:
        for k in range(n):
            fh.write(json.dumps({"op": "set", "record": record(k)}, separators=(",", ":")) + "\n")
def timed(dest):
    t0 = time.perf_counter()
    store = labels.SliceLabelStore(dest, ["normal", "lesion"], lambda image: 1000)
    seconds = time.perf_counter() - t0
    assert len(store) == n, len(store)
    return seconds
out = {}
if hasattr(labels, "DATABASE"):
    snapshots(os.path.join(folder, "migrate"))
    out["first open of a journal-store folder (migration)"] = timed(os.path.join(folder, "migrate"))
    out["open of the database"] = timed(os.path.join(folder, "migrate"))
else:
    snapshots(os.path.join(folder, "snap"))
    out["open of per-image snapshots"] = timed(os.path.join(folder, "snap"))
    journal(os.path.join(folder, "journal"))
    out["open of the journal alone (replay)"] = timed(os.path.join(folder, "journal"))
print(json.dumps(out))
"""


def time_open(repo: Path, n_labels: int) -> dict[str, float]:
    """Seconds for ``repo``'s label store to open folders of ``n_labels`` labels (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-open-") as tmp:
        proc = subprocess.run([sys.executable, "-c", _OPEN, str(repo), tmp, str(n_labels)], capture_output=True,
                              text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", action="append", type=Path, help="checkout to serve (repeatable)")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--writes", type=int, default=1600, help="labels written per run, over all writers")
    parser.add_argument("--rounds", type=int, default=2, help="runs per pattern and checkout, alternating")
    parser.add_argument("--open-labels", type=int, default=0,
                        help="also time opening a store of this many labels (e.g. 1000000)")
    args = parser.parse_args(argv)
    repos = [p.resolve() for p in (args.repo or [Path(__file__).resolve().parent.parent])]
    if args.open_labels:
        for repo in repos:
            for what, seconds in time_open(repo, args.open_labels).items():
                print(f"{args.open_labels} labels, {what}, {repo}: {seconds:.2f} s", flush=True)
    n_studies = max(args.writers, 1)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
        servers = []
        for i, repo in enumerate(repos):
            studies = Path(tmp) / f"studies-{i}"
            make_synthetic_datastore(studies, n_studies=n_studies, n_slices=N_SLICES, size=32, random_state=i)
            servers.append(start_server(studies, {"device": "cpu"}, log_path=Path(tmp) / f"server-{i}.log",
                                        repo=repo))
        try:
            for server in servers:  # warm-up: every study read once (slice counts cached)
                run_pattern(server, "spread", args.writers, args.writers * 4, n_studies, 1)
            for r in range(args.rounds):
                for pattern in ("spread", "one-image"):
                    for repo, server in zip(repos, servers):
                        res = run_pattern(server, pattern, args.writers, args.writes, n_studies, r)
                        results.setdefault((str(repo), pattern), []).append(res)
                        print(f"round {r} {pattern:9s} {repo}: {res['writes_per_s']:.0f} writes/s, "
                              f"median {res['median_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms, "
                              f"failed {res['failed']}, lost {res['lost']}", flush=True)
        finally:
            for server in servers:
                server.stop()
    print(f"\n{args.writers} writers, {args.writes} writes per run, median of {args.rounds} runs "
          "(writes/s; median, p95, p99 ms; failed and lost summed over runs):")
    for (repo, pattern), runs in results.items():
        mid = {k: statistics.median(r[k] for r in runs) for k in ("writes_per_s", "median_ms", "p95_ms", "p99_ms")}
        print(f"  {pattern:9s} {repo}: {mid['writes_per_s']:.0f} writes/s, median {mid['median_ms']:.1f}, "
              f"p95 {mid['p95_ms']:.1f}, p99 {mid['p99_ms']:.1f}; failed {sum(r['failed'] for r in runs):.0f}, "
              f"lost {sum(r['lost'] for r in runs):.0f}")


if __name__ == "__main__":
    main()
