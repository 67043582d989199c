//! The web UI end to end: the strand binary serves the embedded assets
//! with the right content types beside the API, and headless Chromium,
//! driven over WebDriver, shows a four-service trace as a nested waterfall
//! with its logs, finds logs with a histogram, follows a log's trace id to
//! the trace, and charts a PromQL query.
//!
//! The browser test needs `chromedriver` and Chromium (Debian: `chromium`
//! and `chromium-driver`; `STRAND_CHROMEDRIVER` points at another driver).
//! Without them it fails under CI (`CI` set) and is skipped loudly otherwise.
//! On failure it saves a screenshot under Cargo's target tmp dir.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::remote_write as rw;
use common::{Daemon, eventually};
use fantoccini::{Client, ClientBuilder, Locator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Value, json};

/// The whole UI must stay small: it is embedded and loaded on every visit.
const MAX_UI_BYTES: u64 = 500 * 1024;
/// How long the browser may take to show what a step expects.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_embedded_small_and_leave_the_api_alone() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), &[]).await;
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

    let (status, content_type, page) = get("/").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(String::from_utf8_lossy(&page).contains("/ui/app.js"));

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

/// A chromedriver child process on a free port; killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    /// Starts chromedriver, or says why it cannot; `None` means skip.
    fn start() -> Option<ChromeDriver> {
        let binary = match std::env::var_os("STRAND_CHROMEDRIVER") {
            Some(path) => Some(PathBuf::from(path)).filter(|p| p.exists()),
            None => ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        };
        let Some(binary) = binary else {
            let message = "chromedriver not found: install Debian's `chromium` and \
                 `chromium-driver` (or set STRAND_CHROMEDRIVER) to run the browser test";
            if std::env::var_os("CI").is_some() {
                panic!("{message}");
            }
            eprintln!("\n!!!!!!!!!!!!!!!!\n!!! SKIPPED: {message}\n!!!!!!!!!!!!!!!!\n");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(address).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen within 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(driver)
    }

    async fn browser(&self) -> Client {
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,900"],
        });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a headless Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What was sent: the trace id and the span id of each service's server span.
struct Sent {
    trace_id: String,
    spans: HashMap<&'static str, String>,
}

fn provider(daemon: &Daemon, service: &str) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(daemon.grpc_endpoint())
        .build()
        .expect("exporter builds");
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attributes([KeyValue::new("host.name", format!("{service}-host"))])
                .build(),
        )
        .build()
}

/// gateway -> order -> (validate, inventory, payment), payment failing; each
/// service with its own resource and exporter, as separate processes would.
async fn send_trace(daemon: &Daemon, now: SystemTime) -> Sent {
    let providers: Vec<SdkTracerProvider> = ["gateway", "order", "inventory", "payment"]
        .iter()
        .map(|s| provider(daemon, s))
        .collect();
    let [gateway, order, inventory, payment] = &providers[..] else {
        unreachable!()
    };
    let at = |ms: u64| now + Duration::from_millis(ms);
    let mut spans = HashMap::new();

    let tracer = gateway.tracer("shop");
    let mut root = tracer
        .span_builder("POST /api/orders")
        .with_kind(SpanKind::Server)
        .with_start_time(at(0))
        .with_attributes([KeyValue::new("http.route", "/api/orders")])
        .start(&tracer);
    let trace_id = root.span_context().trace_id().to_string();
    spans.insert("gateway", root.span_context().span_id().to_string());
    let root_cx = Context::new().with_remote_span_context(root.span_context().clone());

    let tracer = order.tracer("shop");
    let mut order_span = tracer
        .span_builder("POST /orders")
        .with_kind(SpanKind::Server)
        .with_start_time(at(5))
        .start_with_context(&tracer, &root_cx);
    spans.insert("order", order_span.span_context().span_id().to_string());
    let order_cx = Context::new().with_remote_span_context(order_span.span_context().clone());
    let mut validate = tracer
        .span_builder("validate order")
        .with_start_time(at(6))
        .start_with_context(&tracer, &order_cx);
    validate.end_with_timestamp(at(8));

    let tracer = inventory.tracer("shop");
    let mut reserve = tracer
        .span_builder("POST /inventory/reserve")
        .with_kind(SpanKind::Server)
        .with_start_time(at(10))
        .start_with_context(&tracer, &order_cx);
    spans.insert("inventory", reserve.span_context().span_id().to_string());
    reserve.end_with_timestamp(at(40));

    let tracer = payment.tracer("shop");
    let mut charge = tracer
        .span_builder("payment.Charge")
        .with_kind(SpanKind::Server)
        .with_start_time(at(45))
        .start_with_context(&tracer, &order_cx);
    spans.insert("payment", charge.span_context().span_id().to_string());
    charge.add_event(
        "exception",
        vec![KeyValue::new("exception.type", "CardDeclined")],
    );
    charge.set_status(Status::error("card declined"));
    charge.end_with_timestamp(at(95));
    order_span.end_with_timestamp(at(100));
    root.end_with_timestamp(at(120));

    for provider in providers {
        tokio::task::spawn_blocking(move || {
            provider.force_flush().expect("export acknowledged");
            provider.shutdown().expect("clean shutdown");
        })
        .await
        .unwrap();
    }
    Sent { trace_id, spans }
}

