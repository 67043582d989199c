//! The `metrics` benchmark: Prometheus remote-write ingest with durable
//! acks, bytes per sample on disk, memory per active series, and PromQL
//! range-query latency, for Strand and (unless `--no-prometheus`) for
//! Prometheus on the same machine with the identical load.
//!
//! Phases, in order:
//! 1. generate `--rounds` scrapes of `--series` series and encode them as
//!    remote-write requests (see [`crate::remote_write`]); both systems get
//!    exactly these bytes;
//! 2. Strand: start it, note its RSS, send the load with `--clients`
//!    clients, note its RSS again, stop it with SIGTERM, measure
//!    `<data>/metrics`, restart it and time `--queries` range queries. With
//!    `--storage clickhouse`, `--nodes` nodes over one ClickHouse share the
//!    clients (each client's series go to one node), the bytes are
//!    ClickHouse's, and the queries go to a node that never saw the data;
//! 3. Prometheus: the same, measuring its `wal` and `chunks_head`, which hold
//!    the data of a Prometheus that has not cut a block yet.
//!
//! The range queries are `sum by (job) (rate(x[5m]))` over the last hour of
//! the generated data at a 15 s step, and `sum by (job) (x)` over the same
//! hour at a 60 s step (a selector read at steps, which a store may
//! downsample): 1,000 series in, 10 out. The answers of both systems are
//! compared point by point.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, ensure};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use serde_json::Value;

use crate::MetricsArgs;
use crate::daemon::{self, Process, Scratch};
use crate::nodes::{self, Nodes};
use crate::remote_write::{
    Payload, QUERY_METRIC, QUERY_SERIES, SCRAPE_INTERVAL_MS, SeriesSet, Values,
};
use crate::report::{JsonObject, round};
use crate::stats::Summary;

/// Seed of the generated data, so runs are comparable.
pub(crate) const SEED: u64 = 20_251_125;
/// Length of the queried range.
const QUERY_RANGE_S: i64 = 3_600;
/// Unmeasured queries first (connection setup, cold caches).
const WARMUP_QUERIES: usize = 5;
/// Series the range query returns (one per job).
const QUERY_GROUPS: usize = 10;
/// Largest relative difference between the two answers still called a match.
const MATCH_TOLERANCE: f64 = 1e-9;
/// Pause after a 429 / 503 answer before the request is sent again.
const REJECT_BACKOFF: Duration = Duration::from_millis(50);
/// Pause after a failed request before it is sent again.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Sends of one request that failed (not rejected) before it is given up.
const MAX_ATTEMPTS: u32 = 5;
/// Per-request timeout: a hung receiver yields errors, not a hung benchmark.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Without a single answer for this long the receiver is considered stuck.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM to exit.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(300);

/// What the load phase measured on one system.
pub(crate) struct LoadResult {
    pub elapsed: Duration,
    pub samples: u64,
    requests: u64,
    rejected: u64,
    refused: u64,
    errors: u64,
    pub ack_latency: Option<Summary>,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub rss_peak: Option<u64>,
}

/// What the query phase measured on one system.
pub(crate) struct QueryResult {
    pub latency: Option<Summary>,
    pub errors: u64,
    /// The `data.result` of the first measured answer.
    answer: Value,
}

/// Everything measured on one system.
struct Side {
    load: LoadResult,
    bytes_on_disk: u64,
    restart_ready: Duration,
    queries: QueryResult,
    selector_queries: QueryResult,
}

/// A range query, in the parameters `/api/v1/query_range` takes.
pub(crate) struct RangeQuery {
    expr: String,
    start_s: i64,
    end_s: i64,
    step_s: i64,
}

impl RangeQuery {
    /// `sum by (job) (rate(x[5m]))` over `[start_s, end_s]` at the scrape
    /// interval: every sample of the range is read.
    pub fn rate(start_s: i64, end_s: i64) -> RangeQuery {
        RangeQuery {
            expr: format!("sum by (job) (rate({QUERY_METRIC}[5m]))"),
            start_s,
            end_s,
            step_s: SCRAPE_INTERVAL_MS / 1000,
        }
    }

