//! Log queries in their text form: parsing and checking the query
//! language (tantivy's, with the rewrites and refusals below), then
//! running it on whichever [`LogRecordStore`] keeps the records.
//!
//! Order is by (timestamp, id), id being unique and increasing with arrival,
//! so ties never reorder between pages and cursors are exact.

use std::collections::BTreeSet;

use tantivy::query::Occur;
use tantivy::query_grammar::{self, Delimiter, UserInputAst, UserInputLeaf, UserInputLiteral};

use strand_promql::LogField;

use crate::model::TraceId;
use crate::query::pool::{Deadline, QueryRefused};
use crate::store::StoreError;
pub use crate::store::log_search::{
    Cursor, Facets, GroupCounts, Histogram, LogFilter, LogHit, LogPage, LogRecordStore, Order,
};
use crate::store::log_search::{QUERY_FIELDS, prefix_pattern};

/// Why a log query failed.
#[derive(Debug, thiserror::Error)]
pub enum LogQueryError {
    #[error("invalid query: {0}")]
    Syntax(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Refused(#[from] QueryRefused),
}

impl From<StoreError> for LogQueryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::BadQuery(why) => LogQueryError::Syntax(why),
            StoreError::Refused(refused) => LogQueryError::Refused(refused),
            other => LogQueryError::Store(other),
        }
    }
}

type QueryResult<T> = Result<T, LogQueryError>;

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

impl LogQuery {
    /// The query parsed and checked, as the stores take it.
    fn filter(&self) -> QueryResult<LogFilter> {
        let text = self.text.trim();
        let matches = if text.is_empty() || text == "*" {
            None
        } else {
            check_complexity(text)?;
            Some(parse(text)?)
        };
        Ok(LogFilter {
            matches,
            start_nanos: self.start_nanos,
            end_nanos: self.end_nanos,
            order: self.order,
            deadline: self.deadline,
        })
    }
}

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
                pattern: prefix_pattern(&stem),
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
        "there is no field '{field}': {hint} ({QUERY_FIELDS})"
    )))
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
pub fn validate(store: &dyn LogRecordStore, text: &str) -> QueryResult<()> {
    let query = LogQuery {
        text: text.into(),
        start_nanos: 0,
        end_nanos: 0,
        order: Order::NewestFirst,
        deadline: Deadline::never(),
    };
    Ok(store.check(&query.filter()?)?)
}

/// The first `limit` matches in the query's order past `cursor` (or from
/// the start): the newest older than the cursor, or the oldest newer.
pub fn search(
    store: &dyn LogRecordStore,
    query: &LogQuery,
    limit: usize,
    cursor: Option<Cursor>,
) -> QueryResult<LogPage> {
    Ok(store.search(&query.filter()?, limit, cursor)?)
}

/// Matches of `text` that arrived after the record with id `after` (any
/// timestamp), in arrival order, at most `limit`: what live tail polls for.
pub fn arrived_after(
    store: &dyn LogRecordStore,
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
    Ok(store.arrived_after(&query.filter()?, after, limit)?)
}

/// The id of the newest arrival, where a new tail starts.
pub fn last_arrival(store: &dyn LogRecordStore) -> QueryResult<u64> {
    Ok(store.last_arrival()?)
}

/// The resource attribute keys and services of `[start, end]`, at most
/// `limit` of each (the flag is set when a list was cut there).
pub fn resource_keys_and_services(
    store: &dyn LogRecordStore,
    start_nanos: u64,
    end_nanos: u64,
    limit: usize,
) -> QueryResult<(BTreeSet<String>, BTreeSet<String>, bool)> {
    Ok(store.resource_keys_and_services(start_nanos, end_nanos, limit)?)
}

/// Whether a record of `[start, end]` may have an attribute or a resource
/// attribute named `key`.
pub fn may_have_key(
    store: &dyn LogRecordStore,
    start_nanos: u64,
    end_nanos: u64,
    key: &str,
) -> QueryResult<bool> {
    Ok(store.may_have_key(start_nanos, end_nanos, key)?)
}

/// Every log of a trace, oldest first, as a page without a cursor.
pub fn trace_logs(store: &dyn LogRecordStore, trace_id: &TraceId) -> QueryResult<LogPage> {
    Ok(store.trace_logs(trace_id)?)
}

/// Counts of matches per bucket of `step` nanoseconds from the query start.
pub fn histogram(
    store: &dyn LogRecordStore,
    query: &LogQuery,
    step_nanos: u64,
) -> QueryResult<Histogram> {
    Ok(store.histogram(&query.filter()?, step_nanos)?)
}

/// Top `limit` services, severities and attribute keys among the matches,
/// and each key's top `limit` values.
pub fn facets(store: &dyn LogRecordStore, query: &LogQuery, limit: usize) -> QueryResult<Facets> {
    Ok(store.facets(&query.filter()?, limit)?)
}

/// The number of matches per distinct combination of the values of `by`
/// (at most `max_groups` groups), for PromQL's `count_logs` and LogQL's
/// metric queries.
pub fn count_by(
    store: &dyn LogRecordStore,
    query: &LogQuery,
    by: &[LogField],
    max_groups: usize,
) -> QueryResult<GroupCounts> {
    Ok(store.count_by(&query.filter()?, by, max_groups)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_log;
    use crate::config::Retention;
    use crate::model::LogRecord;
    use crate::model::{AttrValue, KeyValue, Severity};
    use crate::store::logs::LogStore;

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
        LogStore::open_hourly(dir, partition_bytes)
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
            .map(|kv| kv.key.to_string())
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
