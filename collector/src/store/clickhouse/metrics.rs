//! Samples in ClickHouse: the [`SampleStore`] a node uses with
//! `--storage clickhouse`.
//!
//! Each node keeps its embedded metrics store as its head: it admits
//! samples (time order within a series, the series limits), answers where
//! an OTLP delta series resumes, and holds the last
//! [`LOCAL_RETENTION`] of what this node took. Every metrics flush (every
//! ten seconds by default) also inserts the samples applied since the last
//! one into ClickHouse; only then does the node's checkpoint move past
//! them, so a crash or an outage replays them from the WAL.
//!
//! Series are keyed by a fingerprint of their label set computed here
//! ([`fingerprint`]), the same on every node. `series` holds each series'
//! labels once per day it has samples in, sorted by metric name; `samples`
//! is sorted by (metric, fingerprint, time), so a selector reads its
//! metric's part of the table. With a cluster both are sharded by
//! fingerprint, so a series and its samples live on one shard and each
//! shard resolves its own matchers.
//!
//! A query resolves its matchers to fingerprints in ClickHouse (`series`)
//! and reads only those series' samples in its time range, then adds what
//! this node took in the last [`LOCAL_RETENTION`], which holds what it has
//! not inserted yet. A sample that reaches
//! ClickHouse twice (a replay, or two nodes given the same sample) is
//! folded: `samples` is a `ReplacingMergeTree` on (fingerprint, time), and
//! reads keep one sample per timestamp.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use promql_parser::label::{MatchOp, Matcher};
use serde::{Deserialize, Serialize};
use strand_promql::Steps;

use super::{Checkpoint, ClickHouse, Connector, drop_expired, quote, schema, snapshot_refused};
use crate::backup::BackupDir;
use crate::codec::SampleRecord;
use crate::config::Retention;
use crate::model::{
    Label, METRIC_NAME_LABEL, MetricKind, MetricMetadata, MetricSample, SeriesSamples, WireKey,
};
use crate::store::metrics::{Admitted, MetricStore};
use crate::store::sample_store::{SampleStore, SelectedSeries, Selection};
use crate::store::{Result, StoreError};

/// How much of its own samples a node keeps in its embedded store: enough
/// for ordering checks and for queries between two flushes, never the
/// store of record.
const LOCAL_RETENTION: Duration = Duration::from_secs(2 * 3_600);

/// Most samples a node holds for ClickHouse before it refuses new ones
/// (about 16 bytes each): while ClickHouse is down, memory stays bounded
/// and senders get 503 and retry.
const MAX_PENDING_SAMPLES: usize = 2_000_000;

const MILLIS_PER_DAY: i64 = 86_400_000;

#[derive(clickhouse::Row, Serialize)]
struct SeriesRow {
    day: u16,
    metric: String,
    fingerprint: u64,
    label_names: Vec<String>,
    label_values: Vec<String>,
}

#[derive(clickhouse::Row, Serialize)]
struct SampleRow {
    day: u16,
    metric: String,
    fingerprint: u64,
    time_ms: i64,
    value: f64,
}

