//! `strand-bench idle --quick` end to end: the bench binary loads the strand
//! binary of this build with spans, logs and series, then measures it with
//! no traffic, after the load and after a restart; every figure must be
//! there and plausible.
//!
//! Needs the strand binary next to this test's directory (`cargo test
//! --workspace` builds it; alone: `cargo build -p strand` first). Fails,
//! never skips, when it is missing.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn quick_idle_measures_rss_and_cpu_after_load_and_after_restart() {
    // target/<profile>/deps/it-<hash> -> target/<profile>/strand
    let exe = std::env::current_exe().unwrap();
    let strand: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("strand");
    assert!(
        strand.is_file(),
        "{} is missing: build it with `cargo build -p strand` (cargo test --workspace does)",
        strand.display()
    );
    let output = Command::new(env!("CARGO_BIN_EXE_strand-bench"))
        .args(["idle", "--quick"])
        .arg("--strand")
        .arg(&strand)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "idle --quick failed:\n{stdout}\n{stderr}"
    );
    let json: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(json["bench"], "idle", "{json}");
    assert_eq!(json["spans"], 20_000, "{json}");
    assert_eq!(json["log_lines"], 20_000, "{json}");
    assert!(json["disk_bytes"].as_u64().unwrap() > 0, "{json}");
    for phase in ["after_load", "restarted"] {
        let rss = json[phase]["rss_mb"].as_f64().unwrap_or(0.0);
        assert!(rss > 1.0, "{phase}: {json}");
        let cpu = json[phase]["cpu_percent_of_one_core"]
            .as_f64()
            .unwrap_or(-1.0);
        assert!((0.0..100.0).contains(&cpu), "{phase}: {json}");
    }
    assert!(stderr.contains("RSS MB"), "the table is missing:\n{stderr}");
}
