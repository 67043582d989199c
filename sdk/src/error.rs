//! The one error type of the SDK.

/// Everything that can go wrong in the SDK, in one enum so callers match in
/// one place. Setup errors are returned by [`crate::init`] and
/// [`crate::Builder`]; export problems are never returned to the application
/// (the SDK counts and logs them instead, see [`crate::ExportStats`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting (from the builder or an `OTEL_*` environment variable) is
    /// invalid; the message names it.
    #[error("invalid telemetry configuration: {0}")]
    Config(String),
    /// An OTLP exporter could not be built (e.g. a malformed endpoint).
    #[error("building the OTLP {signal} exporter: {message}")]
    Exporter {
        /// Which signal's exporter failed: traces, logs or metrics.
        signal: &'static str,
        /// What the exporter reported.
        message: String,
    },
    /// Another `tracing` subscriber is already installed globally, so this
    /// process's logs cannot be bridged; call [`crate::Builder::build`]
    /// instead of `install` for additional services in the same process.
    #[error("a global tracing subscriber is already installed")]
    SubscriberAlreadySet,
    /// An outgoing HTTP call made through [`crate::HttpClient`] failed.
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// Flushing or shutting down the providers failed (e.g. timed out while
    /// the collector was unreachable); nothing the caller can act on.
    #[error("telemetry shutdown: {0}")]
    InternalFailure(String),
}

/// The SDK's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
