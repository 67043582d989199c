//! The service map in headless Chromium: empty at first, then, on refresh,
//! the shop's four-service trace as four nodes and three edges with their
//! service graph numbers (the failing payment call in red); an edge opens its
//! numbers, and a node leads to its traces.
//!
//! The browser harness and what it needs are in `strand_testkit::browser`.

use std::time::Duration;

use serde_json::{Value, json};
use strand_testkit::browser::Client;
use strand_testkit::browser::{click, goto, in_browser, snapshot, wait_for};
use strand_testkit::{Strand, eventually};

use crate::support::shop_fixture::{send_everything, send_shop_calls};

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
    goto(client, &format!("{base}#/map?range=15m")).await?;
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
        if !ok || !label.contains("failed client-side") || !label.contains("p95") {
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

/// A daemon that has seen 200 orders through the shop, one payment of them
/// failing (0.5 %), with their derived metrics written.
async fn shop_with_orders(dir: &std::path::Path) -> Strand {
    let daemon = Strand::start(&dir.join("data"), &["--derived-metrics-interval", "1s"]).await;
    send_shop_calls(&daemon, 200, 1).await;
    daemon
}

/// Every node with its numbers and whether it is red, and every edge with
/// whether it is red, once the map has drawn the four calls with numbers.
const NUMBERS: &str = "return {
    nodes: Object.fromEntries([...document.querySelectorAll('.map-node')].map(n => [n.dataset.service, {
        rate: n.dataset.rate, failed: n.dataset.failed, red: n.classList.contains('error'),
        text: [...n.querySelectorAll('.node-red')].map(t => t.textContent).join(' '),
    }])),
    edges: Object.fromEntries([...document.querySelectorAll('.map-edge')].map(e => [e.dataset.client + '->' + e.dataset.server, {
        rate: e.dataset.rate, red: e.classList.contains('error'),
        text: e.querySelector('.edge-label').textContent,
    }])),
    threshold: document.querySelector('.map-legend input[name=threshold]')?.value,
}";

/// Opens the map at `hash` and waits until it shows the four services and
/// the four calls between them, each with a rate.
async fn open_map(client: &Client, daemon: &Strand, hash: &str) -> Result<Value, String> {
    goto(client, &format!("{}{hash}", daemon.url("/"))).await?;
    wait_for(client, "the map with its numbers", NUMBERS, |v| {
        let counted = |kind: &str| {
            v[kind].as_object().map_or(0, |all| {
                all.values()
                    .filter(|x| x["rate"].as_str().is_some_and(|r| !r.is_empty()))
                    .count()
            })
        };
        counted("nodes") == 4 && counted("edges") == 4
    })
    .await
}

/// No arrow passes through the box of a service it does not connect:
/// gateway -> inventory goes around order, which sits between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_go_around_the_services_they_do_not_connect() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = shop_with_orders(dir.path()).await;
    in_browser("ui-map-routes", |client| async move {
        let graph = open_map(&client, &daemon, "#/map?range=15m").await?;
        if graph["edges"].get("gateway->inventory").is_none() {
            return Err(format!("no call from gateway to inventory: {graph}"));
        }
        snapshot(&client, "map-routes").await;
        let crossings = client
            .execute(
                "const boxes = [...document.querySelectorAll('.map-node')].map(n => {
                   const r = n.querySelector('.box');
                   return { name: n.dataset.service, x: +r.getAttribute('x'), y: +r.getAttribute('y'),
                            w: +r.getAttribute('width'), h: +r.getAttribute('height') };
                 });
                 const crossings = [];
                 for (const e of document.querySelectorAll('.map-edge')) {
                   const line = e.querySelector('.line');
                   const length = line.getTotalLength();
                   for (const b of boxes) {
                     if (b.name === e.dataset.client || b.name === e.dataset.server) continue;
                     for (let at = 0; at <= length; at += 2) {
                       const p = line.getPointAtLength(at);
                       if (p.x > b.x && p.x < b.x + b.w && p.y > b.y && p.y < b.y + b.h) {
                         crossings.push(`${e.dataset.client} -> ${e.dataset.server} crosses ${b.name}`);
                         break;
                       }
                     }
                   }
                 }
                 return crossings;",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        if crossings.as_array().is_none_or(|c| !c.is_empty()) {
            return Err(format!("arrows through boxes: {crossings}"));
        }
        Ok(())
    })
    .await;
}

