//! Trace search: which traces have a span that matches a query; and the tags
//! the spans of recent traces carry, for a search form to suggest.
//!
//! The semantics are Jaeger's: a trace matches when one of its spans belongs to
//! the service (any service when the query names none — Jaeger requires one), has the operation, lasts within the duration range, starts in
//! the time range and carries every tag (as a span attribute, resource
//! attribute, event attribute or derived tag such as `error=true`).
//!
//! The store's search index narrows the candidates (service and time range from
//! the key, operation and duration from the entry); each candidate trace is then
//! read and checked exactly, so the index may over-approximate but never decides.

use std::collections::{HashMap, HashSet};

use crate::model::{Span, SpanKind, TraceId};
use crate::query::pool::{Deadline, QueryRefused};
use crate::store::{SpanFilter, SpanStore, StoreError};

/// Why a search found nothing to answer with.
#[derive(Debug, thiserror::Error)]
pub enum TraceQueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Refused(#[from] QueryRefused),
}

/// At most this many candidate traces are read per search, so a query whose
/// tags match almost nothing cannot read the whole store.
const MAX_CANDIDATES_READ: usize = 20_000;

/// A trace search, in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceQuery {
    /// `None`: spans of every service.
    pub service: Option<String>,
    pub operation: Option<String>,
    pub span_kind: Option<SpanKind>,
    /// Every pair must match one attribute of the same span.
    pub tags: Vec<(String, String)>,
    pub min_duration_nanos: Option<u64>,
    pub max_duration_nanos: Option<u64>,
    pub start_nanos: u64,
    pub end_nanos: u64,
    pub limit: usize,
    /// Checked before each candidate trace is read.
    pub deadline: Deadline,
}

impl TraceQuery {
    /// The spans the query matches.
    pub fn filter(&self) -> SpanFilter<'_> {
        SpanFilter {
            service: self.service.as_deref(),
            operation: self.operation.as_deref(),
            span_kind: self.span_kind,
            tags: &self.tags,
            min_duration_nanos: self.min_duration_nanos,
            max_duration_nanos: self.max_duration_nanos,
            start_nanos: self.start_nanos,
            end_nanos: self.end_nanos,
        }
    }

    /// Whether one span satisfies the whole query.
    pub fn matches_span(&self, span: &Span) -> bool {
        self.filter().matches(span)
    }
}

/// What a search found.
#[derive(Debug, Default)]
pub struct Found {
    /// Matching traces, newest first.
    pub traces: Vec<Vec<Span>>,
    /// A damaged block or search table was skipped: matching traces (or
    /// spans of the ones found) may be missing.
    pub damaged: bool,
}

/// Matching traces, newest first (by the start of their first span; ties
/// by trace id), at most `query.limit`; whatever damaged storage keeps back
/// is left out, and [`Found::damaged`] says so.
pub fn search(store: &dyn SpanStore, query: &TraceQuery) -> Result<Found, TraceQueryError> {
    search_with(store, query, |spans| {
        spans.iter().any(|span| query.matches_span(span))
    })
}

/// Like [`search`], but a candidate trace (one with a span `query` matches)
/// is kept only when `keep` accepts the whole trace: other query languages
/// (TraceQL) narrow with a `TraceQuery` and decide on the trace.
pub fn search_with(
    store: &dyn SpanStore,
    query: &TraceQuery,
    mut keep: impl FnMut(&[Span]) -> bool,
) -> Result<Found, TraceQueryError> {
    let mut seen = HashSet::new();
    let mut found = Found::default();
    let read_trace =
        |found: &mut Found, trace_id: &TraceId| -> Result<Vec<Span>, TraceQueryError> {
            query.deadline.check()?;
            let read = store.trace(trace_id)?;
            found.damaged |= read.damaged;
            Ok(read.spans)
        };
    let filter = query.filter();
    for trace_id in store.buffered_traces_matching(&|span| filter.matches(span)) {
        if seen.insert(trace_id) {
            let spans = read_trace(&mut found, &trace_id)?;
            if keep(&spans) {
                found.traces.push(spans);
            }
        }
    }
    // Index candidates come newest first: once `limit` of them matched, every
    // later one is older than all of those.
    let (mut read, mut matched) = (0, 0);
    let mut candidates = store.search_candidates(&filter);
    for trace_id in candidates.by_ref() {
        if matched >= query.limit || read >= MAX_CANDIDATES_READ {
            break;
        }
        let trace_id = trace_id?;
        if !seen.insert(trace_id) {
            continue;
        }
        read += 1;
        let spans = read_trace(&mut found, &trace_id)?;
        if spans.iter().any(|s| filter.matches(s)) && keep(&spans) {
            matched += 1;
            found.traces.push(spans);
        }
    }
    found.damaged |= candidates.damaged();
    // Ties go by trace id, so a trace that is still in this node's memory
    // and one already flushed (or on another node) sort the same anywhere.
    found.traces.sort_by_cached_key(|spans| {
        let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
        (std::cmp::Reverse(start), spans.first().map(|s| s.trace_id))
    });
    found.traces.truncate(query.limit);
    Ok(found)
}

