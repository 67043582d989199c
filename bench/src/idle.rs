//! The `idle` benchmark: what the daemon costs while nothing arrives.
//!
//! Loads `--spans` spans (OTLP/gRPC), `--log-lines` log lines (OTLP/gRPC)
//! and `--series` series (remote write, a few scrapes each) with the
//! generators of the `traces`, `logs` and `metrics` benchmarks, lets the
//! daemon settle, then measures its RSS and CPU (user plus system, as a
//! share of one core) over `--measure` seconds of no traffic; then again
//! after a restart over the same data directory: what an operator sees
//! the next morning.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tonic::transport::Endpoint;

use crate::IdleArgs;
use crate::daemon::{self, Daemon, Scratch};
use crate::remote_write::{SCRAPE_INTERVAL_MS, SeriesSet, Values};
use crate::report::{JsonObject, round};

const SEED: u64 = 16;
/// Log lines and traces per export request.
const LINES_PER_REQUEST: usize = 1_000;
const TRACES_PER_REQUEST: usize = 25;
/// Scrapes per series: enough for a sealed chunk's worth of history.
const ROUNDS: usize = 8;
const STOP_TIMEOUT: Duration = Duration::from_secs(300);

/// RSS and CPU of the daemon over one quiet period.
struct Quiet {
    rss_mb: f64,
    /// The RSS without the pages of mapped files, the binary's code among them.
    anon_mb: f64,
    cpu_percent: f64,
}

impl Quiet {
    fn json(&self) -> JsonObject {
        JsonObject::new()
            .field("rss_mb", round(self.rss_mb, 1))
            .field("anon_mb", round(self.anon_mb, 1))
            .field("cpu_percent_of_one_core", round(self.cpu_percent, 3))
    }
}

/// Waits `settle`, then measures the daemon `pid` over `measure`.
async fn measure_quiet(pid: u32, settle: Duration, measure: Duration) -> Result<Quiet> {
    tokio::time::sleep(settle).await;
    let cpu_before = daemon::cpu_seconds(pid)?;
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    let cpu = daemon::cpu_seconds(pid)? - cpu_before;
    let wall = started.elapsed().as_secs_f64();
    let rss = daemon::rss_bytes(pid).context("the daemon's RSS")?;
    let anon = daemon::anon_rss_bytes(pid).context("the daemon's anonymous RSS")?;
    Ok(Quiet {
        rss_mb: rss as f64 / 1048576.0,
        anon_mb: anon as f64 / 1048576.0,
        cpu_percent: cpu / wall * 100.0,
    })
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sends the spans, log lines and series `args` asks for.
async fn load(args: &IdleArgs, daemon: &Daemon, rng: &mut SmallRng) -> Result<()> {
    let channel = Endpoint::from_shared(daemon.grpc_url())?
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .context("connecting to OTLP/gRPC")?;
    let mut traces = TraceServiceClient::new(channel.clone()).max_encoding_message_size(usize::MAX);
    let pool = crate::workload::build_pool(rng, 16, TRACES_PER_REQUEST);
    let (mut spans, mut sent) = (0u64, Vec::new());
    for template in pool.iter().cycle() {
        if spans >= args.spans {
            break;
        }
        let request = template.instantiate(rng, crate::traces::now_ns(), &mut sent);
        sent.clear();
        traces.export(request).await.context("exporting spans")?;
        spans += template.span_count() as u64;
    }
    let mut logs = LogsServiceClient::new(channel).max_encoding_message_size(usize::MAX);
    let batches: Vec<crate::logs::Batch> = (0..16)
        .map(|_| crate::logs::build_batch(rng, LINES_PER_REQUEST))
        .collect();
    let mut lines = 0u64;
    for batch in batches.iter().cycle() {
        if lines >= args.log_lines {
            break;
        }
        let request = crate::logs::restamp(batch, rng, now_nanos());
        logs.export(request).await.context("exporting logs")?;
        lines += batch.lines;
    }
    let mut series = SeriesSet::new(args.series, Values::Realistic, rng);
    let now_ms = (now_nanos() / 1_000_000) as i64;
    let start_ms = now_ms - ROUNDS as i64 * SCRAPE_INTERVAL_MS;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/write", daemon.http_url());
    for payload in series
        .build_requests(1, 2_000, ROUNDS, start_ms, rng)?
        .iter()
        .flatten()
    {
        crate::metrics::write(&http, &url, &payload.body).await?;
    }
    eprintln!(
        "loaded {spans} spans, {lines} log lines, {} series",
        series.len()
    );
    Ok(())
}

/// Runs the whole benchmark and returns the JSON result line.
pub async fn run(args: &IdleArgs) -> Result<String> {
    let args = if args.quick {
        IdleArgs {
            spans: args.spans.min(20_000),
            log_lines: args.log_lines.min(20_000),
            series: args.series.min(1_000),
            measure: args.measure.min(10),
            settle: args.settle.min(5),
            ..args.clone()
        }
    } else {
        args.clone()
    };
    ensure!(args.measure >= 1, "--measure must be at least 1 second");
    let scratch = Scratch::create(args.keep)?;
    let data_dir = scratch.data_dir();
    let settle = Duration::from_secs(args.settle);
    let measure = Duration::from_secs(args.measure);
    let mut rng = SmallRng::seed_from_u64(SEED);

    let first = Daemon::start(&args.strand, &data_dir, &scratch.log()).await?;
    let pid = first.pid().context("the daemon's pid")?;
    let loading = Instant::now();
    load(&args, &first, &mut rng).await?;
    let load_s = loading.elapsed().as_secs_f64();
    let loaded = measure_quiet(pid, settle, measure).await?;
    first.stop(STOP_TIMEOUT).await?;
    let disk = daemon::dir_bytes(&data_dir)?;

    let second = Daemon::start(&args.strand, &data_dir, &scratch.log()).await?;
    let pid = second.pid().context("the daemon's pid")?;
    let restarted = measure_quiet(pid, settle, measure).await?;
    second.stop(STOP_TIMEOUT).await?;

    eprintln!("              RSS MB  anon MB   CPU % of one core");
    for (name, quiet) in [("after load", &loaded), ("restarted", &restarted)] {
        eprintln!(
            "{name:<12} {:>8.1} {:>8.1} {:>19.3}",
            quiet.rss_mb, quiet.anon_mb, quiet.cpu_percent
        );
    }
    Ok(JsonObject::new()
        .field("bench", "idle")
        .field("spans", args.spans)
        .field("log_lines", args.log_lines)
        .field("series", args.series as u64)
        .field("load_s", round(load_s, 1))
        .field("measure_s", args.measure)
        .field("disk_bytes", disk)
        .object("after_load", loaded.json())
        .object("restarted", restarted.json())
        .finish())
}
