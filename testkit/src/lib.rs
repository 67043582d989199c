//! The test harness Strand's crates share, as dev-dependency of `strand`,
//! `strand-sdk` and `shop` (and a dependency of `strand-bench`, for the
//! corpus): each crate has one integration-test binary
//! (`tests/it/main.rs`) built on it.
//!
//! # Layout
//!
//! - [`Strand`]: a running daemon, in this process ([`Strand::start`]) or as
//!   the real binary ([`Strand::spawn`], for tests that `kill -9` it or read
//!   its log). Either way on loopback port 0: no test races another for a port.
//! - [`Alertmanager`]: a real Alertmanager with a webhook that records what
//!   it notifies, for the alerting tests.
//! - [`ClickHouse`], [`ClickHouseCluster`]: a real ClickHouse server, or a
//!   cluster of one-replica shards that a `Distributed` table spans, each
//!   server stopped and restarted at will, for the ClickHouse storage tests.
//! - [`OtelCollector`]: a real OpenTelemetry Collector (built from
//!   `testkit/otelcol` with Go, once per source) forwarding to Strand with
//!   its own exporters.
//! - [`pki`]: a throwaway CA and the certificates it issues, for TLS tests.
//! - [`browser`]: headless Chromium over WebDriver, for the UI tests.
//! - [`promql_corpus`]: the PromQL differential corpus, for the test against
//!   Prometheus and for `strand-bench compare`.
//! - [`require_tool`]: an external program a test needs. A missing one fails
//!   the test with an install hint; no test skips quietly.
//! - [`in_own_process`]: runs one test in a fresh process, for tests that set
//!   process-wide state.
//! - [`eventually`], [`DEADLINE`], [`urlencode`], [`free_port`]: small helpers.

mod alertmanager;
pub mod browser;
mod clickhouse;
mod otelcol;
mod own_process;
pub mod pki;
pub mod promql_corpus;
mod strand;
mod tools;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

pub use alertmanager::Alertmanager;
pub use clickhouse::{ClickHouse, ClickHouseCluster};
pub use otelcol::OtelCollector;
pub use own_process::in_own_process;
pub use strand::{ClientTls, Strand};
pub use tools::require_tool;

/// Asks `child` to stop (SIGTERM, as a service manager would) and waits up
/// to `grace` for it; a child still running then is killed. Returns the
/// status of a child that stopped by itself.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// How long telemetry may take to become queryable before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Percent-encodes `text` for a query string (unreserved characters kept).
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A loopback address nothing listens on right now. Another process may take
/// it before the caller does, so this is only for what cannot be handed a
/// listener or report the port it bound: a child program that takes its
/// address as a flag, or an address that must refuse connections for a while.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}
