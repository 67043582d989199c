//! `count_logs`, log conditions inside PromQL, end to end: logs sent over
//! OTLP/HTTP JSON with exact timestamps are counted by `/api/v1/query` and
//! `/api/v1/query_range` per service and per attribute, in the window
//! `(t - window, t]`; a comparison keeps the groups over a threshold, a log
//! query without matches counts 0, and a log query the log explorer would
//! refuse is refused with Prometheus's 400 `bad_data`, naming the argument;
//! the metrics explorer charts it as any PromQL, and an alerting rule over
//! it fires.

use serde_json::{Value, json};
use strand_testkit::browser::{goto, in_browser, snapshot, wait_for};
use strand_testkit::{DEADLINE, Strand, eventually};

use crate::support::now_ms;
use crate::support::prom::{self, Labels, label_set};

/// One log record as OTLP/HTTP JSON: its service, time (Unix ms),
/// severity, message and `order_id`.
struct Log {
    service: &'static str,
    at_ms: i64,
    severity: &'static str,
    body: &'static str,
    order: i64,
}

/// Posts the records as one OTLP/HTTP JSON request, a resource per record.
async fn send(daemon: &Strand, logs: &[Log]) {
    let number = |severity: &str| match severity {
        "INFO" => 9,
        _ => 17,
    };
    let resources: Vec<Value> = logs
        .iter()
        .map(|log| {
            json!({
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": log.service}}]},
                "scopeLogs": [{"logRecords": [{
                    "timeUnixNano": (log.at_ms * 1_000_000).to_string(),
                    "severityNumber": number(log.severity),
                    "severityText": log.severity,
                    "body": {"stringValue": log.body},
                    "attributes": [{"key": "order_id", "value": {"intValue": log.order.to_string()}}]
                }]}]
            })
        })
        .collect();
    let response = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/logs"))
        .json(&json!({"resourceLogs": resources}))
        .send()
        .await
        .expect("OTLP/HTTP answers");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// An instant query's vector at `ms` (Unix milliseconds).
async fn at(daemon: &Strand, query: &str, ms: i64) -> Vec<(Labels, f64)> {
    prom::instant_vector(daemon, query, Some(ms as f64 / 1000.0)).await
}

/// Starts Strand and sends it the shop's logs around `t`, a whole minute
/// ten minutes ago (every window below is in the past): payment's declined
/// cards at t - 5m, t - 2m, t - 1m, t and t + 1 ms, order's at t - 30 s, and
/// two info lines. Returns once all are searchable.
async fn start_with_shop_logs(dir: &std::path::Path, args: &[&str]) -> (Strand, i64) {
    let daemon = Strand::start(&dir.join("data"), args).await;
    let t = (now_ms() - 600_000) / 60_000 * 60_000;
    let log = |service, at_ms, severity, body, order| Log {
        service,
        at_ms,
        severity,
        body,
        order,
    };
    let declined = "card declined for order";
    let logs = [
        log("payment", t - 300_000, "ERROR", declined, 1),
        log("payment", t - 120_000, "ERROR", declined, 2),
        log("payment", t - 60_000, "ERROR", declined, 3),
        log("payment", t, "ERROR", declined, 3),
        log("payment", t + 1, "ERROR", declined, 4),
        log("order", t - 30_000, "ERROR", declined, 5),
        log("order", t - 20_000, "INFO", "order created", 6),
        log("gateway", t - 10_000, "INFO", "GET /api/orders 200", 6),
    ];
    send(&daemon, &logs).await;
    let searchable = eventually(DEADLINE, || async {
        let (_, page) = daemon
            .get_json_query("/api/logs", &[("q", ""), ("start", "0"), ("limit", "1")])
            .await;
        (page["total"] == logs.len()).then_some(())
    })
    .await;
    assert!(searchable.is_some(), "the logs never became searchable");
    (daemon, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_logs_counts_matching_records_per_window_and_group() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, t) = start_with_shop_logs(dir.path(), &[]).await;

    // Per service, in (t - 5m, t]: the record at t - 5m and the one 1 ms
    // after t are out.
    let rule = r#"count_logs("severity:error AND declined", "5m", "service")"#;
    assert_eq!(
        at(&daemon, rule, t).await,
        vec![
            (label_set(&[("service", "order")]), 1.0),
            (label_set(&[("service", "payment")]), 3.0),
        ]
    );
    // The alerting rule's condition keeps only the group over the threshold.
    assert_eq!(
        at(&daemon, &format!("{rule} > 2"), t).await,
        vec![(label_set(&[("service", "payment")]), 3.0)]
    );
    // Without grouping, one sample without labels.
    assert_eq!(
        at(&daemon, r#"count_logs("declined", "5m")"#, t).await,
        vec![(Labels::new(), 4.0)]
    );
    // No match is a 0 (so that `== 0` can alert on silence), not nothing.
    assert_eq!(
        at(&daemon, r#"count_logs("nosuchword", "5m")"#, t).await,
        vec![(Labels::new(), 0.0)]
    );
    assert_eq!(
        at(&daemon, r#"count_logs("nosuchword", "5m", "service")"#, t).await,
        vec![]
    );

    // The window's edges: (t - 1m, t] holds t - 1m only when evaluated
    // 1 ms before t, t alone at t, and t and t + 1 ms 1 ms after.
    let edge = r#"count_logs("service:payment", "1m")"#;
    for (time, count) in [(t - 1, 1.0), (t, 1.0), (t + 1, 2.0)] {
        assert_eq!(
            at(&daemon, edge, time).await,
            vec![(Labels::new(), count)],
            "{edge} at {time} (t {t})"
        );
    }

    // Grouping by an attribute and by severity: dots in the field become
    // underscores in the label name.
    assert_eq!(
        at(
            &daemon,
            r#"count_logs("service:payment", "5m", "attributes.order_id", "severity")"#,
            t
        )
        .await,
        vec![
            (
                label_set(&[("attributes_order_id", "2"), ("severity", "error")]),
                1.0
            ),
            (
                label_set(&[("attributes_order_id", "3"), ("severity", "error")]),
                2.0
            ),
        ]
    );

    // A range query counts each step's own window.
    let start = (t - 240_000) as f64 / 1000.0;
    assert_eq!(
        prom::range(
            &daemon,
            r#"count_logs("service:payment", "2m")"#,
            start,
            t as f64 / 1000.0,
            "60"
        )
        .await,
        vec![(
            Labels::new(),
            vec![
                (t - 240_000, 1.0),
                (t - 180_000, 0.0),
                (t - 120_000, 1.0),
                (t - 60_000, 2.0),
                (t, 2.0),
            ]
        )]
    );
    assert_eq!(
        prom::range(
            &daemon,
            r#"count_logs("declined", "1m", "service") > 0"#,
            (t - 60_000) as f64 / 1000.0,
            t as f64 / 1000.0,
            "30"
        )
        .await,
        vec![
            (
                label_set(&[("service", "order")]),
                vec![(t - 30_000, 1.0), (t, 1.0)]
            ),
            (
                label_set(&[("service", "payment")]),
                vec![(t - 60_000, 1.0), (t - 30_000, 1.0), (t, 1.0)]
            ),
        ]
    );

    // A log query the log explorer refuses is refused the same way, as
    // Prometheus's bad_data naming the argument.
    for (query, says) in [
        (
            r#"count_logs("level:error", "5m")"#,
            "did you mean severity:error",
        ),
        (r#"count_logs("declined", "5x")"#, "window"),
        (r#"count_logs("declined", "5m", "level")"#, "level"),
    ] {
        let (status, body) = daemon
            .get_json_query("/api/v1/query", &[("query", query)])
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["errorType"], "bad_data", "{query}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("count_logs") && message.contains(says),
            "{query}: {message}"
        );
    }
    let (status, body) = daemon
        .get_json_query(
            "/api/v1/query_range",
            &[
                ("query", r#"count_logs("level:error", "5m")"#),
                ("start", "0"),
                ("end", "60"),
                ("step", "15"),
            ],
        )
        .await;
    assert_eq!(
        (status, &body["errorType"]),
        (400, &json!("bad_data")),
        "{body}"
    );
    daemon.stop().await;
}

/// The metrics explorer's series table: each row's name and value.
const TABLE: &str = "return [...document.querySelectorAll('.series-table .legend-row')]
    .map(r => [r.dataset.name, r.querySelector('td.num').textContent])";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_explorer_charts_count_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, t) = start_with_shop_logs(dir.path(), &[]).await;
    in_browser("count-logs-explorer", |client| async move {
        // A window of an hour: every point from t + 1 s on counts all
        // declined cards.
        let params = [
            ("query", r#"count_logs("declined", "1h", "service")"#),
            ("start", &(t + 1_000).to_string()),
            ("end", &(t + 120_000).to_string()),
        ];
        let url = format!(
            "{}#/metrics?{}",
            daemon.url("/"),
            serde_urlencoded::to_string(params).unwrap()
        );
        goto(&client, &url).await?;
        wait_for(&client, "a row per service", TABLE, |rows| {
            *rows == json!([["order", "1"], ["payment", "5"]])
        })
        .await?;
        snapshot(&client, "count-logs-explorer").await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerting_rule_over_count_logs_fires_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let rules = crate::rules::write_rules(
        dir.path(),
        r#"
groups:
  - name: payments
    interval: 1s
    rules:
      - alert: PaymentsDeclined
        expr: count_logs("severity:error AND declined", "1h", "service") > 2
        annotations:
          summary: "{{ $labels.service }}: {{ $value }} declined payments"
"#,
    );
    let (daemon, _) = start_with_shop_logs(dir.path(), &["--rules", &rules]).await;
    // Payment's five declined cards are over the threshold, order's one is not.
    let alerts = eventually(DEADLINE, || crate::rules::firing(&daemon))
        .await
        .unwrap_or_else(|| panic!("no alert fired\n{}", daemon.log()));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        alerts[0]["labels"],
        json!({"alertname": "PaymentsDeclined", "service": "payment"})
    );
    assert_eq!(
        alerts[0]["annotations"]["summary"],
        "payment: 5 declined payments"
    );
    daemon.stop().await;
}
