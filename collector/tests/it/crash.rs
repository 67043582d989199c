//! Crash consistency of all three signals: a soak of cycles, each of which
//! loads the real binary from concurrent clients (spans over OTLP/HTTP
//! protobuf, logs over OTLP/gRPC, samples over Prometheus remote write, an
//! OTLP delta counter over OTLP/HTTP JSON),
//! `kill -9`s it at a random moment or during a span flush, a log commit, a
//! metrics snapshot or retention, restarts it on the same data directory and
//! checks that every acknowledged span, log and sample is queryable exactly
//! once, that nothing sent is there twice, that the delta counter's stored
//! values are the running sum of exactly its stored deltas (no reset, nothing
//! counted twice), that no query fails and that the daemon logged no error.
//!
//! Outside CI it is a long soak: `STRAND_SOAK_CYCLES` (default 20),
//! `STRAND_SOAK_LOAD_MS` (the longest load before a kill, default 1200) and
//! `STRAND_SOAK_SEED` (default from the clock; printed, so a failure can be
//! replayed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strand_testkit::Strand;

use crate::durability::{log_record, logs_request, service};
use crate::support::remote_write as rw;
use crate::support::{STRAND_BINARY, prom};

/// Short intervals, so that flushes, commits, snapshots and retention run
/// many times a cycle and a kill can land in each. Each log request also
/// carries a record older than the log retention, so retention always has
/// a partition to drop.
const DAEMON_ARGS: &[&str] = &[
    "--log-retention",
    "7d",
    "--flush-interval",
    "100ms",
    "--metrics-flush-interval",
    "300ms",
    "--retention-interval",
    "400ms",
    "--self-scrape-interval",
    "0s",
];
/// Debug level for the daemon's own events: the moments a kill aims at.
const LOG_FILTER: &str = "info,strand=debug";

const TRACE_CLIENTS: u8 = 2;
const LOG_CLIENTS: u8 = 2;
const SAMPLE_CLIENTS: u8 = 2;
const TRACES_PER_REQUEST: u64 = 3;
const SPANS_PER_TRACE: usize = 3;
const LOGS_PER_REQUEST: u64 = 10;
/// The age of the expiring record of each log request: beyond `--log-retention`.
const EXPIRED_AGE_NANOS: u64 = 8 * 24 * 3_600 * 1_000_000_000;
const SERIES_PER_REQUEST: u64 = 3;
const SAMPLES_PER_SERIES: i64 = 2;
/// Requests one client sends in a cycle at most: a Jaeger search (at most
/// 1,500 traces) finds a client's traces of a cycle in one answer, and
/// sample times of one cycle stay within its slot.
const REQUESTS_PER_CYCLE: u64 = 400;
/// Milliseconds between one sample request and the next of a client.
const SAMPLE_STEP_MS: i64 = 10;

/// When a cycle kills the daemon.
#[derive(Clone, Copy, Debug)]
enum Moment {
    Random,
    SpanFlush,
    LogCommit,
    MetricSnapshot,
    Retention,
}

const MOMENTS: [Moment; 5] = [
    Moment::Random,
    Moment::SpanFlush,
    Moment::LogCommit,
    Moment::MetricSnapshot,
    Moment::Retention,
];

impl Moment {
    /// The daemon's debug event at the start of the work, if the kill aims at one.
    fn event(self) -> Option<&'static str> {
        match self {
            Moment::Random => None,
            Moment::SpanFlush => Some("SpanFlushStarted"),
            Moment::LogCommit => Some("LogCommitStarted"),
            Moment::MetricSnapshot => Some("MetricSnapshotStarted"),
            Moment::Retention => Some("RetentionStarted"),
        }
    }
}

