//! OTLP metric requests -> Prometheus-style series (`model::SeriesSamples`).
//!
//! Follows OpenTelemetry's "Prometheus and OpenMetrics compatibility" spec (OTLP
//! to Prometheus) and, where the spec leaves a choice, what Prometheus's own
//! OTLP receiver does, so that a dashboard written for Prometheus works here
//! unchanged:
//!
//! - Names: invalid characters become `_` (runs collapse to one), the unit word
//!   is appended unless the name already contains it (`s` -> `_seconds`,
//!   `By/s` -> `_bytes_per_second`, `{packet}` dropped), counters end in
//!   `_total`, gauges with unit `1` in `_ratio`.
//! - Labels: data point attributes, sanitized; `otel_scope_name` and
//!   `otel_scope_version`; `job` (`service.namespace/service.name`) and
//!   `instance` (`service.instance.id`). Other resource attributes go to one
//!   `target_info` series per resource instead of onto every series.
//! - Types: gauges and non-monotonic sums are gauges, monotonic sums counters;
//!   histograms, exponential histograms (as classic `le` buckets) and summaries
//!   become their `_bucket`/`_sum`/`_count` families.
//! - Delta temporality is turned into cumulative by running totals held in
//!   `MetricsConverter`; a bounded map, so a client cannot grow it forever.
//! - Points flagged "no recorded value" become Prometheus staleness markers.
//!
//! A point that cannot be converted is rejected on its own (OTLP partial
//! success); the rest of the request is kept. Nothing here panics on any input.
//!
//! # Layout
//!
//! - `naming`: metric names from OTLP names, units and types; label names and
//!   values from attributes.
//! - `target_info`: resource attributes as `job`/`instance` and `target_info`.
//! - `points`: gauge, sum and summary points; point times and flags.
//! - `histograms`: explicit and exponential histograms as classic `le` buckets.
//! - `delta`: the running totals that turn delta temporality into cumulative.
//!
//! This file holds [`MetricsConverter`] and what every metric goes through:
//! its shape, temporality and the series it adds to the output.

mod delta;
mod histograms;
mod naming;
mod points;
mod target_info;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1 as otlp_metrics;

use self::delta::DeltaState;
use self::histograms::{exponential_point, histogram_point};
use self::naming::{MetricName, Shape, clean_value, format_float};
use self::points::{number_point, summary_point};
use self::target_info::ResourceLabels;
use crate::model::{
    Label, METRIC_NAME_LABEL, MetricKind, MetricMetadata, MetricSample, SeriesSamples,
    canonical_labels,
};

/// Converts OTLP metric requests; holds the running totals that turn delta
/// temporality into the cumulative series Prometheus semantics need.
///
/// Shareable between request handlers (`Send + Sync`, one interior lock held
/// for the duration of one `convert`). The state is bounded by the
/// `max_delta_series` given to `new`.
#[derive(Debug)]
pub struct MetricsConverter {
    state: Mutex<DeltaState>,
}

/// The series, metadata and rejections of one converted request.
#[derive(Debug, Default)]
pub struct ConvertedMetrics {
    /// One entry per series, in order of first appearance. Labels are in
    /// `model::canonical_labels` form; samples are oldest first, one per
    /// timestamp (the last point wins).
    pub series: Vec<SeriesSamples>,
    /// One entry per metric family that produced at least one sample. The
    /// family name is the name a PromQL user queries: the base name for
    /// histograms and summaries (without `_bucket`/`_sum`/`_count`) and, for
    /// counters, the full name with `_total`, as Prometheus's OTLP receiver
    /// and the Collector's remote-write exporter send it.
    pub metadata: Vec<MetricMetadata>,
    /// Data points that could not be converted, for OTLP partial success.
    pub rejected: u64,
    /// The first rejection reason, for the partial-success message.
    pub first_error: Option<String>,
}

impl MetricsConverter {
    /// A converter that keeps running totals for at most `max_delta_series`
    /// delta series (a histogram counts once). When full, series idle for an
    /// hour are evicted; if none are, points of new delta series are rejected.
    pub fn new(max_delta_series: usize) -> Self {
        MetricsConverter {
            state: Mutex::new(DeltaState::new(max_delta_series)),
        }
    }

