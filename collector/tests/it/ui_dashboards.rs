//! Dashboards in headless Chromium: the built-in shop dashboard charts the
//! RED metrics of each service (with values on hover), exports the API's
//! JSON and saves copies; pasted JSON is imported; a dashboard made in the
//! UI is saved and is still there after a reload; a bad query shows the
//! API's message in its panel, and saving it is refused with the API's
//! reason.
//!
//! The span metrics are sent with remote write under the names and labels
//! Strand derives from spans, so the test need not wait for the derivation
//! interval. The browser harness and what it needs are in `strand_testkit::browser`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use strand_testkit::Strand;
use strand_testkit::browser::Client;
use strand_testkit::browser::{click, click_shown, in_browser, snapshot, type_into, wait_for};

use crate::support::remote_write as rw;

const SERVICES: [&str; 4] = ["gateway", "inventory", "order", "payment"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_chart_save_and_show_query_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_span_metrics(&daemon).await;
    in_browser("ui-dashboards", |client| async move {
        walk(&client, &daemon).await
    })
    .await;
}

/// Ten minutes of `traces_span_metrics_*` for the four shop services'
/// server spans, payment with errors, as Strand would have derived them.
async fn send_span_metrics(daemon: &Strand) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = (now_ms - 600_000) / 1000 * 1000;
    let counter = |per_step: f64| -> Vec<(i64, f64)> {
        (0..40)
            .map(|i| (base + i * 15_000, per_step * i as f64))
            .collect()
    };
    let mut series = Vec::new();
    for (n, service) in SERVICES.iter().enumerate() {
        let scale = (n + 1) as f64;
        let labels = |status: &'static str| {
            vec![
                ("service_name", *service),
                ("span_name", "request"),
                ("span_kind", "SPAN_KIND_SERVER"),
                ("status_code", status),
            ]
        };
        let ok = labels("STATUS_CODE_UNSET");
        series.push(rw::series(
            "traces_span_metrics_calls_total",
            &ok,
            &counter(10.0 * scale),
        ));
        if *service == "payment" {
            series.push(rw::series(
                "traces_span_metrics_calls_total",
                &labels("STATUS_CODE_ERROR"),
                &counter(3.0),
            ));
        }
        for (le, share) in [("0.01", 0.2), ("0.1", 0.7), ("1", 0.95), ("+Inf", 1.0)] {
            let mut bucket = ok.clone();
            bucket.push(("le", le));
            series.push(rw::series(
                "traces_span_metrics_duration_seconds_bucket",
                &bucket,
                &counter(10.0 * scale * share),
            ));
        }
    }
    rw::write_ok(daemon, &rw::request(series)).await;
}

/// Each panel: title, series count, drawn lines, legend names, messages.
const PANELS: &str = "return [...document.querySelectorAll('.panel')].map(p => ({
    title: p.querySelector('h2').innerText,
    series: Number(p.querySelector('.chart')?.dataset.series || 0),
    hidden: p.querySelector('.chart')?.hidden ?? true,
    lines: [...p.querySelectorAll('.chart path.series')]
             .filter(l => l.getAttribute('d').includes('L')).length,
    legend: [...p.querySelectorAll('.legend-item')].map(li => li.children[1].textContent),
    error: p.querySelector('.state.error')?.innerText || '',
    empty: p.querySelector('.state.empty')?.innerText || '' }))";

