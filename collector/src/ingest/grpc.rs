//! OTLP/gRPC: the `Export` methods of
//! `opentelemetry.proto.collector.{trace,logs,metrics}.v1`'s services.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Status};

type Response<B> = axum::http::Response<B>;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};

use super::otlp_metrics::MetricsConverter;
use super::{export_logs, export_metrics, export_traces};
use crate::memory::MemoryGuard;
use crate::pipeline::Pipeline;

struct TraceGrpc {
    pipeline: Arc<Pipeline>,
}

#[tonic::async_trait]
impl TraceService for TraceGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        match export_traces(&self.pipeline, request.into_inner(), "grpc").await {
            Ok(response) => Ok(tonic::Response::new(response)),
            Err(error) => {
                self.pipeline.reject_request(error.reason());
                Err(error.into())
            }
        }
    }
}

/// The gRPC trace service (port 4317 by default). Messages over
/// `max_message_bytes` (after decompression) are refused by tonic with
/// RESOURCE_EXHAUSTED; malformed protobuf with INVALID_ARGUMENT.
pub fn trace_service(
    pipeline: Arc<Pipeline>,
    max_message_bytes: usize,
) -> TraceServiceServer<impl TraceService> {
    TraceServiceServer::new(TraceGrpc { pipeline })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes)
}

struct LogsGrpc {
    pipeline: Arc<Pipeline>,
}

#[tonic::async_trait]
impl LogsService for LogsGrpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, Status> {
        match export_logs(&self.pipeline, request.into_inner(), "grpc").await {
            Ok(response) => Ok(tonic::Response::new(response)),
            Err(error) => {
                self.pipeline.reject_request(error.reason());
                Err(error.into())
            }
        }
    }
}

/// The gRPC logs service, with the same limits as [`trace_service`].
pub fn logs_service(
    pipeline: Arc<Pipeline>,
    max_message_bytes: usize,
) -> LogsServiceServer<impl LogsService> {
    LogsServiceServer::new(LogsGrpc { pipeline })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes)
}

struct MetricsGrpc {
    pipeline: Arc<Pipeline>,
    converter: Arc<MetricsConverter>,
}

#[tonic::async_trait]
impl MetricsService for MetricsGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, Status> {
        match export_metrics(
            &self.pipeline,
            &self.converter,
            request.into_inner(),
            "grpc",
        )
        .await
        {
            Ok(response) => Ok(tonic::Response::new(response)),
            Err(error) => {
                self.pipeline.reject_request(error.reason());
                Err(error.into())
            }
        }
    }
}

/// The gRPC metrics service, with the same limits as [`trace_service`]; the
/// converter is shared with OTLP/HTTP so delta sums accumulate across both.
pub fn metrics_service(
    pipeline: Arc<Pipeline>,
    converter: Arc<MetricsConverter>,
    max_message_bytes: usize,
) -> MetricsServiceServer<impl MetricsService> {
    MetricsServiceServer::new(MetricsGrpc {
        pipeline,
        converter,
    })
    .accept_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Gzip)
    .max_decoding_message_size(max_message_bytes)
}

/// Admits each call against the memory limit before its message is read
/// (see `memory`): a refused call gets RESOURCE_EXHAUSTED with
/// `retry-after`, its message unread.
#[derive(Clone)]
pub struct AdmitLayer(pub MemoryGuard);

impl<S> tower::Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            guard: self.0.clone(),
        }
    }
}

/// The service [`AdmitLayer`] wraps around the OTLP services.
#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    guard: MemoryGuard,
}

type BoxedCall<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S, B> tower::Service<axum::http::Request<B>> for Admit<S>
where
    S: tower::Service<axum::http::Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxedCall<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        match self
            .guard
            .admit(super::declared_body_bytes(request.headers()))
        {
            Ok(admission) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    drop(admission);
                    response
                })
            }
            Err(refusal) => {
                let status = Status::from(super::IngestError::MemoryLimit(refusal));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE; OTLP clients
/// expect RESOURCE_EXHAUSTED for that (the gRPC twin of HTTP 413), with a
/// message in our words. This rewrites exactly that status, whether it comes in
/// the response headers or, as tonic sends it once it has read the message
/// header, in the trailers.
pub fn oversized_as_resource_exhausted(
    max_message_bytes: usize,
) -> impl Fn(Response<Body>) -> Response<Body> + Clone {
    move |response| {
        let rewrite = move |headers: &mut HeaderMap| {
            let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
                && headers
                    .get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    // grpc-message is percent-encoded.
                    .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
            if oversized {
                let error = super::IngestError::TooLarge {
                    limit: max_message_bytes,
                };
                // Replaces grpc-status and grpc-message, percent-encoded.
                let _ = Status::from(error).add_header(headers);
            }
        };
        let (mut parts, body) = response.into_parts();
        rewrite(&mut parts.headers);
        let body = body.map_frame(move |frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                rewrite(&mut trailers);
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        });
        Response::from_parts(parts, Body::new(body))
    }
}
