// The page: log in when the server asks for it, learn what this user may do, and switch between the labelling,
// map, study and status views. Everything goes through the server's REST routes (api.js).

import { api, ApiError, classColours } from "./api.js";
import { Labeller } from "./label.js";
import { SliceMapView } from "./map.js";
import { StatusView } from "./status.js";
import { StudyView } from "./study.js";

const el = (id) => document.getElementById(id);

class App {
  constructor() {
    this.view = null;
    this.classes = [];
    this.colours = {};
    this.session = null;
    this.started = false;
  }

  banner(text) {
    el("banner").textContent = text || "";
    el("banner").hidden = !text;
  }

  async boot() {
    api.onUnauthorised = () => this.showLogin("Your session has ended: log in again.");
    let auth = { enabled: false };
    try {
      auth = await api.get("/auth/");
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) { this.banner(err.message); return; }
    }
    if (auth.enabled && !api.token) { this.showLogin(""); return; }
    await this.start();
  }

  showLogin(message) {
    api.setToken(null);
    this.started = false;
    el("tabs").hidden = true;
    el("who").textContent = "";
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "login-view";
    el("login-message").textContent = message;
    el("login-form").elements.username.focus();
  }

  async logIn(form) {
    el("login-message").textContent = "";
    try {
      await api.logIn(form.elements.username.value, form.elements.password.value);
    } catch (err) {
      el("login-message").textContent = err.status === 401 ? "Wrong user name or password." : err.message;
      form.elements.password.select();
      return;
    }
    form.elements.password.value = "";
    await this.start();
  }

  async start() {
    try {
      this.session = await api.get("/ui/session");
      const info = await api.get("/info/");
      this.info = info.ss_stylegan;
    } catch (err) {
      if (err.status === 401) return;  // onUnauthorised showed the form
      this.banner(err.status === 403 ? "Your account holds no role on this server: ask the administrator." : err.message);
      return;
    }
    this.classes = this.info.classes;
    this.colours = classColours(this.classes);
    el("who").textContent = this.session.auth ? `${this.session.user} · ${this.rolesText()}` : "no login on this server";
    el("tabs").hidden = false;
    if (!this.labeller) {
      this.labeller = new Labeller(this);
      this.map = new SliceMapView(this);
      this.study = new StudyView(this);
      this.status = new StatusView(this);
      this.labeller.init();
      this.map.init();
      this.study.init();
      this.status.init();
    }
    this.started = true;
    this.banner(this.info.state === "ready" ? "" : this.info.message);
    this.status.poll();
    this.show("label");
    if (this.info.state === "ready") await this.labeller.start();
    else this.labeller.say(this.info.message);
  }

  rolesText() {
    const may = this.session.may;
    return ["read", "annotate", "train"].filter((k) => may[k]).map((k) => ({ read: "reader", annotate: "annotator",
      train: "trainer" })[k]).join(", ") || "no role";
  }

  show(name) {
    this.view = name;
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `${name}-view`;
    for (const b of el("tabs").children) b.setAttribute("aria-pressed", String(b.dataset.view === name));
    if (name === "map") this.loadMap();
    if (name === "study") this.study.refreshStudies();
    if (name === "label" && this.labeller.shown) this.labeller.fit(el("slice-image"));
  }

  async loadMap() {
    if (this.map.loaded && !this.map.stale) { this.map.draw(); return; }
    try {
      await this.map.load();
      this.map.stale = false;
    } catch (err) {
      el("map-info").textContent = err.message;
    }
  }

  async openSlice(image, slice) {
    this.show("label");
    await this.labeller.open(image, slice);
  }

  // A new model was published: the map and the suggestions come from it from now on.
  async modelChanged() {
    this.map.stale = true;
    if (this.view === "map") await this.loadMap();
    const info = await api.get("/info/").catch(() => null);
    if (info) {
      this.info = info.ss_stylegan;
      this.banner(this.info.state === "ready" ? "" : this.info.message);
      if (this.info.state === "ready" && this.session.may.annotate && !this.labeller.target) this.labeller.start();
    }
  }

  key(event) {
    if (!this.started) return;
    const t = event.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
    if (this.view === "label" && this.labeller.key(event)) event.preventDefault();
  }
}

const app = new App();
window.ssgl = app;  // for the browser tests and benchmarks
el("login-form").addEventListener("submit", (event) => { event.preventDefault(); app.logIn(event.target); });
for (const b of el("tabs").children) b.addEventListener("click", () => app.show(b.dataset.view));
document.addEventListener("keydown", (event) => app.key(event));
window.addEventListener("pagehide", () => { if (app.started && app.session?.may.annotate) api.releaseOnClose(); });
window.addEventListener("resize", () => { if (app.view === "label" && app.labeller?.shown) app.labeller.fit(el("slice-image")); });
app.boot();
