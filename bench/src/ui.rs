//! The `ui` benchmark: how long the web UI's trace view takes to draw one big
//! trace in headless Chromium, and how many bytes the UI costs a visitor.
//!
//! Phases, in order:
//! 1. start `strand` and send one trace of `--spans` spans over OTLP/gRPC
//!    (eight services, a random tree a few levels deep with varying fan-out,
//!    sequential and parallel children, some failing spans) plus logs of
//!    some of its spans; wait until the API returns all of it;
//! 2. start chromedriver; `--runs` times, in a fresh browser session each
//!    (empty cache, new renderer), open `#/trace/<id>` and read from the
//!    page's performance timeline when `trace.js` marked
//!    `strand:trace-drawn` (after the first frame with the waterfall), in ms
//!    since navigation start, and the bytes every resource transferred.
//!
//! Loading the trace's JSON (about as large as the spans) is part of the
//! measured time, as it is for a person opening the link.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tonic::transport::Endpoint;

use crate::UiArgs;
use crate::daemon::{Daemon, Process, Scratch};
use crate::report::JsonObject;
use crate::stats::Summary;

/// Services of the generated trace; each span stays in its parent's service
/// or calls another one.
const SERVICES: [&str; 8] = [
    "gateway",
    "order",
    "inventory",
    "payment",
    "catalog",
    "pricing",
    "shipping",
    "notification",
];
const OPERATIONS: [&str; 10] = [
    "GET /api/items",
    "POST /api/orders",
    "SELECT items",
    "UPDATE stock",
    "cache.get",
    "cache.set",
    "grpc Charge",
    "publish OrderCreated",
    "render",
    "validate",
];
/// Spans per export request, well under any gRPC message limit.
const SPANS_PER_REQUEST: usize = 1_000;
/// One span in this many fails; one in `LOG_EVERY` gets a log.
const ERROR_EVERY: u32 = 150;
const LOG_EVERY: usize = 20;
/// Deepest nesting of the generated tree (the root is depth 0).
const MAX_DEPTH: u32 = 12;
/// How long the root span lasts.
const ROOT_NANOS: u64 = 4_000_000_000;
/// Until the API returns the whole trace and its logs.
const INGEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Until the page marks the waterfall as drawn.
const DRAW_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the page's performance timeline; `null` until the waterfall was drawn.
const READ_TIMING: &str = r#"
const mark = performance.getEntriesByName("strand:trace-drawn")[0];
if (!mark) return null;
const size = (e) => e.transferSize || e.encodedBodySize || 0;
const path = (e) => new URL(e.name).pathname;
const nav = performance.getEntriesByType("navigation")[0];
const res = performance.getEntriesByType("resource");
const ui = res.filter((e) => path(e).startsWith("/ui/"));
const api = res.filter((e) => path(e).startsWith("/api/"));
const trace = api.find((e) => /^\/api\/traces\/[0-9a-f]+$/.test(path(e)));
return {
  drawn: mark.startTime,
  uiBytes: size(nav) + ui.reduce((n, e) => n + size(e), 0),
  uiFiles: 1 + ui.length,
  apiBytes: api.reduce((n, e) => n + size(e), 0),
  traceFetch: trace ? trace.responseEnd - trace.startTime : null,
  rows: document.querySelectorAll(".waterfall .wf-row").length,
};
"#;

/// One span of the generated tree.
struct Node {
    parent: Option<usize>,
    service: usize,
    depth: u32,
    start: u64,
    end: u64,
    error: bool,
}

/// What one cold page load measured.
struct Load {
    drawn_ms: f64,
    trace_fetch_ms: Option<f64>,
    ui_bytes: u64,
    ui_files: u64,
    api_bytes: u64,
    rows: u64,
}

