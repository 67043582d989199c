//! `strand-bench curves`: how each cost grows with the data held.
//!
//! - **traces** and **logs**: one daemon per signal, loaded step by step
//!   (up to the first size, measure, keep loading up to the next, measure,
//!   ...), so the whole curve costs one pass. Per step: the ingest rate of
//!   that step's segment (the load phases of [`traces`] and [`logs`]), RSS
//!   after the step once the signal's directory is at rest and its peak
//!   during the load, the bytes of the signal's directory, and query
//!   latencies: trace by id over traces sampled from every step so far and
//!   Jaeger-style searches ([`compare_traces::run_searches`]); log term,
//!   phrase and histogram queries over everything loaded.
//! - **metrics**: one daemon per size (active series = size), the same
//!   number of remote-write scrape rounds for each ([`remote_write`], the
//!   realistic generator, built and sent a chunk of rounds at a time so the
//!   benchmark's own memory stays bounded), then the ingest rate, RSS per
//!   active series, the range query of the `metrics` benchmark on the live
//!   daemon, and bytes per sample of `<data>/metrics` after the daemon's
//!   final flush on SIGTERM.
//!
//! Acks are durable throughout (the daemon's defaults). Results:
//! `curves-<signal>.csv` (one row per size, units in the column names) and
//! `curves-<signal>.svg` (one panel per figure over a log axis of sizes) in
//! `--results`, a table per signal on stdout and the JSON line.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, ValueEnum};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::TracesArgs;
use crate::chart::{self, Panel};
use crate::compare_traces;
use crate::daemon::{self, Daemon, Scratch};
use crate::logs;
use crate::metrics::{self, RangeQuery};
use crate::remote_write::{QUERY_SERIES, SCRAPE_INTERVAL_MS, SeriesSet, Values};
use crate::report::{JsonObject, round};
use crate::stats::Summary;
use crate::traces;
use crate::workload::{self, TraceRef};

/// SIGTERM to exit; the daemon flushes everything in memory first.
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for a signal's directory to come to rest after a step.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Traces per OTLP export request (about 10 spans each), as in `traces`.
const TRACES_PER_REQUEST: usize = 25;
/// Log lines per OTLP export request, as in `logs`.
const LINES_PER_REQUEST: usize = 500;
/// Samples per remote-write request, as in `metrics`.
const SAMPLES_PER_REQUEST: usize = 2_000;
/// Remote-write samples built (and held) at once: a chunk of rounds of
/// every series, so a million series do not need gigabytes of requests.
const CHUNK_SAMPLES: usize = 4_000_000;
/// Traces the lookups of a step are drawn from.
const LOOKUP_SAMPLE: usize = 10_000;
/// Longest range of the metrics range query (the `metrics` benchmark's).
const QUERY_RANGE_S: i64 = 3_600;
/// The range query's rate window, which the data must cover too.
const RATE_WINDOW_S: i64 = 300;

/// `--quick`: sizes, measured queries per class and step, metric rounds.
const QUICK_TRACES: [u64; 3] = [5_000, 10_000, 20_000];
const QUICK_METRICS: [u64; 3] = [1_000, 2_000, 4_000];
const QUICK_LOGS: [u64; 3] = [5_000, 10_000, 20_000];
const QUICK_QUERIES: usize = 30;
const QUICK_ROUNDS: usize = 40;

/// Default sizes: issue 16's curves.
const DEFAULT_TRACES: [u64; 3] = [1_000_000, 10_000_000, 50_000_000];
const DEFAULT_METRICS: [u64; 3] = [10_000, 100_000, 1_000_000];
const DEFAULT_LOGS: [u64; 3] = [1_000_000, 10_000_000, 50_000_000];

/// Options of `strand-bench curves`.
#[derive(Args, Debug, Clone)]
pub struct CurvesArgs {
    /// The strand binary to spawn.
    #[arg(long, value_name = "PATH", default_value = "target/release/strand")]
    pub strand: PathBuf,

    /// Which curve to measure.
    #[arg(long, value_enum, default_value_t = Signal::All)]
    pub signal: Signal,

