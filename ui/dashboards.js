// Dashboards: #/dashboards lists them; #/dashboard/<id> charts each panel's
// PromQL over the global time range, and #/dashboard/<id>?edit=1 edits it.
// They live in Strand's data dir behind /api/dashboards, which checks every
// save (ids, shape, PromQL) and answers errors we show as they are. The
// built-in `shop` dashboard is read-only: it can be saved as a copy. Export
// downloads the API's JSON unchanged; import PUTs pasted JSON.

import { api, authFetch, h, state, ApiError, UnreachableError, timeRange, onRefresh, onStale } from "./lib.js";
import { lineChart, queryRange, toSeries, timeParams } from "./metrics.js";

/** `#/dashboards` (or `#/dashboard`) lists; `#/dashboard/<id>` shows one. */
export async function render(root, ctx) {
  return ctx.arg ? renderDashboard(root, ctx) : renderList(root, ctx);
}

const dashPath = (id) => `/api/dashboards/${encodeURIComponent(id)}`;

/** PUT or DELETE; resolves to the JSON answer, throws the API's message. */
async function send(method, path, body) {
  let res;
  try {
    res = await authFetch(path, { method, body, headers: { "content-type": "application/json", accept: "application/json" } });
  } catch (e) {
    throw new ApiError(`cannot reach Strand: ${e.message}`);
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!res.ok) throw new ApiError((json && json.error) || `${res.status} ${res.statusText}`);
  return json;
}

/** An id for a title, in the API's slug alphabet (a-z, 0-9, -, _). */
function slugify(title) {
  return title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 56) || "dashboard";
}

function uniqueId(base, taken) {
  let id = base;
  for (let n = 2; taken.has(id); n++) id = `${base}-${n}`;
  return id;
}

/** The hash of a dashboard, keeping the time range. */
function dashHash(id, params, extra = {}) {
  const qs = new URLSearchParams(Object.entries({ ...timeParams(params), ...extra }).filter(([, v]) => v));
  return `#/dashboard/${encodeURIComponent(id)}${qs.toString() ? "?" + qs : ""}`;
}

async function renderList(root, { params, current }) {
  editing = null;
  const out = h("div.dash-list-wrap", {}, state("Loading dashboards…"));
  root.append(h("h1", {}, "Dashboards"), out);
  let list;
  try {
    list = (await api("/api/dashboards")).dashboards;
  } catch (e) {
    if (current()) out.replaceChildren(state(e.message, "error"));
    return;
  }
  if (!current()) return;
  const taken = new Set(list.map((d) => d.id));

  const items = h("ul.dash-list", {}, list.map((d) => h("li.dash-item", { dataset: { id: d.id } },
    h("a", { href: dashHash(d.id, params) }, d.title),
    d.builtIn ? h("span.badge", { title: "Compiled into Strand; save a copy to change it" }, "built in") : null,
    h("span.muted", {}, `${d.panels} panel${d.panels === 1 ? "" : "s"}`),
    d.error ? h("span.dash-error", {}, d.error) : null)));

  // A new dashboard is saved empty at once, then opened for editing.
  const title = h("input", { name: "title", placeholder: "Title of a new dashboard", required: true, "aria-label": "title of a new dashboard" });
  const createMsg = h("div");
  const create = h("form.toolbar.dash-new", { "aria-label": "new dashboard" }, title, h("button", { type: "submit" }, "Create"));
  create.addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = uniqueId(slugify(title.value), taken);
    try {
      await send("PUT", dashPath(id), JSON.stringify({ version: 1, title: title.value.trim(), panels: [] }));
      location.hash = dashHash(id, params, { edit: "1" });
    } catch (err) {
      createMsg.replaceChildren(state(err.message, "error"));
    }
  });

  // Import: the API checks the JSON; we only pick an id that is free.
  const json = h("textarea.query", { name: "json", rows: 8, spellcheck: "false", placeholder: "Paste a dashboard's JSON (from Export JSON)", "aria-label": "dashboard JSON" });
  const importId = h("input", { name: "id", placeholder: "id (default: from the title)", "aria-label": "id of the imported dashboard" });
  const importMsg = h("div");
  const importForm = h("form.dash-import-form", {}, json, h("div.toolbar", {}, importId, h("button", { type: "submit" }, "Import")), importMsg);
  importForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    let id = importId.value.trim();
    if (!id) {
      try {
        id = uniqueId(slugify(String(JSON.parse(json.value).title || "")), taken);
      } catch (err) {
        importMsg.replaceChildren(state(`not JSON: ${err.message}`, "error"));
        return;
      }
    } else if (taken.has(id)) {
      importMsg.replaceChildren(state(`a dashboard "${id}" exists already; choose another id`, "error"));
      return;
    }
    try {
      await send("PUT", dashPath(id), json.value);
      location.hash = dashHash(id, params);
    } catch (err) {
      importMsg.replaceChildren(state(err.message, "error"));
    }
  });

  out.replaceChildren(items, h("h3", {}, "New dashboard"), create, createMsg,
    h("details.dash-import", {}, h("summary", {}, "Import JSON"), importForm));
}

