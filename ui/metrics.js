// Metrics explorer: a PromQL box over the global time range;
// /api/v1/query_range drawn as an SVG line chart and a table of the latest
// values. The API's error messages are shown as they come. The chart
// (`lineChart`) and the query helper are exported for the dashboards.

import { api, h, state, fmtTime, fmtMicros, fmtNumber, colorFor, timeRange, onRefresh } from "./lib.js";

const SVG = "http://www.w3.org/2000/svg";
const MAX_SERIES = 100;
/** Points per series a range query asks for: about one per 4 px of chart. */
const POINTS = 240;
/** Series listed when hovering; the rest would not fit on screen. */
const HOVER_ROWS = 12;

export async function render(root, { params, current, go }) {
  const query = params.get("query") || "";
  const form = h("form.toolbar", { "aria-label": "PromQL query" },
    h("textarea.query", { name: "query", rows: 2, placeholder: "e.g. sum by (service_name) (rate(traces_span_metrics_calls_total[5m]))", spellcheck: "false" }, query),
    h("button", { type: "submit" }, "Run"));
  form.query.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    // The time range belongs to the header's picker: keep it.
    go("metrics", { ...timeParams(params), query: form.query.value.trim() });
  });
  const out = h("section.metrics-out");
  root.append(h("h1", {}, "Metrics"), form, out);
  if (!query) {
    out.append(state("Enter a PromQL expression, e.g. up or sum by (service_name) (rate(traces_span_metrics_calls_total[5m]))."));
    names(out, form, current);
    return;
  }

  const message = h("div");
  const chart = lineChart({ legend: false });
  const table = h("table.series-table");
  chart.el.hidden = table.hidden = true;
  out.append(message, chart.el, table);
  message.append(state("Running query…"));
  let latest = 0;
  // A refresh redraws the chart and table in place; only the first load
  // says "Running query…", so auto refresh does not flicker.
  const load = async () => {
    const mine = ++latest;
    const span = timeRange(params);
    let result;
    try {
      result = await queryRange(query, span);
    } catch (e) {
      if (!current() || mine !== latest) return;
      chart.el.hidden = table.hidden = true;
      message.replaceChildren(state(e.message, "error"));
      return;
    }
    if (!current() || mine !== latest) return;
    const series = toSeries(result);
    chart.el.hidden = table.hidden = !series.length;
    message.replaceChildren(
      ...(series.length ? [] : [state(`No data for ${query} between ${fmtTime(span.start)} and ${fmtTime(span.end)}.`)]),
      ...(result.length > MAX_SERIES ? [state(`Showing ${MAX_SERIES} of ${result.length} series.`)] : []));
    chart.update(series, span.start, span.end);
    table.replaceChildren(
      h("tr", {}, h("th", {}, ""), h("th", {}, "Series"), h("th", {}, "Last value")),
      ...series.map((s) => h("tr.legend-row", {},
        h("td", {}, h("span.svc-dot", { style: `background:${s.color}` })),
        h("td", {}, h("code", {}, s.name)),
        h("td.num", {}, fmtNumber(s.points.at(-1)?.[1])))));
  };
  await load();
  const unsubscribe = onRefresh(load);
  return () => { unsubscribe(); chart.destroy(); };
}