/// Runs the whole benchmark and returns the JSON result line.
pub async fn run(args: &UiArgs) -> Result<String> {
    ensure!(args.spans > 0, "--spans must be at least 1");
    ensure!(args.runs > 0, "--runs must be at least 1");
    let driver_binary = chromedriver(args)?;
    let scratch = Scratch::create(args.keep)?;
    let daemon = Daemon::start(&args.strand, &scratch.data_dir(), &scratch.log()).await?;

    // 1. The trace.
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let nodes = build_tree(&mut rng, args.spans);
    let trace_id: [u8; 16] = rng.random();
    let trace_hex = hex::encode(trace_id);
    let max_depth = nodes.iter().map(|n| n.depth).max().unwrap_or(0);
    let errors = nodes.iter().filter(|n| n.error).count();
    let logs = send(&daemon, &nodes, trace_id).await?;
    eprintln!(
        "sent trace {trace_hex}: {} spans, {} services, depth {max_depth}, {errors} errors, {logs} logs",
        nodes.len(),
        SERVICES.len()
    );
    wait_for_trace(&daemon.http_url(), &trace_hex, nodes.len(), logs).await?;

    // 2. Cold page loads.
    let driver_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free loopback port")?;
    let mut command = Command::new(&driver_binary);
    command.arg(format!("--port={}", driver_addr.port()));
    let driver = Process::spawn(
        "chromedriver",
        command,
        driver_addr,
        "/status",
        &scratch.path.join("chromedriver.log"),
    )
    .await?;
    let url = format!("{}/#/trace/{trace_hex}", daemon.http_url());
    let mut loads = Vec::with_capacity(args.runs);
    for run in 0..args.runs {
        let load = cold_load(&driver.http_url(), args.chromium.as_ref(), &url).await?;
        eprintln!(
            "run {}: drawn after {:.0} ms ({} rows in the DOM)",
            run + 1,
            load.drawn_ms,
            load.rows
        );
        loads.push(load);
    }
    drop(driver);
    daemon.stop(Duration::from_secs(30)).await?;

    let last = loads.last().context("no page load")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(JsonObject::new()
        .field("bench", "ui")
        .field("spans", nodes.len())
        .field("services", SERVICES.len())
        .field("max_depth", max_depth)
        .field("error_spans", errors)
        .field("logs", logs)
        .field("runs", loads.len())
        .summary(
            "trace_drawn_ms",
            Summary::of(loads.iter().map(|l| l.drawn_ms).collect()),
        )
        .summary(
            "trace_json_fetch_ms",
            Summary::of(loads.iter().filter_map(|l| l.trace_fetch_ms).collect()),
        )
        .field("dom_rows", last.rows)
        .field("ui_files", last.ui_files)
        .field("ui_bytes", last.ui_bytes)
        .field("api_bytes", last.api_bytes)
        .object("machine", JsonObject::new().field("cores", cores))
        .field("seed", args.seed)
        .finish())
}

/// The chromedriver to use: `--chromedriver`, `STRAND_CHROMEDRIVER`, or
/// where Debian's `chromium-driver` puts it.
fn chromedriver(args: &UiArgs) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> =
        match (&args.chromedriver, std::env::var_os("STRAND_CHROMEDRIVER")) {
            (Some(path), _) => vec![path.clone()],
            (None, Some(path)) => vec![PathBuf::from(path)],
            (None, None) => vec![
                "/usr/bin/chromedriver".into(),
                "/usr/lib/chromium/chromedriver".into(),
            ],
        };
    match candidates.into_iter().find(|p| p.is_file()) {
        Some(path) => Ok(path),
        None => bail!(
            "chromedriver not found: install Debian's `chromium` and `chromium-driver`, \
             or pass --chromedriver PATH"
        ),
    }
}

/// A random tree of `spans` spans, breadth first: every span gets 1 to 7
/// children (the root more), run one after the other or side by side within
/// the parent's time, in the parent's service or another one.
fn build_tree(rng: &mut impl Rng, spans: usize) -> Vec<Node> {
    let mut nodes = vec![Node {
        parent: None,
        service: 0,
        depth: 0,
        start: 0,
        end: ROOT_NANOS,
        error: false,
    }];
    let mut queue = VecDeque::from([0]);
    while let Some(parent) = queue.pop_front() {
        if nodes.len() >= spans {
            break;
        }
        let (start, end, depth, service) = {
            let p = &nodes[parent];
            (p.start, p.end, p.depth, p.service)
        };
        if depth >= MAX_DEPTH || end - start < 1_000 {
            continue;
        }
        let fanout = if depth == 0 {
            12
        } else {
            rng.random_range(1..=7)
        };
        let fanout = fanout.min(spans - nodes.len());
        let parallel = rng.random_bool(0.3);
        let slot = (end - start) / fanout as u64;
        for i in 0..fanout as u64 {
            let (from, room) = if parallel {
                (start + slot / 20, (end - start) * 9 / 10)
            } else {
                (start + i * slot + slot / 20, slot * 9 / 10)
            };
            let length = (room as f64 * rng.random_range(0.4..1.0)) as u64;
            nodes.push(Node {
                parent: Some(parent),
                service: if rng.random_bool(0.6) {
                    service
                } else {
                    rng.random_range(0..SERVICES.len())
                },
                depth: depth + 1,
                start: from,
                end: from + length.max(1),
                error: rng.random_ratio(1, ERROR_EVERY),
            });
            queue.push_back(nodes.len() - 1);
        }
    }
    nodes
}

