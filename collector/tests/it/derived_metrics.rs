//! End to end: metrics Strand makes itself. It scrapes its own `/metrics` (and
//! any configured target) into its metrics store, with `up` and staleness as
//! Prometheus has them, and derives RED metrics and service graph metrics
//! from the spans it receives — all queryable with PromQL.

use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use strand_testkit::{DEADLINE, Strand, eventually};

use crate::support::shop_fixture::send_everything;

/// Values of an instant query, keyed by one label.
async fn instant(daemon: &Strand, query: &str, key: &str) -> Vec<(String, f64)> {
    let path = format!("/api/v1/query?query={}", strand_testkit::urlencode(query));
    let (status, body) = daemon.get_json(&path).await;
    assert_eq!(status, 200, "{query}: {body}");
    body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let value: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            (r["metric"][key].as_str().unwrap_or("").to_owned(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn self_scrape_and_configured_targets_report_up() {
    let dir = tempfile::tempdir().unwrap();
    // A target that never answers: up 0, like Prometheus.
    let config = dir.path().join("strand.toml");
    std::fs::write(
        &config,
        "[[scrape]]\njob = \"gone\"\ntargets = [\"127.0.0.1:9\"]\ninterval = \"1s\"\ntimeout = \"500ms\"\n",
    )
    .unwrap();
    let daemon = Strand::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--self-scrape-interval",
            "1s",
        ],
    )
    .await;
    let up = eventually(Duration::from_secs(20), || async {
        let up = instant(&daemon, "up", "job").await;
        (up.len() == 2).then_some(up)
    })
    .await
    .expect("up of both jobs");
    assert!(up.contains(&("strand".to_owned(), 1.0)), "{up:?}");
    assert!(up.contains(&("gone".to_owned(), 0.0)), "{up:?}");
    let (_, body) = daemon
        .get_json("/api/v1/series?match[]=strand_wal_written_bytes_total")
        .await;
    assert_eq!(body["data"][0]["job"], Value::from("strand"));
    let scraped = instant(&daemon, r#"scrape_samples_scraped{job="strand"}"#, "job").await;
    assert!(scraped[0].1 > 10.0, "{scraped:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn red_metrics_are_derived_from_spans() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(
        dir.path(),
        &[
            "--self-scrape-interval",
            "0s",
            "--derived-metrics-interval",
            "1s",
        ],
    )
    .await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(daemon.grpc_endpoint())
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("payment").build())
        .with_simple_exporter(exporter)
        .build();
    let tracer = provider.tracer("test");
    for i in 0..5 {
        let mut span = tracer
            .span_builder("POST /charge")
            .with_kind(SpanKind::Server)
            .start(&tracer);
        if i == 0 {
            span.set_status(Status::error("card declined"));
        }
        span.end();
    }
    provider.force_flush().unwrap();
    // Derived metrics are written like a scrape: here every second.
    let calls = eventually(DEADLINE, || async {
        let calls = instant(
            &daemon,
            r#"sum by (status_code) (traces_span_metrics_calls_total{service_name="payment", span_name="POST /charge", span_kind="SPAN_KIND_SERVER"})"#,
            "status_code",
        )
        .await;
        // A write may fall between two of the exports: wait for all five.
        let all = calls.contains(&("STATUS_CODE_UNSET".to_owned(), 4.0))
            && calls.contains(&("STATUS_CODE_ERROR".to_owned(), 1.0));
        all.then_some(calls)
    })
    .await;
    assert!(calls.is_some(), "span metrics of all five spans");
    let count = instant(
        &daemon,
        r#"sum(traces_span_metrics_duration_seconds_count{service_name="payment"})"#,
        "",
    )
    .await;
    assert_eq!(count[0].1, 5.0);
    let bucket = instant(
        &daemon,
        r#"sum(traces_span_metrics_duration_seconds_bucket{service_name="payment", le="+Inf"})"#,
        "",
    )
    .await;
    assert_eq!(bucket[0].1, 5.0);
    provider.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn service_graph_metrics_are_derived_from_calls_between_services() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(
        &dir.path().join("data"),
        &[
            "--self-scrape-interval",
            "0s",
            "--derived-metrics-interval",
            "1s",
        ],
    )
    .await;
    // gateway -> order -> (inventory, payment), payment failing.
    send_everything(&daemon).await;
    let edge = |r: &Value| {
        format!(
            "{}->{}",
            r["metric"]["client"].as_str().unwrap_or("?"),
            r["metric"]["server"].as_str().unwrap_or("?")
        )
    };
    let by_edge = |query: &'static str| {
        let daemon = &daemon;
        async move {
            let path = format!("/api/v1/query?query={}", strand_testkit::urlencode(query));
            let (status, body) = daemon.get_json(&path).await;
            assert_eq!(status, 200, "{query}: {body}");
            let mut values: Vec<(String, f64)> = body["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (edge(r), r["value"][1].as_str().unwrap().parse().unwrap()))
                .collect();
            values.sort_by(|a, b| a.0.cmp(&b.0));
            values
        }
    };
    let edges = ["gateway->order", "order->inventory", "order->payment"];
    let requests = eventually(Duration::from_secs(30), || async {
        let requests = by_edge("traces_service_graph_request_total").await;
        (requests.len() == 3).then_some(requests)
    })
    .await
    .expect("service graph series");
    let ones: Vec<(String, f64)> = edges.iter().map(|e| (e.to_string(), 1.0)).collect();
    assert_eq!(requests, ones);
    // Only the payment call failed (the payment span has error status).
    let failed = by_edge("traces_service_graph_request_failed_total").await;
    let expected: Vec<(String, f64)> = edges
        .iter()
        .map(|e| (e.to_string(), f64::from(*e == "order->payment")))
        .collect();
    assert_eq!(failed, expected);
    // The called side's duration: order 95 ms, inventory 30 ms, payment 50 ms.
    let sums = by_edge("traces_service_graph_request_server_seconds_sum").await;
    for ((name, sum), want) in sums.iter().zip([0.095, 0.030, 0.050]) {
        assert!((sum - want).abs() < 1e-6, "{name}: {sum}");
    }
    let counts = by_edge("traces_service_graph_request_server_seconds_count").await;
    assert_eq!(counts, ones);
    let fast = by_edge(r#"traces_service_graph_request_server_seconds_bucket{le="0.01"}"#).await;
    let slow = by_edge(r#"traces_service_graph_request_server_seconds_bucket{le="0.1"}"#).await;
    assert!(fast.iter().all(|(_, v)| *v == 0.0), "{fast:?}");
    assert_eq!(slow, ones);
    // The series start from zero, so the only call counts in an increase.
    let increase =
        by_edge("sum by (client, server) (increase(traces_service_graph_request_total[10m]))")
            .await;
    assert_eq!(increase.len(), 3);
    assert!(increase.iter().all(|(_, v)| *v > 0.0), "{increase:?}");
}
