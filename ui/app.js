// Strand's web UI: a hash router over the views, and the global controls in
// the header (time range, auto refresh, theme, keyboard shortcuts, the
// "unreachable" banner). Every view's state lives in its URL
// (#/traces?service=order, #/trace/<id>, #/logs?q=...&range=6h&refresh=15s),
// so any screen can be shared or reloaded.

import { h, state, RANGES, timeRange, toLocalInput, fromLocalInput, hasRefreshSubscribers, hasToken, forgetToken,
  reportUnreachable, reportReachable, unreachableText, leaveWarning, fmtTime, api, plural } from "./lib.js";
import * as traces from "./traces.js";
import * as trace from "./trace.js";
import * as logs from "./logs.js";
import * as metrics from "./metrics.js";
import * as dashboards from "./dashboards.js";
import * as map from "./map.js";
import * as alerts from "./alerts.js";

const VIEWS = { traces, trace, logs, metrics, dashboards, dashboard: dashboards, map, alerts };
/** Views that show one thing rather than a time window: no time picker. */
const TIMELESS = new Set(["trace"]);
/** The URL params of the time window; `start`/`end` win over `range`. */
const TIME_KEYS = ["range", "start", "end"];
const REFRESHES = { off: 0, "5s": 5e3, "15s": 15e3, "30s": 30e3, "1m": 60e3 };
/** The nav entry of views that have none of their own. */
const NAV_OF = { trace: "traces", dashboard: "dashboards" };
/** `g` then a letter: the view it goes to. */
const GO_KEYS = { t: "traces", l: "logs", m: "metrics", d: "dashboards", s: "map", a: "alerts" };

const view = document.getElementById("view");
const picker = document.getElementById("time-picker");
const refreshPicker = document.getElementById("refresh-picker");
const banner = document.getElementById("unreachable");
const dataWarning = document.getElementById("data-warning");
let cleanup = null;
let generation = 0;
/**
 * The time window and auto refresh last seen in a URL. They are global: a
 * URL without them (a nav link, a link a view builds) gets them added, so
 * they follow the user from view to view.
 */
const carried = new URLSearchParams();

/** Parses "#/trace/abc?x=1" into { name: "trace", arg: "abc", params }. */
export function parseHash(hash) {
  const [path, query = ""] = hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  return { name: name || "traces", arg: decodeURIComponent(rest.join("/")), params: new URLSearchParams(query) };
}

/** Sets the URL for a view with parameters (empty ones are left out). */
export function go(name, params = {}) {
  const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== ""));
  navigate(`#/${name}${qs.toString() ? "?" + qs : ""}`);
}

