// The study view: classify a study of the datastore (or an uploaded one), show every slice's class along the
// volume as a strip with the runs of each finding marked above it, and the study's findings; a click on the
// strip or on a run opens that slice for labelling.

import { api, q } from "./api.js";

export class StudyView {
  constructor(app) {
    this.app = app;
    this.el = (id) => document.getElementById(id);
    this.result = null;
    this.inDatastore = false;
  }

  init() {
    this.el("study-classify").addEventListener("click", () => this.classify(this.el("study-select").value));
    this.el("study-upload").addEventListener("change", (e) => {
      const file = e.target.files && e.target.files[0];
      if (file) this.upload(file);
    });
    const strip = this.el("study-strip");
    strip.addEventListener("click", (e) => this.stripClick(e.offsetX, e.offsetY));
    new ResizeObserver(() => this.drawStrip()).observe(strip);
  }

  async refreshStudies() {
    const select = this.el("study-select");
    const chosen = select.value;
    try {
      const answer = await api.get("/datastore/?output=all");
      const ids = Object.keys(answer.objects || {}).sort();
      select.replaceChildren(...ids.map((id) => new Option(id, id)));
      if (ids.includes(chosen)) select.value = chosen;
    } catch (err) {
      this.say(err.message, true);
    }
  }

  say(text, error = false) {
    const box = this.el("study-message");
    box.textContent = text;
    box.classList.toggle("error", error);
  }

  async classify(image) {
    if (!image) { this.say("Choose a study first.", true); return; }
    this.say(`Classifying ${image}…`);
    try {
      this.show(await api.post(`/infer/classify?image=${q(image)}`, {}), true);
    } catch (err) {
      this.say(err.message, true);
    }
  }

  async upload(file) {
    this.say(`Uploading and classifying ${file.name}…`);
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("params", "{}");
    try {
      this.show(await api.request("POST", "/infer/classify", { form }), false);
    } catch (err) {
      this.say(err.message, true);
    }
  }

  show(result, inDatastore) {
    this.result = result;
    this.inDatastore = inDatastore;
    this.el("study-result").hidden = false;
    const where = inDatastore ? result.image : `${result.image} (uploaded, not stored)`;
    this.say(`${where}: ${result.n_slices} slices, model ${result.model_version}` +
      (result.warning ? ` · ${result.warning}` : ""));
    this.el("study-summary").textContent = result.study_summary || result.summary || "";
    this.el("study-volume").textContent = `Slice majority (the old answer): ${result.volume_class}. ` +
      `Rule: a class is positive when a run of at least ${result.study_rule?.min_slices ?? "?"} adjacent slice(s) ` +
      `scores ${result.study_rule?.min_score ?? "?"} or more.`;
    const body = this.el("study-findings").tBodies[0];
    body.replaceChildren(...result.findings.map((f) => {
      const row = body.insertRow();
      row.insertCell().textContent = f.class;
      row.insertCell().textContent = f.positive ? "yes" : "no";
      row.insertCell().textContent = String(f.n_slices);
      const runs = row.insertCell();
      if (!f.runs.length) runs.textContent = "none";
      for (const run of f.runs) {
        const button = document.createElement("button");
        button.type = "button";
        const z = run.z_mm ? `, z ${run.z_mm[0].toFixed(1)}…${run.z_mm[1].toFixed(1)} mm` : "";
        button.textContent = `${run.first_slice}–${run.last_slice}${z}, peak ${run.peak_score.toFixed(2)} @ ${run.peak_slice}`;
        button.disabled = !inDatastore;
        button.title = inDatastore ? "open the peak slice" : "an uploaded study is not in the datastore";
        button.addEventListener("click", () => this.app.openSlice(result.image, run.peak_slice));
        runs.append(button);
      }
      return row;
    }));
    this.drawStrip();
  }

  // One column per slice of the volume (slice 0 on the left), coloured by its class and shaded by its score;
  // slices the model did not read (empty) stay dark. Above, a bar per run of each finding.
  drawStrip() {
    const strip = this.el("study-strip");
    const result = this.result;
    if (!result) return;
    const dpr = window.devicePixelRatio || 1;
    const w = strip.clientWidth, h = strip.clientHeight;
    strip.width = Math.round(w * dpr);
    strip.height = Math.round(h * dpr);
    const ctx = strip.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const n = Math.max(1, result.n_slices);
    const cw = w / n;
    const top = 18;
    for (const s of result.slices) {
      ctx.globalAlpha = 0.35 + 0.65 * Math.max(0, Math.min(1, s.score));
      ctx.fillStyle = this.app.colours[s.class] || "#888";
      ctx.fillRect(s.slice * cw, top, Math.max(1, cw - (cw > 3 ? 1 : 0)), h - top);
    }
    ctx.globalAlpha = 1;
    const findings = result.findings.filter((f) => f.runs.length);
    const rowH = Math.max(3, Math.floor((top - 2) / Math.max(1, findings.length)));
    findings.forEach((f, k) => {
      ctx.fillStyle = this.app.colours[f.class] || "#fff";
      for (const run of f.runs) {
        const x = run.first_slice * cw, width = Math.max(2, (run.last_slice - run.first_slice + 1) * cw);
        ctx.fillRect(x, 1 + k * rowH, width, rowH - 1);
        if (f.positive) {
          ctx.strokeStyle = "#ffffff";
          ctx.lineWidth = 1;
          ctx.strokeRect(x + 0.5, top + 0.5, width - 1, h - top - 1);
        }
      }
    });
    strip.dataset.runs = JSON.stringify(findings.flatMap((f) => f.runs.map((r) => [f.class, r.first_slice, r.last_slice])));
  }

  sliceAt(x) {
    const strip = this.el("study-strip");
    const n = Math.max(1, this.result.n_slices);
    return Math.min(n - 1, Math.max(0, Math.floor((x / strip.clientWidth) * n)));
  }

  stripClick(x) {
    if (!this.result) return;
    if (!this.inDatastore) { this.say("An uploaded study is not in the datastore: it cannot be opened.", true); return; }
    this.app.openSlice(this.result.image, this.sliceAt(x));
  }
}
