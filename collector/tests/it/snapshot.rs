//! `POST /api/admin/snapshot` while clients keep sending traces, logs and
//! samples: only the admin token may take one; the daemon keeps serving
//! and acknowledging throughout; a second daemon serving the snapshot
//! directory answers every item acknowledged before the request was sent,
//! with no damage reported; sealed files are hard links, appended ones
//! copies; and the original directory restarts cleanly with the snapshot
//! in it. Both daemons are the real binary, whose logs are read.
//!
//! On another filesystem (a tmpfs; mounting needs root, as CI has) every
//! file is copied instead of linked, and a snapshot that fills it answers
//! 507 and leaves nothing behind.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;
use strand_testkit::Strand;

use crate::auth::{ADMIN, INGEST, READ, TOKEN_FLAGS};
use crate::disk_full::Tmpfs;
use crate::durability::{log_record, logs_request, service};
use crate::support::remote_write as rw;
use crate::support::{STRAND_BINARY, incomplete_traces, now_ms, prom, stored_log_bodies};

const SPANS_PER_TRACE: usize = 3;
const LOGS_PER_REQUEST: u64 = 10;
/// The series the sample client writes, one sample per request.
const LOAD_METRIC: &str = "snapshot_load";

/// Items acknowledged, each with when its acknowledgement arrived.
type Acked<T> = Arc<Mutex<Vec<(T, Instant)>>>;

fn now_nanos() -> u64 {
    now_ms() as u64 * 1_000_000
}

/// One trace of `SPANS_PER_TRACE` spans with id `n`.
fn trace_request(n: u64) -> ([u8; 16], ExportTraceServiceRequest) {
    let mut id = [0u8; 16];
    id[0] = 0x5e;
    id[8..].copy_from_slice(&n.to_be_bytes());
    let start = now_nanos();
    let spans = (0..SPANS_PER_TRACE as u64)
        .map(|s| Span {
            trace_id: id.to_vec(),
            span_id: (s + 1).to_be_bytes().to_vec(),
            parent_span_id: if s == 0 {
                Vec::new()
            } else {
                s.to_be_bytes().to_vec()
            },
            name: format!("step {s}"),
            start_time_unix_nano: start + s,
            end_time_unix_nano: start + 1_000_000,
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: service("snapshotted".into()),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (id, request)
}

/// `LOGS_PER_REQUEST` logs whose bodies are `snapload n<n>`, from `first` on.
fn log_request(first: u64) -> (Vec<String>, ExportLogsServiceRequest) {
    let bodies: Vec<String> = (first..first + LOGS_PER_REQUEST)
        .map(|n| format!("snapload n{n}"))
        .collect();
    let time = now_nanos();
    let log_records = bodies.iter().map(|body| log_record(time, body)).collect();
    let request = logs_request("snapshotted".into(), log_records);
    (bodies, request)
}

/// POSTs `body` with the ingest token and insists on success.
async fn post_ok(client: &reqwest::Client, url: String, content_type: &str, body: Vec<u8>) {
    let mut request = client
        .post(&url)
        .bearer_auth(INGEST)
        .header("content-type", content_type)
        .body(body)
        .timeout(Duration::from_secs(20));
    if url.ends_with("/api/v1/write") {
        request = request
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "0.1.0");
    }
    let response = request.send().await.expect("the daemon answers");
    let status = response.status();
    assert!(
        status.is_success(),
        "{url} refused: {status} {}",
        response.text().await.unwrap_or_default()
    );
}

/// The clients: one sending traces, one logs, one samples, each recording
/// what was acknowledged and when, until `stop`.
struct Load {
    traces: Acked<[u8; 16]>,
    logs: Acked<String>,
    samples: Acked<(i64, f64)>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(daemon: &Strand, first: u64) -> Load {
        let load = Load {
            traces: Arc::default(),
            logs: Arc::default(),
            samples: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let client = reqwest::Client::new();
        let (url, acked, stop, http) = (
            daemon.otlp_http_url("/v1/traces"),
            load.traces.clone(),
            load.stop.clone(),
            client.clone(),
        );
        let mut tasks = vec![tokio::spawn(async move {
            for n in first.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (id, request) = trace_request(n);
                post_ok(
                    &http,
                    url.clone(),
                    "application/x-protobuf",
                    request.encode_to_vec(),
                )
                .await;
                acked.lock().unwrap().push((id, Instant::now()));
            }
        })];
        let (url, acked, stop, http) = (
            daemon.otlp_http_url("/v1/logs"),
            load.logs.clone(),
            load.stop.clone(),
            client.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for n in first.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (bodies, request) = log_request(n * LOGS_PER_REQUEST);
                post_ok(
                    &http,
                    url.clone(),
                    "application/x-protobuf",
                    request.encode_to_vec(),
                )
                .await;
                let at = Instant::now();
                acked
                    .lock()
                    .unwrap()
                    .extend(bodies.into_iter().map(|b| (b, at)));
            }
        }));
        let (url, acked, stop) = (
            daemon.url("/api/v1/write"),
            load.samples.clone(),
            load.stop.clone(),
        );
        // A series per run, its samples 10 ms apart from a minute back.
        let base = now_ms() - 60_000;
        tasks.push(tokio::spawn(async move {
            let run = first.to_string();
            for n in first.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sample = (base + (n - first) as i64 * 10, n as f64);
                let request =
                    rw::request(vec![rw::series(LOAD_METRIC, &[("run", &run)], &[sample])]);
                post_ok(
                    &client,
                    url.clone(),
                    "application/x-protobuf",
                    rw::body(&request),
                )
                .await;
                acked.lock().unwrap().push((sample, Instant::now()));
            }
        }));
        Load { tasks, ..load }
    }

    /// Stops the clients; fails if any was refused. Returns what each
    /// got acknowledged.
    async fn stop(self) -> Acknowledged {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a client was refused");
        }
        (taken(&self.traces), taken(&self.logs), taken(&self.samples))
    }
}

