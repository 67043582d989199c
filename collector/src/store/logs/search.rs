//! Queries over the tantivy partitions: newest-first pages with exact
//! cursors, histograms split by severity, facet counts, all logs of a
//! trace, and "what arrived since" for live tail — the embedded side of
//! [`LogRecordStore`].
//!
//! Order is by (timestamp, id), id being unique and increasing with arrival,
//! so ties never reorder between pages. Time ranges of partitions are
//! disjoint, so a page is filled from the newest range down and stops as
//! soon as it is full; the several partitions of one range (see the module
//! docs of `store::logs`) overlap in time, and their matches are merged.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use tantivy::collector::{Collector, Count, SegmentCollector, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, Occur, Query, QueryParserError, RangeQuery, TermQuery,
};
use tantivy::query_grammar::{Delimiter, UserInputAst, UserInputLeaf, UserInputLiteral};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocAddress, DocId, Score, Searcher, SegmentOrdinal, SegmentReader, Term};

use strand_promql::LogField;

use super::schema::VALUE_SEPARATOR;
use super::time_order::PageRequest;
use super::{LEVELS, LogFields, LogStore, Partition, record_of};
use crate::backup::BackupDir;
use crate::config::Retention;
use crate::deadline::Deadline;
use crate::model::{LogRecord, TraceId};
use crate::store::log_search::{
    AttributeFacet, Cursor, Facets, GroupCounts, Histogram, LogFilter, LogHit, LogPage,
    LogRecordStore, MAX_TRACE_LOGS, NO_PREFIX_ON_VALUES, Order, QUERY_FIELDS,
};
use crate::store::{Result, StoreError};

impl LogRecordStore for LogStore {
    fn durable_through(&self) -> u64 {
        LogStore::durable_through(self)
    }

    fn apply(&self, seq: u64, records: Vec<LogRecord>) -> Result<usize> {
        LogStore::apply(self, seq, records)
    }

    /// Never: the log feed holds a bounded queue and tantivy's writers a
    /// bounded memory budget.
    fn is_full(&self) -> bool {
        false
    }

    fn commit(&self) -> Result<usize> {
        LogStore::commit(self)
    }

    fn enforce_retention(&self, retention: Retention, now_nanos: u64) -> Result<usize> {
        LogStore::enforce_retention(self, retention, now_nanos)
    }

    fn snapshot(&self, backup: &mut BackupDir, relative: &Path) -> Result<()> {
        LogStore::snapshot(self, backup, relative)
    }

    fn check(&self, filter: &LogFilter) -> Result<()> {
        compile(self, filter).map(|_| ())
    }

    fn search(&self, filter: &LogFilter, limit: usize, cursor: Option<Cursor>) -> Result<LogPage> {
        search(self, filter, limit, cursor)
    }

    fn arrived_after(&self, filter: &LogFilter, after: u64, limit: usize) -> Result<Vec<LogHit>> {
        arrived_after(self, filter, after, limit)
    }

    fn last_arrival(&self) -> Result<u64> {
        last_arrival(self)
    }

    fn resource_keys_and_services(
        &self,
        start_nanos: u64,
        end_nanos: u64,
        limit: usize,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>, bool)> {
        resource_keys_and_services(self, start_nanos, end_nanos, limit)
    }

    fn may_have_key(&self, start_nanos: u64, end_nanos: u64, key: &str) -> Result<bool> {
        may_have_key(self, start_nanos, end_nanos, key)
    }

    fn trace_logs(&self, trace_id: &TraceId) -> Result<LogPage> {
        trace_logs(self, trace_id)
    }

    fn histogram(&self, filter: &LogFilter, step_nanos: u64) -> Result<Histogram> {
        histogram(self, filter, step_nanos)
    }

    fn facets(&self, filter: &LogFilter, limit: usize) -> Result<Facets> {
        facets(self, filter, limit)
    }

    fn count_by(
        &self,
        filter: &LogFilter,
        by: &[LogField],
        max_groups: usize,
    ) -> Result<GroupCounts> {
        count_by(self, filter, by, max_groups)
    }

    fn units_between(&self, start_nanos: u64, end_nanos: u64) -> usize {
        self.partitions_between(start_nanos, end_nanos).len()
    }
}

/// The tantivy query of `filter`, with and without its time range.
fn compile(store: &LogStore, filter: &LogFilter) -> Result<CompiledQuery> {
    let matches: Box<dyn Query> = match &filter.matches {
        None => Box::new(AllQuery),
        Some(ast) => {
            let (query, errors) = store.build_query(ast.clone());
            if let Some(error) = errors.into_iter().next() {
                return Err(StoreError::BadQuery(explain(error)));
            }
            query
        }
    };
    let fields = store.fields();
    let range = RangeQuery::new(
        Bound::Included(Term::from_field_u64(fields.timestamp, filter.start_nanos)),
        Bound::Included(Term::from_field_u64(fields.timestamp, filter.end_nanos)),
    );
    let within_range = BooleanQuery::new(vec![
        (Occur::Must, matches.box_clone()),
        (Occur::Must, Box::new(range)),
    ]);
    Ok(CompiledQuery {
        matches,
        within_range,
        start_nanos: filter.start_nanos,
        end_nanos: filter.end_nanos,
    })
}

