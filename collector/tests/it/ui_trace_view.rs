//! What an SRE used to Jaeger checks first in the trace views, in headless
//! Chromium: log markers at their nanosecond time, the trace's logs over
//! its own window, the duration label at 1024 px, tag suggestions from the
//! data, "1 span", the critical-path legend, the header's trace-id box, and
//! sorting search results across all services.

use std::time::Duration;

use serde_json::{Value, json};
use strand_testkit::browser::{
    Client, click, click_shown, goto, in_browser, shown, snapshot, type_into, wait_for,
};
use strand_testkit::{Strand, eventually};

use crate::support::shop_fixture::send_everything;
use crate::ui_traces::{id, now_nanos, post_spans, span};

/// checkout: a 1.84 ms trace whose `charge` span (+1.5 ms to +1.8 ms) has
/// two logs 74 µs apart, at +1.626 ms and +1.700 ms; the root answered 500.
const NS_TRACE: &str = "5a000000000000000000000000000001";
/// solo: one span, no logs.
const ONE_TRACE: &str = "5a000000000000000000000000000002";
/// The logs' offsets from the trace's start, in ns.
const LOG_OFFSETS: [u64; 2] = [1_626_000, 1_700_000];

/// Sends both traces and the logs; the start has a sub-millisecond part
/// (0.700123 ms), which whole-millisecond log times get wrong.
async fn send_fixture(daemon: &Strand) {
    let t0 = (now_nanos() - 60_000_000_000) / 1_000_000 * 1_000_000 + 700_123;
    let mut root = span(NS_TRACE, 1, None, "POST /checkout", t0, t0 + 1_840_000);
    root["attributes"] =
        json!([{"key": "http.response.status_code", "value": {"intValue": "500"}}]);
    root["status"] = json!({"code": 2, "message": "payment failed"});
    let charge = span(
        NS_TRACE,
        2,
        Some(1),
        "charge",
        t0 + 1_500_000,
        t0 + 1_800_000,
    );
    post_spans(daemon, "checkout", vec![root, charge]).await;
    let solo = span(
        ONE_TRACE,
        9,
        None,
        "GET /ping",
        t0 + 5_000_000,
        t0 + 5_300_000,
    );
    post_spans(daemon, "solo", vec![solo]).await;

    let records: Vec<Value> = LOG_OFFSETS
        .iter()
        .enumerate()
        .map(|(i, offset)| {
            json!({
                "timeUnixNano": (t0 + offset).to_string(), "severityText": "INFO", "severityNumber": 9,
                "body": {"stringValue": format!("charge step {i}")},
                "traceId": NS_TRACE, "spanId": id(2),
            })
        })
        .collect();
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeLogs": [{"logRecords": records}],
    }]});
    let response = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/logs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let ready = eventually(Duration::from_secs(30), || async {
        let spans = |body: Value| body["data"][0]["spans"].as_array().map(Vec::len);
        let (_, logs) = daemon
            .get_json(&format!("/api/traces/{NS_TRACE}/logs"))
            .await;
        (spans(daemon.get_json(&format!("/api/traces/{NS_TRACE}")).await.1) == Some(2)
            && spans(daemon.get_json(&format!("/api/traces/{ONE_TRACE}")).await.1) == Some(1)
            && logs["logs"].as_array().map(Vec::len) == Some(2))
        .then_some(())
    })
    .await;
    assert!(ready.is_some(), "the API never showed the fixture");
}

async fn fixture_daemon(dir: &tempfile::TempDir) -> Strand {
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_fixture(&daemon).await;
    daemon
}

