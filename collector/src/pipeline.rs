//! The data path between the wire and the stores:
//! `decoded spans -> WAL (group commit) -> head -> ack`, and the flusher that
//! moves the head into the stores and trims the WAL behind it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::codec;
use crate::model::Span;
use crate::store::traces::TraceStore;
use crate::telemetry::Metrics;
use crate::wal::{RecordKind, Wal, WalError};

/// Why data was not accepted. The status codes for each protocol are chosen in
/// the ingest edge (`ingest::IngestError`).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("too much data is waiting to be written, retry later")]
    Overloaded,
    #[error("the write-ahead log failed: {0}")]
    Unavailable(String),
}

/// Limits that keep memory bounded.
#[derive(Clone, Debug)]
pub struct PipelineLimits {
    /// Bytes of requests waiting for the WAL writer.
    pub wal_queue_bytes: usize,
    /// Spans kept in memory before a flush; beyond it ingest answers "retry".
    pub max_buffered_spans: usize,
    /// How often the head is flushed to the stores.
    pub flush_interval: Duration,
}

/// Shared by every ingest endpoint; see the module docs.
pub struct Pipeline {
    wal: Wal,
    traces: Arc<TraceStore>,
    limits: PipelineLimits,
    metrics: Metrics,
    flush_wanted: Notify,
}

impl Pipeline {
    /// Opens the stores and the WAL under `data_dir` and replays what the
    /// stores do not have yet.
    pub fn open(
        data_dir: &Path,
        limits: PipelineLimits,
        metrics: Metrics,
    ) -> anyhow::Result<Arc<Pipeline>> {
        use anyhow::Context;
        let traces = Arc::new(
            TraceStore::open(&data_dir.join("traces"), metrics.clone())
                .context("opening the trace store")?,
        );
        let checkpoint = traces
            .checkpoint()
            .context("reading the trace store checkpoint")?;
        let mut replayed = 0usize;
        let wal = Wal::open(
            &data_dir.join("wal"),
            checkpoint,
            limits.wal_queue_bytes,
            metrics.clone(),
            |record| match record.kind {
                RecordKind::Spans => match codec::decode_spans(&record.payload, None) {
                    Ok(spans) => {
                        replayed += spans.len();
                        traces.apply(record.seq, spans);
                    }
                    Err(error) => {
                        tracing::error!(seq = record.seq, %error, "WalRecordUndecodable: skipped")
                    }
                },
            },
        )
        .context("opening the write-ahead log")?;
        tracing::info!(checkpoint, replayed_spans = replayed, "WalReplayed");
        Ok(Arc::new(Pipeline {
            wal,
            traces,
            limits,
            metrics,
            flush_wanted: Notify::new(),
        }))
    }

    pub fn traces(&self) -> &Arc<TraceStore> {
        &self.traces
    }

    /// Makes spans durable and queryable; returns once they are both.
    pub async fn accept_spans(&self, spans: Vec<Span>, transport: &str) -> Result<(), AcceptError> {
        if spans.is_empty() {
            return Ok(());
        }
        let count = spans.len();
        let buffered = self.traces.buffered_spans();
        if buffered >= self.limits.max_buffered_spans / 2 {
            self.flush_wanted.notify_one();
        }
        if buffered + count > self.limits.max_buffered_spans {
            self.reject(count, "overloaded");
            return Err(AcceptError::Overloaded);
        }
        let payload = codec::encode_spans(&spans);
        let store = self.traces.clone();
        let appended = self
            .wal
            .append(
                RecordKind::Spans,
                payload,
                Box::new(move |seq| store.apply(seq, spans)),
            )
            .await;
        match appended {
            Ok(_) => {
                self.metrics
                    .spans_received
                    .with_label_values(&[transport])
                    .inc_by(count as u64);
                Ok(())
            }
            Err(WalError::Overloaded) => {
                self.reject(count, "overloaded");
                Err(AcceptError::Overloaded)
            }
            Err(error) => {
                self.reject(count, "unavailable");
                Err(AcceptError::Unavailable(error.to_string()))
            }
        }
    }

    /// Counts spans refused before reaching the WAL.
    pub fn reject(&self, spans: usize, reason: &str) {
        self.metrics
            .spans_rejected
            .with_label_values(&[reason])
            .inc_by(spans as u64);
    }

    /// Counts a request refused as a whole (malformed, too large, ...).
    pub fn refuse_request(&self, reason: &str) {
        self.metrics
            .requests_rejected
            .with_label_values(&[reason])
            .inc();
    }

    /// Flushes the head to the stores and trims the WAL; returns whether the
    /// last flush succeeded (what `/readyz` reports).
    pub async fn flush(self: &Arc<Self>) -> bool {
        let pipeline = self.clone();
        let flushed = tokio::task::spawn_blocking(move || pipeline.traces.flush()).await;
        match flushed {
            Ok(Ok(Some(seq))) => {
                self.wal.truncate_through(seq);
                true
            }
            Ok(Ok(None)) => true,
            // The store logged the error and kept the spans for the next try.
            Ok(Err(_)) => false,
            Err(error) => {
                tracing::error!(%error, "SpanStoreFlushPanicked");
                false
            }
        }
    }

    /// Flushes periodically, or sooner when the head fills up, until `stop`
    /// resolves; then flushes a last time and closes the WAL.
    pub async fn run_flusher(
        self: Arc<Self>,
        healthy: Arc<std::sync::atomic::AtomicBool>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        use std::sync::atomic::Ordering;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(self.limits.flush_interval) => {}
                _ = self.flush_wanted.notified() => {}
            }
            healthy.store(self.flush().await, Ordering::Relaxed);
        }
        if !self.flush().await {
            tracing::error!("FinalFlushError: data stays in the WAL and is replayed on next start");
        }
        self.wal.shutdown().await;
    }
}
