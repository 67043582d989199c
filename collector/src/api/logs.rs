//! The native log API: search, histogram, facets, live tail and the logs of
//! a trace. Errors are `{"error": "..."}` with a 4xx for anything the caller
//! can fix (query syntax, parameters, unknown ids).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ApiState;
use super::params::{parse_time, parse_trace_id, query_and_form};
use crate::model::now_unix_nano as now_nanos;
use crate::model::{KeyValue, LogRecord};
use crate::query::logs::{self, Cursor, LogHit, LogQuery, LogQueryError, Order};
use crate::query::pool::{Deadline, QueryRefused};
use crate::store::logs::LEVELS;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;
const DEFAULT_RANGE_NANOS: u64 = 3_600 * 1_000_000_000;
/// Histograms aim for about this many buckets unless `step` is given.
const TARGET_BUCKETS: u64 = 100;
const MAX_BUCKETS: u64 = 10_000;
/// Values per facet, and attribute keys (each with as many values).
const FACET_VALUES: usize = 10;
/// How often a live tail looks for new records (log commits are every
/// 500 ms, so polling faster finds nothing new).
const TAIL_POLL: Duration = Duration::from_millis(500);
/// Records fetched per tail poll, and events a tail subscriber may have
/// unread before it is dropped.
const TAIL_BATCH: usize = 1_000;

/// An error answer of the native API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "LogQueryError");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: error.to_string(),
        }
    }
}

impl From<LogQueryError> for ApiError {
    fn from(error: LogQueryError) -> Self {
        match error {
            LogQueryError::Syntax(_) => ApiError::bad_request(error.to_string()),
            LogQueryError::Store(error) if error.is_unavailable() => {
                tracing::warn!(%error, "QueryUnavailable");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: error.to_string(),
                }
            }
            LogQueryError::Store(error) => ApiError::internal(error),
            LogQueryError::Refused(refused) => refused.into(),
        }
    }
}

impl From<QueryRefused> for ApiError {
    fn from(refused: QueryRefused) -> Self {
        match refused {
            QueryRefused::Panicked(_) => ApiError::internal(refused),
            QueryRefused::Busy { .. } | QueryRefused::Timeout(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: refused.to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The parameters of a log request, from the query string or a POST form
/// (for queries too long for a URL); the last of a repeated name wins.
struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Params, ApiError> {
        let method = request.method().clone();
        let query = request.uri().query().map(str::to_owned);
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid form body: {e}")))?;
        query_and_form(&method, query.as_deref(), &body)
            .map(|pairs| Params(pairs.into_iter().collect()))
            .map_err(ApiError::bad_request)
    }
}

/// The log routes, merged into the API router.
pub fn router() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/logs", get(search).post(search))
        .route("/api/logs/histogram", get(histogram).post(histogram))
        .route("/api/logs/facets", get(facets).post(facets))
        .route("/api/logs/tail", get(tail))
        .route("/api/traces/{trace_id}/logs", get(trace_logs))
}

fn log_query(params: &HashMap<String, String>, deadline: Deadline) -> Result<LogQuery, ApiError> {
    let time = |name: &str| -> Result<Option<u64>, ApiError> {
        params
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                parse_time(v).map_err(|why| {
                    ApiError::bad_request(format!("parameter '{name}' is invalid: {why}"))
                })
            })
            .transpose()
    };
    let end_nanos = time("end")?.unwrap_or_else(now_nanos);
    let start_nanos = time("start")?.unwrap_or(end_nanos.saturating_sub(DEFAULT_RANGE_NANOS));
    if start_nanos > end_nanos {
        return Err(ApiError::bad_request(
            "parameter 'start' must not be after 'end'",
        ));
    }
    let order = match params.get("order").map(String::as_str) {
        None | Some("" | "desc") => Order::NewestFirst,
        Some("asc") => Order::OldestFirst,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "parameter 'order' is '{other}': use desc (newest first, the default) or asc"
            )));
        }
    };
    Ok(LogQuery {
        text: params.get("q").cloned().unwrap_or_default(),
        start_nanos,
        end_nanos,
        order,
        deadline,
    })
}

