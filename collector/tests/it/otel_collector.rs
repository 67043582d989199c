//! The OpenTelemetry Collector as a real client: a service sends traces,
//! logs and metrics with the OpenTelemetry SDK's OTLP exporters to a
//! Collector (built from `testkit/otelcol`), which forwards them with its own
//! exporters: `otlp_grpc` (formerly `otlp`) to one Strand, `otlp_http`
//! (formerly `otlphttp`) to a second, and the metrics with
//! `prometheus_remote_write` to `/api/v1/write` of a third. Every span, log
//! and sample must arrive exactly once, with its attributes, and PromQL must
//! answer on all three.

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use strand_testkit::{DEADLINE, OtelCollector, Strand, eventually};

use crate::support::prom;

const SERVICE: &str = "checkout";
const CHILD_SPANS: i64 = 5;
const LOGS: i64 = 5;

fn resource() -> Resource {
    Resource::builder()
        .with_service_name(SERVICE)
        .with_attributes([
            KeyValue::new("service.instance.id", "i-1"),
            KeyValue::new("host.name", "box-1"),
        ])
        .build()
}

/// What the service sent: the trace's id and its span ids.
struct SentTrace {
    trace_id: String,
    span_ids: BTreeSet<String>,
}

/// One trace over OTLP/gRPC to the Collector: a root span and five children,
/// each with attributes of every type.
async fn send_trace(collector: &OtelCollector) -> SentTrace {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(collector.grpc_endpoint.clone())
        .build()
        .expect("exporter builds");
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    let tracer = provider.tracer("shop");
    let mut root = tracer.start("POST /checkout");
    root.set_attribute(KeyValue::new("http.route", "/checkout"));
    let root_context = root.span_context().clone();
    let mut span_ids = BTreeSet::from([root_context.span_id().to_string()]);
    let parent = Context::new().with_remote_span_context(root_context.clone());
    for n in 0..CHILD_SPANS {
        let mut child = tracer.start_with_context(format!("step {n}"), &parent);
        child.set_attribute(KeyValue::new("step.index", n));
        child.set_attribute(KeyValue::new("step.weight", n as f64 + 0.5));
        child.set_attribute(KeyValue::new("step.last", n == CHILD_SPANS - 1));
        child.add_event(
            "step done",
            vec![KeyValue::new("step.name", format!("s{n}"))],
        );
        span_ids.insert(child.span_context().span_id().to_string());
        child.end();
    }
    root.end();
    tokio::task::spawn_blocking(move || provider.shutdown().expect("spans exported"))
        .await
        .unwrap();
    SentTrace {
        trace_id: root_context.trace_id().to_string(),
        span_ids,
    }
}

/// Five logs over OTLP/HTTP (protobuf) to the Collector, `collector log <n>`
/// with `order_id` = n.
async fn send_logs(collector: &OtelCollector) {
    let endpoint = format!("{}/v1/logs", collector.http_endpoint);
    tokio::task::spawn_blocking(move || {
        let exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()
            .expect("exporter builds");
        let provider = SdkLoggerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build();
        let logger = provider.logger("shop");
        for n in 0..LOGS {
            let mut record = logger.create_log_record();
            record.set_timestamp(std::time::SystemTime::now());
            record.set_severity_number(Severity::Warn);
            record.set_severity_text("WARN");
            record.set_body(AnyValue::from(format!("collector log {n}")));
            record.add_attribute("order_id", n);
            logger.emit(record);
        }
        provider.shutdown().expect("logs exported");
    })
    .await
    .unwrap();
}

/// Metrics over OTLP/gRPC to the Collector, exported once (cumulative): a
/// counter, a gauge and a histogram with explicit buckets. Dyadic values,
/// so sums are exact. The caller flushes, once: shutting down exports again.
fn send_metrics(collector: &OtelCollector) -> SdkMeterProvider {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(collector.grpc_endpoint.clone())
        .build()
        .expect("exporter builds");
    let reader = PeriodicReader::builder(exporter)
        .with_interval(Duration::from_secs(3600))
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource())
        .build();
    let meter = provider.meter("shop");
    let orders = meter.u64_counter("orders.created").build();
    orders.add(3, &[KeyValue::new("payment.method", "card")]);
    orders.add(4, &[KeyValue::new("payment.method", "card")]);
    orders.add(5, &[KeyValue::new("payment.method", "cash")]);
    meter
        .f64_gauge("memory.usage")
        .with_unit("By")
        .build()
        .record(2048.5, &[]);
    let duration = meter
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .with_boundaries(vec![0.125, 0.5, 1.0])
        .build();
    for seconds in [0.0625, 0.25, 0.375, 0.75, 2.0] {
        duration.record(seconds, &[KeyValue::new("http.route", "/pay")]);
    }
    provider
}