/// At most this many tag keys are suggested: the most frequent.
pub const MAX_TAG_KEYS: usize = 100;
/// At most this many values per key are suggested: the most frequent.
pub const MAX_TAG_VALUES: usize = 10;
/// Longer values (bodies, SQL) are never suggested: nobody types them.
const MAX_TAG_VALUE_CHARS: usize = 80;

/// One tag key of a service's spans and its most frequent values.
#[derive(Debug, PartialEq)]
pub struct TagValues {
    pub key: String,
    pub values: Vec<String>,
}

/// The tags (span, resource and derived, as a search matches them) of the
/// spans of `service` (of every service with `None`) in `traces`, most
/// frequent first, bounded by [`MAX_TAG_KEYS`] and [`MAX_TAG_VALUES`], so
/// a search form can suggest what the data has rather than guess names.
pub fn tag_values(traces: &[Vec<Span>], service: Option<&str>) -> Vec<TagValues> {
    /// How many spans carry a key, and each of its values.
    #[derive(Default)]
    struct Seen {
        spans: usize,
        values: HashMap<String, usize>,
    }
    let mut counts: HashMap<String, Seen> = HashMap::new();
    let spans = traces
        .iter()
        .flatten()
        .filter(|span| service.is_none_or(|s| s == span.service()));
    for span in spans {
        let derived = span.derived_tags();
        let tags = span
            .attributes
            .iter()
            .chain(span.resource.attributes.iter())
            .chain(derived.iter());
        for kv in tags {
            let seen = counts.entry(kv.key.to_string()).or_default();
            seen.spans += 1;
            let value = kv.value.to_display_string();
            if value.chars().count() <= MAX_TAG_VALUE_CHARS {
                *seen.values.entry(value).or_default() += 1;
            }
        }
    }
    let mut keys: Vec<(String, Seen)> = counts.into_iter().collect();
    keys.sort_by(|a, b| b.1.spans.cmp(&a.1.spans).then_with(|| a.0.cmp(&b.0)));
    keys.truncate(MAX_TAG_KEYS);
    keys.into_iter()
        .map(|(key, seen)| {
            let mut values: Vec<(String, usize)> = seen.values.into_iter().collect();
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            values.truncate(MAX_TAG_VALUES);
            TagValues {
                key,
                values: values.into_iter().map(|(v, _)| v).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_span;
    use crate::model::{AttrValue, KeyValue, StatusCode};
    use crate::store::traces::TraceStore;
    use crate::telemetry::SelfMetrics;

    fn query(service: &str) -> TraceQuery {
        TraceQuery {
            service: Some(service.into()),
            end_nanos: u64::MAX,
            limit: 20,
            ..TraceQuery::default()
        }
    }

    #[test]
    fn span_matching_follows_jaeger() {
        let mut span = sample_span(1, 1, "order");
        span.status_code = StatusCode::Error;
        let q = query("order");
        assert!(q.matches_span(&span));
        assert!(!query("payment").matches_span(&span));

        let with = |f: &dyn Fn(&mut TraceQuery)| {
            let mut q = query("order");
            f(&mut q);
            q.matches_span(&span)
        };
        assert!(with(&|q| q.operation = Some("op-1".into())));
        assert!(!with(&|q| q.operation = Some("op-2".into())));
        assert!(with(
            &|q| q.tags = vec![("http.status_code".into(), "200".into())]
        ));
        assert!(with(&|q| q.tags = vec![("host.name".into(), "h".into())]));
        assert!(with(
            &|q| q.tags = vec![("exception.type".into(), "E".into())]
        ));
        assert!(with(&|q| q.tags = vec![("error".into(), "true".into())]));
        assert!(!with(
            &|q| q.tags = vec![("http.status_code".into(), "500".into())]
        ));
        assert!(with(&|q| q.min_duration_nanos = Some(500)));
        assert!(!with(&|q| q.min_duration_nanos = Some(501)));
        assert!(!with(&|q| q.max_duration_nanos = Some(499)));
        assert!(!with(&|q| q.end_nanos = span.start_unix_nano - 1));
        assert!(with(&|q| q.span_kind = Some(SpanKind::Server)));
        assert!(!with(&|q| q.span_kind = Some(SpanKind::Client)));
    }

    #[test]
    fn no_service_matches_every_service() {
        let span = sample_span(1, 1, "order");
        let mut q = query("payment");
        assert!(!q.matches_span(&span));
        q.service = None;
        assert!(q.matches_span(&span));
    }

    /// The first byte of each found trace's id, in the order found.
    fn first_bytes(store: &TraceStore, query: &TraceQuery) -> Vec<u8> {
        search(store, query)
            .unwrap()
            .traces
            .iter()
            .map(|t| t[0].trace_id[0])
            .collect()
    }

    /// A trace store with a small head, so tests reach blocks quickly.
    fn open_store(dir: &std::path::Path) -> TraceStore {
        TraceStore::open(
            dir,
            1 << 20,
            crate::config::Retention::MAX_FILE_BYTES,
            SelfMetrics::new(),
        )
        .unwrap()
    }

    #[test]
    fn a_search_without_service_finds_each_trace_of_every_service_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let at = |trace: u8, span: u8, service: &str, start: u64| {
            let mut s = sample_span(trace, span, service);
            s.start_unix_nano = start;
            s.end_unix_nano = start + 100;
            s
        };
        // Trace 1 spans two services: one row each in the search table.
        store.apply(
            1,
            vec![
                at(1, 1, "order", 1_000),
                at(1, 2, "payment", 1_050),
                at(2, 1, "payment", 2_000),
            ],
        );
        store.flush().unwrap();
        store.apply(2, vec![at(3, 1, "order", 3_000)]);
        let mut q = query("order");
        q.service = None;
        let ids = first_bytes(&store, &q);
        assert_eq!(ids, vec![3, 2, 1]);
    }

    #[test]
    fn traces_that_start_together_come_in_trace_id_order_wherever_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let at_once = |trace: u8| {
            let mut span = sample_span(trace, 1, "order");
            span.start_unix_nano = 1_000;
            span.end_unix_nano = 1_100;
            span
        };
        store.apply(1, vec![at_once(1), at_once(3)]);
        store.flush().unwrap();
        // Trace 2 is still in memory, which a search reads first.
        store.apply(2, vec![at_once(2)]);
        assert_eq!(first_bytes(&store, &query("order")), vec![1, 2, 3]);
    }

    #[test]
    fn tag_values_are_the_most_frequent_of_the_service() {
        let with = |trace: u8, service: &str, status: i64| {
            let mut span = sample_span(trace, 1, service);
            span.attributes = vec![
                KeyValue::new("http.response.status_code", AttrValue::Int(status)),
                KeyValue::new("db.statement", AttrValue::Str("x".repeat(200).into())),
            ];
            vec![span]
        };
        let traces = vec![
            with(1, "order", 500),
            with(2, "order", 200),
            with(3, "order", 200),
            with(4, "payment", 402),
        ];
        let tags = tag_values(&traces, Some("order"));
        let status = tags
            .iter()
            .find(|t| t.key == "http.response.status_code")
            .unwrap();
        assert_eq!(status.values, vec!["200", "500"]);
        // A long value is no suggestion, but its key is.
        let statement = tags.iter().find(|t| t.key == "db.statement").unwrap();
        assert!(statement.values.is_empty());
        let all = tag_values(&traces, None);
        let status = all
            .iter()
            .find(|t| t.key == "http.response.status_code")
            .unwrap();
        assert_eq!(status.values, vec!["200", "402", "500"]);
        assert!(all.len() <= MAX_TAG_KEYS);
    }

    #[test]
    fn searches_memory_and_blocks_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let make = |trace: u8, start: u64, route: &str| {
            let mut s = sample_span(trace, 1, "order");
            s.start_unix_nano = start;
            s.end_unix_nano = start + 100;
            s.attributes = vec![KeyValue::new("http.route", AttrValue::Str(route.into()))];
            s
        };
        store.apply(1, vec![make(1, 1_000, "/a"), make(2, 2_000, "/b")]);
        store.flush().unwrap();
        store.apply(2, vec![make(3, 3_000, "/a")]);

        let ids = first_bytes(&store, &query("order"));
        assert_eq!(ids, vec![3, 2, 1]);

        let mut q = query("order");
        q.tags = vec![("http.route".into(), "/a".into())];
        let ids = first_bytes(&store, &q);
        assert_eq!(ids, vec![3, 1]);

        q.limit = 1;
        assert_eq!(search(&store, &q).unwrap().traces.len(), 1);

        // A search past its deadline stops before it reads a trace.
        q.deadline = Deadline::after(std::time::Duration::ZERO);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(matches!(
            search(&store, &q),
            Err(TraceQueryError::Refused(QueryRefused::Timeout(_)))
        ));
    }
}
