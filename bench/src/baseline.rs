//! Bare tantivy indexing the benchmark's log documents in this process: the
//! ceiling Strand's end-to-end log ingest (protocol, WAL, fsync, commits) is
//! compared against.
//!
//! Schema, settings, writer sizing and documents come from the daemon's own
//! `strand::log_index`, so both sides index exactly the same thing; the
//! conversion from OTLP happens before the clock starts.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use strand::log_index;
use strand::model::LogRecord;
use tantivy::{Index, TantivyDocument};

use crate::logs::Batch;

/// Commit cadence of the daemon.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Upper bound on the baseline's run time.
const MAX_RUN: Duration = Duration::from_secs(20);

/// Indexes `lines` documents from `pool` (round-robin) into a fresh index in
/// `dir`; returns documents per second, final commit included.
pub fn index_rate(pool: &[Batch], lines: u64, dir: &Path) -> Result<f64> {
    let records: Vec<LogRecord> = pool
        .iter()
        .flat_map(|batch| {
            log_index::convert_logs_request(
                batch.request.clone(),
                &strand::config::AttributeLimits::default(),
                1_764_064_800_000_000_000,
            )
            .records
        })
        .collect();
    anyhow::ensure!(!records.is_empty(), "the log pool is empty");
    let (schema, fields) = log_index::build();
    let tokenizers = log_index::tokenizers();
    let index = Index::builder()
        .schema(schema)
        .tokenizers(tokenizers.clone())
        .fast_field_tokenizers(tokenizers)
        .settings(log_index::index_settings())
        .create_in_dir(dir)?;
    let mut writer = index.writer_with_num_threads::<TantivyDocument>(
        log_index::HOT_WRITER_THREADS,
        log_index::HOT_WRITER_BYTES,
    )?;

    let started = Instant::now();
    let mut last_commit = Instant::now();
    let mut indexed = 0u64;
    for record in records.iter().cycle() {
        if indexed >= lines || started.elapsed() > MAX_RUN {
            break;
        }
        writer.add_document(log_index::to_document(&fields, record, indexed))?;
        indexed += 1;
        if last_commit.elapsed() >= COMMIT_EVERY {
            writer.commit()?;
            last_commit = Instant::now();
        }
    }
    writer.commit()?;
    Ok(indexed as f64 / started.elapsed().as_secs_f64())
}
