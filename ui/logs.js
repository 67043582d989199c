// Log explorer: a query box, a histogram of counts over the header's time
// window (click a bar to zoom into it), facets that add filters, and a
// virtualised results table whose rows open the record and whose trace ids
// open the trace. With live tail on (`live=1`), new matching records stream
// in over /api/logs/tail and take their place in time order; histogram and
// facets keep following every few seconds.

import { api, authFetch, h, state, fmtTime, timeRange, onRefresh, reportUnreachable, VirtualList, ticks, plural, dragAcross } from "./lib.js";

const ROW = 26;
const PAGE = 500;
/** Rows kept in live mode: the oldest go when new ones arrive. */
const MAX_ROWS = 5000;
/** How often histogram and facets follow a live tail. */
const LIVE_AGGREGATES_MS = 5000;

const SYNTAX = [
  ["declined timeout", "words of the message or attribute values (all of them)"],
  ['"card declined"', "a phrase"],
  ["service:payment severity:error", "fields: service, severity, trace_id, span_id"],
  ["attributes.order_id:42", "attribute values (resource.* for the resource)"],
  ["attribute_keys:order_id", "records that have an attribute"],
  ["service:pay*", "a prefix"],
  ["a OR b, NOT c, (a OR b) AND c", "boolean operators (NOT c alone: everything but c)"],
];