#[derive(clickhouse::Row, Serialize)]
struct MetadataRow {
    day: u16,
    metric: String,
    kind: String,
    help: String,
    unit: String,
    updated_ms: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct LabelsRow {
    fingerprint: u64,
    label_names: Vec<String>,
    label_values: Vec<String>,
}

impl LabelsRow {
    /// The series' labels, from the parallel name and value arrays.
    fn labels(self) -> Vec<Label> {
        self.label_names
            .into_iter()
            .zip(self.label_values)
            .map(|(name, value)| Label::new(name, value))
            .collect()
    }
}

#[derive(clickhouse::Row, Deserialize)]
struct PointRow {
    fingerprint: u64,
    time_ms: i64,
    value: f64,
}

#[derive(clickhouse::Row, Deserialize)]
struct LatestMetadata {
    metric: String,
    kind: String,
    help: String,
    unit: String,
}

/// See the module documentation.
pub struct ClickHouseMetrics {
    connector: Arc<Connector>,
    local: MetricStore,
    checkpoint: Checkpoint,
    pending: Mutex<Pending>,
    /// What this node has written of each series and metric family.
    written: Mutex<Written>,
    /// Held by a flush and by retention: one at a time.
    committing: Mutex<()>,
}

/// Samples applied and not yet in ClickHouse.
#[derive(Default)]
struct Pending {
    /// By the local store's series id, in the order applied.
    samples: Vec<(u32, Vec<MetricSample>)>,
    count: usize,
    metadata: BTreeMap<String, MetricMetadata>,
}

/// A series as ClickHouse keys it.
struct SeriesKey {
    fingerprint: u64,
    metric: String,
    labels: Vec<Label>,
}

#[derive(Default)]
struct Written {
    /// The local store's series ids as ClickHouse keys them.
    keys: HashMap<u32, SeriesKey>,
    /// (day, series id) whose `series` row this node has inserted.
    series_days: HashSet<(u16, u32)>,
    /// Metadata as last inserted, and on which day.
    metadata: HashMap<String, (MetricMetadata, u16)>,
}

impl ClickHouseMetrics {
    /// The store over what `connector` reaches, with `local` as the node's
    /// head and its checkpoint in `dir` (the node's data directory part for
    /// ClickHouse).
    pub fn open(connector: Arc<Connector>, dir: &Path, local: MetricStore) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(ClickHouseMetrics {
            connector,
            local,
            checkpoint: Checkpoint::open(dir.join("metrics.checkpoint"))?,
            pending: Mutex::new(Pending::default()),
            written: Mutex::new(Written::default()),
            committing: Mutex::new(()),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().expect("not poisoned")
    }

    fn connection(&self) -> Result<(ClickHouse, String)> {
        let servers = self.connector.get()?;
        let series_local = format!(
            "{}.{}",
            super::identifier(&servers.query.database),
            super::identifier(&servers.layout.local("series"))
        );
        Ok((servers.query, series_local))
    }

    /// Inserts `samples` (and their series' rows for the days they are in,
    /// where this node has not yet) and `metadata`.
    fn insert(
        &self,
        samples: &[(u32, Vec<MetricSample>)],
        metadata: &BTreeMap<String, MetricMetadata>,
    ) -> Result<()> {
        let (connection, _) = self.connection()?;
        let mut written = self.written.lock().expect("not poisoned");
        for (id, _) in samples {
            if !written.keys.contains_key(id) {
                let labels = self.local.labels_of(*id).ok_or_else(|| {
                    StoreError::Backend(format!("series {id} is not in the node's head"))
                })?;
                written.keys.insert(*id, SeriesKey::of(labels));
            }
        }
        let mut new_days = BTreeSet::new();
        for (id, series) in samples {
            for sample in series {
                let day = day_of_ms(sample.timestamp_ms);
                if !written.series_days.contains(&(day, *id)) {
                    new_days.insert((day, *id));
                }
            }
        }
        let keys = &written.keys;
        connection.insert_rows(
            "series",
            new_days.iter().map(|(day, id)| {
                let key = &keys[id];
                SeriesRow {
                    day: *day,
                    metric: key.metric.clone(),
                    fingerprint: key.fingerprint,
                    label_names: key.labels.iter().map(|l| l.name.to_string()).collect(),
                    label_values: key.labels.iter().map(|l| l.value.to_string()).collect(),
                }
            }),
        )?;
        connection.insert_rows(
            "samples",
            samples.iter().flat_map(|(id, series)| {
                let key = &keys[id];
                series.iter().map(move |sample| SampleRow {
                    day: day_of_ms(sample.timestamp_ms),
                    metric: key.metric.clone(),
                    fingerprint: key.fingerprint,
                    time_ms: sample.timestamp_ms,
                    value: sample.value,
                })
            }),
        )?;
        let now_ms = (crate::model::now_unix_nano() / 1_000_000) as i64;
        let today = day_of_ms(now_ms);
        let changed: Vec<&MetricMetadata> = metadata
            .values()
            .filter(|entry| {
                written
                    .metadata
                    .get(&entry.metric)
                    .is_none_or(|(last, day)| last != *entry || *day != today)
            })
            .collect();
        connection.insert_rows(
            "metric_metadata",
            changed.iter().map(|entry| MetadataRow {
                day: today,
                metric: entry.metric.clone(),
                kind: entry.kind.as_str().to_string(),
                help: entry.help.clone(),
                unit: entry.unit.clone(),
                updated_ms: now_ms,
            }),
        )?;
        for entry in changed {
            written
                .metadata
                .insert(entry.metric.clone(), (entry.clone(), today));
        }
        // Only the last two days' markers matter: older samples are rare
        // (backfill), and their series rows inserted again are folded.
        let newest = new_days.iter().map(|(day, _)| *day).max().unwrap_or(0);
        written.series_days.extend(new_days);
        if newest > 0 {
            written
                .series_days
                .retain(|(day, _)| day.saturating_add(1) >= newest.min(today));
        }
        Ok(())
    }

    /// The series matching `matchers` with samples in `[start, end]`, from
    /// ClickHouse; with `steps`, only the newest sample of each step (see
    /// [`SampleStore::select_steps`]).
    fn select_stored(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
        steps: Option<Steps>,
    ) -> Result<HashMap<u64, SelectedSeries>> {
        let (connection, series_local) = self.connection()?;
        let condition = format!(
            "{} AND {}",
            days_condition(start, end),
            matchers_condition(matchers)
        );
        let found: Vec<LabelsRow> = connection.wait(
            "resolving series",
            connection
                .query(&series_sql(&condition))
                .fetch_all::<LabelsRow>(),
        )?;
        if found.is_empty() {
            return Ok(HashMap::new());
        }
        let points = points_condition(&series_local, &condition, start, end);
        if found.len() > max_series {
            // The series rows are per day: count those with samples in
            // the range itself.
            let with_samples: u64 = connection.wait(
                "counting series",
                connection
                    .query(&count_series_sql(&points))
                    .fetch_one::<u64>(),
            )?;
            if with_samples > max_series as u64 {
                return Err(StoreError::TooManySeries { limit: max_series });
            }
        }
        let mut selected: HashMap<u64, SelectedSeries> = found
            .into_iter()
            .map(|row| {
                (
                    row.fingerprint,
                    SelectedSeries {
                        labels: row.labels(),
                        samples: Vec::new(),
                    },
                )
            })
            .collect();
        connection.wait("reading samples", async {
            let sql = match steps {
                Some(steps) => newest_per_step_sql(&points, steps),
                None => points_sql(&points),
            };
            let mut cursor = connection.query(&sql).fetch::<PointRow>()?;
            while let Some(point) = cursor.next().await? {
                if let Some(series) = selected.get_mut(&point.fingerprint) {
                    series.samples.push(MetricSample {
                        timestamp_ms: point.time_ms,
                        value: point.value,
                    });
                }
            }
            Ok(())
        })?;
        // Each part of the table is in time order, and the parts of a
        // series mostly follow each other: sorting here is cheaper than
        // asking ClickHouse to merge them. A repeated timestamp is a sample
        // stored twice.
        for series in selected.values_mut() {
            series.samples.sort_by_key(|sample| sample.timestamp_ms);
            series.samples.dedup_by_key(|sample| sample.timestamp_ms);
        }
        selected.retain(|_, series| !series.samples.is_empty());
        Ok(selected)
    }

    /// The selection from ClickHouse (at `steps`, if given) and this
    /// node's last hours, merged.
    fn select_merged(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
        steps: Option<Steps>,
    ) -> Result<Selection> {
        let local = match local_range(start, end) {
            Some((from, to)) => self.local.select(matchers, from, to, max_series)?,
            None => Selection {
                series: Vec::new(),
                damaged: false,
            },
        };
        let mut selected = self.select_stored(matchers, start, end, max_series, steps)?;
        for series in local.series {
            match selected.entry(fingerprint(&series.labels)) {
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(series);
                }
                std::collections::hash_map::Entry::Occupied(mut entry) => {
                    let stored = &mut entry.get_mut().samples;
                    *stored = merge_samples(std::mem::take(stored), series.samples);
                }
            }
        }
        if selected.len() > max_series {
            return Err(StoreError::TooManySeries { limit: max_series });
        }
        let mut series: Vec<SelectedSeries> = selected.into_values().collect();
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(Selection {
            series,
            damaged: local.damaged,
        })
    }

