//! Service-to-service edges derived from spans as they are flushed.
//!
//! An edge is a span whose parent belongs to another service. Parent and child
//! often arrive in different batches, minutes apart, so the tracker remembers
//! the service of recently seen spans and children still waiting for their
//! parent. Both memories are bounded: two generations each, the older dropped
//! when the newer fills up. What is forgotten (very late parents, and spans seen
//! before a restart) yields no edge — counts are a lower bound, never invented.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{IdMap, Span, SpanId};

const RECENT_SPANS_PER_GENERATION: usize = 1 << 20;
const WAITING_CHILDREN_PER_GENERATION: usize = 1 << 17;

/// One observed call from a span of `parent` to a span of `child`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub parent: Arc<str>,
    pub child: Arc<str>,
    pub error: bool,
    pub child_start_nanos: u64,
}

struct WaitingChild {
    child: Arc<str>,
    error: bool,
    start_nanos: u64,
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
            self.previous = std::mem::take(&mut self.current);
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
    service_of: Generations<Arc<str>>,
    waiting: Generations<Vec<WaitingChild>>,
    names: HashMap<String, Arc<str>>,
}

impl Default for DependencyTracker {
    fn default() -> Self {
        DependencyTracker {
            service_of: Generations::new(RECENT_SPANS_PER_GENERATION),
            waiting: Generations::new(WAITING_CHILDREN_PER_GENERATION),
            names: HashMap::new(),
        }
    }
}

impl DependencyTracker {
    /// Records a batch of spans and returns the edges it completes.
    pub fn observe<'a>(&mut self, spans: impl IntoIterator<Item = &'a Span> + Clone) -> Vec<Edge> {
        let mut edges = Vec::new();
        for span in spans.clone() {
            let service = self.name(span.service());
            if let Some(children) = self.waiting.remove(&span.span_id) {
                edges.extend(
                    children
                        .into_iter()
                        .filter(|c| c.child != service)
                        .map(|c| Edge {
                            parent: service.clone(),
                            child: c.child,
                            error: c.error,
                            child_start_nanos: c.start_nanos,
                        }),
                );
            }
            self.service_of.insert(span.span_id, service);
        }
        for span in spans {
            let Some(parent_id) = span.parent_span_id else {
                continue;
            };
            let child = self.name(span.service());
            match self.service_of.get(&parent_id) {
                Some(parent) if *parent != child => edges.push(Edge {
                    parent: parent.clone(),
                    child,
                    error: span.is_error(),
                    child_start_nanos: span.start_unix_nano,
                }),
                Some(_) => {}
                None => {
                    let waiting = WaitingChild {
                        child,
                        error: span.is_error(),
                        start_nanos: span.start_unix_nano,
                    };
                    match self.waiting.current.get_mut(&parent_id) {
                        Some(list) => list.push(waiting),
                        None => self.waiting.insert(parent_id, vec![waiting]),
                    }
                }
            }
        }
        edges
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
    use crate::model::StatusCode;

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
            .map(|e| (e.parent.to_string(), e.child.to_string(), e.error))
            .collect()
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
}
