// Log explorer: query box and time range, a histogram of counts over time
// (drag-free: click a bar to zoom into it), facet counts, and a virtualised
// results table whose trace ids open the trace view.

import { api, h, state, select, fmtTime, rangeSeconds, RANGES, VirtualList } from "./lib.js";

const ROW = 26;
const PAGE = 500;

export async function render(root, { params, current, go }) {
  const q = params.get("q") || "";
  const range = params.get("range") || "1h";
  // An absolute window (from a histogram click) wins over the relative range.
  const end = Number(params.get("end")) || Date.now();
  const start = Number(params.get("start")) || end - rangeSeconds(range) * 1000;
  const form = h("form.toolbar", { "aria-label": "log search" },
    h("input.query", { name: "q", value: q, placeholder: 'e.g. declined AND service:payment, severity:error, "order 42"', autofocus: true }),
    select("range", RANGES, range),
    h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go("logs", { q: form.q.value.trim(), range: form.range.value });
  });
  const histogram = h("div.histogram", { "aria-label": "log counts over time" });
  const facets = h("aside.facets");
  const summary = h("p.muted");
  const table = new VirtualList(ROW, (log, i) => logRow(log, i), "vlist log-table");
  const detail = h("aside.detail.log-detail", { hidden: true });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  root.append(h("h1", {}, "Logs"), form,
    ...(params.get("start") ? [h("p.muted", {}, `${fmtTime(start)} – ${fmtTime(end)} `, h("a", { href: `#/logs?q=${encodeURIComponent(q)}&range=${range}` }, "back to the last " + range))] : []),
    histogram,
    h("div.logs-body", {}, facets,
      h("div.logs-main", {}, summary,
        h("div.log-head", {}, h("span", {}, "Time"), h("span", {}, "Level"), h("span", {}, "Service"), h("span", {}, "Message"), h("span", {}, "Trace")),
        table.el, more),
      detail));

  const win = { q, start, end };
  const [page, hist, fac] = await Promise.allSettled([
    api("/api/logs", { ...win, limit: PAGE }),
    api("/api/logs/histogram", win),
    api("/api/logs/facets", win),
  ]);
  if (!current()) return;
  if (page.status === "rejected") {
    summary.replaceWith(state(page.reason.message, "error"));
    table.el.hidden = true;
    return () => table.resize.disconnect();
  }
  let logs = page.value.logs;
  summary.textContent = page.value.total
    ? `${page.value.total} matching log${page.value.total > 1 ? "s" : ""}, newest first`
    : `No logs match${q ? ` "${q}"` : ""} in this range.`;
  table.setItems(logs);
  table.el.addEventListener("click", (e) => {
    const row = e.target.closest(".log-row");
    if (!row || e.target.closest("a")) return;
    showDetail(detail, logs[Number(row.dataset.index)]);
  });
  let cursor = page.value.nextCursor;
  more.hidden = !cursor;
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const next = await api("/api/logs", { ...win, limit: PAGE, cursor });
      logs = logs.concat(next.logs);
      cursor = next.nextCursor;
      table.setItems(logs);
    } catch (e) { more.after(state(e.message, "error")); }
    more.disabled = false;
    more.hidden = !cursor;
  });
  if (hist.status === "fulfilled") drawHistogram(histogram, hist.value, { q, range, go });
  else histogram.append(state(`Histogram: ${hist.reason.message}`, "error"));
  if (fac.status === "fulfilled") drawFacets(facets, fac.value, q, range, go);
  return () => table.resize.disconnect();
}

function logRow(log, index) {
  const ms = Number(BigInt(log.timeUnixNano) / 1000000n);
  return h("div.log-row.sev-row-" + log.severity, { role: "listitem", dataset: { index, severity: log.severity, traceId: log.traceId || "" } },
    h("span.time", {}, fmtTime(ms)),
    h("span.sev.sev-" + log.severity, {}, log.severity),
    h("span.svc", {}, log.service),
    h("span.log-body", { title: log.body }, log.body),
    log.traceId ? h("a.trace-link", { href: `#/trace/${log.traceId}${log.spanId ? `?span=${log.spanId}` : ""}`, title: log.traceId }, log.traceId.slice(0, 8)) : h("span"));
}

function drawHistogram(el, hist, { q, range, go }) {
  const buckets = hist.buckets || [];
  const max = Math.max(1, ...buckets.map((b) => b.total));
  el.dataset.total = hist.total;
  const bars = buckets.map((b) => {
    const errors = (b.counts.error || 0) + (b.counts.fatal || 0);
    return h("div.hist-bar", {
      title: `${fmtTime(b.startMs)}: ${b.total}${errors ? ` (${errors} errors)` : ""}`,
      dataset: { count: b.total, start: b.startMs },
      onclick: () => b.total && go("logs", { q, range, start: b.startMs, end: b.startMs + hist.stepMs }),
    },
    h("div.hist-fill", { style: `height:${(b.total / max) * 100}%` },
      errors ? h("div.hist-err", { style: `height:${(errors / b.total) * 100}%` }) : null));
  });
  el.replaceChildren(h("div.hist-bars", {}, bars),
    h("div.hist-axis", {}, buckets.length ? [h("span", {}, fmtTime(buckets[0].startMs)), h("span", {}, fmtTime(buckets.at(-1).startMs))] : null));
}

function drawFacets(el, fac, q, range, go) {
  const add = (field, value) => {
    const term = `${field}:${/[\s:()"]/.test(value) ? JSON.stringify(value) : value}`;
    go("logs", { q: q ? `${q} AND ${term}` : term, range });
  };
  const group = (title, field, values) => h("section", {}, h("h3", {}, title),
    values.length ? h("ul", {}, values.map((v) => h("li", {},
      h("button.link", { type: "button", onclick: () => add(field, v.value) }, v.value),
      h("span.muted", {}, ` ${v.count}`)))) : h("p.muted", {}, "none"));
  el.replaceChildren(group("Service", "service", fac.services || []), group("Level", "severity", fac.severities || []));
}

function showDetail(el, log) {
  if (!log) return;
  el.hidden = false;
  const kv = (obj) => {
    const entries = Object.entries(obj || {});
    return entries.length ? h("table.kv", {}, entries.map(([k, v]) =>
      h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "string" ? v : JSON.stringify(v))))) : h("p.muted", {}, "none");
  };
  el.replaceChildren(
    h("div.detail-head", {}, h("h2", {}, "Log"), h("button.close", { type: "button", "aria-label": "close", onclick: () => { el.hidden = true; } }, "×")),
    h("pre.body", {}, log.body),
    h("table.kv", {},
      h("tr", {}, h("th", {}, "time"), h("td", {}, log.timestamp)),
      h("tr", {}, h("th", {}, "severity"), h("td", {}, `${log.severity} ${log.severityText || ""}`)),
      h("tr", {}, h("th", {}, "service"), h("td", {}, log.service)),
      log.traceId ? h("tr", {}, h("th", {}, "trace"), h("td", {}, h("a.trace-link", { href: `#/trace/${log.traceId}${log.spanId ? `?span=${log.spanId}` : ""}` }, log.traceId))) : null,
      log.spanId ? h("tr", {}, h("th", {}, "span"), h("td", {}, log.spanId)) : null),
    h("h3", {}, "Attributes"), kv(log.attributes),
    h("h3", {}, "Resource"), kv(log.resource));
}
