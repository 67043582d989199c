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

/// What indexing cost bare tantivy.
pub struct Indexed {
    /// Documents per second, final commit included.
    pub docs_per_s: f64,
    /// CPU time (user and system, every thread of this process: indexing,
    /// merging, compressing) per document, in microseconds: unlike the
    /// rate, hardly distorted by other processes sharing the cores.
    pub cpu_us_per_doc: f64,
}

/// Indexes `lines` documents from `pool` (round-robin) into a fresh index in
/// `dir`.
pub fn index_rate(pool: &[Batch], lines: u64, dir: &Path) -> Result<Indexed> {
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
        log_index::hot_writer_threads(),
        log_index::HOT_WRITER_BYTES,
    )?;

    let cpu_before = crate::daemon::cpu_seconds(std::process::id())?;
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
    let seconds = started.elapsed().as_secs_f64();
    let cpu = crate::daemon::cpu_seconds(std::process::id())? - cpu_before;
    Ok(Indexed {
        docs_per_s: indexed as f64 / seconds,
        cpu_us_per_doc: cpu * 1e6 / indexed.max(1) as f64,
    })
}
