// Metrics explorer: a PromQL box over the global time range, suggesting
// metric names, labels and values as one types; /api/v1/query_range drawn
// as an SVG line chart and a table of the latest values, or, with no query,
// a filterable list of the metrics with their type and help. Grafana's
// `$__interval`, `$__range` and `$__rate_interval` are filled in, and a
// rate window too short for the data's sample interval gets a hint. The
// API's error messages are shown as they come. The chart (`lineChart`),
// the query helpers and the suggestions are exported for the dashboards.

import { api, h, state, fmtTime, fmtMicros, fmtNumber, colorFor, timeRange, onRefresh, ticks } from "./lib.js";

const SVG = "http://www.w3.org/2000/svg";
const MAX_SERIES = 100;
/** Points per series a range query asks for: about one per 4 px of chart. */
const POINTS = 240;
/** Series listed when hovering; the rest would not fit on screen. */
const HOVER_ROWS = 12;

export async function render(root, { params, current, go }) {
  const query = params.get("query") || "";
  const form = h("form.toolbar", { "aria-label": "PromQL query" },
    h("textarea.query", { name: "query", rows: 2, placeholder: "e.g. sum by (service_name) (rate(traces_span_metrics_calls_total[$__rate_interval]))", spellcheck: "false", "aria-label": "PromQL query" }, query),
    h("button", { type: "submit" }, "Run"));
  attachSuggest(form.query);
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
    out.append(state("Enter a PromQL expression, e.g. up or sum by (service_name) (rate(traces_span_metrics_calls_total[$__rate_interval]))."));
    names(out, form, current);
    return;
  }

  const hint = h("p.query-hint", { role: "note", hidden: true });
  sampleInterval(query, timeRange(params)).then((sample) => {
    hint.textContent = rateWindowHint(query, sample);
    hint.hidden = !hint.textContent;
  });
  const message = h("div");
  const chart = lineChart({ legend: false });
  const table = h("table.series-table");
  chart.el.hidden = table.hidden = true;
  out.append(hint, message, chart.el, table);
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
    fillSeriesTable(table, series, "", chart);
  };
  await load();
  const unsubscribe = onRefresh(load);
  return () => { unsubscribe(); chart.destroy(); };
}

/** Suggestions listed at most; typing narrows them. */
const SUGGESTIONS = 12;

/**
 * What the text before the caret asks to complete: a label value (after
 * `label="` inside braces), a label name (after `{` or `,` inside braces)
 * or a metric name (a word elsewhere), with the typed prefix and the
 * metric the braces belong to. Null when nothing is being typed.
 */