export async function render(root, { params, current, go }) {
  const q = params.get("q") || "";
  const live = params.get("live") === "1";
  // Navigating keeps the other params (the header's window and refresh).
  const here = (changes) => ({ ...Object.fromEntries(params), ...changes });
  // AND binds tighter than OR: a query with OR is wrapped before adding to it.
  const addFilter = (term) => go("logs", here({ q: !q ? term : /\bOR\b/.test(q) ? `(${q}) AND ${term}` : `${q} AND ${term}` }));

  const form = h("form.toolbar", { "aria-label": "log search" },
    h("input.query", { name: "q", value: q, placeholder: 'e.g. declined AND service:payment, severity:error, "order 42"', title: "Press / to focus" }),
    h("label.live-toggle", { title: "Stream new matching logs as they arrive" },
      h("input", { type: "checkbox", name: "live", checked: live }), "Live tail"),
    h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go("logs", here({ q: form.q.value.trim() }));
  });
  // A live tail shows what arrives from now on: it leaves a zoomed window.
  form.live.addEventListener("change", () => go("logs", here(form.live.checked
    ? { live: "1", start: null, end: null, range: params.get("range") || "1h" } : { live: null })));

  const win = timeRange(params);
  let logs = [];
  let cursor = null;
  let selected = null; // the record open in the detail panel
  let loads = 0;
  let total = 0; // matches of the last full load
  const histogram = h("div.histogram", { "aria-label": "log counts over time" });
  const facets = h("aside.facets");
  const summary = h("div.summary.muted");
  const indicator = h("span.live-indicator", { hidden: !live, role: "status" });
  const cols = columnsOf(params);
  const table = new VirtualList(ROW, (log, i) => logRow(log, i, selected, cols), "vlist log-table");
  const head = h("div.log-head", {}, cols.map((c) => h("span", { title: c }, column(c).label)));
  const template = cols.map((c) => column(c).width).join(" ");
  const detail = h("aside.detail.log-detail", { hidden: true });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const queryError = h("p.state.error.query-error", { role: "alert", hidden: true });
  root.append(h("h1", {}, "Logs"), form, queryError,
    h("details.syntax", {}, h("summary.muted", {}, "Query syntax"),
      h("table.kv", {}, SYNTAX.map(([example, what]) => h("tr", {}, h("th", {}, h("code", {}, example)), h("td", {}, what))))),
    ...(win.absolute ? [h("p.muted.window", {}, `${fmtTime(win.start)} – ${fmtTime(win.end)} · `,
      h("a", { href: "#/logs?" + new URLSearchParams(clean(here({ start: null, end: null, range: win.range }))) }, "back to the last " + win.range))] : []),
    histogram,
    h("div.logs-body", {}, facets,
      h("div.logs-main", { style: `--log-cols: ${template}` },
        h("div.logs-status", {}, summary, indicator, columnPicker(cols, (next) => go("logs", here({ cols: sameColumns(next, DEFAULT_COLUMNS) ? null : next.join(",") })))),
        head, table.el, more),
      detail));

  const closeDetail = () => { detail.hidden = true; selected = null; table.refresh(); };
  table.el.addEventListener("click", (e) => {
    const row = e.target.closest(".log-row");
    if (!row || e.target.closest("a")) return;
    const log = logs[Number(row.dataset.index)];
    if (!log || log === selected) { closeDetail(); return; }
    selected = log;
    showDetail(detail, log, addFilter, closeDetail);
    table.refresh();
  });
  const onKey = (e) => { if (e.key === "Escape" && !detail.hidden) closeDetail(); };
  document.addEventListener("keydown", onKey);

  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const next = await api("/api/logs", { q, start: win.start, end: win.end, limit: PAGE, cursor });
      logs = logs.concat(next.logs);
      cursor = next.nextCursor;
      table.setItems(logs);
    } catch (e) { more.after(state(e.message, "error")); }
    more.disabled = false;
    more.hidden = live || !cursor;
  });

  /** Redraws histogram and facets of the window; a failure shows in their place only. */
  const drawAggregates = (hist, fac) => {
    if (hist.status === "fulfilled") drawHistogram(histogram, hist.value, (start, end) => go("logs", here({ start, end, live: null })));
    else histogram.replaceChildren(state(`Histogram: ${hist.reason.message}`, "error"));
    if (fac.status === "fulfilled") drawFacets(facets, fac.value, addFilter);
    else facets.replaceChildren(state(`Facets: ${fac.reason.message}`, "error"));
  };
  const aggregates = (query) => Promise.allSettled([api("/api/logs/histogram", query), api("/api/logs/facets", query)]);

  /** Fetches the window's page, histogram and facets (again on refresh, as a relative window slides). */
  const load = async () => {
    const mine = ++loads;
    const { start, end } = timeRange(params);
    Object.assign(win, { start, end });
    histogram.dataset.start = start;
    histogram.dataset.end = end;
    const query = { q, start, end };
    const [page, [hist, fac]] = await Promise.all([
      api("/api/logs", { ...query, limit: PAGE }).then((value) => ({ value }), (reason) => ({ reason })),
      aggregates(query),
    ]);
    if (!current() || mine !== loads) return false;
    if (page.reason) {
      // Shown under the query box; the rest of the page stays as it was.
      queryError.textContent = page.reason.message;
      queryError.hidden = false;
      summary.replaceChildren();
      head.hidden = table.el.hidden = more.hidden = true;
      return false;
    }
    queryError.hidden = true;
    total = page.value.total;
    logs = page.value.logs;
    cursor = page.value.nextCursor;
    more.hidden = live || !cursor;
    summary.replaceChildren(total ? `${plural(total, "matching log")}, newest first` : empty(q, win));
    head.hidden = table.el.hidden = !total && !live;
    table.setItems(logs);
    drawAggregates(hist, fac);
    return true;
  };

  const loaded = await load();
  if (!current()) return () => { table.resize.disconnect(); document.removeEventListener("keydown", onKey); };
  let stop = () => {};
  if (!live) stop = onRefresh(load);
  else if (loaded) {
    let arrived = 0;
    const stopTail = tail(q, indicator, (fresh) => {
      // Time order (records of one second arrive in any order), newest
      // first, and no more than MAX_ROWS.
      arrived += fresh.length;
      logs = fresh.concat(logs).sort(newestFirst);
      if (logs.length > MAX_ROWS) logs.length = MAX_ROWS;
      // Keep the rows the reader looks at in place while rows arrive above.
      const keep = table.el.scrollTop > 0;
      table.setItems(logs);
      if (keep) table.el.scrollTop += fresh.length * ROW;
      head.hidden = table.el.hidden = false;
      summary.replaceChildren(`${plural(total, "matching log")}, ${arrived} new since tail started, newest first`);
    });
    // Histogram and facets follow the tail over the sliding window.
    const follow = setInterval(async () => {
      const { start, end } = timeRange(params);
      const [hist, fac] = await aggregates({ q, start, end });
      if (current()) drawAggregates(hist, fac);
    }, LIVE_AGGREGATES_MS);
    stop = () => { stopTail(); clearInterval(follow); };
  }
  return () => {
    stop();
    table.resize.disconnect();
    document.removeEventListener("keydown", onKey);
  };
}