/// What the clients sent and which of it was acknowledged (`true`).
#[derive(Default)]
struct Ledger {
    /// Trace id -> acknowledged.
    traces: HashMap<[u8; 16], bool>,
    /// Log body -> acknowledged.
    logs: HashMap<String, bool>,
    /// Bodies of records older than the retention: there once or not at all.
    expiring_logs: HashMap<String, bool>,
    /// Sample -> (value, acknowledged).
    samples: HashMap<SampleKey, (f64, bool)>,
    /// Delta counter point time in ms -> (delta, acknowledged).
    deltas: std::collections::BTreeMap<i64, (u64, bool)>,
    /// Failures answered while the daemon was alive, with when.
    errors: Vec<(Instant, String)>,
}

/// The ledger while clients write to it.
type Shared = Arc<Mutex<Ledger>>;

/// The ledger back from clients that have all ended.
fn unshare(shared: Shared) -> Ledger {
    Arc::try_unwrap(shared)
        .unwrap_or_else(|_| panic!("a client still holds the ledger"))
        .into_inner()
        .unwrap()
}

/// A sample's (client, series, time in ms).
type SampleKey = (String, String, i64);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A trace id naming its cycle, client and number.
fn trace_id(cycle: u64, client: u8, n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = 0x5a;
    id[1..5].copy_from_slice(&(cycle as u32).to_be_bytes());
    id[5] = client;
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// The service a client's spans of a cycle come from: one Jaeger search
/// finds them all.
fn trace_service(cycle: u64, client: u8) -> String {
    format!("soak-k{cycle}-c{client}")
}

fn trace_request(cycle: u64, client: u8, n: u64) -> (ExportTraceServiceRequest, Vec<[u8; 16]>) {
    let now = now_nanos();
    let ids: Vec<[u8; 16]> = (0..TRACES_PER_REQUEST)
        .map(|t| trace_id(cycle, client, n * TRACES_PER_REQUEST + t))
        .collect();
    let spans = ids
        .iter()
        .flat_map(|id| {
            (0..SPANS_PER_TRACE as u64).map(move |s| Span {
                trace_id: id.to_vec(),
                span_id: (s + 1).to_be_bytes().to_vec(),
                parent_span_id: if s == 0 {
                    vec![]
                } else {
                    s.to_be_bytes().to_vec()
                },
                name: format!("step {s}"),
                start_time_unix_nano: now + s * 1000,
                end_time_unix_nano: now + 100_000,
                ..Default::default()
            })
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: service(trace_service(cycle, client)),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request, ids)
}

/// Client `client`'s logs of request `n`: the soak's bodies, and the body of
/// the one expired record.
fn log_request(cycle: u64, client: u8, n: u64) -> (ExportLogsServiceRequest, Vec<String>, String) {
    let now = now_nanos();
    let bodies: Vec<String> = (0..LOGS_PER_REQUEST)
        .map(|i| format!("soak k{cycle} c{client} n{}", n * LOGS_PER_REQUEST + i))
        .collect();
    let expiring = format!("expiring k{cycle} c{client} n{n}");
    let log_records = bodies
        .iter()
        .map(|body| log_record(now, body))
        .chain([log_record(now - EXPIRED_AGE_NANOS, &expiring)])
        .collect();
    let request = logs_request(format!("soak-logger-{client}"), log_records);
    (request, bodies, expiring)
}

/// Client `client`'s samples of request `n` in `cycle`: each cycle has its
/// own slot of time after `base`, so a series only ever moves forward.
fn sample_request(
    base: i64,
    cycle: u64,
    client: u8,
    n: u64,
) -> (rw::WriteRequest, Vec<(SampleKey, f64)>) {
    let step = (cycle * REQUESTS_PER_CYCLE + n) as i64;
    let client_label = client.to_string();
    let mut keys = Vec::new();
    let timeseries = (0..SERIES_PER_REQUEST)
        .map(|series| {
            let samples: Vec<(i64, f64)> = (0..SAMPLES_PER_SERIES)
                .map(|j| {
                    let t = base + step * SAMPLE_STEP_MS + j;
                    let value = (step * SAMPLES_PER_SERIES + j) as f64 + f64::from(client) / 4.0;
                    keys.push(((client_label.clone(), series.to_string(), t), value));
                    (t, value)
                })
                .collect();
            rw::series(
                "soak_samples",
                &[("client", &client_label), ("series", &series.to_string())],
                &samples,
            )
        })
        .collect();
    (rw::request(timeseries), keys)
}

/// Spans over OTLP/HTTP protobuf until `stop`, the daemon goes away or the
/// cycle's requests are sent.
async fn send_traces(url: String, cycle: u64, client: u8, ledger: Shared, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    for n in 0..REQUESTS_PER_CYCLE {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (request, ids) = trace_request(cycle, client, n);
        ledger
            .lock()
            .unwrap()
            .traces
            .extend(ids.iter().map(|id| (*id, false)));
        let answer = http
            .post(&url)
            .header("Content-Type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => {
                let mut ledger = ledger.lock().unwrap();
                for id in ids {
                    ledger.traces.insert(id, true);
                }
            }
            Ok(response) if response.status().as_u16() == 429 => {}
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let error = format!("traces c{client} n{n}: HTTP {status}: {text}");
                ledger.lock().unwrap().errors.push((Instant::now(), error));
            }
            // The daemon is gone.
            Err(_) => return,
        }
    }
}

