// The labelling view: the suggested slice at native resolution, its neighbours on the wheel and arrow keys, a
// button and a number key per class, undo, skip, and why the slice was suggested. The next suggestion is asked
// for while the clinician looks at this one, so it is on screen the moment a label is given.

import { api, ApiError, q } from "./api.js";

const BATCH = 3;
const PRESET_KEYS = { l: "lung", a: "abdomen", b: "brain", o: "bone", w: "auto" };

export class Labeller {
  constructor(app) {
    this.app = app;
    this.el = (id) => document.getElementById(id);
    this.target = null;      // the slice asked of the clinician: a suggestion, or a slice opened from map/study
    this.queue = [];         // the next suggestion, already reserved
    this.resumed = [];       // suggestions put aside by an undo or an opened slice, shown first
    this.skipped = new Set();
    this.refilling = null;
    this.shown = null;       // {image, slice, nSlices}
    this.window = "auto";
    this.history = [];       // labels given here, newest last: {image, slice, previous}
    this.studyLabels = new Map();   // slice -> class, of the study shown
    this.studyOfLabels = null;
    this.imageUrl = null;
    this.loadToken = 0;
  }

  init() {
    const classes = this.app.classes;
    const box = this.el("class-buttons");
    box.replaceChildren(...classes.map((name, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.class = name;
      button.style.setProperty("--swatch", this.app.colours[name]);
      button.textContent = `${i < 9 ? i + 1 : "·"}  ${name}`;
      button.addEventListener("click", () => this.label(name));
      return button;
    }));
    this.el("skip-button").addEventListener("click", () => this.skip());
    this.el("undo-button").addEventListener("click", () => this.undo());
    this.el("back-button").addEventListener("click", () => this.backToTarget());
    this.el("viewer").addEventListener("wheel", (event) => {
      event.preventDefault();
      this.step(event.deltaY > 0 ? -1 : 1);  // down the rail: towards the feet
    }, { passive: false });
    const select = this.el("window-select");
    const custom = this.el("window-custom");
    select.addEventListener("change", () => {
      custom.hidden = select.value !== "custom";
      if (select.value === "custom") custom.focus();
      else this.setWindow(select.value);
    });
    custom.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        this.setWindow(custom.value.trim());
        custom.blur();
      }
      event.stopPropagation();
    });
    const pipelines = this.app.info.pipelines || {};
    const strategies = pipelines.strategies || { fps: { description: "farthest point sampling in the map" } };
    this.strategy = pipelines.strategy || "fps";
    const chooser = this.el("strategy-select");
    chooser.replaceChildren(...Object.entries(strategies).map(([name, s]) => {
      const option = new Option(`${name}${name === pipelines.strategy ? " (default)" : ""}`, name);
      option.title = s.description;
      return option;
    }));
    chooser.value = this.strategy;
    chooser.addEventListener("change", () => {
      this.strategy = chooser.value;
      this.queue = [];   // the next suggestion comes from the new strategy
      this.say(`Suggestions now by ${this.strategy}: ${strategies[this.strategy].description}.`);
      if (this.target && this.target.suggested) { this.target = null; this.next(); }
    });
    this.refreshButtons();
  }

  get mayLabel() { return this.app.session.may.annotate; }

  refreshButtons() {
    const may = this.mayLabel && this.shown !== null;
    for (const button of this.el("class-buttons").children) button.disabled = !may;
    this.el("skip-button").disabled = !this.mayLabel || !this.target || !this.target.suggested;
    this.el("undo-button").disabled = !this.mayLabel || this.history.length === 0;
    this.el("back-button").disabled = !this.target || !this.shown ||
      (this.shown.image === this.target.id && this.shown.slice === this.target.slice);
  }

  say(text, error = false) {
    const box = this.el("label-message");
    box.textContent = text;
    box.classList.toggle("error", error);
  }

  // -- suggestions ---------------------------------------------------------------------------------------
  // The server keeps one batch of reservations per client id, replaced by each request. A batch of BATCH picks
  // is asked for: the first is shown, the next waits; once it is shown a new batch is asked for in the
  // background (FPS picks the slice on screen again first, so it stays reserved) and its next pick waits.
  key_(pick) { return `${pick.id}\u0000${pick.slice}`; }

  async fetchBatch() {
    const answer = await api.post(`/activelearning/${q(this.strategy)}`, { client_id: api.clientId, count: BATCH });
    const picks = (answer.suggestions || []).map((p) => ({ ...p, suggested: true }))
      .filter((p) => !this.skipped.has(this.key_(p)));
    return { picks, message: answer.message || "" };
  }

  refill(current) {
    this.refilling = this.fetchBatch().then((batch) => {
      this.queue = batch.picks.filter((p) => !current || this.key_(p) !== this.key_(current)).slice(0, 1);
    }).catch(() => { this.queue = []; }).finally(() => { this.refilling = null; });
    return this.refilling;
  }

  async start() {
    if (!this.mayLabel) {
      this.say("Your account may look but not label (the annotator role is needed). Open slices from the map " +
        "or a study.");
      this.refreshButtons();
      return;
    }
    if (this.target === null) await this.next();
  }

  async next() {
    let target = this.resumed.shift();
    if (!target) {
      if (this.refilling) await this.refilling;
      target = this.queue.shift();
      if (target) this.refill(target);
    }
    if (!target) {
      let batch;
      try {
        batch = await this.fetchBatch();
      } catch (err) {
        this.target = null;
        this.say(err.message, true);
        this.refreshButtons();
        return;
      }
      if (!batch.picks.length) {
        this.target = null;
        this.say(batch.message || "Nothing left to suggest now.");
        this.el("why-text").textContent = "";
        this.refreshButtons();
        return;
      }
      [target, ...this.queue] = batch.picks;
      this.queue = this.queue.slice(0, 1);
    }
    this.target = target;
    this.app.map.setTarget(target);
    await this.show(target.id, target.slice);
  }

  // A slice opened from the map or a study: shown and asked of the clinician, the suggestion kept for later.
  async open(image, slice) {
    if (this.target && this.target.suggested) this.resumed.unshift(this.target);
    this.target = { id: image, slice, suggested: false, reason: "opened by you", distance: null };
    await this.show(image, slice);
  }

  async skip() {
    if (!this.target || !this.target.suggested) return;
    this.skipped.add(this.key_(this.target));
    this.say(`Skipped slice ${this.target.slice} of ${this.target.id}.`);
    await this.next();
  }

  backToTarget() {
    if (this.target) this.show(this.target.id, this.target.slice);
  }

  // -- showing a slice -----------------------------------------------------------------------------------
  async show(image, slice) {
    const token = ++this.loadToken;
    const path = `/slicemap/view?image=${q(image)}&slice=${slice}&window=${q(this.window)}`;
    let loaded;
    try {
      loaded = await api.image(path);
    } catch (err) {
      if (token === this.loadToken) this.say(err.message, true);
      return;
    }
    if (token !== this.loadToken) { URL.revokeObjectURL(loaded.url); return; }
    const img = this.el("slice-image");
    await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = loaded.url; });
    if (this.imageUrl) URL.revokeObjectURL(this.imageUrl);
    this.imageUrl = loaded.url;
    this.fit(img);
    this.shown = { image, slice, nSlices: Number(loaded.headers.get("X-Slice-Count")) || 1,
                   window: loaded.headers.get("X-Window") };
    img.dataset.image = image;
    img.dataset.slice = String(slice);
    if (this.studyOfLabels !== image) await this.loadStudyLabels(image);
    this.describe();
  }

  // Native size when it fits; a small slice is enlarged by a whole factor; a large one shrinks to fit.
  fit(img) {
    const frame = this.el("viewer");
    const availW = frame.clientWidth - 40, availH = frame.clientHeight - 40;
    const w = img.naturalWidth || 1, h = img.naturalHeight || 1;
    let scale = Math.min(availW / w, availH / h);
    scale = scale >= 1 ? Math.max(1, Math.floor(scale)) : scale;
    img.style.width = `${Math.round(w * scale)}px`;
    img.style.height = `${Math.round(h * scale)}px`;
    img.classList.toggle("smooth", scale < 1);
  }

  async loadStudyLabels(image) {
    this.studyLabels = new Map();
    this.studyOfLabels = image;
    try {
      const answer = await api.get(`/slicelabels/?image=${q(image)}`);
      for (const record of answer.labels) this.studyLabels.set(record.slice, record.class);
    } catch (err) {
      this.say(err.message, true);
    }
  }

  describe() {
    const { image, slice, nSlices } = this.shown;
    const onTarget = this.target && this.target.id === image && this.target.slice === slice;
    const given = this.studyLabels.get(slice);
    this.el("slice-caption").textContent =
      `${image} · slice ${slice} of 0–${nSlices - 1}${onTarget && this.target.suggested ? " · suggested" : ""}` +
      ` · window ${this.shown.window || ""}`;
    this.el("label-heading").textContent = !this.mayLabel ? `Slice ${slice}` : onTarget ? (this.target.suggested ? "Label the suggested slice"
      : "Label this slice") : `Slice ${slice} (a neighbour)`;
    this.el("current-label").textContent = given ? `Labelled: ${given}` : "Not labelled yet.";
    for (const button of this.el("class-buttons").children) {
      button.classList.toggle("chosen", button.dataset.class === given);
    }
    const t = this.target;
    const distance = t && t.distance != null && !/distance/.test(t.reason) ? ` (distance ${Number(t.distance).toFixed(3)})` : "";
    const why = t ? (t.suggested ? `${t.reason}${distance}; strategy ${t.strategy}.` : `${t.reason}.`) : "";
    this.el("why-text").textContent = why;
    this.drawRail();
    this.refreshButtons();
  }

  drawRail() {
    const rail = this.el("rail-marks");
    const { slice, nSlices, image } = this.shown;
    const at = (s) => `${nSlices > 1 ? (100 * (nSlices - 1 - s)) / (nSlices - 1) : 50}%`;  // superior at the top
    const marks = [];
    for (const s of this.studyLabels.keys()) marks.push(["labelled", s]);
    if (this.target && this.target.id === image) marks.push(["suggested", this.target.slice]);
    marks.push(["here", slice]);
    rail.replaceChildren(...marks.map(([kind, s]) => {
      const mark = document.createElement("div");
      mark.className = kind;
      mark.style.top = `calc(${at(s)} - 2px)`;
      mark.title = `${kind} slice ${s}`;
      return mark;
    }));
  }

  step(delta) {
    if (!this.shown) return;
    const slice = Math.min(this.shown.nSlices - 1, Math.max(0, this.shown.slice + delta));
    if (slice !== this.shown.slice) this.show(this.shown.image, slice);
  }

  setWindow(value) {
    this.window = value || "auto";
    const select = this.el("window-select");
    if ([...select.options].some((o) => o.value === this.window)) {
      select.value = this.window;
      this.el("window-custom").hidden = true;
    }
    if (this.shown) this.show(this.shown.image, this.shown.slice);
  }

  // -- labels --------------------------------------------------------------------------------------------
  async label(name) {
    if (!this.mayLabel || !this.shown) return;
    const { image, slice } = this.shown;
    const previous = this.studyLabels.get(slice) ?? null;
    try {
      await api.put("/slicelabels/", { image, slice, class: name });
    } catch (err) {
      this.say(err instanceof ApiError && err.status === 403
        ? "Your account may not label (the annotator role is needed)." : err.message, true);
      return;
    }
    this.history.push({ image, slice, previous });
    this.studyLabels.set(slice, name);
    this.app.map.labelled(image, slice, name);
    this.say(previous && previous !== name ? `Relabelled slice ${slice}: ${previous} → ${name}.`
      : `Labelled slice ${slice} of ${image}: ${name}.`);
    const onTarget = this.target && this.target.id === image && this.target.slice === slice;
    if (onTarget) await this.next();
    else this.describe();
  }

  async undo() {
    const last = this.history.pop();
    if (!last) return;
    const path = `/slicelabels/?image=${q(last.image)}&slice=${last.slice}`;
    try {
      if (last.previous === null) await api.del(path);
      else await api.put("/slicelabels/", { image: last.image, slice: last.slice, class: last.previous });
    } catch (err) {
      this.history.push(last);
      this.say(err.message, true);
      return;
    }
    if (this.target && this.target.suggested) this.resumed.unshift(this.target);
    this.target = { id: last.image, slice: last.slice, suggested: false,
                    reason: "your last label here was undone: label it again" };
    this.app.map.labelled(last.image, last.slice, last.previous);
    if (this.studyOfLabels === last.image) {
      if (last.previous === null) this.studyLabels.delete(last.slice);
      else this.studyLabels.set(last.slice, last.previous);
    }
    this.say(`Undone: slice ${last.slice} of ${last.image} is ${last.previous ?? "unlabelled"} again.`);
    await this.show(last.image, last.slice);
  }

  // -- keyboard ------------------------------------------------------------------------------------------
  key(event) {
    const k = event.key;
    if (/^[1-9]$/.test(k) && !event.ctrlKey && !event.metaKey && !event.altKey) {
      const name = this.app.classes[Number(k) - 1];
      if (name) { this.label(name); return true; }
      return false;
    }
    if ((k === "z" || k === "Z") && (event.ctrlKey || event.metaKey)) { this.undo(); return true; }
    if (event.ctrlKey || event.metaKey || event.altKey) return false;
    const lower = k.length === 1 ? k.toLowerCase() : k;
    switch (lower) {
      case "ArrowUp": this.step(1); return true;
      case "ArrowDown": this.step(-1); return true;
      case "PageUp": this.step(5); return true;
      case "PageDown": this.step(-5); return true;
      case "Home": this.backToTarget(); return true;
      case "s": case "n": this.skip(); return true;
      case "u": this.undo(); return true;
      case "c": this.el("window-select").value = "custom"; this.el("window-custom").hidden = false;
        this.el("window-custom").focus(); return true;
      default:
        if (PRESET_KEYS[lower]) { this.setWindow(PRESET_KEYS[lower]); return true; }
        return false;
    }
  }
}
