//! The UI's global controls end to end, in headless Chromium: the header's
//! time range and auto refresh go into the view's URL and follow the user
//! to other views, keyboard shortcuts, the log explorer's live tail, and
//! the banner shown while Strand does not answer. The browser talks to
//! Strand through a TCP proxy that the test can stop and start again on
//! the same address.
//!
//! The browser harness and what it needs are in `strand_testkit::browser`.

use std::net::SocketAddr;

use serde_json::Value;
use strand_testkit::Strand;
use strand_testkit::browser::Client;
use strand_testkit::browser::actions::{InputSource, KeyAction, KeyActions};
use strand_testkit::browser::{click, goto, in_browser, select, shown, snapshot, wait_for};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::support::remote_write as rw;
use crate::support::send_log;
use crate::support::shop_fixture::{send_everything, send_shop_calls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_controls_shortcuts_live_tail_and_unreachable_banner() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    send_everything(&daemon).await;
    let proxy = Proxy::start(daemon.http).await;
    in_browser("ui-global", |client| async move {
        walk(&client, &daemon, proxy).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_shows_its_warning_above_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &["--query-max-series", "2"]).await;
    let now = crate::support::now_ms();
    let series = ["alpha", "beta", "gamma"]
        .iter()
        .map(|name| rw::series(name, &[("job", "ui")], &[(now - 1000, 1.0)]))
        .collect();
    rw::write_ok(&daemon, &rw::request(series)).await;
    let base = daemon.url("/");
    in_browser("ui-warning", |client| async move {
        // The metric names the explorer offers are cut at two.
        goto(&client, &format!("{base}#/metrics")).await?;
        wait_for(&client, "the cut list's warning", WARNING, |v| {
            v.as_str().unwrap_or("").contains("--query-max-series")
        })
        .await?;
        snapshot(&client, "warning").await;
        // The next view starts without it.
        goto(&client, &format!("{base}#/traces")).await?;
        wait_for(&client, "no warning on the next view", WARNING, |v| v == "").await?;
        Ok(())
    })
    .await;
}

/// A custom range refused (its end before its start) is accepted once the
/// start alone is corrected: the refusal does not stick to the end field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_custom_range_is_accepted_after_correcting_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let base = daemon.url("/");
    in_browser("ui-custom-range", |client| async move {
        goto(&client, &format!("{base}#/logs?range=1h")).await?;
        select(&client, "#time-picker select[name=range]", "custom").await?;
        // The fields show the window on screen as 24-hour ISO-style times,
        // whatever the browser's locale (a datetime-local field follows it).
        let shown = client
            .execute(
                "const f = document.getElementById('time-picker');
                 return [f.start.type, f.start.value, f.end.value]",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let iso = |v: &Value| {
            let text = v.as_str().unwrap_or("");
            text.len() == 19
                && text.char_indices().all(|(i, c)| match i {
                    4 | 7 => c == '-',
                    10 => c == ' ',
                    13 | 16 => c == ':',
                    _ => c.is_ascii_digit(),
                })
        };
        if shown[0] != "text" || !iso(&shown[1]) || !iso(&shown[2]) {
            return Err(format!(
                "the custom range is not shown as YYYY-MM-DD HH:MM:SS: {shown}"
            ));
        }
        // The end an hour before the start: refused, the URL keeps its range.
        set_custom_range(&client, "start", 30).await?;
        set_custom_range(&client, "end", 90).await?;
        click(&client, "#time-picker button[type=submit]").await?;
        wait_for(&client, "the end refused", CUSTOM_RANGE, |v| {
            v["valid"] == false && v["range"] == "1h" && v["start"].is_null()
        })
        .await?;
        // Only the start is corrected: Apply takes the new window.
        let start = set_custom_range(&client, "start", 120).await?;
        click(&client, "#time-picker button[type=submit]").await?;
        let end = client
            .execute(
                "return new Date(document.getElementById('time-picker').end.value).getTime()",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        wait_for(
            &client,
            "the corrected range in the URL",
            CUSTOM_RANGE,
            |v| {
                v["valid"] == true
                    && v["range"].is_null()
                    && v["start"].as_str().and_then(|s| s.parse::<i64>().ok()) == Some(start)
                    && v["end"].as_str().and_then(|s| s.parse::<i64>().ok()) == end.as_i64()
            },
        )
        .await?;
        // The applied window is named in the picker, the fields close, and
        // at 1024 px the header keeps one row.
        client
            .set_window_size(1024, 700)
            .await
            .map_err(|e| e.to_string())?;
        let header = "const f = document.getElementById('time-picker');
            return { height: document.querySelector('.topbar').getBoundingClientRect().height,
                     fields: !f.querySelector('.custom-range').hidden,
                     label: f.range.selectedOptions[0].textContent }";
        wait_for(
            &client,
            "the window in the picker, one header row",
            header,
            |v| {
                let label = v["label"].as_str().unwrap_or("");
                v["height"].as_f64().is_some_and(|h| h < 60.0)
                    && v["fields"] == false
                    && label.contains(" – ")
                    && label.contains(':')
            },
        )
        .await?;
        // "Edit range…" opens the fields on the window; Escape closes them.
        select(&client, "#time-picker select[name=range]", "edit").await?;
        wait_for(&client, "the fields open", header, |v| v["fields"] == true).await?;
        keys(&client, &['\u{E00C}']).await?;
        wait_for(&client, "the fields closed", header, |v| {
            v["fields"] == false && v["label"] != "Edit range…"
        })
        .await?;
        Ok(())
    })
    .await;
}

/// Strand stops while a dashboard without auto refresh is on screen: the
/// banner comes anyway, every panel keeps its chart under a stale marker;
/// once Strand is back on the same address and data, the view reloads and
/// the markers go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_keeps_its_last_data_while_strand_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--derived-metrics-interval", "1s"];
    let daemon = Strand::start(&data, &args).await;
    send_shop_calls(&daemon, 20, 1).await;
    let address = daemon.http.to_string();
    let url = daemon.url("/#/dashboard/shop?range=15m");
    let mut daemon = Some(daemon);
    let daemon = &mut daemon;
    in_browser("ui-stale", |client| async move {
        goto(&client, &url).await?;
        wait_for(&client, "every panel's chart", PANELS, |v| {
            v["charts"] == 5 && v["stale"] == 0
        })
        .await?;
        daemon.take().expect("running").stop().await;
        let gone = wait_for(&client, "the banner and stale charts", PANELS, |v| {
            v["banner"]
                .as_str()
                .unwrap_or("")
                .contains("unreachable since")
                && v["charts"] == 5
                && v["stale"] == 5
        })
        .await?;
        if !gone["marker"]
            .as_str()
            .unwrap_or("")
            .contains("stale — Strand unreachable since")
        {
            return Err(format!("no stale marker: {gone}"));
        }
        snapshot(&client, "stale").await;
        *daemon = Some(Strand::start(&data, &[&args[..], &["--http", &address]].concat()).await);
        wait_for(&client, "fresh charts once Strand is back", PANELS, |v| {
            v["banner"] == "" && v["charts"] == 5 && v["stale"] == 0
        })
        .await?;
        Ok(())
    })
    .await;
}