    /// The strings `sql` selects in ClickHouse and those `local` gives for
    /// the node's part of `range`, sorted, once each, none empty.
    fn with_local(
        &self,
        what: &str,
        sql: &str,
        range: (i64, i64),
        local: impl FnOnce(i64, i64) -> Result<Vec<String>>,
    ) -> Result<Vec<String>> {
        let mut all: BTreeSet<String> = match local_range(range.0, range.1) {
            Some((from, to)) => local(from, to)?.into_iter().collect(),
            None => BTreeSet::new(),
        };
        let (connection, _) = self.connection()?;
        let stored: Vec<String> = connection.wait(what, connection.query(sql).fetch_all())?;
        all.extend(stored.into_iter().filter(|value| !value.is_empty()));
        Ok(all.into_iter().collect())
    }

    /// The label sets of the series matching `selectors` on the days of
    /// `[start, end]`, from ClickHouse.
    fn stored_label_sets(
        &self,
        selectors: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Result<Vec<Vec<Label>>> {
        let (connection, _) = self.connection()?;
        let rows: Vec<LabelsRow> = connection.wait(
            "listing series",
            connection
                .query(&series_sql(&selectors_condition(selectors, start, end)))
                .fetch_all(),
        )?;
        Ok(rows.into_iter().map(LabelsRow::labels).collect())
    }
}

impl SeriesKey {
    fn of(labels: Vec<Label>) -> SeriesKey {
        SeriesKey {
            fingerprint: fingerprint(&labels),
            metric: labels
                .iter()
                .find(|l| l.name == METRIC_NAME_LABEL)
                .map_or(String::new(), |l| l.value.to_string()),
            labels,
        }
    }
}

impl SampleStore for ClickHouseMetrics {
    fn durable_through(&self) -> u64 {
        self.local.durable_through().min(self.checkpoint.get())
    }

