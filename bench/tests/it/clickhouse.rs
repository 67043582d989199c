//! `strand-bench traces`, `logs` and `metrics --storage clickhouse
//! --nodes 2` in the suite: two Strand nodes over a ClickHouse server the
//! benchmark starts take a short load, every lookup afterwards finds its
//! whole trace, every log search finds lines, the range query answers as
//! Prometheus does, and every figure the closing notes quote is produced.

use crate::run_bench;

#[test]
fn traces_over_clickhouse_from_two_nodes_produce_every_figure() {
    let run = run_bench(&[
        "traces",
        "--storage",
        "clickhouse",
        "--nodes",
        "2",
        "--spans",
        "20000",
        "--lookups",
        "200",
    ]);
    let json = &run.json;
    assert_eq!(json["storage"], "clickhouse", "{json}");
    assert_eq!(json["nodes"], 2, "{json}");
    assert!(json["spans_acked"].as_u64().unwrap() >= 20_000, "{json}");
    assert_eq!(json["lookup_errors"], 0, "{}", run.stderr);
    for figure in [
        &json["spans_per_s"],
        &json["trace_by_id_ms"]["p99"],
        &json["bytes_per_span"],
        &json["clickhouse_rss_mb"],
        &json["rss_mb"]["peak"],
    ] {
        assert!(figure.as_f64().is_some_and(|f| f > 0.0), "{json}");
    }
    assert!(run.stderr.contains("ClickHouse holds"), "{}", run.stderr);
}

#[test]
fn logs_over_clickhouse_from_two_nodes_produce_every_figure() {
    let run = run_bench(&[
        "logs",
        "--storage",
        "clickhouse",
        "--nodes",
        "2",
        "--lines",
        "20000",
        "--queries",
        "20",
        "--no-baseline",
    ]);
    let json = &run.json;
    assert_eq!(json["storage"], "clickhouse", "{json}");
    assert_eq!(json["nodes"], 2, "{json}");
    assert!(json["lines_acked"].as_u64().unwrap() >= 20_000, "{json}");
    assert_eq!(json["errors"], 0, "{}", run.stderr);
    assert!(
        json["histogram_total"].as_u64().unwrap() >= 20_000,
        "{json}"
    );
    for figure in [
        &json["lines_per_s"],
        &json["term_query_ms"]["p99"],
        &json["histogram_ms"]["p99"],
        &json["searchable_ms"]["p50"],
        &json["disk_to_raw_ratio"],
        &json["clickhouse_rss_mb"],
    ] {
        assert!(figure.as_f64().is_some_and(|f| f > 0.0), "{json}");
    }
    assert!(run.stderr.contains("ClickHouse holds"), "{}", run.stderr);
}

#[test]
fn metrics_over_clickhouse_from_two_nodes_answer_as_prometheus_does() {
    let run = run_bench(&[
        "metrics",
        "--storage",
        "clickhouse",
        "--nodes",
        "2",
        "--series",
        "1000",
        "--rounds",
        "300",
        "--queries",
        "10",
    ]);
    let json = &run.json;
    assert_eq!(json["storage"], "clickhouse", "{json}");
    assert_eq!(json["nodes"], 2, "{json}");
    assert_eq!(json["samples_acked"], json["samples_sent"], "{json}");
    assert_eq!(json["errors"], 0, "{}", run.stderr);
    assert_eq!(json["query_errors"], 0, "{}", run.stderr);
    // Answered from ClickHouse by a node that never saw the samples.
    assert_eq!(json["query_results_match"], true, "{json}");
    for figure in [
        &json["samples_per_s"],
        &json["range_query_ms"]["p99"],
        &json["selector_query_ms"]["p99"],
        &json["bytes_per_sample"],
        &json["ingest_ratio"],
    ] {
        assert!(figure.as_f64().is_some_and(|f| f > 0.0), "{json}");
    }
    assert!(run.stderr.contains("ClickHouse holds"), "{}", run.stderr);
}
