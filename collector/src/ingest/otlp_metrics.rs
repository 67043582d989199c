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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1 as otlp_common;
use opentelemetry_proto::tonic::metrics::v1 as otlp_metrics;

use crate::model::{
    Label, METRIC_NAME_LABEL, MetricKind, MetricMetadata, MetricSample, STALE_NAN_BITS,
    SeriesSamples, canonical_labels,
};

const TARGET_INFO: &str = "target_info";
const SERVICE_NAME: &str = "service.name";
const SERVICE_NAMESPACE: &str = "service.namespace";
const SERVICE_INSTANCE_ID: &str = "service.instance.id";

/// The scales the OTLP data model allows for exponential histograms.
const MIN_SCALE: i32 = -10;
const MAX_SCALE: i32 = 20;
/// Exponential histograms are downscaled until each sign has at most this many
/// buckets (the SDKs' default maximum), so one point never becomes thousands
/// of `le` series.
const MAX_EXPONENTIAL_BUCKETS: usize = 160;

/// A delta series not updated for this long (in point time, relative to the
/// newest point seen) may be evicted when the running totals are full.
const DELTA_SERIES_IDLE_NANOS: u64 = 3_600 * 1_000_000_000;
/// Idle delta series are looked for at most this often (in point time), so a
/// full map does not cost a scan per rejected point.
const DELTA_SWEEP_EVERY_NANOS: u64 = 60 * 1_000_000_000;

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
            state: Mutex::new(DeltaState {
                max_series: max_delta_series,
                entries: HashMap::new(),
                newest_unix_nano: 0,
                last_sweep_unix_nano: 0,
            }),
        }
    }

    /// Converts one export request. Never fails as a whole: what cannot be
    /// converted is counted in `rejected`, the rest is returned.
    pub fn convert(&self, request: ExportMetricsServiceRequest) -> ConvertedMetrics {
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
                    convert_metric(&mut state, &mut out, &common, metric, &mut times);
                }
            }
            resource.emit_target_info(&mut out, &times);
        }
        out.finish()
    }
}

/// How a metric is named and typed; decides the suffixes and the metadata kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Gauge,
    Counter,
    /// A non-monotonic sum: a gauge for Prometheus, but never `_ratio`.
    UpDownSum,
    Histogram,
    Summary,
}

impl Shape {
    fn kind(self) -> MetricKind {
        match self {
            Shape::Gauge | Shape::UpDownSum => MetricKind::Gauge,
            Shape::Counter => MetricKind::Counter,
            Shape::Histogram => MetricKind::Histogram,
            Shape::Summary => MetricKind::Summary,
        }
    }
}

/// The Prometheus name of a metric family and its unit word.
#[derive(Debug, PartialEq, Eq)]
struct MetricName {
    /// Empty when the OTLP name has no valid character at all.
    family: String,
    unit: String,
}

impl MetricName {
    fn new(name: &str, unit: &str, shape: Shape) -> MetricName {
        let mut tokens: Vec<&str> = name
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
            .filter(|t| !t.is_empty())
            .collect();
        if tokens.is_empty() {
            return MetricName {
                family: String::new(),
                unit: String::new(),
            };
        }
        // The type suffix comes after the unit: take it off, put it back last.
        let type_suffix = match shape {
            Shape::Counter => Some("total"),
            Shape::Gauge if unit.trim() == "1" => Some("ratio"),
            _ => None,
        };
        if type_suffix.is_some() && tokens.len() > 1 && tokens.last().copied() == type_suffix {
            tokens.pop();
        }
        let (main, per) = unit_words(unit);
        let mut family = tokens.join("_");
        for word in [&main, &per] {
            if !word.is_empty() && !contains_words(&tokens, word) {
                family.push('_');
                family.push_str(word);
            }
        }
        if let Some(suffix) = type_suffix {
            family.push('_');
            family.push_str(suffix);
        }
        if family.starts_with(|c: char| c.is_ascii_digit()) {
            family.insert(0, '_');
        }
        let unit = match (main.is_empty(), per.is_empty()) {
            _ if shape == Shape::Gauge && unit.trim() == "1" => "ratio".to_string(),
            (false, false) => format!("{main}_{per}"),
            (false, true) => main,
            (true, _) => per,
        };
        MetricName { family, unit }
    }
}

/// Whether `words` (underscore-separated) appear as consecutive whole tokens.
fn contains_words(tokens: &[&str], words: &str) -> bool {
    let words: Vec<&str> = words.split('_').collect();
    tokens.windows(words.len()).any(|window| window == words)
}

/// The Prometheus words for an OTLP (UCUM) unit: the main unit and the `per_`
/// part, each "" when absent. Annotations in braces are dropped, unknown units
/// kept as written (sanitized).
fn unit_words(unit: &str) -> (String, String) {
    let (main, per) = match unit.split_once('/') {
        Some((main, per)) => (main.trim(), per.trim()),
        None => (unit.trim(), ""),
    };
    let usable = |part: &str| !part.is_empty() && !part.contains(['{', '}']);
    let main = if usable(main) {
        clean_unit(match main {
            "d" => "days",
            "h" => "hours",
            "min" => "minutes",
            "s" => "seconds",
            "ms" => "milliseconds",
            "us" => "microseconds",
            "ns" => "nanoseconds",
            "By" => "bytes",
            "KiBy" => "kibibytes",
            "MiBy" => "mebibytes",
            "GiBy" => "gibibytes",
            "TiBy" => "tebibytes",
            "KBy" => "kilobytes",
            "MBy" => "megabytes",
            "GBy" => "gigabytes",
            "TBy" => "terabytes",
            "m" => "meters",
            "V" => "volts",
            "A" => "amperes",
            "J" => "joules",
            "W" => "watts",
            "g" => "grams",
            "Cel" => "celsius",
            "Hz" => "hertz",
            "%" => "percent",
            "1" => "",
            other => other,
        })
    } else {
        String::new()
    };
    let per = if usable(per) {
        let word = clean_unit(match per {
            "s" => "second",
            "m" => "minute",
            "h" => "hour",
            "d" => "day",
            "w" => "week",
            "mo" => "month",
            "y" => "year",
            other => other,
        });
        if word.is_empty() {
            word
        } else {
            format!("per_{word}")
        }
    } else {
        String::new()
    };
    (main, per)
}

