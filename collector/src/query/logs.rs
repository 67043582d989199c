//! Log search over the partitions of the log store: newest-first pages with
//! exact cursors, histograms split by severity, facet counts, all logs of a
//! trace, and "what arrived since" for live tail.
//!
//! Order is by (timestamp, id), id being unique and increasing with arrival,
//! so ties never reorder between pages. Time ranges of partitions are
//! disjoint, so a page is filled from the newest range down and stops as
//! soon as it is full; the several partitions of one range (see
//! `store::logs`) overlap in time, and their matches are merged.

use std::collections::HashMap;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;

use tantivy::collector::{Collector, Count, SegmentCollector, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, Occur, Query, QueryParserError, RangeQuery, TermQuery,
};
use tantivy::query_grammar::{self, Delimiter, UserInputAst, UserInputLeaf, UserInputLiteral};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocAddress, DocId, Score, Searcher, SegmentOrdinal, SegmentReader, Term};

use strand_promql::LogField;

use crate::model::{LogRecord, TraceId};
use crate::query::pool::{Deadline, QueryRefused};
use crate::store::StoreError;
use crate::store::logs::schema::VALUE_SEPARATOR;
use crate::store::logs::{LEVELS, LogFields, LogStore, Partition, record_of};

/// Most records one trace's log view returns.
const MAX_TRACE_LOGS: usize = 10_000;

