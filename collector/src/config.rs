//! Configuration: command-line flags, `STRAND_*` environment variables and an
//! optional TOML file, merged in that order of precedence into one validated
//! [`Config`].
//!
//! Every setting is declared once, as a field of [`ServeArgs`]: its doc
//! comment is the help text, and its attribute gives the flag, the
//! environment variable and the default. The config file's keys are the same
//! settings in snake_case (the field names), plus `version` (currently 1) and
//! `[[scrape]]` tables. File values become the flags' defaults before the
//! command line is parsed, so one parser reads all three sources and flags
//! win over environment, environment over file, file over built-in defaults.
//! Unknown keys are errors, so a typo never silently falls back to a default:
//!
//! ```toml
//! version = 1
//! data_dir = "/var/lib/strand"
//! listen = "0.0.0.0"
//! max_body_bytes = 16777216
//! flush_interval = "1s"
//! ```
//!
//! This module owns the plain settings types ([`Retention`], [`IngestLimits`],
//! [`SeriesLimits`], [`ScrapeTarget`]) that the stores, the pipeline and the
//! scraper consume; it imports nothing from them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Deserialize;

pub use crate::connections::ConnectionLimits;
use crate::memory;
pub use crate::memory::MemoryBudget;
use crate::model::Label;

const DEFAULT_OTLP_GRPC_PORT: u16 = 4317;
const DEFAULT_OTLP_HTTP_PORT: u16 = 4318;
const DEFAULT_HTTP_PORT: u16 = 7070;
const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(15);
const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
const CONFIG_VERSION: i64 = 1;
/// What a span takes in the head, on average, for `--memory-limit`'s
/// span-head share (attributes, resource and events included).
const SPAN_MEMORY_BYTES: u64 = 1536;
/// What a PromQL query holds per sample it selects (value, timestamp and
/// its share of the series' labels), for the limit's query share.
const QUERY_SAMPLE_BYTES: u64 = 32;
/// Memory for the trace index's page cache without a memory limit:
/// trace-by-id reads few pages, which the OS page cache serves anyway.
/// It gives sled a nominal 2 MiB (see `store::traces`). At the end of
/// 10M spans of `strand-bench traces`, RSS was 350 MB with a nominal
/// 16 MiB, 272 MB with 4 MiB and 230 MB with 2 MiB; trace by id p99 was
/// 1.4-1.6 ms with each.
const DEFAULT_INDEX_CACHE_BYTES: u64 = 16 << 20;

/// Strand: traces, logs and metrics for microservices, in one daemon.
#[derive(Debug, Parser)]
#[command(name = "strand", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process: boxing the settings buys nothing"
)]
pub enum Command {
    /// Run the daemon: receive OTLP, store it on local disk, serve the UI and APIs.
    Serve(ServeArgs),
    /// Check rule files and run rule unit tests offline, as promtool does.
    #[command(subcommand)]
    Rules(RulesCommand),
}