/** The URL parameters of the global time range, to carry into a new URL. */
export function timeParams(params) {
  return { range: params.get("range"), start: params.get("start"), end: params.get("end") };
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

/**
 * Runs a range query over { start, end } (epoch ms) at about POINTS steps;
 * resolves to the result matrix, rejects with the API's message.
 */
export async function queryRange(query, { start, end }) {
  const step = Math.max(1, Math.round((end - start) / 1000 / POINTS));
  const body = await api("/api/v1/query_range",
    { query, start: (start / 1000).toFixed(3), end: (end / 1000).toFixed(3), step });
  return body.data.result || [];
}

/** A query_range matrix as chart series: { name, color, points: [[sec, value]] }. */
export function toSeries(result) {
  return result.slice(0, MAX_SERIES).map((r, i) => ({
    name: seriesName(r.metric),
    color: colorFor("", i),
    points: r.values.map(([t, v]) => [t, Number(v)]),
  }));
}

/** `name{a="b"}`; a lone label without a name (`sum by (service)`) is just its value. */
function seriesName(metric) {
  const { __name__: name = "", ...labels } = metric;
  const entries = Object.entries(labels);
  if (!name && entries.length === 1) return entries[0][1];
  return `${name}{${entries.map(([k, v]) => `${k}="${v}"`).join(", ")}}`;
}

/**
 * A value in a panel's unit: `seconds` as a duration, `ratio` and `percent`
 * as percentages, `bytes` in binary units; any other unit is appended.
 */
export function fmtUnit(v, unit) {
  if (v == null || !Number.isFinite(v)) return fmtNumber(v);
  switch (unit) {
    case "seconds": return fmtMicros(v * 1e6);
    case "ratio": return `${fmtNumber(v * 100)}%`;
    case "percent": return `${fmtNumber(v)}%`;
    case "bytes": {
      const i = Math.max(0, Math.min(4, Math.floor(Math.log2(Math.abs(v) || 1) / 10)));
      return `${+(v / 1024 ** i).toPrecision(3)} ${["B", "KiB", "MiB", "GiB", "TiB"][i]}`;
    }
    default: return unit ? `${fmtNumber(v)} ${unit}` : fmtNumber(v);
  }
}

/** Units the axis formats itself; others are shown once, beside the chart. */
const AXIS_UNITS = new Set(["seconds", "ratio", "percent", "bytes"]);

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
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

/** Time labels as precise as the window needs. */
function fmtTick(sec, span) {
  const text = fmtTime(sec * 1000);
  if (span <= 900) return text.slice(11, 19);
  if (span <= 86400) return text.slice(11, 16);
  return text.slice(5, 16);
}

/**
 * A line chart that is drawn once and then updated in place, so that a
 * refresh does not flicker: `update(series, startMs, endMs)` (series from
 * `toSeries`). It has y and time axes, an optional legend, and on hover a
 * cursor listing every series' value at that time. Options: `unit` (see
 * `fmtUnit`), `legend`, `height`, `zero` (start the y axis at 0 when all
 * values are positive, as rates read best). Call `destroy()` on cleanup.
 */
export function lineChart({ unit = "", legend = true, height = 280, zero = false } = {}) {
  const plot = h("div.chart-plot");
  const hover = h("div.chart-hover", { hidden: true });
  const legendEl = h("ul.chart-legend", { hidden: !legend });
  const el = h("div.chart", { dataset: { series: 0 } }, plot, hover, legendEl);
  let series = [], t0 = 0, t1 = 1, scale = null, width = 0;

  const draw = () => {
    width = Math.max(plot.clientWidth, 300);
    const pad = { l: 64, r: 12, t: 10, b: 24 };
    let lo = Infinity, hi = -Infinity;
    for (const s of series) for (const [, v] of s.points) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
    if (zero && lo > 0) lo = 0;
    if (lo === hi && zero && lo === 0) hi = 1;
    else if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
    const yTicks = ticks(lo, hi, 4);
    [lo, hi] = [yTicks[0], yTicks.at(-1)];
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
    const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (height - pad.t - pad.b);
    scale = { x, y, pad };
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "chart" });
    const axisValue = (v) => AXIS_UNITS.has(unit) ? fmtUnit(v, unit) : fmtNumber(v);
    for (const v of yTicks) {
      root.append(svg("line", { class: "grid", x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v) }));
      const label = svg("text", { class: "axis", x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = axisValue(v);
      root.append(label);
    }
    for (let i = 0; i <= 4; i++) {
      const t = t0 + ((t1 - t0) * i) / 4;
      const label = svg("text", { class: "axis", x: x(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" });
      label.textContent = fmtTick(t, t1 - t0);
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
    root.append(svg("line", { class: "cursor", x1: 0, x2: 0, y1: pad.t, y2: height - pad.b, visibility: "hidden" }));
    plot.replaceChildren(root);
  };

  // Hover: the step nearest the pointer, with each series' value there.
  const onMove = (e) => {
    if (!scale || !series.length) return;
    const box = plot.getBoundingClientRect();
    const px = e.clientX - box.left;
    const t = t0 + ((px - scale.pad.l) / (width - scale.pad.l - scale.pad.r)) * (t1 - t0);
    let best = null;
    for (const s of series) for (const [pt] of s.points) if (best == null || Math.abs(pt - t) < Math.abs(best - t)) best = pt;
    if (best == null || px < scale.pad.l) return onLeave();
    const rows = series.map((s) => ({ s, v: s.points.find(([pt]) => pt === best)?.[1] }))
      .filter((r) => r.v != null).sort((a, b) => (b.v || 0) - (a.v || 0));
    const cursor = plot.querySelector(".cursor");
    cursor.setAttribute("x1", scale.x(best));
    cursor.setAttribute("x2", scale.x(best));
    cursor.setAttribute("visibility", "visible");
    hover.replaceChildren(h("div.muted", {}, fmtTime(best * 1000)),
      ...rows.slice(0, HOVER_ROWS).map(({ s, v }) => h("div.hover-row", {},
        h("span.svc-dot", { style: `background:${s.color}` }), h("span.hover-name", {}, s.name),
        h("span.num", {}, fmtUnit(v, unit)))));
    if (rows.length > HOVER_ROWS) hover.append(h("div.muted", {}, `and ${rows.length - HOVER_ROWS} more`));
    hover.hidden = false;
    // Beside the pointer, on the side with room.
    const left = scale.x(best) + 12;
    hover.style.left = left + hover.offsetWidth > width ? `${Math.max(0, scale.x(best) - hover.offsetWidth - 12)}px` : `${left}px`;
  };
  const onLeave = () => {
    hover.hidden = true;
    plot.querySelector(".cursor")?.setAttribute("visibility", "hidden");
  };
  plot.addEventListener("mousemove", onMove);
  plot.addEventListener("mouseleave", onLeave);

  // Redraw when the width changes (not on every legend change) or the theme flips.
  const resize = new ResizeObserver(() => { if (plot.clientWidth && Math.max(plot.clientWidth, 300) !== width) draw(); });
  resize.observe(plot);
  window.addEventListener("strand-theme", draw);

  return {
    el,
    update(next, startMs, endMs) {
      series = next;
      t0 = startMs / 1000;
      t1 = endMs / 1000;
      el.dataset.series = series.length;
      onLeave();
      draw();
      legendEl.replaceChildren(...series.map((s) => h("li.legend-item", { title: s.name },
        h("span.svc-dot", { style: `background:${s.color}` }), h("span", {}, s.name),
        h("span.num.muted", {}, fmtUnit(s.points.at(-1)?.[1], unit)))));
    },
    destroy() {
      resize.disconnect();
      window.removeEventListener("strand-theme", draw);
    },
  };
}
