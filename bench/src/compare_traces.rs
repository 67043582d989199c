//! `strand-bench compare-traces`: Strand and Jaeger v2 side by side.
//!
//! Users choosing a trace store compare it with Jaeger, so the figures must
//! come from the same load on the same machine. Both systems, one after the
//! other so each has the machine to itself, get:
//! 1. the same OTLP/gRPC load: the batch pool of [`workload`] (same services,
//!    attributes and trace shapes), `--spans` spans from `--clients`
//!    connections, every batch with fresh ids and timestamps (the load phase
//!    of the `traces` benchmark), while RSS is sampled;
//! 2. a settle pause, then RSS "after";
//! 3. SIGTERM (each flushes what it holds in memory), bytes on disk as
//!    allocated blocks (`du`), since Badger's files are sparse while open;
//! 4. a restart on the same directory, then trace-by-id lookups of sampled
//!    acked traces and searches (service + operation + time range) through
//!    the Jaeger query API, which both serve at the same paths.
//!
//! Jaeger is the all-in-one `jaeger` binary of Jaeger v2 (built by
//! `bench/jaeger/build.sh`) with Badger on disk and `consistency: true`
//! (Badger's SyncWrites), no batch processor and no exporter queue, so its
//! OTLP answer comes after the spans were synced, as Strand's does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use crate::TracesArgs;
use crate::daemon::{self, Daemon, Process, Scratch};
use crate::report::{JsonObject, round};
use crate::stats::Summary;
use crate::traces::{self, LoadResult, LookupResult};
use crate::workload::{self, Template};

/// Pause between the end of the load and the "after" RSS sample.
const SETTLE: Duration = Duration::from_secs(5);
/// SIGTERM to exit; both flush everything still in memory.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);
/// Unmeasured searches first.
const WARMUP_SEARCHES: usize = 8;
/// Traces a search asks for (Jaeger UI's default is 20).
const SEARCH_LIMIT: usize = 20;
/// The searches, in turn: one (service, operation) of every service of the
/// generated shop, each matching about every trace sent.
const SEARCHES: [(&str, &str); 4] = [
    ("gateway", "POST /api/orders"),
    ("order", "validate order"),
    ("inventory", "GET /inventory/reserve"),
    ("payment", "INSERT payments"),
];
/// The time range of a search, ending now.
const SEARCH_LOOKBACK: Duration = Duration::from_secs(3600);

/// Options of `strand-bench compare-traces`.
#[derive(Args, Debug, Clone)]
pub struct CompareTracesArgs {
    /// The strand binary to spawn.
    #[arg(long, value_name = "PATH", default_value = "target/release/strand")]
    pub strand: PathBuf,

    /// The Jaeger v2 binary (default: built by bench/jaeger/build.sh into
    /// $CARGO_TARGET_DIR, else target/).
    #[arg(long, value_name = "PATH")]
    pub jaeger: Option<PathBuf>,

    /// Spans sent to each system (Jaeger with synced Badger writes takes
    /// 600-1,000 spans/s from 8 clients on a 2-core VM).
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    pub spans: u64,

    /// Concurrent gRPC clients, each on its own connection.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub clients: usize,

    /// Traces per export request (about 10 spans each).
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub traces_per_request: usize,

    /// Trace-by-id queries per system (after 100 warm-up queries).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub lookups: usize,

    /// Searches per system (after a few warm-up ones).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub searches: usize,

    /// Where traces-vs-jaeger.json and .csv are written.
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    pub results: PathBuf,

    /// Keep the temporary data directories and logs.
    #[arg(long)]
    pub keep: bool,

    /// Small enough for the test suite (3,000 spans, 50 lookups, 10
    /// searches); fails unless every figure was produced and every answer
    /// was complete on both sides.
    #[arg(long)]
    pub quick: bool,
}

impl CompareTracesArgs {
    /// These options, with `--quick`'s sizes when it is set.
    fn sized(&self) -> Self {
        let mut args = self.clone();
        if args.quick {
            (args.spans, args.lookups, args.searches) = (3_000, 50, 10);
        }
        args
    }
}

/// One system's figures.
struct Side {
    load: LoadResult,
    rss_after: Option<u64>,
    bytes_on_disk: u64,
    lookups: LookupResult,
    searches: LookupResult,
}

impl Side {
    fn spans_per_s(&self) -> f64 {
        self.load.spans as f64 / self.load.elapsed.as_secs_f64()
    }

    fn bytes_per_span(&self) -> Option<f64> {
        (self.load.spans > 0).then(|| self.bytes_on_disk as f64 / self.load.spans as f64)
    }

