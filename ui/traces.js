// Trace search: service (from /api/services, or all of them), operation,
// tags (suggested from the data by /api/tags) and a duration range, over the
// header's time range (`timeRange`); a scatter plot of the results (duration
// over start time, errors marked) above the list, sorted as the URL's `sort`
// says. The search runs again on every auto-refresh tick.

import { api, h, state, plural, fmtMicros, fmtTime, serviceColors, timeRange, onRefresh, ticks } from "./lib.js";

const SVG = "http://www.w3.org/2000/svg";
/** The service picker's value for a search across every service. */
const ALL = "*";
/** The result orders: label and comparison of `summarise`d traces. */
const SORTS = {
  newest: ["newest first", (a, b) => b.start - a.start],
  oldest: ["oldest first", (a, b) => a.start - b.start],
  longest: ["longest first", (a, b) => b.duration - a.duration],
  shortest: ["shortest first", (a, b) => a.duration - b.duration],
  spans: ["most spans", (a, b) => b.spans - a.spans],
  errors: ["errors first", (a, b) => b.errors - a.errors || b.start - a.start],
};

export async function render(root, { params, current, go }) {
  const p = Object.fromEntries(params);
  const form = h("form.toolbar", { "aria-label": "trace search" });
  const results = h("section.results");
  root.append(h("h1", {}, "Traces"), form, results);

  let services;
  try {
    services = (await api("/api/services")).data || [];
  } catch (e) {
    form.append(state(`Cannot load services: ${e.message}`, "error"));
    return;
  }
  if (!current()) return;
  if (!services.length) {
    results.append(state("No traces yet. Send spans over OTLP to port 4317 (gRPC) or 4318 (HTTP)."));
    return;
  }
  const service = p.service === ALL || services.includes(p.service) ? p.service : services[0];
  const sort = Object.hasOwn(SORTS, p.sort) ? p.sort : "newest";
  const operation = h("select", { name: "operation" }, h("option", { value: "" }, "all operations"));
  const duration = (name, placeholder) =>
    h("input", { name, value: p[name] || "", placeholder, size: 6, pattern: "\\d+(\\.\\d+)?(ns|us|µs|ms|s|m|h)" });
  const suggestions = h("datalist", { id: "tag-suggestions" });
  const sortPicker = h("select", { name: "sort", "aria-label": "sort results" },
    Object.entries(SORTS).map(([value, [label]]) => h("option", { value, selected: value === sort }, label)));
  form.append(
    h("label", {}, "Service ", h("select", { name: "service", id: "service" },
      h("option", { value: ALL, selected: service === ALL }, "all services"),
      services.map((s) => h("option", { value: s, selected: s === service }, s)))),
    h("label", {}, "Operation ", operation),
    h("label", {}, "Tags ", h("input", { name: "tags", value: p.tags || "", size: 28, list: "tag-suggestions", autocomplete: "off",
      placeholder: "http.response.status_code=500 error=true", title: "key=value pairs separated by spaces; suggestions come from recent traces" }), suggestions),
    h("label", {}, "Duration ", duration("minDuration", "min 100ms"), "–", duration("maxDuration", "max 2s")),
    h("label", {}, "Limit ", h("input", { name: "limit", value: p.limit || "20", type: "number", min: 1, max: 1500, style: "width:5em" })),
    h("label", {}, "Sort ", sortPicker),
    h("button", { type: "submit" }, "Find traces"),
  );
  // The tags the newest traces of the service carry, as `key=value` suggestions.
  const loadTags = async (svc) => {
    const range = timeRange(params);
    try {
      const tags = (await api("/api/tags", { service: svc === ALL ? null : svc,
        start: Math.floor(range.start) * 1000, end: Math.ceil(range.end) * 1000 })).data || [];
      suggestions.replaceChildren(...tags.flatMap(({ key, values }) =>
        (values.length ? values : [""]).map((v) => h("option", { value: `${key}=${v}` }))));
    } catch (_) { /* the search works without suggestions */ }
  };
  const loadOperations = async (svc, chosen) => {
    operation.disabled = svc === ALL;
    if (svc === ALL) { operation.replaceChildren(h("option", { value: "" }, "all operations")); return; }
    try {
      const ops = (await api(`/api/services/${encodeURIComponent(svc)}/operations`)).data || [];
      operation.replaceChildren(h("option", { value: "" }, "all operations"),
        ...ops.map((o) => h("option", { value: o, selected: o === chosen }, o)));
    } catch (_) { /* the search still works without the list */ }
  };
  form.service.addEventListener("change", () => { loadOperations(form.service.value, ""); loadTags(form.service.value); });
  loadOperations(service, p.operation);
  loadTags(service);
  // Another order searches again at once, sorted so (the URL keeps it).
  sortPicker.addEventListener("change", () => form.requestSubmit());
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    // The time range belongs to the header's picker: keep it.
    go("traces", { ...Object.fromEntries(new FormData(form)), range: p.range, start: p.start, end: p.end });
  });

  const tags = {};
  for (const pair of (p.tags || "").split(/\s+/).filter(Boolean)) {
    const [k, ...v] = pair.split("=");
    tags[k] = v.join("=");
  }
  const colors = serviceColors(services, []);
  let searching = false;
  const search = async () => {
    if (searching) return; // a slow search is not stacked up by refresh ticks
    searching = true;
    try { await runSearch(); } finally { searching = false; }
  };
  const runSearch = async () => {
    // Re-read on every run: a relative range ("last 1h") moves with the clock.
    const range = timeRange(params);
    if (!results.childElementCount) results.append(state("Searching…"));
    let body;
    try {
      body = await api("/api/traces", {
        service: service === ALL ? null : service, operation: service === ALL ? null : p.operation, limit: p.limit || 20,
        start: Math.floor(range.start) * 1000, end: Math.ceil(range.end) * 1000,
        minDuration: p.minDuration, maxDuration: p.maxDuration,
        tags: Object.keys(tags).length ? JSON.stringify(tags) : null,
      });
    } catch (e) {
      if (current()) results.replaceChildren(state(`Search failed: ${e.message}`, "error"));
      return;
    }
    if (!current()) return;
    const traces = (body.data || []).map(summarise).sort(SORTS[sort][1]);
    if (!traces.length) {
      const filtered = p.operation || p.tags || p.minDuration || p.maxDuration;
      results.replaceChildren(state(`No traces in this range: nothing of ${service === ALL ? "any service" : service}` +
        `${p.operation ? ` (${p.operation})` : ""} between ${fmtTime(range.start)} and ${fmtTime(range.end)}. ` +
        (filtered ? "Loosen the filters or widen the time range." : "Widen the time range.")));
      return;
    }
    results.replaceChildren(
      scatter(traces, results.clientWidth),
      h("p.muted", {}, `${plural(traces.length, "trace")}, ${SORTS[sort][0]}`),
      h("ul.trace-list", {}, traces.map((t) => traceItem(t, colors))));
  };
  await search();
  return onRefresh(search);
}

