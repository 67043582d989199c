// One trace as a waterfall: every span of every service, nested by CHILD_OF,
// coloured per service, errors marked, subtrees collapsible, the trace's logs
// under their spans, and a detail panel for the selected span. Rows are
// virtualised, so traces of tens of thousands of spans stay smooth.

import { api, h, state, fmtMicros, fmtTime, serviceColors, VirtualList } from "./lib.js";

const ROW = 24;

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
  const view = new TraceView(model, params.get("span"));
  root.replaceChildren(view.el);
  if (logsRes.status === "rejected") view.note(`The trace's logs could not be loaded: ${logsRes.reason.message}`);
  view.start();
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

class TraceView {
  constructor(model, selected) {
    this.m = model;
    this.collapsed = new Set();
    this.showLogs = true;
    this.selected = selected && model.byId.has(selected) ? selected : null;
    this.list = new VirtualList(ROW, (row) => this.row(row), "vlist waterfall");
    this.detail = h("aside.detail", { "aria-label": "span detail" });
    const m = model;
    const root = m.roots[0];
    const errors = [...m.byId.values()].filter((s) => s.error).length;
    this.notes = h("div");
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
          h("label", {}, h("input", { type: "checkbox", checked: true, onchange: (e) => { this.showLogs = e.target.checked; this.update(); } }), " Show logs")),
        this.notes),
      h("div.trace-body", {},
        h("div.waterfall-wrap", {}, this.ruler(), this.list.el),
        this.detail));
  }

  note(text) { this.notes.append(state(text, "error")); }

  start() {
    this.update();
    this.showDetail();
    if (this.selected) this.list.scrollTo(this.rows.findIndex((r) => r.span && r.span.id === this.selected && !r.log));
  }

  ruler() {
    const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) =>
      h("span.tick", { style: `left:${f * 100}%` }, fmtMicros(f * this.m.dur)));
    return h("div.wf-row.ruler", {}, h("div.wf-name", {}, "Service: operation"), h("div.wf-timeline", {}, ticks));
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

  pct(us) { return ((us - this.m.start) / this.m.dur) * 100; }

  row({ span, log }) {
    if (log) return this.logRow(span, log);
    const m = this.m;
    const color = m.colors.get(span.service);
    const collapsed = this.collapsed.has(span.id);
    const left = this.pct(span.start);
    const width = Math.max((span.dur / m.dur) * 100, 0.2);
    const twisty = span.children.length
      ? h("button.twisty", { type: "button", "aria-label": collapsed ? "expand" : "collapse", "aria-expanded": String(!collapsed),
        onclick: (e) => { e.stopPropagation(); this.toggle(span.id); } }, collapsed ? "▸" : "▾")
      : h("span.twisty");
    return h("div.wf-row.span-row" + (span.error ? ".error" : "") + (span.id === this.selected ? ".selected" : ""), {
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
    h("div.wf-timeline", {},
      h("div.wf-bar", { style: `left:${left}%;width:${width}%;background:${color}` },
        span.raw.logs.map((ev) => {
          const at = ((ev.timestamp - span.start) / Math.max(span.dur, 1)) * 100;
          return at >= 0 && at <= 100 ? h("span.event", { style: `left:${at}%` }) : null;
        })),
      h("span.wf-dur", { style: left + width > 85 ? `right:${100 - left + 0.5}%` : `left:${left + width + 0.5}%` }, fmtMicros(span.dur))));
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

  select(id) {
    this.selected = this.selected === id ? null : id;
    const hash = `#/trace/${this.m.id}${this.selected ? `?span=${this.selected}` : ""}`;
    history.replaceState(null, "", hash);
    for (const el of this.list.el.querySelectorAll(".span-row")) el.classList.toggle("selected", el.dataset.spanId === this.selected);
    this.showDetail();
  }

  showDetail() {
    const span = this.selected && this.m.byId.get(this.selected);
    this.detail.hidden = !span;
    if (!span) { this.detail.replaceChildren(); return; }
    const s = span.raw;
    const kv = (tags) => tags.length
      ? h("table.kv", {}, tags.map((g) => h("tr", {}, h("th", {}, g.key), h("td", {}, String(g.value)))))
      : h("p.muted", {}, "none");
    this.detail.replaceChildren(
      h("div.detail-head", {},
        h("h2", {}, span.op),
        h("button.close", { type: "button", "aria-label": "close", onclick: () => this.select(span.id) }, "×")),
      h("div.meta", {},
        h("span.chip", { style: `--c:${this.m.colors.get(span.service)}` }, span.service),
        h("span", {}, `Duration ${fmtMicros(span.dur)}`),
        h("span", {}, `Starts at +${fmtMicros(span.start - this.m.start)}`),
        span.error ? h("span.error-badge", {}, "error") : null),
      h("p.muted", {}, "Span ", h("code", {}, span.id), span.parent ? [" · parent ", h("code", {}, span.parent)] : " · root"),
      h("h3", {}, "Tags"), kv(s.tags),
      h("h3", {}, "Process"), kv([{ key: "service.name", value: span.service }, ...(span.process.tags || [])]),
      h("h3", {}, `Events (${s.logs.length})`),
      s.logs.length ? h("ul.events", {}, s.logs.map((ev) => h("li", {},
        h("span.muted", {}, `+${fmtMicros(ev.timestamp - this.m.start)} `),
        ev.fields.map((f) => h("span.field", {}, h("b", {}, f.key), "=", String(f.value)))))) : h("p.muted", {}, "none"),
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
