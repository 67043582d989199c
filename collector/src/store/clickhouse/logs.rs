//! Log records in ClickHouse: the [`LogRecordStore`] a node uses with
//! `--storage clickhouse`.
//!
//! Durable records wait in the node's memory until the next commit (every
//! half second, as the embedded store's) inserts them into `logs`, with
//! each trace's time span into `log_traces`; only then does the node's
//! checkpoint move past them. An insert that failed — or that a crash cut
//! short — may still have landed in part, so before inserting records again
//! the node reads which of them ClickHouse has (each row names its node,
//! WAL sequence number and position) and skips those: a retry never shows
//! a record twice.
//!
//! Queries are the parsed query language turned into SQL conditions with
//! the embedded store's semantics: words match `tokens`, the message and
//! scalar attribute values split and lowercased by the same analyzer
//! tantivy indexes with (a bloom filter skip index over them where the
//! server has skip indexes, a bounded scan of the time range on 18.16);
//! phrases also match the text itself; fields are columns.
//!
//! A record's id, which orders ties and drives live tail, is the time its
//! node inserted it (nanoseconds, made unique per node). Tail shows records
//! inserted at least [`TAIL_SETTLE`] ago, by which time every node's insert
//! of that moment has landed, and only those timestamped since yesterday.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strand_promql::LogField;
use tantivy::query::Occur;
use tantivy::query_grammar::{UserInputAst, UserInputBound, UserInputLeaf, UserInputLiteral};
use tantivy::tokenizer::TextAnalyzer;

use super::{
    Checkpoint, ClickHouse, Connector, date_literal, day_of, drop_expired, quote, schema,
    snapshot_refused,
};
use crate::backup::BackupDir;
use crate::codec;
use crate::config::Retention;
use crate::model::{AttrValue, KeyValue, LogRecord, TraceId};
use crate::store::log_search::{
    AttributeFacet, Cursor, Facets, GroupCounts, Histogram, LogFilter, LogHit, LogPage,
    LogRecordStore, MAX_TRACE_LOGS, NO_PREFIX_ON_VALUES, Order, prefix_stem, regex_escape,
};
use crate::store::logs::LEVELS;
use crate::store::logs::schema::{VALUE_SEPARATOR, attribute_entries, free_texts, level_number};
use crate::store::{Result, StoreError};

const HOUR_NANOS: u64 = 3_600 * 1_000_000_000;
const DAY_NANOS: u64 = 24 * HOUR_NANOS;
/// How long after its insert a record shows in live tail: inserts of
/// several nodes land in any order within it.
const TAIL_SETTLE: Duration = Duration::from_secs(2);
/// Records a node holds uncommitted at most: beyond, ingest answers
/// "retry" while ClickHouse cannot take them (the WAL has them all).
const MAX_PENDING_RECORDS: usize = 200_000;

#[derive(clickhouse::Row, Serialize)]
struct LogRow {
    day: u16,
    hour: u32,
    time_nanos: u64,
    id: u64,
    node: u64,
    seq: u64,
    idx: u32,
    level: u8,
    severity: String,
    service: String,
    trace_id: String,
    span_id: String,
    body: String,
    tokens: Vec<String>,
    attribute_keys: Vec<String>,
    attr_paths: Vec<String>,
    attr_values: Vec<String>,
    resource_paths: Vec<String>,
    resource_values: Vec<String>,
    #[serde(with = "serde_bytes")]
    record: Vec<u8>,
}

