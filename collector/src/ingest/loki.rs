//! Loki's push API: `POST /loki/api/v1/push` with a snappy-compressed
//! `logproto.PushRequest` (Promtail, Alloy, the Loki clients) or JSON
//! (`{"streams": [{"stream": {...}, "values": [["<ns>", "line", {...}]]}]}`,
//! optionally gzip), answered 204 as Loki does.
//!
//! A stream's labels become the records' resource attributes under their
//! own names; `service_name` (or Loki 3's fallbacks: `service`, `app`, ...)
//! is the service, `detected_level`/`level`/`severity` the severity, and
//! structured metadata the record's attributes. Records go through the
//! pipeline's `accept_logs` like OTLP logs and `_bulk`: WAL, durable
//! acknowledgement, limits.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;

use super::IngestError;
use super::http::read_body;
use crate::model::{AttrValue, KeyValue, LogRecord, Resource, Scope, Severity};
use crate::pipeline::Pipeline;

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// `logproto.StreamAdapter`: labels in Prometheus's text form
/// (`{app="a", env="prod"}`) and entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `logproto.EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The JSON push body.
#[derive(serde::Deserialize)]
struct JsonPush {
    streams: Vec<JsonStream>,
}

#[derive(serde::Deserialize)]
struct JsonStream {
    stream: BTreeMap<String, String>,
    values: Vec<JsonEntry>,
}

/// `["<ns>", "line"]` or `["<ns>", "line", {"key": "value"}]`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum JsonEntry {
    Line(JsonTime, String),
    WithMetadata(JsonTime, String, BTreeMap<String, String>),
}

/// A timestamp as a string of nanoseconds (Loki's form) or a number.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum JsonTime {
    Text(String),
    Number(u64),
}

/// Labels that name the service when `service_name` is missing, in Loki
/// 3's order.
const SERVICE_NAME_FALLBACKS: [&str; 10] = [
    "service",
    "app",
    "application",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "component",
    "workload",
    "job",
];

/// Loki's service when no label names one.
const UNKNOWN_SERVICE: &str = "unknown_service";

/// Labels and structured metadata that carry the level, in precedence.
const LEVEL_LABELS: [&str; 3] = ["detected_level", "level", "severity"];

#[derive(Clone)]
struct LokiPush {
    pipeline: Arc<Pipeline>,
    max_body_bytes: usize,
}

/// The push route, served on the API port under the ingest scope.
pub fn router(pipeline: Arc<Pipeline>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/loki/api/v1/push", post(push))
        .layer(DefaultBodyLimit::disable())
        .with_state(LokiPush {
            pipeline,
            max_body_bytes,
        })
}

