//! Strand's own health, exported on `/metrics` in the Prometheus text format.
//!
//! Naming follows `strand_<noun>_<unit>[_total]`; label values come from small
//! fixed sets (transport, reason, signal) so cardinality stays bounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the daemon keeps about its own health, registered in one
/// registry. (Not "Metrics": that is the TSDB, `store::metrics`.)
#[derive(Clone)]
pub struct SelfMetrics {
    registry: Registry,
    /// Spans accepted into the WAL, by transport (`grpc`, `http`).
    pub spans_received: IntCounterVec,
    /// Spans not accepted, by reason (`invalid`, `malformed`, `too_large`, `overloaded`, `unavailable`).
    pub spans_rejected: IntCounterVec,
    pub logs_received: IntCounterVec,
    pub logs_rejected: IntCounterVec,
    /// Metric samples acknowledged, by transport (`grpc`, `http`, `remote_write`, `scrape`, `spans`).
    pub samples_received: IntCounterVec,
    /// Metric samples not accepted, by reason (`invalid`, `out_of_order`, `series_limit`, `overloaded`, `unavailable`).
    pub samples_rejected: IntCounterVec,
    /// Series the metrics store holds.
    pub metric_series: IntGauge,
    /// Ingest requests refused as a whole, by reason (`malformed`, `too_large`, `overloaded`, `unavailable`).
    pub requests_rejected: IntCounterVec,
    pub wal_written_bytes: IntCounter,
    pub wal_size_bytes: IntGauge,
    pub wal_fsync_seconds: Histogram,
    /// Bytes of acknowledged-but-not-yet-written requests waiting for the WAL.
    pub ingest_queue_bytes: IntGauge,
    /// Spans held in memory, not yet in span blocks.
    pub head_spans: IntGauge,
    pub store_size_bytes: IntGaugeVec,
    pub store_flush_seconds: Histogram,
    pub store_flush_errors: IntCounter,
    /// TLS handshakes that failed or timed out, by listener (`otlp_grpc`,
    /// `otlp_http`, `http`): plain-text clients, untrusted or missing client
    /// certificates, scanners.
    pub tls_handshake_failures: IntCounterVec,
    /// Certificate reloads, by result (`success`, `failure`; a failure keeps
    /// serving the previous certificate).
    pub tls_reloads: IntCounterVec,
}

impl SelfMetrics {
    pub fn new() -> SelfMetrics {
        let registry = Registry::new();
        let fsync_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        let metrics = SelfMetrics {
            spans_received: IntCounterVec::new(
                Opts::new(
                    "strand_spans_received_total",
                    "Spans accepted and durably written",
                ),
                &["transport"],
            )
            .expect("valid metric"),
            logs_received: IntCounterVec::new(
                Opts::new(
                    "strand_logs_received_total",
                    "Log records acknowledged (durable), by transport",
                ),
                &["transport"],
            )
            .expect("valid metric"),
            logs_rejected: IntCounterVec::new(
                Opts::new("strand_logs_rejected_total", "Log records not accepted"),
                &["reason"],
            )
            .expect("valid metric"),
            samples_received: IntCounterVec::new(
                Opts::new(
                    "strand_samples_received_total",
                    "Metric samples acknowledged (durable), by transport",
                ),
                &["transport"],
            )
            .expect("valid metric"),
            samples_rejected: IntCounterVec::new(
                Opts::new(
                    "strand_samples_rejected_total",
                    "Metric samples not accepted",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            metric_series: IntGauge::new(
                "strand_metric_series",
                "Series held by the metrics store",
            )
            .expect("valid metric"),
            spans_rejected: IntCounterVec::new(
                Opts::new("strand_spans_rejected_total", "Spans not accepted"),
                &["reason"],
            )
            .expect("valid metric"),
            requests_rejected: IntCounterVec::new(
                Opts::new(
                    "strand_ingest_requests_rejected_total",
                    "Ingest requests refused as a whole",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            wal_written_bytes: IntCounter::new(
                "strand_wal_written_bytes_total",
                "Bytes appended to the write-ahead log",
            )
            .expect("valid metric"),
            wal_size_bytes: IntGauge::new(
                "strand_wal_size_bytes",
                "Bytes of write-ahead log on disk",
            )
            .expect("valid metric"),
            wal_fsync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "strand_wal_fsync_duration_seconds",
                    "Time of one group commit fsync",
                )
                .buckets(fsync_buckets.clone()),
            )
            .expect("valid metric"),
            ingest_queue_bytes: IntGauge::new(
                "strand_ingest_queue_bytes",
                "Bytes of requests waiting for the write-ahead log",
            )
            .expect("valid metric"),
            head_spans: IntGauge::new(
                "strand_head_spans",
                "Spans in memory not yet flushed to span blocks",
            )
            .expect("valid metric"),
            store_size_bytes: IntGaugeVec::new(
                Opts::new("strand_store_size_bytes", "Bytes on disk per store"),
                &["signal"],
            )
            .expect("valid metric"),
            store_flush_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "strand_store_flush_duration_seconds",
                    "Time to flush the in-memory head to the stores",
                )
                .buckets(fsync_buckets.iter().map(|b| b * 10.0).collect()),
            )
            .expect("valid metric"),
            store_flush_errors: IntCounter::new(
                "strand_store_flush_errors_total",
                "Flushes of the head that failed and will be retried",
            )
            .expect("valid metric"),
            tls_handshake_failures: IntCounterVec::new(
                Opts::new(
                    "strand_tls_handshake_failures_total",
                    "TLS handshakes that failed or timed out",
                ),
                &["listener"],
            )
            .expect("valid metric"),
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "strand_tls_reloads_total",
                    "Reloads of the TLS certificate, key and client CAs",
                ),
                &["result"],
            )
            .expect("valid metric"),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.spans_received.clone()),
            Box::new(metrics.spans_rejected.clone()),
            Box::new(metrics.logs_received.clone()),
            Box::new(metrics.logs_rejected.clone()),
            Box::new(metrics.samples_received.clone()),
            Box::new(metrics.samples_rejected.clone()),
            Box::new(metrics.metric_series.clone()),
            Box::new(metrics.requests_rejected.clone()),
            Box::new(metrics.wal_written_bytes.clone()),
            Box::new(metrics.wal_size_bytes.clone()),
            Box::new(metrics.wal_fsync_seconds.clone()),
            Box::new(metrics.ingest_queue_bytes.clone()),
            Box::new(metrics.head_spans.clone()),
            Box::new(metrics.store_size_bytes.clone()),
            Box::new(metrics.store_flush_seconds.clone()),
            Box::new(metrics.store_flush_errors.clone()),
            Box::new(metrics.tls_handshake_failures.clone()),
            Box::new(metrics.tls_reloads.clone()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which
        // `new` cannot register.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let metrics = SelfMetrics::new();
        metrics
            .spans_received
            .with_label_values(&["grpc"])
            .inc_by(3);
        metrics
            .store_size_bytes
            .with_label_values(&["traces"])
            .set(10);
        let text = metrics.render();
        assert!(text.contains("strand_spans_received_total{transport=\"grpc\"} 3"));
        assert!(text.contains("strand_store_size_bytes{signal=\"traces\"} 10"));
        assert!(text.contains("strand_wal_fsync_duration_seconds_bucket"));
    }
}
