//! Grafana Tempo's HTTP query API, at the root and under `/tempo`. Tempo's
//! `/api/traces/{id}` is Jaeger's path too: at the root it answers Tempo's
//! protobuf when asked for it (`Accept: application/protobuf`, as Grafana
//! asks) and Jaeger's JSON otherwise; under `/tempo` everything is Tempo's.
//!
//! Trace by id (`/api/traces/{id}`, `/api/v2/traces/{id}`) in OTLP protobuf
//! for `Accept: application/protobuf` (what Grafana asks for), else OTLP/JSON
//! (`{"batches": [...]}`, v2 `{"trace": {"resourceSpans": [...]}}`); search
//! with TraceQL (`q`, the subset of `query::traceql`) or tags (`tags`,
//! `minDuration`, `maxDuration`); tag names and values (v1 and v2, `q`
//! filtering v2 values); `/api/echo`, the data source's health check.
//!
//! Errors are Tempo's: plain text with the status, 400 for a query outside
//! the subset, naming the part.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::ApiState;
use super::params::{parse_go_duration, parse_trace_id};
use crate::ingest::otlp_out::{trace_by_id_response_protobuf, traces_json, traces_protobuf};
use crate::model::{Span, now_unix_nano};
use crate::query::pool::QueryRefused;
use crate::query::traceql::{
    AttrScope, Condition, Field, Literal, Op, Spanset, TraceQl, TraceQlError, root_index,
    values_in_trace,
};
use crate::query::traces::{TraceQuery, TraceQueryError, search_with};

/// Where the Tempo API is mounted.
pub const PREFIX: &str = "/tempo";
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1_000;
/// Spans shown per spanset by default (Tempo's `spss`).
const DEFAULT_SPANS_PER_SPANSET: usize = 3;
/// How many of the newest traces tag names and values are read from.
const TAG_SAMPLE_TRACES: usize = 200;

/// An error answer as Tempo gives it: plain text.
#[derive(Debug)]
pub struct TempoError {
    status: StatusCode,
    message: String,
}

impl TempoError {
    fn bad_request(message: impl Into<String>) -> Self {
        TempoError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for TempoError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(message = %self.message, "Tempo API query failed");
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.message,
        )
            .into_response()
    }
}

impl From<QueryRefused> for TempoError {
    fn from(refused: QueryRefused) -> Self {
        let status = match refused {
            QueryRefused::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
            QueryRefused::Busy { .. } | QueryRefused::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        TempoError {
            status,
            message: refused.to_string(),
        }
    }
}

impl From<TraceQueryError> for TempoError {
    fn from(error: TraceQueryError) -> Self {
        match error {
            TraceQueryError::Refused(refused) => refused.into(),
            TraceQueryError::Store(error) => TempoError {
                status: if error.is_unavailable() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                },
                message: error.to_string(),
            },
        }
    }
}

impl From<crate::store::StoreError> for TempoError {
    fn from(error: crate::store::StoreError) -> Self {
        TraceQueryError::Store(error).into()
    }
}

impl From<TraceQlError> for TempoError {
    fn from(error: TraceQlError) -> Self {
        TempoError::bad_request(error.to_string())
    }
}

type TempoResult = Result<Response, TempoError>;

/// The Tempo routes: all of them under [`PREFIX`], and those whose paths
/// no other API has at the root as well (`/api/traces/{id}` is Jaeger's
/// there but for protobuf, see `jaeger.rs`), so a data source pointing at
/// the root works too.
pub fn router() -> Router<Arc<ApiState>> {
    let shared = Router::new()
        .route("/api/echo", get(|| async { "echo" }))
        .route("/api/v2/traces/{trace_id}", get(trace_v2))
        .route("/api/search", get(search))
        .route("/api/search/tags", get(tag_names_v1))
        .route("/api/v2/search/tags", get(tag_names_v2))
        .route("/api/search/tag/{tag}/values", get(tag_values_v1))
        .route("/api/v2/search/tag/{tag}/values", get(tag_values_v2));
    let prefixed = shared
        .clone()
        .route("/ready", get(|| async { "ready" }))
        .route("/api/traces/{trace_id}", get(trace_v1));
    Router::new().nest(PREFIX, prefixed).merge(shared)
}

