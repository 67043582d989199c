//! The `compare` benchmark: Strand, Prometheus and VictoriaMetrics side by
//! side in one run, on the same remote-write load and the same queries.
//!
//! For each data generator ([`Values::Realistic`], [`Values::Full`]) the
//! load of [`crate::remote_write`] is built once, and each system in turn is
//! started on a fresh directory and free ports and gets exactly these
//! request bodies from `--clients` clients ([`metrics::run_load`], which also
//! samples RSS). Then each system's data is brought to rest the way that
//! system does it:
//! - Prometheus runs with 30-minute blocks (`--storage.tsdb.min-block-duration`
//!   and `max-block-duration`), so the head is compacted into blocks while
//!   the backfill arrives (with the default 2-hour blocks and 2 hours of data
//!   no block is ever cut); the data directory is left to settle;
//! - VictoriaMetrics gets `/internal/force_flush` and `/internal/force_merge`
//!   and is left to settle;
//! - Strand needs nothing: its flush runs on SIGTERM like the others' final
//!   flush.
//!
//! "Settled" means the data directory's size did not change for
//! [`daemon::SETTLE_QUIET`]. The resident set is sampled there a second
//! time: RSS per active series is given both at the load's end (ingest
//! buffers and allocator caches of the burst included) and at rest (what
//! each system keeps for the series once it has settled, the way it
//! does). Then the queries run: every query of the PromQL
//! differential corpus (`collector/tests/it/promql_diff/queries.txt`, its
//! placeholders filled in for this data) as an instant query at the end of
//! the data and, unless tagged `[instant]`, as a 30-minute range query; and
//! the panels of the built-in shop dashboard as instant and 1-hour range
//! queries. Each runs `--query-runs` times; the latencies per class give p50
//! and p99. Last, the system is stopped with SIGTERM and its data directory
//! measured (Prometheus: everything under its TSDB path; VictoriaMetrics:
//! `data` and `indexdb`, not the caches it saves at exit; Strand:
//! `<data>/metrics`).
//!
//! Answers are compared with Prometheus's: Strand's must be equal (same
//! result type, series and timestamps, values equal to the last bit, as in
//! the differential test); VictoriaMetrics answers MetricsQL, whose rate
//! extrapolation and lookback differ, so its agreement is a figure only.
//!
//! Output: a table per generator on stdout (ratios are Strand / peer), the
//! same figures as CSV in `--results` (`compare-metrics-<data>.csv`), each
//! query's median latency per system beside them
//! (`compare-queries-<data>.csv`, to trace a class's figures to its
//! queries), and the JSON line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::Value;
use strand_testkit::promql_corpus::{self, CORPUS};

use crate::CompareArgs;
use crate::daemon::{self, Daemon, Process, Scratch};
use crate::metrics::{self, LoadResult, SEED, STOP_TIMEOUT};
use crate::remote_write::{QUERY_SERIES, SCRAPE_INTERVAL_MS, SeriesSet, Values};
use crate::report::{JsonObject, round};
use crate::stats::Summary;

/// The built-in shop dashboard, whose panel queries run as they would in
/// the UI.
const SHOP_DASHBOARD: &str = include_str!("../../collector/src/store/shop_dashboard.json");
/// Range of the corpus's range queries and their default step (seconds), as
/// in the differential test.
const CORPUS_RANGE_S: i64 = 30 * 60;
const CORPUS_STEP_S: i64 = 60;
/// Range of the dashboard's range queries; the step is the scrape interval.
const DASHBOARD_RANGE_S: i64 = 60 * 60;
/// `$__rate_interval` of the dashboard: four scrape intervals, as Grafana
/// computes it.
const RATE_INTERVAL: &str = "1m";
/// Prometheus's block length: short enough that 2 hours of data compact.
const PROMETHEUS_BLOCK: &str = "30m";
/// Longest wait for the data directory to come to rest.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Per-query timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest relative difference still counted as "close" for
/// VictoriaMetrics's answers.
const CLOSE: f64 = 1e-6;
/// `--quick`: small enough for the test suite; every query runs once.
const QUICK_SERIES: usize = 2_000;
const QUICK_ROUNDS: usize = 300;

