//! OTLP/HTTP: `POST /v1/traces` with protobuf or JSON bodies, optionally gzip.
//!
//! Answers follow the OTLP/HTTP spec: the response body uses the request's
//! encoding; failures carry a `google.rpc.Status` with a message that says what
//! was wrong; overload answers 429 with `Retry-After`.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::{IngestError, export_traces};
use crate::pipeline::Pipeline;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Clone)]
struct HttpIngest {
    pipeline: Arc<Pipeline>,
    max_body_bytes: usize,
}

/// `google.rpc.Status`, the error body OTLP/HTTP prescribes.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

/// The OTLP/HTTP router (port 4318 by default).
pub fn router(pipeline: Arc<Pipeline>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not an OTLP/HTTP endpoint: POST /v1/traces",
            )
        })
        // Limits are enforced by `read_body`, after decompression too.
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpIngest {
            pipeline,
            max_body_bytes,
        })
}

async fn export(State(ingest): State<HttpIngest>, headers: HeaderMap, body: Body) -> Response {
    let encoding = match request_encoding(&headers) {
        Ok(encoding) => encoding,
        Err(error) => return refuse(&ingest, Encoding::Json, error),
    };
    let result = async {
        let body = read_body(&headers, body, ingest.max_body_bytes).await?;
        let request = decode(encoding, &body)?;
        export_traces(&ingest.pipeline, request, "http").await
    }
    .await;
    match result {
        Ok(response) => {
            let body = match encoding {
                Encoding::Protobuf => response.encode_to_vec(),
                Encoding::Json => serde_json::to_vec(&response).unwrap_or_default(),
            };
            with_content_type(StatusCode::OK, encoding, body)
        }
        Err(error) => refuse(&ingest, encoding, error),
    }
}

fn request_encoding(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        PROTOBUF | "application/protobuf" => Ok(Encoding::Protobuf),
        JSON => Ok(Encoding::Json),
        _ => Err(IngestError::UnsupportedMediaType(format!(
            "unsupported content type {content_type:?}: send {PROTOBUF} or {JSON}"
        ))),
    }
}

/// Reads the body within the size limit, and inflates it if gzip-encoded
/// (within the same limit, so a small bomb cannot expand without bound).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, IngestError> {
    let too_large = IngestError::TooLarge { limit };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large);
    }
    let raw = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large),
        Err(error) => {
            return Err(IngestError::Malformed(format!(
                "could not read the request body: {error}"
            )));
        }
    };
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let body = match content_encoding.as_str() {
        "" | "identity" => raw,
        "gzip" => {
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(raw.as_ref())
                .take(limit as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| IngestError::Malformed(format!("invalid gzip body: {e}")))?;
            if inflated.len() > limit {
                return Err(too_large);
            }
            Bytes::from(inflated)
        }
        other => {
            return Err(IngestError::UnsupportedMediaType(format!(
                "unsupported content encoding {other:?}: send gzip or no encoding"
            )));
        }
    };
    if body.is_empty() {
        return Err(IngestError::Malformed("request body is empty".into()));
    }
    Ok(body)
}

fn decode(encoding: Encoding, body: &[u8]) -> Result<ExportTraceServiceRequest, IngestError> {
    match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body).map_err(|e| {
            IngestError::Malformed(format!("invalid protobuf ExportTraceServiceRequest: {e}"))
        }),
        Encoding::Json => serde_json::from_slice(body).map_err(|e| {
            IngestError::Malformed(format!("invalid JSON ExportTraceServiceRequest: {e}"))
        }),
    }
}

fn refuse(ingest: &HttpIngest, encoding: Encoding, error: IngestError) -> Response {
    ingest.pipeline.refuse_request(error.reason());
    let status = RpcStatus {
        code: error.grpc_code() as i32,
        message: error.to_string(),
    };
    let body = match encoding {
        Encoding::Protobuf => status.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&status).unwrap_or_default(),
    };
    let mut response = with_content_type(error.http_status(), encoding, body);
    if let Some(seconds) = error.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn with_content_type(status: StatusCode, encoding: Encoding, body: Vec<u8>) -> Response {
    let content_type = match encoding {
        Encoding::Protobuf => PROTOBUF,
        Encoding::Json => JSON,
    };
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(Encoding::Protobuf, &bytes);
            let _ = decode(Encoding::Json, &bytes);
            if let Ok(request) = decode(Encoding::Protobuf, &bytes) {
                let _ = super::super::otlp::convert_trace_request(request);
            }
        }

        #[test]
        fn json_mutations_never_panic(cut in 0usize..200, flip in any::<u8>()) {
            let mut json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","startTimeUnixNano":"1","attributes":[{"key":"k","value":{"intValue":"5"}}]}]}]}]}"#.to_vec();
            let at = cut.min(json.len() - 1);
            json[at] ^= flip;
            if let Ok(request) = decode(Encoding::Json, &json) {
                let _ = super::super::otlp::convert_trace_request(request);
            }
        }
    }

    #[test]
    fn content_types_are_recognised() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            request_encoding(&headers)
        };
        assert!(matches!(
            with("application/x-protobuf"),
            Ok(Encoding::Protobuf)
        ));
        assert!(matches!(
            with("Application/JSON; charset=utf-8"),
            Ok(Encoding::Json)
        ));
        assert!(matches!(
            with("text/plain"),
            Err(IngestError::UnsupportedMediaType(_))
        ));
    }
}
