//! The metrics store: a small TSDB in the shape of Prometheus's.
//!
//! A series is identified by its sorted label set and gets a dense id. An
//! inverted index (label name -> value -> ids) narrows selections; every
//! matcher is then checked against the candidates' labels. Samples go into
//! compressed chunks ([`chunk`]: Gorilla, or integers at a decimal scale)
//! of up to 120 samples.
//!
//! On disk, under `metrics/`:
//! - `series.log`: one entry per series (id, labels), appended when a flush
//!   first sees the series;
//! - `chunks/<n>.chk`: sealed chunks, appended by flushes, one file per
//!   eighth of the size limit (see `Retention::file_bytes`), at most
//!   `MAX_CHUNK_FILE_BYTES`; retention deletes whole files, oldest first;
//! - `head.snap`: the open chunk of every series and the metadata, rewritten
//!   atomically by each flush together with the WAL sequence number it covers;
//! - `FORMAT`: the version of the series log and chunk file formats.
//!
//! Entries of the series log and chunk files are [`frame`](crate::frame)s
//! holding postcard; a torn tail of the newest chunk file or of the series
//! log is cut on open. Replaying the WAL after the snapshot is
//! idempotent: a sample at or before a series' newest time is skipped.
//!
//! Ordering rule: within a series, samples must arrive in time order.
//! [`MetricStore::admit`] checks this (and the cardinality limits) before the
//! WAL append, so an acknowledged sample is never dropped later; an older
//! sample, or a different value for an existing timestamp, is rejected with
//! a reason, as Prometheus does without an out-of-order window.
//!
//! # Layout
//!
//! - `index`: series ids, postings and matcher selection.
//! - `head`: the in-memory head and admission.
//! - `files`: the series log, chunk files and snapshot on disk.
//! - [`chunk`]: the chunk encodings.
//!
//! This file is the [`MetricStore`] façade that holds them together and
//! decides the order of the steps of open, flush, query and retention.

pub mod chunk;
mod files;
mod head;
mod index;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use promql_parser::label::Matcher;

use self::files::{ChunkFiles, SeriesLog, Snapshot};
pub use self::head::Admitted;
use self::head::Head;
use crate::codec::SampleRecord;
use crate::config::Retention;
use crate::model::{Label, MetricMetadata, MetricSample, SeriesSamples, WireKey};
use crate::store::sample_store::{SampleStore, SelectedSeries, Selection};
use crate::store::{self, Result, StoreError};
use crate::telemetry::SelfMetrics;

pub use crate::config::SeriesLimits;

/// The version of the series log and chunk file formats, recorded in the
/// store's `FORMAT` file (the head snapshot carries its own). Version 2
/// adds chunk encodings besides Gorilla (see [`chunk`]); a version 1
/// directory is read as it is, its chunks all being Gorilla's.
const FORMAT_VERSION: u32 = 2;

/// Sealed chunks in memory beyond which the store asks for a flush before
/// the interval (unless the open chunks a flush also writes are larger):
/// under a heavy load, a flush interval's worth of samples would otherwise
/// stay in memory. 4 MiB is a few seconds of a million samples per second.
const SEALED_BYTES_BEFORE_FLUSH: usize = 4 << 20;

/// See the module documentation.
pub struct MetricStore {
    dir: PathBuf,
    head: RwLock<Head>,
    files: Mutex<ChunkFiles>,
    series_log: Mutex<SeriesLog>,
    /// Serialises flushes, which read and then update the head.
    flushing: Mutex<u64>,
    limits: SeriesLimits,
    metrics: SelfMetrics,
    /// Damaged chunks already reported (file, offset): once per run.
    reported: Mutex<HashSet<(u32, u64)>>,
    /// The head's [`Head::sealed_bytes`], read without its lock.
    sealed_bytes: AtomicUsize,
    /// Bytes of open chunks the last flush wrote to the snapshot: a flush
    /// asked for early writes at least as many sealed bytes as these.
    snapshot_bytes: AtomicUsize,
}