/** Sort order of rows: time, then arrival (ids are hex of increasing numbers), newest first. */
function newestFirst(a, b) {
  const key = (log) => (log.sortKey ??= [BigInt(log.timeUnixNano), BigInt("0x" + log.id)]);
  const [ta, ia] = key(a);
  const [tb, ib] = key(b);
  return ta !== tb ? (tb > ta ? 1 : -1) : ib > ia ? 1 : ib < ia ? -1 : 0;
}

/** The params without empty values, for a link. */
function clean(params) {
  return Object.fromEntries(Object.entries(params).filter(([, v]) => v != null && v !== ""));
}

function empty(q, win) {
  const when = win.absolute ? "between these times" : `in the last ${win.range}`;
  if (q) return `No logs match "${q}" ${when}. Try a longer time range in the header, or fewer terms.`;
  return `No logs ${when}. Send logs over OTLP (ports 4317 and 4318) or Elasticsearch _bulk (port 7070).`;
}

/**
 * Subscribes to /api/logs/tail with the query; `add` gets the new records
 * in arrival order, at most a few times a second. Returns the stop function.
 * Read with fetch rather than EventSource, which cannot send the token;
 * reconnects with backoff like EventSource would.
 */
function tail(q, indicator, add) {
  const show = (text, cls) => { indicator.textContent = text; indicator.className = `live-indicator ${cls}`; };
  show("● connecting…", "connecting");
  const aborter = new AbortController();
  let queue = [];
  let flush = 0;
  let stopped = false;
  const stop = (text, cls) => { stopped = true; aborter.abort(); clearTimeout(flush); if (text) show(text, cls); };
  const onEvent = (name, data) => {
    if (name === "log") {
      queue.push(JSON.parse(data));
      // Bounded even while the tab is in the background (timers slow down).
      if (queue.length > MAX_ROWS) queue = queue.slice(-MAX_ROWS);
      flush ||= setTimeout(() => { flush = 0; const fresh = queue; queue = []; add(fresh); }, 200);
    } else if (name === "dropped") {
      // Strand drops a subscriber that does not keep up; it says so first.
      stop("■ live tail stopped: too many new logs to keep up with; turn it off and on to resume", "stopped");
    } else if (name === "error") {
      stop(`■ live tail stopped: ${data}`, "stopped");
    }
  };
  (async () => {
    let backoff = 1000;
    while (!stopped) {
      try {
        const res = await authFetch("/api/logs/tail" + (q ? "?" + new URLSearchParams({ q }) : ""),
          { headers: { accept: "text/event-stream" }, signal: aborter.signal });
        if (!res.ok) {
          let reason = `${res.status} ${res.statusText}`;
          try { reason = (await res.json()).error || reason; } catch (_) { /* not JSON */ }
          stop(`■ live tail stopped: Strand refused it: ${reason}`, "stopped");
          return;
        }
        show("● live", "on");
        backoff = 1000;
        await readEvents(res.body, onEvent);
      } catch (_) { /* connection lost or stopped: see below */ }
      if (stopped) return;
      // Meanwhile, check whether Strand is there at all.
      show("● reconnecting…", "connecting");
      fetch("/healthz", { cache: "no-store" }).catch(() => reportUnreachable());
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10_000);
    }
  })();
  return () => stop();
}

