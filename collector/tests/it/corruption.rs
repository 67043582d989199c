//! Damaged files are detected, reported and isolated, never fatal: the real
//! daemon writes real data and stops, a test damages one file — 64 bytes
//! flipped in the middle, or the file cut in the middle — and starts it
//! again. It must start, name the file in a `CorruptData` log line and in
//! `strand_corrupt_data_total`, answer 200 (with a warning where something
//! is missing), and lose exactly what the damaged frames or blocks held:
//! each test reads the undamaged file's frames itself to know what that is.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::Value;
use strand_testkit::Strand;

use crate::support::remote_write as rw;
use crate::support::{STRAND_BINARY, prom};

const SERVICE: &str = "corrupt-svc";
const SPANS_PER_TRACE: usize = 4;
/// Bytes flipped in the middle of a file.
const FLIPPED: usize = 64;

/// How a file is damaged.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// 64 bytes in the middle, each XORed with 0xff.
    Flip,
    /// Cut to half its length.
    Cut,
    /// The four-byte length in front of the second zstd frame (a tantivy
    /// document store block's uncompressed size), each byte XORed with 0xff.
    BlockLength,
}

impl Damage {
    /// Damages `path`; returns the byte range no longer as written.
    fn apply(self, path: &Path) -> Range<usize> {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        let damaged = match self {
            Damage::Flip => {
                let end = (middle + FLIPPED).min(bytes.len());
                bytes[middle..end].iter_mut().for_each(|b| *b ^= 0xff);
                middle..end
            }
            Damage::Cut => {
                let len = bytes.len();
                bytes.truncate(middle);
                middle..len
            }
            Damage::BlockLength => {
                const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
                let frame = bytes
                    .windows(4)
                    .enumerate()
                    .filter(|(_, w)| *w == ZSTD_MAGIC)
                    .nth(1)
                    .expect("a second block")
                    .0;
                bytes[frame - 4..frame].iter_mut().for_each(|b| *b ^= 0xff);
                frame - 4..frame
            }
        };
        std::fs::write(path, bytes).unwrap();
        damaged
    }
}

/// The extents of the `[len u32][crc32 u32][payload]` frames of an intact
/// file, in order.
fn frames(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        frames.push(at..at + 8 + len);
        at += 8 + len;
    }
    assert_eq!(at, bytes.len(), "the undamaged file is whole frames");
    frames
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The only file in `dir` whose name ends in `suffix`.
fn only_file(dir: &Path, suffix: &str) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    assert_eq!(
        files.len(),
        1,
        "{suffix} files in {}: {files:?}",
        dir.display()
    );
    files.into_iter().next().unwrap()
}

/// Whether the daemon logged a `CorruptData` line naming a file that starts
/// with `file` (relative to the data directory) and counts it on `/metrics`
/// under `store`.
async fn reported(daemon: &Strand, store: &str, file: &str) -> bool {
    let logged = daemon
        .log()
        .lines()
        .any(|line| line.contains("CorruptData") && line.contains(file));
    let metrics = daemon.self_metrics().await;
    let counted = metrics.lines().any(|line| {
        line.starts_with("strand_corrupt_data_total{")
            && line.contains(&format!("file=\"{file}"))
            && line.contains(&format!("store=\"{store}\""))
    });
    logged && counted
}

async fn assert_reported(daemon: &Strand, store: &str, file: &str) {
    assert!(
        reported(daemon, store, file).await,
        "{store} {file} is not reported:\n{}",
        daemon.log()
    );
}

/// The path of `file` relative to `data`, as reports name it.
fn relative(data: &Path, file: &Path) -> String {
    file.strip_prefix(data).unwrap().display().to_string()
}