/// Whether the client asks for protobuf (Grafana's Tempo data source does).
pub fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/protobuf"))
}

async fn read_trace(state: &ApiState, trace_id: &str) -> Result<Vec<Span>, TempoError> {
    let id = parse_trace_id(trace_id).map_err(TempoError::bad_request)?;
    let store = state.stores.traces.clone();
    let read = state.queries.run_lookup(move || store.trace(&id)).await??;
    if read.spans.is_empty() {
        return Err(TempoError {
            status: StatusCode::NOT_FOUND,
            message: format!("trace not found: {trace_id}"),
        });
    }
    Ok(read.spans)
}

fn protobuf(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/protobuf")], bytes).into_response()
}

/// Tempo's v1 trace: `tempopb.Trace`, whose protobuf is OTLP `TracesData`.
pub async fn trace_v1(
    State(state): State<Arc<ApiState>>,
    Path(trace_id): Path<String>,
    headers: HeaderMap,
) -> TempoResult {
    let spans = read_trace(&state, &trace_id).await?;
    if wants_protobuf(&headers) {
        return Ok(protobuf(traces_protobuf(&spans)));
    }
    let mut data = traces_json(&spans);
    let batches = data["resourceSpans"].take();
    Ok(Json(json!({ "batches": batches })).into_response())
}

async fn trace_v2(
    State(state): State<Arc<ApiState>>,
    Path(trace_id): Path<String>,
    headers: HeaderMap,
) -> TempoResult {
    let spans = read_trace(&state, &trace_id).await?;
    if wants_protobuf(&headers) {
        return Ok(protobuf(trace_by_id_response_protobuf(&spans)));
    }
    Ok(Json(json!({ "trace": traces_json(&spans) })).into_response())
}

type Params = Vec<(String, String)>;

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

fn invalid(name: &str, why: impl std::fmt::Display) -> TempoError {
    TempoError::bad_request(format!("invalid parameter {name}: {why}"))
}

fn number(params: &Params, name: &str) -> Result<Option<u64>, TempoError> {
    param(params, name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| invalid(name, format!("{v:?} is not a number")))
        })
        .transpose()
}

/// The search's time range: `start`/`end` in unix seconds, all of time
/// without them.
fn time_range(params: &Params) -> Result<(u64, u64), TempoError> {
    let start = number(params, "start")?.map_or(0, |s| s.saturating_mul(1_000_000_000));
    let end = number(params, "end")?.map_or_else(now_unix_nano, |s| {
        // `end` is a whole second: include that second.
        s.saturating_add(1).saturating_mul(1_000_000_000)
    });
    if start > end {
        return Err(invalid("start", "it is after end"));
    }
    Ok((start, end))
}

/// The query of a search: TraceQL `q`, or the tags search (`tags` in
/// logfmt, `minDuration`, `maxDuration` on the trace's duration) as the
/// TraceQL it means.
fn search_query(params: &Params) -> Result<TraceQl, TempoError> {
    if let Some(q) = param(params, "q") {
        return Ok(TraceQl::parse(q)?);
    }
    let mut conditions = Vec::new();
    if let Some(tags) = param(params, "tags") {
        for (key, value) in logfmt(tags).map_err(|e| invalid("tags", e))? {
            let field = match key.as_str() {
                "name" => Field::Name,
                "status.code" | "status" => Field::Status,
                "service.name" => Field::Attribute(AttrScope::Resource, key),
                _ => Field::Attribute(AttrScope::Any, key),
            };
            let value = match field {
                Field::Status => Literal::Status(match value.as_str() {
                    "error" | "2" => crate::model::StatusCode::Error,
                    "ok" | "1" => crate::model::StatusCode::Ok,
                    _ => crate::model::StatusCode::Unset,
                }),
                _ => Literal::Str(value),
            };
            conditions.push(compare(field, Op::Eq, value));
        }
    }
    for (name, op) in [("minDuration", Op::Ge), ("maxDuration", Op::Le)] {
        if let Some(v) = param(params, name) {
            let nanos = parse_go_duration(v).map_err(|e| invalid(name, e))?;
            conditions.push(compare(Field::TraceDuration, op, Literal::Duration(nanos)));
        }
    }
    let condition = conditions
        .into_iter()
        .reduce(|a, b| Condition::And(Box::new(a), Box::new(b)))
        .unwrap_or(Condition::True);
    Ok(TraceQl {
        root: Spanset::Filter(condition),
    })
}

