//! OTLP/HTTP: `POST /v1/traces`, `/v1/logs` and `/v1/metrics` with protobuf or JSON
//! bodies, optionally gzip; and the Elasticsearch bulk API for log shippers.
//!
//! Answers follow the OTLP/HTTP spec: the response body uses the request's
//! encoding; failures carry a `google.rpc.Status` with a message that says what
//! was wrong; overload answers 429 with `Retry-After`.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::otlp_metrics::MetricsConverter;
use super::{IngestError, bulk, export_logs, export_metrics, export_traces};
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
pub fn router(
    pipeline: Arc<Pipeline>,
    converter: Arc<MetricsConverter>,
    max_body_bytes: usize,
) -> Router {
    Router::new()
        .route(
            "/v1/traces",
            post(
                |State(ingest): State<HttpIngest>, headers: HeaderMap, body: Body| {
                    export(
                        ingest,
                        headers,
                        body,
                        "ExportTraceServiceRequest",
                        |p, r| async move { export_traces(&p, r, "http").await },
                    )
                },
            ),
        )
        .route(
            "/v1/logs",
            post(
                |State(ingest): State<HttpIngest>, headers: HeaderMap, body: Body| {
                    export(
                        ingest,
                        headers,
                        body,
                        "ExportLogsServiceRequest",
                        |p, r| async move { export_logs(&p, r, "http").await },
                    )
                },
            ),
        )
        .route(
            "/v1/metrics",
            post(
                move |State(ingest): State<HttpIngest>, headers: HeaderMap, body: Body| {
                    let converter = converter.clone();
                    export(
                        ingest,
                        headers,
                        body,
                        "ExportMetricsServiceRequest",
                        move |p, r| async move { export_metrics(&p, &converter, r, "http").await },
                    )
                },
            ),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not an OTLP/HTTP endpoint: POST /v1/traces, /v1/logs or /v1/metrics",
            )
        })
        // Limits are enforced by `read_body`, after decompression too.
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpIngest {
            pipeline,
            max_body_bytes,
        })
}

/// Elasticsearch's bulk API (`POST /_bulk`, `POST /{index}/_bulk`), served on
/// the API port so log shippers configured for Elasticsearch (Fluent Bit,
/// Vector, Logstash, Filebeat) work unchanged.
pub fn bulk_router(pipeline: Arc<Pipeline>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/_bulk", post(bulk).put(bulk))
        .route("/{index}/_bulk", post(bulk_into).put(bulk_into))
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpIngest {
            pipeline,
            max_body_bytes,
        })
}

async fn bulk_into(
    State(ingest): State<HttpIngest>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    store_bulk(ingest, Some(index), headers, body).await
}

async fn bulk(State(ingest): State<HttpIngest>, headers: HeaderMap, body: Body) -> Response {
    store_bulk(ingest, None, headers, body).await
}

/// Items the daemon could not store (overload, WAL failure) are answered
/// 429 per item, as Elasticsearch does, so shippers retry just those.
async fn store_bulk(
    ingest: HttpIngest,
    index: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let body = match read_body(&headers, body, ingest.max_body_bytes).await {
        Ok(body) => body,
        Err(error) => {
            ingest.pipeline.reject_request(error.reason());
            return elasticsearch_error(error.http_status(), &error.to_string());
        }
    };
    let request = match bulk::parse_bulk(&body, index.as_deref(), crate::model::now_unix_nano()) {
        Ok(request) => request,
        Err(error) => {
            ingest.pipeline.reject_request("malformed");
            return elasticsearch_error(StatusCode::BAD_REQUEST, &error.to_string());
        }
    };
    let stored = ingest
        .pipeline
        .accept_logs(request.records, "bulk")
        .await
        .is_ok();
    let took_ms = started.elapsed().as_millis() as u64;
    axum::Json(bulk::bulk_response(&request.items, took_ms, stored)).into_response()
}