/// A unit as metric name characters: invalid ones become `_`, runs of `_`
/// collapse, no `_` at either end.
fn clean_unit(unit: &str) -> String {
    unit.split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// A Prometheus label name for an attribute key, as Prometheus's OTLP receiver
/// builds it: invalid characters become `_` and runs of `_` collapse; a name
/// starting with a digit gets `key_`; a reserved `__x__` name keeps its
/// underscores. `None` for a key with no valid character at all.
fn label_name(key: &str) -> Option<String> {
    let reserved = key
        .strip_prefix("__")
        .and_then(|k| k.strip_suffix("__"))
        .filter(|_| key.len() >= 4);
    let mut name = String::with_capacity(key.len() + 4);
    let mut last_was_underscore = false;
    for c in reserved.unwrap_or(key).chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c);
            last_was_underscore = false;
        } else if !last_was_underscore {
            name.push('_');
            last_was_underscore = true;
        }
    }
    if reserved.is_some() {
        name = format!("__{name}__");
    }
    if name.bytes().all(|b| b == b'_') {
        None
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some(format!("key_{name}"))
    } else {
        Some(name)
    }
}

/// Attributes as labels. Keys that sanitize to the same name have their values
/// joined with `;` in the order of the original keys, as the spec says;
/// attributes without a value or with an empty one are dropped.
fn attribute_labels(attributes: Vec<otlp_common::KeyValue>) -> Vec<Label> {
    let mut named: Vec<(String, String, String)> = attributes
        .into_iter()
        .filter_map(|kv| {
            let value = any_value_string(kv.value?)?;
            Some((label_name(&kv.key)?, kv.key, value))
        })
        .filter(|(_, _, value)| !value.is_empty())
        .collect();
    named.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut labels: Vec<Label> = Vec::with_capacity(named.len());
    for (name, _, value) in named {
        match labels.last_mut() {
            Some(last) if last.name == name => {
                last.value.push(';');
                last.value.push_str(&value);
            }
            _ => labels.push(Label::new(name, value)),
        }
    }
    labels
}

/// An attribute value as label text, following the attribute spec: strings
/// as they are, numbers and booleans in their usual form, bytes as base64,
/// arrays and maps as JSON. `None` for a value that carries nothing.
fn any_value_string(value: otlp_common::AnyValue) -> Option<String> {
    use otlp_common::any_value::Value;
    Some(match value.value? {
        Value::StringValue(s) => clean_value(s),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BytesValue(b) => base64(&b),
        other @ (Value::ArrayValue(_) | Value::KvlistValue(_)) => {
            clean_value(any_value_json(Some(other)).to_string())
        }
        // Only meaningful with a profiles dictionary, which metrics never have.
        Value::StringValueStrindex(_) => return None,
    })
}

fn any_value_json(value: Option<otlp_common::any_value::Value>) -> serde_json::Value {
    use otlp_common::any_value::Value;
    use serde_json::Value as Json;
    match value {
        None | Some(Value::StringValueStrindex(_)) => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s),
        Some(Value::BoolValue(b)) => Json::Bool(b),
        Some(Value::IntValue(i)) => Json::from(i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(d)
            .map_or_else(|| Json::String(d.to_string()), Json::Number),
        Some(Value::BytesValue(b)) => Json::String(base64(&b)),
        Some(Value::ArrayValue(array)) => Json::Array(
            array
                .values
                .into_iter()
                .map(|v| any_value_json(v.value))
                .collect(),
        ),
        Some(Value::KvlistValue(map)) => Json::Object(
            map.values
                .into_iter()
                .map(|kv| (kv.key, any_value_json(kv.value.and_then(|v| v.value))))
                .collect(),
        ),
    }
}

/// Standard base64 with padding, how the attribute spec renders bytes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Label values lose NUL bytes, which stores use as separators (as span names
/// do in `ingest::otlp`).
fn clean_value(value: String) -> String {
    if value.contains('\0') {
        value.replace('\0', "\u{fffd}")
    } else {
        value
    }
}

/// A float as Prometheus writes `le` and `quantile` values (Go's
/// `FormatFloat(f, 'f', -1, 64)`): `1`, `0.005`, `+Inf`.
fn format_float(value: f64) -> String {
    if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else if value.is_nan() {
        "NaN".to_string()
    } else {
        value.to_string()
    }
}

fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// A value as sent; a NaN that happens to carry the staleness bits is turned
/// into an ordinary NaN so only flagged points end a series.
fn sample_value(value: f64) -> f64 {
    if value.to_bits() == STALE_NAN_BITS {
        f64::NAN
    } else {
        value
    }
}

fn is_stale(flags: u32) -> bool {
    flags & otlp_metrics::DataPointFlags::NoRecordedValueMask as u32 != 0
}

/// Milliseconds since the epoch. A point without a time is rejected: stored at
/// 1970 it would be invisible and never expire.
fn timestamp_ms(time_unix_nano: u64) -> Result<i64, String> {
    if time_unix_nano == 0 {
        return Err("time_unix_nano is missing".to_string());
    }
    Ok(i64::try_from(time_unix_nano / 1_000_000).unwrap_or(i64::MAX))
}

/// The identifying labels of a resource and the rest, for `target_info`.
struct ResourceLabels {
    /// `job` and `instance`, when the resource says them.
    identity: Vec<Label>,
    info: Vec<Label>,
}

