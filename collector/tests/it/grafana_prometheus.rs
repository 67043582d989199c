//! Grafana's Prometheus data source, replayed: the HTTP requests it sends
//! Strand, exactly as Grafana's source builds them, with every answer
//! checked field by field against what Grafana reads.
//!
//! Where each request comes from (grafana/grafana):
//! - `pkg/promlib/healthcheck.go`: "Save & test" runs the instant query
//!   `1+1` over the time range 1 s..4 s, so `time=4`;
//! - `pkg/promlib/heuristics.go`: `GET api/v1/status/buildinfo`; no
//!   `features` means "Prometheus" (else Mimir, with a ruler API);
//! - `pkg/promlib/client/client.go`: `query_range` (`query`, `start`, `end`,
//!   `step` as seconds, `timeout` when configured), `query` (`query`,
//!   `time`) and `query_exemplars` (`query`, `start`, `end`), as a POST form
//!   with the data source's default HTTP method POST, times as
//!   `strconv.FormatFloat(seconds, 'f', -1, 64)`;
//! - `packages/grafana-prometheus/src/constants.ts`
//!   (`GET_AND_POST_METADATA_ENDPOINTS`) and `resource_clients.ts`:
//!   `api/v1/labels` and `api/v1/series` with the configured method (POST),
//!   `api/v1/label/{name}/values` with GET, each with `start`, `end`,
//!   `match[]` and `limit` (40000, Grafana's default series limit);
//!   `api/v1/metadata` with GET; `api/v1/rules` with GET (recording rules
//!   mapping, alerting).

use serde_json::{Value, json};
use strand_testkit::{DEADLINE, Strand, eventually};

use crate::rules::write_rules;
use crate::support::now_ms;
use crate::support::remote_write::{MetricMetadata, WriteRequest, series, write_ok};

const RULES: &str = r#"
groups:
  - name: shop
    interval: 1s
    rules:
      - record: job:grafana_requests:rate1m
        expr: sum by (job) (rate(grafana_requests_total[1m]))
      - alert: ShopErrors
        expr: grafana_requests_total{code="500"} > 0
        labels:
          severity: page
        annotations:
          summary: "errors on {{ $labels.instance }}"
"#;

/// Grafana's `formatTime`: seconds, shortest decimal form.
fn grafana_time(ms: i64) -> String {
    let seconds = ms as f64 / 1000.0;
    format!("{seconds}")
}