    /// `sum by (job) (x)` over `[start_s, end_s]` every minute, as a
    /// dashboard panel of an hour asks: a selector read at steps four
    /// scrapes apart.
    fn selector(start_s: i64, end_s: i64) -> RangeQuery {
        RangeQuery {
            expr: format!("sum by (job) ({QUERY_METRIC})"),
            start_s,
            end_s,
            step_s: 60,
        }
    }

    fn params(&self) -> [(&'static str, String); 4] {
        [
            ("query", self.expr.clone()),
            ("start", self.start_s.to_string()),
            ("end", self.end_s.to_string()),
            ("step", format!("{}s", self.step_s)),
        ]
    }
}

/// Counters shared by the client tasks and the monitor.
struct Shared {
    stop: AtomicBool,
    samples: AtomicU64,
    requests: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    /// Milliseconds since load start of the latest answer (stall detection).
    last_answer_ms: AtomicU64,
    started: Instant,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn answered(&self) {
        self.last_answer_ms.fetch_max(
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    fn note_error(&self, message: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(message);
    }

    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "none".into())
    }
}

/// Runs the whole benchmark and returns the JSON result line.
pub async fn run(args: &MetricsArgs) -> Result<String> {
    ensure!(
        args.clients > 0 && args.samples_per_request > 0 && args.rounds > 0,
        "--clients, --samples-per-request and --rounds must be at least 1"
    );
    ensure!(
        args.series >= QUERY_SERIES,
        "--series must be at least {QUERY_SERIES} (the queried family alone has that many)"
    );
    crate::daemon::ensure_strand_binary(&args.strand)?;
    ensure!(
        args.no_prometheus || args.prometheus.is_file(),
        "prometheus binary not found at {} (pass --prometheus PATH or --no-prometheus)",
        args.prometheus.display()
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // 1. The load: scrapes 15 s apart, aligned, the last one before now.
    let rounds = i64::try_from(args.rounds).context("--rounds is too large")?;
    let start_ms = (now_ms() / SCRAPE_INTERVAL_MS - rounds - 1) * SCRAPE_INTERVAL_MS;
    let end_ms = start_ms + rounds * SCRAPE_INTERVAL_MS;
    let query = RangeQuery::rate(end_ms / 1000 - QUERY_RANGE_S, end_ms / 1000);
    let selector_query = RangeQuery::selector(end_ms / 1000 - QUERY_RANGE_S, end_ms / 1000);
    let built = Instant::now();
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut set = SeriesSet::new(args.series, Values::Realistic, &mut rng);
    let payloads = Arc::new(set.build_requests(
        args.clients,
        args.samples_per_request,
        args.rounds,
        start_ms,
        &mut rng,
    )?);
    let samples: u64 = payloads.iter().flatten().map(|p| p.samples).sum();
    let requests = payloads.iter().map(Vec::len).sum::<usize>();
    let body_bytes: usize = payloads.iter().flatten().map(|p| p.body.len()).sum();
    eprintln!(
        "built {requests} requests: {} series ({} counters), {samples} samples over {:.1} h, \
         {:.1} MB snappy ({:.1} bytes/sample on the wire) in {:.1}s",
        set.len(),
        set.counters(),
        (end_ms - start_ms) as f64 / 3.6e6,
        body_bytes as f64 / 1048576.0,
        body_bytes as f64 / samples as f64,
        built.elapsed().as_secs_f64()
    );
    if rounds * SCRAPE_INTERVAL_MS < (QUERY_RANGE_S + 300) * 1000 {
        eprintln!("warning: --rounds covers less than the queried hour plus the 5m rate window");
    }

    // 2. Strand.
    let scratch = Scratch::create(args.keep)?;
    let data_dir = scratch.data_dir();
    let mut nodes = Nodes::start(&args.strand, args.storage, args.nodes, &scratch).await?;
    let other_urls: Vec<String> = nodes.others.iter().map(|node| node.http_url()).collect();
    let load = run_load(
        "strand",
        &mut nodes.first,
        &other_urls,
        &payloads,
        args.clients,
    )
    .await?;
    let (clickhouse, stopped) = nodes.stop(STOP_TIMEOUT).await?;
    eprintln!(
        "strand: exited with {} after {:.2}s",
        stopped.status,
        stopped.took.as_secs_f64()
    );
    // The metrics store's files, or with ClickHouse its tables (a node
    // keeps only its WAL and its last hours).
    let bytes_on_disk = match nodes::clickhouse_bytes(clickhouse.as_ref()).await? {
        Some(stored) => stored,
        None => {
            let metrics_dir = data_dir.join("metrics");
            daemon::print_breakdown(&metrics_dir);
            daemon::dir_bytes(&metrics_dir)?
        }
    };
    let restarted = Instant::now();
    let mut second = nodes::restart_first(&args.strand, &scratch, clickhouse.as_ref()).await?;
    let restart_ready = restarted.elapsed();
    eprintln!(
        "strand: ready again after {:.2}s",
        restart_ready.as_secs_f64()
    );
    if clickhouse.is_some() {
        // Queried through a node that never saw the data: ClickHouse alone
        // answers.
        second.stop(STOP_TIMEOUT).await?;
        second = nodes::start_reader(&args.strand, &scratch, clickhouse.as_ref()).await?;
    }
    let queries = run_queries("strand", &second.http_url(), &query, args.queries).await?;
    let selector_queries =
        run_queries("strand", &second.http_url(), &selector_query, args.queries).await?;
    second.stop(STOP_TIMEOUT).await?;
    drop(clickhouse);
    let strand = Side {
        load,
        bytes_on_disk,
        restart_ready,
        queries,
        selector_queries,
    };

    // 3. Prometheus.
    let prometheus = if args.no_prometheus {
        None
    } else {
        let storage = scratch.path.join("prometheus");
        let log = scratch.path.join("prometheus.log");
        eprintln!(
            "prometheus: starting {} on {}",
            args.prometheus.display(),
            storage.display()
        );
        let mut first = daemon::start_prometheus(&args.prometheus, &storage, &log, &[]).await?;
        let load = run_load("prometheus", &mut first, &[], &payloads, args.clients).await?;
        first.stop(STOP_TIMEOUT).await?;
        let bytes_on_disk = daemon::dir_bytes(&storage.join("wal"))?
            + daemon::dir_bytes(&storage.join("chunks_head"))?;
        daemon::print_breakdown(&storage);
        let restarted = Instant::now();
        let second = daemon::start_prometheus(&args.prometheus, &storage, &log, &[]).await?;
        let restart_ready = restarted.elapsed();
        eprintln!(
            "prometheus: ready again after {:.2}s",
            restart_ready.as_secs_f64()
        );
        let queries = run_queries("prometheus", &second.http_url(), &query, args.queries).await?;
        let selector_queries = run_queries(
            "prometheus",
            &second.http_url(),
            &selector_query,
            args.queries,
        )
        .await?;
        second.stop(STOP_TIMEOUT).await?;
        Some(Side {
            load,
            bytes_on_disk,
            restart_ready,
            queries,
            selector_queries,
        })
    };
    drop(scratch);

    let comparison = prometheus.as_ref().map(|prom| {
        let rate = compare_answers(&strand.queries.answer, &prom.queries.answer)?;
        let selector = compare_answers(
            &strand.selector_queries.answer,
            &prom.selector_queries.answer,
        )?;
        Ok::<f64, String>(rate.max(selector))
    });
    if let Some(Err(difference)) = &comparison {
        eprintln!("warning: the range-query answers differ: {difference}");
    }
    let rate = |side: &Side| side.load.samples as f64 / side.load.elapsed.as_secs_f64();
    let p50 = |side: &Side| side.queries.latency.map(|l| l.p50);
    let mut report = JsonObject::new()
        .field("bench", "metrics")
        .field("series", args.series)
        .field(
            "storage",
            match args.storage {
                crate::Storage::Embedded => "embedded",
                crate::Storage::ClickHouse => "clickhouse",
            },
        )
        .field("nodes", args.nodes)
        .field("clients", args.clients)
        .field("samples_per_request", args.samples_per_request)
        .field("rounds", args.rounds)
        .field("samples_sent", samples);
    report = side_fields(report, &strand, args.series);
    report = match &prometheus {
        Some(prom) => report.object(
            "prometheus",
            side_fields(JsonObject::new(), prom, args.series),
        ),
        None => report.field("prometheus", None::<u64>),
    };
    Ok(report
        .field(
            "ingest_ratio",
            prometheus
                .as_ref()
                .map(|prom| round(rate(&strand) / rate(prom), 3)),
        )
        .field(
            "query_ratio",
            prometheus
                .as_ref()
                .and_then(|prom| Some(round(p50(&strand)? / p50(prom)?, 3))),
        )
        .field(
            "query_results_match",
            comparison
                .as_ref()
                .map(|c| matches!(c, Ok(diff) if *diff <= MATCH_TOLERANCE)),
        )
        .field("query_max_rel_diff", comparison.and_then(Result::ok))
        .object("machine", JsonObject::new().field("cores", cores))
        .finish())
}

/// Appends what was measured on one system to `report`.
fn side_fields(report: JsonObject, side: &Side, series: usize) -> JsonObject {
    let load = &side.load;
    let duration = load.elapsed.as_secs_f64();
    let mb = |bytes: Option<u64>| bytes.map(|b| round(b as f64 / 1048576.0, 1));
    report
        .field("duration_s", round(duration, 3))
        .field("samples_acked", load.samples)
        .field("samples_per_s", round(load.samples as f64 / duration, 1))
        .field("requests", load.requests)
        .summary("ack_latency_ms", load.ack_latency)
        .field("bytes_on_disk", side.bytes_on_disk)
        .field(
            "bytes_per_sample",
            (load.samples > 0).then(|| round(side.bytes_on_disk as f64 / load.samples as f64, 3)),
        )
        .object(
            "rss_mb",
            JsonObject::new()
                .field("before", mb(load.rss_before))
                .field("after", mb(load.rss_after))
                .field("peak", mb(load.rss_peak)),
        )
        .field(
            "bytes_per_series_rss",
            load.rss_before
                .zip(load.rss_after)
                .map(|(before, after)| round((after as f64 - before as f64) / series as f64, 1)),
        )
        .field(
            "restart_ready_s",
            round(side.restart_ready.as_secs_f64(), 3),
        )
        .summary("range_query_ms", side.queries.latency)
        .summary("selector_query_ms", side.selector_queries.latency)
        .field(
            "query_errors",
            side.queries.errors + side.selector_queries.errors,
        )
        .field("rejected", load.rejected)
        .field("refused", load.refused)
        .field("errors", load.errors)
}

/// How one remote-write request ended.
enum Outcome {
    /// 2xx: stored durably.
    Acked,
    /// 429 / 503: overloaded; send it again later.
    Rejected(String),
    /// 400: (some) samples will never be stored; do not resend.
    Refused(String),
    /// Transport error or any other status.
    Failed(String),
}

/// Sends one remote-write request and fails unless it was stored: for the
/// benchmarks that load data before they measure something else.
pub(crate) async fn write(http: &reqwest::Client, url: &str, body: &[u8]) -> Result<()> {
    match send(http, url, body).await {
        Outcome::Acked => Ok(()),
        Outcome::Rejected(message) | Outcome::Refused(message) | Outcome::Failed(message) => {
            anyhow::bail!("remote write to {url} failed: {message}")
        }
    }
}

async fn send(http: &reqwest::Client, url: &str, body: &[u8]) -> Outcome {
    let sent = http
        .post(url)
        .header(CONTENT_ENCODING, "snappy")
        .header(CONTENT_TYPE, "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body.to_vec())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => return Outcome::Failed(format!("{error:#}")),
    };
    let status = response.status();
    if status.is_success() {
        return Outcome::Acked;
    }
    let text = response.text().await.unwrap_or_default();
    let message = format!("HTTP {}: {}", status.as_u16(), text.trim());
    match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            Outcome::Rejected(message)
        }
        StatusCode::BAD_REQUEST => Outcome::Refused(message),
        _ => Outcome::Failed(message),
    }
}

/// One client: sends the requests of shard `shard` in order, each until it
/// is acked or refused (or failed [`MAX_ATTEMPTS`] times); returns its ack
/// latencies in milliseconds.
async fn client_task(
    shared: Arc<Shared>,
    payloads: Arc<Vec<Vec<Payload>>>,
    shard: usize,
    http: reqwest::Client,
    url: String,
) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(payloads[shard].len());
    for payload in &payloads[shard] {
        let mut failures = 0;
        while !shared.stop.load(Relaxed) {
            let started = Instant::now();
            match send(&http, &url, &payload.body).await {
                Outcome::Acked => {
                    latencies.push(started.elapsed().as_secs_f64() * 1e3);
                    shared.samples.fetch_add(payload.samples, Relaxed);
                    shared.requests.fetch_add(1, Relaxed);
                    shared.answered();
                    break;
                }
                Outcome::Refused(message) => {
                    shared.refused.fetch_add(1, Relaxed);
                    shared.answered();
                    shared.note_error(message);
                    break;
                }
                Outcome::Rejected(message) => {
                    shared.rejected.fetch_add(1, Relaxed);
                    shared.answered();
                    shared.note_error(message);
                    tokio::time::sleep(REJECT_BACKOFF).await;
                }
                Outcome::Failed(message) => {
                    shared.errors.fetch_add(1, Relaxed);
                    shared.note_error(message);
                    failures += 1;
                    if failures >= MAX_ATTEMPTS {
                        break;
                    }
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
        }
    }
    latencies
}

/// The load phase against `process` (strand or Prometheus): one task per
/// shard of `payloads`, each on its own keep-alive connection, while the
/// process's RSS is sampled every 500 ms.
pub(crate) async fn run_load(
    name: &str,
    process: &mut Process,
    others: &[String],
    payloads: &Arc<Vec<Vec<Payload>>>,
    clients: usize,
) -> Result<LoadResult> {
    let pid = process.pid();
    let urls: Vec<String> = std::iter::once(process.http_url())
        .chain(others.iter().cloned())
        .map(|base| format!("{base}/api/v1/write"))
        .collect();
    let url = urls.join(", ");
    let mut http = Vec::with_capacity(clients);
    for _ in 0..clients {
        http.push(
            reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .tcp_nodelay(true)
                .build()
                .context("building HTTP client")?,
        );
    }
    let rss_before = pid.and_then(daemon::rss_bytes);
    let total: u64 = payloads.iter().flatten().map(|p| p.samples).sum();
    eprintln!("{name}: load: {clients} clients, {total} samples to {url}");
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        samples: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_answer_ms: AtomicU64::new(0),
        started: Instant::now(),
        last_error: Mutex::new(None),
    });
    let tasks: Vec<_> = http
        .into_iter()
        .enumerate()
        .map(|(shard, http)| {
            tokio::spawn(client_task(
                shared.clone(),
                payloads.clone(),
                shard,
                http,
                urls[shard % urls.len()].clone(),
            ))
        })
        .collect();

