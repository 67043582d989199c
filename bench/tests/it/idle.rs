//! `strand-bench idle --quick` end to end: the bench binary loads the strand
//! binary of this build with spans, logs and series, then measures it with
//! no traffic, after the load and after a restart; every figure must be
//! there and plausible.
//!
//! Needs the strand binary next to this test's directory (`cargo test
//! --workspace` builds it; alone: `cargo build -p strand` first). Fails,
//! never skips, when it is missing.

#[test]
fn quick_idle_measures_rss_and_cpu_after_load_and_after_restart() {
    let crate::BenchRun { json, stderr, .. } = crate::run_bench(&["idle", "--quick"]);
    assert_eq!(json["bench"], "idle", "{json}");
    assert_eq!(json["spans"], 20_000, "{json}");
    assert_eq!(json["log_lines"], 20_000, "{json}");
    assert!(json["disk_bytes"].as_u64().unwrap() > 0, "{json}");
    for phase in ["after_load", "restarted"] {
        let rss = json[phase]["rss_mb"].as_f64().unwrap_or(0.0);
        let anon = json[phase]["anon_mb"].as_f64().unwrap_or(0.0);
        assert!(anon > 1.0 && anon < rss, "{phase}: {json}");
        let cpu = json[phase]["cpu_percent_of_one_core"]
            .as_f64()
            .unwrap_or(-1.0);
        assert!((0.0..100.0).contains(&cpu), "{phase}: {json}");
    }
    assert!(stderr.contains("RSS MB"), "the table is missing:\n{stderr}");
}
