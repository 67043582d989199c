//! Two instrumented services call each other over HTTP and gRPC; one trace
//! with both services' spans, correctly parented, arrives in Strand.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::Value;
use strand_sdk::{GrpcClientLayer, GrpcServerLayer, GrpcService, HttpClient, HttpServerLayer};
use strand_testkit::{DEADLINE, Strand, eventually};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::{new_trace, sdk};

/// The spans of a Jaeger `/api/traces/{id}` answer as
/// `(service, operation, spanID, parent spanID)`.
fn spans(body: &Value) -> Vec<(String, String, String, Option<String>)> {
    let trace = &body["data"][0];
    let Some(spans) = trace["spans"].as_array() else {
        return Vec::new();
    };
    spans
        .iter()
        .map(|span| {
            let process = span["processID"].as_str().unwrap_or_default();
            let parent = span["references"].as_array().and_then(|refs| {
                refs.iter()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_string)
            });
            (
                trace["processes"][process]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                span["operationName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                span["spanID"].as_str().unwrap_or_default().to_string(),
                parent,
            )
        })
        .collect()
}

/// The backend: one HTTP route and the gRPC health service.
async fn start_backend(telemetry: &strand_sdk::Telemetry) -> (SocketAddr, SocketAddr) {
    let app = Router::new()
        .route(
            "/stock/{sku}",
            get(|| async {
                tracing::info!("stock looked up");
                "7"
            }),
        )
        .layer(HttpServerLayer::new(telemetry));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(http, app).await });

    let (_reporter, health) = tonic_health::server::health_reporter();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(GrpcServerLayer::new(telemetry))
        .add_service(health);
    tokio::spawn(async move {
        server
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
            .await
    });
    (http_addr, grpc_addr)
}

#[derive(Clone)]
struct Frontend {
    http: HttpClient,
    grpc: HealthClient<GrpcService<Channel>>,
    backend: SocketAddr,
}

async fn checkout(State(frontend): State<Frontend>) -> String {
    let stock = frontend
        .http
        .send(
            frontend
                .http
                .get(&format!("http://{}/stock/42", frontend.backend)),
        )
        .await
        .expect("backend answers over HTTP");
    let stock = stock.text().await.unwrap();
    let health = frontend
        .grpc
        .clone()
        .check(HealthCheckRequest::default())
        .await
        .expect("backend answers over gRPC");
    format!("stock {stock}, health {:?}", health.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_both_services_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let strand = Strand::start(dir.path(), &[]).await;
    let frontend_guard = sdk("frontend", &strand.grpc_endpoint()).build().unwrap();
    let backend_guard = sdk("backend", &strand.grpc_endpoint()).build().unwrap();
    let (backend_http, backend_grpc) = start_backend(backend_guard.telemetry()).await;

    let telemetry = frontend_guard.telemetry();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{backend_grpc}"))
        .unwrap()
        .connect_lazy();
    let frontend = Router::new()
        .route("/checkout", get(checkout))
        .layer(HttpServerLayer::new(telemetry))
        .with_state(Frontend {
            http: HttpClient::new(reqwest::Client::new(), telemetry),
            grpc: HealthClient::new(
                tower::ServiceBuilder::new()
                    .layer(GrpcClientLayer::new(telemetry))
                    .service(channel),
            ),
            backend: backend_http,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let frontend_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, frontend).await });

    let (trace_id, traceparent) = new_trace();
    let response = reqwest::Client::new()
        .get(format!("http://{frontend_addr}/checkout"))
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "stock 7, health 1");

    let path = format!("/api/traces/{trace_id}");
    let spans = eventually(DEADLINE, || async {
        let (status, body) = strand.get_json(&path).await;
        let spans = spans(&body);
        (status == 200 && spans.len() >= 5).then_some(spans)
    })
    .await
    .unwrap_or_else(|| panic!("trace {trace_id} did not arrive with 5 spans within {DEADLINE:?}"));

    let find = |service: &str, operation: &str| {
        spans
            .iter()
            .find(|s| s.0 == service && s.1 == operation)
            .unwrap_or_else(|| panic!("no {service} span {operation:?} in {spans:#?}"))
    };
    let frontend_server = find("frontend", "GET /checkout");
    let http_client = find("frontend", "GET");
    let http_server = find("backend", "GET /stock/{sku}");
    let grpc_client = find("frontend", "grpc.health.v1.Health/Check");
    let grpc_server = find("backend", "grpc.health.v1.Health/Check");
    assert_eq!(http_client.3.as_ref(), Some(&frontend_server.2));
    assert_eq!(grpc_client.3.as_ref(), Some(&frontend_server.2));
    assert_eq!(http_server.3.as_ref(), Some(&http_client.2), "{spans:#?}");
    assert_eq!(grpc_server.3.as_ref(), Some(&grpc_client.2), "{spans:#?}");
}
