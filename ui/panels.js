// The dashboards' panel types beside lines (whose chart, `lineChart`, also
// draws stacked areas and bars): stat, table and heatmap. Each has the
// chart's interface, `{ el, update(series, startMs, endMs), destroy() }`,
// with series from `toSeries`, so a panel loads the same way whatever it
// draws.

import { h, fmtTime } from "./lib.js";
import { lineChart, fmtUnit, timeAxis, svg, sharedLabels, fillSeriesTable } from "./metrics.js";

/** Stats shown at most; a stat panel is meant for a few numbers. */
const MAX_STATS = 8;

/** The chart a panel's type asks for (see `PanelType` in store::dashboards). */
export function panelChart(panel) {
  const { unit = "", height = 220, thresholds = [] } = panel;
  switch (panel.type) {
    case "stat": return statView(unit, thresholds);
    case "table": return tableView(unit);
    case "heatmap": return heatmapView(height);
    default: return lineChart({ unit, zero: true, height, kind: panel.type || "lines" });
  }
}

/** The newest finite value of a series. */
const lastValue = (s) => s.points.findLast(([, v]) => Number.isFinite(v))?.[1];

/**
 * The last value of each series as one big number, `data-level` ok, warn
 * or bad by the panel's thresholds ([warning, bad]; none: no level).
 */
function statView(unit, thresholds) {
  const el = h("div.chart.stat-grid", { dataset: { series: 0 } });
  return {
    el,
    update(series) {
      el.dataset.series = series.length;
      const { names } = sharedLabels(series);
      el.replaceChildren(...series.slice(0, MAX_STATS).map((s, i) => {
        const v = lastValue(s);
        const level = !thresholds.length || v == null ? "none"
          : v >= thresholds[1] ? "bad" : v >= thresholds[0] ? "warn" : "ok";
        return h("div.stat", { dataset: { level }, title: s.name },
          h("div.stat-value", {}, fmtUnit(v, unit)),
          series.length > 1 ? h("div.stat-name.muted", {}, names[i]) : null);
      }));
    },
    destroy() {},
  };
}

/** The last value of each series, in rows sorted by name. */
function tableView(unit) {
  const table = h("table.series-table");
  const el = h("div.chart.panel-table", { dataset: { series: 0 } }, table);
  return {
    el,
    update(series) {
      el.dataset.series = series.length;
      fillSeriesTable(table, [...series].sort((a, b) => a.name.localeCompare(b.name)), unit);
    },
    destroy() {},
  };
}

/** An `le` bound as a number, `+Inf` last. */
const bound = (le) => (le === "+Inf" ? Infinity : Number(le));

/**
 * Histogram buckets over time: series with an `le` label (cumulative, as
 * Prometheus stores them, summed when several share a bound) become a row
 * per bucket, a cell per step shaded by the count in that bucket alone.
 */
function heatmapView(height) {
  const el = h("div.chart.heatmap", { dataset: { series: 0 } });
  let last = null;
  const draw = () => {
    if (!last) return;
    const { series, t0, t1 } = last;
    const byLe = new Map();
    for (const s of series) {
      const le = s.labels?.le;
      if (le == null || Number.isNaN(bound(le))) continue;
      const row = byLe.get(le) || new Map();
      for (const [t, v] of s.points) if (Number.isFinite(v)) row.set(t, (row.get(t) || 0) + v);
      byLe.set(le, row);
    }
    const les = [...byLe.keys()].sort((a, b) => bound(a) - bound(b));
    el.dataset.series = les.length;
    if (!les.length) {
      el.replaceChildren(h("p.state", {}, "A heatmap needs histogram buckets: series with an le label, e.g. sum by (le) (rate(x_bucket[$__rate_interval]))."));
      return;
    }
    const width = Math.max(el.clientWidth, 300);
    const pad = { l: 64, r: 12, t: 6, b: 24 };
    const rowH = (height - pad.t - pad.b) / les.length;
    const times = [...new Set(les.flatMap((le) => [...byLe.get(le).keys()]))].sort((a, b) => a - b);
    const step = times.length > 1 ? times[1] - times[0] : 1;
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
    // A little wider than a step, so neighbouring cells leave no hairline.
    const cellW = Math.max(1, x(t0 + step) - x(t0) + 0.6);
    // The count in each bucket alone: its cumulative count minus the one below.
    const counts = les.map((le, i) => times.map((t) => Math.max(0, (byLe.get(le).get(t) || 0) - (i ? byLe.get(les[i - 1]).get(t) || 0 : 0))));
    const max = Math.max(...counts.flat(), 0) || 1;
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "heatmap of histogram buckets" });
    les.forEach((le, i) => {
      const top = height - pad.b - (i + 1) * rowH;
      const label = svg("text", { class: "axis y bucket", x: pad.l - 6, y: top + rowH / 2 + 4, "text-anchor": "end" });
      label.textContent = le;
      root.append(label);
      times.forEach((t, j) => {
        const count = counts[i][j];
        if (!count) return;
        const cell = svg("rect", { class: "cell", x: (x(t) - cellW / 2).toFixed(1), y: top.toFixed(1), width: cellW.toFixed(1), height: Math.max(1, rowH - 1).toFixed(1), "fill-opacity": (0.15 + 0.85 * (count / max)).toFixed(2) });
        const title = svg("title", {});
        title.textContent = `${fmtTime(t * 1000)}  le ${le}: ${fmtUnit(count, "")}`;
        cell.append(title);
        root.append(cell);
      });
    });
    timeAxis(root, x, t0, t1, { y: height - 6, left: pad.l, right: width - pad.r });
    el.replaceChildren(root);
  };
  const resize = new ResizeObserver(draw);
  resize.observe(el);
  return {
    el,
    update(series, startMs, endMs) {
      last = { series, t0: startMs / 1000, t1: endMs / 1000 };
      draw();
    },
    destroy() { resize.disconnect(); },
  };
}