impl MetricStore {
    /// Opens (or creates) the store under `dir`: series, chunk files and the
    /// head snapshot. The WAL after [`MetricStore::checkpoint`] must be
    /// applied next. A new chunk file starts once the current one holds
    /// `chunk_file_bytes` (at most `files::MAX_CHUNK_FILE_BYTES`).
    pub fn open(
        dir: &Path,
        limits: SeriesLimits,
        chunk_file_bytes: u64,
        metrics: SelfMetrics,
    ) -> Result<MetricStore> {
        std::fs::create_dir_all(dir)?;
        crate::store::check_format(dir, "metrics", 1..=FORMAT_VERSION)?;
        let mut head = Head::default();
        let series_log =
            SeriesLog::open(dir, &metrics, |id, labels| head.insert(id, &labels, true))?;
        let mut files = ChunkFiles::open(dir, chunk_file_bytes, &metrics, |id, chunk_ref| {
            head.add_persisted(id, chunk_ref)
        })?;
        let mut through_seq = 0;
        let data_dir = dir.parent().unwrap_or(dir);
        let snapshot = match Snapshot::read(dir) {
            Ok(snapshot) => snapshot,
            // Without it the open chunks start empty: the WAL replays what
            // it still holds of them.
            Err(StoreError::Corrupt(damage)) => {
                let path = dir.join(files::SNAPSHOT);
                let moved = store::quarantine(data_dir, &path)?;
                metrics.corrupt_data(
                    "metrics",
                    data_dir,
                    &path,
                    0,
                    &damage,
                    &format!("moved to {}; open chunks start empty", moved.display()),
                );
                None
            }
            Err(error) => return Err(error),
        };
        if let Some(snapshot) = snapshot {
            through_seq = snapshot.through_seq;
            head.restore(snapshot)?;
        }
        head.resume_newest(|newest| {
            let file = files.reader(newest.file).ok()?;
            let bytes = newest.read(&file).ok()?;
            let samples = chunk::decode(&bytes).ok()?;
            samples.last().map(|s| s.value.to_bits())
        });
        metrics.metric_series.set(head.index.live_series() as i64);
        Ok(MetricStore {
            dir: dir.to_owned(),
            head: RwLock::new(head),
            files: Mutex::new(files),
            series_log: Mutex::new(series_log),
            flushing: Mutex::new(through_seq),
            limits,
            metrics,
            reported: Mutex::new(HashSet::new()),
            sealed_bytes: AtomicUsize::new(0),
            snapshot_bytes: AtomicUsize::new(0),
        })
    }

    /// Reports a chunk found damaged after open, once per run; queries skip
    /// it and say so.
    fn report_damaged_chunk(&self, chunk_ref: &files::ChunkRef, damage: &str) {
        let key = (chunk_ref.file, chunk_ref.offset());
        if self.reported.lock().expect("not poisoned").insert(key) {
            let path = self
                .files
                .lock()
                .expect("not poisoned")
                .path(chunk_ref.file);
            self.metrics.corrupt_data(
                "metrics",
                self.dir.parent().unwrap_or(&self.dir),
                &path,
                chunk_ref.offset(),
                damage,
                "skipped the chunk: queries answer the rest with a warning",
            );
        }
    }

    /// The labels of the series with id `id` (as [`Admitted::take_samples`]
    /// gives them): how a backend that keys series by their labels names
    /// what it is applied.
    pub fn labels_of(&self, id: u32) -> Option<Vec<Label>> {
        let head = self.head.read().expect("not poisoned");
        head.index.labels(id).map(|labels| labels.to_vec())
    }

    /// A replayed WAL record's samples by series id, the series it names
    /// added: what a backend keeping its own copy of the samples takes
    /// before [`apply_admitted`](SampleStore::apply_admitted) applies them
    /// here.
    pub fn resolve(&self, record: SampleRecord) -> Vec<(u32, Vec<MetricSample>)> {
        self.head.write().expect("not poisoned").resolve(record)
    }

    /// Bytes of the store's files.
    pub fn disk_bytes(&self) -> u64 {
        let chunks = self.files.lock().expect("not poisoned").bytes();
        chunks + files::log_and_snapshot_bytes(&self.dir)
    }
}

impl SampleStore for MetricStore {
    /// The WAL sequence number the newest snapshot covers.
    fn durable_through(&self) -> u64 {
        *self.flushing.lock().expect("not poisoned")
    }

    /// The narrowest posting list of an equality matcher, from the
    /// in-memory index.
    fn select_bound(&self, matchers: &[Matcher]) -> Option<usize> {
        let head = self.head.read().expect("not poisoned");
        head.index.select_bound(matchers)
    }