/// The trace arrived whole, each span once, with its attributes and events.
async fn assert_trace(daemon: &Strand, via: &str, sent: &SentTrace) {
    let path = format!("/api/traces/{}", sent.trace_id);
    let want = sent.span_ids.len();
    let trace = eventually(DEADLINE, || async {
        let (status, body) = daemon.get_json(&path).await;
        let spans = body["data"][0]["spans"].as_array().map_or(0, Vec::len);
        (status == 200 && spans >= want).then(|| body["data"][0].clone())
    })
    .await
    .unwrap_or_else(|| panic!("{via}: the trace did not arrive whole\n{}", daemon.log()));
    let spans = trace["spans"].as_array().unwrap();
    let ids: Vec<&str> = spans
        .iter()
        .map(|s| s["spanID"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), want, "{via}: a span arrived twice: {ids:?}");
    assert_eq!(
        ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        sent.span_ids,
        "{via}"
    );
    for span in spans {
        let process = &trace["processes"][span["processID"].as_str().unwrap()];
        assert_eq!(process["serviceName"], SERVICE, "{via}: {process}");
        assert!(
            has_tag(&process["tags"], "host.name", &Value::from("box-1")),
            "{via}: {process}"
        );
        let name = span["operationName"].as_str().unwrap();
        let tags = &span["tags"];
        if name == "POST /checkout" {
            assert!(
                has_tag(tags, "http.route", &Value::from("/checkout")),
                "{via}: {span}"
            );
            continue;
        }
        let n: i64 = name
            .strip_prefix("step ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{via}: unexpected span {span}"));
        assert!(
            has_tag(tags, "step.index", &Value::from(n)),
            "{via}: {span}"
        );
        assert!(
            has_tag(tags, "step.weight", &Value::from(n as f64 + 0.5)),
            "{via}: {span}"
        );
        assert!(
            has_tag(tags, "step.last", &Value::from(n == CHILD_SPANS - 1)),
            "{via}: {span}"
        );
        let events = span["logs"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{via}: {span}");
        assert!(
            has_tag(
                &events[0]["fields"],
                "step.name",
                &Value::from(format!("s{n}"))
            ),
            "{via}: {span}"
        );
    }
}

fn has_tag(tags: &Value, key: &str, value: &Value) -> bool {
    tags.as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["key"] == key && &t["value"] == value))
}

/// Every log arrived once, with its service, severity and attribute.
async fn assert_logs(daemon: &Strand, via: &str) {
    let query = [("q", "\"collector log\""), ("start", "0"), ("limit", "100")];
    let page = eventually(DEADLINE, || async {
        let (status, page) = daemon.get_json_query("/api/logs", &query).await;
        (status == 200 && page["total"].as_i64() >= Some(LOGS)).then_some(page)
    })
    .await
    .unwrap_or_else(|| panic!("{via}: the logs did not arrive\n{}", daemon.log()));
    assert_eq!(page["total"], LOGS, "{via}: {page}");
    let mut seen = BTreeSet::new();
    for log in page["logs"].as_array().unwrap() {
        let n = log["attributes"]["order_id"].as_i64().unwrap();
        assert_eq!(log["body"], format!("collector log {n}"), "{via}: {log}");
        assert_eq!(log["service"], SERVICE, "{via}: {log}");
        assert_eq!(log["severity"], "warn", "{via}: {log}");
        assert!(seen.insert(n), "{via}: log {n} twice");
    }
    assert_eq!(seen, (0..LOGS).collect(), "{via}");
}