    /// Converts one export request. Never fails as a whole: what cannot be
    /// converted is counted in `rejected`, the rest is returned. A delta
    /// series without a running total here resumes from `stored`.
    pub fn convert(
        &self,
        request: ExportMetricsServiceRequest,
        stored: StoredSample<'_>,
    ) -> ConvertedMetrics {
        // The state is only ever updated after a point is fully validated, so
        // a panic elsewhere cannot have left it half-written.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Output::default();
        for resource_metrics in request.resource_metrics {
            let resource = ResourceLabels::new(
                resource_metrics
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            );
            let mut times = BTreeSet::new();
            for scope_metrics in resource_metrics.scope_metrics {
                let scope = scope_metrics.scope.unwrap_or_default();
                let mut common = vec![
                    Label::new("otel_scope_name", clean_value(scope.name)),
                    Label::new("otel_scope_version", clean_value(scope.version)),
                ];
                common.extend(resource.identity.iter().cloned());
                for metric in scope_metrics.metrics {
                    convert_metric(&mut state, &mut out, &common, stored, metric, &mut times);
                }
            }
            resource.emit_target_info(&mut out, &times);
        }
        out.finish()
    }
}

/// The series built so far.
#[derive(Default)]
struct Output {
    series: Vec<SeriesSamples>,
    index: HashMap<Vec<Label>, usize>,
    metadata: Vec<MetricMetadata>,
    families: HashSet<String>,
    rejected: u64,
    first_error: Option<String>,
}

impl Output {
    /// Adds a sample; `labels` must be canonical.
    fn push(&mut self, labels: Vec<Label>, timestamp_ms: i64, value: f64) {
        let sample = MetricSample {
            timestamp_ms,
            value,
        };
        match self.index.get(&labels) {
            Some(&i) => self.series[i].samples.push(sample),
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(SeriesSamples {
                    labels,
                    samples: vec![sample],
                });
            }
        }
    }

    fn metadata(&mut self, family: &str, kind: MetricKind, help: String, unit: &str) {
        if self.families.insert(family.to_string()) {
            self.metadata.push(MetricMetadata {
                metric: family.to_string(),
                kind,
                help,
                unit: unit.to_string(),
            });
        }
    }

    fn reject(&mut self, points: usize, reason: String) {
        if points == 0 {
            return;
        }
        self.rejected = self
            .rejected
            .saturating_add(u64::try_from(points).unwrap_or(u64::MAX));
        self.first_error.get_or_insert(reason);
    }

    /// Adds a converted point, or counts its rejection. True when added.
    fn commit(
        &mut self,
        point: Result<PointSeries, String>,
        metric: &str,
        times: &mut BTreeSet<i64>,
    ) -> bool {
        match point {
            Ok(point) => {
                for (labels, value) in point.series {
                    self.push(labels, point.timestamp_ms, value);
                }
                times.insert(point.timestamp_ms);
                true
            }
            Err(reason) => {
                self.reject(1, format!("metric {metric:?}: {reason}"));
                false
            }
        }
    }

    fn finish(mut self) -> ConvertedMetrics {
        for series in &mut self.series {
            // Oldest first, and of samples at the same time the last sent wins.
            series.samples.reverse();
            series.samples.sort_by_key(|s| s.timestamp_ms);
            series.samples.dedup_by_key(|s| s.timestamp_ms);
        }
        ConvertedMetrics {
            series: self.series,
            metadata: self.metadata,
            rejected: self.rejected,
            first_error: self.first_error,
        }
    }
}

/// The samples one data point produced, all at one time.
struct PointSeries {
    timestamp_ms: i64,
    series: Vec<(Vec<Label>, f64)>,
}

/// What the converter reads back from the metrics store. The running totals
/// of delta series live in memory; the cumulative samples they produced are
/// durable (WAL, then the metrics store), so a series without a running
/// total — after a restart or `kill -9`, or an eviction — resumes from its
/// newest stored samples, which are exactly the sum of every delta
/// acknowledged before.
pub trait StoredSamples {
    /// The newest stored sample of the series with exactly `labels`
    /// (canonical), staleness markers included.
    fn newest(&self, labels: &[Label]) -> Option<MetricSample>;

