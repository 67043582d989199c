// Alerts: the firing and pending alerts first, then the rules per group
// with their state, health, last evaluation and errors, all from one
// /api/v1/rules (each alerting rule carries its active alerts, and the
// links need the rule's expression). A filter box (names and labels) and a
// state filter narrow both, kept in the URL. Each alert and rule links to
// where an SRE goes next: its expression in the metrics explorer, the log
// explorer on its `count_logs` query, the trace search of its service.

import { api, h, state, fmtTime, fmtNumber, fmtMicros, plural, rangeSeconds, onRefresh } from "./lib.js";

const STATES = ["firing", "pending", "inactive"];
/** Expressions over span-derived metrics: their traces are one click away. */
const SPAN_METRICS = /\btraces_(span_metrics|service_graph)_/;
/** A rule about failures: its trace link asks for failed traces only. */
const ABOUT_ERRORS = /error|fail/i;
/** How far before an alert went active its links look, at least. */
const LOOKBACK_MS = 15 * 60e3;
/** Prometheus's time for "never" (Go's zero time). */
const NEVER = "0001-01-01T00:00:00Z";
/** A PromQL string literal: double or single quotes with escapes, or backticks (raw). */
const STRING = String.raw`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`";
const COUNT_LOGS = new RegExp(String.raw`\bcount_logs\s*\(\s*(${STRING})(?:\s*,\s*(${STRING}))?`);

export async function render(root, { params, current }) {
  const form = h("form.toolbar.alerts-filter", { role: "search", "aria-label": "filter alerts and rules", onsubmit: (e) => e.preventDefault() },
    h("label", {}, "Filter ", h("input", { name: "filter", type: "search", value: params.get("filter") || "", size: 32,
      placeholder: "name or label, e.g. severity=page", autocomplete: "off", spellcheck: "false" })),
    h("label", {}, "State ", h("select", { name: "state" }, h("option", { value: "" }, "all states"),
      STATES.map((s) => h("option", { value: s, selected: s === params.get("state") }, s)))));
  const out = h("div.alerts-out", {}, state("Loading rules…"));
  root.append(h("h1", {}, "Alerts"), form, out);

  let groups = [];
  const draw = () => {
    if (!groups.length) {
      out.replaceChildren(state("No rules loaded. Start Strand with --rules FILE (Prometheus rule files; repeatable, globs work) " +
        "and reload them with POST /-/reload or SIGHUP. See the README, section \"Alerting\"."));
      return;
    }
    out.replaceChildren(...view(groups, form.filter.value.trim().toLowerCase(), form.state.value));
  };
  // The filters apply as one types; the URL keeps them for a reload or a link.
  const apply = () => {
    const here = new URLSearchParams(params);
    for (const [key, value] of [["filter", form.filter.value.trim()], ["state", form.state.value]]) {
      if (value) here.set(key, value); else here.delete(key);
    }
    history.replaceState(null, "", `#/alerts?${here}`);
    draw();
  };
  form.addEventListener("input", apply);
  form.addEventListener("change", apply);
  const load = async () => {
    try {
      const body = await api("/api/v1/rules");
      if (!current()) return;
      groups = body.data?.groups || [];
      draw();
    } catch (e) {
      if (current()) out.replaceChildren(state(`Cannot load the rules: ${e.message}`, "error"));
    }
  };
  await load();
  return onRefresh(load);
}

