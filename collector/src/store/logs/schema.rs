//! The tantivy schema of a log partition and the conversion of a record into a
//! document.
//!
//! Everything a query filters, sorts or counts on is indexed or a fast field;
//! the record itself is stored once, in the WAL's binary encoding, so a hit
//! decodes back into the exact `LogRecord` that was ingested.
//!
//! Results are ordered by time, never by relevance, so no field keeps
//! fieldnorms, and the timestamp is a fast field only (tantivy answers range
//! queries on fast fields from the column; an inverted index of nanosecond
//! timestamps would hold one term per record).
//!
//! A partition keeps the schema it was created with. A change that keeps
//! every field's number and type (options only, as when `attribute_keys`
//! became indexed) reads old partitions as they are — a term of a field
//! they did not index finds nothing there — and the store writes new
//! records only to partitions of the current schema. Adding or removing a
//! field is a new store format.

use std::collections::BTreeMap;

use tantivy::schema::{
    FAST, Field, IndexRecordOption, JsonObjectOptions, STORED, Schema, TextFieldIndexing,
    TextOptions,
};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::tokenizer::{LowerCaser, RawTokenizer, TextAnalyzer, TokenizerManager};
use tantivy::{IndexSettings, TantivyDocument};

use crate::codec;
use crate::model::{AttrValue, KeyValue, LogRecord};

/// Tokenizer for exact values matched case-insensitively (severity, ids).
const RAW_LOWERCASE: &str = "raw_lowercase";

/// The fields of a log document.
#[derive(Clone, Copy, Debug)]
pub struct LogFields {
    /// Event time, unix nanoseconds: range filters and newest-first order.
    pub timestamp: Field,
    /// Unique per record (WAL sequence and position): breaks timestamp ties
    /// so cursors are exact.
    pub id: Field,
    /// Severity range as a small number (see `level_number`), for histograms.
    pub level: Field,
    /// Level name: `severity:error`, and severity facets.
    pub severity: Field,
    pub service: Field,
    /// Free text: the message, and the record's scalar attribute values
    /// (so that an order id typed without a field finds its record).
    pub body: Field,
    pub trace_id: Field,
    pub span_id: Field,
    pub attributes: Field,
    pub resource: Field,
    /// Names of the record's attributes (`attribute_keys:order_id`: records
    /// that have one), and `name` [`VALUE_SEPARATOR`] `value` for each short
    /// scalar value: the facets count both from this one fast column
    /// instead of decoding records.
    pub attribute_keys: Field,
    /// The whole record, `codec::encode_log`.
    pub record: Field,
}

/// Separates an attribute's name from its value in `attribute_keys`
/// (a control character: no query can contain one, see `query::logs`).
pub const VALUE_SEPARATOR: char = '\u{1}';

/// Longest attribute value (in bytes) counted in the value facets; longer
/// ones are searchable but never a facet value.
const FACET_VALUE_MAX_BYTES: usize = 100;

/// Severity levels in the order `level_number` numbers them.
pub const LEVELS: [&str; 7] = [
    "unknown", "trace", "debug", "info", "warn", "error", "fatal",
];

/// Position of a level name in [`LEVELS`].
pub fn level_number(level: &str) -> u64 {
    LEVELS.iter().position(|l| *l == level).unwrap_or(0) as u64
}

/// Indexing memory of the writer of the newest partition (split across its
/// threads): enough that a half-second commit cycle rarely fills it.
pub const HOT_WRITER_BYTES: usize = 96 << 20;
/// Indexing threads of the newest partition's writer: one per two cores
/// (at most four). A commit every half second flushes each thread's
/// segment, so every thread more means more, smaller segments to merge;
/// and on a small machine the WAL, the request decoding and the merges
/// need the other cores.
pub fn hot_writer_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).clamp(1, 4))
}

/// The least indexing memory tantivy gives one writer thread; it refuses
/// a smaller budget.
pub const MIN_WRITER_BYTES_PER_THREAD: usize = 15_000_000;

/// Settings of a new partition: zstd-compressed stored records in blocks
/// large enough for repetitive log lines to compress well, small enough that
/// fetching a page of hits decompresses little.
pub fn index_settings() -> IndexSettings {
    IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor::default()),
        docstore_blocksize: 64 << 10,
        ..IndexSettings::default()
    }
}

/// Builds the schema; the same for every partition.
pub fn build() -> (Schema, LogFields) {
    let mut builder = Schema::builder();
    let indexing = |tokenizer: &str, record: IndexRecordOption| {
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer)
            .set_index_option(record)
            .set_fieldnorms(false)
    };
    let exact = |tokenizer: &str| {
        TextOptions::default()
            .set_indexing_options(indexing(tokenizer, IndexRecordOption::Basic))
            .set_fast(tokenizer)
    };
    let id = || {
        TextOptions::default()
            .set_indexing_options(indexing(RAW_LOWERCASE, IndexRecordOption::Basic))
    };
    let full_text = IndexRecordOption::WithFreqsAndPositions;
    let json = || {
        JsonObjectOptions::default()
            .set_indexing_options(indexing("default", full_text))
            .set_expand_dots_enabled()
    };
    let fields = LogFields {
        timestamp: builder.add_u64_field("timestamp", FAST),
        id: builder.add_u64_field("id", FAST),
        level: builder.add_u64_field("level", FAST),
        severity: builder.add_text_field("severity", exact(RAW_LOWERCASE)),
        service: builder.add_text_field("service", exact("raw")),
        body: builder.add_text_field(
            "body",
            TextOptions::default().set_indexing_options(indexing("default", full_text)),
        ),
        trace_id: builder.add_text_field("trace_id", id()),
        span_id: builder.add_text_field("span_id", id()),
        attributes: builder.add_json_field("attributes", json()),
        resource: builder.add_json_field("resource", json()),
        attribute_keys: builder.add_text_field("attribute_keys", exact("raw")),
        record: builder.add_bytes_field("record", STORED),
    };
    (builder.build(), fields)
}

