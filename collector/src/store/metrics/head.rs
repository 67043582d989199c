//! The in-memory head: per series its open chunk, the sealed chunks no flush
//! has written yet and where the written ones are; and admission, which
//! checks order and the series limits before samples go to the WAL.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use promql_parser::label::{MatchOp, Matcher};
use rustc_hash::FxBuildHasher;

use super::SeriesLimits;
use super::chunk::ChunkWriter;
use super::files::{ChunkRef, ChunkToWrite, SeriesEntries, Snapshot};
use super::index::{SeriesIndex, format_labels, metric_name};
use crate::codec::{self, SampleRecord};
use crate::model::{
    Label, METRIC_NAME_LABEL, MetricMetadata, MetricSample, SeriesSamples, WireKey,
};
use crate::store::{Result, StoreError};

/// A series' data that made it past [`MetricStore::admit`], ready for the WAL.
///
/// [`MetricStore::admit`]: super::MetricStore::admit
pub struct Admitted {
    /// Admitted samples by series id, for the WAL record and
    /// [`MetricStore::apply_admitted`].
    ///
    /// [`MetricStore::apply_admitted`]: super::MetricStore::apply_admitted
    samples: Vec<(u32, Vec<MetricSample>)>,
    /// The series of `samples` that neither `series.log` nor a WAL record
    /// named before, with their labels: the WAL record names them, and
    /// every other series by id alone.
    new_series: Vec<(u32, Vec<Label>)>,
    /// Samples refused, and the first reason, for partial-success answers.
    pub rejected: u64,
    /// Of `rejected`, those refused by the series limits (the rest were out
    /// of order or conflicting duplicates).
    pub rejected_by_limits: u64,
    pub first_error: Option<String>,
    /// Each admitted series' id and newest admitted sample before this
    /// admission, for [`MetricStore::undo_admission`] (which may come after
    /// the samples were taken).
    ///
    /// [`MetricStore::undo_admission`]: super::MetricStore::undo_admission
    previous: Vec<(u32, Option<(i64, u64)>)>,
}

impl Admitted {
    fn with_capacity(series: usize) -> Admitted {
        Admitted {
            samples: Vec::with_capacity(series),
            new_series: Vec::new(),
            rejected: 0,
            rejected_by_limits: 0,
            first_error: None,
            previous: Vec::new(),
        }
    }

    /// Counts `count` samples refused, keeping the first reason.
    fn reject(&mut self, count: usize, reason: String) {
        self.rejected += count as u64;
        self.first_error.get_or_insert(reason);
    }

    /// Whether nothing was admitted.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// How many samples were admitted.
    pub fn sample_count(&self) -> usize {
        self.samples.iter().map(|(_, samples)| samples.len()).sum()
    }

    /// The WAL record of what was admitted (`codec::decode_samples` reads
    /// it back).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode_samples(&self.new_series, &self.samples)
    }

    /// Takes the samples, each with its series' id, for
    /// [`MetricStore::apply_admitted`].
    ///
    /// [`MetricStore::apply_admitted`]: super::MetricStore::apply_admitted
    pub fn take_samples(&mut self) -> Vec<(u32, Vec<MetricSample>)> {
        std::mem::take(&mut self.samples)
    }
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
        .filter(|l| !matches!(&*l.name, METRIC_NAME_LABEL | "le" | "quantile"))
        .cloned()
        .collect();
    (family.to_owned(), rest)
}

struct SealedChunk {
    /// Shared with the flush that writes it and the queries that read it
    /// meanwhile, rather than copied under the head's lock.
    bytes: Bytes,
    min_t: i64,
    max_t: i64,
}

pub(super) struct MemSeries {
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
    /// Whether `series.log` or a WAL record holds its labels, so that a WAL
    /// record may name it by id alone.
    named: bool,
}

impl MemSeries {
    fn new(logged: bool) -> MemSeries {
        MemSeries {
            persisted: Vec::new(),
            sealed: Vec::new(),
            open: ChunkWriter::default(),
            last: None,
            admitted: None,
            logged,
            named: logged,
        }
    }

