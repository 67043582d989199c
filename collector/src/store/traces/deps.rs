//! Service-to-service edges derived from spans as they are flushed.
//!
//! An edge is a span whose parent belongs to another service, or a consumer
//! span linked to a (producer) span of another service: messages carry the
//! producer's context as a link, not as a parent, because the consumer runs
//! later and on its own. Parent and child often arrive in different batches,
//! minutes apart, so the tracker remembers the service of recently seen spans
//! and children still waiting for their parent. Both memories are bounded: two
//! generations each, the older dropped when the newer fills up; and both are
//! forgotten, their tables freed, once no span at all arrived for
//! [`QUIET_FORGET_AFTER`], so a quiet daemon holds none of it. What is
//! forgotten (very late parents, a pair split by a minute of silence, and
//! spans seen before a restart) yields no edge — counts are a lower bound,
//! never invented.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{IdMap, Resource, Span, SpanId, SpanKind};

/// Spans remembered as possible callers per generation: 7/8 of 2^20, the
/// most a table of 2^20 buckets holds before it doubles (a full 2^20 would
/// end each generation in a half-empty table of twice the size). An entry
/// takes 13 bytes (id, packed caller, control byte), so a full generation
/// is 13.6 MB.
const RECENT_SPANS_PER_GENERATION: usize = (1 << 20) / 8 * 7;
/// Children waiting for their parent per generation; sized the same way.
const WAITING_CHILDREN_PER_GENERATION: usize = (1 << 17) / 8 * 7;
/// How long the memories last once no span arrives at all: a minute, where
/// Tempo's service graphs wait 10 s for a pair's other half and the
/// OpenTelemetry Collector's connector 2 s. A full generation of callers is
/// 13.6 MB that a quiet daemon would otherwise hold for good.
const QUIET_FORGET_AFTER: Duration = Duration::from_secs(60);
/// Resources whose service name one `observe` remembers by pointer: a
/// linear search, cheaper than hashing the name while the list is short.
const MAX_RESOURCES_BY_POINTER: usize = 16;

/// One observed call from a span of `parent` to a span of `child`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub parent: Arc<str>,
    pub child: Arc<str>,
    /// The call failed: the child span has error status, or the parent span
    /// does and is the call itself (a client or producer span). A parent that
    /// is a whole request handler may fail for reasons of its own, so its
    /// status says nothing about this one call.
    pub failed: bool,
    pub child_start_nanos: u64,
    /// How long the callee took: the child span's duration (the server side
    /// of the call, as the service graph's `server_seconds` measure it).
    pub child_duration_nanos: u64,
}

/// A service name's index in [`DependencyTracker::services`]: the memories
/// hold millions of entries, and an index is a quarter of an `Arc<str>`.
type ServiceIndex = u32;

/// What a span remembered as a possible parent tells about its calls: its
/// service and whether it is a client or producer span with error status,
/// packed into one word (the low bit is the failure) so an entry of the
/// callers' table is 12 bytes.
#[derive(Clone, Copy)]
struct Caller(u32);

impl Caller {
    fn new(service: ServiceIndex, call_failed: bool) -> Self {
        Caller(service << 1 | u32::from(call_failed))
    }

    fn service(self) -> ServiceIndex {
        self.0 >> 1
    }

    fn call_failed(self) -> bool {
        self.0 & 1 == 1
    }
}

struct WaitingChild {
    service: ServiceIndex,
    error: bool,
    start_nanos: u64,
    duration_nanos: u64,
}

/// A map bounded by keeping two generations.
struct Generations<V> {
    current: IdMap<SpanId, V>,
    previous: IdMap<SpanId, V>,
    capacity: usize,
}

impl<V> Generations<V> {
    fn new(capacity: usize) -> Self {
        Generations {
            current: IdMap::default(),
            previous: IdMap::default(),
            capacity,
        }
    }

    fn insert(&mut self, key: SpanId, value: V) {
        if self.current.len() >= self.capacity {
            // The dropped generation's table becomes the new one, emptied:
            // grown to capacity already, it takes the next generation
            // without rehashing into fresh memory on the way.
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
        }
        self.current.insert(key, value);
    }

    fn get(&self, key: &SpanId) -> Option<&V> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    fn remove(&mut self, key: &SpanId) -> Option<V> {
        self.current
            .remove(key)
            .or_else(|| self.previous.remove(key))
    }
}

/// Turns flushed spans into edges; see the module docs.
pub struct DependencyTracker {
    callers: Generations<Caller>,
    waiting: Generations<Vec<WaitingChild>>,
    /// Every service name seen, by [`ServiceIndex`]; `indexes` finds them.
    /// Both only grow, as the set of services a deployment runs does.
    services: Vec<Arc<str>>,
    indexes: HashMap<Arc<str>, ServiceIndex>,
    /// When `observe` last saw spans, while anything is remembered.
    last_observed: Option<Instant>,
}

