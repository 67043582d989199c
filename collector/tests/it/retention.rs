//! Size retention under load: with small trace and log limits, a stream of
//! realistic spans and logs many times their size leaves the data directory
//! (span segments, sled index, log partitions, WAL, metrics) within the
//! stated bound the whole time; the newest data stays queryable and the
//! oldest is gone. The same load against default (unlimited) sizes keeps
//! everything; both print the directory size over time and the ingest rate.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strand_testkit::{DEADLINE, Strand, eventually};

use crate::durability::{logs_request, service};

/// The trace and the log size limits of the test, each.
const CAP_BYTES: u64 = 2_000_000;
/// What the settings' help promises: the data directory stays within the
/// sum of the size limits plus half of it (the newest segment or partition
/// of each store, at an eighth of its limit, with what one flush or commit
/// adds, and the WAL, flushed out at a quarter of the sum) plus 4 MiB for
/// sled's and tantivy's fixed overhead and the metrics store.
const fn bound(caps: u64) -> u64 {
    caps + caps / 2 + (4 << 20)
}
const TRACES_PER_REQUEST: usize = 10;
const LOGS_PER_REQUEST: usize = 100;

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn string(value: String) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value)),
    })
}

fn attribute(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: string(value),
        ..Default::default()
    }
}

fn int_attribute(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// Trace `n`'s id: a sender's requests never collide.
fn trace_id(sender: u8, n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = 0x7e;
    id[1] = sender;
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// A checkout as the shop records it: gateway, order, inventory, payment and
/// two database calls, with the attributes real instrumentation sets (ids
/// and amounts vary, as in production).
fn checkout_spans(id: [u8; 16], rng: &mut StdRng) -> Vec<Span> {
    let now = now_nanos();
    let order_id: u32 = rng.random_range(10_000..99_999);
    let user = format!("u-{}", rng.random_range(1..5000));
    let failed = rng.random_ratio(1, 20);
    let steps: [(&str, &str, Option<u64>, i32); 6] = [
        ("gateway", "POST /api/checkout", None, 2),
        ("order", "POST /orders", Some(1), 2),
        ("order", "INSERT orders", Some(2), 3),
        ("inventory", "reserve", Some(2), 2),
        ("inventory", "UPDATE stock", Some(4), 3),
        ("payment", "charge", Some(2), 2),
    ];
    steps
        .iter()
        .enumerate()
        .map(|(i, (service, name, parent, kind))| {
            let start = now + i as u64 * 150_000 + rng.random_range(0..50_000);
            let mut attributes = vec![
                attribute("service.name", service.to_string()),
                attribute("user.id", user.clone()),
                int_attribute("order.id", i64::from(order_id)),
            ];
            if name.contains('/') {
                attributes.extend([
                    attribute("http.request.method", "POST".into()),
                    attribute("url.path", name.split(' ').nth(1).unwrap_or("/").into()),
                    int_attribute("http.response.status_code", if failed { 502 } else { 200 }),
                    attribute(
                        "user_agent.original",
                        "Mozilla/5.0 (X11; Linux x86_64) shop-loadgen/1.0".into(),
                    ),
                ]);
            } else if name.contains(' ') {
                attributes.extend([
                    attribute("db.system", "postgresql".into()),
                    attribute(
                        "db.statement",
                        format!("{name} WHERE id = {order_id} AND user_id = '{user}'"),
                    ),
                ]);
            } else {
                attributes.push(attribute(
                    "payment.amount",
                    format!(
                        "{}.{:02}",
                        rng.random_range(5..500),
                        rng.random_range(0..100)
                    ),
                ));
            }
            Span {
                trace_id: id.to_vec(),
                span_id: ((i + 1) as u64).to_be_bytes().to_vec(),
                parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
                name: name.to_string(),
                kind: *kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start + rng.random_range(200_000..5_000_000),
                attributes,
                status: (failed && i == 5).then(|| Status {
                    code: status::StatusCode::Error as i32,
                    message: "card declined".into(),
                }),
                ..Default::default()
            }
        })
        .collect()
}

fn trace_request(sender: u8, n: u64, rng: &mut StdRng) -> ExportTraceServiceRequest {
    let spans = (0..TRACES_PER_REQUEST as u64)
        .flat_map(|t| checkout_spans(trace_id(sender, n * TRACES_PER_REQUEST as u64 + t), rng))
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: service("shop".into()),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Request `n`'s log lines; every body names the request (`batch<n>`), so a
/// search finds exactly its lines.
fn log_request(n: u64, rng: &mut StdRng) -> ExportLogsServiceRequest {
    let now = now_nanos();
    let log_records = (0..LOGS_PER_REQUEST)
        .map(|i| {
            let order_id: u32 = rng.random_range(10_000..99_999);
            let (severity_number, body) = match rng.random_range(0..10) {
                0 => (
                    17,
                    format!("payment declined for order {order_id}: insufficient funds"),
                ),
                1..=3 => (
                    13,
                    format!(
                        "inventory low for sku-{} after order {order_id}",
                        rng.random_range(1..900)
                    ),
                ),
                _ => (
                    9,
                    format!(
                        "order {order_id} created for u-{} total={}.{:02} items={}",
                        rng.random_range(1..5000),
                        rng.random_range(5..500),
                        rng.random_range(0..100),
                        rng.random_range(1..8)
                    ),
                ),
            };
            LogRecord {
                time_unix_nano: now + i as u64,
                severity_number,
                body: string(format!("batch{n} {body}")),
                trace_id: trace_id(9, n * LOGS_PER_REQUEST as u64 + i as u64).to_vec(),
                attributes: vec![
                    attribute("http.route", "/orders".into()),
                    int_attribute("order.id", i64::from(order_id)),
                ],
                ..Default::default()
            }
        })
        .collect();
    logs_request("order".into(), log_records)
}

/// Requests a sender had acknowledged, and the items in them.
#[derive(Default)]
struct Sent {
    requests: AtomicU64,
    items: AtomicU64,
}

/// Posts `request(n)` for n = 0, 1, ... until `stop`; a 429 is retried.
async fn send<F>(url: String, sent: Arc<Sent>, stop: Arc<AtomicBool>, items: u64, mut request: F)
where
    F: FnMut(u64) -> Vec<u8>,
{
    let http = reqwest::Client::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let body = request(n);
        loop {
            let response = http
                .post(&url)
                .header("Content-Type", "application/x-protobuf")
                .body(body.clone())
                .send()
                .await
                .expect("the daemon answers");
            match response.status().as_u16() {
                200 => break,
                429 | 503 => tokio::time::sleep(Duration::from_millis(50)).await,
                status => panic!("{url}: HTTP {status}: {}", response.text().await.unwrap()),
            }
        }
        n += 1;
        sent.requests.store(n, Ordering::Release);
        sent.items.fetch_add(items, Ordering::AcqRel);
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The data directory's size, and its stores', in a line to print.
fn sizes(data: &Path) -> (u64, String) {
    let part = |name: &str| dir_bytes(&data.join(name)) as f64 / 1e6;
    let total = dir_bytes(data);
    let line = format!(
        "dir {:6.2} MB (traces {:5.2} = blocks {:5.2} + index {:5.2} + runs {:5.2}, logs {:5.2}, wal {:5.2}, metrics {:5.2})",
        total as f64 / 1e6,
        part("traces"),
        part("traces/blocks"),
        part("traces/index"),
        part("traces/runs"),
        part("logs"),
        part("wal"),
        part("metrics"),
    );
    (total, line)
}

/// What a run of the load sent.
struct Load {
    /// Per trace sender.
    traces: Vec<Arc<Sent>>,
    logs: Arc<Sent>,
    /// The largest data directory seen.
    peak_bytes: u64,
}

/// Sends checkouts from two senders and logs from one for `duration`,
/// printing the data directory's size every two seconds and checking it
/// against `bound` (when given) after the first few seconds.
async fn drive(daemon: &Strand, data: &Path, duration: Duration, bound: Option<u64>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let traces: Vec<Arc<Sent>> = (0..2).map(|_| Arc::default()).collect();
    let logs = Arc::new(Sent::default());
    let mut senders = Vec::new();
    for (sender, sent) in (0..2u8).zip(&traces) {
        let mut rng = StdRng::seed_from_u64(u64::from(sender));
        senders.push(tokio::spawn(send(
            daemon.otlp_http_url("/v1/traces"),
            sent.clone(),
            stop.clone(),
            (TRACES_PER_REQUEST * 6) as u64,
            move |n| trace_request(sender, n, &mut rng).encode_to_vec(),
        )));
    }
    let mut rng = StdRng::seed_from_u64(9);
    senders.push(tokio::spawn(send(
        daemon.otlp_http_url("/v1/logs"),
        logs.clone(),
        stop.clone(),
        LOGS_PER_REQUEST as u64,
        move |n| log_request(n, &mut rng).encode_to_vec(),
    )));
    let spans = || -> u64 { traces.iter().map(|t| t.items.load(Ordering::Acquire)).sum() };
    let started = Instant::now();
    let mut peak_bytes = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (total, line) = sizes(data);
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{elapsed:5.1} s: {line}; sent {} spans, {} logs",
            spans(),
            logs.items.load(Ordering::Acquire)
        );
        peak_bytes = peak_bytes.max(total);
        if let Some(bound) = bound {
            assert!(
                total <= bound,
                "{line}: over the bound of {:.2} MB",
                bound as f64 / 1e6
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "ingest: {:.0} spans/s and {:.0} logs/s over {seconds:.1} s",
        spans() as f64 / seconds,
        logs.items.load(Ordering::Acquire) as f64 / seconds,
    );
    Load {
        traces,
        logs,
        peak_bytes,
    }
}

async fn trace_status(daemon: &Strand, sender: u8, n: u64) -> u16 {
    let id = hex::encode(trace_id(sender, n));
    daemon.get_json(&format!("/api/traces/{id}")).await.0
}

/// How many log lines of request `n` a search finds.
async fn logs_of_request(daemon: &Strand, n: u64) -> usize {
    let (status, page) = daemon
        .get_json_query(
            "/api/logs",
            &[
                ("q", &format!("batch{n}")),
                ("start", "0"),
                ("limit", "1000"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["logs"].as_array().map_or(0, Vec::len)
}

/// The newest trace sender 0 and the newest log request the log sender had
/// acknowledged.
fn newest(load: &Load) -> (u64, u64) {
    let traces = load.traces[0].requests.load(Ordering::Acquire);
    let logs = load.logs.requests.load(Ordering::Acquire);
    assert!(traces > 0 && logs > 0, "the load got through");
    ((traces - 1) * TRACES_PER_REQUEST as u64, logs - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_hold_the_data_directory_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cap = CAP_BYTES.to_string();
    let daemon = Strand::start(
        &data,
        &[
            "--trace-retention-bytes",
            &cap,
            "--log-retention-bytes",
            &cap,
        ],
    )
    .await;
    let bound = bound(2 * CAP_BYTES);
    println!(
        "limits: traces {:.2} MB, logs {:.2} MB; bound {:.2} MB",
        CAP_BYTES as f64 / 1e6,
        CAP_BYTES as f64 / 1e6,
        bound as f64 / 1e6
    );
    let load = drive(&daemon, &data, Duration::from_secs(30), Some(bound)).await;
    let (newest_trace, newest_logs) = newest(&load);
    // Far more than the limits went through.
    let metrics = daemon.self_metrics().await;
    for signal in ["traces", "logs"] {
        let dropped =
            format!("strand_retention_dropped_bytes_total{{reason=\"size\",signal=\"{signal}\"}}");
        let bytes: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&dropped)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {dropped} in {metrics}"));
        println!("retention dropped {:.2} MB of {signal}", bytes / 1e6);
        assert!(
            bytes > CAP_BYTES as f64,
            "{signal}: only {bytes} bytes dropped"
        );
        assert!(
            metrics.contains(&format!("strand_store_size_bytes{{signal=\"{signal}\"}}")),
            "{metrics}"
        );
    }

    // The newest data is there, whole; the oldest is gone.
    let found = eventually(DEADLINE, || async {
        let (status, trace) = daemon
            .get_json(&format!(
                "/api/traces/{}",
                hex::encode(trace_id(0, newest_trace))
            ))
            .await;
        (status == 200 && trace["data"][0]["spans"].as_array().map(Vec::len) == Some(6))
            .then_some(())
    })
    .await;
    assert!(found.is_some(), "the newest trace is readable");
    assert_eq!(
        trace_status(&daemon, 0, 0).await,
        404,
        "the oldest trace is gone"
    );
    let found = eventually(DEADLINE, || async {
        (logs_of_request(&daemon, newest_logs).await == LOGS_PER_REQUEST).then_some(())
    })
    .await;
    assert!(found.is_some(), "the newest logs are searchable");
    assert_eq!(
        logs_of_request(&daemon, 0).await,
        0,
        "the oldest logs are gone"
    );
    let (total, line) = sizes(&data);
    println!("after the load: {line}");
    assert!(total <= bound, "{line}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_size_limits_the_same_load_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::start(&data, &[]).await;
    let load = drive(&daemon, &data, Duration::from_secs(10), None).await;
    let (newest_trace, newest_logs) = newest(&load);
    println!("peak: {:.2} MB", load.peak_bytes as f64 / 1e6);
    let found = eventually(DEADLINE, || async {
        (trace_status(&daemon, 0, newest_trace).await == 200
            && logs_of_request(&daemon, newest_logs).await == LOGS_PER_REQUEST)
            .then_some(())
    })
    .await;
    assert!(found.is_some(), "the newest data is there");
    assert_eq!(
        trace_status(&daemon, 0, 0).await,
        200,
        "the oldest trace stays"
    );
    assert_eq!(logs_of_request(&daemon, 0).await, LOGS_PER_REQUEST);
    daemon.stop().await;
}