/** Reads a text/event-stream body to its end, calling onEvent(name, data) per event. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

/** The table's columns: the built-in ones by name, and attribute columns (`attributes.k`, `resource.k`). */
const COLUMNS = {
  time: { label: "Time", width: "var(--w-time)", cell: (log) => h("span.time", {}, fmtTime(Number(BigInt(log.timeUnixNano) / 1000000n))) },
  level: { label: "Level", width: "var(--w-level)", cell: (log) => h("span.sev.sev-" + log.severity, {}, log.severity) },
  service: { label: "Service", width: "var(--w-service)", cell: (log) => h("span.svc", {}, log.service) },
  message: { label: "Message", width: "minmax(0, 1fr)", cell: (log) => h("span.log-body", { title: log.body }, log.body) },
  trace: {
    label: "Trace", width: "var(--w-trace)",
    cell: (log) => log.traceId ? h("a.trace-link", { href: traceHref(log), title: log.traceId }, log.traceId.slice(0, 8)) : h("span"),
  },
};
const DEFAULT_COLUMNS = ["time", "level", "service", "message", "trace"];
const ATTRIBUTE_COLUMN = /^(attributes|resource)\.\S+$/;

/** A column by name; attribute columns show the record's value of that key. */
function column(name) {
  if (COLUMNS[name]) return COLUMNS[name];
  const [, scope, key] = /^(attributes|resource)\.(.+)$/.exec(name);
  return {
    label: key, width: "var(--w-attr)",
    cell: (log) => {
      const v = (log[scope] || {})[key];
      const text = v == null ? "" : typeof v === "string" ? v : JSON.stringify(v);
      return h("span.attr-cell", { title: text }, text);
    },
  };
}

/** The columns the URL asks for (`cols=time,message,attributes.order_id`), else the default ones. */
function columnsOf(params) {
  const asked = (params.get("cols") || "").split(",").filter((c) => COLUMNS[c] || ATTRIBUTE_COLUMN.test(c));
  return asked.length ? [...new Set(asked)] : DEFAULT_COLUMNS;
}

const sameColumns = (a, b) => a.length === b.length && a.every((c, i) => c === b[i]);

/** Checkboxes for the built-in columns, the attribute columns shown, and a field to add one. */
function columnPicker(cols, change) {
  const box = (name, label) => h("label", {}, h("input", {
    type: "checkbox", name: "col", value: name, checked: cols.includes(name),
    onchange: (e) => {
      // Built-in columns keep their order; attribute columns follow in the order added.
      const next = e.target.checked ? [...cols, name] : cols.filter((c) => c !== name);
      const builtIn = DEFAULT_COLUMNS.filter((c) => next.includes(c));
      if (next.length) change([...builtIn, ...next.filter((c) => !COLUMNS[c])]);
    },
  }), label);
  const add = h("form.col-add", {}, h("input", { name: "attr", placeholder: "attributes.order_id", "aria-label": "add an attribute column", size: 16 }),
    h("button", { type: "submit" }, "Add"));
  add.addEventListener("submit", (e) => {
    e.preventDefault();
    let name = add.attr.value.trim();
    if (name && !ATTRIBUTE_COLUMN.test(name)) name = `attributes.${name}`;
    if (ATTRIBUTE_COLUMN.test(name) && !cols.includes(name)) change([...cols, name]);
  });
  return h("details.col-picker", {}, h("summary", {}, "Columns"),
    h("div.col-menu", {},
      DEFAULT_COLUMNS.map((c) => box(c, COLUMNS[c].label)),
      cols.filter((c) => !COLUMNS[c]).map((c) => box(c, c)),
      add));
}

function logRow(log, index, selected, cols) {
  return h("div.log-row.sev-row-" + log.severity + (log === selected ? ".selected" : ""), { role: "listitem", dataset: { index, severity: log.severity, traceId: log.traceId || "" } },
    cols.map((c) => column(c).cell(log)));
}

const traceHref = (log) => `#/trace/${log.traceId}${log.spanId ? `?span=${log.spanId}` : ""}`;