/// `strand rules ...`: promtool's offline rule tools, so a team's rule
/// files and unit tests work unchanged.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check rule files as `promtool check rules` does (exit 1 if any is invalid).
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests in `promtool test rules`' file format (exit 1 if any fails).
    Test {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// The settings of `strand serve`. Each can also be set through its
/// environment variable or, under its field name, in the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file with any of the settings below (and [[scrape]] tables).
    #[arg(long, env = "STRAND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for all data: write-ahead log and stores. One daemon at a
    /// time: a second one started on it waits 10 s, then refuses. Removed
    /// while the daemon runs, it stops the daemon (exit status 1) within
    /// seconds rather than let it acknowledge data it cannot keep.
    #[arg(
        long,
        env = "STRAND_DATA_DIR",
        value_name = "DIR",
        default_value = "strand-data"
    )]
    pub data_dir: PathBuf,

    /// Address every listener binds to unless its own address is given
    /// (0.0.0.0 to accept connections from other hosts).
    #[arg(
        long,
        env = "STRAND_LISTEN",
        value_name = "IP",
        default_value = "127.0.0.1"
    )]
    pub listen: IpAddr,

    /// OTLP/gRPC listener (traces, logs, metrics) [default: <listen>:4317]
    #[arg(long, env = "STRAND_OTLP_GRPC", value_name = "ADDR")]
    pub otlp_grpc: Option<SocketAddr>,

    /// OTLP/HTTP listener (/v1/traces, /v1/logs, /v1/metrics)
    /// [default: <listen>:4318]
    #[arg(long, env = "STRAND_OTLP_HTTP", value_name = "ADDR")]
    pub otlp_http: Option<SocketAddr>,

    /// HTTP listener for the UI, query APIs, remote write, _bulk, /metrics,
    /// /healthz and /readyz [default: <listen>:7070]
    #[arg(long, env = "STRAND_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,

    /// Where spans, logs and metrics are kept: `embedded` (in the data
    /// directory) or `clickhouse` (--clickhouse-url, dashboards too; the
    /// data directory keeps the WAL and the last two hours of this node's
    /// samples).
    #[arg(long, env = "STRAND_STORAGE", value_enum, default_value = "embedded")]
    pub storage: StorageKind,

    /// ClickHouse's HTTP interface, e.g. http://clickhouse:8123 or
    /// https://clickhouse:8443 (with --storage clickhouse); with
    /// --clickhouse-cluster, one per shard
    /// (repeat the flag or separate with commas): Strand creates its tables
    /// on each and queries through the first.
    #[arg(
        long,
        env = "STRAND_CLICKHOUSE_URL",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub clickhouse_url: Vec<String>,

    /// The ClickHouse cluster (in the servers' remote_servers) to spread
    /// tables over: shard-local tables and Distributed tables over them,
    /// a trace, and a series, on one shard [default: one server, no
    /// cluster].
    #[arg(long, env = "STRAND_CLICKHOUSE_CLUSTER", value_name = "NAME")]
    pub clickhouse_cluster: Option<String>,

    /// The ClickHouse database Strand creates its tables in.
    #[arg(
        long,
        env = "STRAND_CLICKHOUSE_DATABASE",
        value_name = "NAME",
        default_value = "strand"
    )]
    pub clickhouse_database: String,

    /// The ClickHouse user [default: the server's default user].
    #[arg(long, env = "STRAND_CLICKHOUSE_USER", value_name = "USER")]
    pub clickhouse_user: Option<String>,

    /// The ClickHouse user's password [default: none].
    #[arg(
        long,
        env = "STRAND_CLICKHOUSE_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub clickhouse_password: Option<String>,

    /// CA certificates (PEM) that sign the https:// ClickHouse servers'
    /// certificates [default: SSL_CERT_FILE, or the system's bundle].
    #[arg(long, env = "STRAND_CLICKHOUSE_CA", value_name = "FILE")]
    pub clickhouse_ca: Option<PathBuf>,

    /// Largest accepted ingest request body, after decompression, in bytes;
    /// larger ones get 413 / RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "STRAND_MAX_BODY_BYTES",
        value_name = "BYTES",
        default_value = "16777216"
    )]
    pub max_body_bytes: usize,

    /// How often spans in memory are written to the stores, e.g. 500ms, 2s.
    #[arg(long, env = "STRAND_FLUSH_INTERVAL", value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,

    /// Spans in memory that start a flush before `flush_interval` is up:
    /// under heavy load the head stays this small (each span takes about
    /// 1.5 KB there), and each flush short.
    #[arg(
        long,
        env = "STRAND_FLUSH_SPANS",
        value_name = "SPANS",
        default_value = "32768"
    )]
    pub flush_spans: usize,

    /// Spans held in memory before ingest answers 429 / RESOURCE_EXHAUSTED
    /// (bounds memory when the disk cannot keep up).
    #[arg(
        long,
        env = "STRAND_MAX_BUFFERED_SPANS",
        value_name = "SPANS",
        default_value = "1000000"
    )]
    pub max_buffered_spans: usize,

    /// Most bytes the write-ahead log may hold before ingest answers 503 /
    /// UNAVAILABLE: how much waits there while a store cannot write (ClickHouse
    /// down, a failing disk) or flushes fall behind [default: with size limits,
    /// half their sum; without, 1 GiB]
    #[arg(long, env = "STRAND_WAL_MAX_BYTES", value_name = "BYTES")]
    pub wal_max_bytes: Option<u64>,

    /// Bytes of requests allowed to wait for the write-ahead log before ingest
    /// answers 429 / RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "STRAND_WAL_QUEUE_BYTES",
        value_name = "BYTES",
        default_value = "268435456"
    )]
    pub wal_queue_bytes: usize,

    /// Memory the daemon keeps within, e.g. 512MiB, 2GB (default: no
    /// limit). It is shared among the buffers that grow with load (ingest
    /// requests being decoded, the WAL queue, the span head, the log index
    /// writer, the trace index cache, queries), lowering their settings to
    /// fit; ingest is refused with 429 / RESOURCE_EXHAUSTED while the
    /// resident set (RSS) is above 80% of it. At least 128MiB.
    #[arg(long, env = "STRAND_MEMORY_LIMIT", value_name = "BYTES")]
    pub memory_limit: Option<bytesize::ByteSize>,

    /// Connections each listener serves at once; further ones wait to be
    /// accepted until one closes.
    #[arg(
        long,
        env = "STRAND_MAX_CONNECTIONS",
        value_name = "CONNECTIONS",
        default_value = "1024"
    )]
    pub max_connections: usize,

    /// How long a client may leave an answer unread (a stalled download, a
    /// live tail nobody reads) before its connection is closed, e.g. 30s.
    #[arg(long, env = "STRAND_STALLED_WRITE_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub stalled_write_timeout: Duration,

    /// Spans older than this are deleted, a whole segment file (at most an
    /// hour's) at a time, e.g. 7d, 36h. A trace and its logs are kept (and go)
    /// together.
    #[arg(long, env = "STRAND_TRACE_RETENTION", value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub trace_retention: Duration,

    /// Oldest span segment files are deleted while they and the trace index
    /// take more disk than this (0 = no size limit). Segments roll over at an
    /// eighth of it. With size limits set, the data directory stays within
    /// their sum plus half of it plus 4 MiB (the newest file of each store,
    /// sled's and tantivy's working space, the write-ahead log), as long as
    /// a second of ingest fits in that margin.
    #[arg(
        long,
        env = "STRAND_TRACE_RETENTION_BYTES",
        value_name = "BYTES",
        default_value = "0"
    )]
    pub trace_retention_bytes: u64,

    /// Time span of one log index partition; retention drops whole
    /// partitions. Under a size limit a time span gets a new partition
    /// whenever its newest reaches an eighth of the limit.
    #[arg(long, env = "STRAND_LOG_PARTITION", value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub log_partition: Duration,

    /// Logs older than this are deleted, e.g. 7d, 36h.
    #[arg(long, env = "STRAND_LOG_RETENTION", value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub log_retention: Duration,

    /// Oldest log partitions are deleted while logs take more disk than this
    /// (0 = no size limit); partitions roll over at an eighth of it. The
    /// data directory's bound is under trace_retention_bytes.
    #[arg(
        long,
        env = "STRAND_LOG_RETENTION_BYTES",
        value_name = "BYTES",
        default_value = "0"
    )]
    pub log_retention_bytes: u64,

    /// A log partition's index writer (indexing and merge threads, their
    /// buffers) is closed once no log arrived for this long, and opened
    /// again by the next one: an idle daemon stays small.
    #[arg(long, env = "STRAND_LOG_WRITER_IDLE", value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub log_writer_idle: Duration,

    /// Metric samples older than this are deleted.
    #[arg(long, env = "STRAND_METRIC_RETENTION", value_name = "DURATION", default_value = "15d", value_parser = humantime::parse_duration)]
    pub metric_retention: Duration,

    /// Oldest metric chunk files are deleted while metrics take more disk than
    /// this (0 = no size limit); chunk files roll over at an eighth of it (at
    /// most 64 MiB). The data directory's bound is under
    /// trace_retention_bytes.
    #[arg(
        long,
        env = "STRAND_METRIC_RETENTION_BYTES",
        value_name = "BYTES",
        default_value = "0"
    )]
    pub metric_retention_bytes: u64,

    /// New metric series beyond this many in total are refused.
    #[arg(
        long,
        env = "STRAND_MAX_SERIES",
        value_name = "SERIES",
        default_value = "1000000"
    )]
    pub max_series: usize,

    /// New series of one metric name beyond this many are refused, with an
    /// error naming the metric.
    #[arg(
        long,
        env = "STRAND_MAX_SERIES_PER_METRIC",
        value_name = "SERIES",
        default_value = "100000"
    )]
    pub max_series_per_metric: usize,

    /// How often Strand scrapes its own /metrics into its metrics store, as
    /// job "strand" (0s: never). Other scrape targets are set in the config
    /// file ([[scrape]] tables).
    #[arg(long, env = "STRAND_SELF_SCRAPE_INTERVAL", value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub self_scrape_interval: Duration,

    /// How often the metrics derived from spans (RED metrics per service and
    /// operation, the service graph) are written to the metrics store, like a
    /// scrape interval.
    #[arg(long, env = "STRAND_DERIVED_METRICS_INTERVAL", value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub derived_metrics_interval: Duration,

    /// Attributes kept per span, event, link, log record, resource and
    /// nested map (OpenTelemetry's attribute count limit): the first ones
    /// are kept, the rest dropped and counted on /metrics.
    #[arg(
        long,
        env = "STRAND_ATTRIBUTE_COUNT_LIMIT",
        value_name = "ATTRIBUTES",
        default_value = "128"
    )]
    pub attribute_count_limit: usize,

    /// Longest attribute value kept, in characters (bytes for byte arrays),
    /// also inside arrays and maps; longer ones are truncated and counted
    /// on /metrics (OpenTelemetry's attribute value length limit).
    #[arg(
        long,
        env = "STRAND_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        value_name = "CHARS",
        default_value = "65536"
    )]
    pub attribute_value_length_limit: usize,

    /// Longest a query (PromQL, logs, traces) may take, queueing included;
    /// a request's own `timeout` may ask for less.
    #[arg(long, env = "STRAND_QUERY_TIMEOUT", value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,

    /// Most samples one PromQL query may hold in memory; beyond, it is
    /// refused with an error.
    #[arg(
        long,
        env = "STRAND_QUERY_MAX_SAMPLES",
        value_name = "SAMPLES",
        default_value = "50000000"
    )]
    pub query_max_samples: usize,

    /// Most series one PromQL selector may load, and `/api/v1/series` and
    /// the label APIs return; beyond, a query is refused with an error and a
    /// metadata answer is cut short with a warning.
    #[arg(
        long,
        env = "STRAND_QUERY_MAX_SERIES",
        value_name = "SERIES",
        default_value = "300000"
    )]
    pub query_max_series: usize,

    /// Queries that run at once, on threads of lower CPU priority than
    /// ingest; as many trace-by-id lookups run beside them, at ingest's.
    #[arg(
        long,
        env = "STRAND_QUERY_WORKERS",
        value_name = "THREADS",
        default_value = "8"
    )]
    pub query_workers: usize,

    /// Queries that may wait for a query thread; beyond, they are refused
    /// with 503 and Retry-After.
    #[arg(
        long,
        env = "STRAND_QUERY_QUEUE",
        value_name = "QUERIES",
        default_value = "64"
    )]
    pub query_queue: usize,

    /// How often the metrics head is written out (sealed chunks and a
    /// snapshot of the open ones); bounds the write-ahead log a restart
    /// replays for metrics. The embedded store also flushes sooner once its
    /// sealed chunks pass 4 MiB. With ClickHouse, also how often samples
    /// are inserted there, and so how soon other nodes see them.
    #[arg(long, env = "STRAND_METRICS_FLUSH_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub metrics_flush_interval: Duration,

    /// How often trace, log and metric retention is checked (under a size
    /// limit, trace and log retention also run after every flush).
    #[arg(long, env = "STRAND_RETENTION_INTERVAL", value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,

    /// An Alertmanager that firing and resolved alerts are sent to, through
    /// its v2 API (`POST <url>/api/v2/alerts`), e.g. http://am:9093 or
    /// https://user:password@am.example/prefix (the user and password are
    /// sent as basic auth; https certificates are checked against the
    /// system's CAs, or SSL_CERT_FILE's). Repeat the flag, or separate URLs
    /// with commas, to send every alert to several [default: none: alerts
    /// are not sent]
    #[arg(
        long,
        env = "STRAND_ALERTMANAGER",
        value_name = "URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub alertmanager: Vec<String>,

    /// How long one request to an Alertmanager may take before it counts
    /// as failed.
    #[arg(long, env = "STRAND_ALERTMANAGER_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub alertmanager_timeout: Duration,

    /// Alerts waiting to be sent; when more arrive, the oldest are dropped
    /// and counted (strand_notifications_dropped_total).
    #[arg(
        long,
        env = "STRAND_ALERTMANAGER_QUEUE",
        value_name = "ALERTS",
        default_value = "10000"
    )]
    pub alertmanager_queue: usize,

    /// A bearer token sent to every Alertmanager (Authorization: Bearer)
    /// [default: none]
    #[arg(
        long,
        env = "STRAND_ALERTMANAGER_BEARER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub alertmanager_bearer_token: Option<String>,

    /// A token granting the ingest scope (OTLP, remote write, _bulk). Repeat
    /// the flag, or separate tokens with commas, to accept several while
    /// rotating. Once any token is configured, every endpoint but /healthz,
    /// /readyz and the UI's files needs one.
    #[arg(
        long,
        env = "STRAND_INGEST_TOKEN",
        value_name = "TOKEN",
        value_delimiter = ',',
        hide_env_values = true,
        hide_default_value = true
    )]
    pub ingest_token: Vec<String>,

    /// A token granting the read scope (query APIs, the UI's data,
    /// /metrics); repeatable like ingest_token.
    #[arg(
        long,
        env = "STRAND_READ_TOKEN",
        value_name = "TOKEN",
        value_delimiter = ',',
        hide_env_values = true,
        hide_default_value = true
    )]
    pub read_token: Vec<String>,

    /// A token granting the admin scope (changing dashboards, taking
    /// snapshots) and every
    /// other scope; repeatable like ingest_token.
    #[arg(
        long,
        env = "STRAND_ADMIN_TOKEN",
        value_name = "TOKEN",
        value_delimiter = ',',
        hide_env_values = true,
        hide_default_value = true
    )]
    pub admin_token: Vec<String>,

    /// File of tokens, one `<scope> <token>` per line (# comments), e.g. a
    /// mounted Kubernetes Secret. Read again when it changes or on SIGHUP;
    /// a file that fails to load keeps the tokens in force.
    #[arg(long, env = "STRAND_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Serve /metrics without a token even when tokens are configured
    /// (for a Prometheus that cannot send one).
    #[arg(long, env = "STRAND_PUBLIC_METRICS", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub public_metrics: bool,

    /// PEM certificate chain (server certificate first) for TLS; with
    /// --tls-key, every listener serves TLS only. Reloaded on SIGHUP and when
    /// the file changes [default: none: plain text]
    #[arg(long, env = "STRAND_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert [default: none]
    #[arg(long, env = "STRAND_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of CA certificates: every listener then requires a client
    /// certificate signed by one of them (mutual TLS). Needs --tls-cert
    /// [default: none: no client certificates]
    #[arg(long, env = "STRAND_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files' modification times are checked; a change
    /// reloads them (0s: only on SIGHUP).
    #[arg(long, env = "STRAND_TLS_RELOAD_INTERVAL", value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// Rule files in Prometheus's format (recording and alerting rules), by
    /// path or glob (`rules/*.yml`); repeatable, or separated by commas.
    /// Read again on SIGHUP and `POST /-/reload`; a file that fails to load
    /// keeps the previous rules running [default: none]
    #[arg(
        long,
        env = "STRAND_RULES",
        value_name = "FILE_OR_GLOB",
        value_delimiter = ',',
        hide_default_value = true
    )]
    pub rules: Vec<String>,

    /// How often rule groups that name no `interval` are evaluated
    /// (Prometheus's evaluation_interval).
    #[arg(long, env = "STRAND_RULES_EVALUATION_INTERVAL", value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub rules_evaluation_interval: Duration,

    /// How long after a restart an alert's `for` state is restored from
    /// ALERTS_FOR_STATE (Prometheus's rules.alert.for-outage-tolerance).
    #[arg(long, env = "STRAND_RULES_OUTAGE_TOLERANCE", value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub rules_outage_tolerance: Duration,

    /// The least time a restored alert waits before it fires; alerts with a
    /// shorter `for` are not restored (Prometheus's
    /// rules.alert.for-grace-period).
    #[arg(long, env = "STRAND_RULES_FOR_GRACE_PERIOD", value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub rules_for_grace_period: Duration,

    /// How often a firing alert is sent to Alertmanager again (Prometheus's
    /// rules.alert.resend-delay).
    #[arg(long, env = "STRAND_RULES_RESEND_DELAY", value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub rules_resend_delay: Duration,

    /// A label `name=value` added to every alert sent out (and
    /// `$externalLabels` in templates); repeatable, or separated by commas
    /// [default: none]
    #[arg(
        long,
        env = "STRAND_EXTERNAL_LABEL",
        value_name = "NAME=VALUE",
        value_delimiter = ',',
        hide_default_value = true
    )]
    pub external_label: Vec<String>,

    /// The address users reach Strand's UI at: alerts link there
    /// (generatorURL) and templates see it as `$externalURL` [default:
    /// http://<host>:<http port>]
    #[arg(long, env = "STRAND_EXTERNAL_URL", value_name = "URL")]
    pub external_url: Option<String>,
}

