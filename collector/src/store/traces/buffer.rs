//! Spans a span store holds in memory before its durable tier has them: the
//! head (queryable at once) and the flush in progress, plus the names of
//! every service and operation seen. Both span stores — the embedded one
//! and ClickHouse — buffer this way, so both answer with acknowledged spans
//! the moment they are acknowledged, and a failed flush puts its spans back.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use crate::codec;
use crate::model::{IdMap, Span, SpanKind, TraceId};
use crate::telemetry::SelfMetrics;

#[derive(Default)]
struct Head {
    traces: IdMap<TraceId, Vec<Span>>,
    spans: usize,
    /// Highest WAL sequence number applied.
    max_seq: u64,
    /// The resources and scopes of its spans, each value once.
    shared: codec::Shared,
}

/// A head being flushed: still visible to queries until the flush ends.
pub(crate) struct Flushing {
    pub traces: IdMap<TraceId, Vec<Span>>,
    pub spans: usize,
    /// The WAL sequence number through which the flush covers every span.
    pub max_seq: u64,
}

/// service -> operation -> span kinds seen.
#[derive(Default)]
struct Names {
    operations: BTreeMap<String, BTreeMap<String, BTreeSet<SpanKind>>>,
}

impl Names {
    fn contains(&self, service: &str, operation: &str, kind: SpanKind) -> bool {
        self.operations
            .get(service)
            .and_then(|ops| ops.get(operation))
            .is_some_and(|kinds| kinds.contains(&kind))
    }

    fn insert(&mut self, service: &str, operation: &str, kind: SpanKind) {
        self.operations
            .entry(service.to_string())
            .or_default()
            .entry(operation.to_string())
            .or_default()
            .insert(kind);
    }
}

/// See the module docs.
pub(crate) struct SpanBuffer {
    head: Mutex<Head>,
    flushing: RwLock<Option<Arc<Flushing>>>,
    names: RwLock<Names>,
    metrics: SelfMetrics,
}

impl SpanBuffer {
    pub fn new(metrics: SelfMetrics) -> SpanBuffer {
        SpanBuffer {
            head: Mutex::new(Head::default()),
            flushing: RwLock::new(None),
            names: RwLock::new(Names::default()),
            metrics,
        }
    }

    /// Adds durable spans to the head. Called in WAL sequence order.
    pub fn apply(&self, seq: u64, mut spans: Vec<Span>) {
        self.note_names(spans.iter().map(|s| (s.service(), s.name.as_str(), s.kind)));
        let mut head = self.head.lock().expect("not poisoned");
        head.shared.share(&mut spans);
        head.spans += spans.len();
        head.max_seq = head.max_seq.max(seq);
        for span in spans {
            head.traces.entry(span.trace_id).or_default().push(span);
        }
        self.metrics.head_spans.set(head.spans as i64);
    }

    /// Spans held in memory (head and any flush in progress): what ingest
    /// checks to keep memory bounded.
    pub fn buffered_spans(&self) -> usize {
        let head = self.head.lock().expect("not poisoned").spans;
        let flushing = self
            .flushing
            .read()
            .expect("not poisoned")
            .as_ref()
            .map_or(0, |f| f.spans);
        head + flushing
    }

    /// Spans in the head, without the flush in progress.
    pub fn head_spans(&self) -> usize {
        self.head.lock().expect("not poisoned").spans
    }