fn panels(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A panel that charts one line per shop service, named by service.
fn charts_every_service(panel: &Value) -> bool {
    panel["series"] == 4
        && panel["hidden"] == false
        && panel["lines"] == 4
        && panel["legend"] == serde_json::json!(SERVICES)
}

async fn goto(client: &Client, url: &str) -> Result<(), String> {
    client.goto(url).await.map_err(|e| format!("{url}: {e}"))
}

async fn walk(client: &Client, daemon: &Strand) -> Result<(), String> {
    let base = daemon.url("/");

    // The list has the built-in dashboard.
    goto(client, &format!("{base}#/dashboards")).await?;
    wait_for(
        client,
        "dashboard list",
        "return [...document.querySelectorAll('.dash-item')].map(i => i.innerText)",
        |v| {
            v.as_array().is_some_and(|items| {
                items
                    .iter()
                    .any(|i| i.as_str().unwrap_or("").contains("Shop"))
            })
        },
    )
    .await?;

    snapshot(client, "dashboards").await;

    // The shop dashboard: five panels, each a line per service.
    click(client, ".dash-item[data-id=\"shop\"] a").await?;
    let shop = wait_for(client, "shop dashboard panels", PANELS, |v| {
        panels(v).len() == 5 && panels(v).iter().all(charts_every_service)
    })
    .await?;
    let titles: Vec<&str> = panels(&shop)
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for expected in ["Request rate", "Error rate", "p50", "p95", "p99"] {
        if !titles.iter().any(|t| t.contains(expected)) {
            return Err(format!("no {expected} panel in {titles:?}"));
        }
    }
    // Hovering near the right edge lists each service's value there.
    wait_for(
        client,
        "hover values",
        "const plot = document.querySelector('.panel .chart-plot');
         const box = plot.getBoundingClientRect();
         plot.dispatchEvent(new MouseEvent('mousemove',
           { clientX: box.right - 20, clientY: box.top + 50, bubbles: true }));
         const hover = plot.parentElement.querySelector('.chart-hover');
         return hover.hidden ? [] : [...hover.querySelectorAll('.hover-name')].map(n => n.textContent)",
        |v| v.as_array().is_some_and(|names| names.len() == 4),
    )
    .await?;
    snapshot(client, "dashboard-shop").await;
    // An auto-refresh tick redraws the charts in place: same elements, new lines.
    client
        .execute(
            "const chart = document.querySelector('.panel .chart');
             chart.dataset.mark = 'before';
             window.oldPlot = chart.querySelector('svg');
             window.dispatchEvent(new Event('strand-refresh'));",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    wait_for(
        client,
        "refreshed in place",
        "const chart = document.querySelector('.panel .chart');
         return { kept: chart.dataset.mark === 'before', series: chart.dataset.series,
                  redrawn: chart.querySelector('svg') !== window.oldPlot }",
        |v| v["kept"] == true && v["redrawn"] == true && v["series"] == "4",
    )
    .await?;
    // Built in: no Edit, but Save a copy and Export.
    wait_for(
        client,
        "read-only tools",
        "return [...document.querySelectorAll('.dash-tools button')].map(b => b.innerText)",
        |v| {
            let tools = v.to_string();
            !tools.contains("Edit") && tools.contains("Save a copy") && tools.contains("Export")
        },
    )
    .await?;

    // Export downloads exactly the API's JSON (the Blob is read on its way
    // to the download link).
    client
        .execute(
            "const make = URL.createObjectURL;
             URL.createObjectURL = (blob) => { blob.text().then(t => { window.exported = t; }); return make(blob); };",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    click(client, ".dash-tools button.export").await?;
    let exported = wait_for(
        client,
        "exported JSON",
        "return window.exported || ''",
        |v| v.as_str().is_some_and(|t| !t.is_empty()),
    )
    .await?;
    let served = reqwest::get(daemon.url("/api/dashboards/shop"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    if exported != served.as_str() {
        return Err(format!("export differs from the API: {exported}"));
    }

    // Save a copy: the copy opens for editing, with every panel.
    click(client, ".dash-tools button.copy").await?;
    click_shown(client, ".dash-copy button[type=\"submit\"]").await?;
    wait_for(
        client,
        "the copy in edit mode",
        "return { hash: location.hash, editors: document.querySelectorAll('.panel-editor').length }",
        |v| {
            v["hash"]
                .as_str()
                .is_some_and(|h| h.starts_with("#/dashboard/shop-copy") && h.contains("edit=1"))
                && v["editors"] == 5
        },
    )
    .await?;
    let (status, copy) = daemon.get_json("/api/dashboards/shop-copy").await;
    if status != 200 || copy["title"] != "Shop (copy)" {
        return Err(format!("the copy was not saved: {status} {copy}"));
    }

    // Import: pasted JSON becomes a dashboard named after its title.
    goto(client, &format!("{base}#/dashboards")).await?;
    click_shown(client, ".dash-import summary").await?;
    type_into(
        client,
        ".dash-import textarea",
        r#"{"title": "Imported", "panels": [{"title": "Calls", "query": "sum by (service_name) (traces_span_metrics_calls_total)"}]}"#,
    )
    .await?;
    click(client, ".dash-import button[type=\"submit\"]").await?;
    wait_for(client, "the imported dashboard", PANELS, |v| {
        panels(v).len() == 1 && charts_every_service(&panels(v)[0])
    })
    .await?;

    // An unknown dashboard says so.
    goto(client, &format!("{base}#/dashboard/nope")).await?;
    wait_for(
        client,
        "unknown dashboard",
        "return document.querySelector('.state.error')?.innerText || ''",
        |v| {
            v.as_str()
                .is_some_and(|m| m.contains("no dashboard \"nope\""))
        },
    )
    .await?;

    // A new dashboard with one panel, saved, is there after a reload.
    goto(client, &format!("{base}#/dashboards")).await?;
    type_into(client, ".dash-new input[name=\"title\"]", "Checkout board").await?;
    click(client, ".dash-new button[type=\"submit\"]").await?;
    wait_for(
        client,
        "new dashboard in edit mode",
        "return location.hash",
        |v| {
            v.as_str().is_some_and(|h| {
                h.starts_with("#/dashboard/checkout-board") && h.contains("edit=1")
            })
        },
    )
    .await?;
    click_shown(client, "button.add-panel").await?;
    type_into(client, ".panel input[name=\"title\"]", "Calls").await?;
    type_into(
        client,
        ".panel textarea[name=\"query\"]",
        "sum by (service_name) (traces_span_metrics_calls_total)",
    )
    .await?;
    click(client, ".panel button.run").await?;
    wait_for(client, "edited panel charted", PANELS, |v| {
        panels(v).len() == 1 && charts_every_service(&panels(v)[0])
    })
    .await?;
    click(client, ".dash-tools button.save").await?;
    wait_for(client, "saved dashboard", "return location.hash", |v| {
        v.as_str()
            .is_some_and(|h| h.starts_with("#/dashboard/checkout-board") && !h.contains("edit"))
    })
    .await?;
    client.refresh().await.map_err(|e| e.to_string())?;
    wait_for(client, "saved panel after a reload", PANELS, |v| {
        panels(v).len() == 1
            && panels(v)[0]["title"] == "Calls"
            && charts_every_service(&panels(v)[0])
    })
    .await?;
    snapshot(client, "dashboard-saved").await;

    // A bad query shows the API's message in its panel; saving it is
    // refused with the API's reason and the stored dashboard stays.
    let bad = "sum(rate(traces_span_metrics_calls_total[1m])";
    let (_, answer) = daemon
        .get_json(&format!(
            "/api/v1/query_range?query={}&start=0&end=60&step=15",
            strand_testkit::urlencode(bad)
        ))
        .await;
    let api_message = answer["error"].as_str().unwrap_or_default().to_owned();
    if api_message.is_empty() {
        return Err(format!("the API accepted {bad}: {answer}"));
    }
    click_shown(client, ".dash-tools button.edit").await?;
    type_into(client, ".panel textarea[name=\"query\"]", bad).await?;
    click_shown(client, ".panel button.run").await?;
    wait_for(client, "the API's error in the panel", PANELS, |v| {
        panels(v).len() == 1 && panels(v)[0]["error"] == api_message.as_str()
    })
    .await?;
    click(client, ".dash-tools button.save").await?;
    wait_for(
        client,
        "save refused",
        "return document.querySelector('.dash-msg .state.error')?.innerText || ''",
        |v| {
            v.as_str()
                .is_some_and(|m| m.starts_with("panels[0].query: "))
        },
    )
    .await?;
    snapshot(client, "dashboard-error").await;
    let (_, stored) = daemon.get_json("/api/dashboards/checkout-board").await;
    if stored["panels"][0]["query"] != "sum by (service_name) (traces_span_metrics_calls_total)" {
        return Err(format!("the stored dashboard changed: {stored}"));
    }
    Ok(())
}
