//! The Jaeger query API (`/api/services`, `/api/traces`, ...) with Jaeger's
//! JSON shapes, so Grafana's Jaeger data source and the Jaeger UI work as is.
//!
//! Every answer is the Jaeger envelope `{data, total, limit, offset, errors}`;
//! failures put `{code, msg}` into `errors`.
//!
//! Beyond Jaeger: `/api/traces` searches every service when given none, and
//! `/api/tags` lists the tag keys and values of the newest matching traces
//! (the search form's suggestions).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::ApiState;
use super::params::{parse_go_duration, parse_lookback, parse_trace_id};
use crate::model::now_unix_nano as now_nanos;
use crate::model::{AttrValue, KeyValue, Resource, Span, SpanKind};
use crate::query::pool::{Deadline, QueryRefused};
use crate::query::traces::{TraceQuery, TraceQueryError, search, tag_values};
use crate::store::StoreError;

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1_500;
const DEFAULT_DEPENDENCY_LOOKBACK_MS: u64 = 24 * 3_600 * 1_000;
/// How many of the newest matching traces `/api/tags` reads by default:
/// enough to see the common tags, few enough to answer at once.
const DEFAULT_TAG_SAMPLE: usize = 50;

/// An error answer in Jaeger's shape.
#[derive(Debug)]
pub struct JaegerError {
    status: StatusCode,
    message: String,
}

impl JaegerError {
    fn bad_request(message: impl Into<String>) -> Self {
        JaegerError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        JaegerError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "QueryError");
        JaegerError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: error.to_string(),
        }
    }
}

impl From<QueryRefused> for JaegerError {
    fn from(refused: QueryRefused) -> Self {
        match refused {
            QueryRefused::Panicked(_) => JaegerError::internal(refused),
            QueryRefused::Busy { .. } | QueryRefused::Timeout(_) => JaegerError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: refused.to_string(),
            },
        }
    }
}

impl From<StoreError> for JaegerError {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            tracing::warn!(%error, "QueryUnavailable");
            return JaegerError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: error.to_string(),
            };
        }
        JaegerError::internal(error)
    }
}

impl From<TraceQueryError> for JaegerError {
    fn from(error: TraceQueryError) -> Self {
        match error {
            TraceQueryError::Store(error) => error.into(),
            TraceQueryError::Refused(refused) => refused.into(),
        }
    }
}

impl IntoResponse for JaegerError {
    fn into_response(self) -> Response {
        let body = json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": self.status.as_u16(), "msg": self.message}],
        });
        (self.status, Json(body)).into_response()
    }
}

type JaegerResult = Result<Json<Value>, JaegerError>;

fn envelope(data: Vec<Value>) -> Json<Value> {
    let total = data.len();
    Json(json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": null}))
}

/// What a 200 answer says when damaged storage kept some spans back: Jaeger's
/// own partial answers (a trace among several not found) carry an `errors`
/// entry next to `data`, which its UI and Grafana's data source tolerate.
pub const DAMAGED_DATA_WARNING: &str =
    "part of the stored spans is damaged and was skipped: traces or spans may be missing";

/// The envelope of what could be read, with a warning in `errors` when
/// damaged storage kept some of it back.
fn envelope_of_readable(data: Vec<Value>, damaged: bool) -> Json<Value> {
    let mut answer = envelope(data);
    if damaged {
        answer.0["errors"] = json!([{ "msg": DAMAGED_DATA_WARNING }]);
    }
    answer
}

/// The Jaeger routes, merged into the API router.
pub fn router() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/services", get(services))
        .route(
            "/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/api/operations", get(operations))
        .route("/api/traces", get(find_traces))
        .route("/api/traces/{trace_id}", get(trace_by_id_or_tempo))
        .route("/api/tags", get(tags))
        .route("/api/dependencies", get(dependencies))
}

async fn services(State(state): State<Arc<ApiState>>) -> JaegerResult {
    let services = state.stores.traces.services();
    Ok(envelope(services.into_iter().map(Value::from).collect()))
}

async fn service_operations(
    State(state): State<Arc<ApiState>>,
    Path(service): Path<String>,
) -> JaegerResult {
    let mut names: Vec<String> = state
        .stores
        .traces
        .operations(&service)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    names.dedup();
    Ok(envelope(names.into_iter().map(Value::from).collect()))
}

