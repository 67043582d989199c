//! Overload: the real binary under `--memory-limit`, flooded with ten times
//! the clients that already keep it busy, over OTLP/HTTP and OTLP/gRPC,
//! with clients that ignore `Retry-After`. Refusals must be 429 /
//! RESOURCE_EXHAUSTED carrying a retry delay, the peak resident set
//! (`VmHWM`) must stay under the limit, queries must keep answering
//! throughout, and ingest must accept everything again once the flood ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use strand_testkit::{DEADLINE, Strand};

use crate::durability::service;
use crate::support::STRAND_BINARY;

const LIMIT_BYTES: u64 = 256 << 20;
/// Clients sending back to back: already as much as the daemon takes.
const STEADY_CLIENTS: usize = 2;
/// Ten times as many, half over each transport.
const FLOOD_CLIENTS: usize = 10 * STEADY_CLIENTS;
const FLOOD: Duration = Duration::from_secs(12);
const SPANS_PER_REQUEST: usize = 1000;
/// Distinct request bodies the clients cycle through.
const BODIES: usize = 8;

#[derive(Default)]
struct Tally {
    accepted_spans: AtomicU64,
    refused: AtomicU64,
    /// Unexpected answers: anything but success or a retryable refusal
    /// with its delay.
    wrong: Mutex<Vec<String>>,
}

impl Tally {
    fn wrong(&self, what: String) {
        self.wrong.lock().unwrap().push(what);
    }
}

fn attribute(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..Default::default()
    }
}

/// Body `body` of the flood: `SPANS_PER_REQUEST` spans of ~600 bytes
/// each, ten to a trace — a big exporter batch.
fn request(body: usize) -> ExportTraceServiceRequest {
    spans(body, |n| {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&(body as u64 + 1).to_be_bytes());
        trace_id[8..].copy_from_slice(&(n as u64 / 10).to_be_bytes());
        trace_id
    })
}

