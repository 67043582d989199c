//! The bench crate's integration tests, one binary: each runs the
//! `strand-bench` binary of this build against the strand binary of this
//! build (`cargo test --workspace` builds both; alone: `cargo build -p
//! strand` first).

mod compare;
mod compare_traces;
mod curves;
mod idle;

use std::path::PathBuf;

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