fn string(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

fn span_id(index: usize) -> Vec<u8> {
    (index as u64 + 1).to_be_bytes().to_vec()
}

/// Sends the spans (grouped by service per request, as SDKs batch them)
/// and a log for every `LOG_EVERY`th span; returns the number of logs.
async fn send(daemon: &Daemon, nodes: &[Node], trace_id: [u8; 16]) -> Result<usize> {
    let channel = Endpoint::from_shared(daemon.grpc_url())?
        .connect()
        .await
        .context("connecting to OTLP/gRPC")?;
    // End five seconds ago, so that searches ending now include it all.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let t0 = now - 5_000_000_000 - ROOT_NANOS;
    let resource = |service: usize| Resource {
        attributes: vec![
            kv("service.name", string(SERVICES[service])),
            kv("host.name", string(format!("{}-7f9c", SERVICES[service]))),
        ],
        ..Default::default()
    };
    let mut traces = TraceServiceClient::new(channel.clone());
    let indexed: Vec<(usize, &Node)> = nodes.iter().enumerate().collect();
    for chunk in indexed.chunks(SPANS_PER_REQUEST) {
        let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES.len()];
        for &(i, node) in chunk {
            let operation = OPERATIONS[(i * 7 + node.depth as usize) % OPERATIONS.len()];
            by_service[node.service].push(Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id(i),
                parent_span_id: node.parent.map(span_id).unwrap_or_default(),
                name: operation.into(),
                kind: 2,
                start_time_unix_nano: t0 + node.start,
                end_time_unix_nano: t0 + node.end,
                attributes: vec![
                    kv("component", string(SERVICES[node.service])),
                    kv("operation.index", string(i.to_string())),
                ],
                status: node.error.then(|| Status {
                    code: StatusCode::Error as i32,
                    message: "upstream failed".into(),
                }),
                ..Default::default()
            });
        }
        let request = ExportTraceServiceRequest {
            resource_spans: by_service
                .into_iter()
                .enumerate()
                .filter(|(_, spans)| !spans.is_empty())
                .map(|(service, spans)| ResourceSpans {
                    resource: Some(resource(service)),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "strand-bench".into(),
                            ..Default::default()
                        }),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        traces.export(request).await.context("exporting spans")?;
    }

    let records: Vec<(usize, LogRecord)> = nodes
        .iter()
        .enumerate()
        .filter(|(i, node)| i % LOG_EVERY == 0 || node.error)
        .map(|(i, node)| {
            let record = LogRecord {
                time_unix_nano: t0 + (node.start + node.end) / 2,
                severity_number: if node.error { 17 } else { 9 },
                severity_text: if node.error { "ERROR" } else { "INFO" }.into(),
                body: string(format!("{} handled step {i}", SERVICES[node.service])),
                trace_id: trace_id.to_vec(),
                span_id: span_id(i),
                ..Default::default()
            };
            (node.service, record)
        })
        .collect();
    let count = records.len();
    let mut by_service: Vec<Vec<LogRecord>> = vec![Vec::new(); SERVICES.len()];
    for (service, record) in records {
        by_service[service].push(record);
    }
    let request = ExportLogsServiceRequest {
        resource_logs: by_service
            .into_iter()
            .enumerate()
            .filter(|(_, records)| !records.is_empty())
            .map(|(service, log_records)| ResourceLogs {
                resource: Some(resource(service)),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    LogsServiceClient::new(channel)
        .export(request)
        .await
        .context("exporting logs")?;
    Ok(count)
}

/// Polls the API until the trace has all its spans and logs.
async fn wait_for_trace(http: &str, trace: &str, spans: usize, logs: usize) -> Result<()> {
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        async move {
            let body: Value = client.get(path).send().await?.json().await?;
            anyhow::Ok(body)
        }
    };
    let deadline = Instant::now() + INGEST_TIMEOUT;
    loop {
        let trace_body = get(format!("{http}/api/traces/{trace}")).await?;
        let logs_body = get(format!("{http}/api/traces/{trace}/logs")).await?;
        let got_spans = trace_body["data"][0]["spans"]
            .as_array()
            .map_or(0, Vec::len);
        let got_logs = logs_body["logs"].as_array().map_or(0, Vec::len);
        if got_spans == spans && got_logs == logs {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "after {INGEST_TIMEOUT:?} the API shows {got_spans}/{spans} spans, {got_logs}/{logs} logs"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens `url` in a new headless Chromium session and reads the timings.
async fn cold_load(driver: &str, chromium: Option<&PathBuf>, url: &str) -> Result<Load> {
    let mut options = json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1400,900"],
    });
    let binary = chromium
        .cloned()
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")).filter(|p| p.is_file()));
    if let Some(binary) = binary {
        options["binary"] = json!(binary);
    }
    let client = Session::start(driver, json!({ "goog:chromeOptions": options }))
        .await
        .context("starting a headless Chromium session")?;
    let measured = async {
        client.goto(url).await.context("opening the trace")?;
        let deadline = Instant::now() + DRAW_TIMEOUT;
        loop {
            let timing = client
                .execute(READ_TIMING)
                .await
                .context("reading the performance timeline")?;
            if !timing.is_null() {
                let number = |key: &str| timing[key].as_f64();
                return Ok(Load {
                    drawn_ms: number("drawn").context("no mark time")?,
                    trace_fetch_ms: number("traceFetch"),
                    ui_bytes: timing["uiBytes"].as_u64().unwrap_or(0),
                    ui_files: timing["uiFiles"].as_u64().unwrap_or(0),
                    api_bytes: timing["apiBytes"].as_u64().unwrap_or(0),
                    rows: timing["rows"].as_u64().unwrap_or(0),
                });
            }
            if Instant::now() > deadline {
                bail!("the trace view did not mark strand:trace-drawn within {DRAW_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    client
        .close()
        .await
        .context("closing the browser session")?;
    measured
}

/// A browser session through chromedriver, in plain W3C WebDriver over
/// HTTP: the four commands the benchmark needs do not justify a WebDriver
/// client crate, whose dependency tree would also change the features the
/// workspace's shared crates are built with (and so rebuild them when only
/// `strand` and the shop are built).
struct Session {
    http: reqwest::Client,
    /// `<driver>/session/<id>`
    url: String,
}

impl Session {
    async fn start(driver: &str, capabilities: Value) -> Result<Session> {
        let http = reqwest::Client::new();
        let driver = driver.trim_end_matches('/');
        let body = json!({ "capabilities": { "alwaysMatch": capabilities } });
        let answer = command(http.post(format!("{driver}/session")).json(&body)).await?;
        let id = answer["sessionId"]
            .as_str()
            .context("chromedriver answered without a session id")?;
        Ok(Session {
            url: format!("{driver}/session/{id}"),
            http,
        })
    }

    async fn goto(&self, url: &str) -> Result<()> {
        let request = self.http.post(format!("{}/url", self.url));
        command(request.json(&json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Runs `script` in the page; its return value.
    async fn execute(&self, script: &str) -> Result<Value> {
        let request = self.http.post(format!("{}/execute/sync", self.url));
        command(request.json(&json!({ "script": script, "args": [] }))).await
    }

    async fn close(self) -> Result<()> {
        command(self.http.delete(&self.url)).await.map(drop)
    }
}

/// Sends one WebDriver command; the answer's `value`, or its error message.
async fn command(request: reqwest::RequestBuilder) -> Result<Value> {
    let response = request
        .send()
        .await
        .context("chromedriver does not answer")?;
    let status = response.status();
    let mut body: Value = response
        .json()
        .await
        .context("chromedriver's answer is not JSON")?;
    let value = body["value"].take();
    ensure!(
        status.is_success(),
        "chromedriver: {status} {}: {}",
        value["error"].as_str().unwrap_or(""),
        value["message"].as_str().unwrap_or("")
    );
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_has_the_asked_size_and_stays_inside_its_parents() {
        let nodes = build_tree(&mut SmallRng::seed_from_u64(7), 10_000);
        assert_eq!(nodes.len(), 10_000);
        assert!(nodes.iter().map(|n| n.depth).max().unwrap() >= 4);
        for node in &nodes[1..] {
            let parent = &nodes[node.parent.unwrap()];
            assert!(parent.start <= node.start && node.end <= parent.end);
            assert_eq!(node.depth, parent.depth + 1);
        }
    }
}
