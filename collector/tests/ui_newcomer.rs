//! A newcomer's first minutes, in headless Chromium: the metrics explorer's
//! known metric names are links that run their query.
//!
//! The browser harness and what it needs are in `common/browser.rs`.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::Daemon;
use common::browser::{in_browser, snapshot, wait_for};
use common::remote_write as rw;
use fantoccini::Locator;
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
