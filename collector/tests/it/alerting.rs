//! Alert delivery to a real Alertmanager (Debian's
//! `prometheus-alertmanager`, started on a free port by the testkit): what
//! Strand's notifier posts is what Alertmanager holds and notifies, firing
//! and then resolved, and an Alertmanager that is down or silent costs
//! counted errors, never a stuck queue.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use strand::SelfMetrics;
use strand::rules::{Alert, AlertState, AlertToSend, Notifier, RuleContext};
use strand_testkit::{Alertmanager, DEADLINE, eventually, free_port};

const EXPR: &str = "sum by (service_name) (rate(traces_span_metrics_calls_total{status_code=\"STATUS_CODE_ERROR\"}[1m])) > 0.5";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An alert of `PaymentFailures` as a rule group hands it over: firing
/// since `fired_at_ms`, or resolved at `resolved_at_ms`.
fn payment_alert(fired_at_ms: i64, resolved_at_ms: Option<i64>) -> AlertToSend {
    AlertToSend {
        expr: EXPR.into(),
        alert: Alert {
            labels: BTreeMap::from([
                ("alertname".into(), "PaymentFailures".into()),
                ("service_name".into(), "payment".into()),
                ("severity".into(), "page".into()),
            ]),
            annotations: BTreeMap::from([(
                "summary".into(),
                "payment fails 0.8 requests/s".into(),
            )]),
            state: match resolved_at_ms {
                Some(_) => AlertState::Inactive,
                None => AlertState::Firing,
            },
            value: 0.8,
            active_at_ms: fired_at_ms - 60_000,
            fired_at_ms: Some(fired_at_ms),
            resolved_at_ms,
            last_sent_at_ms: Some(now_ms()),
            valid_until_ms: now_ms() + 4 * 60_000,
            keep_firing_since_ms: None,
        },
    }
}