impl Default for DependencyTracker {
    fn default() -> Self {
        DependencyTracker {
            callers: Generations::new(RECENT_SPANS_PER_GENERATION),
            waiting: Generations::new(WAITING_CHILDREN_PER_GENERATION),
            services: Vec::new(),
            indexes: HashMap::new(),
            last_observed: None,
        }
    }
}

impl DependencyTracker {
    /// Records a batch of spans and returns the edges it completes.
    pub fn observe<'a>(&mut self, spans: impl IntoIterator<Item = &'a Span> + Clone) -> Vec<Edge> {
        self.last_observed = Some(Instant::now());
        let mut edges = Vec::new();
        // The service names of the batch's resources, by pointer: a batch
        // holds a few resources shared by many spans (see `codec::Shared`).
        let mut by_resource = Vec::new();
        for span in spans.clone() {
            let caller = Caller::new(
                self.service_of(&mut by_resource, span),
                span.is_error() && matches!(span.kind, SpanKind::Client | SpanKind::Producer),
            );
            if let Some(children) = self.waiting.remove(&span.span_id) {
                for child in children {
                    if child.service != caller.service() {
                        edges.push(self.edge(caller, child));
                    }
                }
            }
            self.callers.insert(span.span_id, caller);
        }
        for span in spans {
            // Only a consumer's links name its caller; other links (a batch
            // job citing its inputs, say) are not calls.
            let links = (span.kind == SpanKind::Consumer)
                .then_some(&span.links)
                .into_iter()
                .flatten()
                .map(|link| link.span_id);
            for caller_id in span.parent_span_id.into_iter().chain(links) {
                let child = WaitingChild {
                    service: self.service_of(&mut by_resource, span),
                    error: span.is_error(),
                    start_nanos: span.start_unix_nano,
                    duration_nanos: span.duration_nanos(),
                };
                match self.callers.get(&caller_id).copied() {
                    Some(caller) if caller.service() != child.service => {
                        edges.push(self.edge(caller, child))
                    }
                    Some(_) => {}
                    None => match self.waiting.current.get_mut(&caller_id) {
                        Some(list) => list.push(child),
                        None => self.waiting.insert(caller_id, vec![child]),
                    },
                }
            }
        }
        edges
    }

    /// Forgets every remembered span and frees the tables if nothing was
    /// observed for [`QUIET_FORGET_AFTER`] before `now`; the flusher calls
    /// it when it finds nothing to flush.
    pub fn forget_if_quiet(&mut self, now: Instant) {
        if self
            .last_observed
            .is_some_and(|seen| now.saturating_duration_since(seen) >= QUIET_FORGET_AFTER)
        {
            self.callers = Generations::new(RECENT_SPANS_PER_GENERATION);
            self.waiting = Generations::new(WAITING_CHILDREN_PER_GENERATION);
            self.last_observed = None;
        }
    }

    fn edge(&self, caller: Caller, child: WaitingChild) -> Edge {
        let name = |index: ServiceIndex| self.services[index as usize].clone();
        Edge {
            parent: name(caller.service()),
            child: name(child.service),
            failed: child.error || caller.call_failed(),
            child_start_nanos: child.start_nanos,
            child_duration_nanos: child.duration_nanos,
        }
    }

    /// The span's service, looked up by its resource's pointer in
    /// `by_resource` (valid while the spans are borrowed) before by name.
    fn service_of(
        &mut self,
        by_resource: &mut Vec<(*const Resource, ServiceIndex)>,
        span: &Span,
    ) -> ServiceIndex {
        let ptr = Arc::as_ptr(&span.resource);
        if let Some((_, index)) = by_resource.iter().find(|(p, _)| *p == ptr) {
            return *index;
        }
        let index = self.index(span.service());
        if by_resource.len() < MAX_RESOURCES_BY_POINTER {
            by_resource.push((ptr, index));
        }
        index
    }

    fn index(&mut self, service: &str) -> ServiceIndex {
        if let Some(index) = self.indexes.get(service) {
            return *index;
        }
        // Names take memory long before 2^31 of them (the packing's limit)
        // could be seen.
        let index = self.services.len() as ServiceIndex;
        let name: Arc<str> = Arc::from(service);
        self.services.push(name.clone());
        self.indexes.insert(name, index);
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_span;
    use crate::model::{Link, StatusCode};

    fn span(id: u8, parent: Option<u8>, service: &str, error: bool) -> Span {
        let mut span = sample_span(1, id, service);
        span.parent_span_id = parent.map(|p| [p; 8]);
        span.status_code = if error {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        span
    }

    fn pairs(edges: &[Edge]) -> Vec<(String, String, bool)> {
        edges
            .iter()
            .map(|e| (e.parent.to_string(), e.child.to_string(), e.failed))
            .collect()
    }

    #[test]
    fn generations_keep_the_newest_two() {
        let mut memory = Generations::new(2);
        for id in 1..=3u8 {
            memory.insert([id; 8], id);
        }
        assert_eq!(memory.get(&[1; 8]), Some(&1), "in the previous generation");
        memory.insert([4; 8], 4);
        memory.insert([5; 8], 5);
        assert_eq!(memory.get(&[1; 8]), None, "its generation was dropped");
        assert_eq!(memory.get(&[2; 8]), None);
        assert_eq!(memory.remove(&[3; 8]), Some(3));
        assert_eq!(memory.get(&[4; 8]), Some(&4));
        assert_eq!(memory.get(&[5; 8]), Some(&5));
    }

    #[test]
    fn a_remembered_caller_takes_twelve_bytes_and_keeps_what_it_packs() {
        assert_eq!(std::mem::size_of::<(SpanId, Caller)>(), 12);
        for (service, failed) in [(0, false), (0, true), (7, true), (u32::MAX >> 1, false)] {
            let caller = Caller::new(service, failed);
            assert_eq!((caller.service(), caller.call_failed()), (service, failed));
        }
    }

    #[test]
    fn edges_within_one_batch_skip_same_service_calls() {
        let mut tracker = DependencyTracker::default();
        let batch = [
            span(1, None, "gateway", false),
            span(2, Some(1), "gateway", false),
            span(3, Some(2), "order", true),
        ];
        let edges = tracker.observe(&batch);
        assert_eq!(
            pairs(&edges),
            vec![("gateway".into(), "order".into(), true)]
        );
    }

    #[test]
    fn parent_arriving_later_completes_the_edge() {
        let mut tracker = DependencyTracker::default();
        assert!(
            tracker
                .observe(&[span(3, Some(2), "payment", false)])
                .is_empty()
        );
        let edges = tracker.observe(&[span(2, None, "order", false)]);
        assert_eq!(
            pairs(&edges),
            vec![("order".into(), "payment".into(), false)]
        );
        // Seen once, counted once.
        assert!(tracker.observe(&[span(4, None, "order", false)]).is_empty());
    }

    #[test]
    fn a_minute_without_spans_forgets_remembered_spans() {
        let mut tracker = DependencyTracker::default();
        tracker.observe(&[span(3, Some(2), "payment", false)]);
        tracker.observe(&[span(5, None, "gateway", false)]);
        let observed = Instant::now();
        tracker.forget_if_quiet(observed + QUIET_FORGET_AFTER / 2);
        let edges = tracker.observe(&[span(2, None, "order", false)]);
        assert_eq!(pairs(&edges), [("order".into(), "payment".into(), false)]);

        tracker.forget_if_quiet(Instant::now() + QUIET_FORGET_AFTER);
        assert_eq!(tracker.callers.current.capacity(), 0, "tables freed");
        assert!(
            tracker
                .observe(&[span(6, Some(5), "order", false)])
                .is_empty()
        );
    }

    #[test]
    fn parent_seen_in_an_earlier_batch_is_remembered() {
        let mut tracker = DependencyTracker::default();
        tracker.observe(&[span(2, None, "order", false)]);
        let edges = tracker.observe(&[span(3, Some(2), "inventory", false)]);
        assert_eq!(
            pairs(&edges),
            vec![("order".into(), "inventory".into(), false)]
        );
    }

    #[test]
    fn a_failing_client_span_fails_the_call_a_failing_handler_does_not() {
        let mut tracker = DependencyTracker::default();
        let mut client = span(2, Some(1), "order", true);
        client.kind = SpanKind::Client;
        let handler = span(1, None, "order", true);
        let edges = tracker.observe(&[
            handler,
            client,
            span(3, Some(2), "payment", false),
            span(4, Some(1), "inventory", false),
        ]);
        assert_eq!(
            pairs(&edges),
            vec![
                ("order".into(), "payment".into(), true),
                ("order".into(), "inventory".into(), false),
            ]
        );
    }

    #[test]
    fn edges_carry_the_callee_duration() {
        let mut tracker = DependencyTracker::default();
        let child = span(2, Some(1), "payment", false);
        let edges = tracker.observe(&[span(1, None, "order", false), child.clone()]);
        assert_eq!(edges[0].child_duration_nanos, child.duration_nanos());
        assert_eq!(edges[0].child_start_nanos, child.start_unix_nano);
    }

    #[test]
    fn a_consumer_linked_to_a_producer_is_a_call() {
        let mut tracker = DependencyTracker::default();
        let link = |id: u8| Link {
            trace_id: [7; 16],
            span_id: [id; 8],
            attributes: vec![],
        };
        // The consumer (a root span of its own trace) arrives first.
        let mut consumer = span(5, None, "inventory", false);
        consumer.kind = SpanKind::Consumer;
        consumer.links = vec![link(4)];
        assert!(tracker.observe(&[consumer]).is_empty());
        let mut producer = span(4, None, "order", false);
        producer.kind = SpanKind::Producer;
        assert_eq!(
            pairs(&tracker.observe(&[producer])),
            vec![("order".into(), "inventory".into(), false)]
        );
        // Links of other spans are not calls.
        let mut batch = span(6, None, "inventory", false);
        batch.links = vec![link(4)];
        assert!(tracker.observe(&[batch]).is_empty());
    }
}