/// Logs over OTLP/gRPC, like [`send_traces`].
async fn send_logs(
    endpoint: String,
    cycle: u64,
    client: u8,
    ledger: Shared,
    stop: Arc<AtomicBool>,
) {
    let Ok(mut grpc) = LogsServiceClient::connect(endpoint).await else {
        return;
    };
    for n in 0..REQUESTS_PER_CYCLE {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (request, bodies, expiring) = log_request(cycle, client, n);
        {
            let mut ledger = ledger.lock().unwrap();
            ledger
                .logs
                .extend(bodies.iter().map(|b| (b.clone(), false)));
            ledger.expiring_logs.insert(expiring.clone(), false);
        }
        match grpc.export(request).await {
            Ok(_) => {
                let mut ledger = ledger.lock().unwrap();
                for body in bodies {
                    ledger.logs.insert(body, true);
                }
                ledger.expiring_logs.insert(expiring, true);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {}
            Err(status) => {
                let error = format!("logs c{client} n{n}: {status}");
                ledger.lock().unwrap().errors.push((Instant::now(), error));
                return;
            }
        }
    }
}

/// Samples over remote write, like [`send_traces`].
async fn send_samples(
    url: String,
    base: i64,
    cycle: u64,
    client: u8,
    ledger: Shared,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::new();
    for n in 0..REQUESTS_PER_CYCLE {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (request, samples) = sample_request(base, cycle, client, n);
        ledger.lock().unwrap().samples.extend(
            samples
                .iter()
                .map(|(key, value)| (key.clone(), (*value, false))),
        );
        let answer = http
            .post(&url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(rw::body(&request))
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => {
                let mut ledger = ledger.lock().unwrap();
                for (key, value) in samples {
                    ledger.samples.insert(key, (value, true));
                }
            }
            Ok(response) if response.status().as_u16() == 429 => {}
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let error = format!("samples c{client} n{n}: HTTP {status}: {text}");
                ledger.lock().unwrap().errors.push((Instant::now(), error));
            }
            Err(_) => return,
        }
    }
}

/// What step `step` of the soak's delta counter adds.
fn delta_value(step: i64) -> u64 {
    (step % 7 + 1) as u64
}

/// The soak's delta counter `soak.deltas` over OTLP/HTTP JSON, one point
/// per request at the samples' times, like [`send_traces`].
async fn send_deltas(url: String, base: i64, cycle: u64, ledger: Shared, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    for n in 0..REQUESTS_PER_CYCLE {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let step = (cycle * REQUESTS_PER_CYCLE + n) as i64;
        let (time_ms, delta) = (base + step * SAMPLE_STEP_MS, delta_value(step));
        ledger
            .lock()
            .unwrap()
            .deltas
            .insert(time_ms, (delta, false));
        let answer = http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(delta_request("soak-delta", "soak.deltas", time_ms, delta))
            .send()
            .await;
        let Ok(response) = answer else { return };
        let status = response.status();
        let Ok(body) = response.text().await else {
            return;
        };
        if status.is_success() && !body.contains("rejected") {
            ledger.lock().unwrap().deltas.insert(time_ms, (delta, true));
        } else {
            // A refused delta is counted in the running total but never
            // stored: the check below could not tell; the soak must not see one.
            let error = format!("delta at {time_ms}: HTTP {status}: {body}");
            ledger.lock().unwrap().errors.push((Instant::now(), error));
        }
    }
}

