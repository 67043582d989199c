//! The shop's request as a fixture: one trace across gateway, order,
//! inventory and payment sent with the real OTLP exporter (payment fails),
//! logs of three of its spans plus one unrelated log, and two series of
//! `ui_requests_total`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;

use strand_testkit::{DEADLINE, Strand, eventually};

use super::remote_write as rw;

/// What was sent: the trace id and the span id of each service's server span.
pub struct Sent {
    pub trace_id: String,
    pub spans: HashMap<&'static str, String>,
}

/// The shop's services, in call order.
const SHOP_SERVICES: [&str; 4] = ["gateway", "order", "inventory", "payment"];

/// A tracer provider exporting over OTLP/gRPC to `daemon` as `service`, as
/// one of the shop's processes would.
pub fn provider(daemon: &Strand, service: &str) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(daemon.grpc_endpoint())
        .build()
        .expect("exporter builds");
    crate::support::tracer_provider(exporter, service)
}

/// gateway -> order -> (validate, inventory, payment), payment failing; each
/// service with its own resource and exporter, as separate processes would.
async fn send_trace(daemon: &Strand, now: SystemTime) -> Sent {
    let providers = SHOP_SERVICES.map(|s| provider(daemon, s));
    let [gateway, order, inventory, payment] = &providers;
    let at = |ms: u64| now + Duration::from_millis(ms);
    let mut spans = HashMap::new();

    let tracer = gateway.tracer("shop");
    let mut root = tracer
        .span_builder("POST /api/orders")
        .with_kind(SpanKind::Server)
        .with_start_time(at(0))
        .with_attributes([KeyValue::new("http.route", "/api/orders")])
        .start(&tracer);
    let trace_id = root.span_context().trace_id().to_string();
    spans.insert("gateway", root.span_context().span_id().to_string());
    let root_cx = Context::new().with_remote_span_context(root.span_context().clone());

    let tracer = order.tracer("shop");
    let mut order_span = tracer
        .span_builder("POST /orders")
        .with_kind(SpanKind::Server)
        .with_start_time(at(5))
        .start_with_context(&tracer, &root_cx);
    spans.insert("order", order_span.span_context().span_id().to_string());
    let order_cx = Context::new().with_remote_span_context(order_span.span_context().clone());
    let mut validate = tracer
        .span_builder("validate order")
        .with_start_time(at(6))
        .start_with_context(&tracer, &order_cx);
    validate.end_with_timestamp(at(8));

    let tracer = inventory.tracer("shop");
    let mut reserve = tracer
        .span_builder("POST /inventory/reserve")
        .with_kind(SpanKind::Server)
        .with_start_time(at(10))
        .start_with_context(&tracer, &order_cx);
    spans.insert("inventory", reserve.span_context().span_id().to_string());
    reserve.end_with_timestamp(at(40));

    let tracer = payment.tracer("shop");
    let mut charge = tracer
        .span_builder("payment.Charge")
        .with_kind(SpanKind::Server)
        .with_start_time(at(45))
        .start_with_context(&tracer, &order_cx);
    spans.insert("payment", charge.span_context().span_id().to_string());
    charge.add_event(
        "exception",
        vec![KeyValue::new("exception.type", "CardDeclined")],
    );
    charge.set_status(Status::error("card declined"));
    charge.end_with_timestamp(at(95));
    order_span.end_with_timestamp(at(100));
    root.end_with_timestamp(at(120));

    flush_and_shut_down(providers).await;
    Sent { trace_id, spans }
}