/**
 * Bars of counts per bucket (errors in red) on a y-axis of round counts.
 * Clicking a bar zooms into it; dragging across bars zooms into their
 * window: `zoom(startMs, endMs)`.
 */
function drawHistogram(el, hist, zoom) {
  const buckets = hist.buckets || [];
  // Whole counts: at least 1 per step.
  const yTicks = ticks(0, Math.max(3, ...buckets.map((b) => b.total)), 3);
  const top = yTicks.at(-1);
  el.dataset.total = hist.total;
  const bars = buckets.map((b) => {
    const errors = (b.counts.error || 0) + (b.counts.fatal || 0);
    return h("div.hist-bar", {
      title: `${fmtTime(b.startMs)}: ${plural(b.total, "log")}${errors ? ` (${errors} errors)` : ""} · click or drag to zoom in`,
      dataset: { count: b.total, start: b.startMs },
    },
    h("div.hist-fill", { style: `height:${(b.total / top) * 100}%` },
      errors ? h("div.hist-err", { style: `height:${(errors / b.total) * 100}%` }) : null));
  });
  const barsEl = h("div.hist-bars", { title: "Click a bar or drag across bars to zoom in" }, bars);
  const band = h("div.hist-band", { hidden: true });
  const plot = h("div.hist-plot", {}, barsEl, band);
  // Drag: from the bar pressed to the one let go; a click is a drag of one bar.
  if (buckets.length) {
    const bar = (f) => Math.min(buckets.length - 1, Math.floor(f * buckets.length));
    const span = (from, to) => [Math.min(bar(from), bar(to)), Math.max(bar(from), bar(to))];
    dragAcross(barsEl, {
      move: (from, to) => {
        const [lo, hi] = span(from, to);
        band.hidden = false;
        band.style.left = `${(lo / buckets.length) * 100}%`;
        band.style.width = `${((hi - lo + 1) / buckets.length) * 100}%`;
      },
      done: (from, to) => {
        const [lo, hi] = span(from, to);
        band.hidden = true;
        if (lo === hi && !buckets[lo].total) return;
        zoom(buckets[lo].startMs, buckets[hi].startMs + hist.stepMs);
      },
    });
  }
  el.replaceChildren(
    h("div.hist-y", { "aria-label": "logs per bar" }, yTicks.slice().reverse().map((t) => h("span", {}, String(t)))),
    plot,
    h("div.hist-axis", {}, buckets.length ? [h("span", {}, fmtTime(buckets[0].startMs)), h("span", {}, fmtTime(buckets.at(-1).startMs))] : null));
}

/** A query term for a field and value, quoted unless it is one plain word. */
function term(field, value) {
  const v = String(value);
  return `${field}:${/^[\w.]+$/.test(v) ? v : JSON.stringify(v)}`;
}

/**
 * Facets: services, levels and the most common attribute keys, each value
 * with its count, a chip that adds it to the query and one that excludes it.
 */
function drawFacets(el, fac, addFilter) {
  const values = (field, list, key) => list.length ? h("ul", {}, list.map((v) => {
    const filter = term(field, v.value);
    const chip = (kind, label, text, add) => h(`button.facet-chip.facet-${kind}`, {
      type: "button", title: `${text} ${add}`, "aria-label": `${text} ${add}`, dataset: { key, value: v.value },
      onclick: () => addFilter(add),
    }, label);
    return h("li", {},
      h("span.facet-value", { title: String(v.value) }, String(v.value)),
      h("span.muted.facet-count", {}, String(v.count)),
      chip("include", "+", "Only", filter),
      chip("exclude", "−", "Exclude", `NOT ${filter}`));
  })) : h("p.muted", {}, "none");
  const group = (title, field, list) => h("section", {}, h("h3", {}, title), values(field, list, field));
  const attributes = (fac.attributes || []).map((a) => h("section.facet-attr", { dataset: { key: a.key } },
    h("h4", {}, h("button.link", { type: "button", title: `Only records that have ${a.key}`, onclick: () => addFilter(term("attribute_keys", a.key)) }, a.key),
      h("span.muted.facet-count", {}, String(a.count))),
    values(`attributes.${a.key}`, a.values || [], a.key)));
  el.replaceChildren(
    group("Service", "service", fac.services || []),
    group("Level", "severity", fac.severities || []),
    h("h3", {}, "Attributes"),
    ...(attributes.length ? attributes : [h("p.muted", {}, "none")]));
}

