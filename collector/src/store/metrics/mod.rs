//! The metrics store: a small TSDB in the shape of Prometheus's.
//!
//! A series is identified by its sorted label set and gets a dense id. An
//! inverted index (label name -> value -> ids) narrows selections; every
//! matcher is then checked against the candidates' labels. Samples go into
//! Gorilla-compressed chunks ([`chunk`]) of up to 120 samples.
//!
//! On disk, under `metrics/`:
//! - `series.log`: one entry per series (id, labels), appended when a flush
//!   first sees the series;
//! - `chunks/<n>.chk`: sealed chunks, appended by flushes, one file per
//!   `CHUNK_FILE_BYTES`; retention deletes whole files, oldest first;
//! - `head.snap`: the open chunk of every series and the metadata, rewritten
//!   atomically by each flush together with the WAL sequence number it covers.
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

pub mod chunk;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use promql_parser::label::{MatchOp, Matcher};
use serde::{Deserialize, Serialize};

use self::chunk::ChunkWriter;
use crate::frame;
use crate::model::{Label, METRIC_NAME_LABEL, MetricMetadata, MetricSample, SeriesSamples};
use crate::store::{Result, StoreError};
use crate::telemetry::Metrics;

/// Size at which a new chunk file is started; also the granularity of
/// retention.
const CHUNK_FILE_BYTES: u64 = 64 << 20;
const SERIES_LOG: &str = "series.log";
const SNAPSHOT: &str = "head.snap";
const SNAPSHOT_VERSION: u8 = 1;

/// Limits on how many series may exist, so one bad label cannot exhaust
/// memory.
#[derive(Clone, Debug)]
pub struct SeriesLimits {
    pub max_series: usize,
    pub max_series_per_metric: usize,
}

/// A series' data that made it past [`MetricStore::admit`], ready for the WAL.
pub struct Admitted {
    pub series: Vec<SeriesSamples>,
    /// Samples refused, and the first reason, for partial-success answers.
    pub rejected: u64,
    /// Of `rejected`, those refused by the series limits (the rest were out
    /// of order or conflicting duplicates).
    pub rejected_by_limits: u64,
    pub first_error: Option<String>,
    /// Each admitted series' newest admitted sample before this admission,
    /// for [`MetricStore::undo_admission`].
    previous: Vec<(u32, Option<(i64, u64)>)>,
}

/// A series and its samples in a queried range.
pub struct SelectedSeries {
    pub labels: Vec<Label>,
    pub samples: Vec<MetricSample>,
}

/// Why the limits refuse a series; `points` is set on one series of each
/// refused data point, so the point is counted once.
struct Refusal {
    reason: String,
    points: Option<usize>,
}

/// Identifies the data point a series belongs to: the family name (without
/// `_bucket`, `_sum`, `_count`) and the labels other than `le` and `quantile`.
type PointKey = (String, Vec<Label>);

fn point_key(labels: &[Label]) -> PointKey {
    let name = metric_name(labels);
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    let rest = labels
        .iter()
        .filter(|l| !matches!(l.name.as_str(), METRIC_NAME_LABEL | "le" | "quantile"))
        .cloned()
        .collect();
    (family.to_owned(), rest)
}

/// Where a sealed chunk lives on disk.
#[derive(Clone, Copy, Debug)]
struct ChunkRef {
    file: u32,
    offset: u64,
    len: u32,
    min_t: i64,
    max_t: i64,
}

struct SealedChunk {
    bytes: Vec<u8>,
    min_t: i64,
    max_t: i64,
}

struct MemSeries {
    labels: Arc<[Label]>,
    persisted: Vec<ChunkRef>,
    /// Sealed but not yet written by a flush.
    sealed: Vec<SealedChunk>,
    open: ChunkWriter,
    /// Newest sample applied, and its value bits.
    last: Option<(i64, u64)>,
    /// Newest sample admitted (applied or on its way through the WAL).
    admitted: Option<(i64, u64)>,
    /// Whether `series.log` has this series yet.
    logged: bool,
}

impl MemSeries {
    fn min_time(&self) -> Option<i64> {
        let persisted = self.persisted.first().map(|c| c.min_t);
        let sealed = self.sealed.first().map(|c| c.min_t);
        let open = (!self.open.is_empty()).then(|| self.open.time_range().0);
        persisted.or(sealed).or(open)
    }

    fn max_time(&self) -> Option<i64> {
        self.last.map(|(t, _)| t)
    }
}

#[derive(Default)]
struct Head {
    series: Vec<Option<MemSeries>>,
    by_hash: HashMap<u64, Vec<u32>>,
    postings: HashMap<String, HashMap<String, Vec<u32>>>,
    series_per_metric: HashMap<String, usize>,
    live_series: usize,
    metadata: BTreeMap<String, MetricMetadata>,
    metadata_changed: bool,
}

impl Head {
    fn find(&self, labels: &[Label]) -> Option<u32> {
        self.by_hash
            .get(&label_hash(labels))?
            .iter()
            .copied()
            .find(|&id| {
                self.series[id as usize]
                    .as_ref()
                    .is_some_and(|s| &*s.labels == labels)
            })
    }