    fn min_time(&self) -> Option<i64> {
        let persisted = self.persisted.first().map(|c| c.min_t);
        let sealed = self.sealed.first().map(|c| c.min_t);
        let open = (!self.open.is_empty()).then(|| self.open.time_range().0);
        persisted.or(sealed).or(open)
    }

    fn max_time(&self) -> Option<i64> {
        self.last.map(|(t, _)| t)
    }

    /// Whether the series has samples between `start` and `end` (inclusive),
    /// judged by its oldest and newest.
    pub(super) fn overlaps(&self, start: i64, end: i64) -> bool {
        self.min_time().is_some_and(|t| t <= end) && self.max_time().is_some_and(|t| t >= start)
    }

    /// The chunks that overlap `[start, end]`: where the written ones are,
    /// and the bytes of those still in memory.
    pub(super) fn chunks_overlapping(&self, start: i64, end: i64) -> (Vec<ChunkRef>, Vec<Bytes>) {
        let overlaps = |min_t: i64, max_t: i64| min_t <= end && max_t >= start;
        let refs = self
            .persisted
            .iter()
            .filter(|c| overlaps(c.min_t, c.max_t))
            .copied()
            .collect();
        let mut chunks: Vec<Bytes> = self
            .sealed
            .iter()
            .filter(|c| overlaps(c.min_t, c.max_t))
            .map(|c| c.bytes.clone())
            .collect();
        if !self.open.is_empty() {
            let (min_t, max_t) = self.open.time_range();
            if overlaps(min_t, max_t) {
                chunks.push(self.open.encode().into());
            }
        }
        (refs, chunks)
    }
}

/// What a flush writes, taken from the head in one go.
pub(super) struct Unflushed {
    /// Series `series.log` lacks.
    pub(super) new_series: SeriesEntries,
    pub(super) sealed: Vec<ChunkToWrite>,
    pub(super) snapshot: Snapshot,
}

#[derive(Default)]
pub(super) struct Head {
    pub(super) index: SeriesIndex,
    /// By series id, as in the index.
    series: Vec<Option<MemSeries>>,
    metadata: BTreeMap<String, MetricMetadata>,
    /// The series a sender's encoding of their labels named before; see
    /// [`WireKey`]. In memory only: learnt again after a restart.
    wire_keys: HashMap<WireKey, u32, FxBuildHasher>,
    /// Bytes of the sealed chunks no flush has written yet.
    sealed_bytes: usize,
}

impl Head {
    /// Adds a series under `id`, which no series has yet; `logged` when it
    /// comes from `series.log`.
    pub(super) fn insert(&mut self, id: u32, labels: &[Label], logged: bool) {
        self.index.insert(id, labels);
        let index = id as usize;
        if self.series.len() <= index {
            self.series.resize_with(index + 1, || None);
        }
        self.series[index] = Some(MemSeries::new(logged));
    }

    /// The id of the series with `labels`, which is added if new.
    fn id_or_insert(&mut self, labels: &[Label]) -> u32 {
        match self.index.find(labels) {
            Some(id) => id,
            None => {
                let id = self.index.next_id();
                self.insert(id, labels, false);
                id
            }
        }
    }

    /// Sorted ids of the series matching any of `selectors` (every series
    /// when empty) that have samples in `[start, end]`.
    pub(super) fn select_in_range(
        &self,
        selectors: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Vec<u32> {
        let mut ids: Vec<u32> = if selectors.is_empty() {
            self.index.select(&[])
        } else {
            selectors
                .iter()
                .flat_map(|m| self.index.select(m))
                .collect()
        };
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|&id| self.series(id).is_some_and(|s| s.overlaps(start, end)));
        ids
    }

    /// Whether any of the series `ids` has samples in `[start, end]`.
    pub(super) fn any_in_range(&self, ids: &[u32], start: i64, end: i64) -> bool {
        ids.iter()
            .any(|&id| self.series(id).is_some_and(|s| s.overlaps(start, end)))
    }

    /// The newest sample applied to the series with exactly `labels`.
    pub(super) fn newest(&self, labels: &[Label]) -> Option<MetricSample> {
        let (timestamp_ms, bits) = self.series(self.index.find(labels)?)?.last?;
        Some(MetricSample {
            timestamp_ms,
            value: f64::from_bits(bits),
        })
    }