/// Changes the URL's hash in the page, as a click on a link would (a
/// `goto` could load the page again and forget the carried time range).
async fn set_hash(client: &Client, hash: &str) -> Result<(), String> {
    client
        .execute("location.hash = arguments[0]", vec![json!(hash)])
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_markers_sit_at_their_nanosecond_time() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = fixture_daemon(&dir).await;
    in_browser("ui-trace-log-markers", |client| async move {
        goto(&client, &daemon.url(&format!("/#/trace/{NS_TRACE}?span={}", id(2)))).await?;
        let markers = "const line = document.querySelector('.ruler .wf-timeline');
            const bar = document.querySelector('.waterfall .span-row[data-span-id=\"0000000000000002\"] .wf-bar');
            const rows = [...document.querySelectorAll('.waterfall .log-row')];
            if (!line || !bar || rows.length !== 2) return null;
            const l = line.getBoundingClientRect(), b = bar.getBoundingClientRect();
            return { left: l.left, width: l.width, bar: [b.left, b.right],
                     marks: rows.map(r => { const m = r.querySelector('.log-mark');
                       if (!m) return null; const x = m.getBoundingClientRect(); return (x.left + x.right) / 2; }),
                     detail: document.querySelector('aside.detail')?.innerText || '' }";
        // The trace starts at its first span's whole microsecond: 123 ns
        // before the logs' offsets count from.
        let expected: Vec<f64> = LOG_OFFSETS
            .iter()
            .map(|ns| (*ns as f64 + 123.0) / 1_840_000.0)
            .collect();
        wait_for(&client, "log markers inside their span, at their time", markers, |v| {
            let (Some(left), Some(width)) = (v["left"].as_f64(), v["width"].as_f64()) else {
                return false;
            };
            let (bar_left, bar_right) = (v["bar"][0].as_f64().unwrap(), v["bar"][1].as_f64().unwrap());
            let marks: Vec<Option<f64>> = v["marks"].as_array().unwrap().iter().map(Value::as_f64).collect();
            marks.iter().zip(&expected).all(|(mark, fraction)| {
                mark.is_some_and(|x| {
                    (x - (left + fraction * width)).abs() <= 1.5 && (bar_left..=bar_right).contains(&x)
                })
            }) && marks[0] < marks[1]
        })
        .await?;
        // The detail gives each log's offset to the microsecond.
        wait_for(&client, "log offsets in the detail", markers, |v| {
            let detail = v["detail"].as_str().unwrap_or("");
            detail.contains("+1.626ms") && detail.contains("+1.700ms")
        })
        .await?;
        // The ruler of the 1.84 ms trace ticks at round offsets.
        wait_for(
            &client,
            "round ruler ticks",
            "return [...document.querySelectorAll('.ruler .tick')].map(t => t.textContent)",
            |v| *v == serde_json::json!(["0", "500µs", "1ms", "1.5ms"]),
        )
        .await?;
        snapshot(&client, "trace-log-markers").await;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_logs_of_a_trace_keep_the_global_range() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let sent = send_everything(&daemon).await;
    in_browser("ui-trace-all-logs", |client| async move {
        goto(&client, &daemon.url("/#/traces?service=order&range=15m")).await?;
        shown(&client, ".trace-item").await?;
        set_hash(&client, &format!("#/trace/{}?span={}", sent.trace_id, sent.spans["order"])).await?;
        click_shown(&client, "aside.detail a[href^='#/logs']").await?;
        // The trace's three logs, over the trace's own window.
        let logs = "const q = new URLSearchParams(location.hash.split('?')[1] || '');
            return { view: document.getElementById('view').dataset.view, range: q.get('range'),
                     rows: document.querySelectorAll('.log-table .log-row').length,
                     picker: document.querySelector('#time-picker select[name=range]').value }";
        wait_for(&client, "the trace's logs", logs, |v| {
            v["view"] == "logs" && v["rows"] == 3 && v["range"] != "7d" && v["picker"] == "custom"
        })
        .await?;
        // Other views keep the range from before.
        click(&client, "nav [data-nav=traces]").await?;
        let range = "const q = new URLSearchParams(location.hash.split('?')[1] || '');
            return { view: document.getElementById('view').dataset.view, range: q.get('range'),
                     start: q.get('start'), picker: document.querySelector('#time-picker select[name=range]').value }";
        wait_for(&client, "the range from before", range, |v| {
            *v == json!({"view": "traces", "range": "15m", "start": null, "picker": "15m"})
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_spans_duration_does_not_cover_its_name_at_1024px() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let sent = send_everything(&daemon).await;
    in_browser("ui-trace-1024", |client| async move {
        client.set_window_size(1024, 700).await.map_err(|e| e.to_string())?;
        goto(&client, &daemon.url(&format!("/#/trace/{}", sent.trace_id))).await?;
        let boxes = format!(
            "const row = document.querySelector('.waterfall .span-row[data-span-id=\"{}\"]');
             if (!row) return null;
             const r = (el) => {{ const b = el.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; }};
             return {{ name: r(row.querySelector('.wf-name')), dur: r(row.querySelector('.wf-dur')),
                       line: r(row.querySelector('.wf-timeline')), text: row.querySelector('.wf-dur').innerText }}",
            sent.spans["gateway"]
        );
        let boxes = wait_for(&client, "root span row", &boxes, |v| !v.is_null()).await?;
        snapshot(&client, "trace-1024").await;
        let edge = |what: &str, i: usize| boxes[what][i].as_f64().unwrap();
        let overlaps = edge("dur", 0) < edge("name", 2) && edge("name", 0) < edge("dur", 2);
        let inside = edge("dur", 0) >= edge("line", 0) && edge("dur", 2) <= edge("line", 2);
        if overlaps || !inside || boxes["text"] != "120ms" {
            return Err(format!("the duration label overlaps the name or leaves its timeline: {boxes}"));
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_search_suggests_semantic_convention_tags_from_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = fixture_daemon(&dir).await;
    in_browser("ui-trace-tags", |client| async move {
        goto(&client, &daemon.url("/#/traces?service=checkout")).await?;
        let tags = "const input = document.querySelector('form input[name=tags]');
            if (!input) return null;
            return { placeholder: input.placeholder,
                     options: input.list ? [...input.list.options].map(o => o.value) : [] }";
        wait_for(&client, "tag suggestions", tags, |v| {
            let placeholder = v["placeholder"].as_str().unwrap_or("");
            placeholder.contains("http.response.status_code=")
                && !placeholder.contains("http.status_code")
                && v["options"]
                    .as_array()
                    .is_some_and(|o| o.contains(&json!("http.response.status_code=500")))
        })
        .await?;
        // Enter submits (the suggestions' list covers the button).
        type_into(
            &client,
            "form input[name=tags]",
            "http.response.status_code=500\n",
        )
        .await?;
        wait_for(
            &client,
            "the trace the suggestion finds",
            "return [...document.querySelectorAll('.trace-item')].map(i => i.dataset.traceId)",
            |v| *v == json!([NS_TRACE]),
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_span_is_one_span_and_the_critical_path_has_a_legend() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = fixture_daemon(&dir).await;
    in_browser("ui-trace-plurals", |client| async move {
        goto(&client, &daemon.url("/#/traces?service=solo")).await?;
        wait_for(
            &client,
            "one result",
            "return [...document.querySelectorAll('.results')].map(r => r.innerText).join(' ')",
            |v| {
                let text = v.as_str().unwrap_or("");
                text.contains("1 span") && !text.contains("1 spans") && text.contains("1 trace")
            },
        )
        .await?;
        goto(&client, &daemon.url(&format!("/#/trace/{ONE_TRACE}"))).await?;
        let head = "const m = document.querySelector('.trace-head .meta');
            const legend = document.querySelector('.trace-head .cp-legend');
            return m && { meta: m.innerText, legend: legend ? legend.innerText : null }";
        wait_for(&client, "trace header", head, |v| {
            let meta = v["meta"].as_str().unwrap_or("");
            meta.contains("1 span")
                && meta.contains("1 service")
                && !meta.contains("1 spans")
                && !meta.contains("1 services")
                && v["legend"]
                    .as_str()
                    .is_some_and(|l| l.to_lowercase().contains("critical path"))
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_id_in_the_header_opens_the_trace_from_any_view() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = fixture_daemon(&dir).await;
    in_browser("ui-trace-lookup", |client| async move {
        goto(&client, &daemon.url("/#/logs")).await?;
        let box_ = "#trace-lookup input[name=trace]";
        // Enter in the box opens the trace.
        type_into(&client, box_, &format!(" {NS_TRACE}\n")).await?;
        wait_for(
            &client,
            "trace opened",
            "return { hash: location.hash, head: document.querySelector('.trace-head h1')?.innerText || '' }",
            |v| v["hash"] == format!("#/trace/{NS_TRACE}") && v["head"] == "checkout: POST /checkout",
        )
        .await?;
        // A malformed id says why and stays put.
        type_into(&client, box_, "not-a-trace\n").await?;
        wait_for(
            &client,
            "malformed id",
            "const i = document.querySelector('#trace-lookup input[name=trace]');
             return { hash: location.hash, message: i.validationMessage,
                      shown: document.querySelector('#trace-lookup .lookup-error')?.innerText || '' }",
            |v| {
                v["hash"] == format!("#/trace/{NS_TRACE}")
                    && v["shown"].as_str().is_some_and(|m| m.contains("hex"))
                    && v["message"] == v["shown"]
            },
        )
        .await?;
        // An unknown one opens and says it is not there.
        let unknown = "00000000000000000000000000abcdef";
        type_into(&client, box_, &format!("{unknown}\n")).await?;
        wait_for(
            &client,
            "unknown id",
            "return { hash: location.hash, state: document.querySelector('#view .state.error')?.innerText || '' }",
            |v| {
                v["hash"] == format!("#/trace/{unknown}")
                    && v["state"].as_str().is_some_and(|s| s.contains("not found"))
            },
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_sort_show_status_codes_and_span_all_services() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = fixture_daemon(&dir).await;
    in_browser("ui-trace-sort", |client| async move {
        goto(&client, &daemon.url("/#/traces?service=*&sort=longest")).await?;
        let items = "return [...document.querySelectorAll('.trace-item')].map(i => ({
                id: i.dataset.traceId, status: i.querySelector('.status')?.innerText || null,
                errors: i.querySelector('.error-badge')?.innerText || null }))";
        // Both services' traces, the 1.84 ms one first, with its 500.
        wait_for(&client, "all services, longest first", items, |v| {
            *v == json!([
                {"id": NS_TRACE, "status": "500", "errors": "1 error"},
                {"id": ONE_TRACE, "status": null, "errors": null},
            ])
        })
        .await?;
        let picked = "const f = document.querySelector('form[aria-label=\"trace search\"]');
            return { service: f.service.value, sort: f.sort.value }";
        wait_for(&client, "the form shows the URL", picked, |v| {
            *v == json!({"service": "*", "sort": "longest"})
        })
        .await?;
        // Picking another order sorts at once and keeps it in the URL.
        client
            .execute(
                "const s = document.querySelector('form select[name=sort]');
                 s.value = 'shortest'; s.dispatchEvent(new Event('change', { bubbles: true }));",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        wait_for(&client, "shortest first", "return { hash: location.hash, ids: [...document.querySelectorAll('.trace-item')].map(i => i.dataset.traceId) }", |v| {
            v["ids"] == json!([ONE_TRACE, NS_TRACE])
                && v["hash"].as_str().is_some_and(|h| h.contains("sort=shortest"))
        })
        .await?;
        for (sort, first) in [("spans", NS_TRACE), ("errors", NS_TRACE), ("oldest", NS_TRACE), ("newest", ONE_TRACE)] {
            goto(&client, &daemon.url(&format!("/#/traces?service=*&sort={sort}"))).await?;
            wait_for(&client, sort, "return [...document.querySelectorAll('.trace-item')].map(i => i.dataset.traceId)", |v| {
                v.as_array().is_some_and(|ids| ids.len() == 2 && ids[0] == first)
            })
            .await?;
        }
        snapshot(&client, "traces-sorted").await;
        Ok(())
    })
    .await;
}

/// Dispatches a key press on the page, as a user pressing it with nothing
/// focused would.
async fn press(client: &Client, key: &str) -> Result<(), String> {
    client
        .execute(
            "document.body.dispatchEvent(new KeyboardEvent('keydown', { key: arguments[0], bubbles: true }))",
            vec![json!(key)],
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Drags with the mouse from `from` to `to`, fractions of the width of
/// `css` (or pixels from its left with `pixels`).
async fn drag(client: &Client, css: &str, from: f64, to: f64) -> Result<(), String> {
    client
        .execute(
            "const line = document.querySelector(arguments[0]);
             const box = line.getBoundingClientRect();
             const at = (type, f) => new PointerEvent(type, { bubbles: true, button: 0,
                 clientX: box.left + f * box.width, clientY: box.top + 5 });
             line.dispatchEvent(at('pointerdown', arguments[1]));
             window.dispatchEvent(at('pointermove', (arguments[1] + arguments[2]) / 2));
             window.dispatchEvent(at('pointerup', arguments[2]));",
            vec![json!(css), json!(from), json!(to)],
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_trace_keys_search_statistics_download_links_minimap_and_column_width() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let sent = send_everything(&daemon).await;
    in_browser("ui-trace-tools", |client| async move {
        let trace = daemon.url(&format!("/#/trace/{}", sent.trace_id));
        goto(&client, &trace).await?;
        shown(&client, ".waterfall .span-row").await?;
        let at = "const sel = document.querySelector('.waterfall .span-row.selected');
            const detail = document.querySelector('aside.detail');
            return { selected: sel ? sel.dataset.spanId : null, op: sel ? sel.querySelector('.op').innerText : null,
                     rows: document.querySelectorAll('.waterfall .span-row').length,
                     detail: detail.hidden ? null : detail.querySelector('h2').innerText }";
        let (gateway, order, payment) = (&sent.spans["gateway"], &sent.spans["order"], &sent.spans["payment"]);

        // Keys: j/k and the arrows move, left/right fold, Enter opens the detail.
        press(&client, "j").await?;
        wait_for(&client, "first span", at, |v| v["selected"] == *gateway && v["detail"].is_null()).await?;
        press(&client, "ArrowDown").await?;
        wait_for(&client, "second span", at, |v| v["selected"] == *order).await?;
        press(&client, "ArrowRight").await?;
        wait_for(&client, "its first child", at, |v| v["op"] == "validate order").await?;
        press(&client, "ArrowLeft").await?;
        wait_for(&client, "back to the parent", at, |v| v["selected"] == *order).await?;
        press(&client, "ArrowLeft").await?;
        wait_for(&client, "collapsed", at, |v| v["selected"] == *order && v["rows"] == 2).await?;
        press(&client, "ArrowRight").await?;
        wait_for(&client, "expanded", at, |v| v["rows"] == 5).await?;
        press(&client, "Enter").await?;
        wait_for(&client, "detail opened", at, |v| v["detail"] == "POST /orders").await?;
        press(&client, "k").await?;
        wait_for(&client, "up, the detail following", at, |v| {
            v["selected"] == *gateway && v["detail"] == "POST /api/orders"
        })
        .await?;

        // Enter on a row reached with Tab selects it.
        client
            .execute(
                "const row = document.querySelector(`.waterfall .span-row[data-span-id='${arguments[0]}']`);
                 row.focus();
                 row.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));",
                vec![json!(payment)],
            )
            .await
            .map_err(|e| e.to_string())?;
        wait_for(&client, "focused row selected", at, |v| {
            v["selected"] == *payment && v["detail"] == "payment.Charge"
        })
        .await?;

        // Span search: matches highlighted and counted; Enter goes to them.
        let found = "return { matches: [...document.querySelectorAll('.waterfall .span-row.match')].map(r => r.dataset.spanId),
                              count: document.querySelector('.match-count').innerText,
                              selected: document.querySelector('.waterfall .span-row.selected')?.dataset.spanId || null }";
        type_into(&client, "input.span-search", "payment").await?;
        wait_for(&client, "service matched", found, |v| {
            v["matches"] == json!([payment]) && v["count"] == "1 match"
        })
        .await?;
        type_into(&client, "input.span-search", "http.route=/api/orders\n").await?;
        wait_for(&client, "attribute matched and gone to", found, |v| {
            v["matches"] == json!([gateway]) && v["count"] == "1 of 1" && v["selected"] == *gateway
        })
        .await?;

        // Statistics per service and operation, self time without the children's.
        click(&client, ".stats-toggle").await?;
        let stats = "return Object.fromEntries([...document.querySelectorAll('.trace-stats tbody tr')]
            .map(r => [r.dataset.service + ': ' + r.dataset.op, [...r.cells].slice(2).map(c => c.innerText)]))";
        wait_for(&client, "statistics", stats, |v| {
            v["gateway: POST /api/orders"] == json!(["1", "120ms", "25ms", "0"])
                && v["order: POST /orders"] == json!(["1", "95ms", "13ms", "0"])
                && v["order: validate order"] == json!(["1", "2ms", "2ms", "0"])
                && v["payment: payment.Charge"] == json!(["1", "50ms", "50ms", "1"])
        })
        .await?;
        snapshot(&client, "trace-tools").await;

        // The JSON download is the API's answer.
        let json = client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 const a = document.querySelector('a.download-json');
                 a.addEventListener('click', (e) => e.preventDefault(), { once: true });
                 a.click();
                 fetch(a.href).then(r => r.json()).then(body => done({ name: a.download,
                     id: body.data[0].traceID, spans: body.data[0].spans.length }), e => done(String(e)));",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let expected = json!({"name": format!("trace-{}.json", sent.trace_id), "id": sent.trace_id, "spans": 5});
        if json != expected {
            return Err(format!("download: {json}, expected {expected}"));
        }

        // Links to the trace's logs and its services' metrics.
        let links = client
            .execute(
                "return { logs: document.querySelector('a.trace-logs').getAttribute('href'),
                          metrics: decodeURIComponent(document.querySelector('a.trace-metrics').getAttribute('href')) }",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let logs = links["logs"].as_str().unwrap_or("");
        let metrics = links["metrics"].as_str().unwrap_or("");
        let logs_ok = logs.contains(&sent.trace_id) && logs.contains("window=") && !logs.contains("range=");
        let metrics_ok = metrics.starts_with("#/metrics?query=")
            && metrics.contains("service_name=~\"gateway|inventory|order|payment\"")
            && metrics.contains("window=");
        if !(logs_ok && metrics_ok) {
            return Err(format!("header links: {links}"));
        }

        // Minimap: a drag zooms, a click moves the zoom window.
        let window = "const r = document.querySelector('.ruler'), w = document.querySelector('.minimap-window');
            return { from: Number(r.dataset.from), to: Number(r.dataset.to), shown: !w.hidden,
                     left: parseFloat(w.style.left), canvas: document.querySelector('.minimap-canvas').width }";
        wait_for(&client, "minimap drawn", window, |v| {
            v["canvas"].as_u64().is_some_and(|w| w > 100) && v["shown"] == false
        })
        .await?;
        drag(&client, ".minimap .wf-timeline", 0.25, 0.5).await?;
        wait_for(&client, "zoomed from the minimap", window, |v| {
            let (from, to) = (v["from"].as_f64().unwrap(), v["to"].as_f64().unwrap());
            (28_000.0..32_000.0).contains(&from) && (58_000.0..62_000.0).contains(&to)
                && v["shown"] == true && (24.0..26.0).contains(&v["left"].as_f64().unwrap_or(0.0))
        })
        .await?;
        drag(&client, ".minimap .wf-timeline", 0.9, 0.9).await?;
        wait_for(&client, "window moved to the click", window, |v| {
            let (from, to) = (v["from"].as_f64().unwrap(), v["to"].as_f64().unwrap());
            (88_000.0..92_000.0).contains(&from) && to == 120_000.0
        })
        .await?;

        // The name column: dragged to 300 px, remembered over a reload.
        client
            .execute(
                "const d = document.querySelector('.ruler .col-resizer');
                 const left = document.querySelector('.waterfall-wrap').getBoundingClientRect().left;
                 const b = d.getBoundingClientRect();
                 const at = (type, x) => new PointerEvent(type, { bubbles: true, button: 0, clientX: x, clientY: b.top + 5 });
                 d.dispatchEvent(at('pointerdown', b.left + 4));
                 window.dispatchEvent(at('pointermove', left + 200));
                 window.dispatchEvent(at('pointermove', left + 300));
                 window.dispatchEvent(at('pointerup', left + 300));",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let width = "const n = document.querySelector('.waterfall .span-row .wf-name');
            return n && { width: Math.round(n.getBoundingClientRect().width), kept: localStorage.getItem('strand.trace.nameWidth') }";
        wait_for(&client, "name column resized", width, |v| *v == json!({"width": 300, "kept": "300"})).await?;
        client.refresh().await.map_err(|e| e.to_string())?;
        wait_for(&client, "name column width kept", width, |v| *v == json!({"width": 300, "kept": "300"})).await?;
        Ok(())
    })
    .await;
}