/// Trace ids, log bodies and samples acknowledged, and when.
type Acknowledged = (
    Vec<([u8; 16], Instant)>,
    Vec<(String, Instant)>,
    Vec<((i64, f64), Instant)>,
);

fn taken<T>(acked: &Acked<T>) -> Vec<(T, Instant)> {
    std::mem::take(&mut *acked.lock().unwrap())
}

/// POSTs to the snapshot endpoint with `token`.
async fn request_snapshot(daemon: &Strand, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(daemon.url("/api/admin/snapshot"))
        .timeout(Duration::from_secs(60));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the daemon answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn inode(path: &Path) -> (u64, u64) {
    let metadata = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (metadata.dev(), metadata.ino())
}

/// The files of the single log partition directory under `logs`.
fn partition_files(logs: &Path) -> (PathBuf, Vec<String>) {
    let partition = std::fs::read_dir(logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a log partition");
    let files = std::fs::read_dir(&partition)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    (partition, files)
}

fn assert_no_damage(daemon: &Strand, which: &str) {
    let log = daemon.log();
    for event in [
        "CorruptData",
        "Truncated",
        "WalRecordUndecodable",
        "Quarantine",
    ] {
        assert!(!log.contains(event), "{which} reported {event}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_under_load_serves_everything_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut flags = TOKEN_FLAGS.to_vec();
    // Frequent flushes and commits: at the snapshot, data is in blocks,
    // chunks and commits, and only in the WAL.
    flags.extend([
        "--flush-interval",
        "200ms",
        "--metrics-flush-interval",
        "300ms",
    ]);

    // A first run whose span segment the restart seals: a file the
    // snapshot must link. A dashboard is another.
    let daemon = Strand::spawn(STRAND_BINARY, &data, &flags).await;
    let early = Load::start(&daemon, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (early_traces, early_logs, early_samples) = early.stop().await;
    let dashboard = serde_json::json!({
        "title": "Kept", "panels": [{"title": "load", "query": LOAD_METRIC}]
    });
    let response = reqwest::Client::new()
        .put(daemon.url("/api/dashboards/kept"))
        .bearer_auth(ADMIN)
        .json(&dashboard)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    daemon.stop().await;

    let mut daemon = Strand::spawn(STRAND_BINARY, &data, &flags).await;
    daemon.set_read_token(READ);
    let load = Load::start(&daemon, 1_000_000);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(request_snapshot(&daemon, None).await.0, 401);
    assert_eq!(request_snapshot(&daemon, Some(READ)).await.0, 403);
    assert_eq!(request_snapshot(&daemon, Some(INGEST)).await.0, 403);
    let requested = Instant::now();
    let (status, answer) = request_snapshot(&daemon, Some(ADMIN)).await;
    let answered = Instant::now();
    assert_eq!(status, 200, "{answer}\n{}", daemon.log());
    assert_eq!(answer["status"], "success", "{answer}");
    let name = answer["data"]["name"].as_str().expect("a name").to_string();
    let snapshot = data.join("snapshots").join(&name);
    assert_eq!(answer["data"]["path"], snapshot.display().to_string());
    assert!(
        name.len() == "20171210T211224Z-2be650b6d019eb54".len() && name.contains("Z-"),
        "{name}"
    );

    // Sealed files are links, appended ones copies.
    let sealed = Path::new("traces/blocks/00000000.blocks");
    assert_eq!(inode(&snapshot.join(sealed)), inode(&data.join(sealed)));
    let current = Path::new("traces/blocks/00000001.blocks");
    assert_ne!(inode(&snapshot.join(current)), inode(&data.join(current)));
    let kept = Path::new("dashboards/kept.json");
    assert_eq!(inode(&snapshot.join(kept)), inode(&data.join(kept)));
    let (partition, files) = partition_files(&snapshot.join("logs"));
    let original = data.join("logs").join(partition.file_name().unwrap());
    assert_ne!(
        inode(&partition.join("meta.json")),
        inode(&original.join("meta.json"))
    );
    let linked = files
        .iter()
        .filter(|f| !f.ends_with(".json"))
        .filter(|f| original.join(f).exists())
        .inspect(|f| assert_eq!(inode(&partition.join(f)), inode(&original.join(f)), "{f}"))
        .count();
    assert!(linked > 0, "no tantivy segment file was linked: {files:?}");

    // The daemon kept acknowledging while and after it wrote the snapshot.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (traces, logs, samples) = load.stop().await;
    for (kind, after) in [
        (
            "traces",
            traces.iter().filter(|(_, at)| *at > answered).count(),
        ),
        ("logs", logs.iter().filter(|(_, at)| *at > answered).count()),
        (
            "samples",
            samples.iter().filter(|(_, at)| *at > answered).count(),
        ),
    ] {
        assert!(after > 0, "no {kind} acknowledged after the snapshot");
    }
    let log = daemon.log();
    assert!(log.contains("SnapshotWritten"), "{log}");
    let metrics = daemon.self_metrics().await;
    assert!(
        metrics.contains("strand_snapshots_total{outcome=\"success\"} 1"),
        "{metrics}"
    );

    // Everything acknowledged before the request, on the snapshot.
    let before = |at: &Instant| *at < requested;
    let want_traces: Vec<[u8; 16]> = early_traces
        .iter()
        .chain(&traces)
        .filter(|(_, at)| before(at))
        .map(|(id, _)| *id)
        .collect();
    let want_logs: Vec<&String> = early_logs
        .iter()
        .chain(&logs)
        .filter(|(_, at)| before(at))
        .map(|(body, _)| body)
        .collect();
    let want_samples: Vec<(i64, f64)> = early_samples
        .iter()
        .chain(&samples)
        .filter(|(_, at)| before(at))
        .map(|(sample, _)| *sample)
        .collect();
    assert!(
        want_traces.len() > 20 && want_logs.len() > 100 && want_samples.len() > 20,
        "too little acknowledged to prove anything: {} traces, {} logs, {} samples",
        want_traces.len(),
        want_logs.len(),
        want_samples.len()
    );

    let copy = Strand::spawn(STRAND_BINARY, &snapshot, &[]).await;
    let missing = incomplete_traces(&copy, &want_traces, SPANS_PER_TRACE).await;
    assert!(
        missing.is_empty(),
        "{} of {} traces acknowledged before the snapshot are not in it, e.g. {:?}\n{}",
        missing.len(),
        want_traces.len(),
        &missing[..missing.len().min(5)],
        copy.log()
    );
    let stored = stored_log_bodies(&copy, "snapload").await;
    let lost: Vec<&&String> = want_logs.iter().filter(|b| !stored.contains(**b)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} logs acknowledged before the snapshot are not in it, e.g. {:?}",
        lost.len(),
        want_logs.len(),
        &lost[..lost.len().min(5)]
    );
    let series = prom::raw_samples(
        &copy,
        &format!("{LOAD_METRIC}[1h]"),
        now_ms() as f64 / 1000.0,
    )
    .await;
    let found: std::collections::HashSet<(i64, u64)> = series
        .iter()
        .flat_map(|(_, samples)| samples.iter().map(|(t, v)| (*t, v.to_bits())))
        .collect();
    let lost: Vec<&(i64, f64)> = want_samples
        .iter()
        .filter(|(t, v)| !found.contains(&(*t, v.to_bits())))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} samples acknowledged before the snapshot are not in it, e.g. {:?}",
        lost.len(),
        want_samples.len(),
        &lost[..lost.len().min(5)]
    );
    let (_, dashboard) = copy.get_json("/api/dashboards/kept").await;
    assert_eq!(dashboard["title"], "Kept");
    assert_no_damage(&copy, "the daemon serving the snapshot");
    copy.stop().await;

    // The original restarts with the snapshot in its directory: no store
    // takes it for its own, nothing is reported damaged or swept.
    daemon.stop().await;
    let mut daemon = Strand::spawn(STRAND_BINARY, &data, &flags).await;
    daemon.set_read_token(READ);
    let (status, _) = daemon
        .get_json(&format!("/api/traces/{}", hex::encode(want_traces[0])))
        .await;
    assert_eq!(status, 200);
    assert_no_damage(&daemon, "the original daemon restarted");
    assert!(snapshot.join(sealed).exists() && snapshot.join("wal").is_dir());
    daemon.stop().await;
}

/// Incompressible log lines of `bytes` each, as one `_bulk` body.
fn bulk_of_random_lines(lines: usize, bytes: usize) -> String {
    let mut body = String::new();
    for _ in 0..lines {
        let noise: String = (0..bytes / 16)
            .map(|_| format!("{:016x}", rand::random::<u64>()))
            .collect();
        body.push_str("{\"create\":{}}\n");
        body.push_str(&format!("{{\"message\":\"bulky {noise}\"}}\n"));
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_on_another_filesystem_is_copied_and_a_full_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let disk = Tmpfs::mount(1);
    std::os::unix::fs::symlink(disk.path(), data.join("snapshots")).unwrap();
    let daemon = Strand::start(&data, &[]).await;
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let response = client
            .post(daemon.url("/_bulk"))
            .header("content-type", "application/x-ndjson")
            .body(bulk_of_random_lines(8, 64 << 10))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    // 2 MiB of logs do not fit in 1 MiB: refused, and nothing left.
    let (status, answer) = request_snapshot(&daemon, None).await;
    assert_eq!(status, 507, "{answer}");
    assert_eq!(answer["status"], "error");
    assert!(
        answer["error"].as_str().unwrap().contains("No space left"),
        "{answer}"
    );
    let left: Vec<_> = std::fs::read_dir(disk.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed snapshot left {left:?}");

    disk.resize(64);
    let (status, answer) = request_snapshot(&daemon, None).await;
    assert_eq!(status, 200, "{answer}");
    let snapshot = PathBuf::from(answer["data"]["path"].as_str().unwrap());
    let data_device = std::fs::metadata(&data).unwrap().dev();
    let mut files = 0;
    for entry in walk(&snapshot) {
        assert_ne!(std::fs::metadata(&entry).unwrap().dev(), data_device);
        files += 1;
    }
    assert!(files > 5, "{files} files");
    let metrics = daemon.self_metrics().await;
    for outcome in ["success", "failure"] {
        assert!(
            metrics.contains(&format!(
                "strand_snapshots_total{{outcome=\"{outcome}\"}} 1"
            )),
            "{metrics}"
        );
    }
    daemon.stop().await;

    let copy = Strand::start(&snapshot, &[]).await;
    let (status, page) = copy.get_json("/api/logs?q=bulky&start=0&limit=100").await;
    assert_eq!(status, 200);
    assert_eq!(page["logs"].as_array().unwrap().len(), 32, "{page}");
    copy.stop().await;
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