function showDetail(el, log, addFilter, close) {
  el.hidden = false;
  // Attribute values can be added to the query as filters.
  const kv = (obj, prefix) => {
    const entries = Object.entries(obj || {});
    return entries.length ? h("table.kv", {}, entries.map(([k, v]) => {
      const plain = ["string", "number", "boolean"].includes(typeof v);
      return h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "string" ? v : JSON.stringify(v),
        plain ? h("button.link.add-filter", { type: "button", title: "Add to the query", onclick: () => addFilter(term(`${prefix}.${k}`, v)) }, " +") : null));
    })) : h("p.muted", {}, "none");
  };
  el.replaceChildren(
    h("div.detail-head", {}, h("h2", {}, "Log"), h("button.close", { type: "button", "aria-label": "close", onclick: close }, "×")),
    h("pre.body", {}, log.body),
    h("table.kv", {},
      h("tr", {}, h("th", {}, "time"), h("td", {}, log.timestamp)),
      h("tr", {}, h("th", {}, "severity"), h("td", {}, `${log.severity} ${log.severityText || ""}`)),
      h("tr", {}, h("th", {}, "service"), h("td", {}, log.service)),
      log.traceId ? h("tr", {}, h("th", {}, "trace"), h("td", {}, h("a.trace-link", { href: traceHref(log) }, log.traceId))) : null,
      log.spanId ? h("tr", {}, h("th", {}, "span"), h("td", {}, log.spanId)) : null,
      log.scope ? h("tr", {}, h("th", {}, "scope"), h("td", {}, log.scope)) : null),
    h("h3", {}, "Attributes"), kv(log.attributes, "attributes"),
    h("h3", {}, "Resource"), kv(log.resource, "resource"),
    surrounding(log));
}

/** Records around each side of a record. */
const AROUND = 10;

/**
 * "Surrounding logs": the same service's records just before and after
 * `log` (whatever the query), newest first, the record itself marked.
 */
function surrounding(log) {
  const list = h("div.surrounding", { "aria-live": "polite" });
  const show = h("button.link.surrounding-toggle", { type: "button" }, "Surrounding logs");
  show.addEventListener("click", async () => {
    show.disabled = true;
    list.replaceChildren(state("Loading…"));
    const q = term("service", log.service);
    try {
      const [before, after] = await Promise.all([
        api("/api/logs", { q, end: log.timeUnixNano, limit: AROUND + 1 }),
        api("/api/logs", { q, start: log.timeUnixNano, order: "asc", limit: AROUND + 1 }),
      ]);
      const byId = new Map([...before.logs, ...after.logs].map((l) => [l.id, l]));
      const rows = [...byId.values()].sort(newestFirst);
      const at = rows.findIndex((l) => l.id === log.id);
      list.replaceChildren(h("ol.surround-list", {}, rows.slice(Math.max(0, at - AROUND), at + AROUND + 1).map((l) =>
        h("li.surround-row" + (l.id === log.id ? ".current" : ""), { dataset: { id: l.id }, "aria-current": l.id === log.id ? "true" : null },
          h("span.time", {}, fmtTime(Number(BigInt(l.timeUnixNano) / 1000000n))),
          h("span.sev.sev-" + l.severity, {}, l.severity),
          h("span.log-body", { title: l.body }, l.body)))));
    } catch (e) {
      list.replaceChildren(state(e.message, "error"));
    }
    show.disabled = false;
  });
  return h("section", {}, h("h3", {}, show), h("p.muted.around-note", {}, `${log.service}'s records, ${AROUND} before and ${AROUND} after this one`), list);
}
