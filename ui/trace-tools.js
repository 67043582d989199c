// What the trace view computes over all of a trace's spans, once: the text a
// span search matches, and per-service and per-operation statistics. Kept
// apart from the drawing so 10,000-span traces pay for it only when asked.

import { h, fmtMicros } from "./lib.js";

/**
 * One lowercase string per span with what a span search looks at: service,
 * operation, span id and every attribute and resource attribute as
 * `key=value` (so "http.route", "/orders" and "http.route=/orders" all
 * match). Built once; a search is then one `includes` per span.
 */
export function searchIndex(spans) {
  const text = new Map();
  for (const s of spans) {
    const tags = [...s.raw.tags, ...(s.process.tags || [])].map((g) => `${g.key}=${g.value}`);
    text.set(s.id, [s.service, s.op, s.id, ...tags].join("\n").toLowerCase());
  }
  return text;
}

/**
 * Per service and operation: span count, total time, self time (the part
 * of each span none of its children covers, children clipped to it) and
 * errors, by self time, largest first. Times in µs.
 */
export function statistics(spans) {
  const rows = new Map();
  for (const s of spans) {
    const key = `${s.service}\u0000${s.op}`;
    let row = rows.get(key);
    if (!row) rows.set(key, row = { service: s.service, op: s.op, count: 0, total: 0, self: 0, errors: 0 });
    row.count++;
    row.total += s.dur;
    row.self += s.dur - covered(s);
    if (s.error) row.errors++;
  }
  return [...rows.values()].sort((a, b) => b.self - a.self || b.total - a.total);
}

/** How much of `span`'s time its children cover (overlaps counted once). */
function covered(span) {
  const end = span.start + span.dur;
  const parts = span.children
    .map((c) => [Math.max(c.start, span.start), Math.min(c.start + c.dur, end)])
    .filter(([a, b]) => b > a)
    .sort((x, y) => x[0] - y[0]);
  let total = 0, from = 0, to = 0, open = false;
  for (const [a, b] of parts) {
    if (open && a <= to) { to = Math.max(to, b); continue; }
    if (open) total += to - from;
    [from, to, open] = [a, b, true];
  }
  return open ? total + to - from : total;
}

/** The statistics as a table, with each service's colour. */
export function statisticsTable(rows, colors) {
  return h("table.series-table.trace-stats", { "aria-label": "span statistics" },
    h("thead", {}, h("tr", {}, ["Service", "Operation", "Spans", "Total", "Self", "Errors"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", { dataset: { service: r.service, op: r.op } },
      h("td", {}, h("span.chip", { style: `--c:${colors.get(r.service)}` }, r.service)),
      h("td", {}, r.op),
      h("td.num", {}, r.count),
      h("td.num", {}, fmtMicros(r.total)),
      h("td.num", {}, fmtMicros(r.self)),
      h("td.num" + (r.errors ? ".bad" : ""), {}, r.errors)))));
}