/// A parsed query, with and without its time range.
struct CompiledQuery {
    matches: Box<dyn Query>,
    within_range: BooleanQuery,
    start_nanos: u64,
    end_nanos: u64,
}

impl CompiledQuery {
    /// Runs the query on `searcher`. Where every record the searcher holds
    /// lies in the time range (each segment's timestamp column records its
    /// least and greatest value), the range is left out: it costs a look at
    /// the timestamp of every match, the bulk of a term query over a
    /// partition the range covers whole.
    fn search<C: Collector>(
        &self,
        searcher: &Searcher,
        collector: &C,
    ) -> tantivy::Result<C::Fruit> {
        searcher.search(self.query_for(searcher)?, collector)
    }

    /// The query to run on `searcher`: without the time range where it
    /// covers every record (see [`CompiledQuery::search`]).
    fn query_for(&self, searcher: &Searcher) -> tantivy::Result<&dyn Query> {
        let mut inside = true;
        for segment in searcher.segment_readers() {
            let timestamps = segment.fast_fields().u64("timestamp")?;
            inside &= self.start_nanos <= timestamps.min_value()
                && timestamps.max_value() <= self.end_nanos;
        }
        Ok(if inside {
            &*self.matches
        } else {
            &self.within_range
        })
    }
}

/// What tantivy's refusal of a checked query means, in the user's terms.
fn explain(error: QueryParserError) -> String {
    match error {
        QueryParserError::UnsupportedQuery(why) if why.contains("Regex") => {
            NO_PREFIX_ON_VALUES.into()
        }
        QueryParserError::FieldDoesNotExist(field) => {
            format!("there is no field '{field}' ({QUERY_FIELDS})")
        }
        QueryParserError::FieldNotIndexed(field) => {
            format!("the field '{field}' cannot be searched ({QUERY_FIELDS})")
        }
        QueryParserError::RangeMustNotHavePhrase => {
            "a range [a TO b] takes single words or numbers as its bounds".into()
        }
        other => other.to_string(),
    }
}

/// The first `limit` matches in the query's order past `cursor` (or from
/// the start): the newest older than the cursor, or the oldest newer.
fn search(
    store: &LogStore,
    filter: &LogFilter,
    limit: usize,
    cursor: Option<Cursor>,
) -> Result<LogPage> {
    let compiled = compile(store, filter)?;
    let fields = *store.fields();
    let order = filter.order;
    let before = cursor.map(|c| order.key((c.time_unix_nano, c.id)));
    let mut total = 0;
    let mut damaged = false;
    // A record whose doc store block is damaged keeps its place (`None`), so
    // pages and cursors stay where they would be without the damage.
    let mut hits: Vec<((u64, u64), Option<LogHit>)> = Vec::new();
    let mut partitions = store.partitions_between(filter.start_nanos, filter.end_nanos);
    if order == Order::OldestFirst {
        partitions.reverse();
    }
    for range in partitions.chunk_by(|a, b| a.start_nanos == b.start_nanos) {
        let wanted = limit.saturating_sub(hits.len());
        // The range's best `wanted` across its partitions, in order.
        let mut found = Vec::new();
        for partition in range {
            filter.deadline.check()?;
            let part = in_partition(store, partition, |searcher| {
                let query = compiled.query_for(searcher)?;
                // Alone, a count is the postings' length for a term query.
                let count = searcher.search(query, &Count)? as u64;
                if wanted == 0 {
                    return Ok((count, Vec::new()));
                }
                let request = PageRequest {
                    query,
                    start_nanos: filter.start_nanos,
                    end_nanos: filter.end_nanos,
                    order,
                    wanted,
                    below: before,
                };
                Ok((count, partition.time_runs.top(searcher, &request)?))
            });
            let Some((searcher, (count, top))) = part else {
                damaged = true;
                continue;
            };
            total += count;
            found.extend(
                top.into_iter()
                    .map(|(key, address)| (key, address, partition, searcher.clone())),
            );
        }
        found.sort_by_key(|(key, ..)| std::cmp::Reverse(*key));
        found.truncate(wanted);
        for (key, address, partition, searcher) in found {
            let key = order.key(key);
            let hit = load_hit(store, partition, &searcher, &fields, address, key.1);
            damaged |= hit.is_none();
            hits.push((key, hit));
        }
    }
    let next_cursor = (hits.len() == limit && limit > 0)
        .then(|| hits.last())
        .flatten()
        .map(|((time_unix_nano, id), _)| Cursor {
            time_unix_nano: *time_unix_nano,
            id: *id,
        });
    Ok(LogPage {
        hits: hits.into_iter().filter_map(|(_, hit)| hit).collect(),
        total,
        next_cursor,
        damaged,
    })
}

