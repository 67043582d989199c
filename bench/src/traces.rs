//! The `traces` benchmark: load phase, shutdown and restart, lookups.
//!
//! Phases, in order:
//! 1. build the batch pool and measure how fast this process can produce
//!    batches (so a reader can tell whether the generator was the limit);
//! 2. load: `--clients` tasks, each with its own gRPC connection, export
//!    back to back for `--duration` seconds or until `--spans` were sent,
//!    while the daemon's RSS is sampled every 500 ms;
//! 3. (spawn mode) SIGTERM, wait for exit, measure the data directory,
//!    restart on the same directory: lookups then read what survived a
//!    restart, not what is still in memory;
//! 4. `--lookups` sequential trace-by-id queries for sampled acked traces,
//!    each checked for the right span count.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

use crate::TracesArgs;
use crate::daemon::{self, Process, Scratch, Stopped};
use crate::nodes::{self, Nodes};
use crate::report::{JsonObject, round};
use crate::stats::{Reservoir, Summary};
use crate::workload::{self, Template, TraceRef};

/// Distinct batches built before the load phase.
const POOL_REQUESTS: usize = 200;
/// Upper bound on spans held in the pool, so huge `--traces-per-request`
/// values do not make the benchmark itself the memory hog of the machine.
const POOL_MAX_SPANS: usize = 60_000;
/// Acked traces remembered for lookups.
const SAMPLE_TRACES: usize = 10_000;
/// Unmeasured lookups first, so connection setup and cold caches do not
/// count.
const WARMUP_LOOKUPS: usize = 100;
/// Pause after a RESOURCE_EXHAUSTED / UNAVAILABLE answer.
const REJECT_BACKOFF: Duration = Duration::from_millis(50);
/// Pause after any other failed export.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Without a single ack for this long the daemon is considered stuck.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-export timeout: a hung daemon yields errors, not a hung benchmark.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM to exit; the daemon flushes everything still in memory.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// In attach mode nothing is restarted, so give the daemon time to flush
/// (its default flush interval is 1 s) before measuring and querying.
const ATTACH_SETTLE: Duration = Duration::from_secs(2);

/// What the load phase measured.
pub(crate) struct LoadResult {
    pub elapsed: Duration,
    pub spans: u64,
    pub requests: u64,
    pub rejected: u64,
    pub errors: u64,
    pub ack_latency: Option<Summary>,
    pub rss_peak: Option<u64>,
    pub rss_final: Option<u64>,
    pub sample: Vec<TraceRef>,
    /// Answers to the expensive queries, by HTTP status.
    expensive_answers: BTreeMap<u16, u64>,
}

/// What the lookup phase measured.
pub(crate) struct LookupResult {
    pub latency: Option<Summary>,
    pub errors: u64,
}

/// Counters shared by the client tasks and the monitor.
struct Shared {
    stop: AtomicBool,
    /// `--spans`: tasks reserve a batch's spans here before sending it.
    span_limit: Option<u64>,
    reserved: AtomicU64,
    spans: AtomicU64,
    requests: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    /// Milliseconds since load start of the latest ack (stall detection).
    last_ack_ms: AtomicU64,
    started: Instant,
    last_error: Mutex<Option<String>>,
    sample: Mutex<Reservoir<TraceRef>>,
}