/// The delta counter's stored samples: each the previous one plus its own
/// delta (the first: its delta), every acknowledged point among them, none
/// not sent.
async fn check_deltas(daemon: &Strand, ledger: &Ledger, base: i64, cycles: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let end = base + (cycles * REQUESTS_PER_CYCLE) as i64 * SAMPLE_STEP_MS;
    let window = format!("soak_deltas_total[{}s]", (end - base) / 1000 + 60);
    let stored = prom::raw_samples(daemon, &window, end as f64 / 1000.0).await;
    let samples: Vec<(i64, f64)> = stored.into_iter().flat_map(|(_, s)| s).collect();
    let mut total = 0.0;
    for &(time_ms, value) in &samples {
        let Some(&(delta, _)) = ledger.deltas.get(&time_ms) else {
            problems.push(format!("delta sample at {time_ms} was never sent"));
            continue;
        };
        total += delta as f64;
        if value != total {
            problems.push(format!(
                "delta counter at {time_ms} is {value}, want {total}"
            ));
            total = value;
        }
    }
    let stored_times: std::collections::HashSet<i64> = samples.iter().map(|s| s.0).collect();
    for (time_ms, (_, acked)) in &ledger.deltas {
        if *acked && !stored_times.contains(time_ms) {
            problems.push(format!("acknowledged delta at {time_ms} lost"));
        }
    }
    problems
}

