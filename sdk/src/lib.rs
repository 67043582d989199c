//! Telemetry for Rust services in one call: traces, logs and metrics over
//! OTLP, on plain OpenTelemetry, so any OTLP backend (Strand, or another)
//! receives them.
//!
//! [`init`] installs a tracer provider with batching OTLP export, a
//! `tracing` subscriber (human-readable stdout, spans, and a bridge that
//! turns every `tracing` event into an OTLP log record carrying the current
//! trace and span ids), a meter provider with periodic export, and the W3C
//! tracecontext + baggage propagator. It honours the standard `OTEL_*`
//! variables (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `..._PROTOCOL`, `..._HEADERS`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_BLRP_*`,
//! `OTEL_METRIC_EXPORT_INTERVAL`), and for a collector serving TLS with its
//! own CA `OTEL_EXPORTER_OTLP_CERTIFICATE` (the CA bundle) and
//! `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `..._CLIENT_KEY` (mutual TLS),
//! each also per signal (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, ...);
//! [`Builder`] sets the rest in code.
//!
//! The application never waits for the collector: export runs on background
//! threads from bounded queues, and what does not fit, or fails to export,
//! is dropped, counted ([`Guard::stats`]) and reported once in the log.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use strand_sdk::{HttpClient, HttpServerLayer};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Flushes everything when dropped at the end of main.
//!     let guard = strand_sdk::init("order")?;
//!     let telemetry = guard.telemetry().clone();
//!     let inventory = HttpClient::new(reqwest::Client::new(), &telemetry);
//!
//!     let app = Router::new()
//!         .route("/orders", get(move || async move {
//!             // A log record with this request's trace id.
//!             tracing::info!("creating an order");
//!             // A client span; the inventory service continues the trace.
//!             match inventory.send(inventory.get("http://inventory:8080/stock")).await {
//!                 Ok(_) => "created",
//!                 Err(_) => "inventory unavailable",
//!             }
//!         }))
//!         // A server span per request and the request-duration histogram.
//!         .layer(HttpServerLayer::new(&telemetry));
//!     let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//!
//! - `setup`: [`init`], [`Builder`], [`Guard`]: providers, exporters, the
//!   subscriber and the globals.
//! - `queue`: the bounded export queues and their drop counters.
//! - `telemetry`: [`Telemetry`], the handle everything below records through.
//! - `http_server`: [`HttpServerLayer`] for axum/tower servers.
//! - `http_client`: [`HttpClient`], a thin `reqwest` wrapper.
//! - `grpc`: [`GrpcClientLayer`], [`GrpcServerLayer`], [`inject_grpc_context`].
//! - `messaging`: producer/consumer spans and context in message headers
//!   ([`Telemetry::send_message`], [`Telemetry::receive_message`]).
//! - `propagation`: header carriers shared by the above.
//! - `tls`: the exporters' TLS from the `OTEL_EXPORTER_OTLP_*CERTIFICATE`
//!   and `..._CLIENT_KEY` variables.
//! - `error`: [`Error`], the one error type.

mod error;
mod grpc;
mod http_client;
mod http_server;
mod messaging;
mod propagation;
mod queue;
mod setup;
mod telemetry;
mod tls;

pub use error::{Error, Result};
pub use grpc::{GrpcClientLayer, GrpcServerLayer, GrpcService, inject_grpc_context};
pub use http_client::HttpClient;
pub use http_server::{HttpServerLayer, HttpServerService};
pub use setup::{Builder, ExportStats, Guard, Protocol};
pub use telemetry::Telemetry;

/// Sets up traces, logs and metrics for the service `service_name` with
/// everything else from the `OTEL_*` environment (see the crate docs);
/// shorthand for `Builder::new(service_name).install()`. Keep the returned
/// guard alive: dropping it flushes and shuts telemetry down.
pub fn init(service_name: &str) -> Result<Guard> {
    Builder::new(service_name).install()
}
