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

#[derive(Clone, Debug)]
pub(super) enum Running {
    Sum(f64),
    Histogram(ExplicitHistogram),
    Exponential(ExponentialHistogram),
}

/// A running total taken back from the store, and the time of its sample.
pub(super) struct Resumed {
    pub(super) last_unix_nano: u64,
    pub(super) running: Running,
}

impl Resumed {
    /// A running total from a stored sample at `timestamp_ms`: any point in
    /// that millisecond counts as not newer, since it would land on the same
    /// sample time.
    pub(super) fn at(timestamp_ms: i64, running: Running) -> Resumed {
        let millis = u64::try_from(timestamp_ms).unwrap_or(0);
        Resumed {
            last_unix_nano: millis.saturating_mul(1_000_000).saturating_add(999_999),
            running,
        }
    }
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

    /// The running total a delta point at `time` adds to, if any: the one
    /// held here, or else what `resume` takes back from the store. A point
    /// not newer than the last one added is refused: it is a retry or out of
    /// order, and adding it would count it twice.
    pub(super) fn previous(
        &self,
        key: &DeltaKey,
        time: u64,
        resume: impl FnOnce() -> Option<Resumed>,
    ) -> Result<Option<Running>, String> {
        let (last_unix_nano, running) = match self.entries.get(key) {
            Some(entry) => (entry.last_unix_nano, entry.running.clone()),
            None => match resume() {
                Some(resumed) => (resumed.last_unix_nano, resumed.running),
                None => return Ok(None),
            },
        };
        if time <= last_unix_nano {
            return Err(format!(
                "delta point at {time} ns is not newer than the last one ({last_unix_nano} ns); \
                 dropped as a duplicate or out of order"
            ));
        }
        Ok(Some(running))
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
    use std::cell::RefCell;
    use std::collections::HashMap;

    use crate::ingest::otlp_metrics::tests::{check_with, render, request};
    use crate::ingest::otlp_metrics::{MetricsConverter, StoredSamples};
    use crate::model::{Label, MetricSample};

    /// The newest sample of every series converted, as the metrics store
    /// keeps them across a restart.
    #[derive(Default)]
    struct Stored(RefCell<HashMap<Vec<Label>, MetricSample>>);

    impl Stored {
        /// Converts `json` with `converter`, resuming from and then storing
        /// into these samples; returns the rendering `check_with` compares.
        fn convert(&self, converter: &MetricsConverter, json: &str) -> String {
            let request = serde_json::from_str(json).unwrap();
            let converted = converter.convert(request, self);
            for series in &converted.series {
                if let Some(newest) = series.samples.last() {
                    self.0.borrow_mut().insert(series.labels.clone(), *newest);
                }
            }
            render(&converted)
        }
    }

    impl StoredSamples for Stored {
        fn newest(&self, labels: &[Label]) -> Option<MetricSample> {
            self.0.borrow().get(labels).copied()
        }

        fn newest_by(&self, labels: &[Label], extra: &str) -> Vec<(String, MetricSample)> {
            self.0
                .borrow()
                .iter()
                .filter_map(|(series, sample)| {
                    let value = series.iter().find(|l| l.name == extra)?;
                    let rest: Vec<&Label> = series.iter().filter(|l| l.name != extra).collect();
                    (rest.len() == labels.len() && rest.iter().zip(labels).all(|(a, b)| *a == b))
                        .then(|| (value.value.to_string(), *sample))
                })
                .collect()
        }
    }

    #[test]
    fn a_new_converter_resumes_delta_sums_from_the_stored_samples() {
        let delta = |time: &str, value: f64, flags: u32| {
            request(&format!(
                r#"{{"name":"jobs.done","sum":{{"aggregationTemporality":1,"isMonotonic":true,
                    "dataPoints":[{{"timeUnixNano":"{time}","asDouble":{value},"flags":{flags}}}]}}}}"#
            ))
        };
        let stored = Stored::default();
        stored.convert(&MetricsConverter::new(100), &delta("1000000000", 2.0, 0));
        stored.convert(&MetricsConverter::new(100), &delta("2000000000", 3.0, 0));
        // A restart: a new converter, the same store.
        let restarted = MetricsConverter::new(100);
        let got = stored.convert(&restarted, &delta("3000000000", 4.0, 0));
        assert!(
            got.starts_with(r#"jobs_done_total{job="svc"} 3000:9"#),
            "{got}"
        );
        // A retry of a point the store has is not counted twice.
        let got = stored.convert(&MetricsConverter::new(100), &delta("3000000000", 4.0, 0));
        assert!(
            got.contains("rejected=1") && got.contains("not newer"),
            "{got}"
        );
        // After a staleness marker the series starts from zero again.
        stored.convert(&restarted, &delta("4000000000", 0.0, 1));
        let got = stored.convert(&MetricsConverter::new(100), &delta("5000000000", 1.0, 0));
        assert!(
            got.starts_with(r#"jobs_done_total{job="svc"} 5000:1"#),
            "{got}"
        );
    }

    #[test]
    fn a_new_converter_resumes_delta_histograms_from_the_stored_samples() {
        let delta = |time: &str, counts: &str| {
            request(&format!(
                r#"{{"name":"latency","unit":"ms","histogram":{{"aggregationTemporality":1,
                    "dataPoints":[{{"timeUnixNano":"{time}","count":"3","sum":3,
                    "explicitBounds":[10],"bucketCounts":[{counts}]}}]}}}}"#
            ))
        };
        let stored = Stored::default();
        stored.convert(&MetricsConverter::new(100), &delta("1000000000", "1,2"));
        let got = stored.convert(&MetricsConverter::new(100), &delta("2000000000", "3,0"));
        assert_eq!(
            got,
            r#"latency_milliseconds_bucket{job="svc",le="10"} 2000:4
latency_milliseconds_bucket{job="svc",le="+Inf"} 2000:6
latency_milliseconds_sum{job="svc"} 2000:6
latency_milliseconds_count{job="svc"} 2000:6
# latency_milliseconds histogram unit="milliseconds" help=""
"#
        );
    }

    #[test]
    fn a_new_converter_resumes_delta_exponential_histograms_from_the_stored_samples() {
        // Scale 1 (base √2), a zero bucket, positive and negative buckets;
        // the third point comes at scale 0, as an SDK that downscaled sends.
        let delta = |time: &str, scale: i32, positive: &str, negative: &str| {
            request(&format!(
                r#"{{"name":"payload","unit":"By","exponentialHistogram":{{"aggregationTemporality":1,
                    "dataPoints":[{{"timeUnixNano":"{time}","count":"7","sum":12.5,"scale":{scale},
                    "zeroCount":"1","positive":{{"offset":1,"bucketCounts":[{positive}]}},
                    "negative":{{"offset":0,"bucketCounts":[{negative}]}}}}]}}}}"#
            ))
        };
        let points = [
            delta("1000000000", 1, "1,2,1", "2"),
            delta("2000000000", 1, "0,3,2", "1"),
            delta("3000000000", 0, "4,1", "1"),
        ];
        // Without a restart: one converter sees every point.
        let continuous = MetricsConverter::new(100);
        let expected: Vec<String> = points
            .iter()
            .map(|point| Stored::default().convert(&continuous, point))
            .collect();
        // With a restart before every point: each resumes from the store.
        let stored = Stored::default();
        for (point, expected) in points.iter().zip(&expected) {
            let got = stored.convert(&MetricsConverter::new(100), point);
            assert_eq!(&got, expected);
        }
        assert!(
            expected[2].contains(r#"payload_bytes_count{job="svc"} 3000:21"#),
            "{}",
            expected[2]
        );
    }

    #[test]
    fn an_exponential_total_with_gaps_or_one_bucket_resumes_too() {
        let delta = |time: &str, offset: i32, positive: &str, count: u32| {
            request(&format!(
                r#"{{"name":"payload","unit":"By","exponentialHistogram":{{"aggregationTemporality":1,
                    "dataPoints":[{{"timeUnixNano":"{time}","count":"{count}","scale":2,
                    "positive":{{"offset":{offset},"bucketCounts":[{positive}]}}}}]}}}}"#
            ))
        };
        // One bucket, then far from it (a gap in the total), then between.
        let points = [
            delta("1000000000", 3, "2", 2),
            delta("2000000000", 9, "1,1", 2),
            delta("3000000000", 5, "3", 3),
        ];
        let continuous = MetricsConverter::new(100);
        let stored = Stored::default();
        for point in &points {
            let expected = Stored::default().convert(&continuous, point);
            assert_eq!(stored.convert(&MetricsConverter::new(100), point), expected);
        }
    }

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