    /// Checks order and cardinality and reserves the samples' place; what is
    /// returned must go to the WAL, and be applied in the same order as
    /// admitted (the caller holds its own lock across both).
    fn admit(&self, batch: Vec<SeriesSamples>, keys: &[WireKey]) -> Admitted {
        let mut head = self.head.write().expect("not poisoned");
        let admitted = head.admit(batch, keys, &self.limits);
        self.metrics
            .metric_series
            .set(head.index.live_series() as i64);
        admitted
    }

    /// Admits samples of known series by [`WireKey`]; no series is added.
    fn admit_keyed(&self, batch: Vec<(WireKey, Vec<MetricSample>)>) -> Option<Admitted> {
        self.head.write().expect("not poisoned").admit_keyed(batch)
    }

    /// Takes back an admission whose WAL append was refused (overload), so
    /// that the sender's retry is admitted again rather than taken for a
    /// duplicate. Must run before anything else is admitted.
    fn undo_admission(&self, admitted: &Admitted) {
        self.head.write().expect("not poisoned").undo(admitted);
    }

    /// Appends the durable samples of a WAL record (the replay); samples
    /// at or before a series' newest one are skipped.
    fn apply(&self, _seq: u64, record: SampleRecord) {
        let mut head = self.head.write().expect("not poisoned");
        let batch = head.resolve(record);
        head.apply_admitted(batch);
        self.sealed_bytes
            .store(head.sealed_bytes(), Ordering::Relaxed);
        self.metrics
            .metric_series
            .set(head.index.live_series() as i64);
    }

    /// [`apply`](Self::apply) for what [`admit`](Self::admit) returned,
    /// by series id ([`Admitted::take_samples`]): no series is looked up
    /// again by its labels, the costliest step of ingest, and no label is
    /// freed on the WAL writer's thread this runs on.
    fn apply_admitted(&self, _seq: u64, batch: Vec<(u32, Vec<MetricSample>)>) {
        let mut head = self.head.write().expect("not poisoned");
        head.apply_admitted(batch);
        self.sealed_bytes
            .store(head.sealed_bytes(), Ordering::Relaxed);
        self.metrics
            .metric_series
            .set(head.index.live_series() as i64);
    }

    /// Whether the sealed chunks in memory exceed
    /// [`SEALED_BYTES_BEFORE_FLUSH`] and the open chunks the last flush
    /// wrote.
    fn wants_flush(&self) -> bool {
        let open = self.snapshot_bytes.load(Ordering::Relaxed);
        self.sealed_bytes.load(Ordering::Relaxed) >= SEALED_BYTES_BEFORE_FLUSH.max(open)
    }

    /// Records type, help and unit of metric families.
    fn set_metadata(&self, metadata: Vec<MetricMetadata>) {
        if metadata.is_empty() {
            return;
        }
        self.head
            .write()
            .expect("not poisoned")
            .set_metadata(metadata);
    }

    /// The newest durable sample of the series with exactly `labels`
    /// (canonical form), staleness markers included: where the running total
    /// of an OTLP delta series resumes after a restart.
    fn newest(&self, labels: &[Label]) -> Option<MetricSample> {
        self.head.read().expect("not poisoned").newest(labels)
    }

    /// The newest durable samples of the series labelled `labels` plus one
    /// label `extra` (e.g. a histogram's `_bucket` series by `le`): that
    /// label's value and the sample. Where the running total of an OTLP
    /// delta exponential histogram, whose buckets are not known in
    /// advance, resumes after a restart.
    fn newest_by(&self, labels: &[Label], extra: &str) -> Vec<(String, MetricSample)> {
        self.head
            .read()
            .expect("not poisoned")
            .newest_by(labels, extra)
    }

    /// Type, help and unit per metric family, optionally of one metric.
    fn metadata(&self, metric: Option<&str>) -> Result<Vec<MetricMetadata>> {
        Ok(self.head.read().expect("not poisoned").metadata(metric))
    }