    fn admit(&self, batch: Vec<SeriesSamples>, keys: &[WireKey]) -> Admitted {
        self.local.admit(batch, keys)
    }

    fn admit_keyed(&self, batch: Vec<(WireKey, Vec<MetricSample>)>) -> Option<Admitted> {
        self.local.admit_keyed(batch)
    }

    fn undo_admission(&self, admitted: &Admitted) {
        self.local.undo_admission(admitted)
    }

    fn apply(&self, seq: u64, record: SampleRecord) {
        let batch = self.local.resolve(record);
        if seq > self.checkpoint.get() {
            // Replayed: ClickHouse may lack these even where the head has them.
            let mut pending = self.pending();
            pending.count += batch
                .iter()
                .map(|(_, samples)| samples.len())
                .sum::<usize>();
            pending.samples.extend(batch.iter().cloned());
        }
        self.local.apply_admitted(seq, batch);
    }

    fn apply_admitted(&self, seq: u64, batch: Vec<(u32, Vec<MetricSample>)>) {
        let count: usize = batch.iter().map(|(_, samples)| samples.len()).sum();
        {
            let mut pending = self.pending();
            pending.count += count;
            pending.samples.extend(batch.iter().cloned());
        }
        self.local.apply_admitted(seq, batch);
    }

    fn is_full(&self) -> bool {
        self.pending().count >= MAX_PENDING_SAMPLES
    }