    let mut rss_peak = rss_before;
    let mut ticks = 0u64;
    let mut last_samples = 0u64;
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    while !tasks.iter().all(|task| task.is_finished()) {
        interval.tick().await;
        ticks += 1;
        let rss = pid.and_then(daemon::rss_bytes);
        rss_peak = rss_peak.max(rss);
        let elapsed = shared.started.elapsed();
        if ticks.is_multiple_of(2) {
            let samples = shared.samples.load(Relaxed);
            eprintln!(
                "[{:>4}s] {name}: {samples} samples acked, {} samples/s now, {:.0} samples/s avg, \
                 rejected {}, refused {}, errors {}{}",
                elapsed.as_secs(),
                samples - last_samples,
                samples as f64 / elapsed.as_secs_f64(),
                shared.rejected.load(Relaxed),
                shared.refused.load(Relaxed),
                shared.errors.load(Relaxed),
                rss.map_or(String::new(), |rss| format!(
                    ", rss {:.1} MB",
                    rss as f64 / 1048576.0
                )),
            );
            last_samples = samples;
        }
        let problem = if let Some(status) = process.exited()? {
            Some(anyhow!(
                "{name} exited with {status} during the load; its log ends with:\n{}",
                process.log_tail()
            ))
        } else if elapsed.saturating_sub(Duration::from_millis(shared.last_answer_ms.load(Relaxed)))
            >= STALL_TIMEOUT
        {
            Some(anyhow!(
                "{name} answered no request for {}s; last error: {}",
                STALL_TIMEOUT.as_secs(),
                shared.last_error()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            shared.stop.store(true, Relaxed);
            for task in &tasks {
                task.abort();
            }
            return Err(problem);
        }
    }
    // Until the last answer, not the monitor's next tick (500 ms apart).
    let elapsed = Duration::from_millis(shared.last_answer_ms.load(Relaxed).max(1));
    let rss_after = pid.and_then(daemon::rss_bytes);
    rss_peak = rss_peak.max(rss_after);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("a load client task failed")?);
    }
    let result = LoadResult {
        elapsed,
        samples: shared.samples.load(Relaxed),
        requests: shared.requests.load(Relaxed),
        rejected: shared.rejected.load(Relaxed),
        refused: shared.refused.load(Relaxed),
        errors: shared.errors.load(Relaxed),
        ack_latency: Summary::of(latencies),
        rss_before,
        rss_after,
        rss_peak,
    };
    eprintln!(
        "{name}: load done: {} samples in {:.1}s ({:.0} samples/s), {} requests, {} rejected, \
         {} refused, {} errors (last: {})",
        result.samples,
        elapsed.as_secs_f64(),
        result.samples as f64 / elapsed.as_secs_f64(),
        result.requests,
        result.rejected,
        result.refused,
        result.errors,
        shared.last_error(),
    );
    ensure!(
        result.samples > 0,
        "{name} acknowledged no request; last error: {}",
        shared.last_error()
    );
    Ok(result)
}

