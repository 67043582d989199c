//! Metrics derived from spans: RED metrics per service and operation
//! (`span_metrics`, counted from acknowledged spans) and calls, failures and
//! latency per service-to-service edge (`service_graph`, counted from the
//! edges span flushes complete). This module holds what the two share: duration histograms with the OpenTelemetry Collector connectors'
//! default buckets, and the writing of cumulative counts as samples of one
//! instant, as a scrape would see them.
//!
//! Counts accumulate in memory and the pipeline writes them into the metrics
//! store every `--derived-metrics-interval`; a restart starts them from zero,
//! which PromQL's `rate` reads as a counter reset. A label set's first write
//! is preceded by zeros at the time its first observation came (as Prometheus
//! does with created timestamps): otherwise `rate` and `increase` would take
//! the first value as their baseline, and a quiet edge's only calls would
//! never show.

pub mod service_graph;
pub mod span_metrics;

use crate::model::{Label, METRIC_NAME_LABEL, MetricSample, SeriesSamples};

/// Upper bounds of the duration buckets, in seconds (the connectors' defaults).
const BUCKETS: [f64; 16] = [
    0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
];

/// The label value that stands in for label sets beyond a bound, as the
/// connectors name it, so one runaway label cannot exhaust memory.
pub const OVERFLOW: &str = "otel_metric_overflow";

/// A duration histogram with [`BUCKETS`]; one per label set, so it also
/// keeps when that label set began.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// When the first observation came, until the series are first written.
    unwritten_since_ms: Option<i64>,
    count: u64,
    seconds_sum: f64,
    /// Per bucket (not cumulative); the last slot is above every bound.
    buckets: [u64; BUCKETS.len() + 1],
}

impl Histogram {
    /// Counts one duration (span durations are in nanoseconds; buckets in
    /// seconds).
    pub fn observe_nanos(&mut self, nanos: u64) {
        if self.count == 0 {
            self.unwritten_since_ms = Some((crate::model::now_unix_nano() / 1_000_000) as i64);
        }
        let seconds = nanos as f64 / 1e9;
        self.count += 1;
        self.seconds_sum += seconds;
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket] += 1;
    }

    /// Observations so far: for the service graph, the number of calls.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// For the first write of the label set's series: when they start from
    /// zero (pass it to every [`Snapshot::push`] of the label set); `None`
    /// afterwards.
    pub fn take_start(&mut self) -> Option<i64> {
        self.unwritten_since_ms.take()
    }
}

/// Cumulative values at one instant, becoming one sample per series.
pub struct Snapshot {
    now_ms: i64,
    series: Vec<SeriesSamples>,
}

impl Snapshot {
    /// An empty snapshot whose samples are all stamped `now_ms`.
    pub fn new(now_ms: i64) -> Snapshot {
        Snapshot {
            now_ms,
            series: Vec::new(),
        }
    }

    /// One sample of `name{labels}`, preceded by a zero at `start_ms` if
    /// given (see [`Histogram::take_start`]).
    pub fn push(&mut self, name: &str, labels: &[Label], value: f64, start_ms: Option<i64>) {
        let mut all = Vec::with_capacity(labels.len() + 1);
        all.push(Label::new(METRIC_NAME_LABEL, name));
        all.extend_from_slice(labels);
        let zero = start_ms.map(|start| MetricSample {
            timestamp_ms: start.min(self.now_ms - 1),
            value: 0.0,
        });
        let now = MetricSample {
            timestamp_ms: self.now_ms,
            value,
        };
        self.series.push(SeriesSamples {
            labels: crate::model::canonical_labels(all),
            samples: zero.into_iter().chain([now]).collect(),
        });
    }

    /// `name_bucket{le}` (cumulative, through `+Inf`), `name_sum` and
    /// `name_count`, as Prometheus histograms are exposed.
    pub fn push_histogram(
        &mut self,
        name: &str,
        labels: &[Label],
        histogram: &Histogram,
        start_ms: Option<i64>,
    ) {
        let bucket_name = format!("{name}_bucket");
        let bounds = BUCKETS.iter().map(|b| strand_promql::format_value(*b));
        let mut cumulative = 0;
        let mut with_le = labels.to_vec();
        with_le.push(Label::new("le", ""));
        for (bound, count) in bounds
            .chain(std::iter::once("+Inf".to_owned()))
            .zip(histogram.buckets)
        {
            cumulative += count;
            with_le.last_mut().expect("le pushed").value = bound.into();
            self.push(&bucket_name, &with_le, cumulative as f64, start_ms);
        }
        self.push(
            &format!("{name}_sum"),
            labels,
            histogram.seconds_sum,
            start_ms,
        );
        let count = histogram.count as f64;
        self.push(&format!("{name}_count"), labels, count, start_ms);
    }

    /// The series pushed, ready for the metrics store.
    pub fn into_series(self) -> Vec<SeriesSamples> {
        self.series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_through_inf() {
        let mut histogram = Histogram::default();
        for millis in [3, 300, 20_000] {
            histogram.observe_nanos(millis * 1_000_000);
        }
        let mut snapshot = Snapshot::new(i64::MAX);
        snapshot.push_histogram("d_seconds", &[Label::new("a", "b")], &histogram, None);
        let series = snapshot.into_series();
        let value = |name: &str, le: Option<&str>| {
            series
                .iter()
                .find(|s| {
                    s.metric_name() == name
                        && le.is_none_or(|le| {
                            s.labels.iter().any(|l| l.name == "le" && l.value == le)
                        })
                })
                .map(|s| s.samples.last().unwrap().value)
        };
        assert_eq!(value("d_seconds_bucket", Some("0.004")), Some(1.0));
        assert_eq!(value("d_seconds_bucket", Some("0.4")), Some(2.0));
        assert_eq!(value("d_seconds_bucket", Some("15")), Some(2.0));
        assert_eq!(value("d_seconds_bucket", Some("+Inf")), Some(3.0));
        assert_eq!(value("d_seconds_count", None), Some(3.0));
        assert!((value("d_seconds_sum", None).unwrap() - 20.303).abs() < 1e-9);
        assert!(series.iter().all(|s| s.samples.len() == 1));
        assert_eq!(series.len(), BUCKETS.len() + 3);
    }

    #[test]
    fn a_label_set_starts_from_zero_when_first_observed() {
        let mut histogram = Histogram::default();
        let before = (crate::model::now_unix_nano() / 1_000_000) as i64;
        histogram.observe_nanos(1_000);
        histogram.observe_nanos(1_000);
        let start = histogram.take_start().expect("first write");
        assert!(start >= before);
        assert_eq!(histogram.take_start(), None);

        let now = start + 15_000;
        let mut snapshot = Snapshot::new(now);
        snapshot.push("calls_total", &[], 2.0, Some(start));
        snapshot.push("calls_total", &[], 3.0, None);
        let series = snapshot.into_series();
        let points = |s: &SeriesSamples| -> Vec<(i64, f64)> {
            s.samples
                .iter()
                .map(|p| (p.timestamp_ms, p.value))
                .collect()
        };
        assert_eq!(points(&series[0]), vec![(start, 0.0), (now, 2.0)]);
        assert_eq!(points(&series[1]), vec![(now, 3.0)]);
    }
}
