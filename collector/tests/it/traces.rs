//! End to end: four services export one request's spans with the real
//! OpenTelemetry SDK and OTLP exporters (gRPC, HTTP protobuf, HTTP JSON); the
//! Jaeger API returns the stitched trace, finds it by service, operation, tag
//! and duration, derives the service dependencies, and still does so after a
//! restart. Size retention drops older span segments.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use strand_testkit::{Strand, eventually};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;

use crate::support::STRAND_BINARY;

enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

/// Where the exporters send to.
#[derive(Clone)]
struct Endpoints {
    grpc: String,
    http_traces: String,
}

/// A service with its own resource and exporter, as a real process would have.
fn provider(endpoints: &Endpoints, service: &str, transport: Transport) -> SdkTracerProvider {
    let exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoints.grpc.clone())
            .build(),
        Transport::HttpProtobuf | Transport::HttpJson => {
            let protocol = match transport {
                Transport::HttpJson => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_endpoint(endpoints.http_traces.clone())
                .build()
        }
    }
    .expect("exporter builds");
    crate::support::tracer_provider(exporter, service)
}

/// Flushes a provider from a thread outside the async runtime (the HTTP
/// exporter uses a blocking client).
async fn flush(provider: &SdkTracerProvider) {
    let provider = provider.clone();
    tokio::task::spawn_blocking(move || provider.force_flush().expect("export acknowledged"))
        .await
        .unwrap();
}

struct Sent {
    order_trace: String,
    products_trace: String,
    span_ids: HashMap<&'static str, String>,
}

/// gateway -> order -> inventory, order -> payment (payment fails); then a
/// short, successful `GET /api/products` on the gateway alone.
async fn send_shop_traffic(daemon: &Strand) -> Sent {
    let endpoints = Endpoints {
        grpc: daemon.grpc_endpoint(),
        http_traces: daemon.otlp_http_url("/v1/traces"),
    };
    let gateway = provider(&endpoints, "gateway", Transport::Grpc);
    let order = provider(&endpoints, "order", Transport::Grpc);
    // The HTTP exporters build a blocking client: not on a runtime thread.
    let (inventory, payment) = tokio::task::spawn_blocking(move || {
        (
            provider(&endpoints, "inventory", Transport::HttpProtobuf),
            provider(&endpoints, "payment", Transport::HttpJson),
        )
    })
    .await
    .unwrap();
    // In the past, so that searches ending "now" include every span.
    let now = SystemTime::now() - Duration::from_secs(2);
    let at = |ms: u64| now + Duration::from_millis(ms);
    let mut span_ids = HashMap::new();

    let gateway_tracer = gateway.tracer("shop");
    let mut root = gateway_tracer
        .span_builder("POST /api/orders")
        .with_kind(SpanKind::Server)
        .with_start_time(at(0))
        .with_attributes([
            KeyValue::new("http.route", "/api/orders"),
            KeyValue::new("user.id", "alice"),
            KeyValue::new("http.response.status_code", 502),
        ])
        .start(&gateway_tracer);
    let order_trace = root.span_context().trace_id().to_string();
    span_ids.insert("gateway", root.span_context().span_id().to_string());
    let root_cx = Context::new().with_remote_span_context(root.span_context().clone());

    let order_tracer = order.tracer("shop");
    let mut order_span = order_tracer
        .span_builder("POST /orders")
        .with_kind(SpanKind::Server)
        .with_start_time(at(5))
        .with_attributes([KeyValue::new("order.id", 42)])
        .start_with_context(&order_tracer, &root_cx);
    span_ids.insert("order", order_span.span_context().span_id().to_string());
    let order_cx = Context::new().with_remote_span_context(order_span.span_context().clone());

    let inventory_tracer = inventory.tracer("shop");
    let mut reserve = inventory_tracer
        .span_builder("POST /inventory/reserve")
        .with_kind(SpanKind::Server)
        .with_start_time(at(10))
        .start_with_context(&inventory_tracer, &order_cx);
    span_ids.insert("inventory", reserve.span_context().span_id().to_string());
    reserve.end_with_timestamp(at(40));

    let payment_tracer = payment.tracer("shop");
    let mut charge = payment_tracer
        .span_builder("payment.Charge")
        .with_kind(SpanKind::Server)
        .with_start_time(at(45))
        .with_attributes([KeyValue::new("payment.amount", 99.5)])
        .start_with_context(&payment_tracer, &order_cx);
    span_ids.insert("payment", charge.span_context().span_id().to_string());
    charge.add_event(
        "exception",
        vec![KeyValue::new("exception.type", "CardDeclined")],
    );
    charge.set_status(Status::error("card declined"));
    charge.end_with_timestamp(at(95));

    // The order service exports in two batches: an early child span first...
    let mut validate = order_tracer
        .span_builder("validate order")
        .with_kind(SpanKind::Internal)
        .with_start_time(at(6))
        .start_with_context(&order_tracer, &order_cx);
    validate.end_with_timestamp(at(8));
    flush(&order).await;
    // ...and its server span later, after the other services.
    flush(&inventory).await;
    flush(&payment).await;
    order_span.end_with_timestamp(at(100));
    flush(&order).await;
    root.end_with_timestamp(at(120));

    let mut products = gateway_tracer
        .span_builder("GET /api/products")
        .with_kind(SpanKind::Server)
        .with_start_time(at(200))
        .with_attributes([KeyValue::new("user.id", "bob")])
        .start(&gateway_tracer);
    let products_trace = products.span_context().trace_id().to_string();
    products.end_with_timestamp(at(205));
    flush(&gateway).await;

    for provider in [gateway, order, inventory, payment] {
        tokio::task::spawn_blocking(move || provider.shutdown().expect("clean shutdown"))
            .await
            .unwrap();
    }
    Sent {
        order_trace,
        products_trace,
        span_ids,
    }
}