impl ResourceLabels {
    fn new(attributes: Vec<otlp_common::KeyValue>) -> ResourceLabels {
        let (mut name, mut namespace, mut instance) = (None, None, None);
        let mut rest = Vec::with_capacity(attributes.len());
        for kv in attributes {
            let slot = match kv.key.as_str() {
                SERVICE_NAME => &mut name,
                SERVICE_NAMESPACE => &mut namespace,
                SERVICE_INSTANCE_ID => &mut instance,
                _ => {
                    rest.push(kv);
                    continue;
                }
            };
            *slot = kv
                .value
                .and_then(any_value_string)
                .filter(|v| !v.is_empty());
        }
        let mut identity = Vec::with_capacity(2);
        if let Some(name) = name {
            let job = match namespace {
                Some(namespace) => format!("{namespace}/{name}"),
                None => name,
            };
            identity.push(Label::new("job", job));
        }
        if let Some(instance) = instance {
            identity.push(Label::new("instance", instance));
        }
        ResourceLabels {
            identity,
            info: attribute_labels(rest),
        }
    }

    /// One `target_info` sample (value 1) at each time a point of this resource
    /// was accepted, so joins on `job`/`instance` find it at every such time.
    /// Like Prometheus, none without other attributes (nothing to say) or
    /// without `job`/`instance` (nothing to join on).
    fn emit_target_info(&self, out: &mut Output, times: &BTreeSet<i64>) {
        if self.info.is_empty() || self.identity.is_empty() || times.is_empty() {
            return;
        }
        let mut labels = self.info.clone();
        labels.extend(self.identity.iter().cloned());
        labels.push(Label::new(METRIC_NAME_LABEL, TARGET_INFO));
        let labels = canonical_labels(labels);
        for &time in times {
            out.push(labels.clone(), time, 1.0);
        }
        out.metadata(
            TARGET_INFO,
            MetricKind::Gauge,
            "Target metadata".to_string(),
            "",
        );
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

/// What the points of one metric share.
struct MetricContext<'a> {
    family: &'a str,
    /// Scope labels, then `job`/`instance`: added after the point's
    /// attributes, so they win over an attribute of the same name.
    common: &'a [Label],
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

/// A gauge or sum point. `delta` is `Some(is_monotonic)` for delta sums,
/// which are added to their running total.
fn number_point(
    state: &mut DeltaState,
    context: &MetricContext<'_>,
    point: otlp_metrics::NumberDataPoint,
    delta: Option<bool>,
) -> Result<PointSeries, String> {
    use otlp_metrics::number_data_point::Value;
    let timestamp_ms = timestamp_ms(point.time_unix_nano)?;
    let labels = context.labels(&attribute_labels(point.attributes), "", None);
    if is_stale(point.flags) {
        if delta.is_some() {
            state.forget(DeltaKind::Sum, &labels);
        }
        return Ok(PointSeries {
            timestamp_ms,
            series: vec![(labels, stale_nan())],
        });
    }
    let value = match point.value {
        Some(Value::AsDouble(value)) => value,
        Some(Value::AsInt(value)) => value as f64,
        None => return Err("data point has no value".to_string()),
    };
    let value = match delta {
        None => sample_value(value),
        Some(monotonic) => {
            if !value.is_finite() {
                return Err(format!("delta value {value} is not finite"));
            }
            if monotonic && value < 0.0 {
                return Err(format!("monotonic delta value {value} is negative"));
            }
            let key = DeltaKey {
                kind: DeltaKind::Sum,
                labels: labels.clone(),
            };
            let total = match state.previous(&key, point.time_unix_nano)? {
                Some(Running::Sum(total)) => total + value,
                _ => value,
            };
            state.store(key, point.time_unix_nano, Running::Sum(total))?;
            total
        }
    };
    Ok(PointSeries {
        timestamp_ms,
        series: vec![(labels, value)],
    })
}

/// Cumulative `le` buckets (finite bounds, strictly increasing), ready to be
/// written as a classic Prometheus histogram.
struct ClassicHistogram {
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: Option<f64>,
}

impl ClassicHistogram {
    /// The `_bucket` series (with `+Inf` = count), `_sum` when known, and
    /// `_count`; every value a staleness marker when `stale`.
    fn series(
        &self,
        context: &MetricContext<'_>,
        attributes: &[Label],
        stale: bool,
    ) -> Vec<(Vec<Label>, f64)> {
        let value = |v: f64| if stale { stale_nan() } else { sample_value(v) };
        let mut series = Vec::with_capacity(self.buckets.len() + 3);
        for &(le, cumulative) in &self.buckets {
            series.push((
                context.labels(attributes, "_bucket", Some(("le", le))),
                value(cumulative as f64),
            ));
        }
        series.push((
            context.labels(attributes, "_bucket", Some(("le", f64::INFINITY))),
            value(self.count as f64),
        ));
        if let Some(sum) = self.sum {
            series.push((context.labels(attributes, "_sum", None), value(sum)));
        }
        series.push((
            context.labels(attributes, "_count", None),
            value(self.count as f64),
        ));
        series
    }
}

/// An explicit-bucket histogram point, or the running total of a delta one.
#[derive(Clone, Debug)]
struct ExplicitHistogram {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative); `bounds.len() + 1` entries, or none.
    counts: Vec<u64>,
    count: u64,
    sum: Option<f64>,
}

impl ExplicitHistogram {
    fn new(point: &otlp_metrics::HistogramDataPoint) -> Result<ExplicitHistogram, String> {
        check_bounds(&point.explicit_bounds)?;
        let buckets = point.bucket_counts.len();
        if buckets != 0 && buckets != point.explicit_bounds.len() + 1 {
            return Err(format!(
                "{buckets} bucket counts for {} explicit bounds (want one more count than bounds)",
                point.explicit_bounds.len()
            ));
        }
        if buckets == 0 && !point.explicit_bounds.is_empty() {
            return Err("explicit bounds without bucket counts".to_string());
        }
        let total = point
            .bucket_counts
            .iter()
            .fold(0u64, |total, c| total.saturating_add(*c));
        if total > point.count {
            return Err(format!(
                "bucket counts add up to {total}, more than count {}",
                point.count
            ));
        }
        Ok(ExplicitHistogram {
            bounds: point.explicit_bounds.clone(),
            counts: point.bucket_counts.clone(),
            count: point.count,
            sum: point.sum,
        })
    }

