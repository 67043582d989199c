//! The `logs` benchmark: OTLP/gRPC log ingest with durable acks, how soon an
//! acknowledged log is searchable, bytes on disk against raw bytes, search
//! and histogram latency on the stored data after a restart, and the same
//! documents indexed by bare tantivy in this process for comparison: by rate,
//! and by CPU time per line (the daemon's over the load, this process's over
//! the baseline), which other work on the machine hardly distorts.
//!
//! "Raw bytes" of a line are what a plain-text log file would hold: body,
//! severity text, service name, and attribute keys and values.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

use crate::LogsArgs;
use crate::baseline;
use crate::daemon::{self, Daemon, Scratch};
use crate::nodes::{self, Nodes};
use crate::report::{JsonObject, round};
use crate::stats::Summary;

const SERVICES: [&str; 4] = ["gateway", "order", "inventory", "payment"];
const POOL_REQUESTS: usize = 64;
const STOP_TIMEOUT: Duration = Duration::from_secs(300);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);
const REJECT_BACKOFF: Duration = Duration::from_millis(50);
/// Bounds one freshness probe.
const FRESHNESS_TIMEOUT: Duration = Duration::from_secs(10);

/// A pre-built export request and its raw size.
#[derive(Clone)]
pub struct Batch {
    pub request: ExportLogsServiceRequest,
    pub lines: u64,
    pub raw_bytes: u64,
}

fn string(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

fn int(value: i64) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::IntValue(value)),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

/// One realistic line of `service`: (severity number, text, body, attributes).
fn line(rng: &mut impl Rng, service: usize) -> (i32, &'static str, String, Vec<KeyValue>) {
    let order = rng.random_range(100_000..999_999i64);
    let customer = format!("c-{}", rng.random_range(1_000..9_999));
    let millis = rng.random_range(1..900i64);
    let roll = rng.random_range(0..100);
    let (severity, text) = match roll {
        0..=2 => (17, "ERROR"),
        3..=9 => (13, "WARN"),
        10..=19 => (5, "DEBUG"),
        _ => (9, "INFO"),
    };
    let (body, attributes) = match (SERVICES[service], severity) {
        ("gateway", _) => {
            let (method, path) = [
                ("GET", "/api/products"),
                ("POST", "/api/orders"),
                ("GET", "/api/orders/{id}"),
            ][rng.random_range(0..3)];
            let status = if severity == 17 { 502 } else { 200 };
            (
                format!(
                    "{method} {path} {status} {millis}ms client=10.0.{}.{} user-agent=\"shop-load/1.4 (linux)\" request_id={:016x}",
                    rng.random_range(0..255),
                    rng.random_range(0..255),
                    rng.random::<u64>()
                ),
                vec![
                    kv("http.method", string(method)),
                    kv("http.route", string(path)),
                    kv("http.status_code", int(status)),
                    kv("duration_ms", int(millis)),
                ],
            )
        }
        ("payment", 17) => (
            format!(
                "card declined for order {order} customer {customer}: issuer answered 05 do not honor after {millis}ms, retry 1 of 3 scheduled"
            ),
            vec![
                kv("order_id", int(order)),
                kv("customer_id", string(customer)),
                kv("payment.provider", string("acme-pay")),
            ],
        ),
        ("payment", _) => (
            format!(
                "charged {}.{:02} EUR for order {order} customer {customer} via acme-pay in {millis}ms, authorization {:08x}",
                rng.random_range(5..500),
                rng.random_range(0..100),
                rng.random::<u32>()
            ),
            vec![
                kv("order_id", int(order)),
                kv("customer_id", string(customer)),
                kv("duration_ms", int(millis)),
            ],
        ),
        ("inventory", 13) => (
            format!(
                "slow query on stock table took {millis}ms: SELECT qty FROM stock WHERE sku = 'sku-{}' FOR UPDATE",
                rng.random_range(1_000..9_999)
            ),
            vec![
                kv("db.system", string("sled")),
                kv("duration_ms", int(millis)),
            ],
        ),
        ("inventory", _) => (
            format!(
                "inventory reserved sku-{} qty {} for order {order}, {} left in warehouse eu-{}",
                rng.random_range(1_000..9_999),
                rng.random_range(1..5),
                rng.random_range(0..400),
                rng.random_range(1..4)
            ),
            vec![kv("order_id", int(order)), kv("warehouse", string("eu"))],
        ),
        (_, 17) => (
            format!(
                "failed to create order {order} for customer {customer}: payment service returned UNAVAILABLE after {millis}ms (attempt 3)"
            ),
            vec![
                kv("order_id", int(order)),
                kv("customer_id", string(customer)),
            ],
        ),
        _ => (
            format!(
                "order {order} created for customer {customer} with {} items, total {}.{:02} EUR",
                rng.random_range(1..6),
                rng.random_range(5..500),
                rng.random_range(0..100)
            ),
            vec![
                kv("order_id", int(order)),
                kv("customer_id", string(customer)),
                kv("items", int(rng.random_range(1..6))),
            ],
        ),
    };
    (severity, text, body, attributes)
}