/// `name=value` pairs, each name a valid label name and given once.
fn external_labels(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("external_label {pair:?} is not name=value");
        };
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || name.starts_with("__") {
            bail!("external_label {name:?} is not a valid label name");
        }
        if labels.insert(name.to_owned(), value.to_owned()).is_some() {
            bail!("external_label {name:?} is given twice");
        }
    }
    Ok(labels)
}

/// A `[[scrape]]` table: static targets of one job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrapeFileConfig {
    job: String,
    /// `host:port` of each target.
    targets: Vec<String>,
    interval: Option<String>,
    timeout: Option<String>,
    path: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub http: SocketAddr,
    pub max_body_bytes: usize,
    pub limits: IngestLimits,
    pub traces: TraceSettings,
    pub logs: LogSettings,
    pub metrics: MetricSettings,
    pub queries: QuerySettings,
    pub alertmanagers: AlertmanagerSettings,
    pub auth: AuthSettings,
    /// TLS on every listener; `None`: plain text.
    pub tls: Option<TlsSettings>,
    /// `--memory-limit` and its shares; `None`: no limit.
    pub memory: Option<MemoryBudget>,
    /// Per listener.
    pub connections: ConnectionLimits,
    pub rules: RuleSettings,
    pub storage: Storage,
}

/// `--storage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    Embedded,
    #[value(name = "clickhouse")]
    ClickHouse,
}

/// Where the stores keep their data.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Everything in the data directory.
    Embedded,
    /// Spans, logs, samples and dashboards in ClickHouse; the WAL and each
    /// node's recent samples (its metrics head) in the data directory.
    ClickHouse(ClickHouseSettings),
}

/// How to reach ClickHouse.
#[derive(Clone, Debug)]
pub struct ClickHouseSettings {
    /// The HTTP interfaces' base URLs: one server, or each shard of
    /// `cluster`.
    pub urls: Vec<String>,
    pub cluster: Option<String>,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// The CAs https URLs are checked against (`None`: the system's).
    pub ca_file: Option<PathBuf>,
}