    fn json(&self) -> JsonObject {
        let mb = |bytes: Option<u64>| bytes.map(|b| round(b as f64 / (1024.0 * 1024.0), 1));
        JsonObject::new()
            .field("spans_acked", self.load.spans)
            .field("duration_s", round(self.load.elapsed.as_secs_f64(), 3))
            .field("spans_per_s", round(self.spans_per_s(), 1))
            .field("rejected", self.load.rejected)
            .field("errors", self.load.errors)
            .summary("ack_latency_ms", self.load.ack_latency)
            .object(
                "rss_mb",
                JsonObject::new()
                    .field("peak_under_load", mb(self.load.rss_peak))
                    .field("after_load", mb(self.rss_after)),
            )
            .field("bytes_on_disk", self.bytes_on_disk)
            .field("bytes_per_span", self.bytes_per_span().map(|b| round(b, 2)))
            .summary("trace_by_id_ms", self.lookups.latency)
            .field("lookup_errors", self.lookups.errors)
            .summary("search_ms", self.searches.latency)
            .field("search_errors", self.searches.errors)
    }
}

/// A row of the ratio table: one figure of both systems and, where the issue
/// sets one, the target for Strand / Jaeger.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    metric: &'static str,
    strand: Option<f64>,
    jaeger: Option<f64>,
    target: Option<Target>,
}

/// A bound on the ratio Strand / Jaeger.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.strand, self.jaeger) {
            (Some(strand), Some(jaeger)) if jaeger > 0.0 => Some(strand / jaeger),
            _ => None,
        }
    }

    /// `Some(true)` when the ratio meets the target.
    fn met(&self) -> Option<bool> {
        let ratio = self.ratio()?;
        Some(match self.target? {
            Target::AtLeast(bound) => ratio >= bound,
            Target::AtMost(bound) => ratio <= bound,
        })
    }

    fn target_text(&self) -> String {
        match self.target {
            Some(Target::AtLeast(bound)) => format!(">= {bound}x"),
            Some(Target::AtMost(bound)) => format!("<= {bound}x"),
            None => String::new(),
        }
    }
}

fn rows(strand: &Side, jaeger: &Side) -> Vec<Row> {
    let mb = |bytes: Option<u64>| bytes.map(|b| b as f64 / (1024.0 * 1024.0));
    let p = |summary: Option<Summary>, pick: fn(&Summary) -> f64| summary.as_ref().map(pick);
    let row = |metric, f: &dyn Fn(&Side) -> Option<f64>, target| Row {
        metric,
        strand: f(strand),
        jaeger: f(jaeger),
        target,
    };
    vec![
        row(
            "span ingest (spans/s)",
            &|s| Some(s.spans_per_s()),
            Some(Target::AtLeast(2.0)),
        ),
        row("ack p99 (ms)", &|s| p(s.load.ack_latency, |s| s.p99), None),
        row(
            "trace by id p50 (ms)",
            &|s| p(s.lookups.latency, |s| s.p50),
            None,
        ),
        row(
            "trace by id p99 (ms)",
            &|s| p(s.lookups.latency, |s| s.p99),
            Some(Target::AtMost(0.5)),
        ),
        row(
            "search p50 (ms)",
            &|s| p(s.searches.latency, |s| s.p50),
            None,
        ),
        row(
            "search p99 (ms)",
            &|s| p(s.searches.latency, |s| s.p99),
            None,
        ),
        row(
            "bytes per span",
            &Side::bytes_per_span,
            Some(Target::AtMost(0.5)),
        ),
        row("RSS peak under load (MB)", &|s| mb(s.load.rss_peak), None),
        row("RSS after load (MB)", &|s| mb(s.rss_after), None),
    ]
}

/// Rounds for display: three significant digits are plenty for latencies
/// and ratios, whole numbers for rates.
fn number(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn verdict(row: &Row) -> &'static str {
    match row.met() {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    }
}

/// The table for people, as Markdown (pasted into bench/README.md as is).
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| metric | Strand | Jaeger v2 | Strand / Jaeger | target | |\n|---|---:|---:|---:|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.metric,
            number(row.strand),
            number(row.jaeger),
            number(row.ratio()),
            row.target_text(),
            verdict(row),
        );
    }
    out
}

/// The same rows as CSV, unrounded.
fn csv(rows: &[Row]) -> String {
    let field = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let mut out = String::from("metric,strand,jaeger,ratio,target,met\n");
    for row in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            row.metric,
            field(row.strand),
            field(row.jaeger),
            field(row.ratio()),
            row.target_text(),
            row.met().map_or(String::new(), |met| met.to_string()),
        );
    }
    out
}

