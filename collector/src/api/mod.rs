//! The HTTP API on port 7070: the Jaeger query API (v1 and v3), Grafana
//! Tempo's query API (under `/tempo`), the native log API, Loki's query API
//! (Grafana's Loki data source), the Prometheus query API, dashboards,
//! health endpoints, Strand's own
//! `/metrics` and the embedded web UI (`/`, `/ui/*`).

mod admin;
mod dashboards;
mod jaeger;
mod jaeger_v3;
mod logs;
mod loki;
mod params;
mod prom;
mod rules;
mod tempo;
mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::compression::CompressionLayer;

use crate::auth::{Auth, Scope};
use crate::query::pool::QueryPool;
use crate::rules::RuleManager;
use crate::snapshot::Snapshotter;
use crate::store::Stores;
use crate::telemetry::SelfMetrics;

/// What the API handlers share: the stores they read (never the write
/// path), Strand's own metrics and its readiness.
pub struct ApiState {
    pub stores: Stores,
    /// The rule groups and their alerts; `None` without `--rules`.
    pub rules: Option<Arc<RuleManager>>,
    pub self_metrics: SelfMetrics,
    /// False while the stores fail to flush; `/readyz` reports it.
    pub healthy: Arc<AtomicBool>,
    /// Where queries run (bounded, below ingest's priority).
    pub queries: QueryPool,
    /// Writes snapshots of the data directory (admin only).
    pub snapshots: Arc<Snapshotter>,
    /// Turns true when the daemon stops: answers that stream until the
    /// client leaves (the log tail) end then, so the servers drain at once
    /// instead of waiting out their grace.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The API router; testable without a socket. Health endpoints and the
/// UI's files are open (the UI must load to ask for a token); queries need
/// the read scope, changing dashboards and snapshots the admin scope, and `/metrics`
/// the read scope unless `public_metrics`.
pub fn router(state: Arc<ApiState>, auth: &Auth, public_metrics: bool) -> Router {
    let queries = Router::new()
        .merge(jaeger::router())
        .merge(jaeger_v3::router())
        .merge(tempo::router())
        .merge(logs::router())
        .merge(loki::router())
        .merge(prom::router())
        .merge(rules::router());
    let metrics = Router::new().route("/metrics", get(self_metrics));
    let metrics = if public_metrics {
        metrics
    } else {
        auth.guard(metrics, Scope::Read, Scope::Read)
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(metrics)
        .merge(auth.guard(queries, Scope::Read, Scope::Read))
        .merge(auth.guard(dashboards::router(), Scope::Read, Scope::Admin))
        .merge(auth.guard(admin::router(), Scope::Admin, Scope::Admin))
        .merge(auth.guard(rules::reload_router(), Scope::Admin, Scope::Admin))
        .merge(ui::router())
        .fallback(crate::elastic::not_found)
        .layer(axum::middleware::map_response(retry_after_when_unavailable))
        // gzip or zstd when the client accepts it: a 10,000-span trace is
        // megabytes of repetitive JSON. Event streams, gRPC and images are
        // left alone, as are bodies too small to gain.
        .layer(CompressionLayer::new())
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

/// How long a client refused with 503 (queries busy or timed out, not
/// ready) is asked to wait.
const RETRY_AFTER_SECONDS: &str = "5";

/// Adds `Retry-After` to a 503, so clients back off instead of hammering a
/// busy daemon.
async fn retry_after_when_unavailable(
    mut response: axum::response::Response,
) -> axum::response::Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .entry(header::RETRY_AFTER)
            .or_insert(header::HeaderValue::from_static(RETRY_AFTER_SECONDS));
    }
    response
}