    /// Adds a later delta; `None` when the bucket layout changed, which
    /// restarts the running total.
    fn add(&self, delta: &ExplicitHistogram) -> Option<ExplicitHistogram> {
        let same_bounds = self.bounds.len() == delta.bounds.len()
            && self
                .bounds
                .iter()
                .zip(&delta.bounds)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same_bounds || self.counts.len() != delta.counts.len() {
            return None;
        }
        Some(ExplicitHistogram {
            bounds: self.bounds.clone(),
            counts: self
                .counts
                .iter()
                .zip(&delta.counts)
                .map(|(a, b)| a.saturating_add(*b))
                .collect(),
            count: self.count.saturating_add(delta.count),
            sum: self.sum.zip(delta.sum).map(|(a, b)| a + b),
        })
    }

    fn classic(&self) -> ClassicHistogram {
        let mut cumulative = 0u64;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(&le, &count)| {
                cumulative = cumulative.saturating_add(count);
                (le, cumulative)
            })
            .collect();
        ClassicHistogram {
            buckets,
            count: self.count,
            sum: self.sum,
        }
    }
}

/// Explicit bounds must be finite and strictly increasing to be `le` values.
fn check_bounds(bounds: &[f64]) -> Result<(), String> {
    if let Some(bad) = bounds.iter().find(|b| !b.is_finite()) {
        return Err(format!("explicit bound {bad} is not finite"));
    }
    if bounds.windows(2).any(|w| w[0] >= w[1]) {
        return Err("explicit bounds are not strictly increasing".to_string());
    }
    Ok(())
}

fn histogram_point(
    state: &mut DeltaState,
    context: &MetricContext<'_>,
    mut point: otlp_metrics::HistogramDataPoint,
    delta: bool,
) -> Result<PointSeries, String> {
    let timestamp_ms = timestamp_ms(point.time_unix_nano)?;
    let attributes = attribute_labels(std::mem::take(&mut point.attributes));
    let key = DeltaKey {
        kind: DeltaKind::Histogram,
        labels: context.labels(&attributes, "", None),
    };
    if is_stale(point.flags) {
        if delta {
            state.forget(key.kind, &key.labels);
        }
        // A stale point carries no counts; its bounds still name the buckets.
        let bounds = match check_bounds(&point.explicit_bounds) {
            Ok(()) => point.explicit_bounds.as_slice(),
            Err(_) => &[],
        };
        let classic = ClassicHistogram {
            buckets: bounds.iter().map(|&le| (le, 0)).collect(),
            count: 0,
            sum: point.sum,
        };
        return Ok(PointSeries {
            timestamp_ms,
            series: classic.series(context, &attributes, true),
        });
    }
    let mut histogram = ExplicitHistogram::new(&point)?;
    if delta {
        if let Some(sum) = histogram.sum.filter(|s| !s.is_finite()) {
            return Err(format!("delta sum {sum} is not finite"));
        }
        let previous = match state.previous(&key, point.time_unix_nano)? {
            Some(Running::Histogram(previous)) => previous.add(&histogram),
            _ => None,
        };
        if let Some(total) = previous {
            histogram = total;
        }
        state.store(
            key,
            point.time_unix_nano,
            Running::Histogram(histogram.clone()),
        )?;
    }
    Ok(PointSeries {
        timestamp_ms,
        series: histogram.classic().series(context, &attributes, false),
    })
}

/// An exponential histogram point, or the running total of a delta one, with
/// its buckets by index (dense over the ranges sent, zeros included).
#[derive(Clone, Debug)]
struct ExponentialHistogram {
    scale: i32,
    zero_count: u64,
    zero_threshold: f64,
    positive: BTreeMap<i64, u64>,
    negative: BTreeMap<i64, u64>,
    count: u64,
    sum: Option<f64>,
}

impl ExponentialHistogram {
    fn new(
        point: &otlp_metrics::ExponentialHistogramDataPoint,
    ) -> Result<ExponentialHistogram, String> {
        if !(MIN_SCALE..=MAX_SCALE).contains(&point.scale) {
            return Err(format!(
                "scale {} is outside {MIN_SCALE}..={MAX_SCALE}",
                point.scale
            ));
        }
        // NaN fails this too.
        if !(0.0..f64::INFINITY).contains(&point.zero_threshold) {
            return Err(format!(
                "zero threshold {} is not a finite non-negative number",
                point.zero_threshold
            ));
        }
        let ranges = [point.positive.as_ref(), point.negative.as_ref()];
        // Downscale up front when the ranges sent are too wide, rather than
        // building a huge map first.
        let mut shift = 0;
        while !ranges.iter().all(|b| fits(*b, shift)) {
            if point.scale - shift as i32 <= MIN_SCALE {
                return Err("too many buckets even at the coarsest scale".to_string());
            }
            shift += 1;
        }
        let index = |buckets: Option<&otlp_metrics::exponential_histogram_data_point::Buckets>| {
            let mut map = BTreeMap::new();
            let offset = i64::from(buckets.map_or(0, |b| b.offset));
            let counts = buckets.map_or(&[][..], |b| b.bucket_counts.as_slice());
            for (i, &count) in counts.iter().enumerate() {
                let i = i64::try_from(i).unwrap_or(i64::MAX);
                let slot = map.entry(offset.saturating_add(i) >> shift).or_insert(0u64);
                *slot = slot.saturating_add(count);
            }
            map
        };
        let histogram = ExponentialHistogram {
            scale: point.scale - shift as i32,
            zero_count: point.zero_count,
            zero_threshold: point.zero_threshold,
            positive: index(point.positive.as_ref()),
            negative: index(point.negative.as_ref()),
            count: point.count,
            sum: point.sum,
        };
        let total = histogram
            .positive
            .values()
            .chain(histogram.negative.values())
            .fold(histogram.zero_count, |total, c| total.saturating_add(*c));
        if total > histogram.count {
            return Err(format!(
                "bucket counts add up to {total}, more than count {}",
                histogram.count
            ));
        }
        Ok(histogram)
    }

