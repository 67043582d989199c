//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::export_traces;
use crate::pipeline::Pipeline;

struct TraceGrpc {
    pipeline: Arc<Pipeline>,
}

#[tonic::async_trait]
impl TraceService for TraceGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        match export_traces(&self.pipeline, request.into_inner(), "grpc").await {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                self.pipeline.refuse_request(error.reason());
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
