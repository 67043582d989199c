//! The Prometheus HTTP API (`/api/v1/...`) with Prometheus's JSON and error
//! shapes, so Grafana's Prometheus data source and PromQL tools work
//! unchanged (`collector/tests/it/grafana_prometheus.rs` replays what
//! Grafana sends). Every endpoint takes its parameters from the query string or,
//! for POST, an `application/x-www-form-urlencoded` body, like Prometheus.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::Expr;
use serde_json::{Value as Json, json};
use strand_promql::{EvalError, Labels, Limits, Value, format_value};

use super::ApiState;
use super::params::query_and_form;
use crate::model::{Label, METRIC_NAME_LABEL};
use crate::query::metrics::{MetricSource, quick_limits};
use crate::query::pool::{Deadline, QueryPool, QueryRefused};
use crate::store::StoreError;

/// The Prometheus API version whose semantics Strand answers with; Grafana
/// reads it from `buildinfo` to decide what it may ask.
const PROMETHEUS_COMPATIBLE_VERSION: &str = "2.42.0";

pub fn router() -> Router<Arc<ApiState>> {
    Router::new()
        .route(
            "/api/v1/query",
            get(evaluate::<InstantQuery>).post(evaluate::<InstantQuery>),
        )
        .route(
            "/api/v1/query_range",
            get(evaluate::<RangeQuery>).post(evaluate::<RangeQuery>),
        )
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route(
            "/api/v1/query_exemplars",
            get(query_exemplars).post(query_exemplars),
        )
}

/// An answer in Prometheus's error shape.
struct PromError {
    kind: &'static str,
    message: String,
}

impl PromError {
    fn bad_data(message: impl Into<String>) -> PromError {
        PromError {
            kind: "bad_data",
            message: message.into(),
        }
    }
}

impl From<QueryRefused> for PromError {
    fn from(refused: QueryRefused) -> Self {
        PromError {
            kind: match refused {
                QueryRefused::Busy { .. } => "unavailable",
                QueryRefused::Timeout(_) => "timeout",
                QueryRefused::Panicked(_) => "internal",
            },
            message: refused.to_string(),
        }
    }
}

impl From<EvalError> for PromError {
    fn from(error: EvalError) -> Self {
        PromError {
            kind: error.error_type(),
            message: error.to_string(),
        }
    }
}

impl From<StoreError> for PromError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Refused(refused) => refused.into(),
            StoreError::BadQuery(why) => PromError::bad_data(why),
            error => PromError {
                kind: if error.is_unavailable() {
                    "unavailable"
                } else {
                    "internal"
                },
                message: error.to_string(),
            },
        }
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            "bad_data" => StatusCode::BAD_REQUEST,
            "execution" => StatusCode::UNPROCESSABLE_ENTITY,
            "timeout" | "canceled" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = json!({"status": "error", "errorType": self.kind, "error": self.message});
        (status, axum::Json(body)).into_response()
    }
}

/// Prometheus's `warnings` entry when a damaged chunk was skipped.
pub const DAMAGED_DATA_WARNING: &str =
    "part of the stored samples is damaged and was skipped: samples may be missing";

fn success(data: Json) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// How long a metadata list may be: the request's `limit` (Prometheus's;
/// 0 or absent: none) or `--query-max-series`, whichever is smaller.
struct ListLimit {
    items: usize,
    /// The warning of a list cut at `items`.
    warning: String,
}

impl ListLimit {
    fn of(params: &Params, queries: &QueryPool) -> Result<ListLimit, PromError> {
        let cap = queries.max_series();
        let asked = match params.get("limit") {
            None => 0,
            Some(text) => text.parse::<usize>().map_err(|_| {
                PromError::bad_data(format!(
                    "invalid parameter \"limit\": {text:?} is not a non-negative integer"
                ))
            })?,
        };
        Ok(if asked > 0 && asked <= cap {
            ListLimit {
                items: asked,
                // Prometheus's own words.
                warning: "results truncated due to limit".into(),
            }
        } else {
            ListLimit {
                items: cap,
                warning: format!("results truncated to {cap} (--query-max-series)"),
            }
        })
    }

    /// The success answer listing `items`, cut here if `more` matched.
    fn answer(&self, items: Json, more: bool) -> Response {
        let mut answer = json!({"status": "success", "data": items});
        if more {
            answer["warnings"] = json!([self.warning]);
        }
        axum::Json(answer).into_response()
    }
}

