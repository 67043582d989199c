// Service map: a node per service and an arrow per service-to-service call
// in the header's time window, laid out left to right by call depth (callers
// left of callees). The edges come from /api/dependencies (what the span
// store counted); the numbers from PromQL: per edge the service graph
// metrics (traces_service_graph_*), per node its server spans' RED metrics
// (traces_span_metrics_*). A service or call whose failed share is above a
// threshold (5% unless the URL's `threshold` says otherwise, adjustable in
// the legend) is drawn red: a service by its own server spans (server-side),
// a call by what its caller saw (client-side: failed on either side). Rates
// are the shop dashboard's per-minute rates averaged over the window, so the
// two agree however long the window and however little of it had traffic.
// An arrow that skips layers passes through a free slot of each layer in
// between, and one going back runs under all the boxes, so no arrow crosses
// a box it does not connect. Each arrow's label sits on a free spot along
// it, clear of the boxes and of the other labels. A node links to its
// traces and metrics; an edge opens a panel with its numbers.

import { api, h, state, timeRange, onRefresh, serviceColors, fmtMicros } from "./lib.js";
import { queryRange } from "./metrics.js";

const SVG = "http://www.w3.org/2000/svg";
/** Geometry, in px: node box, distance between layers and rows. */
const NODE_W = 200, NODE_H = 68, COL = 370, ROW = 100, PAD = 24;
/** Room under the rows for edges that go back (cycles), if any. */
const BACK_ROOM = 70;
/** How far right of a column's boxes an arrow going back or sideways turns. */
const TURN = 16;
const SERVER = 'span_kind="SPAN_KIND_SERVER"';
/** Percent of failed requests above which a service or call is red. */
const DEFAULT_THRESHOLD = 5;
/** Room (px) kept between a label and a box or another label. */
const LABEL_GAP = 4;

export async function render(root, { params, current }) {
  const out = h("div.map-body");
  const note = h("p.muted.map-note");
  let threshold = thresholdOf(params);
  const thresholdInput = h("input", { type: "number", name: "threshold", min: 0, max: 100, step: "any", value: threshold, "aria-label": "error threshold in percent" });
  const legend = h("form.map-legend", { onsubmit: (e) => e.preventDefault() },
    h("span.map-swatch"), "Red: more than ", thresholdInput, "% of requests failed");
  root.append(h("h1", {}, "Service map"), note, legend, out);
  let selected = params.get("client") != null ? { client: params.get("client"), server: params.get("server") } : null;
  let loading = false;
  // The view's own state (open edge, threshold) goes into the URL without
  // drawing the view again.
  const remember = (changes) => {
    for (const [k, v] of Object.entries(changes)) if (v == null) params.delete(k); else params.set(k, v);
    history.replaceState(null, "", `#/map?${params}`);
  };
  let repaint = () => {};
  thresholdInput.addEventListener("input", () => {
    const value = thresholdInput.valueAsNumber;
    if (!(value >= 0 && value <= 100)) return;
    threshold = value;
    remember({ threshold: value });
    repaint();
  });

  const load = async () => {
    if (loading) return; // a slow load is not stacked up by refresh ticks
    loading = true;
    try { await draw(); } finally { loading = false; }
  };
  const draw = async () => {
    // Re-read on every run: a relative range ("last 1h") moves with the clock.
    const win = timeRange(params);
    if (!out.childElementCount) out.append(state("Loading the service map…"));
    let graph;
    try {
      graph = await fetchGraph(win);
    } catch (e) {
      if (current()) out.replaceChildren(state(`Cannot load the service map: ${e.message}`, "error"));
      return;
    }
    if (!current()) return;
    note.textContent = graph.metricsError
      ? `Call rates and latencies are unavailable: ${graph.metricsError}`
      : "Over the time range: request rate (the mean of the per-minute rate while there was traffic), 95th percentile latency and failed share — of a service's own server spans (server-side), and on arrows of the calls as their callers saw them (client-side; latency of the called side). Click a service for its traces, an arrow for its numbers.";
    note.classList.toggle("error", Boolean(graph.metricsError));
    if (!graph.edges.length) {
      out.replaceChildren(state("No calls between services in this range. Widen the time range, or send traces that cross services."));
      return;
    }
    const detail = h("aside.detail.map-detail", { hidden: true });
    const select = (edge) => {
      selected = edge && { client: edge.client, server: edge.server };
      for (const el of out.querySelectorAll(".map-edge")) {
        el.classList.toggle("selected", Boolean(edge) && el.dataset.client === edge.client && el.dataset.server === edge.server);
      }
      showEdge(detail, edge, threshold, () => select(null));
      // Shareable without reloading the view: the URL says which edge is open.
      remember({ client: edge?.client, server: edge?.server });
    };
    const picture = h("div.map-canvas");
    out.replaceChildren(picture, detail);
    const { root: drawing, boxes } = drawGraph(graph, select);
    picture.append(drawing);
    placeLabels(drawing, boxes);
    // The open edge's panel, if any, colours its numbers by the threshold too.
    repaint = () => {
      paint(drawing, threshold);
      const again = selected && graph.edges.find((e) => e.client === selected.client && e.server === selected.server);
      if (again) select(again);
    };
    repaint();
  };
  await load();
  return onRefresh(load);
}