/// Four logs with the term `uitoken`: three of the trace's spans, one alone.
async fn send_logs(daemon: &Daemon, now: SystemTime, sent: &Sent) {
    let line = |ms: u64, service: &str, level: &str, message: &str, span: Option<&str>| {
        let time = humantime::format_rfc3339_millis(now + Duration::from_millis(ms));
        let ids = span
            .map(|span| format!(",\"trace_id\":\"{}\",\"span_id\":\"{span}\"", sent.trace_id))
            .unwrap_or_default();
        format!(
            "{{\"create\":{{}}}}\n{{\"@timestamp\":\"{time}\",\"service\":\"{service}\",\"level\":\"{level}\",\"message\":\"{message}\"{ids}}}\n"
        )
    };
    let body = [
        line(
            7,
            "order",
            "info",
            "uitoken order 42 accepted",
            Some(&sent.spans["order"]),
        ),
        line(
            20,
            "inventory",
            "info",
            "uitoken reserved 1 item",
            Some(&sent.spans["inventory"]),
        ),
        line(
            90,
            "payment",
            "error",
            "uitoken card declined",
            Some(&sent.spans["payment"]),
        ),
        line(300, "gateway", "warn", "uitoken cache is cold", None),
    ]
    .concat();
    let response = reqwest::Client::new()
        .post(daemon.url("/_bulk"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["errors"], false, "{answer}");
}

/// Two series of `ui_requests_total` over the last ten minutes.
async fn send_metrics(daemon: &Daemon) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = (now_ms - 600_000) / 1000 * 1000;
    let samples = |scale: f64| -> Vec<(i64, f64)> {
        (0..40)
            .map(|i| (base + i * 15_000, scale * i as f64))
            .collect()
    };
    let request = rw::request(vec![
        rw::series("ui_requests_total", &[("service", "order")], &samples(2.0)),
        rw::series(
            "ui_requests_total",
            &[("service", "payment")],
            &samples(1.0),
        ),
    ]);
    rw::write_ok(daemon, &request).await;
}

async fn send_everything(daemon: &Daemon) -> Sent {
    // In the past, so that searches ending "now" include everything.
    let now = SystemTime::now() - Duration::from_secs(5);
    let sent = send_trace(daemon, now).await;
    send_logs(daemon, now, &sent).await;
    send_metrics(daemon).await;
    let ready = eventually(Duration::from_secs(20), || async {
        let (_, trace) = daemon
            .get_json(&format!("/api/traces/{}", sent.trace_id))
            .await;
        let (_, logs) = daemon.get_json("/api/logs?q=uitoken").await;
        let (_, metrics) = daemon
            .get_json("/api/v1/query?query=ui_requests_total")
            .await;
        (trace["data"][0]["spans"].as_array().map(Vec::len) == Some(5)
            && logs["total"] == 4
            && metrics["data"]["result"].as_array().map(Vec::len) == Some(2))
        .then_some(())
    })
    .await;
    assert!(ready.is_some(), "the API never showed what was sent");
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_follows_a_request_through_traces_logs_and_metrics() {
    let Some(driver) = ChromeDriver::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), &[]).await;
    let sent = send_everything(&daemon).await;
    let client = driver.browser().await;
    let outcome = walk(&client, &daemon, &sent).await;
    if let Err(failure) = outcome {
        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-failure.png");
        let saved = match client.screenshot().await {
            Ok(png) => std::fs::write(&shot, png)
                .map(|_| format!("screenshot: {}", shot.display()))
                .unwrap_or_else(|e| format!("screenshot not saved: {e}")),
            Err(e) => format!("no screenshot: {e}"),
        };
        let url = client.current_url().await.map(|u| u.to_string());
        let _ = client.close().await;
        panic!("{failure}\nat {url:?}\n{saved}");
    }
    client.close().await.unwrap();
}

/// Runs `script` until `check` accepts its value or the step times out.
async fn wait_for(
    client: &Client,
    what: &str,
    script: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let value = client
            .execute(script, vec![])
            .await
            .map_err(|e| format!("{what}: script failed: {e}"))?;
        if check(&value) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: timed out; last saw {value}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `STRAND_UI_SCREENSHOTS` set, saves a screenshot of each view under
/// Cargo's target tmp dir, to look at the UI without a browser of one's own.
async fn snapshot(client: &Client, name: &str) {
    if std::env::var_os("STRAND_UI_SCREENSHOTS").is_none() {
        return;
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ui-{name}.png"));
    if let Ok(png) = client.screenshot().await {
        let _ = std::fs::write(&path, png);
        eprintln!("screenshot: {}", path.display());
    }
}

async fn click(client: &Client, css: &str) -> Result<(), String> {
    client
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("no {css}: {e}"))?
        .click()
        .await
        .map_err(|e| format!("cannot click {css}: {e}"))
}

const WATERFALL_ROWS: &str = "return [...document.querySelectorAll('.waterfall .wf-row')]
    .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
    .map(r => ({kind: r.classList.contains('span-row') ? 'span' : 'log', ...r.dataset,
                error: r.classList.contains('error')}))";

async fn walk(client: &Client, daemon: &Daemon, sent: &Sent) -> Result<(), String> {
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