    fn insert(&mut self, id: u32, labels: Arc<[Label]>, logged: bool) {
        let index = id as usize;
        if self.series.len() <= index {
            self.series.resize_with(index + 1, || None);
        }
        self.by_hash
            .entry(label_hash(&labels))
            .or_default()
            .push(id);
        for label in labels.iter() {
            let ids = self
                .postings
                .entry(label.name.clone())
                .or_default()
                .entry(label.value.clone())
                .or_default();
            // Ids are handed out in increasing order, except on open where
            // the series log is read in order too: postings stay sorted.
            ids.push(id);
        }
        let name = metric_name(&labels).to_owned();
        *self.series_per_metric.entry(name).or_default() += 1;
        self.live_series += 1;
        self.series[index] = Some(MemSeries {
            labels,
            persisted: Vec::new(),
            sealed: Vec::new(),
            open: ChunkWriter::default(),
            last: None,
            admitted: None,
            logged,
        });
    }

    fn next_id(&self) -> u32 {
        self.series.len() as u32
    }

    /// Ids of the series matching every matcher.
    fn select(&self, matchers: &[Matcher]) -> Vec<u32> {
        // Start from the smallest posting list of an equality matcher on a
        // non-empty value, else from every series.
        let narrowest = matchers
            .iter()
            .filter(|m| matches!(m.op, MatchOp::Equal) && !m.value.is_empty())
            .map(|m| {
                self.postings
                    .get(&m.name)
                    .and_then(|values| values.get(&m.value))
                    .map_or(&[][..], |ids| ids.as_slice())
            })
            .min_by_key(|ids| ids.len());
        let matches = |id: u32| {
            self.series[id as usize].as_ref().is_some_and(|series| {
                matchers
                    .iter()
                    .all(|m| m.is_match(label_value(&series.labels, &m.name)))
            })
        };
        match narrowest {
            Some(ids) => ids.iter().copied().filter(|&id| matches(id)).collect(),
            None => (0..self.series.len() as u32)
                .filter(|&id| matches(id))
                .collect(),
        }
    }
}

struct ChunkFiles {
    dir: PathBuf,
    /// Per file: (number, bytes, newest sample time).
    files: BTreeMap<u32, (u64, i64)>,
    writer: Option<(u32, File)>,
    readers: HashMap<u32, Arc<File>>,
}

impl ChunkFiles {
    fn path(&self, number: u32) -> PathBuf {
        self.dir.join(format!("{number:010}.chk"))
    }

    fn reader(&mut self, number: u32) -> Result<Arc<File>> {
        if let Some(file) = self.readers.get(&number) {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(self.path(number))?);
        self.readers.insert(number, file.clone());
        Ok(file)
    }
}

/// What a chunk file entry holds, after its length and CRC.
#[derive(Serialize, Deserialize)]
struct ChunkEntry<'a> {
    series: u32,
    min_t: i64,
    max_t: i64,
    #[serde(borrow)]
    bytes: &'a [u8],
}

#[derive(Serialize, Deserialize)]
struct SeriesEntry {
    id: u32,
    labels: Vec<Label>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    through_seq: u64,
    open: Vec<(u32, Vec<u8>)>,
    metadata: Vec<MetricMetadata>,
}

/// See the module documentation.
pub struct MetricStore {
    dir: PathBuf,
    head: RwLock<Head>,
    files: Mutex<ChunkFiles>,
    series_log: Mutex<File>,
    /// Serialises flushes, which read and then update the head.
    flushing: Mutex<u64>,
    limits: SeriesLimits,
    metrics: Metrics,
}

impl MetricStore {
    /// Opens (or creates) the store under `dir`: series, chunk files and the
    /// head snapshot. The WAL after [`MetricStore::checkpoint`] must be
    /// applied next.
    pub fn open(dir: &Path, limits: SeriesLimits, metrics: Metrics) -> Result<MetricStore> {
        let chunk_dir = dir.join("chunks");
        fs::create_dir_all(&chunk_dir)?;
        let mut head = Head::default();
        let series_path = dir.join(SERIES_LOG);
        let series_log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&series_path)?;
        let valid = read_frames(&series_path, |_, payload| {
            let entry: SeriesEntry = postcard::from_bytes(payload)
                .map_err(|e| StoreError::Corrupt(format!("series log: {e}")))?;
            head.insert(entry.id, entry.labels.into(), true);
            Ok(())
        })?;
        series_log.set_len(valid)?;

        let mut files = ChunkFiles {
            dir: chunk_dir.clone(),
            files: BTreeMap::new(),
            writer: None,
            readers: HashMap::new(),
        };
        let mut numbers: Vec<u32> = fs::read_dir(&chunk_dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".chk")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        for (position, &number) in numbers.iter().enumerate() {
            let path = files.path(number);
            let mut max_file_t = i64::MIN;
            let valid = read_frames(&path, |offset, payload| {
                let entry: ChunkEntry = postcard::from_bytes(payload)
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
                max_file_t = max_file_t.max(entry.max_t);
                if let Some(Some(series)) = head.series.get_mut(entry.series as usize) {
                    series.persisted.push(ChunkRef {
                        file: number,
                        offset,
                        len: payload.len() as u32,
                        min_t: entry.min_t,
                        max_t: entry.max_t,
                    });
                }
                Ok(())
            })?;
            if position + 1 == numbers.len() {
                OpenOptions::new().write(true).open(&path)?.set_len(valid)?;
            }
            files.files.insert(number, (valid, max_file_t));
        }