/**
 * The window's services, edges and numbers. Numbers are optional: without
 * them (a PromQL error) the map still shows who calls whom.
 */
async function fetchGraph(win) {
  const seconds = Math.max(1, Math.round((win.end - win.start) / 1000));
  const [deps, services] = await Promise.all([
    api("/api/dependencies", { endTs: Math.round(win.end), lookback: Math.round(win.end - win.start) }),
    api("/api/services"),
  ]);
  const w = `[${seconds}s]`;
  const share = (failed, all, by) => `sum by (${by}) (rate(${failed}${w})) / sum by (${by}) (rate(${all}${w}))`;
  const at = (win.end / 1000).toFixed(3);
  const key = (metric, labels) => labels.map((l) => metric[l] || "").join("\u0000");
  const query = async (q, ...labels) => {
    const body = await api("/api/v1/query", { query: q, time: at });
    return new Map(body.data.result.map((r) => [key(r.metric, labels), Number(r.value[1])]));
  };
  // Rates are the dashboards' (`$__rate_interval` windows at the points of
  // their range query over the window) averaged: only points with traffic count, so a
  // service that ran for ten minutes of the hour shows its rate of those
  // ten minutes, as its dashboard panel does, not its calls spread over the
  // hour (which `rate(...[1h])` gives).
  const mean = async (q, ...labels) => new Map((await queryRange(q, win)).map((r) =>
    [key(r.metric, labels), r.values.reduce((sum, [, v]) => sum + Number(v), 0) / r.values.length]));
  const byEdge = (q) => query(q, "client", "server");
  const byService = (q) => query(q, "service_name");
  let numbers = {};
  let metricsError = null;
  try {
    const [calls, failed, p95, nodeCalls, nodeFailed, nodeP95] = await Promise.all([
      mean("sum by (client, server) (rate(traces_service_graph_request_total[$__rate_interval]))", "client", "server"),
      byEdge(share("traces_service_graph_request_failed_total", "traces_service_graph_request_total", "client, server")),
      byEdge(`histogram_quantile(0.95, sum by (client, server, le) (rate(traces_service_graph_request_server_seconds_bucket${w})))`),
      mean(`sum by (service_name) (rate(traces_span_metrics_calls_total{${SERVER}}[$__rate_interval]))`, "service_name"),
      byService(share(`traces_span_metrics_calls_total{${SERVER}, status_code="STATUS_CODE_ERROR"}`, `traces_span_metrics_calls_total{${SERVER}}`, "service_name")),
      byService(`histogram_quantile(0.95, sum by (service_name, le) (rate(traces_span_metrics_duration_seconds_bucket{${SERVER}}${w})))`),
    ]);
    numbers = { calls, failed, p95, nodeCalls, nodeFailed, nodeP95 };
  } catch (e) {
    metricsError = e.message;
  }
  // A failed share is absent where nothing failed (no error series yet).
  const red = (calls, failed, p95, key) => {
    const rate = calls?.get(key);
    return { rate, errorRatio: rate > 0 ? failed.get(key) || 0 : null, p95: p95?.get(key) };
  };
  const edges = (deps.data || [])
    .filter((d) => d.parent !== d.child)
    .map((d) => ({
      client: d.parent, server: d.child, count: d.callCount, errorCount: d.errorCount || 0,
      ...red(numbers.calls, numbers.failed, numbers.p95, `${d.parent}\u0000${d.child}`),
    }));
  // Services that served requests but called no one, and no one them, are
  // nodes too (layer 0): the map shows every service active in the window.
  const active = [...(numbers.nodeCalls || new Map())].filter(([, rate]) => rate > 0).map(([name]) => name);
  const names = [...new Set([...edges.flatMap((e) => [e.client, e.server]), ...active])];
  const nodes = names.map((name) => ({ name, ...red(numbers.nodeCalls, numbers.nodeFailed, numbers.nodeP95, name) }));
  return { nodes, edges, colors: serviceColors(services.data || [], names), metricsError };
}

