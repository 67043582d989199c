//! Rules and alerts as Prometheus's API serves them (`/api/v1/rules`,
//! `/api/v1/alerts`), so Grafana's alerting views and Prometheus clients
//! read them unchanged, and `POST /-/reload`, which reads the rule files
//! again (admin scope).

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};

use super::ApiState;
use crate::rules::{Alert, AlertState, GroupStatus, Health, RuleSpec, RuleStatus};

pub fn router() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
}

/// `/-/reload`, apart because it needs the admin scope.
pub fn reload_router() -> Router<Arc<ApiState>> {
    Router::new().route("/-/reload", post(reload).put(reload))
}

async fn groups(state: &ApiState) -> Vec<GroupStatus> {
    let Some(manager) = state.rules.clone() else {
        return Vec::new();
    };
    tokio::task::spawn_blocking(move || manager.groups())
        .await
        .unwrap_or_default()
}

/// Which rules a `/api/v1/rules` request asks for (`type`, `rule_name[]`,
/// `rule_group[]`, `file[]`).
struct RuleFilter {
    kind: Option<String>,
    names: Vec<String>,
    groups: Vec<String>,
    files: Vec<String>,
}

impl RuleFilter {
    fn parse(query: Option<&str>) -> Result<RuleFilter, String> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.unwrap_or("")).map_err(|error| error.to_string())?;
        let all = |key: &str| -> Vec<String> {
            pairs
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let kind = pairs
            .iter()
            .find(|(k, _)| k == "type")
            .map(|(_, v)| v.to_lowercase())
            .filter(|v| !v.is_empty());
        if let Some(kind) = &kind
            && kind != "alert"
            && kind != "record"
        {
            return Err(format!("invalid query parameter type='{kind}'"));
        }
        Ok(RuleFilter {
            kind,
            names: all("rule_name[]"),
            groups: all("rule_group[]"),
            files: all("file[]"),
        })
    }

    fn group(&self, group: &GroupStatus) -> bool {
        (self.groups.is_empty() || self.groups.contains(&group.name))
            && (self.files.is_empty() || self.files.contains(&group.file))
    }

    fn rule(&self, rule: &RuleStatus) -> bool {
        let kind_ok = !matches!(
            (self.kind.as_deref(), &rule.spec),
            (Some("alert"), RuleSpec::Recording { .. })
                | (Some("record"), RuleSpec::Alerting { .. })
        );
        kind_ok && (self.names.is_empty() || self.names.iter().any(|n| n == rule.spec.name()))
    }
}

async fn rules(State(state): State<Arc<ApiState>>, RawQuery(query): RawQuery) -> Response {
    let filter = match RuleFilter::parse(query.as_deref()) {
        Ok(filter) => filter,
        Err(message) => return bad_data(&message),
    };
    let groups: Vec<Json> = groups(&state)
        .await
        .iter()
        .filter(|group| filter.group(group))
        .filter_map(|group| {
            let rules: Vec<Json> = group
                .rules
                .iter()
                .filter(|rule| filter.rule(rule))
                .map(rule_json)
                .collect();
            let filtered = filter.kind.is_some() || !filter.names.is_empty();
            (!filtered || !rules.is_empty()).then(|| {
                json!({
                    "name": group.name,
                    "file": group.file,
                    "rules": rules,
                    "interval": group.interval.as_secs_f64(),
                    "limit": group.limit,
                    "evaluationTime": group.evaluation_time.as_secs_f64(),
                    "lastEvaluation": time_json(group.last_evaluation_ms),
                })
            })
        })
        .collect();
    success(json!({ "groups": groups }))
}

async fn alerts(State(state): State<Arc<ApiState>>) -> Response {
    let alerts: Vec<Json> = groups(&state)
        .await
        .iter()
        .flat_map(|group| group.rules.iter())
        .flat_map(|rule| active(&rule.alerts))
        .map(alert_json)
        .collect();
    success(json!({ "alerts": alerts }))
}

async fn reload(State(state): State<Arc<ApiState>>) -> Response {
    let Some(manager) = state.rules.clone() else {
        return StatusCode::OK.into_response();
    };
    match tokio::task::spawn_blocking(move || manager.reload()).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(error)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload the rules: {error}\n"),
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the reload failed\n").into_response(),
    }
}

/// Alerts Prometheus calls active: pending and firing, not resolved.
fn active(alerts: &[Alert]) -> impl Iterator<Item = &Alert> {
    alerts.iter().filter(|a| a.state != AlertState::Inactive)
}

fn rule_json(rule: &RuleStatus) -> Json {
    let (health, last_error) = match &rule.health {
        Health::Unknown => ("unknown", None),
        Health::Ok => ("ok", None),
        Health::Err(error) => ("err", Some(error.clone())),
    };
    let mut json = match &rule.spec {
        RuleSpec::Recording {
            record,
            expr,
            labels,
        } => json!({
            "name": record,
            "query": expr.trim(),
            "labels": labels,
            "type": "recording",
        }),
        RuleSpec::Alerting {
            alert,
            expr,
            hold,
            keep_firing_for,
            labels,
            annotations,
        } => {
            let state = active(&rule.alerts)
                .map(|a| a.state)
                .max_by_key(|s| matches!(s, AlertState::Firing))
                .unwrap_or(AlertState::Inactive);
            json!({
                "state": state.as_str(),
                "name": alert,
                "query": expr.trim(),
                "duration": hold.as_secs_f64(),
                "keepFiringFor": keep_firing_for.as_secs_f64(),
                "labels": labels,
                "annotations": annotations,
                "alerts": active(&rule.alerts).map(alert_json).collect::<Vec<_>>(),
                "type": "alerting",
            })
        }
    };
    json["health"] = json!(health);
    if let Some(error) = last_error {
        json["lastError"] = json!(error);
    }
    json["evaluationTime"] = json!(rule.evaluation_time.as_secs_f64());
    json["lastEvaluation"] = json!(time_json(rule.last_evaluation_ms));
    json
}

fn alert_json(alert: &Alert) -> Json {
    let mut json = json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "state": alert.state.as_str(),
        "activeAt": time_json(Some(alert.active_at_ms)),
        "value": go_exponent(alert.value),
    });
    if let Some(since) = alert.keep_firing_since_ms {
        json["keepFiringSince"] = json!(time_json(Some(since)));
    }
    json
}

/// RFC 3339 with Go's zero time for never.
fn time_json(ms: Option<i64>) -> String {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => "0001-01-01T00:00:00Z".into(),
    }
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, how Prometheus writes an
/// alert's value: `1e+00`, `2.5e-03`.
fn go_exponent(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let text = format!("{v:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    format!(
        "{mantissa}e{}{:02}",
        if exponent < 0 { '-' } else { '+' },
        exponent.abs()
    )
}

fn success(data: Json) -> Response {
    axum::Json(json!({ "status": "success", "data": data })).into_response()
}

fn bad_data(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "status": "error", "errorType": "bad_data", "error": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_times_are_written_as_prometheus_writes_them() {
        assert_eq!(go_exponent(1.0), "1e+00");
        assert_eq!(go_exponent(0.0025), "2.5e-03");
        assert_eq!(go_exponent(-123456.0), "-1.23456e+05");
        assert_eq!(go_exponent(0.0), "0e+00");
        assert_eq!(time_json(None), "0001-01-01T00:00:00Z");
        assert_eq!(time_json(Some(1_500)), "1970-01-01T00:00:01.500Z");
    }
}
