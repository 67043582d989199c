//! Search tables: what trace search needs to know of flushed spans without
//! reading their blocks.
//!
//! Every flush writes, next to its span blocks, compressed tables with one row
//! per trace: for each service in that trace, when its first span started, the
//! operations with their duration range and whether any span failed. One sled
//! key per table (not per trace) points at it, keyed by the newest start time
//! in it, so the index stays small however many traces there are.
//!
//! A table only holds rows whose start falls in one hour. That bounds how far
//! a table's rows can lie before its key: a search scanning keys from newest to
//! oldest can start an hour after its range ends and stop as soon as a key is
//! older than its range starts, and can merge rows across tables into exact
//! newest-first order (see [`Candidates`]).

use std::collections::{BTreeMap, BinaryHeap};

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

use super::blocks::{self, BlockRead, BlockRef};
use super::index;
use crate::model::{Span, TraceId};
use crate::store::{Result, SpanFilter, StoreError};

/// Traces per table: large enough to compress well, small enough that a search
/// wanting a handful of traces decompresses little.
const MAX_TRACES_PER_TABLE: usize = 2_000;

/// What the search index remembers of one service's spans in one trace, as seen
/// in one flush: enough to skip traces without reading their blocks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceEntry {
    pub operations: Vec<OperationEntry>,
    pub error: bool,
}

impl ServiceEntry {
    /// Whether the entry can belong to a trace with a span `filter`
    /// matches (never a false no).
    pub fn may_match(&self, filter: &SpanFilter<'_>) -> bool {
        self.operations.iter().any(|op| {
            filter.operation.is_none_or(|name| name == op.name)
                && filter
                    .min_duration_nanos
                    .is_none_or(|min| op.max_duration_nanos >= min)
                && filter
                    .max_duration_nanos
                    .is_none_or(|max| op.min_duration_nanos <= max)
        }) && (!filter.wants_error() || self.error)
    }
}

/// Duration range of one operation's spans.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationEntry {
    pub name: String,
    pub min_duration_nanos: u64,
    pub max_duration_nanos: u64,
}

/// A hit from the search index: one service's spans in one trace.
#[derive(Clone, Debug)]
pub struct SearchCandidate {
    pub trace_id: TraceId,
    pub start_nanos: u64,
    pub entry: ServiceEntry,
}

/// The sled value of a table key: where the table is and what it covers.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct TableRef {
    pub table: BlockRef,
    pub min_start_nanos: u64,
    pub services: Vec<String>,
}

impl TableRef {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<TableRef> {
        postcard::from_bytes(bytes)
            .map_err(|e| StoreError::Corrupt(format!("search table reference: {e}")))
    }
}

/// One table as stored: names interned, starts relative to the table's
/// oldest, durations in whole microseconds (rounded outwards, so a range
/// check against them never misses a span).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    min_start_nanos: u64,
    services: Vec<String>,
    operations: Vec<String>,
    traces: Vec<TraceRow>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TraceRow {
    trace_id: TraceId,
    services: Vec<ServiceRow>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ServiceRow {
    service: u32,
    start_offset_nanos: u64,
    error: bool,
    /// (operation, min micros rounded down, max micros rounded up)
    operations: Vec<(u32, u64, u64)>,
}

/// A table ready to be appended to a segment, and what its index key needs.
pub struct EncodedTable {
    pub bytes: Vec<u8>,
    pub min_start_nanos: u64,
    pub max_start_nanos: u64,
    pub services: Vec<String>,
}

/// Builds the search tables of one flush.
pub fn build_tables<'a>(
    traces: impl IntoIterator<Item = (&'a TraceId, &'a [Span])>,
) -> Result<Vec<EncodedTable>> {
    // Rows of one trace can fall into different hours (a late span); each goes
    // to its hour's table.
    let mut by_hour: BTreeMap<u64, Vec<TraceRows>> = BTreeMap::new();
    for (trace_id, spans) in traces {
        let mut per_service: BTreeMap<&str, RowSummary> = BTreeMap::new();
        for span in spans {
            per_service
                .entry(span.service())
                .or_insert_with(RowSummary::new)
                .add(span);
        }
        let mut per_hour: BTreeMap<u64, Vec<(&str, RowSummary)>> = BTreeMap::new();
        for (service, row) in per_service {
            per_hour
                .entry(hour_of(row.start_nanos))
                .or_default()
                .push((service, row));
        }
        for (hour, rows) in per_hour {
            by_hour.entry(hour).or_default().push((*trace_id, rows));
        }
    }
    let mut tables = Vec::new();
    for traces in by_hour.into_values() {
        for chunk in traces.chunks(MAX_TRACES_PER_TABLE) {
            tables.push(encode_table(chunk)?);
        }
    }
    Ok(tables)
}

/// The rows of one trace that fall in one hour, by service.
type TraceRows<'a> = (TraceId, Vec<(&'a str, RowSummary<'a>)>);

