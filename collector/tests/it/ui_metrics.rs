//! The metrics explorer in headless Chromium: the PromQL box suggests
//! metric names, label names and label values as one types, picked with
//! the keyboard; with no query it lists the metrics with their type and
//! help; `$__rate_interval` works in queries, and a rate window shorter
//! than the samples' interval gets a hint. A click on a row of the series
//! table shows that series alone in the chart, as a legend entry does.

use strand_testkit::Strand;
use strand_testkit::browser::{
    Client, Locator, click, goto, in_browser, snapshot, type_into, wait_for,
};

use crate::support::remote_write as rw;
use crate::ui_dashboards::{SERVICES, send_span_metrics};

/// WebDriver's codes for the keys the test presses.
const ENTER: char = '\u{E007}';
const TAB: char = '\u{E004}';
const DOWN: char = '\u{E015}';

/// The suggestions shown under the query box.
const SUGGESTIONS: &str = "const list = document.querySelector('.suggest');
    return list && !list.hidden ? [...list.querySelectorAll('[role=option]')].map(o => o.dataset.value) : []";

const QUERY_BOX: &str = "form textarea.query";

async fn keys(client: &Client, text: &str) -> Result<(), String> {
    client
        .find(Locator::Css(QUERY_BOX))
        .await
        .map_err(|e| e.to_string())?
        .send_keys(text)
        .await
        .map_err(|e| e.to_string())
}

