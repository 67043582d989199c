//! The data path between the wire and the stores:
//! `decoded spans, logs or samples -> WAL (group commit) -> store -> ack`, and
//! the background loops that flush spans to blocks, commit the log indexes,
//! snapshot the metrics head, apply retention and trim the WAL behind what
//! every store has made durable.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::Notify;

use crate::codec;
use crate::config::{
    AttributeLimits, Config, IngestLimits, LogSettings, MetricSettings, TraceSettings,
};
use crate::derived::service_graph::ServiceGraph;
use crate::derived::span_metrics::SpanMetrics;
use crate::model::{LogRecord, MetricMetadata, MetricSample, SeriesSamples, Span, WireKey};
use crate::store::SpanStore;
use crate::store::Stores;
use crate::store::log_feed::LogFeed;
use crate::store::log_search::LogRecordStore;
use crate::store::sample_store::SampleStore;
use crate::telemetry::SelfMetrics;
use crate::wal::{RecordKind, Wal, WalError};

/// The label of [`Pipeline::derived_node`].
const DERIVED_NODE_LABEL: &str = "strand_node";

/// Why data was not accepted. The status codes for each protocol are chosen in
/// the ingest edge (`ingest::IngestError`).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("too much data is waiting to be written, retry later")]
    Overloaded,
    #[error("the write-ahead log failed: {0}")]
    Unavailable(String),
    #[error(
        "the request converts to {bytes} bytes of samples, more than the write-ahead log queue holds ({limit} bytes, --wal-queue-bytes): send smaller requests"
    )]
    TooLarge { bytes: usize, limit: usize },
    /// The WAL holds what a store has not taken yet up to its bound
    /// (a store cannot write, or flushes fall behind).
    #[error(
        "the write-ahead log holds {bytes} bytes the stores have not taken yet, more than --wal-max-bytes ({limit}): retry later"
    )]
    WalFull { bytes: u64, limit: u64 },
}

