//! The request-duration histogram of the server layer, queried with PromQL.

use axum::Router;
use axum::routing::get;
use strand_sdk::HttpServerLayer;
use strand_testkit::{DEADLINE, Strand, eventually};
use tower::ServiceExt;

use crate::sdk;

const REQUESTS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_durations_are_queryable_with_promql() {
    let dir = tempfile::tempdir().unwrap();
    let strand = Strand::start(dir.path(), &[]).await;
    let guard = sdk("order", &strand.grpc_endpoint()).build().unwrap();
    let app = Router::new()
        .route("/orders", get(|| async { "ok" }))
        .layer(HttpServerLayer::new(guard.telemetry()));
    for _ in 0..REQUESTS {
        let request = http::Request::get("/orders")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(request).await.unwrap().status(), 200);
    }

    let path = "/api/v1/query?query=sum(http_server_request_duration_seconds_count)";
    let count = eventually(DEADLINE, || async {
        let (status, body) = strand.get_json(path).await;
        let value = body["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()?;
        (status == 200 && value >= REQUESTS as f64).then_some(value)
    })
    .await;
    assert_eq!(
        count,
        Some(REQUESTS as f64),
        "sum(http_server_request_duration_seconds_count) did not reach {REQUESTS}"
    );
}