fn raw_size(service: &str, text: &str, body: &str, attributes: &[KeyValue]) -> u64 {
    let attributes: usize = attributes
        .iter()
        .map(|kv| {
            kv.key.len()
                + match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.len(),
                    Some(any_value::Value::IntValue(i)) => i.to_string().len(),
                    _ => 0,
                }
        })
        .sum();
    (service.len() + text.len() + body.len() + attributes) as u64
}

/// A request of `lines` log lines from the four services.
pub fn build_batch(rng: &mut impl Rng, lines: usize) -> Batch {
    let mut raw_bytes = 0;
    let resource_logs = (0..SERVICES.len())
        .map(|service| {
            let log_records = (0..lines / SERVICES.len()
                + usize::from(service < lines % SERVICES.len()))
                .map(|_| {
                    let (severity, text, body, mut attributes) = line(rng, service);
                    attributes.push(kv(
                        "code.namespace",
                        string(format!("shop_{}::handlers", SERVICES[service])),
                    ));
                    attributes.push(kv("thread.name", string("tokio-runtime-worker")));
                    raw_bytes += raw_size(SERVICES[service], text, &body, &attributes);
                    let traced = rng.random_range(0..10) == 0;
                    LogRecord {
                        severity_number: severity,
                        severity_text: text.into(),
                        body: string(body),
                        attributes,
                        trace_id: if traced { vec![1; 16] } else { vec![] },
                        span_id: if traced { vec![1; 8] } else { vec![] },
                        ..Default::default()
                    }
                })
                .collect();
            ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", string(SERVICES[service])),
                        kv("service.version", string("1.4.2")),
                        kv(
                            "host.name",
                            string(format!("{}-{}", SERVICES[service], rng.random_range(0..3))),
                        ),
                        kv("deployment.environment", string("production")),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    Batch {
        request: ExportLogsServiceRequest { resource_logs },
        lines: lines as u64,
        raw_bytes,
    }
}

/// A copy of `batch` stamped with the current time and fresh trace ids.
pub fn restamp(batch: &Batch, rng: &mut impl Rng, now_nanos: u64) -> ExportLogsServiceRequest {
    let mut request = batch.request.clone();
    for record in request
        .resource_logs
        .iter_mut()
        .flat_map(|r| r.scope_logs.iter_mut())
        .flat_map(|s| s.log_records.iter_mut())
    {
        record.time_unix_nano = now_nanos;
        record.observed_time_unix_nano = now_nanos;
        if !record.trace_id.is_empty() {
            rng.fill(&mut record.trace_id[..]);
            rng.fill(&mut record.span_id[..]);
            record.trace_id[0] |= 1;
            record.span_id[0] |= 1;
        }
    }
    request
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Counters {
    stop: AtomicBool,
    line_limit: Option<u64>,
    reserved: AtomicU64,
    lines: AtomicU64,
    raw_bytes: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

async fn client(
    counters: Arc<Counters>,
    pool: Arc<Vec<Batch>>,
    channel: Channel,
    gzip: bool,
) -> Vec<f64> {
    let mut client = LogsServiceClient::new(channel).max_encoding_message_size(usize::MAX);
    if gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut latencies = Vec::new();
    while !counters.stop.load(Relaxed) {
        let batch = &pool[rng.random_range(0..pool.len())];
        if let Some(limit) = counters.line_limit
            && counters.reserved.fetch_add(batch.lines, Relaxed) >= limit
        {
            break;
        }
        let request = restamp(batch, &mut rng, now_nanos());
        let started = Instant::now();
        match client.export(request).await {
            Ok(_) => {
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
                counters.lines.fetch_add(batch.lines, Relaxed);
                counters.raw_bytes.fetch_add(batch.raw_bytes, Relaxed);
            }
            Err(status) => {
                if counters.line_limit.is_some() {
                    counters.reserved.fetch_sub(batch.lines, Relaxed);
                }
                let counter = match status.code() {
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable => &counters.rejected,
                    _ => &counters.errors,
                };
                counter.fetch_add(1, Relaxed);
                tokio::time::sleep(REJECT_BACKOFF).await;
            }
        }
    }
    latencies
}

/// Once a second: one marker log, then how long until a search finds it.
async fn freshness_probe(stop: Arc<AtomicBool>, channel: Channel, http: String) -> Vec<f64> {
    let mut client = LogsServiceClient::new(channel);
    let http_client = reqwest::Client::new();
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        n += 1;
        let token = format!("freshness{n}x{:x}", now_nanos());
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", string("strand-bench"))],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        time_unix_nano: now_nanos(),
                        severity_number: 9,
                        body: string(format!("probe {token}")),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        if client.export(request).await.is_err() {
            continue;
        }
        let acked = Instant::now();
        let url = format!("{http}/api/logs?q={token}&limit=1");
        while acked.elapsed() < FRESHNESS_TIMEOUT {
            let found = match http_client.get(&url).send().await {
                Ok(response) => response
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|body| body["total"].as_u64() == Some(1)),
                Err(_) => false,
            };
            if found {
                latencies.push(acked.elapsed().as_secs_f64() * 1e3);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    latencies
}

/// GETs `path` `count` times (after 10 warm-up calls); latencies in ms and
/// the `total` of the last answer.
pub(crate) async fn time_queries(
    http: &str,
    paths: &[String],
    count: usize,
) -> Result<(Option<Summary>, u64)> {
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(count);
    let mut total = 0;
    for i in 0..count + 10 {
        let url = format!("{http}{}", paths[i % paths.len()]);
        let started = Instant::now();
        let response = client.get(&url).send().await.context("query failed")?;
        ensure!(
            response.status().is_success(),
            "{url} answered {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await.context("query answer")?;
        if i >= 10 {
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
        total = body["total"].as_u64().unwrap_or(0);
    }
    Ok((Summary::of(latencies), total))
}

/// What a load phase measured.
pub(crate) struct LoadResult {
    /// Until the last client got its last answer.
    pub elapsed: Duration,
    pub lines: u64,
    pub raw_bytes: u64,
    /// Every ack latency, in milliseconds.
    pub ack_latencies: Vec<f64>,
    pub rss_peak: u64,
    pub rss_last: u64,
    /// The daemon's CPU time (user + system) over the load, when its pid is
    /// known.
    pub cpu_seconds: Option<f64>,
    pub rejected: u64,
    pub errors: u64,
}

/// [`POOL_REQUESTS`] distinct batches of `lines_per_request` lines.
pub(crate) fn build_pool(lines_per_request: usize) -> Vec<Batch> {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let pool: Vec<Batch> = (0..POOL_REQUESTS)
        .map(|_| build_batch(&mut rng, lines_per_request))
        .collect();
    let pool_raw: u64 = pool.iter().map(|b| b.raw_bytes).sum();
    let pool_lines: u64 = pool.iter().map(|b| b.lines).sum();
    eprintln!(
        "built {POOL_REQUESTS} batches, {:.0} raw bytes per line on average",
        pool_raw as f64 / pool_lines as f64
    );
    pool
}

/// An OTLP/gRPC endpoint with the export timeout.
fn endpoint(grpc_url: &str) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(grpc_url.to_string())?
        .timeout(EXPORT_TIMEOUT)
        .tcp_nodelay(true))
}

/// The load phase: `clients` tasks, each on its own connection (spread over
/// `grpc_urls`, `daemon`'s and any other nodes'), export random batches of
/// `pool` back to back until `lines` lines were sent (or, without a limit,
/// for `duration`), while `daemon`'s RSS is sampled.
pub(crate) async fn run_load(
    daemon: &mut Daemon,
    grpc_urls: &[String],
    pool: &Arc<Vec<Batch>>,
    clients: usize,
    lines: Option<u64>,
    duration: Duration,
    gzip: bool,
) -> Result<LoadResult> {
    let pid = daemon.pid();
    let counters = Arc::new(Counters {
        stop: AtomicBool::new(false),
        line_limit: lines,
        reserved: AtomicU64::new(0),
        lines: AtomicU64::new(0),
        raw_bytes: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let mut channels = Vec::with_capacity(clients);
    for client in 0..clients {
        channels.push(
            endpoint(&grpc_urls[client % grpc_urls.len()])?
                .connect()
                .await
                .context("connecting to OTLP/gRPC")?,
        );
    }
    let cpu_before = pid.map(daemon::cpu_seconds).transpose()?;
    let started = Instant::now();
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|channel| tokio::spawn(client(counters.clone(), pool.clone(), channel, gzip)))
        .collect();
    let mut rss_peak = 0u64;
    let mut rss_last = 0u64;
    // Ticks of 100 ms, so the load's end is seen on time; progress every
    // second.
    let mut ticks = 0u64;
    while !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ticks += 1;
        if !ticks.is_multiple_of(10) {
            continue;
        }
        if let Some(rss) = pid.and_then(daemon::rss_bytes) {
            rss_peak = rss_peak.max(rss);
            rss_last = rss;
        }
        let lines = counters.lines.load(Relaxed);
        eprintln!(
            "[{:>4}s] {lines} lines acked, {:.0} lines/s, rejected {}, errors {}, rss {:.0} MB",
            started.elapsed().as_secs(),
            lines as f64 / started.elapsed().as_secs_f64(),
            counters.rejected.load(Relaxed),
            counters.errors.load(Relaxed),
            rss_last as f64 / 1048576.0
        );
        if counters.line_limit.is_none() && started.elapsed() >= duration {
            counters.stop.store(true, Relaxed);
        }
        if let Some(status) = daemon.exited()? {
            counters.stop.store(true, Relaxed);
            anyhow::bail!("strand exited with {status}:\n{}", daemon.log_tail());
        }
    }
    let elapsed = started.elapsed();
    let cpu_seconds = match (pid, cpu_before) {
        (Some(pid), Some(before)) => Some(daemon::cpu_seconds(pid)? - before),
        _ => None,
    };
    if let Some(rss) = pid.and_then(daemon::rss_bytes) {
        rss_peak = rss_peak.max(rss);
        rss_last = rss;
    }
    let mut ack_latencies = Vec::new();
    for task in tasks {
        ack_latencies.extend(task.await?);
    }
    Ok(LoadResult {
        elapsed,
        lines: counters.lines.load(Relaxed),
        raw_bytes: counters.raw_bytes.load(Relaxed),
        ack_latencies,
        rss_peak,
        rss_last,
        cpu_seconds,
        rejected: counters.rejected.load(Relaxed),
        errors: counters.errors.load(Relaxed),
    })
}

/// Runs the whole benchmark and returns the JSON result line.
pub async fn run(args: &LogsArgs) -> Result<String> {
    ensure!(
        args.clients > 0 && args.lines_per_request > 0,
        "--clients and --lines-per-request must be at least 1"
    );
    crate::daemon::ensure_strand_binary(&args.strand)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = Arc::new(build_pool(args.lines_per_request));
    let pool_lines: u64 = pool.iter().map(|b| b.lines).sum();

    let scratch = Scratch::create(args.keep)?;
    let data_dir = scratch.data_dir();
    let mut nodes = Nodes::start(&args.strand, args.storage, args.nodes, &scratch).await?;
    let grpc_urls = nodes.grpc_urls();
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = tokio::spawn(freshness_probe(
        probe_stop.clone(),
        endpoint(&grpc_urls[0])?.connect().await?,
        nodes.first.http_url(),
    ));
    let load_start_nanos = now_nanos();
    let load = run_load(
        &mut nodes.first,
        &grpc_urls,
        &pool,
        args.clients,
        args.lines,
        Duration::from_secs(args.duration),
        args.gzip,
    )
    .await;
    probe_stop.store(true, Relaxed);
    let load = load?;
    let freshness = probe.await.context("the freshness probe failed")?;
    let (elapsed, lines, raw_bytes) = (load.elapsed, load.lines, load.raw_bytes);
    let load_end_nanos = now_nanos();

    let (clickhouse, stopped) = nodes.stop(STOP_TIMEOUT).await?;
    // The log store's files, or with ClickHouse its tables (the node keeps
    // only its WAL and checkpoints).
    let logs_bytes = match nodes::clickhouse_bytes(clickhouse.as_ref()).await? {
        Some(stored) => stored,
        None => daemon::dir_bytes(&data_dir.join("logs"))?,
    };
    let clickhouse_rss = clickhouse
        .as_ref()
        .and_then(|c| c.pid())
        .and_then(daemon::rss_bytes);
    eprintln!(
        "strand stopped with {} in {:.1}s; logs take {logs_bytes} bytes",
        stopped.status,
        stopped.took.as_secs_f64()
    );
    let second = nodes::restart_first(&args.strand, &scratch, clickhouse.as_ref()).await?;
    let range = format!(
        "&start={}&end={}",
        load_start_nanos - 60_000_000_000,
        load_end_nanos + 60_000_000_000
    );
    let term_paths: Vec<String> = [
        "error",
        "service%3Apayment%20AND%20severity%3Aerror",
        "%22card%20declined%22",
        "attributes.http.status_code%3A502",
        "customer",
    ]
    .iter()
    .map(|q| format!("/api/logs?q={q}&limit=100{range}"))
    .collect();
    let (term_latency, term_total) =
        time_queries(&second.http_url(), &term_paths, args.queries).await?;
    let histogram_paths = vec![format!("/api/logs/histogram?q={range}")];
    let (histogram_latency, histogram_total) =
        time_queries(&second.http_url(), &histogram_paths, args.queries).await?;
    second.stop(STOP_TIMEOUT).await?;

    let bare = if args.no_baseline {
        None
    } else {
        let dir = tempfile_dir(&scratch)?;
        let bare = baseline::index_rate(&pool, lines.min(pool_lines * 50), &dir)?;
        eprintln!(
            "bare tantivy: {:.0} docs/s, {:.1} µs CPU per doc",
            bare.docs_per_s, bare.cpu_us_per_doc
        );
        Some(bare)
    };
    let lines_per_s = lines as f64 / elapsed.as_secs_f64();
    let cpu_us_per_line = load.cpu_seconds.map(|cpu| cpu * 1e6 / lines.max(1) as f64);
    Ok(JsonObject::new()
        .field("bench", "logs")
        .field("duration_s", round(elapsed.as_secs_f64(), 3))
        .field("clients", args.clients)
        .field("lines_acked", lines)
        .field("lines_per_s", round(lines_per_s, 1))
        .field(
            "raw_mb_per_s",
            round(raw_bytes as f64 / 1048576.0 / elapsed.as_secs_f64(), 2),
        )
        .summary("ack_latency_ms", Summary::of(load.ack_latencies))
        .summary("searchable_ms", Summary::of(freshness))
        .object(
            "rss_mb",
            JsonObject::new()
                .field("peak", round(load.rss_peak as f64 / 1048576.0, 1))
                .field("final", round(load.rss_last as f64 / 1048576.0, 1)),
        )
        .field("raw_bytes", raw_bytes)
        .field("bytes_on_disk", logs_bytes)
        .field(
            "disk_to_raw_ratio",
            round(logs_bytes as f64 / raw_bytes.max(1) as f64, 3),
        )
        .summary("term_query_ms", term_latency)
        .field("term_query_last_total", term_total)
        .summary("histogram_ms", histogram_latency)
        .field("histogram_total", histogram_total)
        .field("cpu_us_per_line", cpu_us_per_line.map(|c| round(c, 2)))
        .field(
            "bare_tantivy_docs_per_s",
            bare.as_ref().map(|b| round(b.docs_per_s, 0)),
        )
        .field(
            "bare_tantivy_cpu_us_per_doc",
            bare.as_ref().map(|b| round(b.cpu_us_per_doc, 2)),
        )
        .field(
            "strand_vs_bare_ratio",
            bare.as_ref().map(|b| round(lines_per_s / b.docs_per_s, 3)),
        )
        .field(
            "strand_vs_bare_cpu_ratio",
            bare.as_ref()
                .zip(cpu_us_per_line)
                .map(|(b, strand)| round(b.cpu_us_per_doc / strand, 3)),
        )
        .field("rejected", load.rejected)
        .field("errors", load.errors)
        .field("storage", format!("{:?}", args.storage).to_lowercase())
        .field("nodes", args.nodes)
        .field(
            "clickhouse_rss_mb",
            clickhouse_rss.map(|rss| round(rss as f64 / 1048576.0, 1)),
        )
        .object("machine", JsonObject::new().field("cores", cores))
        .finish())
}

fn tempfile_dir(scratch: &Scratch) -> Result<std::path::PathBuf> {
    let dir = scratch.data_dir().with_file_name("bare-tantivy");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_look_like_shop_logs() {
        let mut rng = SmallRng::seed_from_u64(7);
        let batches: Vec<Batch> = (0..20).map(|_| build_batch(&mut rng, 500)).collect();
        let lines: u64 = batches.iter().map(|b| b.lines).sum();
        assert_eq!(lines, 10_000);
        let raw: u64 = batches.iter().map(|b| b.raw_bytes).sum();
        let average = raw as f64 / lines as f64;
        assert!(
            (150.0..260.0).contains(&average),
            "{average} raw bytes per line"
        );
        let records: Vec<&LogRecord> = batches
            .iter()
            .flat_map(|b| &b.request.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
            .collect();
        let traced = records.iter().filter(|r| !r.trace_id.is_empty()).count();
        assert!((700..1_300).contains(&traced), "{traced} of 10000 traced");
        let errors = records.iter().filter(|r| r.severity_number == 17).count();
        assert!((100..600).contains(&errors), "{errors} errors");
        assert_eq!(batches[0].request.resource_logs.len(), 4);
    }

    #[test]
    fn restamping_sets_time_and_fresh_trace_ids() {
        let mut rng = SmallRng::seed_from_u64(1);
        let batch = build_batch(&mut rng, 100);
        let a = restamp(&batch, &mut rng, 42);
        let b = restamp(&batch, &mut rng, 43);
        let records = |r: &ExportLogsServiceRequest| -> Vec<LogRecord> {
            r.resource_logs
                .iter()
                .flat_map(|r| r.scope_logs.iter())
                .flat_map(|s| s.log_records.clone())
                .collect()
        };
        let (a, b) = (records(&a), records(&b));
        assert!(a.iter().all(|r| r.time_unix_nano == 42));
        let traced: Vec<usize> = (0..a.len())
            .filter(|i| !a[*i].trace_id.is_empty())
            .collect();
        assert!(!traced.is_empty());
        assert!(traced.iter().all(|&i| a[i].trace_id != b[i].trace_id));
    }
}