// The draft being edited, kept when the view is drawn again for the same
// dashboard (a new time range from the header) so no edit is lost.
let editing = null;

async function renderDashboard(root, { arg: id, params, current, go }) {
  const edit = params.get("edit") === "1";
  const head = h("div.dash-head", {}, state("Loading dashboard…"));
  root.append(head);
  let dashboard, list;
  try {
    [dashboard, { dashboards: list }] = await Promise.all([api(dashPath(id)), api("/api/dashboards")]);
  } catch (e) {
    if (current()) head.replaceChildren(state(e.message, "error"), h("a", { href: "#/dashboards" }, "All dashboards"));
    return;
  }
  if (!current()) return;
  const builtIn = list.some((d) => d.id === id && d.builtIn);
  const taken = new Set(list.map((d) => d.id));
  if (!edit || builtIn) editing = null;
  else if (editing?.id !== id) editing = { id, draft: structuredClone(dashboard) };
  const draft = edit && !builtIn ? editing.draft : dashboard;

  const message = h("div.dash-msg");
  const grid = h("div.panel-grid");
  let panels = [];
  const drawPanels = () => {
    for (const p of panels) p.destroy();
    panels = draft.panels.map((panel, i) => panelView(panel, i, params, edit && !builtIn ? {
      remove: () => { draft.panels.splice(i, 1); drawPanels(); },
    } : null));
    grid.replaceChildren(...panels.map((p) => p.el));
    if (!panels.length) {
      grid.append(state(edit ? "No panels yet: add one." : "This dashboard has no panels yet: edit it to add some."));
    }
    for (const p of panels) p.load();
  };

  const button = (cls, text, onclick, title) => h(`button.${cls}`, { type: "button", onclick, title }, text);
  const copyForm = saveCopyForm(dashboard, id, taken, params, message);
  const tools = h("div.toolbar.dash-tools");
  if (edit && !builtIn) {
    const titleInput = h("input.dash-title", { value: draft.title, "aria-label": "dashboard title" });
    titleInput.addEventListener("input", () => { draft.title = titleInput.value; });
    head.replaceChildren(titleInput);
    const save = async () => {
      message.replaceChildren();
      try {
        await send("PUT", dashPath(id), JSON.stringify(draft, null, 2));
        editing = null;
        go(`dashboard/${id}`, timeParams(params));
      } catch (e) {
        message.replaceChildren(state(e.message, "error"));
        // "panels[2].query: ..." belongs to that panel too.
        const which = /^panels\[(\d+)\]/.exec(e.message);
        if (which) panels[+which[1]]?.showError(e.message);
      }
    };
    let armed = false;
    const del = button("danger", "Delete", async () => {
      // Two clicks instead of a modal confirm(): the second one deletes.
      if (!armed) { armed = true; del.textContent = "Really delete?"; return; }
      try {
        await send("DELETE", dashPath(id));
        editing = null;
        go("dashboards", timeParams(params));
      } catch (e) {
        message.replaceChildren(state(e.message, "error"));
      }
    });
    tools.append(
      button("add-panel", "Add panel", () => { draft.panels.push({ title: "", query: "", unit: "" }); drawPanels(); }),
      button("save", "Save", save),
      button("cancel", "Cancel", () => { editing = null; go(`dashboard/${id}`, timeParams(params)); }),
      del);
  } else {
    head.replaceChildren(h("h1", {}, dashboard.title));
    if (builtIn) head.append(h("span.badge", { title: "Compiled into Strand; save a copy to change it" }, "built in"));
    if (!builtIn) tools.append(button("edit", "Edit", () => go(`dashboard/${id}`, { ...timeParams(params), edit: "1" })));
    tools.append(
      button("copy", "Save a copy", () => { copyForm.hidden = !copyForm.hidden; }),
      button("export", "Export JSON", () => exportJson(id, message), "Download this dashboard's JSON"),
      h("a", { href: "#/dashboards" }, "All dashboards"));
  }
  if (dashboard.description) head.append(h("p.muted.dash-desc", {}, dashboard.description));
  root.append(tools, copyForm, message, grid);
  drawPanels();
  const unsubscribe = onRefresh(() => { for (const p of panels) p.load(); });
  // While Strand is unreachable, panels keep their last data, marked stale.
  const unstale = onStale((marker) => { for (const p of panels) p.markStale(marker); });
  return () => { unsubscribe(); unstale(); for (const p of panels) p.destroy(); };
}

