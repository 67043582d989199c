//! Configuration: command-line flags, `STRAND_*` environment variables and an
//! optional TOML file, merged in that order of precedence into one validated
//! [`Config`].
//!
//! The TOML file takes the same settings as the flags, in snake_case, plus a
//! `version` (currently 1). Unknown keys are errors, so a typo never silently
//! falls back to a default:
//!
//! ```toml
//! version = 1
//! data_dir = "/var/lib/strand"
//! listen = "0.0.0.0"
//! max_body_bytes = 16777216
//! flush_interval = "1s"
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::ingest::scrape::ScrapeTarget;
use crate::model::Label;
use crate::pipeline::PipelineLimits;
use crate::store::logs::LogRetention;
use crate::store::metrics::SeriesLimits;
use crate::store::traces::TraceRetention;

const DEFAULT_OTLP_GRPC_PORT: u16 = 4317;
const DEFAULT_OTLP_HTTP_PORT: u16 = 4318;
const DEFAULT_HTTP_PORT: u16 = 7070;
const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;
const DEFAULT_LOG_PARTITION: Duration = Duration::from_secs(3600);
const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Like logs: a trace and its logs are kept (and go) together.
const DEFAULT_TRACE_RETENTION: Duration = DEFAULT_LOG_RETENTION;
const DEFAULT_METRIC_RETENTION: Duration = Duration::from_secs(15 * 24 * 3600);
const DEFAULT_MAX_SERIES: usize = 1_000_000;
const DEFAULT_MAX_SERIES_PER_METRIC: usize = 100_000;
const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(15);
/// Like a scrape interval: how fresh derived metrics are.
const DEFAULT_DERIVED_METRICS_INTERVAL: Duration = Duration::from_secs(15);
const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_MAX_BUFFERED_SPANS: usize = 1_000_000;
const DEFAULT_WAL_QUEUE_BYTES: usize = 256 << 20;
const CONFIG_VERSION: u32 = 1;

/// Strand: traces, logs and metrics for microservices, in one daemon.
#[derive(Debug, Parser)]
#[command(name = "strand", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: receive OTLP, store it on local disk, serve the UI and APIs.
    Serve(ServeArgs),
}

