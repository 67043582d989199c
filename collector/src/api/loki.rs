//! Loki's query API, so Grafana's Loki data source works unchanged against
//! Strand: `query`, `query_range`, `labels`, `label/{name}/values`,
//! `series`, `index/stats`, `index/volume`, `status/buildinfo` and the
//! `tail` WebSocket, in Loki's shapes; LogQL is `query::logql`'s. Errors are
//! Loki's `{"code", "status": "error", "message"}`, 400 for what the caller
//! can fix.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::ApiState;
use super::params::{parse_time, query_and_form};
use crate::model::now_unix_nano;
use crate::query::logql::{
    self, Expr, Labels, LogExpr, LogqlError, MetricExpr, Series, StoreSource,
};
use crate::query::logs::{self, LogQueryError};
use crate::query::pool::QueryRefused;

/// Lines a log query returns unless `limit` says otherwise (Loki's).
const DEFAULT_LIMIT: usize = 100;
/// Most lines one log query returns.
const MAX_LIMIT: usize = 5_000;
const HOUR_NANOS: u64 = 3_600 * 1_000_000_000;
/// How far back `labels`, `series` and `index/*` look without `start`.
const METADATA_RANGE_NANOS: u64 = 6 * HOUR_NANOS;
/// How often a tail looks for new records (logs commit every 500 ms).
const TAIL_POLL: Duration = Duration::from_millis(500);
/// Records one tail frame carries at most.
const TAIL_BATCH: usize = 1_000;
/// The Loki version Strand's API corresponds to (Grafana reads it).
const LOKI_VERSION: &str = "3.0.0";

/// An error answer in Loki's shape.
#[derive(Debug)]
pub struct LokiError {
    status: StatusCode,
    message: String,
}

impl LokiError {
    fn bad_request(message: impl Into<String>) -> LokiError {
        LokiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<LogqlError> for LokiError {
    fn from(error: LogqlError) -> Self {
        match error {
            LogqlError::Query(LogQueryError::Refused(refused)) => refused.into(),
            error if error.is_bad_request() => LokiError::bad_request(error.to_string()),
            LogqlError::Query(LogQueryError::Store(error)) if error.is_unavailable() => {
                tracing::warn!(%error, "QueryUnavailable");
                LokiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: error.to_string(),
                }
            }
            error => {
                tracing::error!(%error, "LokiQueryError");
                LokiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: error.to_string(),
                }
            }
        }
    }
}

impl From<QueryRefused> for LokiError {
    fn from(refused: QueryRefused) -> Self {
        LokiError {
            status: match refused {
                QueryRefused::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
                QueryRefused::Busy { .. } | QueryRefused::Timeout(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            message: refused.to_string(),
        }
    }
}

impl IntoResponse for LokiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({
                "code": self.status.as_u16(),
                "status": "error",
                "message": self.message,
            })),
        )
            .into_response()
    }
}

type LokiResult = Result<Json<Value>, LokiError>;

/// A request's parameters from the query string and a POST form, in order
/// (`match[]` repeats).
struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = LokiError;

    async fn from_request(request: Request, state: &S) -> Result<Params, LokiError> {
        let method = request.method().clone();
        let query = request.uri().query().map(str::to_owned);
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| LokiError::bad_request(format!("invalid form body: {e}")))?;
        query_and_form(&method, query.as_deref(), &body)
            .map(Params)
            .map_err(LokiError::bad_request)
    }
}

