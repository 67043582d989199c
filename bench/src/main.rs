//! `strand-bench`: load generator and benchmark for the `strand` daemon.
//!
//! It drives the real binary from outside (OTLP/gRPC and Prometheus remote
//! write in, query APIs out, RSS from /proc, bytes from the data directory),
//! so the numbers are
//! the ones an operator would see. Progress goes to stderr; the result is a
//! single JSON line on stdout, easy to append to a results file and diff.

mod baseline;
mod chart;
mod compare;
mod compare_traces;
mod curves;
mod daemon;
mod idle;
mod logs;
mod metrics;
mod nodes;
mod remote_write;
mod report;
mod rules;
mod stats;
mod traces;
mod ui;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "strand-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace ingest over OTLP/gRPC, storage cost, restart, and trace-by-id
    /// query latency.
    ///
    /// By default spawns `--strand` on a fresh temporary data directory,
    /// loads it, stops it with SIGTERM, measures the data directory, restarts
    /// it on the same directory and queries sampled traces. With
    /// `--target-grpc` it loads an already running daemon instead (no
    /// restart phase).
    Traces(TracesArgs),

    /// Log ingest over OTLP/gRPC with durable acks, time until searchable,
    /// bytes on disk against raw bytes, search and histogram latency after a
    /// restart, and bare tantivy indexing the same documents for comparison.
    Logs(LogsArgs),

    /// Prometheus remote-write ingest with durable acks, bytes per sample on
    /// disk, memory per active series and PromQL range-query latency after a
    /// restart, side by side with Prometheus given the identical load.
    Metrics(MetricsArgs),

    /// The web UI's trace view: one trace of `--spans` spans over OTLP, then
    /// `--runs` cold page loads of `#/trace/<id>` in headless Chromium (via
    /// chromedriver), each timed from navigation start until the waterfall
    /// was drawn; plus the bytes the UI transferred.
    Ui(UiArgs),

    /// Strand, Prometheus and VictoriaMetrics side by side on the same
    /// remote-write load (a realistic and a full-precision generator):
    /// ingest rate, bytes per sample after compaction, RSS per active
    /// series, and query latency per class over the PromQL differential
    /// corpus and the shop dashboard, with the answers' agreement. Prints a
    /// table (ratios Strand / peer), writes CSV into `--results`.
    Compare(CompareArgs),
    /// Strand and Jaeger v2 (Badger on disk, synced writes) side by side:
    /// the same OTLP load to each, then trace-by-id and search latency over
    /// what they stored, bytes per span and RSS; a ratio table on stderr,
    /// JSON and CSV in `--results`.
    CompareTraces(compare_traces::CompareTracesArgs),

    /// Scaling curves: how ingest rate, RSS, bytes on disk and query
    /// latency grow with the data held (traces and logs: one daemon loaded
    /// step by step to each size; metrics: a daemon per number of active
    /// series). Writes curves-<signal>.csv and .svg into `--results`.
    Curves(curves::CurvesArgs),

    /// What the daemon costs with no traffic: loads spans, log lines and
    /// series, then RSS and CPU (% of one core) over a quiet period, after
    /// the load settled and after a restart over the same data.
    Idle(IdleArgs),

    /// Rule evaluation cost: `--rules` generated recording and alerting
    /// rules over `--series` series, evaluated every `--interval`; the
    /// evaluation time per interval and the daemon's CPU share.
    Rules(RulesArgs),
}

/// Options of `strand-bench compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The strand binary to spawn.
    #[arg(long, value_name = "PATH", default_value = "target/release/strand")]
    pub strand: PathBuf,

    /// The Prometheus binary.
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/prometheus")]
    pub prometheus: PathBuf,

    /// The VictoriaMetrics binary (Debian's `victoria-metrics`).
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/victoria-metrics")]
    pub victoria_metrics: PathBuf,

    /// Active series (at least 1000).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub series: usize,

    /// Scrapes per series, 15 s apart, ending before now (at least 300;
    /// 480 = 2 hours).
    #[arg(long, value_name = "N", default_value_t = 480)]
    pub rounds: usize,

    /// Concurrent remote-write clients.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub clients: usize,

    /// Samples per remote-write request.
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    pub samples_per_request: usize,

    /// Times each query request runs (all runs are measured).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub query_runs: usize,

    /// Only the realistic generator, not the full-precision one.
    #[arg(long)]
    pub realistic_only: bool,

    /// A small run for the test suite (2,000 series, 300 rounds, whatever
    /// --series and --rounds say) that fails unless every figure was
    /// produced and Strand's answers equal Prometheus's.
    #[arg(long)]
    pub quick: bool,

    /// Directory for the CSV files.
    #[arg(long, value_name = "DIR", default_value_os_t = compare::default_results())]
    pub results: PathBuf,

    /// Keep the temporary data directories and logs.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `strand-bench idle`.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// The strand binary to spawn.
    #[arg(long, value_name = "PATH", default_value = "target/release/strand")]
    pub strand: PathBuf,

    /// Spans stored before measuring.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub spans: u64,

    /// Log lines stored before measuring.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub log_lines: u64,

    /// Metric series stored before measuring (at least 1000).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub series: usize,

    /// Seconds to wait for the daemon to settle before each measurement.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub settle: u64,

    /// Seconds each quiet period is measured.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub measure: u64,

    /// A small run for the test suite: at most 20,000 spans and log lines,
    /// 1000 series, 5 s settling and 10 s measured.
    #[arg(long)]
    pub quick: bool,

    /// Keep the temporary data directory and daemon log.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `strand-bench rules`.
