//! An acknowledgement means durable: `kill -9` while clients are sending
//! spans and logs, or metric samples over remote write, and after a restart
//! every acknowledged span, log and sample is there; a clean restart keeps
//! every sample with its exact value. The daemon is the real binary here, to
//! be killed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use strand_testkit::Strand;

use crate::support::remote_write::{self as rw, MetricMetadata};
use crate::support::{STRAND_BINARY, incomplete_traces, prom, stored_log_bodies};

const TRACES_PER_REQUEST: usize = 5;
const SPANS_PER_TRACE: usize = 4;
const LOGS_PER_REQUEST: u64 = 20;

/// A unique trace id per (client, counter).
fn trace_id(client: u8, n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = 0xc0 | client;
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

pub(crate) fn service(name: String) -> Option<Resource> {
    Some(Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(name)),
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// An INFO log record with `body` at `time_unix_nano`.
pub(crate) fn log_record(time_unix_nano: u64, body: &str) -> LogRecord {
    LogRecord {
        time_unix_nano,
        severity_number: 9,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.to_string())),
        }),
        ..Default::default()
    }
}

/// One export request of `log_records`, from the service `name`.
pub(crate) fn logs_request(name: String, log_records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: service(name),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Logs whose bodies name their client and number, e.g. `durable c1 n17`.
fn log_request(client: u8, first: u64) -> (ExportLogsServiceRequest, Vec<String>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let bodies: Vec<String> = (first..first + LOGS_PER_REQUEST)
        .map(|n| format!("durable c{client} n{n}"))
        .collect();
    let log_records = bodies.iter().map(|body| log_record(now, body)).collect();
    let request = logs_request(format!("logger-{client}"), log_records);
    (request, bodies)
}

fn request(client: u8, first: u64) -> (ExportTraceServiceRequest, Vec<[u8; 16]>) {
    let mut ids = Vec::new();
    let mut spans = Vec::new();
    for t in 0..TRACES_PER_REQUEST as u64 {
        let id = trace_id(client, first + t);
        ids.push(id);
        for s in 0..SPANS_PER_TRACE as u64 {
            spans.push(Span {
                trace_id: id.to_vec(),
                span_id: (s + 1).to_be_bytes().to_vec(),
                parent_span_id: if s == 0 {
                    vec![]
                } else {
                    s.to_be_bytes().to_vec()
                },
                name: format!("step {s}"),
                start_time_unix_nano: 1_700_000_000_000_000_000 + s,
                end_time_unix_nano: 1_700_000_000_000_100_000,
                ..Default::default()
            });
        }
    }
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: service(format!("client-{client}")),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_and_logs_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Frequent flushes, so the kill lands with data both in blocks and only in the WAL.
    let daemon = Strand::spawn(STRAND_BINARY, &data, &["--flush-interval", "150ms"]).await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..4u8 {
        let (endpoint, acked, stop, sent) = (
            daemon.grpc_endpoint(),
            acked.clone(),
            stop.clone(),
            sent.clone(),
        );
        clients.push(tokio::spawn(async move {
            let Ok(mut grpc) = TraceServiceClient::connect(endpoint).await else {
                return;
            };
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let (request, ids) = request(client, next);
                next += TRACES_PER_REQUEST as u64;
                sent.fetch_add(1, Ordering::Relaxed);
                match grpc.export(request).await {
                    Ok(_) => acked.lock().unwrap().extend(ids),
                    // The daemon is gone: later requests are not acknowledged either.
                    Err(_) => break,
                }
            }
        }));
    }
    let acked_logs = Arc::new(Mutex::new(Vec::new()));
    for client in 0..2u8 {
        let (endpoint, acked, stop) = (daemon.grpc_endpoint(), acked_logs.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let Ok(mut grpc) = LogsServiceClient::connect(endpoint).await else {
                return;
            };
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let (request, bodies) = log_request(client, next);
                next += LOGS_PER_REQUEST;
                match grpc.export(request).await {
                    Ok(_) => acked.lock().unwrap().extend(bodies),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "the clients got too little acknowledged to prove anything: {} traces of {} requests",
        acked.len(),
        sent.load(Ordering::Relaxed)
    );

    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let missing = incomplete_traces(&daemon, &acked, SPANS_PER_TRACE).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged traces incomplete after kill -9, e.g. {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)],
        daemon.log()
    );

    let acked_logs = acked_logs.lock().unwrap().clone();
    assert!(
        acked_logs.len() >= 100,
        "too few logs acknowledged: {}",
        acked_logs.len()
    );
    let stored = stored_log_bodies(&daemon, "durable").await;
    let lost: Vec<&String> = acked_logs.iter().filter(|b| !stored.contains(*b)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged logs lost after kill -9, e.g. {:?}",
        lost.len(),
        acked_logs.len(),
        &lost[..lost.len().min(5)]
    );
}