/// `count` sequential range queries (after a warm-up) against `base`; each
/// must succeed with one series per job.
pub(crate) async fn run_queries(
    name: &str,
    base: &str,
    query: &RangeQuery,
    count: usize,
) -> Result<QueryResult> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building HTTP client")?;
    let url = format!("{base}/api/v1/query_range");
    let params = query.params();
    let mut latencies = Vec::with_capacity(count);
    let (mut errors, mut answer) = (0u64, Value::Null);
    for i in 0..WARMUP_QUERIES + count {
        let started = Instant::now();
        let response = client
            .get(&url)
            .query(&params)
            .send()
            .await
            .with_context(|| format!("{name}: range query failed"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("{name}: reading a range-query answer"))?;
        let took = started.elapsed();
        let measured = i >= WARMUP_QUERIES;
        if measured {
            latencies.push(took.as_secs_f64() * 1e3);
        }
        match check_answer(status, &body) {
            Ok(result) => answer = result,
            Err(problem) => {
                if errors < 3 {
                    eprintln!("{name}: range query error: {problem}");
                }
                errors += u64::from(measured);
            }
        }
    }
    let latency = Summary::of(latencies);
    if let Some(l) = latency {
        eprintln!(
            "{name}: {count} range queries: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {errors} errors",
            l.p50, l.p99, l.max
        );
    }
    Ok(QueryResult {
        latency,
        errors,
        answer,
    })
}

