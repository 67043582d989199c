//! The ingest edge: OTLP over gRPC and HTTP, the Elasticsearch bulk API
//! and Loki's push API.
//! The only modules that know the wire types; they decode, validate, convert
//! to `model` and hand the result to the `Pipeline`.

mod bulk;
pub mod exposition;
pub mod grpc;
pub mod http;
pub mod loki;
pub(crate) mod otlp;
pub(crate) mod otlp_metrics;
pub(crate) mod otlp_out;
pub mod remote_write;
pub mod scrape;

use axum::http::StatusCode as HttpStatus;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::memory::{MemoryGuard, MemoryRefusal};
use crate::pipeline::AcceptError;

/// How many times its declared size a compressed body is taken to inflate
/// to, when it is charged against the memory limit: typical of OTLP and
/// log batches.
const COMPRESSION_RATIO: u64 = 10;

/// How long clients are told to wait after an overload answer.
const RETRY_AFTER_SECONDS: u64 = 1;

/// Why a request was refused. The one place that maps refusals to HTTP
/// statuses and gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}; retry after {RETRY_AFTER_SECONDS}s")]
    Overloaded(AcceptError),
    #[error("{0}")]
    Unavailable(AcceptError),
    #[error("{0}")]
    MemoryLimit(MemoryRefusal),
}

impl From<AcceptError> for IngestError {
    fn from(error: AcceptError) -> Self {
        match error {
            AcceptError::Overloaded => IngestError::Overloaded(error),
            AcceptError::Unavailable(_) | AcceptError::WalFull { .. } => {
                IngestError::Unavailable(error)
            }
            AcceptError::TooLarge { .. } => IngestError::Malformed(error.to_string()),
        }
    }
}

impl IngestError {
    pub fn http_status(&self) -> HttpStatus {
        match self {
            IngestError::Malformed(_) => HttpStatus::BAD_REQUEST,
            IngestError::UnsupportedMediaType(_) => HttpStatus::UNSUPPORTED_MEDIA_TYPE,
            IngestError::TooLarge { .. } => HttpStatus::PAYLOAD_TOO_LARGE,
            IngestError::Overloaded(_) | IngestError::MemoryLimit(_) => {
                HttpStatus::TOO_MANY_REQUESTS
            }
            IngestError::Unavailable(_) => HttpStatus::SERVICE_UNAVAILABLE,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            IngestError::Malformed(_) | IngestError::UnsupportedMediaType(_) => {
                tonic::Code::InvalidArgument
            }
            IngestError::TooLarge { .. }
            | IngestError::Overloaded(_)
            | IngestError::MemoryLimit(_) => tonic::Code::ResourceExhausted,
            IngestError::Unavailable(_) => tonic::Code::Unavailable,
        }
    }

    /// Seconds a client should wait before retrying, for retryable refusals.
    pub fn retry_after(&self) -> Option<u64> {
        matches!(
            self,
            IngestError::Overloaded(_) | IngestError::Unavailable(_) | IngestError::MemoryLimit(_)
        )
        .then_some(RETRY_AFTER_SECONDS)
    }

    /// The `strand_spans_rejected_total` reason.
    fn reason(&self) -> &'static str {
        match self {
            IngestError::Malformed(_) | IngestError::UnsupportedMediaType(_) => "malformed",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::Overloaded(_) => "overloaded",
            IngestError::Unavailable(_) => "unavailable",
            IngestError::MemoryLimit(_) => "memory_limit",
        }
    }
}

impl From<IngestError> for tonic::Status {
    fn from(error: IngestError) -> Self {
        let mut status = tonic::Status::new(error.grpc_code(), error.to_string());
        if let Some(seconds) = error.retry_after() {
            status.metadata_mut().insert(
                "retry-after",
                seconds
                    .to_string()
                    .parse()
                    .expect("digits are valid metadata"),
            );
        }
        status
    }
}

/// The metrics store, as the OTLP metrics converter reads it back.
struct StoredInPipeline<'a>(&'a crate::pipeline::Pipeline);

impl otlp_metrics::StoredSamples for StoredInPipeline<'_> {
    fn newest(&self, labels: &[crate::model::Label]) -> Option<crate::model::MetricSample> {
        self.0.newest_sample(labels)
    }

    fn newest_by(
        &self,
        labels: &[crate::model::Label],
        extra: &str,
    ) -> Vec<(String, crate::model::MetricSample)> {
        self.0.newest_samples_by(labels, extra)
    }
}