/// How often log indexes are committed: the bound on how long an
/// acknowledged log takes to become searchable.
const LOG_COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// How often the flusher checks whether the daemon went quiet: a burst's
/// freed memory goes back to the operating system about this long after
/// its last request.
const QUIET_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Once the WAL holds more than this many segments (see
/// `IngestLimits::wal_segment_bytes`), every store is flushed at once rather
/// than at its interval, so that the WAL can be trimmed.
const WAL_SEGMENTS_BEFORE_FLUSH: u64 = 2;

/// What kind of data an append carries, for counting it.
#[derive(Clone, Copy)]
enum Signal {
    Spans,
    Logs,
    Samples,
}

/// Samples for admission, their series named by labels or by the wire keys
/// of earlier batches.
pub enum SampleBatch {
    /// By labels; `keys` is empty or gives each series' [`WireKey`], which
    /// the store remembers.
    Labelled {
        series: Vec<SeriesSamples>,
        keys: Vec<WireKey>,
    },
    /// By the [`WireKey`]s of series an earlier batch named by labels.
    Keyed(Vec<(WireKey, Vec<MetricSample>)>),
}

impl SampleBatch {
    fn sample_count(&self) -> usize {
        match self {
            SampleBatch::Labelled { series, .. } => series.iter().map(|s| s.samples.len()).sum(),
            SampleBatch::Keyed(series) => series.iter().map(|(_, samples)| samples.len()).sum(),
        }
    }
}

/// Samples of one request that were not stored, and the first reason.
#[derive(Debug, Default)]
pub struct SampleRejections {
    pub rejected: u64,
    pub first_error: Option<String>,
}

/// Shared by every ingest endpoint; see the module docs.
pub struct Pipeline {
    wal: Wal,
    traces: Arc<dyn SpanStore>,
    logs: Arc<dyn LogRecordStore>,
    /// Adds durable log records to the log store off the WAL writer thread.
    log_feed: Arc<LogFeed>,
    metric_store: Arc<dyn SampleStore>,
    span_metrics: Arc<SpanMetrics>,
    /// Counts the calls between services that span flushes complete.
    service_graph: ServiceGraph,
    /// The label derived metrics carry to tell this node's series from
    /// other nodes' over a shared backend (`strand_node`), if any.
    derived_node: Option<crate::model::Label>,
    /// Held across admission and WAL enqueue so that samples reach the
    /// metrics store in the order they were checked in.
    sample_admission: std::sync::Mutex<()>,
    trace_settings: TraceSettings,
    log_settings: LogSettings,
    metric_settings: MetricSettings,
    limits: IngestLimits,
    metrics: SelfMetrics,
    flush_wanted: Notify,
    /// Set when the metrics store holds enough to flush before the interval
    /// (see `SampleStore::wants_flush`).
    metrics_flush_wanted: Notify,
    /// Set when the WAL has grown long: see [`Pipeline::flush_if_wal_long`].
    wal_long: Notify,
    /// WAL sequence numbers through which each store has made everything
    /// durable; the WAL is trimmed to the lowest.
    traces_durable_through: AtomicU64,
    logs_durable_through: AtomicU64,
    metrics_durable_through: AtomicU64,
}

impl Pipeline {
    /// Opens the WAL under the data directory and replays into `stores` what they
    /// do not have yet.
    pub fn open(
        stores: &Stores,
        config: &Config,
        metrics: SelfMetrics,
    ) -> anyhow::Result<Arc<Pipeline>> {
        use anyhow::Context;
        let Stores {
            traces,
            logs,
            metrics: metric_store,
            node_id,
            ..
        } = stores.clone();
        let limits = config.limits.clone();
        let traces_checkpoint = traces
            .durable_through()
            .context("reading the trace store checkpoint")?;
        let metrics_checkpoint = metric_store.durable_through();
        let (mut replayed_spans, mut replayed_logs, mut replayed_series) = (0usize, 0usize, 0usize);
        // The WAL only holds records some store may lack: replay all of it.
        // Spans at or below the trace checkpoint are skipped here; log
        // partitions skip what they have committed themselves.
        let wal = Wal::open(
            &config.data_dir.join("wal"),
            0,
            traces_checkpoint
                .max(logs.durable_through())
                .max(metrics_checkpoint),
            limits.wal_queue_bytes,
            limits.wal_segment_bytes,
            metrics.clone(),
            |record| match record.kind {
                RecordKind::Spans if record.seq <= traces_checkpoint => {}
                RecordKind::Spans => match codec::decode_spans(&record.payload, None) {
                    Ok(spans) => {
                        replayed_spans += spans.len();
                        traces.apply(record.seq, spans);
                    }
                    Err(error) => {
                        tracing::error!(seq = record.seq, %error, "WalRecordUndecodable: skipped")
                    }
                },
                RecordKind::Logs => match codec::decode_logs(&record.payload) {
                    Ok(records) => match logs.apply(record.seq, records) {
                        Ok(added) => replayed_logs += added,
                        Err(error) => {
                            tracing::error!(seq = record.seq, %error, "LogReplayError")
                        }
                    },
                    Err(error) => {
                        tracing::error!(seq = record.seq, %error, "WalRecordUndecodable: skipped")
                    }
                },
                RecordKind::Samples if record.seq <= metrics_checkpoint => {}
                RecordKind::Samples => match codec::decode_samples(&record.payload) {
                    Ok(samples) => {
                        replayed_series += samples.series_count();
                        metric_store.apply(record.seq, samples);
                    }
                    Err(error) => {
                        tracing::error!(seq = record.seq, %error, "WalRecordUndecodable: skipped")
                    }
                },
            },
        )
        .context("opening the write-ahead log")?;
        traces
            .settle_set_aside(wal.oldest_seq())
            .context("settling span blocks the trace index does not map")?;
        // Replayed logs are searchable once the daemon says it is ready.
        // A backend that is down takes them later; the WAL keeps them.
        match logs.commit() {
            Err(error) if error.is_unavailable() => {
                tracing::warn!(%error, "ReplayedLogsNotCommitted: they wait in the WAL");
            }
            committed => {
                committed.context("committing replayed logs")?;
            }
        }
        tracing::info!(
            traces_checkpoint,
            replayed_spans,
            replayed_logs,
            replayed_series,
            "WalReplayed"
        );
        let log_feed = Arc::new(LogFeed::start(logs.clone()).context("starting the log feed")?);
        Ok(Arc::new(Pipeline {
            wal,
            traces,
            logs,
            log_feed,
            metric_store,
            span_metrics: Arc::new(SpanMetrics::default()),
            service_graph: ServiceGraph::default(),
            derived_node: node_id
                .map(|id| crate::model::Label::new(DERIVED_NODE_LABEL, format!("{id:016x}"))),
            sample_admission: std::sync::Mutex::new(()),
            trace_settings: config.traces.clone(),
            log_settings: config.logs.clone(),
            metric_settings: config.metrics.clone(),
            limits,
            metrics,
            flush_wanted: Notify::new(),
            metrics_flush_wanted: Notify::new(),
            wal_long: Notify::new(),
            traces_durable_through: AtomicU64::new(0),
            logs_durable_through: AtomicU64::new(0),
            metrics_durable_through: AtomicU64::new(metrics_checkpoint),
        }))
    }

    /// A handle on the write-ahead log, for snapshots of the data
    /// directory (which copy its durable records).
    pub fn wal(&self) -> Wal {
        self.wal.clone()
    }

    /// Makes samples durable and queryable; returns once they are both.
    /// Samples out of order or beyond the series limits are left out and
    /// reported; the rest are stored.
    pub async fn accept_samples(
        self: &Arc<Self>,
        series: Vec<SeriesSamples>,
        metadata: Vec<MetricMetadata>,
        transport: &str,
    ) -> Result<SampleRejections, AcceptError> {
        let batch = SampleBatch::Labelled {
            series,
            keys: Vec::new(),
        };
        // A batch by labels is always admitted: `None` does not occur.
        let rejections = self.accept_sample_batch(batch, metadata, transport).await?;
        Ok(rejections.unwrap_or_default())
    }

    /// [`accept_samples`](Self::accept_samples) for a batch that may name
    /// its series by [`WireKey`]: `None`, with nothing stored, when the
    /// store does not know one of its keys and the batch must come again
    /// by labels.
    pub async fn accept_sample_batch(
        self: &Arc<Self>,
        batch: SampleBatch,
        metadata: Vec<MetricMetadata>,
        transport: &str,
    ) -> Result<Option<SampleRejections>, AcceptError> {
        let count = batch.sample_count();
        self.check_wal_room(Signal::Samples, count)?;
        if self.metric_store.is_full() {
            self.reject_samples(count, "overloaded");
            return Err(AcceptError::Overloaded);
        }
        // Admission takes the store's locks and encodes the whole batch:
        // blocking work, kept off the async workers.
        let pipeline = self.clone();
        let admission =
            tokio::task::spawn_blocking(move || pipeline.admit_samples(batch, metadata))
                .await
                .map_err(|error| {
                    AcceptError::Unavailable(format!("sample admission: {error}"))
                })??;
        let Some((rejections, queued)) = admission else {
            return Ok(None);
        };
        let Some((pending, count)) = queued else {
            return Ok(Some(rejections));
        };
        let appended = match pending {
            Ok(pending) => pending.await,
            Err(error) => Err(error),
        };
        self.count_outcome(Signal::Samples, appended, count, transport)?;
        if self.metric_store.wants_flush() {
            self.metrics_flush_wanted.notify_one();
        }
        Ok(Some(rejections))
    }

    /// Checks samples against the metrics store (time order, series
    /// limits), encodes the admitted ones and queues them for the WAL, under
    /// one lock so that samples reach the store in the order they were
    /// checked in. Returns `None` when a keyed batch names an unknown
    /// series, else the rejections and, if anything was queued, what to
    /// await for its durability and how many samples it holds. Blocking.
    #[allow(clippy::type_complexity)]
    fn admit_samples(
        &self,
        batch: SampleBatch,
        metadata: Vec<MetricMetadata>,
    ) -> Result<
        Option<(
            SampleRejections,
            Option<(
                Result<impl Future<Output = Result<u64, WalError>> + use<>, WalError>,
                usize,
            )>,
        )>,
        AcceptError,
    > {
        let _order = self.sample_admission.lock().expect("not poisoned");
        let admitted = match batch {
            SampleBatch::Labelled { series, keys } => Some(self.metric_store.admit(series, &keys)),
            SampleBatch::Keyed(series) => self.metric_store.admit_keyed(series),
        };
        let Some(mut admitted) = admitted else {
            return Ok(None);
        };
        self.metric_store.set_metadata(metadata);
        let rejections = SampleRejections {
            rejected: admitted.rejected,
            first_error: admitted.first_error.take(),
        };
        let by_limits = admitted.rejected_by_limits;
        if by_limits > 0 {
            self.reject_samples(by_limits as usize, "series_limit");
        }
        if admitted.rejected > by_limits {
            self.reject_samples((admitted.rejected - by_limits) as usize, "out_of_order");
        }
        if admitted.is_empty() {
            return Ok(Some((rejections, None)));
        }
        let count = admitted.sample_count();
        let payload = admitted.encode();
        if payload.len() > self.limits.wal_queue_bytes {
            self.metric_store.undo_admission(&admitted);
            self.reject_samples(count, "too_large");
            return Err(AcceptError::TooLarge {
                bytes: payload.len(),
                limit: self.limits.wal_queue_bytes,
            });
        }
        let store = self.metric_store.clone();
        let samples = admitted.take_samples();
        let pending = self.wal.enqueue(
            RecordKind::Samples,
            payload,
            Box::new(move |seq| store.apply_admitted(seq, samples)),
        );
        if pending.is_err() {
            // Not queued: the retry must find these samples new again.
            self.metric_store.undo_admission(&admitted);
        }
        Ok(Some((rejections, Some((pending, count)))))
    }

    /// The newest durable sample of the series with exactly `labels`; see
    /// `SampleStore::newest`.
    pub fn newest_sample(
        &self,
        labels: &[crate::model::Label],
    ) -> Option<crate::model::MetricSample> {
        self.metric_store.newest(labels)
    }

    /// The newest durable samples of the series labelled `labels` plus
    /// `extra`; see `SampleStore::newest_by`.
    pub fn newest_samples_by(
        &self,
        labels: &[crate::model::Label],
        extra: &str,
    ) -> Vec<(String, crate::model::MetricSample)> {
        self.metric_store.newest_by(labels, extra)
    }

    /// Counts a remote-write request admitted, by how its series were found
    /// (`key` or `labels`).
    pub fn count_remote_write(&self, series_by: &str) {
        self.metrics
            .remote_write_requests
            .with_label_values(&[series_by])
            .inc();
    }

    /// Counts samples refused.
    pub fn reject_samples(&self, samples: usize, reason: &str) {
        self.reject(Signal::Samples, samples, reason);
    }

    /// Makes spans durable and queryable; returns once they are both.
    pub async fn accept_spans(&self, spans: Vec<Span>, transport: &str) -> Result<(), AcceptError> {
        if spans.is_empty() {
            return Ok(());
        }
        let count = spans.len();
        self.check_wal_room(Signal::Spans, count)?;
        let buffered = self.traces.buffered_spans();
        if buffered + count > self.limits.max_buffered_spans {
            self.flush_wanted.notify_one();
            self.reject_spans(count, "overloaded");
            return Err(AcceptError::Overloaded);
        }
        let payload = codec::encode_spans(&spans);
        let store = self.traces.clone();
        let span_metrics = self.span_metrics.clone();
        let appended = self
            .wal
            .append(
                RecordKind::Spans,
                payload,
                Box::new(move |seq| {
                    span_metrics.record(&spans);
                    store.apply(seq, spans)
                }),
            )
            .await;
        // Half the most that may be held at most, so a flush has room to
        // finish before ingest is refused, whatever `flush_spans` says.
        let flush_at = self
            .limits
            .flush_spans
            .min(self.limits.max_buffered_spans / 2);
        if self.traces.head_spans() >= flush_at {
            self.flush_wanted.notify_one();
        }
        self.flush_if_wal_long();
        self.count_outcome(Signal::Spans, appended, count, transport)
    }

    /// Makes log records durable; returns once they are (they become
    /// searchable at the next log commit, which waits for the log feed to
    /// have added them).
    pub async fn accept_logs(
        &self,
        records: Vec<LogRecord>,
        transport: &str,
    ) -> Result<(), AcceptError> {
        if records.is_empty() {
            return Ok(());
        }
        let count = records.len();
        self.check_wal_room(Signal::Logs, count)?;
        // Commits come every half second whatever happens: no need to ask.
        if self.logs.is_full() {
            self.reject_logs(count, "overloaded");
            return Err(AcceptError::Overloaded);
        }
        let payload = codec::encode_logs(&records);
        let feed = self.log_feed.clone();
        let appended = self
            .wal
            .append(
                RecordKind::Logs,
                payload,
                Box::new(move |seq| feed.push(seq, records)),
            )
            .await;
        self.flush_if_wal_long();
        self.count_outcome(Signal::Logs, appended, count, transport)
    }

    /// Counts log records refused before reaching the WAL.
    pub fn reject_logs(&self, records: usize, reason: &str) {
        self.reject(Signal::Logs, records, reason);
    }

    /// The attribute limits ingest converts under.
    pub fn attribute_limits(&self) -> &AttributeLimits {
        &self.limits.attributes
    }

    /// Counts what the attribute limits took from `signal`'s (`spans`,
    /// `logs`) items.
    pub fn count_trimmed_attributes(&self, signal: &str, dropped: u64, truncated: u64) {
        if dropped > 0 {
            self.metrics
                .attributes_dropped
                .with_label_values(&[signal])
                .inc_by(dropped);
        }
        if truncated > 0 {
            self.metrics
                .attribute_values_truncated
                .with_label_values(&[signal])
                .inc_by(truncated);
        }
    }

    /// Counts spans refused before reaching the WAL.
    pub fn reject_spans(&self, spans: usize, reason: &str) {
        self.reject(Signal::Spans, spans, reason);
    }

    fn reject(&self, signal: Signal, items: usize, reason: &str) {
        let (_, rejected) = self.counters(signal);
        rejected.with_label_values(&[reason]).inc_by(items as u64);
    }

    /// The received and rejected counters of `signal`.
    fn counters(&self, signal: Signal) -> (&IntCounterVec, &IntCounterVec) {
        let m = &self.metrics;
        match signal {
            Signal::Spans => (&m.spans_received, &m.spans_rejected),
            Signal::Logs => (&m.logs_received, &m.logs_rejected),
            Signal::Samples => (&m.samples_received, &m.samples_rejected),
        }
    }

    /// Counts how the WAL append of `count` items of `signal` ended, and
    /// turns its failure into the answer ingest gives.
    fn count_outcome(
        &self,
        signal: Signal,
        appended: Result<u64, WalError>,
        count: usize,
        transport: &str,
    ) -> Result<(), AcceptError> {
        match appended {
            Ok(_) => {
                let (received, _) = self.counters(signal);
                received
                    .with_label_values(&[transport])
                    .inc_by(count as u64);
                Ok(())
            }
            Err(WalError::Overloaded) => {
                self.reject(signal, count, "overloaded");
                Err(AcceptError::Overloaded)
            }
            Err(error) => {
                self.reject(signal, count, "unavailable");
                Err(AcceptError::Unavailable(error.to_string()))
            }
        }
    }

    /// Asks the flusher to write the span head out now (memory is short).
    pub fn request_flush(&self) {
        self.flush_wanted.notify_one();
    }

    /// Counts a request refused as a whole (malformed, too large, ...).
    pub fn reject_request(&self, reason: &str) {
        self.metrics
            .requests_rejected
            .with_label_values(&[reason])
            .inc();
    }

    /// Flushes the span head to blocks and trims the WAL; returns whether the
    /// flush succeeded (what `/readyz` reports).
    pub async fn flush_spans(self: &Arc<Self>) -> bool {
        let pipeline = self.clone();
        // Read before the flush: every record up to here is in the head that
        // the flush takes, or was flushed before.
        let applied = self.wal.applied_through();
        let flushed = tokio::task::spawn_blocking(move || {
            let flushed = pipeline.traces.flush()?;
            if let Err(error) = pipeline.traces.checkpoint_through(applied) {
                tracing::error!(%error, "SpanCheckpointError");
                return Err(error);
            }
            // Under a size limit, every flush may take the store past it:
            // retention follows at once rather than at its next interval.
            if flushed.is_some() && pipeline.trace_settings.retention.max_bytes > 0 {
                pipeline.retain_traces(crate::model::now_unix_nano());
            }
            Ok::<_, crate::store::StoreError>(flushed.map(|flushed| {
                pipeline.service_graph.record(&flushed.edges);
                flushed.through_seq
            }))
        })
        .await;
        let through = match flushed {
            Ok(Ok(Some(seq))) => seq.max(applied),
            Ok(Ok(None)) => applied,
            // The store logged the error and kept the spans for the next try.
            Ok(Err(_)) => return false,
            Err(error) => {
                tracing::error!(%error, "SpanStoreFlushPanicked");
                return false;
            }
        };
        self.traces_durable_through
            .fetch_max(through, Ordering::AcqRel);
        self.trim_wal();
        true
    }

    /// Commits the log indexes (making new logs searchable) and trims the WAL.
    pub async fn flush_logs(self: &Arc<Self>) -> bool {
        let pipeline = self.clone();
        let applied = self.wal.applied_through();
        let committed = tokio::task::spawn_blocking(move || {
            // Everything up to `applied` was handed to the feed.
            pipeline.log_feed.wait_fed();
            let committed = pipeline.logs.commit()?;
            // As for spans: a commit may take the store past its size limit.
            if committed > 0 && pipeline.log_settings.retention.max_bytes > 0 {
                pipeline.retain_logs(crate::model::now_unix_nano());
            }
            Ok::<_, crate::store::StoreError>(committed)
        })
        .await;
        match committed {
            Ok(Ok(_)) => {
                self.logs_durable_through
                    .fetch_max(applied, Ordering::AcqRel);
                self.trim_wal();
                true
            }
            Ok(Err(error)) => {
                self.metrics.store_flush_errors.inc();
                tracing::error!(%error, "LogCommitError");
                false
            }
            Err(error) => {
                tracing::error!(%error, "LogCommitPanicked");
                false
            }
        }
    }

    /// Writes the metrics head out and trims the WAL.
    pub async fn flush_metrics(self: &Arc<Self>) -> bool {
        let pipeline = self.clone();
        let applied = self.wal.applied_through();
        match tokio::task::spawn_blocking(move || pipeline.metric_store.flush(applied)).await {
            Ok(Ok(())) => {
                self.metrics_durable_through
                    .fetch_max(applied, Ordering::AcqRel);
                self.trim_wal();
                true
            }
            Ok(Err(error)) => {
                self.metrics.store_flush_errors.inc();
                tracing::error!(%error, "MetricStoreFlushError");
                false
            }
            Err(error) => {
                tracing::error!(%error, "MetricStoreFlushPanicked");
                false
            }
        }
    }

    /// Refuses `count` items of `signal` while the WAL is over its bound,
    /// and asks for every store to be flushed so that it can be trimmed.
    fn check_wal_room(&self, signal: Signal, count: usize) -> Result<(), AcceptError> {
        let bytes = self.wal_bytes();
        if bytes <= self.limits.wal_max_bytes {
            return Ok(());
        }
        self.wal_long.notify_one();
        self.reject(signal, count, "wal_full");
        Err(AcceptError::WalFull {
            bytes,
            limit: self.limits.wal_max_bytes,
        })
    }

    /// Bytes the WAL holds now.
    fn wal_bytes(&self) -> u64 {
        u64::try_from(self.metrics.wal_size_bytes.get()).unwrap_or(0)
    }

    /// Asks the flusher to flush every store when the WAL holds more than
    /// [`WAL_SEGMENTS_BEFORE_FLUSH`] segments: with size limits its segments
    /// are small, and it counts against the data directory's bound.
    fn flush_if_wal_long(&self) {
        if self.wal_bytes() > WAL_SEGMENTS_BEFORE_FLUSH * self.limits.wal_segment_bytes {
            self.wal_long.notify_one();
        }
    }

    fn trim_wal(&self) {
        let through = self
            .traces_durable_through
            .load(Ordering::Acquire)
            .min(self.logs_durable_through.load(Ordering::Acquire))
            .min(self.metrics_durable_through.load(Ordering::Acquire));
        if through > 0 {
            self.wal.truncate_through(through);
        }
    }

    /// Runs the background work until `stop` resolves: span flushes
    /// (periodically, or sooner when the head fills up), log commits, metrics
    /// flushes (periodically, or sooner when sealed chunks pile up, unless
    /// the last flush failed), derived metrics and retention. Then flushes and commits a last time and closes the WAL.
    pub async fn run_flusher(
        self: Arc<Self>,
        healthy: Arc<std::sync::atomic::AtomicBool>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut flush_at = tokio::time::Instant::now() + self.limits.flush_interval;
        let mut flush_logs = tokio::time::interval(LOG_COMMIT_INTERVAL);
        let mut retention = tokio::time::interval(self.limits.retention_interval);
        let mut flush_metrics = tokio::time::interval(self.limits.metrics_flush_interval);
        let mut derived_metrics = tokio::time::interval(self.metric_settings.derived_interval);
        let mut quiet_check = tokio::time::interval(QUIET_CHECK_INTERVAL);
        // Checks missed while a flush ran are not made up in a burst: the
        // second of two back-to-back checks would find no new records and
        // take a busy daemon for a quiet one.
        quiet_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut quiet = crate::memory::QuietWatch::new(self.wal.applied_through());
        // After a failed metrics flush (a full disk), retries wait for the
        // interval rather than follow every request.
        let mut metrics_flushed = true;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(flush_at) => {
                    healthy.store(self.flush_spans().await, Ordering::Relaxed);
                    flush_at = tokio::time::Instant::now() + self.limits.flush_interval;
                }
                _ = self.flush_wanted.notified() => {
                    healthy.store(self.flush_spans().await, Ordering::Relaxed);
                    flush_at = tokio::time::Instant::now() + self.limits.flush_interval;
                }
                _ = flush_logs.tick() => {
                    self.flush_logs().await;
                }
                _ = self.wal_long.notified() => {
                    // The WAL waits for every store's checkpoint (the
                    // metrics one moves every ten seconds by default): move
                    // them all on now, so it can be trimmed.
                    self.flush_logs().await;
                    healthy.store(self.flush_spans().await, Ordering::Relaxed);
                    flush_at = tokio::time::Instant::now() + self.limits.flush_interval;
                    metrics_flushed = self.flush_metrics().await;
                }
                _ = flush_metrics.tick() => {
                    metrics_flushed = self.flush_metrics().await;
                }
                _ = self.metrics_flush_wanted.notified() => {
                    // Asked for again while a flush ran, it may be done.
                    if metrics_flushed && self.metric_store.wants_flush() {
                        metrics_flushed = self.flush_metrics().await;
                    }
                }
                _ = derived_metrics.tick() => self.write_derived_metrics().await,
                _ = retention.tick() => self.enforce_retention().await,
                _ = quiet_check.tick() => {
                    if quiet.release_now(self.wal.applied_through()) {
                        crate::memory::release_freed_memory();
                        // A task for each worker: one parked since before
                        // the round wakes to run one, and joins the round
                        // when it parks again.
                        let workers = tokio::runtime::Handle::current().metrics().num_workers();
                        for _ in 0..workers {
                            tokio::spawn(async {});
                        }
                    }
                }
            }
        }
        if !self.flush_spans().await || !self.flush_logs().await || !self.flush_metrics().await {
            tracing::error!("FinalFlushError: data stays in the WAL and is replayed on next start");
        }
        self.wal.shutdown().await;
        self.log_feed.shutdown();
    }

    /// Writes the current counts derived from spans (RED metrics and the
    /// service graph) as samples.
    async fn write_derived_metrics(self: &Arc<Self>) {
        let now_ms = (crate::model::now_unix_nano() / 1_000_000) as i64;
        let (mut series, mut metadata) = self.span_metrics.samples(now_ms);
        let (graph_series, graph_metadata) = self.service_graph.samples(now_ms);
        series.extend(graph_series);
        metadata.extend(graph_metadata);
        if series.is_empty() {
            return;
        }
        if let Some(node) = &self.derived_node {
            for one in &mut series {
                let mut labels = std::mem::take(&mut one.labels);
                labels.push(node.clone());
                one.labels = crate::model::canonical_labels(labels);
            }
        }
        if let Err(error) = self.accept_samples(series, metadata, "spans").await {
            tracing::warn!(%error, "DerivedMetricsNotStored");
        }
    }

    /// Applies trace retention as of `now` (Unix nanoseconds); an error is
    /// logged and the next run tries again.
    fn retain_traces(&self, now: u64) {
        if let Err(error) = self
            .traces
            .enforce_retention(self.trace_settings.retention, now)
        {
            tracing::error!(%error, "TraceRetentionError");
        }
    }

    /// Applies log retention as of `now`, as [`Pipeline::retain_traces`].
    fn retain_logs(&self, now: u64) {
        if let Err(error) = self
            .logs
            .enforce_retention(self.log_settings.retention, now)
        {
            tracing::error!(%error, "LogRetentionError");
        }
    }

    async fn enforce_retention(self: &Arc<Self>) {
        let pipeline = self.clone();
        let now = crate::model::now_unix_nano();
        let done = tokio::task::spawn_blocking(move || {
            // Marks the moment a crash test kills the daemon in.
            tracing::debug!("RetentionStarted");
            pipeline.retain_traces(now);
            pipeline.retain_logs(now);
            if let Err(error) = pipeline
                .metric_store
                .enforce_retention(pipeline.metric_settings.retention, (now / 1_000_000) as i64)
            {
                tracing::error!(%error, "MetricRetentionError");
            }
        })
        .await;
        if let Err(error) = done {
            tracing::error!(%error, "RetentionPanicked");
        }
    }
}