    fn set_metadata(&self, metadata: Vec<MetricMetadata>) {
        if metadata.is_empty() {
            return;
        }
        {
            let mut pending = self.pending();
            for entry in &metadata {
                pending.metadata.insert(entry.metric.clone(), entry.clone());
            }
        }
        self.local.set_metadata(metadata);
    }

    fn newest(&self, labels: &[Label]) -> Option<MetricSample> {
        self.local.newest(labels)
    }

    fn newest_by(&self, labels: &[Label], extra: &str) -> Vec<(String, MetricSample)> {
        self.local.newest_by(labels, extra)
    }

    fn flush(&self, applied_seq: u64) -> Result<()> {
        let _committing = self.committing.lock().expect("not poisoned");
        self.local.flush(applied_seq)?;
        let (samples, metadata) = {
            let mut pending = self.pending();
            pending.count = 0;
            (
                std::mem::take(&mut pending.samples),
                std::mem::take(&mut pending.metadata),
            )
        };
        if let Err(error) = self.insert(&samples, &metadata) {
            let mut pending = self.pending();
            pending.count += samples.iter().map(|(_, s)| s.len()).sum::<usize>();
            let newer = std::mem::replace(&mut pending.samples, samples);
            pending.samples.extend(newer);
            for (metric, entry) in metadata {
                pending.metadata.entry(metric).or_insert(entry);
            }
            return Err(error);
        }
        self.checkpoint.advance(applied_seq)
    }

    fn enforce_retention(&self, retention: Retention, now_ms: i64) -> Result<usize> {
        let _committing = self.committing.lock().expect("not poisoned");
        let local = Retention {
            max_age: retention.max_age.min(LOCAL_RETENTION),
            ..retention
        };
        self.local.enforce_retention(local, now_ms)?;
        let now_nanos = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1_000_000);
        drop_expired(
            &self.connector.get()?,
            schema::METRIC_TABLES,
            retention,
            now_nanos,
        )
    }

    fn snapshot(&self, _backup: &mut BackupDir, _relative: &Path) -> Result<()> {
        Err(snapshot_refused("metrics"))
    }

    fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
    ) -> Result<Selection> {
        self.select_merged(matchers, start, end, max_series, None)
    }

    fn select_steps(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
        steps: Steps,
    ) -> Result<Selection> {
        self.select_merged(matchers, start, end, max_series, Some(steps))
    }

    fn series(
        &self,
        selectors: &[Vec<Matcher>],
        start: i64,
        end: i64,
        limit: usize,
    ) -> Result<(Vec<Vec<Label>>, bool)> {
        let mut all: BTreeSet<Vec<Label>> = match local_range(start, end) {
            Some((from, to)) => self.local.series(selectors, from, to, usize::MAX)?.0,
            None => Vec::new(),
        }
        .into_iter()
        .collect();
        all.extend(self.stored_label_sets(selectors, start, end)?);
        let more = all.len() > limit;
        Ok((all.into_iter().take(limit).collect(), more))
    }

    fn label_names(&self, selectors: &[Vec<Matcher>], start: i64, end: i64) -> Result<Vec<String>> {
        self.with_local(
            "listing label names",
            &label_names_sql(&selectors_condition(selectors, start, end)),
            (start, end),
            |from, to| self.local.label_names(selectors, from, to),
        )
    }

    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Result<Vec<String>> {
        self.with_local(
            "listing label values",
            &label_values_sql(name, &selectors_condition(selectors, start, end)),
            (start, end),
            |from, to| self.local.label_values(name, selectors, from, to),
        )
    }

