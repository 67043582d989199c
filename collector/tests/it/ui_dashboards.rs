//! Dashboards in headless Chromium: the built-in shop dashboard charts the
//! RED metrics of each service (with values on hover), exports the API's
//! JSON and saves copies; pasted JSON is imported; a dashboard made in the
//! UI is saved and is still there after a reload; a bad query shows the
//! API's message in its panel, and saving it is refused with the API's
//! reason. New dashboards and copies are drafts written only on Save, and
//! unsaved edits ask before leaving; panels resize, move, draw as lines,
//! stacked areas, bars, stats, tables or heatmaps, open in the explorer,
//! zoom by dragging and isolate series from the legend; variables pick
//! label values kept in the URL.
//!
//! The span metrics are sent with remote write under the names and labels
//! Strand derives from spans, so the test need not wait for the derivation
//! interval. The browser harness and what it needs are in `strand_testkit::browser`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use strand_testkit::Strand;
use strand_testkit::browser::Client;
use strand_testkit::browser::{
    click, click_shown, goto, in_browser, shown, snapshot, type_into, wait_for,
};

use crate::support::remote_write as rw;

pub(crate) const SERVICES: [&str; 4] = ["gateway", "inventory", "order", "payment"];

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
/// Returns the window they cover, (start, end) in epoch ms.
pub(crate) async fn send_span_metrics(daemon: &Strand) -> (i64, i64) {
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
    (base, base + 39 * 15_000)
}

/// The series names the first panel's hover lists near the right edge.
const HOVER_NAMES: &str = "const plot = document.querySelector('.panel .chart-plot');
    const box = plot.getBoundingClientRect();
    plot.dispatchEvent(new MouseEvent('mousemove',
      { clientX: box.right - 20, clientY: box.top + 50, bubbles: true }));
    const hover = plot.parentElement.querySelector('.chart-hover');
    return hover.hidden ? [] : [...hover.querySelectorAll('.hover-name')].map(n => n.textContent)";

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
    wait_for(client, "hover values", HOVER_NAMES, |v| {
        v.as_array().is_some_and(|names| names.len() == 4)
    })
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

    // Save a copy: the copy opens for editing, with every panel, and is
    // written when it is saved.
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
    let (status, _) = daemon.get_json("/api/dashboards/shop-copy").await;
    if status != 404 {
        return Err(format!("Save a copy wrote before Save: {status}"));
    }
    click(client, ".dash-tools button.save").await?;
    wait_for(client, "the copy saved", "return location.hash", |v| {
        v.as_str()
            .is_some_and(|h| h.starts_with("#/dashboard/shop-copy") && !h.contains("edit"))
    })
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

/// Whether a `beforeunload` now would ask before leaving the page.
const WARNS_ON_UNLOAD: &str = "const e = new Event('beforeunload', { cancelable: true });
    window.dispatchEvent(e);
    return e.defaultPrevented";

/// The leave dialog, if shown: its text.
const LEAVE_DIALOG: &str = "const d = document.querySelector('.leave-dialog');
    return d && d.open ? d.innerText : ''";

