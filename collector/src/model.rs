//! Strand's own span, log and metric types: what ingest produces and what every
//! store and query consumes. They are deliberately independent of OTLP's generated structs so that
//! stores never see wire types, and they carry only what Strand shows or searches.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytestring::ByteString;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// A W3C trace id (16 bytes, never all zero once validated).
pub type TraceId = [u8; 16];
/// A W3C span id (8 bytes, never all zero once validated).
pub type SpanId = [u8; 8];

/// Now, in unix nanoseconds: the time given to records that carry none.
pub fn now_unix_nano() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A map keyed by trace or span ids. The ids are random already, so hashing
/// them again (SipHash, the default) is wasted work on the ingest path.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Folds id bytes into a word; see [`IdMap`]. Not for attacker-chosen keys
/// where collisions matter more than speed: a client choosing ids only slows
/// its own traces.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_usize(&mut self, _length: usize) {
        // Arrays hash their length first; ids have a fixed one.
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// An attribute value as OTLP defines it; arrays and maps nest.
///
/// Strings of attributes (keys and values) are `CompactString`s: most are
/// short (`http.request.method`, `GET`, an address) and are then held
/// inline, with no allocation of their own. Otherwise a span of ten
/// attributes is twenty allocations, each freed, when the head is flushed,
/// by another thread than the one that made it. Serialized, a
/// `CompactString` is a `str`, as a `String` is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    Str(CompactString),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttrValue>),
    Map(Vec<KeyValue>),
}

impl AttrValue {
    /// The value as search and display compare it: strings bare, everything else
    /// in its JSON form (so `http.status_code=500` matches an integer 500).
    pub fn to_display_string(&self) -> String {
        match self {
            AttrValue::Str(s) => s.to_string(),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Double(d) => d.to_string(),
            AttrValue::Bytes(b) => hex::encode(b),
            AttrValue::Array(_) | AttrValue::Map(_) => self.to_json().to_string(),
        }
    }

    /// The value as JSON, used for nested values that have no flat form.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            AttrValue::Str(s) => s.as_str().into(),
            AttrValue::Bool(b) => (*b).into(),
            AttrValue::Int(i) => (*i).into(),
            AttrValue::Double(d) => (*d).into(),
            AttrValue::Bytes(b) => hex::encode(b).into(),
            AttrValue::Array(items) => items.iter().map(AttrValue::to_json).collect(),
            AttrValue::Map(entries) => entries
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

/// One attribute: a key and its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: CompactString,
    pub value: AttrValue,
}

impl KeyValue {
    pub fn new(key: impl Into<CompactString>, value: AttrValue) -> Self {
        KeyValue {
            key: key.into(),
            value,
        }
    }
}

/// The entity that produced telemetry. `service` is lifted out of the
/// `service.name` attribute because every query filters on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub service: String,
    /// Resource attributes other than `service.name`.
    pub attributes: Vec<KeyValue>,
}

/// The instrumentation library that produced a span.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    pub name: String,
    pub version: String,
}

/// The role of a span in a request, as OTLP defines it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// The lowercase name Jaeger uses (`server`, `client`, ...); empty when unspecified.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    /// Parses the names `as_str` produces (`unspecified` for the empty one).
    pub fn parse(name: &str) -> Option<SpanKind> {
        Some(match name {
            "" | "unspecified" => SpanKind::Unspecified,
            "internal" => SpanKind::Internal,
            "server" => SpanKind::Server,
            "client" => SpanKind::Client,
            "producer" => SpanKind::Producer,
            "consumer" => SpanKind::Consumer,
            _ => return None,
        })
    }
}

/// Outcome of a span as OTLP defines it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

/// A timestamped annotation on a span (an exception, a retry, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time_unix_nano: u64,
    pub name: String,
    pub attributes: Vec<KeyValue>,
}

/// A causal relation to a span of possibly another trace (batch consumers,
/// asynchronous messages).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub attributes: Vec<KeyValue>,
}

/// One span, with its resource and scope shared between the spans of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_state: String,
    pub flags: u32,
    /// Inline when short, as attribute strings are (see [`AttrValue`]).
    pub name: CompactString,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Vec<KeyValue>,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    pub status_code: StatusCode,
    pub status_message: String,
    pub resource: Arc<Resource>,
    pub scope: Arc<Scope>,
}

impl Span {
    /// Duration in nanoseconds; zero when a client sent an end before its start.
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    pub fn is_error(&self) -> bool {
        self.status_code == StatusCode::Error
    }

    pub fn service(&self) -> &str {
        &self.resource.service
    }

    /// Tags that are not attributes but that Jaeger users see and search as
    /// tags: span kind, status and instrumentation scope.
    pub fn derived_tags(&self) -> Vec<KeyValue> {
        let mut tags = Vec::new();
        if self.kind != SpanKind::Unspecified {
            tags.push(KeyValue::new(
                "span.kind",
                AttrValue::Str(self.kind.as_str().into()),
            ));
        }
        match self.status_code {
            StatusCode::Unset => {}
            StatusCode::Ok => tags.push(KeyValue::new(
                "otel.status_code",
                AttrValue::Str("OK".into()),
            )),
            StatusCode::Error => {
                tags.push(KeyValue::new("error", AttrValue::Bool(true)));
                tags.push(KeyValue::new(
                    "otel.status_code",
                    AttrValue::Str("ERROR".into()),
                ));
            }
        }
        if !self.status_message.is_empty() {
            tags.push(KeyValue::new(
                "otel.status_description",
                AttrValue::Str(self.status_message.as_str().into()),
            ));
        }
        if !self.scope.name.is_empty() {
            tags.push(KeyValue::new(
                "otel.scope.name",
                AttrValue::Str(self.scope.name.as_str().into()),
            ));
        }
        if !self.scope.version.is_empty() {
            tags.push(KeyValue::new(
                "otel.scope.version",
                AttrValue::Str(self.scope.version.as_str().into()),
            ));
        }
        tags
    }
}