/// Query-string and form parameters, in order; repeated names allowed.
/// Extracted from every request of this API (GET, or POST with a form body).
struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = PromError;

    async fn from_request(request: Request, state: &S) -> Result<Params, PromError> {
        let method = request.method().clone();
        let query = request.uri().query().map(str::to_owned);
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| PromError::bad_data(format!("invalid form body: {e}")))?;
        query_and_form(&method, query.as_deref(), &body)
            .map(Params)
            .map_err(PromError::bad_data)
    }
}

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn required(&self, name: &str) -> Result<&str, PromError> {
        self.get(name)
            .ok_or_else(|| PromError::bad_data(format!("missing parameter {name:?}")))
    }

    /// A time parameter: unix seconds (fractions allowed) or RFC 3339.
    fn time(&self, name: &str) -> Result<Option<i64>, PromError> {
        self.parsed(name, parse_time, "timestamp")
    }

    /// A duration parameter: seconds (fractions allowed) or `5m`, `1h30m`.
    fn duration(&self, name: &str) -> Result<Option<i64>, PromError> {
        self.parsed(name, parse_duration_ms, "duration")
    }

    /// A parameter read with `parse`; an unreadable one is `bad_data` naming
    /// the parameter and what it should have been.
    fn parsed(
        &self,
        name: &str,
        parse: fn(&str) -> Option<i64>,
        what: &str,
    ) -> Result<Option<i64>, PromError> {
        self.get(name)
            .map(|text| {
                parse(text).ok_or_else(|| {
                    PromError::bad_data(format!(
                        "invalid parameter {name:?}: cannot parse {text:?} to a valid {what}"
                    ))
                })
            })
            .transpose()
    }

    /// The pool's limits, with less time if the request's `timeout` asks.
    fn limits(&self, queries: &QueryPool) -> Result<Limits, PromError> {
        let timeout = match self.duration("timeout")? {
            Some(ms) if ms > 0 => Duration::from_millis(ms as u64).min(queries.timeout()),
            _ => queries.timeout(),
        };
        Ok(Limits {
            max_samples: queries.max_samples(),
            timeout,
            ..Limits::default()
        })
    }
}