function navigate(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

function hashOf(name, arg, params) {
  const qs = params.toString();
  return `#/${name}${arg ? "/" + encodeURIComponent(arg) : ""}${qs ? "?" + qs : ""}`;
}

/**
 * Remembers the URL's time window and refresh, or adds the remembered ones
 * when the URL has none; returns whether `params` changed.
 */
function carry(name, params) {
  let changed = false;
  if (!TIMELESS.has(name)) {
    if (TIME_KEYS.some((k) => params.has(k))) {
      for (const k of TIME_KEYS) if (params.has(k)) carried.set(k, params.get(k)); else carried.delete(k);
    } else if (!params.has("window")) { // a link's own window (see timeRange) is neither carried nor remembered
      for (const k of TIME_KEYS) if (carried.has(k)) { params.set(k, carried.get(k)); changed = true; }
    }
  }
  if (params.has("refresh")) carried.set("refresh", params.get("refresh"));
  else if (carried.has("refresh")) { params.set("refresh", carried.get("refresh")); changed = true; }
  return changed;
}

/** A view's URL with the carried time window and refresh. */
function linkTo(name) {
  const params = new URLSearchParams();
  carry(name, params);
  return hashOf(name, "", params);
}

/** Set while the user confirmed leaving unsaved edits. */
let leaving = false;

/**
 * Draws the view of the URL. `previous` is the hash to go back to if the
 * view on screen has unsaved edits and the user stays (a hash change's old
 * URL: it has what the view wrote into the URL itself).
 */
async function route(previous = location.hash) {
  const { name, arg, params } = parseHash(location.hash);
  const warning = leaving ? "" : leaveWarning({ name, arg, params });
  leaving = false;
  if (warning) {
    const target = location.hash;
    history.replaceState(null, "", previous);
    confirmLeave(warning, target);
    return;
  }
  if (carry(name, params)) history.replaceState(null, "", hashOf(name, arg, params));
  syncHeader(name, params);
  countFiring();
  const module = VIEWS[name];
  if (cleanup) { try { cleanup(); } catch (_) { /* view already gone */ } cleanup = null; }
  const mine = ++generation;
  dataWarning.hidden = true;
  dataWarning.replaceChildren();
  view.replaceChildren();
  view.dataset.view = name;
  if (!module) {
    const known = [...document.querySelectorAll("nav [data-nav]")].map((a) => a.firstChild.textContent.trim()).join(", ");
    view.append(state(`No view called "${name}". Try one of: ${known}.`, "error"));
    return;
  }
  try {
    // A view checks `current()` after each await so a late answer never
    // draws over a newer view.
    cleanup = await module.render(view, { arg, params, current: () => mine === generation, go });
  } catch (e) {
    if (mine === generation) view.replaceChildren(state(`Something went wrong: ${e.message}`, "error"));
  }
}

/**
 * Asks whether to leave a view with unsaved edits (a dialog, not confirm(),
 * so it looks like the rest and can be tested); Leave goes to `target`.
 */
function confirmLeave(warning, target) {
  if (document.querySelector(".leave-dialog")) return;
  const close = () => { dialog.close(); dialog.remove(); };
  const dialog = h("dialog.leave-dialog", { "aria-label": "unsaved changes" },
    h("p", {}, warning),
    h("menu", {},
      h("button.stay", { type: "button", onclick: close }, "Stay"),
      h("button.leave.danger", { type: "button", onclick: () => { close(); leaving = true; navigate(target); } }, "Leave without saving")));
  dialog.addEventListener("cancel", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}
// Closing or reloading the page with unsaved edits asks the browser's question.
window.addEventListener("beforeunload", (e) => {
  if (leaveWarning(null)) { e.preventDefault(); e.returnValue = ""; }
});

/** Shows the URL's window and refresh in the header; links carry them. */
function syncHeader(name, params) {
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === name || a.dataset.nav === NAV_OF[name]);
    a.href = linkTo(a.dataset.nav);
  }
  const timeless = TIMELESS.has(name);
  picker.classList.toggle("timeless", timeless);
  picker.title = timeless ? "This view shows no time window" : "";
  for (const el of picker.elements) el.disabled = timeless;
  // A view without a window shows the one the others will get.
  const win = timeRange(timeless ? carried : params);
  const range = picker.range;
  // A range from a link that is not in the list gets an option of its own;
  // one that is not a range at all means the default hour (see rangeSeconds).
  const relative = /^\d+[smhd]$/.test(win.range) ? win.range : "1h";
  if (!win.absolute && ![...range.options].some((o) => o.value === relative)) {
    range.add(h("option", { value: relative }, `Last ${relative}`), customOption);
  }
  // An absolute window is named in the picker itself, so the header keeps
  // one row; "Edit range…" opens the fields under it.
  customOption.textContent = win.absolute ? windowLabel(win) : "Custom…";
  customOption.title = win.absolute ? `${fmtTime(win.start)} – ${fmtTime(win.end)}` : "";
  editOption.hidden = !win.absolute;
  range.value = win.absolute ? "custom" : relative;
  shownRange = range.value;
  closeCustom();
  const refresh = Object.hasOwn(REFRESHES, params.get("refresh")) ? params.get("refresh") : "off";
  refreshPicker.value = refresh;
  startTimer(REFRESHES[refresh]);
}

/** The picker's value for the window on screen, restored when editing is given up. */
let shownRange = "";

/** "04:34:45 – 04:44:30" for a window of today, with dates otherwise. */
function windowLabel(win) {
  const [from, to] = [fmtTime(win.start).slice(0, 19), fmtTime(win.end).slice(0, 19)];
  const today = fmtTime(Date.now()).slice(0, 10);
  const sameDay = from.slice(0, 10) === to.slice(0, 10);
  return `${from.startsWith(today) && sameDay ? from.slice(11) : from} – ${sameDay ? to.slice(11) : to}`;
}

/** Opens the start/end fields under the picker, filled with `win`. */
function openCustom(win) {
  customRange.hidden = false;
  picker.start.value = toLocalInput(win.start);
  picker.end.value = toLocalInput(win.end);
  picker.start.focus();
}

/** Closes the fields; the picker shows the window on screen again. */
function closeCustom() {
  if (customRange.hidden) return;
  customRange.hidden = true;
  picker.end.setCustomValidity("");
  picker.range.value = shownRange;
}

/**
 * Writes the header's params into the current view's URL, keeping the
 * view's own, and routes; `null` removes a param.
 */