fn compare(field: Field, op: Op, value: Literal) -> Condition {
    Condition::Compare {
        field,
        op,
        value,
        regex: None,
    }
}

/// Splits `key=value key2="value 2"` (logfmt, as Tempo's `tags` takes it).
fn logfmt(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("{rest:?} is not key=value"))?;
        let key = rest[..eq].trim().to_string();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("{rest:?} is not key=value"));
        }
        rest = &rest[eq + 1..];
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let close = quoted
                .find('"')
                .ok_or_else(|| format!("the value of {key} is not closed"))?;
            let value = quoted[..close].to_string();
            rest = &quoted[close + 1..];
            value
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let value = rest[..end].to_string();
            rest = &rest[end..];
            value
        };
        pairs.push((key, value));
        rest = rest.trim_start();
    }
    Ok(pairs)
}

/// The narrowing search a TraceQL query runs through: its time range, the
/// service it pins, `limit` traces.
fn narrowing(
    query: &TraceQl,
    (start_nanos, end_nanos): (u64, u64),
    limit: usize,
    state: &ApiState,
) -> TraceQuery {
    TraceQuery {
        service: query.required_service(),
        start_nanos,
        end_nanos,
        limit,
        deadline: state.queries.deadline(),
        ..TraceQuery::default()
    }
}

