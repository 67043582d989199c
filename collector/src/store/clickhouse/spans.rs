//! Spans in ClickHouse: the [`SpanStore`] a node uses with
//! `--storage clickhouse`.
//!
//! Acknowledged spans wait in the node's buffer (queryable at once, as in
//! the embedded store) until a flush inserts them: the encoded spans of
//! each trace in the flush as one row of `spans`, keyed for trace-by-id,
//! and a row per span of what searches filter on into `span_search`. Only after the inserts succeed does the
//! node's checkpoint — a file in its data directory, since the WAL it
//! guards is the node's own — move past them; until then the WAL keeps
//! them, a restart replays them, and a ClickHouse that is down holds them
//! in the WAL. A replay after a crash between insert and checkpoint inserts
//! spans twice (the replay's flush may cut traces differently); reads show
//! each span once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    Checkpoint, ClickHouse, Connector, date_literal, day_of, drop_expired, quote, schema,
    snapshot_refused,
};
use crate::backup::BackupDir;
use crate::codec;
use crate::config::Retention;
use crate::model::{Span, SpanKind, TraceId};
use crate::store::traces::{
    DependencyLink, DependencyTracker, Edge, Flushed, SpanBuffer, TraceRead, settle_trace,
};
use crate::store::{Result, SpanFilter, SpanStore, StoreError, TraceCandidates};
use crate::telemetry::SelfMetrics;

