//! The binary encoding of a set of spans, shared by the write-ahead log and the
//! span blocks of the trace store, and of a batch of log records (WAL only).
//!
//! Spans are grouped per trace; resources and scopes are written once per table
//! and referenced by index; timestamps are stored relative to the trace's first
//! span. That keeps repeated bytes out of the encoding before zstd even looks at
//! it, which is most of what makes a stored span small.
//!
//! The first byte is the format version. Decoding checks it and never panics on
//! corrupt input.

use std::borrow::Cow;
use std::sync::Arc;

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

use crate::model::{
    Event, KeyValue, Label, Link, LogRecord, MetricSample, Resource, Scope, SeriesSamples,
    Severity, Span, SpanId, SpanKind, StatusCode, TraceId,
};

const FORMAT_VERSION: u8 = 1;

/// Why a span table could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty span table")]
    Empty,
    #[error("unknown span table format version {0}")]
    UnknownVersion(u8),
    #[error("corrupt span table: {0}")]
    Corrupt(#[from] postcard::Error),
    #[error("corrupt span table: {0} index out of range")]
    BadReference(&'static str),
}

#[derive(Serialize, Deserialize)]
struct Table<'a> {
    resources: Vec<Cow<'a, Resource>>,
    scopes: Vec<Cow<'a, Scope>>,
    #[serde(borrow)]
    traces: Vec<TraceRows<'a>>,
}

#[derive(Serialize, Deserialize)]
struct TraceRows<'a> {
    trace_id: TraceId,
    base_unix_nano: u64,
    #[serde(borrow)]
    spans: Vec<Row<'a>>,
}

#[derive(Serialize, Deserialize)]
struct Row<'a> {
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    name: Cow<'a, str>,
    kind: SpanKind,
    /// Start relative to the trace's base time.
    start_offset: u64,
    duration: u64,
    attributes: Cow<'a, [KeyValue]>,
    events: Vec<EventRow<'a>>,
    links: Cow<'a, [Link]>,
    status_code: StatusCode,
    status_message: Cow<'a, str>,
    trace_state: Cow<'a, str>,
    flags: u32,
    resource: u32,
    scope: u32,
}

#[derive(Serialize, Deserialize)]
struct EventRow<'a> {
    /// Time relative to the span's start; negative when a client sent it so.
    offset: i64,
    name: Cow<'a, str>,
    attributes: Cow<'a, [KeyValue]>,
}

/// Interns values by their encoded bytes, so equal resources sent in different
/// batches (different `Arc`s) are written once; or, for spans whose equal
/// values already share one `Arc` (see [`Shared`]), by pointer alone.
struct Interner<'a, T: Clone> {
    items: Vec<Cow<'a, T>>,
    /// `None`: by pointer alone.
    by_bytes: Option<HashMap<Vec<u8>, u32>>,
    by_ptr: HashMap<*const T, u32>,
}

impl<'a, T: Clone + Serialize> Interner<'a, T> {
    fn new(by_content: bool) -> Self {
        Interner {
            items: Vec::new(),
            by_bytes: by_content.then(HashMap::default),
            by_ptr: HashMap::default(),
        }
    }

    fn intern(&mut self, item: &'a Arc<T>) -> u32 {
        let ptr = Arc::as_ptr(item);
        if let Some(&index) = self.by_ptr.get(&ptr) {
            return index;
        }
        let next = self.items.len() as u32;
        let index = match &mut self.by_bytes {
            Some(by_bytes) => {
                let bytes = postcard::to_stdvec(item.as_ref()).unwrap_or_default();
                *by_bytes.entry(bytes).or_insert(next)
            }
            None => next,
        };
        if index == next {
            self.items.push(Cow::Borrowed(item.as_ref()));
        }
        self.by_ptr.insert(ptr, index);
        index
    }
}

/// One `Arc` per distinct resource and scope: what the trace store's head
/// makes of the spans it takes, so that equal values sent in different
/// batches are one value in memory, and [`encode_trace`] can intern them
/// by pointer without encoding each to compare it.
#[derive(Default)]
pub struct Shared {
    resources: HashMap<Vec<u8>, Arc<Resource>>,
    scopes: HashMap<Vec<u8>, Arc<Scope>>,
}