function summarise(t) {
  const ids = new Set(t.spans.map((s) => s.spanID));
  const root = t.spans.find((s) => !s.references.some((r) => r.refType === "CHILD_OF" && ids.has(r.spanID))) || t.spans[0];
  const start = t.spans.reduce((m, s) => Math.min(m, s.startTime), Infinity);
  const end = t.spans.reduce((m, s) => Math.max(m, s.startTime + s.duration), -Infinity);
  const perService = {};
  let errors = 0;
  for (const s of t.spans) {
    const name = t.processes[s.processID]?.serviceName || "?";
    perService[name] = (perService[name] || 0) + 1;
    if (s.tags.some((g) => g.key === "error" && (g.value === true || g.value === "true"))) errors++;
  }
  // The root's HTTP status: today's semantic-convention name, or the old one.
  const status = ["http.response.status_code", "http.status_code"]
    .map((k) => root.tags.find((g) => g.key === k)).find(Boolean)?.value;
  return {
    id: t.traceID, start, duration: end - start, spans: t.spans.length, errors, perService, status,
    title: `${t.processes[root.processID]?.serviceName}: ${root.operationName}`,
  };
}

function traceItem(t, colors) {
  return h("li.trace-item", { dataset: { traceId: t.id } },
    h("a.trace-title", { href: `#/trace/${t.id}` }, t.title),
    h("span.duration", {}, fmtMicros(t.duration)),
    h("div.meta", {},
      t.status != null ? h("span.status" + (+t.status >= 500 ? ".bad" : +t.status >= 400 ? ".warn" : ""),
        { title: "HTTP status code of the root span" }, String(t.status)) : null,
      h("span", {}, plural(t.spans, "span")),
      t.errors ? h("span.error-badge", {}, plural(t.errors, "error")) : null,
      Object.entries(t.perService).sort().map(([s, n]) =>
        h("span.chip", { style: `--c:${colors.get(s)}` }, `${s} ${n}`)),
      h("span.muted", {}, fmtTime(t.start / 1000)),
      h("code.muted", {}, t.id.slice(0, 12))));
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/**
 * Duration over start time, one point per trace, errors as red diamonds;
 * a click opens the trace. The duration axis is logarithmic when durations
 * spread over more than a decade, so one slow trace does not flatten the rest.
 */
function scatter(traces, available) {
  // Drawn at the width it is shown at, so text and points keep their size.
  const width = Math.max(360, (available || 900) - 2), height = 180, pad = { l: 64, r: 12, t: 10, b: 22 };
  const t0 = Math.min(...traces.map((t) => t.start)), t1 = Math.max(...traces.map((t) => t.start));
  // A lone point (or a burst) sits in the middle of at least a second.
  const half = (Math.max(t1 - t0, 1e6) / 2) * 1.06, center = (t0 + t1) / 2;
  const xs = [center - half, center + half];
  const dMin = Math.max(1, Math.min(...traces.map((t) => t.duration)));
  const dMax = Math.max(dMin * 2, ...traces.map((t) => t.duration));
  const log = dMax / dMin > 10;
  const f = log ? Math.log10 : (v) => v;
  // Whole decades on a log axis, so both ends carry a label.
  const [y0, y1] = log ? [Math.floor(f(dMin)), Math.ceil(f(dMax) + 0.05)] : [0, dMax * 1.1];
  const x = (us) => pad.l + ((us - xs[0]) / (xs[1] - xs[0])) * (width - pad.l - pad.r);
  const y = (us) => height - pad.b - ((f(Math.max(us, 1)) - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  const root = svg("svg", { class: "scatter", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `durations of ${traces.length} traces over time`, "data-scale": log ? "log" : "linear" });
  const yTicks = log
    ? Array.from({ length: Math.floor(y1) - Math.ceil(y0) + 1 }, (_, i) => 10 ** (Math.ceil(y0) + i))
    : ticks(0, dMax, 4).filter((v) => v <= y1);
  for (const v of yTicks) {
    root.append(svg("line", { class: "grid", x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v) }),
      svg("text", { class: "axis", x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" }, fmtMicros(v)));
  }
  for (const [i, q] of [0, 0.5, 1].entries()) {
    const at = xs[0] + q * (xs[1] - xs[0]);
    root.append(svg("text", { class: "axis", x: x(at), y: height - 6, "text-anchor": ["start", "middle", "end"][i] },
      fmtTime(at / 1000).slice(11, 19)));
  }
  const mid = (height - pad.b + pad.t) / 2;
  root.append(svg("text", { class: "axis", x: 12, y: mid, "text-anchor": "middle", transform: `rotate(-90 12 ${mid})` },
    log ? "duration (log)" : "duration"));
  // Errors last, so they are drawn on top of the others.
  for (const t of [...traces].sort((a, b) => Boolean(a.errors) - Boolean(b.errors))) {
    const cx = x(t.start), cy = y(t.duration), r = Math.min(8, 3 + Math.sqrt(t.spans) / 4);
    const shape = t.errors
      ? svg("rect", { x: cx - r, y: cy - r, width: 2 * r, height: 2 * r, transform: `rotate(45 ${cx} ${cy})` })
      : svg("circle", { cx, cy, r });
    shape.classList.add("scatter-point");
    if (t.errors) shape.classList.add("error");
    shape.dataset.traceId = t.id;
    shape.append(svg("title", {}, `${t.title}\n${fmtMicros(t.duration)} · ${plural(t.spans, "span")}` +
      `${t.errors ? ` · ${plural(t.errors, "error")}` : ""}\n${fmtTime(t.start / 1000)}`));
    shape.addEventListener("click", () => { location.hash = `#/trace/${t.id}`; });
    root.append(shape);
  }
  return h("div.scatter-wrap", {}, root);
}
