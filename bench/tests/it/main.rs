//! The bench crate's integration tests, one binary: each runs the
//! `strand-bench` binary of this build against the strand binary of this
//! build (`cargo test --workspace` builds both; alone: `cargo build -p
//! strand` first).

mod clickhouse;
mod compare;
mod compare_traces;
mod curves;
mod idle;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The strand binary next to this test's directory: target/<profile>/deps/
/// it-<hash> -> target/<profile>/strand.
pub fn strand_binary() -> PathBuf {
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
    strand
}

/// A fresh results directory under the system temp dir for `name`.
pub fn results_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("strand-{name}-{}", std::process::id()))
}

/// What a successful `strand-bench` run printed.
pub struct BenchRun {
    /// Its JSON line (the last line of stdout).
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `strand-bench <args> --strand <this build's strand>` and fails the
/// test with both output streams unless it succeeds.
pub fn run_bench(args: &[&str]) -> BenchRun {
    let output = Command::new(env!("CARGO_BIN_EXE_strand-bench"))
        .args(args)
        .arg("--strand")
        .arg(strand_binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "strand-bench {} failed:\n{stdout}\n{stderr}",
        args.join(" ")
    );
    let json = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    BenchRun {
        json,
        stdout,
        stderr,
    }
}