const HOUR_NANOS: u64 = 3_600 * 1_000_000_000;
/// Tag values longer than this are cut in the search table (bodies, SQL):
/// a search for a longer value narrows by key alone and then checks the
/// candidates' spans.
const MAX_SEARCH_VALUE_BYTES: usize = 256;
/// Candidate traces fetched per request; later pages grow tenfold.
const FIRST_CANDIDATE_PAGE: u64 = 200;
/// Every service and operation name, as any node wrote them.
const NAMES_SQL: &str = "SELECT day, service, name, kind FROM span_names";
/// How often a node reads the service and operation names other nodes
/// wrote.
const NAMES_REFRESH: Duration = Duration::from_secs(10);

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct SpanRow {
    day: u16,
    trace_id: [u8; 16],
    /// The start of its first span.
    start_nanos: u64,
    spans: u32,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

#[derive(clickhouse::Row, Serialize)]
struct SearchRow {
    day: u16,
    service: String,
    start_nanos: u64,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    name: String,
    kind: String,
    duration_nanos: u64,
    error: u8,
    tag_keys: Vec<String>,
    tag_values: Vec<String>,
}

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct NameRow {
    day: u16,
    service: String,
    name: String,
    kind: String,
}

#[derive(clickhouse::Row, Serialize)]
struct DependencyRow {
    day: u16,
    hour_nanos: u64,
    parent: String,
    child: String,
    calls: u64,
    errors: u64,
}

/// See the module docs.
pub struct ClickHouseSpans {
    connector: Arc<Connector>,
    buffer: SpanBuffer,
    checkpoint: Checkpoint,
    /// Held by a flush and by retention: one at a time.
    flush_state: Mutex<FlushState>,
    metrics: SelfMetrics,
}

struct FlushState {
    dependencies: DependencyTracker,
    names_read: Option<Instant>,
}

impl ClickHouseSpans {
    /// The span store over what `connector` reaches, with its checkpoint in
    /// `dir` (the node's data directory part for ClickHouse).
    pub fn open(connector: Arc<Connector>, dir: &Path, metrics: SelfMetrics) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = ClickHouseSpans {
            connector,
            buffer: SpanBuffer::new(metrics.clone()),
            checkpoint: Checkpoint::open(dir.join("spans.checkpoint"))?,
            flush_state: Mutex::new(FlushState {
                dependencies: DependencyTracker::default(),
                names_read: None,
            }),
            metrics,
        };
        if let Err(error) = store.read_names(&mut store.flush_state.lock().expect("not poisoned")) {
            tracing::warn!(%error, "SpanNamesNotRead");
        }
        Ok(store)
    }

    /// Adds the names every node has written to the buffer's.
    fn read_names(&self, state: &mut FlushState) -> Result<()> {
        let connection = self.connector.get()?.query;
        let names: Vec<NameRow> = connection.wait(
            "reading span names",
            connection.query(NAMES_SQL).fetch_all(),
        )?;
        self.buffer.note_names(names.iter().map(|row| {
            let kind = SpanKind::parse(&row.kind).unwrap_or_default();
            (row.service.as_str(), row.name.as_str(), kind)
        }));
        state.names_read = Some(Instant::now());
        Ok(())
    }

    /// Inserts the spans of one flush; returns the dependency edges they
    /// complete.
    fn insert(&self, state: &mut FlushState, traces: &[&[Span]]) -> Result<Vec<Edge>> {
        let connection = self.connector.get()?.query;
        let spans = || traces.iter().flat_map(|t| t.iter());
        // One row per trace and flush: its resources and scopes encoded
        // once, and a tenth of the rows.
        let span_rows = traces.iter().filter_map(|trace| {
            let first = trace.iter().min_by_key(|s| s.start_unix_nano)?;
            Some(SpanRow {
                day: day_of(first.start_unix_nano),
                trace_id: first.trace_id,
                start_nanos: first.start_unix_nano,
                spans: u32::try_from(trace.len()).unwrap_or(u32::MAX),
                payload: codec::encode_spans(trace.iter()),
            })
        });
        connection.insert_rows("spans", span_rows)?;
        connection.insert_rows("span_search", spans().map(search_row))?;
        let names: HashSet<(u16, &str, &str, SpanKind)> = spans()
            .map(|span| {
                (
                    day_of(span.start_unix_nano),
                    span.service(),
                    span.name.as_str(),
                    span.kind,
                )
            })
            .collect();
        let name_rows: Vec<NameRow> = names
            .into_iter()
            .map(|(day, service, name, kind)| NameRow {
                day,
                service: service.to_string(),
                name: name.to_string(),
                kind: kind.as_str().to_string(),
            })
            .collect();
        connection.insert_rows("span_names", name_rows)?;
        let edges = state.dependencies.observe(spans());
        let mut counts: HashMap<(u64, &str, &str), (u64, u64)> = HashMap::new();
        for edge in &edges {
            let hour = edge.child_start_nanos - edge.child_start_nanos % HOUR_NANOS;
            let count = counts.entry((hour, &edge.parent, &edge.child)).or_default();
            count.0 += 1;
            count.1 += u64::from(edge.failed);
        }
        let dependency_rows: Vec<DependencyRow> = counts
            .into_iter()
            .map(
                |((hour_nanos, parent, child), (calls, errors))| DependencyRow {
                    day: day_of(hour_nanos),
                    hour_nanos,
                    parent: parent.to_string(),
                    child: child.to_string(),
                    calls,
                    errors,
                },
            )
            .collect();
        // The spans are in: a failed count insert loses counts (which are a
        // lower bound), never spans.
        if let Err(error) = connection.insert_rows("dependencies", dependency_rows) {
            tracing::error!(%error, "DependencyCountsNotStored");
        }
        Ok(edges)
    }
}

impl SpanStore for ClickHouseSpans {
    fn durable_through(&self) -> Result<u64> {
        Ok(self.checkpoint.get())
    }

    fn settle_set_aside(&self, _wal_oldest_seq: Option<u64>) -> Result<()> {
        // Nothing is set aside: a flush whose inserts failed part way is
        // retried whole, and reads fold what it stored twice.
        Ok(())
    }

    fn apply(&self, seq: u64, spans: Vec<Span>) {
        self.buffer.apply(seq, spans);
    }

    fn buffered_spans(&self) -> usize {
        self.buffer.buffered_spans()
    }

    fn head_spans(&self) -> usize {
        self.buffer.head_spans()
    }

