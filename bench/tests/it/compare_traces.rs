//! `strand-bench compare-traces --quick` end to end: the bench binary starts
//! the strand binary of this build and Jaeger v2 (built from the Go module
//! proxy by bench/jaeger/build.sh, which `scripts/test` runs first, so the
//! build is cached here), sends both the same OTLP load, restarts them and
//! queries both through the Jaeger API. The bench fails unless every figure
//! was produced and every lookup and search answered in full; this test
//! checks the JSON line and the CSV too.
//!
//! Needs Go (or a cached Jaeger build); fails, never skips, without it.

use serde_json::Value;

#[test]
fn quick_compare_traces_produces_every_figure_on_both_sides() {
    let results = crate::results_dir("compare-traces");
    let results_arg = results.to_str().unwrap();
    let json = crate::run_bench(&[
        "compare-traces",
        "--quick",
        "--clients",
        "4",
        "--results",
        results_arg,
    ])
    .json;
    assert_eq!(json["bench"], "compare-traces");
    for side in ["strand", "jaeger"] {
        let figures = &json[side];
        // Whole export requests are sent, so a few spans past the 3,000.
        assert!(
            figures["spans_acked"].as_u64().is_some_and(|n| n >= 3_000),
            "{side}: {figures}"
        );
        for errors in ["rejected", "errors", "lookup_errors", "search_errors"] {
            assert_eq!(figures[errors], 0, "{side}: {errors} in {figures}");
        }
        for latency in ["ack_latency_ms", "trace_by_id_ms", "search_ms"] {
            assert!(
                figures[latency]["p99"].as_f64().is_some_and(|ms| ms > 0.0),
                "{side}: {latency} missing in {figures}"
            );
        }
        assert!(figures["bytes_per_span"].as_f64().is_some_and(|b| b > 0.0));
    }
    let ratios = json["ratio"].as_object().unwrap();
    assert!(ratios.len() >= 9, "{ratios:?}");
    assert!(ratios.values().all(Value::is_number), "{ratios:?}");
    let csv = std::fs::read_to_string(results.join("traces-vs-jaeger.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + ratios.len(), "{csv}");
    std::fs::remove_dir_all(&results).unwrap();
}