async fn search(State(state): State<Arc<ApiState>>, Params(params): Params) -> ApiResult {
    let query = log_query(&params, state.queries.deadline())?;
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "parameter 'limit' must be a number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let cursor = params
        .get("cursor")
        .filter(|c| !c.is_empty())
        .map(|c| {
            Cursor::decode(c).ok_or_else(|| {
                ApiError::bad_request("parameter 'cursor' is invalid: pass back a nextCursor")
            })
        })
        .transpose()?;
    let store = state.stores.logs.clone();
    let page = state
        .queries
        .run(move || logs::search(&*store, &query, limit, cursor))
        .await??;
    Ok(with_warnings(
        json!({
            "logs": page.hits.iter().map(log_json).collect::<Vec<_>>(),
            "total": page.total,
            "nextCursor": page.next_cursor.map(Cursor::encode),
        }),
        page.damaged,
    ))
}

async fn histogram(State(state): State<Arc<ApiState>>, Params(params): Params) -> ApiResult {
    let query = log_query(&params, state.queries.deadline())?;
    let range = query.end_nanos - query.start_nanos;
    let step_nanos = match params.get("step") {
        Some(step) => super::params::parse_go_duration(step)
            .ok()
            .filter(|s| *s >= 1_000_000)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "parameter 'step' must be a duration of at least 1ms, e.g. 30s or 5m",
                )
            })?,
        None => nice_step(range / TARGET_BUCKETS),
    };
    if range / step_nanos > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "parameter 'step' gives more than {MAX_BUCKETS} buckets for this range"
        )));
    }
    let store = state.stores.logs.clone();
    let histogram = state
        .queries
        .run(move || logs::histogram(&*store, &query, step_nanos))
        .await??;
    let mut total = 0;
    let buckets: Vec<Value> = histogram
        .buckets
        .iter()
        .enumerate()
        .map(|(i, counts)| {
            let bucket_total: u64 = counts.iter().sum();
            total += bucket_total;
            let by_level: serde_json::Map<String, Value> = LEVELS
                .iter()
                .zip(counts)
                .filter(|(_, count)| **count > 0)
                .map(|(level, count)| (level.to_string(), json!(count)))
                .collect();
            json!({
                "startMs": (histogram.start_nanos + i as u64 * histogram.step_nanos) / 1_000_000,
                "total": bucket_total,
                "counts": by_level,
            })
        })
        .collect();
    Ok(with_warnings(
        json!({
            "stepMs": histogram.step_nanos / 1_000_000,
            "buckets": buckets,
            "total": total,
        }),
        histogram.damaged,
    ))
}

/// What an answer says when damaged storage kept some records back.
pub const DAMAGED_DATA_WARNING: &str =
    "part of the stored logs is damaged and was skipped: records may be missing";

/// An answer of what could be read; with `warnings` (as the Prometheus API
/// has them) when damaged storage kept some of it back.
fn with_warnings(mut answer: Value, damaged: bool) -> Json<Value> {
    if damaged {
        answer["warnings"] = json!([DAMAGED_DATA_WARNING]);
    }
    Json(answer)
}

/// A bucket size from 1s, 5s, 10s, 30s, 1m, 5m, 10m, 30m, 1h, 3h, 6h, 12h,
/// 1d at or above `nanos`.
fn nice_step(nanos: u64) -> u64 {
    const SECONDS: [u64; 13] = [
        1, 5, 10, 30, 60, 300, 600, 1_800, 3_600, 10_800, 21_600, 43_200, 86_400,
    ];
    let seconds = SECONDS
        .iter()
        .copied()
        .find(|s| s * 1_000_000_000 >= nanos)
        .unwrap_or(nanos.div_ceil(86_400 * 1_000_000_000) * 86_400);
    seconds * 1_000_000_000
}

async fn facets(State(state): State<Arc<ApiState>>, Params(params): Params) -> ApiResult {
    let query = log_query(&params, state.queries.deadline())?;
    let store = state.stores.logs.clone();
    let facets = state
        .queries
        .run(move || logs::facets(&*store, &query, FACET_VALUES))
        .await??;
    let values = |values: &[(String, u64)]| -> Vec<Value> {
        values
            .iter()
            .map(|(value, count)| json!({"value": value, "count": count}))
            .collect()
    };
    Ok(with_warnings(
        json!({
            "total": facets.total,
            "services": values(&facets.services),
            "severities": values(&facets.severities),
            "attributes": facets.attributes.iter().map(|attribute| json!({
                "key": attribute.key,
                "count": attribute.count,
                "values": values(&attribute.values),
            })).collect::<Vec<_>>(),
        }),
        facets.damaged,
    ))
}

