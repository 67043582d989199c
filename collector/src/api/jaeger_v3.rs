//! Jaeger's v3 query API (`/api/v3/...`, the HTTP gateway of its
//! `api_v3.QueryService`), which Jaeger v2's UI and Grafana's Jaeger data
//! source (its gRPC mode) use: services, operations, trace search and trace
//! by id, traces in OTLP/JSON wrapped as `{"result": {"resourceSpans": ...}}`.
//!
//! Errors are Jaeger's gateway errors: `{"error": {"httpCode", "message"}}`
//! with the same status; no trace found is a 404, as in Jaeger.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::ApiState;
use super::params::{parse_go_duration, parse_trace_id};
use crate::ingest::otlp_out::traces_json;
use crate::model::{Span, SpanKind};
use crate::query::pool::QueryRefused;
use crate::query::traces::{TraceQuery, TraceQueryError, search};

/// How many traces a search returns without `query.search_depth`.
const DEFAULT_SEARCH_DEPTH: usize = 20;
const MAX_SEARCH_DEPTH: usize = 1_500;

/// A gateway error in Jaeger's shape.
#[derive(Debug)]
pub struct GatewayError {
    status: StatusCode,
    message: String,
}

impl GatewayError {
    fn malformed(parameter: &str, why: impl std::fmt::Display) -> Self {
        GatewayError {
            status: StatusCode::BAD_REQUEST,
            message: format!("malformed parameter {parameter}: {why}"),
        }
    }

    fn no_traces() -> Self {
        GatewayError {
            status: StatusCode::NOT_FOUND,
            message: "No traces found".into(),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"httpCode": self.status.as_u16(), "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<QueryRefused> for GatewayError {
    fn from(refused: QueryRefused) -> Self {
        let status = match refused {
            QueryRefused::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
            QueryRefused::Busy { .. } | QueryRefused::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        GatewayError {
            status,
            message: refused.to_string(),
        }
    }
}

impl From<TraceQueryError> for GatewayError {
    fn from(error: TraceQueryError) -> Self {
        match error {
            TraceQueryError::Refused(refused) => refused.into(),
            TraceQueryError::Store(error) => error.into(),
        }
    }
}

impl From<crate::store::StoreError> for GatewayError {
    fn from(error: crate::store::StoreError) -> Self {
        tracing::error!(%error, "Jaeger v3 query failed");
        GatewayError {
            status: if error.is_unavailable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            },
            message: error.to_string(),
        }
    }
}

type GatewayResult = Result<Json<Value>, GatewayError>;

/// The v3 routes, merged into the API router.
pub fn router() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/traces/{trace_id}", get(get_trace))
}

async fn services(State(state): State<Arc<ApiState>>) -> GatewayResult {
    Ok(Json(json!({"services": state.stores.traces.services()})))
}

async fn operations(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<HashMap<String, String>>,
) -> GatewayResult {
    let service = params.get("service").map_or("", String::as_str);
    let kind = match params.get("span_kind").filter(|k| !k.is_empty()) {
        Some(kind) => Some(
            SpanKind::parse(kind)
                .ok_or_else(|| GatewayError::malformed("span_kind", format!("{kind:?}")))?,
        ),
        None => None,
    };
    let operations: Vec<Value> = state
        .stores
        .traces
        .operations(service)
        .into_iter()
        .filter(|(_, k)| kind.is_none_or(|kind| kind == *k))
        .map(|(name, kind)| {
            // Jaeger reports an operation without a kind as internal.
            let kind = match kind {
                SpanKind::Unspecified => SpanKind::Internal,
                other => other,
            };
            json!({"name": name, "spanKind": kind.as_str()})
        })
        .collect();
    Ok(Json(json!({"operations": operations})))
}

/// The traces as one `TracesData` under `result`.
fn result(traces: &[Vec<Span>]) -> GatewayResult {
    if traces.is_empty() {
        return Err(GatewayError::no_traces());
    }
    let resource_spans: Vec<Value> = traces
        .iter()
        .flat_map(|spans| match traces_json(spans)["resourceSpans"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .collect();
    Ok(Json(json!({"result": {"resourceSpans": resource_spans}})))
}

/// An RFC 3339 time (Go's `RFC3339Nano`) in unix nanoseconds.
fn rfc3339(parameter: &str, text: &str) -> Result<u64, GatewayError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| GatewayError::malformed(parameter, e))?
        .timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| GatewayError::malformed(parameter, "out of range"))
}

fn bool_param(params: &HashMap<String, String>, name: &str) -> Result<(), GatewayError> {
    match params.get(name).map(String::as_str) {
        None | Some("" | "true" | "false" | "1" | "0") => Ok(()),
        Some(other) => Err(GatewayError::malformed(
            name,
            format!("{other:?} is not a boolean"),
        )),
    }
}

async fn get_trace(
    State(state): State<Arc<ApiState>>,
    Path(trace_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> GatewayResult {
    let id = parse_trace_id(&trace_id).map_err(|e| GatewayError::malformed("trace_id", e))?;
    // The time window only narrows where Jaeger looks; a read by id is exact.
    for name in ["start_time", "end_time"] {
        if let Some(text) = params.get(name).filter(|t| !t.is_empty()) {
            rfc3339(name, text)?;
        }
    }
    bool_param(&params, "raw_traces")?;
    let store = state.stores.traces.clone();
    let read = state.queries.run_lookup(move || store.trace(&id)).await??;
    let traces: Vec<Vec<Span>> = std::iter::once(read.spans)
        .filter(|spans| !spans.is_empty())
        .collect();
    result(&traces)
}

async fn find_traces(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<HashMap<String, String>>,
) -> GatewayResult {
    let get = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let (Some(min), Some(max)) = (get("query.start_time_min"), get("query.start_time_max")) else {
        return Err(GatewayError {
            status: StatusCode::BAD_REQUEST,
            message: "query.start_time_min and query.start_time_max are required".into(),
        });
    };
    let start_nanos = rfc3339("query.start_time_min", min)?;
    let end_nanos = rfc3339("query.start_time_max", max)?;
    let duration = |name: &str| {
        get(name)
            .map(|v| parse_go_duration(v).map_err(|e| GatewayError::malformed(name, e)))
            .transpose()
    };
    let depth_name = if get("query.search_depth").is_some() {
        "query.search_depth"
    } else {
        "query.num_traces"
    };
    let limit = match get(depth_name) {
        Some(v) => v
            .parse::<usize>()
            .map_err(|e| GatewayError::malformed(depth_name, e))?
            .clamp(1, MAX_SEARCH_DEPTH),
        None => DEFAULT_SEARCH_DEPTH,
    };
    bool_param(&params, "query.raw_traces")?;
    let mut tags = Vec::new();
    if let Some(attributes) = get("query.attributes") {
        let map: HashMap<String, Value> = serde_json::from_str(attributes)
            .map_err(|e| GatewayError::malformed("query.attributes", e))?;
        for (key, value) in map {
            let value = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            tags.push((key, value));
        }
        tags.sort();
    }
    let query = TraceQuery {
        service: get("query.service_name").map(str::to_string),
        operation: get("query.operation_name").map(str::to_string),
        span_kind: None,
        tags,
        min_duration_nanos: duration("query.duration_min")?,
        max_duration_nanos: duration("query.duration_max")?,
        start_nanos,
        end_nanos,
        limit,
        deadline: state.queries.deadline(),
    };
    let store = state.stores.traces.clone();
    let found = state
        .queries
        .run(move || search(store.as_ref(), &query))
        .await??;
    result(&found.traces)
}
