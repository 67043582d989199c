// One trace as a waterfall: every span of every service, nested by CHILD_OF,
// coloured per service, errors marked, subtrees collapsible, the trace's logs
// under their spans, the critical path drawn over the bars, a time axis that
// zooms (drag across the ruler), and a detail panel for the selected span
// whose links lead to the linked spans. Above the waterfall: a minimap of
// the whole trace, a span search, statistics per operation, and links to the
// trace's logs, its services' metrics and its JSON; keys move between spans.
// Rows are virtualised, so traces of tens of thousands of spans stay smooth:
// zooming, searching or toggling only redraws the rows in view.

import { api, h, state, plural, fmtMicros, fmtTime, serviceColors, ticks, dragAcross, VirtualList } from "./lib.js";
import { searchIndex, statistics, statisticsTable } from "./trace-tools.js";

const ROW = 24;
/** A drag shorter than this (px) is a click, not a zoom. */
const MIN_DRAG = 4;
/** How far around the trace its logs are looked for (ms). */
const LOG_MARGIN_MS = 10_000;
/** How far around the trace its services' metrics are shown (ms): rates need minutes. */
const METRICS_MARGIN_MS = 15 * 60_000;
/** The duration label goes after a bar ending before this (percent of the timeline). */
const LABEL_ROOM = 85;
/** The minimap's height (px). */
const MAP_HEIGHT = 36;
/** Where the name column's width (px) is remembered, and its bounds. */
const NAME_WIDTH_KEY = "strand.trace.nameWidth";
const NAME_WIDTH = [140, 900];
/** Keys that move the selection between spans, by how many rows. */
const MOVES = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1 };

export async function render(root, { arg: traceId, params, current }) {
  root.append(state("Loading trace…"));
  const [traceRes, logsRes, servicesRes] = await Promise.allSettled([
    api(`/api/traces/${encodeURIComponent(traceId)}`),
    api(`/api/traces/${encodeURIComponent(traceId)}/logs`),
    api("/api/services"),
  ]);
  if (!current()) return;
  if (traceRes.status === "rejected") {
    root.replaceChildren(h("h1", {}, "Trace"), state(traceRes.reason.message, "error"),
      h("p", {}, h("a", { href: "#/traces" }, "Search traces")));
    return;
  }
  const t = traceRes.value.data[0];
  const logs = logsRes.status === "fulfilled" ? logsRes.value.logs || [] : [];
  const known = servicesRes.status === "fulfilled" ? servicesRes.value.data || [] : [];
  const model = buildModel(t, logs, known);
  const view = new TraceView(model, params.get("span"), params.get("zoom"), traceRes.value);
  root.replaceChildren(view.el);
  if (logsRes.status === "rejected") view.note(`The trace's logs could not be loaded: ${logsRes.reason.message}`);
  view.start();
  // For `strand-bench ui`: the first frame with the waterfall has been
  // rendered once a task queued from the next animation frame runs.
  requestAnimationFrame(() => setTimeout(() => performance.mark("strand:trace-drawn")));
  return () => view.stop();
}

/** Spans with parents, children, depth and service; logs attached to spans. */
export function buildModel(t, logs, knownServices = []) {
  const byId = new Map();
  const services = [...new Set(Object.values(t.processes).map((p) => p.serviceName))].sort();
  const colors = serviceColors(knownServices, services);
  for (const s of t.spans) {
    const process = t.processes[s.processID] || { serviceName: "?", tags: [] };
    const parentRef = s.references.find((r) => r.refType === "CHILD_OF");
    byId.set(s.spanID, {
      id: s.spanID, parent: parentRef ? parentRef.spanID : null, raw: s, process,
      service: process.serviceName, op: s.operationName, start: s.startTime, dur: s.duration,
      error: s.tags.some((g) => (g.key === "error" && (g.value === true || g.value === "true")) ||
        (g.key === "otel.status_code" && g.value === "ERROR")),
      children: [], logs: [], depth: 0,
    });
  }
  const roots = [];
  for (const span of byId.values()) {
    const parent = span.parent && byId.get(span.parent);
    if (parent) parent.children.push(span); else roots.push(span);
  }
  const byStart = (a, b) => a.start - b.start;
  roots.sort(byStart);
  for (const span of byId.values()) span.children.sort(byStart);
  // Depths without recursion: deep traces must not overflow the stack.
  const stack = roots.map((r) => [r, 0]);
  while (stack.length) {
    const [span, depth] = stack.pop();
    span.depth = depth;
    for (const c of span.children) stack.push([c, depth + 1]);
  }
  const start = t.spans.reduce((m, s) => Math.min(m, s.startTime), Infinity);
  const end = t.spans.reduce((m, s) => Math.max(m, s.startTime + s.duration), -Infinity);
  // Log times are nanoseconds: subtracted as BigInt from the trace's start
  // (whole µs), then µs with a fraction, so sub-millisecond logs land on
  // their spans and never onto each other.
  const startNanos = BigInt(start) * 1000n;
  const orphanLogs = [];
  for (const log of logs) {
    log.offset = Number(BigInt(log.timeUnixNano) - startNanos) / 1000;
    log.at = start + log.offset;
    const span = log.spanId && byId.get(log.spanId);
    if (span) span.logs.push(log); else orphanLogs.push(log);
  }
  for (const span of byId.values()) span.logs.sort((a, b) => a.offset - b.offset);
  return { id: t.traceID, byId, roots, services, colors, start, dur: Math.max(end - start, 1), orphanLogs, logCount: logs.length };
}

