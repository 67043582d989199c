// One trace as a waterfall: every span of every service, nested by CHILD_OF,
// coloured per service, errors marked, subtrees collapsible, the trace's logs
// under their spans, the critical path drawn over the bars, a time axis that
// zooms (drag across the ruler), and a detail panel for the selected span
// whose links lead to the linked spans. Rows are virtualised, so traces of
// tens of thousands of spans stay smooth: zooming or toggling only redraws
// the rows in view.

import { api, h, state, fmtMicros, fmtTime, serviceColors, VirtualList } from "./lib.js";

const ROW = 24;
/** A drag shorter than this (px) is a click, not a zoom. */
const MIN_DRAG = 4;

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
  const view = new TraceView(model, params.get("span"), params.get("zoom"));
  root.replaceChildren(view.el);
  if (logsRes.status === "rejected") view.note(`The trace's logs could not be loaded: ${logsRes.reason.message}`);
  view.start();
  // For `strand-bench ui`: the first frame with the waterfall has been
  // rendered once a task queued from the next animation frame runs.
  requestAnimationFrame(() => setTimeout(() => performance.mark("strand:trace-drawn")));
  return () => view.list.resize.disconnect();
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
  const orphanLogs = [];
  for (const log of logs) {
    log.ms = Number(BigInt(log.timeUnixNano) / 1000000n);
    const span = log.spanId && byId.get(log.spanId);
    if (span) span.logs.push(log); else orphanLogs.push(log);
  }
  for (const span of byId.values()) span.logs.sort((a, b) => a.ms - b.ms);
  const start = t.spans.reduce((m, s) => Math.min(m, s.startTime), Infinity);
  const end = t.spans.reduce((m, s) => Math.max(m, s.startTime + s.duration), -Infinity);
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
  constructor(model, selected, zoom) {
    this.m = model;
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
    this.resetZoom = h("button.reset-zoom", { type: "button", onclick: () => this.zoom(m.start, m.start + m.dur) }, "Reset zoom");
    this.el = h("div.trace-view", {},
      h("div.trace-head", {},
        h("h1", {}, `${root.service}: ${root.op}`),
        h("div.meta", {},
          h("span", {}, `Duration ${fmtMicros(m.dur)}`),
          h("span", {}, `${m.byId.size} spans`),
          h("span", {}, `${m.services.length} services`),
          errors ? h("span.error-badge", {}, `${errors} error${errors > 1 ? "s" : ""}`) : null,
          h("span", {}, `${m.logCount} logs`),
          h("span.muted", {}, fmtTime(m.start / 1000)),
          h("code.muted", {}, m.id)),
        h("div.legend", {}, m.services.map((s) => h("span.chip", { style: `--c:${m.colors.get(s)}`, dataset: { service: s } }, s))),
        h("div.toolbar", {},
          h("button", { type: "button", onclick: () => { this.collapsed.clear(); this.update(); } }, "Expand all"),
          h("button", { type: "button", onclick: () => { for (const s of m.byId.values()) if (s.children.length) this.collapsed.add(s.id); this.update(); } }, "Collapse all"),
          h("label", {}, h("input", { type: "checkbox", checked: true, onchange: (e) => { this.showLogs = e.target.checked; this.update(); } }), " Show logs"),
          h("label", { title: "The spans the trace's end waited on" },
            h("input", { type: "checkbox", name: "critical", checked: true, onchange: (e) => { this.showCritical = e.target.checked; this.list.refresh(); } }), " Critical path"),
          this.resetZoom,
          h("span.muted", {}, "Drag across the time ruler to zoom, double-click it to reset")),
        this.notes),
      h("div.trace-body", {},
        h("div.waterfall-wrap", {}, this.ruler(), this.list.el),
        this.detail));
  }

  note(text) { this.notes.append(state(text, "error")); }

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
    line.addEventListener("pointerdown", (down) => {
      if (down.button !== 0) return;
      down.preventDefault();
      const box = line.getBoundingClientRect();
      const at = (e) => Math.min(Math.max(e.clientX - box.left, 0), box.width);
      const from = at(down);
      let to = from;
      const move = (e) => {
        to = at(e);
        band.hidden = false;
        band.style.cssText = `left:${Math.min(from, to)}px;width:${Math.abs(to - from)}px`;
      };
      const up = (e) => {
        window.removeEventListener("pointermove", move);
        window.removeEventListener("pointerup", up);
        move(e);
        band.hidden = true;
        if (Math.abs(to - from) < MIN_DRAG) return;
        const [w0, w1] = this.window;
        const us = (px) => w0 + (px / box.width) * (w1 - w0);
        this.zoom(us(Math.min(from, to)), us(Math.max(from, to)));
      };
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
    });
    line.addEventListener("dblclick", () => this.zoom(this.m.start, this.m.start + this.m.dur));
    this.rulerEl = h("div.wf-row.ruler", {}, h("div.wf-name", {}, "Service: operation"), line);
    return this.rulerEl;
  }

  drawRuler() {
    const [w0, w1] = this.window;
    // Offsets since the trace's start, for the test and for people alike.
    this.rulerEl.dataset.from = Math.round(w0 - this.m.start);
    this.rulerEl.dataset.to = Math.round(w1 - this.m.start);
    this.ticks.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f) =>
      h("span.tick", { style: `left:${f * 100}%` }, fmtMicros(w0 - this.m.start + f * (w1 - w0)))));
  }

  /** Shows [from, to] (µs) across the timeline; only rows in view redraw. */
  zoom(from, to) {
    this.window = [from, Math.max(to, from + 1)];
    this.zoomed = from > this.m.start || to < this.m.start + this.m.dur;
    this.resetZoom.disabled = !this.zoomed;
    this.rulerEl.classList.toggle("zoomed", this.zoomed);
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
    return h("div.wf-row.span-row" + (span.error ? ".error" : "") + (span.id === this.selected ? ".selected" : "") + (critical ? ".critical" : ""), {
      role: "listitem", tabindex: 0,
      dataset: { spanId: span.id, parentId: span.parent || "", depth: span.depth, service: span.service, error: span.error },
      onclick: () => this.select(span.id),
      onkeydown: (e) => { if (e.key === "Enter") this.select(span.id); },
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
      h("span.wf-dur", { style: l + width > 85 ? `right:${100 - l + 0.5}%` : `left:${l + width + 0.5}%` }, fmtMicros(span.dur)));
  }

  logRow(span, log) {
    const depth = span ? span.depth + 1 : 0;
    const at = this.pct(log.ms * 1000);
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
    for (const el of this.list.el.querySelectorAll(".span-row")) el.classList.toggle("selected", el.dataset.spanId === this.selected);
    this.showDetail();
  }

  /** Follows a link to a span of this trace: expands its ancestors, selects it and scrolls to it. */
  jumpTo(id) {
    let expanded = false;
    for (let s = this.m.byId.get(this.m.byId.get(id).parent); s; s = this.m.byId.get(s.parent)) {
      expanded = this.collapsed.delete(s.id) || expanded;
    }
    if (expanded) this.update();
    this.select(id, false);
    this.list.scrollTo(this.indexOf(id));
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
        h("span.muted", {}, fmtTime(l.ms), " "), l.body))) : h("p.muted", {}, "none"),
      h("p", {}, h("a", { href: `#/logs?q=${encodeURIComponent(`trace_id:${this.m.id}`)}&range=7d` }, "All logs of this trace")));
  }
}

function countBelow(span) {
  let n = 0;
  const stack = [...span.children];
  while (stack.length) { const s = stack.pop(); n++; stack.push(...s.children); }
  return n;
}