/// Matches that arrived after the record with id `after` (any timestamp), in
/// arrival order, at most `limit`: what live tail polls for.
fn arrived_after(
    store: &LogStore,
    filter: &LogFilter,
    after: u64,
    limit: usize,
) -> Result<Vec<LogHit>> {
    let compiled = compile(store, filter)?;
    let fields = *store.fields();
    let mut hits = Vec::new();
    for partition in store.partitions_between(0, u64::MAX) {
        // Oldest arrival first: invert the id so the top keys are the lowest.
        let top = TopDocs::with_limit(limit).order_by(move |segment: &SegmentReader| {
            let keys = SortKeys::new(segment);
            move |doc: DocId| {
                let (_, id) = keys.key(doc);
                if id > after { u64::MAX - id } else { 0 }
            }
        });
        // The tail shows what is readable; damage is reported by the store.
        let Some((searcher, top)) = in_partition(store, &partition, |s| compiled.search(s, &top))
        else {
            continue;
        };
        for (key, address) in top {
            if key != 0 {
                hits.extend(load_hit(
                    store,
                    &partition,
                    &searcher,
                    &fields,
                    address,
                    u64::MAX - key,
                ));
            }
        }
    }
    hits.sort_by_key(|hit| hit.id);
    hits.truncate(limit);
    Ok(hits)
}

/// The id of the newest arrival, where a new tail starts.
fn last_arrival(store: &LogStore) -> Result<u64> {
    let mut last = 0;
    for partition in store.partitions_between(0, u64::MAX) {
        let top = TopDocs::with_limit(1).order_by(move |segment: &SegmentReader| {
            let keys = SortKeys::new(segment);
            move |doc: DocId| keys.key(doc).1
        });
        if let Some((_, top)) = in_partition(store, &partition, |s| s.search(&AllQuery, &top)) {
            for (id, _) in top {
                last = last.max(id);
            }
        }
    }
    Ok(last)
}

/// The resource attribute keys (nested paths joined by `.`) and the
/// services of the partitions overlapping `[start, end]`, from their term
/// dictionaries — no record is read; at most `limit` of each (the second
/// value is true when a list was cut there).
fn resource_keys_and_services(
    store: &LogStore,
    start_nanos: u64,
    end_nanos: u64,
    limit: usize,
) -> Result<(
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<String>,
    bool,
)> {
    use std::collections::BTreeSet;
    let fields = *store.fields();
    let mut keys = BTreeSet::new();
    let mut services = BTreeSet::new();
    let mut cut = false;
    for partition in store.partitions_between(start_nanos, end_nanos) {
        let read = in_partition(store, &partition, |searcher| {
            let mut found = (BTreeSet::new(), BTreeSet::new(), false);
            for segment in searcher.segment_readers() {
                // A JSON term is path, 0, type, value; the path's segments
                // are separated by 1.
                let index = segment.inverted_index(fields.resource)?;
                let mut terms = index.terms().stream()?;
                while terms.advance() {
                    let term = terms.key();
                    let path = term.split(|b| *b == 0).next().unwrap_or_default();
                    let key = String::from_utf8_lossy(path).replace('\u{1}', ".");
                    if found.0.len() >= limit && !found.0.contains(&key) {
                        found.2 = true;
                        break;
                    }
                    found.0.insert(key);
                }
                let index = segment.inverted_index(fields.service)?;
                let mut terms = index.terms().stream()?;
                while terms.advance() {
                    if found.1.len() >= limit {
                        found.2 = true;
                        break;
                    }
                    found
                        .1
                        .insert(String::from_utf8_lossy(terms.key()).into_owned());
                }
            }
            Ok(found)
        });
        if let Some((_, (k, s, c))) = read {
            keys.extend(k);
            services.extend(s);
            cut |= c;
        }
        if keys.len() > limit || services.len() > limit {
            cut = true;
            break;
        }
    }
    Ok((keys, services, cut))
}