#[derive(Args, Debug, Clone)]
pub struct RulesArgs {
    /// The strand binary to spawn.
    #[arg(long, value_name = "PATH", default_value = "target/release/strand")]
    pub strand: PathBuf,

    /// Rules, in groups of 100.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub rules: usize,

    /// Active series (at least 1000).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub series: usize,

    /// Every group's evaluation interval.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,

    /// Measured intervals, after two warm-up ones.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub intervals: usize,

    /// Keep the temporary data directory and daemon log.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `strand-bench ui`.
#[derive(Args, Debug, Clone)]
pub struct UiArgs {
    /// The strand binary to spawn.
    #[arg(long, value_name = "PATH", default_value = "target/release/strand")]
    pub strand: PathBuf,

    /// The chromedriver binary (default: $STRAND_CHROMEDRIVER, then
    /// /usr/bin/chromedriver or /usr/lib/chromium/chromedriver).
    #[arg(long, value_name = "PATH")]
    pub chromedriver: Option<PathBuf>,

    /// The Chromium binary (default: /usr/bin/chromium if present, else
    /// whatever chromedriver finds).
    #[arg(long, value_name = "PATH")]
    pub chromium: Option<PathBuf>,

    /// Spans in the trace.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub spans: usize,

    /// Cold page loads, each in a fresh browser session.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub runs: usize,

    /// Seed of the generated trace's shape, so runs are comparable.
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,

    /// Keep the temporary data directory and logs.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `strand-bench metrics`.
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// The strand binary to spawn.
    #[arg(long, value_name = "PATH", default_value = "target/release/strand")]
    pub strand: PathBuf,

    /// The Prometheus binary to compare with.
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/prometheus")]
    pub prometheus: PathBuf,

    /// Measure Strand only.
    #[arg(long)]
    pub no_prometheus: bool,

    /// Active series (at least 1000: the queried family `x` alone has 1000).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub series: usize,

    /// Scrapes per series, 15 s apart, ending before now (480 = 2 hours).
    #[arg(long, value_name = "N", default_value_t = 480)]
    pub rounds: usize,

    /// Concurrent remote-write clients, each on its own connection and
    /// owning a disjoint shard of the series.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub clients: usize,

    /// Samples per remote-write request (Prometheus's max_samples_per_send).
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    pub samples_per_request: usize,

    /// Measured range queries per system, after the restart (after 5
    /// warm-up queries).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub queries: usize,

    /// Where Strand keeps samples: `embedded`, or `clickhouse` (a
    /// ClickHouse server started for the run, Debian's clickhouse-server;
    /// bytes on disk are then ClickHouse's).
    #[arg(long, value_enum, default_value = "embedded")]
    pub storage: Storage,

    /// Strand nodes taking the load, each its own process and data
    /// directory, over the one ClickHouse (with --storage clickhouse);
    /// RSS is the first node's.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nodes: usize,

    /// Keep the temporary data directories and logs.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `strand-bench logs`.
#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// The strand binary to spawn.
    #[arg(long, value_name = "PATH", default_value = "target/release/strand")]
    pub strand: PathBuf,

    /// Length of the load phase in seconds (ignored with --lines).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub duration: u64,

    /// Stop after this many lines were sent instead of after --duration.
    #[arg(long, value_name = "N")]
    pub lines: Option<u64>,

    /// Concurrent gRPC clients, each on its own connection.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub clients: usize,

    /// Log lines per export request.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub lines_per_request: usize,

    /// Term queries and histogram queries each, after the restart.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub queries: usize,

    /// Skip indexing the same documents with bare tantivy.
    #[arg(long)]
    pub no_baseline: bool,

    /// Compress export requests with gzip.
    #[arg(long)]
    pub gzip: bool,

