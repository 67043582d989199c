//! A newcomer's first minutes, in headless Chromium: the metrics explorer's
//! known metric names are links that run their query; the service map keeps
//! its arrow labels clear of the boxes and of each other, and draws red only
//! what fails more than the threshold in its legend.
//!
//! The browser harness and what it needs are in `common/browser.rs`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::browser::{in_browser, snapshot, wait_for};
use common::remote_write as rw;
use common::{Daemon, eventually};
use fantoccini::{Client, Locator};
use opentelemetry::Context;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_names_are_links_that_run_their_query() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), &[]).await;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let samples: Vec<(i64, f64)> = (0..20)
        .map(|i| (now_ms - 300_000 + i * 15_000, i as f64))
        .collect();
    let series = |service| rw::series("newcomer_orders_total", &[("service", service)], &samples);
    rw::write_ok(
        &daemon,
        &rw::request(vec![series("order"), series("payment")]),
    )
    .await;

    in_browser("ui-newcomer-metric-names", |client| async move {
        client
            .goto(&daemon.url("/#/metrics"))
            .await
            .map_err(|e| e.to_string())?;
        let offered = wait_for(
            &client,
            "the known metric names",
            "const p = document.querySelector('.metrics-out p.muted');
             return p && { text: p.textContent,
                           names: [...p.querySelectorAll('button.link')].map(b => b.textContent) }",
            |v| v["names"].as_array().is_some_and(|n| !n.is_empty()),
        )
        .await?;
        snapshot(&client, "newcomer-metric-names").await;
        let text = offered["text"].as_str().unwrap_or("");
        if text.contains("[object")
            || !offered["names"]
                .as_array()
                .unwrap()
                .contains(&json!("newcomer_orders_total"))
        {
            return Err(format!("the names are not offered as names: {offered}"));
        }

        let name = client
            .find(Locator::XPath(
                "//p[contains(@class,'muted')]/button[text()='newcomer_orders_total']",
            ))
            .await
            .map_err(|e| format!("no button for the metric: {e}"))?;
        name.click().await.map_err(|e| e.to_string())?;
        let ran = wait_for(
            &client,
            "the metric's query",
            "return { hash: decodeURIComponent(location.hash),
                      query: document.querySelector('form .query')?.value,
                      series: document.querySelectorAll('.series-table .legend-row').length }",
            |v| v["series"] == 2,
        )
        .await?;
        if ran["query"] != "newcomer_orders_total"
            || !ran["hash"]
                .as_str()
                .unwrap_or("")
                .contains("query=newcomer_orders_total")
        {
            return Err(format!("clicking the name did not run its query: {ran}"));
        }
        Ok(())
    })
    .await;
}

/// Every label's and node's box on the page, and the pairs that overlap.
const MAP_BOXES: &str = "const box = (el) => { const r = el.getBoundingClientRect();
        return { x: r.x, y: r.y, w: r.width, h: r.height }; };
    const labels = [...document.querySelectorAll('.map-edge')].map(e => ({
        name: 'label ' + e.dataset.client + '->' + e.dataset.server, ...box(e.querySelector('.label-bg')) }));
    const nodes = [...document.querySelectorAll('.map-node')].map(n => ({
        name: 'node ' + n.dataset.service, ...box(n.querySelector('.box')) }));
    const meet = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    const overlaps = [];
    labels.forEach((a, i) => [...labels.slice(i + 1), ...nodes].forEach(b => {
        if (meet(a, b)) overlaps.push(a.name + ' / ' + b.name); }));
    return { labels: labels.length, nodes: nodes.length, overlaps,
             sized: labels.every(l => l.w > 20 && l.h > 10),
             rated: [...document.querySelectorAll('.map-edge')].every(e => e.dataset.rate !== '') }";

