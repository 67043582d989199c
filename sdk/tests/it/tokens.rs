//! The SDK sends to a Strand that needs tokens with nothing but the
//! standard `OTEL_EXPORTER_OTLP_HEADERS` variable, over gRPC and HTTP.
//! Setting the variable is process-wide, hence a process of its own.

use axum::Router;
use axum::routing::get;
use strand_sdk::{HttpServerLayer, Protocol};
use strand_testkit::{DEADLINE, Strand, eventually, in_own_process};
use tower::ServiceExt;

use crate::{new_trace, sdk};

const INGEST: &str = "sdk-ingest-token-93c1f0";
const READ: &str = "sdk-read-token-5e7a2b90";

#[test]
fn exports_with_the_token_of_otel_exporter_otlp_headers() {
    in_own_process(|| async {
        // SAFETY: this process runs only this test, before any thread reads
        // the environment.
        unsafe {
            std::env::set_var(
                "OTEL_EXPORTER_OTLP_HEADERS",
                format!("authorization=Bearer%20{INGEST}"),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let mut strand = Strand::start(
            dir.path(),
            &["--ingest-token", INGEST, "--read-token", READ],
        )
        .await;
        strand.set_read_token(READ);
        for (protocol, endpoint) in [
            (Protocol::Grpc, strand.grpc_endpoint()),
            (Protocol::HttpProtobuf, strand.otlp_http_url("")),
        ] {
            let guard = sdk("checkout", &endpoint)
                .protocol(protocol)
                .build()
                .unwrap();
            let app = Router::new()
                .route("/pay", get(|| async { "paid" }))
                .layer(HttpServerLayer::new(guard.telemetry()));
            let (trace_id, traceparent) = new_trace();
            let request = http::Request::get("/pay")
                .header("traceparent", traceparent)
                .body(axum::body::Body::empty())
                .unwrap();
            assert_eq!(app.oneshot(request).await.unwrap().status(), 200);
            let path = format!("/api/traces/{trace_id}");
            eventually(DEADLINE, || async {
                let (status, _) = strand.get_json(&path).await;
                (status == 200).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("{protocol:?}: trace {trace_id} did not arrive"));
        }
    });
}