    /// The newest stored samples of the series labelled `labels` plus one
    /// label `extra`: that label's value and the sample (an exponential
    /// histogram's buckets by `le`, which no point names in advance).
    fn newest_by(&self, labels: &[Label], extra: &str) -> Vec<(String, MetricSample)>;
}

pub type StoredSample<'a> = &'a dyn StoredSamples;

/// What the points of one metric share.
struct MetricContext<'a> {
    family: &'a str,
    /// Scope labels, then `job`/`instance`: added after the point's
    /// attributes, so they win over an attribute of the same name.
    common: &'a [Label],
    stored: StoredSample<'a>,
}

impl MetricContext<'_> {
    /// The canonical labels of one series: attributes, common labels, the
    /// `le`/`quantile` label if any, and the name (which always wins).
    fn labels(&self, attributes: &[Label], suffix: &str, extra: Option<(&str, f64)>) -> Vec<Label> {
        let mut labels = Vec::with_capacity(attributes.len() + self.common.len() + 2);
        labels.extend_from_slice(attributes);
        labels.extend_from_slice(self.common);
        if let Some((name, value)) = extra {
            labels.push(Label::new(name, format_float(value)));
        }
        labels.push(Label::new(
            METRIC_NAME_LABEL,
            format!("{}{suffix}", self.family),
        ));
        canonical_labels(labels)
    }
}