    /// Merges each two neighbouring buckets `by` times (scale - by).
    fn downscale(&mut self, by: u32) {
        if by == 0 {
            return;
        }
        for map in [&mut self.positive, &mut self.negative] {
            let mut merged = BTreeMap::new();
            for (index, count) in std::mem::take(map) {
                let slot = merged.entry(index >> by).or_insert(0u64);
                *slot = slot.saturating_add(count);
            }
            *map = merged;
        }
        self.scale -= by as i32;
    }

    /// Adds a later delta at the coarser of the two scales, downscaling
    /// further if the union of buckets is too wide.
    fn add(&self, delta: &ExponentialHistogram) -> Result<ExponentialHistogram, String> {
        let scale = self.scale.min(delta.scale);
        let mut total = self.clone();
        let mut delta = delta.clone();
        total.downscale(total.scale.abs_diff(scale));
        delta.downscale(delta.scale.abs_diff(scale));
        for (into, from) in [
            (&mut total.positive, delta.positive),
            (&mut total.negative, delta.negative),
        ] {
            for (index, count) in from {
                let slot = into.entry(index).or_insert(0);
                *slot = slot.saturating_add(count);
            }
        }
        total.zero_count = total.zero_count.saturating_add(delta.zero_count);
        total.zero_threshold = total.zero_threshold.max(delta.zero_threshold);
        total.count = total.count.saturating_add(delta.count);
        total.sum = total.sum.zip(delta.sum).map(|(a, b)| a + b);
        while total.positive.len().max(total.negative.len()) > MAX_EXPONENTIAL_BUCKETS {
            if total.scale <= MIN_SCALE {
                return Err("too many buckets even at the coarsest scale".to_string());
            }
            total.downscale(1);
        }
        Ok(total)
    }

    /// Classic buckets: negative buckets from the most negative (upper bound
    /// `-base^index`), the zero bucket (`le` = zero threshold), then positive
    /// buckets (upper bound `base^(index+1)`), with `base = 2^(2^-scale)`.
    /// Bounds that overflow, or do not increase (rounding, a zero threshold
    /// wider than the first buckets), are skipped; their counts show in the
    /// next bucket, so the result stays a valid cumulative histogram.
    fn classic(&self) -> ClassicHistogram {
        let bound = |index: i64| (index as f64 * f64::from(-self.scale).exp2()).exp2();
        let mut raw = Vec::with_capacity(self.negative.len() + self.positive.len() + 1);
        let mut cumulative = 0u64;
        for (&index, &count) in self.negative.iter().rev() {
            cumulative = cumulative.saturating_add(count);
            raw.push((-bound(index), cumulative));
        }
        cumulative = cumulative.saturating_add(self.zero_count);
        raw.push((self.zero_threshold, cumulative));
        for (&index, &count) in &self.positive {
            cumulative = cumulative.saturating_add(count);
            raw.push((bound(index.saturating_add(1)), cumulative));
        }
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(raw.len());
        for (le, cumulative) in raw {
            // No "-0" label.
            let le = if le == 0.0 { 0.0 } else { le };
            if le.is_finite() && buckets.last().is_none_or(|&(previous, _)| le > previous) {
                buckets.push((le, cumulative));
            }
        }
        ClassicHistogram {
            buckets,
            count: self.count,
            sum: self.sum,
        }
    }
}

/// Whether a dense bucket range, downscaled by `shift`, has few enough buckets.
fn fits(
    buckets: Option<&otlp_metrics::exponential_histogram_data_point::Buckets>,
    shift: u32,
) -> bool {
    let Some(buckets) = buckets.filter(|b| !b.bucket_counts.is_empty()) else {
        return true;
    };
    let low = i64::from(buckets.offset);
    let len = i64::try_from(buckets.bucket_counts.len()).unwrap_or(i64::MAX);
    let high = low.saturating_add(len - 1);
    (high >> shift) - (low >> shift) < MAX_EXPONENTIAL_BUCKETS as i64
}

fn exponential_point(
    state: &mut DeltaState,
    context: &MetricContext<'_>,
    mut point: otlp_metrics::ExponentialHistogramDataPoint,
    delta: bool,
) -> Result<PointSeries, String> {
    let timestamp_ms = timestamp_ms(point.time_unix_nano)?;
    let attributes = attribute_labels(std::mem::take(&mut point.attributes));
    let key = DeltaKey {
        kind: DeltaKind::Exponential,
        labels: context.labels(&attributes, "", None),
    };
    if is_stale(point.flags) {
        if delta {
            state.forget(key.kind, &key.labels);
        }
        // Buckets named by the point's own layout, if it has a valid one.
        let buckets = ExponentialHistogram::new(&point)
            .map(|h| h.classic().buckets)
            .unwrap_or_default();
        let classic = ClassicHistogram {
            buckets,
            count: 0,
            sum: point.sum,
        };
        return Ok(PointSeries {
            timestamp_ms,
            series: classic.series(context, &attributes, true),
        });
    }
    let mut histogram = ExponentialHistogram::new(&point)?;
    if delta {
        if let Some(sum) = histogram.sum.filter(|s| !s.is_finite()) {
            return Err(format!("delta sum {sum} is not finite"));
        }
        if let Some(Running::Exponential(previous)) = state.previous(&key, point.time_unix_nano)? {
            histogram = previous.add(&histogram)?;
        }
        state.store(
            key,
            point.time_unix_nano,
            Running::Exponential(histogram.clone()),
        )?;
    }
    Ok(PointSeries {
        timestamp_ms,
        series: histogram.classic().series(context, &attributes, false),
    })
}