/// `requests` orders as the shop serves them: gateway -> order -> inventory
/// and payment, plus gateway -> inventory (the catalogue), whose arrow
/// skips a column of the map; the first `failing` payments fail. Returns
/// once the derived metrics count them: every service's requests and the
/// four calls between them.
pub async fn send_shop_calls(daemon: &Strand, requests: usize, failing: usize) {
    let providers = SHOP_SERVICES.map(|s| provider(daemon, s));
    let [gateway, order, inventory, payment] = &providers;
    let start = SystemTime::now() - Duration::from_secs(5);
    let at = |ms: u64| start + Duration::from_millis(ms);
    let server = |provider: &SdkTracerProvider, name: &'static str, parent: &Context, from: u64| {
        let tracer = provider.tracer("shop");
        tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(at(from))
            .start_with_context(&tracer, parent)
    };
    for i in 0..requests {
        let mut root = server(gateway, "POST /api/orders", &Context::new(), 0);
        let root_cx = Context::new().with_remote_span_context(root.span_context().clone());
        let mut catalogue = server(inventory, "GET /inventory/products", &root_cx, 2);
        catalogue.end_with_timestamp(at(6));
        let mut placed = server(order, "POST /orders", &root_cx, 8);
        let order_cx = Context::new().with_remote_span_context(placed.span_context().clone());
        let mut reserve = server(inventory, "POST /inventory/reserve", &order_cx, 10);
        reserve.end_with_timestamp(at(20));
        let mut charge = server(payment, "payment.Charge", &order_cx, 22);
        if i < failing {
            charge.set_status(Status::error("card declined"));
        }
        charge.end_with_timestamp(at(40));
        placed.end_with_timestamp(at(45));
        root.end_with_timestamp(at(50));
    }
    flush_and_shut_down(providers).await;
    let counted = eventually(Duration::from_secs(30), || async {
        let (_, services) = daemon
            .get_json_query(
                "/api/v1/query",
                &[(
                    "query",
                    "sum by (service_name) (traces_span_metrics_calls_total{span_kind=\"SPAN_KIND_SERVER\"})",
                )],
            )
            .await;
        let (_, calls) = daemon
            .get_json("/api/v1/query?query=traces_service_graph_request_total")
            .await;
        let services = services["data"]["result"].as_array()?;
        let all_counted = services.iter().all(|s| {
            s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) >= Some(requests as f64)
        });
        (services.len() == 4 && all_counted && calls["data"]["result"].as_array()?.len() == 4)
            .then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "the derived metrics never counted the calls:\n{}",
        daemon.log()
    );
}

/// Exports what `providers` hold and waits until Strand acknowledged it.
pub async fn flush_and_shut_down(providers: impl IntoIterator<Item = SdkTracerProvider>) {
    for provider in providers {
        tokio::task::spawn_blocking(move || {
            provider.force_flush().expect("export acknowledged");
            provider.shutdown().expect("clean shutdown");
        })
        .await
        .unwrap();
    }
}

/// Four logs with the term `uitoken`: three of the trace's spans, one alone.
async fn send_logs(daemon: &Strand, now: SystemTime, sent: &Sent) {
    let line = |ms: u64, service: &str, level: &str, message: &str, span: Option<&str>| {
        let time = humantime::format_rfc3339_millis(now + Duration::from_millis(ms));
        let ids = span
            .map(|span| format!(",\"trace_id\":\"{}\",\"span_id\":\"{span}\"", sent.trace_id))
            .unwrap_or_default();
        format!(
            "{{\"create\":{{}}}}\n{{\"@timestamp\":\"{time}\",\"service\":\"{service}\",\"level\":\"{level}\",\"message\":\"{message}\"{ids}}}\n"
        )
    };
    let body = [
        line(
            7,
            "order",
            "info",
            "uitoken order 42 accepted",
            Some(&sent.spans["order"]),
        ),
        line(
            20,
            "inventory",
            "info",
            "uitoken reserved 1 item",
            Some(&sent.spans["inventory"]),
        ),
        line(
            90,
            "payment",
            "error",
            "uitoken card declined",
            Some(&sent.spans["payment"]),
        ),
        line(300, "gateway", "warn", "uitoken cache is cold", None),
    ]
    .concat();
    let answer = crate::support::post_bulk(daemon, body).await;
    assert_eq!(answer["errors"], false, "{answer}");
}

/// Two series of `ui_requests_total` over the last ten minutes.
async fn send_metrics(daemon: &Strand) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = (now_ms - 600_000) / 1000 * 1000;
    let samples = |scale: f64| -> Vec<(i64, f64)> {
        (0..40)
            .map(|i| (base + i * 15_000, scale * i as f64))
            .collect()
    };
    let request = rw::request(vec![
        rw::series("ui_requests_total", &[("service", "order")], &samples(2.0)),
        rw::series(
            "ui_requests_total",
            &[("service", "payment")],
            &samples(1.0),
        ),
    ]);
    rw::write_ok(daemon, &request).await;
}

pub async fn send_everything(daemon: &Strand) -> Sent {
    // In the past, so that searches ending "now" include everything.
    let now = SystemTime::now() - Duration::from_secs(5);
    let sent = send_trace(daemon, now).await;
    send_logs(daemon, now, &sent).await;
    send_metrics(daemon).await;
    let ready = eventually(DEADLINE, || async {
        let (_, trace) = daemon
            .get_json(&format!("/api/traces/{}", sent.trace_id))
            .await;
        let (_, logs) = daemon.get_json("/api/logs?q=uitoken").await;
        let (_, metrics) = daemon
            .get_json("/api/v1/query?query=ui_requests_total")
            .await;
        (trace["data"][0]["spans"].as_array().map(Vec::len) == Some(5)
            && logs["total"] == 4
            && metrics["data"]["result"].as_array().map(Vec::len) == Some(2))
        .then_some(())
    })
    .await;
    assert!(ready.is_some(), "the API never showed what was sent");
    sent
}
