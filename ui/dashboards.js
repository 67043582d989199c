// Dashboards: #/dashboards lists them; #/dashboard/<id> charts each panel's
// PromQL over the global time range, and #/dashboard/<id>?edit=1 edits it.
// They live in Strand's data dir behind /api/dashboards, which checks every
// save (ids, shape, PromQL) and answers errors we show as they are. The
// built-in `shop` dashboard is read-only: it can be saved as a copy. Export
// downloads the API's JSON unchanged; import PUTs pasted JSON. A new
// dashboard or a copy is only a draft until Save: nothing is written before,
// and leaving a draft or unsaved edits asks first (`guardLeave`).
//
// Variables (`variables: [{ name, query: "label_values(selector, label)",
// multi }]`) are pickers above the panels; `$name` in a panel's query is
// replaced by the picked value (several as the regex `a|b`, for `=~`), kept
// in the URL as `var-name=...`.

import { api, authFetch, h, state, ApiError, UnreachableError, timeRange, onRefresh, onStale, guardLeave } from "./lib.js";
import { queryRange, toSeries, timeParams, expandVariables, labelValuesQuery, regexAlternatives, attachSuggest, rateWindowHint, sampleInterval } from "./metrics.js";
import { panelChart } from "./panels.js";

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

/**
 * The hash of a dashboard, keeping the time range and the variables'
 * values (`var-name`, repeated for several) of `params`.
 */
function dashHash(id, params, extra = {}) {
  const qs = new URLSearchParams(Object.entries({ ...timeParams(params), ...extra }).filter(([, v]) => v));
  for (const [k, v] of params) if (k.startsWith("var-")) qs.append(k, v);
  return `#/dashboard/${encodeURIComponent(id)}${qs.toString() ? "?" + qs : ""}`;
}