/**
 * The critical path under `root` (nodes of `{ id, start, dur, children }`,
 * times in µs): walking back from the root's end, the child that finished
 * last before the current point is on the path, down through its own
 * children; the stretches no such child covers belong to the parent.
 * Children are clipped to their parent's time. Returns segments
 * `{ id, start, end }`, latest first. Iterative, so deep traces do not
 * overflow the stack.
 */
export function criticalPath(root) {
  const end = (s) => s.start + s.dur;
  const segments = [];
  const frame = (span, cursor, floor) => ({
    span, cursor, floor,
    // By clipped end, latest first: the cursor only moves back, so a child
    // passed over once can never qualify later, and each is looked at once.
    kids: span.children.map((c) => ({ c, end: Math.min(end(c), cursor) })).sort((a, b) => b.end - a.end),
    next: 0,
  });
  const stack = [frame(root, end(root), root.start)];
  while (stack.length) {
    const top = stack[stack.length - 1];
    let pick = null;
    while (top.cursor > top.floor && top.next < top.kids.length) {
      const k = top.kids[top.next++];
      if (k.end <= top.cursor && k.c.start < top.cursor) { pick = k; break; }
    }
    if (!pick) {
      if (top.cursor > top.floor) segments.push({ id: top.span.id, start: top.floor, end: top.cursor });
      stack.pop();
      continue;
    }
    if (top.cursor > pick.end) segments.push({ id: top.span.id, start: pick.end, end: top.cursor });
    const floor = Math.max(pick.c.start, top.floor);
    top.cursor = floor;
    stack.push(frame(pick.c, pick.end, floor));
  }
  return segments;
}