async fn operations(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<HashMap<String, String>>,
) -> JaegerResult {
    let service = params
        .get("service")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| JaegerError::bad_request("parameter 'service' is required"))?;
    let kind = match params.get("spanKind").filter(|s| !s.is_empty()) {
        Some(kind) => Some(SpanKind::parse(kind).ok_or_else(|| {
            JaegerError::bad_request(format!(
                "parameter 'spanKind' is invalid: {kind:?} is not one of server, client, producer, consumer, internal, unspecified"
            ))
        })?),
        None => None,
    };
    let operations = state
        .stores
        .traces
        .operations(service)
        .into_iter()
        .filter(|(_, k)| kind.is_none_or(|kind| kind == *k))
        .map(|(name, kind)| json!({"name": name, "spanKind": kind.as_str()}))
        .collect();
    Ok(envelope(operations))
}

/// `/api/traces/{id}` is Tempo's path too: Grafana's Tempo data source asks
/// for it as protobuf, Jaeger's clients for JSON.
async fn trace_by_id_or_tempo(
    State(state): State<Arc<ApiState>>,
    Path(trace_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if super::tempo::wants_protobuf(&headers) {
        return super::tempo::trace_v1(State(state), Path(trace_id), headers)
            .await
            .into_response();
    }
    trace_by_id(State(state), Path(trace_id))
        .await
        .into_response()
}

async fn trace_by_id(
    State(state): State<Arc<ApiState>>,
    Path(trace_id): Path<String>,
) -> JaegerResult {
    let id = parse_trace_id(&trace_id).map_err(JaegerError::bad_request)?;
    let store = state.stores.traces.clone();
    let read = state.queries.run_lookup(move || store.trace(&id)).await??;
    if read.spans.is_empty() && !read.damaged {
        return Err(JaegerError::not_found(format!(
            "trace {trace_id} not found"
        )));
    }
    let data = (!read.spans.is_empty()).then(|| trace_json(&read.spans));
    Ok(envelope_of_readable(
        data.into_iter().collect(),
        read.damaged,
    ))
}

async fn find_traces(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> JaegerResult {
    let store = state.stores.traces.clone();
    let trace_ids: Vec<&str> = params
        .iter()
        .filter(|(k, v)| k == "traceID" && !v.is_empty())
        .map(|(_, v)| v.as_str())
        .collect();
    if !trace_ids.is_empty() {
        let ids = trace_ids
            .iter()
            .map(|id| parse_trace_id(id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(JaegerError::bad_request)?;
        let traces = state
            .queries
            .run(move || {
                ids.iter()
                    .map(|id| store.trace(id))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await??;
        let damaged = traces.iter().any(|t| t.damaged);
        return Ok(envelope_of_readable(
            traces
                .iter()
                .filter(|t| !t.spans.is_empty())
                .map(|t| trace_json(&t.spans))
                .collect(),
            damaged,
        ));
    }
    let query = trace_query(&params, now_nanos(), state.queries.deadline())?;
    let found = state
        .queries
        .run(move || search(store.as_ref(), &query))
        .await??;
    Ok(envelope_of_readable(
        found.traces.iter().map(|t| trace_json(t)).collect(),
        found.damaged,
    ))
}

/// The tag keys of the spans of the newest matching traces (the search's
/// parameters, `limit` traces, 50 by default), each with its most frequent
/// values, most frequent first: `data: [{key, values}]`.
async fn tags(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> JaegerResult {
    let mut query = trace_query(&params, now_nanos(), state.queries.deadline())?;
    if !params.iter().any(|(k, v)| k == "limit" && !v.is_empty()) {
        query.limit = DEFAULT_TAG_SAMPLE;
    }
    let service = query.service.clone();
    let store = state.stores.traces.clone();
    let found = state
        .queries
        .run(move || search(store.as_ref(), &query))
        .await??;
    let tags = tag_values(&found.traces, service.as_deref());
    Ok(envelope_of_readable(
        tags.into_iter()
            .map(|t| json!({"key": t.key, "values": t.values}))
            .collect(),
        found.damaged,
    ))
}

/// Builds a search from Jaeger's parameters; every invalid one is a 400 that
/// names it. Without `service` it searches every service.
fn trace_query(
    params: &[(String, String)],
    now_nanos: u64,
    deadline: Deadline,
) -> Result<TraceQuery, JaegerError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let invalid = |name: &str, why: String| {
        JaegerError::bad_request(format!("parameter '{name}' is invalid: {why}"))
    };
    let micros = |name: &str| -> Result<Option<u64>, JaegerError> {
        get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map(|us| us.saturating_mul(1_000))
                    .map_err(|_| invalid(name, format!("{v:?} is not a time in microseconds")))
            })
            .transpose()
    };
    let duration = |name: &str| -> Result<Option<u64>, JaegerError> {
        get(name)
            .map(|v| parse_go_duration(v).map_err(|e| invalid(name, e)))
            .transpose()
    };

    let service = get("service").map(str::to_string);
    let end_nanos = micros("end")?.unwrap_or(now_nanos);
    let start_nanos = match (micros("start")?, get("lookback")) {
        (Some(start), _) => start,
        (None, Some(lookback)) if lookback != "custom" => {
            end_nanos.saturating_sub(parse_lookback(lookback).map_err(|e| invalid("lookback", e))?)
        }
        _ => 0,
    };
    if start_nanos > end_nanos {
        return Err(JaegerError::bad_request(
            "parameter 'start' is invalid: it is after 'end'",
        ));
    }
    let min_duration_nanos = duration("minDuration")?;
    let max_duration_nanos = duration("maxDuration")?;
    if let (Some(min), Some(max)) = (min_duration_nanos, max_duration_nanos)
        && min > max
    {
        return Err(JaegerError::bad_request(
            "parameter 'minDuration' is invalid: it is larger than 'maxDuration'",
        ));
    }
    let limit = match get("limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| invalid("limit", format!("{v:?} is not a positive number")))?
            .min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    let span_kind = get("spanKind")
        .map(|k| {
            SpanKind::parse(k)
                .ok_or_else(|| invalid("spanKind", format!("{k:?} is not a span kind")))
        })
        .transpose()?;

    let mut tags = Vec::new();
    if let Some(json) = get("tags") {
        let map: HashMap<String, Value> = serde_json::from_str(json)
            .map_err(|e| invalid("tags", format!("expected a JSON object of strings: {e}")))?;
        for (key, value) in map {
            let value = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            tags.push((key, value));
        }
    }
    for (_, tag) in params.iter().filter(|(k, _)| k == "tag") {
        let (key, value) = tag
            .split_once(':')
            .ok_or_else(|| invalid("tag", format!("{tag:?} is not key:value")))?;
        tags.push((key.to_string(), value.to_string()));
    }
    tags.sort();

    Ok(TraceQuery {
        service,
        operation: get("operation").map(str::to_string),
        span_kind,
        tags,
        min_duration_nanos,
        max_duration_nanos,
        start_nanos,
        end_nanos,
        limit,
        deadline,
    })
}

async fn dependencies(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<HashMap<String, String>>,
) -> JaegerResult {
    let millis = |name: &str, default: u64| -> Result<u64, JaegerError> {
        match params.get(name).filter(|v| !v.is_empty()) {
            Some(v) => v.parse::<u64>().map_err(|_| {
                JaegerError::bad_request(format!(
                    "parameter '{name}' is invalid: {v:?} is not a number of milliseconds"
                ))
            }),
            None => Ok(default),
        }
    };
    let end_ms = millis("endTs", now_nanos() / 1_000_000)?;
    let lookback_ms = millis("lookback", DEFAULT_DEPENDENCY_LOOKBACK_MS)?;
    let end = end_ms.saturating_mul(1_000_000);
    let start = end.saturating_sub(lookback_ms.saturating_mul(1_000_000));
    let store = state.stores.traces.clone();
    let links = state
        .queries
        .run(move || store.dependencies(start, end))
        .await??;
    Ok(envelope(
        links
            .into_iter()
            .map(|l| {
                json!({
                    "parent": l.parent, "child": l.child,
                    "callCount": l.call_count, "errorCount": l.error_count,
                })
            })
            .collect(),
    ))
}

/// One trace in Jaeger's JSON shape: spans with references, tags and logs,
/// and one process per distinct resource.
fn trace_json(spans: &[Span]) -> Value {
    let mut processes: Vec<Arc<Resource>> = Vec::new();
    let mut process_id = |resource: &Arc<Resource>| -> String {
        let index = processes
            .iter()
            .position(|r| Arc::ptr_eq(r, resource) || **r == **resource)
            .unwrap_or_else(|| {
                processes.push(resource.clone());
                processes.len() - 1
            });
        format!("p{}", index + 1)
    };
    let trace_id = hex::encode(spans[0].trace_id);
    let spans_json: Vec<Value> = spans
        .iter()
        .map(|span| {
            let mut references = Vec::new();
            if let Some(parent) = span.parent_span_id {
                references.push(json!({
                    "refType": "CHILD_OF", "traceID": trace_id, "spanID": hex::encode(parent),
                }));
            }
            for link in &span.links {
                references.push(json!({
                    "refType": "FOLLOWS_FROM",
                    "traceID": hex::encode(link.trace_id),
                    "spanID": hex::encode(link.span_id),
                }));
            }
            let tags: Vec<Value> = span
                .attributes
                .iter()
                .chain(span.derived_tags().iter())
                .map(tag_json)
                .collect();
            let logs: Vec<Value> = span
                .events
                .iter()
                .map(|event| {
                    let mut fields =
                        vec![json!({"key": "event", "type": "string", "value": event.name})];
                    fields.extend(event.attributes.iter().map(tag_json));
                    json!({"timestamp": event.time_unix_nano / 1_000, "fields": fields})
                })
                .collect();
            json!({
                "traceID": trace_id,
                "spanID": hex::encode(span.span_id),
                "flags": span.flags,
                "operationName": span.name,
                "references": references,
                "startTime": span.start_unix_nano / 1_000,
                "duration": span.duration_nanos() / 1_000,
                "tags": tags,
                "logs": logs,
                "processID": process_id(&span.resource),
                "warnings": null,
            })
        })
        .collect();
    let processes: serde_json::Map<String, Value> = processes
        .iter()
        .enumerate()
        .map(|(i, resource)| {
            (
                format!("p{}", i + 1),
                json!({
                    "serviceName": resource.service,
                    "tags": resource.attributes.iter().map(tag_json).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    json!({"traceID": trace_id, "spans": spans_json, "processes": processes, "warnings": null})
}

fn tag_json(kv: &KeyValue) -> Value {
    let (kind, value) = match &kv.value {
        AttrValue::Str(s) => ("string", Value::from(s.as_str())),
        AttrValue::Bool(b) => ("bool", Value::from(*b)),
        AttrValue::Int(i) => ("int64", Value::from(*i)),
        AttrValue::Double(d) => ("float64", Value::from(*d)),
        AttrValue::Bytes(b) => ("binary", Value::from(hex::encode(b))),
        AttrValue::Array(_) | AttrValue::Map(_) => {
            ("string", Value::from(kv.value.to_display_string()))
        }
    };
    json!({"key": kv.key, "type": kind, "value": value})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn error_of(pairs: &[(&str, &str)]) -> String {
        trace_query(&params(pairs), 10_000_000_000, Deadline::never())
            .unwrap_err()
            .message
    }

    #[test]
    fn parses_a_full_search() {
        let q = trace_query(
            &params(&[
                ("service", "order"),
                ("operation", "POST /orders"),
                ("tags", r#"{"http.status_code":"500","error":true}"#),
                ("tag", "user.id:42"),
                ("minDuration", "1.5ms"),
                ("maxDuration", "2s"),
                ("start", "1000"),
                ("end", "5000"),
                ("limit", "5"),
            ]),
            0,
            Deadline::never(),
        )
        .unwrap();
        assert_eq!(q.service.as_deref(), Some("order"));
        assert_eq!(q.operation.as_deref(), Some("POST /orders"));
        assert_eq!(
            q.tags,
            vec![
                ("error".into(), "true".into()),
                ("http.status_code".into(), "500".into()),
                ("user.id".into(), "42".into())
            ]
        );
        assert_eq!(q.min_duration_nanos, Some(1_500_000));
        assert_eq!(q.max_duration_nanos, Some(2_000_000_000));
        assert_eq!((q.start_nanos, q.end_nanos), (1_000_000, 5_000_000));
        assert_eq!(q.limit, 5);
    }

    #[test]
    fn lookback_counts_back_from_end() {
        let q = trace_query(
            &params(&[("service", "a"), ("lookback", "1h")]),
            7_200_000_000_000,
            Deadline::never(),
        )
        .unwrap();
        assert_eq!(q.start_nanos, 3_600_000_000_000);
        assert_eq!(q.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn no_service_searches_every_service() {
        let q = trace_query(&params(&[]), 0, Deadline::never()).unwrap();
        assert_eq!(q.service, None);
    }

    #[test]
    fn every_bad_parameter_is_named() {
        assert!(error_of(&[("service", "a"), ("minDuration", "fast")]).contains("'minDuration'"));
        assert!(error_of(&[("service", "a"), ("maxDuration", "1x")]).contains("'maxDuration'"));
        assert!(error_of(&[("service", "a"), ("start", "yesterday")]).contains("'start'"));
        assert!(error_of(&[("service", "a"), ("end", "-1")]).contains("'end'"));
        assert!(error_of(&[("service", "a"), ("limit", "0")]).contains("'limit'"));
        assert!(error_of(&[("service", "a"), ("tags", "{not json")]).contains("'tags'"));
        assert!(error_of(&[("service", "a"), ("tag", "novalue")]).contains("'tag'"));
        assert!(error_of(&[("service", "a"), ("lookback", "soon")]).contains("'lookback'"));
        assert!(error_of(&[("service", "a"), ("start", "9"), ("end", "1")]).contains("'start'"));
        assert!(
            error_of(&[
                ("service", "a"),
                ("minDuration", "2s"),
                ("maxDuration", "1s")
            ])
            .contains("'minDuration'")
        );
    }
}
