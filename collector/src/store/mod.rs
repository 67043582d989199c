//! Embedded storage engines, one per signal, and the dashboards. Stores know
//! nothing about HTTP, OTLP, the write-ahead log or each other; they take
//! `model` types and own their on-disk formats.
//!
//! [`Stores`] is opened once: the pipeline writes to it, the API reads from
//! it, and neither reaches the stores through the other.

pub mod clickhouse;
pub mod dashboards;
pub mod log_feed;
pub mod log_search;
pub mod logs;
pub mod metrics;
pub mod sample_store;
pub mod traces;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use self::clickhouse::Connector;
use self::clickhouse::dashboards::ClickHouseDashboards;
use self::clickhouse::logs::ClickHouseLogs;
use self::clickhouse::metrics::ClickHouseMetrics;
use self::clickhouse::spans::ClickHouseSpans;
use crate::backup::BackupDir;
use crate::codec::CodecError;
use crate::config::{Config, Retention, Storage};
use crate::frame::FrameError;
use crate::model::{KeyValue, Span, SpanKind, TraceId};
use crate::telemetry::SelfMetrics;
use dashboards::DashboardStore;
use log_search::LogRecordStore;
use logs::LogStore;
use metrics::MetricStore;
use sample_store::SampleStore;
use traces::{DependencyLink, Flushed, TraceRead, TraceStore};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("index failed: {0}")]
    Index(#[from] sled::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Data that cannot be framed (too large); damaged frames read back are
    /// `Corrupt` or cut as torn tails instead.
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("search index failed: {0}")]
    Search(String),
    /// The external database behind the store (ClickHouse) failed or did
    /// not answer; what was asked stays to be retried.
    #[error("{0}")]
    Backend(String),
    /// A query the backend cannot run, with why (the query layer shows it
    /// as a syntax error).
    #[error("{0}")]
    BadQuery(String),
    /// The query's deadline passed between two of its reads.
    #[error(transparent)]
    Refused(#[from] crate::deadline::QueryRefused),
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// Files another process holds (a second daemon on the same data
    /// directory): refused, never taken for damage.
    #[error("{0} is in use: is another strand running on this data directory?")]
    InUse(String),
    /// A read that would load more series than the caller allows.
    #[error(
        "the selection matches more than {limit} series (--query-max-series): select fewer, e.g. with more label matchers"
    )]
    TooManySeries { limit: usize },
    /// Data written in a format this Strand does not read: refused rather
    /// than misread.
    #[error(
        "the {store} store is in format version {found}, this strand reads version {supported}"
    )]
    Incompatible {
        store: &'static str,
        found: u32,
        supported: u32,
    },
}

