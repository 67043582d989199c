//! The log explorer in headless Chromium: attribute facets with include and
//! exclude chips, attribute queries of every value type, query errors in
//! plain words, negations, prefixes and free text over attribute values,
//! live tail (order, counts, facets that keep updating, shutdown) and the
//! layout at 1024 px with the detail open.
//!
//! The browser harness and what it needs are in `strand_testkit::browser`.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use strand_testkit::browser::{click_shown, goto, in_browser, snapshot, type_into, wait_for};
use strand_testkit::{Strand, eventually};

/// Sends `docs` as one Elasticsearch `_bulk` request; fields beyond time,
/// level, service and message become attributes.
async fn send_bulk(daemon: &Strand, docs: &[Value]) {
    let body: String = docs
        .iter()
        .map(|doc| format!("{{\"create\":{{}}}}\n{doc}\n"))
        .collect();
    let answer = crate::support::post_bulk(daemon, body).await;
    assert_eq!(answer["errors"], false, "{answer}");
}

/// An RFC 3339 time `ms` milliseconds after `base`.
fn at(base: SystemTime, ms: u64) -> String {
    humantime::format_rfc3339_millis(base + Duration::from_millis(ms)).to_string()
}

/// Waits until `q` finds `total` logs through the API (commits are every
/// half second).
async fn searchable(daemon: &Strand, q: &str, total: u64) {
    let found = eventually(Duration::from_secs(20), || async {
        let (_, page) = daemon.get_json_query("/api/logs", &[("q", q)]).await;
        (page["total"] == total).then_some(())
    })
    .await;
    assert!(found.is_some(), "{q} never found {total} logs");
}

/// Twelve logs: six payment errors (declined, with a dotted, dashed peer
/// and a boolean), four accepted orders, two gateway lines; order ids
/// 424201 to 424210 on all but the gateway's.
async fn send_shop_logs(daemon: &Strand) {
    let base = SystemTime::now() - Duration::from_secs(30);
    let mut docs = Vec::new();
    for i in 0..6u64 {
        docs.push(json!({
            "@timestamp": at(base, i * 100), "service": "payment", "level": "error",
            "message": "charge declined", "status": "declined", "order_id": 424201 + i,
            "peer": "pay-1.eu-west", "retry": i % 2 == 0,
        }));
    }
    for i in 6..10u64 {
        docs.push(json!({
            "@timestamp": at(base, i * 100), "service": "order", "level": "info",
            "message": "order accepted", "status": "accepted", "order_id": 424201 + i,
        }));
    }
    for i in 10..12u64 {
        docs.push(json!({
            "@timestamp": at(base, i * 100), "service": "gateway", "level": "info",
            "message": "GET /api/orders 200",
        }));
    }
    send_bulk(daemon, &docs).await;
    searchable(daemon, "", 12).await;
}

/// The explorer's summary line, error line under the query box, histogram
/// total and whether anything on the page is blank.
const PAGE: &str = "const text = (css) => document.querySelector(css)?.innerText ?? null;
    const error = document.querySelector('.query-error');
    return { summary: text('.logs-status .summary'), queryError: error && !error.hidden ? error.innerText : null,
             histogram: Number(document.querySelector('.histogram')?.dataset.total ?? -1),
             errors: [...document.querySelectorAll('.histogram .state.error, .facets .state.error')].map(e => e.innerText),
             q: new URLSearchParams(location.hash.split('?')[1] || '').get('q'),
             services: [...document.querySelectorAll('.log-row .svc')].map(s => s.innerText) }";

