//! The service map in headless Chromium: empty at first, then, on refresh,
//! the shop's four-service trace as four nodes and three edges with their
//! service graph numbers (the failing payment call in red); an edge opens its
//! numbers, and a node leads to its traces.
//!
//! The browser harness and what it needs are in `strand_testkit::browser`.

use std::time::Duration;

use serde_json::Value;
use strand_testkit::browser::Client;
use strand_testkit::browser::{click, in_browser, snapshot, wait_for};
use strand_testkit::{Strand, eventually};

use crate::support::shop_fixture::send_everything;

/// Every node and edge the map drew, with what it says about them.
const GRAPH: &str = "return {
    nodes: [...document.querySelectorAll('.map-node')].map(n => n.dataset.service).sort(),
    edges: [...document.querySelectorAll('.map-edge')].map(e => ({
        edge: e.dataset.client + '->' + e.dataset.server,
        rate: e.dataset.rate, errorRatio: e.dataset.errorRatio,
        error: e.classList.contains('error'),
        label: e.querySelector('.edge-label').textContent,
    })).sort((a, b) => a.edge.localeCompare(b.edge)),
}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_map_shows_services_calls_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Derived metrics every second instead of 15 s, so the numbers are there
    // soon after the trace.
    let daemon = Strand::start(
        &dir.path().join("data"),
        &["--derived-metrics-interval", "1s"],
    )
    .await;
    in_browser(
        "ui-map",
        |client| async move { walk(&client, &daemon).await },
    )
    .await;
}

async fn walk(client: &Client, daemon: &Strand) -> Result<(), String> {
    let base = daemon.url("/");
    client
        .goto(&format!("{base}#/map?range=15m"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(
        client,
        "the empty map",
        "return document.querySelector('#view .state')?.textContent || ''",
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("No calls between services"))
        },
    )
    .await?;

    send_everything(daemon).await;
    // The map reads the edges' numbers once: wait until all three are written.
    let written = eventually(Duration::from_secs(30), || async {
        let (_, body) = daemon
            .get_json("/api/v1/query?query=traces_service_graph_request_total")
            .await;
        (body["data"]["result"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    if written.is_none() {
        return Err("no service graph metrics".into());
    }
    // Refreshing redraws the map in place.
    click(client, "#refresh-now").await?;
    let graph = wait_for(client, "the map's nodes and edges", GRAPH, |v| {
        v["edges"].as_array().is_some_and(|e| e.len() == 3)
            && v["edges"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["rate"] != "")
    })
    .await?;
    snapshot(client, "map").await;
    let nodes: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if nodes != ["gateway", "inventory", "order", "payment"] {
        return Err(format!("expected the four services as nodes: {graph}"));
    }
    let edges = graph["edges"].as_array().unwrap();
    let names: Vec<&str> = edges.iter().filter_map(|e| e["edge"].as_str()).collect();
    if names != ["gateway->order", "order->inventory", "order->payment"] {
        return Err(format!("expected three edges: {graph}"));
    }
    let ratio = |e: &Value| e["errorRatio"].as_str().and_then(|r| r.parse::<f64>().ok());
    for edge in edges {
        let failing = edge["edge"] == "order->payment";
        let ok = match ratio(edge) {
            Some(r) if failing => r > 0.0 && edge["error"] == true,
            Some(r) => r == 0.0 && edge["error"] == false,
            None => false,
        };
        let label = edge["label"].as_str().unwrap_or("");
        if !ok || !label.contains("err") || !label.contains("p95") {
            return Err(format!("edge {edge} is drawn wrong: {graph}"));
        }
    }

    // An edge opens its numbers and links; the URL remembers it.
    click(
        client,
        ".map-edge[data-client=\"order\"][data-server=\"payment\"] .edge-label",
    )
    .await?;
    wait_for(
        client,
        "the edge's panel",
        "const d = document.querySelector('.map-detail'); return d && !d.hidden ? d.innerText : ''",
        |v| {
            let text = v.as_str().unwrap_or("");
            text.contains("order → payment")
                && text.contains("Failed traces of payment")
                && text.contains("100%")
        },
    )
    .await?;
    snapshot(client, "map-edge").await;
    let url = client.current_url().await.map_err(|e| e.to_string())?;
    let fragment = url.fragment().unwrap_or("");
    if !fragment.contains("client=order") || !fragment.contains("server=payment") {
        return Err(format!("selecting an edge did not reach the URL: {url}"));
    }

    // A node leads to its traces.
    click(client, ".map-node[data-service=\"payment\"] .node-traces").await?;
    wait_for(client, "the payment traces", "return location.hash", |v| {
        v.as_str()
            .is_some_and(|h| h.starts_with("#/traces?service=payment"))
    })
    .await?;
    wait_for(
        client,
        "a trace of payment",
        "return document.querySelectorAll('.trace-item').length",
        |v| v.as_u64().is_some_and(|n| n >= 1),
    )
    .await?;
    Ok(())
}