    /// The newest samples of the series whose labels are exactly `labels`
    /// and one more, `extra`: that label's value and the sample.
    pub(super) fn newest_by(&self, labels: &[Label], extra: &str) -> Vec<(String, MetricSample)> {
        let mut matchers: Vec<Matcher> = labels
            .iter()
            .map(|l| Matcher::new(MatchOp::Equal, &l.name, &l.value))
            .collect();
        matchers.push(Matcher::new(MatchOp::NotEqual, extra, ""));
        self.index
            .select(&matchers)
            .into_iter()
            .filter_map(|id| {
                let series_labels = self.index.labels(id)?;
                if series_labels.len() != labels.len() + 1 {
                    return None;
                }
                let (timestamp_ms, bits) = self.series(id)?.last?;
                let sample = MetricSample {
                    timestamp_ms,
                    value: f64::from_bits(bits),
                };
                Some((series_labels.value(extra).to_owned(), sample))
            })
            .collect()
    }

    pub(super) fn series(&self, id: u32) -> Option<&MemSeries> {
        self.series.get(id as usize)?.as_ref()
    }

    /// Records where a written chunk of series `id` is, on open.
    pub(super) fn add_persisted(&mut self, id: u32, chunk_ref: ChunkRef) {
        match self.series.get_mut(id as usize) {
            Some(Some(series)) => series.persisted.push(chunk_ref),
            // Its series log entry was damaged: the chunk is unreadable.
            _ => self.index.reserve(id),
        }
    }

