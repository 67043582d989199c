//! Strand's own health, exported on `/metrics` in the Prometheus text format.
//!
//! Naming follows `strand_<noun>_<unit>[_total]`; label values come from small
//! fixed sets (transport, reason, signal) so cardinality stays bounded.

use std::path::Path;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
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
    /// Remote-write requests admitted, by how their series were found
    /// (`key`: every one by the digest of its labels as sent before;
    /// `labels`: decoded and looked up by labels, as a request with a new
    /// series or encoding is). Mostly `key` once senders are known.
    pub remote_write_requests: IntCounterVec,
    /// Ingest requests refused as a whole, by reason (`malformed`, `too_large`, `overloaded`, `unavailable`).
    pub requests_rejected: IntCounterVec,
    pub wal_written_bytes: IntCounter,
    pub wal_size_bytes: IntGauge,
    pub wal_fsync_seconds: Histogram,
    /// Group commits that failed to write or fsync (e.g. a full disk); their
    /// requests were refused, not acknowledged.
    pub wal_write_errors: IntCounter,
    /// Bytes of acknowledged-but-not-yet-written requests waiting for the WAL.
    pub ingest_queue_bytes: IntGauge,
    /// Spans held in memory, not yet in span blocks.
    pub head_spans: IntGauge,
    /// Bytes on disk per store (`traces`: segments and the sled index;
    /// `logs`: the partitions; `metrics`: chunks, series log and snapshot).
    pub store_size_bytes: IntGaugeVec,
    /// Files (span segments, log partitions, chunk files) retention
    /// deleted, by signal and reason (`age`, `size`).
    pub retention_dropped_files: IntCounterVec,
    /// Bytes of those files.
    pub retention_dropped_bytes: IntCounterVec,
    pub store_flush_seconds: Histogram,
    pub store_flush_errors: IntCounter,
    /// Attributes dropped beyond the count limit, by signal (`spans`, `logs`).
    pub attributes_dropped: IntCounterVec,
    /// Attribute values truncated to the length limit, by signal.
    pub attribute_values_truncated: IntCounterVec,
    /// Requests refused for their token, by the scope they needed and
    /// reason (`missing`, `invalid`, `wrong_scope`).
    pub auth_denied: IntCounterVec,
    /// Reloads of the token file, by outcome (`ok`, `failed`).
    pub token_reloads: IntCounterVec,
    /// Damaged data found and isolated, by store and file (relative to the
    /// data directory; only damaged files get a series).
    pub corrupt_data: IntCounterVec,
    /// TLS handshakes that failed or timed out, by listener (`otlp_grpc`,
    /// `otlp_http`, `http`): plain-text clients, untrusted or missing client
    /// certificates, scanners.
    pub tls_handshake_failures: IntCounterVec,
    /// Certificate reloads, by result (`success`, `failure`; a failure keeps
    /// serving the previous certificate).
    pub tls_reloads: IntCounterVec,
    /// `--memory-limit` in bytes (0: none).
    pub memory_limit: IntGauge,
    /// The limit's shares, by what they bound (see `memory::MemoryBudget`).
    pub memory_budget: IntGaugeVec,
    /// The resident set, as the memory guard last sampled it.
    pub resident_memory: IntGauge,
    /// 1 while ingest is refused because memory use is near the limit.
    pub memory_pressure: IntGauge,
    /// Bytes charged to ingest requests being decoded.
    pub ingest_in_flight_bytes: IntGauge,
    /// Connections being served, by listener (`otlp_grpc`, `otlp_http`,
    /// `http`); at `--max-connections`, new ones wait.
    pub connections: IntGaugeVec,
    /// Connections closed because the peer left an answer unread for
    /// `--stalled-write-timeout`, by listener.
    pub connection_write_stalls: IntCounterVec,
    /// Data directory snapshots (`POST /api/admin/snapshot`), by outcome
    /// (`success`, `failure`).
    pub snapshots: IntCounterVec,
    /// Time to write a snapshot, successful or not.
    pub snapshot_seconds: Histogram,
    /// Alerts an Alertmanager accepted, by its alerts endpoint (named as
    /// Prometheus names its own: `prometheus_notifications_*`).
    pub notifications_sent: IntCounterVec,
    /// Alerts an Alertmanager did not accept (an error answer, a timeout,
    /// no connection), by its alerts endpoint.
    pub notifications_errors: IntCounterVec,
    /// Alerts dropped: the queue was full, or no Alertmanager took them.
    pub notifications_dropped: IntCounter,
    /// Alerts waiting to be sent.
    pub notifications_queue_length: IntGauge,
    /// `--alertmanager-queue`.
    pub notifications_queue_capacity: IntGauge,
    /// Alertmanagers alerts are sent to.
    pub notifications_alertmanagers: IntGauge,
    /// Rule evaluations, one per rule per group evaluation.
    pub rule_evaluations: IntCounter,
    /// Rule evaluations whose expression failed (the rule's health is `err`).
    pub rule_evaluation_failures: IntCounter,
    /// Rule outputs the pipeline refused (they are not stored).
    pub rule_write_failures: IntCounter,
    /// Evaluations skipped because the previous one ran late, by group.
    pub rule_group_iterations_missed: IntCounterVec,
    /// How long each group's last evaluation took, by group.
    pub rule_group_last_duration: GaugeVec,
    /// Reloads of the rule files, by outcome (`success`, `failure`).
    pub rule_reloads: IntCounterVec,
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
            remote_write_requests: IntCounterVec::new(
                Opts::new(
                    "strand_remote_write_requests_total",
                    "Remote-write requests admitted, by how their series were found",
                ),
                &["series_by"],
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
            wal_write_errors: IntCounter::new(
                "strand_wal_write_errors_total",
                "Group commits that failed to write or fsync; their requests were refused",
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
            retention_dropped_files: IntCounterVec::new(
                Opts::new(
                    "strand_retention_dropped_files_total",
                    "Files retention deleted, by reason (age, size)",
                ),
                &["signal", "reason"],
            )
            .expect("valid metric"),
            retention_dropped_bytes: IntCounterVec::new(
                Opts::new(
                    "strand_retention_dropped_bytes_total",
                    "Bytes of the files retention deleted, by reason (age, size)",
                ),
                &["signal", "reason"],
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
            attributes_dropped: IntCounterVec::new(
                Opts::new(
                    "strand_attributes_dropped_total",
                    "Attributes dropped beyond the attribute count limit",
                ),
                &["signal"],
            )
            .expect("valid metric"),
            attribute_values_truncated: IntCounterVec::new(
                Opts::new(
                    "strand_attribute_values_truncated_total",
                    "Attribute values truncated to the attribute value length limit",
                ),
                &["signal"],
            )
            .expect("valid metric"),
            auth_denied: IntCounterVec::new(
                Opts::new(
                    "strand_auth_denied_total",
                    "Requests refused for their token",
                ),
                &["scope", "reason"],
            )
            .expect("valid metric"),
            token_reloads: IntCounterVec::new(
                Opts::new("strand_token_reloads_total", "Reloads of the token file"),
                &["outcome"],
            )
            .expect("valid metric"),
            corrupt_data: IntCounterVec::new(
                Opts::new(
                    "strand_corrupt_data_total",
                    "Damaged data found in a file and isolated (skipped, cut or quarantined)",
                ),
                &["store", "file"],
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
            memory_limit: IntGauge::new(
                "strand_memory_limit_bytes",
                "The memory limit (--memory-limit); 0 when none is set",
            )
            .expect("valid metric"),
            memory_budget: IntGaugeVec::new(
                Opts::new(
                    "strand_memory_budget_bytes",
                    "Share of the memory limit given to each buffer that grows with load",
                ),
                &["use"],
            )
            .expect("valid metric"),
            resident_memory: IntGauge::new(
                "strand_resident_memory_bytes",
                "Resident set (RSS) of the daemon, as the memory guard last sampled it",
            )
            .expect("valid metric"),
            memory_pressure: IntGauge::new(
                "strand_memory_pressure",
                "1 while ingest is refused because memory use is near the limit",
            )
            .expect("valid metric"),
            ingest_in_flight_bytes: IntGauge::new(
                "strand_ingest_in_flight_bytes",
                "Memory charged to ingest requests being read and decoded",
            )
            .expect("valid metric"),
            connections: IntGaugeVec::new(
                Opts::new(
                    "strand_connections",
                    "Connections being served, by listener",
                ),
                &["listener"],
            )
            .expect("valid metric"),
            connection_write_stalls: IntCounterVec::new(
                Opts::new(
                    "strand_connection_write_stalls_total",
                    "Connections closed because the peer stopped reading an answer",
                ),
                &["listener"],
            )
            .expect("valid metric"),
            snapshots: IntCounterVec::new(
                Opts::new(
                    "strand_snapshots_total",
                    "Snapshots of the data directory, by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            snapshot_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "strand_snapshot_duration_seconds",
                    "Time to write a snapshot of the data directory",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            )
            .expect("valid metric"),
            notifications_sent: IntCounterVec::new(
                Opts::new(
                    "strand_notifications_sent_total",
                    "Alerts sent to an Alertmanager and accepted",
                ),
                &["alertmanager"],
            )
            .expect("valid metric"),
            notifications_errors: IntCounterVec::new(
                Opts::new(
                    "strand_notifications_errors_total",
                    "Alerts an Alertmanager did not accept (error answer, timeout, no connection)",
                ),
                &["alertmanager"],
            )
            .expect("valid metric"),
            notifications_dropped: IntCounter::new(
                "strand_notifications_dropped_total",
                "Alerts dropped: the queue was full, or no Alertmanager accepted them",
            )
            .expect("valid metric"),
            notifications_queue_length: IntGauge::new(
                "strand_notifications_queue_length",
                "Alerts waiting to be sent to the Alertmanagers",
            )
            .expect("valid metric"),
            notifications_queue_capacity: IntGauge::new(
                "strand_notifications_queue_capacity",
                "Alerts the notification queue holds before it drops the oldest",
            )
            .expect("valid metric"),
            notifications_alertmanagers: IntGauge::new(
                "strand_notifications_alertmanagers_discovered",
                "Alertmanagers alerts are sent to",
            )
            .expect("valid metric"),
            rule_evaluations: IntCounter::new(
                "strand_rule_evaluations_total",
                "Rule evaluations (one per rule and group evaluation)",
            )
            .expect("valid metric"),
            rule_evaluation_failures: IntCounter::new(
                "strand_rule_evaluation_failures_total",
                "Rule evaluations whose expression failed",
            )
            .expect("valid metric"),
            rule_write_failures: IntCounter::new(
                "strand_rule_write_failures_total",
                "Rule outputs (recorded series, ALERTS) that could not be stored",
            )
            .expect("valid metric"),
            rule_group_iterations_missed: IntCounterVec::new(
                Opts::new(
                    "strand_rule_group_iterations_missed_total",
                    "Rule group evaluations skipped because the previous one ran late",
                ),
                &["rule_group"],
            )
            .expect("valid metric"),
            rule_group_last_duration: GaugeVec::new(
                Opts::new(
                    "strand_rule_group_last_duration_seconds",
                    "Duration of the last evaluation of the rule group",
                ),
                &["rule_group"],
            )
            .expect("valid metric"),
            rule_reloads: IntCounterVec::new(
                Opts::new(
                    "strand_rule_reloads_total",
                    "Reloads of the rule files, by outcome",
                ),
                &["outcome"],
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
            Box::new(metrics.remote_write_requests.clone()),
            Box::new(metrics.requests_rejected.clone()),
            Box::new(metrics.wal_written_bytes.clone()),
            Box::new(metrics.wal_size_bytes.clone()),
            Box::new(metrics.wal_fsync_seconds.clone()),
            Box::new(metrics.wal_write_errors.clone()),
            Box::new(metrics.ingest_queue_bytes.clone()),
            Box::new(metrics.head_spans.clone()),
            Box::new(metrics.store_size_bytes.clone()),
            Box::new(metrics.retention_dropped_files.clone()),
            Box::new(metrics.retention_dropped_bytes.clone()),
            Box::new(metrics.store_flush_seconds.clone()),
            Box::new(metrics.store_flush_errors.clone()),
            Box::new(metrics.attributes_dropped.clone()),
            Box::new(metrics.attribute_values_truncated.clone()),
            Box::new(metrics.auth_denied.clone()),
            Box::new(metrics.token_reloads.clone()),
            Box::new(metrics.corrupt_data.clone()),
            Box::new(metrics.tls_handshake_failures.clone()),
            Box::new(metrics.tls_reloads.clone()),
            Box::new(metrics.memory_limit.clone()),
            Box::new(metrics.memory_budget.clone()),
            Box::new(metrics.resident_memory.clone()),
            Box::new(metrics.memory_pressure.clone()),
            Box::new(metrics.ingest_in_flight_bytes.clone()),
            Box::new(metrics.connections.clone()),
            Box::new(metrics.connection_write_stalls.clone()),
            Box::new(metrics.snapshots.clone()),
            Box::new(metrics.snapshot_seconds.clone()),
            Box::new(metrics.notifications_sent.clone()),
            Box::new(metrics.notifications_errors.clone()),
            Box::new(metrics.notifications_dropped.clone()),
            Box::new(metrics.notifications_queue_length.clone()),
            Box::new(metrics.notifications_queue_capacity.clone()),
            Box::new(metrics.notifications_alertmanagers.clone()),
            Box::new(metrics.rule_evaluations.clone()),
            Box::new(metrics.rule_evaluation_failures.clone()),
            Box::new(metrics.rule_write_failures.clone()),
            Box::new(metrics.rule_group_iterations_missed.clone()),
            Box::new(metrics.rule_group_last_duration.clone()),
            Box::new(metrics.rule_reloads.clone()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        metrics
    }

    /// Reports damaged data: one `CorruptData` event and one count, naming
    /// `file` relative to `data_dir`, where in it the damage starts and what
    /// was done about it — so an operator can find what was lost.
    pub fn corrupt_data(
        &self,
        store: &str,
        data_dir: &Path,
        file: &Path,
        offset: u64,
        damage: &str,
        action: &str,
    ) {
        let file = file
            .strip_prefix(data_dir)
            .unwrap_or(file)
            .display()
            .to_string();
        tracing::error!(store, file, offset, damage, action, "CorruptData");
        self.corrupt_data.with_label_values(&[store, &file]).inc();
    }

    /// Counts one file of `signal` (`traces`, `logs`, `metrics`) that
    /// retention deleted, `bytes` large.
    pub fn retention_dropped(&self, signal: &str, reason: DropReason, bytes: u64) {
        let labels = [signal, reason.as_str()];
        self.retention_dropped_files
            .with_label_values(&labels)
            .inc();
        self.retention_dropped_bytes
            .with_label_values(&labels)
            .inc_by(bytes);
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

/// Why retention deleted a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Its newest data was older than the store's retention time.
    Age,
    /// The store took more disk than its size limit.
    Size,
}

impl DropReason {
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Age => "age",
            DropReason::Size => "size",
        }
    }
}

/// Lets an error that repeats many times a second (every group commit on a
/// full disk) reach the log once per interval, with how many were left out.
pub struct LogThrottle {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(interval: std::time::Duration) -> LogThrottle {
        LogThrottle {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(left out since the last one)` when this occurrence is to be
    /// logged.
    pub fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now < last + self.interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// An error and its causes, `: `-separated: HTTP clients' own messages do
/// not say "connection refused", "timed out" or which certificate was
/// refused.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_logs_once_per_interval_and_counts_the_rest() {
        let mut throttle = LogThrottle::new(std::time::Duration::from_millis(50));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(throttle.allow(), Some(2));
    }

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
        metrics.retention_dropped("logs", DropReason::Size, 1000);
        metrics.retention_dropped("logs", DropReason::Size, 24);
        let text = metrics.render();
        assert!(text.contains("strand_spans_received_total{transport=\"grpc\"} 3"));
        assert!(text.contains(
            "strand_retention_dropped_bytes_total{reason=\"size\",signal=\"logs\"} 1024"
        ));
        assert!(
            text.contains(
                "strand_retention_dropped_files_total{reason=\"size\",signal=\"logs\"} 2"
            )
        );
        assert!(text.contains("strand_store_size_bytes{signal=\"traces\"} 10"));
        assert!(text.contains("strand_wal_fsync_duration_seconds_bucket"));
    }
}