/// Whether a record of `[start, end]` may have an attribute or a top-level
/// resource attribute named `key`: from the resource term dictionaries of
/// the partitions overlapping the range (a seek, no record read) and the
/// records' attribute names. True when damage leaves it unknown.
fn may_have_key(store: &LogStore, start_nanos: u64, end_nanos: u64, key: &str) -> Result<bool> {
    let fields = *store.fields();
    // A JSON term is path (its segments, the key's dotted parts, separated
    // by 1), 0, type, value: the terms of `key` lie between path 0 and path 1.
    let path = key.replace('.', "\u{1}");
    let (from, to) = (
        [path.as_bytes(), &[0]].concat(),
        [path.as_bytes(), &[1]].concat(),
    );
    for partition in store.partitions_between(start_nanos, end_nanos) {
        let found = in_partition(store, &partition, |searcher| {
            for segment in searcher.segment_readers() {
                let index = segment.inverted_index(fields.resource)?;
                if index
                    .terms()
                    .range()
                    .ge(&from)
                    .lt(&to)
                    .into_stream()?
                    .advance()
                {
                    return Ok(true);
                }
            }
            Ok(false)
        });
        if found.is_none_or(|(_, found)| found) {
            return Ok(true);
        }
    }
    let records = LogFilter {
        matches: Some(UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(
            UserInputLiteral {
                field_name: Some("attribute_keys".into()),
                phrase: key.into(),
                delimiter: Delimiter::DoubleQuotes,
                slop: 0,
                prefix: false,
            },
        )))),
        start_nanos,
        end_nanos,
        order: Order::NewestFirst,
        deadline: Deadline::never(),
    };
    let page = search(store, &records, 0, None)?;
    Ok(page.total > 0 || page.damaged)
}

/// Every log of a trace, oldest first, as a page without a cursor.
fn trace_logs(store: &LogStore, trace_id: &TraceId) -> Result<LogPage> {
    let fields = *store.fields();
    let query = TermQuery::new(
        Term::from_field_text(fields.trace_id, &hex::encode(trace_id)),
        IndexRecordOption::Basic,
    );
    let mut hits = Vec::new();
    let mut damaged = false;
    for partition in store.partitions_between(0, u64::MAX) {
        let top = TopDocs::with_limit(MAX_TRACE_LOGS).order_by(|segment: &SegmentReader| {
            let keys = SortKeys::new(segment);
            move |doc: DocId| keys.key(doc)
        });
        let Some((searcher, top)) = in_partition(store, &partition, |s| s.search(&query, &top))
        else {
            damaged = true;
            continue;
        };
        for (key, address) in top {
            match load_hit(store, &partition, &searcher, &fields, address, key.1) {
                Some(hit) => hits.push((key, hit)),
                None => damaged = true,
            }
        }
    }
    hits.sort_by_key(|(key, _)| *key);
    hits.truncate(MAX_TRACE_LOGS);
    Ok(LogPage {
        total: hits.len() as u64,
        hits: hits.into_iter().map(|(_, hit)| hit).collect(),
        next_cursor: None,
        damaged,
    })
}

/// Counts of matches per bucket of `step` nanoseconds from the query start.
fn histogram(store: &LogStore, filter: &LogFilter, step_nanos: u64) -> Result<Histogram> {
    let compiled = compile(store, filter)?;
    let step_nanos = step_nanos.max(1);
    let start = filter.start_nanos - filter.start_nanos % step_nanos;
    let buckets = ((filter.end_nanos - start) / step_nanos + 1) as usize;
    let collector = HistogramCollector {
        start,
        step: step_nanos,
        buckets,
    };
    let mut counts = vec![[0u64; LEVELS.len()]; buckets];
    let mut damaged = false;
    for partition in store.partitions_between(filter.start_nanos, filter.end_nanos) {
        filter.deadline.check()?;
        let Some((_, partials)) =
            in_partition(store, &partition, |s| compiled.search(s, &collector))
        else {
            damaged = true;
            continue;
        };
        for (bucket, partial) in partials.into_iter().enumerate() {
            for (level, count) in partial.iter().enumerate() {
                counts[bucket][level] += count;
            }
        }
    }
    Ok(Histogram {
        start_nanos: start,
        step_nanos,
        buckets: counts,
        damaged,
    })
}

/// Top `limit` services, severities and attribute keys among the matches,
/// and each key's top `limit` values; all counted from fast columns.
fn facets(store: &LogStore, filter: &LogFilter, limit: usize) -> Result<Facets> {
    let compiled = compile(store, filter)?;
    let mut facets = Facets::default();
    let mut counts: [HashMap<String, u64>; 3] = Default::default();
    let names = ["service", "severity", "attribute_keys"];
    for partition in store.partitions_between(filter.start_nanos, filter.end_nanos) {
        filter.deadline.check()?;
        let collector = (
            Count,
            TermCounts(names[0]),
            TermCounts(names[1]),
            TermCounts(names[2]),
        );
        let Some((_, (total, services, severities, keys))) =
            in_partition(store, &partition, |s| compiled.search(s, &collector))
        else {
            facets.damaged = true;
            continue;
        };
        facets.total += total as u64;
        for (into, from) in counts.iter_mut().zip([services, severities, keys]) {
            for (value, count) in from {
                *into.entry(value).or_default() += count;
            }
        }
    }
    let top = |counts: HashMap<String, u64>| {
        let mut values: Vec<(String, u64)> = counts.into_iter().collect();
        values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        values.truncate(limit);
        values
    };
    let [services, severities, keys] = counts;
    facets.services = top(services);
    facets.severities = top(severities);
    // attribute_keys holds each key, and key<separator>value per value.
    let mut names = HashMap::new();
    let mut values: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for (entry, count) in keys {
        match entry.split_once(VALUE_SEPARATOR) {
            Some((key, value)) => {
                values
                    .entry(key.to_string())
                    .or_default()
                    .insert(value.to_string(), count);
            }
            None => {
                names.insert(entry, count);
            }
        }
    }
    facets.attributes = top(names)
        .into_iter()
        .map(|(key, count)| AttributeFacet {
            values: top(values.remove(&key).unwrap_or_default()),
            key,
            count,
        })
        .collect();
    Ok(facets)
}