/// Waits until the daemon logs `event` once more than it had when called.
async fn wait_for_event(daemon: &Strand, event: &str) {
    let before = daemon.log().matches(event).count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.log().matches(event).count() <= before {
        assert!(
            Instant::now() < deadline,
            "no {event} within 20 s:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every trace of `cycles`, by Jaeger search per client: acknowledged ones
/// complete, none twice, none with a span twice; returns what is wrong.
async fn check_traces(
    daemon: &Strand,
    ledger: &Ledger,
    cycles: std::ops::Range<u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (start, end) = (
        (now_nanos() / 1000 - 3_600_000_000).to_string(),
        (now_nanos() / 1000 + 3_600_000_000).to_string(),
    );
    let mut found: HashMap<[u8; 16], usize> = HashMap::new();
    for cycle in cycles.clone() {
        for client in 0..TRACE_CLIENTS {
            let service = trace_service(cycle, client);
            let (status, body) = daemon
                .get_json_query(
                    "/api/traces",
                    &[
                        ("service", service.as_str()),
                        ("start", start.as_str()),
                        ("end", end.as_str()),
                        ("limit", "1500"),
                    ],
                )
                .await;
            if status != 200 {
                problems.push(format!("search {service}: HTTP {status}: {body}"));
                continue;
            }
            for trace in body["data"].as_array().into_iter().flatten() {
                let id: [u8; 16] = hex::decode(trace["traceID"].as_str().unwrap_or_default())
                    .ok()
                    .and_then(|id| id.try_into().ok())
                    .unwrap_or_default();
                *found.entry(id).or_default() += 1;
                let spans = trace["spans"].as_array().map_or(&[][..], Vec::as_slice);
                let mut span_ids: Vec<&str> =
                    spans.iter().filter_map(|s| s["spanID"].as_str()).collect();
                span_ids.sort_unstable();
                span_ids.dedup();
                if spans.len() != SPANS_PER_TRACE || span_ids.len() != SPANS_PER_TRACE {
                    problems.push(format!(
                        "trace {} has {} spans ({} distinct), want {SPANS_PER_TRACE}",
                        hex::encode(id),
                        spans.len(),
                        span_ids.len()
                    ));
                }
            }
        }
    }
    for (id, &acked) in &ledger.traces {
        let cycle = u64::from(u32::from_be_bytes(id[1..5].try_into().unwrap()));
        if !cycles.contains(&cycle) {
            continue;
        }
        match found.get(id).copied().unwrap_or(0) {
            0 if acked => problems.push(format!("acknowledged trace {} lost", hex::encode(id))),
            0 | 1 => {}
            n => problems.push(format!("trace {} found {n} times", hex::encode(id))),
        }
    }
    for id in found.keys() {
        if !ledger.traces.contains_key(id) {
            problems.push(format!("trace {} was never sent", hex::encode(id)));
        }
    }
    problems
}

/// Every soak log: acknowledged ones once, sent ones at most once; and
/// expired ones at most once.
async fn check_logs(daemon: &Strand, ledger: &Ledger) -> Vec<String> {
    let (mut problems, found) = search_logs(daemon, "soak").await;
    for (body, &acked) in &ledger.logs {
        match found.get(body).copied().unwrap_or(0) {
            0 if acked => problems.push(format!("acknowledged log {body:?} lost")),
            0 | 1 => {}
            n => problems.push(format!("log {body:?} found {n} times")),
        }
    }
    for body in found.keys() {
        if !ledger.logs.contains_key(body) {
            problems.push(format!("log {body:?} was never sent"));
        }
    }
    let (expiring_problems, expiring) = search_logs(daemon, "expiring").await;
    problems.extend(expiring_problems);
    for (body, n) in expiring {
        if !ledger.expiring_logs.contains_key(&body) {
            problems.push(format!("log {body:?} was never sent"));
        } else if n > 1 {
            problems.push(format!("expiring log {body:?} found {n} times"));
        }
    }
    problems
}

/// How often each body matching `query` is found, over every page; and
/// what went wrong.
async fn search_logs(daemon: &Strand, query: &str) -> (Vec<String>, HashMap<String, usize>) {
    let mut problems = Vec::new();
    let mut found: HashMap<String, usize> = HashMap::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = daemon
            .get_json_query(
                "/api/logs",
                &[
                    ("q", query),
                    ("start", "0"),
                    ("limit", "1000"),
                    ("cursor", cursor.as_str()),
                ],
            )
            .await;
        if status != 200 {
            problems.push(format!("log search {query:?}: HTTP {status}: {page}"));
            break;
        }
        for log in page["logs"].as_array().into_iter().flatten() {
            *found
                .entry(log["body"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    (problems, found)
}

/// Every soak sample, read raw: acknowledged ones once with their value,
/// sent ones at most once.
async fn check_samples(daemon: &Strand, ledger: &Ledger, base: i64, cycles: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let end = base + (cycles * REQUESTS_PER_CYCLE) as i64 * SAMPLE_STEP_MS;
    let window = format!("soak_samples[{}s]", (end - base) / 1000 + 60);
    let stored = prom::raw_samples(daemon, &window, end as f64 / 1000.0).await;
    let mut found: HashMap<SampleKey, Vec<f64>> = HashMap::new();
    for (labels, samples) in stored {
        for (t, value) in samples {
            found
                .entry((labels["client"].clone(), labels["series"].clone(), t))
                .or_default()
                .push(value);
        }
    }
    for (key, &(value, acked)) in &ledger.samples {
        match found.get(key).map_or(&[][..], Vec::as_slice) {
            [] if acked => problems.push(format!("acknowledged sample {key:?} lost")),
            [] => {}
            [stored] if *stored == value => {}
            stored => problems.push(format!("sample {key:?} is {stored:?}, want {value}")),
        }
    }
    for key in found.keys() {
        if !ledger.samples.contains_key(key) {
            problems.push(format!("sample {key:?} was never sent"));
        }
    }
    problems
}

fn assert_no_problems(what: &str, problems: Vec<String>, seed: u64, daemon: &Strand) {
    assert!(
        problems.is_empty(),
        "{what} (seed {seed}): {} problems, e.g. {:#?}\n{}",
        problems.len(),
        &problems[..problems.len().min(10)],
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_item_survives_kill_9_exactly_once() {
    let cycles = env_number("STRAND_SOAK_CYCLES", 20);
    let load_ms = env_number("STRAND_SOAK_LOAD_MS", 1200).max(300);
    let seed = env_number("STRAND_SOAK_SEED", now_nanos());
    println!("crash soak: seed {seed}, {cycles} cycles (replay with STRAND_SOAK_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Samples of cycle k go to [base + k slot, base + (k + 1) slot).
    let base = (now_nanos() / 1_000_000_000) as i64 * 1000 - 12 * 3_600_000;
    let mut ledger = Ledger::default();
    let mut daemon = Strand::spawn_logging(STRAND_BINARY, &data, DAEMON_ARGS, LOG_FILTER).await;
    let started = Instant::now();
    for cycle in 0..cycles {
        let moment = MOMENTS[cycle as usize % MOMENTS.len()];
        let shared: Shared = Arc::new(Mutex::new(std::mem::take(&mut ledger)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for client in 0..TRACE_CLIENTS {
            let url = daemon.otlp_http_url("/v1/traces");
            clients.push(tokio::spawn(send_traces(
                url,
                cycle,
                client,
                shared.clone(),
                stop.clone(),
            )));
        }
        for client in 0..LOG_CLIENTS {
            clients.push(tokio::spawn(send_logs(
                daemon.grpc_endpoint(),
                cycle,
                client,
                shared.clone(),
                stop.clone(),
            )));
        }
        for client in 0..SAMPLE_CLIENTS {
            clients.push(tokio::spawn(send_samples(
                daemon.url("/api/v1/write"),
                base,
                cycle,
                client,
                shared.clone(),
                stop.clone(),
            )));
        }
        clients.push(tokio::spawn(send_deltas(
            daemon.otlp_http_url("/v1/metrics"),
            base,
            cycle,
            shared.clone(),
            stop.clone(),
        )));
        let load = Duration::from_millis(rng.random_range(200..load_ms));
        match moment.event() {
            None => tokio::time::sleep(load).await,
            Some(event) => {
                tokio::time::sleep(load / 2).await;
                wait_for_event(&daemon, event).await;
            }
        }
        let killed_at = Instant::now();
        let killed_log = daemon.log();
        daemon.kill9();
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.unwrap();
        }

        daemon = Strand::spawn_logging(STRAND_BINARY, &data, DAEMON_ARGS, LOG_FILTER).await;
        ledger = unshare(shared);
        let errors: Vec<String> = std::mem::take(&mut ledger.errors)
            .into_iter()
            .filter(|(at, _)| *at < killed_at)
            .map(|(_, error)| error)
            .collect();
        assert!(
            errors.is_empty(),
            "cycle {cycle} (seed {seed}): requests failed before the kill: {errors:#?}"
        );
        for (when, log) in [
            ("before the kill", killed_log),
            ("after the restart", daemon.log()),
        ] {
            let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
            assert!(
                errors.is_empty(),
                "cycle {cycle} ({moment:?}, seed {seed}): errors logged {when}: {errors:#?}"
            );
        }
        let traces = check_traces(&daemon, &ledger, cycle.saturating_sub(1)..cycle + 1).await;
        assert_no_problems(
            &format!("cycle {cycle} ({moment:?}): traces"),
            traces,
            seed,
            &daemon,
        );
        assert_no_problems(
            &format!("cycle {cycle} ({moment:?}): logs"),
            check_logs(&daemon, &ledger).await,
            seed,
            &daemon,
        );
        assert_no_problems(
            &format!("cycle {cycle} ({moment:?}): samples"),
            check_samples(&daemon, &ledger, base, cycles).await,
            seed,
            &daemon,
        );
        assert_no_problems(
            &format!("cycle {cycle} ({moment:?}): delta counter"),
            check_deltas(&daemon, &ledger, base, cycles).await,
            seed,
            &daemon,
        );
        println!(
            "cycle {cycle}: killed at {moment:?} after {load:?}; so far {} traces, {} logs, {} samples, {} deltas acknowledged ({:?})",
            ledger.traces.values().filter(|a| **a).count(),
            ledger.logs.values().filter(|a| **a).count(),
            ledger.samples.values().filter(|(_, a)| *a).count(),
            ledger.deltas.values().filter(|(_, a)| *a).count(),
            started.elapsed()
        );
    }
    assert_no_problems(
        "after the last cycle: every trace",
        check_traces(&daemon, &ledger, 0..cycles).await,
        seed,
        &daemon,
    );
    for (signal, acked) in [
        ("traces", ledger.traces.values().filter(|a| **a).count()),
        ("logs", ledger.logs.values().filter(|a| **a).count()),
        (
            "samples",
            ledger.samples.values().filter(|(_, a)| *a).count(),
        ),
        ("deltas", ledger.deltas.values().filter(|(_, a)| *a).count()),
    ] {
        assert!(
            acked as u64 >= 2 * cycles,
            "too few {signal} acknowledged to prove anything: {acked}"
        );
    }
}

/// One point of the delta counter `name` of `service`, as OTLP/JSON.
fn delta_request(service: &str, name: &str, time_ms: i64, value: u64) -> String {
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[
            {{"key":"service.name","value":{{"stringValue":"{service}"}}}}]}},
          "scopeMetrics":[{{"metrics":[{{"name":"{name}","sum":{{
            "aggregationTemporality":1,"isMonotonic":true,"dataPoints":[
            {{"timeUnixNano":"{}","asInt":"{value}"}}]}}}}]}}]}}]}}"#,
        time_ms * 1_000_000
    )
}

/// One point of the delta exponential histogram `delta.sizes` of service
/// `worker` (scale 1): `step` values in two neighbouring buckets that move
/// with `step`, so the total spans buckets no single point names.
fn exponential_delta_request(time_ms: i64, step: u64) -> String {
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[
            {{"key":"service.name","value":{{"stringValue":"worker"}}}}]}},
          "scopeMetrics":[{{"metrics":[{{"name":"delta.sizes","unit":"By",
            "exponentialHistogram":{{"aggregationTemporality":1,"dataPoints":[
            {{"timeUnixNano":"{}","count":"{step}","sum":{step},"scale":1,
              "positive":{{"offset":{},"bucketCounts":["1","{}"]}}}}]}}}}]}}]}}]}}"#,
        time_ms * 1_000_000,
        step % 4,
        step - 1
    )
}