/// service name -> span of that service in a Jaeger trace.
fn spans_by_service(trace: &Value) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for span in trace["spans"].as_array().unwrap() {
        let process = span["processID"].as_str().unwrap();
        let service = trace["processes"][process]["serviceName"]
            .as_str()
            .unwrap()
            .to_string();
        out.entry(service).or_default().push(span.clone());
    }
    out
}

fn parent_of(span: &Value) -> Option<String> {
    span["references"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")
        .map(|r| r["spanID"].as_str().unwrap().to_string())
}

async fn assert_trace_is_stitched(daemon: &Strand, sent: &Sent) {
    let (status, body) = daemon
        .get_json(&format!("/api/traces/{}", sent.order_trace))
        .await;
    assert_eq!(status, 200, "{body}");
    let trace = &body["data"][0];
    assert_eq!(trace["spans"].as_array().unwrap().len(), 5, "{trace}");
    let by_service = spans_by_service(trace);
    assert_eq!(by_service.len(), 4, "{by_service:?}");
    let root = &by_service["gateway"][0];
    assert_eq!(root["operationName"], "POST /api/orders");
    assert_eq!(parent_of(root), None);
    assert_eq!(root["duration"], 120_000);
    let order = by_service["order"]
        .iter()
        .find(|s| s["operationName"] == "POST /orders")
        .unwrap();
    assert_eq!(parent_of(order), Some(sent.span_ids["gateway"].clone()));
    let inventory = &by_service["inventory"][0];
    assert_eq!(parent_of(inventory), Some(sent.span_ids["order"].clone()));
    let payment = &by_service["payment"][0];
    assert_eq!(parent_of(payment), Some(sent.span_ids["order"].clone()));
    let tags = payment["tags"].as_array().unwrap();
    assert!(
        tags.iter()
            .any(|t| t["key"] == "error" && t["value"] == true),
        "{tags:?}"
    );
    assert!(
        tags.iter()
            .any(|t| t["key"] == "payment.amount" && t["type"] == "float64" && t["value"] == 99.5),
        "{tags:?}"
    );
    assert_eq!(payment["logs"][0]["fields"][0]["value"], "exception");
    let process = &trace["processes"][payment["processID"].as_str().unwrap()];
    assert!(
        process["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "host.name" && t["value"] == "payment-host"),
        "{process}"
    );
}

/// The sorted trace ids a trace search finds.
async fn search(daemon: &Strand, query: &str) -> Vec<String> {
    let (status, body) = daemon.get_json(&format!("/api/traces?{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    let mut ids: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn assert_searches(daemon: &Strand, sent: &Sent) {
    let order = vec![sent.order_trace.clone()];
    let products = vec![sent.products_trace.clone()];
    let mut both = vec![sent.order_trace.clone(), sent.products_trace.clone()];
    both.sort();

    assert_eq!(search(daemon, "service=payment").await, order);
    assert_eq!(search(daemon, "service=gateway").await, both);
    assert_eq!(
        search(daemon, "service=gateway&operation=GET%20/api/products").await,
        products
    );
    assert_eq!(
        search(
            daemon,
            "service=gateway&tags=%7B%22user.id%22%3A%22alice%22%7D"
        )
        .await,
        order
    );
    assert_eq!(
        search(daemon, "service=gateway&tag=user.id:bob").await,
        products
    );
    assert_eq!(
        search(daemon, "service=payment&tag=error:true").await,
        order
    );
    assert!(
        search(daemon, "service=inventory&tag=error:true")
            .await
            .is_empty()
    );
    assert_eq!(
        search(daemon, "service=gateway&minDuration=100ms").await,
        order
    );
    assert_eq!(
        search(daemon, "service=gateway&maxDuration=10ms").await,
        products
    );
    assert!(
        search(daemon, "service=gateway&minDuration=1s")
            .await
            .is_empty()
    );
    assert!(
        search(daemon, "service=gateway&start=1&end=1000")
            .await
            .is_empty()
    );
    assert_eq!(search(daemon, "service=gateway&lookback=1h").await, both);
    assert_eq!(search(daemon, "service=gateway&limit=1").await.len(), 1);
    assert!(search(daemon, "service=nobody").await.is_empty());

    let (_, services) = daemon.get_json("/api/services").await;
    assert_eq!(
        services["data"],
        serde_json::json!(["gateway", "inventory", "order", "payment"])
    );
    let (_, operations) = daemon.get_json("/api/services/order/operations").await;
    assert_eq!(
        operations["data"],
        serde_json::json!(["POST /orders", "validate order"])
    );
    let (_, operations) = daemon
        .get_json("/api/operations?service=order&spanKind=internal")
        .await;
    assert_eq!(
        operations["data"],
        serde_json::json!([{"name": "validate order", "spanKind": "internal"}])
    );
}

async fn dependency_edges(daemon: &Strand) -> Vec<(String, String, u64, u64)> {
    let (_, body) = daemon.get_json("/api/dependencies").await;
    let mut edges: Vec<_> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["parent"].as_str().unwrap().to_string(),
                l["child"].as_str().unwrap().to_string(),
                l["callCount"].as_u64().unwrap(),
                l["errorCount"].as_u64().unwrap(),
            )
        })
        .collect();
    edges.sort();
    edges
}

fn expected_edges() -> Vec<(String, String, u64, u64)> {
    vec![
        ("gateway".into(), "order".into(), 1, 0),
        ("order".into(), "inventory".into(), 1, 0),
        ("order".into(), "payment".into(), 1, 1),
    ]
}

/// Waits up to 10 s for the edges a flush writes to be the shop's.
async fn assert_edges_eventually(daemon: &Strand) {
    let edges = eventually(Duration::from_secs(10), || async {
        let edges = dependency_edges(daemon).await;
        (edges == expected_edges()).then_some(edges)
    })
    .await;
    assert!(
        edges.is_some(),
        "edges: {:?}",
        dependency_edges(daemon).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_one_trace_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::start(&data, &["--flush-interval", "200ms"]).await;
    let sent = send_shop_traffic(&daemon).await;

    // Queryable at once, from memory, and later from blocks.
    assert_trace_is_stitched(&daemon, &sent).await;
    assert_searches(&daemon, &sent).await;
    assert_edges_eventually(&daemon).await;
    assert_trace_is_stitched(&daemon, &sent).await;
    assert_searches(&daemon, &sent).await;
    let (_, before) = daemon
        .get_json(&format!("/api/traces/{}", sent.order_trace))
        .await;

    daemon.stop().await;
    let wal_files = std::fs::read_dir(data.join("wal")).unwrap().count();
    assert_eq!(wal_files, 0, "a clean shutdown leaves no WAL to replay");
    let daemon = Strand::start(&data, &[]).await;
    assert_trace_is_stitched(&daemon, &sent).await;
    assert_searches(&daemon, &sent).await;
    assert_eq!(dependency_edges(&daemon).await, expected_edges());
    let (_, after) = daemon
        .get_json(&format!("/api/traces/{}", sent.order_trace))
        .await;
    assert_eq!(before, after, "same answer after restart");

    let metrics = daemon.self_metrics().await;
    assert!(
        metrics.contains("strand_store_size_bytes{signal=\"traces\"}"),
        "{metrics}"
    );
}

/// Edge counts are written by span flushes, together with the checkpoint
/// that keeps a restart from replaying what they counted. `kill -9` after
/// a flush must not count its edges twice, and before any flush it must not
/// lose them: the WAL's spans are counted when they are flushed after the
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_counts_are_neither_doubled_nor_lost_by_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flushed = ["--flush-interval", "200ms"];

    let daemon = Strand::spawn(STRAND_BINARY, &data, &flushed).await;
    send_shop_traffic(&daemon).await;
    assert_edges_eventually(&daemon).await;
    daemon.kill9();
    let daemon = Strand::spawn(STRAND_BINARY, &data, &flushed).await;
    // Had the kill beaten the flush's commit, the WAL's spans are replayed
    // into the head and flushed again: the edges must count them once.
    let flushed_again = eventually(Duration::from_secs(10), || async {
        let head_is_empty = daemon
            .self_metrics()
            .await
            .lines()
            .any(|line| line == "strand_head_spans 0");
        head_is_empty.then_some(())
    })
    .await;
    assert!(flushed_again.is_some(), "{}", daemon.log());
    assert_edges_eventually(&daemon).await;
    // A flush that took the head a moment ago has committed by now, and
    // would have counted the edges a second time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dependency_edges(&daemon).await, expected_edges());
    daemon.stop().await;

    let data = dir.path().join("unflushed");
    let daemon = Strand::spawn(STRAND_BINARY, &data, &["--flush-interval", "1h"]).await;
    send_shop_traffic(&daemon).await;
    assert!(dependency_edges(&daemon).await.is_empty(), "no flush yet");
    daemon.kill9();
    let daemon = Strand::spawn(STRAND_BINARY, &data, &flushed).await;
    assert_edges_eventually(&daemon).await;
}

/// Under load the head is flushed once it holds `--flush-spans`, not only
/// every `--flush-interval`: edges (written by flushes) appear though the
/// interval is an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_head_is_flushed_before_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(
        &dir.path().join("data"),
        &["--flush-interval", "1h", "--flush-spans", "1"],
    )
    .await;
    send_shop_traffic(&daemon).await;
    assert_edges_eventually(&daemon).await;
    let metrics = daemon.self_metrics().await;
    assert!(
        !metrics.contains("strand_store_flush_duration_seconds_count 0"),
        "{metrics}"
    );
}