/// The tokenizers the schema refers to, beyond tantivy's defaults.
pub fn tokenizers() -> TokenizerManager {
    let manager = TokenizerManager::default();
    manager.register(
        RAW_LOWERCASE,
        TextAnalyzer::builder(RawTokenizer::default())
            .filter(LowerCaser)
            .build(),
    );
    manager
}

/// The document of one record; `id` must be unique in the store.
pub fn to_document(fields: &LogFields, record: &LogRecord, id: u64) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    let level = record.severity.level();
    doc.add_u64(fields.timestamp, record.time_unix_nano);
    doc.add_u64(fields.id, id);
    doc.add_u64(fields.level, level_number(level));
    doc.add_text(fields.severity, level);
    doc.add_text(fields.service, record.service());
    for text in free_texts(record) {
        doc.add_text(fields.body, text);
    }
    for entry in attribute_entries(record) {
        doc.add_text(fields.attribute_keys, entry);
    }
    if let Some(trace_id) = record.trace_id {
        doc.add_text(fields.trace_id, hex::encode(trace_id));
    }
    if let Some(span_id) = record.span_id {
        doc.add_text(fields.span_id, hex::encode(span_id));
    }
    if !record.attributes.is_empty() {
        doc.add_object(fields.attributes, json_object(&record.attributes));
    }
    if !record.resource.attributes.is_empty() {
        doc.add_object(fields.resource, json_object(&record.resource.attributes));
    }
    doc.add_bytes(fields.record, &codec::encode_log(record));
    doc
}

/// What words without a field search: the message, then each scalar
/// attribute value as text (so that an order id typed without a field
/// finds its record).
pub fn free_texts(record: &LogRecord) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    std::iter::once(std::borrow::Cow::Borrowed(record.body.as_str())).chain(
        record
            .attributes
            .iter()
            .filter_map(|kv| scalar_text(&kv.value).map(std::borrow::Cow::Owned)),
    )
}

/// The `attribute_keys` entries of a record: each attribute's name, and
/// `name` [`VALUE_SEPARATOR`] `value` for each scalar value of at most
/// [`FACET_VALUE_MAX_BYTES`], which the facets and `count_logs` count.
pub fn attribute_entries(record: &LogRecord) -> impl Iterator<Item = String> + '_ {
    record.attributes.iter().flat_map(|kv| {
        let value = scalar_text(&kv.value)
            .filter(|text| text.len() <= FACET_VALUE_MAX_BYTES)
            .map(|text| format!("{}{VALUE_SEPARATOR}{text}", kv.key));
        std::iter::once(kv.key.to_string()).chain(value)
    })
}

/// A scalar attribute value as text, as a query would write it; `None`
/// for arrays, maps and bytes.
fn scalar_text(value: &AttrValue) -> Option<String> {
    match value {
        AttrValue::Str(s) => Some(s.to_string()),
        AttrValue::Bool(b) => Some(b.to_string()),
        AttrValue::Int(i) => Some(i.to_string()),
        AttrValue::Double(d) => Some(d.to_string()),
        AttrValue::Bytes(_) | AttrValue::Array(_) | AttrValue::Map(_) => None,
    }
}

fn json_object(attributes: &[KeyValue]) -> BTreeMap<String, tantivy::schema::OwnedValue> {
    attributes
        .iter()
        .map(|kv| (kv.key.to_string(), json_value(&kv.value)))
        .collect()
}

fn json_value(value: &AttrValue) -> tantivy::schema::OwnedValue {
    use tantivy::schema::OwnedValue;
    match value {
        AttrValue::Str(s) => OwnedValue::Str(s.to_string()),
        AttrValue::Bool(b) => OwnedValue::Bool(*b),
        AttrValue::Int(i) => OwnedValue::I64(*i),
        AttrValue::Double(d) => OwnedValue::F64(*d),
        AttrValue::Bytes(b) => OwnedValue::Str(hex::encode(b)),
        AttrValue::Array(items) => OwnedValue::Array(items.iter().map(json_value).collect()),
        AttrValue::Map(entries) => OwnedValue::Object(
            entries
                .iter()
                .map(|kv| (kv.key.to_string(), json_value(&kv.value)))
                .collect(),
        ),
    }
}

/// Decodes the stored record of a document.
pub fn record_of(fields: &LogFields, doc: &TantivyDocument) -> Option<LogRecord> {
    use tantivy::schema::Value;
    let bytes = doc.get_first(fields.record)?.as_bytes()?;
    codec::decode_logs(bytes).ok()?.into_iter().next()
}
