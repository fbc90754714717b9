// The server's REST API as the page uses it: one bearer token (kept for this tab only), one client id per page,
// and errors that carry the server's own sentence.

const TOKEN_KEY = "ssgl-token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `the server answered ${status}`);
    this.status = status;
  }
}

function randomId() {
  // crypto.randomUUID exists only on https or localhost; getRandomValues everywhere
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function detailOf(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  if (typeof body === "string" && body.trim()) return body.trim().slice(0, 300);
  return `the server answered ${status}`;
}

export const api = {
  token: sessionStorage.getItem(TOKEN_KEY),
  clientId: randomId(),
  onUnauthorised: null,

  setToken(token) {
    this.token = token || null;
    if (this.token) sessionStorage.setItem(TOKEN_KEY, this.token);
    else sessionStorage.removeItem(TOKEN_KEY);
  },

  headers(extra = {}) {
    return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : { ...extra };
  },

  async request(method, path, { json, form, raw = false, quiet401 = false } = {}) {
    const init = { method, headers: this.headers() };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (form !== undefined) {
      init.body = form;
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "the server cannot be reached; is it running?");
    }
    if (!res.ok) {
      const type = res.headers.get("content-type") || "";
      const body = type.includes("json") ? await res.json().catch(() => null) : await res.text().catch(() => "");
      const error = new ApiError(res.status, detailOf(body, res.status));
      if (res.status === 401 && !quiet401 && this.onUnauthorised) this.onUnauthorised(error);
      throw error;
    }
    if (raw) return res;
    const type = res.headers.get("content-type") || "";
    return type.includes("json") ? res.json() : res.text();
  },

  get(path, options) { return this.request("GET", path, options); },
  post(path, json, options) { return this.request("POST", path, { ...options, json }); },
  put(path, json, options) { return this.request("PUT", path, { ...options, json }); },
  del(path, options) { return this.request("DELETE", path, options); },

  // An image route as an object URL, with the response headers (the caller revokes the URL).
  async image(path) {
    const res = await this.request("GET", path, { raw: true });
    const blob = await res.blob();
    return { url: URL.createObjectURL(blob), headers: res.headers };
  },

  async download(path, fallbackName) {
    const res = await this.request("GET", path, { raw: true });
    const disposition = res.headers.get("content-disposition") || "";
    const match = /filename="?([^";]+)"?/.exec(disposition);
    const url = URL.createObjectURL(await res.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = match ? match[1] : fallbackName;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  },

  async logIn(username, password) {
    const form = new URLSearchParams({ username, password });
    const answer = await this.request("POST", "/auth/token", { form, quiet401: true });
    this.setToken(answer.access_token);
    return answer;
  },

  // The tab's reservations back to the pool when it closes (keepalive: the request outlives the page).
  releaseOnClose() {
    const url = `/activelearning/pending?client_id=${encodeURIComponent(this.clientId)}`;
    fetch(url, { method: "DELETE", headers: this.headers(), keepalive: true }).catch(() => {});
  },
};

export const q = encodeURIComponent;

export function classColours(classes) {
  const palette = ["#9aa0a6", "#ff6b6b", "#4fa3e0", "#ffd43b", "#51cf66", "#cc5de8", "#ff922b", "#22b8cf", "#f783ac"];
  const first = ["#7ee787", ...palette.slice(1)];
  return Object.fromEntries(classes.map((c, i) => [c, (i === 0 ? first : palette)[i % palette.length]]));
}