async fn status_of(daemon: &Strand, path: &str) -> u16 {
    daemon.get_json(path).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_write_only_on_save_and_warn_about_unsaved_edits() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_span_metrics(&daemon).await;
    in_browser("ui-dashboards-unsaved", |client| async move {
        let base = daemon.url("/");
        // Create opens a draft; nothing is written until Save.
        goto(&client, &format!("{base}#/dashboards")).await?;
        type_into(&client, ".dash-new input[name=\"title\"]", "Draft board").await?;
        click(&client, ".dash-new button[type=\"submit\"]").await?;
        wait_for(&client, "the draft in edit mode", "return location.hash", |v| {
            v.as_str()
                .is_some_and(|h| h.starts_with("#/dashboard/draft-board") && h.contains("edit=1"))
        })
        .await?;
        shown(&client, "button.add-panel").await?;
        let status = status_of(&daemon, "/api/dashboards/draft-board").await;
        if status != 404 {
            return Err(format!("Create wrote the dashboard before Save: {status}"));
        }
        // Unsaved: leaving the page or the view asks first.
        if wait_for(&client, "unload warning", WARNS_ON_UNLOAD, |v| v == true).await.is_err() {
            return Err("no beforeunload warning with an unsaved draft".into());
        }
        click(&client, ".dash-tools button.add-panel").await?;
        type_into(&client, ".panel textarea[name=\"query\"]", "sum by (service_name) (traces_span_metrics_calls_total)").await?;
        click(&client, "nav a[data-nav=\"traces\"]").await?;
        wait_for(&client, "leave dialog", LEAVE_DIALOG, |v| {
            v.as_str().is_some_and(|t| t.contains("unsaved"))
        })
        .await?;
        click(&client, ".leave-dialog button.stay").await?;
        wait_for(
            &client,
            "stayed on the draft",
            "return { hash: location.hash, editors: document.querySelectorAll('.panel-editor').length,
                      query: document.querySelector('.panel textarea[name=\"query\"]')?.value }",
            |v| {
                v["hash"].as_str().is_some_and(|h| h.starts_with("#/dashboard/draft-board"))
                    && v["editors"] == 1
                    && v["query"].as_str().is_some_and(|q| q.contains("calls_total"))
            },
        )
        .await?;
        // A second panel, made full width and moved up, is stored so.
        click(&client, ".dash-tools button.add-panel").await?;
        type_into(&client, ".panel[data-panel=\"1\"] input[name=\"title\"]", "Second").await?;
        type_into(&client, ".panel[data-panel=\"1\"] textarea[name=\"query\"]", "sum(traces_span_metrics_calls_total)").await?;
        click(&client, ".panel[data-panel=\"1\"] select[name=\"width\"] option[value=\"full\"]").await?;
        click(&client, ".panel[data-panel=\"1\"] button.move-up").await?;
        wait_for(
            &client,
            "moved up and full width",
            "return [...document.querySelectorAll('.panel')].map(p => [p.querySelector('input[name=\"title\"]').value, p.classList.contains('full')])",
            |v| v == &serde_json::json!([["Second", true], ["", false]]),
        )
        .await?;
        snapshot(&client, "dashboard-editor").await;
        click(&client, ".dash-tools button.save").await?;
        wait_for(&client, "saved", "return location.hash", |v| {
            v.as_str()
                .is_some_and(|h| h.starts_with("#/dashboard/draft-board") && !h.contains("edit"))
        })
        .await?;
        let (status, saved) = daemon.get_json("/api/dashboards/draft-board").await;
        if status != 200
            || saved["title"] != "Draft board"
            || saved["panels"][0]["title"] != "Second"
            || saved["panels"][0]["width"] != "full"
            || saved["panels"].as_array().map(Vec::len) != Some(2)
        {
            return Err(format!("not saved as edited: {status} {saved}"));
        }
        if wait_for(&client, "no unload warning", WARNS_ON_UNLOAD, |v| v == false).await.is_err() {
            return Err("a saved dashboard still warns on unload".into());
        }

        // Edits left through the dialog's Leave are dropped, unsaved. The
        // saved view draws after its fetch: wait for its Edit button.
        click_shown(&client, ".dash-tools button.edit").await?;
        type_into(&client, "input.dash-title", "Renamed").await?;
        click(&client, "nav a[data-nav=\"logs\"]").await?;
        wait_for(&client, "leave dialog", LEAVE_DIALOG, |v| {
            v.as_str().is_some_and(|t| t.contains("unsaved"))
        })
        .await?;
        click(&client, ".leave-dialog button.leave").await?;
        wait_for(&client, "left for logs", "return location.hash", |v| {
            v.as_str().is_some_and(|h| h.starts_with("#/logs"))
        })
        .await?;
        let (_, kept) = daemon.get_json("/api/dashboards/draft-board").await;
        if kept["title"] != "Draft board" {
            return Err(format!("leaving saved the edit: {kept}"));
        }
        // Cancel on a fresh draft leaves nothing behind either.
        goto(&client, &format!("{base}#/dashboards")).await?;
        type_into(&client, ".dash-new input[name=\"title\"]", "Never saved").await?;
        click(&client, ".dash-new button[type=\"submit\"]").await?;
        click_shown(&client, ".dash-tools button.cancel").await?;
        wait_for(&client, "back to the list", "return location.hash", |v| {
            v.as_str().is_some_and(|h| h.starts_with("#/dashboards"))
        })
        .await?;
        let status = status_of(&daemon, "/api/dashboards/never-saved").await;
        if status != 404 {
            return Err(format!("a cancelled draft was written: {status}"));
        }
        Ok(())
    })
    .await;
}

