// The status view: the training's progress and ETA, the live map and how far its model was trained, start and
// stop for those with the trainer role, and the CSV exports.

import { api } from "./api.js";

function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "unknown";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export class StatusView {
  constructor(app) {
    this.app = app;
    this.el = (id) => document.getElementById(id);
    this.timer = null;
    this.lastModel = null;
  }

  init() {
    this.el("train-buttons").hidden = !this.app.session.may.train;
    this.el("train-start").addEventListener("click", () => this.act("POST", "/train/ss_stylegan", "Training started."));
    this.el("train-stop").addEventListener("click", () => this.act("DELETE", "/train/", "Stop requested."));
    this.el("export-labels").addEventListener("click", () => this.exportCsv("slice"));
    this.el("export-studies").addEventListener("click", () => this.exportCsv("study"));
  }

  async act(method, path, done) {
    try {
      await api.request(method, path, method === "POST" ? { json: {} } : {});
      this.say(done);
      this.refresh();
    } catch (err) {
      this.say(err.message, true);
    }
  }

  say(text, error = false) {
    const box = this.el("train-message");
    box.textContent = text;
    box.classList.toggle("error", error);
  }

  async exportCsv(per) {
    try {
      await api.download(`/slicelabels/export.csv?per=${per}`, per === "slice" ? "slice_labels.csv" : "study_findings.csv");
    } catch (err) {
      this.say(err.message, true);
    }
  }

  // Poll every 3 s while the page is open; the map is reloaded when a new model is published.
  poll() {
    this.refresh();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.refresh(), 3000);
  }

  async refresh() {
    let train;
    try {
      train = await api.get("/train/");
    } catch (err) {
      this.el("train-state").textContent = err.message;
      return;
    }
    const block = train.ss_stylegan || {};
    const p = block.progress || {};
    const running = block.state === "training";
    this.el("train-state").textContent = `${running ? "Training" : "Not training"}: ${block.message || block.state || ""}`;
    const fraction = p.total_steps ? Math.min(1, (p.step || 0) / p.total_steps) : (block.state === "ready" ? 1 : 0);
    this.el("train-progress").value = fraction;
    const parts = [];
    if (p.total_steps) parts.push(`step ${p.step || 0} of ${p.total_steps} (${Math.round(100 * fraction)}%)`);
    if (p.images_seen) parts.push(`${(p.images_seen / 1000).toFixed(1)} kimg`);
    if (running) parts.push(`ETA ${duration(p.eta_s ?? p.eta_seconds)}`);
    if (p.elapsed_s != null) parts.push(`trained for ${duration(p.elapsed_s)}`);
    this.el("train-numbers").textContent = parts.join(" · ");
    this.el("train-learning").textContent = block.learning?.summary || "";
    this.el("train-start").disabled = running;
    this.el("train-stop").disabled = !running;
    await this.refreshMap();
  }

  async refreshMap() {
    let info;
    try {
      info = (await api.get("/info/")).ss_stylegan;
    } catch (err) {
      this.el("map-state").textContent = err.message;
      return;
    }
    const live = info.map;
    if (!live) {
      this.el("map-state").textContent = info.message;
    } else {
      const t = live.training || {};
      const how = t.step != null ? `trained ${t.step} of ${t.total_steps} steps` +
        (t.kimg != null ? ` (${t.kimg} kimg, ${t.minutes} min)` : "") : "trained (no record of how far)";
      this.el("map-state").textContent = `Live map ${live.version || "(new)"}: model ${live.model_version}, ${how}. ` +
        `${info.n_slices} slices from ${info.n_images_embedded} studies, ${info.n_labelled} labelled.`;
    }
    if (info.model_version && info.model_version !== this.lastModel) {
      const first = this.lastModel === null;
      this.lastModel = info.model_version;
      if (!first) this.app.modelChanged();
    }
  }
}