/// What is red, and the threshold the legend shows.
const MAP_RED: &str = "return {
    threshold: document.querySelector('.map-legend input[name=threshold]')?.value,
    legend: document.querySelector('.map-legend')?.textContent,
    hash: location.hash,
    red: [...document.querySelectorAll('.map-node.error')].map(n => n.dataset.service)
         .concat([...document.querySelectorAll('.map-edge.error')]
                 .map(e => e.dataset.client + '->' + e.dataset.server)).sort() }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_map_labels_stay_clear_and_red_follows_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    // Derived metrics every second, so the numbers follow the spans at once.
    let daemon = Daemon::start(
        &dir.path().join("data"),
        &["--derived-metrics-interval", "1s"],
    )
    .await;
    // 3% of payment's calls fail: under the default 5%, over 1%.
    send_shop_calls(&daemon, 100, 3).await;
    let edges = eventually(Duration::from_secs(30), || async {
        let (_, body) = daemon
            .get_json("/api/v1/query?query=traces_service_graph_request_total")
            .await;
        (body["data"]["result"].as_array().map(Vec::len) == Some(4)).then_some(())
    })
    .await;
    assert!(
        edges.is_some(),
        "no service graph metrics:\n{}",
        daemon.log()
    );

    in_browser("ui-newcomer-map", |client| async move {
        client
            .goto(&daemon.url("/#/map?range=15m"))
            .await
            .map_err(|e| e.to_string())?;
        let boxes = wait_for(&client, "the map's labels", MAP_BOXES, |v| {
            v["labels"] == 4 && v["nodes"] == 4 && v["sized"] == true && v["rated"] == true
        })
        .await?;
        snapshot(&client, "newcomer-map").await;
        if boxes["overlaps"] != json!([]) {
            return Err(format!("labels overlap: {boxes}"));
        }

        let red = client
            .execute(MAP_RED, vec![])
            .await
            .map_err(|e| e.to_string())?;
        let legend = red["legend"].as_str().unwrap_or("");
        if red["threshold"] != "5"
            || !legend.contains("% of requests failed")
            || red["red"] != json!([])
        {
            return Err(format!("at the default 5% nothing should be red: {red}"));
        }
        set_threshold(&client, "1").await?;
        let over = json!(["order->payment", "payment"]);
        let red = wait_for(&client, "red above 1%", MAP_RED, |v| v["red"] == over).await?;
        if !red["hash"].as_str().unwrap_or("").contains("threshold=1") {
            return Err(format!("the threshold is not in the URL: {red}"));
        }
        snapshot(&client, "newcomer-map-threshold").await;
        // A reload (or a shared link) keeps it.
        client.refresh().await.map_err(|e| e.to_string())?;
        wait_for(&client, "the threshold after a reload", MAP_RED, |v| {
            v["threshold"] == "1" && v["red"] == over
        })
        .await?;
        Ok(())
    })
    .await;
}

async fn set_threshold(client: &Client, percent: &str) -> Result<(), String> {
    let input = client
        .find(Locator::Css(".map-legend input[name=threshold]"))
        .await
        .map_err(|e| format!("no threshold input: {e}"))?;
    input.clear().await.map_err(|e| e.to_string())?;
    input.send_keys(percent).await.map_err(|e| e.to_string())
}

fn provider(daemon: &Daemon, service: &str) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(daemon.grpc_endpoint())
        .build()
        .expect("exporter builds");
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build()
}

/// `requests` orders as the shop serves them: gateway -> order -> inventory
/// and payment, plus gateway -> inventory (the catalogue), whose arrow
/// skips a column of the map; the first `failing` payments fail.
async fn send_shop_calls(daemon: &Daemon, requests: usize, failing: usize) {
    let providers: Vec<SdkTracerProvider> = ["gateway", "order", "inventory", "payment"]
        .iter()
        .map(|s| provider(daemon, s))
        .collect();
    let [gateway, order, inventory, payment] = &providers[..] else {
        unreachable!()
    };
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
    for provider in providers {
        tokio::task::spawn_blocking(move || {
            provider.force_flush().expect("export acknowledged");
            provider.shutdown().expect("clean shutdown");
        })
        .await
        .unwrap();
    }
}