/** Opens a draft for editing; it is written only when saved. */
function openDraft(id, draft, params) {
  editing = { id, draft, saved: null };
  location.hash = dashHash(id, params, { edit: "1" });
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

  // A new dashboard opens as a draft, written on Save.
  const title = h("input", { name: "title", placeholder: "Title of a new dashboard", required: true, "aria-label": "title of a new dashboard" });
  const create = h("form.toolbar.dash-new", { "aria-label": "new dashboard" }, title, h("button", { type: "submit" }, "Create"));
  create.addEventListener("submit", (e) => {
    e.preventDefault();
    openDraft(uniqueId(slugify(title.value), taken), { version: 1, title: title.value.trim(), panels: [] }, params);
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

  out.replaceChildren(items, h("h3", {}, "New dashboard"), create,
    h("details.dash-import", {}, h("summary", {}, "Import JSON"), importForm));
}

// The draft being edited, kept when the view is drawn again for the same
// dashboard (a new time range from the header) so no edit is lost:
// { id, draft, saved } with `saved` the stored JSON, null for a draft never
// saved (a new dashboard or a copy).
let editing = null;

const UNSAVED = "This dashboard has unsaved changes. Leave without saving them?";
const isDirty = () => !!editing && (editing.saved === null || JSON.stringify(editing.draft) !== editing.saved);

async function renderDashboard(root, { arg: id, params, current, go }) {
  const edit = params.get("edit") === "1";
  const head = h("div.dash-head", {}, state("Loading dashboard…"));
  root.append(head);
  // A draft never saved is not in the API yet.
  const fresh = edit && editing?.id === id && editing.saved === null;
  let dashboard, list;
  try {
    [dashboard, { dashboards: list }] = await Promise.all([fresh ? editing.draft : api(dashPath(id)), api("/api/dashboards")]);
  } catch (e) {
    if (current()) head.replaceChildren(state(e.message, "error"), h("a", { href: "#/dashboards" }, "All dashboards"));
    return;
  }
  if (!current()) return;
  const builtIn = !fresh && list.some((d) => d.id === id && d.builtIn);
  const taken = new Set(list.map((d) => d.id));
  if (!edit || builtIn) editing = null;
  else if (editing?.id !== id) editing = { id, draft: structuredClone(dashboard), saved: JSON.stringify(dashboard) };
  const editable = edit && !builtIn;
  const draft = editable ? editing.draft : dashboard;

  const message = h("div.dash-msg");
  const grid = h("div.panel-grid");
  const pickers = () => variablesView(draft.variables || [], params, timeRange(params), (picked) => {
    // In place, so an open picker stays open; the URL keeps the choice.
    for (const k of [...params.keys()]) if (k.startsWith("var-")) params.delete(k);
    for (const [name, values] of Object.entries(picked)) for (const v of values) params.append(`var-${name}`, v);
    history.replaceState(null, "", dashHash(id, params, edit ? { edit: "1" } : {}));
    for (const p of panels) p.load();
  });
  let vars = pickers();
  const values = () => vars.values();
  // The editor's Apply draws the pickers again from the edited variables.
  const applyVariables = async () => {
    const next = pickers();
    vars.el.replaceWith(next.el);
    vars = next;
    await next.ready;
    for (const p of panels) p.load();
  };
  let panels = [];
  const drawPanels = () => {
    for (const p of panels) p.destroy();
    const move = (i, by) => {
      const [panel] = draft.panels.splice(i, 1);
      draft.panels.splice(i + by, 0, panel);
      drawPanels();
    };
    panels = draft.panels.map((panel, i) => panelView(panel, i, params, values, editable ? {
      remove: () => { draft.panels.splice(i, 1); drawPanels(); },
      up: i > 0 ? () => move(i, -1) : null,
      down: i < draft.panels.length - 1 ? () => move(i, 1) : null,
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
  let variableEditor = null;
  if (editable) {
    const titleInput = h("input.dash-title", { value: draft.title, "aria-label": "dashboard title" });
    titleInput.addEventListener("input", () => { draft.title = titleInput.value; });
    head.replaceChildren(titleInput);
    const save = async () => {
      message.replaceChildren();
      try {
        await send("PUT", dashPath(id), JSON.stringify(draft, null, 2));
        editing = null;
        location.hash = dashHash(id, params);
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
      // Cancel is the explicit way to drop the edits (a draft: to drop it).
      button("cancel", "Cancel", () => {
        editing = null;
        if (fresh) go("dashboards", timeParams(params)); else location.hash = dashHash(id, params);
      }),
      ...(fresh ? [] : [del]));
    if (fresh) message.append(state("Not saved yet: Save writes this dashboard.", "empty"));
    variableEditor = variablesEditor(draft, applyVariables);
  } else {
    head.replaceChildren(h("h1", {}, dashboard.title));
    if (builtIn) head.append(h("span.badge", { title: "Compiled into Strand; save a copy to change it" }, "built in"));
    if (!builtIn) tools.append(button("edit", "Edit", () => { location.hash = dashHash(id, params, { edit: "1" }); }));
    tools.append(
      button("copy", "Save a copy", () => { copyForm.hidden = !copyForm.hidden; }),
      button("export", "Export JSON", () => exportJson(id, message), "Download this dashboard's JSON"),
      h("a", { href: "#/dashboards" }, "All dashboards"));
  }
  if (dashboard.description) head.append(h("p.muted.dash-desc", {}, dashboard.description));
  root.append(tools, ...(variableEditor ? [variableEditor] : []), copyForm, message, vars.el, grid);
  await vars.ready;
  if (!current()) return;
  // Leaving this dashboard's editor (not redrawing it) with unsaved edits asks first.
  const self = (t) => t.name === "dashboard" && t.arg === id && t.params.get("edit") === "1";
  const release = editable ? guardLeave((target) => (target && self(target)) || !isDirty() ? "" : UNSAVED) : () => {};
  drawPanels();
  // A refresh asks for the variables' values again too (a service that
  // started since shows up), unless the user has a picker open.
  const unsubscribe = onRefresh(() => {
    if ((draft.variables || []).length && !vars.el.querySelector("details[open]")) applyVariables();
    else for (const p of panels) p.load();
  });
  // While Strand is unreachable, panels keep their last data, marked stale.
  const unstale = onStale((marker) => { for (const p of panels) p.markStale(marker); });
  return () => {
    unsubscribe();
    unstale();
    release();
    for (const p of panels) p.destroy();
    // This editor left for another view (the user said so): its edits are dropped.
    const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
    const stays = path === `dashboard/${encodeURIComponent(id)}` && new URLSearchParams(query).get("edit") === "1";
    if (editing?.id === id && !stays) editing = null;
  };
}

/** "Save a copy": a new id and title, then the copy opens as a draft. */
function saveCopyForm(dashboard, id, taken, params, message) {
  const newId = h("input", { name: "id", value: uniqueId(`${id}-copy`, taken), "aria-label": "id of the copy" });
  const newTitle = h("input", { name: "title", value: `${dashboard.title} (copy)`, "aria-label": "title of the copy" });
  const form = h("form.toolbar.dash-copy", { hidden: true, "aria-label": "save a copy" },
    h("label", {}, "id", newId), h("label", {}, "title", newTitle), h("button", { type: "submit" }, "Save copy"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const target = newId.value.trim();
    if (taken.has(target)) {
      message.replaceChildren(state(`a dashboard "${target}" exists already; choose another id`, "error"));
      return;
    }
    openDraft(target, { ...structuredClone(dashboard), title: newTitle.value.trim() }, params);
  });
  return form;
}

/**
 * The variables' pickers: one per variable, its values from the label
 * values API over the window. `ready` resolves once every picker knows its
 * values; `values()` is { name: substitution } for `expandVariables`, and
 * `onPick({ name: [picked] })` is called on every change (an empty list is
 * "All").
 */
function variablesView(variables, params, span, onPick) {
  const el = h("div.var-bar", { hidden: !variables.length });
  const picked = {};
  const known = {};
  const substitution = {};
  const update = (v) => {
    const chosen = picked[v.name].length ? picked[v.name] : known[v.name];
    // Several values become a regex alternation, for `=~"$name"`.
    substitution[v.name] = v.multi ? regexAlternatives(chosen) : (chosen[0] ?? "");
  };
  const ready = Promise.all(variables.map(async (v) => {
    const source = labelValuesQuery(v.query);
    let values = [];
    let error = "";
    if (!source) error = `${v.name}: ${v.query} is not label_values(selector, label)`;
    else {
      try {
        values = (await api(`/api/v1/label/${encodeURIComponent(source.label)}/values`, {
          "match[]": source.selector, start: (span.start / 1000).toFixed(3), end: (span.end / 1000).toFixed(3),
        })).data;
      } catch (e) { error = `${v.name}: ${e.message}`; }
    }
    known[v.name] = values;
    const fromUrl = params.getAll(`var-${v.name}`).filter((x) => values.includes(x));
    picked[v.name] = v.multi ? fromUrl : [fromUrl[0] ?? values[0]].filter((x) => x != null);
    update(v);
    return picker(v, values, error);
  })).then((pickers) => el.append(...pickers));

  function picker(v, values, error) {
    const summary = h("summary", {});
    const label = () => {
      const chosen = picked[v.name];
      summary.replaceChildren(h("span.muted", {}, `${v.name} `), chosen.length ? chosen.join(", ") : "All");
    };
    label();
    const type = v.multi ? "checkbox" : "radio";
    const options = v.multi ? ["$__all", ...values] : values;
    const inputs = options.map((value) => h("input", {
      type, name: `var-${v.name}`, value, checked: value === "$__all" ? !picked[v.name].length : picked[v.name].includes(value),
    }));
    const changed = (input) => {
      if (!v.multi) picked[v.name] = [input.value];
      else if (input.value === "$__all") picked[v.name] = [];
      else picked[v.name] = inputs.filter((i) => i.checked && i.value !== "$__all").map((i) => i.value);
      for (const i of inputs) i.checked = i.value === "$__all" ? !picked[v.name].length : picked[v.name].includes(i.value);
      label();
      update(v);
      onPick(Object.fromEntries(variables.map((x) => [x.name, picked[x.name]])));
    };
    for (const input of inputs) input.addEventListener("change", () => changed(input));
    return h("details.var-picker", { dataset: { var: v.name } }, summary,
      h("div.var-options", { role: "group", "aria-label": `values of ${v.name}` },
        error ? state(error, "error") : null,
        inputs.map((input) => h("label", {}, input, input.value === "$__all" ? "All" : input.value))));
  }
  return { el, ready, values: () => substitution };
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
 * The editor of a draft's variables: a row per variable (name, values'
 * query, several values or one), Add, and Apply, which draws the pickers
 * again with them (the API checks them on Save).
 */
function variablesEditor(draft, apply) {
  const rows = h("div.var-rows");
  const row = (v) => {
    const input = (name, attrs) => {
      const el = h("input", { name, value: v[name] || "", "aria-label": `variable ${name}`, ...attrs });
      el.addEventListener("input", () => { v[name] = el.value; });
      return el;
    };
    const multi = h("input", { type: "checkbox", name: "multi", checked: !!v.multi });
    multi.addEventListener("change", () => { if (multi.checked) v.multi = true; else delete v.multi; });
    const el = h("div.var-row.toolbar", {},
      input("name", { placeholder: "name, used as $name", size: 12 }),
      input("query", { class: "query", placeholder: "label_values(metric{label=\"value\"}, label)", spellcheck: "false" }),
      h("label", {}, multi, " several"),
      h("button.remove", { type: "button", onclick: () => { draft.variables.splice(draft.variables.indexOf(v), 1); el.remove(); } }, "Remove"));
    return el;
  };
  const add = () => {
    const v = { name: "", query: "" };
    (draft.variables ||= []).push(v);
    rows.append(row(v));
  };
  rows.append(...(draft.variables || []).map(row));
  return h("details.var-editor", { open: !!draft.variables?.length },
    h("summary", {}, "Variables"),
    h("p.muted", {}, "A picker above the panels per variable; $name in a query stands for the picked value (several as a|b, for =~)."),
    rows,
    h("div.toolbar", {},
      h("button.add-variable", { type: "button", onclick: add }, "Add variable"),
      h("button.apply-variables", { type: "button", onclick: apply }, "Apply")));
}

/** The panel types (`type` in the JSON; lines when absent) and their names in the editor. */
const PANEL_TYPES = [["lines", "lines"], ["stacked", "stacked areas"], ["bars", "bars"], ["stat", "stat"],
  ["table", "table"], ["heatmap", "heatmap (le buckets)"]];

/** Panel heights (px of chart) offered in the editor. */
const HEIGHTS = [160, 220, 320, 440];

/**
 * One panel: its chart over the global time range, or the API's error for
 * its query, and a link to the explorer with its query. With `editor`
 * ({ remove, up, down }), also fields for title, query, unit, type,
 * thresholds, width and height that change the panel object in place; Run
 * redraws with them.
 */
function panelView(panel, index, params, variables, editor) {
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
  const explore = h("a.open-explorer", { title: "Open this query in the metrics explorer, over the same window" }, "Explore");
  const message = h("div.panel-msg");
  const el = h("section.panel", { dataset: { panel: index } }, h("header.panel-head", {}, heading, unitNote, staleNote, explore));
  const shape = () => el.classList.toggle("full", panel.width === "full");
  shape();
  const newChart = () => {
    chart?.destroy();
    chart = panelChart(panel);
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
    const query = field("query", "textarea", { class: "query", rows: 3, spellcheck: "false", placeholder: "PromQL, e.g. sum by (service_name) (rate(traces_span_metrics_calls_total[$__rate_interval]))" });
    // Suggestions first: Enter picks one while they show.
    const queryBox = attachSuggest(query);
    query.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); run(); }
    });
    const run = () => { newChart(); load(); };
    // Only what differs from the defaults is stored.
    const choice = (name, options, value, onchange) => {
      const select = h("select", { name, "aria-label": `panel ${name}` },
        options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)));
      select.addEventListener("change", () => onchange(select.value));
      return select;
    };
    const width = choice("width", [["half", "half width"], ["full", "full width"]], panel.width || "half", (v) => {
      if (v === "full") panel.width = v; else delete panel.width;
      shape();
    });
    // An imported height outside the list is offered too, so it shows as is.
    const heights = [...new Set([...HEIGHTS, panel.height || 220])].sort((a, b) => a - b);
    const height = choice("height", heights.map((px) => [String(px), `${px} px high`]), String(panel.height || 220), (v) => {
      if (+v === 220) delete panel.height; else panel.height = +v;
      run();
    });
    const type = choice("type", PANEL_TYPES, panel.type || "lines", (v) => {
      if (v === "lines") delete panel.type; else panel.type = v;
      run();
    });
    const thresholds = h("input", {
      name: "thresholds", "aria-label": "panel thresholds", value: (panel.thresholds || []).join(", "),
      placeholder: "stat thresholds: warning, bad", title: "A stat turns amber from the first value and red from the second",
    });
    thresholds.addEventListener("change", () => {
      const values = thresholds.value.split(",").map((t) => t.trim()).filter(Boolean).map(Number);
      if (values.length) panel.thresholds = values; else delete panel.thresholds;
      run();
    });
    el.append(h("div.panel-editor", {},
      field("title", "input", { placeholder: "Panel title" }),
      queryBox,
      h("div.toolbar", {},
        field("unit", "input", { placeholder: "unit: seconds, ratio, bytes, req/s…", list: "panel-units" }),
        h("datalist", { id: "panel-units" }, ["seconds", "ratio", "percent", "bytes", "req/s"].map((u) => h("option", { value: u }))),
        type, thresholds, width, height,
        h("button.run", { type: "button", onclick: run }, "Run"),
        h("button.move-up", { type: "button", onclick: editor.up, disabled: !editor.up, "aria-label": "move panel up", title: "Move up" }, "↑"),
        h("button.move-down", { type: "button", onclick: editor.down, disabled: !editor.down, "aria-label": "move panel down", title: "Move down" }, "↓"),
        h("button.remove", { type: "button", onclick: editor.remove }, "Remove"))));
  }
  const hint = h("p.query-hint", { role: "note", hidden: true });
  el.append(hint, message, body);

  let latest = 0;
  async function load() {
    const mine = ++latest;
    const span = timeRange(params);
    // The explorer gets the query with the variables' values, over this window.
    const expanded = expandVariables(panel.query, variables());
    explore.href = `#/metrics?${new URLSearchParams(Object.entries({ ...timeParams(params), query: expanded }).filter(([, v]) => v))}`;
    explore.hidden = !panel.query.trim();
    sampleInterval(expanded, span).then((sample) => {
      if (mine !== latest) return;
      hint.textContent = rateWindowHint(expanded, sample);
      hint.hidden = !hint.textContent;
    });
    if (!panel.query.trim()) {
      chart.el.hidden = true;
      message.replaceChildren(state("Enter a PromQL query and press Run."));
      return;
    }
    let result;
    try {
      result = await queryRange(expanded, span);
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