async fn push(State(state): State<LokiPush>, headers: HeaderMap, body: Body) -> Response {
    match store(&state, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => {
            state.pipeline.reject_request(error.reason());
            let mut response = (error.http_status(), format!("{error}\n")).into_response();
            if let Some(seconds) = error.retry_after() {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}

async fn store(state: &LokiPush, headers: &HeaderMap, body: Body) -> Result<(), IngestError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-protobuf")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let body = read_body(headers, body, state.max_body_bytes).await?;
    let now = crate::model::now_unix_nano();
    let records = match content_type.as_str() {
        "application/json" => {
            let request: JsonPush = serde_json::from_slice(&body)
                .map_err(|e| IngestError::Malformed(format!("invalid JSON push request: {e}")))?;
            from_json(request, now)?
        }
        "application/x-protobuf" | "application/protobuf" | "" => {
            // Snappy, unless a Content-Encoding said so and `read_body`
            // inflated it already.
            let inflated = headers
                .get(header::CONTENT_ENCODING)
                .is_some_and(|encoding| encoding.as_bytes().eq_ignore_ascii_case(b"snappy"));
            let raw = if inflated {
                body.to_vec()
            } else {
                snappy(&body, state.max_body_bytes)?
            };
            let request = PushRequest::decode(raw.as_slice()).map_err(|e| {
                IngestError::Malformed(format!("invalid protobuf PushRequest: {e}"))
            })?;
            from_protobuf(request, now)?
        }
        other => {
            return Err(IngestError::UnsupportedMediaType(format!(
                "unsupported content type {other:?}: send application/x-protobuf (snappy) or \
                 application/json"
            )));
        }
    };
    if records.is_empty() {
        return Ok(());
    }
    state.pipeline.accept_logs(records, "loki").await?;
    Ok(())
}

/// A protobuf push body is snappy's block format, without a
/// `Content-Encoding` saying so.
fn snappy(body: &[u8], limit: usize) -> Result<Vec<u8>, IngestError> {
    let length = snap::raw::decompress_len(body)
        .map_err(|e| IngestError::Malformed(format!("invalid snappy body: {e}")))?;
    if length > limit {
        return Err(IngestError::TooLarge { limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| IngestError::Malformed(format!("invalid snappy body: {e}")))
}

fn from_protobuf(request: PushRequest, now: u64) -> Result<Vec<LogRecord>, IngestError> {
    let mut records = Vec::new();
    for stream in request.streams {
        let labels = parse_labels(&stream.labels)?;
        let resource = Arc::new(resource(&labels));
        for entry in stream.entries {
            let time = entry
                .timestamp
                .map(|t| {
                    (t.seconds.max(0) as u64)
                        .saturating_mul(1_000_000_000)
                        .saturating_add(t.nanos.max(0) as u64)
                })
                .unwrap_or(0);
            let metadata = entry
                .structured_metadata
                .into_iter()
                .map(|pair| (pair.name, pair.value))
                .collect();
            records.push(record(&labels, &resource, time, entry.line, metadata, now));
        }
    }
    Ok(records)
}

fn from_json(request: JsonPush, now: u64) -> Result<Vec<LogRecord>, IngestError> {
    let mut records = Vec::new();
    for stream in request.streams {
        check_labels(&stream.stream)?;
        let resource = Arc::new(resource(&stream.stream));
        for entry in stream.values {
            let (time, line, metadata) = match entry {
                JsonEntry::Line(time, line) => (time, line, BTreeMap::new()),
                JsonEntry::WithMetadata(time, line, metadata) => (time, line, metadata),
            };
            let time = match time {
                JsonTime::Number(n) => n,
                JsonTime::Text(text) => text.trim().parse::<u64>().map_err(|_| {
                    IngestError::Malformed(format!(
                        "invalid timestamp {text:?}: send unix nanoseconds as a string"
                    ))
                })?,
            };
            let metadata = metadata.into_iter().collect();
            records.push(record(&stream.stream, &resource, time, line, metadata, now));
        }
    }
    Ok(records)
}

/// Parses `{name="value", ...}` with the PromQL parser (a stream's labels
/// are a selector of equality matchers).
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, IngestError> {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::{Expr, parse};
    let invalid = |why: &str| {
        IngestError::Malformed(format!(
            "invalid stream labels {text:?}: {why} (write {{name=\"value\", ...}})"
        ))
    };
    let parsed = std::panic::catch_unwind(|| parse(text)).map_err(|_| invalid("unreadable"))?;
    let selector = match parsed {
        Ok(Expr::VectorSelector(selector)) if selector.name.is_none() => selector,
        Ok(_) => return Err(invalid("not a label set")),
        Err(why) => return Err(invalid(&why)),
    };
    if !selector.matchers.or_matchers.is_empty() {
        return Err(invalid("`or` in a label set"));
    }
    let mut labels = BTreeMap::new();
    for matcher in selector.matchers.matchers {
        if !matches!(matcher.op, MatchOp::Equal) {
            return Err(invalid("labels are name=\"value\" pairs"));
        }
        if labels.insert(matcher.name.clone(), matcher.value).is_some() {
            return Err(invalid(&format!(
                "the label {:?} is given twice",
                matcher.name
            )));
        }
    }
    check_labels(&labels)?;
    Ok(labels)
}

/// Loki refuses a stream without labels.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), IngestError> {
    if labels.values().all(String::is_empty) {
        return Err(IngestError::Malformed(
            "error at least one label pair is required per stream".into(),
        ));
    }
    Ok(())
}

/// The resource of a stream: its service and its other labels.
fn resource(labels: &BTreeMap<String, String>) -> Resource {
    let named = |name: &str| labels.get(name).filter(|v| !v.is_empty());
    let service = named("service_name")
        .or_else(|| SERVICE_NAME_FALLBACKS.iter().find_map(|name| named(name)))
        .cloned()
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
    Resource {
        service,
        attributes: labels
            .iter()
            .filter(|(name, value)| *name != "service_name" && !value.is_empty())
            .map(|(name, value)| KeyValue {
                key: name.into(),
                value: AttrValue::Str(value.into()),
            })
            .collect(),
    }
}

fn record(
    labels: &BTreeMap<String, String>,
    resource: &Arc<Resource>,
    time: u64,
    line: String,
    metadata: Vec<(String, String)>,
    now: u64,
) -> LogRecord {
    let level = LEVEL_LABELS.iter().find_map(|name| {
        metadata
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
            .or_else(|| labels.get(*name))
    });
    LogRecord {
        time_unix_nano: if time == 0 { now } else { time },
        severity: level.map(|l| Severity::from_text(l)).unwrap_or_default(),
        severity_text: level.cloned().unwrap_or_default(),
        body: line,
        trace_id: None,
        span_id: None,
        resource: resource.clone(),
        scope: Arc::new(Scope::default()),
        attributes: metadata
            .into_iter()
            .map(|(key, value)| KeyValue {
                key: key.into(),
                value: AttrValue::Str(value.into()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_labels_become_the_resource() {
        let labels = parse_labels(r#"{app="shop", env="prod", level="warn"}"#).unwrap();
        let shop = Arc::new(resource(&labels));
        assert_eq!(shop.service, "shop");
        assert_eq!(shop.attributes.len(), 3);
        let record = record(&labels, &shop, 5, "hi".into(), vec![], 9);
        assert_eq!(record.severity.level(), "warn");
        assert_eq!(record.time_unix_nano, 5);
        let labels = parse_labels(r#"{service_name="pay", job="x"}"#).unwrap();
        let resource = resource(&labels);
        assert_eq!(resource.service, "pay");
        assert!(
            resource
                .attributes
                .iter()
                .all(|kv| kv.key != "service_name")
        );
    }

    #[test]
    fn bad_labels_are_refused() {
        for bad in [
            r#"{a=~"x"}"#,
            "nonsense{",
            r#"{a="1", a="2"}"#,
            r#"up{a="b"}"#,
            "{}",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_entries_with_and_without_metadata() {
        let request: JsonPush = serde_json::from_str(
            r#"{"streams":[{"stream":{"job":"a"},"values":[["7","one"],["8","two",{"trace_id":"t","level":"error"}]]}]}"#,
        )
        .unwrap();
        let records = from_json(request, 1).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].attributes.len(), 2);
        assert_eq!(records[1].severity.level(), "error");
        assert_eq!(records[0].service(), "a");
    }
}