impl Params {
    /// The last value of `name`, when not empty.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time(&self, name: &str) -> Result<Option<u64>, LokiError> {
        self.get(name)
            .map(|v| {
                parse_loki_time(v).map_err(|why| {
                    LokiError::bad_request(format!("invalid parameter {name:?}: {why}"))
                })
            })
            .transpose()
    }

    /// `start` and `end`, defaulting to the `default_range` up to now.
    fn range(&self, default_range: u64) -> Result<(u64, u64), LokiError> {
        let end = self.time("end")?.unwrap_or_else(now_unix_nano);
        let start = self
            .time("start")?
            .unwrap_or(end.saturating_sub(default_range));
        if end < start {
            return Err(LokiError::bad_request(
                "the end timestamp must not be before the start time",
            ));
        }
        Ok((start, end))
    }

    fn query(&self) -> Result<&str, LokiError> {
        self.get("query")
            .ok_or_else(|| LokiError::bad_request("parse error : the query is empty"))
    }

    fn limit(&self) -> Result<usize, LokiError> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|l| *l > 0)
                .map(|l| l.min(MAX_LIMIT))
                .ok_or_else(|| {
                    LokiError::bad_request(format!(
                        "invalid parameter \"limit\": {text:?} is not a positive number"
                    ))
                }),
        }
    }

    /// `direction`: `backward` (newest first, the default) or `forward`.
    fn backward(&self) -> Result<bool, LokiError> {
        match self
            .get("direction")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("backward") => Ok(true),
            Some("forward") => Ok(false),
            Some(other) => Err(LokiError::bad_request(format!(
                "invalid parameter \"direction\": {other:?}; use forward or backward"
            ))),
        }
    }
}

/// A time as Loki takes it: a whole number of at most ten digits is unix
/// seconds, a longer one nanoseconds; a number with a fraction is seconds;
/// anything else RFC 3339.
fn parse_loki_time(text: &str) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let number: u64 = text
            .parse()
            .map_err(|_| format!("{text:?} is out of range"))?;
        return Ok(if text.len() <= 10 {
            number.saturating_mul(1_000_000_000)
        } else {
            number
        });
    }
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Ok((seconds * 1e9) as u64);
    }
    parse_time(text)
}

/// `step`: a duration (`15s`, `100ms`) or seconds (`15`, `0.5`).
fn parse_step(text: &str) -> Result<u64, LokiError> {
    logql::parse::parse_duration(text)
        .or_else(|| {
            text.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(|s| (s * 1e9) as u64)
        })
        .filter(|nanos| *nanos > 0)
        .ok_or_else(|| {
            LokiError::bad_request(format!(
                "invalid parameter \"step\": {text:?}; use a duration (15s) or seconds"
            ))
        })
}

/// The Loki routes, merged into the API router (read scope).
pub fn router() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/loki/api/v1/query", get(instant).post(instant))
        .route("/loki/api/v1/query_range", get(range).post(range))
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route(
            "/loki/api/v1/label/{name}/values",
            get(label_values).post(label_values),
        )
        .route("/loki/api/v1/series", get(series).post(series))
        .route(
            "/loki/api/v1/index/stats",
            get(index_stats).post(index_stats),
        )
        .route(
            "/loki/api/v1/index/volume",
            get(index_volume).post(index_volume),
        )
        .route("/loki/api/v1/status/buildinfo", get(buildinfo))
        .route("/loki/api/v1/tail", get(tail))
}