// --- Metric samples (Prometheus remote write) ---

/// Milliseconds since the epoch, on a whole second, `ago` before now.
fn whole_second_ms(ago: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        - ago;
    now.as_secs() as i64 * 1000
}

/// A deterministic value per series and step: dyadic fractions, negative ones
/// included, so exact comparison is fair.
fn gauge_value(series: i64, step: i64) -> f64 {
    ((step * 7919 + series * 104_729) % 1000) as f64 / 8.0 - 60.0
}

const RESTART_SERIES: i64 = 3;
/// More than one chunk (120 samples) per series, so sealed chunks are written too.
const RESTART_STEPS: i64 = 400;
const RESTART_STEP_MS: i64 = 5000;
const RESTART_STEPS_PER_REQUEST: i64 = 50;

/// The restart test's samples of `steps`, as one request.
fn restart_request(base: i64, steps: std::ops::Range<i64>) -> rw::WriteRequest {
    let timeseries = (0..RESTART_SERIES)
        .map(|s| {
            let samples: Vec<(i64, f64)> = steps
                .clone()
                .map(|k| (base + k * RESTART_STEP_MS, gauge_value(s, k)))
                .collect();
            rw::series("durable_gauge", &[("series", &s.to_string())], &samples)
        })
        .collect();
    let mut request = rw::request(timeseries);
    if steps.start == 0 {
        request.metadata = vec![MetricMetadata {
            r#type: 2,
            metric_family_name: "durable_gauge".into(),
            help: "Written before a restart.".into(),
            unit: String::new(),
        }];
    }
    request
}