/// Sends a delta counter point and a delta exponential histogram point.
async fn send_delta(daemon: &Strand, time_ms: i64, value: u64) {
    for body in [
        delta_request("worker", "delta.jobs", time_ms, value),
        exponential_delta_request(time_ms, value),
    ] {
        let response = reqwest::Client::new()
            .post(daemon.otlp_http_url("/v1/metrics"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status.is_success() && !body.contains("rejected"),
            "delta {value} at {time_ms}: HTTP {status}: {body}"
        );
    }
}

/// The running totals of OTLP delta counters are in memory only, but
/// resume from the newest stored cumulative sample: a `kill -9` between
/// deltas reads as no reset, and the total is the exact sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_counters_continue_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = (now_nanos() / 1_000_000) as i64 - 600_000;
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    for step in 1..=5u64 {
        send_delta(&daemon, start + step as i64 * 1000, step).await;
    }
    // Only the WAL has these samples when the daemon dies.
    daemon.kill9();

    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    for step in 6..=8u64 {
        send_delta(&daemon, start + step as i64 * 1000, step).await;
    }
    let end = (start + 8000) as f64 / 1000.0;
    let samples = prom::raw_samples(&daemon, "delta_jobs_total[1m]", end).await;
    let values: Vec<f64> = samples
        .iter()
        .flat_map(|(_, samples)| samples.iter().map(|(_, v)| *v))
        .collect();
    assert_eq!(
        values,
        [1.0, 3.0, 6.0, 10.0, 15.0, 21.0, 28.0, 36.0],
        "the cumulative series is the running sum of every delta\n{}",
        daemon.log()
    );
    let resets = prom::instant_vector(&daemon, "resets(delta_jobs_total[1m])", Some(end)).await;
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(resets[0].1, 0.0, "a restart reads as a counter reset");
    let increase = prom::instant_vector(
        &daemon,
        "delta_jobs_total - delta_jobs_total offset 7s",
        Some(end),
    )
    .await;
    assert_eq!(increase[0].1, 35.0, "{increase:?}");
    // The exponential histogram goes on too: its count is the running sum,
    // and no bucket reads as reset.
    let counts = prom::raw_samples(&daemon, "delta_sizes_bytes_count[1m]", end).await;
    let counts: Vec<f64> = counts
        .iter()
        .flat_map(|(_, samples)| samples.iter().map(|(_, v)| *v))
        .collect();
    assert_eq!(counts, [1.0, 3.0, 6.0, 10.0, 15.0, 21.0, 28.0, 36.0]);
    let resets = prom::instant_vector(
        &daemon,
        "sum(resets(delta_sizes_bytes_bucket[1m]))",
        Some(end),
    )
    .await;
    assert_eq!(resets[0].1, 0.0, "a bucket reset after the restart");
}

