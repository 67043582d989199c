//! Service-to-service edges derived from spans as they are flushed.
//!
//! An edge is a span whose parent belongs to another service, or a consumer
//! span linked to a (producer) span of another service: messages carry the
//! producer's context as a link, not as a parent, because the consumer runs
//! later and on its own. Parent and child often arrive in different batches,
//! minutes apart, so the tracker remembers the service of recently seen spans
//! and children still waiting for their parent. Both memories are bounded: two
//! generations each, the older dropped when the newer fills up. What is
//! forgotten (very late parents, and spans seen before a restart) yields no
//! edge — counts are a lower bound, never invented.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{IdMap, Resource, Span, SpanId, SpanKind};

const RECENT_SPANS_PER_GENERATION: usize = 1 << 20;
const WAITING_CHILDREN_PER_GENERATION: usize = 1 << 17;
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

/// What a span remembered as a possible parent tells about its calls.
struct Caller {
    service: Arc<str>,
    /// A client or producer span with error status.
    call_failed: bool,
}

struct WaitingChild {
    child: Arc<str>,
    error: bool,
    start_nanos: u64,
    duration_nanos: u64,
}

impl WaitingChild {
    fn edge_from(self, caller: &Caller) -> Edge {
        Edge {
            parent: caller.service.clone(),
            child: self.child,
            failed: self.error || caller.call_failed,
            child_start_nanos: self.start_nanos,
            child_duration_nanos: self.duration_nanos,
        }
    }
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
    names: HashMap<String, Arc<str>>,
}

impl Default for DependencyTracker {
    fn default() -> Self {
        DependencyTracker {
            callers: Generations::new(RECENT_SPANS_PER_GENERATION),
            waiting: Generations::new(WAITING_CHILDREN_PER_GENERATION),
            names: HashMap::new(),
        }
    }
}

impl DependencyTracker {
    /// Records a batch of spans and returns the edges it completes.
    pub fn observe<'a>(&mut self, spans: impl IntoIterator<Item = &'a Span> + Clone) -> Vec<Edge> {
        let mut edges = Vec::new();
        // The service names of the batch's resources, by pointer: a batch
        // holds a few resources shared by many spans (see `codec::Shared`).
        let mut by_resource = Vec::new();
        for span in spans.clone() {
            let caller = Caller {
                service: self.service_of(&mut by_resource, span),
                call_failed: span.is_error()
                    && matches!(span.kind, SpanKind::Client | SpanKind::Producer),
            };
            if let Some(children) = self.waiting.remove(&span.span_id) {
                edges.extend(
                    children
                        .into_iter()
                        .filter(|c| c.child != caller.service)
                        .map(|c| c.edge_from(&caller)),
                );
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
                    child: self.service_of(&mut by_resource, span),
                    error: span.is_error(),
                    start_nanos: span.start_unix_nano,
                    duration_nanos: span.duration_nanos(),
                };
                match self.callers.get(&caller_id) {
                    Some(caller) if caller.service != child.child => {
                        edges.push(child.edge_from(caller))
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

    /// The span's service name, looked up by its resource's pointer in
    /// `by_resource` (valid while the spans are borrowed) before by name.
    fn service_of(
        &mut self,
        by_resource: &mut Vec<(*const Resource, Arc<str>)>,
        span: &Span,
    ) -> Arc<str> {
        let ptr = Arc::as_ptr(&span.resource);
        if let Some((_, name)) = by_resource.iter().find(|(p, _)| *p == ptr) {
            return name.clone();
        }
        let name = self.name(span.service());
        if by_resource.len() < MAX_RESOURCES_BY_POINTER {
            by_resource.push((ptr, name.clone()));
        }
        name
    }

    fn name(&mut self, service: &str) -> Arc<str> {
        if let Some(name) = self.names.get(service) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(service);
        self.names.insert(service.to_string(), name.clone());
        name
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
