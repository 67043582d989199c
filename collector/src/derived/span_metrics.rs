//! RED metrics derived from spans at ingest, named as the OpenTelemetry
//! Collector's `spanmetrics` connector names them, so dashboards written for it
//! work here:
//!
//! - `traces_span_metrics_calls_total{service_name, span_name, span_kind,
//!   status_code}`: requests; errors are the series with
//!   `status_code="STATUS_CODE_ERROR"`;
//! - `traces_span_metrics_duration_seconds_bucket{..., le}`, `_sum`, `_count`:
//!   the duration histogram, with the connector's default buckets.
//!
//! Counts accumulate in memory from acknowledged spans; `derived` has how
//! they become samples.

use std::hash::BuildHasher;
use std::sync::Mutex;

use foldhash::HashMap;

use super::{Histogram, OVERFLOW, Snapshot};
use crate::model::{Label, MetricKind, MetricMetadata, SeriesSamples, Span, SpanKind, StatusCode};

/// Distinct label sets kept; spans beyond it are counted under one overflow
/// series per service, so a span name with an id in it cannot exhaust memory.
const MAX_SERIES: usize = 20_000;
const CALLS: &str = "traces_span_metrics_calls_total";
const DURATION: &str = "traces_span_metrics_duration_seconds";

#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    service: String,
    span_name: String,
    kind: SpanKind,
    status: StatusCode,
}

/// Accumulates RED counts; see the module documentation.
#[derive(Default)]
pub struct SpanMetrics {
    counts: Mutex<Table>,
}

/// Counts by key, looked up by a hash of the borrowed fields so that the
/// per-span path (on the WAL writer thread) allocates only for new keys.
/// Hashed with foldhash, seeded per table: names come from senders, and
/// SipHash took 2 % of span ingest.
#[derive(Default)]
struct Table {
    by_hash: HashMap<u64, Vec<(Key, Histogram)>>,
    hasher: foldhash::fast::RandomState,
    len: usize,
}

impl Table {
    fn entry(
        &mut self,
        service: &str,
        span_name: &str,
        kind: SpanKind,
        status: StatusCode,
    ) -> &mut Histogram {
        let hash = self.hasher.hash_one((service, span_name, kind, status));
        let bucket = self.by_hash.entry(hash).or_default();
        let found = bucket.iter().position(|(k, _)| {
            k.kind == kind && k.status == status && k.service == service && k.span_name == span_name
        });
        let index = match found {
            Some(index) => index,
            None => {
                bucket.push((
                    Key {
                        service: service.to_owned(),
                        span_name: span_name.to_owned(),
                        kind,
                        status,
                    },
                    Histogram::default(),
                ));
                self.len += 1;
                bucket.len() - 1
            }
        };
        &mut bucket[index].1
    }

    fn contains(&self, service: &str, span_name: &str, kind: SpanKind, status: StatusCode) -> bool {
        self.by_hash
            .get(&self.hasher.hash_one((service, span_name, kind, status)))
            .is_some_and(|bucket| {
                bucket.iter().any(|(k, _)| {
                    k.kind == kind
                        && k.status == status
                        && k.service == service
                        && k.span_name == span_name
                })
            })
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut (Key, Histogram)> {
        self.by_hash.values_mut().flatten()
    }
}

impl SpanMetrics {
    /// Counts acknowledged spans.
    pub fn record(&self, spans: &[Span]) {
        let mut counts = self.counts.lock().expect("not poisoned");
        for span in spans {
            let (service, kind, status) = (span.service(), span.kind, span.status_code);
            let span_name = if counts.len >= MAX_SERIES
                && !counts.contains(service, &span.name, kind, status)
            {
                OVERFLOW
            } else {
                span.name.as_str()
            };
            counts
                .entry(service, span_name, kind, status)
                .observe_nanos(span.duration_nanos());
        }
    }