fn convert_metric(
    state: &mut DeltaState,
    out: &mut Output,
    common: &[Label],
    stored: StoredSample<'_>,
    metric: otlp_metrics::Metric,
    times: &mut BTreeSet<i64>,
) {
    use otlp_metrics::metric::Data;
    let Some(data) = metric.data else {
        return;
    };
    let (shape, points) = match &data {
        Data::Gauge(g) => (Shape::Gauge, g.data_points.len()),
        Data::Sum(s) if s.is_monotonic => (Shape::Counter, s.data_points.len()),
        Data::Sum(s) => (Shape::UpDownSum, s.data_points.len()),
        Data::Histogram(h) => (Shape::Histogram, h.data_points.len()),
        Data::ExponentialHistogram(h) => (Shape::Histogram, h.data_points.len()),
        Data::Summary(s) => (Shape::Summary, s.data_points.len()),
    };
    let name = MetricName::new(&metric.name, &metric.unit, shape);
    if name.family.is_empty() {
        out.reject(
            points,
            format!(
                "metric {:?}: name has no valid character (a-z, A-Z, 0-9, :)",
                metric.name
            ),
        );
        return;
    }
    let temporality = match &data {
        Data::Sum(s) => Some(s.aggregation_temporality),
        Data::Histogram(h) => Some(h.aggregation_temporality),
        Data::ExponentialHistogram(h) => Some(h.aggregation_temporality),
        Data::Gauge(_) | Data::Summary(_) => None,
    };
    let delta = match temporality.map(otlp_metrics::AggregationTemporality::try_from) {
        None | Some(Ok(otlp_metrics::AggregationTemporality::Cumulative)) => false,
        Some(Ok(otlp_metrics::AggregationTemporality::Delta)) => true,
        Some(_) => {
            out.reject(
                points,
                format!(
                    "metric {:?}: aggregation temporality must be delta or cumulative",
                    metric.name
                ),
            );
            return;
        }
    };
    let context = MetricContext {
        family: &name.family,
        common,
        stored,
    };
    let mut accepted = false;
    let display = metric.name.as_str();
    match data {
        Data::Gauge(gauge) => {
            for point in gauge.data_points {
                let point = number_point(state, &context, point, None);
                accepted |= out.commit(point, display, times);
            }
        }
        Data::Sum(sum) => {
            let monotonic = delta.then_some(sum.is_monotonic);
            for point in sum.data_points {
                let point = number_point(state, &context, point, monotonic);
                accepted |= out.commit(point, display, times);
            }
        }
        Data::Histogram(histogram) => {
            for point in histogram.data_points {
                let point = histogram_point(state, &context, point, delta);
                accepted |= out.commit(point, display, times);
            }
        }
        Data::ExponentialHistogram(histogram) => {
            for point in histogram.data_points {
                let point = exponential_point(state, &context, point, delta);
                accepted |= out.commit(point, display, times);
            }
        }
        Data::Summary(summary) => {
            for point in summary.data_points {
                let point = summary_point(&context, point);
                accepted |= out.commit(point, display, times);
            }
        }
    }
    if accepted {
        out.metadata(&name.family, shape.kind(), metric.description, &name.unit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::STALE_NAN_BITS;
    use opentelemetry_proto::tonic::common::v1 as otlp_common;

    /// A metrics store that holds nothing: a first start.
    pub(super) struct NothingStored;

    impl StoredSamples for NothingStored {
        fn newest(&self, _: &[Label]) -> Option<MetricSample> {
            None
        }

        fn newest_by(&self, _: &[Label], _: &str) -> Vec<(String, MetricSample)> {
            Vec::new()
        }
    }

    use proptest::prelude::*;

    /// Runs an OTLP/JSON request through `converter` and compares a compact
    /// rendering (one line per series, then metadata and rejections) with
    /// `expect`.
    pub(super) fn check_with(converter: &MetricsConverter, json: &str, expect: &str) {
        let request: ExportMetricsServiceRequest = serde_json::from_str(json).unwrap();
        let converted = converter.convert(request, &NothingStored);
        let got = render(&converted);
        assert_eq!(got.trim(), expect.trim(), "\n--- got ---\n{got}");
    }

    pub(super) fn check(json: &str, expect: &str) {
        check_with(&MetricsConverter::new(100), json, expect);
    }

    pub(super) fn render(converted: &ConvertedMetrics) -> String {
        let mut got = String::new();
        for series in &converted.series {
            assert_eq!(series.labels, canonical_labels(series.labels.clone()));
            let labels: Vec<String> = series
                .labels
                .iter()
                .filter(|l| l.name != METRIC_NAME_LABEL)
                .map(|l| format!("{}={:?}", l.name, l.value))
                .collect();
            let samples: Vec<String> = series
                .samples
                .iter()
                .map(|s| match s.value {
                    v if v.to_bits() == STALE_NAN_BITS => format!("{}:stale", s.timestamp_ms),
                    v => format!("{}:{v}", s.timestamp_ms),
                })
                .collect();
            got.push_str(&format!(
                "{}{{{}}} {}\n",
                series.metric_name(),
                labels.join(","),
                samples.join(" ")
            ));
        }
        for m in &converted.metadata {
            got.push_str(&format!(
                "# {} {} unit={:?} help={:?}\n",
                m.metric,
                m.kind.as_str(),
                m.unit,
                m.help
            ));
        }
        if let Some(error) = &converted.first_error {
            got.push_str(&format!("rejected={} {error}\n", converted.rejected));
        }
        got
    }

    /// A request with one resource (`service.name` = `svc`) and one metric.
    pub(super) fn request(metric: &str) -> String {
        format!(
            r#"{{"resourceMetrics":[{{"resource":{{"attributes":[
                {{"key":"service.name","value":{{"stringValue":"svc"}}}}]}},
              "scopeMetrics":[{{"metrics":[{metric}]}}]}}]}}"#
        )
    }

    #[test]
    fn non_monotonic_sum_is_a_gauge() {
        let converter = MetricsConverter::new(100);
        let sum = |temporality: u8, time: &str, value: i64| {
            request(&format!(
                r#"{{"name":"memory.usage","unit":"By","sum":{{"aggregationTemporality":{temporality},
                    "isMonotonic":false,"dataPoints":[{{"timeUnixNano":"{time}","asInt":"{value}"}}]}}}}"#
            ))
        };
        check_with(
            &converter,
            &sum(2, "1000000000", 512),
            r#"
memory_usage_bytes{job="svc"} 1000:512
# memory_usage_bytes gauge unit="bytes" help="""#,
        );
        // A delta up-down counter is a running total too, and may go down.
        check_with(
            &converter,
            &sum(1, "1000000000", 10),
            r#"memory_usage_bytes{job="svc"} 1000:10
# memory_usage_bytes gauge unit="bytes" help="""#,
        );
        check_with(
            &converter,
            &sum(1, "2000000000", -4),
            r#"memory_usage_bytes{job="svc"} 2000:6
# memory_usage_bytes gauge unit="bytes" help="""#,
        );
    }

    #[test]
    fn invalid_points_are_rejected_alone() {
        check(
            &request(
                r#"{"name":"...","gauge":{"dataPoints":[{"timeUnixNano":"1","asInt":"1"}]}},
                   {"name":"g","gauge":{"dataPoints":[
                     {"timeUnixNano":"0","asInt":"1"},
                     {"timeUnixNano":"1000000000"},
                     {"timeUnixNano":"1000000000","asDouble":1}]}},
                   {"name":"s","sum":{"aggregationTemporality":0,"dataPoints":[{"timeUnixNano":"1","asInt":"1"}]}}"#,
            ),
            r#"
g{job="svc"} 1000:1
# g gauge unit="" help=""
rejected=4 metric "...": name has no valid character (a-z, A-Z, 0-9, :)"#,
        );
    }

    fn arb_attributes() -> impl Strategy<Value = Vec<otlp_common::KeyValue>> {
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "a", "a.b", "a_b", "", "__name__", "le", "job", "1x", "é",
                ]),
                prop::option::of(any::<i64>()),
            )
                .prop_map(|(key, value)| otlp_common::KeyValue {
                    key: key.to_string(),
                    key_strindex: 0,
                    value: value.map(|v| otlp_common::AnyValue {
                        value: Some(otlp_common::any_value::Value::IntValue(v % 3)),
                    }),
                }),
            0..3,
        )
    }

    fn arb_time() -> impl Strategy<Value = u64> {
        prop_oneof![
            1 => Just(0u64),
            1 => Just(u64::MAX),
            6 => 1_000_000_000u64..1_000_000_010u64,
            1 => any::<u64>(),
        ]
    }

    fn arb_float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            -2.0..2.0f64
        ]
    }

    fn arb_metric() -> impl Strategy<Value = otlp_metrics::Metric> {
        use otlp_metrics::metric::Data;
        let buckets = || {
            prop::option::of(
                (
                    any::<i32>(),
                    prop::collection::vec(prop_oneof![50 => 0u64..10, 1 => any::<u64>()], 0..400),
                )
                    .prop_map(|(offset, bucket_counts)| {
                        otlp_metrics::exponential_histogram_data_point::Buckets {
                            offset: offset % 4 * (i32::MAX / 4),
                            bucket_counts,
                        }
                    }),
            )
        };
        let number = || {
            (
                arb_time(),
                0u32..3,
                prop::option::of(arb_float()),
                arb_attributes(),
            )
                .prop_map(|(time, flags, value, attributes)| {
                    otlp_metrics::NumberDataPoint {
                        time_unix_nano: time,
                        flags,
                        value: value.map(otlp_metrics::number_data_point::Value::AsDouble),
                        attributes,
                        ..Default::default()
                    }
                })
        };
        let histogram = (
            arb_time(),
            0u32..3,
            any::<u64>(),
            prop::option::of(arb_float()),
            prop_oneof![
                prop::collection::vec(0u64..5, 0..5),
                prop::collection::vec(0u64..5, 3)
            ],
            prop_oneof![
                prop::collection::vec(arb_float(), 0..4),
                Just(vec![0.5, 1.0])
            ],
            arb_attributes(),
        )
            .prop_map(
                |(time, flags, count, sum, bucket_counts, explicit_bounds, attributes)| {
                    otlp_metrics::HistogramDataPoint {
                        time_unix_nano: time,
                        flags,
                        count,
                        sum,
                        bucket_counts,
                        explicit_bounds,
                        attributes,
                        ..Default::default()
                    }
                },
            );
        let exponential = (
            (
                arb_time(),
                0u32..3,
                any::<u64>(),
                prop::option::of(arb_float()),
            ),
            (
                -12i32..23,
                any::<u64>(),
                prop_oneof![Just(0.0), arb_float()],
                buckets(),
                buckets(),
            ),
        )
            .prop_map(
                |(
                    (time, flags, count, sum),
                    (scale, zero_count, zero_threshold, positive, negative),
                )| {
                    otlp_metrics::ExponentialHistogramDataPoint {
                        time_unix_nano: time,
                        flags,
                        count,
                        sum,
                        scale,
                        zero_count,
                        zero_threshold,
                        positive,
                        negative,
                        ..Default::default()
                    }
                },
            );
        let summary = (
            arb_time(),
            0u32..3,
            arb_float(),
            prop::collection::vec((arb_float(), arb_float()), 0..3),
        )
            .prop_map(
                |(time, flags, sum, quantiles)| otlp_metrics::SummaryDataPoint {
                    time_unix_nano: time,
                    flags,
                    sum,
                    count: 1,
                    quantile_values: quantiles
                        .into_iter()
                        .map(|(quantile, value)| {
                            otlp_metrics::summary_data_point::ValueAtQuantile { quantile, value }
                        })
                        .collect(),
                    ..Default::default()
                },
            );
        let data = prop_oneof![
            prop::collection::vec(number(), 0..4)
                .prop_map(|data_points| Data::Gauge(otlp_metrics::Gauge { data_points })),
            (
                prop::collection::vec(number(), 0..4),
                0i32..4,
                any::<bool>()
            )
                .prop_map(|(data_points, aggregation_temporality, is_monotonic)| {
                    Data::Sum(otlp_metrics::Sum {
                        data_points,
                        aggregation_temporality,
                        is_monotonic,
                    })
                }),
            (prop::collection::vec(histogram, 0..3), 0i32..3).prop_map(
                |(data_points, aggregation_temporality)| {
                    Data::Histogram(otlp_metrics::Histogram {
                        data_points,
                        aggregation_temporality,
                    })
                }
            ),
            (prop::collection::vec(exponential, 0..3), 0i32..3).prop_map(
                |(data_points, aggregation_temporality)| {
                    Data::ExponentialHistogram(otlp_metrics::ExponentialHistogram {
                        data_points,
                        aggregation_temporality,
                    })
                }
            ),
            prop::collection::vec(summary, 0..3)
                .prop_map(|data_points| Data::Summary(otlp_metrics::Summary { data_points })),
        ];
        (
            prop::sample::select(vec!["", "a.b", "1", "...", "x_total", "ratio", "c", "d:e"]),
            prop::sample::select(vec!["", "1", "s", "By/s", "{x}", "/", "a/b/c", "%"]),
            prop::option::weighted(0.9, data),
        )
            .prop_map(|(name, unit, data)| otlp_metrics::Metric {
                name: name.to_string(),
                unit: unit.to_string(),
                data,
                ..Default::default()
            })
    }

    fn arb_request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
        use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        prop::collection::vec(
            (arb_attributes(), prop::collection::vec(arb_metric(), 1..5)).prop_map(
                |(attributes, metrics)| ResourceMetrics {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_metrics: vec![ScopeMetrics {
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
            1..3,
        )
        .prop_map(|resource_metrics| ExportMetricsServiceRequest { resource_metrics })
    }

    proptest! {
        #[test]
        fn random_requests_never_panic(first in arb_request(), second in arb_request()) {
            let converter = MetricsConverter::new(4);
            for request in [first, second] {
                let converted = converter.convert(request, &NothingStored);
                for series in &converted.series {
                    prop_assert_eq!(&series.labels, &canonical_labels(series.labels.clone()));
                    prop_assert!(!series.metric_name().is_empty());
                    prop_assert!(series.samples.windows(2).all(|w| w[0].timestamp_ms < w[1].timestamp_ms));
                }
                prop_assert_eq!(converted.rejected > 0, converted.first_error.is_some());
            }
        }
    }
}