/// How severe a log record is, in the OTLP severity ranges (1-4 trace, 5-8
/// debug, 9-12 info, 13-16 warn, 17-20 error, 21-24 fatal); 0 when unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Severity(pub u8);

impl Severity {
    /// The level name every log query uses (`severity:error`): one of trace,
    /// debug, info, warn, error, fatal, or `unknown`.
    pub fn level(self) -> &'static str {
        match self.0 {
            1..=4 => "trace",
            5..=8 => "debug",
            9..=12 => "info",
            13..=16 => "warn",
            17..=20 => "error",
            21..=24 => "fatal",
            _ => "unknown",
        }
    }

    /// Reads a level name as loggers write it (`ERROR`, `warning`, `Err`,
    /// `crit`, ...): how shippers that send only text are understood.
    pub fn from_text(text: &str) -> Severity {
        let lower = text.trim().to_ascii_lowercase();
        Severity(match lower.as_str() {
            "trace" | "finest" | "finer" => 1,
            "debug" | "dbug" | "fine" | "verbose" => 5,
            "info" | "information" | "informational" | "notice" => 9,
            "warn" | "warning" | "wrn" => 13,
            "error" | "err" | "eror" | "severe" => 17,
            "fatal" | "crit" | "critical" | "alert" | "emerg" | "emergency" | "panic" => 21,
            _ => 0,
        })
    }
}

/// One log line, with its resource shared between the records of a batch.
/// The body is kept as text (structured bodies in their JSON form) because
/// that is what full-text search and display need.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    /// When the event happened; the observed time when the producer gave none.
    pub time_unix_nano: u64,
    pub severity: Severity,
    /// The producer's own severity name, shown as sent.
    pub severity_text: String,
    pub body: String,
    pub trace_id: Option<TraceId>,
    pub span_id: Option<SpanId>,
    pub resource: Arc<Resource>,
    pub scope: Arc<Scope>,
    pub attributes: Vec<KeyValue>,
}

impl LogRecord {
    pub fn service(&self) -> &str {
        &self.resource.service
    }
}

/// One label of a metric series. `__name__` holds the metric name, as in
/// Prometheus, so a series is fully identified by its sorted labels.
///
/// Name and value are shared byte strings: a remote-write request's labels
/// point into its decoded body instead of being copied out one by one,
/// and most are dropped again as soon as their series is found. What keeps
/// labels beyond a request copies them (the series index interns its own):
/// a kept slice would keep the whole body.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    pub name: ByteString,
    pub value: ByteString,
}

impl Label {
    pub fn new(name: impl Into<ByteString>, value: impl Into<ByteString>) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// The label that holds a series' metric name.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// Prometheus's staleness marker: a NaN with this exact bit pattern says "this
/// series ended here" and is stored like any value.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// One sample of a series: milliseconds since the epoch and a value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub timestamp_ms: i64,
    pub value: f64,
}

/// What one encoding of a series' labels on the wire digests to: the
/// remote-write label messages of a series, each hashed with a key chosen at
/// start and folded in order. A sender encodes a series the same way in
/// every request, so once a batch by labels has named the series, later ones
/// name it by this key alone and skip decoding, checking and looking up its
/// labels, most of ingest's cost. 128 bits, seeded per process: two label
/// sets that digest alike are as likely as guessing the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WireKey(pub [u64; 2]);

/// Samples of one series, oldest first. `labels` are sorted by name, names
/// are unique and values non-empty (an empty value means "no such label").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesSamples {
    pub labels: Vec<Label>,
    pub samples: Vec<MetricSample>,
}

impl SeriesSamples {
    /// The metric name (`__name__`), or "" when the series has none.
    pub fn metric_name(&self) -> &str {
        self.labels
            .iter()
            .find(|l| l.name == METRIC_NAME_LABEL)
            .map_or("", |l| &*l.value)
    }
}

/// Sorts labels by name, drops empty values and, of repeated names, keeps the
/// last: the one canonical form a series is identified by.
pub fn canonical_labels(mut labels: Vec<Label>) -> Vec<Label> {
    labels.retain(|l| !l.value.is_empty());
    labels.reverse();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels.dedup_by(|later, earlier| later.name == earlier.name);
    labels
}

/// What a metric is, as the Prometheus metadata API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl MetricKind {
    /// Every kind, for looking one up by its name.
    const ALL: [MetricKind; 8] = [
        MetricKind::Counter,
        MetricKind::Gauge,
        MetricKind::Histogram,
        MetricKind::GaugeHistogram,
        MetricKind::Summary,
        MetricKind::Info,
        MetricKind::StateSet,
        MetricKind::Unknown,
    ];

    /// The kind [`as_str`](Self::as_str) names `name`; the Prometheus API's
    /// names are OpenMetrics' `# TYPE` words.
    pub fn from_name(name: &str) -> Option<MetricKind> {
        MetricKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// The name the Prometheus API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::GaugeHistogram => "gaugehistogram",
            MetricKind::Summary => "summary",
            MetricKind::Info => "info",
            MetricKind::StateSet => "stateset",
            MetricKind::Unknown => "unknown",
        }
    }
}

/// Type, help and unit of a metric family, keyed by the family's name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricMetadata {
    pub metric: String,
    pub kind: MetricKind,
    pub help: String,
    pub unit: String,
}