struct RowSummary<'a> {
    start_nanos: u64,
    error: bool,
    operations: HashMap<&'a str, (u64, u64)>,
}

impl<'a> RowSummary<'a> {
    fn new() -> Self {
        RowSummary {
            start_nanos: u64::MAX,
            error: false,
            operations: HashMap::default(),
        }
    }

    fn add(&mut self, span: &'a Span) {
        self.start_nanos = self.start_nanos.min(span.start_unix_nano);
        self.error |= span.is_error();
        let duration = span.duration_nanos();
        let range = self
            .operations
            .entry(span.name.as_str())
            .or_insert((u64::MAX, 0));
        range.0 = range.0.min(duration);
        range.1 = range.1.max(duration);
    }
}

fn encode_table(traces: &[TraceRows]) -> Result<EncodedTable> {
    let starts = traces
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|(_, row)| row.start_nanos));
    let min_start_nanos = starts.clone().min().unwrap_or(0);
    let max_start_nanos = starts.max().unwrap_or(0);
    let mut services = Interner::default();
    let mut operations = Interner::default();
    let mut table = Table {
        min_start_nanos,
        ..Table::default()
    };
    for (trace_id, rows) in traces {
        let services = rows
            .iter()
            .map(|(service, row)| {
                let mut ops: Vec<(u32, u64, u64)> = row
                    .operations
                    .iter()
                    .map(|(name, (min, max))| {
                        (operations.id(name), min / 1_000, max.div_ceil(1_000))
                    })
                    .collect();
                ops.sort_unstable();
                ServiceRow {
                    service: services.id(service),
                    start_offset_nanos: row.start_nanos - min_start_nanos,
                    error: row.error,
                    operations: ops,
                }
            })
            .collect();
        table.traces.push(TraceRow {
            trace_id: *trace_id,
            services,
        });
    }
    table.services = services.names;
    table.operations = operations.names;
    let raw = postcard::to_stdvec(&table).unwrap_or_default();
    Ok(EncodedTable {
        bytes: blocks::seal(&raw)?,
        min_start_nanos,
        max_start_nanos,
        services: table.services,
    })
}

#[derive(Default)]
struct Interner {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }
}

fn hour_of(nanos: u64) -> u64 {
    nanos - nanos % index::HOUR_NANOS
}

/// The rows of `service` (of every service with `None`) in one stored
/// table whose start is in `[start, end]`.
fn read_rows(
    sealed: &[u8],
    service: Option<&str>,
    start: u64,
    end: u64,
) -> Result<Vec<SearchCandidate>> {
    let raw = blocks::unseal(sealed)?;
    let table: Table = postcard::from_bytes(&raw)
        .map_err(|e| StoreError::Corrupt(format!("search table: {e}")))?;
    let wanted = match service {
        Some(service) => match table.services.iter().position(|s| s == service) {
            Some(wanted) => Some(wanted),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let operation_name = |id: u32| {
        table
            .operations
            .get(id as usize)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt("search table: operation out of range".into()))
    };
    let mut found = Vec::new();
    for trace in &table.traces {
        for row in &trace.services {
            let row_start = table.min_start_nanos.saturating_add(row.start_offset_nanos);
            if wanted.is_some_and(|w| row.service as usize != w)
                || !(start..=end).contains(&row_start)
            {
                continue;
            }
            let operations = row
                .operations
                .iter()
                .map(|&(id, min_micros, max_micros)| {
                    Ok(OperationEntry {
                        name: operation_name(id)?,
                        min_duration_nanos: min_micros.saturating_mul(1_000),
                        max_duration_nanos: max_micros.saturating_mul(1_000),
                    })
                })
                .collect::<Result<_>>()?;
            found.push(SearchCandidate {
                trace_id: trace.trace_id,
                start_nanos: row_start,
                entry: ServiceEntry {
                    operations,
                    error: row.error,
                },
            });
        }
    }
    Ok(found)
}

/// Search candidates of one service (of every service: one per service of
/// a trace) in a time range, newest first, merged across tables.
///
/// Table keys come newest first by their newest row. A table's rows are all
/// at least as old as its key, so once the next key is older than the newest
/// pending row, that row is the newest of all that remain.
pub struct Candidates<'a> {
    keys: std::iter::Rev<sled::Iter>,
    segments: &'a blocks::Segments,
    service: Option<String>,
    start_nanos: u64,
    end_nanos: u64,
    next_table: Option<(u64, TableRef)>,
    keys_done: bool,
    pending: BinaryHeap<Pending>,
    damaged: bool,
}

struct Pending(SearchCandidate);

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.start_nanos, self.0.trace_id).cmp(&(other.0.start_nanos, other.0.trace_id))
    }
}

