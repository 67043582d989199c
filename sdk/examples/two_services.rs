//! Two instrumented services in one process: `frontend` on 127.0.0.1:3000
//! calls `backend` on 127.0.0.1:3001 over HTTP; every request to the
//! frontend becomes one trace across both, with the handlers' logs attached.
//!
//! ```sh
//! cargo run --release -p strand -- serve &          # the collector (OTLP on 4317)
//! cargo run -p strand-sdk --example two_services
//! curl 127.0.0.1:3000/checkout
//! curl 127.0.0.1:7070/api/services                  # frontend, backend
//! ```
//!
//! `OTEL_EXPORTER_OTLP_ENDPOINT` points it at another collector. Ctrl-C stops
//! it; the guards flush what is left.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use strand_sdk::{HttpClient, HttpServerLayer};

const FRONTEND: &str = "127.0.0.1:3000";
const BACKEND: &str = "127.0.0.1:3001";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The frontend owns the process-wide setup (subscriber, globals)...
    let frontend_guard = strand_sdk::init("frontend")?;
    // ...the backend gets its own providers, so its spans say "backend".
    let backend_guard = strand_sdk::Builder::new("backend").build()?;

    let backend = Router::new()
        .route("/stock/{sku}", get(stock))
        .layer(HttpServerLayer::new(backend_guard.telemetry()));
    let frontend = Router::new()
        .route("/checkout", get(checkout))
        .layer(HttpServerLayer::new(frontend_guard.telemetry()))
        .with_state(HttpClient::new(
            reqwest::Client::new(),
            frontend_guard.telemetry(),
        ));

    let backend_listener = tokio::net::TcpListener::bind(BACKEND).await?;
    let frontend_listener = tokio::net::TcpListener::bind(FRONTEND).await?;
    tracing::info!("try: curl {FRONTEND}/checkout");
    let shutdown = || async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let (a, b) = tokio::join!(
        axum::serve(backend_listener, backend).with_graceful_shutdown(shutdown()),
        axum::serve(frontend_listener, frontend).with_graceful_shutdown(shutdown()),
    );
    a?;
    b?;
    Ok(())
}

async fn stock(Path(sku): Path<String>) -> Result<String, StatusCode> {
    tracing::info!(%sku, "stock looked up");
    match sku.as_str() {
        "broken" => Err(StatusCode::INTERNAL_SERVER_ERROR),
        _ => Ok("7".to_string()),
    }
}

async fn checkout(State(client): State<HttpClient>) -> Result<String, StatusCode> {
    tracing::info!("checkout started");
    let response = client
        .send(client.get(&format!("http://{BACKEND}/stock/42")))
        .await
        .map_err(|error| {
            tracing::error!(%error, "backend unreachable");
            StatusCode::BAD_GATEWAY
        })?;
    let stock = response.text().await.map_err(|_| StatusCode::BAD_GATEWAY)?;
    Ok(format!("in stock: {stock}\n"))
}
