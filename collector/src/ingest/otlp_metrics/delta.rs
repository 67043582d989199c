//! Delta temporality: running totals per series, so delta sums and
//! histograms become the cumulative series Prometheus semantics need.

use std::collections::HashMap;

use super::histograms::{ExplicitHistogram, ExponentialHistogram};
use crate::model::Label;

/// A delta series not updated for this long (in point time, relative to the
/// newest point seen) may be evicted when the running totals are full.
const DELTA_SERIES_IDLE_NANOS: u64 = 3_600 * 1_000_000_000;
/// Idle delta series are looked for at most this often (in point time), so a
/// full map does not cost a scan per rejected point.
const DELTA_SWEEP_EVERY_NANOS: u64 = 60 * 1_000_000_000;

/// Which running total a delta key holds; part of the key, so a sum and a
/// histogram that happen to share labels never mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum DeltaKind {
    Sum,
    Histogram,
    Exponential,
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct DeltaKey {
    pub(super) kind: DeltaKind,
    /// The series' canonical labels (for histograms, without `le` and with the
    /// family name).
    pub(super) labels: Vec<Label>,
}

#[derive(Debug)]
pub(super) enum Running {
    Sum(f64),
    Histogram(ExplicitHistogram),
    Exponential(ExponentialHistogram),
}

#[derive(Debug)]
struct DeltaEntry {
    last_unix_nano: u64,
    running: Running,
}

/// The running totals of delta series.
#[derive(Debug)]
pub(super) struct DeltaState {
    max_series: usize,
    entries: HashMap<DeltaKey, DeltaEntry>,
    /// The newest point time seen: the clock idle series are judged by.
    newest_unix_nano: u64,
    last_sweep_unix_nano: u64,
}

impl DeltaState {
    /// Room for the running totals of `max_series` series.
    pub(super) fn new(max_series: usize) -> DeltaState {
        DeltaState {
            max_series,
            entries: HashMap::new(),
            newest_unix_nano: 0,
            last_sweep_unix_nano: 0,
        }
    }

    /// The running total a delta point at `time` adds to, if any. A point not
    /// newer than the last one added is refused: it is a retry or out of
    /// order, and adding it would count it twice.
    pub(super) fn previous(&self, key: &DeltaKey, time: u64) -> Result<Option<&Running>, String> {
        match self.entries.get(key) {
            Some(entry) if time <= entry.last_unix_nano => Err(format!(
                "delta point at {time} ns is not newer than the last one ({} ns); \
                 dropped as a duplicate or out of order",
                entry.last_unix_nano
            )),
            Some(entry) => Ok(Some(&entry.running)),
            None => Ok(None),
        }
    }

    /// Stores a running total, making room for a new series if needed.
    pub(super) fn store(
        &mut self,
        key: DeltaKey,
        time: u64,
        running: Running,
    ) -> Result<(), String> {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_series {
            self.evict_idle();
            if self.entries.len() >= self.max_series {
                return Err(format!(
                    "delta series limit of {} reached; new delta series dropped",
                    self.max_series
                ));
            }
        }
        self.newest_unix_nano = self.newest_unix_nano.max(time);
        self.entries.insert(
            key,
            DeltaEntry {
                last_unix_nano: time,
                running,
            },
        );
        Ok(())
    }

    /// A stale marker ends the series: a later point starts a new total.
    pub(super) fn forget(&mut self, kind: DeltaKind, labels: &[Label]) {
        self.entries.remove(&DeltaKey {
            kind,
            labels: labels.to_vec(),
        });
    }

    fn evict_idle(&mut self) {
        let now = self.newest_unix_nano;
        if now
            < self
                .last_sweep_unix_nano
                .saturating_add(DELTA_SWEEP_EVERY_NANOS)
        {
            return;
        }
        self.last_sweep_unix_nano = now;
        self.entries
            .retain(|_, e| e.last_unix_nano.saturating_add(DELTA_SERIES_IDLE_NANOS) >= now);
    }
}

#[cfg(test)]
mod tests {
    use crate::ingest::otlp_metrics::MetricsConverter;
    use crate::ingest::otlp_metrics::tests::{check_with, request};