impl<'a> Candidates<'a> {
    pub fn new(
        db: &sled::Db,
        segments: &'a blocks::Segments,
        service: Option<&str>,
        start_nanos: u64,
        end_nanos: u64,
    ) -> Candidates<'a> {
        // Tables whose newest row is in the hour after `end` may still hold
        // rows up to `end`; later ones cannot.
        let last_key_nanos = hour_of(end_nanos).saturating_add(index::HOUR_NANOS - 1);
        let low = index::search_table_key(start_nanos, 0);
        let high = index::search_table_key(last_key_nanos.max(end_nanos), u64::MAX);
        Candidates {
            keys: db.range(low..=high).rev(),
            segments,
            service: service.map(str::to_string),
            start_nanos,
            end_nanos,
            next_table: None,
            keys_done: false,
            pending: BinaryHeap::new(),
            damaged: false,
        }
    }

    /// Whether a search table read so far was damaged (and skipped): the
    /// traces it listed are missing from the candidates.
    pub fn damaged(&self) -> bool {
        self.damaged
    }

    /// Moves to the next table key that can hold rows of the search.
    fn peek_table(&mut self) -> Result<Option<u64>> {
        while self.next_table.is_none() && !self.keys_done {
            let Some(entry) = self.keys.next() else {
                self.keys_done = true;
                break;
            };
            let (key, value) = entry?;
            let max_start = index::parse_search_table_key(&key)?;
            let table = TableRef::decode(&value)?;
            if table.min_start_nanos <= self.end_nanos
                && self
                    .service
                    .as_ref()
                    .is_none_or(|s| table.services.contains(s))
            {
                self.next_table = Some((max_start, table));
            }
        }
        Ok(self.next_table.as_ref().map(|(max_start, _)| *max_start))
    }

    fn step(&mut self) -> Result<Option<SearchCandidate>> {
        loop {
            let next_key = self.peek_table()?;
            let newest_pending = self.pending.peek().map(|p| p.0.start_nanos);
            match (next_key, newest_pending) {
                (Some(key), Some(pending)) if key < pending => break,
                (None, _) => break,
                _ => {}
            }
            let (_, table) = self.next_table.take().expect("peeked above");
            let (service, start, end) = (self.service.as_deref(), self.start_nanos, self.end_nanos);
            match self
                .segments
                .read(table.table, |sealed| read_rows(sealed, service, start, end))?
            {
                BlockRead::Read(rows) => self.pending.extend(rows.into_iter().map(Pending)),
                // Skipped, reported: its traces are missing from the search.
                BlockRead::Damaged => self.damaged = true,
                // Retention dropped the table's segment since its key was read.
                BlockRead::Gone => {}
            }
        }
        Ok(self.pending.pop().map(|p| p.0))
    }
}

impl Iterator for Candidates<'_> {
    type Item = Result<SearchCandidate>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(candidate) => candidate.map(Ok),
            Err(error) => {
                // Stop after reporting: the index cannot be trusted further.
                self.keys_done = true;
                self.next_table = None;
                self.pending.clear();
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_span;

    #[test]
    fn tables_keep_what_search_needs() {
        let mut a = sample_span(1, 1, "order");
        a.start_unix_nano = 5_000_000;
        a.end_unix_nano = 5_001_500;
        let mut b = sample_span(1, 2, "payment");
        b.start_unix_nano = 5_000_100;
        b.end_unix_nano = 5_000_200;
        let spans = vec![a.clone(), b];
        let tables = build_tables([(&[1u8; 16], spans.as_slice())]).unwrap();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].services, vec!["order", "payment"]);
        assert_eq!(tables[0].min_start_nanos, 5_000_000);
        assert_eq!(tables[0].max_start_nanos, 5_000_100);

        let rows = read_rows(&tables[0].bytes, Some("order"), 0, u64::MAX).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].start_nanos, 5_000_000);
        let op = &rows[0].entry.operations[0];
        assert_eq!(op.name, a.name);
        // 1.5 µs is widened to [1 µs, 2 µs].
        assert_eq!(
            (op.min_duration_nanos, op.max_duration_nanos),
            (1_000, 2_000)
        );
        assert!(
            read_rows(&tables[0].bytes, Some("order"), 5_000_001, u64::MAX)
                .unwrap()
                .is_empty()
        );
        assert!(
            read_rows(&tables[0].bytes, Some("gateway"), 0, u64::MAX)
                .unwrap()
                .is_empty()
        );
        // Every service's row without one.
        let all = read_rows(&tables[0].bytes, None, 0, u64::MAX).unwrap();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn rows_of_different_hours_go_to_different_tables() {
        let mut a = sample_span(1, 1, "order");
        a.start_unix_nano = 10;
        let mut b = sample_span(2, 1, "order");
        b.start_unix_nano = index::HOUR_NANOS + 10;
        let (a, b) = (vec![a], vec![b]);
        let tables =
            build_tables([(&[1u8; 16], a.as_slice()), (&[2u8; 16], b.as_slice())]).unwrap();
        assert_eq!(tables.len(), 2);
        assert!(
            tables
                .iter()
                .all(|t| hour_of(t.min_start_nanos) == hour_of(t.max_start_nanos))
        );
    }
}