    /// Writes new series, sealed chunks and a snapshot of the open chunks;
    /// afterwards the WAL through `applied_seq` (read by the caller before
    /// calling) is no longer needed by this store.
    fn flush(&self, applied_seq: u64) -> Result<()> {
        let mut checkpoint = self.flushing.lock().expect("not poisoned");
        let mut unflushed = self
            .head
            .read()
            .expect("not poisoned")
            .unflushed(applied_seq)?;
        // Outside the head's lock, off the WAL writer's path.
        for sealed in &mut unflushed.sealed {
            if let Some(smaller) = chunk::compact(&sealed.bytes) {
                sealed.bytes = smaller.into();
            }
        }
        for (_, open) in &mut unflushed.snapshot.open {
            if let Some(smaller) = chunk::compact(open) {
                *open = smaller;
            }
        }
        // Marks the moment a crash test kills the daemon in.
        tracing::debug!(applied_seq, "MetricSnapshotStarted");
        if !unflushed.new_series.is_empty() {
            self.series_log
                .lock()
                .expect("not poisoned")
                .append(&unflushed.new_series)?;
        }
        let refs = self
            .files
            .lock()
            .expect("not poisoned")
            .write(&unflushed.sealed)?;
        unflushed.snapshot.write(&self.dir)?;
        let open_bytes = unflushed.snapshot.open.iter().map(|(_, open)| open.len());
        self.snapshot_bytes
            .store(open_bytes.sum(), Ordering::Relaxed);

        let mut head = self.head.write().expect("not poisoned");
        head.flushed(&unflushed.new_series, &unflushed.sealed, refs);
        self.sealed_bytes
            .store(head.sealed_bytes(), Ordering::Relaxed);
        drop(head);
        *checkpoint = applied_seq;
        self.metrics
            .store_size_bytes
            .with_label_values(&["metrics"])
            .set(self.disk_bytes() as i64);
        Ok(())
    }

