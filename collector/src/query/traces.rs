//! Trace search: which traces have a span that matches a query.
//!
//! The semantics are Jaeger's: a trace matches when one of its spans belongs to
//! the service, has the operation, lasts within the duration range, starts in
//! the time range and carries every tag (as a span attribute, resource
//! attribute, event attribute or derived tag such as `error=true`).
//!
//! The store's search index narrows the candidates (service and time range from
//! the key, operation and duration from the entry); each candidate trace is then
//! read and checked exactly, so the index may over-approximate but never decides.

use std::collections::HashSet;

use crate::model::{KeyValue, Span, SpanKind, TraceId};
use crate::query::pool::{Deadline, QueryRefused};
use crate::store::StoreError;
use crate::store::traces::{ServiceEntry, TraceStore};

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
    pub service: String,
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
    /// Whether one span satisfies the whole query.
    pub fn matches_span(&self, span: &Span) -> bool {
        let duration = span.duration_nanos();
        span.service() == self.service
            && self.operation.as_ref().is_none_or(|op| *op == span.name)
            && self.span_kind.is_none_or(|kind| kind == span.kind)
            && (self.start_nanos..=self.end_nanos).contains(&span.start_unix_nano)
            && self.min_duration_nanos.is_none_or(|min| duration >= min)
            && self.max_duration_nanos.is_none_or(|max| duration <= max)
            && self
                .tags
                .iter()
                .all(|(key, value)| has_tag(span, key, value))
    }

    /// Whether an index entry can belong to a matching trace (never a false no).
    fn may_match(&self, entry: &ServiceEntry) -> bool {
        entry.operations.iter().any(|op| {
            self.operation.as_ref().is_none_or(|name| *name == op.name)
                && self
                    .min_duration_nanos
                    .is_none_or(|min| op.max_duration_nanos >= min)
                && self
                    .max_duration_nanos
                    .is_none_or(|max| op.min_duration_nanos <= max)
        }) && (!self.wants_error() || entry.error)
    }

    fn wants_error(&self) -> bool {
        self.tags.iter().any(|(k, v)| k == "error" && v == "true")
    }
}

fn has_tag(span: &Span, key: &str, value: &str) -> bool {
    let matches = |kv: &KeyValue| kv.key == key && kv.value.to_display_string() == value;
    span.attributes.iter().any(matches)
        || span.resource.attributes.iter().any(matches)
        || span.events.iter().any(|e| e.attributes.iter().any(matches))
        || span.derived_tags().iter().any(matches)
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

/// Matching traces, newest first (by the start of their first span), at most
/// `query.limit`; whatever damaged storage keeps back is left out, and
/// [`Found::damaged`] says so.
pub fn search(store: &TraceStore, query: &TraceQuery) -> Result<Found, TraceQueryError> {
    let mut seen = HashSet::new();
    let mut found = Found::default();
    let read_trace =
        |found: &mut Found, trace_id: &TraceId| -> Result<Vec<Span>, TraceQueryError> {
            query.deadline.check()?;
            let read = store.trace(trace_id)?;
            found.damaged |= read.damaged;
            Ok(read.spans)
        };
    for trace_id in store.buffered_traces_matching(|span| query.matches_span(span)) {
        if seen.insert(trace_id) {
            let spans = read_trace(&mut found, &trace_id)?;
            found.traces.push(spans);
        }
    }
    // Index candidates come newest first: once `limit` of them matched, every
    // later one is older than all of those.
    let (mut read, mut matched) = (0, 0);
    let mut candidates =
        store.search_candidates(&query.service, query.start_nanos, query.end_nanos);
    for candidate in candidates.by_ref() {
        if matched >= query.limit || read >= MAX_CANDIDATES_READ {
            break;
        }
        let candidate = candidate?;
        if !query.may_match(&candidate.entry) || !seen.insert(candidate.trace_id) {
            continue;
        }
        read += 1;
        let spans = read_trace(&mut found, &candidate.trace_id)?;
        if spans.iter().any(|s| query.matches_span(s)) {
            matched += 1;
            found.traces.push(spans);
        }
    }
    found.damaged |= candidates.damaged();
    found.traces.sort_by_key(|spans| {
        std::cmp::Reverse(spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0))
    });
    found.traces.truncate(query.limit);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_span;
    use crate::model::{AttrValue, StatusCode};
    use crate::telemetry::SelfMetrics;

    fn query(service: &str) -> TraceQuery {
        TraceQuery {
            service: service.into(),
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
    fn searches_memory_and_blocks_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(
            dir.path(),
            1 << 20,
            crate::config::Retention::MAX_FILE_BYTES,
            SelfMetrics::new(),
        )
        .unwrap();
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

        let found = search(&store, &query("order")).unwrap().traces;
        let ids: Vec<u8> = found.iter().map(|t| t[0].trace_id[0]).collect();
        assert_eq!(ids, vec![3, 2, 1]);

        let mut q = query("order");
        q.tags = vec![("http.route".into(), "/a".into())];
        let ids: Vec<u8> = search(&store, &q)
            .unwrap()
            .traces
            .iter()
            .map(|t| t[0].trace_id[0])
            .collect();
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