/// The systems, in the order they run and appear in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Strand,
    Prometheus,
    VictoriaMetrics,
}

const SYSTEMS: [System; 3] = [System::Strand, System::Prometheus, System::VictoriaMetrics];

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Strand => "strand",
            System::Prometheus => "prometheus",
            System::VictoriaMetrics => "victoria-metrics",
        }
    }

    /// Whether the remote-write answer waits for an fsync.
    fn durable_acks(self) -> bool {
        self == System::Strand
    }
}

/// A class of queries with its own latency figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    CorpusInstant,
    CorpusRange,
    DashboardInstant,
    DashboardRange,
}

const CLASSES: [Class; 4] = [
    Class::CorpusInstant,
    Class::CorpusRange,
    Class::DashboardInstant,
    Class::DashboardRange,
];

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::CorpusInstant => "corpus instant",
            Class::CorpusRange => "corpus range",
            Class::DashboardInstant => "dashboard instant",
            Class::DashboardRange => "dashboard range",
        }
    }
}

/// One query request, the same for every system.
#[derive(Debug, Clone)]
struct Request {
    class: Class,
    expr: String,
    /// `(start, end, step)` of a range query; an instant query runs at `end`.
    range: Option<(i64, i64, i64)>,
    end: i64,
}

impl Request {
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![("query", self.expr.clone())];
        match self.range {
            Some((start, end, step)) => params.extend([
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("step", step.to_string()),
            ]),
            None => params.push(("time", self.end.to_string())),
        }
        params
    }

    fn path(&self) -> &'static str {
        if self.range.is_some() {
            "/api/v1/query_range"
        } else {
            "/api/v1/query"
        }
    }
}

/// The corpus's queries for data ending at `end` (seconds): an instant query
/// at `end` each, and a range query unless tagged `[instant]`.
fn corpus_requests(corpus: &str, start: i64, end: i64) -> Result<Vec<Request>> {
    let mut out = Vec::new();
    for query in promql_corpus::corpus_queries(corpus, start, end)? {
        out.push(Request {
            class: Class::CorpusInstant,
            expr: query.expr.clone(),
            range: None,
            end,
        });
        if !query.instant_only {
            out.push(Request {
                class: Class::CorpusRange,
                expr: query.expr,
                range: Some((
                    end - CORPUS_RANGE_S,
                    end,
                    query.step.unwrap_or(CORPUS_STEP_S),
                )),
                end,
            });
        }
    }
    Ok(out)
}

/// The shop dashboard's panel queries with every service selected, as
/// instant queries at `end` and range queries over the hour before.
fn dashboard_requests(dashboard: &str, end: i64) -> Result<Vec<Request>> {
    let json: Value = serde_json::from_str(dashboard).context("parsing the shop dashboard")?;
    let panels = json["panels"]
        .as_array()
        .context("the shop dashboard has no panels")?;
    let mut out = Vec::new();
    for panel in panels {
        let expr = panel["query"]
            .as_str()
            .context("a shop panel without a query")?
            .replace("$service", ".*")
            .replace("$__rate_interval", RATE_INTERVAL);
        out.push(Request {
            class: Class::DashboardInstant,
            expr: expr.clone(),
            range: None,
            end,
        });
        out.push(Request {
            class: Class::DashboardRange,
            expr,
            range: Some((end - DASHBOARD_RANGE_S, end, SCRAPE_INTERVAL_MS / 1000)),
            end,
        });
    }
    Ok(out)
}

/// An answer reduced to what is compared: the result type and the series
/// (label set -> points as `(time, value)`), sorted by label set.
#[derive(Debug, PartialEq)]
enum Answer {
    Ok {
        kind: String,
        series: BTreeMap<String, Vec<(f64, f64)>>,
    },
    Error,
}

/// How two answers relate.
#[derive(Debug, PartialEq)]
enum Agreement {
    /// Same type, series and timestamps, values equal to the last bit (NaN
    /// equals NaN), or both errors.
    Equal,
    /// As `Equal`, but values within [`CLOSE`] relative difference.
    Close,
    Differ,
}