/// Runs both systems and returns the JSON result line (also written, with
/// the CSV, to `--results`).
pub async fn run(args: &CompareTracesArgs) -> Result<String> {
    let args = &args.sized();
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.spans > 0, "--spans must be at least 1");
    ensure!(
        args.traces_per_request > 0,
        "--traces-per-request must be at least 1"
    );
    crate::daemon::ensure_strand_binary(&args.strand)?;
    let jaeger_binary = match &args.jaeger {
        Some(path) => {
            ensure!(
                path.is_file(),
                "jaeger binary not found at {}",
                path.display()
            );
            path.clone()
        }
        None => build_jaeger()?,
    };
    std::fs::create_dir_all(&args.results)
        .with_context(|| format!("creating {}", args.results.display()))?;

    // The load options of the `traces` benchmark, so its load phase is
    // reused unchanged.
    let load_args = TracesArgs::load(
        &args.strand,
        args.clients,
        args.traces_per_request,
        args.spans,
        args.lookups,
        args.keep,
    );
    let pool: Arc<Vec<Template>> = Arc::new(workload::build_pool(
        &mut rand::rng(),
        traces::pool_size(args.traces_per_request),
        args.traces_per_request,
    ));
    let scratch = Scratch::create(args.keep)?;

    eprintln!("== Strand: {}", args.strand.display());
    let (strand_dir, strand_log) = (scratch.data_dir(), scratch.log());
    let (binary, dir, log) = (&args.strand, &strand_dir, &strand_log);
    let strand = measure(args, &load_args, &pool, dir, &move || async move {
        let daemon = Daemon::start(binary, dir, log).await?;
        Ok((daemon.process, daemon.grpc))
    })
    .await?;

    eprintln!("== Jaeger v2: {}", jaeger_binary.display());
    let jaeger_dir = scratch.path.join("jaeger");
    let jaeger_log = scratch.path.join("jaeger.log");
    let config = scratch.path.join("jaeger.yaml");
    let (binary, dir, config, log) = (&jaeger_binary, &jaeger_dir, &config, &jaeger_log);
    let jaeger = measure(args, &load_args, &pool, dir, &move || async move {
        start_jaeger(binary, dir, config, log).await
    })
    .await?;

    let rows = rows(&strand, &jaeger);
    eprintln!("\n{}", table(&rows));
    if args.quick {
        ensure_complete(&rows, &[("Strand", &strand), ("Jaeger", &jaeger)])?;
    }
    let json = JsonObject::new()
        .field("bench", "compare-traces")
        .field("spans", args.spans)
        .field("clients", args.clients)
        .field("traces_per_request", args.traces_per_request)
        .field(
            "cores",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        )
        .object("strand", strand.json())
        .object("jaeger", jaeger.json())
        .object(
            "ratio",
            rows.iter().fold(JsonObject::new(), |object, row| {
                object.field(row.metric, row.ratio().map(|r| round(r, 3)))
            }),
        )
        .finish();
    let write = |name: &str, text: &str| {
        let path = args.results.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("traces-vs-jaeger.json", &format!("{json}\n"))?;
    write("traces-vs-jaeger.csv", &csv(&rows))?;
    eprintln!(
        "wrote traces-vs-jaeger.json and .csv to {}",
        args.results.display()
    );
    Ok(json)
}