    /// Every series matching `matchers` with its samples in `[start, end]`
    /// (milliseconds, inclusive); series without samples there are left out.
    /// More than `max_series` of them is `TooManySeries`, found before any
    /// sample is read.
    fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
    ) -> Result<Selection> {
        struct Pending {
            labels: Vec<Label>,
            refs: Vec<files::ChunkRef>,
            chunks: Vec<bytes::Bytes>,
        }
        let pending: Vec<Pending> = {
            let head = self.head.read().expect("not poisoned");
            let ids: Vec<u32> = head
                .index
                .select(matchers)
                .into_iter()
                .filter(|id| head.any_in_range(&[*id], start, end))
                .collect();
            if ids.len() > max_series {
                return Err(StoreError::TooManySeries { limit: max_series });
            }
            ids.into_iter()
                .filter_map(|id| {
                    let (refs, chunks) = head.series(id)?.chunks_overlapping(start, end);
                    if refs.is_empty() && chunks.is_empty() {
                        return None;
                    }
                    Some(Pending {
                        labels: head.index.labels(id)?.to_vec(),
                        refs,
                        chunks,
                    })
                })
                .collect()
        };
        let mut out = Vec::with_capacity(pending.len());
        let mut damaged = false;
        for series in pending {
            let mut samples = Vec::new();
            for chunk_ref in &series.refs {
                let file = self
                    .files
                    .lock()
                    .expect("not poisoned")
                    .reader(chunk_ref.file)?;
                let read = chunk_ref
                    .read(&file)
                    .and_then(|bytes| extend_in_range(&mut samples, &bytes, start, end));
                match read {
                    Ok(()) => {}
                    Err(StoreError::Corrupt(damage)) => {
                        self.report_damaged_chunk(chunk_ref, &damage);
                        damaged = true;
                    }
                    Err(error) => return Err(error),
                }
            }
            for bytes in &series.chunks {
                extend_in_range(&mut samples, bytes, start, end)?;
            }
            if !samples.is_empty() {
                out.push(SelectedSeries {
                    labels: series.labels,
                    samples,
                });
            }
        }
        Ok(Selection {
            series: out,
            damaged,
        })
    }

    /// Label sets of the series matching any of `selectors` (every series
    /// when empty) that have samples in `[start, end]`.
    ///
    /// At most `limit` are returned (the first in label order), and whether
    /// more matched: only those are copied.
    fn series(
        &self,
        selectors: &[Vec<Matcher>],
        start: i64,
        end: i64,
        limit: usize,
    ) -> Result<(Vec<Vec<Label>>, bool)> {
        let head = self.head.read().expect("not poisoned");
        let mut matched: Vec<Vec<(&str, &str)>> = head
            .select_in_range(selectors, start, end)
            .into_iter()
            .filter_map(|id| Some(head.index.labels(id)?.iter().collect()))
            .collect();
        matched.sort_unstable();
        let more = matched.len() > limit;
        let out = matched
            .into_iter()
            .take(limit)
            .map(|labels| {
                labels
                    .into_iter()
                    .map(|(name, value)| Label::new(name, value))
                    .collect()
            })
            .collect();
        Ok((out, more))
    }

    /// Sorted label names of the series [`series`](Self::series) would
    /// return. Without selectors they come from the postings: each name is
    /// checked up to its first series with samples in range, and no label
    /// set is copied.
    fn label_names(&self, selectors: &[Vec<Matcher>], start: i64, end: i64) -> Result<Vec<String>> {
        let head = self.head.read().expect("not poisoned");
        let names: BTreeSet<&str> = if selectors.is_empty() {
            head.index
                .postings()
                .filter(|(_, values)| {
                    values
                        .values()
                        .any(|ids| head.any_in_range(ids, start, end))
                })
                .map(|(name, _)| name)
                .collect()
        } else {
            head.select_in_range(selectors, start, end)
                .into_iter()
                .filter_map(|id| head.index.labels(id))
                .flat_map(|labels| labels.iter().map(|(name, _)| name))
                .collect()
        };
        Ok(names.into_iter().map(str::to_owned).collect())
    }

    /// Sorted values of the label `name` among the series
    /// [`series`](Self::series) would return; from the postings of `name`
    /// when there are no selectors.
    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>> {
        let head = self.head.read().expect("not poisoned");
        let values: BTreeSet<&str> = if selectors.is_empty() {
            head.index
                .postings_of(name)
                .filter(|(_, ids)| head.any_in_range(ids, start, end))
                .map(|(value, _)| value)
                .collect()
        } else {
            head.select_in_range(selectors, start, end)
                .into_iter()
                .filter_map(|id| head.index.labels(id))
                .map(|labels| labels.value(name))
                .filter(|value| !value.is_empty())
                .collect()
        };
        Ok(values.into_iter().map(str::to_owned).collect())
    }

    /// Deletes chunk files whose newest sample is older than `now - age`, and
    /// then the oldest files while the total exceeds `max_bytes` (0: no
    /// limit). The file being written is never deleted.
    fn enforce_retention(&self, retention: Retention, now_ms: i64) -> Result<usize> {
        let cutoff = now_ms.saturating_sub(retention.max_age.as_millis() as i64);
        let expired = self
            .files
            .lock()
            .expect("not poisoned")
            .expired(cutoff, retention.max_bytes);
        if expired.is_empty() {
            return Ok(0);
        }
        let doomed: Vec<u32> = expired.iter().map(|(number, ..)| *number).collect();
        self.head
            .write()
            .expect("not poisoned")
            .drop_chunk_files(&doomed);
        self.files.lock().expect("not poisoned").remove(&doomed)?;
        for (_, reason, bytes) in expired {
            self.metrics.retention_dropped("metrics", reason, bytes);
        }
        self.metrics
            .store_size_bytes
            .with_label_values(&["metrics"])
            .set(self.disk_bytes() as i64);
        Ok(doomed.len())
    }

    /// Writes the store as its last flush left it into `relative` under
    /// `backup` (see `files::snapshot`); flushes and retention wait
    /// meanwhile, samples keep arriving (the WAL the snapshot also holds
    /// has those not flushed).
    fn snapshot(&self, backup: &mut crate::backup::BackupDir, relative: &Path) -> Result<()> {
        let _flush = self.flushing.lock().expect("not poisoned");
        let chunks = self.files.lock().expect("not poisoned");
        files::snapshot(&self.dir, &chunks, backup, relative)
    }
}

