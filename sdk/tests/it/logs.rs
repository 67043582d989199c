//! `tracing` events inside a handler become OTLP logs carrying the request's
//! trace id, found through Strand's logs API. The logs bridge comes with
//! `install`, hence a process of its own.

use axum::Router;
use axum::routing::get;
use strand_sdk::HttpServerLayer;
use strand_testkit::{DEADLINE, Strand, eventually, in_own_process};
use tower::ServiceExt;

use crate::{new_trace, sdk};

#[test]
fn handler_logs_carry_the_trace_id() {
    in_own_process(|| async {
        let dir = tempfile::tempdir().unwrap();
        let strand = Strand::start(dir.path(), &[]).await;
        let guard = sdk("order", &strand.grpc_endpoint()).install().unwrap();
        let app = Router::new()
            .route(
                "/orders",
                get(|| async {
                    tracing::info!(order_id = 42, "order accepted");
                    "ok"
                }),
            )
            .layer(HttpServerLayer::new(guard.telemetry()));

        let (trace_id, traceparent) = new_trace();
        let request = http::Request::get("/orders")
            .header("traceparent", traceparent)
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.oneshot(request).await.unwrap().status(), 200);

        let path = format!("/api/traces/{trace_id}/logs");
        let log = eventually(DEADLINE, || async {
            let (_, body) = strand.get_json(&path).await;
            body["logs"]
                .as_array()?
                .iter()
                .find(|log| log["body"] == "order accepted")
                .cloned()
        })
        .await
        .unwrap_or_else(|| panic!("no log of trace {trace_id} within {DEADLINE:?}"));
        assert_eq!(log["traceId"], trace_id.as_str());
        assert_eq!(log["service"], "order");
        assert_eq!(log["severity"], "info");
        assert_eq!(log["spanId"].as_str().map(str::len), Some(16), "{log}");

        // The same record through the search API.
        let (status, found) = strand
            .get_json(&format!("/api/logs?q=trace_id:{trace_id}"))
            .await;
        assert_eq!(status, 200, "{found}");
        let bodies: Vec<_> = found["logs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|log| log["body"].clone())
            .collect();
        assert!(bodies.contains(&"order accepted".into()), "{found}");
    });
}