    fn metadata(&self, metric: Option<&str>) -> Result<Vec<MetricMetadata>> {
        let (connection, _) = self.connection()?;
        let stored: Vec<LatestMetadata> = connection.wait(
            "reading metadata",
            connection.query(&metadata_sql(metric)).fetch_all(),
        )?;
        let mut by_metric: BTreeMap<String, MetricMetadata> = stored
            .into_iter()
            .map(|row| {
                let entry = MetricMetadata {
                    kind: MetricKind::from_name(&row.kind).unwrap_or(MetricKind::Unknown),
                    metric: row.metric,
                    help: row.help,
                    unit: row.unit,
                };
                (entry.metric.clone(), entry)
            })
            .collect();
        // This node's own is the newest it knows of.
        for entry in self.local.metadata(metric)? {
            by_metric.insert(entry.metric.clone(), entry);
        }
        Ok(by_metric.into_values().collect())
    }
}

/// The part of `[start, end]` the node's own store answers for: the last
/// [`LOCAL_RETENTION`], what may not be in ClickHouse yet. Older samples
/// the node still holds are ClickHouse's to answer (or, past retention,
/// to have dropped).
fn local_range(start: i64, end: i64) -> Option<(i64, i64)> {
    let now_ms = (crate::model::now_unix_nano() / 1_000_000) as i64;
    let from = start.max(now_ms - LOCAL_RETENTION.as_millis() as i64);
    (from <= end).then_some((from, end))
}

/// A series' key in ClickHouse: a hash of its label set (canonical form,
/// sorted by name), the same on every node and release.
pub fn fingerprint(labels: &[Label]) -> u64 {
    let mut bytes = Vec::with_capacity(
        labels
            .iter()
            .map(|l| l.name.len() + l.value.len() + 2)
            .sum(),
    );
    for label in labels {
        bytes.extend_from_slice(label.name.as_bytes());
        bytes.push(0xff);
        bytes.extend_from_slice(label.value.as_bytes());
        bytes.push(0xff);
    }
    xxhash_rust::xxh64::xxh64(&bytes, 0)
}

/// Two time-ordered sample lists as one, one sample per timestamp (the
/// first list's where both have it).
fn merge_samples(first: Vec<MetricSample>, second: Vec<MetricSample>) -> Vec<MetricSample> {
    let mut merged = Vec::with_capacity(first.len().max(second.len()));
    let (mut a, mut b) = (first.into_iter().peekable(), second.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if y.timestamp_ms < x.timestamp_ms => b.next(),
            (Some(x), Some(y)) if y.timestamp_ms == x.timestamp_ms => {
                b.next();
                a.next()
            }
            (Some(_), _) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        merged.extend(next);
    }
    merged
}

/// The `Date` (days since 1970-01-01) of a time in milliseconds; times
/// outside what a `Date` holds are its first or last day.
fn day_of_ms(ms: i64) -> u16 {
    u16::try_from(ms.div_euclid(MILLIS_PER_DAY).clamp(0, i64::from(u16::MAX))).unwrap_or(u16::MAX)
}

/// The days of `[start, end]` (milliseconds).
fn days_condition(start: i64, end: i64) -> String {
    format!(
        "day BETWEEN {} AND {}",
        day_literal(day_of_ms(start)),
        day_literal(day_of_ms(end))
    )
}

/// A `Date` literal for `day` (days since 1970-01-01).
fn day_literal(day: u16) -> String {
    let date = chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .unwrap_or_default()
        .date_naive();
    format!("toDate('{}')", date.format("%Y-%m-%d"))
}

/// The value of label `name` in a `series` row ("" where it has none, as
/// PromQL matchers see it).
fn label_column(name: &str) -> String {
    if name == METRIC_NAME_LABEL {
        "metric".into()
    } else {
        format!("label_values[indexOf(label_names, {})]", quote(name))
    }
}

