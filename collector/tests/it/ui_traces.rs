//! The trace views in headless Chromium: the search's scatter plot, the
//! critical path, zooming the waterfall's time axis, following span links,
//! empty and error states, and a 10,000-span trace drawn with virtualised
//! rows.
//!
//! The browser harness and what it needs are in `strand_testkit::browser`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use strand_testkit::browser::{click, goto, in_browser, snapshot, wait_for};
use strand_testkit::{Strand, eventually};

use crate::support::shop_fixture::send_everything;

/// Spans of the big trace: a root, 99 children, 100 grandchildren each.
const BIG_SPANS: usize = 10_000;
const BIG_TRACE: &str = "b1900000000000000000000000000001";
const LINKER_TRACE: &str = "11a0000000000000000000000000000a";
const TARGET_TRACE: &str = "7a90000000000000000000000000000b";

/// Text of the first `.state` paragraph (empty and error states).
const STATE: &str = "const s = document.querySelector('.results .state, .state');
    return s ? { text: s.innerText, error: s.classList.contains('error') } : null";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_plots_traces_and_the_waterfall_shows_the_critical_path_and_zooms() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let sent = send_everything(&daemon).await;
    in_browser("ui-traces-shop", |client| async move {
        let base = daemon.url("/");
        let id = &sent.trace_id;

        // One point per trace found, the failed one marked as an error.
        goto(&client, &format!("{base}#/traces?service=order")).await?;
        wait_for(
            &client,
            "scatter plot",
            "return [...document.querySelectorAll('.scatter .scatter-point')]
                .map(p => ({ id: p.dataset.traceId, error: p.classList.contains('error') }))",
            |v| *v == json!([{ "id": id, "error": true }]),
        )
        .await?;
        snapshot(&client, "traces-scatter").await;

        // The critical path runs through all five spans: gateway, order,
        // validate, inventory and payment take turns; nine segments.
        goto(&client, &format!("{base}#/trace/{id}")).await?;
        let critical = "return { rows: [...document.querySelectorAll('.waterfall .span-row.critical')]
                                   .map(r => r.dataset.spanId).sort(),
                                 segments: document.querySelectorAll('.waterfall .cp-seg').length }";
        let mut expected: Vec<&str> = sent.spans.values().map(String::as_str).collect();
        let validate = wait_for(
            &client,
            "validate span",
            "return [...document.querySelectorAll('.span-row')]
                .find(r => r.querySelector('.op').innerText === 'validate order')?.dataset.spanId || ''",
            |v| v.as_str().is_some_and(|s| !s.is_empty()),
        )
        .await?;
        expected.push(validate.as_str().unwrap());
        expected.sort();
        wait_for(&client, "critical path", critical, |v| {
            v["rows"] == json!(expected) && v["segments"] == 9
        })
        .await?;
        click(&client, "input[name=critical]").await?;
        wait_for(&client, "critical path hidden", critical, |v| {
            v["rows"] == json!([]) && v["segments"] == 0
        })
        .await?;
        click(&client, "input[name=critical]").await?;

        // Zoom: dragging across the middle of the ruler narrows its window;
        // the validate span (6-8 ms) falls outside it but stays listed.
        let ruler = "const r = document.querySelector('.ruler');
            if (!r) return null;
            return { from: Number(r.dataset.from), to: Number(r.dataset.to),
                     reset: document.querySelector('.reset-zoom').disabled,
                     zoom: new URLSearchParams(location.hash.split('?')[1] || '').get('zoom'),
                     outside: [...document.querySelectorAll('.waterfall .span-row')]
                       .filter(row => row.querySelector('.wf-out')).map(row => row.dataset.spanId) }";
        wait_for(&client, "whole trace on the ruler", ruler, |v| {
            v["from"] == 0 && v["to"] == 120_000 && v["reset"] == true
        })
        .await?;
        client
            .execute(
                "const line = document.querySelector('.ruler .wf-timeline');
                 const box = line.getBoundingClientRect();
                 const at = (type, f) => new PointerEvent(type, { bubbles: true, button: 0,
                     clientX: box.left + f * box.width, clientY: box.top + 5 });
                 line.dispatchEvent(at('pointerdown', 0.25));
                 window.dispatchEvent(at('pointermove', 0.4));
                 window.dispatchEvent(at('pointerup', 0.5));",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let validate = validate.as_str().unwrap();
        wait_for(&client, "zoomed ruler", ruler, |v| {
            let (from, to) = (v["from"].as_f64().unwrap(), v["to"].as_f64().unwrap());
            (28_000.0..32_000.0).contains(&from)
                && (58_000.0..62_000.0).contains(&to)
                && v["reset"] == false
                && v["outside"] == json!([validate])
                && v["zoom"] == format!("{}-{}", v["from"], v["to"])
        })
        .await?;
        snapshot(&client, "trace-zoomed").await;
        click(&client, ".reset-zoom").await?;
        wait_for(&client, "zoom reset", ruler, |v| {
            v["from"] == 0 && v["to"] == 120_000 && v["outside"] == json!([]) && v["zoom"].is_null()
        })
        .await?;
        // A zoomed view is a URL that can be shared.
        goto(&client, &format!("{base}#/trace/{id}?zoom=5000-9000")).await?;
        wait_for(&client, "zoom from the URL", ruler, |v| {
            v["from"] == 5_000 && v["to"] == 9_000 && v["reset"] == false
        })
        .await?;

        // The algorithm itself, on spans running side by side: `a` and `b1`
        // finish while something later is still running, so they are off
        // the path; `late` is clipped to its parent's end.
        let segments = client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 const n = (id, start, end, children = []) => ({ id, start, dur: end - start, children });
                 import('/ui/trace.js').then(m => done(m.criticalPath(
                     n('r', 0, 100, [n('a', 10, 50), n('b', 10, 80, [n('b1', 20, 30), n('b2', 25, 70)]),
                                     n('late', 90, 130)]))));",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let expected = json!([
            {"id": "late", "start": 90, "end": 100}, {"id": "r", "start": 80, "end": 90},
            {"id": "b", "start": 70, "end": 80}, {"id": "b2", "start": 25, "end": 70},
            {"id": "b", "start": 10, "end": 25}, {"id": "r", "start": 0, "end": 10},
        ]);
        if segments != expected {
            return Err(format!("criticalPath: {segments}, expected {expected}"));
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_lead_to_their_spans_and_a_huge_trace_stays_virtualised() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_fixture(&daemon).await;
    in_browser("ui-traces-links", |client| async move {
        let base = daemon.url("/");

        // Three traces of `front`; only the big one has errors.
        goto(&client, &format!("{base}#/traces?service=front")).await?;
        wait_for(
            &client,
            "scatter plot",
            "return [...document.querySelectorAll('.scatter .scatter-point')]
                .map(p => p.dataset.traceId + (p.classList.contains('error') ? ' error' : '')).sort()",
            |v| {
                *v == json!([
                    LINKER_TRACE,
                    TARGET_TRACE,
                    format!("{BIG_TRACE} error"),
                ])
            },
        )
        .await?;
        snapshot(&client, "traces-scatter-log").await;
        // Clicking a point opens its trace.
        click(&client, &format!(".scatter-point[data-trace-id=\"{TARGET_TRACE}\"]")).await?;
        wait_for(&client, "trace from the plot", "return location.hash", |v| {
            v == &json!(format!("#/trace/{TARGET_TRACE}"))
        })
        .await?;

        // Empty and error states.
        for (hash, error, expected) in [
            ("#/traces?service=front&minDuration=1h", false, "No traces in this range"),
            ("#/traces?service=front&minDuration=soon", true, "minDuration"),
        ] {
            goto(&client, &format!("{base}{hash}")).await?;
            wait_for(&client, hash, STATE, |v| {
                v["error"] == error && v["text"].as_str().is_some_and(|t| t.contains(expected))
            })
            .await?;
        }

        // A link to a span of the same trace jumps to it in place.
        let selected = "return { hash: location.hash,
                                 selected: document.querySelector('.span-row.selected')?.dataset.spanId || null,
                                 links: [...document.querySelectorAll('aside.detail a.span-link')].length }";
        goto(&client, &format!("{base}#/trace/{LINKER_TRACE}?span={}", id(3))).await?;
        wait_for(&client, "consumer span with its links", selected, |v| {
            v["selected"] == id(3) && v["links"] == 2
        })
        .await?;
        click(&client, &format!("aside.detail a.span-link[data-span-id=\"{}\"]", id(2))).await?;
        wait_for(&client, "linked span in the same trace", selected, |v| {
            v["selected"] == id(2) && v["hash"] == format!("#/trace/{LINKER_TRACE}?span={}", id(2))
        })
        .await?;

        // A link to another trace opens that trace at the linked span.
        goto(&client, &format!("{base}#/trace/{LINKER_TRACE}?span={}", id(3))).await?;
        wait_for(&client, "consumer span again", selected, |v| v["selected"] == id(3)).await?;
        snapshot(&client, "trace-links").await;
        click(&client, &format!("aside.detail a.span-link[data-trace-id=\"{TARGET_TRACE}\"]")).await?;
        wait_for(&client, "linked trace", selected, |v| {
            v["selected"] == id(11) && v["hash"] == format!("#/trace/{TARGET_TRACE}?span={}", id(11))
        })
        .await?;

        // 10,000 spans: far fewer rows in the DOM; the end is reachable.
        goto(&client, &format!("{base}#/trace/{BIG_TRACE}")).await?;
        let rows = "const list = document.querySelector('.waterfall');
            return { rows: list ? list.querySelectorAll('.span-row').length : 0,
                     spans: document.querySelector('.trace-head .meta')?.innerText || '',
                     ids: list ? [...list.querySelectorAll('.span-row')].map(r => r.dataset.spanId) : [] }";
        wait_for(&client, "big trace drawn", rows, |v| {
            let n = v["rows"].as_u64().unwrap_or(0);
            n > 0 && n < 200 && v["spans"].as_str().unwrap_or("").contains("10000 spans")
        })
        .await?;
        snapshot(&client, "trace-10k").await;
        let last = id(BIG_SPANS as u64);
        client
            .execute(
                "const list = document.querySelector('.waterfall'); list.scrollTop = list.scrollHeight;",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        wait_for(&client, "last span after scrolling", rows, |v| {
            let n = v["rows"].as_u64().unwrap_or(0);
            n < 200 && v["ids"].as_array().is_some_and(|ids| ids.contains(&json!(last)))
        })
        .await?;
        Ok(())
    })
    .await;
}