fn summary_point(
    context: &MetricContext<'_>,
    point: otlp_metrics::SummaryDataPoint,
) -> Result<PointSeries, String> {
    let timestamp_ms = timestamp_ms(point.time_unix_nano)?;
    let attributes = attribute_labels(point.attributes);
    let stale = is_stale(point.flags);
    let value = |v: f64| if stale { stale_nan() } else { sample_value(v) };
    let mut series = Vec::with_capacity(point.quantile_values.len() + 2);
    for quantile in &point.quantile_values {
        series.push((
            context.labels(&attributes, "", Some(("quantile", quantile.quantile))),
            value(quantile.value),
        ));
    }
    series.push((context.labels(&attributes, "_sum", None), value(point.sum)));
    series.push((
        context.labels(&attributes, "_count", None),
        value(point.count as f64),
    ));
    Ok(PointSeries {
        timestamp_ms,
        series,
    })
}

/// Which running total a delta key holds; part of the key, so a sum and a
/// histogram that happen to share labels never mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DeltaKind {
    Sum,
    Histogram,
    Exponential,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct DeltaKey {
    kind: DeltaKind,
    /// The series' canonical labels (for histograms, without `le` and with the
    /// family name).
    labels: Vec<Label>,
}

#[derive(Debug)]
enum Running {
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
struct DeltaState {
    max_series: usize,
    entries: HashMap<DeltaKey, DeltaEntry>,
    /// The newest point time seen: the clock idle series are judged by.
    newest_unix_nano: u64,
    last_sweep_unix_nano: u64,
}

impl DeltaState {
    /// The running total a delta point at `time` adds to, if any. A point not
    /// newer than the last one added is refused: it is a retry or out of
    /// order, and adding it would count it twice.
    fn previous(&self, key: &DeltaKey, time: u64) -> Result<Option<&Running>, String> {
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
    fn store(&mut self, key: DeltaKey, time: u64, running: Running) -> Result<(), String> {
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
    fn forget(&mut self, kind: DeltaKind, labels: &[Label]) {
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
    use super::*;

    use proptest::prelude::*;

    /// Runs an OTLP/JSON request through `converter` and compares a compact
    /// rendering (one line per series, then metadata and rejections) with
    /// `expect`.
    fn check_with(converter: &MetricsConverter, json: &str, expect: &str) {
        let request: ExportMetricsServiceRequest = serde_json::from_str(json).unwrap();
        let converted = converter.convert(request);
        let got = render(&converted);
        assert_eq!(got.trim(), expect.trim(), "\n--- got ---\n{got}");
    }

    fn check(json: &str, expect: &str) {
        check_with(&MetricsConverter::new(100), json, expect);
    }

    fn render(converted: &ConvertedMetrics) -> String {
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
    fn request(metric: &str) -> String {
        format!(
            r#"{{"resourceMetrics":[{{"resource":{{"attributes":[
                {{"key":"service.name","value":{{"stringValue":"svc"}}}}]}},
              "scopeMetrics":[{{"metrics":[{metric}]}}]}}]}}"#
        )
    }

    #[test]
    fn converts_a_gauge() {
        check(
            &request(
                r#"{"name":"queue.depth","unit":"{message}","description":"Messages waiting",
                    "gauge":{"dataPoints":[
                      {"timeUnixNano":"1000000000","asInt":"7",
                       "attributes":[{"key":"queue.name","value":{"stringValue":"orders"}}]},
                      {"timeUnixNano":"2000000000","asDouble":7.5,
                       "attributes":[{"key":"queue.name","value":{"stringValue":"orders"}}]}]}}"#,
            ),
            r#"
queue_depth{job="svc",queue_name="orders"} 1000:7 2000:7.5
# queue_depth gauge unit="" help="Messages waiting""#,
        );
    }

    #[test]
    fn converts_a_cumulative_counter() {
        check(
            &request(
                r#"{"name":"http.server.requests","unit":"{request}",
                    "sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[
                      {"timeUnixNano":"1000000000","asInt":"3",
                       "attributes":[{"key":"http.response.status_code","value":{"intValue":"200"}}]},
                      {"timeUnixNano":"1000000000","asInt":"1",
                       "attributes":[{"key":"http.response.status_code","value":{"intValue":"500"}}]}]}}"#,
            ),
            r#"
http_server_requests_total{http_response_status_code="200",job="svc"} 1000:3
http_server_requests_total{http_response_status_code="500",job="svc"} 1000:1
# http_server_requests_total counter unit="" help="""#,
        );
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
    fn converts_a_histogram() {
        check(
            &request(
                r#"{"name":"http.server.request.duration","unit":"s","description":"Duration",
                    "histogram":{"aggregationTemporality":2,"dataPoints":[
                      {"timeUnixNano":"1000000000","count":"6","sum":1.25,
                       "explicitBounds":[0.005,0.5,1],"bucketCounts":["1","2","0","3"]},
                      {"timeUnixNano":"1000000000","count":"1",
                       "attributes":[{"key":"route","value":{"stringValue":"/x"}}]}]}}"#,
            ),
            r#"
http_server_request_duration_seconds_bucket{job="svc",le="0.005"} 1000:1
http_server_request_duration_seconds_bucket{job="svc",le="0.5"} 1000:3
http_server_request_duration_seconds_bucket{job="svc",le="1"} 1000:3
http_server_request_duration_seconds_bucket{job="svc",le="+Inf"} 1000:6
http_server_request_duration_seconds_sum{job="svc"} 1000:1.25
http_server_request_duration_seconds_count{job="svc"} 1000:6
http_server_request_duration_seconds_bucket{job="svc",le="+Inf",route="/x"} 1000:1
http_server_request_duration_seconds_count{job="svc",route="/x"} 1000:1
# http_server_request_duration_seconds histogram unit="seconds" help="Duration""#,
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
    fn histogram_with_mismatched_buckets_is_rejected() {
        check(
            &request(
                r#"{"name":"h","histogram":{"aggregationTemporality":2,"dataPoints":[
                    {"timeUnixNano":"1000000000","count":"3","explicitBounds":[1,2],"bucketCounts":["1","2"]},
                    {"timeUnixNano":"1000000000","count":"1","explicitBounds":[2,1],"bucketCounts":["1","0","0"]},
                    {"timeUnixNano":"1000000000","count":"1","explicitBounds":[1],"bucketCounts":["5","0"]}]}}"#,
            ),
            r#"rejected=3 metric "h": 2 bucket counts for 2 explicit bounds (want one more count than bounds)"#,
        );
    }

    #[test]
    fn converts_an_exponential_histogram() {
        // Scale 0: base 2. Negative bucket 0 holds (-2, -1], zero bucket 1,
        // positive buckets 0 and 1 hold (1, 2] and (2, 4].
        check(
            &request(
                r#"{"name":"payload.size","unit":"By","exponentialHistogram":{"aggregationTemporality":2,
                    "dataPoints":[{"timeUnixNano":"1000000000","count":"6","sum":4.5,"scale":0,
                      "zeroCount":"1","zeroThreshold":0.001,
                      "positive":{"offset":0,"bucketCounts":["1","3"]},
                      "negative":{"offset":0,"bucketCounts":["1"]}}]}}"#,
            ),
            r#"