/// The number of matches per distinct combination of the values of `by`
/// (at most `max_groups` groups), counted from the fast columns of the
/// partitions that overlap the query's range (service, severity, and an
/// attribute's `key<separator>value` entries in `attribute_keys`), never
/// from stored records. An attribute value that is not a short scalar (see
/// `schema::to_document`) counts as no value.
fn count_by(
    store: &LogStore,
    filter: &LogFilter,
    by: &[LogField],
    max_groups: usize,
) -> Result<GroupCounts> {
    let collector = GroupCollector {
        by,
        max_groups,
        dense_groups: DENSE_GROUPS,
    };
    count_with(store, filter, &collector)
}

/// [`count_by`] with `collector`.
fn count_with(
    store: &LogStore,
    filter: &LogFilter,
    collector: &GroupCollector,
) -> Result<GroupCounts> {
    let GroupCollector { by, max_groups, .. } = *collector;
    let compiled = compile(store, filter)?;
    let mut counts = GroupCounts::default();
    let mut groups: HashMap<Vec<String>, u64> = HashMap::new();
    for partition in store.partitions_between(filter.start_nanos, filter.end_nanos) {
        filter.deadline.check()?;
        let part = in_partition(store, &partition, |searcher| {
            if by.is_empty() {
                let total = compiled.search(searcher, &Count)? as u64;
                Ok((HashMap::from([(Vec::new(), total)]), false))
            } else {
                compiled.search(searcher, collector)
            }
        });
        let Some((_, (found, too_many))) = part else {
            counts.damaged = true;
            continue;
        };
        for (values, count) in found {
            *groups.entry(values).or_default() += count;
        }
        // Too many groups is an error for the caller: no use counting on.
        if too_many || groups.len() > max_groups {
            counts.too_many = true;
            break;
        }
    }
    counts.groups = groups.into_iter().take(max_groups).collect();
    Ok(counts)
}

/// Runs one partition's share of a query on a searcher of it, returning
/// both. Damage tantivy meets there — an error, or a panic from a damaged file
/// it does not check — is reported and costs only that partition's share:
/// `None`.
fn in_partition<T>(
    store: &LogStore,
    partition: &Partition,
    part: impl FnOnce(&Searcher) -> tantivy::Result<T>,
) -> Option<(Searcher, T)> {
    let searcher = partition.searcher();
    match std::panic::catch_unwind(AssertUnwindSafe(|| part(&searcher))) {
        Ok(Ok(found)) => Some((searcher, found)),
        Ok(Err(error)) => {
            store.report_damage(partition, None, &error.to_string());
            None
        }
        Err(_) => {
            store.report_damage(partition, None, "reading the partition panicked");
            None
        }
    }
}

/// The stored record at `address`; `None` (reported) when its doc store
/// block is damaged, which costs only the records of that block.
fn load_hit(
    store: &LogStore,
    partition: &Partition,
    searcher: &Searcher,
    fields: &LogFields,
    address: DocAddress,
    id: u64,
) -> Option<LogHit> {
    let read = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let doc = searcher.doc(address).map_err(|e| e.to_string())?;
        record_of(fields, &doc).ok_or_else(|| "stored log record is undecodable".to_string())
    }))
    .unwrap_or_else(|_| Err("reading the stored record panicked".into()));
    match read {
        Ok(record) => Some(LogHit { id, record }),
        Err(damage) => {
            let segment = searcher.segment_reader(address.segment_ord).segment_id();
            let file = format!("{}.store", segment.uuid_string());
            store.report_damage(partition, Some(&file), &damage);
            None
        }
    }
}

/// Reads the (timestamp, id) a page orders records by.
pub(super) struct SortKeys {
    timestamp: Option<tantivy::columnar::Column<u64>>,
    id: Option<tantivy::columnar::Column<u64>>,
}

