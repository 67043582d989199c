// Metrics explorer: a PromQL box and time range; /api/v1/query_range drawn
// as an SVG line chart (one path per series) with a legend and a table of
// the latest values. The API's error messages are shown as they come.

import { api, h, state, select, fmtTime, rangeSeconds, RANGES, colorFor } from "./lib.js";

const SVG = "http://www.w3.org/2000/svg";
const MAX_SERIES = 100;
const POINTS = 240;

export async function render(root, { params, current, go }) {
  const query = params.get("query") || "";
  const range = params.get("range") || "1h";
  const form = h("form.toolbar", { "aria-label": "PromQL query" },
    h("textarea.query", { name: "query", rows: 2, placeholder: "e.g. sum by (service) (rate(strand_span_calls_total[5m]))", spellcheck: "false" }, query),
    select("range", RANGES, range),
    h("button", { type: "submit" }, "Run"));
  form.query.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go("metrics", { query: form.query.value.trim(), range: form.range.value });
  });
  const out = h("section.metrics-out");
  root.append(h("h1", {}, "Metrics"), form, out);
  if (!query) {
    out.append(state("Enter a PromQL expression, e.g. up or rate(http_server_request_duration_seconds_count[5m])."));
    names(out, form, current);
    return;
  }
  const end = Date.now() / 1000;
  const seconds = rangeSeconds(range);
  const step = Math.max(1, Math.round(seconds / POINTS));
  out.append(state("Running query…"));
  let body;
  try {
    body = await api("/api/v1/query_range", { query, start: (end - seconds).toFixed(3), end: end.toFixed(3), step });
  } catch (e) {
    if (current()) out.replaceChildren(state(e.message, "error"));
    return;
  }
  if (!current()) return;
  const result = (body.data.result || []).slice(0, MAX_SERIES);
  if (!result.length) {
    out.replaceChildren(state(`No data for ${query} in the last ${range}.`));
    return;
  }
  const series = result.map((r, i) => ({
    name: seriesName(r.metric),
    color: colorFor("", i),
    points: r.values.map(([t, v]) => [t, Number(v)]),
  }));
  const chart = h("div.chart", { dataset: { series: series.length } });
  const draw = () => drawChart(chart, series, end - seconds, end);
  const onTheme = () => draw();
  window.addEventListener("strand-theme", onTheme);
  const resize = new ResizeObserver(draw);
  resize.observe(chart);
  out.replaceChildren(chart,
    ...(body.data.result.length > MAX_SERIES ? [state(`Showing ${MAX_SERIES} of ${body.data.result.length} series.`)] : []),
    h("table.series-table", {},
      h("tr", {}, h("th", {}, ""), h("th", {}, "Series"), h("th", {}, "Last value")),
      series.map((s) => h("tr.legend-row", {},
        h("td", {}, h("span.svc-dot", { style: `background:${s.color}` })),
        h("td", {}, h("code", {}, s.name)),
        h("td.num", {}, fmtValue(s.points.at(-1)?.[1]))))));
  draw();
  return () => { resize.disconnect(); window.removeEventListener("strand-theme", onTheme); };
}

/** With no query yet, offers the known metric names. */
async function names(out, form, current) {
  try {
    const body = await api("/api/v1/label/__name__/values");
    if (!current() || !body.data.length) return;
    const list = h("datalist", { id: "metric-names" }, body.data.map((n) => h("option", { value: n })));
    out.append(h("p.muted", {}, `${body.data.length} metric names known, e.g. `,
      body.data.slice(0, 8).map((n) => [h("button.link", { type: "button", onclick: () => { form.query.value = n; form.requestSubmit(); } }, n), " "])), list);
  } catch (_) { /* optional */ }
}

function seriesName(metric) {
  const { __name__: name = "", ...labels } = metric;
  const inner = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(", ");
  return `${name}{${inner}}`;
}

function fmtValue(v) {
  if (v == null || Number.isNaN(v)) return "–";
  if (v !== 0 && (Math.abs(v) >= 1e6 || Math.abs(v) < 1e-3)) return v.toExponential(3);
  return String(+v.toFixed(4));
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function drawChart(el, series, t0, t1) {
  const width = Math.max(el.clientWidth, 300);
  const height = 280;
  const pad = { l: 64, r: 12, t: 10, b: 24 };
  let lo = Infinity, hi = -Infinity;
  for (const s of series) for (const [, v] of s.points) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (height - pad.t - pad.b);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "chart" });
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    root.append(svg("line", { class: "grid", x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v) }));
    const label = svg("text", { class: "axis", x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = fmtValue(v);
    root.append(label);
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const label = svg("text", { class: "axis", x: x(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" });
    label.textContent = fmtTime(t * 1000).slice(11, 19);
    root.append(label);
  }
  for (const s of series) {
    // Gaps (missing steps or NaN) break the line.
    let d = "", prev = null;
    const step = s.points.length > 1 ? Math.min(...s.points.slice(1).map((p, i) => p[0] - s.points[i][0])) : 0;
    for (const [t, v] of s.points) {
      if (!Number.isFinite(v)) { prev = null; continue; }
      d += `${prev == null || t - prev > step * 1.5 ? "M" : "L"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      prev = t;
    }
    const path = svg("path", { class: "series", d, stroke: s.color, fill: "none" });
    const title = svg("title", {});
    title.textContent = s.name;
    path.append(title);
    root.append(path);
    if (s.points.length === 1) root.append(svg("circle", { class: "series-dot", cx: x(s.points[0][0]), cy: y(s.points[0][1]), r: 3, fill: s.color }));
  }
  el.replaceChildren(root);
}
