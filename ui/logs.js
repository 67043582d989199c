// Log explorer: a query box, a histogram of counts over the header's time
// window (click a bar to zoom into it), facets that add filters, and a
// virtualised results table whose rows open the record and whose trace ids
// open the trace. With live tail on (`live=1`), new matching records stream
// in over /api/logs/tail and are put on top of the table.

import { api, authFetch, h, state, fmtTime, timeRange, onRefresh, reportUnreachable, VirtualList } from "./lib.js";

const ROW = 26;
const PAGE = 500;
/** Rows kept in live mode: the oldest go when new ones arrive. */
const MAX_ROWS = 5000;

const SYNTAX = [
  ["declined timeout", "words of the message (all of them)"],
  ['"card declined"', "a phrase"],
  ["service:payment severity:error", "fields: service, severity, trace_id, span_id"],
  ["attributes.order_id:42", "attribute values (resource.* for the resource)"],
  ["attribute_keys:order_id", "records that have an attribute"],
  ["a OR b, NOT c, (a OR b) AND c", "boolean operators"],
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
  const histogram = h("div.histogram", { "aria-label": "log counts over time" });
  const facets = h("aside.facets");
  const summary = h("div.summary.muted");
  const indicator = h("span.live-indicator", { hidden: !live, role: "status" });
  const table = new VirtualList(ROW, (log, i) => logRow(log, i, selected), "vlist log-table");
  const head = h("div.log-head", {}, h("span", {}, "Time"), h("span", {}, "Level"), h("span", {}, "Service"), h("span", {}, "Message"), h("span", {}, "Trace"));
  const detail = h("aside.detail.log-detail", { hidden: true });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  root.append(h("h1", {}, "Logs"), form,
    h("details.syntax", {}, h("summary.muted", {}, "Query syntax"),
      h("table.kv", {}, SYNTAX.map(([example, what]) => h("tr", {}, h("th", {}, h("code", {}, example)), h("td", {}, what))))),
    ...(win.absolute ? [h("p.muted.window", {}, `${fmtTime(win.start)} – ${fmtTime(win.end)} · `,
      h("a", { href: "#/logs?" + new URLSearchParams(clean(here({ start: null, end: null, range: win.range }))) }, "back to the last " + win.range))] : []),
    histogram,
    h("div.logs-body", {}, facets,
      h("div.logs-main", {}, h("div.logs-status", {}, summary, indicator), head, table.el, more),
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
    more.hidden = !cursor;
  });

  /** Fetches the window's page, histogram and facets (again on refresh, as a relative window slides). */
  const load = async () => {
    const mine = ++loads;
    const { start, end } = timeRange(params);
    Object.assign(win, { start, end });
    histogram.dataset.start = start;
    histogram.dataset.end = end;
    const query = { q, start, end };
    const [page, hist, fac] = await Promise.allSettled([
      api("/api/logs", { ...query, limit: PAGE }),
      api("/api/logs/histogram", query),
      api("/api/logs/facets", query),
    ]);
    if (!current() || mine !== loads) return false;
    if (page.status === "rejected") {
      summary.replaceChildren(state(page.reason.message, "error"));
      head.hidden = table.el.hidden = more.hidden = true;
      histogram.replaceChildren();
      facets.replaceChildren();
      return false;
    }
    const { total } = page.value;
    logs = page.value.logs;
    cursor = page.value.nextCursor;
    more.hidden = !cursor;
    summary.replaceChildren(total ? `${total} matching log${total > 1 ? "s" : ""}, newest first` : empty(q, win));
    head.hidden = table.el.hidden = !total && !live;
    table.setItems(logs);
    if (hist.status === "fulfilled") drawHistogram(histogram, hist.value, (b) => go("logs", here({ start: b, end: b + hist.value.stepMs, live: null })));
    else histogram.replaceChildren(state(`Histogram: ${hist.reason.message}`, "error"));
    if (fac.status === "fulfilled") drawFacets(facets, fac.value, addFilter);
    else facets.replaceChildren(state(`Facets: ${fac.reason.message}`, "error"));
    return true;
  };

  const loaded = await load();
  if (!current()) return () => { table.resize.disconnect(); document.removeEventListener("keydown", onKey); };
  let stop = () => {};
  if (!live) stop = onRefresh(load);
  else if (loaded) {
    stop = tail(q, indicator, (fresh) => {
      // Newest first, and no more than MAX_ROWS: older pages are gone then.
      logs = fresh.reverse().concat(logs);
      if (logs.length > MAX_ROWS) { logs.length = MAX_ROWS; cursor = null; more.hidden = true; }
      // Keep the rows the reader looks at in place while rows arrive above.
      const keep = table.el.scrollTop > 0;
      table.setItems(logs);
      if (keep) table.el.scrollTop += fresh.length * ROW;
      head.hidden = table.el.hidden = false;
      summary.replaceChildren(`${logs.length} log${logs.length > 1 ? "s" : ""}, newest first, new ones on top`);
    });
  }
  return () => {
    stop();
    table.resize.disconnect();
    document.removeEventListener("keydown", onKey);
  };
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

function logRow(log, index, selected) {
  const ms = Number(BigInt(log.timeUnixNano) / 1000000n);
  return h("div.log-row.sev-row-" + log.severity + (log === selected ? ".selected" : ""), { role: "listitem", dataset: { index, severity: log.severity, traceId: log.traceId || "" } },
    h("span.time", {}, fmtTime(ms)),
    h("span.sev.sev-" + log.severity, {}, log.severity),
    h("span.svc", {}, log.service),
    h("span.log-body", { title: log.body }, log.body),
    log.traceId ? h("a.trace-link", { href: traceHref(log), title: log.traceId }, log.traceId.slice(0, 8)) : h("span"));
}

const traceHref = (log) => `#/trace/${log.traceId}${log.spanId ? `?span=${log.spanId}` : ""}`;

function drawHistogram(el, hist, zoom) {
  const buckets = hist.buckets || [];
  const max = Math.max(1, ...buckets.map((b) => b.total));
  el.dataset.total = hist.total;
  const bars = buckets.map((b) => {
    const errors = (b.counts.error || 0) + (b.counts.fatal || 0);
    return h("div.hist-bar", {
      title: `${fmtTime(b.startMs)}: ${b.total}${errors ? ` (${errors} errors)` : ""}${b.total ? " · click to zoom in" : ""}`,
      dataset: { count: b.total, start: b.startMs },
      onclick: () => b.total && zoom(b.startMs),
    },
    h("div.hist-fill", { style: `height:${(b.total / max) * 100}%` },
      errors ? h("div.hist-err", { style: `height:${(errors / b.total) * 100}%` }) : null));
  });
  el.replaceChildren(h("div.hist-bars", {}, bars),
    h("div.hist-axis", {}, buckets.length ? [h("span", {}, fmtTime(buckets[0].startMs)), h("span", {}, fmtTime(buckets.at(-1).startMs))] : null));
}

/** A query term for a field and value, quoted unless it is one plain word. */
function term(field, value) {
  const v = String(value);
  return `${field}:${/^[\w.]+$/.test(v) ? v : JSON.stringify(v)}`;
}

function drawFacets(el, fac, addFilter) {
  const group = (title, field, values) => h("section", {}, h("h3", {}, title),
    values.length ? h("ul", {}, values.map((v) => h("li", {},
      h("button.link", { type: "button", title: `Add ${term(field, v.value)} to the query`, onclick: () => addFilter(term(field, v.value)) }, v.value),
      h("span.muted", {}, ` ${v.count}`)))) : h("p.muted", {}, "none"));
  el.replaceChildren(
    group("Service", "service", fac.services || []),
    group("Level", "severity", fac.severities || []),
    group("Attribute keys", "attribute_keys", fac.attributeKeys || []));
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
    h("h3", {}, "Resource"), kv(log.resource, "resource"));
}