/// Every one of `matchers` as a condition on `series` rows. Regular
/// expressions are those PromQL parsed, anchored as it anchors them; both
/// ClickHouse and PromQL run RE2 syntax.
fn matchers_condition(matchers: &[Matcher]) -> String {
    if matchers.is_empty() {
        return "1".into();
    }
    let conditions: Vec<String> = matchers
        .iter()
        .map(|matcher| {
            let column = label_column(&matcher.name);
            match &matcher.op {
                MatchOp::Equal => format!("{column} = {}", quote(&matcher.value)),
                MatchOp::NotEqual => format!("{column} != {}", quote(&matcher.value)),
                MatchOp::Re(regex) => format!("match({column}, {})", quote(regex.as_str())),
                MatchOp::NotRe(regex) => {
                    format!("NOT match({column}, {})", quote(regex.as_str()))
                }
            }
        })
        .collect();
    format!("({})", conditions.join(" AND "))
}

/// The `series` rows of `[start, end]`'s days matching any of `selectors`
/// (every one when there are none).
fn selectors_condition(selectors: &[Vec<Matcher>], start: i64, end: i64) -> String {
    let matching = match selectors.is_empty() {
        true => "1".to_string(),
        false => selectors
            .iter()
            .map(|matchers| matchers_condition(matchers))
            .collect::<Vec<_>>()
            .join(" OR "),
    };
    format!("{} AND ({matching})", days_condition(start, end))
}

/// Each series' labels once, of the `series` rows `condition` selects.
fn series_sql(condition: &str) -> String {
    format!(
        "SELECT fingerprint, any(label_names), any(label_values) FROM series \
         WHERE {condition} GROUP BY fingerprint"
    )
}

/// The samples in `[start, end]` of the series `condition` selects in
/// `series_local` (each shard's own: a series' samples are on its shard).
fn points_condition(series_local: &str, condition: &str, start: i64, end: i64) -> String {
    format!(
        "{} AND (metric, fingerprint) IN \
         (SELECT metric, fingerprint FROM {series_local} WHERE {condition}) \
         AND time_ms BETWEEN {start} AND {end}",
        days_condition(start, end)
    )
}

fn points_sql(points: &str) -> String {
    format!("SELECT fingerprint, time_ms, value FROM samples WHERE {points}")
}

/// Of the samples `points` selects, the newest of each series at or before
/// `steps.first_ms` and the newest of each step `(t - step, t]` after it:
/// all an instant selector reads at those times.
fn newest_per_step_sql(points: &str, steps: Steps) -> String {
    let Steps { first_ms, step_ms } = steps;
    format!(
        "SELECT fingerprint, max(time_ms), argMax(value, time_ms) FROM samples \
         WHERE {points} GROUP BY fingerprint, \
         greatest(intDiv(time_ms - {first_ms} + {step_ms} - 1, {step_ms}), 0)"
    )
}

fn count_series_sql(points: &str) -> String {
    format!("SELECT uniqExact(fingerprint) FROM samples WHERE {points}")
}

fn label_names_sql(condition: &str) -> String {
    format!("SELECT DISTINCT arrayJoin(label_names) FROM series WHERE {condition}")
}

fn label_values_sql(name: &str, condition: &str) -> String {
    format!(
        "SELECT DISTINCT {} FROM series WHERE {condition}",
        label_column(name)
    )
}

/// Each metric family's newest metadata, optionally of one metric.
fn metadata_sql(metric: Option<&str>) -> String {
    let only = metric.map_or(String::new(), |metric| {
        format!("WHERE metric = {}", quote(metric))
    });
    format!(
        "SELECT metric, argMax(kind, updated_ms), argMax(help, updated_ms), \
         argMax(unit, updated_ms) FROM metric_metadata {only} GROUP BY metric ORDER BY metric"
    )
}