    /// Sizes, ascending, comma-separated, with k / M suffixes: spans or log
    /// lines stored, or active series (default: traces and logs 1M,10M,50M;
    /// metrics 10k,100k,1M). Needs a single --signal.
    #[arg(long, value_name = "N,N,..", value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Option<Vec<u64>>,

    /// Measured queries per query class and step (after a few warm-up
    /// ones).
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub queries: usize,

    /// Remote-write scrapes per series, 15 s apart (300 = 75 minutes, the
    /// range query's hour plus its rate window).
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub rounds: usize,

    /// Concurrent clients, each on its own connection.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub clients: usize,

    /// Tiny sizes (traces and logs 5k/10k/20k, metrics 1k/2k/4k series,
    /// unless --sizes), 30 queries per class, 40 rounds; fails unless every
    /// figure was produced and every query answered right.
    #[arg(long)]
    pub quick: bool,

    /// Directory for curves-<signal>.csv and .svg.
    #[arg(long, value_name = "DIR", default_value_os_t = crate::compare::default_results())]
    pub results: PathBuf,

    /// Keep the temporary data directories and logs.
    #[arg(long)]
    pub keep: bool,
}

/// A signal whose curve is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
    All,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
            Signal::All => "all",
        }
    }

    fn sizes(self, quick: bool) -> &'static [u64] {
        match (self, quick) {
            (Signal::Traces, false) => &DEFAULT_TRACES,
            (Signal::Traces, true) => &QUICK_TRACES,
            (Signal::Metrics, false) => &DEFAULT_METRICS,
            (Signal::Metrics, true) => &QUICK_METRICS,
            (Signal::Logs, false) => &DEFAULT_LOGS,
            (Signal::Logs, true) => &QUICK_LOGS,
            (Signal::All, _) => &[],
        }
    }

    /// The size column, first in every row.
    fn size_column(self) -> Column {
        match self {
            Signal::Traces => Column::new("spans", "spans stored", "spans"),
            Signal::Logs => Column::new("lines", "log lines stored", "lines"),
            _ => Column::new("series", "active series", "series"),
        }
    }

    /// The figures measured per size, in row order after the size.
    fn columns(self) -> &'static [Column] {
        match self {
            Signal::Traces => &TRACE_COLUMNS,
            Signal::Logs => &LOG_COLUMNS,
            _ => &METRIC_COLUMNS,
        }
    }
}

/// One figure of a curve: its CSV name (unit included), chart title and
/// unit, and how it is checked.
#[derive(Clone, Copy, Debug)]
struct Column {
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    /// Drawn as a panel (the step durations are for planning runs, not
    /// curves).
    chart: bool,
    /// Must be above zero (an RSS difference may not be).
    positive: bool,
}

impl Column {
    const fn new(key: &'static str, title: &'static str, unit: &'static str) -> Column {
        Column {
            key,
            title,
            unit,
            chart: true,
            positive: true,
        }
    }

    const fn table_only(self) -> Column {
        Column {
            chart: false,
            ..self
        }
    }

    const fn any_sign(self) -> Column {
        Column {
            positive: false,
            ..self
        }
    }
}

const LOAD_S: Column = Column::new("load_s", "load of the step", "s").table_only();
const STEP_S: Column = Column::new("step_s", "whole step", "s").table_only();
const RSS_MB: Column = Column::new("rss_mb", "RSS after the step", "MB");
const RSS_PEAK_MB: Column = Column::new("rss_peak_mb", "peak RSS of the step", "MB");
const ANON_MB: Column = Column::new("anon_mb", "RSS after the step without mapped files", "MB");
const DISK_MB: Column = Column::new("disk_mb", "on disk", "MB");

const TRACE_COLUMNS: [Column; 12] = [
    LOAD_S,
    STEP_S,
    Column::new("ingest_spans_per_s", "ingest", "spans/s"),
    RSS_MB,
    RSS_PEAK_MB,
    ANON_MB,
    DISK_MB,
    Column::new("disk_bytes_per_span", "on disk per span", "bytes"),
    Column::new("trace_by_id_p50_ms", "trace by id p50", "ms"),
    Column::new("trace_by_id_p99_ms", "trace by id p99", "ms"),
    Column::new("search_p50_ms", "search p50", "ms"),
    Column::new("search_p99_ms", "search p99", "ms"),
];

