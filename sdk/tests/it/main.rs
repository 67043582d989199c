//! The SDK against a real Strand (in-process), in one test binary with a
//! module per signal.
//!
//! `Builder::install` sets process-wide state (the global `tracing`
//! subscriber can be set once per process), so the tests that need it — the
//! logs bridge, the log export queue — and the test that sets
//! `OTEL_EXPORTER_OTLP_HEADERS` run `in_own_process`; the others
//! build their providers with `Builder::build`.

mod collector_down;
mod logs;
mod metrics;
mod tls;
mod tokens;
mod traces;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A fresh trace id and a `traceparent` header that starts it (sampled), so
/// a test knows which trace to look up.
fn new_trace() -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_id = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 64));
    let traceparent = format!("00-{trace_id}-{:016x}-01", (nanos as u64) | 1);
    (trace_id, traceparent)
}

/// The SDK settings every test uses: export to `endpoint` quickly, and keep
/// the daemon's own logs (it runs in this process) out of the exported ones.
fn sdk(service: &str, endpoint: &str) -> strand_sdk::Builder {
    strand_sdk::Builder::new(service)
        .endpoint(endpoint)
        .batch_delay(Duration::from_millis(100))
        .metric_interval(Duration::from_millis(500))
        .log_filter("info,strand=off")
}