impl Shared {
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
pub async fn run(args: &TracesArgs) -> Result<String> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(
        args.traces_per_request > 0,
        "--traces-per-request must be at least 1"
    );
    ensure!(
        args.duration > 0 || args.spans.is_some(),
        "--duration must be at least 1 second"
    );
    // Fail before the pool is built, not after the load.
    match (&args.target_grpc, &args.data_dir) {
        (None, _) => crate::daemon::ensure_strand_binary(&args.strand)?,
        (Some(_), Some(dir)) => ensure!(
            dir.is_dir(),
            "--data-dir {} is not a directory",
            dir.display()
        ),
        (Some(_), None) => {}
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // 1. Batches, and the generator's own speed.
    let started = Instant::now();
    let pool_size = pool_size(args.traces_per_request);
    let pool = workload::build_pool(&mut rand::rng(), pool_size, args.traces_per_request);
    let pool_spans: usize = pool.iter().map(Template::span_count).sum();
    eprintln!(
        "built {pool_size} distinct batches ({pool_spans} spans) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (generator_rate, request_bytes) = measure_generator(&pool);
    eprintln!(
        "generator: {generator_rate:.0} spans/s on one core (clone + new ids + protobuf encode), \
         {:.0} KiB per request",
        request_bytes / 1024.0
    );
    let pool = Arc::new(pool);

    let mut report = JsonObject::new().field("bench", "traces");
    let load;
    let mut bytes_on_disk = None;
    let mut lookups = None;
    let mut shutdown = None;
    let mut restart_ready = None;
    let mut clickhouse_rss = None;

    if let Some(grpc) = &args.target_grpc {
        // Attach mode: the daemon is someone else's; observe only.
        let grpc = if grpc.contains("://") {
            grpc.clone()
        } else {
            format!("http://{grpc}")
        };
        eprintln!("loading the running daemon at {grpc}");
        let http = args
            .target_http
            .as_deref()
            .map(|url| url.trim_end_matches('/'));
        load = run_load(args, &pool, &[grpc], http, args.pid, None).await?;
        if args.data_dir.is_some() || args.target_http.is_some() {
            tokio::time::sleep(ATTACH_SETTLE).await;
        }
        if let Some(dir) = &args.data_dir {
            bytes_on_disk = Some(daemon::dir_bytes(dir)?);
            daemon::print_breakdown(dir);
        }
        if let Some(http) = &args.target_http {
            lookups =
                Some(run_lookups(http.trim_end_matches('/'), &load.sample, args.lookups).await?);
        }
    } else {
        let scratch = Scratch::create(args.keep)?;
        let data_dir = scratch.data_dir();
        let mut nodes = Nodes::start(&args.strand, args.storage, args.nodes, &scratch).await?;
        let pid = nodes.first.pid();
        let http = nodes.first.http_url();
        let grpc_urls = nodes.grpc_urls();
        load = run_load(
            args,
            &pool,
            &grpc_urls,
            Some(&http),
            pid,
            Some(&mut nodes.first.process),
        )
        .await?;

        for other in std::mem::take(&mut nodes.others) {
            report_exit(&other.stop(STOP_TIMEOUT).await?);
        }
        eprintln!("stopping strand with SIGTERM");
        let Nodes {
            clickhouse, first, ..
        } = nodes;
        let stopped = first.stop(STOP_TIMEOUT).await?;
        report_exit(&stopped);
        shutdown = Some(stopped);
        bytes_on_disk = Some(daemon::dir_bytes(&data_dir)?);
        daemon::print_breakdown(&data_dir);
        if let Some(stored) = nodes::clickhouse_bytes(clickhouse.as_ref()).await? {
            bytes_on_disk = bytes_on_disk.map(|local| local + stored);
        }
        clickhouse_rss = clickhouse
            .as_ref()
            .and_then(|c| c.pid())
            .and_then(daemon::rss_bytes);

        eprintln!("restarting strand on the same data directory");
        let restarted = Instant::now();
        let second = nodes::restart_first(&args.strand, &scratch, clickhouse.as_ref()).await?;
        restart_ready = Some(restarted.elapsed());
        eprintln!(
            "ready again after {:.2}s",
            restarted.elapsed().as_secs_f64()
        );
        lookups = Some(run_lookups(&second.http_url(), &load.sample, args.lookups).await?);
        let stopped = second.stop(STOP_TIMEOUT).await?;
        if !stopped.status.success() {
            eprintln!(
                "warning: the restarted strand exited with {}",
                stopped.status
            );
        }
        drop(scratch);
    }

    let duration = load.elapsed.as_secs_f64();
    let mb = |bytes: Option<u64>| bytes.map(|b| round(b as f64 / (1024.0 * 1024.0), 1));
    report = report
        .field("duration_s", round(duration, 3))
        .field("clients", args.clients)
        .field("spans_acked", load.spans)
        .field("spans_per_s", round(load.spans as f64 / duration, 1))
        .field("requests", load.requests)
        .field("rejected", load.rejected)
        .field("errors", load.errors)
        .summary("ack_latency_ms", load.ack_latency)
        .object(
            "rss_mb",
            JsonObject::new()
                .field("peak", mb(load.rss_peak))
                .field("final", mb(load.rss_final)),
        )
        .field("bytes_on_disk", bytes_on_disk)
        .field(
            "bytes_per_span",
            bytes_on_disk
                .filter(|_| load.spans > 0)
                .map(|bytes| round(bytes as f64 / load.spans as f64, 2)),
        )
        .summary("trace_by_id_ms", lookups.as_ref().and_then(|l| l.latency))
        .field("lookup_errors", lookups.as_ref().map(|l| l.errors))
        .object("machine", JsonObject::new().field("cores", cores))
        .field("traces_per_request", args.traces_per_request)
        .field("expensive_queries", args.expensive_queries)
        .object(
            "expensive_query_answers",
            load.expensive_answers
                .iter()
                .fold(JsonObject::new(), |object, (status, count)| {
                    object.field(&status.to_string(), *count)
                }),
        )
        .field("generator_spans_per_s", round(generator_rate, 0))
        .field("storage", format!("{:?}", args.storage).to_lowercase())
        .field("nodes", args.nodes)
        .field("clickhouse_rss_mb", mb(clickhouse_rss));
    if let Some(stopped) = &shutdown {
        report = report.object(
            "shutdown",
            JsonObject::new()
                .field("exit_code", stopped.status.code())
                .field("signal", stopped.status.signal())
                .field("s", round(stopped.took.as_secs_f64(), 3)),
        );
    }
    if let Some(ready) = restart_ready {
        report = report.field("restart_ready_s", round(ready.as_secs_f64(), 3));
    }
    Ok(report.finish())
}

/// Distinct batches to build for `traces_per_request` traces each: as many
/// as [`POOL_MAX_SPANS`] allows, within 8..=[`POOL_REQUESTS`].
pub(crate) fn pool_size(traces_per_request: usize) -> usize {
    (POOL_MAX_SPANS / (traces_per_request * 10)).clamp(8, POOL_REQUESTS)
}

/// Spans per second one core can clone, re-id and encode, and the mean
/// encoded request size; measured for ~0.3 s before the load starts.
fn measure_generator(pool: &[Template]) -> (f64, f64) {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut sent = Vec::new();
    let (mut spans, mut bytes, mut requests) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) || requests == 0 {
        let template = &pool[requests % pool.len()];
        sent.clear();
        let request = template.instantiate(&mut rng, now_ns(), &mut sent);
        bytes += std::hint::black_box(request.encode_to_vec()).len();
        spans += template.span_count();
        requests += 1;
    }
    (
        spans as f64 / started.elapsed().as_secs_f64(),
        bytes as f64 / requests as f64,
    )
}

/// Wall-clock now in ns since the epoch, the clock OTLP timestamps use.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The load phase, its clients spread over the daemons at `grpc_urls`
/// (several: Strand nodes over one ClickHouse). `spawned` is the (first)
/// daemon (Strand, or the peer it is compared with) when this process
/// started it, so its death aborts the run with its log instead of a
/// stream of errors; `pid` is the one whose RSS is sampled.
pub(crate) async fn run_load(
    args: &TracesArgs,
    pool: &Arc<Vec<Template>>,
    grpc_urls: &[String],
    http_url: Option<&str>,
    pid: Option<u32>,
    mut spawned: Option<&mut Process>,
) -> Result<LoadResult> {
    // Connect everything before the clock starts.
    let mut channels = Vec::with_capacity(args.clients);
    for client in 0..args.clients {
        let grpc_url = &grpc_urls[client % grpc_urls.len()];
        let endpoint = Endpoint::from_shared(grpc_url.clone())
            .with_context(|| format!("invalid gRPC address {grpc_url}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(EXPORT_TIMEOUT)
            .tcp_nodelay(true);
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("connecting to OTLP/gRPC at {grpc_url}"))?,
        );
    }

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        span_limit: args.spans,
        reserved: AtomicU64::new(0),
        spans: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_ack_ms: AtomicU64::new(0),
        started: Instant::now(),
        last_error: Mutex::new(None),
        sample: Mutex::new(Reservoir::new(SAMPLE_TRACES)),
    });
    match args.spans {
        Some(spans) => eprintln!("load: {} clients until {spans} spans", args.clients),
        None => eprintln!("load: {} clients for {}s", args.clients, args.duration),
    }
    let tasks: Vec<_> = channels
        .into_iter()
        .map(|channel| {
            tokio::spawn(client_task(
                shared.clone(),
                pool.clone(),
                channel,
                args.gzip,
            ))
        })
        .collect();

    let expensive_answers = Arc::new(Mutex::new(BTreeMap::new()));
    let expensive: Vec<_> = match (args.expensive_queries, http_url) {
        (0, _) => Vec::new(),
        (_, None) => bail!("--expensive-queries needs the query API: pass --target-http"),
        (n, Some(http)) => {
            eprintln!("load: {n} clients sending expensive PromQL queries");
            (0..n)
                .map(|_| {
                    tokio::spawn(expensive_query_task(
                        shared.clone(),
                        http.to_string(),
                        expensive_answers.clone(),
                    ))
                })
                .collect()
        }
    };

    // A timer ends a --duration run on time; the monitor below ticks too
    // coarsely for that.
    let timer = args.spans.is_none().then(|| {
        let shared = shared.clone();
        let duration = Duration::from_secs(args.duration);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            shared.stop.store(true, Relaxed);
        })
    });

    // Monitor: RSS every 500 ms, progress every second, stop conditions.
    let mut rss_peak: Option<u64> = None;
    let mut rss_last: Option<u64> = None;
    let mut ticks = 0u64;
    let mut last_spans = 0u64;
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let abort = |reason: anyhow::Error| {
        shared.stop.store(true, Relaxed);
        for task in &tasks {
            task.abort();
        }
        if let Some(timer) = &timer {
            timer.abort();
        }
        Err(reason)
    };
    while !tasks.iter().all(|task| task.is_finished()) {
        interval.tick().await;
        ticks += 1;
        if let Some(rss) = pid.and_then(daemon::rss_bytes) {
            rss_peak = rss_peak.max(Some(rss));
            rss_last = Some(rss);
        }
        let elapsed = shared.started.elapsed();
        if ticks.is_multiple_of(2) {
            let spans = shared.spans.load(Relaxed);
            eprintln!(
                "[{:>4}s] {spans} spans acked, {} spans/s now, {:.0} spans/s avg, rejected {}, errors {}{}",
                elapsed.as_secs(),
                spans - last_spans,
                spans as f64 / elapsed.as_secs_f64(),
                shared.rejected.load(Relaxed),
                shared.errors.load(Relaxed),
                rss_last.map_or(String::new(), |rss| format!(
                    ", rss {:.1} MB",
                    rss as f64 / (1024.0 * 1024.0)
                )),
            );
            last_spans = spans;
        }
        if let Some(daemon) = spawned.as_deref_mut()
            && let Some(status) = daemon.exited()?
        {
            return abort(anyhow::anyhow!(
                "{} exited with {status} during the load; its log ends with:\n{}",
                daemon.name(),
                daemon.log_tail()
            ));
        }
        let since_ack =
            elapsed.saturating_sub(Duration::from_millis(shared.last_ack_ms.load(Relaxed)));
        if since_ack >= STALL_TIMEOUT {
            return abort(anyhow::anyhow!(
                "no export was acknowledged for {}s; last error: {}",
                STALL_TIMEOUT.as_secs(),
                shared.last_error()
            ));
        }
    }
    // Until the last ack, not the monitor's next tick (500 ms apart).
    let elapsed = Duration::from_millis(shared.last_ack_ms.load(Relaxed).max(1));
    if let Some(timer) = timer {
        timer.abort();
    }
    if let Some(rss) = pid.and_then(daemon::rss_bytes) {
        rss_peak = rss_peak.max(Some(rss));
        rss_last = Some(rss);
    }

    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("a load client task failed")?);
    }
    for task in expensive {
        task.abort();
    }
    let expensive_answers = std::mem::take(
        &mut *expensive_answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let sample = std::mem::replace(
        &mut *shared.sample.lock().unwrap_or_else(PoisonError::into_inner),
        Reservoir::new(0),
    )
    .into_items();
    let result = LoadResult {
        elapsed,
        spans: shared.spans.load(Relaxed),
        requests: shared.requests.load(Relaxed),
        rejected: shared.rejected.load(Relaxed),
        errors: shared.errors.load(Relaxed),
        ack_latency: Summary::of(latencies),
        rss_peak,
        rss_final: rss_last,
        sample,
        expensive_answers,
    };
    eprintln!(
        "load done: {} spans in {:.1}s ({:.0} spans/s), {} requests, {} rejected, {} errors (last: {})",
        result.spans,
        elapsed.as_secs_f64(),
        result.spans as f64 / elapsed.as_secs_f64(),
        result.requests,
        result.rejected,
        result.errors,
        shared.last_error(),
    );
    Ok(result)
}