class TraceView {
  constructor(model, selected, zoom, raw) {
    this.m = model;
    /** The API's answer, for the JSON download. */
    this.raw = raw;
    this.collapsed = new Set();
    this.showLogs = true;
    this.showCritical = true;
    // The zoom window on the time axis, in µs since the epoch; the URL's
    // `zoom=<from>-<to>` holds it as µs since the trace's start.
    this.window = [model.start, model.start + model.dur];
    const z = /^(\d+)-(\d+)$/.exec(zoom || "");
    if (z && +z[2] > +z[1]) this.window = [model.start + +z[1], model.start + +z[2]];
    this.critical = new Map();
    for (const seg of criticalPath(model.roots[0])) {
      if (!this.critical.has(seg.id)) this.critical.set(seg.id, []);
      this.critical.get(seg.id).push(seg);
    }
    this.selected = selected && model.byId.has(selected) ? selected : null;
    this.list = new VirtualList(ROW, (row) => this.row(row), "vlist waterfall");
    this.detail = h("aside.detail", { "aria-label": "span detail" });
    const m = model;
    const root = m.roots[0];
    const errors = [...m.byId.values()].filter((s) => s.error).length;
    this.notes = h("div");
    this.matches = null; // ids of the spans the span search matches, or null
    this.matchList = []; // those spans in waterfall order, for next/previous
    this.matchAt = -1;
    this.searchBox = h("input.span-search", { type: "search", name: "spans", size: 32, autocomplete: "off",
      placeholder: "Find spans: service, op, tag, id", "aria-label": "find spans",
      oninput: () => this.search(this.searchBox.value),
      onkeydown: (e) => { if (e.key === "Enter") { e.preventDefault(); this.step(e.shiftKey ? -1 : 1); } } });
    this.matchCount = h("span.match-count.muted", { "aria-live": "polite" });
    this.stats = h("div.trace-stats-wrap", { hidden: true });
    this.resetZoom = h("button.reset-zoom", { type: "button", onclick: () => this.zoom(m.start, m.start + m.dur) }, "Reset zoom");
    this.el = h("div.trace-view", {},
      h("div.trace-head", {},
        h("h1", {}, `${root.service}: ${root.op}`),
        h("div.meta", {},
          h("span", {}, `Duration ${fmtMicros(m.dur)}`),
          h("span", {}, plural(m.byId.size, "span")),
          h("span", {}, plural(m.services.length, "service")),
          errors ? h("span.error-badge", {}, plural(errors, "error")) : null,
          h("span", {}, plural(m.logCount, "log")),
          h("span.muted", {}, fmtTime(m.start / 1000)),
          h("code.muted", {}, m.id),
          h("a.trace-logs", { href: this.logsHref() }, "Logs of this trace"),
          h("a.trace-metrics", { href: this.metricsHref(), title: "Request and error rates of the trace's services around its time" }, "Service metrics"),
          h("a.download-json", { href: "#", download: `trace-${m.id}.json`, title: "The trace as the API answers it",
            onclick: (e) => { e.currentTarget.href = this.jsonUrl(); } }, "Download JSON")),
        h("div.legend", { "aria-label": "legend" },
          m.services.map((s) => h("span.chip", { style: `--c:${m.colors.get(s)}`, dataset: { service: s } }, s)),
          h("span.cp-legend", {}, h("span.cp-swatch", { "aria-hidden": "true" }), "Critical path: the spans the trace's end waited on")),
        h("div.toolbar", {},
          h("button", { type: "button", onclick: () => { this.collapsed.clear(); this.update(); } }, "Expand all"),
          h("button", { type: "button", onclick: () => { for (const s of m.byId.values()) if (s.children.length) this.collapsed.add(s.id); this.update(); } }, "Collapse all"),
          h("label", {}, h("input", { type: "checkbox", checked: true, onchange: (e) => { this.showLogs = e.target.checked; this.update(); } }), " Show logs"),
          h("label", { title: "The spans the trace's end waited on" },
            h("input", { type: "checkbox", name: "critical", checked: true, onchange: (e) => { this.showCritical = e.target.checked; this.list.refresh(); } }), " Critical path"),
          this.resetZoom,
          h("span.muted", {}, "Drag across the time ruler to zoom, double-click it to reset")),
        h("div.toolbar.span-tools", {},
          this.searchBox,
          h("button.match-prev", { type: "button", "aria-label": "previous match", title: "Previous match (Shift+Enter)", onclick: () => this.step(-1) }, "↑"),
          h("button.match-next", { type: "button", "aria-label": "next match", title: "Next match (Enter)", onclick: () => this.step(1) }, "↓"),
          this.matchCount,
          h("button.stats-toggle", { type: "button", "aria-expanded": "false", "aria-controls": "trace-stats",
            onclick: (e) => this.toggleStats(e.currentTarget) }, "Statistics"),
          h("span.muted", {}, "↑ ↓ or j k: next span · ← →: collapse, expand · Enter: detail")),
        this.stats,
        this.notes),
      h("div.trace-body", {},
        this.wrap = h("div.waterfall-wrap", {}, this.minimap(), this.ruler(), this.list.el),
        this.detail));
    this.stats.id = "trace-stats";
    this.setNameWidth(storedNameWidth(), false);
    this.onKey = (e) => this.key(e);
    document.addEventListener("keydown", this.onKey);
  }

  /** The view's cleanup: observers, listeners, the download's object URL. */
  stop() {
    this.list.resize.disconnect();
    this.mapResize.disconnect();
    document.removeEventListener("keydown", this.onKey);
    window.removeEventListener("strand-theme", this.onTheme);
    if (this.json) URL.revokeObjectURL(this.json);
  }