function completionContext(before) {
  const open = before.lastIndexOf("{");
  if (open > before.lastIndexOf("}")) {
    const metric = /([a-zA-Z_:][\w:]*)\s*$/.exec(before.slice(0, open))?.[1] || "";
    const inside = before.slice(open + 1);
    const value = /([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)$/.exec(inside);
    if (value) return { kind: "value", label: value[1], prefix: value[2], metric };
    const name = /(?:^|,)\s*([a-zA-Z_]\w*)?$/.exec(inside);
    if (name) return { kind: "label", prefix: name[1] || "", metric };
    return null;
  }
  const word = /[a-zA-Z_:][\w:]*$/.exec(before)?.[0];
  // Not after a digit or a duration bracket: `[5m`, `1e3`.
  return word && !/[\d[.]$/.test(before.slice(0, -word.length)) ? { kind: "metric", prefix: word } : null;
}

/**
 * Autocomplete for a PromQL box: metric names, label names and label values
 * from the Prometheus APIs (`/api/v1/label/__name__/values`,
 * `/api/v1/labels`, `/api/v1/label/X/values`, with `match[]` of the metric
 * being typed), listed under the box as one types. Up/Down choose, Enter or
 * Tab insert (as PromQL: `label="`, `value"`), Escape closes. Add it before
 * the box's own key handlers: a key it uses is not seen by them. The box is
 * wrapped (in place, if it is in the page); returns the wrapper.
 */
let suggestBoxes = 0;

export function attachSuggest(box) {
  // Option ids unique on the page: a dashboard editor has a box per panel.
  const ids = `suggest${++suggestBoxes}-`;
  const list = h("ul.suggest", { role: "listbox", hidden: true, "aria-label": "suggestions", id: `${ids}list` });
  box.setAttribute("aria-controls", `${ids}list`);
  const wrap = h("div.suggest-wrap");
  box.replaceWith(wrap);
  wrap.append(box, list);
  box.setAttribute("autocomplete", "off");
  box.setAttribute("aria-autocomplete", "list");
  const cache = new Map();
  const fetchList = (path, match) => {
    const key = `${path}?${match}`;
    if (!cache.has(key)) cache.set(key, api(path, match ? { "match[]": match } : null).then((b) => b.data, () => []));
    return cache.get(key);
  };
  let items = [], active = 0, context = null, asked = 0;
  const close = () => { list.hidden = true; items = []; box.removeAttribute("aria-activedescendant"); };
  const show = () => {
    list.replaceChildren(...items.map((value, i) => h("li", {
      role: "option", id: `${ids}${i}`, "aria-selected": String(i === active), dataset: { value },
      class: i === active ? "active" : "", onmousedown: (e) => { e.preventDefault(); active = i; accept(); },
    }, value)));
    list.hidden = !items.length;
    if (items.length) box.setAttribute("aria-activedescendant", `${ids}${active}`);
  };
  const suggest = async () => {
    const mine = ++asked;
    context = completionContext(box.value.slice(0, box.selectionStart));
    if (!context) return close();
    const { kind, prefix, metric, label } = context;
    const known = kind === "metric" ? await fetchList("/api/v1/label/__name__/values")
      : kind === "label" ? (await fetchList("/api/v1/labels", metric)).filter((n) => n !== "__name__")
        : await fetchList(`/api/v1/label/${encodeURIComponent(label)}/values`, metric);
    if (mine !== asked) return;
    // Those that start with what was typed first, then those that contain it.
    const starts = known.filter((n) => n.startsWith(prefix));
    const contains = prefix ? known.filter((n) => !n.startsWith(prefix) && n.includes(prefix)) : [];
    items = [...starts, ...contains].filter((n) => n !== prefix || kind === "value").slice(0, SUGGESTIONS);
    active = 0;
    show();
  };
  const accept = () => {
    const value = items[active];
    const at = box.selectionStart;
    const insert = context.kind === "label" ? `${value}="` : context.kind === "value" ? `${value.replace(/[\\"]/g, "\\$&")}"` : value;
    box.setRangeText(insert, at - context.prefix.length, at, "end");
    close();
    // A label name goes on to its values.
    if (context.kind === "label") suggest();
  };
  box.addEventListener("input", suggest);
  box.addEventListener("blur", close);
  box.addEventListener("keydown", (e) => {
    if (list.hidden) return;
    const move = { ArrowDown: 1, ArrowUp: -1 }[e.key];
    if (move) active = (active + move + items.length) % items.length;
    else if (e.key === "Enter" || e.key === "Tab") accept();
    else if (e.key === "Escape") close();
    else return;
    e.preventDefault();
    e.stopImmediatePropagation();
    if (move) show();
  });
  return wrap;
}

/**
 * Fills `table` with the last value of each series (the explorer's table,
 * the dashboards' table panels), named without the labels all share. With
 * `chart` (the explorer), a click on a row shows that series alone in the
 * chart (again: all) and shift-click hides or shows it, as a legend does.
 */
export function fillSeriesTable(table, series, unit = "", chart = null) {
  const { names } = sharedLabels(series);
  const rows = series.map((s, i) => h("tr.legend-row", {
    dataset: { name: s.name },
    title: chart ? `${s.name}\nClick: show only this series (again: all). Shift-click: hide or show it.` : s.name,
    onclick: chart ? (e) => mark(chart.isolate(s.name, e.shiftKey)) : null,
  },
  h("td", {}, h("span.svc-dot", { style: `background:${s.color}` })),
  h("td", {}, h("code", {}, names[i])),
  h("td.num", {}, fmtUnit(s.points.at(-1)?.[1], unit))));
  const mark = (hidden) => { for (const row of rows) row.classList.toggle("off", hidden.has(row.dataset.name)); };
  table.classList.toggle("pickable", Boolean(chart));
  table.replaceChildren(h("tr", {}, h("th", {}, ""), h("th", {}, "Series"), h("th", {}, "Last value")), ...rows);
  if (chart) mark(chart.hiddenNames());
}

/** The URL parameters of the global time range, to carry into a new URL. */
export function timeParams(params) {
  return { range: params.get("range"), start: params.get("start"), end: params.get("end") };
}

/** Metrics the browser lists at most; the filter finds the others. */
const BROWSE_ROWS = 200;

/**
 * With no query yet: every known metric name, with its type and help where
 * Strand has metadata (`/api/v1/metadata`), filtered as one types; a click
 * charts it.
 */
async function names(out, form, current) {
  let known, metadata;
  try {
    [known, metadata] = await Promise.all([
      api("/api/v1/label/__name__/values").then((b) => b.data),
      api("/api/v1/metadata").then((b) => b.data, () => ({})),
    ]);
  } catch (_) { return; /* the box still works without the list */ }
  if (!current() || !known.length) return;
  // Metadata is per family: `x_bucket`, `x_sum`, `x_count` and `x_total` share `x`'s.
  const about = (name) => metadata[name]?.[0] || metadata[name.replace(/_(bucket|sum|count|total)$/, "")]?.[0];
  const filter = h("input", { name: "metric-filter", type: "search", placeholder: `Filter ${known.length} metrics`, "aria-label": "filter metrics" });
  const list = h("ul.metric-list");
  const draw = () => {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const matching = known.filter((n) => words.every((w) => n.toLowerCase().includes(w) || (about(n)?.help || "").toLowerCase().includes(w)));
    list.replaceChildren(...matching.slice(0, BROWSE_ROWS).map((n) => {
      const meta = about(n);
      return h("li", {},
        h("button.link", { type: "button", onclick: () => { form.query.value = n; form.requestSubmit(); } }, n),
        meta?.type ? h("span.badge.metric-type", {}, meta.type) : null,
        meta?.help ? h("span.muted.metric-help", {}, meta.help) : null);
    }), ...(matching.length > BROWSE_ROWS ? [h("li.muted", {}, `and ${matching.length - BROWSE_ROWS} more: filter to find them`)] : []));
  };
  filter.addEventListener("input", draw);
  draw();
  out.append(h("section.metric-browser", { "aria-label": "metrics" }, h("h2", {}, "Metrics"), filter, list));
}

/**
 * The interval between samples assumed for `$__rate_interval` and the
 * short-window hint when the data does not tell: Strand derives span
 * metrics and scrapes every 15 s.
 */
const SAMPLE_INTERVAL = 15;

/** Sample intervals found per selector, for this page's life. */
const intervals = new Map();

/**
 * The interval (s) between the samples of the series the query's first
 * rate()/increase() reads: the median gap of their raw samples in the 10
 * minutes before the window's end; SAMPLE_INTERVAL when there are none.
 */
export function sampleInterval(query, span) {
  const selector = /\b(?:rate|irate|increase)\s*\(\s*([^()[\]]+?)\s*\[/.exec(query)?.[1];
  if (!selector) return Promise.resolve(SAMPLE_INTERVAL);
  if (!intervals.has(selector)) {
    intervals.set(selector, api("/api/v1/query", { query: `${selector}[10m]`, time: (span.end / 1000).toFixed(3) }).then((body) => {
      const gaps = (body.data.result || []).flatMap((r) => r.values.slice(1).map(([t], i) => t - r.values[i][0])).sort((a, b) => a - b);
      return gaps.length ? Math.max(1, Math.round(gaps[gaps.length >> 1])) : SAMPLE_INTERVAL;
    }, () => SAMPLE_INTERVAL));
  }
  return intervals.get(selector);
}

/** The step (s) of a range query over { start, end }: about POINTS steps. */
const stepOf = ({ start, end }) => Math.max(1, Math.round((end - start) / 1000 / POINTS));

/**
 * Replaces `$name` and `${name}` by `values[name]`; names not in `values`
 * stay as they are (the API then says what is wrong).
 */
export function expandVariables(query, values) {
  return query.replace(/\$\{(\w+)\}|\$(\w+)/g, (all, braced, bare) => values[braced ?? bare] ?? all);
}

/**
 * Grafana's automatic windows for a range query over { start, end }:
 * `$__interval` (the step), `$__range` (the window) and `$__rate_interval`
 * (max(4 x sample interval, step + sample interval): always two samples).
 * `sample` is the sample interval (s), from `sampleInterval`.
 */
function builtInVariables(span, sample) {
  const step = stepOf(span);
  return {
    __interval: `${step}s`,
    __range: `${Math.max(1, Math.round((span.end - span.start) / 1000))}s`,
    __rate_interval: `${Math.max(4 * sample, step + sample)}s`,
  };
}

/** Values as a regex alternation for `=~`: `a|b`, each escaped, in a PromQL string. */
export function regexAlternatives(values) {
  if (!values.length) return ".*";
  return values.map((v) => v.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/[\\"]/g, "\\$&")).join("|");
}

/** `label_values(selector, label)` or `label_values(label)` as { selector, label }, else null. */
export function labelValuesQuery(query) {
  const m = /^\s*label_values\s*\(\s*(?:(.*\S)\s*,\s*)?([a-zA-Z_]\w*)\s*\)\s*$/s.exec(query || "");
  return m ? { selector: m[1] || "", label: m[2] } : null;
}

const SECONDS = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800, y: 31536000 };

/**
 * A hint for rate()/increase() windows shorter than two sample intervals
 * (`sample`, s): such a window often holds fewer than two samples, so the
 * line has gaps.
 */
export function rateWindowHint(query, sample = SAMPLE_INTERVAL) {
  for (const m of query.matchAll(/\b(?:rate|irate|increase)\s*\([^()[]*\[((?:\d+(?:ms|[smhdwy]))+)(?::[^\]]*)?\]/g)) {
    let seconds = 0;
    for (const [, n, unit] of m[1].matchAll(/(\d+)(ms|[smhdwy])/g)) seconds += +n * SECONDS[unit];
    if (seconds < 2 * sample) {
      return `The window [${m[1]}] is shorter than two sample intervals (samples come every ${sample}s), ` +
        `so it often holds fewer than two samples and the line has gaps: use [$__rate_interval] or at least [${2 * sample}s].`;
    }
  }
  return "";
}

/**
 * Runs a range query over { start, end } (epoch ms) at about POINTS steps,
 * with `$__interval`, `$__range` and `$__rate_interval` replaced; resolves
 * to the result matrix, rejects with the API's message.
 */
export async function queryRange(query, span) {
  const sample = /\$\{?__rate_interval\b/.test(query) ? await sampleInterval(query, span) : SAMPLE_INTERVAL;
  const body = await api("/api/v1/query_range", {
    query: expandVariables(query, builtInVariables(span, sample)),
    start: (span.start / 1000).toFixed(3), end: (span.end / 1000).toFixed(3), step: stepOf(span),
  });
  return body.data.result || [];
}

/** A query_range matrix as chart series: { name, labels, color, points: [[sec, value]] }. */
export function toSeries(result) {
  return result.slice(0, MAX_SERIES).map((r, i) => ({
    name: seriesName(r.metric),
    labels: r.metric,
    color: colorFor("", i),
    points: r.values.map(([t, v]) => [t, Number(v)]),
  }));
}

/**
 * The labels (with `__name__`) every one of several series has alike, and
 * each series' name without them, as tooltips and legends show it.
 */
export function sharedLabels(series) {
  if (series.length < 2) return { common: {}, names: series.map((s) => s.name) };
  const [first, ...rest] = series.map((s) => s.labels || {});
  const common = Object.fromEntries(Object.entries(first).filter(([k, v]) => rest.every((l) => l[k] === v)));
  const names = series.map((s) => {
    const own = Object.fromEntries(Object.entries(s.labels || {}).filter(([k]) => !(k in common)));
    return Object.keys(own).length ? seriesName(own) : s.name;
  });
  return { common, names };
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
  // Zero needs no unit: "0", not "0µs" or "0 B".
  if (v === 0) return "0";
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

export function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

/** Round steps (s) between time ticks, from a second to a week. */
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

/**
 * At most `count` time ticks (s) in t0..t1 on round local times (whole
 * minutes, hours, midnights), and the step between them.
 */
function timeTicks(t0, t1, count = 5) {
  const step = TIME_STEPS.find((s) => (t1 - t0) / s <= count) || TIME_STEPS.at(-1);
  // Local time: getTimezoneOffset() is UTC minus local, in minutes.
  const offset = new Date(t0 * 1000).getTimezoneOffset() * 60;
  const out = [];
  for (let t = Math.ceil((t0 - offset) / step) * step + offset; t <= t1; t += step) out.push(t);
  return { ticks: out, step };
}

/** A time tick's label, as precise as its step: 24-hour HH:MM:SS, HH:MM or MM-DD HH:MM. */
function fmtTick(sec, step, span) {
  const text = fmtTime(sec * 1000);
  if (step < 60) return text.slice(11, 19);
  if (span <= 86400) return text.slice(11, 16);
  return step >= 86400 ? text.slice(5, 10) : text.slice(5, 16);
}

/** The time axis of a chart: labels (class `axis x`) at round times. */
export function timeAxis(root, x, t0, t1, { y, left, right }) {
  const { ticks: times, step } = timeTicks(t0, t1);
  for (const t of times) {
    const at = x(t);
    const anchor = at < left + 24 ? "start" : at > right - 24 ? "end" : "middle";
    const label = svg("text", { class: "axis x", x: at, y, "text-anchor": anchor });
    label.textContent = fmtTick(t, step, t1 - t0);
    root.append(label);
  }
}

/**
 * Zooms the view on screen to [startMs, endMs]: the global window in the
 * URL (absolute start/end), the rest of the URL kept.
 */
function zoomTo(startMs, endMs) {
  const [path, query = ""] = location.hash.split("?");
  const params = new URLSearchParams(query);
  params.delete("range");
  params.set("start", Math.round(startMs));
  params.set("end", Math.round(endMs));
  location.hash = `${path}?${params}`;
}

/** `{a="b", c="d"}` (with the metric name first, if shared). */
function labelText(labels) {
  const { __name__: name = "", ...rest } = labels;
  const entries = Object.entries(rest);
  return `${name}${entries.length || !name ? `{${entries.map(([k, v]) => `${k}="${v}"`).join(", ")}}` : ""}`;
}

/**
 * A line chart that is drawn once and then updated in place, so that a
 * refresh does not flicker: `update(series, startMs, endMs)` (series from
 * `toSeries`). It has y and time axes, an optional legend, and on hover a
 * cursor listing every series' value at that time. Labels all series share
 * are named once above the plot, and the hover and legend name series by
 * the rest. A click on a legend entry shows that series alone (again: all),
 * shift-click hides or shows just it; dragging across the plot zooms the
 * global window. Options: `unit` (see `fmtUnit`), `legend`, `height`,
 * `zero` (start the y axis at 0 when all values are positive, as rates
 * read best). Call `destroy()` on cleanup.
 */
export function lineChart({ unit = "", legend = true, height = 280, zero = false, kind = "lines" } = {}) {
  const stacked = kind === "stacked" || kind === "bars";
  const plot = h("div.chart-plot", { title: "Drag across the chart to zoom in" });
  const hover = h("div.chart-hover", { hidden: true });
  const legendEl = h("ul.chart-legend", { hidden: !legend });
  const commonEl = h("div.chart-common.muted", { hidden: true });
  const el = h("div.chart", { dataset: { series: 0 } }, commonEl, plot, hover, legendEl);
  let series = [], t0 = 0, t1 = 1, scale = null, width = 0;
  /** Short names by series name, and the series the legend hid (by name). */
  let shortName = new Map();
  const hidden = new Set();
  const visible = () => series.filter((s) => !hidden.has(s.name));

  const draw = () => {
    width = Math.max(plot.clientWidth, 300);
    const pad = { l: 64, r: 12, t: 10, b: 24 };
    const shown = visible();
    // Stacked: each series drawn from the sum of those before it (at each step).
    const bases = [];
    if (stacked) {
      const sums = new Map();
      for (const s of shown) {
        const base = new Map();
        for (const [t, v] of s.points) {
          const below = sums.get(t) || 0;
          base.set(t, below);
          if (Number.isFinite(v)) sums.set(t, below + v);
        }
        bases.push(base);
      }
    }
    let lo = Infinity, hi = -Infinity;
    shown.forEach((s, i) => {
      for (const [t, v] of s.points) {
        if (!Number.isFinite(v)) continue;
        const top = stacked ? bases[i].get(t) + v : v;
        lo = Math.min(lo, stacked ? Math.min(0, top) : v);
        hi = Math.max(hi, top);
      }
    });
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
      const label = svg("text", { class: "axis y", x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = axisValue(v);
      root.append(label);
    }
    timeAxis(root, x, t0, t1, { y: height - 6, left: pad.l, right: width - pad.r });
    shown.forEach((s, i) => {
      const step = s.points.length > 1 ? Math.min(...s.points.slice(1).map((p, j) => p[0] - s.points[j][0])) : 0;
      const title = svg("title", {});
      title.textContent = s.name;
      if (kind === "bars") {
        const w = Math.max(1, (step ? x(t0 + step) - x(t0) : 8) * 0.8);
        const group = svg("g", { fill: s.color });
        for (const [t, v] of s.points) {
          if (!Number.isFinite(v)) continue;
          const [top, bottom] = [y(bases[i].get(t) + v), y(bases[i].get(t))];
          group.append(svg("rect", { class: "bar", x: (x(t) - w / 2).toFixed(1), y: Math.min(top, bottom).toFixed(1), width: w.toFixed(1), height: Math.abs(bottom - top).toFixed(1) }));
        }
        group.append(title);
        root.append(group);
        return;
      }
      // Gaps (missing steps or NaN) break the line.
      let d = "", prev = null;
      const runs = [];
      for (const [t, v] of s.points) {
        if (!Number.isFinite(v)) { prev = null; continue; }
        const top = stacked ? bases[i].get(t) + v : v;
        const gap = prev == null || t - prev > step * 1.5;
        d += `${gap ? "M" : "L"}${x(t).toFixed(1)},${y(top).toFixed(1)}`;
        if (gap) runs.push([]);
        runs.at(-1).push(t);
        prev = t;
      }
      if (stacked) {
        // Each run of steps closed along the top of the series below.
        const area = runs.map((ts) => `M${ts.map((t) => `${x(t).toFixed(1)},${y(bases[i].get(t) + s.points.find((p) => p[0] === t)[1]).toFixed(1)}`).join("L")}` +
          `L${ts.slice().reverse().map((t) => `${x(t).toFixed(1)},${y(bases[i].get(t)).toFixed(1)}`).join("L")}Z`).join("");
        root.append(svg("path", { class: "area", d: area, fill: s.color }));
      }
      const path = svg("path", { class: "series", d, stroke: s.color, fill: "none" });
      path.append(title);
      root.append(path);
      if (s.points.length === 1) root.append(svg("circle", { class: "series-dot", cx: x(s.points[0][0]), cy: y(s.points[0][1]), r: 3, fill: s.color }));
    });
    root.append(svg("line", { class: "cursor", x1: 0, x2: 0, y1: pad.t, y2: height - pad.b, visibility: "hidden" }));
    root.append(svg("rect", { class: "zoom-sel", x: 0, y: pad.t, width: 0, height: height - pad.t - pad.b, visibility: "hidden" }));
    plot.replaceChildren(root);
  };

  /** The time (s) under a client x, within the window. */
  const timeAt = (clientX) => {
    const px = clientX - plot.getBoundingClientRect().left;
    const t = t0 + ((px - scale.pad.l) / (width - scale.pad.l - scale.pad.r)) * (t1 - t0);
    return Math.min(t1, Math.max(t0, t));
  };

  // Hover: the step nearest the pointer, with each series' value there.
  const onMove = (e) => {
    if (!scale || !series.length) return;
    const box = plot.getBoundingClientRect();
    const px = e.clientX - box.left;
    const t = timeAt(e.clientX);
    let best = null;
    const shown = visible();
    for (const s of shown) for (const [pt] of s.points) if (best == null || Math.abs(pt - t) < Math.abs(best - t)) best = pt;
    if (best == null || px < scale.pad.l) return onLeave();
    const rows = shown.map((s) => ({ s, v: s.points.find(([pt]) => pt === best)?.[1] }))
      .filter((r) => r.v != null).sort((a, b) => (b.v || 0) - (a.v || 0));
    const cursor = plot.querySelector(".cursor");
    cursor.setAttribute("x1", scale.x(best));
    cursor.setAttribute("x2", scale.x(best));
    cursor.setAttribute("visibility", "visible");
    hover.replaceChildren(h("div.muted", {}, fmtTime(best * 1000)),
      ...rows.slice(0, HOVER_ROWS).map(({ s, v }) => h("div.hover-row", {},
        h("span.svc-dot", { style: `background:${s.color}` }), h("span.hover-name", {}, shortName.get(s.name) ?? s.name),
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

  // Drag to zoom: a band follows the pointer; letting go sets the window.
  plot.addEventListener("mousedown", (e) => {
    if (e.button !== 0 || !scale || e.clientX - plot.getBoundingClientRect().left < scale.pad.l) return;
    e.preventDefault();
    const from = timeAt(e.clientX);
    const band = plot.querySelector(".zoom-sel");
    const follow = (m) => {
      const [a, b] = [from, timeAt(m.clientX)].sort((p, q) => p - q);
      band.setAttribute("x", scale.x(a));
      band.setAttribute("width", scale.x(b) - scale.x(a));
      band.setAttribute("visibility", "visible");
    };
    const done = (m) => {
      window.removeEventListener("mousemove", follow);
      window.removeEventListener("mouseup", done);
      band?.setAttribute("visibility", "hidden");
      const [a, b] = [from, timeAt(m.clientX)].sort((p, q) => p - q);
      // A click, not a drag: nothing to zoom to.
      if (scale.x(b) - scale.x(a) >= 5) zoomTo(a * 1000, b * 1000);
    };
    window.addEventListener("mousemove", follow);
    window.addEventListener("mouseup", done);
  });

  // Legend: a click shows that series alone, or all again; shift-click toggles it.
  const pick = (s, toggle) => {
    if (toggle) {
      if (!hidden.delete(s.name)) hidden.add(s.name);
    } else if (visible().length === 1 && !hidden.has(s.name)) {
      hidden.clear();
    } else {
      for (const other of series) if (other !== s) hidden.add(other.name);
      hidden.delete(s.name);
    }
    draw();
    drawLegend();
  };
  const drawLegend = () => {
    legendEl.replaceChildren(...series.map((s) => {
      const name = shortName.get(s.name) ?? s.name;
      return h("li", {}, h("button.legend-item", {
        type: "button", title: `${s.name}\nClick: show only this series (again: all). Shift-click: hide or show it.`,
        "aria-pressed": String(!hidden.has(s.name)), dataset: { name }, class: hidden.has(s.name) ? "legend-item off" : "legend-item",
        onclick: (e) => pick(s, e.shiftKey),
      }, h("span.svc-dot", { style: `background:${s.color}` }), h("span", {}, name),
      h("span.num.muted", {}, fmtUnit(s.points.at(-1)?.[1], unit))));
    }));
  };

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
      // Hidden series stay hidden across refreshes, while they exist.
      const names = new Set(series.map((s) => s.name));
      for (const name of hidden) if (!names.has(name)) hidden.delete(name);
      const { common, names: short } = sharedLabels(series);
      shortName = new Map(series.map((s, i) => [s.name, short[i]]));
      commonEl.hidden = !Object.keys(common).length;
      commonEl.textContent = commonEl.hidden ? "" : `All series: ${labelText(common)}`;
      onLeave();
      draw();
      drawLegend();
    },
    /** As a click on the legend entry of `name` (shift-click with `toggle`); returns `hiddenNames()`. */
    isolate(name, toggle) {
      const s = series.find((x) => x.name === name);
      if (s) pick(s, toggle);
      return new Set(hidden);
    },
    /** The names of the series the legend hides. */
    hiddenNames() { return new Set(hidden); },
    destroy() {
      resize.disconnect();
      window.removeEventListener("strand-theme", draw);
    },
  };
}