/// Posts one OTLP/JSON span of a trace of its own, started a second ago.
async fn post_span(daemon: &Strand, trace_id: &str) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let body = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "retained"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": "00000000000000a1", "name": "op", "kind": 2,
            "startTimeUnixNano": (now - 1_000_000_000).to_string(),
            "endTimeUnixNano": now.to_string(),
        }]}],
    }]});
    let response = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/traces"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn trace_status(daemon: &Strand, trace_id: &str) -> u16 {
    daemon.get_json(&format!("/api/traces/{trace_id}")).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_retention_by_bytes_drops_older_segments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (old, new) = ("a1".repeat(16), "b2".repeat(16));
    // Each run of the daemon appends to a segment of its own.
    for trace_id in [&old, &new] {
        let daemon = Strand::start(&data, &[]).await;
        post_span(&daemon, trace_id).await;
        daemon.stop().await;
    }
    // Retention runs at start: everything but the newest segment goes. The
    // real binary, whose log says so.
    let daemon = Strand::spawn(STRAND_BINARY, &data, &["--trace-retention-bytes", "1"]).await;
    let dropped = eventually(Duration::from_secs(10), || async {
        (trace_status(&daemon, &old).await == 404).then_some(())
    })
    .await;
    assert!(dropped.is_some(), "{}", daemon.log());
    assert_eq!(trace_status(&daemon, &new).await, 200);
    assert!(
        daemon.log().contains("SpanSegmentDropped"),
        "{}",
        daemon.log()
    );
}