/// The `#/...?` parameters of the page's URL.
const HASH_PARAMS: &str = "const q = new URLSearchParams(location.hash.split('?')[1] || '');
    return Object.fromEntries([...q.keys()].map(k => [k, q.getAll(k).join(',')]))";

/// The visible lines of the first panel, by colour.
const VISIBLE_LINES: &str = "return document.querySelectorAll('.panel .chart path.series').length";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panels_zoom_isolate_series_share_labels_and_open_in_the_explorer() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let (start, end) = send_span_metrics(&daemon).await;
    let body = serde_json::json!({"title": "Kinds", "panels": [{"title": "By kind",
        "query": "sum by (service_name, span_kind) (rate(traces_span_metrics_calls_total[1m]))"}]});
    let put = reqwest::Client::new()
        .put(daemon.url("/api/dashboards/kinds"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    in_browser("ui-dashboards-panels", |client| async move {
        let base = daemon.url("/");
        goto(&client, &format!("{base}#/dashboard/kinds?start={start}&end={end}")).await?;
        wait_for(&client, "the panel", PANELS, |v| {
            panels(v).len() == 1 && panels(v)[0]["series"] == 4
        })
        .await?;
        // The label every series shares is said once, above the chart; the
        // hover and the legend name each series by what differs.
        wait_for(
            &client,
            "shared labels",
            "return document.querySelector('.panel .chart-common')?.innerText || ''",
            |v| v.as_str().is_some_and(|t| t.contains("span_kind=\"SPAN_KIND_SERVER\"")),
        )
        .await?;
        wait_for(&client, "hover names", HOVER_NAMES, |v| {
            v == &serde_json::json!(["payment", "order", "inventory", "gateway"])
                || v.as_array().is_some_and(|names| {
                    let mut sorted: Vec<_> = names.iter().filter_map(Value::as_str).collect();
                    sorted.sort();
                    sorted == SERVICES
                })
        })
        .await?;
        wait_for(&client, "legend names", PANELS, |v| {
            panels(v)[0]["legend"] == serde_json::json!(SERVICES)
        })
        .await?;

        // A click on a legend entry shows that series alone; a second click
        // shows all again; shift-click hides just that one.
        click(&client, ".panel .legend-item[data-name=\"order\"]").await?;
        wait_for(&client, "order alone", VISIBLE_LINES, |v| v == 1).await?;
        click(&client, ".panel .legend-item[data-name=\"order\"]").await?;
        wait_for(&client, "all again", VISIBLE_LINES, |v| v == 4).await?;
        client
            .execute(
                "document.querySelector('.panel .legend-item[data-name=\"order\"]')
                   .dispatchEvent(new MouseEvent('click', { shiftKey: true, bubbles: true }))",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        wait_for(&client, "order hidden", VISIBLE_LINES, |v| v == 3).await?;
        snapshot(&client, "dashboard-legend").await;

        // Open in explorer: the panel's query over the same window.
        let href = wait_for(
            &client,
            "explorer link",
            "return document.querySelector('.panel a.open-explorer')?.getAttribute('href') || ''",
            |v| v.as_str().is_some_and(|h| h.starts_with("#/metrics")),
        )
        .await?;
        click(&client, ".panel a.open-explorer").await?;
        let params = wait_for(&client, "explorer", HASH_PARAMS, |v| v["query"].is_string()).await?;
        let window = serde_json::json!([start.to_string(), end.to_string()]);
        if params["query"] != "sum by (service_name, span_kind) (rate(traces_span_metrics_calls_total[1m]))"
            || serde_json::json!([params["start"], params["end"]]) != window
        {
            return Err(format!("{href} opened {params}"));
        }
        wait_for(
            &client,
            "explorer chart",
            "return document.querySelector('.metrics-out .chart')?.dataset.series",
            |v| v == "4",
        )
        .await?;

        // Dragging across the plot zooms the global window into the dragged part.
        client.back().await.map_err(|e| e.to_string())?;
        wait_for(&client, "the panel again", PANELS, |v| {
            panels(v).len() == 1 && panels(v)[0]["series"] == 4
        })
        .await?;
        client
            .execute(
                "const plot = document.querySelector('.panel .chart-plot');
                 const box = plot.getBoundingClientRect();
                 const at = (type, f, target) => target.dispatchEvent(new MouseEvent(type,
                   { clientX: box.left + 64 + (box.width - 76) * f, clientY: box.top + 60, button: 0, bubbles: true }));
                 at('mousedown', 0.25, plot); at('mousemove', 0.5, plot); at('mouseup', 0.75, window);",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let zoomed = wait_for(&client, "zoomed", HASH_PARAMS, |v| {
            v["start"].as_str().is_some_and(|s| s != start.to_string())
        })
        .await?;
        let (s, e) = (
            zoomed["start"].as_str().unwrap().parse::<i64>().unwrap_or(0),
            zoomed["end"].as_str().unwrap().parse::<i64>().unwrap_or(0),
        );
        let quarter = (end - start) / 4;
        let near = |a: i64, b: i64| (a - b).abs() < quarter / 5;
        if !near(s, start + quarter) || !near(e, end - quarter) {
            return Err(format!("zoomed to {s}..{e}, wanted about {}..{}", start + quarter, end - quarter));
        }
        wait_for(&client, "the zoomed panel", PANELS, |v| {
            panels(v).len() == 1 && panels(v)[0]["series"] == 4
        })
        .await?;
        Ok(())
    })
    .await;
}

/// The values a variable's picker offers and which are checked.
fn picker_script(name: &str) -> String {
    format!(
        "const p = document.querySelector('.var-picker[data-var=\"{name}\"]');
         if (!p) return null;
         return [...p.querySelectorAll('input')]
           .map(c => [c.value, c.checked])"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_variables_pick_label_values_kept_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let (start, end) = send_span_metrics(&daemon).await;
    let (_, shop) = daemon.get_json("/api/dashboards/shop").await;
    if shop["variables"][0]["name"] != "service" {
        panic!("the shop dashboard has no service variable: {shop}");
    }
    in_browser("ui-dashboards-variables", |client| async move {
        let base = daemon.url("/");
        goto(
            &client,
            &format!("{base}#/dashboard/shop?start={start}&end={end}"),
        )
        .await?;
        // Every service by default.
        wait_for(&client, "all services", PANELS, |v| {
            panels(v).len() == 5 && panels(v).iter().all(charts_every_service)
        })
        .await?;
        // Axes read plainly: time ticks on whole minutes of a ten-minute
        // window, and a latency axis that starts at "0", not "0µs".
        let axes = wait_for(
            &client,
            "the p50 panel's axes",
            "const p = [...document.querySelectorAll('.panel')].find(p => p.innerText.includes('p50'));
             return { x: [...p.querySelectorAll('text.axis.x')].map(t => t.textContent),
                      y: [...p.querySelectorAll('text.axis.y')].map(t => t.textContent) }",
            |v| v["x"].as_array().is_some_and(|x| x.len() >= 3),
        )
        .await?;
        // HH:MM, on whole minutes.
        let round = |t: &Value| {
            t.as_str().is_some_and(|t| {
                t.len() == 5 && t.as_bytes()[2] == b':' && t.chars().all(|c| c.is_ascii_digit() || c == ':')
            })
        };
        if !axes["x"].as_array().unwrap().iter().all(round) || axes["y"][0] != "0" {
            return Err(format!("axes: {axes}"));
        }
        let picker = picker_script("service");
        wait_for(&client, "the service picker", &picker, |v| {
            v.as_array().is_some_and(|values| {
                values
                    .iter()
                    .filter(|c| c[0] != "$__all")
                    .map(|c| c[0].as_str().unwrap_or(""))
                    .collect::<Vec<_>>()
                    == SERVICES
            })
        })
        .await?;
        // Picking two services narrows every panel to them and goes into the URL.
        click_shown(&client, ".var-picker[data-var=\"service\"] summary").await?;
        click(
            &client,
            ".var-picker[data-var=\"service\"] input[value=\"payment\"]",
        )
        .await?;
        click(
            &client,
            ".var-picker[data-var=\"service\"] input[value=\"order\"]",
        )
        .await?;
        wait_for(&client, "two services", PANELS, |v| {
            panels(v).len() == 5
                && panels(v)
                    .iter()
                    .all(|p| p["legend"] == serde_json::json!(["order", "payment"]))
        })
        .await?;
        snapshot(&client, "dashboard-variables").await;
        let params = wait_for(&client, "var in the URL", HASH_PARAMS, |v| {
            v["var-service"].is_string()
        })
        .await?;
        let mut picked: Vec<&str> = params["var-service"].as_str().unwrap().split(',').collect();
        picked.sort();
        if picked != ["order", "payment"] {
            return Err(format!("URL holds {params}"));
        }
        // Kept on reload; the explorer gets the query with the values as a regex.
        client.refresh().await.map_err(|e| e.to_string())?;
        wait_for(&client, "two services after a reload", PANELS, |v| {
            panels(v).len() == 5
                && panels(v)
                    .iter()
                    .all(|p| p["legend"] == serde_json::json!(["order", "payment"]))
        })
        .await?;
        let href = wait_for(
            &client,
            "explorer link",
            "return document.querySelector('.panel a.open-explorer')?.getAttribute('href') || ''",
            |v| v.as_str().is_some_and(|h| h.starts_with("#/metrics")),
        )
        .await?;
        let query = href.as_str().unwrap_or_default();
        if !(query.contains("order%7Cpayment") || query.contains("payment%7Corder"))
            || query.contains("%24service")
        {
            return Err(format!(
                "the explorer link does not substitute $service: {query}"
            ));
        }
        // The editor adds a variable; its picker shows at once, and Save stores it.
        click(&client, ".dash-tools button.copy").await?;
        click_shown(&client, ".dash-copy button[type=\"submit\"]").await?;
        click_shown(&client, ".var-editor button.add-variable").await?;
        type_into(&client, ".var-editor .var-row:last-child input[name=\"name\"]", "kind").await?;
        type_into(
            &client,
            ".var-editor .var-row:last-child input[name=\"query\"]",
            "label_values(traces_span_metrics_calls_total, span_kind)",
        )
        .await?;
        click(&client, ".var-editor button.apply-variables").await?;
        wait_for(&client, "the new picker", &picker_script("kind"), |v| {
            v.as_array().is_some_and(|values| values.iter().any(|c| c[0] == "SPAN_KIND_SERVER"))
        })
        .await?;
        click(&client, ".dash-tools button.save").await?;
        wait_for(&client, "the copy saved", "return location.hash", |v| {
            v.as_str().is_some_and(|h| h.starts_with("#/dashboard/shop-copy") && !h.contains("edit"))
        })
        .await?;
        let (_, copy) = daemon.get_json("/api/dashboards/shop-copy").await;
        if copy["variables"][1] != serde_json::json!({"name": "kind", "query": "label_values(traces_span_metrics_calls_total, span_kind)"}) {
            return Err(format!("the variable was not stored: {copy}"));
        }
        Ok(())
    })
    .await;
}

/// What each panel draws, by its type.
const PANEL_KINDS: &str = "return [...document.querySelectorAll('.panel')].map(p => ({
    title: p.querySelector('h2').innerText,
    lines: p.querySelectorAll('.chart path.series').length,
    areas: p.querySelectorAll('.chart path.area').length,
    bars: p.querySelectorAll('.chart rect.bar').length,
    stats: [...p.querySelectorAll('.stat')].map(s => [s.querySelector('.stat-value').innerText, s.dataset.level]),
    rows: [...p.querySelectorAll('table.series-table tr.legend-row')].map(r => r.innerText.split('\\t').map(c => c.trim()).filter(c => c)),
    cells: p.querySelectorAll('.heatmap rect.cell').length,
    buckets: [...p.querySelectorAll('.heatmap text.bucket')].map(t => t.textContent) }))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panels_draw_stacked_bars_stats_tables_and_heatmaps() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let (start, end) = send_span_metrics(&daemon).await;
    let rate = "sum by (service_name) (rate(traces_span_metrics_calls_total[1m]))";
    let body = serde_json::json!({"title": "Kinds of panels", "panels": [
        {"title": "stacked", "query": rate, "type": "stacked"},
        {"title": "bars", "query": rate, "type": "bars"},
        {"title": "payment", "query": "sum(rate(traces_span_metrics_calls_total{service_name=\"payment\"}[1m]))",
         "type": "stat", "thresholds": [1, 2], "unit": "req/s"},
        {"title": "gateway", "query": "sum(rate(traces_span_metrics_calls_total{service_name=\"gateway\"}[1m]))",
         "type": "stat", "thresholds": [1, 2]},
        {"title": "table", "query": rate, "type": "table"},
        {"title": "heatmap", "query": "sum by (le) (rate(traces_span_metrics_duration_seconds_bucket[1m]))",
         "type": "heatmap"}]});
    let put = reqwest::Client::new()
        .put(daemon.url("/api/dashboards/kinds"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    in_browser("ui-dashboards-kinds", |client| async move {
        let base = daemon.url("/");
        goto(
            &client,
            &format!("{base}#/dashboard/kinds?start={start}&end={end}"),
        )
        .await?;
        let drawn = wait_for(&client, "every kind of panel", PANEL_KINDS, |v| {
            let p = panels(v);
            p.len() == 6
                && p[0]["areas"] == 4
                && p[1]["bars"].as_u64().is_some_and(|n| n >= 4)
                && p[2]["stats"].as_array().is_some_and(|s| s.len() == 1)
                && p[3]["stats"].as_array().is_some_and(|s| s.len() == 1)
                && p[4]["rows"].as_array().is_some_and(|r| r.len() == 4)
                && p[5]["cells"].as_u64().is_some_and(|n| n > 0)
        })
        .await?;
        let p = panels(&drawn);
        // payment: 2.67 calls/s and 0.2 errors/s, over the second threshold;
        // gateway: 0.67/s, under the first.
        if p[2]["stats"][0] != serde_json::json!(["2.867 req/s", "bad"])
            || p[3]["stats"][0] != serde_json::json!(["0.6667", "ok"])
        {
            return Err(format!("stats: {} {}", p[2]["stats"], p[3]["stats"]));
        }
        if p[4]["rows"][0] != serde_json::json!(["gateway", "0.6667"]) {
            return Err(format!("table rows: {}", p[4]["rows"]));
        }
        if p[5]["buckets"] != serde_json::json!(["0.01", "0.1", "1", "+Inf"]) {
            return Err(format!("heatmap buckets: {}", p[5]["buckets"]));
        }
        snapshot(&client, "dashboard-kinds").await;
        // The editor picks the type; it is stored on Save.
        click_shown(&client, ".dash-tools button.edit").await?;
        click_shown(
            &client,
            ".panel[data-panel=\"0\"] select[name=\"type\"] option[value=\"table\"]",
        )
        .await?;
        click(&client, ".dash-tools button.save").await?;
        wait_for(&client, "saved", "return location.hash", |v| {
            v.as_str().is_some_and(|h| !h.contains("edit"))
        })
        .await?;
        let (_, stored) = daemon.get_json("/api/dashboards/kinds").await;
        if stored["panels"][0]["type"] != "table"
            || stored["panels"][2]["thresholds"] != serde_json::json!([1.0, 2.0])
        {
            return Err(format!("stored: {stored}"));
        }
        Ok(())
    })
    .await;
}

/// A refresh fetches the variables' values again: a service that starts
/// sending after the dashboard opened shows up in its picker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_brings_new_variable_values() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_span_metrics(&daemon).await;
    in_browser("ui-dashboards-variable-refresh", |client| async move {
        goto(&client, &daemon.url("/#/dashboard/shop?range=15m")).await?;
        let picker = picker_script("service");
        let services = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|values| {
                    values
                        .iter()
                        .filter(|c| c[0] != "$__all")
                        .filter_map(|c| c[0].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        wait_for(&client, "the shop's services", &picker, |v| {
            services(v) == SERVICES
        })
        .await?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let labels = [
            ("service_name", "shipping"),
            ("span_name", "request"),
            ("span_kind", "SPAN_KIND_SERVER"),
            ("status_code", "STATUS_CODE_UNSET"),
        ];
        let samples = [(now_ms - 30_000, 1.0), (now_ms - 15_000, 2.0)];
        let series = rw::series("traces_span_metrics_calls_total", &labels, &samples);
        rw::write_ok(&daemon, &rw::request(vec![series])).await;
        click(&client, "#refresh-now").await?;
        wait_for(&client, "the new service after a refresh", &picker, |v| {
            services(v).iter().any(|s| s == "shipping")
        })
        .await?;
        Ok(())
    })
    .await;
}