/// Every sample arrived once, and PromQL answers over it.
async fn assert_metrics(daemon: &Strand, via: &str) {
    // One export carries everything: wait for its last instrument.
    prom::wait_for_value(
        daemon,
        r#"http_server_request_duration_seconds_count{job="checkout"}"#,
        5.0,
        DEADLINE,
    )
    .await;
    let expectations: &[(&str, f64)] = &[
        (
            r#"orders_created_total{job="checkout",instance="i-1",payment_method="card"}"#,
            7.0,
        ),
        (
            r#"orders_created_total{job="checkout",instance="i-1",payment_method="cash"}"#,
            5.0,
        ),
        (r#"sum(orders_created_total{job="checkout"})"#, 12.0),
        (r#"memory_usage_bytes{job="checkout"}"#, 2048.5),
        (
            r#"http_server_request_duration_seconds_sum{job="checkout",http_route="/pay"}"#,
            3.4375,
        ),
        (
            r#"http_server_request_duration_seconds_bucket{job="checkout",le="0.5"}"#,
            3.0,
        ),
        (
            r#"http_server_request_duration_seconds_bucket{job="checkout",le="+Inf"}"#,
            5.0,
        ),
        // Rank 2.5 lies in (0.125, 0.5], which holds ranks 2 and 3.
        (
            r#"histogram_quantile(0.5, http_server_request_duration_seconds_bucket{job="checkout"})"#,
            0.40625,
        ),
        (r#"count(orders_created_total{job="checkout"})"#, 2.0),
        (
            r#"count(http_server_request_duration_seconds_bucket{job="checkout"})"#,
            4.0,
        ),
    ];
    // Each series holds one sample: the export arrived once.
    let once: Vec<String> = [
        "orders_created_total",
        "memory_usage_bytes",
        "http_server_request_duration_seconds_bucket",
        "http_server_request_duration_seconds_sum",
        "http_server_request_duration_seconds_count",
    ]
    .iter()
    .map(|name| format!(r#"max(count_over_time({name}{{job="checkout"}}[1h]))"#))
    .collect();
    let mut wrong = Vec::new();
    let checks = expectations
        .iter()
        .copied()
        .chain(once.iter().map(|q| (q.as_str(), 1.0)));
    for (query, expected) in checks {
        let got = prom::instant_vector(daemon, query, None).await;
        if got.len() != 1 || got[0].1 != expected {
            wrong.push(format!("{query}: want {expected}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{via}: wrong answers:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_exporters_deliver_everything_once() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let via_grpc = Strand::start(&dirs[0].path().join("data"), &[]).await;
    let via_http = Strand::start(&dirs[1].path().join("data"), &[]).await;
    let via_remote_write = Strand::start(&dirs[2].path().join("data"), &[]).await;
    let exporters = format!(
        "  otlp_grpc:\n    endpoint: {}\n    tls:\n      insecure: true\n\
         \x20 otlp_http:\n    endpoint: {}\n\
         \x20 prometheus_remote_write:\n    endpoint: {}\n",
        via_grpc.otlp_grpc,
        via_http.otlp_http_url(""),
        via_remote_write.url("/api/v1/write"),
    );
    let collector = OtelCollector::start(
        &exporters,
        &[
            ("traces", &["otlp_grpc", "otlp_http"]),
            ("logs", &["otlp_grpc", "otlp_http"]),
            (
                "metrics",
                &["otlp_grpc", "otlp_http", "prometheus_remote_write"],
            ),
        ],
    )
    .await;

    let trace = send_trace(&collector).await;
    send_logs(&collector).await;
    let meters = send_metrics(&collector);
    {
        let meters = meters.clone();
        tokio::task::spawn_blocking(move || meters.force_flush().expect("metrics exported"))
            .await
            .unwrap();
    }

    for (daemon, via) in [(&via_grpc, "otlp_grpc"), (&via_http, "otlp_http")] {
        assert_trace(daemon, via, &trace).await;
        assert_logs(daemon, via).await;
        assert_metrics(daemon, via).await;
    }
    assert_metrics(&via_remote_write, "prometheus_remote_write").await;
    // Remote write carries metrics only.
    let (_, traces) = via_remote_write
        .get_json(&format!("/api/traces/{}", trace.trace_id))
        .await;
    assert!(
        traces["data"].as_array().is_none_or(Vec::is_empty),
        "{traces}"
    );
    let log = collector.log();
    assert!(
        !log.contains("\terror\t"),
        "the Collector logged errors:\n{log}"
    );
    tokio::task::spawn_blocking(move || meters.shutdown().expect("clean shutdown"))
        .await
        .unwrap();
}