/// The body a request declares (`Content-Length`), as what it inflates to
/// when compressed; `None` when it declares none (gRPC, chunked uploads).
fn declared_body_bytes(headers: &HeaderMap) -> Option<u64> {
    let length: u64 = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let compressed = [header::CONTENT_ENCODING.as_str(), "grpc-encoding"]
        .iter()
        .filter_map(|name| headers.get(*name))
        .any(|encoding| encoding != "identity");
    Some(if compressed {
        length.saturating_mul(COMPRESSION_RATIO)
    } else {
        length
    })
}

/// Admits an HTTP ingest request against the memory limit before its body
/// is read, and holds its share until it is answered. A refused request's
/// body is never read, so its connection is closed after the answer.
pub(crate) async fn admit_http(
    axum::extract::State(guard): axum::extract::State<MemoryGuard>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match guard.admit(declared_body_bytes(request.headers())) {
        Ok(admission) => {
            let response = next.run(request).await;
            drop(admission);
            response
        }
        Err(refusal) => {
            let error = IngestError::MemoryLimit(refusal);
            (
                error.http_status(),
                [
                    (header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS)),
                    (header::CONNECTION, HeaderValue::from_static("close")),
                ],
                error.to_string(),
            )
                .into_response()
        }
    }
}

/// Converts, validates and stores one trace export request; shared by both
/// transports. Invalid spans are reported as OTLP partial success.
async fn export_traces(
    pipeline: &crate::pipeline::Pipeline,
    request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    transport: &str,
) -> Result<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse, IngestError>
{
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    let converted = otlp::convert_trace_request(request, pipeline.attribute_limits());
    pipeline.count_trimmed_attributes(
        "spans",
        converted.trimmed.dropped,
        converted.trimmed.truncated,
    );
    if converted.rejected > 0 {
        pipeline.reject_spans(converted.rejected as usize, "invalid");
    }
    let accepted = converted.spans.len();
    pipeline
        .accept_spans(converted.spans, transport)
        .await
        .map_err(|error| {
            let error = IngestError::from(error);
            tracing::debug!(spans = accepted, %error, "SpansRejected");
            error
        })?;
    Ok(ExportTraceServiceResponse {
        partial_success: converted
            .first_error
            .map(|error_message| ExportTracePartialSuccess {
                rejected_spans: converted.rejected as i64,
                error_message,
            }),
    })
}

/// Converts, validates and stores one log export request; shared by both
/// transports. Invalid records are reported as OTLP partial success.
async fn export_logs(
    pipeline: &crate::pipeline::Pipeline,
    request: opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
    transport: &str,
) -> Result<opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse, IngestError>
{
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceResponse,
    };
    let converted = otlp::convert_logs_request(
        request,
        pipeline.attribute_limits(),
        crate::model::now_unix_nano(),
    );
    pipeline.count_trimmed_attributes(
        "logs",
        converted.trimmed.dropped,
        converted.trimmed.truncated,
    );
    if converted.rejected > 0 {
        pipeline.reject_logs(converted.rejected as usize, "invalid");
    }
    let accepted = converted.records.len();
    pipeline
        .accept_logs(converted.records, transport)
        .await
        .map_err(|error| {
            let error = IngestError::from(error);
            tracing::debug!(records = accepted, %error, "LogsRejected");
            error
        })?;
    Ok(ExportLogsServiceResponse {
        partial_success: converted
            .first_error
            .map(|error_message| ExportLogsPartialSuccess {
                rejected_log_records: converted.rejected as i64,
                error_message,
            }),
    })
}

/// Converts and stores one metrics export request; shared by both
/// transports. Points that cannot be converted, and samples the store refuses
/// (out of order, over the series limits), are reported as OTLP partial
/// success.
async fn export_metrics(
    pipeline: &std::sync::Arc<crate::pipeline::Pipeline>,
    converter: &otlp_metrics::MetricsConverter,
    request: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    transport: &str,
) -> Result<
    opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse,
    IngestError,
> {
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
    };
    let converted = converter.convert(request, &StoredInPipeline(pipeline));
    if converted.rejected > 0 {
        pipeline.reject_samples(converted.rejected as usize, "invalid");
    }
    let stored = pipeline
        .accept_samples(converted.series, converted.metadata, transport)
        .await
        .map_err(|error| {
            let error = IngestError::from(error);
            tracing::debug!(%error, "SamplesRejected");
            error
        })?;
    let rejected = converted.rejected + stored.rejected;
    Ok(ExportMetricsServiceResponse {
        partial_success: converted
            .first_error
            .or(stored.first_error)
            .map(|error_message| ExportMetricsPartialSuccess {
                rejected_data_points: rejected as i64,
                error_message,
            }),
    })
}