fn summary(v: &Value) -> &str {
    v["summary"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_facets_list_top_values_with_include_and_exclude_chips() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_shop_logs(&daemon).await;

    // Attribute values of every type are searchable.
    for (q, total) in [
        ("attributes.order_id:424203", 1),
        ("attributes.peer:\"pay-1.eu-west\"", 6),
        ("attributes.retry:true", 3),
        ("attributes.status:declined", 6),
        ("attribute_keys:order_id", 10),
    ] {
        let (status, page) = daemon.get_json_query("/api/logs", &[("q", q)]).await;
        assert_eq!(
            (status, &page["total"]),
            (200, &json!(total)),
            "{q}: {page}"
        );
    }
    // Facets: the common keys, each with its top values and counts.
    let (status, facets) = daemon.get_json("/api/logs/facets").await;
    assert_eq!(status, 200, "{facets}");
    let attributes = facets["attributes"].as_array().expect("attributes facets");
    let status_facet = attributes
        .iter()
        .find(|a| a["key"] == "status")
        .unwrap_or_else(|| panic!("no status facet: {facets}"));
    assert_eq!(status_facet["count"], 10, "{status_facet}");
    assert_eq!(
        status_facet["values"],
        json!([{"value": "declined", "count": 6}, {"value": "accepted", "count": 4}])
    );

    in_browser("ui-logs-facets", |client| async move {
        let base = daemon.url("/");
        // The syntax the UI itself suggests works, with histogram and facets.
        goto(&client, &format!("{base}#/logs?q=attribute_keys:order_id")).await?;
        wait_for(&client, "records with an order id", PAGE, |v| {
            summary(v).starts_with("10 matching")
                && v["histogram"] == 10
                && v["errors"] == json!([])
                && v["queryError"].is_null()
        })
        .await?;

        goto(&client, &format!("{base}#/logs")).await?;
        wait_for(&client, "all logs", PAGE, |v| {
            summary(v).starts_with("12 matching")
        })
        .await?;
        let chip = |kind: &str, key: &str, value: &str| {
            format!(".facets .facet-{kind}[data-key=\"{key}\"][data-value=\"{value}\"]")
        };
        // Excluding a value adds NOT attributes.k:v.
        click_shown(&client, &chip("exclude", "status", "declined")).await?;
        wait_for(&client, "declined excluded", PAGE, |v| {
            v["q"] == "NOT attributes.status:declined"
                && summary(v).starts_with("6 matching")
                && v["services"]
                    .as_array()
                    .is_some_and(|s| s.len() == 6 && s.iter().all(|s| s != "payment"))
        })
        .await?;
        snapshot(&client, "logs-facets").await;
        // Including one adds attributes.k:v.
        click_shown(&client, &chip("include", "status", "accepted")).await?;
        wait_for(&client, "accepted included", PAGE, |v| {
            v["q"] == "NOT attributes.status:declined AND attributes.status:accepted"
                && summary(v).starts_with("4 matching")
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_errors_are_plain_words_and_negations_prefixes_and_free_text_work() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_shop_logs(&daemon).await;

    // The API says which fields exist and what was meant.
    let (status, answer) = daemon
        .get_json_query("/api/logs", &[("q", "level:error")])
        .await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"].as_str().unwrap();
    for part in [
        "severity:error",
        "service",
        "trace_id",
        "attributes.",
        "resource.",
    ] {
        assert!(message.contains(part), "{part} missing in: {message}");
    }

    in_browser("ui-logs-query-errors", |client| async move {
        let base = daemon.url("/");
        goto(&client, &format!("{base}#/logs?q=level:error")).await?;
        let shown = wait_for(&client, "error under the query box", PAGE, |v| {
            v["queryError"]
                .as_str()
                .is_some_and(|e| e.contains("severity:error"))
        })
        .await?;
        // The error is where the query is, the page around it stays.
        let layout = client
            .execute(
                "const form = document.querySelector('form.toolbar').getBoundingClientRect();
                 const error = document.querySelector('.query-error').getBoundingClientRect();
                 return { below: error.top >= form.bottom - 1,
                          body: !!document.querySelector('.logs-body'),
                          input: document.querySelector('input.query').value }",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        if layout != json!({"below": true, "body": true, "input": "level:error"}) {
            return Err(format!("error layout: {layout}, page: {shown}"));
        }
        snapshot(&client, "logs-query-error").await;

        // Typing the suggestion fixes it, and the error goes.
        type_into(&client, "input.query", "severity:error").await?;
        click_shown(&client, "form.toolbar button[type=submit]").await?;
        wait_for(&client, "errors", PAGE, |v| {
            summary(v).starts_with("6 matching") && v["queryError"].is_null()
        })
        .await?;

        // A pure exclusion, a prefix on a field, and free text that is an
        // attribute value (an order id) all find what they say.
        for (q, expected) in [
            ("NOT service:gateway", "10 matching"),
            ("service:pay*", "6 matching"),
            ("424203", "1 matching"),
        ] {
            goto(
                &client,
                &format!("{base}#/logs?q={}", strand_testkit::urlencode(q)),
            )
            .await?;
            wait_for(&client, q, PAGE, |v| {
                summary(v).starts_with(expected) && v["queryError"].is_null()
            })
            .await?;
        }
        Ok(())
    })
    .await;
}

/// The rows' times, top to bottom, and what the status line and the
/// "Load more" button say.
const TAIL: &str = "return { times: [...document.querySelectorAll('.log-row .time')].map(t => t.innerText),
        summary: document.querySelector('.logs-status .summary')?.innerText ?? '',
        live: document.querySelector('.live-indicator')?.innerText ?? '',
        more: [...document.querySelectorAll('.logs-main button')].some(b => b.innerText === 'Load more' && !b.hidden),
        facets: document.querySelector('.facets')?.innerText ?? '',
        histogram: Number(document.querySelector('.histogram')?.dataset.total ?? -1) }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_keeps_time_order_counts_and_updating_facets() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let base = SystemTime::now() - Duration::from_secs(20);
    let line = |ms: u64, service: &str| json!({"@timestamp": at(base, ms), "service": service, "level": "info", "message": "tailtoken"});
    send_bulk(
        &daemon,
        &[line(0, "order"), line(1, "order"), line(2, "order")],
    )
    .await;
    searchable(&daemon, "tailtoken", 3).await;

    in_browser("ui-logs-tail", |client| async move {
        goto(&client, &daemon.url("/#/logs?live=1&q=tailtoken")).await?;
        wait_for(&client, "tail started", TAIL, |v| {
            v["live"].as_str().is_some_and(|l| l.contains("live")) && v["times"].as_array().map(Vec::len) == Some(3)
        })
        .await?;
        // Three new records of one second, arriving out of time order.
        let second = base + Duration::from_secs(5);
        let late = |ms: u64| {
            json!({"@timestamp": at(second, ms), "service": "latecomer", "level": "warn", "message": "tailtoken"})
        };
        send_bulk(&daemon, &[late(500), late(100), late(300)]).await;
        let tail = wait_for(&client, "new rows, facets and histogram", TAIL, |v| {
            v["times"].as_array().map(Vec::len) == Some(6)
                && v["facets"].as_str().is_some_and(|f| f.contains("latecomer"))
                && v["histogram"] == 6
        })
        .await?;
        let times: Vec<&str> = tail["times"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let mut newest_first = times.clone();
        newest_first.sort_by(|a, b| b.cmp(a));
        if times != newest_first {
            return Err(format!("rows out of time order: {times:?}"));
        }
        let summary = tail["summary"].as_str().unwrap();
        if !summary.contains("3 matching") || !summary.contains("3 new since") {
            return Err(format!("summary: {summary}"));
        }
        if tail["more"] != false {
            return Err(format!("Load more is offered while tailing: {tail}"));
        }
        Ok(())
    })
    .await;
}

/// An open tail no longer holds the daemon's shutdown: stopping ends the
/// stream, and the servers finish within their grace (5 s, after which
/// `run` stops waiting for them; before, it always waited it out and the
/// stream stayed open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_an_open_tail() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let mut tail = reqwest::Client::new()
        .get(daemon.url("/api/logs/tail"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    let reader = tokio::spawn(async move {
        // To its end, clean or with the connection.
        while let Ok(Some(_)) = tail.chunk().await {}
    });
    let asked = Instant::now();
    daemon.stop().await;
    let took = asked.elapsed();
    let ended = tokio::time::timeout(Duration::from_secs(20), reader).await;
    assert!(
        ended.is_ok(),
        "the tail stayed open after the daemon stopped"
    );
    assert!(
        took < Duration::from_secs(5),
        "the tail held the shutdown for the servers' whole grace: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_1024_px_the_message_keeps_its_width_with_the_detail_open() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_shop_logs(&daemon).await;
    in_browser("ui-logs-1024", |client| async move {
        client
            .set_window_size(1024, 700)
            .await
            .map_err(|e| e.to_string())?;
        goto(&client, &daemon.url("/#/logs")).await?;
        click_shown(&client, ".log-row").await?;
        let widths = "const d = document.querySelector('.log-detail');
            const body = document.querySelector('.log-row .log-body');
            return d && !d.hidden && body ? { body: body.getBoundingClientRect().width } : null";
        let seen = wait_for(&client, "detail open", widths, |v| !v.is_null()).await?;
        snapshot(&client, "logs-1024-detail").await;
        if seen["body"].as_f64().unwrap_or(0.0) < 200.0 {
            return Err(format!("message column at 1024 px: {seen}"));
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_histogram_has_a_count_axis_and_dragging_zooms_into_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let now = SystemTime::now();
    let ago = |minutes: u64| {
        json!({"@timestamp": at(now - Duration::from_secs(minutes * 60), 0), "service": "order",
               "level": "info", "message": format!("{minutes} minutes ago")})
    };
    send_bulk(&daemon, &[ago(10), ago(5), ago(2)]).await;
    searchable(&daemon, "", 3).await;
    in_browser("ui-logs-histogram", |client| async move {
        goto(&client, &daemon.url("/#/logs?range=15m")).await?;
        // Round counts from 0 up, bottom to top.
        let axis = wait_for(
            &client,
            "y-axis",
            "return [...document.querySelectorAll('.histogram .hist-y span')].map(s => s.innerText)",
            |v| v.as_array().is_some_and(|a| a.len() >= 2),
        )
        .await?;
        let counts: Vec<f64> = axis
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|t| t.as_str().unwrap().parse().unwrap_or(f64::NAN))
            .collect();
        if counts[0] != 0.0 || !counts.windows(2).all(|w| w[1] > w[0] && w[1].fract() == 0.0) {
            return Err(format!("y-axis ticks: {axis}"));
        }
        // Dragging from 10% to 60% of the bars zooms into that window: the
        // record of 10 minutes ago is in it, those of 5 and 2 are not.
        client
            .execute(
                "const bars = document.querySelector('.histogram .hist-bars');
                 const box = bars.getBoundingClientRect();
                 const at = (type, f) => new PointerEvent(type, { bubbles: true, button: 0,
                     clientX: box.left + f * box.width, clientY: box.top + 10 });
                 bars.dispatchEvent(at('pointerdown', 0.1));
                 window.dispatchEvent(at('pointermove', 0.4));
                 window.dispatchEvent(at('pointerup', 0.6));",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let zoomed = wait_for(
            &client,
            "zoomed window",
            "const p = new URLSearchParams(location.hash.split('?')[1] || '');
             return { start: Number(p.get('start')), end: Number(p.get('end')),
                      summary: document.querySelector('.logs-status .summary')?.innerText ?? '' }",
            |v| v["start"].as_f64().unwrap_or(0.0) > 0.0 && summary(v).starts_with("1 matching"),
        )
        .await?;
        let minutes = (zoomed["end"].as_f64().unwrap() - zoomed["start"].as_f64().unwrap()) / 60_000.0;
        if !(6.0..9.0).contains(&minutes) {
            return Err(format!("zoomed to {minutes} minutes: {zoomed}"));
        }
        Ok(())
    })
    .await;
}

/// The table's header and the first row's cells.
const TABLE: &str =
    "return { head: [...document.querySelectorAll('.log-head span')].map(s => s.textContent),
        cells: [...(document.querySelector('.log-row')?.children || [])].map(c => c.innerText),
        cols: new URLSearchParams(location.hash.split('?')[1] || '').get('cols') }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_column_picker_shows_attribute_columns_kept_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_shop_logs(&daemon).await;
    in_browser("ui-logs-columns", |client| async move {
        // A shared link with columns shows them.
        let url =
            daemon.url("/#/logs?q=service:order&cols=time,service,message,attributes.order_id");
        goto(&client, &url).await?;
        wait_for(&client, "columns from the URL", TABLE, |v| {
            v["head"] == json!(["Time", "Service", "Message", "order_id"])
                && v["cells"][1] == "order"
                && v["cells"][3] == "424210"
        })
        .await?;
        // The picker hides a column and adds an attribute column.
        click_shown(&client, ".col-picker summary").await?;
        click_shown(&client, ".col-picker input[value=service]").await?;
        wait_for(&client, "service hidden", TABLE, |v| {
            v["cols"] == "time,message,attributes.order_id"
                && v["head"] == json!(["Time", "Message", "order_id"])
        })
        .await?;
        click_shown(&client, ".col-picker summary").await?;
        type_into(&client, ".col-picker input[name=attr]", "status").await?;
        click_shown(&client, ".col-picker .col-add button").await?;
        wait_for(&client, "status column", TABLE, |v| {
            v["cols"] == "time,message,attributes.order_id,attributes.status"
                && v["cells"][3] == "accepted"
        })
        .await?;
        snapshot(&client, "logs-columns").await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detail_shows_the_same_services_surrounding_logs() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_shop_logs(&daemon).await;
    in_browser("ui-logs-surrounding", |client| async move {
        // One order record found; around it, the service's other three.
        goto(&client, &daemon.url("/#/logs?q=attributes.order_id:424208")).await?;
        click_shown(&client, ".log-row").await?;
        click_shown(&client, ".log-detail .surrounding-toggle").await?;
        let around = wait_for(
            &client,
            "surrounding logs",
            "return [...document.querySelectorAll('.log-detail .surround-row')]
                .map(r => ({ current: r.classList.contains('current'), text: r.innerText }))",
            |v| v.as_array().map(Vec::len) == Some(4),
        )
        .await?;
        snapshot(&client, "logs-surrounding").await;
        let rows = around.as_array().unwrap();
        let current: Vec<bool> = rows.iter().map(|r| r["current"] == true).collect();
        if current != [false, false, true, false]
            || !rows
                .iter()
                .all(|r| r["text"].as_str().unwrap().contains("order accepted"))
        {
            return Err(format!("surrounding: {around}"));
        }
        Ok(())
    })
    .await;
}