#[derive(clickhouse::Row, Serialize)]
struct TraceSpanRow {
    day: u16,
    trace_id: String,
    first_nanos: u64,
    last_nanos: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct HitRow {
    id: u64,
    #[serde(with = "serde_bytes")]
    record: Vec<u8>,
}

#[derive(clickhouse::Row, Deserialize)]
struct KeyRow {
    time_nanos: u64,
    id: u64,
}

/// A page query's keys in ClickHouse's JSON format.
#[derive(Deserialize)]
struct KeysAnswer {
    data: Vec<JsonKey>,
    rows_before_limit_at_least: Option<JsonU64>,
}

#[derive(Deserialize)]
struct JsonKey {
    time_nanos: JsonU64,
    id: JsonU64,
}

/// A UInt64 in ClickHouse's JSON, quoted (the default) or not.
struct JsonU64(u64);

impl<'de> Deserialize<'de> for JsonU64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match Either::deserialize(deserializer)? {
            Either::Number(n) => Ok(JsonU64(n)),
            Either::Text(text) => text.parse().map(JsonU64).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(clickhouse::Row, Deserialize)]
struct StoredRow {
    seq: u64,
    idx: u32,
}

#[derive(clickhouse::Row, Deserialize)]
struct BucketRow {
    bucket: u64,
    level: u8,
    n: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct ValueCount {
    value: String,
    n: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct KeyValueCount {
    key: String,
    value: String,
    n: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct GroupRow {
    values: Vec<String>,
    n: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct TraceTimes {
    first: u64,
    last: u64,
    inserts: u64,
}

/// Records read.
#[derive(Default)]
struct Fetched {
    hits: Vec<LogHit>,
    /// A row's record could not be decoded (and is missing from `hits`).
    damaged: bool,
}

/// See the module docs.
pub struct ClickHouseLogs {
    connector: Arc<Connector>,
    /// This node's id, on every row it inserts.
    node: u64,
    checkpoint: Checkpoint,
    analyzer: TextAnalyzer,
    pending: Mutex<Pending>,
    /// Held by a commit and by retention: one at a time.
    committing: Mutex<()>,
}

/// Records applied and not yet in ClickHouse.
#[derive(Default)]
struct Pending {
    /// (WAL sequence number, position in its WAL record, record), in order.
    records: Vec<(u64, u32, LogRecord)>,
    /// The highest WAL sequence number applied.
    applied_through: u64,
    /// Records up to this sequence number may be in ClickHouse already
    /// (replayed after a restart, or retried after a failed insert).
    uncertain_through: u64,
    /// The last id given to a row.
    last_id: u64,
}

impl ClickHouseLogs {
    /// The log store over what `connector` reaches, with its checkpoint and
    /// node id in `dir` (the node's data directory part for ClickHouse).
    pub fn open(connector: Arc<Connector>, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let checkpoint = Checkpoint::open(dir.join("logs.checkpoint"))?;
        Ok(ClickHouseLogs {
            connector,
            node: super::node_id(dir)?,
            checkpoint,
            analyzer: crate::store::logs::schema::tokenizers()
                .get("default")
                .expect("tantivy has a default analyzer"),
            pending: Mutex::new(Pending {
                // Whatever a replay applies may have landed before a crash.
                uncertain_through: u64::MAX,
                ..Pending::default()
            }),
            committing: Mutex::new(()),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().expect("not poisoned")
    }

    fn connection(&self) -> Result<ClickHouse> {
        Ok(self.connector.get()?.query)
    }

    /// Inserts `batch`, less what ClickHouse has of it where a record
    /// up to `uncertain_through` may have landed; returns how many inserts
    /// that took.
    fn insert(&self, batch: &[(u64, u32, LogRecord)], uncertain_through: u64) -> Result<usize> {
        let connection = self.connection()?;
        let stored = match batch.first() {
            Some((first_seq, ..)) if *first_seq <= uncertain_through => {
                self.stored(&connection, batch, uncertain_through)?
            }
            _ => HashSet::new(),
        };
        let fresh: Vec<&(u64, u32, LogRecord)> = batch
            .iter()
            .filter(|(seq, idx, _)| !stored.contains(&(*seq, *idx)))
            .collect();
        if !stored.is_empty() {
            tracing::info!(
                skipped = stored.len(),
                "LogRecordsAlreadyStored: not inserted again"
            );
        }
        let first_id = {
            let mut pending = self.pending();
            let first = pending.last_id.max(crate::model::now_unix_nano()) + 1;
            pending.last_id = first + fresh.len() as u64;
            first
        };
        let mut analyzer = self.analyzer.clone();
        let rows = fresh.iter().enumerate().map(|(n, (seq, idx, record))| {
            log_row(
                &mut analyzer,
                self.node,
                *seq,
                *idx,
                first_id + n as u64,
                record,
            )
        });
        connection.insert_rows("logs", rows)?;
        // Every record's trace, stored or not: an insert that failed after
        // its `logs` rows landed may not have written these (a repeated row
        // changes no trace's time span).
        let mut traces: HashMap<(u16, TraceId), (u64, u64)> = HashMap::new();
        for (_, _, record) in batch {
            if let Some(trace_id) = record.trace_id {
                let time = record.time_unix_nano;
                let span = traces
                    .entry((day_of(time), trace_id))
                    .or_insert((time, time));
                span.0 = span.0.min(time);
                span.1 = span.1.max(time);
            }
        }
        connection.insert_rows(
            "log_traces",
            traces
                .into_iter()
                .map(|((day, trace_id), (first, last))| TraceSpanRow {
                    day,
                    trace_id: hex::encode(trace_id),
                    first_nanos: first,
                    last_nanos: last,
                }),
        )?;
        Ok(2)
    }

    /// Which (sequence number, position) of `batch` up to
    /// `uncertain_through` this node's rows in ClickHouse already hold.
    fn stored(
        &self,
        connection: &ClickHouse,
        batch: &[(u64, u32, LogRecord)],
        uncertain_through: u64,
    ) -> Result<HashSet<(u64, u32)>> {
        let uncertain = batch.iter().filter(|(seq, ..)| *seq <= uncertain_through);
        let (mut first_seq, mut last_seq) = (u64::MAX, 0);
        let (mut first_time, mut last_time) = (u64::MAX, 0);
        for (seq, _, record) in uncertain {
            first_seq = first_seq.min(*seq);
            last_seq = last_seq.max(*seq);
            first_time = first_time.min(record.time_unix_nano);
            last_time = last_time.max(record.time_unix_nano);
        }
        let rows: Vec<StoredRow> = connection.wait(
            "reading which records are stored",
            connection
                .query(&stored_sql(
                    self.node,
                    (first_seq, last_seq),
                    (first_time, last_time),
                ))
                .fetch_all(),
        )?;
        Ok(rows.into_iter().map(|row| (row.seq, row.idx)).collect())
    }

    /// The records `sql` selects (`id, record`), in its order.
    fn hits(&self, sql: &str) -> Result<Fetched> {
        let connection = self.connection()?;
        let rows: Vec<HitRow> =
            connection.wait("reading log records", connection.query(sql).fetch_all())?;
        let mut fetched = Fetched {
            hits: Vec::with_capacity(rows.len()),
            damaged: false,
        };
        for row in rows {
            match codec::decode_logs(&row.record) {
                Ok(mut records) if records.len() == 1 => fetched.hits.push(LogHit {
                    id: row.id,
                    record: records.remove(0),
                }),
                _ => {
                    tracing::error!(id = row.id, "LogRecordUndecodable");
                    fetched.damaged = true;
                }
            }
        }
        Ok(fetched)
    }

    /// The keys of the first `limit` matches of `condition` in `order`, and
    /// how many match in all: ClickHouse reports the rows a `LIMIT` cut from
    /// (`rows_before_limit_at_least`, every match, since sorting reads them
    /// all), which needs a JSON answer.
    fn first_page_keys(
        &self,
        condition: &str,
        order: Order,
        limit: usize,
    ) -> Result<(Vec<KeyRow>, u64)> {
        let connection = self.connection()?;
        let sql = page_sql(condition, order, None, limit);
        let body = connection.wait("finding a page of log records", async {
            connection.query(&sql).fetch_bytes("JSON")?.collect().await
        })?;
        let answer: KeysAnswer = serde_json::from_slice(&body).map_err(|error| {
            StoreError::Backend(format!("ClickHouse's answer to a page query: {error}"))
        })?;
        let keys = answer
            .data
            .into_iter()
            .map(|row| KeyRow {
                time_nanos: row.time_nanos.0,
                id: row.id.0,
            })
            .collect::<Vec<_>>();
        let total = match answer.rows_before_limit_at_least {
            Some(total) => total.0.max(keys.len() as u64),
            None => self.count("counting log records", &count_sql(condition))?,
        };
        Ok((keys, total))
    }

    fn count(&self, what: &str, sql: &str) -> Result<u64> {
        let connection = self.connection()?;
        connection.wait(what, connection.query(sql).fetch_one::<u64>())
    }

    fn fetch<T: clickhouse::RowOwned + clickhouse::RowRead>(
        &self,
        what: &str,
        sql: &str,
    ) -> Result<Vec<T>> {
        let connection = self.connection()?;
        connection.wait(what, connection.query(sql).fetch_all())
    }

    /// The condition of `filter` (query and time range).
    fn condition(&self, filter: &LogFilter) -> Result<String> {
        let mut analyzer = self.analyzer.clone();
        let matches = match &filter.matches {
            Some(ast) => query_condition(ast, &mut analyzer)?,
            None => "1".into(),
        };
        Ok(format!(
            "{} AND ({matches})",
            time_condition(filter.start_nanos, filter.end_nanos)
        ))
    }
}

impl LogRecordStore for ClickHouseLogs {
    fn durable_through(&self) -> u64 {
        self.checkpoint.get()
    }

    fn apply(&self, seq: u64, records: Vec<LogRecord>) -> Result<usize> {
        if seq <= self.checkpoint.get() {
            return Ok(0);
        }
        let count = records.len();
        let mut pending = self.pending();
        pending.applied_through = pending.applied_through.max(seq);
        pending.records.extend(
            records
                .into_iter()
                .enumerate()
                .map(|(idx, record)| (seq, idx as u32, record)),
        );
        Ok(count)
    }

    fn is_full(&self) -> bool {
        self.pending().records.len() >= MAX_PENDING_RECORDS
    }

    fn commit(&self) -> Result<usize> {
        let _committing = self.committing.lock().expect("not poisoned");
        let (batch, through, uncertain_through) = {
            let mut pending = self.pending();
            (
                std::mem::take(&mut pending.records),
                pending.applied_through,
                pending.uncertain_through,
            )
        };
        if batch.is_empty() {
            self.checkpoint.advance(through)?;
            return Ok(0);
        }
        match self.insert(&batch, uncertain_through) {
            Ok(inserts) => {
                self.pending().uncertain_through = 0;
                self.checkpoint.advance(through)?;
                Ok(inserts)
            }
            Err(error) => {
                let mut pending = self.pending();
                let last_seq = batch.last().map_or(0, |(seq, ..)| *seq);
                pending.uncertain_through = pending.uncertain_through.max(last_seq);
                let newer = std::mem::replace(&mut pending.records, batch);
                pending.records.extend(newer);
                Err(error)
            }
        }
    }

    fn enforce_retention(&self, retention: Retention, now_nanos: u64) -> Result<usize> {
        let _committing = self.committing.lock().expect("not poisoned");
        drop_expired(
            &self.connector.get()?,
            schema::LOG_TABLES,
            retention,
            now_nanos,
        )
    }

    fn snapshot(&self, _backup: &mut BackupDir, _relative: &Path) -> Result<()> {
        Err(snapshot_refused("logs"))
    }

    fn check(&self, filter: &LogFilter) -> Result<()> {
        self.condition(filter).map(|_| ())
    }

    fn search(&self, filter: &LogFilter, limit: usize, cursor: Option<Cursor>) -> Result<LogPage> {
        let condition = self.condition(filter)?;
        filter.deadline.check()?;
        // On one server the first page's keys and the total come from one
        // read of the matches. A later page's keys are past its cursor, and
        // a Distributed table reports what the LIMIT cut on one shard, so
        // there the total is counted apart.
        let single = self.connector.get()?.layout == schema::Layout::Single;
        let (keys, total) = match (cursor, limit) {
            (None, 1..) if single => self.first_page_keys(&condition, filter.order, limit)?,
            _ => {
                let total = self.count("counting log records", &count_sql(&condition))?;
                if limit == 0 {
                    return Ok(LogPage {
                        hits: Vec::new(),
                        total,
                        next_cursor: None,
                        damaged: false,
                    });
                }
                filter.deadline.check()?;
                let keys: Vec<KeyRow> = self.fetch(
                    "finding a page of log records",
                    &page_sql(&condition, filter.order, cursor, limit),
                )?;
                (keys, total)
            }
        };
        let keys: Vec<Cursor> = keys
            .into_iter()
            .map(|row| Cursor {
                time_unix_nano: row.time_nanos,
                id: row.id,
            })
            .collect();
        filter.deadline.check()?;
        let mut fetched = match keys.is_empty() {
            true => Fetched::default(),
            false => self.hits(&records_sql(&keys))?,
        };
        let place: HashMap<(u64, u64), usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| ((k.time_unix_nano, k.id), i))
            .collect();
        fetched
            .hits
            .sort_by_key(|hit| place.get(&(hit.record.time_unix_nano, hit.id)).copied());
        Ok(LogPage {
            next_cursor: keys.last().copied().filter(|_| keys.len() == limit),
            damaged: fetched.damaged || fetched.hits.len() < keys.len(),
            hits: fetched.hits,
            total,
        })
    }

    fn arrived_after(&self, filter: &LogFilter, after: u64, limit: usize) -> Result<Vec<LogHit>> {
        let condition = self.condition(filter)?;
        let settled = self.last_arrival()?;
        let yesterday = date_literal(crate::model::now_unix_nano().saturating_sub(DAY_NANOS));
        let sql = format!(
            "SELECT id, record FROM logs WHERE {condition} AND day >= {yesterday} \
             AND id > {after} AND id <= {settled} ORDER BY id LIMIT {limit}"
        );
        Ok(self.hits(&sql)?.hits)
    }

    fn last_arrival(&self) -> Result<u64> {
        let settle = TAIL_SETTLE.as_nanos() as u64;
        Ok(crate::model::now_unix_nano().saturating_sub(settle))
    }

    fn resource_keys_and_services(
        &self,
        start_nanos: u64,
        end_nanos: u64,
        limit: usize,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>, bool)> {
        let within = time_condition(start_nanos, end_nanos);
        let distinct = |expression: &str| -> Result<Vec<String>> {
            self.fetch(
                "reading log label names",
                &format!(
                    "SELECT DISTINCT {expression} AS value FROM logs WHERE {within} \
                     ORDER BY value LIMIT {}",
                    limit + 1
                ),
            )
        };
        let mut keys = distinct("arrayJoin(resource_paths)")?;
        let mut services = distinct("service")?;
        let cut = keys.len() > limit || services.len() > limit;
        keys.truncate(limit);
        services.truncate(limit);
        Ok((
            keys.into_iter().collect(),
            services.into_iter().collect(),
            cut,
        ))
    }

    fn may_have_key(&self, start_nanos: u64, end_nanos: u64, key: &str) -> Result<bool> {
        let key = quote(key);
        let sql = format!(
            "SELECT count() FROM (SELECT 1 FROM logs WHERE {} AND \
             (has(resource_paths, {key}) OR has(attribute_keys, {key})) LIMIT 1)",
            time_condition(start_nanos, end_nanos)
        );
        Ok(self.count("looking for an attribute", &sql)? > 0)
    }

    fn trace_logs(&self, trace_id: &TraceId) -> Result<LogPage> {
        let trace_id = quote(&hex::encode(trace_id));
        let connection = self.connection()?;
        let times: TraceTimes = connection.wait(
            "finding a trace's logs",
            connection
                .query(&format!(
                    "SELECT min(first_nanos) AS first, max(last_nanos) AS last, \
                     count() AS inserts FROM log_traces WHERE trace_id = {trace_id}"
                ))
                .fetch_one(),
        )?;
        if times.inserts == 0 {
            return Ok(LogPage {
                hits: Vec::new(),
                total: 0,
                next_cursor: None,
                damaged: false,
            });
        }
        let sql = format!(
            "SELECT id, record FROM logs WHERE {} AND trace_id = {trace_id} \
             ORDER BY time_nanos, id LIMIT {MAX_TRACE_LOGS}",
            time_condition(times.first, times.last)
        );
        let fetched = self.hits(&sql)?;
        Ok(LogPage {
            total: fetched.hits.len() as u64,
            hits: fetched.hits,
            next_cursor: None,
            damaged: fetched.damaged,
        })
    }

    fn histogram(&self, filter: &LogFilter, step_nanos: u64) -> Result<Histogram> {
        let condition = self.condition(filter)?;
        let step_nanos = step_nanos.max(1);
        let start = filter.start_nanos - filter.start_nanos % step_nanos;
        let buckets = ((filter.end_nanos - start) / step_nanos + 1) as usize;
        filter.deadline.check()?;
        let rows: Vec<BucketRow> = self.fetch(
            "counting log records per bucket",
            &format!(
                "SELECT intDiv(time_nanos - {start}, {step_nanos}) AS bucket, level, \
                 count() AS n FROM logs WHERE {condition} GROUP BY bucket, level"
            ),
        )?;
        let mut counts = vec![[0u64; LEVELS.len()]; buckets];
        for row in rows {
            if let Some(bucket) = counts.get_mut(row.bucket as usize) {
                bucket[usize::from(row.level).min(LEVELS.len() - 1)] += row.n;
            }
        }
        Ok(Histogram {
            start_nanos: start,
            step_nanos,
            buckets: counts,
            damaged: false,
        })
    }

    fn facets(&self, filter: &LogFilter, limit: usize) -> Result<Facets> {
        let condition = self.condition(filter)?;
        let top = |what: &str, sql: String| -> Result<Vec<(String, u64)>> {
            filter.deadline.check()?;
            let rows: Vec<ValueCount> = self.fetch(what, &sql)?;
            Ok(rows.into_iter().map(|row| (row.value, row.n)).collect())
        };
        let column = |column: &str| {
            format!(
                "SELECT {column} AS value, count() AS n FROM logs WHERE {condition} \
                 GROUP BY value ORDER BY n DESC, value LIMIT {limit}"
            )
        };
        filter.deadline.check()?;
        let total = self.count("counting log records", &count_sql(&condition))?;
        let services = top("counting services", column("service"))?;
        let severities = top("counting severities", column("severity"))?;
        let keys = top(
            "counting attribute keys",
            format!(
                "SELECT entry AS value, count() AS n FROM logs ARRAY JOIN attribute_keys AS entry \
                 WHERE {condition} AND position(entry, {separator}) = 0 \
                 GROUP BY value ORDER BY n DESC, value LIMIT {limit}",
                separator = quote(&VALUE_SEPARATOR.to_string()),
            ),
        )?;
        let mut values: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        if !keys.is_empty() {
            filter.deadline.check()?;
            let rows: Vec<KeyValueCount> = self.fetch(
                "counting attribute values",
                &values_sql(&condition, &keys, limit),
            )?;
            for row in rows {
                values.entry(row.key).or_default().push((row.value, row.n));
            }
        }
        Ok(Facets {
            total,
            services,
            severities,
            attributes: keys
                .into_iter()
                .map(|(key, count)| AttributeFacet {
                    values: values.remove(&key).unwrap_or_default(),
                    key,
                    count,
                })
                .collect(),
            damaged: false,
        })
    }

    fn count_by(
        &self,
        filter: &LogFilter,
        by: &[LogField],
        max_groups: usize,
    ) -> Result<GroupCounts> {
        let condition = self.condition(filter)?;
        filter.deadline.check()?;
        if by.is_empty() {
            let total = self.count("counting log records", &count_sql(&condition))?;
            return Ok(GroupCounts {
                groups: vec![(Vec::new(), total)],
                too_many: false,
                damaged: false,
            });
        }
        let rows: Vec<GroupRow> = self.fetch(
            "counting log records per group",
            &groups_sql(&condition, by, max_groups + 1),
        )?;
        let too_many = rows.len() > max_groups;
        Ok(GroupCounts {
            groups: rows
                .into_iter()
                .take(max_groups)
                .map(|row| (row.values, row.n))
                .collect(),
            too_many,
            damaged: false,
        })
    }

    fn units_between(&self, start_nanos: u64, end_nanos: u64) -> usize {
        let end = end_nanos.min(crate::model::now_unix_nano());
        (end.saturating_sub(start_nanos) / DAY_NANOS) as usize + usize::from(start_nanos <= end)
    }
}

/// The row of one record.
fn log_row(
    analyzer: &mut TextAnalyzer,
    node: u64,
    seq: u64,
    idx: u32,
    id: u64,
    record: &LogRecord,
) -> LogRow {
    let mut tokens = BTreeSet::new();
    for text in free_texts(record) {
        let mut stream = analyzer.token_stream(&text);
        while let Some(token) = stream.next() {
            tokens.insert(token.text.clone());
        }
    }
    let (mut attr_paths, mut attr_values) = (Vec::new(), Vec::new());
    flatten("", &record.attributes, &mut attr_paths, &mut attr_values);
    let (mut resource_paths, mut resource_values) = (Vec::new(), Vec::new());
    flatten(
        "",
        &record.resource.attributes,
        &mut resource_paths,
        &mut resource_values,
    );
    let level = record.severity.level();
    LogRow {
        day: day_of(record.time_unix_nano),
        hour: hour_of(record.time_unix_nano),
        time_nanos: record.time_unix_nano,
        id,
        node,
        seq,
        idx,
        level: level_number(level) as u8,
        severity: level.to_string(),
        service: record.service().to_string(),
        trace_id: record.trace_id.map(hex::encode).unwrap_or_default(),
        span_id: record.span_id.map(hex::encode).unwrap_or_default(),
        body: record.body.clone(),
        tokens: tokens.into_iter().collect(),
        attribute_keys: attribute_entries(record).collect(),
        attr_paths,
        attr_values,
        resource_paths,
        resource_values,
        record: codec::encode_log(record),
    }
}

/// Attributes as (path, text) pairs: nested maps' keys joined by `.`, each
/// element of an array under its array's path, bytes in hex — the paths
/// and values the embedded store's JSON fields index.
fn flatten(
    prefix: &str,
    attributes: &[KeyValue],
    paths: &mut Vec<String>,
    values: &mut Vec<String>,
) {
    fn value(path: &str, v: &AttrValue, paths: &mut Vec<String>, values: &mut Vec<String>) {
        match v {
            AttrValue::Map(entries) => flatten(path, entries, paths, values),
            AttrValue::Array(items) => {
                for item in items {
                    value(path, item, paths, values);
                }
            }
            AttrValue::Bytes(bytes) => {
                paths.push(path.to_string());
                values.push(hex::encode(bytes));
            }
            scalar => {
                paths.push(path.to_string());
                values.push(scalar.to_display_string());
            }
        }
    }
    for kv in attributes {
        let path = if prefix.is_empty() {
            kv.key.to_string()
        } else {
            format!("{prefix}.{}", kv.key)
        };
        value(&path, &kv.value, paths, values);
    }
}

fn hour_of(nanos: u64) -> u32 {
    u32::try_from(nanos / HOUR_NANOS).unwrap_or(u32::MAX)
}

/// Records timestamped in `[start, end]`, with the hours and days of the
/// range so the primary key and the partitions narrow the read.
fn time_condition(start_nanos: u64, end_nanos: u64) -> String {
    let mut condition = format!(
        "time_nanos >= {start_nanos} AND time_nanos <= {end_nanos} AND hour >= {} \
         AND hour <= {} AND day >= {}",
        hour_of(start_nanos),
        hour_of(end_nanos),
        date_literal(start_nanos)
    );
    if end_nanos < u64::MAX / 2 {
        condition.push_str(&format!(" AND day <= {}", date_literal(end_nanos)));
    }
    condition
}

fn count_sql(condition: &str) -> String {
    format!("SELECT count() FROM logs WHERE {condition}")
}

/// The (time, id) of one page of matches in `order` past `cursor`.
fn page_sql(condition: &str, order: Order, cursor: Option<Cursor>, limit: usize) -> String {
    let (direction, past) = match order {
        Order::NewestFirst => ("DESC", "<"),
        Order::OldestFirst => ("ASC", ">"),
    };
    let after_cursor = cursor.map_or(String::new(), |c| {
        format!(
            " AND (time_nanos {past} {time} OR (time_nanos = {time} AND id {past} {id}))",
            time = c.time_unix_nano,
            id = c.id
        )
    });
    format!(
        "SELECT time_nanos, id FROM logs WHERE {condition}{after_cursor} \
         ORDER BY time_nanos {direction}, id {direction} LIMIT {limit}"
    )
}

/// The records at `keys` (a page's): read apart from the page's order, so
/// that sorting the matches reads only their times and ids.
fn records_sql(keys: &[Cursor]) -> String {
    let first = keys.iter().map(|k| k.time_unix_nano).min().unwrap_or(0);
    let last = keys.iter().map(|k| k.time_unix_nano).max().unwrap_or(0);
    let keys = keys
        .iter()
        .map(|k| format!("({}, {})", k.time_unix_nano, k.id))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT id, record FROM logs WHERE {} AND (time_nanos, id) IN ({keys})",
        time_condition(first, last)
    )
}

/// The top `limit` values of each of `keys` among the matches.
fn values_sql(condition: &str, keys: &[(String, u64)], limit: usize) -> String {
    let separator = quote(&VALUE_SEPARATOR.to_string());
    let keys = keys
        .iter()
        .map(|(key, _)| quote(key))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT key, value, n FROM (SELECT substring(entry, 1, position(entry, {separator}) - 1) \
         AS key, substring(entry, position(entry, {separator}) + 1) AS value, count() AS n \
         FROM logs ARRAY JOIN attribute_keys AS entry WHERE {condition} \
         AND position(entry, {separator}) > 0 \
         AND substring(entry, 1, position(entry, {separator}) - 1) IN ({keys}) \
         GROUP BY key, value) ORDER BY key, n DESC, value LIMIT {limit} BY key"
    )
}

/// Matches per combination of the values of `by`, at most `limit` groups.
fn groups_sql(condition: &str, by: &[LogField], limit: usize) -> String {
    let values = by
        .iter()
        .map(|field| match field {
            LogField::Service => "service".to_string(),
            LogField::Severity => "severity".to_string(),
            LogField::Attribute(key) => {
                let prefix = format!("{key}{VALUE_SEPARATOR}");
                format!(
                    "substring(arrayElement(arrayFilter(e -> substring(e, 1, {n}) = {quoted}, \
                     attribute_keys), 1), {start})",
                    n = prefix.len(),
                    quoted = quote(&prefix),
                    start = prefix.len() + 1
                )
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT [{values}] AS values, count() AS n FROM logs WHERE {condition} \
         GROUP BY values LIMIT {limit}"
    )
}

/// This node's rows among WAL sequence numbers `seqs` and timestamps `times`.
fn stored_sql(node: u64, seqs: (u64, u64), times: (u64, u64)) -> String {
    format!(
        "SELECT seq, idx FROM logs WHERE {} AND node = {node} AND seq >= {} AND seq <= {}",
        time_condition(times.0, times.1),
        seqs.0,
        seqs.1
    )
}

/// The SQL condition of a parsed query, with tantivy's boolean semantics:
/// every `Must` (or unmarked) clause holds, no `MustNot` clause does, and
/// where there is no `Must`, one `Should` clause holds.
fn query_condition(ast: &UserInputAst, analyzer: &mut TextAnalyzer) -> Result<String> {
    Ok(match ast {
        UserInputAst::Clause(children) => {
            let (mut must, mut should, mut must_not) = (Vec::new(), Vec::new(), Vec::new());
            for (occur, child) in children {
                let condition = query_condition(child, analyzer)?;
                match occur {
                    None | Some(Occur::Must) => must.push(condition),
                    Some(Occur::Should) => should.push(condition),
                    Some(Occur::MustNot) => must_not.push(format!("NOT ({condition})")),
                }
            }
            if must.is_empty() && !should.is_empty() {
                must.push(format!("({})", should.join(" OR ")));
            }
            if must.is_empty() {
                return Ok("0".into());
            }
            must.extend(must_not);
            must.iter()
                .map(|c| format!("({c})"))
                .collect::<Vec<_>>()
                .join(" AND ")
        }
        UserInputAst::Boost(inner, _) => query_condition(inner, analyzer)?,
        UserInputAst::Leaf(leaf) => leaf_condition(leaf, analyzer)?,
    })
}

/// Where a field's terms are kept.
enum Column<'a> {
    /// Words of the message and attribute values (`body`, and no field).
    Words,
    /// A column compared whole (the raw tokenizer): `service`.
    Exact(&'static str),
    /// A column compared whole, lowercased: `severity`, the ids.
    Lowercase(&'static str),
    /// `attribute_keys`, compared whole.
    AttributeKeys,
    /// The words of one attribute's or resource attribute's value(s).
    Path {
        paths: &'static str,
        values: &'static str,
        path: &'a str,
    },
}

impl Column<'_> {
    fn of(field: Option<&str>) -> Result<Column<'_>> {
        Ok(match field {
            None | Some("body") => Column::Words,
            Some("service") => Column::Exact("service"),
            Some("severity") => Column::Lowercase("severity"),
            Some("trace_id") => Column::Lowercase("trace_id"),
            Some("span_id") => Column::Lowercase("span_id"),
            Some("attribute_keys") => Column::AttributeKeys,
            Some(field) => match (
                field.strip_prefix("attributes."),
                field.strip_prefix("resource."),
            ) {
                (Some(path), _) => Column::Path {
                    paths: "attr_paths",
                    values: "attr_values",
                    path,
                },
                (_, Some(path)) => Column::Path {
                    paths: "resource_paths",
                    values: "resource_values",
                    path,
                },
                _ => {
                    return Err(StoreError::BadQuery(format!("there is no field '{field}'")));
                }
            },
        })
    }

    /// Whether an element the column holds passes `test`, which makes the
    /// condition for the element's expression.
    fn any(&self, test: impl Fn(&str) -> String) -> String {
        match self {
            Column::Words => format!("arrayExists(x -> {}, tokens)", test("x")),
            Column::Exact(column) | Column::Lowercase(column) => test(column),
            Column::AttributeKeys => format!("arrayExists(x -> {}, attribute_keys)", test("x")),
            Column::Path {
                paths,
                values,
                path,
            } => format!(
                "arrayExists((p, x) -> p = {} AND {}, {paths}, {values})",
                quote(path),
                test("x")
            ),
        }
    }
}

fn leaf_condition(leaf: &UserInputLeaf, analyzer: &mut TextAnalyzer) -> Result<String> {
    match leaf {
        UserInputLeaf::All => Ok("1".into()),
        UserInputLeaf::Exists { .. } => Ok("1".into()),
        UserInputLeaf::Literal(literal) => literal_condition(literal, analyzer),
        UserInputLeaf::Set { field, elements } => {
            let mut any = Vec::new();
            for element in elements {
                any.push(literal_condition(
                    &UserInputLiteral {
                        field_name: field.clone(),
                        phrase: element.clone(),
                        delimiter: tantivy::query_grammar::Delimiter::None,
                        slop: 0,
                        prefix: false,
                    },
                    analyzer,
                )?);
            }
            Ok(if any.is_empty() {
                "0".into()
            } else {
                format!("({})", any.join(" OR "))
            })
        }
        UserInputLeaf::Regex { field, pattern } => {
            // The query layer writes `stem*` as `<escaped stem>.*`.
            let stem = prefix_stem(pattern).ok_or_else(|| {
                StoreError::BadQuery("regular expressions are not supported".into())
            })?;
            let column = Column::of(field.as_deref())?;
            if matches!(column, Column::Path { .. }) {
                return Err(StoreError::BadQuery(NO_PREFIX_ON_VALUES.into()));
            }
            Ok(column.any(|x| format!("substring({x}, 1, {}) = {}", stem.len(), quote(&stem))))
        }
        UserInputLeaf::Range {
            field,
            lower,
            upper,
        } => range_condition(field.as_deref(), lower, upper),
    }
}

fn literal_condition(literal: &UserInputLiteral, analyzer: &mut TextAnalyzer) -> Result<String> {
    let column = Column::of(literal.field_name.as_deref())?;
    let phrase = literal.phrase.as_str();
    Ok(match column {
        Column::Exact(_) => column.any(|x| format!("{x} = {}", quote(phrase))),
        Column::Lowercase(_) => column.any(|x| format!("{x} = {}", quote(&phrase.to_lowercase()))),
        Column::AttributeKeys => format!("has(attribute_keys, {})", quote(phrase)),
        Column::Words | Column::Path { .. } => {
            let mut words = Vec::new();
            let mut stream = analyzer.token_stream(phrase);
            while let Some(token) = stream.next() {
                words.push(token.text.clone());
            }
            words_condition(&column, &words, literal.slop == 0, literal.prefix)
        }
    })
}

/// Records whose words hold `words`, in order and adjacent when `adjacent`
/// (a phrase), the last one as a prefix when `prefix`.
fn words_condition(column: &Column, words: &[String], adjacent: bool, prefix: bool) -> String {
    let Some((last, first)) = words.split_last() else {
        // Nothing to search for (only punctuation): nothing matches.
        return "0".into();
    };
    if let Column::Path { .. } = column {
        // The value's own words, checked on its text: adjacent as a phrase,
        // or each anywhere in the same value.
        let patterns: Vec<String> = match adjacent {
            true => vec![words_pattern(words, prefix)],
            false => words
                .iter()
                .enumerate()
                .map(|(i, word)| {
                    words_pattern(std::slice::from_ref(word), prefix && i + 1 == words.len())
                })
                .collect(),
        };
        return column.any(|x| {
            patterns
                .iter()
                .map(|pattern| format!("match({x}, {})", quote(pattern)))
                .collect::<Vec<_>>()
                .join(" AND ")
        });
    }
    let mut conditions: Vec<String> = first
        .iter()
        .map(|word| format!("has(tokens, {})", quote(word)))
        .collect();
    conditions.push(if prefix {
        column.any(|x| format!("substring({x}, 1, {}) = {}", last.len(), quote(last)))
    } else {
        format!("has(tokens, {})", quote(last))
    });
    if words.len() > 1 && adjacent {
        // Adjacent words of the message or of one attribute value.
        let pattern = quote(&words_pattern(words, prefix));
        conditions.push(format!(
            "(match(body, {pattern}) OR arrayExists(x -> match(x, {pattern}), attr_values))"
        ));
    }
    conditions.join(" AND ")
}

/// A case-insensitive regular expression for `words` as adjacent whole
/// words (separated by anything but letters and digits), the last a prefix
/// when `prefix`.
fn words_pattern(words: &[String], prefix: bool) -> String {
    const BOUNDARY: &str = r"(^|[^\pL\pN])";
    const END: &str = r"([^\pL\pN]|$)";
    let escaped: Vec<String> = words.iter().map(|w| regex_escape(w)).collect();
    format!(
        "(?i){BOUNDARY}{}{}",
        escaped.join(r"[^\pL\pN]+"),
        if prefix { "" } else { END }
    )
}

fn range_condition(
    field: Option<&str>,
    lower: &UserInputBound,
    upper: &UserInputBound,
) -> Result<String> {
    let column = Column::of(field)?;
    let numeric = |bound: &UserInputBound| match bound {
        UserInputBound::Inclusive(v) | UserInputBound::Exclusive(v) => v.parse::<f64>().is_ok(),
        UserInputBound::Unbounded => true,
    };
    let by_number = matches!(column, Column::Path { .. }) && numeric(lower) && numeric(upper);
    let value = |v: &str| {
        if by_number {
            v.to_string()
        } else if matches!(column, Column::Exact(_) | Column::AttributeKeys) {
            quote(v)
        } else {
            quote(&v.to_lowercase())
        }
    };
    let bounds = [(lower, ">"), (upper, "<")];
    if bounds
        .iter()
        .all(|(bound, _)| matches!(bound, UserInputBound::Unbounded))
    {
        return Ok("1".into());
    }
    Ok(column.any(|x| {
        let subject = if by_number {
            format!("toFloat64OrZero({x})")
        } else {
            x.to_string()
        };
        let mut tests = Vec::new();
        if by_number {
            tests.push(format!(
                r"match({x}, '^-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?$')"
            ));
        }
        for (bound, comparison) in bounds {
            match bound {
                UserInputBound::Inclusive(v) => {
                    tests.push(format!("{subject} {comparison}= {}", value(v)))
                }
                UserInputBound::Exclusive(v) => {
                    tests.push(format!("{subject} {comparison} {}", value(v)))
                }
                UserInputBound::Unbounded => {}
            }
        }
        tests.join(" AND ")
    }))
}

/// Every statement shape the store sends, with sample values, and the
/// columns of every insert: what the test against a current ClickHouse
/// runs after the schema.
#[cfg(test)]
pub fn statement_shapes() -> Vec<String> {
    use clickhouse::Row;
    let columns = |table: &str, names: &[&str]| format!("SELECT {} FROM {table}", names.join(", "));
    let mut analyzer = crate::store::logs::schema::tokenizers()
        .get("default")
        .unwrap();
    let ast = tantivy::query_grammar::parse_query(
        r#"(card "payment declined" OR service:pay) AND NOT severity:debug attributes.order_id:42 resource.host.name:"a-1" attribute_keys:user"#,
    )
    .unwrap();
    let condition = format!(
        "{} AND ({})",
        time_condition(1_764_892_800_000_000_000, 1_764_979_200_000_000_000),
        query_condition(&ast, &mut analyzer).unwrap()
    );
    let prefix = leaf_condition(
        &UserInputLeaf::Regex {
            field: Some("service".into()),
            pattern: "pay.*".into(),
        },
        &mut analyzer,
    )
    .unwrap();
    let range = range_condition(
        Some("attributes.ms"),
        &UserInputBound::Inclusive("5".into()),
        &UserInputBound::Exclusive("9.5".into()),
    )
    .unwrap();
    vec![
        columns("logs", LogRow::COLUMN_NAMES),
        columns("log_traces", TraceSpanRow::COLUMN_NAMES),
        count_sql(&condition),
        count_sql(&format!("{prefix} AND {range}")),
        page_sql(&condition, Order::NewestFirst, None, 100),
        records_sql(&[
            Cursor {
                time_unix_nano: 5,
                id: 6,
            },
            Cursor {
                time_unix_nano: 7,
                id: 8,
            },
        ]),
        page_sql(
            &condition,
            Order::OldestFirst,
            Some(Cursor {
                time_unix_nano: 5,
                id: 6,
            }),
            100,
        ),
        values_sql(&condition, &[("order_id".into(), 3)], 10),
        groups_sql(
            &condition,
            &[LogField::Service, LogField::Attribute("order_id".into())],
            10,
        ),
        stored_sql(7, (1, 9), (0, 1_764_979_200_000_000_000)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(text: &str) -> String {
        let mut analyzer = crate::store::logs::schema::tokenizers()
            .get("default")
            .unwrap();
        let ast = tantivy::query_grammar::parse_query(text).unwrap();
        query_condition(&ast, &mut analyzer).unwrap()
    }

    #[test]
    fn queries_become_conditions_with_the_embedded_semantics() {
        assert_eq!(condition("Declined"), "has(tokens, 'declined')");
        assert_eq!(condition("service:pay"), "service = 'pay'");
        assert_eq!(condition("severity:ERROR"), "severity = 'error'");
        let phrase = condition("\"card declined\"");
        assert!(
            phrase.contains("has(tokens, 'card') AND has(tokens, 'declined')"),
            "{phrase}"
        );
        assert!(
            phrase.contains(r"match(body, '(?i)(^|[^\\pL\\pN])card[^\\pL\\pN]+declined"),
            "{phrase}"
        );
        assert_eq!(
            condition("a OR b"),
            "((has(tokens, 'a') OR has(tokens, 'b')))"
        );
        assert_eq!(
            condition("a -b"),
            "(has(tokens, 'a')) AND (NOT (has(tokens, 'b')))"
        );
        let attribute = condition("attributes.peer:pay-1");
        assert!(
            attribute.starts_with("arrayExists((p, x) -> p = 'peer' AND match(x, "),
            "{attribute}"
        );
        // Words of a phrase with slop must all be in the same value.
        let slop = condition("attributes.msg:\"card declined\"~2");
        assert!(
            slop.contains("p = 'msg' AND match(x, ") && slop.contains(") AND match(x, "),
            "{slop}"
        );
        // Punctuation alone has no words: nothing matches.
        assert_eq!(condition("\"--\""), "0");
    }

    #[test]
    fn a_prefix_and_a_range_read_the_right_column() {
        let mut analyzer = crate::store::logs::schema::tokenizers()
            .get("default")
            .unwrap();
        let prefix = |field: &str| {
            leaf_condition(
                &UserInputLeaf::Regex {
                    field: Some(field.into()),
                    pattern: r"pay\-.*".into(),
                },
                &mut analyzer.clone(),
            )
        };
        assert_eq!(
            prefix("service").unwrap(),
            "substring(service, 1, 4) = 'pay-'"
        );
        assert_eq!(
            prefix("body").unwrap(),
            "arrayExists(x -> substring(x, 1, 4) = 'pay-', tokens)"
        );
        assert!(matches!(
            prefix("attributes.peer"),
            Err(StoreError::BadQuery(why)) if why == NO_PREFIX_ON_VALUES
        ));
        let range = range_condition(
            Some("attributes.ms"),
            &UserInputBound::Inclusive("5".into()),
            &UserInputBound::Unbounded,
        )
        .unwrap();
        assert!(range.contains("toFloat64OrZero(x) >= 5"), "{range}");
        let _ = &mut analyzer;
    }

    #[test]
    fn rows_hold_what_queries_read() {
        let mut record =
            crate::codec::tests::sample_log("pay", 7 * HOUR_NANOS, "Card DECLINED: retry");
        record.attributes = vec![
            KeyValue::new("order_id", AttrValue::Int(42)),
            KeyValue::new(
                "user",
                AttrValue::Map(vec![KeyValue::new("id", AttrValue::Str("u-1".into()))]),
            ),
        ];
        let mut analyzer = crate::store::logs::schema::tokenizers()
            .get("default")
            .unwrap();
        let row = log_row(&mut analyzer, 1, 2, 3, 4, &record);
        assert_eq!(row.hour, 7);
        assert_eq!(row.tokens, ["42", "card", "declined", "retry"]);
        assert_eq!(row.attribute_keys, ["order_id", "order_id\u{1}42", "user"]);
        assert_eq!(row.attr_paths, ["order_id", "user.id"]);
        assert_eq!(row.attr_values, ["42", "u-1"]);
        assert_eq!(codec::decode_logs(&row.record).unwrap(), vec![record]);
    }
}