impl Shared {
    /// Replaces each span's resource and scope by the shared equal one.
    /// Spans of a batch come with a few `Arc`s each shared by many spans:
    /// each of those is encoded once.
    pub fn share(&mut self, spans: &mut [Span]) {
        let mut last: Option<(*const Resource, Arc<Resource>)> = None;
        let mut last_scope: Option<(*const Scope, Arc<Scope>)> = None;
        for span in spans {
            span.resource = shared(&mut self.resources, &mut last, &span.resource);
            span.scope = shared(&mut self.scopes, &mut last_scope, &span.scope);
        }
    }
}

/// The shared `Arc` equal to `item`; `last` remembers the previous lookup.
fn shared<T: Serialize>(
    by_bytes: &mut HashMap<Vec<u8>, Arc<T>>,
    last: &mut Option<(*const T, Arc<T>)>,
    item: &Arc<T>,
) -> Arc<T> {
    if let Some((ptr, found)) = last
        && *ptr == Arc::as_ptr(item)
    {
        return found.clone();
    }
    let bytes = postcard::to_stdvec(item.as_ref()).unwrap_or_default();
    let found = by_bytes
        .entry(bytes)
        .or_insert_with(|| item.clone())
        .clone();
    *last = Some((Arc::as_ptr(item), found.clone()));
    found
}

/// Resources or scopes decoded from a table, each shared (one `Arc`) by the
/// rows that refer to it by index: the inverse of [`Interner`].
struct Interned<T>(Vec<Arc<T>>);

impl<T: Clone> Interned<T> {
    fn new(items: Vec<Cow<'_, T>>) -> Self {
        Interned(
            items
                .into_iter()
                .map(|item| Arc::new(item.into_owned()))
                .collect(),
        )
    }

    /// The item at `index`; `what` names it when the index is out of range.
    fn get(&self, index: u32, what: &'static str) -> Result<Arc<T>, CodecError> {
        self.0
            .get(index as usize)
            .cloned()
            .ok_or(CodecError::BadReference(what))
    }
}

/// The format version byte, then `value` in postcard (written straight
/// behind it, without an intermediate buffer).
fn encode_versioned<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_versioned_into(&mut out, value);
    out
}

/// [`encode_versioned`] appended to `out`, with no copy in between.
fn encode_versioned_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let mut buffer = std::mem::take(out);
    buffer.push(FORMAT_VERSION);
    *out = append_postcard(buffer, value);
}

/// `value` in postcard, appended to `out`.
pub(crate) fn append_postcard<T: Serialize + ?Sized>(out: Vec<u8>, value: &T) -> Vec<u8> {
    // Serializing plain owned data into a Vec cannot fail.
    postcard::serialize_with_flavor(value, AppendToVec(out)).unwrap_or_default()
}

/// postcard's output appended to a `Vec` a slice at a time. postcard's own
/// `to_extend` goes through `Extend`, which copied strings byte by byte:
/// under span ingest, serializing attributes took 12 % of the daemon's CPU
/// that way and 2 % this way, plus 8 % more in `memcpy` (`perf` during
/// `strand-bench traces`).
struct AppendToVec(Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendToVec {
    type Output = Vec<u8>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Checks the version byte [`encode_versioned`] wrote and decodes the rest.
fn decode_versioned<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    Ok(postcard::from_bytes(body)?)
}

/// Encodes spans as one table, grouped per trace (spans of a trace keep their
/// relative order). Accepts spans in any order.
pub fn encode_spans<'s>(spans: impl IntoIterator<Item = &'s Span>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_table(&mut out, spans, true);
    out
}

/// [`encode_spans`] appended to `out`, for spans whose equal resources and
/// scopes share one `Arc` (see [`Shared`]): the same table, interned by
/// pointer alone.
pub fn encode_shared_spans_into<'s>(out: &mut Vec<u8>, spans: impl IntoIterator<Item = &'s Span>) {
    encode_table(out, spans, false)
}