    /// Remembers `(service, operation, kind)` names, from spans applied or
    /// found in the durable tier.
    pub fn note_names<'a>(&self, seen: impl Iterator<Item = (&'a str, &'a str, SpanKind)>) {
        let new: HashSet<(&str, &str, SpanKind)> = {
            let names = self.names.read().expect("not poisoned");
            seen.filter(|(service, operation, kind)| !names.contains(service, operation, *kind))
                .collect()
        };
        if new.is_empty() {
            return;
        }
        let mut names = self.names.write().expect("not poisoned");
        for (service, operation, kind) in new {
            names.insert(service, operation, kind);
        }
    }

    /// Services that sent spans, sorted.
    pub fn services(&self) -> Vec<String> {
        let names = self.names.read().expect("not poisoned");
        names.operations.keys().cloned().collect()
    }

    /// Operations (span names) of a service with their span kinds, sorted.
    pub fn operations(&self, service: &str) -> Vec<(String, SpanKind)> {
        let names = self.names.read().expect("not poisoned");
        names
            .operations
            .get(service)
            .into_iter()
            .flatten()
            .flat_map(|(name, kinds)| kinds.iter().map(|kind| (name.clone(), *kind)))
            .collect()
    }

    /// Starts a flush: the head becomes the flush in progress (still read
    /// by queries) and a new head takes spans. `None` when the head is
    /// empty. End it with [`SpanBuffer::end_flush`].
    pub fn begin_flush(&self) -> Option<Arc<Flushing>> {
        let mut head = self.head.lock().expect("not poisoned");
        if head.traces.is_empty() {
            return None;
        }
        let head = std::mem::take(&mut *head);
        let flushing = Arc::new(Flushing {
            traces: head.traces,
            spans: head.spans,
            max_seq: head.max_seq,
        });
        *self.flushing.write().expect("not poisoned") = Some(flushing.clone());
        self.metrics.head_spans.set(0);
        Some(flushing)
    }

    /// Ends the flush [`SpanBuffer::begin_flush`] started: a written flush
    /// is dropped from memory, a failed one goes back into the head so that
    /// nothing acknowledged is lost and the next flush retries it.
    pub fn end_flush(&self, flushing: Arc<Flushing>, written: bool) {
        drop(flushing);
        if written {
            *self.flushing.write().expect("not poisoned") = None;
            return;
        }
        // The head's lock first, as readers take them.
        let mut head = self.head.lock().expect("not poisoned");
        let Some(flushing) = self.flushing.write().expect("not poisoned").take() else {
            return;
        };
        let flushing = Arc::try_unwrap(flushing).unwrap_or_else(|shared| Flushing {
            traces: shared.traces.clone(),
            spans: shared.spans,
            max_seq: shared.max_seq,
        });
        head.spans += flushing.spans;
        head.max_seq = head.max_seq.max(flushing.max_seq);
        for (trace_id, mut spans) in flushing.traces {
            head.traces.entry(trace_id).or_default().append(&mut spans);
        }
        self.metrics.head_spans.set(head.spans as i64);
    }

    /// Adds the buffered spans of `trace_id` to `spans`. Read before the
    /// durable tier: a flush moves spans from here to there, never back
    /// once written, so reading in that order cannot miss one.
    pub fn read_trace(&self, trace_id: &TraceId, spans: &mut Vec<Span>) {
        self.visit(|traces| {
            if let Some(buffered) = traces.get(trace_id) {
                spans.extend(buffered.iter().cloned());
            }
        });
    }

    /// Ids of buffered traces with a span that satisfies `matches`.
    pub fn traces_matching(&self, matches: &dyn Fn(&Span) -> bool) -> Vec<TraceId> {
        let mut ids = HashSet::new();
        self.visit(|traces| {
            ids.extend(
                traces
                    .iter()
                    .filter(|(_, spans)| spans.iter().any(matches))
                    .map(|(id, _)| *id),
            )
        });
        ids.into_iter().collect()
    }

    /// Shows `visit` the head and then the flush in progress, holding the
    /// head's lock throughout: a flush cannot move spans from one to the
    /// other (either way) between the two looks.
    fn visit(&self, mut visit: impl FnMut(&IdMap<TraceId, Vec<Span>>)) {
        let head = self.head.lock().expect("not poisoned");
        visit(&head.traces);
        if let Some(flushing) = self.flushing.read().expect("not poisoned").as_ref() {
            visit(&flushing.traces);
        }
    }
}

/// The spans of one trace as a store answers them: each span once (a client
/// retrying an export sends spans twice), in start order.
pub(crate) fn settle_trace(spans: &mut Vec<Span>) {
    let mut seen = HashSet::new();
    spans.retain(|s| seen.insert(s.span_id));
    spans.sort_by_key(|s| (s.start_unix_nano, s.span_id));
}
