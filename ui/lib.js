// Small helpers shared by the views: DOM building, API calls, formatting and
// a virtualised list that renders only the rows in view.

/**
 * Creates an element: h("a.cls", {href}, child, "text"). Children may be
 * nested arrays (e.g. a list mapped to [element, " "] pairs); they are
 * flattened, never turned into text.
 */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const state = (text, cls = "") => h("p.state" + (cls ? "." + cls : ""), {}, text);

/** An error whose message is what the API said. */
export class ApiError extends Error {}

/** Strand did not answer at all (a network error): what was shown is stale. */
export class UnreachableError extends ApiError {}

const TOKEN_KEY = "strand.token";

/** The token entered in this browser session, if any. */
function sessionToken() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
}

/** Forgets the session's token (the header's key button). */
export function forgetToken() {
  try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage blocked */ }
  document.dispatchEvent(new Event("strand-token"));
}

export const hasToken = () => !!sessionToken();

let asking = null;

/**
 * Asks for a token in a modal dialog, saying why (the API's message).
 * Resolves true once one is entered, false if the user cancels. Requests
 * refused at the same time share one dialog.
 */
function askForToken(reason) {
  asking ||= new Promise((resolve) => {
    const input = h("input", { type: "password", name: "token", autocomplete: "off", spellcheck: "false", "aria-label": "token", required: true });
    const dialog = h("dialog.token-dialog", { "aria-label": "token required" },
      h("form", { method: "dialog" },
        h("h2", {}, "This Strand needs a token"),
        h("p.muted", {}, reason),
        h("label", {}, "Token ", input),
        h("p.muted", {}, "Kept for this browser session only, never put in a URL."),
        h("menu", {},
          h("button", { type: "submit", value: "ok" }, "Use token"),
          h("button", { type: "button", value: "cancel", onclick: () => dialog.close("cancel") }, "Cancel"))));
    dialog.addEventListener("close", () => {
      const token = input.value.trim();
      const ok = dialog.returnValue === "ok" && token !== "";
      if (ok) {
        try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* storage blocked */ }
        document.dispatchEvent(new Event("strand-token"));
      }
      dialog.remove();
      asking = null;
      resolve(ok);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

/**
 * fetch() with the session's token. A 401 (no or unknown token) or 403
 * (token of another scope) asks for a token and tries again until the user
 * gives up; that last answer is returned. Network errors throw as fetch's.
 */
export async function authFetch(path, init = {}) {
  for (;;) {
    const token = sessionToken();
    const headers = new Headers(init.headers || {});
    if (token) headers.set("authorization", `Bearer ${token}`);
    const res = await fetch(path, { ...init, headers });
    if (res.status !== 401 && res.status !== 403) return res;
    let reason = `${res.status} ${res.statusText}`;
    try { reason = (await res.clone().json()).error || reason; } catch (_) { /* not JSON */ }
    if (!(await askForToken(reason))) return res;
  }
}

/** GET a JSON API; throws ApiError with the server's message on failure. */
export async function api(path, params) {
  const qs = params ? "?" + new URLSearchParams(
    Object.entries(params).filter(([, v]) => v != null && v !== "")).toString() : "";
  let res;
  try {
    res = await authFetch(path + qs, { headers: { accept: "application/json" } });
  } catch (e) {
    reportUnreachable();
    throw new UnreachableError(`cannot reach Strand: ${e.message}`);
  }
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok || (body && body.status === "error")) {
    const msg = body && (body.error || (body.errors && body.errors[0] && body.errors[0].msg));
    throw new ApiError(msg || `${res.status} ${res.statusText}`);
  }
  const warnings = answerWarnings(body);
  if (warnings.length) window.dispatchEvent(new CustomEvent("strand-warning", { detail: warnings }));
  return body;
}

/**
 * What a successful answer says is missing from it: Prometheus-style
 * `warnings` (cut lists, damaged samples or logs) and Jaeger's `errors` next
 * to data (damaged spans). The app shows them above the view.
 */
function answerWarnings(body) {
  if (!body || typeof body !== "object") return [];
  const warnings = Array.isArray(body.warnings) ? body.warnings.map(String) : [];
  if (Array.isArray(body.errors) && body.data != null) {
    warnings.push(...body.errors.map((e) => String((e && e.msg) || e)));
  }
  return warnings;
}

/**
 * Microseconds as a short duration for axes, rulers and labels: three
 * significant digits without trailing zeros, in the largest unit under a
 * thousand (999.7µs is "1ms", not "1000µs"), minutes from 60 s; zero is "0".
 */
export function fmtMicros(us) {
  if (!Number.isFinite(us)) return "–";
  if (us < 0) return `-${fmtMicros(-us)}`;
  if (us === 0) return "0";
  for (const [scale, unit] of [[1, "µs"], [1e3, "ms"], [1e6, "s"]]) {
    const v = +(us / scale).toPrecision(3);
    if (v < (unit === "s" ? 60 : 1000)) return `${v}${unit}`;
  }
  const seconds = Math.round(us / 1e6);
  return `${Math.floor(seconds / 60)}m${seconds % 60 ? `${seconds % 60}s` : ""}`;
}

/**
 * A plain number for axes and tables: no float noise (0.1 + 0.2 is "0.3"),
 * four significant digits (all of the integer part), k/M/G/T from a million.
 */
export function fmtNumber(v) {
  if (v == null || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v === 0) return "0";
  const abs = Math.abs(v);
  if (abs >= 1e6) {
    const power = Math.min(4, Math.floor(Math.log10(abs) / 3));
    return `${+(v / 1000 ** power).toPrecision(3)}${" kMGT"[power]}`;
  }
  if (abs >= 1) return String(+v.toPrecision(Math.max(4, Math.floor(Math.log10(abs)) + 1)));
  return String(+v.toPrecision(4));
}

/**
 * About `count` round ticks (1, 2 or 5 times a power of ten) from lo..hi
 * widened to whole steps, so the highest line never touches the top.
 */
export function ticks(lo, hi, count) {
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.floor(lo / step) * step; v < hi + step * 0.999; v += step) out.push(+v.toPrecision(12));
  return out;
}

/**
 * A drag across `el` with the main button: `move(from, to)` while the
 * pointer moves and `done(from, to)` once it is let go, with positions as
 * fractions of el's width (clamped to 0..1), `from` where it was pressed.
 * Each caller draws its own band and decides what a drag selects.
 */
export function dragAcross(el, { move, done }) {
  el.addEventListener("pointerdown", (down) => {
    if (down.button !== 0) return;
    down.preventDefault();
    const box = el.getBoundingClientRect();
    const at = (e) => Math.min(Math.max((e.clientX - box.left) / box.width, 0), 1);
    const from = at(down);
    const follow = (e) => move(from, at(e));
    const up = (e) => {
      window.removeEventListener("pointermove", follow);
      window.removeEventListener("pointerup", up);
      done(from, at(e));
    };
    move(from, from);
    window.addEventListener("pointermove", follow);
    window.addEventListener("pointerup", up);
  });
}

/** "1 span", "2 spans": a count with its noun. */
export function plural(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

/** Epoch ms as a 24-hour ISO-style local time: 2026-01-02 13:05:06.007. */
export function fmtTime(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** Seconds of a range name such as 15m, 1h, 7d. */
export function rangeSeconds(range) {
  const m = /^(\d+)([smhd])$/.exec(range || "");
  if (!m) return 3600;
  return +m[1] * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]];
}

export const RANGES = ["5m", "15m", "1h", "6h", "24h", "7d"];

/**
 * The time window every view shows, from its URL: an absolute `start`/`end`
 * (epoch ms, e.g. after zooming) wins over a relative `range` ending now.
 * A URL with neither may have a `window=<start>-<end>` (epoch ms) of its own:
 * a link's window (e.g. a trace's logs) that the app does not carry to
 * other views.
 * Returns { start, end, range, absolute } with times in epoch ms.
 */
export function timeRange(params) {
  const range = params.get("range") || "1h";
  const own = /^(\d+)-(\d+)$/.exec(params.get("window") || "");
  if (own && !params.get("start") && !params.get("range")) return { start: +own[1], end: +own[2], range, absolute: true };
  const end = Number(params.get("end")) || Date.now();
  const start = Number(params.get("start")) || end - rangeSeconds(range) * 1000;
  return { start, end, range, absolute: Boolean(params.get("start")) };
}

/**
 * Calls `reload` on every auto-refresh tick (the header's refresh picker
 * fires a `strand-refresh` event on window); returns the unsubscribe
 * function, which a view's cleanup must call.
 */
export function onRefresh(reload) {
  window.addEventListener("strand-refresh", reload);
  refreshSubscribers++;
  let subscribed = true;
  return () => {
    if (!subscribed) return;
    subscribed = false;
    refreshSubscribers--;
    window.removeEventListener("strand-refresh", reload);
  };
}

// How many reloaders listen, so that the app can draw a view that does not
// subscribe again instead of refreshing it in place.
let refreshSubscribers = 0;
export const hasRefreshSubscribers = () => refreshSubscribers > 0;

/** Since when (epoch ms) Strand has not answered; null while it answers. */
let unreachableSince = null;

/**
 * Tells the app that Strand did not answer at all (a network error, not an
 * HTTP error): it shows the "unreachable" banner and polls until Strand is
 * back (`reportReachable`), then draws the view again.
 */
export function reportUnreachable() {
  unreachableSince ??= Date.now();
  window.dispatchEvent(new Event("strand-unreachable"));
}

/** Strand answers again: stale markers go (the app then redraws the view). */
export function reportReachable() {
  unreachableSince = null;
  window.dispatchEvent(new Event("strand-reachable"));
}

/** "since HH:MM:SS" of the current outage, for the banner and stale markers. */
export const unreachableText = () => `Strand unreachable since ${fmtTime(unreachableSince ?? Date.now()).slice(11, 19)}`;

/**
 * Marks what a view keeps on screen while Strand is unreachable: `mark`
 * gets a function making stale markers (one per place to mark) when Strand
 * stops answering (at once if it is already down), and null when it answers
 * again. Returns the unsubscribe function, for the view's cleanup.
 */
export function onStale(mark) {
  const down = () => mark(() => h("p.stale", { role: "status" }, `stale — ${unreachableText()}`));
  const up = () => mark(null);
  window.addEventListener("strand-unreachable", down);
  window.addEventListener("strand-reachable", up);
  if (unreachableSince != null) down();
  return () => {
    window.removeEventListener("strand-unreachable", down);
    window.removeEventListener("strand-reachable", up);
  };
}

/** Epoch ms as the custom range's fields show it: local 2026-01-02 13:05:06. */
export const toLocalInput = (ms) => fmtTime(ms).slice(0, 19);

/** A custom range field's local time (a space or T between date and time) as epoch ms; NaN if it is none. */
export const fromLocalInput = (text) => new Date(text.trim().replace(" ", "T")).getTime();

export function select(name, options, value, attrs = {}) {
  return h("select", { name, ...attrs },
    options.map((o) => h("option", { value: o, selected: o === value }, o)));
}

const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2",
  "#edc948", "#ff9da7", "#9c755f", "#e15759", "#8cd17d", "#499894", "#d37295"];

/**
 * Colours for services: by position in the sorted list of all known
 * services (from /api/services), so a service keeps its colour across views
 * and services rarely share one.
 */
export function serviceColors(known, inTrace) {
  const all = [...new Set([...known, ...inTrace])].sort();
  return new Map(all.map((s, i) => [s, PALETTE[i % PALETTE.length]]));
}

/** A stable colour per name (services, series). */
export function colorFor(name, index) {
  if (index != null) return PALETTE[index % PALETTE.length];
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

/**
 * A virtualised list: a scroll container of fixed-height rows where only
 * the rows in view (plus a margin) exist in the DOM.
 * `render(item, index)` returns the row element.
 */
export class VirtualList {
  constructor(rowHeight, render, cls = "vlist") {
    this.rowHeight = rowHeight;
    this.render = render;
    this.items = [];
    this.el = h("div." + cls, { role: "list" });
    this.spacer = h("div.vlist-spacer");
    this.el.append(this.spacer);
    this.drawn = new Map();
    this.el.addEventListener("scroll", () => this.schedule());
    this.resize = new ResizeObserver(() => this.schedule());
    this.resize.observe(this.el);
  }

  setItems(items) {
    this.items = items;
    this.spacer.style.height = `${items.length * this.rowHeight}px`;
    for (const row of this.drawn.values()) row.remove();
    this.drawn.clear();
    this.draw();
  }

  /** Redraws everything (e.g. after a selection change). */
  refresh() { this.setItems(this.items); }

  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = 0; this.draw(); });
  }

  draw() {
    const height = this.el.clientHeight || 600;
    const first = Math.max(0, Math.floor(this.el.scrollTop / this.rowHeight) - 10);
    const last = Math.min(this.items.length, Math.ceil((this.el.scrollTop + height) / this.rowHeight) + 10);
    for (const [i, row] of this.drawn) {
      if (i < first || i >= last) { row.remove(); this.drawn.delete(i); }
    }
    for (let i = first; i < last; i++) {
      if (this.drawn.has(i)) continue;
      const row = this.render(this.items[i], i);
      row.style.top = `${i * this.rowHeight}px`;
      row.style.height = `${this.rowHeight}px`;
      row.classList.add("vrow");
      this.el.append(row);
      this.drawn.set(i, row);
    }
  }

  scrollTo(index) {
    const top = index * this.rowHeight;
    if (top < this.el.scrollTop || top > this.el.scrollTop + this.el.clientHeight - this.rowHeight) {
      this.el.scrollTop = Math.max(0, top - this.el.clientHeight / 3);
    }
  }
}

// A view with unsaved edits guards leaving it: `guardLeave(check)` with
// `check(target)` (the hash about to be shown, or null when the page itself
// unloads) returning a warning, or "" when nothing would be lost. The app
// asks before it routes and before the page unloads. Returns the release
// function, which the view's cleanup calls.
let leaveGuard = null;
export function guardLeave(check) {
  leaveGuard = check;
  return () => { if (leaveGuard === check) leaveGuard = null; };
}
export const leaveWarning = (target) => (leaveGuard ? leaveGuard(target) : "");
