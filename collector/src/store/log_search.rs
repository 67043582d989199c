//! The seam between log queries and where records are kept: the embedded
//! tantivy partitions (`store::logs`) or ClickHouse (`store::clickhouse`).
//! Query text is parsed once, above the seam (`query::logs`), and each
//! backend runs the parsed query its own way; the results, their order and
//! their cursors are defined here so that answers cannot differ by backend.

use std::collections::BTreeSet;
use std::path::Path;

use strand_promql::LogField;
use tantivy::query_grammar::UserInputAst;

use crate::backup::BackupDir;
use crate::config::Retention;
use crate::deadline::Deadline;
use crate::model::{LogRecord, TraceId};
use crate::store::Result;
use crate::store::logs::LEVELS;

/// Most records one trace's log view returns.
pub const MAX_TRACE_LOGS: usize = 10_000;

/// The fields a query names, for error messages.
pub const QUERY_FIELDS: &str = "the fields are service, severity (trace, debug, info, warn, \
     error, fatal), body, trace_id, span_id, attributes.<key>, resource.<key> and \
     attribute_keys (records that have an attribute: attribute_keys:order_id); words without a \
     field search the message and the attribute values";

/// Why a prefix (`word*`) on an attribute or resource value is refused.
pub const NO_PREFIX_ON_VALUES: &str = "a prefix (word*) works on the message, service, \
     severity, trace_id, span_id and attribute_keys, not on attribute values: search the whole \
     value (attributes.peer:\"pay-1.eu-west\")";

/// The regex leaf the query layer writes a prefix (`stem*`) as: tantivy
/// runs it on the terms; other backends read the stem back with
/// [`prefix_stem`].
pub fn prefix_pattern(stem: &str) -> String {
    format!("{}.*", regex_escape(stem))
}

/// The stem of a [`prefix_pattern`]; `None` for any other pattern.
pub fn prefix_stem(pattern: &str) -> Option<String> {
    let escaped = pattern.strip_suffix(".*")?;
    let mut stem = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        stem.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(stem)
}

/// `text` with the characters a regular expression treats specially
/// escaped.
pub fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Where log records are kept: the embedded tantivy store or ClickHouse.
/// The write path and every log query (the explorer, LogQL, `count_logs`)
/// see only this.
///
/// Records reach it once durable, in WAL order; a commit makes what was
/// applied searchable (and durable in the backend), and the store records
/// the WAL sequence number through which it has every record, so the WAL is
/// trimmed and replayed against it and a replay never duplicates a record.
pub trait LogRecordStore: Send + Sync {
    /// The WAL sequence number through which every record is committed:
    /// the replay skips records up to it.
    fn durable_through(&self) -> u64;
    /// Adds the durable records of WAL record `seq` (in sequence order);
    /// returns how many were new.
    fn apply(&self, seq: u64, records: Vec<LogRecord>) -> Result<usize>;
    /// Whether the store holds as many uncommitted records in memory as it
    /// may (while its backend cannot take them): ingest then answers
    /// "retry" instead of growing memory without bound.
    fn is_full(&self) -> bool;
    /// Makes every applied record searchable and durable; returns how many
    /// partitions or inserts that took. On an error what was applied stays
    /// to be committed next time.
    fn commit(&self) -> Result<usize>;
    /// Drops records past the retention limits; returns how many
    /// partitions went.
    fn enforce_retention(&self, retention: Retention, now_nanos: u64) -> Result<usize>;
    /// Writes what a restart would find into `relative` under `backup`.
    fn snapshot(&self, backup: &mut BackupDir, relative: &Path) -> Result<()>;

    /// Whether the backend can run `filter`'s query (a refusal is
    /// `StoreError::BadQuery`, saying why).
    fn check(&self, filter: &LogFilter) -> Result<()>;
    /// The first `limit` matches in the filter's order past `cursor` (or
    /// from the start): the newest older than the cursor, or the oldest
    /// newer. `total` counts every match in the range.
    fn search(&self, filter: &LogFilter, limit: usize, cursor: Option<Cursor>) -> Result<LogPage>;
    /// Matches that arrived after the record with id `after` (any
    /// timestamp), in arrival order, at most `limit`: what live tail polls
    /// for.
    fn arrived_after(&self, filter: &LogFilter, after: u64, limit: usize) -> Result<Vec<LogHit>>;
    /// The id of the newest arrival, where a new tail starts.
    fn last_arrival(&self) -> Result<u64>;
    /// The resource attribute keys (nested paths joined by `.`) and the
    /// services of records in (or near) `[start, end]`, at most `limit` of
    /// each; the flag is set when a list was cut there.
    fn resource_keys_and_services(
        &self,
        start_nanos: u64,
        end_nanos: u64,
        limit: usize,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>, bool)>;
    /// Whether a record of `[start, end]` may have an attribute or a
    /// resource attribute named `key` (true when unknown).
    fn may_have_key(&self, start_nanos: u64, end_nanos: u64, key: &str) -> Result<bool>;
    /// Every log of a trace (at most [`MAX_TRACE_LOGS`]), oldest first, as a
    /// page without a cursor.
    fn trace_logs(&self, trace_id: &TraceId) -> Result<LogPage>;
    /// Counts of matches per bucket of `step` nanoseconds from the filter's
    /// start rounded down to a step.
    fn histogram(&self, filter: &LogFilter, step_nanos: u64) -> Result<Histogram>;
    /// Top `limit` services, severities and attribute keys among the
    /// matches, and each key's top `limit` values.
    fn facets(&self, filter: &LogFilter, limit: usize) -> Result<Facets>;
    /// The number of matches per distinct combination of the values of `by`
    /// (at most `max_groups` groups). An attribute value that is not a
    /// short scalar counts as no value.
    fn count_by(
        &self,
        filter: &LogFilter,
        by: &[LogField],
        max_groups: usize,
    ) -> Result<GroupCounts>;
    /// How many storage units (partitions, days) a read of `[start, end]`
    /// touches: Loki's "chunks" statistic.
    fn units_between(&self, start_nanos: u64, end_nanos: u64) -> usize;
}