impl Storage {
    fn from_args(args: &ServeArgs) -> anyhow::Result<Storage> {
        let urls = &args.clickhouse_url;
        match args.storage {
            StorageKind::Embedded => {
                if !urls.is_empty() || args.clickhouse_cluster.is_some() {
                    bail!(
                        "clickhouse_url or clickhouse_cluster is set but storage is embedded: add --storage clickhouse"
                    );
                }
                Ok(Storage::Embedded)
            }
            StorageKind::ClickHouse => {
                if urls.is_empty() {
                    bail!(
                        "--storage clickhouse needs --clickhouse-url, e.g. http://localhost:8123"
                    );
                }
                if urls.len() > 1 && args.clickhouse_cluster.is_none() {
                    bail!(
                        "several clickhouse_url are the shards of a cluster: name it with --clickhouse-cluster"
                    );
                }
                for url in urls {
                    let parsed = reqwest::Url::parse(url)
                        .with_context(|| format!("clickhouse_url {url:?} is not a URL"))?;
                    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                        bail!(
                            "clickhouse_url {url:?} must be an http:// or https:// URL with a host"
                        );
                    }
                }
                if args.clickhouse_database.is_empty()
                    || args
                        .clickhouse_cluster
                        .as_ref()
                        .is_some_and(String::is_empty)
                {
                    bail!("clickhouse_database and clickhouse_cluster must not be empty");
                }
                Ok(Storage::ClickHouse(ClickHouseSettings {
                    urls: urls.clone(),
                    cluster: args.clickhouse_cluster.clone(),
                    database: args.clickhouse_database.clone(),
                    user: args.clickhouse_user.clone(),
                    password: args.clickhouse_password.clone().map(Secret),
                    ca_file: args.clickhouse_ca.clone(),
                }))
            }
        }
    }
}

/// Rule files and how their groups run and label their alerts.
#[derive(Clone, Debug)]
pub struct RuleSettings {
    /// Paths or globs; empty: no rules.
    pub files: Vec<String>,
    pub evaluation_interval: Duration,
    pub outage_tolerance: Duration,
    pub for_grace_period: Duration,
    pub resend_delay: Duration,
    pub external_labels: BTreeMap<String, String>,
    /// `None`: derived from the HTTP listener's address.
    pub external_url: Option<String>,
}

/// Where alerts are delivered, and how (see `rules::Notifier`).
#[derive(Clone, Debug)]
pub struct AlertmanagerSettings {
    /// Each Alertmanager's base URL, http or https; a user and password in
    /// it are sent as basic auth. Empty: alerts are not sent.
    pub urls: Vec<reqwest::Url>,
    /// Longest one request may take.
    pub timeout: Duration,
    /// Alerts waiting to be sent before the oldest are dropped.
    pub queue_capacity: usize,
    /// Sent to every Alertmanager as `Authorization: Bearer`.
    pub bearer_token: Option<Secret>,
}

impl AlertmanagerSettings {
    /// `--alertmanager` values as URLs: http or https, with a host, no
    /// query or fragment (the API path is appended to it).
    fn parse_urls(values: &[String]) -> anyhow::Result<Vec<reqwest::Url>> {
        values
            .iter()
            .map(|text| {
                let url = reqwest::Url::parse(text.trim())
                    .with_context(|| format!("alertmanager {text:?} is not a URL"))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    bail!("alertmanager {text:?} must be an http:// or https:// URL with a host");
                }
                if url.query().is_some() || url.fragment().is_some() {
                    bail!("alertmanager {text:?} must not have a query or fragment");
                }
                Ok(url)
            })
            .collect()
    }
}

/// What one query may cost, and how many run at once.
#[derive(Clone, Debug)]
pub struct QuerySettings {
    pub timeout: Duration,
    /// Samples one PromQL query may hold.
    pub max_samples: usize,
    /// Series one selector may load, or a metadata answer list.
    pub max_series: usize,
    /// Query threads.
    pub workers: usize,
    /// Queries waiting for a thread before more are refused.
    pub queue: usize,
}

/// The tokens a request may present, by scope (see `auth`).
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    pub ingest_tokens: Vec<Secret>,
    pub read_tokens: Vec<Secret>,
    pub admin_tokens: Vec<Secret>,
    pub token_file: Option<PathBuf>,
    /// `/metrics` answers without a token.
    pub public_metrics: bool,
}

/// A value that must not reach a log line: `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The PEM files the listeners' TLS is loaded from, and how often they are
/// checked for changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain, server certificate first.
    pub cert: PathBuf,
    /// The private key of the server certificate.
    pub key: PathBuf,
    /// CAs a client certificate must be signed by; `None`: no client
    /// certificates are asked for.
    pub client_ca: Option<PathBuf>,
    /// How often the files' metadata is polled; `None`: reload on SIGHUP
    /// only.
    pub reload_interval: Option<Duration>,
}

/// How long a store keeps data: by age, and by the disk it takes. Every store
/// drops whole files (segments, partitions, chunk files), oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Files whose newest data is older than this go.
    pub max_age: Duration,
    /// Oldest files go while the store takes more bytes than this (0: no limit).
    pub max_bytes: u64,
}

impl Retention {
    /// Fewest bytes at which a store starts a new file.
    pub const MIN_FILE_BYTES: u64 = 256 << 10;
    /// Most bytes at which a store starts a new file, and where it starts
    /// one when there is no size limit.
    pub const MAX_FILE_BYTES: u64 = 1 << 30;

    /// How large a store lets one file (span segment, log partition) grow
    /// before it starts a new one: an eighth of `max_bytes`, between
    /// [`Retention::MIN_FILE_BYTES`] and [`Retention::MAX_FILE_BYTES`].
    /// Retention drops whole files and never the newest, so this is how
    /// closely it can hold the limit.
    pub fn file_bytes(&self) -> u64 {
        match self.max_bytes {
            0 => Self::MAX_FILE_BYTES,
            cap => (cap / 8).clamp(Self::MIN_FILE_BYTES, Self::MAX_FILE_BYTES),
        }
    }
}

/// Limits that keep the memory of the data path bounded.
#[derive(Clone, Debug)]
pub struct IngestLimits {
    /// Bytes of requests waiting for the WAL writer.
    pub wal_queue_bytes: usize,
    /// Spans kept in memory before a flush; beyond it ingest answers "retry".
    pub max_buffered_spans: usize,
    /// How often the head is flushed to the stores.
    pub flush_interval: Duration,
    /// Spans in memory that start a flush before the interval is up.
    pub flush_spans: usize,
    /// How often the metrics head is written out.
    pub metrics_flush_interval: Duration,
    /// How often retention is checked.
    pub retention_interval: Duration,
    /// The write-ahead log starts a new segment once the active one is this
    /// large (see [`IngestLimits::wal_segment_bytes`]).
    pub wal_segment_bytes: u64,
    /// Beyond this many bytes in the write-ahead log, ingest answers 503
    /// (see [`IngestLimits::wal_max_bytes`]).
    pub wal_max_bytes: u64,
    /// Attribute count and value length limits.
    pub attributes: AttributeLimits,
}

impl IngestLimits {
    /// Most bytes of one write-ahead log segment, and its size without size
    /// limits.
    pub const MAX_WAL_SEGMENT_BYTES: u64 = 64 << 20;

    /// The WAL segment size for the stores' size limits (`max_bytes`, 0
    /// for none): an eighth of their sum, between
    /// [`Retention::MIN_FILE_BYTES`] and [`IngestLimits::MAX_WAL_SEGMENT_BYTES`].
    /// The WAL is trimmed a whole segment at a time, so this keeps it small
    /// next to the limits.
    pub fn wal_segment_bytes(store_limits: &[u64]) -> u64 {
        match store_limits.iter().sum::<u64>() {
            0 => Self::MAX_WAL_SEGMENT_BYTES,
            sum => (sum / 8).clamp(Retention::MIN_FILE_BYTES, Self::MAX_WAL_SEGMENT_BYTES),
        }
    }

    /// The default bound on the write-ahead log for the stores' size limits:
    /// half their sum (two segments past where every store is flushed at
    /// once), at least four segments; 1 GiB without limits.
    pub fn wal_max_bytes(store_limits: &[u64]) -> u64 {
        match store_limits.iter().sum::<u64>() {
            0 => 1 << 30,
            sum => (sum / 2).max(4 * Self::wal_segment_bytes(store_limits)),
        }
    }
}

/// OpenTelemetry's attribute limits, applied to what arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeLimits {
    /// Attributes kept per item (and per nested map).
    pub count: usize,
    /// Longest value kept: characters of a string, bytes of a byte array.
    pub value_length: usize,
}

impl Default for AttributeLimits {
    /// The defaults of the settings.
    fn default() -> Self {
        AttributeLimits {
            count: 128,
            value_length: 65536,
        }
    }
}

/// Limits on how many series may exist, so one bad label cannot exhaust
/// memory.
#[derive(Clone, Debug)]
pub struct SeriesLimits {
    pub max_series: usize,
    pub max_series_per_metric: usize,
}