/// Flags of `strand serve`. Each can also be set through its environment
/// variable or the config file; flags win over environment, environment over file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML config file with any of the settings below.
    #[arg(long, env = "STRAND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for all data: write-ahead log and stores [default: ./strand-data]
    #[arg(long, env = "STRAND_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address every listener binds to unless its own address is given
    /// (0.0.0.0 to accept connections from other hosts) [default: 127.0.0.1]
    #[arg(long, env = "STRAND_LISTEN", value_name = "IP")]
    pub listen: Option<IpAddr>,

    /// OTLP/gRPC listener for traces [default: 127.0.0.1:4317]
    #[arg(long, env = "STRAND_OTLP_GRPC", value_name = "ADDR")]
    pub otlp_grpc: Option<SocketAddr>,

    /// OTLP/HTTP listener (/v1/traces) [default: 127.0.0.1:4318]
    #[arg(long, env = "STRAND_OTLP_HTTP", value_name = "ADDR")]
    pub otlp_http: Option<SocketAddr>,

    /// HTTP listener for the UI, query APIs, /metrics, /healthz and /readyz
    /// [default: 127.0.0.1:7070]
    #[arg(long, env = "STRAND_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,

    /// Largest accepted ingest request body, after decompression, in bytes;
    /// larger ones get 413 / RESOURCE_EXHAUSTED [default: 16777216]
    #[arg(long, env = "STRAND_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// How often spans in memory are written to the stores, e.g. 500ms, 2s
    /// [default: 1s]
    #[arg(long, env = "STRAND_FLUSH_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub flush_interval: Option<Duration>,

    /// Spans held in memory before ingest answers 429 / RESOURCE_EXHAUSTED
    /// (bounds memory when the disk cannot keep up) [default: 1000000]
    #[arg(long, env = "STRAND_MAX_BUFFERED_SPANS", value_name = "SPANS")]
    pub max_buffered_spans: Option<usize>,

    /// Bytes of requests allowed to wait for the write-ahead log before ingest
    /// answers 429 / RESOURCE_EXHAUSTED [default: 268435456]
    #[arg(long, env = "STRAND_WAL_QUEUE_BYTES", value_name = "BYTES")]
    pub wal_queue_bytes: Option<usize>,

    /// Spans older than this are deleted, a whole hour's segment file at a
    /// time, e.g. 7d, 36h [default: 7d]
    #[arg(long, env = "STRAND_TRACE_RETENTION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub trace_retention: Option<Duration>,

    /// Oldest span segment files are deleted while they take more disk than
    /// this (0 = no size limit) [default: 0]
    #[arg(long, env = "STRAND_TRACE_RETENTION_BYTES", value_name = "BYTES")]
    pub trace_retention_bytes: Option<u64>,

    /// Time span of one log index partition; retention drops whole partitions
    /// [default: 1h]
    #[arg(long, env = "STRAND_LOG_PARTITION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub log_partition: Option<Duration>,

    /// Logs older than this are deleted, e.g. 7d, 36h [default: 7d]
    #[arg(long, env = "STRAND_LOG_RETENTION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub log_retention: Option<Duration>,

    /// Oldest log partitions are deleted while logs take more disk than this
    /// (0 = no size limit) [default: 0]
    #[arg(long, env = "STRAND_LOG_RETENTION_BYTES", value_name = "BYTES")]
    pub log_retention_bytes: Option<u64>,

    /// Metric samples older than this are deleted [default: 15d]
    #[arg(long, env = "STRAND_METRIC_RETENTION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub metric_retention: Option<Duration>,

    /// Oldest metric chunk files are deleted while metrics take more disk than
    /// this (0 = no size limit) [default: 0]
    #[arg(long, env = "STRAND_METRIC_RETENTION_BYTES", value_name = "BYTES")]
    pub metric_retention_bytes: Option<u64>,

    /// New metric series beyond this many in total are refused [default: 1000000]
    #[arg(long, env = "STRAND_MAX_SERIES", value_name = "SERIES")]
    pub max_series: Option<usize>,

    /// New series of one metric name beyond this many are refused, with an
    /// error naming the metric [default: 100000]
    #[arg(long, env = "STRAND_MAX_SERIES_PER_METRIC", value_name = "SERIES")]
    pub max_series_per_metric: Option<usize>,

    /// How often Strand scrapes its own /metrics into its metrics store, as
    /// job "strand" (0s: never) [default: 15s]. Other scrape targets are set
    /// in the config file ([[scrape]] tables).
    #[arg(long, env = "STRAND_SELF_SCRAPE_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub self_scrape_interval: Option<Duration>,

    /// How often the metrics derived from spans (RED metrics per service and
    /// operation, the service graph) are written to the metrics store, like a
    /// scrape interval [default: 15s]
    #[arg(long, env = "STRAND_DERIVED_METRICS_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub derived_metrics_interval: Option<Duration>,
}

/// The config file's shape; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    version: Option<u32>,
    data_dir: Option<PathBuf>,
    listen: Option<IpAddr>,
    otlp_grpc: Option<SocketAddr>,
    otlp_http: Option<SocketAddr>,
    http: Option<SocketAddr>,
    max_body_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    flush_interval: Option<Duration>,
    max_buffered_spans: Option<usize>,
    wal_queue_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    trace_retention: Option<Duration>,
    trace_retention_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde_opt")]
    log_partition: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    log_retention: Option<Duration>,
    log_retention_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde_opt")]
    metric_retention: Option<Duration>,
    metric_retention_bytes: Option<u64>,
    max_series: Option<usize>,
    max_series_per_metric: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    self_scrape_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    derived_metrics_interval: Option<Duration>,
    #[serde(default)]
    scrape: Vec<ScrapeFileConfig>,
}

/// A `[[scrape]]` table: static targets of one job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrapeFileConfig {
    job: String,
    /// `host:port` of each target.
    targets: Vec<String>,
    #[serde(default, with = "humantime_serde_opt")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    timeout: Option<Duration>,
    path: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub http: SocketAddr,
    pub max_body_bytes: usize,
    pub limits: PipelineLimits,
    pub traces: TraceSettings,
    pub logs: LogSettings,
    pub metrics: MetricSettings,
}

/// How long metrics are kept and how many series may exist.
#[derive(Clone, Debug)]
pub struct MetricSettings {
    pub retention: Duration,
    /// 0: no size limit.
    pub retention_bytes: u64,
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
    pub retention: TraceRetention,
}

/// How logs are partitioned and kept.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub partition: Duration,
    pub retention: LogRetention,
}