/// A parsed log query over a time range, as every backend takes it.
#[derive(Clone, Debug)]
pub struct LogFilter {
    /// The query, checked and rewritten by `query::logs` (`word*` is a
    /// regex leaf of `<field>` with pattern `<escaped stem>.*`; a group of
    /// nothing but exclusions also holds `All`); `None` matches every
    /// record.
    pub matches: Option<UserInputAst>,
    pub start_nanos: u64,
    pub end_nanos: u64,
    /// Which end of the range a search starts from.
    pub order: Order,
    /// Checked before each partition or round trip.
    pub deadline: Deadline,
}

/// Where a page ended: the (timestamp, id) of its last record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub time_unix_nano: u64,
    pub id: u64,
}

impl Cursor {
    /// The opaque form handed to clients.
    pub fn encode(self) -> String {
        format!("{:x}-{:x}", self.time_unix_nano, self.id)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let (time, id) = text.split_once('-')?;
        Some(Cursor {
            time_unix_nano: u64::from_str_radix(time, 16).ok()?,
            id: u64::from_str_radix(id, 16).ok()?,
        })
    }
}

/// The order of a search's pages: newest first (the explorer), or oldest
/// first (the records just after a given time, as around a record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    NewestFirst,
    OldestFirst,
}

impl Order {
    /// The key a page keeps the highest of, from a record's (timestamp,
    /// id): itself, or inverted for oldest first. Its own inverse.
    pub(crate) fn key(self, (time, id): (u64, u64)) -> (u64, u64) {
        match self {
            Order::NewestFirst => (time, id),
            Order::OldestFirst => (u64::MAX - time, u64::MAX - id),
        }
    }
}

/// A stored record with its id (what cursors and tail positions refer to).
#[derive(Clone, Debug)]
pub struct LogHit {
    pub id: u64,
    pub record: LogRecord,
}

/// One page of results.
#[derive(Debug)]
pub struct LogPage {
    pub hits: Vec<LogHit>,
    /// Matches in the whole range, not just this page.
    pub total: u64,
    /// Set when more matches are older than this page.
    pub next_cursor: Option<Cursor>,
    /// Damaged storage was skipped: matches may be missing.
    pub damaged: bool,
}

/// Counts per time bucket, by severity level (indexed like `LEVELS`).
#[derive(Debug)]
pub struct Histogram {
    pub start_nanos: u64,
    pub step_nanos: u64,
    pub buckets: Vec<[u64; LEVELS.len()]>,
    /// A damaged partition was skipped: counts may be short.
    pub damaged: bool,
}

/// Top values for the facet sidebar.
#[derive(Debug, Default)]
pub struct Facets {
    pub total: u64,
    pub services: Vec<(String, u64)>,
    pub severities: Vec<(String, u64)>,
    /// The most common attribute keys, each with its top values.
    pub attributes: Vec<AttributeFacet>,
    /// A damaged partition was skipped: counts may be short.
    pub damaged: bool,
}

/// One attribute key among the matches: how many have it, and its most
/// common (short, scalar) values with their counts.
#[derive(Debug, PartialEq, Eq)]
pub struct AttributeFacet {
    pub key: String,
    pub count: u64,
    pub values: Vec<(String, u64)>,
}

/// Matches per group, for PromQL's `count_logs`.
#[derive(Debug, Default)]
pub struct GroupCounts {
    /// Each group's values (in the order of the fields asked for; empty
    /// where a record has none) and its number of matches. Without fields,
    /// one group without values; otherwise only groups with matches.
    pub groups: Vec<(Vec<String>, u64)>,
    /// There were more groups than asked for at most: counting stopped
    /// there, and `groups` is incomplete.
    pub too_many: bool,
    /// A damaged partition was skipped: counts may be short.
    pub damaged: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_pattern_gives_its_stem_back() {
        for stem in ["pay", "pay-1.eu", r"a\b*c"] {
            assert_eq!(prefix_stem(&prefix_pattern(stem)).as_deref(), Some(stem));
        }
        assert_eq!(prefix_pattern("pay-1"), r"pay\-1.*");
        assert_eq!(prefix_stem("pay"), None);
    }
}