function setGlobal(changes) {
  const { name, arg, params } = parseHash(location.hash);
  // A window picked in the header replaces a link's own.
  if (TIME_KEYS.some((k) => k in changes)) params.delete("window");
  for (const [k, v] of Object.entries(changes)) {
    if (v == null) { params.delete(k); carried.delete(k); } else { params.set(k, v); carried.set(k, v); }
  }
  navigate(hashOf(name, arg, params));
}

const customRange = picker.querySelector(".custom-range");
const customOption = h("option", { value: "custom" }, "Custom…");
const editOption = h("option", { value: "edit", hidden: true }, "Edit range…");
for (const r of RANGES) picker.range.add(h("option", { value: r }, `Last ${r}`));
picker.range.add(customOption);
picker.range.add(editOption);
picker.range.addEventListener("change", () => {
  if (picker.range.value === "custom" || picker.range.value === "edit") {
    // Start from the window on screen; the URL changes on Apply.
    picker.range.value = "custom";
    openCustom(timeRange(parseHash(location.hash).params));
  } else {
    setGlobal({ range: picker.range.value, start: null, end: null });
  }
});
picker.addEventListener("submit", (e) => {
  e.preventDefault();
  const start = fromLocalInput(picker.start.value);
  const end = fromLocalInput(picker.end.value);
  if (!(start < end)) {
    picker.end.setCustomValidity("the end must be after the start");
    picker.end.reportValidity();
    return;
  }
  setGlobal({ range: null, start, end });
});
// The refusal is about the pair: a change to either field lifts it (a
// field still marked invalid would block every later submit), and the
// submit above checks the pair again.
for (const field of [picker.start, picker.end]) field.addEventListener("input", () => picker.end.setCustomValidity(""));

// A click outside the picker gives up editing the range.
document.addEventListener("pointerdown", (e) => { if (!picker.contains(e.target)) closeCustom(); });

// Auto refresh: a `strand-refresh` event every interval while the page is
// visible (views reload with onRefresh; a relative window slides).
for (const r of Object.keys(REFRESHES)) refreshPicker.add(h("option", { value: r }, r === "off" ? "auto: off" : `auto: ${r}`));
refreshPicker.addEventListener("change", () => setGlobal({ refresh: refreshPicker.value === "off" ? null : refreshPicker.value }));
let timer = 0;
let timerEvery = 0;
function startTimer(every) {
  if (every === timerEvery) return;
  clearInterval(timer);
  timerEvery = every;
  timer = every ? setInterval(() => { if (!document.hidden && banner.hidden) refresh(true); }, every) : 0;
}

/**
 * Reloads the view: in place if it listens to `strand-refresh`, otherwise
 * (only when asked by the user) by drawing it again.
 */
function refresh(auto) {
  countFiring();
  if (hasRefreshSubscribers()) window.dispatchEvent(new Event("strand-refresh"));
  else if (!auto) route();
}
document.getElementById("refresh-now").addEventListener("click", () => refresh(false));

// The Alerts nav entry's badge: how many alerts fire, asked once per route
// and refresh tick (one /api/v1/alerts); hidden when none does or the
// answer does not come.
const firingBadge = document.querySelector("[data-nav=alerts] .nav-badge");
let counting = false;
async function countFiring() {
  if (counting) return;
  counting = true;
  try {
    const firing = ((await api("/api/v1/alerts")).data?.alerts || []).filter((a) => a.state === "firing").length;
    firingBadge.textContent = firing;
    firingBadge.title = plural(firing, "firing alert");
    firingBadge.parentElement.setAttribute("aria-label", firing ? `Alerts, ${firingBadge.title}` : "Alerts");
    firingBadge.hidden = !firing;
  } catch (_) {
    firingBadge.hidden = true;
  } finally {
    counting = false;
  }
}

// Strand unreachable: a banner, and /healthz polled until it answers; then
// the view is drawn again, since what it shows failed to load or is stale.
let probing = false;
window.addEventListener("strand-unreachable", async () => {
  if (probing) return;
  probing = true;
  banner.textContent = `${unreachableText()} — retrying…`;
  banner.hidden = false;
  for (;;) {
    await new Promise((done) => setTimeout(done, 3000));
    try {
      if ((await fetch("/healthz", { cache: "no-store" })).ok) break;
    } catch (_) { /* still down */ }
  }
  probing = false;
  banner.hidden = true;
  reportReachable();
  route();
});

// A view that does not refresh makes no requests: /healthz is asked every
// 10 s while the page is visible, so that the banner comes all the same.
setInterval(async () => {
  if (document.hidden || probing) return;
  try { await fetch("/healthz", { cache: "no-store" }); } catch (_) { reportUnreachable(); }
}, 10_000);