    /// Takes back the open chunks and metadata of a snapshot, on open, after
    /// the chunk files. A kill between a flush's chunk file append and its
    /// snapshot leaves the previous snapshot, whose open chunk may since have
    /// been sealed and written: only its samples newer than the series'
    /// newest written one are kept, or they would be there twice.
    pub(super) fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        let corrupt = |e| StoreError::Corrupt(format!("head snapshot: {e}"));
        for (id, encoded) in snapshot.open {
            if let Some(Some(series)) = self.series.get_mut(id as usize) {
                series.open = ChunkWriter::resume(&encoded).map_err(corrupt)?;
                let written = series.persisted.iter().map(|c| c.max_t).max();
                if let Some(written) = written
                    && !series.open.is_empty()
                    && series.open.time_range().0 <= written
                {
                    let mut newer = ChunkWriter::default();
                    for sample in super::chunk::decode(&encoded).map_err(corrupt)? {
                        if sample.timestamp_ms > written {
                            newer.push(sample.timestamp_ms, sample.value);
                        }
                    }
                    series.open = newer;
                }
            }
        }
        for metadata in snapshot.metadata {
            self.metadata.insert(metadata.metric.clone(), metadata);
        }
        Ok(())
    }

    /// Sets every series' newest sample once everything is loaded, on open;
    /// `newest_value` gives the value bits of a written chunk's newest sample.
    pub(super) fn resume_newest(&mut self, mut newest_value: impl FnMut(&ChunkRef) -> Option<u64>) {
        for series in self.series.iter_mut().flatten() {
            // The newest value matters for a sender retrying its last sample
            // after a restart: the same value is a duplicate, not a conflict.
            series.last = series.open.last().or_else(|| {
                let newest = series.persisted.last()?;
                Some((newest.max_t, newest_value(newest).unwrap_or(0)))
            });
            series.admitted = series.last;
        }
    }

    /// See [`MetricStore::admit`](super::MetricStore::admit). `keys` is
    /// empty or holds each series' [`WireKey`], remembered for
    /// [`admit_keyed`](Self::admit_keyed).
    pub(super) fn admit(
        &mut self,
        batch: Vec<SeriesSamples>,
        keys: &[WireKey],
        limits: &SeriesLimits,
    ) -> Admitted {
        let mut admitted = Admitted::with_capacity(batch.len());
        // One lookup per series: the limits and the loop below share it.
        let known: Vec<Option<u32>> = batch
            .iter()
            .map(|series| self.index.find(&series.labels))
            .collect();
        let refused = self.refused_by_limits(&batch, &known, limits);
        for (index, series) in batch.into_iter().enumerate() {
            if let Some(refusal) = refused.get(&index) {
                if let Some(points) = refusal.points {
                    admitted.reject(points, refusal.reason.clone());
                    admitted.rejected_by_limits += points as u64;
                }
                continue;
            }
            let id = match known[index] {
                Some(id) => id,
                // New, or new earlier in this batch.
                None => self.id_or_insert(&series.labels),
            };
            if let Some(&key) = keys.get(index) {
                self.remember(key, id);
            }
            self.admit_series(&mut admitted, id, series.samples, Some(series.labels));
        }
        admitted
    }

    /// [`admit`](Self::admit) for series named by the [`WireKey`]s an
    /// earlier batch remembered: no label is looked up. `None`, with
    /// nothing admitted, when a key is not known (the batch must be sent
    /// again by labels).
    pub(super) fn admit_keyed(
        &mut self,
        batch: Vec<(WireKey, Vec<MetricSample>)>,
    ) -> Option<Admitted> {
        let ids = batch
            .iter()
            .map(|(key, _)| self.wire_keys.get(key).copied())
            .collect::<Option<Vec<u32>>>()?;
        let mut admitted = Admitted::with_capacity(batch.len());
        for (id, (_, samples)) in ids.into_iter().zip(batch) {
            self.admit_series(&mut admitted, id, samples, None);
        }
        Some(admitted)
    }

    /// Records that `key` names series `id`. The keys are bounded: a sender
    /// can encode one label set in endless ways (label order, empty
    /// values), so past twice as many keys as series they are forgotten
    /// and learnt again.
    fn remember(&mut self, key: WireKey, id: u32) {
        if self.wire_keys.len() >= 2 * self.index.live_series() + 1024 {
            self.wire_keys = HashMap::default();
        }
        self.wire_keys.insert(key, id);
    }

    /// Admits the samples of series `id` newer than its newest admitted
    /// one; `labels` are its labels when the caller has them (else they are
    /// read from the index where needed: a message, a WAL record naming the
    /// series).
    fn admit_series(
        &mut self,
        admitted: &mut Admitted,
        id: u32,
        mut kept: Vec<MetricSample>,
        labels: Option<Vec<Label>>,
    ) {
        let Self { series, index, .. } = self;
        let state = series[id as usize]
            .as_mut()
            .expect("an admitted id has a series");
        let previous = state.admitted;
        let describe = || match &labels {
            Some(labels) => format_labels(labels),
            None => index
                .labels(id)
                .map_or_else(String::new, |l| format_labels(&l.to_vec())),
        };
        // Kept in place: most batches keep every sample.
        kept.retain(|sample| {
            let bits = sample.value.to_bits();
            match state.admitted {
                Some((t, _)) if sample.timestamp_ms < t => {
                    admitted.reject(
                        1,
                        format!(
                            "out of order sample for series {}: {} is older than {t}",
                            describe(),
                            sample.timestamp_ms
                        ),
                    );
                    false
                }
                Some((t, v)) if sample.timestamp_ms == t => {
                    if v != bits {
                        admitted.reject(
                            1,
                            format!(
                                "duplicate sample for timestamp {t} with a different value in series {}",
                                describe()
                            ),
                        );
                    }
                    false
                }
                _ => {
                    state.admitted = Some((sample.timestamp_ms, bits));
                    true
                }
            }
        });
        if !kept.is_empty() {
            if !state.named {
                state.named = true;
                let labels = labels
                    .or_else(|| index.labels(id).map(|l| l.to_vec()))
                    .unwrap_or_default();
                admitted.new_series.push((id, labels));
            }
            admitted.samples.push((id, kept));
            admitted.previous.push((id, previous));
        }
    }

    /// Decides which new series the limits refuse, by batch index. The series
    /// of one data point (a histogram's buckets, sum and count; a summary's
    /// quantiles) are admitted or refused together: a histogram without some
    /// of its buckets gives wrong quantiles. A refused point is counted once,
    /// as OTLP's partial success counts data points.
    fn refused_by_limits(
        &self,
        batch: &[SeriesSamples],
        known: &[Option<u32>],
        limits: &SeriesLimits,
    ) -> HashMap<usize, Refusal> {
        let mut groups: Vec<(PointKey, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<PointKey, usize> = HashMap::new();
        let mut seen: HashSet<&[Label]> = HashSet::new();
        for (index, series) in batch.iter().enumerate() {
            if known[index].is_some() || !seen.insert(&series.labels) {
                continue;
            }
            let key = point_key(&series.labels);
            let group = *group_of.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[group].1.push(index);
        }
        let live_series = self.index.live_series();
        let mut added_per_metric: HashMap<&str, usize> = HashMap::new();
        let mut added = 0usize;
        let mut refused = HashMap::new();
        for (_, members) in groups {
            let mut needed: HashMap<&str, usize> = HashMap::new();
            for &index in &members {
                *needed.entry(batch[index].metric_name()).or_default() += 1;
            }
            let over_metric = needed.iter().find_map(|(&name, &n)| {
                let existing = self.index.series_of_metric(name)
                    + added_per_metric.get(name).copied().unwrap_or(0);
                (existing + n > limits.max_series_per_metric).then(|| {
                    format!(
                        "series limit reached for metric {name:?}: {existing} series (--max-series-per-metric)"
                    )
                })
            });
            let total: usize = members.len();
            let reason = over_metric.or_else(|| {
                (live_series + added + total > limits.max_series).then(|| {
                    format!(
                        "series limit reached: {} series in total; new series of metric {:?} are refused (--max-series)",
                        live_series + added,
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

    /// See [`MetricStore::undo_admission`](super::MetricStore::undo_admission).
    pub(super) fn undo(&mut self, admitted: &Admitted) {
        for &(id, previous) in &admitted.previous {
            if let Some(Some(series)) = self.series.get_mut(id as usize) {
                series.admitted = previous;
            }
        }
        // No WAL record names them now.
        for (id, _) in &admitted.new_series {
            if let Some(Some(series)) = self.series.get_mut(*id as usize) {
                series.named = series.logged;
            }
        }
    }

    /// The samples of a replayed WAL record by series id, for
    /// [`apply_admitted`](Self::apply_admitted); the series it names that
    /// the head lacks are added, under the ids they had when written.
    pub(super) fn resolve(&mut self, record: SampleRecord) -> Vec<(u32, Vec<MetricSample>)> {
        let (new_series, mut samples) = match record {
            SampleRecord::ById {
                new_series,
                samples,
            } => (new_series, samples),
            SampleRecord::ByLabels(batch) => {
                return batch
                    .into_iter()
                    .map(|series| (self.id_or_insert(&series.labels), series.samples))
                    .collect();
            }
        };
        let mut conflicting = Vec::new();
        for (id, labels) in new_series {
            match self.index.labels(id) {
                None => {
                    self.insert(id, &labels, false);
                    if let Some(Some(series)) = self.series.get_mut(id as usize) {
                        series.named = true;
                    }
                }
                Some(known) if known.equals(&labels) => {}
                Some(_) => {
                    tracing::error!(
                        id,
                        labels = %format_labels(&labels),
                        "WalSeriesConflict: a WAL record gives a series the id of another; its samples are skipped"
                    );
                    conflicting.push(id);
                }
            }
        }
        let mut unknown = 0;
        samples.retain(|(id, _)| {
            let known = self.series(*id).is_some();
            unknown += usize::from(!known);
            known && !conflicting.contains(id)
        });
        if unknown > 0 {
            tracing::error!(
                series = unknown,
                "WalSeriesUnknown: samples of series that no WAL record or series.log names were skipped"
            );
        }
        samples
    }

    /// See [`MetricStore::apply_admitted`](super::MetricStore::apply_admitted).
    pub(super) fn apply_admitted(&mut self, batch: Vec<(u32, Vec<MetricSample>)>) {
        for (id, samples) in batch {
            self.apply_to(id, samples);
        }
    }

    /// Appends `series`' samples newer than its newest to series `id`.
    fn apply_to(&mut self, id: u32, samples: Vec<MetricSample>) {
        let Some(Some(state)) = self.series.get_mut(id as usize) else {
            return;
        };
        for sample in samples {
            if state.last.is_some_and(|(t, _)| sample.timestamp_ms <= t) {
                continue;
            }
            if state.open.is_full() {
                let (min_t, max_t) = state.open.time_range();
                let full = std::mem::take(&mut state.open);
                let bytes = Bytes::from(full.encode());
                self.sealed_bytes += bytes.len();
                state.sealed.reserve_exact(1);
                state.sealed.push(SealedChunk {
                    bytes,
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

    pub(super) fn set_metadata(&mut self, metadata: Vec<MetricMetadata>) {
        for entry in metadata {
            self.metadata.insert(entry.metric.clone(), entry);
        }
    }

    /// Type, help and unit per metric family, optionally of one metric.
    pub(super) fn metadata(&self, metric: Option<&str>) -> Vec<MetricMetadata> {
        self.metadata
            .values()
            .filter(|m| metric.is_none_or(|name| m.metric == name))
            .cloned()
            .collect()
    }

    /// What a flush through WAL sequence number `through_seq` writes.
    pub(super) fn unflushed(&self, through_seq: u64) -> Result<Unflushed> {
        let mut new_series = SeriesEntries::default();
        let mut sealed = Vec::new();
        let mut open = Vec::new();
        for (id, series) in self.series.iter().enumerate() {
            let Some(series) = series else { continue };
            let id = id as u32;
            if !series.logged
                && let Some(labels) = self.index.labels(id)
            {
                new_series.push(id, labels.iter())?;
            }
            for chunk in &series.sealed {
                sealed.push(ChunkToWrite {
                    series: id,
                    min_t: chunk.min_t,
                    max_t: chunk.max_t,
                    bytes: chunk.bytes.clone(),
                });
            }
            if !series.open.is_empty() {
                open.push((id, series.open.encode()));
            }
        }
        Ok(Unflushed {
            new_series,
            sealed,
            snapshot: Snapshot {
                through_seq,
                open,
                metadata: self.metadata.values().cloned().collect(),
            },
        })
    }

    /// Marks what a flush wrote: the series are logged, and the sealed
    /// chunks (at `refs` now) leave memory. A series holds a sealed chunk
    /// only until the next flush, and gains a written one every 120
    /// samples: their lists grow one at a time and an emptied one is freed.
    /// A list's first room is for four, so every series kept 192 bytes of
    /// emptied sealed list and up to 96 of unused room for written chunks.
    pub(super) fn flushed(
        &mut self,
        new_series: &SeriesEntries,
        sealed: &[ChunkToWrite],
        refs: Vec<ChunkRef>,
    ) {
        for id in new_series.ids() {
            if let Some(Some(series)) = self.series.get_mut(*id as usize) {
                series.logged = true;
            }
        }
        for (chunk, chunk_ref) in sealed.iter().zip(refs) {
            if let Some(Some(series)) = self.series.get_mut(chunk.series as usize) {
                // Flushes are serialised and sealing only appends, so the
                // chunk written is still at the front of the sealed list.
                if series
                    .sealed
                    .first()
                    .is_some_and(|c| c.min_t == chunk.min_t)
                {
                    let written = series.sealed.remove(0);
                    self.sealed_bytes -= written.bytes.len();
                    if series.sealed.is_empty() {
                        series.sealed = Vec::new();
                    }
                    series.persisted.reserve_exact(1);
                    series.persisted.push(chunk_ref);
                }
            }
        }
    }

    /// Bytes of the sealed chunks no flush has written yet: what a flush
    /// would take out of memory.
    pub(super) fn sealed_bytes(&self) -> usize {
        self.sealed_bytes
    }

    /// Forgets chunks in files retention is about to delete.
    pub(super) fn drop_chunk_files(&mut self, files: &[u32]) {
        for series in self.series.iter_mut().flatten() {
            series.persisted.retain(|c| !files.contains(&c.file));
            series.persisted.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::metrics::MetricStore;
    use crate::store::metrics::chunk::SAMPLES_PER_CHUNK;
    use crate::store::metrics::files::MAX_CHUNK_FILE_BYTES;
    use crate::store::metrics::index::label_value;
    use crate::store::metrics::tests::{ingest, matcher, open_store, series};
    use crate::store::sample_store::SampleStore;
    use crate::telemetry::SelfMetrics;

    #[test]
    fn a_flush_leaves_no_spare_room_in_a_series_chunk_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let per_chunk = i64::from(SAMPLES_PER_CHUNK);
        for written in 1..=3 {
            let first = (written - 1) * per_chunk;
            let samples: Vec<_> = (first..first + per_chunk).map(|t| (t, 1.0)).collect();
            ingest(&store, vec![series("up", "a", &samples)]);
            // The next sample seals the full chunk.
            ingest(&store, vec![series("up", "a", &[(first + per_chunk, 1.0)])]);
            store.flush(0).unwrap();
            let head = store.head.read().unwrap();
            let state = head.series[0].as_ref().unwrap();
            assert_eq!(state.persisted.len(), written as usize);
            assert_eq!(state.persisted.capacity(), written as usize);
            assert_eq!(state.sealed.capacity(), 0);
        }
        let got = store
            .select(&[matcher("job", "a")], 0, i64::MAX, usize::MAX)
            .unwrap()
            .series;
        assert_eq!(got[0].samples.len(), 3 * per_chunk as usize + 1);
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
            MAX_CHUNK_FILE_BYTES,
            SelfMetrics::new(),
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
        let (stored, _) = store.series(&[], i64::MIN, i64::MAX, usize::MAX).unwrap();
        assert!(
            stored
                .iter()
                .all(|labels| label_value(labels, "job") == "a")
        );
    }

    #[test]
    fn wal_records_name_a_series_once_and_replay_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        // Admits as the pipeline does, returning the WAL record read back.
        let admit = |batch| {
            let mut admitted = store.admit(batch, &[]);
            let record = codec::decode_samples(&admitted.encode()).unwrap();
            store.apply_admitted(0, admitted.take_samples());
            record
        };
        let named = |record: &SampleRecord| match record {
            SampleRecord::ById { new_series, .. } => new_series
                .iter()
                .map(|(_, labels)| label_value(labels, "job").to_owned())
                .collect::<Vec<_>>(),
            SampleRecord::ByLabels(_) => panic!("records name series by id"),
        };
        let first = admit(vec![series("x", "a", &[(1000, 1.0)])]);
        // b's record never reaches the WAL: the next record must name it.
        let refused = store.admit(vec![series("x", "b", &[(1000, 1.0)])], &[]);
        store.undo_admission(&refused);
        let second = admit(vec![
            series("x", "a", &[(2000, 2.0)]),
            series("x", "b", &[(1000, 5.0)]),
        ]);
        assert_eq!(named(&first), ["a"]);
        assert_eq!(named(&second), ["b"]);

        // Replayed into a store without series.log, as after a kill
        // before the first flush; a record naming an unknown id loses
        // only its own samples.
        let replay_dir = tempfile::tempdir().unwrap();
        let replayed = open_store(replay_dir.path());
        let unknown = SampleRecord::ById {
            new_series: Vec::new(),
            samples: vec![(
                99,
                vec![MetricSample {
                    timestamp_ms: 3000,
                    value: 1.0,
                }],
            )],
        };
        for (seq, record) in [first, unknown, second].into_iter().enumerate() {
            replayed.apply(seq as u64 + 1, record);
        }
        let got: Vec<(String, Vec<f64>)> = replayed
            .select(&[matcher("__name__", "x")], 0, 10_000, usize::MAX)
            .unwrap()
            .series
            .iter()
            .map(|s| {
                let values = s.samples.iter().map(|p| p.value).collect();
                (label_value(&s.labels, "job").to_owned(), values)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), vec![1.0, 2.0]),
                ("b".to_owned(), vec![5.0])
            ]
        );
    }

    #[test]
    fn keyed_batches_admit_as_batches_by_labels_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let (a, b) = (WireKey([1, 1]), WireKey([2, 2]));
        let sample = |timestamp_ms, value| MetricSample {
            timestamp_ms,
            value,
        };
        // Unknown: nothing is admitted, not even the known series' samples.
        assert!(
            store
                .admit_keyed(vec![(a, vec![sample(1000, 1.0)])])
                .is_none()
        );
        let mut first = store.admit(vec![series("x", "a", &[(1000, 1.0)])], &[a]);
        store.apply_admitted(0, first.take_samples());
        assert!(
            store
                .admit_keyed(vec![
                    (a, vec![sample(2000, 2.0)]),
                    (b, vec![sample(2000, 2.0)])
                ])
                .is_none()
        );
        let mut keyed = store
            .admit_keyed(vec![(a, vec![sample(3000, 3.0), sample(2500, 9.0)])])
            .unwrap();
        assert_eq!(keyed.rejected, 1);
        let reason = keyed.first_error.take().unwrap();
        assert!(reason.contains(r#"x{job="a"}"#), "{reason}");
        // A series the WAL has not named yet (its admission was undone)
        // is named by its first keyed record.
        let refused = store.admit(vec![series("x", "b", &[(1000, 1.0)])], &[b]);
        store.undo_admission(&refused);
        let mut by_b = store
            .admit_keyed(vec![(b, vec![sample(1000, 1.0)])])
            .unwrap();
        match codec::decode_samples(&by_b.encode()).unwrap() {
            SampleRecord::ById { new_series, .. } => {
                assert_eq!(label_value(&new_series[0].1, "job"), "b");
            }
            SampleRecord::ByLabels(_) => panic!("records name series by id"),
        }
        store.apply_admitted(0, keyed.take_samples());
        store.apply_admitted(0, by_b.take_samples());
        let got = store
            .select(&[matcher("__name__", "x")], 0, 10_000, usize::MAX)
            .unwrap()
            .series;
        let values: Vec<Vec<f64>> = got
            .iter()
            .map(|s| s.samples.iter().map(|p| p.value).collect())
            .collect();
        assert_eq!(values, [vec![1.0, 3.0], vec![1.0]]);
    }

    #[test]
    fn wire_keys_are_forgotten_past_twice_the_series() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let batch = vec![series("x", "a", &[(1000, 1.0)])];
        ingest(&store, batch);
        let mut head = store.head.write().unwrap();
        for n in 0..2000 {
            head.remember(WireKey([n, 0]), 0);
        }
        assert!(head.wire_keys.len() <= 2 + 1024);
        assert!(head.wire_keys.contains_key(&WireKey([1999, 0])));
    }

    #[test]
    fn undone_admissions_accept_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        ingest(&store, vec![series("x", "a", &[(1000, 1.0)])]);
        let refused = store.admit(vec![series("x", "a", &[(2000, 2.0)])], &[]);
        store.undo_admission(&refused);
        let retry = ingest(&store, vec![series("x", "a", &[(2000, 2.0)])]);
        assert_eq!(retry.rejected, 0);
        let got = store
            .select(&[matcher("job", "a")], 0, 10_000, usize::MAX)
            .unwrap()
            .series;
        assert_eq!(got[0].samples.len(), 2);
    }

    #[test]
    fn out_of_order_and_conflicting_duplicates_are_rejected_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
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
        let got = store
            .select(&[matcher("job", "a")], 0, 10_000, usize::MAX)
            .unwrap()
            .series;
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
            MAX_CHUNK_FILE_BYTES,
            SelfMetrics::new(),
        )
        .unwrap();
        let batch = (0..3)
            .map(|i| series("requests_total", &format!("job{i}"), &[(1, 1.0)]))
            .collect();
        let admitted = ingest(&store, batch);
        assert_eq!(admitted.rejected, 1);
        assert_eq!(admitted.rejected_by_limits, 1);
        assert!(admitted.first_error.unwrap().contains("\"requests_total\""));
        assert_eq!(
            store
                .series(&[], i64::MIN, i64::MAX, usize::MAX)
                .unwrap()
                .0
                .len(),
            2
        );
    }
}