fn encode_table<'s>(
    out: &mut Vec<u8>,
    spans: impl IntoIterator<Item = &'s Span>,
    by_content: bool,
) {
    let mut by_trace: Vec<&Span> = spans.into_iter().collect();
    by_trace.sort_by_key(|s| s.trace_id);

    let mut resources = Interner::new(by_content);
    let mut scopes = Interner::new(by_content);
    let mut traces: Vec<TraceRows> = Vec::new();
    for group in by_trace.chunk_by(|a, b| a.trace_id == b.trace_id) {
        let base = group.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
        let rows = group
            .iter()
            .map(|span| Row {
                span_id: span.span_id,
                parent_span_id: span.parent_span_id,
                name: Cow::Borrowed(&span.name),
                kind: span.kind,
                start_offset: span.start_unix_nano - base,
                duration: span.duration_nanos(),
                attributes: Cow::Borrowed(&span.attributes),
                events: span
                    .events
                    .iter()
                    .map(|e| EventRow {
                        offset: (e.time_unix_nano as i64).wrapping_sub(span.start_unix_nano as i64),
                        name: Cow::Borrowed(&e.name),
                        attributes: Cow::Borrowed(&e.attributes),
                    })
                    .collect(),
                links: Cow::Borrowed(&span.links),
                status_code: span.status_code,
                status_message: Cow::Borrowed(&span.status_message),
                trace_state: Cow::Borrowed(&span.trace_state),
                flags: span.flags,
                resource: resources.intern(&span.resource),
                scope: scopes.intern(&span.scope),
            })
            .collect();
        traces.push(TraceRows {
            trace_id: group[0].trace_id,
            base_unix_nano: base,
            spans: rows,
        });
    }
    encode_versioned_into(
        out,
        &Table {
            resources: resources.items,
            scopes: scopes.items,
            traces,
        },
    )
}

/// Decodes a table written by [`encode_spans`]. With `only` set, spans of other
/// traces are skipped without being materialised.
pub fn decode_spans(bytes: &[u8], only: Option<&TraceId>) -> Result<Vec<Span>, CodecError> {
    let table: Table = decode_versioned(bytes)?;
    let resources = Interned::new(table.resources);
    let scopes = Interned::new(table.scopes);
    let mut spans = Vec::new();
    for trace in table.traces {
        if only.is_some_and(|id| *id != trace.trace_id) {
            continue;
        }
        for row in trace.spans {
            let start = trace.base_unix_nano.wrapping_add(row.start_offset);
            spans.push(Span {
                trace_id: trace.trace_id,
                span_id: row.span_id,
                parent_span_id: row.parent_span_id,
                trace_state: row.trace_state.into_owned(),
                flags: row.flags,
                name: row.name.into(),
                kind: row.kind,
                start_unix_nano: start,
                end_unix_nano: start.wrapping_add(row.duration),
                attributes: row.attributes.into_owned(),
                events: row
                    .events
                    .into_iter()
                    .map(|e| Event {
                        time_unix_nano: (start as i64).wrapping_add(e.offset) as u64,
                        name: e.name.into_owned(),
                        attributes: e.attributes.into_owned(),
                    })
                    .collect(),
                links: row.links.into_owned(),
                status_code: row.status_code,
                status_message: row.status_message.into_owned(),
                resource: resources.get(row.resource, "resource")?,
                scope: scopes.get(row.scope, "scope")?,
            });
        }
    }
    Ok(spans)
}

#[derive(Serialize, Deserialize)]
struct LogTable<'a> {
    resources: Vec<Cow<'a, Resource>>,
    scopes: Vec<Cow<'a, Scope>>,
    #[serde(borrow)]
    records: Vec<LogRow<'a>>,
}

#[derive(Serialize, Deserialize)]
struct LogRow<'a> {
    time_unix_nano: u64,
    severity: Severity,
    severity_text: Cow<'a, str>,
    body: Cow<'a, str>,
    trace_id: Option<TraceId>,
    span_id: Option<SpanId>,
    attributes: Cow<'a, [KeyValue]>,
    resource: u32,
    scope: u32,
}

/// Encodes log records for the WAL, resources and scopes written once.
pub fn encode_logs(records: &[LogRecord]) -> Vec<u8> {
    let mut resources = Interner::new(true);
    let mut scopes = Interner::new(true);
    let rows = records
        .iter()
        .map(|record| {
            log_row(
                record,
                resources.intern(&record.resource),
                scopes.intern(&record.scope),
            )
        })
        .collect();
    encode_versioned(&LogTable {
        resources: resources.items,
        scopes: scopes.items,
        records: rows,
    })
}