/// Every statement shape the store sends, with sample values, and the
/// columns of every insert: what the test against a current ClickHouse
/// runs after the schema.
#[cfg(test)]
pub fn statement_shapes() -> Vec<String> {
    use clickhouse::Row;
    let columns = |table: &str, names: &[&str]| format!("SELECT {} FROM {table}", names.join(", "));
    let regex = Matcher::new_matcher(
        promql_parser::parser::token::T_EQL_REGEX,
        "job".into(),
        r"api|pay\d+".into(),
    )
    .unwrap();
    let matchers = [
        Matcher::new(MatchOp::Equal, METRIC_NAME_LABEL, "http_requests_total"),
        Matcher::new(MatchOp::NotEqual, "env", "dev"),
        regex,
    ];
    let condition = format!(
        "{} AND {}",
        days_condition(0, 1_764_979_200_000),
        matchers_condition(&matchers)
    );
    let points = points_condition(
        "`strand`.`series`",
        &condition,
        1_764_892_800_000,
        1_764_979_200_000,
    );
    let selectors = selectors_condition(&[matchers.to_vec()], i64::MIN, i64::MAX);
    vec![
        columns("series", SeriesRow::COLUMN_NAMES),
        columns("samples", SampleRow::COLUMN_NAMES),
        columns("metric_metadata", MetadataRow::COLUMN_NAMES),
        series_sql(&condition),
        points_sql(&points),
        newest_per_step_sql(
            &points,
            Steps {
                first_ms: 1_764_892_800_000,
                step_ms: 60_000,
            },
        ),
        count_series_sql(&points),
        label_names_sql(&selectors),
        label_values_sql("job", &selectors),
        label_values_sql(METRIC_NAME_LABEL, &selectors),
        metadata_sql(None),
        metadata_sql(Some("up")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(timestamp_ms: i64, value: f64) -> MetricSample {
        MetricSample {
            timestamp_ms,
            value,
        }
    }

    #[test]
    fn fingerprints_are_stable_and_tell_label_sets_apart() {
        let labels = vec![
            Label::new(METRIC_NAME_LABEL, "up"),
            Label::new("job", "api"),
        ];
        // A changed fingerprint would split every stored series in two.
        assert_eq!(fingerprint(&labels), 0x2796_7ec8_7265_eaef);
        let moved = vec![
            Label::new(METRIC_NAME_LABEL, "upj"),
            Label::new("ob", "api"),
        ];
        assert_ne!(fingerprint(&labels), fingerprint(&moved));
    }

    #[test]
    fn merged_samples_keep_one_per_timestamp_in_order() {
        let merged = merge_samples(
            vec![sample(1, 1.0), sample(3, 3.0), sample(5, 5.0)],
            vec![sample(2, 2.0), sample(3, 30.0), sample(6, 6.0)],
        );
        let times: Vec<(i64, f64)> = merged.iter().map(|s| (s.timestamp_ms, s.value)).collect();
        assert_eq!(times, [(1, 1.0), (2, 2.0), (3, 3.0), (5, 5.0), (6, 6.0)]);
    }

    #[test]
    fn matchers_become_conditions_with_promql_semantics() {
        let regex = Matcher::new_matcher(
            promql_parser::parser::token::T_NEQ_REGEX,
            "path".into(),
            r"/api/.*\.json".into(),
        )
        .unwrap();
        assert_eq!(
            matchers_condition(&[
                Matcher::new(MatchOp::Equal, METRIC_NAME_LABEL, "up"),
                Matcher::new(MatchOp::NotEqual, "env", "it's"),
                regex,
            ]),
            r"(metric = 'up' AND label_values[indexOf(label_names, 'env')] != 'it\'s' AND NOT match(label_values[indexOf(label_names, 'path')], '^(?:/api/.*\\.json)$'))"
        );
        assert_eq!(matchers_condition(&[]), "1");
    }

    #[test]
    fn days_cover_any_range() {
        assert_eq!(day_of_ms(i64::MIN), 0);
        assert_eq!(day_of_ms(i64::MAX), u16::MAX);
        assert_eq!(day_of_ms(MILLIS_PER_DAY * 3 + 1), 3);
        assert_eq!(
            days_condition(0, MILLIS_PER_DAY),
            "day BETWEEN toDate('1970-01-01') AND toDate('1970-01-02')"
        );
    }
}