/// Posts a trace of `spans` spans of one service (a root and its children,
/// with the attributes an HTTP server span has), in requests of 2,000.
async fn post_wide_trace(daemon: &Strand, trace_id: &str, spans: u64) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let client = reqwest::Client::new();
    for first in (0..spans).step_by(2_000) {
        let batch: Vec<Value> = (first..(first + 2_000).min(spans))
            .map(|i| {
                let start = now - 60_000_000_000 + i * 1_000_000;
                let parent = if i == 0 { String::new() } else { format!("{:016x}", 1) };
                serde_json::json!({
                    "traceId": trace_id, "spanId": format!("{:016x}", i + 1),
                    "parentSpanId": parent, "name": format!("GET /items/{}", i % 50), "kind": 2,
                    "startTimeUnixNano": start.to_string(),
                    "endTimeUnixNano": (start + 500_000 + i * 7).to_string(),
                    "attributes": [
                        {"key": "http.request.method", "value": {"stringValue": "GET"}},
                        {"key": "http.route", "value": {"stringValue": format!("/items/{}", i % 50)}},
                        {"key": "http.response.status_code", "value": {"intValue": "200"}},
                        {"key": "item.id", "value": {"stringValue": format!("item-{i}")}},
                    ],
                })
            })
            .collect();
        let body = serde_json::json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "wide"}}]},
            "scopeSpans": [{"spans": batch}],
        }]});
        let response = client
            .post(daemon.otlp_http_url("/v1/traces"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// The trace view's fetch of a 10,000-span trace travels compressed when
/// the client accepts gzip or zstd (browsers send both): at most a third of
/// its bytes, and the same JSON once decompressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_traces_travel_compressed_when_the_client_accepts_it() {
    use std::io::Read;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::spawn(STRAND_BINARY, &dir.path().join("data"), &[]).await;
    post_wide_trace(&daemon, TRACE_ID, 10_000).await;
    let client = reqwest::Client::new();
    let fetch = |encoding: &'static str| {
        let request = client
            .get(daemon.url(&format!("/api/traces/{TRACE_ID}")))
            .header("Accept-Encoding", encoding);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let encoding = response
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string());
            (encoding, response.bytes().await.unwrap().to_vec())
        }
    };
    let (plain_encoding, plain) = fetch("identity").await;
    assert_eq!(plain_encoding, None);
    let trace: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(trace["data"][0]["spans"].as_array().unwrap().len(), 10_000);

    let (gzip_encoding, gzipped) = fetch("gzip").await;
    assert_eq!(gzip_encoding.as_deref(), Some("gzip"));
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gzipped[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    let (zstd_encoding, zstded) = fetch("gzip, deflate, br, zstd;q=1.0").await;
    assert!(
        zstd_encoding.is_some(),
        "a browser's Accept-Encoding gets one"
    );
    let (_, only_zstd) = fetch("zstd").await;
    let unzstded = zstd::decode_all(&only_zstd[..]).unwrap();
    println!(
        "10,000-span trace: {} bytes as JSON, {} gzip, {} zstd, {} for a browser ({:?})",
        plain.len(),
        gzipped.len(),
        only_zstd.len(),
        zstded.len(),
        zstd_encoding
    );
    for (name, bytes, decoded) in [
        ("gzip", &gzipped, &unzipped),
        ("zstd", &only_zstd, &unzstded),
    ] {
        assert!(
            bytes.len() * 3 <= plain.len(),
            "{name}: {} of {} bytes",
            bytes.len(),
            plain.len()
        );
        assert_eq!(
            serde_json::from_slice::<Value>(decoded).unwrap(),
            trace,
            "{name}"
        );
    }
    daemon.stop().await;
}