fn extend_in_range(out: &mut Vec<MetricSample>, bytes: &[u8], start: i64, end: i64) -> Result<()> {
    let samples = chunk::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    out.extend(
        samples
            .into_iter()
            .filter(|s| s.timestamp_ms >= start && s.timestamp_ms <= end),
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::METRIC_NAME_LABEL;
    use crate::store::metrics::files::MAX_CHUNK_FILE_BYTES;
    use promql_parser::label::MatchOp;

    pub(super) fn limits() -> SeriesLimits {
        SeriesLimits {
            max_series: 1000,
            max_series_per_metric: 100,
        }
    }

    /// A store in `dir` with the test limits and full-size chunk files.
    pub(crate) fn open_store(dir: &Path) -> MetricStore {
        MetricStore::open(dir, limits(), MAX_CHUNK_FILE_BYTES, SelfMetrics::new()).unwrap()
    }

    pub(crate) fn series(name: &str, job: &str, samples: &[(i64, f64)]) -> SeriesSamples {
        SeriesSamples {
            labels: vec![Label::new(METRIC_NAME_LABEL, name), Label::new("job", job)],
            samples: samples
                .iter()
                .map(|&(timestamp_ms, value)| MetricSample {
                    timestamp_ms,
                    value,
                })
                .collect(),
        }
    }

    pub(crate) fn matcher(name: &str, value: &str) -> Matcher {
        Matcher::new(MatchOp::Equal, name, value)
    }

    pub(crate) fn ingest(store: &MetricStore, batch: Vec<SeriesSamples>) -> Admitted {
        let mut admitted = store.admit(batch, &[]);
        store.apply_admitted(0, admitted.take_samples());
        admitted
    }

    #[test]
    fn sealed_chunks_past_the_threshold_ask_for_a_flush_that_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let jobs: Vec<String> = (0..10).map(|job| job.to_string()).collect();
        let per_chunk = i64::from(chunk::SAMPLES_PER_CHUNK);
        // Values that do not compress: about 8 bytes a sample.
        let round = |first: i64| -> Vec<(i64, f64)> {
            (first..first + per_chunk)
                .map(|t| (t, (t as f64 * 0.7).sin() * 1e9))
                .collect()
        };
        let mut rounds = 0;
        while !store.wants_flush() {
            let batch = jobs
                .iter()
                .map(|job| series("up", job, &round(rounds * per_chunk)))
                .collect();
            ingest(&store, batch);
            rounds += 1;
            assert!(rounds < 10_000, "sealed chunks never asked for a flush");
        }
        let sealed = store.sealed_bytes.load(Ordering::Relaxed);
        assert!(sealed >= SEALED_BYTES_BEFORE_FLUSH, "{sealed}");
        assert!(sealed < 2 * SEALED_BYTES_BEFORE_FLUSH, "{sealed}");
        store.flush(0).unwrap();
        assert!(!store.wants_flush());
        assert_eq!(store.sealed_bytes.load(Ordering::Relaxed), 0);
        assert!(store.disk_bytes() as usize > SEALED_BYTES_BEFORE_FLUSH / 2);
        // Everything is still read back, sealed chunks from the chunk files.
        let got = store
            .select(&[matcher("job", "7")], 0, i64::MAX, usize::MAX)
            .unwrap()
            .series;
        assert_eq!(got[0].samples.len(), (rounds * per_chunk) as usize);
    }

    #[test]
    fn a_version_1_directory_of_gorilla_chunks_opens_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let labels = series("up", "a", &[]).labels;
        // What version 1 wrote: Gorilla chunks, sealed and in the snapshot.
        let gorilla = |range: std::ops::Range<i64>| {
            let mut writer = chunk::ChunkWriter::default();
            for i in range {
                writer.push(i * 15_000, i as f64);
            }
            writer.encode()
        };
        {
            let metrics = SelfMetrics::new();
            let mut log = SeriesLog::open(dir.path(), &metrics, |_, _| {}).unwrap();
            let mut entries = files::SeriesEntries::default();
            let pairs = labels.iter().map(|l| (&*l.name, &*l.value));
            entries.push(0, pairs).unwrap();
            log.append(&entries).unwrap();
            let mut files =
                ChunkFiles::open(dir.path(), MAX_CHUNK_FILE_BYTES, &metrics, |_, _| {}).unwrap();
            files
                .write(&[files::ChunkToWrite {
                    series: 0,
                    min_t: 0,
                    max_t: 119 * 15_000,
                    bytes: gorilla(0..120).into(),
                }])
                .unwrap();
            Snapshot {
                through_seq: 3,
                open: vec![(0, gorilla(120..150))],
                metadata: vec![],
            }
            .write(dir.path())
            .unwrap();
            std::fs::write(dir.path().join(crate::store::FORMAT_FILE), "1\n").unwrap();
        }
        let values = |store: &MetricStore| -> Vec<f64> {
            let got = store
                .select(&[matcher("job", "a")], 0, i64::MAX, usize::MAX)
                .unwrap();
            got.series[0].samples.iter().map(|s| s.value).collect()
        };
        let store = open_store(dir.path());
        assert_eq!(store.durable_through(), 3);
        assert_eq!(values(&store), (0..150).map(f64::from).collect::<Vec<_>>());
        // Sealed and snapshotted now in version 2's encodings.
        let more: Vec<(i64, f64)> = (150..300).map(|i| (i * 15_000, i as f64)).collect();
        ingest(&store, vec![series("up", "a", &more)]);
        store.flush(4).unwrap();
        drop(store);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(crate::store::FORMAT_FILE)).unwrap(),
            "2\n"
        );
        let store = open_store(dir.path());
        assert_eq!(values(&store), (0..300).map(f64::from).collect::<Vec<_>>());
    }

    #[test]
    fn newest_by_lists_the_series_with_one_more_label() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let bucket = |le: &str, job: &str, value: f64| {
            let mut s = series("x_bucket", job, &[(1000, value), (2000, value + 1.0)]);
            s.labels.push(Label::new("le", le));
            s.labels.sort();
            s
        };
        let mut two_more = bucket("1", "a", 0.0);
        two_more.labels.push(Label::new("zone", "z"));
        two_more.labels.sort();
        ingest(
            &store,
            vec![
                bucket("1", "a", 1.0),
                bucket("+Inf", "a", 4.0),
                bucket("1", "b", 7.0),
                series("x_bucket", "a", &[(1000, 9.0)]),
                two_more,
            ],
        );
        let mut family = series("x_bucket", "a", &[]).labels;
        family.sort();
        let mut found = store.newest_by(&family, "le");
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let values: Vec<(&str, i64, f64)> = found
            .iter()
            .map(|(le, s)| (le.as_str(), s.timestamp_ms, s.value))
            .collect();
        assert_eq!(values, vec![("+Inf", 2000, 5.0), ("1", 2000, 2.0)]);
    }

    #[test]
    fn a_kill_between_chunk_append_and_snapshot_duplicates_no_sample() {
        let dir = tempfile::tempdir().unwrap();
        let samples: Vec<(i64, f64)> = (0..130).map(|i| (i * 1000, i as f64)).collect();
        let old_snapshot = {
            let store = open_store(dir.path());
            ingest(&store, vec![series("up", "a", &samples[..50])]);
            store.flush(1).unwrap();
            let old_snapshot = std::fs::read(dir.path().join("head.snap")).unwrap();
            // Seals the chunk the old snapshot holds open, and writes it.
            ingest(&store, vec![series("up", "a", &samples[50..])]);
            store.flush(2).unwrap();
            old_snapshot
        };
        // As if killed after the chunk file append, before the new snapshot.
        std::fs::write(dir.path().join("head.snap"), old_snapshot).unwrap();
        let store = open_store(dir.path());
        assert_eq!(store.durable_through(), 1);
        store.apply(
            0,
            SampleRecord::ByLabels(vec![series("up", "a", &samples[50..])]),
        );
        let got = store
            .select(&[matcher("job", "a")], 0, i64::MAX, usize::MAX)
            .unwrap();
        let times: Vec<i64> = got.series[0]
            .samples
            .iter()
            .map(|s| s.timestamp_ms)
            .collect();
        assert_eq!(times, samples.iter().map(|s| s.0).collect::<Vec<_>>());
    }

    #[test]
    fn a_snapshot_holds_the_last_flush() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let samples: Vec<(i64, f64)> = (0..300).map(|i| (i * 15_000, i as f64)).collect();
        let store = open_store(&dir.path().join("metrics"));
        ingest(&store, vec![series("up", "a", &samples[..250])]);
        store.flush(7).unwrap();
        // Applied after the flush: the snapshot's WAL has these.
        ingest(&store, vec![series("up", "a", &samples[250..])]);

        let snapshot = dir.path().join("snapshot");
        std::fs::create_dir(&snapshot).unwrap();
        let mut backup = crate::backup::BackupDir::new(snapshot.clone());
        store.snapshot(&mut backup, Path::new("metrics")).unwrap();
        let inode = |root: &Path, file: &str| {
            std::fs::metadata(root.join("metrics").join(file))
                .unwrap()
                .ino()
        };
        // Replaced whole by a rename: linked. Appended to: copied.
        assert_eq!(
            inode(&snapshot, "head.snap"),
            inode(dir.path(), "head.snap")
        );
        for appended in ["series.log", "chunks/0000000000.chk"] {
            assert_ne!(inode(&snapshot, appended), inode(dir.path(), appended));
        }
        store.flush(8).unwrap();

        let copy = open_store(&snapshot.join("metrics"));
        assert_eq!(copy.durable_through(), 7);
        let got = copy
            .select(&[matcher("job", "a")], 0, i64::MAX, usize::MAX)
            .unwrap()
            .series;
        assert_eq!(got[0].samples.len(), 250);
    }

    #[test]
    fn survives_flush_and_reopen_across_sealed_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let samples: Vec<(i64, f64)> = (0..300).map(|i| (i * 15_000, i as f64 * 1.5)).collect();
        {
            let store = open_store(dir.path());
            ingest(&store, vec![series("up", "a", &samples[..250])]);
            store.flush(7).unwrap();
            // Applied after the flush: only the WAL has these.
            ingest(&store, vec![series("up", "a", &samples[250..])]);
            let all = store
                .select(&[matcher("job", "a")], 0, i64::MAX, usize::MAX)
                .unwrap()
                .series;
            assert_eq!(all[0].samples.len(), 300);
        }
        let store = open_store(dir.path());
        assert_eq!(store.durable_through(), 7);
        let before_replay = store
            .select(&[matcher("job", "a")], 0, i64::MAX, usize::MAX)
            .unwrap()
            .series;
        assert_eq!(before_replay[0].samples.len(), 250);
        // Replay repeats a sample the snapshot has: skipped.
        store.apply(
            0,
            SampleRecord::ByLabels(vec![series("up", "a", &samples[249..])]),
        );
        let got = store
            .select(&[matcher("__name__", "up")], 0, i64::MAX, usize::MAX)
            .unwrap()
            .series;
        let times: Vec<i64> = got[0].samples.iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(times, samples.iter().map(|s| s.0).collect::<Vec<_>>());
        let window = store
            .select(
                &[matcher("job", "a")],
                15_000 * 100,
                15_000 * 110,
                usize::MAX,
            )
            .unwrap()
            .series;
        assert_eq!(window[0].samples.len(), 11);
    }

    #[test]
    fn retrying_the_newest_sample_after_reopen_is_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open_store(dir.path());
            ingest(&store, vec![series("x", "a", &[(1000, 1.5), (2000, 2.5)])]);
            store.flush(1).unwrap();
        }
        let store = open_store(dir.path());
        let retry = ingest(&store, vec![series("x", "a", &[(2000, 2.5)])]);
        assert_eq!(retry.rejected, 0, "{:?}", retry.first_error);
        let conflict = ingest(&store, vec![series("x", "a", &[(2000, 9.0)])]);
        assert_eq!(conflict.rejected, 1);
    }

    #[test]
    fn label_names_and_values_follow_selectors_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let mut old = series("up", "old", &[(1_000, 1.0)]);
        old.labels.push(Label::new("zone", "a"));
        ingest(
            &store,
            vec![
                old,
                series("up", "api", &[(60_000, 1.0)]),
                series("rate", "db", &[(60_000, 2.0)]),
            ],
        );
        let all = (i64::MIN, i64::MAX);
        assert_eq!(
            store.label_names(&[], all.0, all.1).unwrap(),
            ["__name__", "job", "zone"]
        );
        assert_eq!(
            store.label_values("job", &[], all.0, all.1).unwrap(),
            ["api", "db", "old"]
        );
        // Only series with samples in the range count.
        assert_eq!(
            store.label_names(&[], 30_000, 90_000).unwrap(),
            ["__name__", "job"]
        );
        assert_eq!(
            store.label_values("job", &[], 30_000, 90_000).unwrap(),
            ["api", "db"]
        );
        let up = vec![vec![matcher(METRIC_NAME_LABEL, "up")]];
        assert_eq!(
            store.label_values("job", &up, all.0, all.1).unwrap(),
            ["api", "old"]
        );
        assert_eq!(
            store.label_values("zone", &up, 30_000, 90_000).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            store.label_names(&up, all.0, all.1).unwrap(),
            ["__name__", "job", "zone"]
        );
        assert!(
            store
                .label_values("nope", &[], all.0, all.1)
                .unwrap()
                .is_empty()
        );
    }
}
