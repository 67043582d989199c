//! External programs the tests run (Prometheus, chromedriver).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// The path of `name` on `PATH`. A test that needs a program fails without
/// it, locally as under CI: a skipped test looks like a passing one.
/// `install_hint` says how to get it, e.g. "sudo apt-get install prometheus".
pub fn require_tool(name: &str, install_hint: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| {
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| {
            panic!(
                "this test needs `{name}`, which is not on PATH: {install_hint} \
                 (scripts/test installs everything the tests need)"
            )
        })
}
