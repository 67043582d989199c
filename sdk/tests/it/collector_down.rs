//! With the collector down the service keeps answering, quickly, with
//! bounded export queues and counted drops; once a collector comes up on
//! the same address, new telemetry arrives. In a process of its own: it
//! installs the SDK (the log queue comes with `install`) and measures the
//! process's memory.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use strand_sdk::HttpServerLayer;
use strand_testkit::{DEADLINE, Strand, eventually, free_port, in_own_process};
use tower::ServiceExt;

use crate::{new_trace, sdk};

const REQUESTS: usize = 3000;
const QUEUE: usize = 64;

fn request(traceparent: Option<&str>) -> http::Request<axum::body::Body> {
    let mut request = http::Request::get("/orders");
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    request.body(axum::body::Body::empty()).unwrap()
}

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn service_survives_a_dead_collector_and_recovers() {
    in_own_process(|| async {
        let collector = free_port(); // nothing listens here yet
        let guard = sdk("order", &format!("http://{collector}"))
            .max_queue_size(QUEUE)
            .export_timeout(Duration::from_secs(1))
            .install()
            .unwrap();
        let app = Router::new()
            .route(
                "/orders",
                get(|| async {
                    tracing::info!("order accepted");
                    "ok"
                }),
            )
            .layer(HttpServerLayer::new(guard.telemetry()));

        let mut slowest = Duration::ZERO;
        let mut rss_after_warmup = None;
        let started = Instant::now();
        for i in 0..REQUESTS {
            let sent = Instant::now();
            let response = app.clone().oneshot(request(None)).await.unwrap();
            assert_eq!(response.status(), 200, "request {i}");
            slowest = slowest.max(sent.elapsed());
            let stats = guard.stats();
            assert!(
                stats.queued_spans <= QUEUE && stats.queued_logs <= QUEUE,
                "{stats:?}"
            );
            if i == REQUESTS / 5 {
                rss_after_warmup = rss_bytes();
            }
        }
        let elapsed = started.elapsed();
        // Generous bounds: a blocked request would take the export timeout (1 s)
        // or more; in practice each takes microseconds.
        assert!(
            slowest < Duration::from_millis(500),
            "slowest request {slowest:?}"
        );
        assert!(
            elapsed < Duration::from_secs(30),
            "{REQUESTS} requests took {elapsed:?}"
        );
        if let (Some(before), Some(after)) = (rss_after_warmup, rss_bytes()) {
            let growth = after.saturating_sub(before);
            assert!(growth < 64 << 20, "memory grew by {growth} bytes");
        }
        let dropped = eventually(DEADLINE, || async {
            let stats = guard.stats();
            (stats.dropped_spans > 0 && stats.dropped_logs > 0).then_some(stats)
        })
        .await;
        assert!(dropped.is_some(), "no drops counted: {:?}", guard.stats());

        // The collector comes up where the SDK was pointed all along.
        let dir = tempfile::tempdir().unwrap();
        let collector = collector.to_string();
        let strand = Strand::start(dir.path(), &["--otlp-grpc", &collector]).await;
        let (trace_id, traceparent) = new_trace();
        let path = format!("/api/traces/{trace_id}");
        let arrived = eventually(DEADLINE, || {
            let (app, traceparent, strand, path) =
                (app.clone(), traceparent.clone(), &strand, &path);
            async move {
                // Keep sending: the first exports after the restart may still
                // fail while the gRPC channel reconnects.
                let response = app.oneshot(request(Some(&traceparent))).await.ok()?;
                assert_eq!(response.status(), 200);
                let (status, body) = strand.get_json(path).await;
                (status == 200 && !body["data"][0]["spans"].as_array()?.is_empty()).then_some(())
            }
        })
        .await;
        assert!(
            arrived.is_some(),
            "no telemetry after the collector came back"
        );
    });
}