async fn query_box(client: &Client) -> Result<String, String> {
    let v = client
        .execute(
            "return document.querySelector('form textarea.query').value",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(v.as_str().unwrap_or_default().to_owned())
}

fn offers(v: &serde_json::Value, wanted: &str) -> bool {
    v.as_array().is_some_and(|o| o.iter().any(|s| s == wanted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_box_suggests_names_labels_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let (start, end) = send_span_metrics(&daemon).await;
    in_browser("ui-metrics-suggest", |client| async move {
        let base = daemon.url("/");
        goto(&client, &format!("{base}#/metrics?start={start}&end={end}")).await?;
        type_into(&client, QUERY_BOX, "traces_span_metrics_ca").await?;
        wait_for(&client, "metric names", SUGGESTIONS, |v| {
            offers(v, "traces_span_metrics_calls_total")
        })
        .await?;
        keys(&client, &ENTER.to_string()).await?;
        let text = query_box(&client).await?;
        if text != "traces_span_metrics_calls_total" {
            return Err(format!("Enter inserted {text:?}"));
        }
        keys(&client, "{").await?;
        wait_for(&client, "label names", SUGGESTIONS, |v| {
            offers(v, "service_name")
        })
        .await?;
        keys(&client, "serv").await?;
        wait_for(&client, "label names typed", SUGGESTIONS, |v| {
            v == &serde_json::json!(["service_name"])
        })
        .await?;
        keys(&client, &TAB.to_string()).await?;
        wait_for(&client, "label values", SUGGESTIONS, |v| {
            v == &serde_json::json!(SERVICES)
        })
        .await?;
        snapshot(&client, "metrics-suggest").await;
        // Down twice from the first: the third value.
        keys(&client, &format!("{DOWN}{DOWN}{ENTER}")).await?;
        let text = query_box(&client).await?;
        if text != "traces_span_metrics_calls_total{service_name=\"order\"" {
            return Err(format!("the value inserted {text:?}"));
        }
        keys(&client, &format!("}}{ENTER}")).await?;
        wait_for(
            &client,
            "the picked series",
            "return document.querySelector('.metrics-out .chart')?.dataset.series",
            |v| v == "1",
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_interval_is_replaced_and_short_windows_get_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let (start, end) = send_span_metrics(&daemon).await;
    in_browser("ui-metrics-rate-interval", |client| async move {
        let base = daemon.url("/");
        let open = |query: &str| {
            format!(
                "{base}#/metrics?start={start}&end={end}&query={}",
                strand_testkit::urlencode(query)
            )
        };
        goto(&client, &open("sum by (service_name) (rate(traces_span_metrics_calls_total[$__rate_interval]))")).await?;
        wait_for(
            &client,
            "charted with $__rate_interval",
            "return { series: document.querySelector('.metrics-out .chart')?.dataset.series,
                      error: document.querySelector('.metrics-out .state.error')?.innerText || '' }",
            |v| v["series"] == "4" && v["error"] == "",
        )
        .await?;
        goto(&client, &open("sum by (service_name) (rate(traces_span_metrics_calls_total[10s]))")).await?;
        wait_for(
            &client,
            "short window hint",
            "return document.querySelector('.query-hint')?.innerText || ''",
            |v| v.as_str().is_some_and(|t| t.contains("[10s]") && t.contains("15s") && t.contains("$__rate_interval")),
        )
        .await?;
        snapshot(&client, "metrics-hint").await;
        // The interval comes from the data: a minute apart, [90s] is too short.
        let minutes: Vec<(i64, f64)> = (0..10).map(|i| (start + i * 60_000, i as f64)).collect();
        rw::write_ok(&daemon, &rw::request(vec![rw::series("slow_total", &[], &minutes)])).await;
        goto(&client, &open("rate(slow_total[90s])")).await?;
        wait_for(
            &client,
            "the data's interval",
            "return document.querySelector('.query-hint')?.innerText || ''",
            |v| v.as_str().is_some_and(|t| t.contains("[90s]") && t.contains("every 60s")),
        )
        .await?;
        // A dashboard panel with such a window says so too.
        let body = serde_json::json!({"title": "Short", "panels": [{"title": "short",
            "query": "sum by (service_name) (rate(traces_span_metrics_calls_total[10s]))"}]});
        let put = reqwest::Client::new()
            .put(daemon.url("/api/dashboards/short"))
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if put.status() != 201 {
            return Err(format!("PUT answered {}", put.status()));
        }
        goto(&client, &format!("{base}#/dashboard/short?start={start}&end={end}")).await?;
        wait_for(
            &client,
            "the panel's hint",
            "return document.querySelector('.panel .query-hint:not([hidden])')?.innerText || ''",
            |v| v.as_str().is_some_and(|t| t.contains("[10s]")),
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_lists_metrics_with_their_type_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let (start, end) = send_span_metrics(&daemon).await;
    let mut described = rw::request(Vec::new());
    described.metadata.push(rw::MetricMetadata {
        r#type: 1,
        metric_family_name: "traces_span_metrics_calls_total".into(),
        help: "Calls of each span name and kind".into(),
        unit: String::new(),
    });
    rw::write_ok(&daemon, &described).await;
    in_browser("ui-metrics-browse", |client| async move {
        let base = daemon.url("/");
        goto(&client, &format!("{base}#/metrics?start={start}&end={end}")).await?;
        type_into(
            &client,
            ".metric-browser input[name=\"metric-filter\"]",
            "calls",
        )
        .await?;
        let listed = wait_for(
            &client,
            "the metrics list",
            "return [...document.querySelectorAll('.metric-browser li')].map(li => ({
               name: li.querySelector('button').innerText,
               type: li.querySelector('.metric-type')?.innerText || '',
               help: li.querySelector('.metric-help')?.innerText || '' }))",
            |v| v.as_array().is_some_and(|items| items.len() == 1),
        )
        .await?;
        if listed[0]["name"] != "traces_span_metrics_calls_total"
            || listed[0]["type"] != "counter"
            || listed[0]["help"] != "Calls of each span name and kind"
        {
            return Err(format!("listed {listed}"));
        }
        snapshot(&client, "metrics-browse").await;
        client
            .find(Locator::Css(".metric-browser li button"))
            .await
            .map_err(|e| e.to_string())?
            .click()
            .await
            .map_err(|e| e.to_string())?;
        wait_for(
            &client,
            "the picked metric charted",
            "return document.querySelector('.metrics-out .chart')?.dataset.series",
            |v| v == "5",
        )
        .await?;
        Ok(())
    })
    .await;
}

/// The explorer's chart lines and the table rows shown as hidden.
const DRAWN: &str = "return { lines: document.querySelectorAll('.chart path.series').length,
    rows: document.querySelectorAll('.series-table .legend-row').length,
    off: [...document.querySelectorAll('.series-table .legend-row.off')].map(r => r.dataset.name).sort() }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_on_a_series_row_shows_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let (start, end) = send_span_metrics(&daemon).await;
    in_browser("ui-metrics-isolate", |client| async move {
        let query = "sum by (service_name) (rate(traces_span_metrics_calls_total[1m]))";
        let base = daemon.url("/");
        let params = [
            ("query", query),
            ("start", &start.to_string()),
            ("end", &end.to_string()),
        ];
        let url = format!(
            "{base}#/metrics?{}",
            serde_urlencoded::to_string(params).unwrap()
        );
        goto(&client, &url).await?;
        let all = serde_json::json!({ "lines": SERVICES.len(), "rows": SERVICES.len(), "off": [] });
        wait_for(&client, "every service drawn", DRAWN, |v| *v == all).await?;
        let row = |service: &str| format!(".series-table .legend-row[data-name='{service}']");
        click(&client, &row("inventory")).await?;
        wait_for(&client, "inventory alone", DRAWN, |v| {
            let off = v["off"].as_array().map(Vec::as_slice).unwrap_or_default();
            v["lines"] == 1
                && off.len() == SERVICES.len() - 1
                && off
                    .iter()
                    .all(|name| !name.as_str().unwrap_or("").contains("inventory"))
        })
        .await?;
        snapshot(&client, "metrics-isolated").await;
        click(&client, &row("inventory")).await?;
        wait_for(&client, "every service again", DRAWN, |v| *v == all).await?;
        Ok(())
    })
    .await;
}