/// A field of the `WalReplayed` line of a daemon's log, e.g. `replayed_spans`.
fn replayed(log: &str, field: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("WalReplayed"))
        .unwrap_or_else(|| panic!("no WalReplayed line:\n{log}"));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(field)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {line}"))
}

/// SIGTERM under load: the daemon stops taking requests, finishes the ones
/// in flight, flushes every store and exits 0 within 10 s; the next start
/// replays nothing, and everything acknowledged is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_flushes_and_exits_within_10_s() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = (now_nanos() / 1_000_000_000) as i64 * 1000 - 3_600_000;
    let shared: Shared = Arc::default();
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..TRACE_CLIENTS {
        let url = daemon.otlp_http_url("/v1/traces");
        clients.push(tokio::spawn(send_traces(
            url,
            0,
            client,
            shared.clone(),
            stop.clone(),
        )));
    }
    for client in 0..LOG_CLIENTS {
        let endpoint = daemon.grpc_endpoint();
        clients.push(tokio::spawn(send_logs(
            endpoint,
            0,
            client,
            shared.clone(),
            stop.clone(),
        )));
    }
    for client in 0..SAMPLE_CLIENTS {
        let url = daemon.url("/api/v1/write");
        clients.push(tokio::spawn(send_samples(
            url,
            base,
            0,
            client,
            shared.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let terminated_at = Instant::now();
    daemon.stop().await;
    let took = terminated_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");

    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let log = daemon.log();
    for field in ["replayed_spans", "replayed_logs", "replayed_series"] {
        assert_eq!(
            replayed(&log, field),
            0,
            "{field} after a clean stop:\n{log}"
        );
    }
    let ledger = unshare(shared);
    let errors: Vec<&String> = ledger
        .errors
        .iter()
        .filter(|(at, _)| *at < terminated_at)
        .map(|(_, error)| error)
        .collect();
    assert!(
        errors.is_empty(),
        "requests failed before SIGTERM: {errors:#?}"
    );
    assert!(
        ledger.traces.values().any(|a| *a) && ledger.logs.values().any(|a| *a),
        "nothing was acknowledged"
    );
    assert_no_problems(
        "traces",
        check_traces(&daemon, &ledger, 0..1).await,
        0,
        &daemon,
    );
    assert_no_problems("logs", check_logs(&daemon, &ledger).await, 0, &daemon);
    assert_no_problems(
        "samples",
        check_samples(&daemon, &ledger, base, 1).await,
        0,
        &daemon,
    );
    println!("SIGTERM under load: stopped in {took:?}");
}