/**
 * Layers by call depth: each callee one right of its deepest caller. Cycles
 * are cut by capping the depth at the number of services. A call that skips
 * layers gets a waypoint, a slot of its own, in each layer it passes
 * through, so that its arrow never crosses a box. Returns the position of
 * every service and waypoint, and each call's waypoints (by "client\0server").
 */
function layout(nodes, edges) {
  const layer = new Map(nodes.map((n) => [n.name, 0]));
  for (let pass = 0; pass < nodes.length; pass++) {
    let moved = false;
    for (const e of edges) {
      const want = layer.get(e.client) + 1;
      if (want > layer.get(e.server) && want < nodes.length) { layer.set(e.server, want); moved = true; }
    }
    if (!moved) break;
  }
  // Slots: the services, then the waypoints; `callers` of each slot are
  // the slots one layer left that an arrow comes from.
  const slots = nodes.map((n) => ({ name: n.name, layer: layer.get(n.name), waypoint: false }));
  const callers = new Map();
  const calledFrom = (name, from) => callers.set(name, [...(callers.get(name) || []), from]);
  const waypoints = new Map();
  for (const e of edges) {
    const [from, to] = [layer.get(e.client), layer.get(e.server)];
    if (to <= from) continue;
    const via = [];
    let previous = e.client;
    for (let l = from + 1; l < to; l++) {
      const name = `\u0000${e.client}\u0000${e.server}\u0000${l}`;
      slots.push({ name, layer: l, waypoint: true });
      calledFrom(name, previous);
      via.push(name);
      previous = name;
    }
    calledFrom(e.server, previous);
    waypoints.set(`${e.client}\u0000${e.server}`, via);
  }
  const layers = [];
  for (const slot of slots) (layers[slot.layer] ||= []).push(slot);
  // Fewer crossings: order each layer by the mean row of its callers;
  // services before waypoints, then by name, so the same graph always
  // looks the same.
  const row = new Map();
  for (const column of layers.filter(Boolean)) {
    const mean = (slot) => {
      const rows = (callers.get(slot.name) || []).filter((c) => row.has(c)).map((c) => row.get(c));
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : Infinity;
    };
    column.sort((a, b) => mean(a) - mean(b) || a.waypoint - b.waypoint || a.name.localeCompare(b.name));
    column.forEach((slot, i) => row.set(slot.name, i));
  }
  const rows = Math.max(...layers.filter(Boolean).map((l) => l.length));
  const pos = new Map();
  layers.filter(Boolean).forEach((column, col) => {
    const top = PAD + ((rows - column.length) * ROW) / 2; // centre short layers
    column.forEach((slot, i) => pos.set(slot.name, { x: PAD + col * COL, y: top + i * ROW }));
  });
  const back = edges.some((e) => layer.get(e.server) < layer.get(e.client));
  return {
    pos,
    waypoints,
    width: PAD * 2 + (layers.filter(Boolean).length - 1) * COL + NODE_W,
    height: PAD * 2 + (rows - 1) * ROW + NODE_H + (back ? BACK_ROOM : 0),
    // Where arrows going back run: under every box.
    channel: PAD + (rows - 1) * ROW + NODE_H + BACK_ROOM / 2,
  };
}

