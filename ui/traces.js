// Trace search: service (from /api/services), operation, lookback, tags and
// minimum duration; results link to the trace view.

import { api, h, state, select, fmtMicros, fmtTime, serviceColors } from "./lib.js";

const LOOKBACKS = ["15m", "1h", "6h", "24h", "2d", "7d"];

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
  const service = services.includes(p.service) ? p.service : services[0];
  const operation = h("select", { name: "operation" }, h("option", { value: "" }, "all operations"));
  form.append(
    h("label", {}, "Service ", select("service", services, service, { id: "service" })),
    h("label", {}, "Operation ", operation),
    h("label", {}, "Lookback ", select("lookback", LOOKBACKS, p.lookback || "1h")),
    h("label", {}, "Tags ", h("input", { name: "tags", value: p.tags || "", placeholder: "http.status_code=500 error=true", size: 24 })),
    h("label", {}, "Min duration ", h("input", { name: "minDuration", value: p.minDuration || "", placeholder: "100ms", size: 6 })),
    h("label", {}, "Limit ", h("input", { name: "limit", value: p.limit || "20", type: "number", min: 1, max: 1500, style: "width:5em" })),
    h("button", { type: "submit" }, "Find traces"),
  );
  const loadOperations = async (svc, chosen) => {
    try {
      const ops = (await api(`/api/services/${encodeURIComponent(svc)}/operations`)).data || [];
      operation.replaceChildren(h("option", { value: "" }, "all operations"),
        ...ops.map((o) => h("option", { value: o, selected: o === chosen }, o)));
    } catch (_) { /* the search still works without the list */ }
  };
  form.service.addEventListener("change", () => loadOperations(form.service.value, ""));
  loadOperations(service, p.operation);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(form);
    go("traces", Object.fromEntries(f));
  });

  const tags = {};
  for (const pair of (p.tags || "").split(/\s+/).filter(Boolean)) {
    const [k, ...v] = pair.split("=");
    tags[k] = v.join("=");
  }
  results.append(state("Searching…"));
  let body;
  try {
    body = await api("/api/traces", {
      service, operation: p.operation, lookback: p.lookback || "1h", limit: p.limit || 20,
      minDuration: p.minDuration, tags: Object.keys(tags).length ? JSON.stringify(tags) : null,
    });
  } catch (e) {
    if (current()) results.replaceChildren(state(e.message, "error"));
    return;
  }
  if (!current()) return;
  const traces = (body.data || []).map(summarise).sort((a, b) => b.start - a.start);
  if (!traces.length) {
    results.replaceChildren(state(`No traces of ${service} in the last ${p.lookback || "1h"}.`));
    return;
  }
  results.replaceChildren(h("p.muted", {}, `${traces.length} trace${traces.length > 1 ? "s" : ""}`),
    h("ul.trace-list", {}, traces.map((t) => traceItem(t, serviceColors(services, [])))));
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
  return {
    id: t.traceID, start, duration: end - start, spans: t.spans.length, errors, perService,
    title: `${t.processes[root.processID]?.serviceName}: ${root.operationName}`,
  };
}

function traceItem(t, colors) {
  return h("li.trace-item", { dataset: { traceId: t.id } },
    h("a.trace-title", { href: `#/trace/${t.id}` }, t.title),
    h("span.duration", {}, fmtMicros(t.duration)),
    h("div.meta", {},
      h("span", {}, `${t.spans} spans`),
      t.errors ? h("span.error-badge", {}, `${t.errors} error${t.errors > 1 ? "s" : ""}`) : null,
      Object.entries(t.perService).sort().map(([s, n]) =>
        h("span.chip", { style: `--c:${colors.get(s)}` }, `${s} ${n}`)),
      h("span.muted", {}, fmtTime(t.start / 1000)),
      h("code.muted", {}, t.id.slice(0, 12))));
}