    fn flush(&self) -> Result<Option<Flushed>> {
        let mut state = self.flush_state.lock().expect("not poisoned");
        if state
            .names_read
            .is_none_or(|read| read.elapsed() >= NAMES_REFRESH)
            && let Err(error) = self.read_names(&mut state)
        {
            tracing::warn!(%error, "SpanNamesNotRead");
        }
        let started = Instant::now();
        let Some(flushing) = self.buffer.begin_flush() else {
            state.dependencies.forget_if_quiet(started);
            return Ok(None);
        };
        let traces: Vec<&[Span]> = flushing.traces.values().map(Vec::as_slice).collect();
        let inserted = self.insert(&mut state, &traces);
        drop(traces);
        let max_seq = flushing.max_seq;
        self.buffer.end_flush(flushing, inserted.is_ok());
        match inserted {
            Ok(edges) => {
                self.metrics
                    .store_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(Some(Flushed {
                    through_seq: max_seq,
                    edges,
                }))
            }
            Err(error) => {
                self.metrics.store_flush_errors.inc();
                tracing::error!(%error, "SpanStoreFlushError");
                Err(error)
            }
        }
    }

    fn checkpoint_through(&self, seq: u64) -> Result<()> {
        let _flush = self.flush_state.lock().expect("not poisoned");
        self.checkpoint.advance(seq)
    }

    fn enforce_retention(&self, retention: Retention, now_nanos: u64) -> Result<usize> {
        let _flush = self.flush_state.lock().expect("not poisoned");
        drop_expired(
            &self.connector.get()?,
            schema::SPAN_TABLES,
            retention,
            now_nanos,
        )
    }

    fn snapshot(&self, _backup: &mut BackupDir, _relative: &Path) -> Result<()> {
        Err(snapshot_refused("spans"))
    }

    fn trace(&self, trace_id: &TraceId) -> Result<TraceRead> {
        let mut spans = Vec::new();
        self.buffer.read_trace(trace_id, &mut spans);
        let connection = self.connector.get()?.query;
        let payloads: Vec<Payload> = connection.wait(
            "reading a trace",
            connection.query(&trace_sql(trace_id)).fetch_all(),
        )?;
        let mut damaged = false;
        for row in payloads {
            match codec::decode_spans(&row.payload, None) {
                Ok(decoded) => spans.extend(decoded),
                Err(error) => {
                    tracing::error!(trace_id = %hex::encode(trace_id), %error, "SpanUndecodable");
                    damaged = true;
                }
            }
        }
        settle_trace(&mut spans);
        Ok(TraceRead { spans, damaged })
    }

    fn buffered_traces_matching(&self, matches: &dyn Fn(&Span) -> bool) -> Vec<TraceId> {
        self.buffer.traces_matching(matches)
    }

    fn search_candidates<'a>(&'a self, filter: &SpanFilter<'_>) -> Box<dyn TraceCandidates + 'a> {
        Box::new(Candidates {
            connection: self.connector.get().map(|servers| servers.query),
            sql: candidates_sql(filter),
            offset: 0,
            page: FIRST_CANDIDATE_PAGE,
            fetched: Vec::new().into_iter(),
            done: false,
        })
    }

    fn services(&self) -> Vec<String> {
        self.buffer.services()
    }

    fn operations(&self, service: &str) -> Vec<(String, SpanKind)> {
        self.buffer.operations(service)
    }

    fn dependencies(&self, start_nanos: u64, end_nanos: u64) -> Result<Vec<DependencyLink>> {
        let first_hour = start_nanos - start_nanos % HOUR_NANOS;
        let connection = self.connector.get()?.query;
        let rows: Vec<LinkRow> = connection.wait(
            "reading dependencies",
            connection
                .query(&dependencies_sql(first_hour, end_nanos))
                .fetch_all(),
        )?;
        Ok(rows
            .into_iter()
            .map(|row| DependencyLink {
                parent: row.parent,
                child: row.child,
                call_count: row.calls,
                error_count: row.errors,
            })
            .collect())
    }
}