/** The drawing, and the boxes of its nodes for placing the labels. */
function drawGraph(graph, select) {
  const { pos, waypoints, width, height, channel } = layout(graph.nodes, graph.edges);
  const root = svg("svg", { class: "service-map", width, height, viewBox: `0 0 ${width} ${height}`, "aria-label": "service map" });
  // Sized in px, not stroke widths, so a highlighted edge keeps its arrowhead.
  const marker = (id) => svg("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 11, markerHeight: 11, orient: "auto" },
    svg("path", { d: "M0,0 L10,5 L0,10 z" }));
  root.append(svg("defs", {}, marker("map-arrow"), marker("map-arrow-error")));
  for (const e of graph.edges) {
    const via = (waypoints.get(`${e.client}\u0000${e.server}`) || []).map((name) => pos.get(name));
    root.append(drawEdge(e, route(pos.get(e.client), pos.get(e.server), via, channel), select));
  }
  for (const n of graph.nodes) root.append(drawNode(n, pos.get(n.name), graph.colors.get(n.name)));
  const boxes = graph.nodes.map((n) => ({ ...pos.get(n.name), w: NODE_W, h: NODE_H }));
  return { root, boxes };
}

/**
 * An arrow's path. Forward: from the caller's right side through its
 * waypoints' slots to the callee's left side, curving only between columns,
 * where there are no boxes. Within a column (same layer): out of the
 * caller's right side and into the callee's, turning in the gap beside the
 * column. Back (a cycle): the same, down to the channel under every box and
 * along it to the callee's column.
 */
