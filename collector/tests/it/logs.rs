//! End to end for logs: four services export logs with the real OpenTelemetry
//! SDK and OTLP log exporters (gRPC, HTTP protobuf, HTTP JSON; one of them
//! through `tracing` and `opentelemetry-appender-tracing`), and the log API
//! finds them by term, phrase, field and attribute, in the time range only,
//! newest first; histogram and facets agree with the hits; live tail sees a
//! log sent after it subscribed; a trace's logs come back from the trace
//! endpoint; Elasticsearch `_bulk` bodies as Fluent Bit sends them are stored
//! with per-item errors; and everything is still there after a restart.

use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use serde_json::Value;
use strand_testkit::{Strand, eventually};
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

/// A service with its own resource and log exporter, as a real process has.
/// Builds a blocking HTTP client for the HTTP transports: call it off the
/// async runtime's threads.
fn provider(endpoint: &str, service: &str, transport: Transport) -> SdkLoggerProvider {
    let exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        Transport::HttpProtobuf | Transport::HttpJson => opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(match transport {
                Transport::HttpJson => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            })
            .with_endpoint(endpoint)
            .build(),
    }
    .expect("exporter builds");
    SdkLoggerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attributes([KeyValue::new("host.name", format!("{service}-host"))])
                .build(),
        )
        .build()
}

async fn provider_off_runtime(
    endpoint: String,
    service: &'static str,
    transport: Transport,
) -> SdkLoggerProvider {
    tokio::task::spawn_blocking(move || provider(&endpoint, service, transport))
        .await
        .unwrap()
}

/// Emits one record through the OpenTelemetry logs API.
fn emit(
    provider: &SdkLoggerProvider,
    at: SystemTime,
    severity: Severity,
    body: &str,
    attributes: &[(&'static str, i64)],
    span: Option<&str>,
) {
    let logger = provider.logger("shop");
    let mut record = logger.create_log_record();
    record.set_timestamp(at);
    record.set_severity_number(severity);
    record.set_severity_text(severity.name());
    record.set_body(AnyValue::from(body.to_string()));
    for (key, value) in attributes {
        record.add_attribute(*key, *value);
    }
    if let Some(span) = span {
        record.set_trace_context(
            TraceId::from_hex(TRACE_ID).unwrap(),
            SpanId::from_hex(span).unwrap(),
            Some(TraceFlags::SAMPLED),
        );
    }
    logger.emit(record);
}

async fn flush(provider: &SdkLoggerProvider) {
    let provider = provider.clone();
    tokio::task::spawn_blocking(move || provider.force_flush().expect("export acknowledged"))
        .await
        .unwrap();
}

/// The shop's logs: one request across four services (sharing a trace), a
/// log from two hours ago, and noise.
async fn send_shop_logs(daemon: &Strand) {
    let gateway = provider(&daemon.grpc_endpoint(), "gateway", Transport::Grpc);
    let order = provider(&daemon.grpc_endpoint(), "order", Transport::Grpc);
    let http = daemon.otlp_http_url("/v1/logs");
    let inventory = provider_off_runtime(http.clone(), "inventory", Transport::HttpProtobuf).await;
    let payment = provider_off_runtime(http, "payment", Transport::HttpJson).await;
    let now = SystemTime::now() - Duration::from_secs(5);
    let at = |ms: u64| now + Duration::from_millis(ms);

    // The gateway logs through `tracing`, inside the request's span context.
    let subscriber = tracing_subscriber::registry().with(OpenTelemetryTracingBridge::new(&gateway));
    let span_cx = SpanContext::new(
        TraceId::from_hex(TRACE_ID).unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    {
        let _attached = Context::new().with_remote_span_context(span_cx).attach();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                http.status_code = 502,
                "POST /api/orders answered 502 bad gateway"
            );
        });
    }
    emit(
        &order,
        at(10),
        Severity::Info,
        "order 42 created for customer alice",
        &[("order_id", 42)],
        Some("1111111111111111"),
    );
    emit(
        &inventory,
        at(20),
        Severity::Warn,
        "stock low for sku-7",
        &[("stock", 3)],
        None,
    );
    emit(
        &payment,
        at(30),
        Severity::Error,
        "card declined for order 42",
        &[("order_id", 42)],
        Some("2222222222222222"),
    );
    emit(
        &payment,
        at(40),
        Severity::Info,
        "refund issued for order 41",
        &[("order_id", 41)],
        None,
    );
    emit(
        &inventory,
        now - Duration::from_secs(7_200),
        Severity::Info,
        "ancient inventory recount",
        &[],
        None,
    );
    for provider in [&gateway, &order, &inventory, &payment] {
        flush(provider).await;
    }
}