#[derive(clickhouse::Row, Deserialize)]
struct Payload {
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

#[derive(clickhouse::Row, Deserialize)]
struct LinkRow {
    parent: String,
    child: String,
    calls: u64,
    errors: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct CandidateRow {
    trace_id: [u8; 16],
    #[allow(dead_code)] // The order the rows come in.
    newest: u64,
}

/// Candidate traces from `span_search`, newest first, fetched a page at a
/// time as the search consumes them.
struct Candidates {
    /// `Err` when ClickHouse cannot be reached: the first candidate.
    connection: Result<ClickHouse>,
    sql: String,
    offset: u64,
    page: u64,
    fetched: std::vec::IntoIter<TraceId>,
    done: bool,
}

impl Iterator for Candidates {
    type Item = Result<TraceId>;

    fn next(&mut self) -> Option<Result<TraceId>> {
        if let Some(trace_id) = self.fetched.next() {
            return Some(Ok(trace_id));
        }
        if self.done {
            return None;
        }
        let connection = match &self.connection {
            Ok(connection) => connection,
            Err(error) => {
                self.done = true;
                return Some(Err(StoreError::Backend(error.to_string())));
            }
        };
        let sql = page_sql(&self.sql, self.page, self.offset);
        let rows: Vec<CandidateRow> =
            match connection.wait("searching spans", connection.query(&sql).fetch_all()) {
                Ok(rows) => rows,
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            };
        self.done = (rows.len() as u64) < self.page;
        self.offset += rows.len() as u64;
        self.page = self.page.saturating_mul(10);
        self.fetched = rows
            .into_iter()
            .map(|row| row.trace_id)
            .collect::<Vec<_>>()
            .into_iter();
        self.fetched.next().map(Ok)
    }
}

impl TraceCandidates for Candidates {
    fn damaged(&self) -> bool {
        false
    }
}

/// The candidate query of `filter`, without its `LIMIT`: every condition
/// of the filter is pushed down; tags compare whole values up to
/// [`MAX_SEARCH_VALUE_BYTES`].
fn candidates_sql(filter: &SpanFilter<'_>) -> String {
    let mut conditions = vec![format!(
        "start_nanos >= {} AND start_nanos <= {}",
        filter.start_nanos, filter.end_nanos
    )];
    conditions.push(format!("day >= {}", date_literal(filter.start_nanos)));
    if filter.end_nanos < u64::MAX / 2 {
        conditions.push(format!("day <= {}", date_literal(filter.end_nanos)));
    }
    if let Some(service) = filter.service {
        conditions.push(format!("service = {}", quote(service)));
    }
    if let Some(operation) = filter.operation {
        conditions.push(format!("name = {}", quote(operation)));
    }
    if let Some(kind) = filter.span_kind {
        conditions.push(format!("kind = {}", quote(kind.as_str())));
    }
    if let Some(min) = filter.min_duration_nanos {
        conditions.push(format!("duration_nanos >= {min}"));
    }
    if let Some(max) = filter.max_duration_nanos {
        conditions.push(format!("duration_nanos <= {max}"));
    }
    for (key, value) in filter.tags {
        conditions.push(if value.len() <= MAX_SEARCH_VALUE_BYTES {
            format!(
                "arrayExists((k, v) -> k = {} AND v = {}, tag_keys, tag_values)",
                quote(key),
                quote(value)
            )
        } else {
            format!("has(tag_keys, {})", quote(key))
        });
    }
    format!(
        "SELECT trace_id, max(start_nanos) AS newest FROM span_search WHERE {} \
         GROUP BY trace_id ORDER BY newest DESC, trace_id",
        conditions.join(" AND ")
    )
}

/// What searches filter on of one span: its tags as a search matches them
/// (span, resource, event and derived), values cut to
/// [`MAX_SEARCH_VALUE_BYTES`].
fn search_row(span: &Span) -> SearchRow {
    let derived = span.derived_tags();
    let tags = span
        .attributes
        .iter()
        .chain(&span.resource.attributes)
        .chain(span.events.iter().flat_map(|e| &e.attributes))
        .chain(&derived);
    let (mut tag_keys, mut tag_values) = (Vec::new(), Vec::new());
    for kv in tags {
        let mut value = kv.value.to_display_string();
        if value.len() > MAX_SEARCH_VALUE_BYTES {
            let mut cut = MAX_SEARCH_VALUE_BYTES;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
        }
        tag_keys.push(kv.key.to_string());
        tag_values.push(value);
    }
    SearchRow {
        day: day_of(span.start_unix_nano),
        service: span.service().to_string(),
        start_nanos: span.start_unix_nano,
        trace_id: span.trace_id,
        span_id: span.span_id,
        name: span.name.to_string(),
        kind: span.kind.as_str().to_string(),
        duration_nanos: span.duration_nanos(),
        error: u8::from(span.is_error()),
        tag_keys,
        tag_values,
    }
}

/// The stored spans of one trace.
fn trace_sql(trace_id: &TraceId) -> String {
    format!(
        "SELECT payload FROM spans WHERE trace_id = toFixedString(unhex('{}'), 16)",
        hex::encode(trace_id)
    )
}

/// Calls between services from `first_hour` through `end_nanos`.
fn dependencies_sql(first_hour: u64, end_nanos: u64) -> String {
    format!(
        "SELECT parent, child, toUInt64(sum(calls)) AS calls, \
         toUInt64(sum(errors)) AS errors FROM dependencies \
         WHERE hour_nanos >= {first_hour} AND hour_nanos <= {end_nanos} \
         GROUP BY parent, child ORDER BY parent, child"
    )
}

/// One page of the candidate query `sql`.
fn page_sql(sql: &str, page: u64, offset: u64) -> String {
    format!("{sql} LIMIT {page} OFFSET {offset}")
}

/// Every statement shape the store sends, with sample values, and the
/// columns of every insert: what the test against a current ClickHouse
/// runs after the schema.
#[cfg(test)]
pub fn statement_shapes() -> Vec<String> {
    use clickhouse::Row;
    let columns = |table: &str, names: &[&str]| format!("SELECT {} FROM {table}", names.join(", "));
    let tags = [("http.route".to_string(), "/x".to_string())];
    let filter = SpanFilter {
        service: Some("order"),
        operation: Some("GET"),
        span_kind: Some(SpanKind::Server),
        tags: &tags,
        min_duration_nanos: Some(1),
        max_duration_nanos: Some(2),
        start_nanos: 1_764_892_800_000_000_000,
        end_nanos: 1_764_979_200_000_000_000,
    };
    vec![
        columns("spans", SpanRow::COLUMN_NAMES),
        columns("span_search", SearchRow::COLUMN_NAMES),
        columns("span_names", NameRow::COLUMN_NAMES),
        columns("dependencies", DependencyRow::COLUMN_NAMES),
        NAMES_SQL.to_string(),
        trace_sql(&[7; 16]),
        dependencies_sql(0, u64::MAX),
        page_sql(&candidates_sql(&filter), 200, 0),
        page_sql(
            &candidates_sql(&SpanFilter {
                end_nanos: u64::MAX,
                ..SpanFilter::default()
            }),
            2000,
            200,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_condition_is_pushed_down_and_quoted() {
        let tags = [
            ("http.route".to_string(), "/o'k".to_string()),
            ("db.statement".to_string(), "x".repeat(300)),
        ];
        let sql = candidates_sql(&SpanFilter {
            service: Some("order"),
            operation: Some("GET"),
            span_kind: Some(SpanKind::Server),
            tags: &tags,
            min_duration_nanos: Some(5),
            max_duration_nanos: Some(9),
            start_nanos: 0,
            end_nanos: u64::MAX,
        });
        for part in [
            "service = 'order'",
            "name = 'GET'",
            "kind = 'server'",
            "duration_nanos >= 5",
            "duration_nanos <= 9",
            r"k = 'http.route' AND v = '/o\'k'",
            "has(tag_keys, 'db.statement')",
            "day >= toDate('1970-01-01')",
        ] {
            assert!(sql.contains(part), "{part} missing from {sql}");
        }
        assert!(!sql.contains("day <="));
    }
}
