// Strand's web UI: a hash router over four views. Every view's state lives in
// its URL (#/traces?service=order, #/trace/<id>, #/logs?q=..., #/metrics?query=...),
// so any screen can be shared or reloaded.

import { state } from "./lib.js";
import * as traces from "./traces.js";
import * as trace from "./trace.js";
import * as logs from "./logs.js";
import * as metrics from "./metrics.js";

const VIEWS = { traces, trace, logs, metrics };
const view = document.getElementById("view");
let cleanup = null;
let generation = 0;

/** Parses "#/trace/abc?x=1" into { name: "trace", arg: "abc", params }. */
export function parseHash(hash) {
  const [path, query = ""] = hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  return { name: name || "traces", arg: decodeURIComponent(rest.join("/")), params: new URLSearchParams(query) };
}

/** Sets the URL for a view with parameters (empty ones are left out). */
export function go(name, params = {}) {
  const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== ""));
  const hash = `#/${name}${qs.toString() ? "?" + qs : ""}`;
  if (location.hash === hash) route(); else location.hash = hash;
}

async function route() {
  const { name, arg, params } = parseHash(location.hash);
  const module = VIEWS[name];
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === name || (name === "trace" && a.dataset.nav === "traces"));
  }
  if (cleanup) { try { cleanup(); } catch (_) { /* view already gone */ } cleanup = null; }
  const mine = ++generation;
  view.replaceChildren();
  view.dataset.view = name;
  if (!module) {
    view.append(state(`No view called "${name}". Try Traces, Logs or Metrics.`, "error"));
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

function toggleTheme() {
  const root = document.documentElement;
  const dark = root.dataset.theme ? root.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  try { localStorage.setItem("strand.theme", root.dataset.theme); } catch (_) { /* private mode */ }
  window.dispatchEvent(new Event("strand-theme"));
}

document.getElementById("theme-toggle").addEventListener("click", toggleTheme);
window.addEventListener("hashchange", route);
if (!location.hash) history.replaceState(null, "", "#/traces");
route();