// An answer that says part of it is missing (a list cut at a limit,
// damaged data skipped): shown above the view until the next one is drawn.
window.addEventListener("strand-warning", (event) => {
  const shown = new Set([...dataWarning.children].map((line) => line.textContent));
  for (const warning of event.detail) {
    const text = `⚠ ${warning}`;
    if (!shown.has(text)) dataWarning.append(h("div", {}, text));
  }
  dataWarning.hidden = false;
});

// Keyboard shortcuts; never while typing into a field.
const SHORTCUTS = [
  ["/", "Focus the search or query box"],
  ["g t", "Go to traces"], ["g l", "Go to logs"], ["g m", "Go to metrics"],
  ["g d", "Go to dashboards"], ["g s", "Go to the service map"], ["g a", "Go to alerts"],
  ["r", "Refresh"], ["t", "Switch between light and dark"],
  ["?", "Show this help"], ["Esc", "Close this help, leave a field"],
  ["j k", "In a trace: next or previous span (also ↓ ↑)"],
  ["← →", "In a trace: collapse or expand the span, or go to its parent or first child"],
  ["Enter", "In a trace: open or close the span's detail"],
];
const help = h("div.overlay", { id: "help", role: "dialog", "aria-label": "keyboard shortcuts", hidden: true,
  onclick: (e) => { if (e.target === help) help.hidden = true; } },
h("div.overlay-box", {},
  h("div.detail-head", {}, h("h2", {}, "Keyboard shortcuts"),
    h("button.close", { type: "button", "aria-label": "close", onclick: () => { help.hidden = true; } }, "×")),
  h("table.kv.shortcuts", {}, SHORTCUTS.map(([keys, what]) =>
    h("tr", {}, h("th", {}, keys.split(" ").map((k) => h("kbd", {}, k))), h("td", {}, what))))));
document.body.append(help);
document.getElementById("help-toggle").addEventListener("click", () => { help.hidden = !help.hidden; });

let pendingG = 0;
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") {
    help.hidden = true;
    closeCustom();
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
  if (e.target.closest && e.target.closest("input, textarea, select, [contenteditable]")) return;
  if (pendingG && Date.now() - pendingG < 1500) {
    pendingG = 0;
    if (GO_KEYS[e.key]) { e.preventDefault(); navigate(linkTo(GO_KEYS[e.key])); }
    return;
  }
  pendingG = 0;
  const action = {
    "/": () => {
      const box = view.querySelector("form .query") ||
        view.querySelector("form input:not([type=hidden]):not([type=checkbox]):not([type=radio]), form textarea");
      if (box) { box.focus(); box.select?.(); }
    },
    g: () => { pendingG = Date.now(); },
    t: toggleTheme,
    r: () => refresh(false),
    "?": () => { help.hidden = !help.hidden; },
  }[e.key];
  if (action) { e.preventDefault(); action(); }
});

function toggleTheme() {
  const root = document.documentElement;
  const dark = root.dataset.theme ? root.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  try { localStorage.setItem("strand.theme", root.dataset.theme); } catch (_) { /* private mode */ }
  window.dispatchEvent(new Event("strand-theme"));
}

document.getElementById("theme-toggle").addEventListener("click", toggleTheme);

// The header's trace-id box: Enter opens the trace (an id shorter than 32
// hex digits is a 64-bit one, zero-padded as Jaeger does); a malformed id
// says why and stays in the box.
const lookup = document.getElementById("trace-lookup");
const lookupError = lookup.querySelector(".lookup-error");
function lookupMessage(message) {
  lookup.trace.setCustomValidity(message);
  lookupError.textContent = message;
  lookupError.hidden = !message;
}
lookup.addEventListener("submit", (e) => {
  e.preventDefault();
  const id = lookup.trace.value.trim().toLowerCase();
  if (!/^[0-9a-f]{1,32}$/.test(id)) {
    lookupMessage("a trace id is 1 to 32 hex digits (0-9, a-f)");
    return;
  }
  lookupMessage("");
  lookup.trace.value = "";
  lookup.trace.blur();
  navigate(`#/trace/${id.padStart(32, "0")}`);
});
lookup.trace.addEventListener("input", () => lookupMessage(""));

// The key shows while a token is kept for this session; it forgets it.
const tokenButton = document.getElementById("token-forget");
const showTokenButton = () => { tokenButton.hidden = !hasToken(); };
document.addEventListener("strand-token", showTokenButton);
tokenButton.addEventListener("click", () => { forgetToken(); route(); });
showTokenButton();
window.addEventListener("hashchange", (e) => route(new URL(e.oldURL).hash));
if (!location.hash) history.replaceState(null, "", "#/traces");
route();