const LOG_COLUMNS: [Column; 14] = [
    LOAD_S,
    STEP_S,
    Column::new("ingest_lines_per_s", "ingest", "lines/s"),
    RSS_MB,
    RSS_PEAK_MB,
    ANON_MB,
    DISK_MB,
    Column::new("disk_bytes_per_line", "on disk per line", "bytes"),
    Column::new("term_p50_ms", "term query p50", "ms"),
    Column::new("term_p99_ms", "term query p99", "ms"),
    Column::new("phrase_p50_ms", "phrase query p50", "ms"),
    Column::new("phrase_p99_ms", "phrase query p99", "ms"),
    Column::new("histogram_p50_ms", "histogram p50", "ms"),
    Column::new("histogram_p99_ms", "histogram p99", "ms"),
];

const METRIC_COLUMNS: [Column; 10] = [
    LOAD_S,
    STEP_S,
    Column::new("ingest_samples_per_s", "ingest", "samples/s"),
    Column::new("rss_mb", "RSS after the load", "MB"),
    RSS_PEAK_MB,
    Column::new("rss_bytes_per_series", "RSS per active series", "bytes").any_sign(),
    Column::new("disk_mb", "on disk after the flush", "MB"),
    Column::new("disk_bytes_per_sample", "on disk per sample", "bytes"),
    Column::new("range_query_p50_ms", "range query p50", "ms"),
    Column::new("range_query_p99_ms", "range query p99", "ms"),
];

/// The measured curve of one signal.
struct Curve {
    signal: Signal,
    /// One row per size: the size, then one value per [`Signal::columns`]
    /// entry (NaN: not measured).
    rows: Vec<Vec<f64>>,
    /// What went wrong without stopping the run (failed lookups, refused
    /// samples, a directory that never came to rest).
    problems: Vec<String>,
}