/// One `/metrics` endpoint to scrape, as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapeTarget {
    pub job: String,
    /// `host:port`, also the `instance` label.
    pub address: String,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Extra labels put on every series of the target.
    pub labels: Vec<Label>,
}

/// How long metrics are kept and how many series may exist.
#[derive(Clone, Debug)]
pub struct MetricSettings {
    pub retention: Retention,
    pub limits: SeriesLimits,
    /// Configured scrape targets (not Strand itself; see `self_scrape_interval`).
    pub scrape: Vec<ScrapeTarget>,
    /// How often Strand scrapes its own `/metrics`; `None`: never.
    pub self_scrape_interval: Option<Duration>,
    /// How often metrics derived from spans are written.
    pub derived_interval: Duration,
}

/// How long spans are kept.
#[derive(Clone, Debug)]
pub struct TraceSettings {
    pub retention: Retention,
    /// Memory for the trace index's page cache.
    pub index_cache_bytes: u64,
}

/// How logs are partitioned and kept.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub partition: Duration,
    pub retention: Retention,
    /// Indexing buffer of the writer of the newest partition: the memory
    /// limit's share, or `None` for the store's default.
    pub writer_bytes: Option<usize>,
    /// How long a partition's writer stays open with no log arriving.
    pub writer_idle: Duration,
}

impl Config {
    /// The configuration of `strand serve ARGS...` (flags, `STRAND_*`
    /// environment and the `--config` file), as the binary reads it; `args`
    /// excludes the program and subcommand names.
    pub fn from_args<I, T>(args: I) -> anyhow::Result<Config>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let argv = ["strand".into(), "serve".into()]
            .into_iter()
            .chain(args.into_iter().map(Into::into));
        Config::from_command_line(argv)
    }

    /// The configuration of a whole `strand serve ...` command line. Usage
    /// errors, `--help` and `--version` are clap errors in the chain, which
    /// the binary prints and exits with.
    pub fn from_command_line<I, T>(argv: I) -> anyhow::Result<Config>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let Command::Serve(args) = Cli::try_parse_from(&argv)?.command else {
            bail!("only `strand serve` runs the daemon");
        };
        let Some(path) = args.config else {
            return args.into_config(Vec::new());
        };
        let file = ConfigFile::read(&path)?;
        let mut command = Cli::command();
        command = command.mut_subcommand("serve", |serve| file.as_defaults(serve));
        let matches = command
            .try_get_matches_from(&argv)
            .with_context(|| format!("config file {}", path.display()))?;
        let Command::Serve(args) = Cli::from_arg_matches(&matches)?.command else {
            bail!("only `strand serve` runs the daemon");
        };
        args.into_config(file.scrape)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(1024..=(512 << 20)).contains(&self.max_body_bytes) {
            bail!(
                "max_body_bytes must be between 1 KiB and 512 MiB, got {}",
                self.max_body_bytes
            );
        }
        if self.limits.flush_interval < Duration::from_millis(10) {
            bail!("flush_interval must be at least 10ms");
        }
        if self.limits.metrics_flush_interval < Duration::from_millis(10) {
            bail!("metrics_flush_interval must be at least 10ms");
        }
        if self.limits.retention_interval < Duration::from_millis(10) {
            bail!("retention_interval must be at least 10ms");
        }
        if self.traces.retention.max_age < Duration::from_secs(60) {
            bail!("trace_retention must be at least 1m");
        }
        if self.logs.partition < Duration::from_secs(1) {
            bail!("log_partition must be at least 1s");
        }
        if self.logs.retention.max_age < self.logs.partition {
            bail!("log_retention must be at least one log_partition");
        }
        if self.metrics.limits.max_series == 0 || self.metrics.limits.max_series_per_metric == 0 {
            bail!("max_series and max_series_per_metric must be positive");
        }
        if self.metrics.derived_interval < Duration::from_secs(1) {
            bail!("derived_metrics_interval must be at least 1s");
        }
        if self.metrics.retention.max_age < Duration::from_secs(60) {
            bail!("metric_retention must be at least 1m");
        }
        for target in &self.metrics.scrape {
            if target.job.is_empty() || target.address.is_empty() {
                bail!("every [[scrape]] needs a job and non-empty targets");
            }
            if target.address.contains('/') {
                bail!(
                    "scrape target {:?} must be host:port; put the path in `path`",
                    target.address
                );
            }
            if !target.path.starts_with('/') {
                bail!("scrape path {:?} must start with /", target.path);
            }
            if target.interval < Duration::from_secs(1) || target.timeout > target.interval {
                bail!(
                    "scrape job {:?}: interval must be at least 1s and timeout at most the interval",
                    target.job
                );
            }
        }
        if self.queries.timeout < Duration::from_millis(100) || self.queries.workers == 0 {
            bail!("query_timeout must be at least 100ms and query_workers positive");
        }
        if self.limits.attributes.count == 0 || self.limits.attributes.value_length == 0 {
            bail!("attribute_count_limit and attribute_value_length_limit must be positive");
        }
        if self.alertmanagers.timeout.is_zero() || self.alertmanagers.queue_capacity == 0 {
            bail!("alertmanager_timeout and alertmanager_queue must be positive");
        }
        if self.queries.max_samples == 0 {
            bail!("query_max_samples must be positive");
        }
        if let Some(tls) = &self.tls
            && tls
                .reload_interval
                .is_some_and(|interval| interval < Duration::from_secs(1))
        {
            bail!("tls_reload_interval must be 0s (SIGHUP only) or at least 1s");
        }
        if self.limits.max_buffered_spans == 0 {
            bail!("max_buffered_spans must be positive");
        }
        if self.limits.flush_spans == 0 {
            bail!("flush_spans must be positive");
        }
        if self.limits.wal_queue_bytes < self.max_body_bytes {
            bail!(
                "wal_queue_bytes ({}) must be at least max_body_bytes ({}), or large requests could never be accepted",
                self.limits.wal_queue_bytes,
                self.max_body_bytes
            );
        }
        let addrs = [self.otlp_grpc, self.otlp_http, self.http];
        for (i, a) in addrs.iter().enumerate() {
            if a.port() != 0 && addrs[i + 1..].contains(a) {
                bail!("two listeners are configured on the same address {a}");
            }
        }
        Ok(())
    }
}