async fn logs(daemon: &Strand, query: &str) -> Value {
    let (status, body) = daemon.get_json(&format!("/api/logs?{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

fn bodies(page: &Value) -> Vec<String> {
    page["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["body"].as_str().unwrap().to_string())
        .collect()
}

fn q(text: &str) -> String {
    format!("q={}", strand_testkit::urlencode(text))
}

async fn check_queries(daemon: &Strand) {
    let all = logs(daemon, "").await;
    assert_eq!(
        all["total"], 5,
        "the two-hour-old log is outside the default hour: {all}"
    );
    // The gateway's log went through `tracing` just now: the newest.
    assert_eq!(
        bodies(&all),
        vec![
            "POST /api/orders answered 502 bad gateway",
            "refund issued for order 41",
            "card declined for order 42",
            "stock low for sku-7",
            "order 42 created for customer alice",
        ]
    );
    assert_eq!(all["logs"][0]["attributes"]["http.status_code"], 502);

    let term = logs(daemon, &q("declined")).await;
    assert_eq!(bodies(&term), vec!["card declined for order 42"]);
    let declined = &term["logs"][0];
    assert_eq!(declined["service"], "payment");
    assert_eq!(declined["severity"], "error");
    assert_eq!(declined["traceId"], TRACE_ID);
    assert_eq!(declined["attributes"]["order_id"], 42);

    let phrase = logs(daemon, &q("\"order 42\"")).await;
    assert_eq!(phrase["total"], 2);
    let field = logs(
        daemon,
        &q("service:payment AND severity:error AND \"card declined\""),
    )
    .await;
    assert_eq!(field["total"], 1);
    let attribute = logs(daemon, &q("attributes.order_id:42")).await;
    assert_eq!(
        bodies(&attribute),
        vec![
            "card declined for order 42",
            "order 42 created for customer alice"
        ],
        "newest first"
    );
    let resource = logs(daemon, &q("resource.host.name:order-host")).await;
    assert_eq!(resource["total"], 1);

    let old = logs(daemon, &format!("{}&start={}", q("ancient"), unix_ms(3))).await;
    assert_eq!(old["total"], 1, "found when the range includes it");
    assert_eq!(logs(daemon, &q("ancient")).await["total"], 0);

    // Pages of two cover the five logs once, in order.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = logs(daemon, &format!("limit=2&cursor={cursor}")).await;
        seen.extend(bodies(&page));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, bodies(&all));

    let (status, histogram) = daemon.get_json("/api/logs/histogram").await;
    assert_eq!(status, 200);
    let counted: u64 = histogram["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["total"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 5);
    assert_eq!(histogram["total"], 5);
    // An explicit step: one bucket per minute of the last hour.
    let (status, per_minute) = daemon
        .get_json(&format!(
            "/api/logs/histogram?start={}&end={}&step=1m",
            unix_ms(1),
            unix_ms(0)
        ))
        .await;
    assert_eq!(status, 200, "{per_minute}");
    assert_eq!(per_minute["stepMs"], 60_000, "{per_minute}");
    let buckets = per_minute["buckets"].as_array().unwrap().len();
    assert!((60..=61).contains(&buckets), "{buckets} buckets");
    assert_eq!(per_minute["total"], 5);

    let (_, facets) = daemon
        .get_json(&format!("/api/logs/facets?{}", q("order")))
        .await;
    assert_eq!(facets["total"], 3, "{facets}");
    let services: Vec<(String, u64)> = facets["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["value"].as_str().unwrap().into(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(services, vec![("payment".into(), 2), ("order".into(), 1)]);
    assert_eq!(facets["attributes"][0]["key"], "order_id");

    let (status, trace_logs) = daemon
        .get_json(&format!("/api/traces/{TRACE_ID}/logs"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        bodies(&trace_logs),
        vec![
            "order 42 created for customer alice",
            "card declined for order 42",
            "POST /api/orders answered 502 bad gateway",
        ],
        "in time order"
    );
    assert_eq!(trace_logs["logs"][2]["spanId"], "00f067aa0ba902b7");
}

fn unix_ms(hours_ago: u64) -> u128 {
    (SystemTime::now() - Duration::from_secs(hours_ago * 3_600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_searchable_correlated_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::start(&data, &[]).await;
    send_shop_logs(&daemon).await;
    eventually(Duration::from_secs(10), || async {
        (logs(&daemon, "").await["total"] == 5).then_some(())
    })
    .await
    .expect("acknowledged logs become searchable");
    check_queries(&daemon).await;

    daemon.stop().await;
    let daemon = Strand::start(&data, &[]).await;
    check_queries(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_sees_new_logs() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let mut stream = reqwest::get(daemon.url(&format!("/api/logs/tail?{}", q("tailtoken"))))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let payment = provider(&daemon.grpc_endpoint(), "payment", Transport::Grpc);
    emit(
        &payment,
        SystemTime::now(),
        Severity::Info,
        "not this one",
        &[],
        None,
    );
    emit(
        &payment,
        SystemTime::now(),
        Severity::Warn,
        "tailtoken retry 1",
        &[],
        None,
    );
    flush(&payment).await;

    let mut received = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            received.push_str(&String::from_utf8_lossy(&chunk));
            if received.contains("tailtoken retry 1") {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "tail received: {received}");
    assert!(received.contains("event: log"));
    assert!(!received.contains("not this one"));

    let (status, body) = daemon
        .get_json(&format!("/api/logs/tail?{}", q("service:(")))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_bulk_as_fluent_bit_sends_it() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let now = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(1));
    let body = format!(
        concat!(
            "{{\"create\":{{\"_index\":\"fluent-bit\"}}}}\n",
            "{{\"@timestamp\":\"{now}\",\"log\":\"GET /api/orders 200 12ms\",\"stream\":\"stdout\",\"kubernetes\":{{\"pod_name\":\"gateway-7d9\",\"container_name\":\"gateway\"}}}}\n",
            "{{\"create\":{{\"_index\":\"fluent-bit\"}}}}\n",
            "{{\"@timestamp\":\"{now}\",\"log\":\"broken\n",
            "{{\"create\":{{\"_index\":\"fluent-bit\"}}}}\n",
            "{{\"@timestamp\":\"{now}\",\"log\":\"payment timeout after 3 retries\",\"level\":\"error\",\"kubernetes\":{{\"pod_name\":\"payment-1\",\"container_name\":\"payment\"}}}}\n",
        ),
        now = now
    );
    let answer = crate::support::post_bulk(&daemon, body).await;
    assert_eq!(answer["errors"], true, "{answer}");
    let statuses: Vec<u64> = answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["create"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 400, 201], "{answer}");
    assert!(answer["items"][1]["create"]["error"]["reason"].is_string());

    let found = eventually(Duration::from_secs(10), || async {
        let page = logs(&daemon, &q("service:payment AND severity:error")).await;
        (page["total"] == 1).then_some(page)
    })
    .await
    .expect("bulk logs become searchable");
    assert_eq!(bodies(&found), vec!["payment timeout after 3 retries"]);
    assert_eq!(logs(&daemon, &q("service:gateway")).await["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_log_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let client = reqwest::Client::new();
    let response = client
        .post(daemon.otlp_http_url("/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = client
        .post(daemon.otlp_http_url("/v1/logs"))
        .header("content-type", "application/json")
        .body("{\"resourceLogs\": 7}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("ExportLogsServiceRequest")
    );

    for (query, expected) in [
        ("q=service%3A%28", "invalid query"),
        ("start=yesterday", "start"),
        ("limit=0", "limit"),
        ("cursor=zz", "cursor"),
    ] {
        let (status, body) = daemon.get_json(&format!("/api/logs?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{query}: {body}"
        );
    }
    let (status, _) = daemon.get_json("/api/traces/xyz/logs").await;
    assert_eq!(status, 400);
    let response = client
        .post(daemon.url("/_bulk"))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Still serving.
    assert_eq!(daemon.get_json("/api/logs").await.0, 200);
}

const WRITER_RELEASED: &str = "LogWriterReleased";

fn writer_releases(daemon: &Strand) -> usize {
    daemon.log().matches(WRITER_RELEASED).count()
}

/// Waits until the daemon has closed an idle log writer more than `before` times.
async fn wait_writer_released(daemon: &Strand, before: usize) {
    eventually(Duration::from_secs(30), || async {
        (writer_releases(daemon) > before).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("no {WRITER_RELEASED}: {}", daemon.log()))
}

/// An idle partition's index writer is closed (`--log-writer-idle`) and
/// opened again by the next log: logs sent before and after are all found,
/// also after a restart. The real binary, so the daemon's debug log says
/// when the writer went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_writer_closed_when_idle_reopens_for_the_next_log_and_loses_nothing() {
    const ARGS: &[&str] = &["--log-writer-idle", "1s"];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let binary = env!("CARGO_BIN_EXE_strand");
    let daemon = Strand::spawn_logging(binary, &data, ARGS, "info,strand=debug").await;
    let payment = provider(&daemon.grpc_endpoint(), "payment", Transport::Grpc);
    let send = |body: &str| {
        emit(&payment, SystemTime::now(), Severity::Info, body, &[], None);
        flush(&payment)
    };
    send("idlewriter before the pause").await;
    wait_writer_released(&daemon, 0).await;
    let released = writer_releases(&daemon);
    send("idlewriter after the pause").await;
    let both = || async {
        let page = logs(&daemon, &q("idlewriter")).await;
        (page["total"] == 2).then_some(page)
    };
    let found = eventually(Duration::from_secs(10), both)
        .await
        .expect("logs before and after the writer closed are searchable");
    assert_eq!(
        bodies(&found),
        vec!["idlewriter after the pause", "idlewriter before the pause"]
    );
    // The reopened writer is closed again once idle.
    wait_writer_released(&daemon, released).await;
    daemon.stop().await;

    let daemon = Strand::spawn_logging(binary, &data, ARGS, "info,strand=debug").await;
    let page = logs(&daemon, &q("idlewriter")).await;
    assert_eq!(page["total"], 2, "{page}");
}
