//! Metrics per service-to-service edge, derived from the dependency edges the
//! span store finds when it flushes (`store::traces::Edge`: a span whose
//! parent, or for a consumer whose linked producer, is in another service).
//! Named as Grafana Tempo's metrics generator and the OpenTelemetry
//! Collector's `servicegraph` connector name them, so service-graph panels
//! written for those work here:
//!
//! - `traces_service_graph_request_total{client, server}`: calls;
//! - `traces_service_graph_request_failed_total{client, server}`: calls that
//!   failed on either side (see `Edge::failed`);
//! - `traces_service_graph_request_server_seconds_bucket{..., le}`, `_sum`,
//!   `_count`: how long the server side took.
//!
//! Counts accumulate in memory; `derived` has how they become samples.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Histogram, OVERFLOW, Snapshot};
use crate::model::{Label, MetricKind, MetricMetadata, SeriesSamples};
use crate::store::traces::Edge;

/// Distinct (client, server) pairs kept; calls beyond it are counted under
/// one overflow pair, so services named after ids cannot exhaust memory.
const MAX_EDGES: usize = 10_000;
const REQUESTS: &str = "traces_service_graph_request_total";
const FAILED: &str = "traces_service_graph_request_failed_total";
const SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";

#[derive(Default)]
struct Counts {
    failed: u64,
    /// Its count is the number of calls.
    server: Histogram,
}

/// (client, server)
type EdgeKey = (Arc<str>, Arc<str>);

/// Accumulates per-edge counts; see the module documentation.
#[derive(Default)]
pub struct ServiceGraph {
    edges: Mutex<HashMap<EdgeKey, Counts>>,
}

impl ServiceGraph {
    /// Counts the calls a span flush completed.
    pub fn record(&self, edges: &[Edge]) {
        let mut counts = self.edges.lock().expect("not poisoned");
        for edge in edges {
            let mut key = (edge.parent.clone(), edge.child.clone());
            if counts.len() >= MAX_EDGES && !counts.contains_key(&key) {
                key = (Arc::from(OVERFLOW), Arc::from(OVERFLOW));
            }
            let entry = counts.entry(key).or_default();
            entry.failed += u64::from(edge.failed);
            entry.server.observe_nanos(edge.child_duration_nanos);
        }
    }

    /// The cumulative series at `now_ms`, and their metadata.
    pub fn samples(&self, now_ms: i64) -> (Vec<SeriesSamples>, Vec<MetricMetadata>) {
        let mut counts = self.edges.lock().expect("not poisoned");
        let mut snapshot = Snapshot::new(now_ms);
        for ((client, server), counts) in counts.iter_mut() {
            let start = counts.server.take_start();
            let labels = [
                Label::new("client", client.as_ref()),
                Label::new("server", server.as_ref()),
            ];
            snapshot.push(REQUESTS, &labels, counts.server.count() as f64, start);
            snapshot.push(FAILED, &labels, counts.failed as f64, start);
            snapshot.push_histogram(SERVER_SECONDS, &labels, &counts.server, start);
        }
        let metadata = vec![
            MetricMetadata {
                metric: REQUESTS.into(),
                kind: MetricKind::Counter,
                help: "Calls from one service to another".into(),
                unit: String::new(),
            },
            MetricMetadata {
                metric: FAILED.into(),
                kind: MetricKind::Counter,
                help: "Calls from one service to another that failed on either side".into(),
                unit: String::new(),
            },
            MetricMetadata {
                metric: SERVER_SECONDS.into(),
                kind: MetricKind::Histogram,
                help: "Time the called service took, per calling and called service".into(),
                unit: "seconds".into(),
            },
        ];
        (snapshot.into_series(), metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(client: &str, server: &str, millis: u64, failed: bool) -> Edge {
        Edge {
            parent: client.into(),
            child: server.into(),
            failed,
            child_start_nanos: 1_000,
            child_duration_nanos: millis * 1_000_000,
        }
    }

    fn value(series: &[SeriesSamples], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        series
            .iter()
            .find(|s| {
                s.metric_name() == name
                    && labels
                        .iter()
                        .all(|(n, v)| s.labels.iter().any(|l| l.name == *n && l.value == *v))
            })
            .map(|s| s.samples.last().unwrap().value)
    }

    #[test]
    fn counts_calls_failures_and_server_durations_per_edge() {
        let graph = ServiceGraph::default();
        graph.record(&[
            edge("gateway", "order", 100, false),
            edge("order", "payment", 50, true),
            edge("order", "payment", 3, false),
        ]);
        graph.record(&[edge("order", "payment", 30, true)]);
        let (series, metadata) = graph.samples(9_000);
        let payment = [("client", "order"), ("server", "payment")];
        assert_eq!(value(&series, REQUESTS, &payment), Some(3.0));
        assert_eq!(value(&series, FAILED, &payment), Some(2.0));
        let gateway = [("client", "gateway"), ("server", "order")];
        assert_eq!(value(&series, REQUESTS, &gateway), Some(1.0));
        assert_eq!(value(&series, FAILED, &gateway), Some(0.0));
        let bucket = format!("{SERVER_SECONDS}_bucket");
        let le = |bound| [payment[0], payment[1], ("le", bound)];
        assert_eq!(value(&series, &bucket, &le("0.004")), Some(1.0));
        assert_eq!(value(&series, &bucket, &le("0.05")), Some(3.0));
        let sum = value(&series, &format!("{SERVER_SECONDS}_sum"), &payment).unwrap();
        assert!((sum - 0.083).abs() < 1e-12, "{sum}");
        assert_eq!(
            value(&series, &format!("{SERVER_SECONDS}_count"), &payment),
            Some(3.0)
        );
        // Only the two labels of the connector (plus name and le).
        assert!(series.iter().all(|s| s.labels.len() <= 4));
        // First written: every series starts from zero just before.
        assert!(series.iter().all(|s| {
            let times: Vec<i64> = s.samples.iter().map(|p| p.timestamp_ms).collect();
            times == [9_000 - 1, 9_000] && s.samples[0].value == 0.0
        }));
        assert_eq!(metadata.len(), 3);
    }

    #[test]
    fn edges_are_bounded() {
        let graph = ServiceGraph::default();
        let edges: Vec<Edge> = (0..MAX_EDGES + 5)
            .map(|i| edge("gateway", &format!("svc-{i}"), 1, false))
            .collect();
        graph.record(&edges);
        let (series, _) = graph.samples(0);
        let requests: Vec<_> = series
            .iter()
            .filter(|s| s.metric_name() == REQUESTS)
            .collect();
        assert_eq!(requests.len(), MAX_EDGES + 1);
        let overflow = [("client", OVERFLOW), ("server", OVERFLOW)];
        assert_eq!(value(&series, REQUESTS, &overflow), Some(5.0));
    }
}