/// The dashboard's panels that show a chart, those marked stale (and the
/// first marker's text), and the unreachable banner.
const PANELS: &str = "const panels = [...document.querySelectorAll('.panel')];
    const b = document.getElementById('unreachable');
    const marker = document.querySelector('.panel .stale');
    return { charts: panels.filter(p => { const c = p.querySelector('.chart'); return c && !c.hidden && c.querySelector('path'); }).length,
             stale: panels.filter(p => p.querySelector('.stale')).length,
             marker: marker ? marker.innerText : '',
             banner: b && !b.hidden ? b.innerText : '' }";

/// The formatting every axis, ruler and label uses, evaluated in the page
/// on a table of inputs: zero is "0", no float noise, no trailing zeros, no
/// "1000ms", times in 24-hour ISO form; and no module formats a time the
/// browser's locale way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_durations_and_times_read_well() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let base = daemon.url("/");
    in_browser("ui-formatting", |client| async move {
        goto(&client, &format!("{base}#/traces")).await?;
        let wrong = client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 (async () => {
                   const lib = await import('/ui/lib.js');
                   const metrics = await import('/ui/metrics.js');
                   const cases = [
                     ['fmtMicros', lib.fmtMicros, [0], '0'],
                     ['fmtMicros', lib.fmtMicros, [0.3], '0.3µs'],
                     ['fmtMicros', lib.fmtMicros, [999], '999µs'],
                     ['fmtMicros', lib.fmtMicros, [999.7], '1ms'],
                     ['fmtMicros', lib.fmtMicros, [(0.1 + 0.2) * 1000], '300µs'],
                     ['fmtMicros', lib.fmtMicros, [1200], '1.2ms'],
                     ['fmtMicros', lib.fmtMicros, [1234.5], '1.23ms'],
                     ['fmtMicros', lib.fmtMicros, [12345], '12.3ms'],
                     ['fmtMicros', lib.fmtMicros, [999999], '1s'],
                     ['fmtMicros', lib.fmtMicros, [1.5e6], '1.5s'],
                     ['fmtMicros', lib.fmtMicros, [59.99e6], '1m'],
                     ['fmtMicros', lib.fmtMicros, [90e6], '1m30s'],
                     ['fmtMicros', lib.fmtMicros, [119.6e6], '2m'],
                     ['fmtMicros', lib.fmtMicros, [-1500], '-1.5ms'],
                     ['fmtNumber', lib.fmtNumber, [0], '0'],
                     ['fmtNumber', lib.fmtNumber, [0.1 + 0.2], '0.3'],
                     ['fmtNumber', lib.fmtNumber, [1.2], '1.2'],
                     ['fmtNumber', lib.fmtNumber, [1234.5678], '1235'],
                     ['fmtNumber', lib.fmtNumber, [12345.678], '12346'],
                     ['fmtNumber', lib.fmtNumber, [1.5e6], '1.5M'],
                     ['fmtNumber', lib.fmtNumber, [0.000123456], '0.0001235'],
                     ['fmtNumber', lib.fmtNumber, [-0.5], '-0.5'],
                     ['fmtNumber', lib.fmtNumber, [NaN], '–'],
                     ['fmtNumber', lib.fmtNumber, [Infinity], '+Inf'],
                     ['fmtUnit', metrics.fmtUnit, [0, 'seconds'], '0'],
                     ['fmtUnit', metrics.fmtUnit, [0.0012, 'seconds'], '1.2ms'],
                     ['fmtUnit', metrics.fmtUnit, [0.1 + 0.2, 'ratio'], '30%'],
                     ['fmtUnit', metrics.fmtUnit, [1.2e-4, ''], '0.00012'],
                     ['fmtUnit', metrics.fmtUnit, [2.5, 'req/s'], '2.5 req/s'],
                     ['fmtTime', lib.fmtTime, [new Date(2026, 0, 2, 13, 5, 6, 7).getTime()], '2026-01-02 13:05:06.007'],
                     ['ticks', (...a) => lib.ticks(...a).join(' '), [0, 1840, 4], '0 500 1000 1500 2000'],
                     ['ticks', (...a) => lib.ticks(...a).join(' '), [0, 0.3, 3], '0 0.1 0.2 0.3'],
                   ];
                   const wrong = cases
                     .map(([name, f, args, want]) => [name, args, want, f(...args)])
                     .filter(([, , want, got]) => got !== want)
                     .map(([name, args, want, got]) => `${name}(${args.join(', ')}) = ${got}, not ${want}`);
                   for (const m of ['app', 'lib', 'traces', 'trace', 'logs', 'metrics', 'dashboards', 'map']) {
                     const text = await (await fetch(`/ui/${m}.js`)).text();
                     if (/toLocale|Intl\\./.test(text)) wrong.push(`${m}.js formats in the locale's way`);
                   }
                   return wrong;
                 })().then(done, (e) => done([String(e)]));",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        if wrong.as_array().is_none_or(|w| !w.is_empty()) {
            return Err(format!("formatting: {wrong}"));
        }
        Ok(())
    })
    .await;
}