/// `--quick`'s verdict: every figure of both systems measured, and no
/// refused export, failed lookup or short search answer on either side.
fn ensure_complete(rows: &[Row], sides: &[(&str, &Side)]) -> Result<()> {
    let mut problems: Vec<String> = rows
        .iter()
        .filter(|row| row.strand.is_none() || row.jaeger.is_none())
        .map(|row| format!("{} was not measured", row.metric))
        .collect();
    for (name, side) in sides {
        let failures = [
            ("refused exports", side.load.rejected),
            ("failed exports", side.load.errors),
            ("failed lookups", side.lookups.errors),
            ("failed searches", side.searches.errors),
        ];
        problems.extend(
            failures
                .iter()
                .filter(|(_, count)| *count > 0)
                .map(|(what, count)| format!("{name}: {count} {what}")),
        );
    }
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

/// Load, settle, stop, measure the directory, restart, query: one system.
/// `start` starts it on `data_dir` and returns, once it answers queries, the
/// process and its OTLP/gRPC address.
async fn measure<F, Fut>(
    args: &CompareTracesArgs,
    load_args: &TracesArgs,
    pool: &Arc<Vec<Template>>,
    data_dir: &Path,
    start: &F,
) -> Result<Side>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(Process, SocketAddr)>>,
{
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let (mut first, grpc) = start().await?;
    let name = first.name();
    let (grpc, http) = (format!("http://{grpc}"), first.http_url());
    let pid = first.pid();
    let load =
        traces::run_load(load_args, pool, &[grpc], Some(&http), pid, Some(&mut first)).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_after = pid.and_then(daemon::rss_bytes);
    eprintln!("stopping {name} with SIGTERM");
    let stopped = first.stop(STOP_TIMEOUT).await?;
    if !stopped.status.success() {
        eprintln!("warning: {name} exited with {}", stopped.status);
    }
    let bytes_on_disk = daemon::dir_allocated_bytes(data_dir)?;
    daemon::print_breakdown(data_dir);

    eprintln!("restarting {name} on the same data directory");
    let (second, _) = start().await?;
    let lookups = traces::run_lookups(&second.http_url(), &load.sample, args.lookups).await?;
    let searches = run_searches(&second.http_url(), args.searches).await?;
    second.stop(STOP_TIMEOUT).await?;
    Ok(Side {
        load,
        rss_after,
        bytes_on_disk,
        lookups,
        searches,
    })
}

/// Runs bench/jaeger/build.sh (cached by source hash) and returns the
/// binary's path.
fn build_jaeger() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("jaeger/build.sh");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    eprintln!("building Jaeger v2 with {} (cached)", script.display());
    let started = Instant::now();
    let output = Command::new(&script)
        .arg(&target)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed with {}", script.display(), output.status);
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    eprintln!(
        "jaeger at {} ({:.1}s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(path)
}

/// Jaeger v2's configuration: OTLP/gRPC in, straight to the Badger store
/// (no batch processor, no queue: the answer waits for the synced write),
/// the query API on `query`.
fn jaeger_config(
    data_dir: &Path,
    grpc: SocketAddr,
    query: SocketAddr,
    query_grpc: SocketAddr,
) -> String {
    let dir = data_dir.display();
    format!(
        "\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
    traces:
      level: none
extensions:
  jaeger_query:
    storage:
      traces: badger_store
    http:
      endpoint: {query}
    grpc:
      endpoint: {query_grpc}
  jaeger_storage:
    backends:
      badger_store:
        badger:
          directories:
            keys: {dir}/keys
            values: {dir}/values
          ephemeral: false
          consistency: true
          ttl:
            spans: 48h
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {grpc}
exporters:
  jaeger_storage_exporter:
    trace_storage: badger_store
    queue:
      enabled: false
"
    )
}

/// How long Jaeger's OTLP/gRPC receiver may take to listen once its query
/// API answers.
const JAEGER_OTLP_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts Jaeger v2 on `data_dir` with fresh ports and waits until its query
/// API answers and its OTLP/gRPC port takes connections (the query
/// extension can be up before the OTLP receiver is); returns it and its
/// OTLP/gRPC address.
async fn start_jaeger(
    binary: &Path,
    data_dir: &Path,
    config: &Path,
    log: &Path,
) -> Result<(Process, SocketAddr)> {
    let (grpc, query, query_grpc) = (
        daemon::free_addr()?,
        daemon::free_addr()?,
        daemon::free_addr()?,
    );
    std::fs::write(config, jaeger_config(data_dir, grpc, query, query_grpc))
        .with_context(|| format!("writing {}", config.display()))?;
    let mut command = Command::new(binary);
    command.arg("--config").arg(config);
    let process = Process::spawn("jaeger", command, query, "/api/services", log).await?;
    let deadline = std::time::Instant::now() + JAEGER_OTLP_TIMEOUT;
    while tokio::net::TcpStream::connect(grpc).await.is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "Jaeger's OTLP/gRPC receiver at {grpc} took no connection within {}s",
            JAEGER_OTLP_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((process, grpc))
}

/// `count` sequential searches (after a warm-up), cycling through
/// [`SEARCHES`]; each must answer 200 with [`SEARCH_LIMIT`] traces that all
/// have spans.
pub(crate) async fn run_searches(http_base: &str, count: usize) -> Result<LookupResult> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building HTTP client")?;
    eprintln!(
        "searches: {WARMUP_SEARCHES} warm-up + {count} GET /api/traces?service&operation&start&end&limit={SEARCH_LIMIT}"
    );
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0;
    for i in 0..WARMUP_SEARCHES + count {
        let (service, operation) = SEARCHES[i % SEARCHES.len()];
        let end_us = traces::now_ns() / 1_000;
        let start_us = end_us.saturating_sub(SEARCH_LOOKBACK.as_micros() as u64);
        let url = reqwest::Url::parse_with_params(
            &format!("{http_base}/api/traces"),
            [
                ("service", service),
                ("operation", operation),
                ("start", &start_us.to_string()),
                ("end", &end_us.to_string()),
                ("lookback", "1h"),
                ("limit", &SEARCH_LIMIT.to_string()),
            ],
        )
        .context("building the search URL")?;
        let started = Instant::now();
        let (status, body) = traces::fetch(&client, url.as_str()).await?;
        let took = started.elapsed();
        let measured = i >= WARMUP_SEARCHES;
        if measured {
            latencies.push(took.as_secs_f64() * 1e3);
        }
        if let Some(problem) = check_search(status, &body) {
            if errors < 5 {
                eprintln!("search error: {url}: {problem}");
            }
            errors += u64::from(measured);
        }
    }
    Ok(LookupResult {
        latency: Summary::of(latencies),
        errors,
    })
}