        let mut through_seq = 0;
        match fs::read(dir.join(SNAPSHOT)) {
            Ok(bytes) => {
                let snapshot = decode_snapshot(&bytes)?;
                through_seq = snapshot.through_seq;
                for (id, encoded) in snapshot.open {
                    if let Some(Some(series)) = head.series.get_mut(id as usize) {
                        series.open = ChunkWriter::resume(&encoded)
                            .map_err(|e| StoreError::Corrupt(format!("head snapshot: {e}")))?;
                    }
                }
                for metadata in snapshot.metadata {
                    head.metadata.insert(metadata.metric.clone(), metadata);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }
        for series in head.series.iter_mut().flatten() {
            // The newest value matters for a sender retrying its last sample
            // after a restart: the same value is a duplicate, not a conflict.
            series.last = series.open.last().or_else(|| {
                let newest = series.persisted.last()?;
                let value = files
                    .reader(newest.file)
                    .ok()
                    .and_then(|file| read_chunk_at(&file, newest).ok())
                    .and_then(|bytes| chunk::decode(&bytes).ok())
                    .and_then(|samples| samples.last().copied());
                Some((newest.max_t, value.map_or(0, |s| s.value.to_bits())))
            });
            series.admitted = series.last;
        }
        metrics.metric_series.set(head.live_series as i64);
        Ok(MetricStore {
            dir: dir.to_owned(),
            head: RwLock::new(head),
            files: Mutex::new(files),
            series_log: Mutex::new(series_log),
            flushing: Mutex::new(through_seq),
            limits,
            metrics,
        })
    }

    /// The WAL sequence number the newest snapshot covers.
    pub fn checkpoint(&self) -> u64 {
        *self.flushing.lock().expect("not poisoned")
    }

    /// Checks order and cardinality and reserves the samples' place; what is
    /// returned must go to the WAL, and be applied in the same order as
    /// admitted (the caller holds its own lock across both).
    pub fn admit(&self, batch: Vec<SeriesSamples>) -> Admitted {
        let mut head = self.head.write().expect("not poisoned");
        let mut admitted = Admitted {
            series: Vec::with_capacity(batch.len()),
            rejected: 0,
            rejected_by_limits: 0,
            first_error: None,
            previous: Vec::new(),
        };
        let reject = |admitted: &mut Admitted, count: usize, reason: String| {
            admitted.rejected += count as u64;
            admitted.first_error.get_or_insert(reason);
        };
        let refused = self.refused_by_limits(&head, &batch);
        for (index, mut series) in batch.into_iter().enumerate() {
            if let Some(refusal) = refused.get(&index) {
                if let Some(points) = refusal.points {
                    reject(&mut admitted, points, refusal.reason.clone());
                    admitted.rejected_by_limits += points as u64;
                }
                continue;
            }
            let id = match head.find(&series.labels) {
                Some(id) => id,
                None => {
                    let id = head.next_id();
                    head.insert(id, series.labels.clone().into(), false);
                    self.metrics.metric_series.set(head.live_series as i64);
                    id
                }
            };
            let state = head.series[id as usize].as_mut().expect("found above");
            let previous = state.admitted;
            let mut kept = Vec::with_capacity(series.samples.len());
            for sample in series.samples {
                let bits = sample.value.to_bits();
                match state.admitted {
                    Some((t, _)) if sample.timestamp_ms < t => {
                        reject(
                            &mut admitted,
                            1,
                            format!(
                                "out of order sample for series {}: {} is older than {t}",
                                format_labels(&series.labels),
                                sample.timestamp_ms
                            ),
                        );
                    }
                    Some((t, v)) if sample.timestamp_ms == t => {
                        if v != bits {
                            reject(
                                &mut admitted,
                                1,
                                format!(
                                    "duplicate sample for timestamp {t} with a different value in series {}",
                                    format_labels(&series.labels)
                                ),
                            );
                        }
                    }
                    _ => {
                        state.admitted = Some((sample.timestamp_ms, bits));
                        kept.push(sample);
                    }
                }
            }
            if !kept.is_empty() {
                series.samples = kept;
                admitted.series.push(series);
                admitted.previous.push((id, previous));
            }
        }
        admitted
    }

    /// Decides which new series the limits refuse, by batch index. The series
    /// of one data point (a histogram's buckets, sum and count; a summary's
    /// quantiles) are admitted or refused together: a histogram without some
    /// of its buckets gives wrong quantiles. A refused point is counted once,
    /// as OTLP's partial success counts data points.
    fn refused_by_limits(&self, head: &Head, batch: &[SeriesSamples]) -> HashMap<usize, Refusal> {
        let mut groups: Vec<(PointKey, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<PointKey, usize> = HashMap::new();
        let mut seen: std::collections::HashSet<&[Label]> = std::collections::HashSet::new();
        for (index, series) in batch.iter().enumerate() {
            if head.find(&series.labels).is_some() || !seen.insert(&series.labels) {
                continue;
            }
            let key = point_key(&series.labels);
            let group = *group_of.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[group].1.push(index);
        }
        let mut added_per_metric: HashMap<&str, usize> = HashMap::new();
        let mut added = 0usize;
        let mut refused = HashMap::new();
        for (_, members) in groups {
            let mut needed: HashMap<&str, usize> = HashMap::new();
            for &index in &members {
                *needed.entry(batch[index].metric_name()).or_default() += 1;
            }
            let over_metric = needed.iter().find_map(|(&name, &n)| {
                let existing = head.series_per_metric.get(name).copied().unwrap_or(0)
                    + added_per_metric.get(name).copied().unwrap_or(0);
                (existing + n > self.limits.max_series_per_metric).then(|| {
                    format!(
                        "series limit reached for metric {name:?}: {existing} series (--max-series-per-metric)"
                    )
                })
            });
            let total: usize = members.len();
            let reason = over_metric.or_else(|| {
                (head.live_series + added + total > self.limits.max_series).then(|| {
                    format!(
                        "series limit reached: {} series in total; new series of metric {:?} are refused (--max-series)",
                        head.live_series + added,
                        batch[members[0]].metric_name()
                    )
                })
            });
            match reason {
                Some(reason) => {
                    let points = members
                        .iter()
                        .map(|&i| batch[i].samples.len())
                        .max()
                        .unwrap_or(0);
                    for (position, &index) in members.iter().enumerate() {
                        refused.insert(
                            index,
                            Refusal {
                                reason: reason.clone(),
                                points: (position == 0).then_some(points),
                            },
                        );
                    }
                }
                None => {
                    for (name, n) in needed {
                        *added_per_metric.entry(name).or_default() += n;
                    }
                    added += total;
                }
            }
        }
        refused
    }

    /// Takes back an admission whose WAL append was refused (overload), so
    /// that the sender's retry is admitted again rather than taken for a
    /// duplicate. Must run before anything else is admitted.
    pub fn undo_admission(&self, admitted: &Admitted) {
        let mut head = self.head.write().expect("not poisoned");
        for &(id, previous) in &admitted.previous {
            if let Some(Some(series)) = head.series.get_mut(id as usize) {
                series.admitted = previous;
            }
        }
    }

    /// Appends durable samples (from an acknowledged request or the WAL
    /// replay); samples at or before a series' newest one are skipped.
    pub fn apply(&self, batch: Vec<SeriesSamples>) {
        let mut head = self.head.write().expect("not poisoned");
        for series in batch {
            let id = match head.find(&series.labels) {
                Some(id) => id,
                None => {
                    let id = head.next_id();
                    head.insert(id, series.labels.into(), false);
                    id
                }
            };
            let state = head.series[id as usize].as_mut().expect("found above");
            for sample in series.samples {
                if state.last.is_some_and(|(t, _)| sample.timestamp_ms <= t) {
                    continue;
                }
                if state.open.is_full() {
                    let (min_t, max_t) = state.open.time_range();
                    let full = std::mem::take(&mut state.open);
                    state.sealed.push(SealedChunk {
                        bytes: full.encode(),
                        min_t,
                        max_t,
                    });
                }
                state.open.push(sample.timestamp_ms, sample.value);
                let newest = (sample.timestamp_ms, sample.value.to_bits());
                state.last = Some(newest);
                if state.admitted.is_none_or(|(t, _)| t < newest.0) {
                    state.admitted = Some(newest);
                }
            }
        }
        self.metrics.metric_series.set(head.live_series as i64);
    }

    /// Records type, help and unit of metric families.
    pub fn set_metadata(&self, metadata: Vec<MetricMetadata>) {
        if metadata.is_empty() {
            return;
        }
        let mut head = self.head.write().expect("not poisoned");
        for entry in metadata {
            if head.metadata.get(&entry.metric) != Some(&entry) {
                head.metadata.insert(entry.metric.clone(), entry);
                head.metadata_changed = true;
            }
        }
    }

    /// Type, help and unit per metric family, optionally of one metric.
    pub fn metadata(&self, metric: Option<&str>) -> Vec<MetricMetadata> {
        let head = self.head.read().expect("not poisoned");
        head.metadata
            .values()
            .filter(|m| metric.is_none_or(|name| m.metric == name))
            .cloned()
            .collect()
    }

    /// Writes new series, sealed chunks and a snapshot of the open chunks;
    /// afterwards the WAL through `applied_seq` (read by the caller before
    /// calling) is no longer needed by this store.
    pub fn flush(&self, applied_seq: u64) -> Result<()> {
        let mut checkpoint = self.flushing.lock().expect("not poisoned");
        let (new_series, sealed, open, metadata) = {
            let head = self.head.read().expect("not poisoned");
            let mut new_series = Vec::new();
            let mut sealed = Vec::new();
            let mut open = Vec::new();
            for (id, series) in head.series.iter().enumerate() {
                let Some(series) = series else { continue };
                if !series.logged {
                    new_series.push((id as u32, series.labels.clone()));
                }
                for chunk in &series.sealed {
                    sealed.push((id as u32, chunk.min_t, chunk.max_t, chunk.bytes.clone()));
                }
                if !series.open.is_empty() {
                    open.push((id as u32, series.open.encode()));
                }
            }
            let metadata: Vec<MetricMetadata> = head.metadata.values().cloned().collect();
            (new_series, sealed, open, metadata)
        };

        if !new_series.is_empty() {
            let mut log = self.series_log.lock().expect("not poisoned");
            let mut buffer = Vec::new();
            for (id, labels) in &new_series {
                let payload = postcard::to_stdvec(&SeriesEntry {
                    id: *id,
                    labels: labels.to_vec(),
                })
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                frame::append(&mut buffer, &payload)?;
            }
            log.write_all(&buffer)?;
            log.sync_data()?;
        }

        let refs = self.write_chunks(&sealed)?;

        let snapshot = Snapshot {
            through_seq: applied_seq,
            open,
            metadata,
        };
        let mut bytes = vec![SNAPSHOT_VERSION];
        bytes.extend(
            postcard::to_stdvec(&snapshot).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        let tmp = self.dir.join("head.snap.tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(SNAPSHOT))?;
        File::open(&self.dir)?.sync_all()?;

        let mut head = self.head.write().expect("not poisoned");
        for (id, _) in &new_series {
            if let Some(Some(series)) = head.series.get_mut(*id as usize) {
                series.logged = true;
            }
        }
        for ((id, min_t, _, _), chunk_ref) in sealed.iter().zip(refs) {
            if let Some(Some(series)) = head.series.get_mut(*id as usize) {
                // Flushes are serialised and sealing only appends, so the
                // chunk written is still at the front of the sealed list.
                if series.sealed.first().is_some_and(|c| c.min_t == *min_t) {
                    series.sealed.remove(0);
                    series.persisted.push(chunk_ref);
                }
            }
        }
        head.metadata_changed = false;
        *checkpoint = applied_seq;
        self.metrics
            .store_size_bytes
            .with_label_values(&["metrics"])
            .set(self.disk_bytes() as i64);
        Ok(())
    }

    fn write_chunks(&self, sealed: &[(u32, i64, i64, Vec<u8>)]) -> Result<Vec<ChunkRef>> {
        let mut files = self.files.lock().expect("not poisoned");
        let mut refs = Vec::with_capacity(sealed.len());
        let mut buffer = Vec::new();
        let mut touched = false;
        for (series, min_t, max_t, bytes) in sealed {
            let number = self.writable_file(&mut files)?;
            let (size, newest) = files.files.get(&number).copied().unwrap_or((0, i64::MIN));
            let payload = postcard::to_stdvec(&ChunkEntry {
                series: *series,
                min_t: *min_t,
                max_t: *max_t,
                bytes,
            })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            buffer.clear();
            frame::append(&mut buffer, &payload)?;
            let (_, file) = files.writer.as_mut().expect("opened above");
            file.write_all(&buffer)?;
            touched = true;
            refs.push(ChunkRef {
                file: number,
                offset: size + frame::HEADER_LEN as u64,
                len: payload.len() as u32,
                min_t: *min_t,
                max_t: *max_t,
            });
            files
                .files
                .insert(number, (size + buffer.len() as u64, newest.max(*max_t)));
        }
        if touched && let Some((_, file)) = files.writer.as_ref() {
            file.sync_data()?;
        }
        Ok(refs)
    }

    /// The number of the file to append to, starting a new one when the
    /// current one is full.
    fn writable_file(&self, files: &mut ChunkFiles) -> Result<u32> {
        let current = files
            .files
            .last_key_value()
            .map(|(&n, &(size, _))| (n, size));
        let number = match current {
            Some((number, size)) if size < CHUNK_FILE_BYTES => number,
            Some((number, _)) => number + 1,
            None => 0,
        };
        if files.writer.as_ref().map(|(n, _)| *n) != Some(number) {
            if let Some((_, old)) = files.writer.take() {
                old.sync_data()?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(files.path(number))?;
            File::open(&files.dir)?.sync_all()?;
            files.files.entry(number).or_insert((0, i64::MIN));
            files.writer = Some((number, file));
        }
        Ok(number)
    }

    /// Every series matching `matchers` with its samples in `[start, end]`
    /// (milliseconds, inclusive); series without samples there are left out.
    pub fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SelectedSeries>> {
        struct Pending {
            labels: Vec<Label>,
            refs: Vec<ChunkRef>,
            chunks: Vec<Vec<u8>>,
        }
        let pending: Vec<Pending> = {
            let head = self.head.read().expect("not poisoned");
            head.select(matchers)
                .into_iter()
                .filter_map(|id| {
                    let series = head.series[id as usize].as_ref()?;
                    let overlaps = |min_t: i64, max_t: i64| min_t <= end && max_t >= start;
                    let refs: Vec<ChunkRef> = series
                        .persisted
                        .iter()
                        .filter(|c| overlaps(c.min_t, c.max_t))
                        .copied()
                        .collect();
                    let mut chunks: Vec<Vec<u8>> = series
                        .sealed
                        .iter()
                        .filter(|c| overlaps(c.min_t, c.max_t))
                        .map(|c| c.bytes.clone())
                        .collect();
                    if !series.open.is_empty() {
                        let (min_t, max_t) = series.open.time_range();
                        if overlaps(min_t, max_t) {
                            chunks.push(series.open.encode());
                        }
                    }
                    (!refs.is_empty() || !chunks.is_empty()).then(|| Pending {
                        labels: series.labels.to_vec(),
                        refs,
                        chunks,
                    })
                })
                .collect()
        };
        let mut out = Vec::with_capacity(pending.len());
        for series in pending {
            let mut samples = Vec::new();
            for chunk_ref in &series.refs {
                let bytes = self.read_chunk(chunk_ref)?;
                extend_in_range(&mut samples, &bytes, start, end)?;
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
        Ok(out)
    }

    fn read_chunk(&self, chunk_ref: &ChunkRef) -> Result<Vec<u8>> {
        let file = self
            .files
            .lock()
            .expect("not poisoned")
            .reader(chunk_ref.file)?;
        let mut payload = vec![0u8; chunk_ref.len as usize];
        file.read_exact_at(&mut payload, chunk_ref.offset)?;
        let entry: ChunkEntry = postcard::from_bytes(&payload)
            .map_err(|e| StoreError::Corrupt(format!("chunk file {}: {e}", chunk_ref.file)))?;
        Ok(entry.bytes.to_vec())
    }

    /// Label sets of the series matching any of `selectors` (every series
    /// when empty) that have samples in `[start, end]`.
    pub fn series(&self, selectors: &[Vec<Matcher>], start: i64, end: i64) -> Vec<Vec<Label>> {
        let head = self.head.read().expect("not poisoned");
        let mut ids: Vec<u32> = if selectors.is_empty() {
            (0..head.series.len() as u32).collect()
        } else {
            selectors.iter().flat_map(|m| head.select(m)).collect()
        };
        ids.sort_unstable();
        ids.dedup();
        let mut out: Vec<Vec<Label>> = ids
            .into_iter()
            .filter_map(|id| head.series[id as usize].as_ref())
            .filter(|s| {
                s.min_time().is_some_and(|t| t <= end) && s.max_time().is_some_and(|t| t >= start)
            })
            .map(|s| s.labels.to_vec())
            .collect();
        out.sort();
        out
    }

    /// Deletes chunk files whose newest sample is older than `now - age`, and
    /// then the oldest files while the total exceeds `max_bytes` (0: no
    /// limit). The file being written is never deleted.
    pub fn enforce_retention(&self, age: Duration, max_bytes: u64, now_ms: i64) -> Result<usize> {
        let cutoff = now_ms.saturating_sub(age.as_millis() as i64);
        let doomed: Vec<u32> = {
            let files = self.files.lock().expect("not poisoned");
            let writing = files.writer.as_ref().map(|(n, _)| *n);
            let mut total: u64 = files.files.values().map(|(size, _)| size).sum();
            files
                .files
                .iter()
                .filter(|(n, _)| Some(**n) != writing)
                .filter(|(_, (size, newest))| {
                    let drop = *newest < cutoff || (max_bytes > 0 && total > max_bytes);
                    if drop {
                        total -= size;
                    }
                    drop
                })
                .map(|(n, _)| *n)
                .collect()
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        {
            let mut head = self.head.write().expect("not poisoned");
            for series in head.series.iter_mut().flatten() {
                series.persisted.retain(|c| !doomed.contains(&c.file));
            }
        }
        let mut files = self.files.lock().expect("not poisoned");
        for number in &doomed {
            files.readers.remove(number);
            files.files.remove(number);
            fs::remove_file(files.path(*number))?;
            tracing::info!(file = number, "MetricChunkFileDropped");
        }
        Ok(doomed.len())
    }

    /// Bytes of the store's files.
    pub fn disk_bytes(&self) -> u64 {
        let chunks: u64 = self
            .files
            .lock()
            .expect("not poisoned")
            .files
            .values()
            .map(|(size, _)| size)
            .sum();
        let file_len = |name: &str| fs::metadata(self.dir.join(name)).map_or(0, |m| m.len());
        chunks + file_len(SERIES_LOG) + file_len(SNAPSHOT)
    }
}

fn read_chunk_at(file: &File, chunk_ref: &ChunkRef) -> Result<Vec<u8>> {
    let mut payload = vec![0u8; chunk_ref.len as usize];
    file.read_exact_at(&mut payload, chunk_ref.offset)?;
    let entry: ChunkEntry = postcard::from_bytes(&payload)
        .map_err(|e| StoreError::Corrupt(format!("chunk file {}: {e}", chunk_ref.file)))?;
    Ok(entry.bytes.to_vec())
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

fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot> {
    match bytes.split_first() {
        Some((&SNAPSHOT_VERSION, body)) => postcard::from_bytes(body)
            .map_err(|e| StoreError::Corrupt(format!("head snapshot: {e}"))),
        Some((version, _)) => Err(StoreError::Corrupt(format!(
            "head snapshot has unknown version {version}"
        ))),
        None => Err(StoreError::Corrupt("head snapshot is empty".into())),
    }
}

/// Calls `each` with every intact entry of a file and its payload's offset;
/// returns the length of the intact prefix: what follows is a torn write.
fn read_frames(path: &Path, each: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<u64> {
    let intact = frame::read_prefix(BufReader::new(File::open(path)?), each)?;
    if let Some(damage) = intact.damage {
        tracing::warn!(path = %path.display(), offset = intact.len, %damage, "MetricStoreTornTail: cut");
    }
    Ok(intact.len)
}

fn label_hash(labels: &[Label]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut hasher);
    hasher.finish()
}

fn label_value<'a>(labels: &'a [Label], name: &str) -> &'a str {
    labels
        .iter()
        .find(|l| l.name == name)
        .map_or("", |l| l.value.as_str())
}

fn metric_name(labels: &[Label]) -> &str {
    label_value(labels, METRIC_NAME_LABEL)
}

/// `name{a="b", ...}`, for error messages.
pub fn format_labels(labels: &[Label]) -> String {
    let name = metric_name(labels);
    let rest: Vec<String> = labels
        .iter()
        .filter(|l| l.name != METRIC_NAME_LABEL)
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SeriesLimits {
        SeriesLimits {
            max_series: 1000,
            max_series_per_metric: 100,
        }
    }

    fn series(name: &str, job: &str, samples: &[(i64, f64)]) -> SeriesSamples {
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

    fn matcher(name: &str, value: &str) -> Matcher {
        Matcher::new(MatchOp::Equal, name, value)
    }

    #[test]
    fn a_histogram_point_is_admitted_or_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::open(
            dir.path(),
            SeriesLimits {
                max_series: 1000,
                max_series_per_metric: 3,
            },
            Metrics::new(),
        )
        .unwrap();
        let point = |job: &str| -> Vec<SeriesSamples> {
            let mut out: Vec<SeriesSamples> = ["0.1", "1", "+Inf"]
                .iter()
                .map(|le| {
                    let mut s = series("latency_bucket", job, &[(1, 1.0)]);
                    s.labels.push(Label::new("le", *le));
                    s
                })
                .collect();
            out.push(series("latency_count", job, &[(1, 1.0)]));
            out
        };
        let first = ingest(&store, point("a"));
        assert_eq!(first.rejected, 0);
        // Three more buckets would make six series of latency_bucket.
        let second = ingest(&store, point("b"));
        assert_eq!(second.rejected, 1, "one data point");
        assert!(second.first_error.unwrap().contains("\"latency_bucket\""));
        let stored = store.series(&[], i64::MIN, i64::MAX);
        assert!(
            stored
                .iter()
                .all(|labels| label_value(labels, "job") == "a")
        );
    }

    #[test]
    fn retrying_the_newest_sample_after_reopen_is_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = MetricStore::open(dir.path(), limits(), Metrics::new()).unwrap();
            ingest(&store, vec![series("x", "a", &[(1000, 1.5), (2000, 2.5)])]);
            store.flush(1).unwrap();
        }
        let store = MetricStore::open(dir.path(), limits(), Metrics::new()).unwrap();
        let retry = ingest(&store, vec![series("x", "a", &[(2000, 2.5)])]);
        assert_eq!(retry.rejected, 0, "{:?}", retry.first_error);
        let conflict = ingest(&store, vec![series("x", "a", &[(2000, 9.0)])]);
        assert_eq!(conflict.rejected, 1);
    }

    #[test]
    fn undone_admissions_accept_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::open(dir.path(), limits(), Metrics::new()).unwrap();
        ingest(&store, vec![series("x", "a", &[(1000, 1.0)])]);
        let refused = store.admit(vec![series("x", "a", &[(2000, 2.0)])]);
        store.undo_admission(&refused);
        let retry = ingest(&store, vec![series("x", "a", &[(2000, 2.0)])]);
        assert_eq!(retry.rejected, 0);
        let got = store.select(&[matcher("job", "a")], 0, 10_000).unwrap();
        assert_eq!(got[0].samples.len(), 2);
    }

    fn ingest(store: &MetricStore, batch: Vec<SeriesSamples>) -> Admitted {
        let admitted = store.admit(batch);
        store.apply(admitted.series.clone());
        admitted
    }

    #[test]
    fn survives_flush_and_reopen_across_sealed_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let samples: Vec<(i64, f64)> = (0..300).map(|i| (i * 15_000, i as f64 * 1.5)).collect();
        {
            let store = MetricStore::open(dir.path(), limits(), Metrics::new()).unwrap();
            ingest(&store, vec![series("up", "a", &samples[..250])]);
            store.flush(7).unwrap();
            // Applied after the flush: only the WAL has these.
            ingest(&store, vec![series("up", "a", &samples[250..])]);
            let all = store.select(&[matcher("job", "a")], 0, i64::MAX).unwrap();
            assert_eq!(all[0].samples.len(), 300);
        }
        let store = MetricStore::open(dir.path(), limits(), Metrics::new()).unwrap();
        assert_eq!(store.checkpoint(), 7);
        let before_replay = store.select(&[matcher("job", "a")], 0, i64::MAX).unwrap();
        assert_eq!(before_replay[0].samples.len(), 250);
        // Replay repeats a sample the snapshot has: skipped.
        store.apply(vec![series("up", "a", &samples[249..])]);
        let got = store
            .select(&[matcher("__name__", "up")], 0, i64::MAX)
            .unwrap();
        let times: Vec<i64> = got[0].samples.iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(times, samples.iter().map(|s| s.0).collect::<Vec<_>>());
        let window = store
            .select(&[matcher("job", "a")], 15_000 * 100, 15_000 * 110)
            .unwrap();
        assert_eq!(window[0].samples.len(), 11);
    }

    #[test]
    fn out_of_order_and_conflicting_duplicates_are_rejected_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::open(dir.path(), limits(), Metrics::new()).unwrap();
        ingest(&store, vec![series("x", "a", &[(1000, 1.0), (2000, 2.0)])]);
        let admitted = ingest(
            &store,
            vec![series(
                "x",
                "a",
                &[(1500, 9.0), (2000, 2.0), (2000, 3.0), (3000, 3.0)],
            )],
        );
        assert_eq!(admitted.rejected, 2);
        assert_eq!(admitted.rejected_by_limits, 0);
        assert!(admitted.first_error.unwrap().contains("out of order"));
        let got = store.select(&[matcher("job", "a")], 0, 10_000).unwrap();
        let values: Vec<f64> = got[0].samples.iter().map(|s| s.value).collect();
        assert_eq!(values, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn cardinality_limits_name_the_metric() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::open(
            dir.path(),
            SeriesLimits {
                max_series: 1000,
                max_series_per_metric: 2,
            },
            Metrics::new(),
        )
        .unwrap();
        let batch = (0..3)
            .map(|i| series("requests_total", &format!("job{i}"), &[(1, 1.0)]))
            .collect();
        let admitted = ingest(&store, batch);
        assert_eq!(admitted.rejected, 1);
        assert_eq!(admitted.rejected_by_limits, 1);
        assert!(admitted.first_error.unwrap().contains("\"requests_total\""));
        assert_eq!(store.series(&[], i64::MIN, i64::MAX).len(), 2);
    }

    #[test]
    fn matchers_follow_prometheus_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::open(dir.path(), limits(), Metrics::new()).unwrap();
        let mut with_env = series("m", "b", &[(1, 2.0)]);
        with_env.labels.push(Label::new("env", "prod"));
        ingest(&store, vec![series("m", "a", &[(1, 1.0)]), with_env]);
        let jobs = |matchers: &[Matcher]| -> Vec<String> {
            store
                .select(matchers, 0, 10)
                .unwrap()
                .into_iter()
                .map(|s| label_value(&s.labels, "job").to_owned())
                .collect()
        };
        // A missing label equals "": != matches series without it.
        assert_eq!(
            jobs(&[
                matcher("__name__", "m"),
                Matcher::new(MatchOp::NotEqual, "env", "prod")
            ]),
            ["a"]
        );
        assert_eq!(jobs(&[matcher("__name__", "m"), matcher("env", "")]), ["a"]);
        let regex = Matcher::new_matcher(
            promql_parser::parser::token::T_EQL_REGEX,
            "job".into(),
            "a|b".into(),
        )
        .unwrap();
        assert_eq!(jobs(&[regex]), ["a", "b"]);
        assert!(jobs(&[matcher("job", "zzz")]).is_empty());
    }

    #[test]
    fn retention_drops_old_chunk_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::open(dir.path(), limits(), Metrics::new()).unwrap();
        let old: Vec<(i64, f64)> = (0..240).map(|i| (i * 1000, 1.0)).collect();
        ingest(&store, vec![series("x", "a", &old)]);
        store.flush(1).unwrap();
        // Force the next flush into a new file, as a full file would.
        store
            .files
            .lock()
            .unwrap()
            .files
            .values_mut()
            .for_each(|f| f.0 = CHUNK_FILE_BYTES);
        let new: Vec<(i64, f64)> = (0..240).map(|i| (1_000_000 + i * 1000, 2.0)).collect();
        ingest(&store, vec![series("x", "a", &new)]);
        store.flush(2).unwrap();
        let dropped = store
            .enforce_retention(Duration::from_secs(500), 0, 1_000_000 + 240_000)
            .unwrap();
        assert_eq!(dropped, 1);
        // The first file held the first sealed chunk; the second, written
        // later, holds the rest.
        let got = store.select(&[matcher("job", "a")], 0, i64::MAX).unwrap();
        assert_eq!(got[0].samples.first().unwrap().timestamp_ms, 120_000);
        assert_eq!(got[0].samples.len(), 360);
    }
}
