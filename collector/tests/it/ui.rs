//! The web UI end to end: the strand binary serves the embedded assets
//! with the right content types beside the API, and headless Chromium,
//! driven over WebDriver, shows a four-service trace as a nested waterfall
//! with its logs, finds logs with a histogram, follows a log's trace id to
//! the trace, and charts a PromQL query.
//!
//! The browser harness and what it needs are in `strand_testkit::browser`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use strand_testkit::Strand;
use strand_testkit::browser::Client;
use strand_testkit::browser::{click, in_browser, snapshot, wait_for};

use crate::support::shop_fixture::{Sent, send_everything};

/// The whole UI must stay small: it is embedded and loaded on every visit.
const MAX_UI_BYTES: u64 = 500 * 1024;

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_embedded_small_and_leave_the_api_alone() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let get = |path: &str| {
        let url = daemon.url(path);
        async move {
            let response = reqwest::get(url).await.expect("daemon answers");
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (status, content_type, response.bytes().await.unwrap())
        }
    };

    // A browser asks for HTML at `/` (without, Elasticsearch clients get
    // the cluster's info there).
    let page = reqwest::Client::new()
        .get(daemon.url("/"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .expect("daemon answers");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("/ui/app.js"));

    let mut total = 0;
    for entry in std::fs::read_dir(ui_dir()).expect("ui/ exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let expected = match path.extension().and_then(|e| e.to_str()) {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("html") => "text/html; charset=utf-8",
            other => panic!("unexpected file in ui/: {name} ({other:?})"),
        };
        let (status, content_type, body) = get(&format!("/ui/{name}")).await;
        assert_eq!((status, content_type.as_str()), (200, expected), "{name}");
        assert_eq!(
            body.len() as u64,
            std::fs::metadata(&path).unwrap().len(),
            "{name}"
        );
        total += body.len() as u64;
    }
    assert!(
        total < MAX_UI_BYTES,
        "the UI weighs {total} bytes, more than {MAX_UI_BYTES}"
    );

    assert_eq!(get("/ui/missing.js").await.0, 404);
    // The API keeps its routes and its JSON.
    let (status, content_type, _) = get("/api/services").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert_eq!(get("/api/v1/query?query=1").await.0, 200);
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/no/such/page").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_follows_a_request_through_traces_logs_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let sent = send_everything(&daemon).await;
    in_browser(
        "ui",
        |client| async move { walk(&client, &daemon, &sent).await },
    )
    .await;
}

const WATERFALL_ROWS: &str = "return [...document.querySelectorAll('.waterfall .wf-row')]
    .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
    .map(r => ({kind: r.classList.contains('span-row') ? 'span' : 'log', ...r.dataset,
                error: r.classList.contains('error')}))";