/// [`encode_logs`] of one record (what the log store keeps per document),
/// without the interning a single record has no use for.
pub fn encode_log(record: &LogRecord) -> Vec<u8> {
    encode_versioned(&LogTable {
        resources: vec![Cow::Borrowed(record.resource.as_ref())],
        scopes: vec![Cow::Borrowed(record.scope.as_ref())],
        records: vec![log_row(record, 0, 0)],
    })
}

/// The row of `record`, its resource and scope the table's entries at
/// `resource` and `scope`.
fn log_row(record: &LogRecord, resource: u32, scope: u32) -> LogRow<'_> {
    LogRow {
        time_unix_nano: record.time_unix_nano,
        severity: record.severity,
        severity_text: Cow::Borrowed(&record.severity_text),
        body: Cow::Borrowed(&record.body),
        trace_id: record.trace_id,
        span_id: record.span_id,
        attributes: Cow::Borrowed(&record.attributes),
        resource,
        scope,
    }
}

/// Decodes what [`encode_logs`] wrote.
pub fn decode_logs(bytes: &[u8]) -> Result<Vec<LogRecord>, CodecError> {
    let table: LogTable = decode_versioned(bytes)?;
    let resources = Interned::new(table.resources);
    let scopes = Interned::new(table.scopes);
    table
        .records
        .into_iter()
        .map(|row| {
            Ok(LogRecord {
                time_unix_nano: row.time_unix_nano,
                severity: row.severity,
                severity_text: row.severity_text.into_owned(),
                body: row.body.into_owned(),
                trace_id: row.trace_id,
                span_id: row.span_id,
                attributes: row.attributes.into_owned(),
                resource: resources.get(row.resource, "resource")?,
                scope: scopes.get(row.scope, "scope")?,
            })
        })
        .collect()
}

/// The version byte of a samples record that names series by id; records
/// of [`FORMAT_VERSION`] carried every series' labels.
const SAMPLES_BY_ID_VERSION: u8 = 2;

/// A WAL record of metric samples, decoded.
#[derive(Debug, PartialEq)]
pub enum SampleRecord {
    /// Samples by series id. A series that no earlier record and not
    /// `series.log` named comes with its labels in `new_series`: labels
    /// are most of a record's bytes, and a series is written every scrape.
    ById {
        new_series: Vec<(u32, Vec<Label>)>,
        samples: Vec<(u32, Vec<MetricSample>)>,
    },
    /// Every series with its labels, as records were written before they
    /// named series by id; still read, so an upgrade replays an old WAL.
    ByLabels(Vec<SeriesSamples>),
}

impl SampleRecord {
    /// How many series the record has samples of.
    pub fn series_count(&self) -> usize {
        match self {
            SampleRecord::ById { samples, .. } => samples.len(),
            SampleRecord::ByLabels(series) => series.len(),
        }
    }
}

#[derive(Serialize)]
struct SamplesByIdRef<'a> {
    new_series: &'a [(u32, Vec<Label>)],
    samples: &'a [(u32, Vec<MetricSample>)],
}

#[derive(Deserialize)]
struct SamplesById {
    new_series: Vec<(u32, Vec<Label>)>,
    samples: Vec<(u32, Vec<MetricSample>)>,
}

/// Encodes samples by series id for the WAL, with the labels of the
/// series first named here (see [`SampleRecord::ById`]).
pub fn encode_samples(
    new_series: &[(u32, Vec<Label>)],
    samples: &[(u32, Vec<MetricSample>)],
) -> Vec<u8> {
    let record = SamplesByIdRef {
        new_series,
        samples,
    };
    append_postcard(vec![SAMPLES_BY_ID_VERSION], &record)
}