impl SortKeys {
    pub(super) fn new(segment: &SegmentReader) -> SortKeys {
        let fast = segment.fast_fields();
        SortKeys {
            timestamp: fast.u64("timestamp").ok(),
            id: fast.u64("id").ok(),
        }
    }

    pub(super) fn key(&self, doc: DocId) -> (u64, u64) {
        let read = |column: &Option<tantivy::columnar::Column<u64>>| {
            column.as_ref().and_then(|c| c.first(doc)).unwrap_or(0)
        };
        (read(&self.timestamp), read(&self.id))
    }
}

struct HistogramCollector {
    start: u64,
    step: u64,
    buckets: usize,
}

struct HistogramSegment {
    start: u64,
    step: u64,
    timestamp: Option<tantivy::columnar::Column<u64>>,
    level: Option<tantivy::columnar::Column<u64>>,
    counts: Vec<[u64; LEVELS.len()]>,
}

impl Collector for HistogramCollector {
    type Fruit = Vec<[u64; LEVELS.len()]>;
    type Child = HistogramSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<HistogramSegment> {
        let fast = segment.fast_fields();
        Ok(HistogramSegment {
            start: self.start,
            step: self.step,
            timestamp: fast.u64("timestamp").ok(),
            level: fast.u64("level").ok(),
            counts: vec![[0; LEVELS.len()]; self.buckets],
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Self::Fruit>) -> tantivy::Result<Self::Fruit> {
        let mut merged = vec![[0; LEVELS.len()]; self.buckets];
        for fruit in fruits {
            for (into, from) in merged.iter_mut().zip(fruit) {
                for (a, b) in into.iter_mut().zip(from) {
                    *a += b;
                }
            }
        }
        Ok(merged)
    }
}

impl SegmentCollector for HistogramSegment {
    type Fruit = Vec<[u64; LEVELS.len()]>;

    fn collect(&mut self, doc: DocId, _: Score) {
        let Some(time) = self.timestamp.as_ref().and_then(|c| c.first(doc)) else {
            return;
        };
        let level = self.level.as_ref().and_then(|c| c.first(doc)).unwrap_or(0) as usize;
        let bucket = (time.saturating_sub(self.start) / self.step) as usize;
        if let Some(counts) = self.counts.get_mut(bucket) {
            counts[level.min(LEVELS.len() - 1)] += 1;
        }
    }

    fn harvest(self) -> Self::Fruit {
        self.counts
    }
}

/// Counts the values of a string fast field among the matches.
struct TermCounts(&'static str);

/// Most values of a segment's column a facet count keeps (see
/// `TermCountsSegment::harvest`).
const SEGMENT_TERMS: usize = 10_000;

struct TermCountsSegment {
    column: Option<tantivy::columnar::StrColumn>,
    counts: HashMap<u64, u64>,
}

impl Collector for TermCounts {
    type Fruit = HashMap<String, u64>;
    type Child = TermCountsSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<TermCountsSegment> {
        Ok(TermCountsSegment {
            column: segment.fast_fields().str(self.0)?,
            counts: HashMap::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Self::Fruit>) -> tantivy::Result<Self::Fruit> {
        let mut merged = HashMap::new();
        for fruit in fruits {
            for (value, count) in fruit {
                *merged.entry(value).or_default() += count;
            }
        }
        Ok(merged)
    }
}

impl SegmentCollector for TermCountsSegment {
    type Fruit = HashMap<String, u64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        if let Some(column) = &self.column {
            for ord in column.term_ords(doc) {
                *self.counts.entry(ord).or_default() += 1;
            }
        }
    }

    fn harvest(self) -> Self::Fruit {
        let Some(column) = self.column else {
            return HashMap::new();
        };
        // Only the most common reach the merge, as a search engine's shard
        // size: bounded whatever the values' cardinality (an attribute key
        // counts at least as often as each of its values, so it is kept
        // whenever one of them is).
        let mut counts: Vec<(u64, u64)> = self.counts.into_iter().collect();
        if counts.len() > SEGMENT_TERMS {
            counts.select_nth_unstable_by(SEGMENT_TERMS, |a, b| b.1.cmp(&a.1));
            counts.truncate(SEGMENT_TERMS);
        }
        let mut values = HashMap::new();
        let mut text = String::new();
        for (ord, count) in counts {
            text.clear();
            if column.ord_to_str(ord, &mut text).unwrap_or(false) {
                values.insert(text.clone(), count);
            }
        }
        values
    }
}

/// Counts matches per combination of the values of some fields.
struct GroupCollector<'a> {
    by: &'a [LogField],
    max_groups: usize,
    /// Most combinations of slots counted in an array (`DENSE_GROUPS`).
    dense_groups: u64,
}

/// Where a segment reads one grouping field's value, as a *slot*: a
/// number below `slots()` standing for one of the values the field has in
/// the segment, or for no value (the last one).
enum GroupColumn {
    /// A single-valued column (service, severity): the slot is the
    /// value's ordinal.
    Whole(Option<tantivy::columnar::StrColumn>),
    /// The entry of `attribute_keys` in `ords`, the ordinals of the terms
    /// that start with `<key><separator>` (the dictionary is sorted),
    /// `prefix` bytes long: the slot is the ordinal's place in `ords`.
    Attribute {
        column: Option<tantivy::columnar::StrColumn>,
        ords: std::ops::Range<u64>,
        prefix: usize,
    },
}

impl GroupColumn {
    fn open(segment: &SegmentReader, field: &LogField) -> tantivy::Result<GroupColumn> {
        let fast = segment.fast_fields();
        Ok(match field {
            LogField::Service => GroupColumn::Whole(fast.str("service")?),
            LogField::Severity => GroupColumn::Whole(fast.str("severity")?),
            LogField::Attribute(key) => {
                let column = fast.str("attribute_keys")?;
                let from = format!("{key}{VALUE_SEPARATOR}");
                let to = format!("{key}{}", char::from(VALUE_SEPARATOR as u8 + 1));
                let ords = match &column {
                    Some(column) => {
                        let (lower, upper) = column
                            .dictionary()
                            .term_bounds_to_ord(Bound::Included(&from), Bound::Excluded(&to))?;
                        let terms = column.num_terms() as u64;
                        let start = match lower {
                            Bound::Included(ord) => ord,
                            Bound::Excluded(ord) => ord.saturating_add(1),
                            Bound::Unbounded => 0,
                        };
                        let end = match upper {
                            Bound::Included(ord) => ord.saturating_add(1),
                            Bound::Excluded(ord) => ord,
                            Bound::Unbounded => terms,
                        };
                        start.min(terms)..end.min(terms)
                    }
                    None => 0..0,
                };
                GroupColumn::Attribute {
                    column,
                    ords,
                    prefix: from.len(),
                }
            }
        })
    }

    /// How many slots there are: the values, and one for none.
    fn slots(&self) -> u64 {
        match self {
            GroupColumn::Whole(column) => column.as_ref().map_or(0, |c| c.num_terms() as u64) + 1,
            GroupColumn::Attribute { ords, .. } => ords.end.saturating_sub(ords.start) + 1,
        }
    }

    /// The slot of `doc`'s value.
    fn slot(&self, doc: DocId) -> u64 {
        let none = self.slots() - 1;
        match self {
            GroupColumn::Whole(column) => column.as_ref().and_then(|c| c.term_ords(doc).next()),
            GroupColumn::Attribute { column, ords, .. } => column.as_ref().and_then(|c| {
                c.term_ords(doc)
                    .find(|ord| ords.contains(ord))
                    .map(|ord| ord - ords.start)
            }),
        }
        .unwrap_or(none)
    }

    /// The value a slot stands for; empty for none.
    fn value(&self, slot: u64) -> String {
        let (column, ord, prefix) = match self {
            GroupColumn::Whole(column) => (column, slot, 0),
            GroupColumn::Attribute {
                column,
                ords,
                prefix,
            } => (column, ords.start + slot, *prefix),
        };
        let mut text = String::new();
        match column {
            Some(column) if slot + 1 < self.slots() => {
                if column.ord_to_str(ord, &mut text).unwrap_or(false) {
                    text.get(prefix..).unwrap_or_default().to_string()
                } else {
                    String::new()
                }
            }
            _ => String::new(),
        }
    }
}

/// Most combinations of slots a segment counts in an array indexed by the
/// combination (services times severities, say) rather than a hash map:
/// no hashing per match, which is most of the cost of grouping.
const DENSE_GROUPS: u64 = 1 << 16;

/// A segment's counts per combination of slots.
enum SlotCounts {
    /// Indexed by the slots as the digits of a number, the first field's
    /// the most significant (radixes: each column's `slots()`).
    Dense(Vec<u64>),
    /// By the slots themselves, for fields with many values.
    Sparse(HashMap<Box<[u64]>, u64>),
}

struct GroupSegment {
    columns: Vec<GroupColumn>,
    counts: SlotCounts,
    max_groups: usize,
    too_many: bool,
    /// The current document's slots, reused.
    key: Vec<u64>,
}

impl Collector for GroupCollector<'_> {
    /// Counts per combination of values, and whether there were too many.
    type Fruit = (HashMap<Vec<String>, u64>, bool);
    type Child = GroupSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<GroupSegment> {
        let columns = self
            .by
            .iter()
            .map(|field| GroupColumn::open(segment, field))
            .collect::<tantivy::Result<Vec<_>>>()?;
        let combinations = columns
            .iter()
            .try_fold(1u64, |product, column| product.checked_mul(column.slots()));
        let counts = match combinations {
            Some(n) if n <= self.dense_groups => SlotCounts::Dense(vec![0; n as usize]),
            _ => SlotCounts::Sparse(HashMap::new()),
        };
        Ok(GroupSegment {
            key: Vec::with_capacity(columns.len()),
            columns,
            counts,
            max_groups: self.max_groups,
            too_many: false,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Self::Fruit>) -> tantivy::Result<Self::Fruit> {
        let mut merged = HashMap::new();
        for (fruit, too_many) in fruits {
            for (values, count) in fruit {
                *merged.entry(values).or_default() += count;
            }
            if too_many || merged.len() > self.max_groups {
                return Ok((HashMap::new(), true));
            }
        }
        Ok((merged, false))
    }
}

impl SegmentCollector for GroupSegment {
    type Fruit = (HashMap<Vec<String>, u64>, bool);

    fn collect(&mut self, doc: DocId, _: Score) {
        match &mut self.counts {
            SlotCounts::Dense(counts) => {
                let index = self
                    .columns
                    .iter()
                    .fold(0, |index, column| index * column.slots() + column.slot(doc));
                counts[index as usize] += 1;
            }
            SlotCounts::Sparse(counts) => {
                self.key.clear();
                self.key
                    .extend(self.columns.iter().map(|column| column.slot(doc)));
                if let Some(count) = counts.get_mut(self.key.as_slice()) {
                    *count += 1;
                } else if counts.len() < self.max_groups {
                    counts.insert(self.key.as_slice().into(), 1);
                } else {
                    self.too_many = true;
                }
            }
        }
    }

    fn harvest(self) -> Self::Fruit {
        if self.too_many {
            // The caller refuses the answer: spare naming the groups.
            return (HashMap::new(), true);
        }
        let columns = &self.columns;
        let values = |slots: &[u64]| -> Vec<String> {
            columns
                .iter()
                .zip(slots)
                .map(|(column, slot)| column.value(*slot))
                .collect()
        };
        let mut too_many = false;
        let counts: HashMap<Vec<String>, u64> = match self.counts {
            SlotCounts::Dense(counts) => {
                let mut slots = vec![0; columns.len()];
                let found = counts.iter().enumerate().filter(|(_, n)| **n > 0);
                too_many = found.clone().count() > self.max_groups;
                found
                    .take(self.max_groups)
                    .map(|(index, count)| {
                        let mut rest = index as u64;
                        for (slot, column) in slots.iter_mut().zip(columns).rev() {
                            *slot = rest % column.slots();
                            rest /= column.slots();
                        }
                        (values(&slots), *count)
                    })
                    .collect()
            }
            SlotCounts::Sparse(counts) => counts
                .iter()
                .map(|(slots, count)| (values(slots), *count))
                .collect(),
        };
        (counts, too_many)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_log;
    use crate::model::{AttrValue, KeyValue, Severity as Level};

    #[test]
    fn groups_counted_in_a_hash_map_are_those_counted_in_an_array() {
        use LogField::{Attribute, Service, Severity};
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open_hourly(dir.path(), Retention::MAX_FILE_BYTES);
        let hour = 3_600 * 1_000_000_000u64;
        let records = (0..20u64)
            .map(|i| {
                let service = ["payment", "order", "inventory", "gateway"][(i % 4) as usize];
                let mut record = sample_log(service, 1_000 * hour + i * hour / 10, "line");
                record.severity = Level([17, 9, 9, 13][(i % 4) as usize]);
                record.attributes = vec![KeyValue::new("order_id", AttrValue::Int(i as i64))];
                record
            })
            .collect();
        store.apply(1, records).unwrap();
        store.commit().unwrap();
        let filter = LogFilter {
            matches: None,
            start_nanos: 0,
            end_nanos: u64::MAX,
            order: Order::NewestFirst,
            deadline: Deadline::never(),
        };
        let order_id = Attribute("order_id".into());
        let count = |by: &[LogField]| {
            let mut groups = count_by(&store, &filter, by, 100).unwrap().groups;
            groups.sort();
            groups
        };
        // Counted in a hash map instead of an array, the groups are the same.
        for by in [
            vec![Service, Severity],
            vec![order_id.clone(), Service],
            vec![Attribute("order".into())],
        ] {
            let sparse = GroupCollector {
                by: &by,
                max_groups: 100,
                dense_groups: 0,
            };
            let mut groups = count_with(&store, &filter, &sparse).unwrap().groups;
            groups.sort();
            assert_eq!(groups, count(&by), "{by:?}");
        }
        let sparse = GroupCollector {
            by: std::slice::from_ref(&order_id),
            max_groups: 3,
            dense_groups: 0,
        };
        assert!(count_with(&store, &filter, &sparse).unwrap().too_many);
        assert_eq!(count(&[Service]).len(), 4);
    }
}
