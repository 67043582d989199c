//! What every service shares: data directories and their sled databases,
//! telemetry setup, fault injection, and serving with graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use opentelemetry::trace::TraceContextExt;

/// The flags every service takes besides its own.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Directory of this service's own sled database [default: ./shop-data/<service>]
    #[arg(long, env = "SHOP_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl CommonArgs {
    /// The data directory of `service`: the flag, or `./shop-data/<service>`.
    pub fn data_dir(&self, service: &str) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| Path::new("shop-data").join(service))
    }

    /// Opens (creating it if needed) the sled database of `service`.
    pub fn open_db(&self, service: &str) -> anyhow::Result<sled::Db> {
        let dir = self.data_dir(service);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        sled::open(&dir).with_context(|| format!("opening sled database in {}", dir.display()))
    }
}

/// Installs traces, logs and metrics for `service` (endpoint and protocol
/// from the standard `OTEL_*` variables). Keep the guard for the whole run.
pub fn telemetry(service: &str) -> anyhow::Result<strand_sdk::Guard> {
    strand_sdk::init(service).with_context(|| format!("setting up telemetry for {service}"))
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// The path of every service's health check.
pub const HEALTH_PATH: &str = "/health";

/// Adds the un-traced `GET /health` route (answers `{"status":"ok"}`).
pub fn with_health(router: Router, service: &'static str) -> Router {
    router.route(
        HEALTH_PATH,
        get(move || async move { axum::Json(serde_json::json!({"status": "ok", "service": service})) }),
    )
}

/// Serves `router` on `addr` until SIGINT/SIGTERM, then lets in-flight
/// requests finish.
pub async fn serve(service: &str, addr: SocketAddr, router: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {service} to {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(service, addr = %local, "ShopServiceStarted");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .with_context(|| format!("serving {service}"))?;
    tracing::info!(service, "ShopServiceStopped");
    Ok(())
}

/// True with probability `rate` (0 = never, 1 = always): fault injection.
pub fn chance(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}

/// The trace id of the current OpenTelemetry context, if there is a span.
pub fn current_trace_id() -> Option<String> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs blocking work (sled) off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::error::ApiResult<T> + Send + 'static,
) -> crate::error::ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| crate::error::ApiError::internal(format!("database task: {e}")))?
}

/// Why one attempt of a retried call failed.
pub enum Failure<E> {
    /// Worth another try (connection refused, timeout, 503).
    Transient(E),
    /// Trying again would not help.
    Permanent(E),
}

/// Calls `attempt` up to `attempts` times, sleeping `base`, 2×`base`, ...
/// (with jitter) between transient failures.
pub async fn with_retries<T, E, F, Fut>(
    what: &str,
    attempts: u32,
    base: std::time::Duration,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure<E>>>,
    E: std::fmt::Display,
{
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Permanent(error)) => return Err(error),
            Err(Failure::Transient(error)) if tried >= attempts.max(1) => return Err(error),
            Err(Failure::Transient(error)) => {
                let backoff = base * 2u32.pow(tried - 1);
                let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
                tracing::warn!(upstream = what, attempt = tried, %error, backoff_ms = (backoff + jitter).as_millis() as u64, "retrying upstream call");
                tokio::time::sleep(backoff + jitter).await;
            }
        }
    }
}
