//! Bare tantivy indexing the benchmark's log documents in this process: the
//! ceiling Strand's end-to-end log ingest (protocol, WAL, fsync, commits) is
//! compared against.
//!
//! The schema mirrors the daemon's (`collector/src/store/logs/schema.rs`):
//! keep the two in step, or the comparison stops meaning anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message;
use tantivy::schema::{
    FAST, INDEXED, IndexRecordOption, JsonObjectOptions, OwnedValue, STORED, Schema,
    TextFieldIndexing, TextOptions,
};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::tokenizer::{LowerCaser, RawTokenizer, TextAnalyzer};
use tantivy::{Index, IndexSettings, TantivyDocument};

use crate::logs::Batch;

/// Indexing memory, as the daemon gives its newest partition.
const WRITER_BYTES: usize = 96 << 20;
const WRITER_THREADS: usize = 2;
/// Commit cadence of the daemon.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Upper bound on the baseline's run time.
const MAX_RUN: Duration = Duration::from_secs(20);

/// Indexes `lines` documents from `pool` (round-robin) into a fresh index in
/// `dir`; returns documents per second, final commit included.
pub fn index_rate(pool: &[Batch], lines: u64, dir: &Path) -> Result<f64> {
    let text = |tokenizer: &str, positions: bool| {
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer)
            .set_index_option(if positions {
                IndexRecordOption::WithFreqsAndPositions
            } else {
                IndexRecordOption::Basic
            })
    };
    let json = || {
        JsonObjectOptions::default()
            .set_indexing_options(text("default", true))
            .set_expand_dots_enabled()
    };
    let mut builder = Schema::builder();
    let timestamp = builder.add_u64_field("timestamp", INDEXED | FAST);
    let id = builder.add_u64_field("id", FAST);
    let level = builder.add_u64_field("level", FAST);
    let severity = builder.add_text_field(
        "severity",
        TextOptions::default()
            .set_indexing_options(text("raw_lowercase", false))
            .set_fast("raw_lowercase"),
    );
    let service = builder.add_text_field(
        "service",
        TextOptions::default()
            .set_indexing_options(text("raw", false))
            .set_fast("raw"),
    );
    let body = builder.add_text_field(
        "body",
        TextOptions::default().set_indexing_options(text("default", true)),
    );
    let trace_id = builder.add_text_field(
        "trace_id",
        TextOptions::default().set_indexing_options(text("raw_lowercase", false)),
    );
    let span_id = builder.add_text_field(
        "span_id",
        TextOptions::default().set_indexing_options(text("raw_lowercase", false)),
    );
    let attributes = builder.add_json_field("attributes", json());
    let resource = builder.add_json_field("resource", json());
    let attribute_keys =
        builder.add_text_field("attribute_keys", TextOptions::default().set_fast("raw"));
    let record = builder.add_bytes_field("record", STORED);
    let schema = builder.build();

    let tokenizers = tantivy::tokenizer::TokenizerManager::default();
    tokenizers.register(
        "raw_lowercase",
        TextAnalyzer::builder(RawTokenizer::default())
            .filter(LowerCaser)
            .build(),
    );
    let index = Index::builder()
        .schema(schema)
        .tokenizers(tokenizers.clone())
        .fast_field_tokenizers(tokenizers)
        .settings(IndexSettings {
            docstore_compression: Compressor::Zstd(ZstdCompressor::default()),
            ..IndexSettings::default()
        })
        .create_in_dir(dir)?;
    let mut writer =
        index.writer_with_num_threads::<TantivyDocument>(WRITER_THREADS, WRITER_BYTES)?;

    let started = Instant::now();
    let mut last_commit = Instant::now();
    let mut indexed = 0u64;
    'outer: for (n, batch) in pool.iter().cycle().enumerate() {
        for resource_logs in &batch.request.resource_logs {
            let resource_attributes = resource_logs
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or_default();
            let service_name = resource_attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(string_of)
                .unwrap_or_default();
            for scope in &resource_logs.scope_logs {
                for log in &scope.log_records {
                    if indexed >= lines || started.elapsed() > MAX_RUN {
                        break 'outer;
                    }
                    let mut doc = TantivyDocument::default();
                    doc.add_u64(timestamp, 1_764_064_800_000_000_000 + indexed);
                    doc.add_u64(id, ((n as u64) << 24) + indexed);
                    doc.add_u64(level, u64::from(log.severity_number as u32 / 4));
                    doc.add_text(severity, log.severity_text.to_ascii_lowercase());
                    doc.add_text(service, &service_name);
                    if let Some(text) = log.body.as_ref().and_then(|b| match &b.value {
                        Some(any_value::Value::StringValue(s)) => Some(s),
                        _ => None,
                    }) {
                        doc.add_text(body, text);
                    }
                    if !log.trace_id.is_empty() {
                        doc.add_text(trace_id, hex::encode(&log.trace_id));
                        doc.add_text(span_id, hex::encode(&log.span_id));
                    }
                    doc.add_object(attributes, object(&log.attributes));
                    for kv in &log.attributes {
                        doc.add_text(attribute_keys, &kv.key);
                    }
                    doc.add_object(resource, object(resource_attributes));
                    doc.add_bytes(record, &log.encode_to_vec());
                    writer.add_document(doc)?;
                    indexed += 1;
                }
            }
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            writer.commit()?;
            last_commit = Instant::now();
        }
    }
    writer.commit()?;
    Ok(indexed as f64 / started.elapsed().as_secs_f64())
}

fn string_of(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn object(attributes: &[KeyValue]) -> BTreeMap<String, OwnedValue> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => OwnedValue::Str(s.clone()),
                any_value::Value::IntValue(i) => OwnedValue::I64(*i),
                any_value::Value::DoubleValue(d) => OwnedValue::F64(*d),
                any_value::Value::BoolValue(b) => OwnedValue::Bool(*b),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}
