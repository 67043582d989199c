//! `strand-bench curves --signal all --quick` end to end: the bench binary
//! loads the strand binary of this build step by step (traces and logs) and
//! once per series count (metrics), queries it at every step, and must
//! write every figure of every row into the CSV files, the JSON line and
//! the SVG charts.

use serde_json::Value;

/// Per signal: the sizes of `--quick` and the CSV header.
const EXPECTED: [(&str, [u64; 3], &str); 3] = [
    (
        "traces",
        [5_000, 10_000, 20_000],
        "spans,load_s,step_s,ingest_spans_per_s,rss_mb,rss_peak_mb,anon_mb,disk_mb,\
         disk_bytes_per_span,trace_by_id_p50_ms,trace_by_id_p99_ms,search_p50_ms,search_p99_ms",
    ),
    (
        "metrics",
        [1_000, 2_000, 4_000],
        "series,load_s,step_s,ingest_samples_per_s,rss_mb,rss_peak_mb,rss_bytes_per_series,\
         disk_mb,disk_bytes_per_sample,range_query_p50_ms,range_query_p99_ms",
    ),
    (
        "logs",
        [5_000, 10_000, 20_000],
        "lines,load_s,step_s,ingest_lines_per_s,rss_mb,rss_peak_mb,anon_mb,disk_mb,\
         disk_bytes_per_line,term_p50_ms,term_p99_ms,phrase_p50_ms,phrase_p99_ms,\
         histogram_p50_ms,histogram_p99_ms",
    ),
];

/// Figures that are not drawn (step durations, for planning runs).
const NOT_CHARTED: [&str; 2] = ["load_s", "step_s"];

/// Figures that may be zero or negative: the RSS growth per series of a
/// tiny run is within the allocator's noise.
const ANY_SIGN: [&str; 1] = ["rss_bytes_per_series"];

#[test]
fn quick_curves_produce_every_figure_csv_and_chart() {
    let results = crate::results_dir("curves");
    let results_arg = results.to_str().unwrap();
    let crate::BenchRun { json, stdout, .. } = crate::run_bench(&[
        "curves",
        "--signal",
        "all",
        "--quick",
        "--clients",
        "2",
        "--results",
        results_arg,
    ]);
    assert_eq!(json["bench"], "curves");

    for (signal, sizes, header) in EXPECTED {
        let figures: Vec<&str> = header.split(',').skip(1).collect();

        // The JSON line: a row per size with every figure, no problems.
        assert_eq!(
            json[signal]["problems"],
            Value::Array(Vec::new()),
            "{signal}"
        );
        let rows = json[signal]["rows"].as_object().unwrap();
        let mut keys: Vec<u64> = rows.keys().map(|k| k.parse().unwrap()).collect();
        keys.sort();
        assert_eq!(keys, sizes, "{signal}");
        for (size, row) in rows {
            for figure in &figures {
                let value = row[*figure]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{signal} {size}: no {figure} in {row}"));
                check(signal, size, figure, value);
            }
        }

        // The CSV: the header, then one full row per size, ascending.
        let csv = std::fs::read_to_string(results.join(format!("curves-{signal}.csv"))).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], header, "{signal}");
        assert_eq!(lines.len(), 1 + sizes.len(), "{signal}: {csv}");
        for (line, size) in lines[1..].iter().zip(sizes) {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), 1 + figures.len(), "{signal}: {line}");
            assert_eq!(cells[0].parse::<u64>().unwrap(), size, "{signal}: {line}");
            for (cell, figure) in cells[1..].iter().zip(&figures) {
                let value: f64 = cell
                    .parse()
                    .unwrap_or_else(|_| panic!("{signal} {size}: {figure} is {cell:?}"));
                check(signal, &size.to_string(), figure, value);
            }
        }

        // The SVG: one root, a panel per charted figure, a point per size.
        let svg = std::fs::read_to_string(results.join(format!("curves-{signal}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{signal}"
        );
        assert!(svg.trim_end().ends_with("</svg>"), "{signal}");
        assert_eq!(svg.matches("<svg").count(), 1, "{signal}");
        assert_eq!(svg.matches("</svg>").count(), 1, "{signal}");
        for (open, close) in [
            ("<g ", "</g>"),
            ("<circle ", "</circle>"),
            ("<text ", "</text>"),
        ] {
            assert_eq!(
                svg.matches(open).count(),
                svg.matches(close).count(),
                "{signal}: unbalanced {open}"
            );
        }
        let panels: Vec<&str> = svg.split("<g class=\"panel\"").skip(1).collect();
        let charted = figures.iter().filter(|f| !NOT_CHARTED.contains(f)).count();
        assert_eq!(panels.len(), charted, "{signal}");
        for panel in panels {
            assert_eq!(
                panel.matches("<circle class=\"point\"").count(),
                sizes.len(),
                "{signal}: {panel}"
            );
        }

        // The table on stdout.
        assert!(stdout.contains(&format!("## curves: {signal}")), "{stdout}");
    }
    std::fs::remove_dir_all(&results).unwrap();
}

/// Every figure is a finite number, above zero unless in [`ANY_SIGN`].
fn check(signal: &str, size: &str, figure: &str, value: f64) {
    assert!(value.is_finite(), "{signal} {size}: {figure} = {value}");
    if !ANY_SIGN.contains(&figure) {
        assert!(value > 0.0, "{signal} {size}: {figure} = {value}");
    }
}