  /**
   * Keyboard navigation (never while typing in a field): up/down or j/k
   * move the selection between spans (the detail follows when open),
   * left/right collapse and expand (or go to the parent, the first child),
   * Enter opens or closes the selected span's detail.
   */
  key(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented || !e.target.closest) return;
    if (e.target.closest("input, textarea, select, [contenteditable], [role=separator]")) return;
    if (MOVES[e.key]) { e.preventDefault(); this.move(MOVES[e.key]); return; }
    // Enter on a row reached with Tab selects that row.
    const row = e.key === "Enter" && e.target.closest(".span-row");
    if (row && row.dataset.spanId !== this.selected) { e.preventDefault(); this.select(row.dataset.spanId); return; }
    const span = this.selected && this.m.byId.get(this.selected);
    if (!span) return;
    if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      e.preventDefault();
      const open = e.key === "ArrowRight", collapsed = this.collapsed.has(span.id);
      if (span.children.length && open === collapsed) this.toggle(span.id);
      else if (open && span.children.length) this.move(1);
      else if (!open && span.parent && this.m.byId.has(span.parent)) this.jumpTo(span.parent, !this.detail.hidden);
    } else if (e.key === "Enter" && !e.target.closest("button, a")) {
      e.preventDefault();
      if (this.detail.hidden) this.showDetail(); else this.detail.hidden = true;
    }
  }

  /** Moves the selection `step` span rows down (up when negative). */
  move(step) {
    let i = this.selected ? this.indexOf(this.selected) : step > 0 ? -1 : this.rows.length;
    do i += step; while (i >= 0 && i < this.rows.length && this.rows[i].log);
    if (i < 0 || i >= this.rows.length) return;
    this.jumpTo(this.rows[i].span.id, !this.detail.hidden);
  }

  /** Highlights the spans matching `text` (see `searchIndex`); counts them. */
  search(text) {
    const q = text.trim().toLowerCase();
    this.matches = null;
    this.matchList = [];
    if (q) {
      this.index ||= searchIndex(this.m.byId.values());
      this.matches = new Set();
      for (const [id, haystack] of this.index) if (haystack.includes(q)) this.matches.add(id);
      this.matchList = this.allSpans().filter((s) => this.matches.has(s.id));
    }
    this.matchAt = -1;
    this.showCount();
    this.list.refresh();
  }

  /** Goes to the next (or, with -1, the previous) matching span. */
  step(direction) {
    const n = this.matchList.length;
    if (!n) return;
    this.matchAt = (this.matchAt + direction + n) % n;
    this.jumpTo(this.matchList[this.matchAt].id);
    this.showCount();
  }

  showCount() {
    const n = this.matchList.length;
    this.matchCount.textContent = !this.matches ? "" : !n ? "no match"
      : this.matchAt < 0 ? `${n} ${n === 1 ? "match" : "matches"}` : `${this.matchAt + 1} of ${n}`;
  }

  /** Every span depth first, whatever is collapsed (computed once). */
  allSpans() {
    if (!this.order) {
      this.order = [];
      const stack = [...this.m.roots].reverse();
      while (stack.length) {
        const span = stack.pop();
        this.order.push(span);
        for (let i = span.children.length - 1; i >= 0; i--) stack.push(span.children[i]);
      }
    }
    return this.order;
  }

  toggleStats(button) {
    const open = this.stats.hidden;
    if (open && !this.stats.childElementCount) this.stats.append(statisticsTable(statistics(this.m.byId.values()), this.m.colors));
    this.stats.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
  }

  /** The name column's width (px), or null for the default; remembered unless `keep` is false. */
  setNameWidth(px, keep = true) {
    if (px == null) { this.wrap.style.removeProperty("--name-w"); return; }
    const width = Math.round(Math.min(Math.max(px, NAME_WIDTH[0]), NAME_WIDTH[1], this.wrap.clientWidth ? this.wrap.clientWidth - 200 : Infinity));
    this.wrap.style.setProperty("--name-w", `${width}px`);
    for (const d of this.wrap.querySelectorAll(".col-resizer")) d.setAttribute("aria-valuenow", width);
    if (keep) try { localStorage.setItem(NAME_WIDTH_KEY, String(width)); } catch (_) { /* storage blocked */ }
  }

  /** The divider at the name column's right edge: drag it, or use the arrow keys. */
  resizer() {
    const divider = h("div.col-resizer", { role: "separator", tabindex: 0, "aria-orientation": "vertical",
      "aria-valuemin": NAME_WIDTH[0], "aria-valuemax": NAME_WIDTH[1],
      "aria-label": "name column width", title: "Drag to resize the name column",
      onkeydown: (e) => {
        const by = { ArrowLeft: -20, ArrowRight: 20 }[e.key];
        if (!by) return;
        e.preventDefault();
        e.stopPropagation();
        this.setNameWidth(divider.parentElement.getBoundingClientRect().width + by);
      } });
    divider.addEventListener("pointerdown", (down) => {
      if (down.button !== 0) return;
      down.preventDefault();
      const left = this.wrap.getBoundingClientRect().left;
      const move = (e) => this.setNameWidth(e.clientX - left);
      const up = () => { window.removeEventListener("pointermove", move); window.removeEventListener("pointerup", up); };
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
    });
    return divider;
  }

  /**
   * An overview of the whole trace above the waterfall (every span one thin
   * line, in waterfall order, on a canvas) with the zoom window marked;
   * drag across it to zoom, click it to move the zoom window there.
   */
  minimap() {
    this.mapCanvas = h("canvas.minimap-canvas", { height: MAP_HEIGHT, "aria-hidden": "true" });
    this.mapWindow = h("div.minimap-window");
    const band = h("div.zoom-band", { hidden: true });
    const line = h("div.wf-timeline", { title: "The whole trace: drag to zoom, click to move the zoom window" }, this.mapCanvas, this.mapWindow, band);
    const m = this.m;
    pickAcross(line, band, (a, b) => this.zoom(m.start + a * m.dur, m.start + b * m.dur), (f) => {
      if (!this.zoomed) return;
      const [w0, w1] = this.window, width = w1 - w0;
      const from = Math.min(Math.max(m.start + f * m.dur - width / 2, m.start), m.start + m.dur - width);
      this.zoom(from, from + width);
    });
    this.mapResize = new ResizeObserver(() => this.drawMinimap());
    this.mapResize.observe(line);
    this.onTheme = () => this.drawMinimap();
    window.addEventListener("strand-theme", this.onTheme);
    this.mapEl = h("div.wf-row.minimap", { role: "group", "aria-label": "trace overview" },
      h("div.wf-name.muted", {}, "Overview"), line);
    return this.mapEl;
  }

  drawMinimap() {
    const canvas = this.mapCanvas, width = canvas.parentElement.clientWidth;
    if (!width) return;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(MAP_HEIGHT * ratio);
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    // At most 6 px a span, so a handful of spans do not look like blocks.
    const spans = this.allSpans(), m = this.m, row = Math.min(MAP_HEIGHT / spans.length, 6);
    const error = getComputedStyle(canvas).getPropertyValue("--error").trim() || "red";
    spans.forEach((s, i) => {
      g.fillStyle = s.error ? error : m.colors.get(s.service);
      g.fillRect(((s.start - m.start) / m.dur) * width, i * row, Math.max((s.dur / m.dur) * width, 1), Math.max(row, 1));
    });
  }

  note(text) { this.notes.append(state(text, "error")); }

  /**
   * The logs view for this trace's logs over the trace's own window (a
   * little around it, for clocks that disagree); `window` is not carried
   * to other views, so the global range stays as it was.
   */
  logsHref() {
    const from = Math.floor(this.m.start / 1000) - LOG_MARGIN_MS;
    const to = Math.ceil((this.m.start + this.m.dur) / 1000) + LOG_MARGIN_MS;
    return `#/logs?q=${encodeURIComponent(`trace_id:${this.m.id}`)}&window=${from}-${to}`;
  }

  /** The metrics explorer: the trace's services' request rates, by status, around its time. */
  metricsHref() {
    // Regex metacharacters escaped for the regex, then backslashes and quotes for the string.
    const services = this.m.services.map((s) => s.replace(/[.^$|?*+()[\]{}\\]/g, "\\$&").replace(/[\\"]/g, "\\$&")).join("|");
    const query = `sum by (service_name, status_code) (rate(traces_span_metrics_calls_total{service_name=~"${services}"}[1m]))`;
    const from = Math.floor(this.m.start / 1000) - METRICS_MARGIN_MS;
    const to = Math.ceil((this.m.start + this.m.dur) / 1000) + METRICS_MARGIN_MS;
    return `#/metrics?query=${encodeURIComponent(query)}&window=${from}-${to}`;
  }

  /** An object URL of the trace's JSON (made on demand, the previous one freed). */
  jsonUrl() {
    if (this.json) URL.revokeObjectURL(this.json);
    this.json = URL.createObjectURL(new Blob([JSON.stringify(this.raw, null, 2)], { type: "application/json" }));
    return this.json;
  }

  start() {
    this.zoom(...this.window);
    this.showDetail();
    if (this.selected) this.list.scrollTo(this.indexOf(this.selected));
  }

  indexOf(id) { return this.rows.findIndex((r) => r.span && r.span.id === id && !r.log); }

  /** The time ruler; dragging across it selects the window to zoom into. */
  ruler() {
    this.ticks = h("div.ticks");
    const band = h("div.zoom-band", { hidden: true });
    const line = h("div.wf-timeline", { title: "Drag to zoom into a time window" }, this.ticks, band);
    pickAcross(line, band, (a, b) => {
      const [w0, w1] = this.window;
      this.zoom(w0 + a * (w1 - w0), w0 + b * (w1 - w0));
    });
    line.addEventListener("dblclick", () => this.zoom(this.m.start, this.m.start + this.m.dur));
    this.rulerEl = h("div.wf-row.ruler", {}, h("div.wf-name", {}, "Service: operation", this.resizer()), line);
    return this.rulerEl;
  }

  drawRuler() {
    const [w0, w1] = this.window;
    // Offsets since the trace's start, for the test and for people alike.
    this.rulerEl.dataset.from = Math.round(w0 - this.m.start);
    this.rulerEl.dataset.to = Math.round(w1 - this.m.start);
    // Round offsets (1, 2 or 5 times a power of ten) inside the window;
    // labels near an edge stay inside the ruler.
    const from = w0 - this.m.start, to = w1 - this.m.start;
    this.ticks.replaceChildren(...ticks(from, to, 4).filter((us) => us >= from && us <= to).map((us) => {
      const at = ((us - from) / (to - from)) * 100;
      const shift = at < 4 ? "0" : at > 96 ? "-100%" : "-50%";
      return h("span.tick", { style: `left:${at}%;transform:translateX(${shift})` }, fmtMicros(us));
    }));
  }

  /** Shows [from, to] (µs) across the timeline; only rows in view redraw. */
  zoom(from, to) {
    this.window = [from, Math.max(to, from + 1)];
    this.zoomed = from > this.m.start || to < this.m.start + this.m.dur;
    this.resetZoom.disabled = !this.zoomed;
    this.rulerEl.classList.toggle("zoomed", this.zoomed);
    const m = this.m;
    this.mapWindow.style.cssText = `left:${((this.window[0] - m.start) / m.dur) * 100}%;` +
      `width:${((this.window[1] - this.window[0]) / m.dur) * 100}%`;
    this.mapWindow.hidden = !this.zoomed;
    this.drawRuler();
    if (this.rows) this.list.refresh(); else this.update();
    this.remember();
  }

  /** Puts the selection and zoom into the URL, keeping its other params. */
  remember() {
    const [path, query] = location.hash.split("?");
    const q = new URLSearchParams(query || "");
    if (this.selected) q.set("span", this.selected); else q.delete("span");
    if (this.zoomed) q.set("zoom", this.window.map((us) => Math.round(us - this.m.start)).join("-")); else q.delete("zoom");
    const qs = q.toString();
    history.replaceState(null, "", `${path}${qs ? "?" + qs : ""}`);
  }

  /** The visible rows: spans depth first, each followed by its logs. */
  flatten() {
    const rows = [];
    const stack = [...this.m.roots].reverse();
    while (stack.length) {
      const span = stack.pop();
      rows.push({ span });
      if (this.collapsed.has(span.id)) continue;
      if (this.showLogs) for (const log of span.logs) rows.push({ span, log });
      for (let i = span.children.length - 1; i >= 0; i--) stack.push(span.children[i]);
    }
    if (this.showLogs) for (const log of this.m.orphanLogs) rows.push({ span: null, log });
    return rows;
  }

  update() {
    this.rows = this.flatten();
    this.list.setItems(this.rows);
  }

  /** Percent across the timeline of a time in µs, in the zoom window. */
  pct(us) { return ((us - this.window[0]) / (this.window[1] - this.window[0])) * 100; }

  /** A [left, right] percent pair clipped to the timeline, or null outside it. */
  clip(from, to) {
    const l = this.pct(from), r = this.pct(to);
    return r < 0 || l > 100 ? null : [Math.max(l, 0), Math.min(r, 100)];
  }

  row({ span, log }) {
    if (log) return this.logRow(span, log);
    const m = this.m;
    const color = m.colors.get(span.service);
    const collapsed = this.collapsed.has(span.id);
    const critical = this.showCritical && this.critical.get(span.id);
    const twisty = span.children.length
      ? h("button.twisty", { type: "button", "aria-label": collapsed ? "expand" : "collapse", "aria-expanded": String(!collapsed),
        onclick: (e) => { e.stopPropagation(); this.toggle(span.id); } }, collapsed ? "▸" : "▾")
      : h("span.twisty");
    const match = this.matches && this.matches.has(span.id);
    return h("div.wf-row.span-row" + (span.error ? ".error" : "") + (span.id === this.selected ? ".selected" : "") +
      (critical ? ".critical" : "") + (match ? ".match" : ""), {
      role: "listitem", tabindex: 0,
      dataset: { spanId: span.id, parentId: span.parent || "", depth: span.depth, service: span.service, error: span.error },
      onclick: () => this.select(span.id),
    },
    h("div.wf-name", { style: `padding-left:${span.depth * 14 + 4}px`, title: `${span.service}: ${span.op}` },
      twisty,
      h("span.svc-dot", { style: `background:${color}` }),
      h("span.svc", {}, span.service),
      h("span.op", {}, span.op),
      span.error ? h("span.error-mark", { title: "error" }, "!") : null,
      collapsed ? h("span.muted", {}, ` (${countBelow(span)})`) : null),
    this.timeline(span, color, critical || []));
  }

  /** The span's bar in the zoom window: clipped at its edges, absent outside. */
  timeline(span, color, critical) {
    const box = this.clip(span.start, span.start + span.dur);
    if (!box) {
      const before = span.start + span.dur < this.window[0];
      return h("div.wf-timeline", {}, h("span.wf-out" + (before ? ".before" : ".after"), { title: "outside the zoomed window" },
        before ? `◂ ${fmtMicros(span.dur)}` : `${fmtMicros(span.dur)} ▸`));
    }
    const [l, r] = box;
    const width = Math.max(r - l, 0.2);
    const inBar = (us) => ((this.pct(us) - l) / Math.max(r - l, 1e-9)) * 100;
    return h("div.wf-timeline", {},
      h("div.wf-bar", { style: `left:${l}%;width:${width}%;background:${color}` },
        span.raw.logs.map((ev) => {
          const at = inBar(ev.timestamp);
          return at >= 0 && at <= 100 ? h("span.event", { style: `left:${at}%` }) : null;
        })),
      critical.map((seg) => {
        const c = this.clip(seg.start, seg.end);
        return c && h("span.cp-seg", { style: `left:${c[0]}%;width:${Math.max(c[1] - c[0], 0.1)}%` });
      }),
      durationLabel(l, l + width, fmtMicros(span.dur)));
  }

  logRow(span, log) {
    const depth = span ? span.depth + 1 : 0;
    const at = this.pct(log.at);
    return h("div.wf-row.log-row", {
      role: "listitem", dataset: { spanId: log.spanId || "", severity: log.severity, depth },
      onclick: () => span && this.select(span.id),
    },
    h("div.wf-name", { style: `padding-left:${depth * 14 + 22}px`, title: log.body },
      h("span.sev.sev-" + log.severity, {}, log.severity), " ", h("span.log-body", {}, log.body)),
    h("div.wf-timeline", {}, at >= 0 && at <= 100 ? h("span.log-mark.sev-" + log.severity, { style: `left:${at}%` }) : null));
  }

  toggle(id) {
    if (this.collapsed.has(id)) this.collapsed.delete(id); else this.collapsed.add(id);
    const top = this.list.el.scrollTop;
    this.update();
    this.list.el.scrollTop = top;
  }

  /** Selects a span (or unselects it when it is already selected). */
  select(id, toggle = true) {
    this.selected = toggle && this.selected === id ? null : id;
    this.remember();
    this.markSelected();
    this.showDetail();
  }

  /**
   * Goes to a span of this trace (a link, a search match, a key): expands
   * its ancestors, selects it and scrolls to it; the detail shows it unless
   * `detail` is false (moving by key with the detail closed).
   */
  jumpTo(id, detail = true) {
    let expanded = false;
    for (let s = this.m.byId.get(this.m.byId.get(id).parent); s; s = this.m.byId.get(s.parent)) {
      expanded = this.collapsed.delete(s.id) || expanded;
    }
    if (expanded) this.update();
    if (detail) this.select(id, false);
    else {
      this.selected = id;
      this.remember();
      this.markSelected();
    }
    this.list.scrollTo(this.indexOf(id));
  }

  markSelected() {
    for (const el of this.list.el.querySelectorAll(".span-row")) el.classList.toggle("selected", el.dataset.spanId === this.selected);
  }

  /** The span's links (FOLLOWS_FROM, or any reference to another trace), each followable. */
  links(span) {
    const refs = span.raw.references.filter((r) => r.refType === "FOLLOWS_FROM" || r.traceID !== this.m.id);
    if (!refs.length) return h("p.muted", {}, "none");
    return h("ul.links", {}, refs.map((r) => {
      const here = r.traceID === this.m.id && this.m.byId.get(r.spanID);
      return h("li", {},
        h("a.span-link", {
          href: `#/trace/${r.traceID}?span=${r.spanID}`, dataset: { traceId: r.traceID, spanId: r.spanID },
          // Same trace: jump without reloading it.
          onclick: here ? (e) => { e.preventDefault(); this.jumpTo(r.spanID); } : null,
        }, here ? `${here.service}: ${here.op}` : `span ${r.spanID}`),
        " ", h("span.muted", {}, here ? "in this trace" : `in trace ${r.traceID.slice(0, 12)}…`),
        r.refType === "FOLLOWS_FROM" ? null : h("span.muted", {}, ` (${r.refType})`));
    }));
  }

  showDetail() {
    const span = this.selected && this.m.byId.get(this.selected);
    this.detail.hidden = !span;
    if (!span) { this.detail.replaceChildren(); return; }
    const s = span.raw;
    const kv = (tags) => tags.length
      ? h("table.kv", {}, tags.map((g) => h("tr", {}, h("th", {}, g.key), h("td", {}, String(g.value)))))
      : h("p.muted", {}, "none");
    const crit = this.critical.get(span.id);
    const onPath = crit ? crit.reduce((n, seg) => n + seg.end - seg.start, 0) : 0;
    const linkCount = s.references.filter((r) => r.refType === "FOLLOWS_FROM" || r.traceID !== this.m.id).length;
    this.detail.replaceChildren(
      h("div.detail-head", {},
        h("h2", {}, span.op),
        h("button.close", { type: "button", "aria-label": "close", onclick: () => this.select(span.id) }, "×")),
      h("div.meta", {},
        h("span.chip", { style: `--c:${this.m.colors.get(span.service)}` }, span.service),
        h("span", {}, `Duration ${fmtMicros(span.dur)}`),
        h("span", {}, `Starts at +${fmtMicros(span.start - this.m.start)}`),
        crit ? h("span", {}, `${fmtMicros(onPath)} on the critical path`) : null,
        span.error ? h("span.error-badge", {}, "error") : null),
      h("p.muted", {}, "Span ", h("code", {}, span.id), span.parent ? [" · parent ", h("code", {}, span.parent)] : " · root"),
      h("h3", {}, "Attributes"), kv(s.tags),
      h("h3", {}, "Resource"), kv([{ key: "service.name", value: span.service }, ...(span.process.tags || [])]),
      h("h3", {}, `Events (${s.logs.length})`),
      s.logs.length ? h("ul.events", {}, s.logs.map((ev) => h("li", {},
        h("span.muted", {}, `+${fmtMicros(ev.timestamp - this.m.start)} `),
        ev.fields.map((f) => h("span.field", {}, h("b", {}, f.key), "=", String(f.value)))))) : h("p.muted", {}, "none"),
      h("h3", {}, `Links (${linkCount})`), this.links(span),
      h("h3", {}, `Logs (${span.logs.length})`),
      span.logs.length ? h("ul.events", {}, span.logs.map((l) => h("li", {},
        h("span.sev.sev-" + l.severity, {}, l.severity), " ",
        h("span.muted", { title: fmtTime(Number(BigInt(l.timeUnixNano) / 1000000n)) }, `${fmtOffset(l.offset)} `), l.body))) : h("p.muted", {}, "none"),
      h("p", {}, h("a", { href: this.logsHref() }, "All logs of this trace")));
  }
}

/**
 * Dragging across `line` picks a stretch of it: `pick(from, to)` gets
 * fractions of its width; a press that hardly moves is `click(at)`.
 * A band shows the stretch while dragging.
 */
function pickAcross(line, band, pick, click) {
  const px = () => line.getBoundingClientRect().width;
  dragAcross(line, {
    move: (from, to) => {
      const [a, b] = [Math.min(from, to), Math.max(from, to)];
      band.hidden = from === to;
      band.style.cssText = `left:${a * px()}px;width:${(b - a) * px()}px`;
    },
    done: (from, to) => {
      band.hidden = true;
      if (Math.abs(to - from) * px() >= MIN_DRAG) pick(Math.min(from, to), Math.max(from, to));
      else if (click) click(from);
    },
  });
}

/** The remembered width of the name column (px), if any. */
function storedNameWidth() {
  try { return Number(localStorage.getItem(NAME_WIDTH_KEY)) || null; } catch (_) { return null; }
}

/**
 * A bar's duration: after the bar when there is room, else before it, else
 * (a bar across the whole timeline, like the root's) inside its right end;
 * never over the name column.
 */
function durationLabel(left, right, text) {
  if (right <= LABEL_ROOM) return h("span.wf-dur", { style: `left:${right + 0.5}%` }, text);
  if (left >= 100 - LABEL_ROOM) return h("span.wf-dur", { style: `right:${100 - left + 0.5}%` }, text);
  return h("span.wf-dur.inside", { style: `right:${100 - right + 0.5}%` }, text);
}

/** An offset from the trace's start, to the microsecond: "+1.626ms". */
export function fmtOffset(us) {
  return us < 1e6 ? `+${(us / 1000).toFixed(3)}ms` : `+${(us / 1e6).toFixed(6)}s`;
}

function countBelow(span) {
  let n = 0;
  const stack = [...span.children];
  while (stack.length) { const s = stack.pop(); n++; stack.push(...s.children); }
  return n;
}