impl ServeArgs {
    /// Merges flags/env with the config file (if any) and validates the result.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        if let Some(version) = file.version
            && version != CONFIG_VERSION
        {
            bail!("config file version {version} is not supported: use version = {CONFIG_VERSION}");
        }
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let config = Config {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("strand-data")),
            otlp_grpc: self
                .otlp_grpc
                .or(file.otlp_grpc)
                .unwrap_or(SocketAddr::new(listen, DEFAULT_OTLP_GRPC_PORT)),
            otlp_http: self
                .otlp_http
                .or(file.otlp_http)
                .unwrap_or(SocketAddr::new(listen, DEFAULT_OTLP_HTTP_PORT)),
            http: self
                .http
                .or(file.http)
                .unwrap_or(SocketAddr::new(listen, DEFAULT_HTTP_PORT)),
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            limits: PipelineLimits {
                flush_interval: self
                    .flush_interval
                    .or(file.flush_interval)
                    .unwrap_or(DEFAULT_FLUSH_INTERVAL),
                max_buffered_spans: self
                    .max_buffered_spans
                    .or(file.max_buffered_spans)
                    .unwrap_or(DEFAULT_MAX_BUFFERED_SPANS),
                wal_queue_bytes: self
                    .wal_queue_bytes
                    .or(file.wal_queue_bytes)
                    .unwrap_or(DEFAULT_WAL_QUEUE_BYTES),
            },
            traces: TraceSettings {
                retention: TraceRetention {
                    max_age: self
                        .trace_retention
                        .or(file.trace_retention)
                        .unwrap_or(DEFAULT_TRACE_RETENTION),
                    max_bytes: self
                        .trace_retention_bytes
                        .or(file.trace_retention_bytes)
                        .unwrap_or(0),
                },
            },
            logs: LogSettings {
                partition: self
                    .log_partition
                    .or(file.log_partition)
                    .unwrap_or(DEFAULT_LOG_PARTITION),
                retention: LogRetention {
                    max_age: self
                        .log_retention
                        .or(file.log_retention)
                        .unwrap_or(DEFAULT_LOG_RETENTION),
                    max_bytes: self
                        .log_retention_bytes
                        .or(file.log_retention_bytes)
                        .unwrap_or(0),
                },
            },
            metrics: MetricSettings {
                retention: self
                    .metric_retention
                    .or(file.metric_retention)
                    .unwrap_or(DEFAULT_METRIC_RETENTION),
                retention_bytes: self
                    .metric_retention_bytes
                    .or(file.metric_retention_bytes)
                    .unwrap_or(0),
                limits: SeriesLimits {
                    max_series: self
                        .max_series
                        .or(file.max_series)
                        .unwrap_or(DEFAULT_MAX_SERIES),
                    max_series_per_metric: self
                        .max_series_per_metric
                        .or(file.max_series_per_metric)
                        .unwrap_or(DEFAULT_MAX_SERIES_PER_METRIC),
                },
                scrape: file
                    .scrape
                    .into_iter()
                    .flat_map(|job| {
                        let labels: Vec<Label> = job
                            .labels
                            .iter()
                            .map(|(name, value)| Label::new(name.clone(), value.clone()))
                            .collect();
                        job.targets
                            .into_iter()
                            .map(|address| {
                                let interval = job.interval.unwrap_or(DEFAULT_SCRAPE_INTERVAL);
                                ScrapeTarget {
                                    job: job.job.clone(),
                                    address,
                                    path: job.path.clone().unwrap_or_else(|| "/metrics".into()),
                                    interval,
                                    timeout: job
                                        .timeout
                                        .unwrap_or(DEFAULT_SCRAPE_TIMEOUT.min(interval)),
                                    labels: labels.clone(),
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect(),
                self_scrape_interval: Some(
                    self.self_scrape_interval
                        .or(file.self_scrape_interval)
                        .unwrap_or(DEFAULT_SCRAPE_INTERVAL),
                )
                .filter(|interval| !interval.is_zero()),
                derived_interval: self
                    .derived_metrics_interval
                    .or(file.derived_metrics_interval)
                    .unwrap_or(DEFAULT_DERIVED_METRICS_INTERVAL),
            },
        };
        config.validate()?;
        Ok(config)
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

impl Config {
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
        if self.metrics.retention < Duration::from_secs(60) {
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
        if self.limits.max_buffered_spans == 0 {
            bail!("max_buffered_spans must be positive");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file_config(toml: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strand.toml");
        std::fs::write(&path, toml).unwrap();
        ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .into_config()
    }

    #[test]
    fn defaults_bind_loopback() {
        let config = ServeArgs::default().into_config().unwrap();
        assert_eq!(config.otlp_grpc.to_string(), "127.0.0.1:4317");
        assert_eq!(config.otlp_http.to_string(), "127.0.0.1:4318");
        assert_eq!(config.http.to_string(), "127.0.0.1:7070");
        assert_eq!(config.data_dir, PathBuf::from("strand-data"));
        assert_eq!(config.max_body_bytes, 16 << 20);
    }

    #[test]
    fn listen_moves_every_default_address() {
        let config = ServeArgs {
            listen: Some("0.0.0.0".parse().unwrap()),
            http: Some("127.0.0.1:9999".parse().unwrap()),
            ..ServeArgs::default()
        }
        .into_config()
        .unwrap();
        assert_eq!(config.otlp_grpc.to_string(), "0.0.0.0:4317");
        assert_eq!(config.http.to_string(), "127.0.0.1:9999");
    }

    #[test]
    fn file_settings_apply_and_flags_win() {
        let config = file_config(
            "version = 1\ndata_dir = \"/tmp/x\"\nflush_interval = \"250ms\"\nmax_body_bytes = 4096\n",
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.limits.flush_interval, Duration::from_millis(250));
        assert_eq!(config.max_body_bytes, 4096);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strand.toml");
        std::fs::write(&path, "data_dir = \"/from/file\"").unwrap();
        let config = ServeArgs {
            config: Some(path),
            data_dir: Some("/from/flag".into()),
            ..ServeArgs::default()
        }
        .into_config()
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
    }

    #[test]
    fn scrape_tables_become_targets() {
        let config = file_config(
            "[[scrape]]\njob = \"shop\"\ntargets = [\"a:1\", \"b:2\"]\ninterval = \"5s\"\nlabels = { env = \"dev\" }\n",
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
        let error = format!("{:#}", file_config("data_dri = \"x\"").unwrap_err());
        assert!(error.contains("unknown field `data_dri`"), "{error}");
        let error = format!("{:#}", file_config("version = 2").unwrap_err());
        assert!(error.contains("version 2 is not supported"), "{error}");
        let error = format!(
            "{:#}",
            file_config("flush_interval = \"soon\"").unwrap_err()
        );
        assert!(error.contains("flush_interval"), "{error}");
        let error = format!("{:#}", file_config("max_body_bytes = 1").unwrap_err());
        assert!(error.contains("max_body_bytes"), "{error}");
        let error = format!(
            "{:#}",
            file_config("derived_metrics_interval = \"100ms\"").unwrap_err()
        );
        assert!(error.contains("derived_metrics_interval"), "{error}");
    }

    #[test]
    fn derived_metrics_are_written_like_a_scrape() {
        let config = file_config("").unwrap();
        assert_eq!(config.metrics.derived_interval, Duration::from_secs(15));
        let config = file_config("derived_metrics_interval = \"1s\"").unwrap();
        assert_eq!(config.metrics.derived_interval, Duration::from_secs(1));
    }

    #[test]
    fn trace_retention_defaults_like_logs_and_is_configurable() {
        let config = ServeArgs::default().into_config().unwrap();
        assert_eq!(
            config.traces.retention.max_age,
            config.logs.retention.max_age
        );
        assert_eq!(
            config.traces.retention.max_age,
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(config.traces.retention.max_bytes, 0);

        let config =
            file_config("trace_retention = \"36h\"\ntrace_retention_bytes = 1048576\n").unwrap();
        assert_eq!(
            config.traces.retention.max_age,
            Duration::from_secs(36 * 3600)
        );
        assert_eq!(config.traces.retention.max_bytes, 1 << 20);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strand.toml");
        std::fs::write(&path, "trace_retention = \"36h\"").unwrap();
        let config = ServeArgs {
            config: Some(path),
            trace_retention: Some(Duration::from_secs(2 * 3600)),
            trace_retention_bytes: Some(4096),
            ..ServeArgs::default()
        }
        .into_config()
        .unwrap();
        assert_eq!(
            config.traces.retention.max_age,
            Duration::from_secs(2 * 3600)
        );
        assert_eq!(config.traces.retention.max_bytes, 4096);

        let error = format!("{:#}", file_config("trace_retention = \"1s\"").unwrap_err());
        assert!(error.contains("trace_retention"), "{error}");
        let error = format!(
            "{:#}",
            file_config("trace_retention = \"soon\"").unwrap_err()
        );
        assert!(error.contains("trace_retention"), "{error}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
