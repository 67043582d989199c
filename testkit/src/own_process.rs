//! One test in a process of its own.

use std::future::Future;
use std::process::Command;

/// Set in the child process to the name of the test it runs.
const CHILD: &str = "STRAND_TESTKIT_OWN_PROCESS";

/// Runs the calling test's `body` in a fresh process: this test binary again,
/// filtered to this one test (libtest names each test's thread after the
/// test). For tests that set process-wide state — a global `tracing`
/// subscriber can be installed once per process — or measure the process,
/// such as its memory; all other tests share one process. Call it from a
/// plain `#[test]`: the body gets a multi-threaded Tokio runtime.
pub fn in_own_process<F>(body: impl FnOnce() -> F)
where
    F: Future<Output = ()>,
{
    let test = std::thread::current()
        .name()
        .expect("libtest runs each test on a thread named after it")
        .to_string();
    if std::env::var(CHILD).is_ok_and(|child| child == test) {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime")
            .block_on(body());
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &test)
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // "1 passed" also proves the filter found the test: zero tests pass too.
    assert!(
        output.status.success() && stdout.contains(" 1 passed;"),
        "{test} in its own process: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    eprint!("{stderr}");
}