/** The alerts, then the rules per group, that pass the filters. */
function view(groups, text, wanted) {
  const matches = (name, labels) => !text ||
    [name, ...Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`)].some((s) => s.toLowerCase().includes(text));
  const alerts = groups.flatMap((group) => group.rules.flatMap((rule) => (rule.alerts || [])
    .filter((alert) => (!wanted || alert.state === wanted) && matches(rule.name, alert.labels))
    .map((alert) => ({ group, rule, alert }))));
  // Firing before pending, the newest first.
  const rank = ({ alert }) => [alert.state === "firing" ? 0 : 1, -Date.parse(alert.activeAt)];
  alerts.sort((a, b) => rank(a)[0] - rank(b)[0] || rank(a)[1] - rank(b)[1]);
  const firing = alerts.filter(({ alert }) => alert.state === "firing").length;
  const shownGroups = groups.map((group) => ({ group, rules: group.rules.filter((rule) =>
    (!wanted || rule.state === wanted) &&
    (matches(rule.name, rule.labels) || (rule.alerts || []).some((a) => matches(rule.name, a.labels)))) }))
    .filter(({ rules }) => rules.length);
  const ruleCount = shownGroups.reduce((n, { rules }) => n + rules.length, 0);
  return [
    h("section.alert-list", { "aria-label": "active alerts" },
      h("h2.section-title", {}, `${plural(firing, "firing alert")}, ${alerts.length - firing} pending`),
      alerts.length ? alerts.map(alertCard) : state(text || wanted ? "No active alert matches the filters." : "Nothing is firing or pending.")),
    h("section.rule-list", { "aria-label": "rules" },
      h("h2.section-title", {}, plural(ruleCount, "rule")),
      shownGroups.length ? shownGroups.map(groupSection) : state("No rule matches the filters.")),
  ];
}

function alertCard({ group, rule, alert }) {
  const { alertname = rule.name, ...labels } = alert.labels || {};
  const { summary, description, ...others } = alert.annotations || {};
  const since = Date.parse(alert.activeAt);
  return h("article.alert-card", { dataset: { state: alert.state }, "aria-label": `${alert.state} alert ${alertname}` },
    h("header.alert-head", {}, stateChip(alert.state), h("h3.alert-name", {}, alertname), labelChips(labels)),
    summary && h("p.summary", {}, summary),
    description && h("p.description", {}, description),
    annotationList(others),
    h("div.meta", {},
      h("span", {}, "value ", h("b", {}, fmtValue(alert.value))),
      h("span", {}, `since ${fmtTime(since).slice(0, 19)} (${fmtAge(Date.now() - since)} ago)`),
      alert.keepFiringSince && h("span.kept", {}, `kept firing since ${fmtTime(Date.parse(alert.keepFiringSince)).slice(0, 19)}`),
      h("span.muted", {}, `rule ${rule.name} in ${group.name}`),
      links(rule, alert)));
}

function groupSection({ group, rules }) {
  const evaluated = group.lastEvaluation === NEVER ? "not evaluated yet"
    : `last evaluated ${fmtTime(Date.parse(group.lastEvaluation)).slice(11, 19)} in ${fmtMicros(group.evaluationTime * 1e6)}`;
  return h("section.rule-group", { "aria-label": `rule group ${group.name}` },
    h("header.meta", {}, h("h2", {}, group.name), h("code.muted", {}, group.file),
      h("span.muted", {}, `every ${fmtAge(group.interval * 1000)}, ${evaluated}`)),
    h("ul.rules", {}, rules.map(ruleItem)));
}

function ruleItem(rule) {
  const alerting = rule.type === "alerting";
  return h("li.rule", { dataset: { name: rule.name } },
    h("div.meta", {},
      h("span.badge", {}, alerting ? "alerting" : "recording"),
      h("b.rule-name", {}, rule.name),
      alerting && stateChip(rule.state),
      h(`span.health.health-${rule.health}`, { title: "health of the last evaluation" }, rule.health),
      alerting && rule.duration > 0 && h("span", {}, `for ${fmtAge(rule.duration * 1000)}`),
      alerting && rule.keepFiringFor > 0 && h("span", {}, `keep_firing_for ${fmtAge(rule.keepFiringFor * 1000)}`),
      links(rule, null)),
    rule.lastError && h("p.rule-error", {}, rule.lastError),
    h("pre.rule-expr", {}, h("code", {}, rule.query)),
    labelChips(rule.labels),
    annotationList(rule.annotations || {}));
}

const stateChip = (s) => h(`span.state-chip.state-${s}`, {}, s);

function labelChips(labels) {
  const entries = Object.entries(labels || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return entries.length ? h("span.labels", { "aria-label": "labels" },
    entries.map(([k, v]) => h("span.label-chip", {}, `${k}=${v}`))) : null;
}

function annotationList(annotations) {
  const entries = Object.entries(annotations);
  return entries.length ? h("dl.annotations", {}, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])) : null;
}

/**
 * The next places to look for a rule, or one of its alerts: over a window
 * from before the alert went active to now (links without an alert keep
 * the header's window).
 */
function links(rule, alert) {
  const at = alert ? Date.parse(alert.activeAt) : NaN;
  const around = (lookbackMs) => (Number.isFinite(at) ? `${Math.floor(at - Math.max(lookbackMs, LOOKBACK_MS))}-${Date.now()}` : null);
  const to = (name, params) => `#/${name}?${new URLSearchParams(Object.entries(params).filter(([, v]) => v != null))}`;
  const out = [h("a.to-metrics", { href: to("metrics", { query: rule.query, window: around(0) }), title: "Open the expression in the metrics explorer" }, "Metrics")];
  const logs = logQuery(rule, alert);
  if (logs) {
    out.push(h("a.to-logs", { href: to("logs", { q: logs.query, window: around(rangeSeconds(logs.window) * 1000) }),
      title: "Open the logs this rule counts" }, "Logs"));
  }
  const labels = alert?.labels || rule.labels || {};
  const service = labels.service_name || labels.service;
  if (service || SPAN_METRICS.test(rule.query)) {
    out.push(h("a.to-traces", { href: to("traces", { service: service || "*",
      tags: ABOUT_ERRORS.test(`${rule.name} ${rule.query}`) ? "error=true" : null, window: around(0) }),
    title: `Open the traces of ${service || "every service"}` }, "Traces"));
  }
  return h("nav.alert-links", { "aria-label": `open ${rule.name} in other views` }, out);
}

/**
 * The log query and window of the first `count_logs("<query>", "<window>", …)`
 * in a PromQL expression, or null when there is none with a literal query.
 */
export function countLogsQuery(expr) {
  const m = COUNT_LOGS.exec(expr || "");
  return m ? { query: unquote(m[1]), window: m[2] ? unquote(m[2]) : null } : null;
}

/**
 * A rule's log query for its log link: its `count_logs` query, narrowed to
 * the alert's `service` label when it has one. Null for rules without one.
 */
export function logQuery(rule, alert) {
  const found = countLogsQuery(rule.query);
  const service = alert?.labels?.service;
  if (!found || !service) return found;
  return { ...found, query: `(${found.query}) AND service:"${service.replace(/[\\"]/g, "\\$&")}"` };
}

/** A PromQL string literal's text: raw between backticks, escapes read otherwise. */
function unquote(literal) {
  const body = literal.slice(1, -1);
  if (literal[0] === "`") return body;
  return body.replace(/\\(.)/g, (_, c) => ({ n: "\n", t: "\t", r: "\r" })[c] ?? c);
}

/** An alert's value as Prometheus writes it ("2.5e-03", "+Inf", "NaN") made readable. */
const fmtValue = (text) => (Number.isNaN(Number(text)) ? text : fmtNumber(Number(text)));

/** A duration as its two largest units: 45s, 3m 5s, 2h 5m, 3d 4h. */
function fmtAge(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  const units = [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]];
  const i = units.findIndex(([size]) => seconds >= size);
  if (i < 0) return "0s";
  const [size, unit] = units[i];
  const next = units[i + 1];
  const rest = next ? Math.floor((seconds % size) / next[0]) : 0;
  return `${Math.floor(seconds / size)}${unit}${rest ? ` ${rest}${next[1]}` : ""}`;
}