payload_size_bytes_bucket{job="svc",le="-1"} 1000:1
payload_size_bytes_bucket{job="svc",le="0.001"} 1000:2
payload_size_bytes_bucket{job="svc",le="2"} 1000:3
payload_size_bytes_bucket{job="svc",le="4"} 1000:6
payload_size_bytes_bucket{job="svc",le="+Inf"} 1000:6
payload_size_bytes_sum{job="svc"} 1000:4.5
payload_size_bytes_count{job="svc"} 1000:6
# payload_size_bytes histogram unit="bytes" help="""#,
        );
    }

    #[test]
    fn exponential_histogram_bounds_follow_the_scale() {
        // Scale 1: base sqrt(2); bucket -1 holds (2^-0.5, 1], bucket 0 (1, 2^0.5].
        check(
            &request(
                r#"{"name":"x","exponentialHistogram":{"aggregationTemporality":2,
                    "dataPoints":[{"timeUnixNano":"1000000000","count":"2","scale":1,
                      "positive":{"offset":-1,"bucketCounts":["1","1"]}}]}}"#,
            ),
            r#"
x_bucket{job="svc",le="0"} 1000:0
x_bucket{job="svc",le="1"} 1000:1
x_bucket{job="svc",le="1.4142135623730951"} 1000:2
x_bucket{job="svc",le="+Inf"} 1000:2
x_count{job="svc"} 1000:2
# x histogram unit="" help="""#,
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

    #[test]
    fn huge_exponential_histograms_are_downscaled_or_rejected() {
        let mut point = otlp_metrics::ExponentialHistogramDataPoint {
            time_unix_nano: 1,
            scale: 20,
            count: u64::MAX,
            positive: Some(otlp_metrics::exponential_histogram_data_point::Buckets {
                offset: i32::MAX,
                bucket_counts: vec![u64::MAX; 1000],
            }),
            ..Default::default()
        };
        let histogram = ExponentialHistogram::new(&point).unwrap();
        assert!(histogram.positive.len() <= MAX_EXPONENTIAL_BUCKETS);
        assert!(histogram.scale < 20);
        point.scale = 21;
        assert!(ExponentialHistogram::new(&point).is_err());
    }

    #[test]
    fn converts_a_summary() {
        check(
            &request(
                r#"{"name":"rpc.duration","unit":"ms","summary":{"dataPoints":[
                    {"timeUnixNano":"1000000000","count":"10","sum":55.5,
                     "quantileValues":[{"quantile":0.5,"value":4},{"quantile":0.99,"value":9.5}]}]}}"#,
            ),
            r#"