async fn trace_logs(State(state): State<Arc<ApiState>>, Path(trace_id): Path<String>) -> ApiResult {
    let trace_id = parse_trace_id(&trace_id).map_err(ApiError::bad_request)?;
    let store = state.stores.logs.clone();
    let page = state
        .queries
        .run(move || logs::trace_logs(&*store, &trace_id))
        .await??;
    Ok(with_warnings(
        json!({
            "logs": page.hits.iter().map(log_json).collect::<Vec<_>>(),
        }),
        page.damaged,
    ))
}

/// Server-sent events: `log` for each new matching record, in arrival order;
/// a subscriber that does not keep up gets one `dropped` event and is
/// disconnected, so it never holds more than `TAIL_BATCH` events in memory.
/// The stream ends when the daemon stops (`ApiState::stopping`).
async fn tail(
    State(state): State<Arc<ApiState>>,
    Params(params): Params,
) -> Result<impl IntoResponse, ApiError> {
    let text = params.get("q").cloned().unwrap_or_default();
    let store = state.stores.logs.clone();
    let mut after = {
        let (store, text) = (store.clone(), text.clone());
        state
            .queries
            .run(move || {
                logs::validate(&*store, &text)?;
                logs::last_arrival(&*store)
            })
            .await??
    };
    let (events, stream) = mpsc::channel::<Result<Event, Infallible>>(TAIL_BATCH);
    let mut stopping = state.stopping.clone();
    tokio::spawn(async move {
        loop {
            let found = {
                let (store, text) = (store.clone(), text.clone());
                state
                    .queries
                    .run(move || logs::arrived_after(&*store, &text, after, TAIL_BATCH))
                    .await
            };
            let hits = match found {
                Ok(Ok(hits)) => hits,
                Ok(Err(error)) => {
                    tracing::error!(%error, "LogTailError");
                    let _ = events
                        .send(Ok(Event::default().event("error").data(error.to_string())))
                        .await;
                    return;
                }
                Err(_) => return,
            };
            for hit in &hits {
                after = after.max(hit.id);
                let event = Event::default()
                    .event("log")
                    .data(log_json(hit).to_string());
                match events.try_send(Ok(event)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let dropped = Event::default().event("dropped").data(
                            json!({"reason": "the client did not keep up with new logs"})
                                .to_string(),
                        );
                        let _ = events.send(Ok(dropped)).await;
                        return;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            if events.is_closed() {
                return;
            }
            if hits.len() < TAIL_BATCH {
                tokio::select! {
                    _ = tokio::time::sleep(TAIL_POLL) => {}
                    // Stopping (or the sender gone with the daemon): the stream ends.
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(stream)).keep_alive(KeepAlive::default()))
}

/// A record as the API shows it.
fn log_json(hit: &LogHit) -> Value {
    let record: &LogRecord = &hit.record;
    let time = std::time::UNIX_EPOCH + Duration::from_nanos(record.time_unix_nano);
    json!({
        "id": format!("{:x}", hit.id),
        "timeUnixNano": record.time_unix_nano.to_string(),
        "timestamp": humantime::format_rfc3339_nanos(time).to_string(),
        "severity": record.severity.level(),
        "severityNumber": record.severity.0,
        "severityText": record.severity_text,
        "service": record.service(),
        "body": record.body,
        "traceId": record.trace_id.map(hex::encode),
        "spanId": record.span_id.map(hex::encode),
        "attributes": attributes_json(&record.attributes),
        "resource": attributes_json(&record.resource.attributes),
        "scope": record.scope.name,
    })
}

fn attributes_json(attributes: &[KeyValue]) -> Value {
    attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_json()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round_and_give_about_a_hundred_buckets() {
        let hour = 3_600 * 1_000_000_000u64;
        assert_eq!(nice_step(hour / TARGET_BUCKETS), 60 * 1_000_000_000);
        assert_eq!(nice_step(0), 1_000_000_000);
        assert_eq!(
            nice_step(30 * 24 * hour / TARGET_BUCKETS),
            43_200 * 1_000_000_000
        );
        assert_eq!(
            nice_step(300 * 24 * hour / TARGET_BUCKETS),
            3 * 86_400 * 1_000_000_000
        );
    }
}