    #[test]
    fn accumulates_a_delta_counter_over_two_requests() {
        let converter = MetricsConverter::new(100);
        let delta = |time: &str, value: f64| {
            request(&format!(
                r#"{{"name":"jobs.done","sum":{{"aggregationTemporality":1,"isMonotonic":true,
                    "dataPoints":[{{"timeUnixNano":"{time}","asDouble":{value}}}]}}}}"#
            ))
        };
        check_with(
            &converter,
            &delta("1000000000", 2.0),
            r#"
jobs_done_total{job="svc"} 1000:2
# jobs_done_total counter unit="" help="""#,
        );
        check_with(
            &converter,
            &delta("2000000000", 3.0),
            r#"
jobs_done_total{job="svc"} 2000:5
# jobs_done_total counter unit="" help="""#,
        );
        // A retry of the same point must not be counted twice.
        check_with(
            &converter,
            &delta("2000000000", 3.0),
            r#"rejected=1 metric "jobs.done": delta point at 2000000000 ns is not newer than the last one (2000000000 ns); dropped as a duplicate or out of order"#,
        );
    }

    #[test]
    fn delta_series_beyond_the_limit_are_rejected() {
        let converter = MetricsConverter::new(1);
        check_with(
            &converter,
            &request(
                r#"{"name":"jobs","sum":{"aggregationTemporality":1,"isMonotonic":true,
                    "dataPoints":[
                      {"timeUnixNano":"1000000000","asInt":"1",
                       "attributes":[{"key":"queue","value":{"stringValue":"a"}}]},
                      {"timeUnixNano":"1000000000","asInt":"1",
                       "attributes":[{"key":"queue","value":{"stringValue":"b"}}]}]}}"#,
            ),
            r#"
jobs_total{job="svc",queue="a"} 1000:1
# jobs_total counter unit="" help=""
rejected=1 metric "jobs": delta series limit of 1 reached; new delta series dropped"#,
        );
    }

    #[test]
    fn accumulates_a_delta_histogram() {
        let converter = MetricsConverter::new(100);
        let delta = |time: &str, counts: &str, bounds: &str| {
            request(&format!(
                r#"{{"name":"latency","unit":"ms","histogram":{{"aggregationTemporality":1,
                    "dataPoints":[{{"timeUnixNano":"{time}","count":"3","sum":3,
                    "explicitBounds":[{bounds}],"bucketCounts":[{counts}]}}]}}}}"#
            ))
        };
        check_with(
            &converter,
            &delta("1000000000", "1,2", "10"),
            r#"
latency_milliseconds_bucket{job="svc",le="10"} 1000:1
latency_milliseconds_bucket{job="svc",le="+Inf"} 1000:3
latency_milliseconds_sum{job="svc"} 1000:3
latency_milliseconds_count{job="svc"} 1000:3
# latency_milliseconds histogram unit="milliseconds" help="""#,
        );
        check_with(
            &converter,
            &delta("2000000000", "3,0", "10"),
            r#"
latency_milliseconds_bucket{job="svc",le="10"} 2000:4
latency_milliseconds_bucket{job="svc",le="+Inf"} 2000:6
latency_milliseconds_sum{job="svc"} 2000:6
latency_milliseconds_count{job="svc"} 2000:6
# latency_milliseconds histogram unit="milliseconds" help="""#,
        );
        // New bounds restart the running total.
        check_with(
            &converter,
            &delta("3000000000", "0,3", "20"),
            r#"
latency_milliseconds_bucket{job="svc",le="20"} 3000:0
latency_milliseconds_bucket{job="svc",le="+Inf"} 3000:3
latency_milliseconds_sum{job="svc"} 3000:3
latency_milliseconds_count{job="svc"} 3000:3
# latency_milliseconds histogram unit="milliseconds" help="""#,
        );
    }

    #[test]
    fn accumulates_a_delta_exponential_histogram_across_scales() {
        let converter = MetricsConverter::new(100);
        let delta = |time: &str, scale: i32, offset: i32, counts: &str, count: u64| {
            request(&format!(
                r#"{{"name":"x","exponentialHistogram":{{"aggregationTemporality":1,
                    "dataPoints":[{{"timeUnixNano":"{time}","count":"{count}","scale":{scale},
                      "positive":{{"offset":{offset},"bucketCounts":[{counts}]}}}}]}}}}"#
            ))
        };
        check_with(
            &converter,
            &delta("1000000000", 1, 0, "1,1", 2),
            r#"
x_bucket{job="svc",le="0"} 1000:0
x_bucket{job="svc",le="1.4142135623730951"} 1000:1
x_bucket{job="svc",le="2"} 1000:2
x_bucket{job="svc",le="+Inf"} 1000:2
x_count{job="svc"} 1000:2
# x histogram unit="" help="""#,
        );
        // Scale 0 now: the total is downscaled, (1, 2^0.5] and (2^0.5, 2]
        // merging into (1, 2].
        check_with(
            &converter,
            &delta("2000000000", 0, 1, "5", 5),
            r#"
x_bucket{job="svc",le="0"} 2000:0
x_bucket{job="svc",le="2"} 2000:2
x_bucket{job="svc",le="4"} 2000:7
x_bucket{job="svc",le="+Inf"} 2000:7
x_count{job="svc"} 2000:7
# x histogram unit="" help="""#,
        );
    }
}