rpc_duration_milliseconds{job="svc",quantile="0.5"} 1000:4
rpc_duration_milliseconds{job="svc",quantile="0.99"} 1000:9.5
rpc_duration_milliseconds_sum{job="svc"} 1000:55.5
rpc_duration_milliseconds_count{job="svc"} 1000:10
# rpc_duration_milliseconds summary unit="milliseconds" help="""#,
        );
    }

    #[test]
    fn translates_names_and_units() {
        // OTLP name, unit, shape -> family name, unit word; `-` for "".
        let cases = "
            http.server.request.duration  s            histogram  http_server_request_duration_seconds  seconds
            process.cpu.time              s            counter    process_cpu_time_seconds_total        seconds
            memory.usage                  By           gauge      memory_usage_bytes                    bytes
            memory.usage                  By           updown     memory_usage_bytes                    bytes
            utilization                   1            gauge      utilization_ratio                     ratio
            cpu.utilization.ratio         1            gauge      cpu_utilization_ratio                 ratio
            utilization                   1            updown     utilization                           -
            requests                      1            counter    requests_total                        -
            requests_total                -            counter    requests_total                        -
            requests.total                s            counter    requests_seconds_total                seconds
            total                         -            counter    total_total                           -
            http.requests                 {request}    counter    http_requests_total                   -
            network.io                    By/s         gauge      network_io_bytes_per_second           bytes_per_second
            queue.rate                    {message}/s  gauge      queue_rate_per_second                 per_second
            speed                         m/s          gauge      speed_meters_per_second               meters_per_second
            latency_seconds               s            histogram  latency_seconds                       seconds
            heap                          MiBy         gauge      heap_mebibytes                        mebibytes
            disk                          KiBy         gauge      disk_kibibytes                        kibibytes
            distance                      m            gauge      distance_meters                       meters
            gc.pause                      us           summary    gc_pause_microseconds                 microseconds
            temperature                   Cel          gauge      temperature_celsius                   celsius
            widgets                       widget.count gauge      widgets_widget_count                  widget_count
            2xx.responses                 -            counter    _2xx_responses_total                  -
            a..b__c--d                    -            gauge      a_b_c_d                               -
            app:requests                  -            counter    app:requests_total                    -
            ...                           s            gauge      -                                     -
            -                             -            gauge      -                                     -
        ";
        let word = |w: &str| {
            if w == "-" {
                String::new()
            } else {
                w.to_string()
            }
        };
        for line in cases.lines().filter(|l| !l.trim().is_empty()) {
            let [name, unit, shape, family, unit_word] =
                line.split_whitespace().collect::<Vec<_>>()[..]
            else {
                panic!("bad case {line:?}");
            };
            let shape = match shape {
                "gauge" => Shape::Gauge,
                "counter" => Shape::Counter,
                "updown" => Shape::UpDownSum,
                "histogram" => Shape::Histogram,
                "summary" => Shape::Summary,
                other => panic!("unknown shape {other}"),
            };
            let got = MetricName::new(&word(name), &word(unit), shape);
            let want = MetricName {
                family: word(family),
                unit: word(unit_word),
            };
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn sanitizes_label_names() {
        let cases = [
            ("http.method", Some("http_method")),
            ("http..request--id", Some("http_request_id")),
            ("123abc", Some("key_123abc")),
            ("_private", Some("_private")),
            ("__reserved__", Some("__reserved__")),
            ("__a.b__", Some("__a_b__")),
            ("__x", Some("_x")),
            ("ünïcode", Some("_n_code")),
            ("", None),
            ("___", None),
            ("é", None),
        ];
        for (key, want) in cases {
            assert_eq!(label_name(key).as_deref(), want, "{key:?}");
        }
        // Keys that collide are joined in the order of the original keys.
        let kv = |key: &str, value: &str| otlp_common::KeyValue {
            key: key.to_string(),
            key_strindex: 0,
            value: Some(otlp_common::AnyValue {
                value: Some(otlp_common::any_value::Value::StringValue(
                    value.to_string(),
                )),
            }),
        };
        assert_eq!(
            attribute_labels(vec![kv("a_b", "2"), kv("a.b", "1"), kv("c", "")]),
            vec![Label::new("a_b", "1;2")]
        );
    }

    #[test]
    fn attribute_values_become_text() {
        use otlp_common::any_value::Value;
        let text = |value: Value| any_value_string(otlp_common::AnyValue { value: Some(value) });
        assert_eq!(text(Value::BoolValue(true)).as_deref(), Some("true"));
        assert_eq!(text(Value::IntValue(-3)).as_deref(), Some("-3"));
        assert_eq!(text(Value::DoubleValue(0.25)).as_deref(), Some("0.25"));
        assert_eq!(
            text(Value::BytesValue(b"hi!?".to_vec())).as_deref(),
            Some("aGkhPw==")
        );
        assert_eq!(
            text(Value::ArrayValue(otlp_common::ArrayValue {
                values: vec![otlp_common::AnyValue {
                    value: Some(Value::StringValue("a".into()))
                }]
            }))
            .as_deref(),
            Some(r#"["a"]"#)
        );
    }

    #[test]
    fn resource_becomes_job_instance_and_target_info() {
        check(
            r#"{"resourceMetrics":[{"resource":{"attributes":[
                {"key":"service.name","value":{"stringValue":"checkout"}},
                {"key":"service.namespace","value":{"stringValue":"shop"}},
                {"key":"service.instance.id","value":{"stringValue":"pod-1"}},
                {"key":"host.name","value":{"stringValue":"h1"}},
                {"key":"k8s.pod.uid","value":{"stringValue":"abc"}}]},
              "scopeMetrics":[{"scope":{"name":"io.opentelemetry.http","version":"1.2"},"metrics":[
                {"name":"up","gauge":{"dataPoints":[
                  {"timeUnixNano":"1000000000","asInt":"1",
                   "attributes":[{"key":"job","value":{"stringValue":"overridden"}}]},
                  {"timeUnixNano":"2000000000","asInt":"1",
                   "attributes":[{"key":"job","value":{"stringValue":"overridden"}}]}]}}]}]},
              {"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"no-service"}}]},
               "scopeMetrics":[{"metrics":[{"name":"up","gauge":{"dataPoints":[
                  {"timeUnixNano":"1000000000","asInt":"0"}]}}]}]}]}"#,
            r#"
up{instance="pod-1",job="shop/checkout",otel_scope_name="io.opentelemetry.http",otel_scope_version="1.2"} 1000:1 2000:1
target_info{host_name="h1",instance="pod-1",job="shop/checkout",k8s_pod_uid="abc"} 1000:1 2000:1
up{} 1000:0
# up gauge unit="" help=""
# target_info gauge unit="" help="Target metadata""#,
        );
    }

    #[test]
    fn no_recorded_value_is_a_stale_marker() {
        check(
            &request(
                r#"{"name":"temp","gauge":{"dataPoints":[{"timeUnixNano":"1000000000","flags":1}]}},
                   {"name":"lat","unit":"s","histogram":{"aggregationTemporality":2,"dataPoints":[
                     {"timeUnixNano":"1000000000","flags":1,"sum":0,"explicitBounds":[0.1]}]}},
                   {"name":"q","summary":{"dataPoints":[{"timeUnixNano":"1000000000","flags":1,
                     "quantileValues":[{"quantile":0.5,"value":0}]}]}}"#,
            ),
            r#"
temp{job="svc"} 1000:stale
lat_seconds_bucket{job="svc",le="0.1"} 1000:stale
lat_seconds_bucket{job="svc",le="+Inf"} 1000:stale
lat_seconds_sum{job="svc"} 1000:stale
lat_seconds_count{job="svc"} 1000:stale
q{job="svc",quantile="0.5"} 1000:stale
q_sum{job="svc"} 1000:stale
q_count{job="svc"} 1000:stale
# temp gauge unit="" help=""
# lat_seconds histogram unit="seconds" help=""
# q summary unit="" help="""#,
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
                let converted = converter.convert(request);
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
