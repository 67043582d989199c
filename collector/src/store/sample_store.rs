//! The seam between the metrics write path and queries on one side and
//! where samples are kept on the other: the embedded TSDB
//! (`store::metrics`) or ClickHouse (`store::clickhouse::metrics`). The
//! pipeline, PromQL and the Prometheus API see only [`SampleStore`]; the
//! results are defined here so that answers cannot differ by backend.

use std::path::Path;

use promql_parser::label::Matcher;
use strand_promql::Steps;

use crate::backup::BackupDir;
use crate::codec::SampleRecord;
use crate::config::Retention;
use crate::model::{Label, MetricMetadata, MetricSample, SeriesSamples, WireKey};
use crate::store::Result;
use crate::store::metrics::Admitted;

/// A series and its samples in a queried range.
pub struct SelectedSeries {
    pub labels: Vec<Label>,
    pub samples: Vec<MetricSample>,
}

/// What [`SampleStore::select`] read.
pub struct Selection {
    pub series: Vec<SelectedSeries>,
    /// Damaged data was skipped (and reported): samples may be missing.
    pub damaged: bool,
}

/// Where samples are kept. Admission (time order within a series, the
/// series limits) happens before the WAL append, so an acknowledged
/// sample is never refused later; writes after it are idempotent, since
/// the WAL replays what the store may already hold.
pub trait SampleStore: Send + Sync {
    /// The WAL sequence number through which everything applied is kept by
    /// the store itself: the WAL after it is replayed on open.
    fn durable_through(&self) -> u64;

    /// Checks order and cardinality and reserves the samples' place; what
    /// is returned must go to the WAL, and be applied in the same order as
    /// admitted (the caller holds its own lock across both). `keys` is empty
    /// or gives each series' [`WireKey`], for [`admit_keyed`](Self::admit_keyed).
    fn admit(&self, batch: Vec<SeriesSamples>, keys: &[WireKey]) -> Admitted;

    /// [`admit`](Self::admit) for series named by the [`WireKey`]s of
    /// earlier batches; `None`, with nothing admitted, when one is unknown.
    fn admit_keyed(&self, batch: Vec<(WireKey, Vec<MetricSample>)>) -> Option<Admitted>;

    /// Takes back an admission whose WAL append was refused (overload), so
    /// that the sender's retry is admitted again rather than taken for a
    /// duplicate. Must run before anything else is admitted.
    fn undo_admission(&self, admitted: &Admitted);

    /// Appends the durable samples of WAL record `seq` (the WAL replay),
    /// adding the series it names; samples the store has already are
    /// skipped.
    fn apply(&self, seq: u64, record: SampleRecord);

    /// [`apply`](Self::apply) for what [`admit`](Self::admit) returned, by
    /// series id ([`Admitted::take_samples`]): no series is looked up again
    /// by its labels, the costliest step of ingest.
    fn apply_admitted(&self, seq: u64, batch: Vec<(u32, Vec<MetricSample>)>);

    /// Whether the store holds enough in memory that a flush before the
    /// interval would be worth its cost: the pipeline then asks for one,
    /// which bounds the store's memory under a heavy load.
    fn wants_flush(&self) -> bool {
        false
    }

    /// Whether the store holds as many samples as it may while its backend
    /// cannot take them: new ones are refused (503) until it drains.
    fn is_full(&self) -> bool {
        false
    }

    /// Records type, help and unit of metric families.
    fn set_metadata(&self, metadata: Vec<MetricMetadata>);

    /// The newest durable sample of the series with exactly `labels`
    /// (canonical form), staleness markers included: where the running
    /// total of an OTLP delta series resumes after a restart.
    fn newest(&self, labels: &[Label]) -> Option<MetricSample>;

    /// The newest durable samples of the series labelled `labels` plus one
    /// label `extra` (e.g. a histogram's `_bucket` series by `le`): that
    /// label's value and the sample. Where the running total of an OTLP
    /// delta exponential histogram, whose buckets are not known in
    /// advance, resumes after a restart.
    fn newest_by(&self, labels: &[Label], extra: &str) -> Vec<(String, MetricSample)>;

    /// Makes everything applied through `applied_seq` (read by the caller
    /// before calling) durable in the store; afterwards the WAL through it
    /// is no longer needed by this store.
    fn flush(&self, applied_seq: u64) -> Result<()>;

    /// Drops data older than `retention.max_age` as of `now_ms`, then the
    /// oldest while the store takes more than `retention.max_bytes`.
    /// Returns how many units (files, days) went.
    fn enforce_retention(&self, retention: Retention, now_ms: i64) -> Result<usize>;

    /// Writes the store's files into `relative` under `backup`.
    fn snapshot(&self, backup: &mut BackupDir, relative: &Path) -> Result<()>;

    /// At most how many series [`select`](Self::select) finds for
    /// `matchers`, when the store knows it without looking at each series
    /// and without leaving this process; `None` otherwise. A query's quick
    /// attempt on an async worker (see `QueryPool::run_quick_first`)
    /// selects only where this bound is small, so that its selection stays
    /// cheap; a store behind the network must never block an async worker.
    fn select_bound(&self, matchers: &[Matcher]) -> Option<usize> {
        let _ = matchers;
        None
    }

    /// Every series matching `matchers` with its samples in `[start, end]`
    /// (milliseconds, inclusive), one sample per timestamp; series without
    /// samples there are left out. More than `max_series` of them is
    /// `TooManySeries`.
    fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
    ) -> Result<Selection>;

    /// [`select`](Self::select) for a selector PromQL reads only at
    /// `steps` (see `strand_promql::SeriesSource::select_steps`): a store
    /// may leave out every sample but the newest of each step.
    fn select_steps(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
        steps: Steps,
    ) -> Result<Selection> {
        let _ = steps;
        self.select(matchers, start, end, max_series)
    }

    /// Label sets of the series matching any of `selectors` (every series
    /// when empty) that have samples in `[start, end]`, in label order: at
    /// most `limit`, and whether more matched.
    fn series(
        &self,
        selectors: &[Vec<Matcher>],
        start: i64,
        end: i64,
        limit: usize,
    ) -> Result<(Vec<Vec<Label>>, bool)>;

    /// Sorted label names of the series [`series`](Self::series) would
    /// return.
    fn label_names(&self, selectors: &[Vec<Matcher>], start: i64, end: i64) -> Result<Vec<String>>;

    /// Sorted values of the label `name` among the series
    /// [`series`](Self::series) would return.
    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>>;

    /// Type, help and unit per metric family, optionally of one metric, in
    /// metric order.
    fn metadata(&self, metric: Option<&str>) -> Result<Vec<MetricMetadata>>;
}