/// One client: exports random batches back to back on its own connection and
/// returns its ack latencies in milliseconds.
async fn client_task(
    shared: Arc<Shared>,
    pool: Arc<Vec<Template>>,
    channel: Channel,
    gzip: bool,
) -> Vec<f64> {
    let mut client = TraceServiceClient::new(channel).max_encoding_message_size(usize::MAX);
    if gzip {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut sent = Vec::new();
    let mut latencies = Vec::new();
    while !shared.stop.load(Relaxed) {
        let template = &pool[rng.random_range(0..pool.len())];
        let spans = template.span_count() as u64;
        if let Some(limit) = shared.span_limit
            && shared.reserved.fetch_add(spans, Relaxed) >= limit
        {
            break;
        }
        sent.clear();
        let request = template.instantiate(&mut rng, now_ns(), &mut sent);
        let started = Instant::now();
        match client.export(request).await {
            Ok(response) => {
                latencies.push(started.elapsed().as_secs_f64() * 1e3);
                shared.requests.fetch_add(1, Relaxed);
                shared.last_ack_ms.fetch_max(
                    u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    Relaxed,
                );
                let refused = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |partial| partial.rejected_spans.max(0) as u64);
                if refused == 0 {
                    shared.spans.fetch_add(spans, Relaxed);
                    let mut sample = shared.sample.lock().unwrap_or_else(PoisonError::into_inner);
                    for trace in &sent {
                        sample.offer(*trace, &mut rng);
                    }
                } else {
                    // Which traces lost spans is unknown: none is sampled.
                    shared
                        .spans
                        .fetch_add(spans.saturating_sub(refused), Relaxed);
                    shared.errors.fetch_add(1, Relaxed);
                    shared.note_error(format!("partial success: {refused} spans rejected"));
                }
            }
            Err(status) => {
                if shared.span_limit.is_some() {
                    // Give the spans back so the run still sends `--spans`.
                    shared.reserved.fetch_sub(spans, Relaxed);
                }
                shared.note_error(format!("{:?}: {}", status.code(), status.message()));
                if matches!(
                    status.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                ) {
                    shared.rejected.fetch_add(1, Relaxed);
                    tokio::time::sleep(REJECT_BACKOFF).await;
                } else {
                    shared.errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
        }
    }
    latencies
}

/// `count` sequential GET /api/traces/{id} (after a warm-up) for random
/// sampled traces; each must answer 200 with the span count that was sent.
pub(crate) async fn run_lookups(
    http_base: &str,
    sample: &[TraceRef],
    count: usize,
) -> Result<LookupResult> {
    if sample.is_empty() {
        eprintln!("no trace was acknowledged: skipping lookups");
        return Ok(LookupResult {
            latency: None,
            errors: 0,
        });
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building HTTP client")?;
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut latencies = Vec::with_capacity(count);
    let (mut errors, mut warmup_errors, mut consecutive_failures) = (0u64, 0u64, 0u32);
    eprintln!(
        "lookups: {WARMUP_LOOKUPS} warm-up + {count} GET /api/traces/{{id}} over {} sampled traces",
        sample.len()
    );
    for i in 0..WARMUP_LOOKUPS + count {
        let measured = i >= WARMUP_LOOKUPS;
        let trace = sample[rng.random_range(0..sample.len())];
        let url = format!("{http_base}/api/traces/{}", hex::encode(trace.id));
        let started = Instant::now();
        let outcome = fetch(&client, &url).await;
        let took = started.elapsed();
        let problem = match outcome {
            Ok((status, body)) => {
                consecutive_failures = 0;
                if measured {
                    latencies.push(took.as_secs_f64() * 1e3);
                }
                check_trace(status, &body, trace.spans)
            }
            Err(error) => {
                consecutive_failures += 1;
                if consecutive_failures >= 20 {
                    bail!("the query API stopped answering: {error:#}");
                }
                Some(format!("{error:#}"))
            }
        };
        if let Some(problem) = problem {
            let total = errors + warmup_errors;
            if total < 5 {
                eprintln!("lookup error: {url}: {problem}");
            }
            if measured {
                errors += 1;
            } else {
                warmup_errors += 1;
            }
        }
    }
    if warmup_errors > 0 {
        eprintln!("{warmup_errors} warm-up lookups failed (not counted)");
    }
    Ok(LookupResult {
        latency: Summary::of(latencies),
        errors,
    })
}

/// Sends a query that runs until the daemon's time budget, again and again
/// until the load stops, counting the answers by HTTP status (0: none).
async fn expensive_query_task(
    shared: Arc<Shared>,
    http: String,
    answers: Arc<Mutex<BTreeMap<u16, u64>>>,
) {
    const ENDLESS: &str = "count_over_time((vector(1) > 2)[1y:1ms])";
    let client = reqwest::Client::new();
    while !shared.stop.load(Relaxed) {
        let status = client
            .post(format!("{http}/api/v1/query"))
            .form(&[("query", ENDLESS), ("timeout", "10s")])
            .send()
            .await
            .map_or(0, |response| response.status().as_u16());
        *answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(status)
            .or_default() += 1;
        if status != 503 {
            // Refused for something else than time or load: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub(crate) async fn fetch(client: &reqwest::Client, url: &str) -> Result<(u16, Vec<u8>)> {
    let response = client.get(url).send().await.context("GET failed")?;
    let status = response.status().as_u16();
    let body = response.bytes().await.context("reading the body failed")?;
    Ok((status, body.to_vec()))
}

/// `None` if the answer is the expected trace, else what is wrong with it.
fn check_trace(status: u16, body: &[u8], expected_spans: u16) -> Option<String> {
    if status != 200 {
        return Some(format!("HTTP {status}"));
    }
    let json: serde_json::Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(error) => return Some(format!("body is not JSON: {error}")),
    };
    let spans = json["data"][0]["spans"].as_array().map(Vec::len);
    match spans {
        Some(n) if n == usize::from(expected_spans) => None,
        Some(n) => Some(format!("{n} spans, expected {expected_spans}")),
        None => Some("no data[0].spans in the answer".into()),
    }
}

fn report_exit(stopped: &Stopped) {
    eprintln!(
        "strand exited with {} after {:.2}s",
        stopped.status,
        stopped.took.as_secs_f64()
    );
    if !stopped.status.success() {
        eprintln!("warning: strand did not exit cleanly on SIGTERM");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_trace_answers() {
        let ok = br#"{"data":[{"traceID":"ab","spans":[{},{},{}],"processes":{}}]}"#;
        assert_eq!(check_trace(200, ok, 3), None);
        assert!(check_trace(200, ok, 10).unwrap().contains("3 spans"));
        assert!(check_trace(404, b"{}", 3).unwrap().contains("404"));
        assert!(check_trace(200, b"not json", 3).is_some());
        assert!(check_trace(200, br#"{"data":[]}"#, 3).is_some());
    }
}
