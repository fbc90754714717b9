"""The browser client's speed, measured in headless Chromium (Debian's ``chromium``, driven by Playwright) against a
real server over a small trained datastore (the tests' synthetic one, made here in a temporary folder).

- **Page load**: from ``page.goto("/ui/")`` until the first suggested slice is on screen (class buttons, the
  suggestion asked for and its image decoded), over ``--loads`` fresh pages; also the browser's own
  ``domContentLoaded`` time.
- **Labelling round**: a number key pressed until the next suggested slice is on screen.
- **Map frame at N points** (``--points``, 100k by default): the map view is given N synthetic points (Gaussian
  clusters, a few labelled, every one predicted) through the page's own renderer, then panned for
  ``--frames`` animation frames. Reported: the renderer's time per frame (``draw()``: every point written into
  one ImageData and put on the canvas), the interval between animation frames while panning (what the eye
  sees), and the time to find the point under the pointer (hover).

Usage::

    .venv/bin/python benchmarks/bench_browser.py [--points 100000] [--loads 7] [--frames 120]

Prints medians and 95th percentiles (ms). Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_harness import TINY_CONF, start_server  # noqa: E402
from trained_datastore import make_trained_datastore  # noqa: E402

SYNTHETIC_POINTS = """([n]) => {
  const classes = window.ssgl.classes;
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const gauss = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const pts = {image: [], slice: [], x: [], y: [], label: [], prediction: [], score: []};
  for (let i = 0; i < n; i++) {
    const c = i % 12, cls = classes[c % classes.length];
    pts.image.push(`study_${Math.floor(i / 300)}`); pts.slice.push(i % 300);
    pts.x.push(40 * Math.cos(c) + 6 * gauss()); pts.y.push(40 * Math.sin(c) + 6 * gauss());
    pts.label.push(i % 997 === 0 ? cls : null); pts.prediction.push(cls); pts.score.push(0.5 + 0.5 * rand());
  }
  return pts;
}"""

PAN = """([frames]) => new Promise((resolve) => {
  const m = window.ssgl.map; const stamps = []; let k = 0;
  m.frameMs.length = 0;
  const step = (t) => {
    stamps.push(t);
    if (k++ >= frames) { resolve({draw: m.frameMs.slice(), stamps}); return; }
    m.view.cx += 0.4; m.draw(); requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
})"""

HOVER = """([tries]) => {
  const m = window.ssgl.map; const w = m.canvas.clientWidth, h = m.canvas.clientHeight; const times = [];
  for (let i = 0; i < tries; i++) {
    const t0 = performance.now(); m.nearest((i * 37) % w, (i * 91) % h); times.push(performance.now() - t0);
  }
  return times;
}"""


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return f"median {statistics.median(ordered):.1f} ms, p95 {p95:.1f} ms (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="ssgl-bench-browser-") as tmp:
        studies = Path(tmp) / "studies"
        make_trained_datastore(studies, n_studies=3)
        with start_server(studies, TINY_CONF, log_path=Path(tmp) / "server.log") as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True)
            context = browser.new_context(viewport={"width": 1366, "height": 768})
            print(f"chromium {browser.version}, viewport 1366x768, server {server.url}")
            loads, dom, rounds = [], [], []
            for _ in range(args.loads):
                page = context.new_page()
                t0 = time.perf_counter()
                page.goto(server.url + "/ui/")
                page.wait_for_selector("#slice-image[data-slice]")
                loads.append(1000 * (time.perf_counter() - t0))
                dom.append(page.evaluate("() => performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"))
                for _ in range(3):
                    before = page.locator("#slice-image").get_attribute("data-slice"), page.locator(
                        "#slice-image").get_attribute("data-image")
                    t0 = time.perf_counter()
                    page.keyboard.press("1")
                    while (page.locator("#slice-image").get_attribute("data-slice"),
                           page.locator("#slice-image").get_attribute("data-image")) == before:
                        time.sleep(0.002)
                    rounds.append(1000 * (time.perf_counter() - t0))
                page.close(run_before_unload=True)
            print(f"page load to the first suggested slice on screen: {summary(loads)}")
            print(f"  of which the page itself (domContentLoaded): {summary(dom)}")
            print(f"labelling round (key press -> next suggested slice on screen): {summary(rounds)}")

            page = context.new_page()
            page.goto(server.url + "/ui/")
            page.wait_for_selector("#slice-image[data-slice]")
            page.click("nav button[data-view=map]")
            page.wait_for_selector("#map-info:has-text('slices')")
            load_ms = page.evaluate(f"""([n]) => {{ const pts = ({SYNTHETIC_POINTS})([n]);
                const t0 = performance.now(); window.ssgl.map.setPoints(pts, 'synthetic');
                return performance.now() - t0; }}""", [args.points])
            result = page.evaluate(PAN, [args.frames])
            intervals = [b - a for a, b in zip(result["stamps"][1:], result["stamps"][2:])]
            hover = page.evaluate(HOVER, [2000])
            page.screenshot(path=str(Path(tmp) / "map.png"))
            print(f"map at {args.points:,} points: setPoints (index, hover grid and first frame, in the page) {load_ms:.0f} ms")
            print(f"  draw() per frame: {summary(result['draw'])}")
            print(f"  animation frame interval while panning: {summary(intervals)}")
            print(f"  hover lookup: {summary(hover)}")
            browser.close()


if __name__ == "__main__":
    main()
