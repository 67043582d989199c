//! The ingest edge: OTLP over gRPC and HTTP, and the Elasticsearch bulk API.
//! The only modules that know the wire types; they decode, validate, convert
//! to `model` and hand the result to the `Pipeline`.

mod bulk;
pub mod grpc;
pub mod http;
pub(crate) mod otlp;
pub(crate) mod otlp_metrics;
pub mod remote_write;
pub mod scrape;

use axum::http::StatusCode as HttpStatus;

use crate::pipeline::AcceptError;

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
}

impl From<AcceptError> for IngestError {
    fn from(error: AcceptError) -> Self {
        match error {
            AcceptError::Overloaded => IngestError::Overloaded(error),
            AcceptError::Unavailable(_) => IngestError::Unavailable(error),
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
            IngestError::Overloaded(_) => HttpStatus::TOO_MANY_REQUESTS,
            IngestError::Unavailable(_) => HttpStatus::SERVICE_UNAVAILABLE,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            IngestError::Malformed(_) | IngestError::UnsupportedMediaType(_) => {
                tonic::Code::InvalidArgument
            }
            IngestError::TooLarge { .. } | IngestError::Overloaded(_) => {
                tonic::Code::ResourceExhausted
            }
            IngestError::Unavailable(_) => tonic::Code::Unavailable,
        }
    }

    /// Seconds a client should wait before retrying, for retryable refusals.
    pub fn retry_after(&self) -> Option<u64> {
        matches!(
            self,
            IngestError::Overloaded(_) | IngestError::Unavailable(_)
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
    let converted = converter.convert(request, &|labels| pipeline.newest_sample(labels));
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