/// `SPANS_PER_REQUEST` spans (ids unique to `body`), each in the trace
/// `trace_of(its number)`.
fn spans(body: usize, trace_of: impl Fn(usize) -> [u8; 16]) -> ExportTraceServiceRequest {
    let text = |value: String| AnyValue {
        value: Some(any_value::Value::StringValue(value)),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let spans = (0..SPANS_PER_REQUEST)
        .map(|n| Span {
            trace_id: trace_of(n).to_vec(),
            span_id: ((body * SPANS_PER_REQUEST + n) as u64 + 1)
                .to_be_bytes()
                .to_vec(),
            name: format!("GET /api/items/{}", n % 50),
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1_000_000,
            attributes: vec![
                attribute("http.route", text("/api/items/{id}".into())),
                attribute("user.id", text(format!("user-{n}"))),
                attribute("payload", text("x".repeat(400))),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: service("flood".into()),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn http_client(
    url: String,
    bodies: Arc<Vec<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let http = reqwest::Client::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let answer = http
            .post(&url)
            .header("Content-Type", "application/x-protobuf")
            .body(bodies[n % bodies.len()].clone())
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => {
                tally
                    .accepted_spans
                    .fetch_add(SPANS_PER_REQUEST as u64, Ordering::Relaxed);
            }
            Ok(response) if response.status() == 429 => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                if !response.headers().contains_key("retry-after") {
                    tally.wrong("HTTP 429 without Retry-After".into());
                }
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                tally.wrong(format!("HTTP {status}: {text}"));
            }
            // A refused request's connection is closed after the answer;
            // a request racing that close fails to send and is retried.
            Err(error) if error.is_request() || error.is_connect() => {}
            Err(error) => tally.wrong(format!("HTTP: {error}")),
        }
    }
}

async fn grpc_client(
    endpoint: String,
    requests: Arc<Vec<ExportTraceServiceRequest>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut client = TraceServiceClient::connect(endpoint)
        .await
        .expect("gRPC connects")
        .max_encoding_message_size(64 << 20);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        match client.export(requests[n % requests.len()].clone()).await {
            Ok(_) => {
                tally
                    .accepted_spans
                    .fetch_add(SPANS_PER_REQUEST as u64, Ordering::Relaxed);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                if status.metadata().get("retry-after").is_none() {
                    tally.wrong(format!(
                        "RESOURCE_EXHAUSTED without retry-after: {status:?}"
                    ));
                }
            }
            Err(status) => tally.wrong(format!("gRPC: {status:?}")),
        }
    }
}

/// Runs `http_clients` + `grpc_clients` senders for `duration`.
async fn load(
    daemon: &Strand,
    http_clients: usize,
    grpc_clients: usize,
    duration: Duration,
) -> Arc<Tally> {
    let requests: Arc<Vec<_>> = Arc::new((0..BODIES).map(request).collect());
    let bodies = Arc::new(requests.iter().map(|r| r.encode_to_vec()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for _ in 0..http_clients {
        clients.push(tokio::spawn(http_client(
            daemon.otlp_http_url("/v1/traces"),
            Arc::clone(&bodies),
            stop.clone(),
            tally.clone(),
        )));
    }
    for _ in 0..grpc_clients {
        clients.push(tokio::spawn(grpc_client(
            daemon.grpc_endpoint(),
            requests.clone(),
            stop.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    tally
}

/// The peak resident set of process `pid` so far, in bytes.
fn peak_resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_load_is_refused_with_retry_after_within_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limit = format!("{}MiB", LIMIT_BYTES >> 20);
    let daemon = Strand::spawn(STRAND_BINARY, dir.path(), &["--memory-limit", &limit]).await;
    let seconds = |d: Duration| d.as_secs_f64();

    let steady = Duration::from_secs(5);
    let before = load(&daemon, STEADY_CLIENTS, 0, steady).await;
    let rate_before = before.accepted_spans.load(Ordering::Relaxed) as f64 / seconds(steady);
    let refused_before = before.refused.load(Ordering::Relaxed);

    // The flood, and a reader that must keep getting answers through it.
    let querying = Arc::new(AtomicBool::new(true));
    let reader = {
        let querying = querying.clone();
        let (services, promql) = (daemon.url("/api/services"), daemon.url("/api/v1/query"));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut answered = 0;
            while querying.load(Ordering::Relaxed) {
                for request in [
                    http.get(&services),
                    http.get(&promql)
                        .query(&[("query", "max(strand_memory_pressure)")]),
                ] {
                    let response = request
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .expect("queries answer during the flood");
                    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                    answered += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answered
        })
    };
    let started = Instant::now();
    let flood = load(&daemon, FLOOD_CLIENTS / 2, FLOOD_CLIENTS / 2, FLOOD).await;
    let flood_time = started.elapsed();
    querying.store(false, Ordering::Relaxed);
    let answered = reader.await.unwrap();
    let peak = peak_resident_bytes(daemon.pid());

    let refused = flood.refused.load(Ordering::Relaxed);
    let rate_flood = flood.accepted_spans.load(Ordering::Relaxed) as f64 / seconds(flood_time);
    println!(
        "steady: {rate_before:.0} spans/s from {STEADY_CLIENTS} clients, \
         {refused_before} requests refused; flood of \
         {FLOOD_CLIENTS} clients: {rate_flood:.0} spans/s accepted, {refused} requests \
         refused; peak RSS {} MiB of a {} MiB limit; {answered} queries answered",
        peak >> 20,
        LIMIT_BYTES >> 20
    );
    let wrong = std::mem::take(&mut *flood.wrong.lock().unwrap());
    assert!(
        wrong.is_empty(),
        "unexpected answers: {:#?}",
        &wrong[..wrong.len().min(10)]
    );
    assert!(
        refused > 0,
        "the flood was never refused: it did not overload"
    );
    assert!(answered > 0);
    assert!(
        peak <= LIMIT_BYTES,
        "peak RSS {peak} over the {LIMIT_BYTES}-byte limit\n{}",
        daemon.log()
    );

    // After the flood, ingest is not stuck refusing: a client that waits
    // as told is served, ten batches in a row.
    let http = reqwest::Client::new();
    let body = request(0).encode_to_vec();
    let (mut in_a_row, deadline) = (0, Instant::now() + DEADLINE);
    while in_a_row < 10 {
        assert!(
            Instant::now() < deadline,
            "ingest kept refusing after the flood"
        );
        let response = http
            .post(daemon.otlp_http_url("/v1/traces"))
            .header("Content-Type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => in_a_row += 1,
            429 => {
                in_a_row = 0;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            status => panic!("HTTP {status} after the flood"),
        }
    }
    // What the steady clients get now, for the record.
    let after = load(&daemon, STEADY_CLIENTS, 0, steady).await;
    println!(
        "after the flood: {:.0} spans/s from {STEADY_CLIENTS} clients, {} requests refused",
        after.accepted_spans.load(Ordering::Relaxed) as f64 / seconds(steady),
        after.refused.load(Ordering::Relaxed)
    );
    let metrics = daemon.self_metrics().await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "strand_memory_pressure 0"),
        "{metrics}"
    );
    // Why requests were refused, for the record.
    for line in metrics.lines().filter(|line| {
        line.starts_with("strand_requests_rejected_total")
            || line.starts_with("strand_spans_rejected_total")
    }) {
        println!("{line}");
    }
}

/// What `strand_connections`-like series of `listener` reads on `/metrics`.
async fn listener_metric(daemon: &Strand, name: &str, listener: &str) -> Option<u64> {
    let text = daemon.self_metrics().await;
    let prefix = format!("{name}{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(dir.path(), &["--max-connections", "4"]).await;
    let otlp_http = daemon
        .otlp_http_url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // Four idle connections take every slot of the OTLP/HTTP listener.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(&otlp_http).await.unwrap());
    }
    let served = strand_testkit::eventually(DEADLINE, || async {
        (listener_metric(&daemon, "strand_connections", "otlp_http").await == Some(4)).then_some(())
    })
    .await;
    assert!(served.is_some(), "the idle connections were not all served");

    let body = request(0).encode_to_vec();
    let export = {
        let url = daemon.otlp_http_url("/v1/traces");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header("Content-Type", "application/x-protobuf")
                .body(body)
                .send()
                .await
                .map(|response| response.status())
        })
    };
    // A fifth waits: not refused, not served...
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!export.is_finished(), "a fifth connection was served");
    // ...until a slot is free.
    drop(idle.pop());
    let status = tokio::time::timeout(DEADLINE, export)
        .await
        .expect("the waiting request is served once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    // The other listeners have slots of their own.
    assert_eq!(daemon.get_json("/api/services").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_large_answer_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(dir.path(), &["--stalled-write-timeout", "1s"]).await;
    // One trace of 10,000 spans: its Jaeger JSON is ~10 MB, more than the
    // socket buffers between client and daemon hold.
    let trace_id = [0x51u8; 16];
    let http = reqwest::Client::new();
    for body in 0..10 {
        let response = http
            .post(daemon.otlp_http_url("/v1/traces"))
            .header("Content-Type", "application/x-protobuf")
            .body(spans(body, |_| trace_id).encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let path = format!("/api/traces/{}", hex::encode(trace_id));
    let (status, trace) = daemon.get_json(&path).await;
    assert_eq!(status, 200);
    assert_eq!(trace["data"][0]["spans"].as_array().unwrap().len(), 10_000);

    // A client with a small receive window asks for it and reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = daemon
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: strand\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let cut_off = strand_testkit::eventually(DEADLINE, || async {
        (listener_metric(&daemon, "strand_connection_write_stalls_total", "http").await >= Some(1))
            .then_some(())
    })
    .await;
    assert!(cut_off.is_some(), "the stalled connection was never closed");
    // What the daemon had written before it gave up ends early.
    let mut received = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received)).await;
    assert!(
        received.len() < 5_000_000,
        "{} bytes arrived: the answer was not cut off",
        received.len()
    );
    // Everyone else is served as before.
    assert_eq!(daemon.get_json("/api/services").await.0, 200);
}