    /// Where the spawned daemon keeps logs: `embedded`, or `clickhouse`
    /// (a ClickHouse server started for the run, Debian's
    /// clickhouse-server; bytes on disk are then ClickHouse's plus the data
    /// directory's).
    #[arg(long, value_enum, default_value = "embedded")]
    pub storage: Storage,

    /// Strand nodes taking the load, each its own process and data
    /// directory, over the one ClickHouse (with --storage clickhouse);
    /// RSS, freshness and the queries are the first node's.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nodes: usize,

    /// Keep the temporary data directory and daemon log.
    #[arg(long)]
    pub keep: bool,
}

/// Where a benchmark's daemon keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Storage {
    Embedded,
    #[value(name = "clickhouse")]
    ClickHouse,
}

/// Options of `strand-bench traces`.
#[derive(Args, Debug, Clone)]
pub struct TracesArgs {
    /// The strand binary to spawn (ignored with --target-grpc).
    #[arg(long, value_name = "PATH", default_value = "target/release/strand")]
    pub strand: PathBuf,

    /// OTLP/gRPC address of an already running daemon, e.g. 127.0.0.1:4317;
    /// switches to attach mode.
    #[arg(long, value_name = "ADDR")]
    pub target_grpc: Option<String>,

    /// Query API base URL of the running daemon, e.g. http://127.0.0.1:7070
    /// (without it, attach mode skips the lookups).
    #[arg(long, value_name = "URL", requires = "target_grpc")]
    pub target_http: Option<String>,

    /// Pid of the running daemon, to sample its RSS.
    #[arg(long, value_name = "PID", requires = "target_grpc")]
    pub pid: Option<u32>,

    /// Data directory of the running daemon, to measure bytes on disk.
    #[arg(long, value_name = "DIR", requires = "target_grpc")]
    pub data_dir: Option<PathBuf>,

    /// Length of the load phase in seconds (ignored with --spans).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub duration: u64,

    /// Concurrent gRPC clients, each on its own connection.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub clients: usize,

    /// Traces per export request (about 10 spans each).
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub traces_per_request: usize,

    /// Stop after this many spans were sent instead of after --duration.
    #[arg(long, value_name = "N")]
    pub spans: Option<u64>,

    /// Trace-by-id queries after the load (after 100 warm-up queries).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub lookups: usize,

    /// Compress export requests with gzip, as SDKs configured with
    /// `compression = gzip` do.
    #[arg(long)]
    pub gzip: bool,

    /// While loading, keep this many clients each sending a PromQL query
    /// that runs until the daemon's query timeout (a subquery of billions of
    /// steps), to measure what expensive queries cost ingest (needs the
    /// query API: spawned daemon, or --target-http).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub expensive_queries: usize,

    /// Where the spawned daemon keeps spans: `embedded`, or `clickhouse`
    /// (a ClickHouse server started for the run, Debian's clickhouse-server;
    /// bytes on disk are then ClickHouse's plus the data directory's).
    #[arg(
        long,
        value_enum,
        default_value = "embedded",
        conflicts_with = "target_grpc"
    )]
    pub storage: Storage,

    /// Strand nodes taking the load, each its own process and data
    /// directory, over the one ClickHouse (with --storage clickhouse);
    /// RSS and the lookups are the first node's.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nodes: usize,

    /// Keep the temporary data directory and daemon log.
    #[arg(long)]
    pub keep: bool,
}

impl TracesArgs {
    /// The options of a load phase of `spans` spans for another benchmark
    /// that reuses this one's (`traces::run_load`, `traces::run_lookups`):
    /// a spawned daemon, nothing else switched on.
    fn load(
        strand: &Path,
        clients: usize,
        traces_per_request: usize,
        spans: u64,
        lookups: usize,
        keep: bool,
    ) -> TracesArgs {
        TracesArgs {
            strand: strand.to_path_buf(),
            target_grpc: None,
            target_http: None,
            pid: None,
            data_dir: None,
            duration: 0,
            clients,
            traces_per_request,
            spans: Some(spans),
            lookups,
            gzip: false,
            expensive_queries: 0,
            storage: Storage::Embedded,
            nodes: 1,
            keep,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Traces(args) => traces::run(&args).await,
        Command::Logs(args) => logs::run(&args).await,
        Command::Metrics(args) => metrics::run(&args).await,
        Command::Ui(args) => ui::run(&args).await,
        Command::Rules(args) => rules::run(&args).await,
        Command::Idle(args) => idle::run(&args).await,
        Command::Compare(args) => compare::run(&args).await,
        Command::CompareTraces(args) => compare_traces::run(&args).await,
        Command::Curves(args) => curves::run(&args).await,
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("strand-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