/// A form POST as `createRequest` makes it.
async fn post_form(daemon: &Strand, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(daemon.url(path))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn success_data(status: u16, body: &Value, what: &str) -> Value {
    assert_eq!(status, 200, "{what}: {body}");
    assert_eq!(body["status"], "success", "{what}: {body}");
    assert!(body.get("error").is_none(), "{what}: {body}");
    body["data"].clone()
}

/// Ten minutes of a counter (three series) and a gauge, ending now, with
/// their metadata, remote-written.
async fn shop_metrics(daemon: &Strand, now: i64) {
    let start = now - 600_000;
    let times: Vec<i64> = (0..=40).map(|k| start + k * 15_000).collect();
    let counter = |code: &str, instance: &str, per_step: f64| {
        let samples: Vec<(i64, f64)> = times
            .iter()
            .enumerate()
            .map(|(k, &t)| (t, k as f64 * per_step))
            .collect();
        series(
            "grafana_requests_total",
            &[("job", "shop"), ("instance", instance), ("code", code)],
            &samples,
        )
    };
    let gauge: Vec<(i64, f64)> = times.iter().map(|&t| (t, 21.5)).collect();
    write_ok(
        daemon,
        &WriteRequest {
            timeseries: vec![
                counter("200", "a:9100", 30.0),
                counter("200", "b:9100", 15.0),
                counter("500", "a:9100", 3.0),
                series("grafana_temperature_celsius", &[("job", "shop")], &gauge),
            ],
            metadata: vec![
                MetricMetadata {
                    r#type: 1,
                    metric_family_name: "grafana_requests_total".into(),
                    help: "Requests served.".into(),
                    unit: String::new(),
                },
                MetricMetadata {
                    r#type: 2,
                    metric_family_name: "grafana_temperature_celsius".into(),
                    help: "Room temperature.".into(),
                    unit: "celsius".into(),
                },
            ],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grafana_prometheus_data_source_requests_are_answered_as_grafana_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), RULES);
    let daemon = Strand::start(
        &dir.path().join("data"),
        &["--rules", &rules, "--self-scrape-interval", "0s"],
    )
    .await;
    let now = now_ms();
    shop_metrics(&daemon, now).await;
    let start = grafana_time(now - 600_000);
    let end = grafana_time(now);

    // Save & test: `1+1` at time 4, a scalar.
    let (status, body) =
        post_form(&daemon, "/api/v1/query", &[("query", "1+1"), ("time", "4")]).await;
    let data = success_data(status, &body, "health check");
    assert_eq!(data, json!({"resultType": "scalar", "result": [4.0, "2"]}));

    // Heuristics: a version, and no `features`, so Grafana says Prometheus.
    let (status, body) = daemon.get_json("/api/v1/status/buildinfo").await;
    let data = success_data(status, &body, "buildinfo");
    assert!(
        data["version"].as_str().unwrap().starts_with("2."),
        "{data}"
    );
    for field in ["revision", "branch", "buildUser", "buildDate", "goVersion"] {
        assert!(data[field].is_string(), "{field}: {data}");
    }
    assert!(
        data.get("features")
            .is_none_or(|f| f.as_object().is_some_and(|f| f.is_empty())),
        "{data}"
    );

    // A panel's range query, with the query timeout set.
    let (status, body) = post_form(
        &daemon,
        "/api/v1/query_range",
        &[
            (
                "query",
                "sum by (instance) (rate(grafana_requests_total[1m]))",
            ),
            ("start", &start),
            ("end", &end),
            ("step", "15"),
            ("timeout", "30s"),
        ],
    )
    .await;
    let data = success_data(status, &body, "query_range");
    assert_eq!(data["resultType"], "matrix");
    let mut result = data["result"].as_array().unwrap().clone();
    result.sort_by_key(|r| r["metric"]["instance"].as_str().unwrap().to_owned());
    assert_eq!(result.len(), 2, "{data}");
    assert_eq!(result[0]["metric"], json!({"instance": "a:9100"}));
    assert_eq!(result[1]["metric"], json!({"instance": "b:9100"}));
    let values = result[0]["values"].as_array().unwrap();
    assert!(values.len() > 30, "{data}");
    for pair in values {
        // [seconds as a number, value as a string], on the step grid.
        let t = (pair[0].as_f64().unwrap() * 1000.0).round() as i64;
        assert_eq!((t - (now - 600_000)) % 15_000, 0, "{pair}");
        let v: f64 = pair[1].as_str().unwrap().parse().unwrap();
        // 30 + 3 per 15 s on instance a, once a whole minute is stored.
        if t >= now - 540_000 {
            assert!((v - 2.2).abs() < 1e-9, "{pair}");
        }
    }
    let second: f64 = result[1]["values"][5][1].as_str().unwrap().parse().unwrap();
    assert!((second - 1.0).abs() < 1e-9);

    // The same panel's instant query, at a time with a fraction.
    let at = grafana_time(now - 60_500);
    let (status, body) = post_form(
        &daemon,
        "/api/v1/query",
        &[("query", "grafana_temperature_celsius"), ("time", &at)],
    )
    .await;
    let data = success_data(status, &body, "query");
    assert_eq!(
        data,
        json!({"resultType": "vector", "result": [{
            "metric": {"__name__": "grafana_temperature_celsius", "job": "shop"},
            "value": [at.parse::<f64>().unwrap(), "21.5"],
        }]})
    );

    // Exemplars: none are stored, in Prometheus' shape; the query is still
    // checked, and an expression without a selector gets `null`.
    let (status, body) = post_form(
        &daemon,
        "/api/v1/query_exemplars",
        &[
            (
                "query",
                "histogram_quantile(0.9, rate(grafana_requests_total[1m]))",
            ),
            ("start", &start),
            ("end", &end),
        ],
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "success", "data": []}))
    );
    let (status, body) = post_form(
        &daemon,
        "/api/v1/query_exemplars",
        &[("query", "1+1"), ("start", &start), ("end", &end)],
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "success", "data": null}))
    );
    let (status, body) = post_form(
        &daemon,
        "/api/v1/query_exemplars",
        &[
            ("query", "rate(grafana_requests_total[1m]"),
            ("start", &start),
            ("end", &end),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["status"], "error");
    assert_eq!(body["errorType"], "bad_data");
    assert!(!body["error"].as_str().unwrap().is_empty());
    let (status, body) = post_form(
        &daemon,
        "/api/v1/query_exemplars",
        &[
            ("query", "grafana_requests_total"),
            ("start", &end),
            ("end", &start),
        ],
    )
    .await;
    assert_eq!(
        (status, body["errorType"].clone()),
        (400, json!("bad_data"))
    );

    // The query editor: label names, metric names, label values, series.
    let selector = r#"grafana_requests_total{job="shop"}"#;
    let (status, body) = post_form(
        &daemon,
        "/api/v1/labels",
        &[
            ("start", &start),
            ("end", &end),
            ("match[]", selector),
            ("limit", "40000"),
        ],
    )
    .await;
    let data = success_data(status, &body, "labels");
    assert_eq!(data, json!(["__name__", "code", "instance", "job"]));
    let (status, body) = daemon
        .get_json_query(
            "/api/v1/label/__name__/values",
            &[("start", &start), ("end", &end), ("limit", "40000")],
        )
        .await;
    let data = success_data(status, &body, "metric names");
    let names: Vec<&str> = data
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .filter(|n| n.starts_with("grafana_"))
        .collect();
    assert_eq!(
        names,
        ["grafana_requests_total", "grafana_temperature_celsius"]
    );
    let (status, body) = daemon
        .get_json_query(
            "/api/v1/label/instance/values",
            &[
                ("match[]", selector),
                ("start", &start),
                ("end", &end),
                ("limit", "40000"),
            ],
        )
        .await;
    let data = success_data(status, &body, "label values");
    assert_eq!(data, json!(["a:9100", "b:9100"]));
    let (status, body) = post_form(
        &daemon,
        "/api/v1/series",
        &[
            ("match[]", r#"grafana_requests_total{code="500"}"#),
            ("start", &start),
            ("end", &end),
            ("limit", "40000"),
        ],
    )
    .await;
    let data = success_data(status, &body, "series");
    assert_eq!(
        data,
        json!([{"__name__": "grafana_requests_total", "code": "500", "instance": "a:9100", "job": "shop"}])
    );

    // Metadata: type, help and unit per metric, as a list.
    let (status, body) = daemon.get_json("/api/v1/metadata").await;
    let data = success_data(status, &body, "metadata");
    assert_eq!(
        data["grafana_requests_total"],
        json!([{"type": "counter", "help": "Requests served.", "unit": ""}])
    );
    assert_eq!(
        data["grafana_temperature_celsius"],
        json!([{"type": "gauge", "help": "Room temperature.", "unit": "celsius"}])
    );

    // Rules: Grafana maps recording rules to their expressions and lists
    // alerts; once the rules have run, both are there.
    let groups = eventually(DEADLINE, || async {
        let (status, body) = daemon.get_json("/api/v1/rules").await;
        let data = success_data(status, &body, "rules");
        let rules = data["groups"][0]["rules"].as_array()?.clone();
        (rules.len() == 2 && rules[1]["state"] == "firing").then_some(data)
    })
    .await
    .expect("the rules run and the alert fires");
    let group = &groups["groups"][0];
    assert_eq!(group["name"], "shop");
    assert_eq!(group["file"], rules);
    assert_eq!(group["interval"].as_f64(), Some(1.0));
    let recording = &group["rules"][0];
    assert_eq!(recording["type"], "recording");
    assert_eq!(recording["name"], "job:grafana_requests:rate1m");
    assert_eq!(
        recording["query"],
        "sum by (job) (rate(grafana_requests_total[1m]))"
    );
    assert_eq!(recording["health"], "ok");
    let alerting = &group["rules"][1];
    assert_eq!(alerting["type"], "alerting");
    assert_eq!(alerting["name"], "ShopErrors");
    assert_eq!(
        alerting["query"],
        r#"grafana_requests_total{code="500"} > 0"#
    );
    assert_eq!(alerting["labels"], json!({"severity": "page"}));
    assert_eq!(alerting["health"], "ok");
    let alert = &alerting["alerts"][0];
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["labels"]["instance"], "a:9100");
    assert_eq!(alert["annotations"]["summary"], "errors on a:9100");
    assert!(alert["activeAt"].is_string());
}