fn parse_time(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds.abs() < 1e13)
            .then(|| (seconds * 1000.0).round() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn parse_duration_ms(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<f64>() {
        return (0.0..1e13)
            .contains(&seconds)
            .then(|| (seconds * 1000.0).round() as i64);
    }
    promql_parser::util::duration::parse_duration(text)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

fn now_ms() -> i64 {
    (crate::model::now_unix_nano() / 1_000_000) as i64
}

/// How an endpoint reads the times it evaluates at: `/query` one instant,
/// `/query_range` a range of steps.
trait EvaluationTimes {
    fn read(params: &Params) -> Result<Evaluation, PromError>;
}

/// `/api/v1/query`: `time`, or now.
struct InstantQuery;

impl EvaluationTimes for InstantQuery {
    fn read(params: &Params) -> Result<Evaluation, PromError> {
        let time = params.time("time")?.unwrap_or_else(now_ms);
        Ok(Evaluation::Instant { time })
    }
}

/// `/api/v1/query_range`: `start`, `end` and `step`, with Prometheus's
/// checks and messages.
struct RangeQuery;

impl EvaluationTimes for RangeQuery {
    fn read(params: &Params) -> Result<Evaluation, PromError> {
        let required = |name: &str, value: Option<i64>| {
            value.ok_or_else(|| PromError::bad_data(format!("missing parameter {name:?}")))
        };
        let start = required("start", params.time("start")?)?;
        let end = required("end", params.time("end")?)?;
        let step = required("step", params.duration("step")?)?;
        check_order(start, end)?;
        if step <= 0 {
            return Err(PromError::bad_data(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if (end - start) / step > 11_000 {
            return Err(PromError::bad_data(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        Ok(Evaluation::Range { start, end, step })
    }
}

/// What `/query` and `/query_range` evaluate at.
#[derive(Clone, Copy)]
enum Evaluation {
    Instant { time: i64 },
    Range { start: i64, end: i64, step: i64 },
}

impl Evaluation {
    /// Evaluates `text` on `source`; also says whether it read damaged data.
    fn run(
        self,
        source: &MetricSource,
        text: &str,
        limits: &Limits,
    ) -> Result<(Value, bool), EvalError> {
        let value = match self {
            Evaluation::Instant { time } => {
                strand_promql::instant_query(source, text, time, limits)
            }
            Evaluation::Range { start, end, step } => {
                strand_promql::range_query(source, text, start, end, step, limits)
            }
        };
        value.map(|value| (value, source.damaged()))
    }
}

/// `/query` and `/query_range`: reads the query and its times (`T`), then
/// evaluates it (a quick attempt here, else on a query thread, see
/// `QueryPool::run_quick_first`) and answers in Prometheus's shape.
async fn evaluate<T: EvaluationTimes>(
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, PromError> {
    let text = params.required("query")?.to_owned();
    let evaluation = T::read(&params)?;
    let limits = params.limits(&state.queries)?;
    let quick = MetricSource::quick(state.stores.metrics.clone(), state.queries.max_series());
    let quick_limits = quick_limits(&limits);
    // The budget counts from now, as the pool's does: time spent queued is
    // not granted again once the query runs.
    let deadline = std::time::Instant::now() + limits.timeout;
    let source = MetricSource::new(state.stores.metrics.clone(), state.queries.max_series())
        .with_logs(state.stores.logs.clone(), Deadline::after(limits.timeout));
    let quick_text = text.clone();
    let (value, damaged) = state
        .queries
        .run_quick_first(
            || {
                // Beyond its budget, or failing for any other reason, the
                // attempt gives way: the query threads' answer is the one
                // given.
                let answer = evaluation.run(&quick, &quick_text, &quick_limits);
                answer.is_ok().then_some(answer)
            },
            move || {
                let limits = Limits {
                    timeout: deadline.saturating_duration_since(std::time::Instant::now()),
                    ..limits
                };
                evaluation.run(&source, &text, &limits)
            },
        )
        .await??;
    let mut answer = json!({"status": "success", "data": value_json(&value)});
    if damaged {
        answer["warnings"] = json!([DAMAGED_DATA_WARNING]);
    }
    Ok(axum::Json(answer).into_response())
}

/// Series selectors of `match[]`, each as a list of matchers.
fn selectors(params: &Params) -> Result<Vec<Vec<Matcher>>, PromError> {
    params
        .all("match[]")
        .into_iter()
        .map(|text| {
            let expr = strand_promql::parse(text)
                .map_err(|e| PromError::bad_data(format!("invalid parameter \"match[]\": {e}")))?;
            let Expr::VectorSelector(selector) = expr else {
                return Err(PromError::bad_data(format!(
                    "invalid parameter \"match[]\": {text:?} is not a series selector"
                )));
            };
            let mut matchers = selector.matchers.matchers;
            if let Some(name) = selector.name {
                matchers.push(Matcher::new(MatchOp::Equal, METRIC_NAME_LABEL, &name));
            }
            Ok(matchers)
        })
        .collect()
}

fn check_order(start: i64, end: i64) -> Result<(), PromError> {
    if end < start {
        return Err(PromError::bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    Ok(())
}

/// The time range of a metadata request: all time unless given.
fn range(params: &Params) -> Result<(i64, i64), PromError> {
    let start = params.time("start")?.unwrap_or(i64::MIN);
    let end = params.time("end")?.unwrap_or(i64::MAX);
    check_order(start, end)?;
    Ok((start, end))
}

async fn series(State(state): State<Arc<ApiState>>, params: Params) -> Result<Response, PromError> {
    let selectors = selectors(&params)?;
    if selectors.is_empty() {
        return Err(PromError::bad_data("no match[] parameter provided"));
    }
    let (start, end) = range(&params)?;
    let limit = ListLimit::of(&params, &state.queries)?;
    let store = state.stores.metrics.clone();
    let items = limit.items;
    let (found, more) = state
        .queries
        .run(move || {
            let (series, more) = store.series(&selectors, start, end, items)?;
            Ok::<_, PromError>((series.iter().map(|l| labels_json(l)).collect(), more))
        })
        .await??;
    Ok(limit.answer(Json::Array(found), more))
}

async fn labels(State(state): State<Arc<ApiState>>, params: Params) -> Result<Response, PromError> {
    distinct_labels(&state, &params, None).await
}

async fn label_values(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, PromError> {
    distinct_labels(&state, &params, Some(name)).await
}

/// Sorted distinct label names (`name` is `None`) or values of the label
/// `name`, of the series matching `match[]` in the requested range (all
/// series when there is no `match[]`).
async fn distinct_labels(
    state: &ApiState,
    params: &Params,
    name: Option<String>,
) -> Result<Response, PromError> {
    let selectors = selectors(params)?;
    let (start, end) = range(params)?;
    let limit = ListLimit::of(params, &state.queries)?;
    let store = state.stores.metrics.clone();
    let mut found = state
        .queries
        .run(move || {
            Ok::<_, PromError>(match &name {
                None => store.label_names(&selectors, start, end)?,
                Some(name) => store.label_values(name, &selectors, start, end)?,
            })
        })
        .await??;
    let more = found.len() > limit.items;
    found.truncate(limit.items);
    Ok(limit.answer(json!(found), more))
}

async fn metadata(
    State(state): State<Arc<ApiState>>,
    params: Params,
) -> Result<Response, PromError> {
    let limit = match params.get("limit") {
        Some(text) => text
            .parse::<i64>()
            .map_err(|_| PromError::bad_data(format!("invalid parameter \"limit\": {text:?}")))?,
        None => -1,
    };
    let store = state.stores.metrics.clone();
    let metric = params.get("metric").map(str::to_owned);
    let entries = state
        .queries
        .run(move || store.metadata(metric.as_deref()))
        .await??;
    let mut out = serde_json::Map::new();
    for entry in entries {
        if limit >= 0 && out.len() as i64 >= limit {
            break;
        }
        out.insert(
            entry.metric,
            json!([{"type": entry.kind.as_str(), "help": entry.help, "unit": entry.unit}]),
        );
    }
    Ok(success(Json::Object(out)))
}

/// `/api/v1/query_exemplars`. Strand stores no exemplars (those of OTLP
/// metrics and OpenMetrics scrapes are dropped at ingest), so it answers as
/// Prometheus 2.42 does without exemplar storage: the times and the query
/// are checked as Prometheus checks them (`bad_data`), then there are none
/// — `[]`, or `null` for an expression without a series selector. Grafana
/// asks this for every panel query with exemplars on.
async fn query_exemplars(params: Params) -> Result<Response, PromError> {
    range(&params)?;
    let text = params.get("query").unwrap_or_default();
    let expr = strand_promql::parse(text)
        .map_err(|e| PromError::bad_data(format!("invalid parameter \"query\": {e}")))?;
    let mut finder = SelectorFinder(false);
    // The finder never fails.
    let _ = promql_parser::util::walk_expr(&mut finder, &expr);
    Ok(success(if finder.0 { json!([]) } else { Json::Null }))
}

/// Whether an expression selects series (Prometheus' `ExtractSelectors`
/// finding any).
struct SelectorFinder(bool);

impl promql_parser::util::ExprVisitor for SelectorFinder {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        if matches!(expr, Expr::VectorSelector(_) | Expr::MatrixSelector(_)) {
            self.0 = true;
        }
        Ok(!self.0)
    }
}

async fn buildinfo() -> Response {
    success(json!({
        "version": PROMETHEUS_COMPATIBLE_VERSION,
        "revision": concat!("strand-", env!("CARGO_PKG_VERSION")),
        "branch": "strand",
        "buildUser": "strand",
        "buildDate": "",
        "goVersion": "none (Strand is written in Rust)",
    }))
}

fn labels_json(labels: &[Label]) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|l| (l.name.to_string(), Json::String(l.value.to_string())))
            .collect(),
    )
}

fn promql_labels_json(labels: &Labels) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|(n, v)| (n.to_owned(), Json::String(v.to_owned())))
            .collect(),
    )
}

/// Prometheus's `[<unix seconds>, "<value>"]` pair.
fn point(t: i64, value: Json) -> Json {
    let seconds = t as f64 / 1000.0;
    json!([seconds, value])
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::Scalar { t, v } => json!({
            "resultType": "scalar",
            "result": point(*t, Json::String(format_value(*v))),
        }),
        Value::String { t, v } => json!({
            "resultType": "string",
            "result": point(*t, Json::String(v.clone())),
        }),
        Value::Vector(samples) => json!({
            "resultType": "vector",
            "result": samples
                .iter()
                .map(|s| json!({
                    "metric": promql_labels_json(&s.labels),
                    "value": point(s.t, Json::String(format_value(s.v))),
                }))
                .collect::<Vec<_>>(),
        }),
        Value::Matrix(series) => json!({
            "resultType": "matrix",
            "result": series
                .iter()
                .map(|s| json!({
                    "metric": promql_labels_json(&s.labels),
                    "values": s
                        .samples
                        .iter()
                        .map(|&(t, v)| point(t, Json::String(format_value(v))))
                        .collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_parse_like_prometheus() {
        assert_eq!(parse_time("1435781451.781"), Some(1_435_781_451_781));
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z"),
            Some(1_435_781_451_781)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("NaN"), None);
        assert_eq!(parse_duration_ms("15"), Some(15_000));
        assert_eq!(parse_duration_ms("0.5"), Some(500));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("-1"), None);
        assert_eq!(parse_duration_ms("soon"), None);
    }

    #[test]
    fn points_are_seconds_and_string_values() {
        assert_eq!(
            point(1_500, Json::String(format_value(f64::INFINITY))),
            json!([1.5, "+Inf"])
        );
    }

    #[test]
    fn exemplar_queries_find_their_selectors() {
        for (query, selects) in [
            ("up", true),
            ("rate(http_requests_total[5m])", true),
            (
                "histogram_quantile(0.9, sum by (le) (rate(x_bucket[1m])))",
                true,
            ),
            ("1 + 1", false),
            ("vector(1) * 2", false),
            ("vector(time()) or up", true),
        ] {
            let mut finder = SelectorFinder(false);
            let _ =
                promql_parser::util::walk_expr(&mut finder, &strand_promql::parse(query).unwrap());
            assert_eq!(finder.0, selects, "{query}");
        }
    }
}