fn parse_value(value: &Value) -> Option<f64> {
    match value.as_str()? {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        text => text.parse().ok(),
    }
}

fn parse_point(point: &Value) -> Option<(f64, f64)> {
    Some((point[0].as_f64()?, parse_value(&point[1])?))
}

/// Parses a query API answer; anything but a well-formed success is
/// [`Answer::Error`].
fn parse_answer(body: &[u8]) -> Answer {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Answer::Error;
    };
    if json["status"] != "success" {
        return Answer::Error;
    }
    let data = &json["data"];
    let kind = data["resultType"].as_str().unwrap_or_default().to_string();
    let result = &data["result"];
    let series = match kind.as_str() {
        "scalar" | "string" => {
            let point = (result[0].as_f64(), parse_value(&result[1]));
            match point {
                (Some(t), Some(v)) => BTreeMap::from([(String::new(), vec![(t, v)])]),
                (Some(t), None) => BTreeMap::from([(
                    result[1].as_str().unwrap_or_default().to_string(),
                    vec![(t, 0.0)],
                )]),
                _ => return Answer::Error,
            }
        }
        "vector" | "matrix" => {
            let Some(items) = result.as_array() else {
                return Answer::Error;
            };
            let mut series = BTreeMap::new();
            for item in items {
                let labels: BTreeMap<&str, &str> = item["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                let points = if kind == "vector" {
                    parse_point(&item["value"]).map(|p| vec![p])
                } else {
                    item["values"]
                        .as_array()
                        .and_then(|values| values.iter().map(parse_point).collect())
                };
                let Some(points) = points else {
                    return Answer::Error;
                };
                series.insert(format!("{labels:?}"), points);
            }
            series
        }
        _ => return Answer::Error,
    };
    Answer::Ok { kind, series }
}

/// Compares `got` with `expected` (Prometheus's answer).
fn agreement(expected: &Answer, got: &Answer) -> Agreement {
    let (
        Answer::Ok {
            kind: k1,
            series: s1,
        },
        Answer::Ok {
            kind: k2,
            series: s2,
        },
    ) = (expected, got)
    else {
        return if expected == got {
            Agreement::Equal
        } else {
            Agreement::Differ
        };
    };
    if k1 != k2 || s1.len() != s2.len() {
        return Agreement::Differ;
    }
    let mut result = Agreement::Equal;
    for ((l1, p1), (l2, p2)) in s1.iter().zip(s2) {
        if l1 != l2 || p1.len() != p2.len() {
            return Agreement::Differ;
        }
        for (&(t1, v1), &(t2, v2)) in p1.iter().zip(p2) {
            if t1 != t2 {
                return Agreement::Differ;
            }
            if v1.to_bits() == v2.to_bits() || v1.is_nan() && v2.is_nan() {
                continue;
            }
            if (v1 - v2).abs() <= CLOSE * v1.abs().max(v2.abs()) {
                result = Agreement::Close;
            } else {
                return Agreement::Differ;
            }
        }
    }
    result
}

/// What was measured on one system for one generator.
struct Measured {
    system: System,
    /// Samples sent; `load.samples` were acknowledged.
    sent: u64,
    load: LoadResult,
    settle: Duration,
    /// Resident set once the data is at rest, before the queries.
    rss_at_rest: Option<u64>,
    bytes_on_disk: u64,
    latency: BTreeMap<Class, Option<Summary>>,
    /// Median latency of each request over its runs, in request order.
    per_request_ms: Vec<f64>,
    answers: Vec<Answer>,
}

/// A running system under test.
enum Running {
    Strand(Daemon),
    Other(Process),
}

impl Running {
    fn process(&mut self) -> &mut Process {
        match self {
            Running::Strand(daemon) => &mut daemon.process,
            Running::Other(process) => process,
        }
    }
}