/// Each view with the shop's data, by name: its hash (`{trace}` is the
/// shop trace's id) and what shows once it has drawn.
const VIEWS: [(&str, &str, &str); 7] = [
    ("traces", "#/traces?range=1h", ".trace-item"),
    ("trace", "#/trace/{trace}", ".span-row"),
    ("logs", "#/logs?q=uitoken&range=1h", ".log-row"),
    (
        "metrics",
        "#/metrics?query=ui_requests_total&range=1h",
        ".chart path",
    ),
    (
        "dashboard",
        "#/dashboard/shop?range=15m",
        ".panel .chart path",
    ),
    ("map", "#/map?range=15m", ".map-node"),
    (
        "alerts",
        "#/alerts",
        ".alerts-out:has(.alert-card[data-state=firing]) .rule-error",
    ),
];

/// Rules over the shop's span metrics for the alerts view: one firing,
/// one pending, one failing at each evaluation (a one-to-one match with
/// many series on its right).
const SHOP_RULES: &str = r#"
groups:
  - name: shop
    interval: 1s
    rules:
      - alert: PaymentErrors
        expr: sum by (service_name) (traces_span_metrics_calls_total{status_code="STATUS_CODE_ERROR"}) > 0
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.service_name }} fails requests"
      - alert: BusyService
        expr: sum by (service_name) (traces_span_metrics_calls_total) > 0
        for: 1h
      - alert: ErrorRatio
        expr: sum(traces_span_metrics_calls_total) * on() traces_span_metrics_calls_total