impl ServeArgs {
    /// The validated configuration of these settings and the file's scrape
    /// jobs.
    fn into_config(self, scrape: Vec<ScrapeFileConfig>) -> anyhow::Result<Config> {
        let storage = Storage::from_args(&self)?;
        let listen = self.listen;
        let tls = match (self.tls_cert, self.tls_key, self.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(TlsSettings {
                cert,
                key,
                client_ca,
                reload_interval: Some(self.tls_reload_interval)
                    .filter(|interval| !interval.is_zero()),
            }),
            (None, None, None) => None,
            (None, None, Some(_)) => bail!("tls_client_ca needs tls_cert and tls_key"),
            (Some(_), None, _) | (None, Some(_), _) => {
                bail!("tls_cert and tls_key go together: set both for TLS, or neither")
            }
        };
        let memory = self
            .memory_limit
            .map(|limit| limit.as_u64())
            .map(|limit| {
                if limit < memory::MIN_LIMIT {
                    bail!(
                        "memory_limit {} is below the {} the daemon needs",
                        bytesize::ByteSize(limit).display().iec(),
                        bytesize::ByteSize(memory::MIN_LIMIT).display().iec()
                    );
                }
                Ok(MemoryBudget::split(limit))
            })
            .transpose()?;
        // Without a limit, settings stand as given; with one, each buffer
        // is lowered to its share (`fit(setting, share)`).
        let fit = |setting: u64, share: fn(&MemoryBudget) -> u64| {
            memory
                .as_ref()
                .map_or(setting, |budget| setting.min(share(budget)))
        };
        let store_limits = [
            self.trace_retention_bytes,
            self.log_retention_bytes,
            self.metric_retention_bytes,
        ];
        let config = Config {
            data_dir: self.data_dir,
            otlp_grpc: self
                .otlp_grpc
                .unwrap_or(SocketAddr::new(listen, DEFAULT_OTLP_GRPC_PORT)),
            otlp_http: self
                .otlp_http
                .unwrap_or(SocketAddr::new(listen, DEFAULT_OTLP_HTTP_PORT)),
            http: self
                .http
                .unwrap_or(SocketAddr::new(listen, DEFAULT_HTTP_PORT)),
            max_body_bytes: fit(self.max_body_bytes as u64, MemoryBudget::max_body_bytes) as usize,
            limits: IngestLimits {
                flush_interval: self.flush_interval,
                flush_spans: self.flush_spans,
                metrics_flush_interval: self.metrics_flush_interval,
                retention_interval: self.retention_interval,
                max_buffered_spans: fit(self.max_buffered_spans as u64, |budget| {
                    budget.span_head / SPAN_MEMORY_BYTES
                }) as usize,
                wal_queue_bytes: fit(self.wal_queue_bytes as u64, |budget| budget.wal_queue)
                    as usize,
                wal_segment_bytes: IngestLimits::wal_segment_bytes(&store_limits),
                wal_max_bytes: self
                    .wal_max_bytes
                    .unwrap_or(IngestLimits::wal_max_bytes(&store_limits)),
                attributes: AttributeLimits {
                    count: self.attribute_count_limit,
                    value_length: self.attribute_value_length_limit,
                },
            },
            traces: TraceSettings {
                retention: Retention {
                    max_age: self.trace_retention,
                    max_bytes: self.trace_retention_bytes,
                },
                index_cache_bytes: fit(DEFAULT_INDEX_CACHE_BYTES, |budget| budget.index_cache),
            },
            logs: LogSettings {
                partition: self.log_partition,
                retention: Retention {
                    max_age: self.log_retention,
                    max_bytes: self.log_retention_bytes,
                },
                writer_bytes: memory.map(|budget| budget.log_writer as usize),
                writer_idle: self.log_writer_idle,
            },
            metrics: MetricSettings {
                retention: Retention {
                    max_age: self.metric_retention,
                    max_bytes: self.metric_retention_bytes,
                },
                limits: SeriesLimits {
                    max_series: self.max_series,
                    max_series_per_metric: self.max_series_per_metric,
                },
                scrape: scrape_targets(scrape)?,
                self_scrape_interval: Some(self.self_scrape_interval)
                    .filter(|interval| !interval.is_zero()),
                derived_interval: self.derived_metrics_interval,
            },
            queries: QuerySettings {
                timeout: self.query_timeout,
                max_samples: fit(self.query_max_samples as u64, |budget| {
                    budget.queries / QUERY_SAMPLE_BYTES
                }) as usize,
                max_series: self.query_max_series,
                workers: self.query_workers,
                queue: self.query_queue,
            },
            alertmanagers: AlertmanagerSettings {
                urls: AlertmanagerSettings::parse_urls(&self.alertmanager)?,
                timeout: self.alertmanager_timeout,
                queue_capacity: self.alertmanager_queue,
                bearer_token: self.alertmanager_bearer_token.map(Secret),
            },
            auth: AuthSettings {
                ingest_tokens: self.ingest_token.into_iter().map(Secret).collect(),
                read_tokens: self.read_token.into_iter().map(Secret).collect(),
                admin_tokens: self.admin_token.into_iter().map(Secret).collect(),
                token_file: self.token_file,
                public_metrics: self.public_metrics,
            },
            tls,
            memory,
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                stalled_write_timeout: self.stalled_write_timeout,
            },
            storage,
            rules: RuleSettings {
                files: self.rules,
                evaluation_interval: self.rules_evaluation_interval,
                outage_tolerance: self.rules_outage_tolerance,
                for_grace_period: self.rules_for_grace_period,
                resend_delay: self.rules_resend_delay,
                external_labels: external_labels(&self.external_label)?,
                external_url: self.external_url,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// The `[[scrape]]` tables, one target per address.
fn scrape_targets(jobs: Vec<ScrapeFileConfig>) -> anyhow::Result<Vec<ScrapeTarget>> {
    let duration = |job: &str, key: &str, text: &Option<String>| {
        text.as_deref()
            .map(humantime::parse_duration)
            .transpose()
            .with_context(|| format!("[[scrape]] job {job:?}: invalid {key}"))
    };
    let mut targets = Vec::new();
    for job in jobs {
        let interval =
            duration(&job.job, "interval", &job.interval)?.unwrap_or(DEFAULT_SCRAPE_INTERVAL);
        let timeout = duration(&job.job, "timeout", &job.timeout)?
            .unwrap_or(DEFAULT_SCRAPE_TIMEOUT.min(interval));
        let labels: Vec<Label> = job
            .labels
            .iter()
            .map(|(name, value)| Label::new(name.clone(), value.clone()))
            .collect();
        for address in job.targets {
            targets.push(ScrapeTarget {
                job: job.job.clone(),
                address,
                path: job.path.clone().unwrap_or_else(|| "/metrics".into()),
                interval,
                timeout,
                labels: labels.clone(),
            });
        }
    }
    Ok(targets)
}

/// A config file: settings by flag name, and the file-only tables.
struct ConfigFile {
    /// `(setting, values as the flag would take them)`: one, or several
    /// for a repeatable setting given as an array.
    settings: Vec<(String, Vec<String>)>,
    scrape: Vec<ScrapeFileConfig>,
}

impl ConfigFile {
    fn read(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        ConfigFile::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Checks every key against the settings and every value with the
    /// setting's own parser, so a bad file is reported by key.
    fn parse(text: &str) -> anyhow::Result<ConfigFile> {
        let mut table: toml::Table = toml::from_str(text)?;
        if let Some(version) = table.remove("version")
            && version.as_integer() != Some(CONFIG_VERSION)
        {
            bail!("version {version} is not supported: use version = {CONFIG_VERSION}");
        }
        let scrape = match table.remove("scrape") {
            Some(value) => Vec::<ScrapeFileConfig>::deserialize(value).context("[[scrape]]")?,
            None => Vec::new(),
        };
        let command = Cli::command();
        let serve = command.find_subcommand("serve").expect("serve is defined");
        let mut settings = Vec::new();
        for (key, value) in table {
            let arg = serve
                .get_arguments()
                .find(|arg| arg.get_id() == key.as_str() && key != "config")
                .with_context(|| {
                    format!(
                        "unknown field `{key}`; the settings are {}",
                        setting_names(serve).join(", ")
                    )
                })?;
            let repeatable = matches!(arg.get_action(), clap::ArgAction::Append);
            let values = match value {
                toml::Value::Array(items) if repeatable => items
                    .into_iter()
                    .map(|item| file_value(&key, item))
                    .collect::<anyhow::Result<Vec<_>>>()?,
                value => vec![file_value(&key, value)?],
            };
            for text in &values {
                check_value(arg, text).with_context(|| format!("invalid {key} = {text:?}"))?;
            }
            settings.push((key, values));
        }
        Ok(ConfigFile { settings, scrape })
    }

    /// `serve` with the file's values as defaults: flags and environment
    /// variables still win.
    fn as_defaults(&self, mut serve: clap::Command) -> clap::Command {
        for (key, values) in &self.settings {
            serve = serve.mut_arg(key.as_str(), |arg| arg.default_values(values.clone()));
        }
        serve
    }
}

/// A scalar file value as a flag would take it.
fn file_value(key: &str, value: toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(text) => text,
        toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
            value.to_string()
        }
        other => bail!("{key}: expected a string or a number, got {other}"),
    })
}

/// Parses `text` as the flag `arg` would, so a file value is refused with
/// the setting's own parser and message.
fn check_value(arg: &clap::Arg, text: &str) -> anyhow::Result<()> {
    let long = arg.get_long().expect("settings are long flags");
    clap::Command::new("check")
        .no_binary_name(true)
        .arg(arg.clone())
        .try_get_matches_from([format!("--{long}"), text.to_owned()])
        .map(drop)
        .map_err(|error| {
            let message = error.to_string();
            let first_line = message.lines().next().unwrap_or_default();
            anyhow::anyhow!("{}", first_line.trim_start_matches("error: "))
        })
}

/// Every config-file key that is a flag, in declaration order.
fn setting_names(serve: &clap::Command) -> Vec<String> {
    serve
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .filter(|id| !["config", "help"].contains(&id.as_str()))
        .collect()
}

/// The settings reference as a Markdown table (setting, flag, environment
/// variable, default, meaning), generated from the definitions above: the
/// README carries a copy that a test keeps equal.
pub fn settings_reference() -> String {
    let command = Cli::command();
    let serve = command.find_subcommand("serve").expect("serve is defined");
    let mut out = String::from(
        "| setting (file key) | flag | environment | default | meaning |\n|---|---|---|---|---|\n",
    );
    for arg in serve.get_arguments() {
        let id = arg.get_id().as_str();
        if ["config", "help"].contains(&id) {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let (help, default) = match help.split_once(" [default: ") {
            Some((help, default)) => (help.to_string(), default.trim_end_matches(']').to_string()),
            None => (help, defaults.join(", ")),
        };
        let default = if default.is_empty() {
            "(none)".to_string()
        } else {
            format!("`{default}`")
        };
        out.push_str(&format!(
            "| `{id}` | `--{}` | `{env}` | {default} | {} |\n",
            arg.get_long().unwrap_or(id),
            help.replace('\n', " ").replace('|', "\\|"),
        ));
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    fn file_config(toml: &str, args: &[&str]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strand.toml");
        std::fs::write(&path, toml).unwrap();
        let mut argv = vec!["--config".to_string(), path.display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        Config::from_args(argv)
    }

    fn no_args() -> Config {
        Config::from_args(Vec::<String>::new()).unwrap()
    }

    #[test]
    fn a_memory_limit_lowers_every_buffer_to_its_share() {
        let unlimited = no_args();
        assert!(unlimited.memory.is_none());
        let limited = Config::from_args(["--memory-limit", "256MiB"]).unwrap();
        let budget = limited.memory.expect("a budget");
        assert_eq!(budget.limit, 256 << 20);
        assert_eq!(limited.limits.wal_queue_bytes as u64, budget.wal_queue);
        assert_eq!(
            limited.limits.max_buffered_spans as u64,
            budget.span_head / SPAN_MEMORY_BYTES
        );
        assert_eq!(limited.max_body_bytes as u64, budget.max_body_bytes());
        assert_eq!(limited.traces.index_cache_bytes, budget.index_cache);
        assert_eq!(limited.logs.writer_bytes, Some(budget.log_writer as usize));
        assert!(limited.queries.max_samples < unlimited.queries.max_samples);
        // Settings already under their share stand; the file takes sizes too.
        let small = file_config("memory_limit = \"1GiB\"\nmax_buffered_spans = 1000", &[]).unwrap();
        assert_eq!(small.limits.max_buffered_spans, 1000);
        assert_eq!(small.memory.unwrap().limit, 1 << 30);

        let error = format!(
            "{:#}",
            Config::from_args(["--memory-limit", "64MiB"]).unwrap_err()
        );
        assert!(error.contains("below the 128.0 MiB"), "{error}");
    }

    #[test]
    fn files_roll_over_at_an_eighth_of_the_size_limit() {
        let retention = |max_bytes| Retention {
            max_age: Duration::from_secs(3600),
            max_bytes,
        };
        assert_eq!(retention(0).file_bytes(), Retention::MAX_FILE_BYTES);
        assert_eq!(retention(80 << 20).file_bytes(), 10 << 20);
        assert_eq!(retention(1).file_bytes(), Retention::MIN_FILE_BYTES);
        assert_eq!(retention(1 << 40).file_bytes(), Retention::MAX_FILE_BYTES);
        assert_eq!(
            IngestLimits::wal_segment_bytes(&[0, 0, 0]),
            IngestLimits::MAX_WAL_SEGMENT_BYTES
        );
        assert_eq!(
            IngestLimits::wal_segment_bytes(&[2 << 20, 6 << 20, 0]),
            1 << 20
        );
        assert_eq!(
            IngestLimits::wal_segment_bytes(&[1 << 40, 0, 0]),
            IngestLimits::MAX_WAL_SEGMENT_BYTES
        );
        // The WAL's bound: half the limits, at least four segments.
        assert_eq!(IngestLimits::wal_max_bytes(&[0, 0, 0]), 1 << 30);
        assert_eq!(IngestLimits::wal_max_bytes(&[2 << 20, 6 << 20, 0]), 4 << 20);
        assert_eq!(
            IngestLimits::wal_max_bytes(&[1 << 20, 0, 0]),
            4 * Retention::MIN_FILE_BYTES
        );
        assert_eq!(no_args().limits.wal_max_bytes, 1 << 30);
        let given = Config::from_args(["--wal-max-bytes", "5000000"]).unwrap();
        assert_eq!(given.limits.wal_max_bytes, 5_000_000);
    }

    #[test]
    fn defaults_bind_loopback() {
        let config = no_args();
        assert_eq!(config.otlp_grpc.to_string(), "127.0.0.1:4317");
        assert_eq!(config.otlp_http.to_string(), "127.0.0.1:4318");
        assert_eq!(config.http.to_string(), "127.0.0.1:7070");
        assert_eq!(config.data_dir, PathBuf::from("strand-data"));
        assert_eq!(config.max_body_bytes, 16 << 20);
    }

    #[test]
    fn tokens_come_from_repeated_flags_commas_and_file_arrays() {
        let tokens = |secrets: &[Secret]| -> Vec<String> {
            secrets.iter().map(|s| s.expose().to_owned()).collect()
        };
        let config = file_config(
            "read_token = [\"read-a\", \"read-b\"]\nadmin_token = \"admin-a\"\npublic_metrics = true\n",
            &["--ingest-token", "in-a,in-b", "--ingest-token", "in-c"],
        )
        .unwrap();
        assert_eq!(tokens(&config.auth.ingest_tokens), ["in-a", "in-b", "in-c"]);
        assert_eq!(tokens(&config.auth.read_tokens), ["read-a", "read-b"]);
        assert_eq!(tokens(&config.auth.admin_tokens), ["admin-a"]);
        assert!(config.auth.public_metrics);
        assert!(
            !format!("{config:?}").contains("admin-a"),
            "tokens stay out of Debug"
        );
        let flag_wins =
            file_config("read_token = [\"file\"]\n", &["--read-token", "flag"]).unwrap();
        assert_eq!(tokens(&flag_wins.auth.read_tokens), ["flag"]);
        let error = file_config("data_dir = [\"a\", \"b\"]\n", &[]).unwrap_err();
        assert!(
            format!("{error:#}").contains("expected a string"),
            "{error:#}"
        );
    }

    #[test]
    fn listen_moves_every_default_address() {
        let config =
            Config::from_args(["--listen", "0.0.0.0", "--http", "127.0.0.1:9999"]).unwrap();
        assert_eq!(config.otlp_grpc.to_string(), "0.0.0.0:4317");
        assert_eq!(config.http.to_string(), "127.0.0.1:9999");
    }

    #[test]
    fn file_settings_apply_and_flags_win() {
        let config = file_config(
            "version = 1\ndata_dir = \"/tmp/x\"\nflush_interval = \"250ms\"\nmax_body_bytes = 4096\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.limits.flush_interval, Duration::from_millis(250));
        assert_eq!(config.max_body_bytes, 4096);

        let config =
            file_config("data_dir = \"/from/file\"", &["--data-dir", "/from/flag"]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
    }

    #[test]
    fn scrape_tables_become_targets() {
        let config = file_config(
            "[[scrape]]\njob = \"shop\"\ntargets = [\"a:1\", \"b:2\"]\ninterval = \"5s\"\nlabels = { env = \"dev\" }\n",
            &[],
        )
        .unwrap();
        let targets = &config.metrics.scrape;
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1].address, "b:2");
        assert_eq!(targets[1].interval, Duration::from_secs(5));
        assert_eq!(targets[1].timeout, Duration::from_secs(5));
        assert_eq!(targets[0].labels, [Label::new("env", "dev")]);
        assert_eq!(
            config.metrics.self_scrape_interval,
            Some(Duration::from_secs(15))
        );
    }

    #[test]
    fn bad_files_are_explained() {
        let error = |toml: &str| format!("{:#}", file_config(toml, &[]).unwrap_err());
        let unknown = error("data_dri = \"x\"");
        assert!(unknown.contains("unknown field `data_dri`"), "{unknown}");
        assert!(
            unknown.contains("data_dir"),
            "lists the settings: {unknown}"
        );
        let version = error("version = 2");
        assert!(version.contains("version 2 is not supported"), "{version}");
        for (toml, key) in [
            ("flush_interval = \"soon\"", "flush_interval"),
            ("max_body_bytes = 1", "max_body_bytes"),
            ("max_body_bytes = \"lots\"", "max_body_bytes"),
            (
                "derived_metrics_interval = \"100ms\"",
                "derived_metrics_interval",
            ),
            ("listen = [1, 2]", "listen"),
            (
                "[[scrape]]\njob = \"x\"\ntargets = [\"a:1\"]\ninterval = \"often\"",
                "interval",
            ),
        ] {
            let message = error(toml);
            assert!(message.contains(key), "{toml}: {message}");
        }
    }

    #[test]
    fn derived_metrics_are_written_like_a_scrape() {
        assert_eq!(no_args().metrics.derived_interval, Duration::from_secs(15));
        let config = file_config("derived_metrics_interval = \"1s\"", &[]).unwrap();
        assert_eq!(config.metrics.derived_interval, Duration::from_secs(1));
    }

    #[test]
    fn trace_retention_defaults_like_logs_and_is_configurable() {
        let config = no_args();
        assert_eq!(config.traces.retention, config.logs.retention);
        assert_eq!(
            config.traces.retention.max_age,
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(config.traces.retention.max_bytes, 0);

        let config = file_config(
            "trace_retention = \"36h\"\ntrace_retention_bytes = 1048576\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.traces.retention,
            Retention {
                max_age: Duration::from_secs(36 * 3600),
                max_bytes: 1 << 20
            }
        );

        let config = file_config(
            "trace_retention = \"36h\"",
            &["--trace-retention", "2h", "--trace-retention-bytes", "4096"],
        )
        .unwrap();
        assert_eq!(
            config.traces.retention,
            Retention {
                max_age: Duration::from_secs(2 * 3600),
                max_bytes: 4096
            }
        );

        for toml in ["trace_retention = \"1s\"", "trace_retention = \"soon\""] {
            let error = format!("{:#}", file_config(toml, &[]).unwrap_err());
            assert!(error.contains("trace_retention"), "{error}");
        }
    }

    #[test]
    fn tls_needs_certificate_and_key_together() {
        assert_eq!(no_args().tls, None);
        let config = Config::from_args(["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(
            config.tls,
            Some(TlsSettings {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                client_ca: None,
                reload_interval: Some(Duration::from_secs(5)),
            })
        );
        let config = file_config(
            "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_client_ca = \"ca.pem\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.tls.unwrap().client_ca, Some("ca.pem".into()));
        let config = Config::from_args([
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-reload-interval",
            "0s",
        ])
        .unwrap();
        assert_eq!(config.tls.unwrap().reload_interval, None);
        for args in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--tls-client-ca", "ca.pem", "--tls-key", "k.pem"],
        ] {
            let error = format!("{:#}", Config::from_args(args).unwrap_err());
            assert!(
                error.contains("tls_cert and tls_key go together"),
                "{error}"
            );
        }
        let error = format!(
            "{:#}",
            Config::from_args(["--tls-client-ca", "ca.pem"]).unwrap_err()
        );
        assert!(error.contains("tls_client_ca needs tls_cert"), "{error}");
    }

    #[test]
    fn clickhouse_storage_needs_a_url_and_a_url_needs_it() {
        assert!(matches!(no_args().storage, Storage::Embedded));
        let config = file_config(
            "storage = \"clickhouse\"\nclickhouse_url = \"http://ch:8123\"\n",
            &["--clickhouse-password", "secret"],
        )
        .unwrap();
        let Storage::ClickHouse(settings) = config.storage else {
            panic!("ClickHouse storage");
        };
        assert_eq!(
            (settings.urls.as_slice(), settings.database.as_str()),
            (&["http://ch:8123".to_string()][..], "strand")
        );
        assert_eq!(
            settings.password.map(|p| p.expose().to_string()).as_deref(),
            Some("secret")
        );
        let config = Config::from_args([
            "--storage",
            "clickhouse",
            "--clickhouse-url",
            "http://a:8123,http://b:8123",
            "--clickhouse-cluster",
            "shards",
        ])
        .unwrap();
        let Storage::ClickHouse(settings) = config.storage else {
            panic!("ClickHouse storage");
        };
        assert_eq!(
            (settings.urls.len(), settings.cluster.as_deref()),
            (2, Some("shards"))
        );
        for (args, expected) in [
            (&["--storage", "clickhouse"][..], "needs --clickhouse-url"),
            (
                &["--clickhouse-url", "http://ch:8123"],
                "add --storage clickhouse",
            ),
            (
                &["--storage", "clickhouse", "--clickhouse-url", "ch:8123"],
                "must be an http:// or https:// URL",
            ),
            (
                &[
                    "--storage",
                    "clickhouse",
                    "--clickhouse-url",
                    "ftp://ch:8443",
                ],
                "must be an http:// or https:// URL",
            ),
            (
                &[
                    "--storage",
                    "clickhouse",
                    "--clickhouse-url",
                    "http://ch",
                    "--clickhouse-database",
                    "",
                ],
                "must not be empty",
            ),
        ] {
            let error = Config::from_args(args.iter().copied()).unwrap_err();
            assert!(
                format!("{error:#}").contains(expected),
                "{args:?}: {error:#}"
            );
        }
    }

    #[test]
    fn alertmanagers_come_from_flags_and_file_arrays_and_are_checked() {
        let config = no_args();
        assert!(config.alertmanagers.urls.is_empty());
        assert_eq!(config.alertmanagers.timeout, Duration::from_secs(10));
        assert_eq!(config.alertmanagers.queue_capacity, 10000);
        let config = file_config(
            "alertmanager = [\"http://a:9093\", \"https://u:p@b.example/prefix\"]\nalertmanager_timeout = \"3s\"\n",
            &["--alertmanager-queue", "5"],
        )
        .unwrap();
        let urls: Vec<&str> = config
            .alertmanagers
            .urls
            .iter()
            .map(|u| u.as_str())
            .collect();
        assert_eq!(urls, ["http://a:9093/", "https://u:p@b.example/prefix"]);
        assert_eq!(config.alertmanagers.timeout, Duration::from_secs(3));
        assert_eq!(config.alertmanagers.queue_capacity, 5);
        let config = Config::from_args(["--alertmanager", "http://a:1,http://b:2"]).unwrap();
        assert_eq!(config.alertmanagers.urls.len(), 2);
        for (args, expected) in [
            (&["--alertmanager", "ftp://a"][..], "http:// or https://"),
            (&["--alertmanager", "a:9093"], "http:// or https://"),
            (&["--alertmanager", "not a url"], "is not a URL"),
            (&["--alertmanager", "http://a/?x=1"], "query or fragment"),
            (&["--alertmanager-queue", "0"], "must be positive"),
        ] {
            let error = format!("{:#}", Config::from_args(args).unwrap_err());
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every setting's environment variable is `STRAND_` + its file key, so
    /// the three names of a setting never drift apart.
    #[test]
    fn environment_variables_follow_the_setting_names() {
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments().filter(|a| a.get_id() != "help") {
            let id = arg.get_id().as_str();
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(
                env.as_deref(),
                Some(format!("STRAND_{}", id.to_uppercase()).as_str()),
                "{id}"
            );
            assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()), "{id}");
        }
    }

    /// The README's settings reference is the one generated from the
    /// definitions; `STRAND_UPDATE_README=1 cargo test -p strand` rewrites it.
    #[test]
    fn readme_reference_matches_the_definitions() {
        const BEGIN: &str = "<!-- settings reference: generated, see config.rs -->\n";
        const END: &str = "<!-- end of settings reference -->";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let start = readme
            .find(BEGIN)
            .expect("README has the settings reference")
            + BEGIN.len();
        let end = start
            + readme[start..]
                .find(END)
                .expect("README ends the reference");
        let expected = settings_reference();
        if readme[start..end] != expected {
            if std::env::var_os("STRAND_UPDATE_README").is_some() {
                let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
                std::fs::write(&path, updated).unwrap();
            } else {
                panic!(
                    "README.md's settings reference is out of date: run \
                     `STRAND_UPDATE_README=1 cargo test -p strand readme_reference` \n\
                     expected:\n{expected}"
                );
            }
        }
    }
}