/// `None` if a search answered [`SEARCH_LIMIT`] traces with spans, else
/// what is wrong with the answer.
fn check_search(status: u16, body: &[u8]) -> Option<String> {
    if status != 200 {
        return Some(format!("HTTP {status}"));
    }
    let json: serde_json::Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(error) => return Some(format!("body is not JSON: {error}")),
    };
    let Some(traces) = json["data"].as_array() else {
        return Some("no data array in the answer".into());
    };
    if traces.len() != SEARCH_LIMIT {
        return Some(format!("{} traces, expected {SEARCH_LIMIT}", traces.len()));
    }
    let empty = traces
        .iter()
        .filter(|trace| trace["spans"].as_array().is_none_or(Vec::is_empty))
        .count();
    (empty > 0).then(|| format!("{empty} traces without spans"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_search_answers() {
        let trace = r#"{"traceID":"ab","spans":[{}]}"#;
        let full = format!(r#"{{"data":[{}]}}"#, vec![trace; SEARCH_LIMIT].join(","));
        assert_eq!(check_search(200, full.as_bytes()), None);
        let short = format!(r#"{{"data":[{trace}]}}"#);
        assert!(
            check_search(200, short.as_bytes())
                .unwrap()
                .contains("1 traces")
        );
        let hollow = full.replacen(r#""spans":[{}]"#, r#""spans":[]"#, 1);
        assert_eq!(
            check_search(200, hollow.as_bytes()).as_deref(),
            Some("1 traces without spans")
        );
        assert!(check_search(400, b"{}").unwrap().contains("400"));
        assert!(check_search(200, b"{}").unwrap().contains("no data"));
    }

    #[test]
    fn ratios_and_targets() {
        let row = |strand, jaeger, target| Row {
            metric: "m",
            strand: Some(strand),
            jaeger: Some(jaeger),
            target,
        };
        let ingest = row(90_000.0, 30_000.0, Some(Target::AtLeast(2.0)));
        assert_eq!(ingest.ratio(), Some(3.0));
        assert_eq!(ingest.met(), Some(true));
        let bytes = row(60.0, 100.0, Some(Target::AtMost(0.5)));
        assert_eq!(bytes.met(), Some(false));
        assert_eq!(row(1.0, 2.0, None).met(), None);
        assert_eq!(row(1.0, 0.0, None).ratio(), None);

        let rows = [ingest, bytes];
        let table = table(&rows);
        assert!(
            table.contains("| m | 90000 | 30000 | 3.000 | >= 2x | met |"),
            "{table}"
        );
        assert!(
            table.contains("| m | 60.0 | 100 | 0.600 | <= 0.5x | MISSED |"),
            "{table}"
        );
        assert_eq!(
            csv(&rows),
            "metric,strand,jaeger,ratio,target,met\nm,90000,30000,3,>= 2x,true\nm,60,100,0.6,<= 0.5x,false\n"
        );
    }

    #[test]
    fn jaeger_config_syncs_writes_without_queue() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let config = jaeger_config(Path::new("/d"), addr(1), addr(2), addr(3));
        for line in [
            "keys: /d/keys",
            "values: /d/values",
            "ephemeral: false",
            "consistency: true",
            "processors: []",
            "enabled: false",
            "endpoint: 127.0.0.1:1",
            "endpoint: 127.0.0.1:2",
        ] {
            assert!(config.contains(line), "{line} missing from\n{config}");
        }
    }
}