/// `data.result` of a successful range-query answer with one series per
/// job, or what is wrong with it.
fn check_answer(status: StatusCode, body: &[u8]) -> Result<Value, String> {
    let mut json: Value = serde_json::from_slice(body).map_err(|error| {
        format!(
            "HTTP {status}, body is not JSON ({error}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    if status != StatusCode::OK || json["status"] != "success" {
        return Err(format!("HTTP {status}: {json}"));
    }
    let result = json["data"]["result"].take();
    match result.as_array().map(Vec::len) {
        Some(QUERY_GROUPS) => Ok(result),
        Some(n) => Err(format!("{n} series, expected {QUERY_GROUPS}")),
        None => Err("no data.result array".into()),
    }
}

/// The largest relative difference between two range-query results (`NaN`
/// equals `NaN`), or why they cannot be compared point by point.
fn compare_answers(a: &Value, b: &Value) -> Result<f64, String> {
    fn points(result: &Value) -> Result<BTreeMap<String, Vec<(f64, f64)>>, String> {
        let series = result.as_array().ok_or("no result")?;
        series
            .iter()
            .map(|s| {
                let job = s["metric"]["job"].as_str().ok_or("a series without job")?;
                let values = s["values"].as_array().ok_or("a series without values")?;
                let values = values
                    .iter()
                    .map(|point| {
                        let t = point[0].as_f64().ok_or("a point without a time")?;
                        let v = point[1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .ok_or("a point without a value")?;
                        Ok((t, v))
                    })
                    .collect::<Result<Vec<_>, &str>>()?;
                Ok((job.to_string(), values))
            })
            .collect::<Result<_, &str>>()
            .map_err(String::from)
    }
    let (a, b) = (points(a)?, points(b)?);
    if a.keys().ne(b.keys()) {
        return Err(format!(
            "different series: {:?} vs {:?}",
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>()
        ));
    }
    let mut worst = 0f64;
    for (job, left) in &a {
        let right = &b[job];
        if left.len() != right.len() {
            return Err(format!(
                "job {job}: {} vs {} points",
                left.len(),
                right.len()
            ));
        }
        for (&(t1, v1), &(t2, v2)) in left.iter().zip(right) {
            if t1 != t2 {
                return Err(format!("job {job}: point at {t1} vs {t2}"));
            }
            if v1.is_nan() && v2.is_nan() || v1 == v2 {
                continue;
            }
            worst = worst.max((v1 - v2).abs() / v1.abs().max(v2.abs()));
        }
    }
    Ok(worst)
}

/// Wall-clock now in ms since the epoch, the clock remote write uses.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(jobs: &[(&str, &[(i64, &str)])]) -> Value {
        Value::Array(
            jobs.iter()
                .map(|(job, values)| {
                    json!({
                        "metric": {"job": job},
                        "values": values.iter().map(|(t, v)| json!([t, v])).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }

    #[test]
    fn compares_answers_point_by_point() {
        let a = answer(&[("api", &[(10, "1.5"), (25, "NaN")]), ("node", &[(10, "2")])]);
        assert_eq!(compare_answers(&a, &a), Ok(0.0));
        let b = answer(&[
            ("api", &[(10, "1.5"), (25, "NaN")]),
            ("node", &[(10, "2.2")]),
        ]);
        let diff = compare_answers(&a, &b).unwrap();
        assert!((diff - 0.2 / 2.2).abs() < 1e-12, "{diff}");
        let shifted = answer(&[("api", &[(10, "1.5"), (40, "NaN")]), ("node", &[(10, "2")])]);
        assert!(compare_answers(&a, &shifted).is_err());
        let fewer = answer(&[("api", &[(10, "1.5"), (25, "NaN")])]);
        assert!(
            compare_answers(&a, &fewer)
                .unwrap_err()
                .contains("different series")
        );
    }

    #[test]
    fn checks_range_query_answers() {
        let series: Vec<Value> = (0..QUERY_GROUPS)
            .map(|i| json!({"metric": {"job": i.to_string()}, "values": []}))
            .collect();
        let ok = json!({"status": "success", "data": {"resultType": "matrix", "result": series}});
        let body = ok.to_string();
        assert_eq!(
            check_answer(StatusCode::OK, body.as_bytes())
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            QUERY_GROUPS
        );
        assert!(check_answer(StatusCode::BAD_REQUEST, body.as_bytes()).is_err());
        let few = json!({"status": "success", "data": {"result": [{}]}}).to_string();
        assert!(
            check_answer(StatusCode::OK, few.as_bytes())
                .unwrap_err()
                .contains("1 series")
        );
        assert!(check_answer(StatusCode::OK, b"oops").is_err());
    }
}