/// Every sample of the restart test, read back with a range query whose steps
/// land on the samples' timestamps.
async fn assert_restart_samples(daemon: &Strand, base: i64, steps: i64) {
    let last = base + (steps - 1) * RESTART_STEP_MS;
    let got = prom::range(
        daemon,
        "durable_gauge",
        base as f64 / 1000.0,
        last as f64 / 1000.0,
        &format!("{}ms", RESTART_STEP_MS),
    )
    .await;
    let want: Vec<(prom::Labels, Vec<(i64, f64)>)> = (0..RESTART_SERIES)
        .map(|s| {
            (
                prom::label_set(&[("__name__", "durable_gauge"), ("series", &s.to_string())]),
                (0..steps)
                    .map(|k| (base + k * RESTART_STEP_MS, gauge_value(s, k)))
                    .collect(),
            )
        })
        .collect();
    if got != want {
        let first_difference = got.iter().zip(&want).find_map(|((gl, gs), (wl, ws))| {
            if gl != wl {
                return Some(format!("series {gl:?} instead of {wl:?}"));
            }
            gs.iter()
                .zip(ws)
                .find(|(g, w)| g != w)
                .map(|(g, w)| format!("{wl:?}: {g:?} instead of {w:?}"))
                .or_else(|| {
                    (gs.len() != ws.len())
                        .then(|| format!("{wl:?}: {} points, want {}", gs.len(), ws.len()))
                })
        });
        panic!(
            "samples differ after restart: {} series (want {}); first difference: {first_difference:?}\n{}",
            got.len(),
            want.len(),
            daemon.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_samples_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let base = whole_second_ms(Duration::from_secs(3600));
    let mut from = 0;
    while from < RESTART_STEPS {
        let to = (from + RESTART_STEPS_PER_REQUEST).min(RESTART_STEPS);
        rw::write_ok(&daemon, &restart_request(base, from..to)).await;
        from = to;
    }
    assert_restart_samples(&daemon, base, RESTART_STEPS).await;
    daemon.stop().await;

    // Clean restart: everything from the snapshot and the chunk files.
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    assert_restart_samples(&daemon, base, RESTART_STEPS).await;
    assert_eq!(
        prom::get_ok(&daemon, "/api/v1/metadata", &[("metric", "durable_gauge")]).await,
        serde_json::json!({"durable_gauge": [
            {"type": "gauge", "help": "Written before a restart.", "unit": ""}
        ]})
    );
    // The store still knows each series' newest sample: an older one is
    // refused, a newer one taken.
    let (status, text) = rw::write(&daemon, &restart_request(base, 10..11)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("out of order"), "{text}");
    rw::write_ok(
        &daemon,
        &restart_request(base, RESTART_STEPS..RESTART_STEPS + 1),
    )
    .await;

    // kill -9 now: that last sample lives only in the WAL.
    daemon.kill9();
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    assert_restart_samples(&daemon, base, RESTART_STEPS + 1).await;
}

/// A second daemon started on a running one's data directory would write
/// the same WAL and stores: it is refused, naming the first, which goes on
/// with its data whole; once the first stops, the directory is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_data_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let base = whole_second_ms(Duration::from_secs(3600));
    rw::write_ok(
        &daemon,
        &restart_request(base, 0..RESTART_STEPS_PER_REQUEST),
    )
    .await;

    // It waits up to 10 s for the directory, then gives up.
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut second = std::process::Command::new(STRAND_BINARY)
        .args(["serve", "--data-dir", &data.display().to_string()])
        .args(["--otlp-grpc", "127.0.0.1:0", "--otlp-http", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0"])
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .expect("strand runs");
    let status = strand_testkit::eventually(Duration::from_secs(30), || {
        let exited = second.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let _ = second.kill();
    let stderr = std::fs::read_to_string(stderr.path()).unwrap();
    let status = status.unwrap_or_else(|| panic!("the second daemon ran on:\n{stderr}"));
    assert!(!status.success(), "{stderr}");
    let refusal = format!(
        "data directory {} is in use by another strand (process {})",
        data.display(),
        daemon.pid()
    );
    assert!(stderr.contains(&refusal), "{stderr}");
    assert!(!stderr.contains("StrandListening"), "{stderr}");

    rw::write_ok(
        &daemon,
        &restart_request(
            base,
            RESTART_STEPS_PER_REQUEST..2 * RESTART_STEPS_PER_REQUEST,
        ),
    )
    .await;
    assert_restart_samples(&daemon, base, 2 * RESTART_STEPS_PER_REQUEST).await;
    daemon.stop().await;
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    assert_restart_samples(&daemon, base, 2 * RESTART_STEPS_PER_REQUEST).await;
    assert!(!daemon.log().contains("DataDirInUse"), "{}", daemon.log());
}

/// A data directory removed under a running daemon (a clean-up script, an
/// unmounted volume) stops it within seconds, with an error that says so,
/// rather than leaving it acknowledging writes into files that are gone.
#[tokio::test]
async fn a_daemon_whose_data_directory_is_removed_stops_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let base = whole_second_ms(Duration::from_secs(3600));
    rw::write_ok(
        &daemon,
        &restart_request(base, 0..RESTART_STEPS_PER_REQUEST),
    )
    .await;
    assert_eq!(daemon.exit_status(), None, "{}", daemon.log());

    std::fs::remove_dir_all(&data).unwrap();
    let status = strand_testkit::eventually(Duration::from_secs(30), || {
        let exited = daemon.exit_status();
        async move { exited }
    })
    .await;
    let log = daemon.log();
    let status = status.unwrap_or_else(|| panic!("the daemon ran on:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(log.contains("DataDirRemoved"), "{log}");
    let error = format!(
        "strand: data directory {} was removed while the daemon ran",
        data.display()
    );
    assert!(log.contains(&error), "{log}");
}

const SAMPLE_CLIENTS: u8 = 4;
const SHARDS: usize = 5;
const SAMPLES_PER_SERIES: i64 = 3;

/// Client `client`'s request number `n`: `SHARDS` series with three samples
/// each, at `base + n s + j * 100 ms` and with values that name `n` and `j`.
fn sample_request(base: i64, client: u8, n: i64) -> rw::WriteRequest {
    let client_label = client.to_string();
    rw::request(
        (0..SHARDS)
            .map(|shard| {
                let samples: Vec<(i64, f64)> = (0..SAMPLES_PER_SERIES)
                    .map(|j| sample_at(base, client, n, j))
                    .collect();
                rw::series(
                    "durable_samples",
                    &[("client", &client_label), ("shard", &shard.to_string())],
                    &samples,
                )
            })
            .collect(),
    )
}

fn sample_at(base: i64, client: u8, n: i64, j: i64) -> (i64, f64) {
    (
        base + n * 1000 + j * 100,
        (n * SAMPLES_PER_SERIES + j) as f64 + f64::from(client) / 4.0,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_samples_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let base = whole_second_ms(Duration::from_secs(2 * 3600));

    // (client, request number) of every acknowledged request.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..SAMPLE_CLIENTS {
        let (url, acked, stop, sent) = (
            daemon.url("/api/v1/write"),
            acked.clone(),
            stop.clone(),
            sent.clone(),
        );
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = rw::body(&sample_request(base, client, n));
                sent.fetch_add(1, Ordering::Relaxed);
                let answer = http
                    .post(&url)
                    .header("Content-Encoding", "snappy")
                    .header("Content-Type", "application/x-protobuf")
                    .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                    .body(body)
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status().as_u16() == 204 => {
                        acked.lock().unwrap().push((client, n));
                    }
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        panic!("client {client} request {n}: HTTP {status}: {text}");
                    }
                    // The daemon is gone: later requests are not acknowledged either.
                    Err(_) => break,
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    daemon.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 40,
        "the clients got too little acknowledged to prove anything: {} of {} requests",
        acked.len(),
        sent.load(Ordering::Relaxed)
    );

    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    // Every raw sample there is, per (client, shard).
    let newest = acked.iter().map(|(_, n)| *n).max().unwrap() + 10;
    let at = (base + newest * 1000) as f64 / 1000.0;
    let window = format!("durable_samples[{}s]", newest + 60);
    let stored = prom::raw_samples(&daemon, &window, at).await;
    let stored: std::collections::HashMap<(String, String), std::collections::HashMap<i64, f64>> =
        stored
            .into_iter()
            .map(|(labels, samples)| {
                (
                    (labels["client"].clone(), labels["shard"].clone()),
                    samples.into_iter().collect(),
                )
            })
            .collect();
    let mut lost = Vec::new();
    for &(client, n) in &acked {
        for shard in 0..SHARDS {
            let series = stored.get(&(client.to_string(), shard.to_string()));
            for j in 0..SAMPLES_PER_SERIES {
                let (t, value) = sample_at(base, client, n, j);
                let found = series.and_then(|s| s.get(&t)).copied();
                if found != Some(value) {
                    lost.push((client, n, shard, j, found));
                }
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged samples lost or wrong after kill -9, e.g. (client, request, shard, sample, found) {:?}\n{}",
        lost.len(),
        acked.len() * SHARDS * SAMPLES_PER_SERIES as usize,
        &lost[..lost.len().min(5)],
        daemon.log()
    );
    // Nothing was made up either: every stored sample is one that was sent.
    for ((client, _), samples) in &stored {
        let client: u8 = client.parse().unwrap();
        for (&t, &value) in samples {
            let offset = t - base;
            let (n, j) = (offset / 1000, (offset % 1000) / 100);
            assert_eq!(
                sample_at(base, client, n, j),
                (t, value),
                "a stored sample nobody sent"
            );
        }
    }

    // Writing goes on where each client left off.
    for client in 0..SAMPLE_CLIENTS {
        let next = acked
            .iter()
            .filter(|(c, _)| *c == client)
            .map(|(_, n)| n + 1)
            .max()
            .unwrap_or(0)
            // Unacknowledged requests may have been stored too; skip past them.
            + 5;
        rw::write_ok(&daemon, &sample_request(base, client, next)).await;
    }
}