function route(from, to, via, channel) {
  const mid = (at) => at.y + NODE_H / 2;
  if (to.x > from.x) {
    const hops = [{ x: from.x, y: mid(from) }, ...via.map((at) => ({ x: at.x, y: mid(at) })), { x: to.x, y: mid(to) }];
    let d = `M${hops[0].x + NODE_W},${hops[0].y}`;
    for (let i = 1; i < hops.length; i++) {
      const [x1, y1] = [hops[i - 1].x + NODE_W, hops[i - 1].y];
      const last = i === hops.length - 1;
      const [x2, y2] = [hops[i].x - (last ? 2 : 0), hops[i].y];
      const bend = (x2 - x1) / 2;
      d += ` C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
      if (!last) d += ` L${x2 + NODE_W},${y2}`;
    }
    return d;
  }
  const [x1, y1, x2, y2] = [from.x + NODE_W, mid(from), to.x + NODE_W + 2, mid(to)];
  const corners = to.x === from.x
    ? [[x1 + TURN, y1], [x1 + TURN, y2]]
    : [[x1 + TURN, y1], [x1 + TURN, channel], [x2 + TURN, channel], [x2 + TURN, y2]];
  return rounded([[x1, y1], ...corners, [x2, y2]], 8);
}

/** A path along `points` whose corners are rounded with radius `r` at most. */
function rounded(points, r) {
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let i = 1; i < points.length - 1; i++) {
    const [[px, py], [x, y], [nx, ny]] = [points[i - 1], points[i], points[i + 1]];
    const cut = (ax, ay, bx, by) => {
      const length = Math.hypot(bx - ax, by - ay) || 1;
      const k = Math.min(r, length / 2) / length;
      return `${x + (bx - ax) * k},${y + (by - ay) * k}`;
    };
    d += ` L${cut(x, y, px, py)} Q${x},${y} ${cut(x, y, nx, ny)}`;
  }
  const [lx, ly] = points[points.length - 1];
  return `${d} L${lx},${ly}`;
}

function drawEdge(edge, d, select) {
  // Drawn at the origin; placeLabels moves it to a free spot on the arrow.
  const label = svg("text", { class: "edge-label", x: 0, y: 0, "text-anchor": "middle" },
    tspan(`${fmtRate(edge.rate)} · p95 ${fmtSeconds(edge.p95)}`, 0, 0),
    tspan(`${fmtPercent(edge.errorRatio)} failed client-side`, 0, 13));
  // Without metrics, the share of failed calls the span store counted.
  const failed = edge.errorRatio ?? (edge.count > 0 ? edge.errorCount / edge.count : null);
  const g = svg("g", {
    class: "map-edge", tabindex: 0, role: "button",
    "aria-label": `${edge.client} calls ${edge.server}`,
    "data-client": edge.client, "data-server": edge.server,
    "data-rate": edge.rate ?? "", "data-error-ratio": edge.errorRatio ?? "", "data-p95": edge.p95 ?? "",
    "data-failed": failed ?? "",
  },
  svg("path", { class: "hit", d }),
  svg("path", { class: "line", d }),
  svg("g", { class: "edge-tag" }, svg("rect", { class: "label-bg" }), label),
  svg("title", {}, `${edge.client} → ${edge.server}: failed share as ${edge.client} saw the calls (client-side)`));
  g.addEventListener("click", () => select(edge));
  g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(edge); } });
  return g;
}

function drawNode(node, at, color) {
  const traces = svg("a", { class: "node-traces", href: `#/traces?service=${encodeURIComponent(node.name)}` },
    svg("rect", { class: "box", x: at.x, y: at.y, width: NODE_W, height: NODE_H, rx: 6 }),
    svg("rect", { class: "stripe", x: at.x, y: at.y, width: 5, height: NODE_H, rx: 2, fill: color }),
    svg("text", { class: "node-name", x: at.x + 14, y: at.y + 22 }, node.name),
    svg("text", { class: "node-red", x: at.x + 14, y: at.y + 42 }, `${fmtRate(node.rate)} · p95 ${fmtSeconds(node.p95)}`),
    svg("text", { class: "node-red", x: at.x + 14, y: at.y + 58 }, `${fmtPercent(node.errorRatio)} failed server-side`),
    svg("title", {}, `Traces of ${node.name}`));
  const metrics = svg("a", { class: "node-metrics", href: `#/metrics?query=${encodeURIComponent(nodeQuery(node.name))}` },
    svg("text", { x: at.x + NODE_W - 8, y: at.y + 18, "text-anchor": "end" }, "metrics"),
    svg("title", {}, `Request rate of ${node.name} per operation and status`));
  return svg("g", { class: "map-node", "data-service": node.name, "data-rate": node.rate ?? "", "data-failed": node.errorRatio ?? "" }, traces, metrics);
}

/** The URL's threshold (percent), or the default when it has none or a bad one. */
function thresholdOf(params) {
  const raw = params.get("threshold");
  const value = raw ? Number(raw) : NaN;
  return value >= 0 && value <= 100 ? value : DEFAULT_THRESHOLD;
}

/** Whether a failed share (0..1, or "" when unknown) is above `threshold` percent. */
const failing = (share, threshold) => share !== "" && share != null && Number(share) > threshold / 100;

/** Draws red the services and calls whose failed share is above `threshold` percent. */
function paint(drawing, threshold) {
  for (const el of drawing.querySelectorAll(".map-node, .map-edge")) {
    const red = failing(el.dataset.failed, threshold);
    el.classList.toggle("error", red);
    el.querySelector(".line")?.setAttribute("marker-end", `url(#${red ? "map-arrow-error" : "map-arrow"})`);
  }
}

/** The edge's numbers and where to go from it, in the side panel. */
function showEdge(panel, edge, threshold, close) {
  panel.hidden = !edge;
  if (!edge) return;
  const { client, server } = edge;
  const labels = `client="${esc(client)}", server="${esc(server)}"`;
  const metrics = (q) => `#/metrics?query=${encodeURIComponent(q)}`;
  const traces = (service, tags) => `#/traces?${new URLSearchParams({ service, ...(tags ? { tags } : {}) })}`;
  panel.replaceChildren(
    h("div.detail-head", {}, h("h2", {}, `${client} → ${server}`),
      h("button.close", { type: "button", "aria-label": "close", onclick: close }, "×")),
    h("table.kv", {},
      h("tr", {}, h("th", {}, "Requests"), h("td", {}, fmtRate(edge.rate))),
      h("tr", {}, h("th", {}, "Failed (client-side)"), h("td", { class: failing(edge.errorRatio, threshold) ? "map-bad" : "" }, fmtPercent(edge.errorRatio))),
      h("tr", {}, h("th", {}, "p95 latency"), h("td", {}, fmtSeconds(edge.p95))),
      h("tr", {}, h("th", {}, "Calls seen"), h("td", {}, `${edge.count} (${edge.errorCount} failed) in the whole hours around the range`))),
    h("h3", {}, "Traces"),
    h("ul.map-links", {},
      h("li", {}, h("a", { href: traces(server) }, `Traces of ${server}`)),
      h("li", {}, h("a", { href: traces(server, "error=true") }, `Failed traces of ${server}`)),
      h("li", {}, h("a", { href: traces(client) }, `Traces of ${client}`))),
    h("h3", {}, "Metrics"),
    h("ul.map-links", {},
      h("li", {}, h("a", { href: metrics(`sum(rate(traces_service_graph_request_total{${labels}}[1m]))`) }, "Request rate")),
      h("li", {}, h("a", { href: metrics(`sum(rate(traces_service_graph_request_failed_total{${labels}}[1m])) / sum(rate(traces_service_graph_request_total{${labels}}[1m]))`) }, "Failed share")),
      h("li", {}, h("a", { href: metrics(`histogram_quantile(0.95, sum by (le) (rate(traces_service_graph_request_server_seconds_bucket{${labels}}[1m])))`) }, "p95 latency"))));
}

/** What "metrics" on a node opens: its request rate by operation and status. */
function nodeQuery(service) {
  return `sum by (span_name, status_code) (rate(traces_span_metrics_calls_total{service_name="${esc(service)}", ${SERVER}}[1m]))`;
}

/**
 * Puts each edge's label (text on its background, sized once the text is
 * laid out) where its box touches no node box and no label placed before it:
 * the first free point along its own arrow, from the middle outwards.
 * Shorter arrows go first, so that the labels of neighbours sit in the
 * middle of their arrows, and ties go in name order: the same graph always
 * looks the same. When an arrow has no free point (one that crosses a
 * column, or many calls squeezed between two columns), its label goes to
 * the nearest free spot above or below the arrow's middlemost point outside
 * the boxes, tied to it by a thin line; the drawing grows to fit. Needs the
 * drawing in the page.
 */
function placeLabels(drawing, nodeBoxes) {
  const width = drawing.width.baseVal.value;
  const taken = nodeBoxes.map((b) => grow(b, LABEL_GAP));
  const clear = (box) => !taken.some((t) => overlaps(box, t));
  const onCanvas = (box) => box.x >= 0 && box.y >= 0 && box.x + box.w <= width;
  const inNode = (p) => nodeBoxes.some((b) => overlaps({ ...p, w: 0, h: 0 }, b));
  const name = (g) => `${g.dataset.client}\u0000${g.dataset.server}`;
  const edges = [...drawing.querySelectorAll(".map-edge")]
    .map((g) => ({ g, line: g.querySelector(".line"), length: g.querySelector(".line").getTotalLength() }))
    .sort((a, b) => a.length - b.length || name(a.g).localeCompare(name(b.g)));
  let bottom = drawing.height.baseVal.value;
  for (const { g, line, length } of edges) {
    const text = g.querySelector(".edge-label").getBBox();
    const bg = { x: text.x - 4, y: text.y - 2, w: text.width + 8, h: text.height + 4 };
    const rect = g.querySelector(".label-bg");
    for (const [k, v] of Object.entries({ x: bg.x, y: bg.y, width: bg.w, height: bg.h, rx: 3 })) rect.setAttribute(k, v);
    const centredAt = (p) => ({ x: p.x - bg.w / 2, y: p.y - bg.h / 2, w: bg.w, h: bg.h });
    // Points along the arrow from its middle outwards: 50%, 45%, 55%, ... 10%, 90%.
    const points = [0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6, 6, -7, 7, -8, 8]
      .map((i) => line.getPointAtLength(length * (0.5 + i * 0.05)));
    let box = points.map(centredAt).find((at) => onCanvas(at) && clear(at));
    if (!box) {
      const anchor = points.find((p) => !inNode(p)) || points[0];
      const start = centredAt(anchor);
      start.x = Math.max(0, Math.min(start.x, width - start.w));
      // Nearest free spot, alternately below and above; below ends somewhere.
      for (let step = 1; !box; step++) {
        const dy = Math.ceil(step / 2) * LABEL_GAP * (step % 2 ? 1 : -1);
        const at = { ...start, y: start.y + dy };
        if (at.y >= 0 && clear(at)) box = at;
      }
      const toward = { x: Math.max(box.x, Math.min(anchor.x, box.x + box.w)), y: Math.max(box.y, Math.min(anchor.y, box.y + box.h)) };
      g.querySelector(".edge-tag").before(svg("line", { class: "label-leader", x1: anchor.x, y1: anchor.y, x2: toward.x, y2: toward.y }));
    }
    g.querySelector(".edge-tag").setAttribute("transform", `translate(${box.x - bg.x},${box.y - bg.y})`);
    taken.push(grow(box, LABEL_GAP));
    bottom = Math.max(bottom, box.y + box.h + PAD);
  }
  if (bottom > drawing.height.baseVal.value) {
    drawing.setAttribute("height", bottom);
    drawing.setAttribute("viewBox", `0 0 ${width} ${bottom}`);
  }
}

const grow = (b, by) => ({ x: b.x - by, y: b.y - by, w: b.w + 2 * by, h: b.h + 2 * by });
const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

/** A PromQL string literal's content. */
const esc = (s) => s.replace(/\\/g, "\\\\").replace(/"/g, '\\"');

/** Low rates read better per minute: a quiet edge is not "0.00 req/s". */
function fmtRate(perSecond) {
  if (perSecond == null || Number.isNaN(perSecond)) return "– req/s";
  if (perSecond === 0) return "0 req/s";
  if (perSecond < 0.1) return `${round(perSecond * 60)} req/min`;
  return `${round(perSecond)} req/s`;
}

function fmtPercent(ratio) {
  if (ratio == null || Number.isNaN(ratio)) return "–%";
  return `${round(ratio * 100)}%`;
}

function fmtSeconds(seconds) {
  return seconds == null || !Number.isFinite(seconds) ? "–" : fmtMicros(seconds * 1e6);
}

/** Three significant digits at most, no trailing zeros. */
const round = (v) => String(+v.toPrecision(v >= 100 ? Math.ceil(Math.log10(v + 1)) : 3));

function tspan(text, x, dy) {
  return svg("tspan", { x, dy }, text);
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}