    /// The cumulative series at `now_ms`, and their metadata.
    pub fn samples(&self, now_ms: i64) -> (Vec<SeriesSamples>, Vec<MetricMetadata>) {
        let mut counts = self.counts.lock().expect("not poisoned");
        let mut snapshot = Snapshot::new(now_ms);
        for (key, histogram) in counts.iter_mut() {
            let start = histogram.take_start();
            let labels = [
                Label::new("service_name", key.service.clone()),
                Label::new("span_name", key.span_name.clone()),
                Label::new("span_kind", kind_name(key.kind)),
                Label::new("status_code", status_name(key.status)),
            ];
            snapshot.push(CALLS, &labels, histogram.count() as f64, start);
            snapshot.push_histogram(DURATION, &labels, histogram, start);
        }
        let metadata = vec![
            MetricMetadata {
                metric: CALLS.into(),
                kind: MetricKind::Counter,
                help: "Spans received, per service, span name, kind and status".into(),
                unit: String::new(),
            },
            MetricMetadata {
                metric: DURATION.into(),
                kind: MetricKind::Histogram,
                help: "Span durations, per service, span name, kind and status".into(),
                unit: "seconds".into(),
            },
        ];
        (snapshot.into_series(), metadata)
    }
}

fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Unspecified => "SPAN_KIND_UNSPECIFIED",
        SpanKind::Internal => "SPAN_KIND_INTERNAL",
        SpanKind::Server => "SPAN_KIND_SERVER",
        SpanKind::Client => "SPAN_KIND_CLIENT",
        SpanKind::Producer => "SPAN_KIND_PRODUCER",
        SpanKind::Consumer => "SPAN_KIND_CONSUMER",
    }
}

fn status_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::Unset => "STATUS_CODE_UNSET",
        StatusCode::Ok => "STATUS_CODE_OK",
        StatusCode::Error => "STATUS_CODE_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{Resource, Scope};

    fn span(service: &str, name: &str, millis: u64, status: StatusCode) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            trace_state: String::new(),
            flags: 0,
            name: name.into(),
            kind: SpanKind::Server,
            start_unix_nano: 1_000,
            end_unix_nano: 1_000 + millis * 1_000_000,
            attributes: vec![],
            events: vec![],
            links: vec![],
            status_code: status,
            status_message: String::new(),
            resource: Arc::new(Resource {
                service: service.into(),
                attributes: vec![],
            }),
            scope: Arc::new(Scope::default()),
        }
    }

    fn value(series: &[SeriesSamples], name: &str, extra: &[(&str, &str)]) -> f64 {
        series
            .iter()
            .find(|s| {
                s.metric_name() == name
                    && extra
                        .iter()
                        .all(|(n, v)| s.labels.iter().any(|l| l.name == *n && l.value == *v))
            })
            .map(|s| s.samples.last().unwrap().value)
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn counts_calls_errors_and_durations() {
        let metrics = SpanMetrics::default();
        metrics.record(&[
            span("payment", "POST /charge", 3, StatusCode::Unset),
            span("payment", "POST /charge", 300, StatusCode::Unset),
            span("payment", "POST /charge", 20, StatusCode::Error),
        ]);
        let (series, metadata) = metrics.samples(5_000);
        let ok = [
            ("status_code", "STATUS_CODE_UNSET"),
            ("span_name", "POST /charge"),
        ];
        assert_eq!(value(&series, CALLS, &ok), 2.0);
        assert_eq!(
            value(&series, CALLS, &[("status_code", "STATUS_CODE_ERROR")]),
            1.0
        );
        let bucket = format!("{DURATION}_bucket");
        assert_eq!(value(&series, &bucket, &[ok[0], ("le", "0.004")]), 1.0);
        assert_eq!(value(&series, &bucket, &[ok[0], ("le", "0.4")]), 2.0);
        assert_eq!(value(&series, &bucket, &[ok[0], ("le", "+Inf")]), 2.0);
        assert!((value(&series, &format!("{DURATION}_sum"), &ok) - 0.303).abs() < 1e-12);
        // First written: every series starts from zero just before.
        assert!(series.iter().all(|s| {
            let times: Vec<i64> = s.samples.iter().map(|p| p.timestamp_ms).collect();
            times == [5_000 - 1, 5_000] && s.samples[0].value == 0.0
        }));
        assert_eq!(metadata[0].kind, MetricKind::Counter);
    }

    #[test]
    fn label_sets_are_bounded() {
        let metrics = SpanMetrics::default();
        let spans: Vec<Span> = (0..MAX_SERIES + 50)
            .map(|i| span("order", &format!("GET /orders/{i}"), 1, StatusCode::Ok))
            .collect();
        metrics.record(&spans);
        let (series, _) = metrics.samples(0);
        let calls = series.iter().filter(|s| s.metric_name() == CALLS).count();
        assert_eq!(calls, MAX_SERIES + 1);
        assert_eq!(value(&series, CALLS, &[("span_name", OVERFLOW)]), 50.0);
    }
}