"#;

/// The window sizes the UI is made for.
const SIZES: [(u32, u32); 2] = [(1500, 950), (1024, 700)];

/// Text whose contrast with what is behind it is under 4.5:1 (WCAG AA):
/// every visible element with text of its own (HTML colour, SVG fill)
/// against the first opaque background among its ancestors, translucent
/// ones blended in.
const LOW_CONTRAST: &str = "const rgba = (c) => { const m = (c.match(/[\\d.]+/g) || ['0', '0', '0', '0']).map(Number);
        // rgb(255 ...) or, from color-mix(), color(srgb 1 ...).
        const scale = c.startsWith('color(srgb') ? 255 : 1;
        return [m[0] * scale, m[1] * scale, m[2] * scale, m.length > 3 ? m[3] : 1]; };
    const over = (top, bottom) => top.slice(0, 3).map((v, i) => v * top[3] + bottom[i] * (1 - top[3])).concat(1);
    const luminance = (c) => { const [r, g, b] = c.slice(0, 3).map(v => { v /= 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
    const background = (el) => { const layers = [];
        for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
          const c = rgba(getComputedStyle(e).backgroundColor);
          if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
        return layers.reverse().reduce((below, layer) => over(layer, below), [255, 255, 255, 1]); };
    const low = [];
    for (const el of document.querySelectorAll('body *')) {
      const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
      if (!own || !el.getClientRects().length || el.closest('[hidden], option, script, style, title')) continue;
      const style = getComputedStyle(el);
      if (style.visibility !== 'visible' || el.disabled) continue;
      const text = rgba(el instanceof SVGElement ? style.fill : style.color);
      const bg = background(el);
      const [a, b] = [luminance(over(text, bg)), luminance(bg)];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      if (ratio < 4.5) low.push(`${ratio.toFixed(2)}: ${el.tagName.toLowerCase()}.${[...el.classList].join('.')} \"${el.textContent.trim().slice(0, 30)}\"`);
    }
    return [...new Set(low)];";

/// Every view, at both sizes, in the dark theme and the light one: its text
/// and buttons have a contrast of at least 4.5:1. With `STRAND_SCREENSHOTS`
/// set to a directory (`scripts/screenshots` sets docs/screenshots), it
/// saves each as `<view>-<width>-<theme>.png` there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_has_readable_contrast_in_both_themes() {
    let dir = tempfile::tempdir().unwrap();
    let rules = crate::rules::write_rules(dir.path(), SHOP_RULES);
    let daemon = Strand::start(
        &dir.path().join("data"),
        &["--derived-metrics-interval", "1s", "--rules", &rules],
    )
    .await;
    let sent = send_everything(&daemon).await;
    send_shop_calls(&daemon, 50, 1).await;
    let base = daemon.url("/");
    let shots = std::env::var_os("STRAND_SCREENSHOTS").map(std::path::PathBuf::from);
    in_browser("ui-contrast", |client| async move {
        goto(&client, &base).await?;
        let mut low = Vec::new();
        for theme in ["dark", "light"] {
            // The theme a user picked: kept in localStorage, applied on load.
            client
                .execute(
                    "localStorage.setItem('strand.theme', arguments[0]); location.reload(); return 0",
                    vec![theme.into()],
                )
                .await
                .map_err(|e| e.to_string())?;
            wait_for(
                &client,
                "the theme",
                "return document.documentElement.dataset.theme || ''",
                |v| v == theme,
            )
            .await?;
            for (width, height) in SIZES {
                set_viewport(&client, width, height).await?;
                for (name, hash, ready) in VIEWS {
                    let hash = hash.replace("{trace}", &sent.trace_id);
                    goto(&client, &format!("{base}{hash}")).await?;
                    shown(&client, ready).await?;
                    // Layout settles (labels placed, charts sized) before the check.
                    client
                        .execute_async("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))", vec![])
                        .await
                        .map_err(|e| e.to_string())?;
                    let found = client
                        .execute(LOW_CONTRAST, vec![])
                        .await
                        .map_err(|e| e.to_string())?;
                    for text in found.as_array().into_iter().flatten() {
                        low.push(format!("{name} {theme} {width}px: {}", text.as_str().unwrap_or("")));
                    }
                    if let Some(shots) = &shots {
                        let png = client.screenshot().await.map_err(|e| e.to_string())?;
                        let path = shots.join(format!("{name}-{width}-{theme}.png"));
                        std::fs::write(&path, png).map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                }
            }
        }
        low.dedup();
        if !low.is_empty() {
            return Err(format!("text under 4.5:1:\n{}", low.join("\n")));
        }
        Ok(())
    })
    .await;
}

/// The whole UI as the browser loads it (index.html and every module and
/// stylesheet it pulls in, as served) stays under 500 KB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_weighs_under_500_kb() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let base = daemon.url("/");
    in_browser("ui-weight", |client| async move {
        goto(&client, &format!("{base}#/traces")).await?;
        // app.js imports every view: once the first has drawn, all is loaded.
        shown(&client, "#view h1, #view form").await?;
        let loaded = client
            .execute(
                "const page = performance.getEntriesByType('navigation')[0];
                 const ui = performance.getEntriesByType('resource')
                   .filter(r => new URL(r.name).pathname.startsWith('/ui/'));
                 return { files: ui.map(r => new URL(r.name).pathname).sort(),
                          bytes: ui.concat([page]).reduce((n, r) => n + r.decodedBodySize, 0) };",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let files = loaded["files"].as_array().map_or(0, Vec::len);
        let bytes = loaded["bytes"].as_u64().unwrap_or(u64::MAX);
        // index.html's stylesheet and every module of ui/ (app, lib, six views).
        if files < 9 || bytes == 0 || bytes >= 500 * 1024 {
            return Err(format!("the UI must load its files under 500 KB: {loaded}"));
        }
        Ok(())
    })
    .await;
}

/// Sizes the window so that the page itself gets `width` x `height`.
async fn set_viewport(client: &Client, width: u32, height: u32) -> Result<(), String> {
    client
        .set_window_size(width, height)
        .await
        .map_err(|e| e.to_string())?;
    let inner = client
        .execute("return [window.innerWidth, window.innerHeight]", vec![])
        .await
        .map_err(|e| e.to_string())?;
    let chrome =
        |i: usize, want: u32| want + want.saturating_sub(inner[i].as_u64().unwrap_or(0) as u32);
    client
        .set_window_size(chrome(0, width), chrome(1, height))
        .await
        .map_err(|e| e.to_string())
}

/// The custom range's validity and the URL's window.
const CUSTOM_RANGE: &str = "const f = document.getElementById('time-picker');
    const p = new URLSearchParams(location.hash.split('?')[1] || '');
    return { valid: f.checkValidity(), range: p.get('range'), start: p.get('start'), end: p.get('end') }";

/// Sets the custom range's `field` ("start" or "end") to `minutes_ago`
/// whole minutes before now, as typing into it would (an input event);
/// returns that time in epoch ms.
async fn set_custom_range(client: &Client, field: &str, minutes_ago: i64) -> Result<i64, String> {
    let at = client
        .execute(
            "const [field, minutes] = arguments;
             const input = document.getElementById('time-picker')[field];
             const at = Math.floor(Date.now() / 60000) * 60000 - minutes * 60000;
             const d = new Date(at);
             input.value = new Date(at - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19).replace('T', ' ');
             input.dispatchEvent(new Event('input', { bubbles: true }));
             input.dispatchEvent(new Event('change', { bubbles: true }));
             return at;",
            vec![field.into(), minutes_ago.into()],
        )
        .await
        .map_err(|e| e.to_string())?;
    at.as_i64()
        .ok_or_else(|| format!("no time set in {field}: {at}"))
}

const WARNING: &str = "const b = document.getElementById('data-warning');
    return b && !b.hidden ? b.innerText : ''";

/// The view and the global params of the URL, and the logs view's window.
const LOCATION: &str = "const [view, query] = location.hash.split('?');
    const p = new URLSearchParams(query || '');
    const hist = document.querySelector('.histogram');
    return { view, q: p.get('q'), range: p.get('range'), start: p.get('start'),
             end: p.get('end'), refresh: p.get('refresh'), live: p.get('live'),
             window: hist && hist.dataset.end ? Number(hist.dataset.end) - Number(hist.dataset.start) : null,
             rows: document.querySelectorAll('.log-table .log-row').length }";

const HOUR_MS: i64 = 3_600_000;

async fn walk(client: &Client, daemon: &Strand, mut proxy: Proxy) -> Result<(), String> {
    let base = format!("http://{}/", proxy.address);
    // Readable states: nothing found, a bad query, an unknown view.
    for (hash, css, expected) in [
        (
            "#/logs?q=nosuchword",
            ".summary",
            "No logs match \"nosuchword\" in the last 1h",
        ),
        ("#/logs?q=service%3A(", ".state.error", ""),
        (
            "#/nosuchview",
            ".state.error",
            "No view called \"nosuchview\"",
        ),
    ] {
        goto(client, &format!("{base}{hash}")).await?;
        wait_for(
            client,
            hash,
            &format!("return document.querySelector('#view {css}')?.innerText || ''"),
            |v| {
                let text = v.as_str().unwrap_or("");
                !text.is_empty() && text.contains(expected)
            },
        )
        .await?;
    }

    goto(client, &format!("{base}#/logs?q=uitoken")).await?;
    wait_for(client, "logs of the last hour", LOCATION, |v| {
        v["rows"] == 4 && v["window"] == HOUR_MS
    })
    .await?;

    // A relative range from the header goes into the view's URL, next to
    // its own params, and the view shows that window.
    select(client, "#time-picker select[name=range]", "6h").await?;
    wait_for(client, "range 6h in the URL and the view", LOCATION, |v| {
        v["view"] == "#/logs"
            && v["q"] == "uitoken"
            && v["range"] == "6h"
            && v["window"] == 6 * HOUR_MS
            && v["rows"] == 4
    })
    .await?;
    select(client, "#refresh-picker", "5s").await?;
    wait_for(client, "refresh in the URL", LOCATION, |v| {
        v["refresh"] == "5s" && v["range"] == "6h" && v["q"] == "uitoken"
    })
    .await?;

    // The nav carries the range and the refresh to another view.
    click(client, "nav a[data-nav=\"metrics\"]").await?;
    wait_for(client, "range carried to metrics", LOCATION, |v| {
        v["view"] == "#/metrics" && v["range"] == "6h" && v["refresh"] == "5s"
    })
    .await?;

    // Shortcuts: `g l` goes to logs (the range still carried), `/` focuses
    // the query box, `?` opens the help and Esc closes it.
    keys(client, &[ESCAPE, 'g', 'l']).await?;
    wait_for(client, "g l opens logs", LOCATION, |v| {
        v["view"] == "#/logs" && v["range"] == "6h" && v["rows"] == 4
    })
    .await?;
    keys(client, &[ESCAPE, '/']).await?;
    wait_for(
        client,
        "/ focuses the query box",
        "return document.activeElement?.matches('#view form input.query') || false",
        |v| v == true,
    )
    .await?;
    keys(client, &[ESCAPE, '?']).await?;
    wait_for(
        client,
        "? opens the help",
        "const help = document.getElementById('help');
         return help && !help.hidden ? help.innerText : ''",
        |v| v.as_str().unwrap_or("").contains("Go to logs"),
    )
    .await?;
    snapshot(client, "help").await;
    keys(client, &[ESCAPE]).await?;
    wait_for(
        client,
        "Esc closes the help",
        "return document.getElementById('help').hidden",
        |v| v == true,
    )
    .await?;
    // `t` switches the theme.
    let theme = "return getComputedStyle(document.documentElement).colorScheme";
    let before = client
        .execute(theme, vec![])
        .await
        .map_err(|e| e.to_string())?;
    keys(client, &['t']).await?;
    wait_for(client, "t switches the theme", theme, |v| {
        v.is_string() && *v != before
    })
    .await?;

    // A custom absolute range: start/end replace the range in the URL.
    select(client, "#time-picker select[name=range]", "custom").await?;
    set_custom_range(client, "start", 30).await?;
    set_custom_range(client, "end", -5).await?;
    click(client, "#time-picker button[type=submit]").await?;
    wait_for(
        client,
        "absolute range in the URL and the view",
        LOCATION,
        |v| {
            v["view"] == "#/logs"
                && v["range"].is_null()
                && v["start"].is_string()
                && v["window"] == 35 * 60_000
                && v["rows"] == 4
                && v["refresh"] == "5s"
        },
    )
    .await?;
    snapshot(client, "custom-range").await;

    // A trace has no time window: the picker is off there, and the window
    // comes back with the next view.
    click(client, ".log-row[data-severity=\"error\"] a.trace-link").await?;
    wait_for(
        client,
        "no time picker on a trace",
        "return { view: location.hash.split('/')[1],
                  disabled: document.querySelector('#time-picker select').disabled }",
        |v| v["view"] == "trace" && v["disabled"] == true,
    )
    .await?;
    keys(client, &['g', 'l']).await?;
    wait_for(client, "the absolute window back on logs", LOCATION, |v| {
        v["view"] == "#/logs" && v["start"].is_string() && v["window"] == 35 * 60_000
    })
    .await?;

    // Auto refresh (every 5s) brings in a log sent after the view loaded.
    send_log(daemon, None, "uirefresh brought by auto refresh").await;
    wait_for(client, "a log brought by auto refresh", LOG_BODIES, |v| {
        has_body(v, "uirefresh")
    })
    .await?;

    // Live tail: a log sent after the toggle streams into the table, with
    // no reload of the page.
    client
        .execute("window.stillTheSamePage = true; return 0", vec![])
        .await
        .map_err(|e| e.to_string())?;
    click(client, ".live-toggle input").await?;
    wait_for(
        client,
        "live tail on",
        "return { live: new URLSearchParams(location.hash.split('?')[1]).get('live'),
                  on: document.querySelector('.live-indicator.on')?.innerText || '' }",
        |v| v["live"] == "1" && v["on"].as_str().unwrap_or("").contains("live"),
    )
    .await?;
    send_log(daemon, None, "uilive streamed line").await;
    wait_for(
        client,
        "the streamed log on top of the table",
        LOG_BODIES,
        |v| {
            v.as_array()
                .and_then(|rows| rows.first())
                .and_then(Value::as_str)
                .is_some_and(|body| body.contains("uilive"))
        },
    )
    .await?;
    let same = client
        .execute("return window.stillTheSamePage === true", vec![])
        .await
        .map_err(|e| e.to_string())?;
    if same != true {
        return Err("the page was reloaded for the live tail".into());
    }
    snapshot(client, "live-tail").await;

    // Strand goes away: the banner says so; it comes back: the banner
    // goes and the view is drawn again, live tail and all.
    proxy.stop();
    wait_for(client, "unreachable banner", BANNER, |v| {
        v.as_str().unwrap_or("").contains("unreachable")
    })
    .await?;
    snapshot(client, "unreachable").await;
    client
        .execute(
            "document.querySelector('.log-table').dataset.before = 'yes'; return 0",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    proxy.restart().await;
    wait_for(
        client,
        "banner gone and the view drawn again",
        "const table = document.querySelector('.log-table');
         return { banner: document.getElementById('unreachable').hidden,
                  redrawn: !!table && table.dataset.before !== 'yes',
                  live: document.querySelector('.live-indicator.on')?.innerText || '',
                  same: window.stillTheSamePage === true }",
        |v| {
            v["banner"] == true
                && v["redrawn"] == true
                && v["same"] == true
                && v["live"].as_str().unwrap_or("").contains("live")
        },
    )
    .await?;
    Ok(())
}

const BANNER: &str = "const b = document.getElementById('unreachable');
    return b && !b.hidden ? b.innerText : ''";

/// A TCP proxy in front of Strand's HTTP port. Stopping it closes the
/// listener and every connection (as a dead daemon would); it restarts on
/// the same address.
struct Proxy {
    address: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Proxy {
            address: listener.local_addr().unwrap(),
            target,
            task: Some(tokio::spawn(forward(listener, target))),
        }
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restart(&mut self) {
        // Tokio sets SO_REUSEADDR, so the port is free again at once.
        let listener = TcpListener::bind(self.address).await.unwrap();
        self.task = Some(tokio::spawn(forward(listener, self.target)));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts connections and pipes each to `target`; the connections belong
/// to this task, so aborting it closes them all.
async fn forward(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Bodies of the log table's rows, top first.
const LOG_BODIES: &str = "return [...document.querySelectorAll('.log-table .log-row')]
    .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
    .map(r => r.querySelector('.log-body').innerText)";

fn has_body(rows: &Value, text: &str) -> bool {
    rows.as_array()
        .is_some_and(|rows| rows.iter().any(|b| b.as_str().unwrap_or("").contains(text)))
}

/// WebDriver's code for the Escape key.
const ESCAPE: char = '\u{E00C}';

/// Presses and releases each key in turn, as a user would.
async fn keys(client: &Client, keys: &[char]) -> Result<(), String> {
    let mut actions = KeyActions::new("keyboard".into());
    for &key in keys {
        actions = actions
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
    }
    client
        .perform_actions(actions)
        .await
        .map_err(|e| format!("keys {keys:?}: {e}"))
}
