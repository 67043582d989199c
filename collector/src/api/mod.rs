//! The HTTP API on port 7070: the Jaeger query API, the native log API, the
//! Prometheus query API, dashboards, health endpoints, Strand's own
//! `/metrics` and the embedded web UI (`/`, `/ui/*`).

mod dashboards;
mod jaeger;
mod logs;
mod params;
mod prom;
mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::store::Stores;
use crate::telemetry::SelfMetrics;

/// What the API handlers share: the stores they read (never the write
/// path), Strand's own metrics and its readiness.
pub struct ApiState {
    pub stores: Stores,
    pub self_metrics: SelfMetrics,
    /// False while the stores fail to flush; `/readyz` reports it.
    pub healthy: Arc<AtomicBool>,
}

/// The API router; testable without a socket.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self_metrics))
        .merge(jaeger::router())
        .merge(logs::router())
        .merge(prom::router())
        .merge(dashboards::router())
        .merge(ui::router())
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

async fn readyz(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    if state.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: flushing to the stores fails, see the daemon's log",
        )
    }
}

async fn self_metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.self_metrics.render(),
    )
}