/// Decodes what [`encode_samples`] wrote, and the records of before it.
pub fn decode_samples(bytes: &[u8]) -> Result<SampleRecord, CodecError> {
    match bytes.split_first() {
        Some((&SAMPLES_BY_ID_VERSION, body)) => {
            let record: SamplesById = postcard::from_bytes(body)?;
            Ok(SampleRecord::ById {
                new_series: record.new_series,
                samples: record.samples,
            })
        }
        _ => decode_versioned(bytes).map(SampleRecord::ByLabels),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::AttrValue;
    use proptest::prelude::*;

    /// A span with every field populated, for round-trip tests elsewhere too.
    pub(crate) fn sample_span(trace: u8, span: u8, service: &str) -> Span {
        Span {
            trace_id: [trace; 16],
            span_id: [span; 8],
            parent_span_id: (span > 1).then_some([span - 1; 8]),
            trace_state: "k=v".into(),
            flags: 1,
            name: compact_str::format_compact!("op-{span}"),
            kind: SpanKind::Server,
            start_unix_nano: 1_700_000_000_000_000_000 + u64::from(span) * 1000,
            end_unix_nano: 1_700_000_000_000_000_000 + u64::from(span) * 1000 + 500,
            attributes: vec![
                KeyValue::new("http.route", AttrValue::Str("/orders".into())),
                KeyValue::new("http.status_code", AttrValue::Int(200)),
            ],
            events: vec![Event {
                time_unix_nano: 1_700_000_000_000_000_000,
                name: "exception".into(),
                attributes: vec![KeyValue::new("exception.type", AttrValue::Str("E".into()))],
            }],
            links: vec![Link {
                trace_id: [9; 16],
                span_id: [9; 8],
                attributes: vec![],
            }],
            status_code: StatusCode::Error,
            status_message: "boom".into(),
            resource: Arc::new(Resource {
                service: service.into(),
                attributes: vec![KeyValue::new("host.name", AttrValue::Str("h".into()))],
            }),
            scope: Arc::new(Scope {
                name: "lib".into(),
                version: "1".into(),
            }),
        }
    }

    #[test]
    fn round_trips_and_groups_by_trace() {
        let spans = vec![
            sample_span(2, 1, "a"),
            sample_span(1, 1, "b"),
            sample_span(2, 2, "a"),
        ];
        let decoded = decode_spans(&encode_spans(&spans), None).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0], spans[1]);
        assert_eq!(decoded[1], spans[0]);
        assert_eq!(decoded[2], spans[2]);
    }

    #[test]
    fn attribute_strings_encode_as_the_strings_stored_tables_hold() {
        // The attribute types as tables and WAL records were written before
        // their strings became `CompactString`s.
        #[derive(Serialize)]
        enum StoredValue {
            Str(String),
        }
        #[derive(Serialize)]
        struct StoredKeyValue {
            key: String,
            value: StoredValue,
        }
        for text in [
            "GET",
            "a value longer than twenty-four bytes, held on the heap",
        ] {
            let stored = StoredKeyValue {
                key: text.to_owned(),
                value: StoredValue::Str(text.to_owned()),
            };
            let now = KeyValue::new(text, AttrValue::Str(text.into()));
            let bytes = postcard::to_stdvec(&stored).unwrap();
            assert_eq!(postcard::to_stdvec(&now).unwrap(), bytes);
            assert_eq!(postcard::from_bytes::<KeyValue>(&bytes).unwrap(), now);
        }
    }

    #[test]
    fn equal_resources_are_written_once() {
        // Each sample span has its own Arc; equal contents are still shared.
        let separate: Vec<Span> = (1..=50).map(|i| sample_span(1, i, "a")).collect();
        let mut shared = separate.clone();
        for span in &mut shared {
            span.resource = separate[0].resource.clone();
            span.scope = separate[0].scope.clone();
        }
        let encoded = encode_spans(&separate);
        assert_eq!(encoded.len(), encode_spans(&shared).len());
        let decoded = decode_spans(&encoded, None).unwrap();
        assert!(Arc::ptr_eq(&decoded[0].resource, &decoded[49].resource));
    }

    #[test]
    fn shared_spans_are_interned_by_pointer_into_the_same_table() {
        let mut spans: Vec<Span> = (1..=20)
            .map(|i| sample_span(1, i, if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        let mut shared = Shared::default();
        shared.share(&mut spans[..10]);
        shared.share(&mut spans[10..]);
        assert!(Arc::ptr_eq(&spans[0].resource, &spans[18].resource));
        assert!(Arc::ptr_eq(&spans[1].resource, &spans[19].resource));
        assert!(!Arc::ptr_eq(&spans[0].resource, &spans[1].resource));
        assert!(Arc::ptr_eq(&spans[0].scope, &spans[19].scope));
        let mut encoded = vec![7];
        encode_shared_spans_into(&mut encoded, &spans);
        assert_eq!(encoded[0], 7, "appended to what was there");
        let encoded = encoded.split_off(1);
        assert_eq!(encoded, encode_spans(&spans));
        assert_eq!(decode_spans(&encoded, None).unwrap(), spans);
    }

    #[test]
    fn decodes_only_the_requested_trace() {
        let spans = vec![sample_span(1, 1, "a"), sample_span(2, 1, "b")];
        let decoded = decode_spans(&encode_spans(&spans), Some(&[2; 16])).unwrap();
        assert_eq!(decoded, vec![spans[1].clone()]);
    }

    #[test]
    fn rejects_unknown_versions_and_empty_input() {
        assert!(matches!(decode_spans(&[], None), Err(CodecError::Empty)));
        assert!(matches!(
            decode_spans(&[99, 0], None),
            Err(CodecError::UnknownVersion(99))
        ));
    }

    /// A log record with every field populated, for tests elsewhere too.
    pub(crate) fn sample_log(service: &str, time_unix_nano: u64, body: &str) -> LogRecord {
        LogRecord {
            time_unix_nano,
            severity: Severity(17),
            severity_text: "ERROR".into(),
            body: body.into(),
            trace_id: Some([7; 16]),
            span_id: Some([8; 8]),
            resource: Arc::new(Resource {
                service: service.into(),
                attributes: vec![KeyValue::new("host.name", AttrValue::Str("h".into()))],
            }),
            scope: Arc::new(Scope {
                name: "lib".into(),
                version: "1".into(),
            }),
            attributes: vec![KeyValue::new("order_id", AttrValue::Int(42))],
        }
    }

    #[test]
    fn logs_round_trip() {
        let records = vec![
            sample_log("a", 1, "first"),
            sample_log("b", 2, "second"),
            sample_log("a", 3, "third"),
        ];
        let decoded = decode_logs(&encode_logs(&records)).unwrap();
        assert_eq!(decoded, records);
        for record in &records {
            assert_eq!(
                encode_log(record),
                encode_logs(std::slice::from_ref(record))
            );
        }
        assert!(matches!(decode_logs(&[]), Err(CodecError::Empty)));
    }

    #[test]
    fn sample_records_round_trip_and_records_of_before_ids_still_decode() {
        let series = vec![SeriesSamples {
            labels: vec![Label::new("__name__", "up"), Label::new("job", "a")],
            samples: vec![MetricSample {
                timestamp_ms: 1000,
                value: 2.5,
            }],
        }];
        let new_series = vec![(3, series[0].labels.clone())];
        let samples = vec![
            (3, series[0].samples.clone()),
            (1, series[0].samples.clone()),
        ];
        assert_eq!(
            decode_samples(&encode_samples(&new_series, &samples)).unwrap(),
            SampleRecord::ById {
                new_series,
                samples
            }
        );
        // What the WAL held before records named series by id.
        let by_labels = encode_versioned(&series);
        assert_eq!(
            decode_samples(&by_labels).unwrap(),
            SampleRecord::ByLabels(series)
        );
        assert!(matches!(decode_samples(&[]), Err(CodecError::Empty)));
    }

    proptest! {
        #[test]
        fn sample_decoding_never_panics(
            version in 1u8..=2,
            mut bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            if let Some(first) = bytes.first_mut() {
                *first = version;
            }
            let _ = decode_samples(&bytes);
        }

        #[test]
        fn log_decoding_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(first) = bytes.first_mut() {
                *first = FORMAT_VERSION;
            }
            let _ = decode_logs(&bytes);
        }

        #[test]
        fn never_panics_on_corrupt_input(mut bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(first) = bytes.first_mut() {
                *first = FORMAT_VERSION;
            }
            let _ = decode_spans(&bytes, None);
        }

        #[test]
        fn survives_truncation_of_valid_tables(cut in 0usize..400) {
            let encoded = encode_spans(&[sample_span(1, 1, "a"), sample_span(1, 2, "b")]);
            let cut = cut.min(encoded.len());
            let _ = decode_spans(&encoded[..cut], None);
        }
    }
}