/// With 0.5 % of requests failing, nothing is red at the default threshold
/// of 5 %; at 0.1 % payment is, and the services that did not fail are not. A service's failed share is labelled server-side, a call's
/// client-side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_means_above_the_threshold_the_legend_shows() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = shop_with_orders(dir.path()).await;
    in_browser("ui-map-threshold", |client| async move {
        let graph = open_map(&client, &daemon, "#/map?range=15m").await?;
        let red = |graph: &Value, kind: &str| -> Vec<String> {
            graph[kind]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, x)| x["red"] == true)
                .map(|(name, _)| name.clone())
                .collect()
        };
        if graph["threshold"] != "5"
            || !red(&graph, "nodes").is_empty()
            || !red(&graph, "edges").is_empty()
        {
            return Err(format!("red below the 5 % threshold: {graph}"));
        }
        let labelled = |kind: &str, words: &str| {
            graph[kind].as_object().is_some_and(|all| {
                all.values()
                    .all(|x| x["text"].as_str().unwrap_or("").contains(words))
            })
        };
        if !labelled("nodes", "server-side") || !labelled("edges", "client-side") {
            return Err(format!(
                "failed shares not labelled server-side (services) and client-side (calls): {graph}"
            ));
        }
        let graph = open_map(&client, &daemon, "#/map?range=15m&threshold=0.1").await?;
        snapshot(&client, "map-threshold").await;
        if graph["threshold"] != "0.1" || red(&graph, "nodes") != ["payment"] {
            return Err(format!(
                "at 0.1 % exactly the services that failed are red: {graph}"
            ));
        }
        Ok(())
    })
    .await;
}

/// Over an hour in which the shop ran only its last minutes, a service's
/// rate on the map is the shop dashboard's "Request rate per service" over
/// the same window (the mean of its points), not the calls spread over the
/// whole hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_rate_is_the_dashboards_over_the_same_window() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = shop_with_orders(dir.path()).await;
    let (_, shop) = daemon.get_json("/api/dashboards/shop").await;
    let panel = shop["panels"]
        .as_array()
        .and_then(|panels| {
            panels
                .iter()
                .find(|p| p["title"] == "Request rate per service")
        })
        .unwrap_or_else(|| panic!("no request rate panel in {shop}"));
    let query = panel["query"].as_str().unwrap();
    // Every service, and a fixed window while waiting for complete data; the
    // comparison below expands the panel's query as the dashboard does.
    let complete = query
        .replace("$service", ".*")
        .replace("$__rate_interval", "1m");
    // The panel's points over the hour as the dashboard asks for them (240
    // points: every 15 s). The hour ends on a whole step, in the past, once
    // the panel has every service there, so that nothing in it changes
    // between the map's query and this one.
    let step_ms = 15_000;
    let ended = eventually(Duration::from_secs(60), || async {
        let end = crate::support::now_ms() / step_ms * step_ms;
        let (_, points) = daemon
            .get_json_query(
                "/api/v1/query_range",
                &[
                    ("query", &complete),
                    ("start", &((end - 3_600_000) / 1000).to_string()),
                    ("end", &(end / 1000).to_string()),
                    ("step", &(step_ms / 1000).to_string()),
                ],
            )
            .await;
        (crate::support::now_ms() > end + 2_000
            && points["data"]["result"].as_array().map(Vec::len) == Some(4))
        .then_some((end, points))
    })
    .await;
    let (end, _) = ended.expect("the panel shows every service");
    let start = end - 3_600_000;
    let query = query.to_owned();
    in_browser("ui-map-rates", |client| async move {
        let graph = open_map(&client, &daemon, &format!("#/map?start={start}&end={end}")).await?;
        // The panel's points as the dashboard gets them (its own expansion of
        // `$service` and `$__rate_interval`), averaged per service.
        let dashboard = client
            .execute_async(
                "const [query, start, end, done] = arguments;
                 import('/ui/metrics.js').then(async (m) => {
                   const result = await m.queryRange(m.expandVariables(query, { service: '.*' }), { start, end });
                   done(result.map((s) => [s.metric.service_name,
                     s.values.reduce((sum, [, v]) => sum + Number(v), 0) / s.values.length]));
                 }).catch((e) => done(String(e)));",
                vec![json!(query), json!(start), json!(end)],
            )
            .await
            .map_err(|e| e.to_string())?;
        let means: Vec<(String, f64)> = serde_json::from_value(dashboard.clone())
            .map_err(|_| format!("the dashboard's query failed: {dashboard}"))?;
        if means.len() != 4 {
            return Err(format!("the dashboard shows {means:?}, not the four services"));
        }
        for (service, mean) in &means {
            let map: Option<f64> = graph["nodes"][service]["rate"].as_str().and_then(|r| r.parse().ok());
            if map.is_none_or(|rate| (rate - mean).abs() > mean * 1e-9) {
                return Err(format!(
                    "{service}: the dashboard's mean rate is {mean} req/s, the map says {map:?}: {graph}"
                ));
            }
        }
        Ok(())
    })
    .await;
}