async fn search(State(state): State<Arc<ApiState>>, Query(params): Query<Params>) -> TempoResult {
    let query = search_query(&params)?;
    let limit = match number(&params, "limit")? {
        Some(0) => return Err(invalid("limit", "it must be positive")),
        Some(n) => (n as usize).min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    let spss = match number(&params, "spss")? {
        Some(0) | None => DEFAULT_SPANS_PER_SPANSET,
        Some(n) => n as usize,
    };
    let range = time_range(&params)?;
    let narrow = narrowing(&query, range, limit, &state);
    let store = state.stores.traces.clone();
    let (traces, inspected) = state
        .queries
        .run(move || {
            let mut inspected = 0u64;
            let found = search_with(store.as_ref(), &narrow, |spans| {
                inspected += 1;
                !query.evaluate(spans).is_empty()
            })?;
            // Newest first, at most `limit`: only these are summarised.
            let traces: Vec<Value> = found
                .traces
                .iter()
                .map(|spans| trace_summary(spans, &query.evaluate(spans), &query, spss))
                .collect();
            Ok::<_, TraceQueryError>((traces, inspected))
        })
        .await??;
    Ok(Json(json!({
        "traces": traces,
        "metrics": {"inspectedTraces": inspected, "completedJobs": 1, "totalJobs": 1},
    }))
    .into_response())
}

/// A trace id as Tempo writes it in search answers: hex, leading zeros cut.
fn tempo_trace_id(id: &[u8; 16]) -> String {
    let hex = hex::encode(id);
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() { "0" } else { trimmed }.to_string()
}

/// One search hit in Tempo's shape: the trace's root, start and duration,
/// and one spanset of the matched spans (at most `spss` of them, with the
/// attributes the query reads).
fn trace_summary(spans: &[Span], selected: &[usize], query: &TraceQl, spss: usize) -> Value {
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(0);
    let root = root_index(spans).map(|i| &spans[i]);
    let fields: Vec<Field> = query
        .fields()
        .into_iter()
        .filter(|f| !matches!(f, Field::Name | Field::Duration))
        .collect();
    let values: Vec<_> = fields.iter().map(|f| values_in_trace(f, spans)).collect();
    let shown: Vec<Value> = selected
        .iter()
        .take(spss)
        .map(|&i| {
            let span = &spans[i];
            let attributes: Vec<Value> = fields
                .iter()
                .zip(&values)
                .filter_map(|(field, values)| {
                    let value = values[i].first()?;
                    let key = match field {
                        Field::Attribute(_, name) => name.clone(),
                        other => other.identifier(),
                    };
                    Some(json!({"key": key, "value": any_value_json(value)}))
                })
                .collect();
            let mut out = json!({
                "spanID": hex::encode(span.span_id),
                "name": span.name,
                "startTimeUnixNano": span.start_unix_nano.to_string(),
                "durationNanos": span.duration_nanos().to_string(),
            });
            if !attributes.is_empty() {
                out["attributes"] = Value::from(attributes);
            }
            out
        })
        .collect();
    let mut summary = json!({
        "traceID": tempo_trace_id(&spans[0].trace_id),
        "rootServiceName": root.map_or("<root span not yet received>", |r| r.service()),
        "startTimeUnixNano": start.to_string(),
        "spanSets": [{"spans": shown, "matched": selected.len()}],
    });
    if let Some(root) = root {
        summary["rootTraceName"] = Value::from(root.name.as_str());
    }
    let duration_ms = end.saturating_sub(start) / 1_000_000;
    if duration_ms > 0 {
        summary["durationMs"] = Value::from(duration_ms);
    }
    summary["spanSet"] = summary["spanSets"][0].clone();
    summary
}

/// A TraceQL value as an OTLP/JSON `AnyValue`.
fn any_value_json(value: &crate::query::traceql::Value) -> Value {
    use crate::query::traceql::Value as V;
    match value {
        V::Int(i) => json!({"intValue": i.to_string()}),
        V::Float(f) => json!({"doubleValue": f}),
        V::Bool(b) => json!({"boolValue": b}),
        other => json!({"stringValue": other.text()}),
    }
}

/// The newest traces (in the request's range, matching its `q` when given
/// and valid — Tempo ignores a filter it cannot read) that tag names and
/// values are read from, with the spans the filter selects in each.
async fn tag_sample(
    state: &ApiState,
    params: &Params,
) -> Result<Vec<(Vec<Span>, Vec<usize>)>, TempoError> {
    let query = param(params, "q")
        .and_then(|q| TraceQl::parse(q).ok())
        .unwrap_or_else(|| TraceQl {
            root: Spanset::Filter(Condition::True),
        });
    let narrow = narrowing(&query, time_range(params)?, TAG_SAMPLE_TRACES, state);
    let store = state.stores.traces.clone();
    let sample = state
        .queries
        .run(move || {
            let found = search_with(store.as_ref(), &narrow, |spans| {
                !query.evaluate(spans).is_empty()
            })?;
            Ok::<_, TraceQueryError>(
                found
                    .traces
                    .into_iter()
                    .map(|spans| {
                        let selected = query.evaluate(&spans);
                        (spans, selected)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .await??;
    Ok(sample)
}

/// The intrinsics this API evaluates, as Tempo's v2 tag API lists them.
const INTRINSICS: [&str; 8] = [
    "duration",
    "kind",
    "name",
    "rootName",
    "rootServiceName",
    "status",
    "statusMessage",
    "traceDuration",
];

/// Span and resource attribute names of the sample, sorted.
fn attribute_names(sample: &[(Vec<Span>, Vec<usize>)]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut span, mut resource) = (BTreeSet::new(), BTreeSet::new());
    for (spans, selected) in sample {
        for &i in selected {
            span.extend(spans[i].attributes.iter().map(|kv| kv.key.to_string()));
            resource.insert("service.name".to_string());
            resource.extend(
                spans[i]
                    .resource
                    .attributes
                    .iter()
                    .map(|kv| kv.key.to_string()),
            );
        }
    }
    (span, resource)
}

fn scope_param(params: &Params) -> Result<&str, TempoError> {
    match param(params, "scope").unwrap_or("all") {
        scope @ ("all" | "span" | "resource" | "intrinsic" | "none") => Ok(scope),
        other => Err(invalid(
            "scope",
            format!("{other:?} is not one of all, span, resource, intrinsic"),
        )),
    }
}

async fn tag_names_v1(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<Params>,
) -> TempoResult {
    let scope = scope_param(&params)?;
    let (span, resource) = attribute_names(&tag_sample(&state, &params).await?);
    let mut names: BTreeSet<String> = BTreeSet::new();
    if matches!(scope, "all" | "none" | "span") {
        names.extend(span);
    }
    if matches!(scope, "all" | "none" | "resource") {
        names.extend(resource);
    }
    if scope == "intrinsic" {
        names.extend(INTRINSICS.iter().map(|s| s.to_string()));
    }
    Ok(Json(json!({"tagNames": names, "metrics": {}})).into_response())
}

async fn tag_names_v2(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<Params>,
) -> TempoResult {
    let scope = scope_param(&params)?;
    let (span, resource) = attribute_names(&tag_sample(&state, &params).await?);
    let mut scopes = Vec::new();
    if matches!(scope, "all" | "none" | "resource") {
        scopes.push(json!({"name": "resource", "tags": resource}));
    }
    if matches!(scope, "all" | "none" | "span") {
        scopes.push(json!({"name": "span", "tags": span}));
    }
    if matches!(scope, "all" | "intrinsic") {
        scopes.push(json!({"name": "intrinsic", "tags": INTRINSICS}));
    }
    Ok(Json(json!({"scopes": scopes, "metrics": {}})).into_response())
}

/// Grafana encodes the tag in the path twice; the router decodes it once.
fn decoded_tag(tag: &str) -> String {
    if !tag.contains('%') {
        return tag.to_string();
    }
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("t={tag}"))
        .ok()
        .and_then(|mut pairs| pairs.pop())
        .map_or_else(|| tag.to_string(), |(_, v)| v)
}

/// The distinct values of `field` on the sample's selected spans with
/// their types, most frequent first.
fn distinct_values(sample: &[(Vec<Span>, Vec<usize>)], field: &Field) -> Vec<(String, String)> {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (spans, selected) in sample {
        let values = values_in_trace(field, spans);
        for &i in selected {
            for value in &values[i] {
                *counts
                    .entry((value.type_name().to_string(), value.text()))
                    .or_default() += 1;
            }
        }
    }
    let mut values: Vec<_> = counts.into_iter().collect();
    values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    values.into_iter().map(|(v, _)| v).collect()
}

async fn tag_values_v1(
    State(state): State<Arc<ApiState>>,
    Path(tag): Path<String>,
    Query(params): Query<Params>,
) -> TempoResult {
    let tag = decoded_tag(&tag);
    let field = match tag.as_str() {
        "status.code" | "status" => Field::Status,
        "name" => Field::Name,
        "service.name" => Field::Attribute(AttrScope::Resource, tag.clone()),
        _ => Field::Attribute(AttrScope::Any, tag.clone()),
    };
    let sample = tag_sample(&state, &params).await?;
    let values: Vec<String> = distinct_values(&sample, &field)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    Ok(Json(json!({"tagValues": values, "metrics": {}})).into_response())
}

async fn tag_values_v2(
    State(state): State<Arc<ApiState>>,
    Path(tag): Path<String>,
    Query(params): Query<Params>,
) -> TempoResult {
    let tag = decoded_tag(&tag);
    let field = Field::parse(&tag).map_err(TempoError::from)?;
    let sample = tag_sample(&state, &params).await?;
    let mut values: Vec<Value> = distinct_values(&sample, &field)
        .into_iter()
        .map(|(kind, value)| json!({"type": kind, "value": value}))
        .collect();
    // Keyword intrinsics list every keyword, seen or not, as Tempo does.
    if values.is_empty() && field == Field::Status {
        values = ["error", "ok", "unset"]
            .iter()
            .map(|v| json!({"type": "keyword", "value": v}))
            .collect();
    }
    Ok(Json(json!({"tagValues": values, "metrics": {}})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_tags() {
        assert_eq!(
            logfmt(r#"service.name="cart service" http.status_code=500"#).unwrap(),
            vec![
                ("service.name".to_string(), "cart service".to_string()),
                ("http.status_code".to_string(), "500".to_string())
            ]
        );
        assert!(logfmt("novalue").is_err());
        assert!(logfmt(r#"a="open"#).is_err());
    }

    #[test]
    fn trace_ids_lose_leading_zeros() {
        let mut id = [0u8; 16];
        id[15] = 0xab;
        assert_eq!(tempo_trace_id(&id), "ab");
    }

    #[test]
    fn double_encoded_tags_are_decoded() {
        assert_eq!(decoded_tag("span.http.method"), "span.http.method");
        assert_eq!(decoded_tag("span.a%2Fb"), "span.a/b");
    }
}