/** "Save a copy": a new id and title, then the copy opens for editing. */
function saveCopyForm(dashboard, id, taken, params, message) {
  const newId = h("input", { name: "id", value: uniqueId(`${id}-copy`, taken), "aria-label": "id of the copy" });
  const newTitle = h("input", { name: "title", value: `${dashboard.title} (copy)`, "aria-label": "title of the copy" });
  const form = h("form.toolbar.dash-copy", { hidden: true, "aria-label": "save a copy" },
    h("label", {}, "id", newId), h("label", {}, "title", newTitle), h("button", { type: "submit" }, "Save copy"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const target = newId.value.trim();
    if (taken.has(target)) {
      message.replaceChildren(state(`a dashboard "${target}" exists already; choose another id`, "error"));
      return;
    }
    try {
      await send("PUT", dashPath(target), JSON.stringify({ ...dashboard, title: newTitle.value.trim() }));
      location.hash = dashHash(target, params, { edit: "1" });
    } catch (err) {
      message.replaceChildren(state(err.message, "error"));
    }
  });
  return form;
}

/** Downloads exactly what the API stores (a Blob behind a[download]). */
async function exportJson(id, message) {
  try {
    const res = await authFetch(dashPath(id));
    if (!res.ok) throw new ApiError(`${res.status} ${res.statusText}`);
    const url = URL.createObjectURL(new Blob([await res.text()], { type: "application/json" }));
    const a = h("a", { href: url, download: `${id}.json` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (e) {
    message.replaceChildren(state(`export failed: ${e.message}`, "error"));
  }
}

/**
 * One panel: its chart over the global time range, or the API's error for
 * its query. With `editor` ({ remove }), also fields for title, query and
 * unit that change the panel object in place; Run redraws with them.
 */
function panelView(panel, index, params, editor) {
  let chart = null;
  const body = h("div.panel-body");
  const heading = h("h2", {});
  const unitNote = h("span.muted.panel-unit");
  const staleNote = h("span.panel-stale");
  const label = () => {
    heading.textContent = panel.title || panel.query || "Untitled panel";
    // Units the axis cannot show are named once in the header.
    unitNote.textContent = panel.unit && !["seconds", "ratio", "percent", "bytes"].includes(panel.unit) ? panel.unit : "";
  };
  label();
  const message = h("div.panel-msg");
  const el = h("section.panel", { dataset: { panel: index } }, h("header.panel-head", {}, heading, unitNote, staleNote));
  const newChart = () => {
    chart?.destroy();
    chart = lineChart({ unit: panel.unit, zero: true, height: 220 });
    chart.el.hidden = true;
    body.replaceChildren(chart.el);
  };
  newChart();

  if (editor) {
    const field = (name, tag, attrs) => {
      const input = h(tag, { name, "aria-label": `panel ${name}`, ...attrs, value: tag === "input" ? panel[name] || "" : null },
        tag === "textarea" ? panel[name] || "" : null);
      input.addEventListener("input", () => { panel[name] = input.value; label(); });
      return input;
    };
    const query = field("query", "textarea", { class: "query", rows: 3, spellcheck: "false", placeholder: "PromQL, e.g. sum by (service_name) (rate(traces_span_metrics_calls_total[1m]))" });
    query.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); run(); }
    });
    const run = () => { newChart(); load(); };
    el.append(h("div.panel-editor", {},
      field("title", "input", { placeholder: "Panel title" }),
      query,
      h("div.toolbar", {},
        field("unit", "input", { placeholder: "unit: seconds, ratio, bytes, req/s…", list: "panel-units" }),
        h("datalist", { id: "panel-units" }, ["seconds", "ratio", "percent", "bytes", "req/s"].map((u) => h("option", { value: u }))),
        h("button.run", { type: "button", onclick: run }, "Run"),
        h("button.remove", { type: "button", onclick: editor.remove }, "Remove"))));
  }
  el.append(message, body);

  let latest = 0;
  async function load() {
    const mine = ++latest;
    if (!panel.query.trim()) {
      chart.el.hidden = true;
      message.replaceChildren(state("Enter a PromQL query and press Run."));
      return;
    }
    const span = timeRange(params);
    let result;
    try {
      result = await queryRange(panel.query, span);
    } catch (e) {
      if (mine !== latest) return;
      // The last data stay, marked stale (onStale), until Strand is back.
      if (e instanceof UnreachableError && !chart.el.hidden) return;
      chart.el.hidden = true;
      message.replaceChildren(state(e.message, "error"));
      return;
    }
    if (mine !== latest) return;
    const series = toSeries(result);
    message.replaceChildren(...(series.length ? [] : [state("No data in this time range.", "empty")]));
    chart.el.hidden = !series.length;
    chart.update(series, span.start, span.end);
  }
  return {
    el,
    load,
    showError(text) { chart.el.hidden = true; message.replaceChildren(state(text, "error")); },
    /** Marks the chart on screen stale (`marker` makes the mark) or fresh (null). */
    markStale(marker) { staleNote.replaceChildren(marker && !chart.el.hidden ? marker() : ""); },
    destroy() { latest++; chart.destroy(); },
  };
}