/// A request-level error in Elasticsearch's shape.
fn elasticsearch_error(status: StatusCode, reason: &str) -> Response {
    let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "content_too_long_exception"
    } else {
        "illegal_argument_exception"
    };
    crate::elastic::error(status, kind, reason)
}

/// Decodes one export request of any signal, hands it to `handle`, and
/// answers in the request's encoding.
async fn export<Request, Reply, Handled>(
    ingest: HttpIngest,
    headers: HeaderMap,
    body: Body,
    message: &'static str,
    handle: impl FnOnce(Arc<Pipeline>, Request) -> Handled,
) -> Response
where
    Request: Message + Default + DeserializeOwned,
    Reply: Message + Serialize,
    Handled: Future<Output = Result<Reply, IngestError>>,
{
    let encoding = match request_encoding(&headers) {
        Ok(encoding) => encoding,
        Err(error) => return refuse(&ingest, Encoding::Json, error),
    };
    let result = async {
        let body = read_body(&headers, body, ingest.max_body_bytes).await?;
        let request = decode::<Request>(encoding, &body, message)?;
        handle(ingest.pipeline.clone(), request).await
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

/// Marks a 413 answer `Connection: close`. A body refused for its size is
/// not read to the end, so the connection cannot carry another request;
/// saying so keeps clients (Prometheus, reqwest, SDK exporters) from
/// reusing it and failing their next request on a closed socket. Layered
/// over every router that limits bodies.
pub(crate) async fn close_after_refused_body(mut response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads the body within the size limit, and inflates it if gzip-encoded
/// (within the same limit, so a small bomb cannot expand without bound).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, IngestError> {
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
        // Snappy's block format, as Prometheus remote write sends it.
        "snappy" => {
            let inflated_len = snap::raw::decompress_len(&raw)
                .map_err(|e| IngestError::Malformed(format!("invalid snappy body: {e}")))?;
            if inflated_len > limit {
                return Err(too_large);
            }
            let inflated = snap::raw::Decoder::new()
                .decompress_vec(&raw)
                .map_err(|e| IngestError::Malformed(format!("invalid snappy body: {e}")))?;
            Bytes::from(inflated)
        }
        other => {
            return Err(IngestError::UnsupportedMediaType(format!(
                "unsupported content encoding {other:?}: send gzip, snappy or no encoding"
            )));
        }
    };
    if body.is_empty() {
        return Err(IngestError::Malformed("request body is empty".into()));
    }
    Ok(body)
}

fn decode<Request: Message + Default + DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
    message: &str,
) -> Result<Request, IngestError> {
    match encoding {
        Encoding::Protobuf => Request::decode(body)
            .map_err(|e| IngestError::Malformed(format!("invalid protobuf {message}: {e}"))),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| IngestError::Malformed(format!("invalid JSON {message}: {e}"))),
    }
}

fn refuse(ingest: &HttpIngest, encoding: Encoding, error: IngestError) -> Response {
    ingest.pipeline.reject_request(error.reason());
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
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let traces = |encoding| decode::<ExportTraceServiceRequest>(encoding, &bytes, "traces");
            let logs = |encoding| decode::<ExportLogsServiceRequest>(encoding, &bytes, "logs");
            let _ = traces(Encoding::Json);
            let _ = logs(Encoding::Json);
            if let Ok(request) = traces(Encoding::Protobuf) {
                let _ = super::super::otlp::convert_trace_request(request, &Default::default());
            }
            if let Ok(request) = logs(Encoding::Protobuf) {
                let _ = super::super::otlp::convert_logs_request(request, &Default::default(), 1);
            }
        }

        #[test]
        fn json_mutations_never_panic(cut in 0usize..200, flip in any::<u8>()) {
            let mut json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"x","startTimeUnixNano":"1","attributes":[{"key":"k","value":{"intValue":"5"}}]}]}]}]}"#.to_vec();
            let at = cut.min(json.len() - 1);
            json[at] ^= flip;
            if let Ok(request) = decode::<ExportTraceServiceRequest>(Encoding::Json, &json, "traces") {
                let _ = super::super::otlp::convert_trace_request(request, &Default::default());
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