async fn walk(client: &Client, daemon: &Strand, sent: &Sent) -> Result<(), String> {
    let base = daemon.url("/");
    let id = &sent.trace_id;

    // Trace search lists the trace.
    client
        .goto(&format!("{base}#/traces?service=order"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(
        client,
        "trace search result",
        &format!("return document.querySelectorAll('.trace-item[data-trace-id=\"{id}\"]').length"),
        |v| v == 1,
    )
    .await?;
    snapshot(client, "traces").await;

    // The waterfall: all four services, nested, logs under their spans.
    client
        .goto(&format!("{base}#/trace/{id}"))
        .await
        .map_err(|e| e.to_string())?;
    let rows = wait_for(client, "waterfall rows", WATERFALL_ROWS, |v| {
        v.as_array().is_some_and(|rows| rows.len() == 8)
    })
    .await?;
    let rows = rows.as_array().unwrap();
    let spans: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "span").collect();
    let depth_of = |span_id: &str| {
        spans
            .iter()
            .find(|r| r["spanId"] == span_id)
            .map(|r| r["depth"].as_str().unwrap_or("").to_string())
    };
    let expected = [
        ("gateway", "0", ""),
        ("order", "1", sent.spans["gateway"].as_str()),
        ("inventory", "2", sent.spans["order"].as_str()),
        ("payment", "2", sent.spans["order"].as_str()),
    ];
    for (service, depth, parent) in expected {
        let span_id = &sent.spans[service];
        let row = spans
            .iter()
            .find(|r| &r["spanId"] == span_id)
            .ok_or(format!("no row for {service}: {rows:?}"))?;
        if row["service"] != service || row["depth"] != depth || row["parentId"] != parent {
            return Err(format!("{service} row is wrong: {row}"));
        }
    }
    let services: std::collections::BTreeSet<&str> =
        spans.iter().filter_map(|r| r["service"].as_str()).collect();
    if services.len() != 4 || spans.len() != 5 {
        return Err(format!("expected 5 spans of 4 services: {rows:?}"));
    }
    let payment = &sent.spans["payment"];
    if !spans
        .iter()
        .any(|r| &r["spanId"] == payment && r["error"] == true)
    {
        return Err(format!(
            "the payment span is not marked as an error: {rows:?}"
        ));
    }
    // Each log row follows its span (or its span's earlier logs) one level deeper.
    for (i, row) in rows.iter().enumerate().filter(|(_, r)| r["kind"] == "log") {
        let span_id = row["spanId"].as_str().unwrap_or("");
        let owner = rows[..i]
            .iter()
            .rev()
            .find(|r| r["kind"] == "span")
            .ok_or(format!("log row {i} before any span"))?;
        let depth: u32 = row["depth"].as_str().unwrap_or("").parse().unwrap_or(99);
        let span_depth: u32 = depth_of(span_id).and_then(|d| d.parse().ok()).unwrap_or(0);
        if owner["spanId"] != span_id || depth != span_depth + 1 {
            return Err(format!("log row {row} is not under its span: {rows:?}"));
        }
    }

    // Clicking a span shows its detail; the URL remembers it.
    click(client, &format!(".span-row[data-span-id=\"{payment}\"]")).await?;
    wait_for(
        client,
        "span detail",
        "const d = document.querySelector('aside.detail'); return d && !d.hidden ? d.innerText : ''",
        |v| {
            let text = v.as_str().unwrap_or("");
            text.contains("payment.Charge")
                && text.contains("CardDeclined")
                && text.contains("uitoken card declined")
                && text.contains("payment-host")
        },
    )
    .await?;
    snapshot(client, "trace").await;
    let url = client.current_url().await.map_err(|e| e.to_string())?;
    if url.fragment() != Some(&format!("/trace/{id}?span={payment}")) {
        return Err(format!("selecting a span did not reach the URL: {url}"));
    }

    // Collapsing the order span hides its subtree and its logs.
    let order = &sent.spans["order"];
    click(
        client,
        &format!(".span-row[data-span-id=\"{order}\"] button.twisty"),
    )
    .await?;
    wait_for(client, "collapsed subtree", WATERFALL_ROWS, |v| {
        v.as_array().is_some_and(|rows| {
            rows.len() == 2 && rows.iter().filter(|r| r["kind"] == "span").count() == 2
        })
    })
    .await?;

    // Logs: rows, a histogram with the four records, facets.
    client
        .goto(&format!("{base}#/logs?q=uitoken"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(
        client,
        "log rows and histogram",
        "return { rows: document.querySelectorAll('.log-table .log-row').length,
                  bars: [...document.querySelectorAll('.hist-bar')]
                          .reduce((n, b) => n + Number(b.dataset.count), 0),
                  facets: document.querySelector('.facets').innerText }",
        |v| {
            v["rows"] == 4
                && v["bars"] == 4
                && v["facets"].as_str().unwrap_or("").contains("payment")
        },
    )
    .await?;
    snapshot(client, "logs").await;

    // A log's trace id opens the trace.
    click(
        client,
        &format!(".log-row[data-trace-id=\"{id}\"][data-severity=\"error\"] a.trace-link"),
    )
    .await?;
    wait_for(
        client,
        "trace opened from a log",
        "return { hash: location.hash, spans: document.querySelectorAll('.span-row').length,
                  selected: document.querySelector('.span-row.selected')?.dataset.spanId }",
        |v| {
            v["hash"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("#/trace/{id}"))
                && v["spans"] == 5
                && v["selected"] == payment.as_str()
        },
    )
    .await?;

    // Metrics: one path per series; API errors are shown.
    client
        .goto(&format!("{base}#/metrics?query=ui_requests_total"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(
        client,
        "metrics chart",
        "const c = document.querySelector('.chart');
         return { series: c?.dataset.series,
                  paths: [...document.querySelectorAll('.chart path.series')]
                           .filter(p => p.getAttribute('d').includes('L')).length,
                  legend: document.querySelectorAll('.legend-row').length }",
        |v| v["series"] == "2" && v["paths"] == 2 && v["legend"] == 2,
    )
    .await?;
    snapshot(client, "metrics").await;
    client
        .goto(&format!("{base}#/metrics?query=sum(%20by"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(
        client,
        "PromQL error",
        "return document.querySelector('.state.error')?.innerText || ''",
        |v| !v.as_str().unwrap_or("").is_empty(),
    )
    .await?;

    // Unknown traces and bad log queries get readable errors.
    for (hash, expected) in [
        ("#/trace/0000000000000000000000000000abcd", "not found"),
        ("#/logs?q=service%3A(", ""),
    ] {
        client
            .goto(&format!("{base}{hash}"))
            .await
            .map_err(|e| e.to_string())?;
        wait_for(
            client,
            hash,
            "return document.querySelector('.state.error')?.innerText || ''",
            |v| {
                let text = v.as_str().unwrap_or("");
                !text.is_empty() && text.contains(expected)
            },
        )
        .await?;
    }

    // The theme toggle flips the theme.
    click(client, "#theme-toggle").await?;
    wait_for(
        client,
        "theme toggle",
        "return document.documentElement.dataset.theme || ''",
        |v| v == "dark" || v == "light",
    )
    .await?;
    client
        .goto(&format!("{base}#/trace/{id}"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(client, "trace in the other theme", WATERFALL_ROWS, |v| {
        v.as_array().is_some_and(|rows| rows.len() == 8)
    })
    .await?;
    snapshot(client, "trace-other-theme").await;
    Ok(())
}