fn string_value(text: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(text.into())),
    })
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: string_value(SERVICE),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn trace_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = 0xdd;
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// Traces `ids`, `SPANS_PER_TRACE` spans each, started `start` onwards.
fn trace_request(ids: Range<u64>, start: u64) -> ExportTraceServiceRequest {
    let spans = ids
        .flat_map(|n| {
            (0..SPANS_PER_TRACE as u64).map(move |s| Span {
                trace_id: trace_id(n).to_vec(),
                span_id: (s + 1).to_be_bytes().to_vec(),
                parent_span_id: if s == 0 {
                    vec![]
                } else {
                    s.to_be_bytes().to_vec()
                },
                name: format!("step {s}"),
                start_time_unix_nano: start + n * 1_000 + s,
                end_time_unix_nano: start + n * 1_000 + 500,
                attributes: vec![KeyValue {
                    key: "order.id".into(),
                    value: string_value(&format!("order-{n}")),
                    ..Default::default()
                }],
                ..Default::default()
            })
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends traces `0..count`, `per_request` in each request.
async fn send_traces(daemon: &Strand, count: u64, per_request: u64, start: u64) {
    let mut client = TraceServiceClient::connect(daemon.grpc_endpoint())
        .await
        .unwrap();
    for first in (0..count).step_by(per_request as usize) {
        let last = (first + per_request).min(count);
        client
            .export(trace_request(first..last, start))
            .await
            .unwrap();
    }
}

/// Of traces `0..count`: how many read back whole, and whether any answer
/// carried the damaged-data warning. Every answer must be a 200, and every
/// trace either whole or missing.
async fn read_traces(daemon: &Strand, count: u64) -> (HashSet<u64>, bool) {
    let mut whole = HashSet::new();
    let mut warned = false;
    let ids: Vec<u64> = (0..count).collect();
    for batch in ids.chunks(100) {
        let params: Vec<(&str, String)> = batch
            .iter()
            .map(|&n| ("traceID", hex::encode(trace_id(n))))
            .collect();
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = daemon.get_json_query("/api/traces", &params).await;
        assert_eq!(status, 200, "{body}");
        warned |= !body["errors"].is_null();
        for trace in body["data"].as_array().unwrap() {
            let spans = trace["spans"].as_array().unwrap();
            assert_eq!(spans.len(), SPANS_PER_TRACE, "a trace read back partly");
            let id = spans[0]["traceID"].as_str().unwrap();
            let n = u64::from_str_radix(&id[16..], 16).unwrap();
            assert!(whole.insert(n));
        }
    }
    (whole, warned)
}

/// The trace ids in each frame of a span segment that is a block (the
/// others are search tables).
fn block_traces(segment: &[u8], sent: u64) -> Vec<(Range<usize>, Vec<u64>)> {
    let sent: HashSet<[u8; 16]> = (0..sent).map(trace_id).collect();
    frames(segment)
        .into_iter()
        .filter_map(|frame| {
            let raw = zstd::stream::decode_all(&segment[frame.start + 8..frame.end]).ok()?;
            let count = u32::from_le_bytes(raw.get(0..4)?.try_into().ok()?) as usize;
            let entries = raw.get(4..4 + count.checked_mul(24)?)?;
            let ids: Option<Vec<u64>> = entries
                .chunks(24)
                .map(|entry| {
                    let id: [u8; 16] = entry[..16].try_into().ok()?;
                    sent.contains(&id)
                        .then(|| u64::from_be_bytes(id[8..].try_into().unwrap()))
                })
                .collect();
            Some((frame, ids?))
        })
        .filter(|(_, ids)| !ids.is_empty())
        .collect()
}

async fn span_segment_damage(damage: Damage) {
    const TRACES: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    send_traces(&daemon, TRACES, 250, now_nanos() - 3_600_000_000_000).await;
    daemon.stop().await;

    let segment = only_file(&data.join("traces/blocks"), ".blocks");
    let original = std::fs::read(&segment).unwrap();
    let blocks = block_traces(&original, TRACES);
    let in_blocks: usize = blocks.iter().map(|(_, ids)| ids.len()).sum();
    assert_eq!(in_blocks as u64, TRACES, "every trace is in one block");
    let damaged = damage.apply(&segment);
    let lost: HashSet<u64> = blocks
        .iter()
        .filter(|(frame, _)| overlaps(frame, &damaged))
        .flat_map(|(_, ids)| ids.iter().copied())
        .collect();
    let largest_block = blocks.iter().map(|(_, ids)| ids.len()).max().unwrap();

    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let (whole, warned) = read_traces(&daemon, TRACES).await;
    let expected: HashSet<u64> = (0..TRACES).filter(|n| !lost.contains(n)).collect();
    println!(
        "span segment {damage:?}: {} blocks, {TRACES} traces written, {} kept, {} lost (largest block {largest_block} traces)",
        blocks.len(),
        whole.len(),
        TRACES as usize - whole.len()
    );
    assert_eq!(
        whole, expected,
        "exactly the traces of damaged blocks are lost"
    );
    assert_eq!(warned, !lost.is_empty());
    // A search answers 200 whatever it meets.
    // A search answers 200 whatever it meets, with what it could read, and
    // says so when a damaged block or search table kept traces back.
    let tables_damaged = frames(&original)
        .iter()
        .filter(|frame| overlaps(frame, &damaged))
        .any(|frame| blocks.iter().all(|(block, _)| block != frame));
    let (status, body) = daemon
        .get_json_query(
            "/api/traces",
            &[("service", SERVICE), ("lookback", "3h"), ("limit", "1500")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let found = body["data"].as_array().unwrap();
    println!(
        "span segment {damage:?}: search found {} traces (search table damaged: {tables_damaged})",
        found.len()
    );
    if tables_damaged {
        assert!(!body["errors"].is_null(), "{body}");
    }
    for trace in found {
        assert_eq!(trace["spans"].as_array().unwrap().len(), SPANS_PER_TRACE);
    }
    assert_reported(&daemon, "traces", &relative(&data, &segment)).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_segment_with_flipped_bytes_loses_only_the_damaged_block() {
    span_segment_damage(Damage::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_segment_cut_in_the_middle_loses_only_the_blocks_after_the_cut() {
    span_segment_damage(Damage::Cut).await;
}

async fn wal_segment_damage(damage: Damage) {
    const TRACES: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Spans stay in the WAL: no flush before the kill.
    let args = ["--flush-interval", "1h"];
    let daemon = Strand::spawn(STRAND_BINARY, &data, &args).await;
    send_traces(&daemon, TRACES, 1, now_nanos() - 60_000_000_000).await;
    daemon.kill9();

    let segment = only_file(&data.join("wal"), ".wal2");
    let bytes = std::fs::read(&segment).unwrap();
    // One trace per spans record; its frame payload is `[seq u64][kind u8]..`.
    let span_records: Vec<Range<usize>> = frames(&bytes)
        .into_iter()
        .filter(|frame| bytes[frame.start + 8 + 8] == 1)
        .collect();
    assert_eq!(span_records.len() as u64, TRACES);
    let damaged = damage.apply(&segment);
    let lost = span_records
        .iter()
        .filter(|frame| overlaps(frame, &damaged))
        .count();

    let daemon = Strand::spawn(STRAND_BINARY, &data, &args).await;
    let (whole, _) = read_traces(&daemon, TRACES).await;
    println!(
        "WAL segment {damage:?}: {TRACES} traces written, {} kept, {} lost ({lost} records damaged)",
        whole.len(),
        TRACES as usize - whole.len()
    );
    assert_eq!(whole.len(), TRACES as usize - lost);
    assert_reported(&daemon, "wal", &relative(&data, &segment)).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_segment_with_flipped_bytes_replays_every_other_record() {
    wal_segment_damage(Damage::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_segment_cut_in_the_middle_replays_what_is_before_the_cut() {
    wal_segment_damage(Damage::Cut).await;
}

const SERIES: usize = 1_000;
/// One sealed chunk (120 samples) and 30 in the open chunk per series.
const SAMPLES_PER_SERIES: i64 = 150;
const SAMPLES_PER_CHUNK: usize = 120;

/// Writes `SERIES` series of `SAMPLES_PER_SERIES` samples, one a second up
/// to `end_ms`, and stops the daemon cleanly (series log, chunks, snapshot).
async fn write_series(data: &Path, end_ms: i64) {
    let daemon = Strand::spawn(STRAND_BINARY, data, &[]).await;
    let start_ms = end_ms - (SAMPLES_PER_SERIES - 1) * 1_000;
    for batch in (0..SERIES).collect::<Vec<_>>().chunks(100) {
        let series = batch
            .iter()
            .map(|n| {
                let samples: Vec<(i64, f64)> = (0..SAMPLES_PER_SERIES)
                    .map(|i| (start_ms + i * 1_000, *n as f64))
                    .collect();
                rw::series("corrupt_m", &[("n", &n.to_string())], &samples)
            })
            .collect();
        rw::write_ok(&daemon, &rw::request(series)).await;
    }
    daemon.stop().await;
}

/// Series of `corrupt_m` and their samples, counted over the whole range.
async fn count_series_and_samples(daemon: &Strand, end_ms: i64) -> (usize, usize) {
    let at = Some(end_ms as f64 / 1_000.0);
    let counts = prom::instant_vector(daemon, "count_over_time(corrupt_m[1h])", at).await;
    let samples = counts.iter().map(|(_, count)| *count as usize).sum();
    (counts.len(), samples)
}

async fn series_log_damage(damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let end_ms = (now_nanos() / 1_000_000) as i64 - 60_000;
    write_series(&data, end_ms).await;

    let log = data.join("metrics/series.log");
    let bytes = std::fs::read(&log).unwrap();
    // The daemon logs series of its own (derived metrics) next to these.
    let entries: Vec<Range<usize>> = frames(&bytes)
        .into_iter()
        .filter(|frame| bytes[frame.clone()].windows(9).any(|w| w == b"corrupt_m"))
        .collect();
    assert_eq!(entries.len(), SERIES);
    let damaged = damage.apply(&log);
    let lost = entries.iter().filter(|e| overlaps(e, &damaged)).count();

    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let (series, samples) = count_series_and_samples(&daemon, end_ms).await;
    println!(
        "series log {damage:?}: {SERIES} series written, {series} kept, {} lost ({lost} entries damaged)",
        SERIES - series
    );
    assert_eq!(series, SERIES - lost);
    assert_eq!(samples, series * SAMPLES_PER_SERIES as usize);
    assert_reported(&daemon, "metrics", &relative(&data, &log)).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_log_with_flipped_bytes_keeps_every_other_series() {
    series_log_damage(Damage::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_log_cut_in_the_middle_keeps_the_series_before_the_cut() {
    series_log_damage(Damage::Cut).await;
}

async fn chunk_file_damage(damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let end_ms = (now_nanos() / 1_000_000) as i64 - 60_000;
    write_series(&data, end_ms).await;

    let file = only_file(&data.join("metrics/chunks"), ".chk");
    let chunks = frames(&std::fs::read(&file).unwrap());
    assert_eq!(chunks.len(), SERIES, "one sealed chunk per series");
    let damaged = damage.apply(&file);
    let lost = chunks.iter().filter(|c| overlaps(c, &damaged)).count();

    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let (series, samples) = count_series_and_samples(&daemon, end_ms).await;
    let written = SERIES * SAMPLES_PER_SERIES as usize;
    println!(
        "chunk file {damage:?}: {written} samples written, {samples} kept, {} lost ({lost} chunks damaged)",
        written - samples
    );
    assert_eq!(series, SERIES, "every series keeps its open chunk");
    assert_eq!(samples, written - lost * SAMPLES_PER_CHUNK);
    assert_reported(&daemon, "metrics", &relative(&data, &file)).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_file_with_flipped_bytes_loses_only_the_damaged_chunk() {
    chunk_file_damage(Damage::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_file_cut_in_the_middle_loses_only_the_chunks_after_the_cut() {
    chunk_file_damage(Damage::Cut).await;
}

const LOGS: usize = 5_000;

async fn send_logs(daemon: &Strand) {
    let mut client = LogsServiceClient::connect(daemon.grpc_endpoint())
        .await
        .unwrap();
    let now = now_nanos() - 60_000_000_000;
    for first in (0..LOGS).step_by(500) {
        let log_records = (first..first + 500)
            .map(|n| LogRecord {
                time_unix_nano: now + n as u64,
                severity_number: 9,
                body: string_value(&format!("corrupt record {n} with some words to store")),
                ..Default::default()
            })
            .collect();
        client
            .export(ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: resource(),
                    scope_logs: vec![ScopeLogs {
                        log_records,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
    }
}

/// Every record a search for all of them pages through, and whether a page
/// carried a warning; every page must be a 200.
async fn read_logs(daemon: &Strand) -> (usize, bool) {
    let (mut read, mut warned) = (0, false);
    let mut cursor = String::new();
    loop {
        let (status, body): (u16, Value) = daemon
            .get_json_query(
                "/api/logs",
                &[("q", "corrupt"), ("limit", "1000"), ("cursor", &cursor)],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        read += body["logs"].as_array().unwrap().len();
        warned |= body.get("warnings").is_some();
        match body["nextCursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return (read, warned),
        }
    }
}

/// The largest file of the only log partition, where the bulk of the
/// records is.
fn largest_partition_file(data: &Path) -> PathBuf {
    let partitions: Vec<PathBuf> = std::fs::read_dir(data.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(partitions.len(), 1);
    std::fs::read_dir(&partitions[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| p.metadata().unwrap().len())
        .unwrap()
}

/// Writes `LOGS` records into one partition, damages its largest file and
/// starts again; returns the records a search still reads, whether it
/// warned, the daemon and the damaged file.
async fn log_partition_damage(data: &Path, damage: Damage) -> (usize, bool, Strand, PathBuf) {
    let daemon = Strand::spawn(STRAND_BINARY, data, &[]).await;
    send_logs(&daemon).await;
    daemon.stop().await;
    let file = largest_partition_file(data);
    damage.apply(&file);
    let daemon = Strand::spawn(STRAND_BINARY, data, &[]).await;
    let (read, warned) = read_logs(&daemon).await;
    println!(
        "log partition {damage:?} ({}): {LOGS} records written, {read} kept, {} lost",
        relative(data, &file),
        LOGS - read
    );
    (read, warned, daemon, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_partition_with_flipped_bytes_answers_what_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (read, warned, daemon, file) = log_partition_damage(&data, Damage::Flip).await;
    assert!(read < LOGS && warned, "the damage is noticed and said");
    assert_reported(&daemon, "logs", &relative(&data, &file)).await;
    daemon.stop().await;
}

/// Tantivy zero-fills a buffer of a block's stated length (up to 4 GiB)
/// before decompressing it, for every record read from it: a damaged length
/// must cost that block's records, not every search's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_partition_with_a_damaged_block_length_answers_what_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (read, warned, daemon, file) = log_partition_damage(&data, Damage::BlockLength).await;
    assert!(read < LOGS && warned, "the damage is noticed and said");
    assert_reported(&daemon, "logs", &relative(&data, &file)).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_partition_cut_in_the_middle_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (read, _, daemon, file) = log_partition_damage(&data, Damage::Cut).await;
    let partition = file.parent().unwrap();
    let quarantined = data.join("quarantine").join(relative(&data, partition));
    assert!(quarantined.is_dir(), "{} is kept", quarantined.display());
    assert!(!partition.exists());
    assert_eq!(read, 0, "the partition's records are quarantined with it");
    assert_reported(&daemon, "logs", &relative(&data, partition)).await;
    daemon.stop().await;
}

/// A damaged run of the trace-id index is set aside, reported and rebuilt
/// from the span blocks it indexed when the daemon starts: nothing is lost.
async fn trace_run_damage(damage: Damage) {
    const TRACES: u64 = 1_000;
    let (_dir, data) = flushed_traces(TRACES).await;
    let run = std::fs::read_dir(data.join("traces/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a run file");
    damage.apply(&run);

    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let (whole, warned) = read_traces(&daemon, TRACES).await;
    println!(
        "trace run {damage:?}: {TRACES} traces written, {} found by id",
        whole.len()
    );
    assert_eq!(whole.len(), TRACES as usize, "{}", daemon.log());
    assert!(!warned);
    assert!(data.join("quarantine").join(relative(&data, &run)).exists());
    assert_reported(&daemon, "traces", &relative(&data, &run)).await;
    assert!(daemon.log().contains("SpanIndexRunRebuilt"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_run_with_flipped_bytes_is_rebuilt_from_its_blocks() {
    trace_run_damage(Damage::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_run_cut_in_the_middle_is_rebuilt_from_its_blocks() {
    trace_run_damage(Damage::Cut).await;
}

/// A data directory (in the returned temporary one) holding `count`
/// traces of an hour ago, flushed by a daemon since stopped.
async fn flushed_traces(count: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    send_traces(&daemon, count, 250, now_nanos() - 3_600_000_000_000).await;
    daemon.stop().await;
    (dir, data)
}

async fn trace_index_damage(damage: Damage) {
    const TRACES: u64 = 1_000;
    let (_dir, data) = flushed_traces(TRACES).await;
    let index_file = data.join("traces/index/db");
    damage.apply(&index_file);

    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let (whole, _) = read_traces(&daemon, TRACES).await;
    println!(
        "trace index {damage:?}: {TRACES} traces written, {} kept, {} lost",
        whole.len(),
        TRACES as usize - whole.len()
    );
    let (status, body) = daemon
        .get_json_query("/api/traces", &[("service", SERVICE), ("lookback", "3h")])
        .await;
    assert_eq!(status, 200, "{body}");
    if whole.len() < TRACES as usize {
        // Nothing is deleted: the span blocks the index no longer maps are
        // kept in quarantine, with the index itself if sled cannot open it.
        let aside = data.join("quarantine/traces/blocks");
        let kept: Vec<PathBuf> = std::fs::read_dir(&aside)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", aside.display(), daemon.log()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!kept.is_empty());
        assert!(
            reported(&daemon, "traces", "quarantine/traces/blocks").await
                || reported(&daemon, "traces", "traces/index").await,
            "{}",
            daemon.log()
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_index_with_flipped_bytes_starts() {
    trace_index_damage(Damage::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_index_cut_in_the_middle_starts() {
    trace_index_damage(Damage::Cut).await;
}

/// A damaged head snapshot is quarantined, and what the sealed chunks hold
/// is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_snapshot_cut_in_the_middle_keeps_the_sealed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let end_ms = (now_nanos() / 1_000_000) as i64 - 60_000;
    write_series(&data, end_ms).await;
    let snapshot = data.join("metrics/head.snap");
    Damage::Cut.apply(&snapshot);
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let (series, samples) = count_series_and_samples(&daemon, end_ms).await;
    println!(
        "head snapshot Cut: {} samples written, {samples} kept",
        SERIES * SAMPLES_PER_SERIES as usize
    );
    assert_eq!(series, SERIES);
    assert_eq!(samples, SERIES * SAMPLES_PER_CHUNK);
    assert!(data.join("quarantine/metrics/head.snap").is_file());
    assert_reported(&daemon, "metrics", "metrics/head.snap").await;
    daemon.stop().await;
}

/// A chunk file damaged while the daemon runs: a query skips the damaged
/// chunks and answers 200 with Prometheus's `warnings`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_file_damaged_while_running_answers_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let end_ms = (now_nanos() / 1_000_000) as i64 - 60_000;
    write_series(&data, end_ms).await;
    let daemon = Strand::spawn(STRAND_BINARY, &data, &[]).await;
    let file = only_file(&data.join("metrics/chunks"), ".chk");
    let chunks = frames(&std::fs::read(&file).unwrap());
    let damaged = Damage::Flip.apply(&file);
    let lost = chunks.iter().filter(|c| overlaps(c, &damaged)).count();

    let time = (end_ms as f64 / 1_000.0).to_string();
    let (status, body) = daemon
        .get_json_query(
            "/api/v1/query",
            &[
                ("query", "sum(count_over_time(corrupt_m[1h]))"),
                ("time", &time),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let samples: f64 = body["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let written = SERIES * SAMPLES_PER_SERIES as usize;
    println!(
        "chunk file damaged while running: {written} samples written, {samples} answered ({lost} chunks damaged)"
    );
    assert_eq!(samples as usize, written - lost * SAMPLES_PER_CHUNK);
    assert!(
        body["warnings"].as_array().is_some_and(|w| !w.is_empty()),
        "{body}"
    );
    assert_reported(&daemon, "metrics", &relative(&data, &file)).await;
    daemon.stop().await;
}
