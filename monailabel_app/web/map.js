// The map: every slice as a point, coloured by label, prediction or score. Points are written straight into
// one ImageData (no DOM node, no path per point), so a frame at 100k points costs a few milliseconds; hover
// finds the nearest point through a grid built once per load; a click opens that slice for labelling.

import { api, q } from "./api.js";

const GRID = 256;          // hover grid cells per side
const HOVER_PX = 8;        // how near the pointer a point must be
const UNLABELLED = [90, 94, 100];

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function ramp(t) {  // dark blue -> yellow, for scores
  const a = [40, 60, 140], b = [250, 220, 60];
  return a.map((v, i) => Math.round(v + (b[i] - v) * Math.min(1, Math.max(0, t))));
}

export class SliceMapView {
  constructor(app) {
    this.app = app;
    this.canvas = document.getElementById("map-canvas");
    this.ctx = this.canvas.getContext("2d");
    this.tip = document.getElementById("map-tip");
    this.n = 0;
    this.mode = "label";
    this.view = { cx: 0, cy: 0, scale: 1 };
    this.target = null;
    this.frameMs = [];
    this.thumbs = new Map();
    this.hoverToken = 0;
    this.loaded = false;
  }

  init() {
    document.getElementById("map-colour").addEventListener("change", (e) => { this.mode = e.target.value; this.draw(); });
    document.getElementById("map-reset").addEventListener("click", () => { this.fitAll(); this.draw(); });
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x, y] = this.toData(e.offsetX, e.offsetY);
      const factor = e.deltaY < 0 ? 1.25 : 0.8;
      this.view.scale *= factor;
      this.view.cx = x - (x - this.view.cx) / factor;
      this.view.cy = y - (y - this.view.cy) / factor;
      this.draw();
    }, { passive: false });
    let drag = null;
    this.canvas.addEventListener("mousedown", (e) => { drag = { x: e.offsetX, y: e.offsetY, moved: false }; });
    window.addEventListener("mouseup", (e) => {
      if (drag && !drag.moved && e.target === this.canvas) this.click(e.offsetX, e.offsetY);
      drag = null;
    });
    this.canvas.addEventListener("mousemove", (e) => {
      if (drag && (Math.abs(e.offsetX - drag.x) + Math.abs(e.offsetY - drag.y) > 3 || drag.moved)) {
        drag.moved = true;
        this.view.cx -= (e.offsetX - drag.x) / this.view.scale;
        this.view.cy += (e.offsetY - drag.y) / this.view.scale;
        drag.x = e.offsetX; drag.y = e.offsetY;
        this.tip.hidden = true;
        this.draw();
        return;
      }
      this.hover(e.offsetX, e.offsetY);
    });
    this.canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    new ResizeObserver(() => { if (this.loaded) this.draw(); }).observe(this.canvas);
  }

  async load() {
    const answer = await api.get("/slicemap/");
    this.classifier = answer.classifier;
    this.setPoints(answer.points, answer.model_version);
  }

  // Column-wise points (GET /slicemap/'s shape): image, slice, x, y, label, prediction, score.
  setPoints(points, modelVersion = "") {
    const n = points.x.length;
    this.n = n;
    this.modelVersion = modelVersion;
    this.image = points.image;
    this.slice = points.slice;
    this.x = Float32Array.from(points.x);
    this.y = Float32Array.from(points.y);
    this.classIndex = new Map(this.app.classes.map((c, i) => [c, i]));
    this.labelOf = Int16Array.from(points.label, (c) => (c == null ? -1 : this.classIndex.get(c) ?? -1));
    this.predOf = Int16Array.from(points.prediction || [], (c) => (c == null ? -1 : this.classIndex.get(c) ?? -1));
    this.score = Float32Array.from(points.score || [], (s) => (s == null ? NaN : s));
    this.rowOf = new Map();
    for (let i = 0; i < n; i++) this.rowOf.set(`${points.image[i]}\u0000${points.slice[i]}`, i);
    this.colours = this.app.classes.map((c) => rgb(this.app.colours[c]));
    this.buildGrid();
    this.loaded = true;
    this.fitAll();
    this.draw();
    this.legend();
  }

  buildGrid() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < this.n; i++) {
      x0 = Math.min(x0, this.x[i]); x1 = Math.max(x1, this.x[i]);
      y0 = Math.min(y0, this.y[i]); y1 = Math.max(y1, this.y[i]);
    }
    if (!this.n) { x0 = y0 = 0; x1 = y1 = 1; }
    this.bounds = { x0, x1: x1 > x0 ? x1 : x0 + 1, y0, y1: y1 > y0 ? y1 : y0 + 1 };
    const { bounds } = this;
    const cell = (i) => {
      const gx = Math.min(GRID - 1, Math.floor(((this.x[i] - bounds.x0) / (bounds.x1 - bounds.x0)) * GRID));
      const gy = Math.min(GRID - 1, Math.floor(((this.y[i] - bounds.y0) / (bounds.y1 - bounds.y0)) * GRID));
      return gy * GRID + gx;
    };
    const counts = new Uint32Array(GRID * GRID + 1);
    const cells = new Uint32Array(this.n);
    for (let i = 0; i < this.n; i++) { cells[i] = cell(i); counts[cells[i] + 1]++; }
    for (let c = 0; c < GRID * GRID; c++) counts[c + 1] += counts[c];
    const fill = counts.slice(0, GRID * GRID);
    const order = new Uint32Array(this.n);
    for (let i = 0; i < this.n; i++) order[fill[cells[i]]++] = i;
    this.gridStart = counts;
    this.gridOrder = order;
  }

  fitAll() {
    const { x0, x1, y0, y1 } = this.bounds || { x0: 0, x1: 1, y0: 0, y1: 1 };
    const w = this.canvas.clientWidth || 800, h = this.canvas.clientHeight || 600;
    this.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale: 0.92 * Math.min(w / (x1 - x0), h / (y1 - y0)) };
  }

  toScreen(x, y) {
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    return [w / 2 + (x - this.view.cx) * this.view.scale, h / 2 - (y - this.view.cy) * this.view.scale];
  }

  toData(sx, sy) {
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    return [this.view.cx + (sx - w / 2) / this.view.scale, this.view.cy - (sy - h / 2) / this.view.scale];
  }

  colourOf(i) {
    if (this.mode === "score") {
      const s = this.score[i];
      return Number.isNaN(s) ? UNLABELLED : ramp(s);
    }
    const c = this.mode === "prediction" && this.labelOf[i] < 0 ? this.predOf[i] : this.labelOf[i];
    return c >= 0 ? this.colours[c] : UNLABELLED;
  }

  draw() {
    if (!this.loaded) return;
    const t0 = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    const W = Math.max(1, Math.round(w * dpr)), H = Math.max(1, Math.round(h * dpr));
    if (this.canvas.width !== W || this.canvas.height !== H) { this.canvas.width = W; this.canvas.height = H; }
    const pixels = this.ctx.createImageData(W, H);
    const buf = new Uint32Array(pixels.data.buffer);
    buf.fill(0xff100e0d);  // ABGR: the background
    const k = this.view.scale * dpr, ox = W / 2 - this.view.cx * k, oy = H / 2 + this.view.cy * k;
    const r = Math.max(1, Math.round(dpr)) * (this.n < 20000 ? 2 : 1);  // few points: bigger dots
    const plot = (i, radius) => {
      const px = Math.round(ox + this.x[i] * k), py = Math.round(oy - this.y[i] * k);
      if (px < -radius || py < -radius || px >= W + radius || py >= H + radius) return;
      const [R, G, B] = this.colourOf(i);
      const value = (0xff << 24) | (B << 16) | (G << 8) | R;
      for (let yy = Math.max(0, py - radius); yy <= Math.min(H - 1, py + radius); yy++) {
        const row = yy * W;
        for (let xx = Math.max(0, px - radius); xx <= Math.min(W - 1, px + radius); xx++) buf[row + xx] = value;
      }
    };
    const labelled = [];
    for (let i = 0; i < this.n; i++) {
      if (this.labelOf[i] >= 0) labelled.push(i);
      else plot(i, r);
    }
    for (const i of labelled) plot(i, r + 2);  // labelled slices on top, larger
    this.ctx.putImageData(pixels, 0, 0);
    this.drawTarget(dpr);
    const ms = performance.now() - t0;
    this.frameMs.push(ms);
    if (this.frameMs.length > 200) this.frameMs.shift();
    const labelledCount = labelled.length;
    document.getElementById("map-info").textContent =
      `${this.n.toLocaleString()} slices · ${labelledCount} labelled · predictions by ${this.classifier || "none yet"} · ` +
      `model ${this.modelVersion || "?"} · ` +
      `frame ${ms.toFixed(1)} ms`;
  }

  drawTarget(dpr) {
    if (!this.target) return;
    const row = this.rowOf.get(`${this.target.id}\u0000${this.target.slice}`);
    if (row === undefined) return;
    const [sx, sy] = this.toScreen(this.x[row], this.y[row]);
    this.ctx.save();
    this.ctx.scale(dpr, dpr);
    this.ctx.strokeStyle = "#ffffff";
    this.ctx.lineWidth = 2;
    this.ctx.beginPath();
    this.ctx.arc(sx, sy, 9, 0, 2 * Math.PI);
    this.ctx.stroke();
    this.ctx.restore();
  }

  legend() {
    const box = document.getElementById("map-legend");
    box.replaceChildren(...this.app.classes.map((c) => {
      const span = document.createElement("span");
      const dot = document.createElement("i");
      dot.style.background = this.app.colours[c];
      span.append(dot, document.createTextNode(c));
      return span;
    }));
  }

  nearest(sx, sy) {
    if (!this.n) return -1;
    const [x, y] = this.toData(sx, sy);
    const { x0, x1, y0, y1 } = this.bounds;
    const reach = HOVER_PX / this.view.scale;
    const gx0 = Math.max(0, Math.floor(((x - reach - x0) / (x1 - x0)) * GRID));
    const gx1 = Math.min(GRID - 1, Math.floor(((x + reach - x0) / (x1 - x0)) * GRID));
    const gy0 = Math.max(0, Math.floor(((y - reach - y0) / (y1 - y0)) * GRID));
    const gy1 = Math.min(GRID - 1, Math.floor(((y + reach - y0) / (y1 - y0)) * GRID));
    let best = -1, bestD = reach * reach;
    for (let gy = gy0; gy <= gy1; gy++) {
      for (let gx = gx0; gx <= gx1; gx++) {
        const c = gy * GRID + gx;
        for (let j = this.gridStart[c]; j < this.gridStart[c + 1]; j++) {
          const i = this.gridOrder[j];
          const d = (this.x[i] - x) ** 2 + (this.y[i] - y) ** 2;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  async hover(sx, sy) {
    const i = this.nearest(sx, sy);
    if (i < 0) { this.tip.hidden = true; return; }
    const token = ++this.hoverToken;
    const label = this.labelOf[i] >= 0 ? this.app.classes[this.labelOf[i]] : "unlabelled";
    const pred = this.predOf[i] >= 0 ? ` · predicted ${this.app.classes[this.predOf[i]]}` +
      (Number.isNaN(this.score[i]) ? "" : ` (${this.score[i].toFixed(2)})`) : "";
    document.getElementById("map-tip-text").textContent = `${this.image[i]} · slice ${this.slice[i]} · ${label}${pred}`;
    this.tip.style.left = `${Math.min(sx + 14, this.canvas.clientWidth - 200)}px`;
    this.tip.style.top = `${Math.min(sy + 14, this.canvas.clientHeight - 150)}px`;
    this.tip.hidden = false;
    const key = `${this.image[i]}\u0000${this.slice[i]}`;
    let url = this.thumbs.get(key);
    if (!url) {
      await new Promise((resolve) => setTimeout(resolve, 60));  // a pointer passing over points asks for none
      if (token !== this.hoverToken) return;
      try {
        url = (await api.image(`/slicemap/thumbnail?image=${q(this.image[i])}&slice=${this.slice[i]}`)).url;
      } catch (err) {
        return;
      }
      this.thumbs.set(key, url);
      if (this.thumbs.size > 300) {
        const [oldKey, oldUrl] = this.thumbs.entries().next().value;
        URL.revokeObjectURL(oldUrl);
        this.thumbs.delete(oldKey);
      }
    }
    if (token === this.hoverToken) document.getElementById("map-tip-image").src = url;
  }

  click(sx, sy) {
    const i = this.nearest(sx, sy);
    if (i >= 0) this.app.openSlice(this.image[i], this.slice[i]);
  }

  // -- what the other views tell the map -------------------------------------------------------------------
  labelled(image, slice, name) {
    if (!this.loaded) return;
    const row = this.rowOf.get(`${image}\u0000${slice}`);
    if (row === undefined) return;
    this.labelOf[row] = name == null ? -1 : this.classIndex.get(name) ?? -1;
    this.stale = true;
  }

  setTarget(target) {
    this.target = target;
  }
}