/// Why a log query failed.
#[derive(Debug, thiserror::Error)]
pub enum LogQueryError {
    #[error("invalid query: {0}")]
    Syntax(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Refused(#[from] QueryRefused),
}

impl From<tantivy::TantivyError> for LogQueryError {
    fn from(error: tantivy::TantivyError) -> Self {
        LogQueryError::Store(error.into())
    }
}

type QueryResult<T> = Result<T, LogQueryError>;

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

/// A log search: query text in tantivy syntax (empty: everything) over a
/// time range, in nanoseconds.
#[derive(Clone, Debug)]
pub struct LogQuery {
    pub text: String,
    pub start_nanos: u64,
    pub end_nanos: u64,
    /// Which end of the range a search starts from.
    pub order: Order,
    /// Checked before each partition is searched.
    pub deadline: Deadline,
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
    fn key(self, (time, id): (u64, u64)) -> (u64, u64) {
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

impl LogQuery {
    /// The query with its time range, parsed once for every partition.
    fn compile(&self, store: &LogStore) -> QueryResult<CompiledQuery> {
        let text = self.text.trim();
        let matches: Box<dyn Query> = if text.is_empty() || text == "*" {
            Box::new(AllQuery)
        } else {
            check_complexity(text)?;
            let (query, errors) = store.build_query(parse(text)?);
            if let Some(error) = errors.into_iter().next() {
                return Err(LogQueryError::Syntax(explain(error)));
            }
            query
        };
        let fields = store.fields();
        let range = RangeQuery::new(
            Bound::Included(Term::from_field_u64(fields.timestamp, self.start_nanos)),
            Bound::Included(Term::from_field_u64(fields.timestamp, self.end_nanos)),
        );
        let within_range = BooleanQuery::new(vec![
            (Occur::Must, matches.box_clone()),
            (Occur::Must, Box::new(range)),
        ]);
        Ok(CompiledQuery {
            matches,
            within_range,
            start_nanos: self.start_nanos,
            end_nanos: self.end_nanos,
        })
    }
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
        let mut inside = true;
        for segment in searcher.segment_readers() {
            let timestamps = segment.fast_fields().u64("timestamp")?;
            inside &= self.start_nanos <= timestamps.min_value()
                && timestamps.max_value() <= self.end_nanos;
        }
        if inside {
            searcher.search(&*self.matches, collector)
        } else {
            searcher.search(&self.within_range, collector)
        }
    }
}

/// The fields a query names, for error messages.
const FIELDS: &str = "the fields are service, severity (trace, debug, info, warn, error, \
     fatal), body, trace_id, span_id, attributes.<key>, resource.<key> and attribute_keys \
     (records that have an attribute: attribute_keys:order_id); words without a field search \
     the message and the attribute values";

/// Fields queried by their whole name (the rest are `attributes.*` and
/// `resource.*` paths).
const PLAIN_FIELDS: [&str; 6] = [
    "service",
    "severity",
    "body",
    "trace_id",
    "span_id",
    "attribute_keys",
];

/// Parses query text, refusing what would only confuse (unknown fields,
/// regular expressions) with a message that says what to write instead,
/// and rewrites what tantivy takes differently: `word*` is a prefix, and a
/// group of nothing but exclusions (`NOT service:gateway`) excludes from
/// every record.
fn parse(text: &str) -> QueryResult<UserInputAst> {
    let ast = query_grammar::parse_query(text).map_err(|_| {
        let (_, errors) = query_grammar::parse_query_lenient(text);
        LogQueryError::Syntax(match errors.first() {
            Some(error) => format!(
                "{} at character {}; quote phrases (\"card declined\") and values with spaces or \
                 colons (attributes.url:\"http://x\")",
                error.message,
                error.pos + 1
            ),
            None => "the query cannot be read; quote phrases (\"card declined\")".into(),
        })
    })?;
    interpret(ast)
}

fn interpret(ast: UserInputAst) -> QueryResult<UserInputAst> {
    Ok(match ast {
        UserInputAst::Clause(children) => {
            let mut children = children
                .into_iter()
                .map(|(occur, child)| Ok((occur, interpret(child)?)))
                .collect::<QueryResult<Vec<_>>>()?;
            if !children.is_empty()
                && children
                    .iter()
                    .all(|(occur, _)| *occur == Some(Occur::MustNot))
            {
                children.push((
                    Some(Occur::Must),
                    UserInputAst::Leaf(Box::new(UserInputLeaf::All)),
                ));
            }
            UserInputAst::Clause(children)
        }
        UserInputAst::Boost(inner, boost) => {
            UserInputAst::Boost(Box::new(interpret(*inner)?), boost)
        }
        UserInputAst::Leaf(leaf) => UserInputAst::Leaf(Box::new(interpret_leaf(*leaf)?)),
    })
}

fn interpret_leaf(leaf: UserInputLeaf) -> QueryResult<UserInputLeaf> {
    match leaf {
        UserInputLeaf::Literal(literal) => {
            let field = literal.field_name.as_deref();
            check_field(field, &literal.phrase)?;
            let star = literal.phrase.contains('*');
            if literal.delimiter != Delimiter::None || !(literal.prefix || star) {
                return Ok(UserInputLeaf::Literal(literal));
            }
            let stem = literal.phrase.trim_end_matches('*');
            if stem.is_empty() || stem.contains('*') {
                return Err(LogQueryError::Syntax(format!(
                    "'{}': a * works only at the end of a word, as a prefix (service:pay*)",
                    literal.phrase
                )));
            }
            let field = field.unwrap_or("body");
            // Terms of these fields are stored as written; the others lowercased.
            let stem = match field {
                "service" | "attribute_keys" => stem.to_string(),
                _ => stem.to_lowercase(),
            };
            Ok(UserInputLeaf::Regex {
                field: Some(field.to_string()),
                pattern: format!("{}.*", regex_escape(&stem)),
            })
        }
        UserInputLeaf::Range { ref field, .. } | UserInputLeaf::Set { ref field, .. } => {
            check_field(field.as_deref(), "...")?;
            Ok(leaf)
        }
        UserInputLeaf::Exists { field } => match field.strip_prefix("attributes.") {
            // Whether a record has an attribute is in attribute_keys.
            Some(key) => Ok(UserInputLeaf::Literal(UserInputLiteral {
                field_name: Some("attribute_keys".into()),
                phrase: key.into(),
                delimiter: Delimiter::DoubleQuotes,
                slop: 0,
                prefix: false,
            })),
            None if field == "service" || field == "severity" => {
                Ok(UserInputLeaf::Exists { field })
            }
            None => {
                check_field(Some(&field), "*")?;
                Err(LogQueryError::Syntax(format!(
                    "{field}:* (has a value) works for attributes.<key>; every record has a \
                     service and a severity"
                )))
            }
        },
        UserInputLeaf::Regex { .. } => Err(LogQueryError::Syntax(
            "regular expressions (/.../) are not supported; write word* for a prefix".into(),
        )),
        UserInputLeaf::All => Ok(UserInputLeaf::All),
    }
}

/// Refuses a field that does not exist, saying which do and what the
/// query probably meant (`level:error` is `severity:error`).
fn check_field(field: Option<&str>, value: &str) -> QueryResult<()> {
    let Some(field) = field else { return Ok(()) };
    let path = |prefix: &str| field.strip_prefix(prefix).is_some_and(|p| !p.is_empty());
    if PLAIN_FIELDS.contains(&field) || path("attributes.") || path("resource.") {
        return Ok(());
    }
    let lower = field.to_lowercase();
    let meant = match lower.as_str() {
        "level" | "lvl" | "loglevel" | "log.level" | "severity_text" | "severity_number"
        | "priority" => Some("severity"),
        "message" | "msg" | "text" | "log" | "content" => Some("body"),
        "svc" | "app" | "service_name" | "service.name" | "servicename" => Some("service"),
        "trace" | "traceid" | "trace.id" | "trace-id" => Some("trace_id"),
        "span" | "spanid" | "span.id" | "span-id" => Some("span_id"),
        _ => PLAIN_FIELDS.iter().copied().find(|f| *f == lower),
    };
    let hint = match meant {
        Some(meant) => format!("did you mean {meant}:{value}?"),
        None if matches!(lower.as_str(), "time" | "timestamp" | "@timestamp" | "date") => {
            "choose the time window in the header instead".to_string()
        }
        None => format!("for an attribute, write attributes.{field}:{value}"),
    };
    Err(LogQueryError::Syntax(format!(
        "there is no field '{field}': {hint} ({FIELDS})"
    )))
}

/// `text` with the characters a regular expression treats specially escaped.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// What tantivy's refusal of a checked query means, in the user's terms.
fn explain(error: QueryParserError) -> String {
    match error {
        QueryParserError::UnsupportedQuery(why) if why.contains("Regex") => {
            "a prefix (word*) works on the message, service, severity, trace_id, span_id and \
             attribute_keys, not on attribute values: search the whole value \
             (attributes.peer:\"pay-1.eu-west\")"
                .into()
        }
        QueryParserError::FieldDoesNotExist(field) => {
            format!("there is no field '{field}' ({FIELDS})")
        }
        QueryParserError::FieldNotIndexed(field) => {
            format!("the field '{field}' cannot be searched ({FIELDS})")
        }
        QueryParserError::RangeMustNotHavePhrase => {
            "a range [a TO b] takes single words or numbers as its bounds".into()
        }
        other => other.to_string(),
    }
}

/// Refuses what tantivy's query parser cannot take safely, so a hostile
/// query gets a 400 instead of a crashed worker: queries nested deeper than
/// its recursion can take on a thread's stack (the same limits as PromQL's;
/// the syntaxes quote and nest alike), and control characters, which
/// tantivy reserves as separators in attribute paths (a field name holding
/// one tripped an assertion inside it).
fn check_complexity(text: &str) -> QueryResult<()> {
    use strand_promql::{MAX_NESTING, MAX_OPERATORS};
    if let Some(control) = text.chars().find(|c| c.is_control() && !c.is_whitespace()) {
        return Err(LogQueryError::Syntax(format!(
            "queries cannot contain control characters (found U+{:04X})",
            u32::from(control)
        )));
    }
    let (depth, operators) = strand_promql::nesting(text);
    let words = text.split_whitespace().count();
    if depth > MAX_NESTING || operators > MAX_OPERATORS || words > MAX_OPERATORS {
        return Err(LogQueryError::Syntax(format!(
            "query too complex: at most {MAX_NESTING} levels of parentheses and {MAX_OPERATORS} operators or terms are accepted"
        )));
    }
    Ok(())
}

/// Checks query syntax without running it (for endpoints that stream).
pub fn validate(store: &LogStore, text: &str) -> QueryResult<()> {
    LogQuery {
        text: text.into(),
        start_nanos: 0,
        end_nanos: 0,
        order: Order::NewestFirst,
        deadline: Deadline::never(),
    }
    .compile(store)
    .map(|_| ())
}

/// The first `limit` matches in the query's order past `cursor` (or from
/// the start): the newest older than the cursor, or the oldest newer.
pub fn search(
    store: &LogStore,
    query: &LogQuery,
    limit: usize,
    cursor: Option<Cursor>,
) -> QueryResult<LogPage> {
    let compiled = query.compile(store)?;
    let fields = *store.fields();
    let order = query.order;
    let before = cursor.map(|c| order.key((c.time_unix_nano, c.id)));
    let mut total = 0;
    let mut damaged = false;
    // A record whose doc store block is damaged keeps its place (`None`), so
    // pages and cursors stay where they would be without the damage.
    let mut hits: Vec<((u64, u64), Option<LogHit>)> = Vec::new();
    let mut partitions = store.partitions_between(query.start_nanos, query.end_nanos);
    if order == Order::OldestFirst {
        partitions.reverse();
    }
    for range in partitions.chunk_by(|a, b| a.start_nanos == b.start_nanos) {
        let wanted = limit.saturating_sub(hits.len());
        // The range's best `wanted` across its partitions, in order.
        let mut found = Vec::new();
        for partition in range {
            query.deadline.check()?;
            let part = in_partition(store, partition, |searcher| {
                if wanted == 0 {
                    return Ok((compiled.search(searcher, &Count)? as u64, Vec::new()));
                }
                let top = TopDocs::with_limit(wanted).order_by(move |segment: &SegmentReader| {
                    let keys = SortKeys::new(segment);
                    move |doc: DocId| {
                        let key = order.key(keys.key(doc));
                        // Records at or past the cursor sort below every real key.
                        match before {
                            Some(before) if key >= before => (0, 0),
                            _ => key,
                        }
                    }
                });
                // One pass over the matches both counts and ranks them.
                let (count, top) = compiled.search(searcher, &(Count, top))?;
                Ok((count as u64, top))
            });
            let Some((searcher, (count, top))) = part else {
                damaged = true;
                continue;
            };
            total += count;
            found.extend(
                top.into_iter()
                    .filter(|(key, _)| *key != (0, 0))
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
pub fn arrived_after(
    store: &LogStore,
    text: &str,
    after: u64,
    limit: usize,
) -> QueryResult<Vec<LogHit>> {
    // A poll reads at most `limit` new records: no deadline needed.
    let query = LogQuery {
        text: text.into(),
        start_nanos: 0,
        end_nanos: u64::MAX,
        order: Order::NewestFirst,
        deadline: Deadline::never(),
    };
    let compiled = query.compile(store)?;
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
pub fn last_arrival(store: &LogStore) -> QueryResult<u64> {
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
pub fn resource_keys_and_services(
    store: &LogStore,
    start_nanos: u64,
    end_nanos: u64,
    limit: usize,
) -> QueryResult<(
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
pub fn may_have_key(
    store: &LogStore,
    start_nanos: u64,
    end_nanos: u64,
    key: &str,
) -> QueryResult<bool> {
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
    let records = LogQuery {
        text: format!("attribute_keys:{key}"),
        start_nanos,
        end_nanos,
        order: Order::NewestFirst,
        deadline: Deadline::never(),
    };
    let page = search(store, &records, 0, None)?;
    Ok(page.total > 0 || page.damaged)
}

/// Every log of a trace, oldest first, as a page without a cursor.
pub fn trace_logs(store: &LogStore, trace_id: &TraceId) -> QueryResult<LogPage> {
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
pub fn histogram(store: &LogStore, query: &LogQuery, step_nanos: u64) -> QueryResult<Histogram> {
    let compiled = query.compile(store)?;
    let step_nanos = step_nanos.max(1);
    let start = query.start_nanos - query.start_nanos % step_nanos;
    let buckets = ((query.end_nanos - start) / step_nanos + 1) as usize;
    let collector = HistogramCollector {
        start,
        step: step_nanos,
        buckets,
    };
    let mut counts = vec![[0u64; LEVELS.len()]; buckets];
    let mut damaged = false;
    for partition in store.partitions_between(query.start_nanos, query.end_nanos) {
        query.deadline.check()?;
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
pub fn facets(store: &LogStore, query: &LogQuery, limit: usize) -> QueryResult<Facets> {
    let compiled = query.compile(store)?;
    let mut facets = Facets::default();
    let mut counts: [HashMap<String, u64>; 3] = Default::default();
    let names = ["service", "severity", "attribute_keys"];
    for partition in store.partitions_between(query.start_nanos, query.end_nanos) {
        query.deadline.check()?;
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

/// The number of matches per distinct combination of the values of `by`
/// (at most `max_groups` groups), counted from the fast columns of the
/// partitions that overlap the query's range (service, severity, and an
/// attribute's `key<separator>value` entries in `attribute_keys`), never
/// from stored records. An attribute value that is not a short scalar (see
/// `schema::to_document`) counts as no value.
pub fn count_by(
    store: &LogStore,
    query: &LogQuery,
    by: &[LogField],
    max_groups: usize,
) -> QueryResult<GroupCounts> {
    let collector = GroupCollector {
        by,
        max_groups,
        dense_groups: DENSE_GROUPS,
    };
    count_with(store, query, &collector)
}

/// [`count_by`] with `collector`.
fn count_with(
    store: &LogStore,
    query: &LogQuery,
    collector: &GroupCollector,
) -> QueryResult<GroupCounts> {
    let GroupCollector { by, max_groups, .. } = *collector;
    let compiled = query.compile(store)?;
    let mut counts = GroupCounts::default();
    let mut groups: HashMap<Vec<String>, u64> = HashMap::new();
    for partition in store.partitions_between(query.start_nanos, query.end_nanos) {
        query.deadline.check()?;
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

/// Reads (timestamp, id) of a segment's documents.
struct SortKeys {
    timestamp: Option<tantivy::columnar::Column<u64>>,
    id: Option<tantivy::columnar::Column<u64>>,
}

impl SortKeys {
    fn new(segment: &SegmentReader) -> SortKeys {
        let fast = segment.fast_fields();
        SortKeys {
            timestamp: fast.u64("timestamp").ok(),
            id: fast.u64("id").ok(),
        }
    }

    fn key(&self, doc: DocId) -> (u64, u64) {
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
    use crate::config::Retention;
    use crate::model::{AttrValue, KeyValue, Severity};
    use crate::telemetry::SelfMetrics;

    const HOUR: u64 = 3_600 * 1_000_000_000;
    const BASE: u64 = 1_000 * HOUR;

    fn log(service: &str, at: u64, body: &str, severity: u8, order: i64) -> LogRecord {
        let mut record = sample_log(service, at, body);
        record.severity = Severity(severity);
        record.trace_id = (order % 2 == 0).then_some([order as u8; 16]);
        record.attributes = vec![KeyValue::new("order_id", AttrValue::Int(order))];
        record
    }

    /// A log store with hourly partitions in `dir`.
    fn open(dir: &std::path::Path) -> LogStore {
        open_with(dir, Retention::MAX_FILE_BYTES)
    }

    /// A store whose partitions close at `partition_bytes`.
    fn open_with(dir: &std::path::Path, partition_bytes: u64) -> LogStore {
        LogStore::open(
            dir,
            Duration::from_secs(3600),
            partition_bytes,
            crate::store::logs::schema::HOT_WRITER_BYTES,
            SelfMetrics::new(),
        )
        .unwrap()
    }

    /// Twenty logs over two hours (two partitions), committed.
    fn store() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let records: Vec<LogRecord> = (0..20i64)
            .map(|i| {
                let (service, body, severity) = match i % 4 {
                    0 => ("payment", "card declined for order", 17),
                    1 => ("order", "order created", 9),
                    2 => ("inventory", "stock reserved", 9),
                    _ => ("gateway", "GET /api/orders 200", 13),
                };
                log(service, BASE + i as u64 * HOUR / 10, body, severity, i)
            })
            .collect();
        store.apply(1, records).unwrap();
        store.commit().unwrap();
        (dir, store)
    }

    #[test]
    fn a_key_is_found_in_resources_and_attributes_where_records_have_it() {
        let (_dir, store) = store();
        let everything = (0, u64::MAX);
        assert!(may_have_key(&store, everything.0, everything.1, "order_id").unwrap());
        assert!(!may_have_key(&store, everything.0, everything.1, "level").unwrap());
        // Every sample record has the resource attribute `host.name`, which
        // does not make `host` a key of its own.
        assert!(!may_have_key(&store, everything.0, everything.1, "host").unwrap());
        let resource_keys: Vec<String> = sample_log("a", BASE, "x")
            .resource
            .attributes
            .iter()
            .map(|kv| kv.key.clone())
            .collect();
        for key in &resource_keys {
            assert!(
                may_have_key(&store, everything.0, everything.1, key).unwrap(),
                "{key}"
            );
        }
        // A record of the third hour with a resource attribute `level`.
        let mut leveled = log("payment", BASE + 2 * HOUR + 1, "with a level", 9, 99);
        let mut resource = (*leveled.resource).clone();
        resource
            .attributes
            .push(KeyValue::new("level", AttrValue::Str("warn".into())));
        leveled.resource = std::sync::Arc::new(resource);
        store.apply(2, vec![leveled]).unwrap();
        store.commit().unwrap();
        assert!(may_have_key(&store, BASE + 2 * HOUR, u64::MAX, "level").unwrap());
        assert!(
            !may_have_key(&store, 0, BASE + HOUR, "level").unwrap(),
            "other partitions"
        );
        assert!(!may_have_key(&store, everything.0, everything.1, "leve").unwrap());
    }

    fn query(text: &str) -> LogQuery {
        LogQuery {
            text: text.into(),
            start_nanos: 0,
            end_nanos: u64::MAX,
            order: Order::NewestFirst,
            deadline: Deadline::never(),
        }
    }

    fn orders(page: &LogPage) -> Vec<i64> {
        page.hits
            .iter()
            .map(|h| match h.record.attributes[0].value {
                AttrValue::Int(i) => i,
                _ => -1,
            })
            .collect()
    }

    use std::time::Duration;

    #[test]
    fn term_phrase_field_and_attribute_queries() {
        let (_dir, store) = store();
        let page = search(&store, &query("declined"), 100, None).unwrap();
        assert_eq!(page.total, 5);
        assert_eq!(orders(&page), vec![16, 12, 8, 4, 0], "newest first");
        let phrase = search(&store, &query("\"card declined\""), 100, None).unwrap();
        assert_eq!(phrase.total, 5);
        assert_eq!(
            search(&store, &query("\"declined card\""), 100, None)
                .unwrap()
                .total,
            0
        );
        let field = search(&store, &query("service:order AND severity:info"), 100, None).unwrap();
        assert_eq!(orders(&field), vec![17, 13, 9, 5, 1]);
        let attribute = search(&store, &query("attributes.order_id:13"), 100, None).unwrap();
        assert_eq!(orders(&attribute), vec![13]);
        let resource = search(&store, &query("resource.host.name:h"), 100, None).unwrap();
        assert_eq!(resource.total, 20);
        assert!(matches!(
            search(&store, &query("service:(unclosed"), 10, None),
            Err(LogQueryError::Syntax(_))
        ));
    }

    #[test]
    fn the_query_language_explains_and_rewrites() {
        let (_dir, store) = store();
        let total = |text: &str| search(&store, &query(text), 100, None).unwrap().total;
        // Exclusions alone exclude from everything, at any depth.
        assert_eq!(total("NOT service:gateway"), 15);
        assert_eq!(total("service:order OR (NOT declined)"), 15);
        // word* is a prefix, on raw and on tokenized fields.
        assert_eq!(total("service:pay*"), 5);
        assert_eq!(total("service:inv* OR decl*"), 10);
        // Words without a field find attribute values; attribute_keys whether one is there.
        assert_eq!(total("13"), 1);
        assert_eq!(total("attribute_keys:order_id"), 20);
        assert_eq!(total("attributes.order_id:*"), 20);
        let error = |text: &str| match search(&store, &query(text), 10, None) {
            Err(LogQueryError::Syntax(message)) => message,
            other => panic!("{text}: {other:?}"),
        };
        let level = error("level:error");
        assert!(level.contains("did you mean severity:error?"), "{level}");
        assert!(level.contains("attributes.<key>"), "{level}");
        assert!(error("order_id:4").contains("attributes.order_id:4"));
        assert!(error("attributes.order_id:4*").contains("not on attribute values"));
        assert!(error("service:/pay.*/").contains("regular expressions"));
        assert!(error("service:p*y").contains("only at the end"));
        assert!(error("service:(").contains("at character"));
    }

    #[test]
    fn searches_past_their_deadline_stop_with_a_timeout() {
        let (_dir, store) = store();
        let late = LogQuery {
            deadline: Deadline::after(Duration::ZERO),
            ..query("declined")
        };
        std::thread::sleep(Duration::from_millis(2));
        let timed_out = |result: Result<(), LogQueryError>| {
            matches!(
                result,
                Err(LogQueryError::Refused(QueryRefused::Timeout(_)))
            )
        };
        assert!(timed_out(search(&store, &late, 10, None).map(|_| ())));
        let hours = LogQuery {
            start_nanos: BASE,
            end_nanos: BASE + 2 * HOUR,
            ..late.clone()
        };
        assert!(timed_out(histogram(&store, &hours, HOUR / 10).map(|_| ())));
        assert!(timed_out(facets(&store, &late, 10).map(|_| ())));
        assert!(timed_out(count_by(&store, &late, &[], 10).map(|_| ())));
    }

    #[test]
    fn counts_by_group_come_from_the_columns() {
        use LogField::{Attribute, Service, Severity};
        let (_dir, store) = store();
        let count = |query: &LogQuery, by: &[LogField], max_groups: usize| {
            let mut counted = count_by(&store, query, by, max_groups).unwrap();
            counted.groups.sort();
            counted
        };
        let groups = |text: &str, by: &[LogField]| count(&query(text), by, 100).groups;
        let group = |values: &[&str], n: u64| (values.iter().map(|v| v.to_string()).collect(), n);
        // Without fields: one group, 0 when nothing matches.
        assert_eq!(groups("declined", &[]), vec![group(&[], 5)]);
        assert_eq!(groups("refunded", &[]), vec![group(&[], 0)]);
        assert_eq!(groups("refunded", &[Service]), vec![]);
        assert_eq!(
            groups("", &[Service, Severity]),
            vec![
                group(&["gateway", "warn"], 5),
                group(&["inventory", "info"], 5),
                group(&["order", "info"], 5),
                group(&["payment", "error"], 5),
            ]
        );
        // Across both partitions; a key that is a prefix of the real one
        // (`order` of `order_id`) has no values.
        let order_id = Attribute("order_id".into());
        assert_eq!(
            groups("service:payment", std::slice::from_ref(&order_id)),
            ["0", "12", "16", "4", "8"].map(|v| group(&[v], 1))
        );
        assert_eq!(
            groups("service:payment", &[Attribute("order".into())]),
            vec![group(&[""], 5)]
        );
        // Only the query's time range counts.
        let first_hour = LogQuery {
            start_nanos: BASE,
            end_nanos: BASE + HOUR - 1,
            ..query("declined")
        };
        assert_eq!(count(&first_hour, &[], 10).groups, vec![group(&[], 3)]);
        assert_eq!(
            count(&first_hour, &[Service], 10).groups,
            vec![group(&["payment"], 3)]
        );
        // More groups than allowed are cut, and said to be.
        let cut = count(&query(""), std::slice::from_ref(&order_id), 3);
        assert!(cut.too_many && cut.groups.len() <= 3, "{cut:?}");
        assert!(!count(&query(""), &[Service], 4).too_many);
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
            let mut groups = count_with(&store, &query(""), &sparse).unwrap().groups;
            groups.sort();
            assert_eq!(groups, count(&query(""), &by, 100).groups, "{by:?}");
        }
        let sparse = GroupCollector {
            by: std::slice::from_ref(&order_id),
            max_groups: 3,
            dense_groups: 0,
        };
        assert!(count_with(&store, &query(""), &sparse).unwrap().too_many);
    }

    #[test]
    fn time_range_and_cursor_pages_cover_everything_once() {
        let (_dir, store) = store();
        let mut within = query("");
        within.start_nanos = BASE + 5 * HOUR / 10;
        within.end_nanos = BASE + 14 * HOUR / 10;
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = search(&store, &within, 3, cursor).unwrap();
            assert_eq!(page.total, 10);
            seen.extend(orders(&page));
            match page.next_cursor {
                Some(next) => cursor = Some(Cursor::decode(&next.encode()).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, (5..=14).rev().collect::<Vec<_>>());
    }

    #[test]
    fn a_range_keeps_its_ends_whether_or_not_it_covers_whole_partitions() {
        let (_dir, store) = store();
        // From the first record's time to the last's: both partitions lie
        // inside, so the range is left out of the search.
        let mut range = query("");
        range.start_nanos = BASE;
        range.end_nanos = BASE + 19 * HOUR / 10;
        let page = search(&store, &range, 100, None).unwrap();
        assert_eq!(page.total, 20);
        let counted = |range: &LogQuery| -> u64 {
            let histogram = histogram(&store, range, HOUR).unwrap();
            histogram.buckets.iter().flatten().sum()
        };
        assert_eq!(counted(&range), 20);
        // A nanosecond less at either end leaves those two records out.
        range.start_nanos += 1;
        range.end_nanos -= 1;
        let page = search(&store, &range, 100, None).unwrap();
        assert_eq!(page.total, 18);
        assert_eq!(orders(&page), (1..=18).rev().collect::<Vec<_>>());
        let counts = count_by(&store, &range, &[], 10).unwrap();
        assert_eq!(counts.groups, vec![(Vec::new(), 18)]);
        assert_eq!(counted(&range), 18);
    }

    #[test]
    fn oldest_first_pages_run_forward_from_the_start() {
        let (_dir, store) = store();
        let mut after = query("");
        after.start_nanos = BASE + 5 * HOUR / 10;
        after.order = Order::OldestFirst;
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = search(&store, &after, 4, cursor).unwrap();
            assert_eq!(page.total, 15);
            seen.extend(orders(&page));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, (5..20).collect::<Vec<_>>(), "across both partitions");
    }

    #[test]
    fn an_hour_in_several_partitions_pages_in_time_order_and_replays_once() {
        let dir = tempfile::tempdir().unwrap();
        // Every commit closes its partition: each WAL record below gets one
        // of its own, all four in the same hour.
        let store = open_with(dir.path(), 1);
        // Record `seq` holds times seq, seq + 4, seq + 8, ...: every
        // partition spans the others' times.
        let wal: Vec<(u64, Vec<LogRecord>)> = (1..=4u64)
            .map(|seq| {
                let records = (0..5u64)
                    .map(|i| {
                        let order = (seq + 4 * i) as i64;
                        log(
                            "order",
                            BASE + order as u64 * 1000,
                            "order created",
                            9,
                            order,
                        )
                    })
                    .collect();
                (seq, records)
            })
            .collect();
        for (seq, records) in &wal {
            store.apply(*seq, records.clone()).unwrap();
            store.commit().unwrap();
        }
        assert!(store.partitions_between(0, u64::MAX).len() >= 4);
        let all_pages = |store: &LogStore| {
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = search(store, &query(""), 3, cursor).unwrap();
                assert_eq!(page.total, 20);
                seen.extend(orders(&page));
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            seen
        };
        assert_eq!(all_pages(&store), (1..=20).rev().collect::<Vec<_>>());

        // After a crash the WAL replays every record again: each partition
        // of the hour skips what the hour has committed.
        drop(store);
        let store = open_with(dir.path(), 1);
        for (seq, records) in wal {
            assert_eq!(store.apply(seq, records).unwrap(), 0);
        }
        store.commit().unwrap();
        assert_eq!(all_pages(&store), (1..=20).rev().collect::<Vec<_>>());
    }

    #[test]
    fn histogram_and_facets_add_up() {
        let (_dir, store) = store();
        let all = query("");
        let histogram = histogram(&store, &all, HOUR / 2).unwrap();
        let counted: u64 = histogram.buckets.iter().flatten().sum();
        assert_eq!(counted, 20);
        let errors: u64 = histogram.buckets.iter().map(|b| b[5]).sum();
        assert_eq!(errors, 5);

        let facets = facets(&store, &query("severity:info"), 10).unwrap();
        assert_eq!(facets.total, 10);
        assert_eq!(
            facets.services,
            vec![("inventory".to_string(), 5), ("order".to_string(), 5)]
        );
        assert_eq!(facets.severities, vec![("info".to_string(), 10)]);
        assert_eq!(facets.attributes.len(), 1);
        let order_ids = &facets.attributes[0];
        assert_eq!((order_ids.key.as_str(), order_ids.count), ("order_id", 10));
        assert_eq!(order_ids.values.len(), 10, "ten distinct ids");
        assert!(order_ids.values.iter().all(|(_, count)| *count == 1));
    }

    #[test]
    fn trace_logs_and_arrivals() {
        let (_dir, store) = store();
        let logs = trace_logs(&store, &[4; 16]).unwrap().hits;
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].record.body, "card declined for order");

        let last = last_arrival(&store).unwrap();
        store
            .apply(2, vec![log("payment", BASE, "late refund", 9, 99)])
            .unwrap();
        store.commit().unwrap();
        let arrived = arrived_after(&store, "refund OR declined", last, 10).unwrap();
        assert_eq!(arrived.len(), 1);
        assert_eq!(arrived[0].record.body, "late refund");
    }

    #[test]
    fn replay_never_duplicates_and_retention_drops_old_partitions() {
        let (dir, store) = store();
        drop(store);
        let store = open(dir.path());
        // The WAL replays record 1 again after a crash: already committed.
        store
            .apply(
                1,
                vec![log("payment", BASE, "card declined for order", 17, 0)],
            )
            .unwrap();
        store.commit().unwrap();
        assert_eq!(search(&store, &query(""), 100, None).unwrap().total, 20);

        let retention = Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 0,
        };
        assert_eq!(
            store
                .enforce_retention(retention, BASE + 2 * HOUR + 1)
                .unwrap(),
            1
        );
        let page = search(&store, &query(""), 100, None).unwrap();
        assert_eq!(page.total, 10, "the newer partition stays");
        assert_eq!(orders(&page).last(), Some(&10));
    }
}
