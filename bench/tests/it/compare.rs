//! `strand-bench compare --quick` end to end: the bench binary starts the
//! strand binary of this build, Prometheus and VictoriaMetrics, feeds them
//! both generators' data over remote write, runs the PromQL corpus and the
//! shop dashboard's queries, and must produce every figure with Strand's
//! answers equal to Prometheus's (the bench itself fails otherwise; this
//! test checks the JSON line and the CSV files too).
//!
//! Needs `prometheus` and `victoria-metrics` (Debian packages, installed by
//! `scripts/test`) and the strand binary next to this test's directory
//! (`cargo test --workspace` builds it; alone: `cargo build -p strand`
//! first). Fails, never skips, when one is missing.

#[test]
fn quick_compare_produces_every_figure_and_agrees() {
    let results = crate::results_dir("compare");
    let results_arg = results.to_str().unwrap();
    let crate::BenchRun { json, stdout, .. } = crate::run_bench(&[
        "compare",
        "--quick",
        "--clients",
        "2",
        "--results",
        results_arg,
    ]);
    assert_eq!(json["bench"], "compare");
    for data in ["realistic", "full"] {
        let figures = json[data].as_object().unwrap_or_else(|| panic!("{json}"));
        assert!(figures.len() > 10, "{data}: {figures:?}");
        assert_eq!(figures["strand_disagreements"], 0, "{data}");
        for (figure, systems) in figures {
            if figure == "strand_disagreements" {
                continue;
            }
            for system in ["strand", "prometheus", "victoria-metrics"] {
                assert!(
                    systems[system].is_number(),
                    "{data}: {figure} of {system} missing: {systems}"
                );
            }
        }
        // Every answer compared, Strand's all equal to Prometheus's.
        let answers = &figures["answers_equal"];
        assert!(answers["prometheus"].as_f64().unwrap() > 300.0, "{answers}");
        assert_eq!(answers["strand"], answers["prometheus"]);
        assert!(
            figures["answers_non_empty"]["prometheus"].as_f64().unwrap() > 50.0,
            "too few queries hit the generated data"
        );
        let csv =
            std::fs::read_to_string(results.join(format!("compare-metrics-{data}.csv"))).unwrap();
        assert!(csv.lines().count() > 10 && csv.contains("ingest_samples_per_s"));
        assert!(stdout.contains(&format!("## metrics, {data} data")));
    }
    std::fs::remove_dir_all(&results).unwrap();
}