/// A notifier for the Alertmanagers at `urls` (as `--alertmanager` takes
/// them, with `extra` flags), running until the returned sender is dropped.
fn start_notifier(
    urls: &[&str],
    extra: &[&str],
) -> (
    std::sync::Arc<Notifier>,
    SelfMetrics,
    tokio::sync::oneshot::Sender<()>,
) {
    let mut args: Vec<&str> = urls
        .iter()
        .flat_map(|url| ["--alertmanager", url])
        .collect();
    args.extend(extra);
    let settings = strand::Config::from_args(args).unwrap().alertmanagers;
    let context = RuleContext {
        external_labels: BTreeMap::from([("cluster".into(), "test-eu".into())]),
        external_url: "http://strand.test:7070".into(),
        ..RuleContext::default()
    };
    let metrics = SelfMetrics::new();
    let notifier = Notifier::new(&settings, &context, metrics.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(notifier.clone().run(async move {
        let _ = stopped.await;
    }));
    (notifier, metrics, stop)
}

/// The value of the sample `series` (name and labels, as rendered) in a
/// `/metrics` text.
fn sample(metrics_text: &str, series: &str) -> Option<f64> {
    metrics_text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn notified_with_status<'a>(notified: &'a [Value], status: &str) -> Option<&'a Value> {
    notified.iter().find(|alert| {
        alert["status"] == status && alert["labels"]["alertname"] == "PaymentFailures"
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn notifier_delivers_firing_then_resolved_to_a_real_alertmanager() {
    let am = Alertmanager::start().await;
    let (notifier, metrics, _stop) = start_notifier(&[&am.url], &[]);
    let fired_at = now_ms() - 30_000;
    notifier.send(vec![payment_alert(fired_at, None)]);

    let held = eventually(DEADLINE, || async {
        am.alerts("active=true").await.into_iter().next()
    })
    .await
    .unwrap_or_else(|| panic!("Alertmanager never held the alert:\n{}", am.log()));
    assert_eq!(held["status"]["state"], "active", "{held}");
    assert_eq!(
        held["labels"],
        serde_json::json!({
            "alertname": "PaymentFailures",
            "service_name": "payment",
            "severity": "page",
            "cluster": "test-eu",
        })
    );
    assert_eq!(
        held["annotations"]["summary"],
        "payment fails 0.8 requests/s"
    );
    let starts_at =
        chrono::DateTime::parse_from_rfc3339(held["startsAt"].as_str().unwrap()).expect("RFC 3339");
    assert_eq!(starts_at.timestamp_millis(), fired_at, "{held}");
    let generator = held["generatorURL"].as_str().unwrap();
    let query = generator
        .strip_prefix("http://strand.test:7070/#/metrics?")
        .unwrap_or_else(|| panic!("a link into the metrics explorer: {generator}"));
    let params: BTreeMap<String, String> = serde_urlencoded::from_str(query).unwrap();
    assert_eq!(params["query"], EXPR, "the link opens the expression");

    let firing = eventually(DEADLINE, || async {
        notified_with_status(&am.notified(), "firing").cloned()
    })
    .await
    .unwrap_or_else(|| panic!("no firing notification:\n{}", am.log()));
    assert_eq!(firing["labels"]["cluster"], "test-eu");

    let resolved_at = now_ms();
    notifier.send(vec![payment_alert(fired_at, Some(resolved_at))]);
    let resolved = eventually(DEADLINE, || async {
        notified_with_status(&am.notified(), "resolved").cloned()
    })
    .await
    .unwrap_or_else(|| panic!("no resolved notification:\n{}", am.log()));
    let ends_at = chrono::DateTime::parse_from_rfc3339(resolved["endsAt"].as_str().unwrap())
        .expect("RFC 3339");
    assert_eq!(ends_at.timestamp_millis(), resolved_at, "{resolved}");
    assert!(
        am.alerts("active=true").await.is_empty(),
        "a resolved alert is no longer active"
    );

    let text = metrics.render();
    let endpoint = format!("{}/api/v2/alerts", am.url);
    assert_eq!(
        sample(
            &text,
            &format!("strand_notifications_sent_total{{alertmanager=\"{endpoint}\"}}")
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "strand_notifications_alertmanagers_discovered"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "strand_notifications_dropped_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanagers_that_are_down_or_silent_count_errors_and_never_block() {
    let am = Alertmanager::start().await;
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let (notifier, metrics, _stop) =
        start_notifier(&[&am.url, &silent_url], &["--alertmanager-timeout", "1s"]);
    notifier.send(vec![payment_alert(now_ms(), None)]);
    eventually(DEADLINE, || async {
        (!am.alerts("active=true").await.is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the live Alertmanager got nothing:\n{}", am.log()));
    let silent_errors =
        format!("strand_notifications_errors_total{{alertmanager=\"{silent_url}/api/v2/alerts\"}}");
    eventually(DEADLINE, || async {
        (sample(&metrics.render(), &silent_errors) == Some(1.0)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the silent one's timeout is counted:\n{}", metrics.render()));
    assert_eq!(
        sample(&metrics.render(), "strand_notifications_dropped_total"),
        Some(0.0),
        "one Alertmanager took the batch"
    );

    // Nothing listens: every batch fails, and is dropped and counted; a
    // queue of 10 keeps only the newest alerts while the first batch is out.
    let down = format!("http://{}", free_port());
    let (notifier, metrics, _stop) = start_notifier(&[&down], &["--alertmanager-queue", "10"]);
    for _ in 0..5 {
        notifier.send((0..8).map(|_| payment_alert(now_ms(), None)).collect());
    }
    let down_errors =
        format!("strand_notifications_errors_total{{alertmanager=\"{down}/api/v2/alerts\"}}");
    let text = eventually(DEADLINE, || async {
        let text = metrics.render();
        let errors = sample(&text, &down_errors).unwrap_or(0.0);
        let dropped = sample(&text, "strand_notifications_dropped_total").unwrap_or(0.0);
        let queued = sample(&text, "strand_notifications_queue_length").unwrap_or(1.0);
        // Every alert is either refused (errors, then dropped) or pushed
        // out of the full queue (dropped only).
        (queued == 0.0 && dropped == 40.0 && errors > 0.0).then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("all 40 alerts accounted for:\n{}", metrics.render()));
    assert_eq!(
        sample(&text, "strand_notifications_queue_capacity"),
        Some(10.0)
    );
}

/// The shop's payment error ratio over the last 10 s, as an alert that
/// fires after 2 s.
const SHOP_RULES: &str = r#"
groups:
  - name: shop
    interval: 1s
    rules:
      - alert: PaymentErrorRatio
        expr: |
          sum by (service_name) (rate(traces_span_metrics_calls_total{service_name="payment",status_code="STATUS_CODE_ERROR"}[10s]))
            / sum by (service_name) (rate(traces_span_metrics_calls_total{service_name="payment"}[10s]))
            > 0.2
        for: 2s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.service_name }} fails {{ $value | humanizePercentage }} of its calls"
"#;

/// More than 3 declined payments logged as errors within 10 s, per service.
const LOG_RULES: &str = r#"
groups:
  - name: payment-logs
    interval: 1s
    rules:
      - alert: PaymentsDeclined
        expr: count_logs("severity:error AND declined", "10s", "service") > 3
        for: 1s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.service }}: {{ $value }} declined payments in 10s"
"#;

/// How long a fault may take to reach Alertmanager, and to resolve there.
const END_TO_END: Duration = Duration::from_secs(90);

/// A daemon evaluating `rules` and sending to `am`, with an external label;
/// the directory holds its data and the rule file.
async fn daemon_alerting_to(
    am: &Alertmanager,
    rules: &str,
    extra: &[&str],
) -> (strand_testkit::Strand, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rules).unwrap();
    let mut args = vec![
        "--rules",
        file.to_str().unwrap(),
        "--alertmanager",
        &am.url,
        "--external-label",
        "cluster=shop-test",
    ];
    args.extend(extra);
    let daemon = strand_testkit::Strand::start(&dir.path().join("data"), &args).await;
    (daemon, dir)
}

/// Runs `fault` until Alertmanager holds an alert named `alertname`, and
/// checks what every alert of the daemon carries: active, the rule's and
/// the external labels, and a link into this daemon's metrics explorer.
async fn fires<F, Fut>(
    am: &Alertmanager,
    daemon: &strand_testkit::Strand,
    alertname: &str,
    mut fault: F,
) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let filter = format!("filter=alertname=\"{alertname}\"");
    let held = eventually(END_TO_END, || {
        let step = fault();
        let filter = &filter;
        async move {
            step.await;
            am.alerts(filter).await.into_iter().next()
        }
    })
    .await
    .unwrap_or_else(|| panic!("Alertmanager never got {alertname}:\n{}", am.log()));
    assert_eq!(held["status"]["state"], "active", "{held}");
    assert_eq!(held["labels"]["severity"], "page", "{held}");
    assert_eq!(held["labels"]["cluster"], "shop-test", "{held}");
    let generator = held["generatorURL"].as_str().unwrap();
    assert!(
        generator.starts_with(&format!("{}/#/metrics?query=", daemon.url(""))),
        "links into this daemon's metrics explorer: {generator}"
    );
    held
}

/// Runs `healthy` until Alertmanager notified `alertname` resolved, then
/// checks it holds nothing active and the daemon counted what it sent.
async fn resolves<F, Fut>(
    am: &Alertmanager,
    daemon: &strand_testkit::Strand,
    alertname: &str,
    mut healthy: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let resolved = eventually(END_TO_END, || {
        let step = healthy();
        async move {
            step.await;
            am.notified()
                .into_iter()
                .find(|a| a["status"] == "resolved" && a["labels"]["alertname"] == alertname)
        }
    })
    .await
    .unwrap_or_else(|| panic!("{alertname} never resolved:\n{}", am.log()));
    assert_eq!(resolved["labels"]["cluster"], "shop-test");
    assert!(am.alerts("active=true").await.is_empty());
    let text = daemon.self_metrics().await;
    let sent = format!(
        "strand_notifications_sent_total{{alertmanager=\"{}/api/v2/alerts\"}}",
        am.url
    );
    assert!(
        sample(&text, &sent).is_some_and(|n| n >= 2.0),
        "firing and resolved were sent: {text}"
    );
}

/// End to end: a payment fault in the shop's traffic makes a rule over the
/// span-derived RED metrics fire, Alertmanager gets the alert, and once the
/// fault is gone the alert resolves there too.
#[tokio::test(flavor = "multi_thread")]
async fn a_shop_payment_fault_fires_in_alertmanager_and_resolves_after_it_stops() {
    use crate::support::shop_fixture::send_shop_calls;

    let am = Alertmanager::start().await;
    let (daemon, _dir) =
        daemon_alerting_to(&am, SHOP_RULES, &["--derived-metrics-interval", "1s"]).await;
    send_shop_calls(&daemon, 4, 0).await;
    // The fault: every payment fails.
    let held = fires(&am, &daemon, "PaymentErrorRatio", || {
        send_shop_calls(&daemon, 2, 2)
    })
    .await;
    assert_eq!(held["labels"]["service_name"], "payment");
    assert!(
        held["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("payment fails ") && s.ends_with("% of its calls")),
        "{held}"
    );
    // The fault is gone: payments succeed again.
    resolves(&am, &daemon, "PaymentErrorRatio", || {
        send_shop_calls(&daemon, 2, 0)
    })
    .await;
}

/// `n` log lines of the payment service through `_bulk`, as a shipper
/// sends them: errors saying a card was declined, or accepted payments.
async fn payment_logs(daemon: &strand_testkit::Strand, n: usize, declined: bool) {
    let time = humantime::format_rfc3339_millis(SystemTime::now());
    let (level, message) = match declined {
        true => ("error", "card declined by issuer"),
        false => ("info", "payment accepted"),
    };
    let line = format!(
        "{{\"create\":{{}}}}\n{{\"@timestamp\":\"{time}\",\"service\":\"payment\",\"level\":\"{level}\",\"message\":\"{message}\"}}\n"
    );
    let answer = crate::support::post_bulk(daemon, line.repeat(n)).await;
    assert_eq!(answer["errors"], false, "{answer}");
}

/// End to end, from logs: declined payments logged by the payment service
/// make a `count_logs` rule fire in Alertmanager, and once they stop (and
/// leave the window) it resolves.
#[tokio::test(flavor = "multi_thread")]
async fn declined_payments_in_the_logs_fire_in_alertmanager_and_resolve() {
    let am = Alertmanager::start().await;
    let (daemon, _dir) = daemon_alerting_to(&am, LOG_RULES, &[]).await;
    payment_logs(&daemon, 3, false).await;
    let held = fires(&am, &daemon, "PaymentsDeclined", || {
        payment_logs(&daemon, 2, true)
    })
    .await;
    assert_eq!(held["labels"]["service"], "payment");
    assert!(
        held["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("payment: ") && s.ends_with(" declined payments in 10s")),
        "{held}"
    );
    resolves(&am, &daemon, "PaymentsDeclined", || {
        payment_logs(&daemon, 1, false)
    })
    .await;
}

/// A request an Alertmanager refuses is logged with its status and answer,
/// and counted, by the daemon as it runs in production.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_notification_is_logged_with_the_alertmanagers_answer() {
    let am = Alertmanager::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("always.rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: always\n    interval: 1s\n    rules:\n      - alert: Always\n        expr: vector(1)\n",
    )
    .unwrap();
    // A path prefix this Alertmanager does not serve: it answers 404.
    let wrong = format!("{}/not-here", am.url);
    let daemon = strand_testkit::Strand::spawn(
        env!("CARGO_BIN_EXE_strand"),
        &dir.path().join("data"),
        &["--rules", rules.to_str().unwrap(), "--alertmanager", &wrong],
    )
    .await;
    let logged = eventually(DEADLINE, || async {
        let log = daemon.log();
        log.lines()
            .find(|line| line.contains("NotificationSendFailed"))
            .map(str::to_owned)
    })
    .await
    .unwrap_or_else(|| panic!("no NotificationSendFailed:\n{}", daemon.log()));
    assert!(
        logged.contains("404 Not Found: 404 page not found"),
        "the status and Alertmanager's answer: {logged}"
    );
    assert!(
        logged.contains(&format!("{wrong}/api/v2/alerts")),
        "names the Alertmanager: {logged}"
    );
    let errors =
        format!("strand_notifications_errors_total{{alertmanager=\"{wrong}/api/v2/alerts\"}}");
    let text = daemon.self_metrics().await;
    assert!(sample(&text, &errors).is_some_and(|n| n >= 1.0), "{text}");
    assert!(
        sample(&text, "strand_notifications_dropped_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

/// An https Alertmanager's certificate is checked against `SSL_CERT_FILE`
/// (as Go programs, Prometheus among them, take it), so a private CA works.
/// In a process of its own: the variable is process-wide.
#[test]
fn an_https_alertmanager_is_trusted_through_ssl_cert_file() {
    strand_testkit::in_own_process(|| async {
        let ca = strand_testkit::pki::TestCa::new("alerting test CA");
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.write(dir.path());
        // SAFETY: this process runs this one test, and sets it before any
        // thread of the test reads the environment.
        unsafe { std::env::set_var("SSL_CERT_FILE", &ca_file) };
        let am = Alertmanager::start_tls(&ca).await;
        assert!(am.url.starts_with("https://"), "{}", am.url);
        let (notifier, metrics, _stop) = start_notifier(&[&am.url], &[]);
        notifier.send(vec![payment_alert(now_ms(), None)]);
        let held = eventually(DEADLINE, || async {
            am.alerts("active=true").await.into_iter().next()
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "nothing arrived over https:\n{}\n{}",
                metrics.render(),
                am.log()
            )
        });
        assert_eq!(held["labels"]["alertname"], "PaymentFailures");
    });
}