/// Span id `n` as 16 hex digits.
pub(crate) fn id(n: u64) -> String {
    format!("{n:016x}")
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// An OTLP/JSON span of `service`.
pub(crate) fn span(
    trace: &str,
    span_id: u64,
    parent: Option<u64>,
    name: &str,
    start: u64,
    end: u64,
) -> Value {
    json!({
        "traceId": trace, "spanId": id(span_id), "parentSpanId": parent.map(id).unwrap_or_default(),
        "name": name, "kind": 2,
        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": end.to_string(),
    })
}

pub(crate) async fn post_spans(daemon: &Strand, service: &str, spans: Vec<Value>) {
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "ui-traces"}, "spans": spans}],
    }]});
    let response = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/traces"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// The linker trace (a producer span 2 and a consumer span 3 linked to it
/// and to span 11 of the target trace), the target trace, and the big trace
/// of front -> 99 mid spans -> 100 back spans each, one in 500 failing.
async fn send_fixture(daemon: &Strand) {
    let t0 = now_nanos() - 60_000_000_000;
    let ms = |n: u64| t0 + n * 1_000_000;

    let mut consumer = span(LINKER_TRACE, 3, Some(1), "consume order", ms(30), ms(50));
    consumer["links"] = json!([
        {"traceId": LINKER_TRACE, "spanId": id(2)},
        {"traceId": TARGET_TRACE, "spanId": id(11)},
    ]);
    post_spans(
        daemon,
        "front",
        vec![
            span(LINKER_TRACE, 1, None, "GET /linker", ms(0), ms(60)),
            span(LINKER_TRACE, 2, Some(1), "produce order", ms(5), ms(20)),
            consumer,
            span(TARGET_TRACE, 10, None, "GET /target", ms(0), ms(30)),
            span(TARGET_TRACE, 11, Some(10), "target work", ms(5), ms(25)),
        ],
    )
    .await;

    // Span ids: 1 the root; each mid span, then its 100 back spans, in
    // the order the waterfall lists them, so the last id is the last row.
    let mut mids = Vec::new();
    let mut backs = Vec::new();
    let mut next = 2;
    for m in 0..99u64 {
        let mid_id = next;
        next += 1;
        let start = ms(10 + m * 100);
        mids.push(span(
            BIG_TRACE,
            mid_id,
            Some(1),
            &format!("mid {m}"),
            start,
            start + 95_000_000,
        ));
        for b in 0..100u64 {
            let begin = start + b * 900_000;
            let mut back = span(
                BIG_TRACE,
                next,
                Some(mid_id),
                "SELECT",
                begin,
                begin + 800_000,
            );
            if next % 500 == 0 {
                back["status"] = json!({"code": 2, "message": "deadlock"});
            }
            backs.push(back);
            next += 1;
        }
    }
    assert_eq!(next - 1, BIG_SPANS as u64);
    let root = span(BIG_TRACE, 1, None, "GET /big", ms(0), ms(10_000));
    post_spans(daemon, "front", vec![root]).await;
    post_spans(daemon, "mid", mids).await;
    for chunk in backs.chunks(2_000) {
        post_spans(daemon, "back", chunk.to_vec()).await;
    }

    let ready = eventually(Duration::from_secs(30), || async {
        let count = |body: Value| body["data"][0]["spans"].as_array().map(Vec::len);
        let (big, linker, target) = (
            count(daemon.get_json(&format!("/api/traces/{BIG_TRACE}")).await.1),
            count(
                daemon
                    .get_json(&format!("/api/traces/{LINKER_TRACE}"))
                    .await
                    .1,
            ),
            count(
                daemon
                    .get_json(&format!("/api/traces/{TARGET_TRACE}"))
                    .await
                    .1,
            ),
        );
        (big == Some(BIG_SPANS) && linker == Some(3) && target == Some(2)).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the API never showed the fixture");
}