impl Curve {
    fn new(signal: Signal) -> Curve {
        Curve {
            signal,
            rows: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Adds the row of `size`; `figures` in [`Signal::columns`] order.
    fn push(&mut self, size: u64, figures: &[f64]) {
        assert_eq!(figures.len(), self.signal.columns().len(), "one per column");
        let mut row = vec![size as f64];
        row.extend_from_slice(figures);
        self.rows.push(row);
    }

    fn problem(&mut self, problem: String) {
        eprintln!("warning: {}: {problem}", self.signal.name());
        self.problems.push(problem);
    }

    /// Figures that are missing or impossible, by row and column.
    fn missing(&self) -> Vec<String> {
        let columns = self.signal.columns();
        let mut missing = Vec::new();
        for row in &self.rows {
            for (column, value) in columns.iter().zip(&row[1..]) {
                if !value.is_finite() || column.positive && *value <= 0.0 {
                    missing.push(format!("{} at {}: {value}", column.key, row[0]));
                }
            }
        }
        missing
    }

    fn header(&self) -> Vec<&'static str> {
        std::iter::once(self.signal.size_column().key)
            .chain(self.signal.columns().iter().map(|c| c.key))
            .collect()
    }

    fn csv(&self) -> String {
        let mut out = self.header().join(",");
        out.push('\n');
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|v| {
                    if v.is_finite() {
                        round(*v, 3).to_string()
                    } else {
                        String::new()
                    }
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    fn svg(&self) -> String {
        let size = self.signal.size_column();
        let xs: Vec<f64> = self.rows.iter().map(|row| row[0]).collect();
        let panels: Vec<Panel> = self
            .signal
            .columns()
            .iter()
            .enumerate()
            .filter(|(_, column)| column.chart)
            .map(|(index, column)| Panel {
                title: column.title,
                unit: column.unit,
                values: self.rows.iter().map(|row| row[index + 1]).collect(),
            })
            .collect();
        chart::small_multiples(
            &format!("strand {}: cost by {}", self.signal.name(), size.title),
            size.title,
            &xs,
            &panels,
        )
    }

    /// The table for people, in Markdown.
    fn table(&self) -> String {
        let header = self.header();
        let mut out = format!(
            "## curves: {}\n\n| {} |\n",
            self.signal.name(),
            header.join(" | ")
        );
        let _ = writeln!(out, "|{}", "---:|".repeat(header.len()));
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|v| {
                    if v.is_finite() {
                        chart::compact(*v)
                    } else {
                        "-".into()
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }

    fn json(&self) -> JsonObject {
        let header = self.header();
        let rows = self.rows.iter().fold(JsonObject::new(), |object, row| {
            let figures = header
                .iter()
                .zip(row)
                .skip(1)
                .fold(JsonObject::new(), |o, (key, value)| {
                    o.field(key, value.is_finite().then(|| round(*value, 3)))
                });
            object.object(&(row[0] as u64).to_string(), figures)
        });
        JsonObject::new()
            .object("rows", rows)
            .field("problems", self.problems.clone())
    }
}

/// A size such as `50000`, `100k` or `1M`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, factor) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 1_000),
        Some((at, 'm' | 'M')) => (&text[..at], 1_000_000),
        _ => (text, 1),
    };
    let value: f64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 50000, 100k or 1M"))?;
    let size = value * factor as f64;
    if !((1.0..=1e12).contains(&size) && size.fract() == 0.0) {
        return Err(format!("{text:?} is not a whole positive size"));
    }
    Ok(size as u64)
}

/// Runs the curves and returns the JSON result line.
pub async fn run(args: &CurvesArgs) -> Result<String> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    crate::daemon::ensure_strand_binary(&args.strand)?;
    let signals: &[Signal] = match args.signal {
        Signal::All => &[Signal::Traces, Signal::Metrics, Signal::Logs],
        Signal::Traces => &[Signal::Traces],
        Signal::Metrics => &[Signal::Metrics],
        Signal::Logs => &[Signal::Logs],
    };
    if let Some(sizes) = &args.sizes {
        ensure!(
            signals.len() == 1,
            "--sizes needs a single --signal (traces, metrics or logs)"
        );
        ensure!(
            !sizes.is_empty() && sizes.windows(2).all(|pair| pair[0] < pair[1]),
            "--sizes must be ascending"
        );
    }
    let (queries, rounds) = if args.quick {
        (QUICK_QUERIES, QUICK_ROUNDS)
    } else {
        (args.queries, args.rounds)
    };
    ensure!(queries > 0, "--queries must be at least 1");
    let min_rounds = (RATE_WINDOW_S * 1000 / SCRAPE_INTERVAL_MS + 2) as usize;
    ensure!(
        rounds >= min_rounds,
        "--rounds must be at least {min_rounds} (the range query's 5-minute rate window)"
    );
    std::fs::create_dir_all(&args.results)
        .with_context(|| format!("creating {}", args.results.display()))?;

    let mut report = JsonObject::new()
        .field("bench", "curves")
        .field("quick", args.quick)
        .field("clients", args.clients)
        .field("queries", queries)
        .field("rounds", rounds);
    let mut failures = Vec::new();
    for &signal in signals {
        let sizes = args
            .sizes
            .as_deref()
            .unwrap_or_else(|| signal.sizes(args.quick));
        let started = Instant::now();
        eprintln!("== {} curve: sizes {sizes:?}", signal.name());
        let curve = match signal {
            Signal::Traces => traces_curve(args, sizes, queries).await?,
            Signal::Logs => logs_curve(args, sizes, queries).await?,
            _ => metrics_curve(args, sizes, queries, rounds).await?,
        };
        eprintln!(
            "== {} curve done in {:.0}s",
            signal.name(),
            started.elapsed().as_secs_f64()
        );
        println!("{}", curve.table());
        for (extension, text) in [("csv", curve.csv()), ("svg", curve.svg())] {
            let path = args
                .results
                .join(format!("curves-{}.{extension}", signal.name()));
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        let missing = curve.missing();
        if !missing.is_empty() {
            failures.push(format!(
                "{}: figures missing: {}",
                signal.name(),
                missing.join(", ")
            ));
        }
        failures.extend(
            curve
                .problems
                .iter()
                .map(|p| format!("{}: {p}", signal.name())),
        );
        report = report.object(signal.name(), curve.json());
    }
    if args.quick && !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    for failure in &failures {
        eprintln!("warning: {failure}");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(report
        .object("machine", JsonObject::new().field("cores", cores))
        .finish())
}

/// Waits for `dir` to come to rest; notes it on `curve` if it does not.
async fn settle(curve: &mut Curve, dir: &std::path::Path) {
    let started = Instant::now();
    if daemon::settle(dir, SETTLE_TIMEOUT).await {
        eprintln!(
            "{} at rest after {:.1}s",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
    } else {
        curve.problem(format!(
            "{} still changed after {}s; measured anyway",
            dir.display(),
            SETTLE_TIMEOUT.as_secs()
        ));
    }
}

fn mb(bytes: Option<u64>) -> f64 {
    bytes.map_or(f64::NAN, |b| b as f64 / 1048576.0)
}

fn p50(summary: Option<Summary>) -> f64 {
    summary.map_or(f64::NAN, |s| s.p50)
}

fn p99(summary: Option<Summary>) -> f64 {
    summary.map_or(f64::NAN, |s| s.p99)
}

/// `count` traces drawn from the samples of every step so far, each step
/// weighted by the spans it stored (`(spans, sample)` per step), so lookups
/// hit old and new data in proportion.
fn pick_weighted(
    steps: &[(u64, Vec<TraceRef>)],
    count: usize,
    rng: &mut impl Rng,
) -> Vec<TraceRef> {
    let total: u64 = steps
        .iter()
        .filter(|(_, sample)| !sample.is_empty())
        .map(|(spans, _)| spans)
        .sum();
    if total == 0 {
        return Vec::new();
    }
    (0..count)
        .map(|_| {
            let mut at = rng.random_range(0..total);
            let (_, sample) = steps
                .iter()
                .filter(|(_, sample)| !sample.is_empty())
                .find(|(spans, _)| {
                    let here = at < *spans;
                    at = at.saturating_sub(*spans);
                    here
                })
                .expect("at < total");
            sample[rng.random_range(0..sample.len())]
        })
        .collect()
}

/// The traces curve: one daemon, loaded up to each size in turn.
async fn traces_curve(args: &CurvesArgs, sizes: &[u64], queries: usize) -> Result<Curve> {
    let mut curve = Curve::new(Signal::Traces);
    let pool = Arc::new(workload::build_pool(
        &mut rand::rng(),
        traces::pool_size(TRACES_PER_REQUEST),
        TRACES_PER_REQUEST,
    ));
    let scratch = Scratch::create(args.keep)?;
    let data_dir = scratch.data_dir();
    let store = data_dir.join("traces");
    let mut daemon = Daemon::start(&args.strand, &data_dir, &scratch.log()).await?;
    let (grpc, http, pid) = (daemon.grpc_url(), daemon.http_url(), daemon.pid());
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut stored = 0u64;
    let mut steps: Vec<(u64, Vec<TraceRef>)> = Vec::new();
    for &size in sizes {
        let step = Instant::now();
        eprintln!("== traces: loading {stored} -> {size} spans");
        let load_args = TracesArgs::load(
            &args.strand,
            args.clients,
            TRACES_PER_REQUEST,
            size.saturating_sub(stored).max(1),
            queries,
            args.keep,
        );
        let load = traces::run_load(
            &load_args,
            &pool,
            std::slice::from_ref(&grpc),
            Some(&http),
            pid,
            Some(&mut daemon.process),
        )
        .await?;
        stored += load.spans;
        if load.rejected + load.errors > 0 {
            curve.problem(format!(
                "{} exports rejected and {} failed (sent again) while loading up to {size}",
                load.rejected, load.errors
            ));
        }
        settle(&mut curve, &store).await;
        let (rss, anon) = (
            pid.and_then(daemon::rss_bytes),
            pid.and_then(daemon::anon_rss_bytes),
        );
        let disk = daemon::dir_bytes(&store)?;
        daemon::print_breakdown(&data_dir);
        steps.push((load.spans, load.sample));
        let sample = pick_weighted(&steps, LOOKUP_SAMPLE, &mut rng);
        let lookups = traces::run_lookups(&http, &sample, queries).await?;
        let searches = compare_traces::run_searches(&http, queries).await?;
        for (what, errors) in [("lookups", lookups.errors), ("searches", searches.errors)] {
            if errors > 0 {
                curve.problem(format!("{errors} {what} failed at {size} spans"));
            }
        }
        let load_s = load.elapsed.as_secs_f64();
        curve.push(
            size,
            &[
                load_s,
                step.elapsed().as_secs_f64(),
                load.spans as f64 / load_s,
                mb(rss),
                mb(load.rss_peak.max(rss)),
                mb(anon),
                mb(Some(disk)),
                disk as f64 / stored as f64,
                p50(lookups.latency),
                p99(lookups.latency),
                p50(searches.latency),
                p99(searches.latency),
            ],
        );
        eprintln!(
            "== traces: {size} spans measured; the step took {:.0}s",
            step.elapsed().as_secs_f64()
        );
    }
    daemon.stop(STOP_TIMEOUT).await?;
    Ok(curve)
}

/// The logs curve: one daemon, loaded up to each size in turn.
async fn logs_curve(args: &CurvesArgs, sizes: &[u64], queries: usize) -> Result<Curve> {
    let mut curve = Curve::new(Signal::Logs);
    let pool = Arc::new(logs::build_pool(LINES_PER_REQUEST));
    let scratch = Scratch::create(args.keep)?;
    let data_dir = scratch.data_dir();
    let store = data_dir.join("logs");
    let mut daemon = Daemon::start(&args.strand, &data_dir, &scratch.log()).await?;
    let (http, pid) = (daemon.http_url(), daemon.pid());
    let first_ns = traces::now_ns();
    let mut stored = 0u64;
    for &size in sizes {
        let step = Instant::now();
        eprintln!("== logs: loading {stored} -> {size} lines");
        let grpc_urls = [daemon.grpc_url()];
        let load = logs::run_load(
            &mut daemon,
            &grpc_urls,
            &pool,
            args.clients,
            Some(size.saturating_sub(stored).max(1)),
            Duration::ZERO,
            false,
        )
        .await?;
        stored += load.lines;
        if load.rejected + load.errors > 0 {
            curve.problem(format!(
                "{} exports rejected and {} failed (sent again) while loading up to {size}",
                load.rejected, load.errors
            ));
        }
        settle(&mut curve, &store).await;
        let (rss, anon) = (
            pid.and_then(daemon::rss_bytes),
            pid.and_then(daemon::anon_rss_bytes),
        );
        let disk = daemon::dir_bytes(&store)?;
        daemon::print_breakdown(&data_dir);
        // Everything loaded so far, with a minute's margin either side.
        let range = format!(
            "&start={}&end={}",
            first_ns - 60_000_000_000,
            traces::now_ns() + 60_000_000_000
        );
        let paths = |queries: &[&str]| -> Vec<String> {
            queries
                .iter()
                .map(|q| format!("/api/logs?q={q}&limit=100{range}"))
                .collect()
        };
        let term = paths(&[
            "error",
            "customer",
            "service%3Apayment%20AND%20severity%3Aerror",
            "attributes.http.status_code%3A502",
        ]);
        let phrase = paths(&[
            "%22card%20declined%22",
            "%22created%20for%20customer%22",
            "%22slow%20query%20on%20stock%20table%22",
        ]);
        let histogram = vec![format!("/api/logs/histogram?q={range}")];
        let mut latencies = Vec::new();
        for (class, paths) in [("term", term), ("phrase", phrase), ("histogram", histogram)] {
            eprintln!("{class} queries: {queries} over {} lines", stored);
            let (latency, total) = logs::time_queries(&http, &paths, queries).await?;
            if total == 0 {
                curve.problem(format!("{class} queries found nothing at {size} lines"));
            }
            latencies.push(latency);
        }
        let load_s = load.elapsed.as_secs_f64();
        curve.push(
            size,
            &[
                load_s,
                step.elapsed().as_secs_f64(),
                load.lines as f64 / load_s,
                mb(rss),
                mb(rss.max(Some(load.rss_peak))),
                mb(anon),
                mb(Some(disk)),
                disk as f64 / stored as f64,
                p50(latencies[0]),
                p99(latencies[0]),
                p50(latencies[1]),
                p99(latencies[1]),
                p50(latencies[2]),
                p99(latencies[2]),
            ],
        );
        eprintln!(
            "== logs: {size} lines measured; the step took {:.0}s",
            step.elapsed().as_secs_f64()
        );
    }
    daemon.stop(STOP_TIMEOUT).await?;
    Ok(curve)
}

/// The metrics curve: a fresh daemon per size.
async fn metrics_curve(
    args: &CurvesArgs,
    sizes: &[u64],
    queries: usize,
    rounds: usize,
) -> Result<Curve> {
    let mut curve = Curve::new(Signal::Metrics);
    for &size in sizes {
        let series = usize::try_from(size).context("too many series")?;
        ensure!(
            series >= QUERY_SERIES,
            "metrics sizes must be at least {QUERY_SERIES} series (the queried family alone has that many)"
        );
        let step = Instant::now();
        eprintln!("== metrics: {series} series, {rounds} rounds");
        let scratch = Scratch::create(args.keep)?;
        let data_dir = scratch.data_dir();
        // The default limits (1M series, 100k per metric) would refuse part
        // of the largest sizes; an operator raises them the same way.
        let limit = (2 * series).max(1_000_000).to_string();
        let mut daemon = Daemon::start_with(
            &args.strand,
            &data_dir,
            &scratch.log(),
            &["--max-series", &limit, "--max-series-per-metric", &limit],
        )
        .await?;
        let http = daemon.http_url();

        let rounds_i64 = i64::try_from(rounds).context("--rounds is too large")?;
        let start_ms =
            (metrics::now_ms() / SCRAPE_INTERVAL_MS - rounds_i64 - 1) * SCRAPE_INTERVAL_MS;
        let end_s = (start_ms + rounds_i64 * SCRAPE_INTERVAL_MS) / 1000;
        let mut rng = SmallRng::seed_from_u64(metrics::SEED);
        let mut set = SeriesSet::new(series, Values::Realistic, &mut rng);
        let chunk = (CHUNK_SAMPLES / series).clamp(1, rounds);
        let (mut elapsed, mut sent, mut acked) = (Duration::ZERO, 0u64, 0u64);
        let (mut rss_before, mut rss_after, mut rss_peak) = (None, None, None);
        let mut done = 0;
        while done < rounds {
            let n = chunk.min(rounds - done);
            let payloads = Arc::new(set.build_requests(
                args.clients,
                SAMPLES_PER_REQUEST,
                n,
                start_ms + done as i64 * SCRAPE_INTERVAL_MS,
                &mut rng,
            )?);
            sent += payloads.iter().flatten().map(|p| p.samples).sum::<u64>();
            eprintln!("metrics: rounds {done}..{} of {rounds}", done + n);
            let load =
                metrics::run_load("strand", &mut daemon.process, &[], &payloads, args.clients)
                    .await?;
            elapsed += load.elapsed;
            acked += load.samples;
            rss_before = rss_before.or(load.rss_before);
            rss_after = load.rss_after;
            rss_peak = rss_peak.max(load.rss_peak);
            done += n;
        }
        if acked != sent {
            curve.problem(format!(
                "{acked} of {sent} samples acknowledged at {series} series"
            ));
        }
        let query = RangeQuery::rate(
            end_s - QUERY_RANGE_S.min(rounds_i64 * SCRAPE_INTERVAL_MS / 1000 - RATE_WINDOW_S),
            end_s,
        );
        let answered = metrics::run_queries("strand", &http, &query, queries).await?;
        if answered.errors > 0 {
            curve.problem(format!(
                "{} range queries failed at {series} series",
                answered.errors
            ));
        }
        let stopped = daemon.stop(STOP_TIMEOUT).await?;
        eprintln!(
            "strand exited with {} after {:.1}s",
            stopped.status,
            stopped.took.as_secs_f64()
        );
        let store = data_dir.join("metrics");
        let disk = daemon::dir_bytes(&store)?;
        daemon::print_breakdown(&store);
        let load_s = elapsed.as_secs_f64();
        let per_series = rss_before
            .zip(rss_after)
            .map_or(f64::NAN, |(before, after)| {
                (after as f64 - before as f64) / series as f64
            });
        curve.push(
            size,
            &[
                load_s,
                step.elapsed().as_secs_f64(),
                acked as f64 / load_s,
                mb(rss_after),
                mb(rss_peak),
                per_series,
                mb(Some(disk)),
                disk as f64 / acked as f64,
                p50(answered.latency),
                p99(answered.latency),
            ],
        );
        eprintln!(
            "== metrics: {series} series measured; the step took {:.0}s",
            step.elapsed().as_secs_f64()
        );
    }
    Ok(curve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_with_suffixes() {
        assert_eq!(parse_size("50000"), Ok(50_000));
        assert_eq!(parse_size("100k"), Ok(100_000));
        assert_eq!(parse_size("1M"), Ok(1_000_000));
        assert_eq!(parse_size("2.5M"), Ok(2_500_000));
        assert_eq!(parse_size(" 5K "), Ok(5_000));
        for bad in ["", "k", "1.5", "-1k", "0", "1x", "1e20"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weighted_picks_follow_the_steps_spans() {
        let trace = |n: u8| TraceRef {
            id: [n; 16],
            spans: 10,
        };
        // The second step stored nine times the spans of the first.
        let steps = vec![
            (1_000, vec![trace(1)]),
            (0, Vec::new()),
            (9_000, vec![trace(2), trace(3)]),
        ];
        let mut rng = SmallRng::seed_from_u64(3);
        let picks = pick_weighted(&steps, 10_000, &mut rng);
        assert_eq!(picks.len(), 10_000);
        let first = picks.iter().filter(|t| t.id == [1; 16]).count();
        assert!((700..1_300).contains(&first), "{first} of 10000");
        assert!(picks.iter().any(|t| t.id == [3; 16]));
        assert!(pick_weighted(&[(5, Vec::new())], 3, &mut rng).is_empty());
    }

    #[test]
    fn csv_svg_and_table_have_a_row_per_size() {
        let mut curve = Curve::new(Signal::Metrics);
        let columns = METRIC_COLUMNS.len();
        curve.push(1_000, &vec![1.5; columns]);
        let mut second = vec![2.25; columns];
        second[5] = -3.0;
        curve.push(2_000, &second);
        let mut third = vec![4.0; columns];
        third[0] = f64::NAN;
        third[1] = 0.0;
        curve.push(4_000, &third);

        let csv = curve.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("series,load_s,step_s,ingest_samples_per_s,"));
        assert_eq!(lines[0].split(',').count(), columns + 1);
        assert!(lines[2].starts_with("2000,2.25,"));
        assert!(lines[3].starts_with("4000,,0,4,"));

        // The NaN and the zero are missing; the negative RSS change is fine.
        let missing = curve.missing();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].starts_with("load_s at 4000"));

        let svg = curve.svg();
        let charted = METRIC_COLUMNS.iter().filter(|c| c.chart).count();
        assert_eq!(svg.matches("<g class=\"panel\"").count(), charted);
        assert_eq!(svg.matches("<circle").count(), 3 * charted);
        assert!(svg.contains("RSS per active series"));

        let table = curve.table();
        assert_eq!(table.lines().filter(|l| l.starts_with("| ")).count(), 4);
        let json = curve.json().finish();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["rows"]["2000"]["rss_bytes_per_series"], -3.0);
        assert!(parsed["rows"]["4000"]["load_s"].is_null());
    }
}