async fn buildinfo() -> Json<Value> {
    Json(json!({
        "version": LOKI_VERSION,
        "revision": env!("CARGO_PKG_VERSION"),
        "branch": "strand",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

fn parse(text: &str) -> Result<Expr, LokiError> {
    logql::parse(text).map_err(LokiError::from)
}

/// Seconds as Loki writes sample times.
fn seconds(nanos: u64) -> Value {
    let seconds = nanos as f64 / 1e9;
    json!(seconds)
}

/// A sample value as Prometheus and Loki write it.
fn sample_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

fn labels_json(labels: &Labels) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

/// The `stats` of a result, in the shape of Loki's summary.
fn stats(scanned: u64, bytes: u64, returned: u64, elapsed: Duration) -> Value {
    let exec = elapsed.as_secs_f64();
    let per_second = |n: u64| {
        if exec > 0.0 {
            (n as f64 / exec) as u64
        } else {
            n
        }
    };
    json!({
        "summary": {
            "bytesProcessedPerSecond": per_second(bytes),
            "linesProcessedPerSecond": per_second(scanned),
            "totalBytesProcessed": bytes,
            "totalLinesProcessed": scanned,
            "execTime": exec,
            "queueTime": 0,
            "subqueries": 0,
            "totalEntriesReturned": returned,
            "splits": 0,
            "shards": 0,
            "totalPostFilterLines": returned,
            "totalStructuredMetadataBytesProcessed": 0,
        },
    })
}

fn success(data: Value) -> Json<Value> {
    Json(json!({ "status": "success", "data": data }))
}

/// A successful answer, with Loki's `warnings` when there is one.
fn success_warning(data: Value, warning: Option<String>) -> Json<Value> {
    let Json(mut answer) = success(data);
    if let Some(warning) = warning {
        answer["warnings"] = json!([warning]);
    }
    Json(answer)
}

/// A metadata answer, with a warning when only the newest records were read.
fn metadata(data: Value, found: &logql::StreamStats) -> Json<Value> {
    success_warning(
        data,
        found.truncated.then(|| {
            format!(
                "only the newest {} log records of the range were read; narrow the time range \
                 or add a selector for the rest",
                logql::METADATA_RECORDS
            )
        }),
    )
}

async fn instant(State(state): State<Arc<ApiState>>, params: Params) -> LokiResult {
    let text = params.query()?.to_string();
    let time = params.time("time")?.unwrap_or_else(now_unix_nano);
    let metric = match parse(&text)? {
        Expr::Logs(_) => {
            return Err(LokiError::bad_request(
                "log queries are not supported as an instant query type, please change your \
                 query to a range query type",
            ));
        }
        Expr::Metric(metric) => metric,
    };
    run_metric(&state, metric, vec![time], true).await
}

async fn range(State(state): State<Arc<ApiState>>, params: Params) -> LokiResult {
    let text = params.query()?.to_string();
    let (start, end) = params.range(HOUR_NANOS)?;
    match parse(&text)? {
        Expr::Logs(logs) => {
            let limit = params.limit()?;
            let backward = params.backward()?;
            // Loki returns lines at or after `start` and before `end`.
            let last = end.saturating_sub(1).max(start);
            run_logs(&state, logs, start, last, limit, backward).await
        }
        Expr::Metric(metric) => {
            let step = match params.get("step") {
                Some(step) => parse_step(step)?,
                // Loki's default: about 250 points, at least a second apart.
                None => ((end - start) / 250 / 1_000_000_000).max(1) * 1_000_000_000,
            };
            if (end - start) / step > logql::MAX_POINTS {
                return Err(LokiError::bad_request(format!(
                    "exceeded maximum resolution of {} points per timeseries. Try increasing \
                     the value of the step parameter",
                    logql::MAX_POINTS
                )));
            }
            let times: Vec<u64> = (0..=(end - start) / step)
                .map(|i| start + i * step)
                .collect();
            run_metric(&state, metric, times, false).await
        }
    }
}

async fn run_logs(
    state: &ApiState,
    logs: LogExpr,
    start: u64,
    end: u64,
    limit: usize,
    backward: bool,
) -> LokiResult {
    let store = state.stores.logs.clone();
    let deadline = state.queries.deadline();
    let started = std::time::Instant::now();
    let found = state
        .queries
        .run(move || {
            let source = StoreSource::new(&*store, deadline);
            logql::select_lines(&source, &logs, start, end, limit, backward)
                .map(|found| (found, source.read()))
        })
        .await??;
    let (found, (scanned, scanned_bytes)) = found;
    let returned: usize = found.streams.iter().map(|(_, lines)| lines.len()).sum();
    let result: Vec<Value> = found
        .streams
        .iter()
        .map(|(labels, lines)| {
            json!({
                "stream": labels_json(labels),
                "values": lines
                    .iter()
                    .map(|(time, line)| json!([time.to_string(), line]))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(success(json!({
        "resultType": "streams",
        "result": result,
        "stats": stats(scanned, scanned_bytes, returned as u64, started.elapsed()),
    })))
}

async fn run_metric(
    state: &ApiState,
    metric: MetricExpr,
    times: Vec<u64>,
    instant: bool,
) -> LokiResult {
    let store = state.stores.logs.clone();
    let deadline = state.queries.deadline();
    let started = std::time::Instant::now();
    let evaluated_times = times.clone();
    let value = state
        .queries
        .run(move || {
            let source = StoreSource::new(&*store, deadline);
            logql::evaluate(&source, &metric, &evaluated_times).map(|value| (value, source.read()))
        })
        .await??;
    let (value, (scanned, scanned_bytes)) = value;
    let stats = stats(scanned, scanned_bytes, 0, started.elapsed());
    let series = match value {
        logql::Value::Scalar(n) if instant => {
            return Ok(success(json!({
                "resultType": "scalar",
                "result": [seconds(times[0]), sample_value(n)],
                "stats": stats,
            })));
        }
        logql::Value::Scalar(n) => vec![Series {
            labels: Labels::new(),
            values: vec![Some(n); times.len()],
        }],
        logql::Value::Vector(series) => series,
    };
    let result: Vec<Value> = if instant {
        series
            .iter()
            .filter_map(|s| {
                let value = s.values.first().copied().flatten()?;
                Some(json!({
                    "metric": labels_json(&s.labels),
                    "value": [seconds(times[0]), sample_value(value)],
                }))
            })
            .collect()
    } else {
        series
            .iter()
            .map(|s| {
                json!({
                    "metric": labels_json(&s.labels),
                    "values": s
                        .values
                        .iter()
                        .zip(&times)
                        .filter_map(|(v, t)| Some(json!([seconds(*t), sample_value((*v)?)])))
                        .collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    Ok(success(json!({
        "resultType": if instant { "vector" } else { "matrix" },
        "result": result,
        "stats": stats,
    })))
}

/// Reads the streams of a range for the metadata endpoints.
async fn streams_of(
    state: &ApiState,
    selectors: Vec<LogExpr>,
    start: u64,
    end: u64,
) -> Result<logql::StreamStats, LokiError> {
    let store = state.stores.logs.clone();
    let deadline = state.queries.deadline();
    Ok(state
        .queries
        .run(move || logql::streams(&StoreSource::new(&*store, deadline), &selectors, start, end))
        .await??)
}

/// The optional `query` of the metadata endpoints, a log selector.
fn selector(params: &Params, name: &str) -> Result<Vec<LogExpr>, LokiError> {
    params
        .all(name)
        .into_iter()
        .map(|text| match parse(text)? {
            Expr::Logs(logs) => Ok(logs),
            Expr::Metric(_) => Err(LokiError::bad_request(format!(
                "parse error : {name} must be a stream selector such as {{service_name=\"x\"}}"
            ))),
        })
        .collect()
}

/// Most label names and services read from the index's term dictionaries.
const INDEXED_NAMES: usize = 10_000;

/// Label names and `service_name` values for the whole store (no
/// selector), from the index alone: the resource attribute keys and the
/// services of the partitions the range overlaps.
async fn indexed_names(
    state: &ApiState,
    start: u64,
    end: u64,
) -> Result<(Vec<String>, Vec<String>, bool), LokiError> {
    let store = state.stores.logs.clone();
    let (keys, services, cut) = state
        .queries
        .run(move || logs::resource_keys_and_services(&*store, start, end, INDEXED_NAMES))
        .await?
        .map_err(LogqlError::from)?;
    let mut names: std::collections::BTreeSet<String> =
        keys.iter().map(|key| logql::label_name(key)).collect();
    if !services.is_empty() {
        names.insert("service_name".into());
    }
    Ok((
        names.into_iter().collect(),
        services.into_iter().filter(|s| !s.is_empty()).collect(),
        cut,
    ))
}

fn indexed_answer(data: Value, cut: bool) -> Json<Value> {
    success_warning(
        data,
        cut.then(|| format!("more than {INDEXED_NAMES} names: only the first are listed")),
    )
}

async fn labels(State(state): State<Arc<ApiState>>, params: Params) -> LokiResult {
    let (start, end) = params.range(METADATA_RANGE_NANOS)?;
    let selectors = selector(&params, "query")?;
    if selectors.is_empty() {
        let (names, _, cut) = indexed_names(&state, start, end).await?;
        return Ok(indexed_answer(json!(names), cut));
    }
    let found = streams_of(&state, selectors, start, end).await?;
    let names: std::collections::BTreeSet<&String> = found
        .series
        .iter()
        .flat_map(|labels| labels.keys())
        .collect();
    Ok(metadata(json!(names), &found))
}

async fn label_values(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    params: Params,
) -> LokiResult {
    let (start, end) = params.range(METADATA_RANGE_NANOS)?;
    let selectors = selector(&params, "query")?;
    if selectors.is_empty() && name == "service_name" {
        let (_, services, cut) = indexed_names(&state, start, end).await?;
        return Ok(indexed_answer(json!(services), cut));
    }
    let found = streams_of(&state, selectors, start, end).await?;
    let values: std::collections::BTreeSet<&String> = found
        .series
        .iter()
        .filter_map(|labels| labels.get(&name))
        .collect();
    Ok(metadata(json!(values), &found))
}

async fn series(State(state): State<Arc<ApiState>>, params: Params) -> LokiResult {
    let (start, end) = params.range(METADATA_RANGE_NANOS)?;
    let found = streams_of(&state, selector(&params, "match[]")?, start, end).await?;
    let series = Value::Array(found.series.iter().map(labels_json).collect());
    Ok(metadata(series, &found))
}

async fn index_stats(State(state): State<Arc<ApiState>>, params: Params) -> LokiResult {
    let (start, end) = params.range(METADATA_RANGE_NANOS)?;
    let selectors = selector(&params, "query")?;
    if selectors.is_empty() {
        return Err(LokiError::bad_request("parse error : the query is empty"));
    }
    let chunks = state.stores.logs.units_between(start, end);
    let found = streams_of(&state, selectors, start, end).await?;
    // Partitions stand in for Loki's chunks: the units of storage read.
    Ok(Json(json!({
        "streams": found.series.len(),
        "chunks": if found.entries > 0 { chunks } else { 0 },
        "bytes": found.bytes,
        "entries": found.entries,
    })))
}

/// Bytes per series of the selector (or per `targetLabels`), as Loki's
/// volume endpoint; the log-volume panel of Explore reads it.
async fn index_volume(State(state): State<Arc<ApiState>>, params: Params) -> LokiResult {
    let (start, end) = params.range(METADATA_RANGE_NANOS)?;
    let selectors = selector(&params, "query")?;
    let [logs] = selectors.as_slice() else {
        return Err(LokiError::bad_request(
            "parse error : volume needs one stream selector in query",
        ));
    };
    let limit = params.limit()?;
    let by: Vec<String> = match params.get("targetLabels") {
        Some(targets) => targets.split(',').map(|t| t.trim().to_string()).collect(),
        None => logs.matchers.iter().map(|m| m.name.clone()).collect(),
    };
    let metric = logql::MetricExpr::Aggregate {
        op: logql::AggregateOp::Sum,
        grouping: Some(logql::Grouping::By(by)),
        inner: Box::new(logql::MetricExpr::Range {
            function: logql::RangeFunction::BytesOverTime,
            logs: logs.clone(),
            unwrap: None,
            range_nanos: (end - start).max(1),
            grouping: None,
        }),
    };
    let Json(mut answer) = run_metric(&state, metric, vec![end], true).await?;
    if let Some(result) = answer["data"]["result"].as_array_mut() {
        result.sort_by(|a, b| {
            let bytes = |v: &Value| v["value"][1].as_str().and_then(|s| s.parse::<f64>().ok());
            bytes(b)
                .partial_cmp(&bytes(a))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        result.truncate(limit);
    }
    Ok(Json(answer))
}

/// `tail`: a WebSocket of `{"streams": [...]}` frames: first the `limit`
/// newest lines since `start` (an hour ago by default), then those that
/// arrive after it opens. (Grafana's live tail connects without the data
/// source's headers, so it needs a daemon without tokens.)
async fn tail(
    State(state): State<Arc<ApiState>>,
    upgrade: WebSocketUpgrade,
    params: Params,
) -> Result<Response, LokiError> {
    let text = params.query()?.to_string();
    let Expr::Logs(logs) = parse(&text)? else {
        return Err(LokiError::bad_request(
            "parse error : tail takes a log query, not a metric query",
        ));
    };
    let limit = params.limit()?;
    // Loki's tail first sends the newest `limit` lines since `start`.
    let start = params
        .time("start")?
        .unwrap_or_else(|| now_unix_nano().saturating_sub(HOUR_NANOS));
    let store = state.stores.logs.clone();
    let after = state
        .queries
        .run(move || logs::last_arrival(&*store))
        .await?
        .map_err(LogqlError::from)?;
    Ok(upgrade.on_upgrade(move |socket| tail_socket(state, socket, logs, after, start, limit)))
}

/// A tail entry (`[time, line]`) as the backlog and the live polls compare it.
fn entry_key(entry: &Value) -> (String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (text(&entry[0]), text(&entry[1]))
}

async fn tail_socket(
    state: Arc<ApiState>,
    mut socket: WebSocket,
    logs: LogExpr,
    mut after: u64,
    start: u64,
    limit: usize,
) {
    let mut stopping = state.stopping.clone();
    // Lines that arrived after `after` but were searchable in time for the
    // backlog: sent there, so skipped once when the live polls meet them.
    let mut in_backlog: HashSet<(String, String)> = HashSet::new();
    let backlog = run_logs(&state, logs.clone(), start, now_unix_nano(), limit, true).await;
    if let Ok(Json(answer)) = backlog {
        let streams = &answer["data"]["result"];
        in_backlog.extend(
            streams
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|stream| stream["values"].as_array().into_iter().flatten())
                .map(entry_key),
        );
        let frame = json!({ "streams": streams, "dropped_entries": null });
        let some = streams.as_array().is_some_and(|s| !s.is_empty());
        if some
            && socket
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
        {
            return;
        }
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TAIL_POLL) => {}
            _ = stopping.changed() => return,
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        }
        let store = state.stores.logs.clone();
        let selection = logs.clone();
        let polled = state
            .queries
            .run(move || -> Result<(u64, Vec<Value>), LogQueryError> {
                let hits = logs::arrived_after(
                    &*store,
                    &logql::index_text(&selection),
                    after,
                    TAIL_BATCH,
                )?;
                let last = hits.last().map(|hit| hit.id).unwrap_or(after);
                let mut streams: Vec<(Labels, Vec<Value>)> = Vec::new();
                for hit in &hits {
                    if !logql::selected(&selection, &hit.record) {
                        continue;
                    }
                    let Some(entry) = logql::run_pipeline(&selection.stages, &hit.record) else {
                        continue;
                    };
                    let value = json!([hit.record.time_unix_nano.to_string(), entry.line]);
                    match streams.iter_mut().find(|(l, _)| *l == entry.labels) {
                        Some((_, values)) => values.push(value),
                        None => streams.push((entry.labels, vec![value])),
                    }
                }
                let streams = streams
                    .into_iter()
                    .map(|(labels, values)| json!({"stream": labels_json(&labels), "values": values}))
                    .collect();
                Ok((last, streams))
            })
            .await;
        let Ok(Ok((last, mut streams))) = polled else {
            continue;
        };
        after = last;
        if !in_backlog.is_empty() {
            for stream in &mut streams {
                if let Some(values) = stream["values"].as_array_mut() {
                    values.retain(|entry| !in_backlog.remove(&entry_key(entry)));
                }
            }
            streams.retain(|stream| stream["values"].as_array().is_some_and(|v| !v.is_empty()));
        }
        if streams.is_empty() {
            continue;
        }
        let frame = json!({ "streams": streams, "dropped_entries": null });
        if socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}