impl StoreError {
    /// Whether the failure is the external database's (down, slow): an
    /// answer worth retrying, not a fault of this daemon's data.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Backend(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The file in a store's directory naming the version of the store's file
/// formats, for stores whose files carry none of their own.
pub(crate) const FORMAT_FILE: &str = "FORMAT";

/// Checks that the `store` in `dir` is in a format version of `readable`
/// and records the newest of them there if it is not yet: every version in
/// `readable` must be a valid directory of the newest. A directory without
/// the file was written before it existed, in version 1 of every format that
/// uses it.
fn check_format(
    dir: &Path,
    store: &'static str,
    readable: std::ops::RangeInclusive<u32>,
) -> Result<()> {
    let version = *readable.end();
    let path = dir.join(FORMAT_FILE);
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<u32>().map_err(|_| {
            StoreError::Corrupt(format!("{}: {text:?} is not a version", path.display()))
        })?),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error.into()),
    };
    let found = recorded.unwrap_or(1);
    if !readable.contains(&found) {
        return Err(StoreError::Incompatible {
            store,
            found,
            supported: version,
        });
    }
    if recorded != Some(version) {
        let temporary = dir.join(format!("{FORMAT_FILE}.tmp"));
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, format!("{version}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Moves a damaged file or directory out of its store, to
/// [`quarantine_path`], so the store starts without it and nothing is
/// deleted: an operator can still inspect or salvage it. Returns where it
/// went.
pub(crate) fn quarantine(data_dir: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let target = quarantine_path(data_dir, path)?;
    std::fs::rename(path, &target)?;
    Ok(target)
}

/// Where [`quarantine`] puts `path`: `<data dir>/quarantine/<its path under
/// the data dir>`, `.1`, `.2`, ... appended when that is taken; its parent
/// directory is created.
pub(crate) fn quarantine_path(data_dir: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let relative = match path.strip_prefix(data_dir) {
        Ok(relative) => relative,
        Err(_) => Path::new(path.file_name().unwrap_or(path.as_os_str())),
    };
    let base = data_dir.join("quarantine").join(relative);
    let mut target = base.clone();
    for n in 1.. {
        if !target.exists() {
            break;
        }
        let mut name = base.as_os_str().to_owned();
        name.push(format!(".{n}"));
        target = PathBuf::from(name);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(target)
}

/// Where spans are kept: the embedded [`TraceStore`] or ClickHouse. The
/// write path and the queries see only this, never which one answers.
///
/// Both buffer acknowledged spans in memory until a flush writes them to
/// their durable tier, and answer from the buffer meanwhile; both record
/// the WAL sequence number through which their tier has every span, so the
/// WAL is trimmed and replayed against it.
pub trait SpanStore: Send + Sync {
    /// The WAL sequence number through which every span is in the durable
    /// tier: the replay skips records up to it.
    fn durable_through(&self) -> Result<u64>;
    /// Settles what the open left undecided until the WAL's oldest record
    /// is known (see `TraceStore::settle_set_aside`).
    fn settle_set_aside(&self, wal_oldest_seq: Option<u64>) -> Result<()>;
    /// Adds durable spans to the buffer. Called in WAL sequence order.
    fn apply(&self, seq: u64, spans: Vec<Span>);
    /// Spans held in memory: what ingest checks to keep memory bounded.
    fn buffered_spans(&self) -> usize;
    /// Spans in the head alone, without a flush in progress: what starts
    /// the next flush early.
    fn head_spans(&self) -> usize;
    /// Writes the buffer to the durable tier. `None` when it was empty; on
    /// an error the spans stay buffered for the next flush.
    fn flush(&self) -> Result<Option<Flushed>>;
    /// Records that every span of WAL records up to `seq` is durable,
    /// called after a flush that took every span applied through `seq`.
    fn checkpoint_through(&self, seq: u64) -> Result<()>;
    /// Drops spans past the retention limits; returns how many files or
    /// partitions went.
    fn enforce_retention(&self, retention: Retention, now_nanos: u64) -> Result<usize>;
    /// Writes what a restart would find into `relative` under `backup`.
    fn snapshot(&self, backup: &mut BackupDir, relative: &std::path::Path) -> Result<()>;
    /// Every span of a trace, each once, in start order; empty when the
    /// trace is unknown.
    fn trace(&self, trace_id: &TraceId) -> Result<TraceRead>;
    /// Ids of buffered traces with a span that satisfies `matches`: the
    /// part of a search [`SpanStore::search_candidates`] does not cover.
    fn buffered_traces_matching(&self, matches: &dyn Fn(&Span) -> bool) -> Vec<TraceId>;
    /// Traces in the durable tier that may have a span `filter` matches,
    /// newest first; a superset, which the caller checks span by span.
    fn search_candidates<'a>(&'a self, filter: &SpanFilter<'_>) -> Box<dyn TraceCandidates + 'a>;
    /// Services that sent spans, sorted.
    fn services(&self) -> Vec<String>;
    /// Operations (span names) of a service with their span kinds, sorted.
    fn operations(&self, service: &str) -> Vec<(String, SpanKind)>;
    /// Service-to-service calls whose child span started in `[start, end]`
    /// (hour granularity), durable spans only.
    fn dependencies(&self, start_nanos: u64, end_nanos: u64) -> Result<Vec<DependencyLink>>;
}

/// Candidate traces of a search, newest first.
pub trait TraceCandidates: Iterator<Item = Result<TraceId>> {
    /// Whether damaged data was skipped: traces may be missing.
    fn damaged(&self) -> bool;
}

/// Which spans a trace search matches, with Jaeger's semantics: a span of
/// the service (any service with `None`), with the operation and kind,
/// lasting within the duration range, starting in the time range and
/// carrying every tag (as a span, resource or event attribute, or a
/// derived tag such as `error=true`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanFilter<'a> {
    pub service: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub span_kind: Option<SpanKind>,
    /// Every pair must match one attribute of the same span.
    pub tags: &'a [(String, String)],
    pub min_duration_nanos: Option<u64>,
    pub max_duration_nanos: Option<u64>,
    pub start_nanos: u64,
    pub end_nanos: u64,
}

impl SpanFilter<'_> {
    /// Whether one span satisfies the whole filter.
    pub fn matches(&self, span: &Span) -> bool {
        let duration = span.duration_nanos();
        self.service.is_none_or(|s| s == span.service())
            && self.operation.is_none_or(|op| op == span.name)
            && self.span_kind.is_none_or(|kind| kind == span.kind)
            && (self.start_nanos..=self.end_nanos).contains(&span.start_unix_nano)
            && self.min_duration_nanos.is_none_or(|min| duration >= min)
            && self.max_duration_nanos.is_none_or(|max| duration <= max)
            && self
                .tags
                .iter()
                .all(|(key, value)| has_tag(span, key, value))
    }

    /// Whether the filter asks for failed spans (`error=true`).
    pub fn wants_error(&self) -> bool {
        self.tags.iter().any(|(k, v)| k == "error" && v == "true")
    }
}

fn has_tag(span: &Span, key: &str, value: &str) -> bool {
    let matches = |kv: &KeyValue| kv.key == key && kv.value.to_display_string() == value;
    span.attributes.iter().any(matches)
        || span.resource.attributes.iter().any(matches)
        || span.events.iter().any(|e| e.attributes.iter().any(matches))
        || span.derived_tags().iter().any(matches)
}

/// Every store of one data directory, shared by the write path and the
/// query side.
#[derive(Clone)]
pub struct Stores {
    pub traces: Arc<dyn SpanStore>,
    pub logs: Arc<dyn LogRecordStore>,
    pub metrics: Arc<dyn SampleStore>,
    pub dashboards: Arc<DashboardStore>,
    /// With ClickHouse, this node's id among the nodes writing to it:
    /// metrics the node derives from spans carry it, so that each node's
    /// counters stay series of their own.
    pub node_id: Option<u64>,
}

impl Stores {
    /// Opens (or creates) every store under the configured data directory.
    /// Blocking: sled, tantivy and the metrics store read their files here.
    pub fn open(config: &Config, self_metrics: &SelfMetrics) -> anyhow::Result<Stores> {
        let data_dir = &config.data_dir;
        let embedded_logs = || -> anyhow::Result<Arc<dyn LogRecordStore>> {
            let logs = LogStore::open(
                &data_dir.join("logs"),
                config.logs.partition,
                config.logs.retention.file_bytes(),
                config
                    .logs
                    .writer_bytes
                    .map_or(logs::schema::HOT_WRITER_BYTES, |share| {
                        share.max(
                            logs::schema::hot_writer_threads()
                                * logs::schema::MIN_WRITER_BYTES_PER_THREAD,
                        )
                    }),
                self_metrics.clone(),
            )
            .context("opening the log store")?
            .with_writer_idle(config.logs.writer_idle);
            Ok(Arc::new(logs))
        };
        // The embedded metrics store admits samples (order, series limits)
        // whatever the backend: over ClickHouse it is each node's head.
        let local_metrics = MetricStore::open(
            &data_dir.join("metrics"),
            config.metrics.limits.clone(),
            config.metrics.retention.file_bytes(),
            self_metrics.clone(),
        )
        .context("opening the metrics store")?;
        let dashboards_dir = data_dir.join("dashboards");
        let open_dashboards = || -> anyhow::Result<Arc<DashboardStore>> {
            Ok(Arc::new(
                DashboardStore::open(dashboards_dir.clone())
                    .with_context(|| format!("opening {}", dashboards_dir.display()))?,
            ))
        };
        Ok(match &config.storage {
            Storage::Embedded => Stores {
                traces: Arc::new(
                    TraceStore::open(
                        &data_dir.join("traces"),
                        config.traces.index_cache_bytes,
                        config.traces.retention.file_bytes(),
                        self_metrics.clone(),
                    )
                    .context("opening the trace store")?,
                ),
                logs: embedded_logs()?,
                metrics: Arc::new(local_metrics),
                dashboards: open_dashboards()?,
                node_id: None,
            },
            Storage::ClickHouse(settings) => {
                let connector = Arc::new(Connector::new(settings)?);
                let dir = data_dir.join("clickhouse");
                Stores {
                    traces: Arc::new(
                        ClickHouseSpans::open(connector.clone(), &dir, self_metrics.clone())
                            .context("opening the ClickHouse span store")?,
                    ),
                    logs: Arc::new(
                        ClickHouseLogs::open(connector.clone(), &dir)
                            .context("opening the ClickHouse log store")?,
                    ),
                    metrics: Arc::new(
                        ClickHouseMetrics::open(connector.clone(), &dir, local_metrics)
                            .context("opening the ClickHouse metrics store")?,
                    ),
                    dashboards: Arc::new(DashboardStore::in_clickhouse(ClickHouseDashboards::new(
                        connector,
                    ))),
                    node_id: Some(clickhouse::node_id(&dir).context("reading the node's id")?),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_directory_records_its_format_version_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        // Written before versions were recorded: version 1, recorded now.
        check_format(dir.path(), "log", 1..=1).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap(),
            "1\n"
        );
        check_format(dir.path(), "log", 1..=1).unwrap();
        let error = check_format(dir.path(), "log", 2..=2).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the log store is in format version 1, this strand reads version 2"
        );
        // An older version the code reads is marked as the newest...
        check_format(dir.path(), "log", 1..=2).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap(),
            "2\n"
        );
        // ... which an older release then refuses.
        assert!(check_format(dir.path(), "log", 1..=1).is_err());
        std::fs::write(dir.path().join(FORMAT_FILE), "two").unwrap();
        assert!(matches!(
            check_format(dir.path(), "log", 1..=1),
            Err(StoreError::Corrupt(_))
        ));
    }
}