/// Runs the whole comparison and returns the JSON result line.
pub async fn run(args: &CompareArgs) -> Result<String> {
    let (series, rounds, query_runs) = if args.quick {
        (QUICK_SERIES, QUICK_ROUNDS, 1)
    } else {
        (args.series, args.rounds, args.query_runs)
    };
    ensure!(
        series >= QUERY_SERIES && rounds * SCRAPE_INTERVAL_MS as usize >= 75 * 60_000,
        "--series must be at least {QUERY_SERIES} and --rounds at least 300 (75 minutes: the \
         dashboard's hour plus its rate window)"
    );
    ensure!(
        args.clients > 0 && args.samples_per_request > 0 && query_runs > 0,
        "--clients, --samples-per-request and --query-runs must be at least 1"
    );
    for (binary, what) in [
        (
            &args.strand,
            "strand (cargo build --release -p strand, or --strand PATH)",
        ),
        (&args.prometheus, "prometheus (apt-get install prometheus)"),
        (
            &args.victoria_metrics,
            "victoria-metrics (apt-get install victoria-metrics)",
        ),
    ] {
        ensure!(binary.is_file(), "{} not found: {what}", binary.display());
    }
    let generators: &[Values] = if args.realistic_only {
        &[Values::Realistic]
    } else {
        &[Values::Realistic, Values::Full]
    };
    let mut report = JsonObject::new()
        .field("bench", "compare")
        .field("quick", args.quick)
        .field("series", series)
        .field("rounds", rounds)
        .field("clients", args.clients)
        .field("samples_per_request", args.samples_per_request)
        .field("query_runs", query_runs);
    let mut problems = Vec::new();
    std::fs::create_dir_all(&args.results)
        .with_context(|| format!("creating {}", args.results.display()))?;
    for &values in generators {
        let data = match values {
            Values::Realistic => "realistic",
            Values::Full => "full",
        };
        let (requests, measured) = run_generator(args, values, series, rounds, query_runs).await?;
        let rows = rows(&measured, series);
        println!("{}", table(data, &rows, &measured));
        for (name, contents) in [
            (format!("compare-metrics-{data}.csv"), csv(data, &rows)),
            (
                format!("compare-queries-{data}.csv"),
                per_query_csv(&requests, &measured),
            ),
        ] {
            let path = args.results.join(name);
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        let disagreements = count(&measured, System::Strand, |a| a == Agreement::Differ);
        if disagreements > 0 {
            problems.push(format!(
                "{data}: {disagreements} of Strand's answers differ from Prometheus's"
            ));
        }
        let sent: u64 = measured.iter().map(|m| m.sent).max().unwrap_or_default();
        for m in &measured {
            if m.load.samples != sent {
                problems.push(format!(
                    "{data}: {} stored {} of {sent} samples",
                    m.system.name(),
                    m.load.samples
                ));
            }
        }
        for row in &rows {
            if row.values.iter().any(Option::is_none) {
                problems.push(format!("{data}: no figure for {}", row.figure));
            }
        }
        let mut object = JsonObject::new();
        for row in &rows {
            object = object.object(
                &row.key,
                SYSTEMS
                    .iter()
                    .zip(row.values)
                    .fold(JsonObject::new(), |o, (system, value)| {
                        o.field(system.name(), value.map(|v| round(v, 3)))
                    }),
            );
        }
        report = report.object(data, object.field("strand_disagreements", disagreements));
    }
    if args.quick {
        ensure!(problems.is_empty(), "{}", problems.join("; "));
    }
    for problem in &problems {
        eprintln!("warning: {problem}");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(report
        .object("machine", JsonObject::new().field("cores", cores))
        .finish())
}

/// Loads, settles, queries and measures every system on one generator's
/// data.
async fn run_generator(
    args: &CompareArgs,
    values: Values,
    series: usize,
    rounds: usize,
    query_runs: usize,
) -> Result<(Vec<Request>, Vec<Measured>)> {
    let rounds_i64 = i64::try_from(rounds).context("--rounds is too large")?;
    let start_ms = (metrics::now_ms() / SCRAPE_INTERVAL_MS - rounds_i64 - 1) * SCRAPE_INTERVAL_MS;
    let end_s = (start_ms + rounds_i64 * SCRAPE_INTERVAL_MS) / 1000;
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut set = SeriesSet::new(series, values, &mut rng);
    let payloads = Arc::new(set.build_requests(
        args.clients,
        args.samples_per_request,
        rounds,
        start_ms,
        &mut rng,
    )?);
    let sent: u64 = payloads.iter().flatten().map(|p| p.samples).sum();
    let mut requests = corpus_requests(CORPUS, start_ms / 1000, end_s)?;
    requests.extend(dashboard_requests(SHOP_DASHBOARD, end_s)?);
    eprintln!(
        "{values:?} data: {} series, {sent} samples; {} query requests",
        set.len(),
        requests.len()
    );
    let scratch = Scratch::create(args.keep)?;
    let mut measured = Vec::new();
    for system in SYSTEMS {
        let dir = scratch.path.join(system.name());
        let log = scratch.path.join(format!("{}.log", system.name()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (mut running, data_dir) = match system {
            System::Strand => (
                Running::Strand(Daemon::start(&args.strand, &dir, &log).await?),
                dir.join("metrics"),
            ),
            System::Prometheus => {
                let block_flags = [
                    format!("--storage.tsdb.min-block-duration={PROMETHEUS_BLOCK}"),
                    format!("--storage.tsdb.max-block-duration={PROMETHEUS_BLOCK}"),
                ];
                let flags: Vec<&str> = block_flags.iter().map(String::as_str).collect();
                (
                    Running::Other(
                        daemon::start_prometheus(&args.prometheus, &dir, &log, &flags).await?,
                    ),
                    dir.clone(),
                )
            }
            System::VictoriaMetrics => (
                Running::Other(
                    daemon::start_victoria_metrics(&args.victoria_metrics, &dir, &log).await?,
                ),
                dir.clone(),
            ),
        };
        let name = system.name();
        let load = metrics::run_load(name, running.process(), &[], &payloads, args.clients).await?;
        let base = running.process().http_url();
        let settled = Instant::now();
        if system == System::VictoriaMetrics {
            let http = reqwest::Client::new();
            for path in ["/internal/force_flush", "/internal/force_merge"] {
                let response = http
                    .get(format!("{base}{path}"))
                    .send()
                    .await
                    .with_context(|| format!("{name}: {path}"))?;
                ensure!(
                    response.status().is_success(),
                    "{name}: {path} answered {}",
                    response.status()
                );
            }
        }
        ensure!(
            daemon::settle(&data_dir, SETTLE_TIMEOUT).await,
            "{name}: {} still changed after {}s",
            data_dir.display(),
            SETTLE_TIMEOUT.as_secs()
        );
        let settle = settled.elapsed();
        let rss_at_rest = running.process().pid().and_then(daemon::rss_bytes);
        eprintln!("{name}: data at rest after {:.1}s", settle.as_secs_f64());
        let (latency, per_request_ms, answers) =
            run_queries(name, &base, &requests, query_runs).await?;
        let stopped = match running {
            Running::Strand(daemon) => daemon.stop(STOP_TIMEOUT).await?,
            Running::Other(process) => process.stop(STOP_TIMEOUT).await?,
        };
        eprintln!(
            "{name}: exited with {} after {:.2}s",
            stopped.status,
            stopped.took.as_secs_f64()
        );
        let bytes_on_disk = stored_bytes(system, &data_dir)?;
        daemon::print_breakdown(&data_dir);
        measured.push(Measured {
            system,
            sent,
            load,
            settle,
            rss_at_rest,
            bytes_on_disk,
            latency,
            per_request_ms,
            answers,
        });
    }
    Ok((requests, measured))
}

/// Bytes of stored data: everything but VictoriaMetrics's saved caches.
fn stored_bytes(system: System, dir: &Path) -> Result<u64> {
    match system {
        System::VictoriaMetrics => {
            Ok(daemon::dir_bytes(&dir.join("data"))? + daemon::dir_bytes(&dir.join("indexdb"))?)
        }
        _ => daemon::dir_bytes(dir),
    }
}

/// Runs every request `runs` times in order; returns the latencies per
/// class, the median latency of each request and the first answer to each
/// request.
async fn run_queries(
    name: &str,
    base: &str,
    requests: &[Request],
    runs: usize,
) -> Result<(BTreeMap<Class, Option<Summary>>, Vec<f64>, Vec<Answer>)> {
    let client = reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .build()
        .context("building HTTP client")?;
    let mut latencies: BTreeMap<Class, Vec<f64>> = BTreeMap::new();
    let mut per_request = vec![Vec::with_capacity(runs); requests.len()];
    let mut answers = Vec::with_capacity(requests.len());
    let mut errors = 0;
    for run in 0..runs {
        for (request, request_latencies) in requests.iter().zip(&mut per_request) {
            let started = Instant::now();
            let sent = client
                .post(format!("{base}{}", request.path()))
                .form(&request.params())
                .send()
                .await;
            // A timeout or a dropped connection counts as an error answer.
            let body = match sent {
                Ok(response) => response.bytes().await.unwrap_or_default(),
                Err(error) => {
                    eprintln!("{name}: {}: {error}", request.expr);
                    Default::default()
                }
            };
            let latency_ms = started.elapsed().as_secs_f64() * 1e3;
            latencies.entry(request.class).or_default().push(latency_ms);
            request_latencies.push(latency_ms);
            if run == 0 {
                let answer = parse_answer(&body);
                errors += usize::from(answer == Answer::Error);
                answers.push(answer);
            }
        }
    }
    eprintln!(
        "{name}: {} query requests x {runs}, {errors} answered with an error",
        requests.len()
    );
    Ok((
        CLASSES
            .iter()
            .map(|&class| {
                (
                    class,
                    Summary::of(latencies.remove(&class).unwrap_or_default()),
                )
            })
            .collect(),
        per_request
            .into_iter()
            .map(|l| Summary::of(l).map_or(f64::NAN, |s| s.p50))
            .collect(),
        answers,
    ))
}

/// Answers of `system` whose agreement with Prometheus's satisfies `pick`.
fn count(measured: &[Measured], system: System, pick: impl Fn(Agreement) -> bool) -> usize {
    let Some(prometheus) = measured.iter().find(|m| m.system == System::Prometheus) else {
        return 0;
    };
    let Some(other) = measured.iter().find(|m| m.system == system) else {
        return 0;
    };
    prometheus
        .answers
        .iter()
        .zip(&other.answers)
        .filter(|(p, o)| pick(agreement(p, o)))
        .count()
}

/// One line of the table: a figure for each system, in [`SYSTEMS`] order.
struct Row {
    figure: String,
    key: String,
    /// Whether Strand / peer is meaningful (not for counts).
    ratio: bool,
    values: [Option<f64>; 3],
}

fn rows(measured: &[Measured], series: usize) -> Vec<Row> {
    let each = |f: &dyn Fn(&Measured) -> Option<f64>| -> [Option<f64>; 3] {
        let mut values = [None; 3];
        for (slot, system) in values.iter_mut().zip(SYSTEMS) {
            *slot = measured.iter().find(|m| m.system == system).and_then(f);
        }
        values
    };
    // Growth of the resident set since just before the load.
    let per_series = |m: &Measured, after: Option<u64>| {
        let (before, after) = m.load.rss_before.zip(after)?;
        Some((after as f64 - before as f64) / series as f64)
    };
    let row = |figure: &str, key: &str, ratio: bool, values| Row {
        figure: figure.into(),
        key: key.into(),
        ratio,
        values,
    };
    let mut rows = vec![
        row(
            "ingest, samples/s",
            "ingest_samples_per_s",
            true,
            each(&|m| Some(m.load.samples as f64 / m.load.elapsed.as_secs_f64())),
        ),
        row(
            "ack p99, ms",
            "ack_p99_ms",
            true,
            each(&|m| m.load.ack_latency.map(|l| l.p99)),
        ),
        row(
            "bytes/sample on disk",
            "bytes_per_sample",
            true,
            each(&|m| (m.load.samples > 0).then(|| m.bytes_on_disk as f64 / m.load.samples as f64)),
        ),
        row(
            "RSS per series at load end, bytes",
            "rss_bytes_per_series",
            true,
            each(&|m| per_series(m, m.load.rss_after)),
        ),
        row(
            "RSS per series at rest, bytes",
            "rss_at_rest_bytes_per_series",
            true,
            each(&|m| per_series(m, m.rss_at_rest)),
        ),
        row(
            "peak RSS, MB",
            "rss_peak_mb",
            true,
            each(&|m| m.load.rss_peak.map(|b| b as f64 / 1048576.0)),
        ),
        row(
            "settling after the load, s",
            "settle_s",
            true,
            each(&|m| Some(m.settle.as_secs_f64())),
        ),
    ];
    for class in CLASSES {
        for (which, pick) in [("p50", 0), ("p99", 1)] {
            let name = class.name();
            rows.push(row(
                &format!("{name} {which}, ms"),
                &format!("{}_{which}_ms", name.replace(' ', "_")),
                true,
                each(&|m| {
                    m.latency
                        .get(&class)
                        .copied()
                        .flatten()
                        .map(|s| if pick == 0 { s.p50 } else { s.p99 })
                }),
            ));
        }
    }
    let total = measured.first().map_or(0, |m| m.answers.len()) as f64;
    let agreeing = |system: System, close: bool| {
        Some(count(measured, system, |a| {
            a == Agreement::Equal || close && a == Agreement::Close
        }) as f64)
    };
    rows.push(row(
        "answers equal to Prometheus's",
        "answers_equal",
        false,
        [
            agreeing(System::Strand, false),
            Some(total),
            agreeing(System::VictoriaMetrics, false),
        ],
    ));
    rows.push(row(
        "answers within 1e-6 of Prometheus's",
        "answers_close",
        false,
        [
            agreeing(System::Strand, true),
            Some(total),
            agreeing(System::VictoriaMetrics, true),
        ],
    ));
    rows.push(row(
        "non-empty answers",
        "answers_non_empty",
        false,
        each(&|m| {
            let non_empty = m
                .answers
                .iter()
                .filter(|a| matches!(a, Answer::Ok { series, .. } if !series.is_empty()));
            Some(non_empty.count() as f64)
        }),
    ));
    rows
}

fn ratio(row: &Row, peer: usize) -> Option<f64> {
    let (strand, peer) = (row.values[0]?, row.values[peer]?);
    (row.ratio && peer != 0.0).then(|| strand / peer)
}

fn cell(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// The table for people, with a note on durable acks.
fn table(data: &str, rows: &[Row], measured: &[Measured]) -> String {
    let mut out = String::new();
    let samples = measured.first().map_or(0, |m| m.load.samples);
    let _ = writeln!(out, "## metrics, {data} data ({samples} samples)\n");
    let _ = writeln!(
        out,
        "| {:<36} | {:>10} | {:>10} | {:>16} | {:>13} | {:>13} |",
        "figure", "strand", "prometheus", "victoria-metrics", "strand/prom", "strand/vm"
    );
    let _ = writeln!(
        out,
        "|{:-<38}|{:->12}|{:->12}|{:->18}|{:->15}|{:->15}|",
        ":", ":", ":", ":", ":", ":"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {:<36} | {:>10} | {:>10} | {:>16} | {:>13} | {:>13} |",
            row.figure,
            cell(row.values[0]),
            cell(row.values[1]),
            cell(row.values[2]),
            cell(ratio(row, 1)),
            cell(ratio(row, 2)),
        );
    }
    let acks: Vec<String> = SYSTEMS
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s.name(),
                if s.durable_acks() {
                    "fsyncs before it acks"
                } else {
                    "acks before fsync"
                }
            )
        })
        .collect();
    let _ = writeln!(out, "\nDurable acks: {}.", acks.join(", "));
    out
}

/// The same figures as CSV, one line per figure.
fn csv(data: &str, rows: &[Row]) -> String {
    let mut out = String::from(
        "data,figure,strand,prometheus,victoria_metrics,strand_per_prometheus,strand_per_victoria_metrics\n",
    );
    let field = |v: Option<f64>| v.map(|v| round(v, 6).to_string()).unwrap_or_default();
    for row in rows {
        let _ = writeln!(
            out,
            "{data},{},{},{},{},{},{}",
            row.key,
            field(row.values[0]),
            field(row.values[1]),
            field(row.values[2]),
            field(ratio(row, 1)),
            field(ratio(row, 2)),
        );
    }
    out
}

/// Each request's median latency per system, one line per request, so that
/// a class's p50 can be traced to the queries behind it.
fn per_query_csv(requests: &[Request], measured: &[Measured]) -> String {
    let mut out = String::from("class,expr,strand_ms,prometheus_ms,victoria_metrics_ms\n");
    for (i, request) in requests.iter().enumerate() {
        let _ = write!(
            out,
            "{},\"{}\"",
            request.class.name(),
            request.expr.replace('"', "\"\"")
        );
        for system in SYSTEMS {
            let latency = measured
                .iter()
                .find(|m| m.system == system)
                .and_then(|m| m.per_request_ms.get(i));
            let _ = write!(
                out,
                ",{}",
                latency
                    .map(|&l| round(l, 4).to_string())
                    .unwrap_or_default()
            );
        }
        out.push('\n');
    }
    out
}

/// Where `--results` points by default: `bench/results` of the source tree.
pub fn default_results() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_fills_placeholders_and_tags() {
        let corpus = "# comment\n\nup\n[instant] x[5m]\n[step=15] rate(y[1m] @ {END})\n";
        let requests = corpus_requests(corpus, 1_000, 4_000).unwrap();
        let shapes: Vec<_> = requests
            .iter()
            .map(|r| (r.class, r.expr.as_str(), r.range))
            .collect();
        assert_eq!(
            shapes,
            [
                (Class::CorpusInstant, "up", None),
                (Class::CorpusRange, "up", Some((2_200, 4_000, 60))),
                (Class::CorpusInstant, "x[5m]", None),
                (Class::CorpusInstant, "rate(y[1m] @ 4000)", None),
                (
                    Class::CorpusRange,
                    "rate(y[1m] @ 4000)",
                    Some((2_200, 4_000, 15))
                ),
            ]
        );
        assert!(corpus_requests("[bogus] up", 0, 1).is_err());
        // The real corpus parses and has both classes.
        let real = corpus_requests(CORPUS, 0, 10_000).unwrap();
        assert!(real.iter().any(|r| r.class == Class::CorpusRange));
        assert!(real.iter().all(|r| !r.expr.contains("{END}")));
    }

    #[test]
    fn dashboard_queries_have_variables_filled() {
        let requests = dashboard_requests(SHOP_DASHBOARD, 7_200).unwrap();
        assert!(requests.len() >= 2);
        for r in &requests {
            assert!(!r.expr.contains('$'), "{}", r.expr);
            assert!(r.expr.contains("traces_span_metrics_"), "{}", r.expr);
        }
    }

    #[test]
    fn agreement_is_bit_exact_or_close() {
        let vector = |v: &str| {
            parse_answer(
                format!(
                    r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"a":"1"}},"value":[10,"{v}"]}}]}}}}"#
                )
                .as_bytes(),
            )
        };
        assert_eq!(agreement(&vector("0.5"), &vector("0.5")), Agreement::Equal);
        assert_eq!(agreement(&vector("NaN"), &vector("NaN")), Agreement::Equal);
        assert_eq!(
            agreement(&vector("0.30000000000000004"), &vector("0.3")),
            Agreement::Close
        );
        assert_eq!(agreement(&vector("1"), &vector("2")), Agreement::Differ);
        let error = parse_answer(br#"{"status":"error","error":"bad"}"#);
        assert_eq!(error, Answer::Error);
        assert_eq!(agreement(&error, &error), Agreement::Equal);
        assert_eq!(agreement(&error, &vector("1")), Agreement::Differ);
        let scalar = parse_answer(
            br#"{"status":"success","data":{"resultType":"scalar","result":[10,"3"]}}"#,
        );
        assert_eq!(agreement(&scalar, &vector("3")), Agreement::Differ);
        let empty =
            parse_answer(br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#);
        assert_eq!(agreement(&empty, &empty), Agreement::Equal);
    }
}
