//! Bounded export queues with counted drops.
//!
//! The batch processors of `opentelemetry_sdk` already drop instead of
//! blocking when their queue is full, but they keep the count to themselves.
//! A [`Gate`] sits in front of each one with the same capacity: it admits an
//! item only while fewer than `capacity` are waiting (so the inner queue never
//! overflows and every drop is ours to count), and the exporter wrapper lets
//! items out as their batch is handed to the real exporter. Items in a batch
//! whose export fails are counted as dropped too: the batch processors do not
//! retry. The first drop of each signal is logged once; later ones are only
//! counted, so a dead collector cannot flood the application's output.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry::logs::Severity;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchLogProcessor, LogBatch, LogExporter, LogProcessor, SdkLogRecord,
};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor};

/// Admission and drop accounting for one signal's export queue.
pub(crate) struct Gate {
    signal: &'static str,
    capacity: usize,
    queued: AtomicUsize,
    dropped: AtomicU64,
    warned: AtomicBool,
}

impl Gate {
    pub(crate) fn new(signal: &'static str, capacity: usize) -> Arc<Gate> {
        Arc::new(Gate {
            signal,
            capacity,
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// Takes a place in the queue, or counts the item as dropped.
    fn try_enter(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) < self.capacity {
            return true;
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.dropped(1, "export queue full");
        false
    }

    /// Frees `n` places: their items were handed to the exporter.
    fn leave(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
    }

    fn dropped(&self, n: u64, reason: &'static str) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                signal = self.signal,
                reason,
                "StrandSdkTelemetryDropped: telemetry is being dropped; further drops are counted, not logged"
            );
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn dropped_count(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn queued_count(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("signal", &self.signal)
            .field("capacity", &self.capacity)
            .field("queued", &self.queued_count())
            .field("dropped", &self.dropped_count())
            .finish()
    }
}

/// A `BatchSpanProcessor` behind a [`Gate`].
#[derive(Debug)]
pub(crate) struct BoundedSpanProcessor {
    pub(crate) inner: BatchSpanProcessor,
    pub(crate) gate: Arc<Gate>,
}

impl SpanProcessor for BoundedSpanProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // The batch processor ignores unsampled spans; they take no place.
        if span.span_context.is_sampled() && self.gate.try_enter() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A span exporter that releases [`Gate`] places and counts failed batches.
#[derive(Debug)]
pub(crate) struct CountingSpanExporter<E> {
    pub(crate) inner: E,
    pub(crate) gate: Arc<Gate>,
}

impl<E: SpanExporter> SpanExporter for CountingSpanExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        self.gate.leave(n);
        async move {
            let result = self.inner.export(batch).await;
            if result.is_err() {
                self.gate.dropped(n as u64, "export failed");
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A `BatchLogProcessor` behind a [`Gate`].
#[derive(Debug)]
pub(crate) struct BoundedLogProcessor {
    pub(crate) inner: BatchLogProcessor,
    pub(crate) gate: Arc<Gate>,
}

impl LogProcessor for BoundedLogProcessor {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        if self.gate.try_enter() {
            self.inner.emit(data, instrumentation);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn event_enabled(&self, level: Severity, target: &str, name: Option<&str>) -> bool {
        self.inner.event_enabled(level, target, name)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A log exporter that releases [`Gate`] places and counts failed batches.
#[derive(Debug)]
pub(crate) struct CountingLogExporter<E> {
    pub(crate) inner: E,
    pub(crate) gate: Arc<Gate>,
}

impl<E: LogExporter> LogExporter for CountingLogExporter<E> {
    fn export(
        &self,
        batch: LogBatch<'_>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.iter().count();
        self.gate.leave(n);
        async move {
            let result = self.inner.export(batch).await;
            if result.is_err() {
                self.gate.dropped(n as u64, "export failed");
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn event_enabled(&self, level: Severity, target: &str, name: Option<&str>) -> bool {
        self.inner.event_enabled(level, target, name)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A metric exporter that counts failed exports. Metrics need no gate: the
/// SDK aggregates them in memory (bounded by its cardinality limit) and a
/// failed export is simply superseded by the next cumulative one.
#[derive(Debug)]
pub(crate) struct CountingMetricExporter<E> {
    pub(crate) inner: E,
    pub(crate) gate: Arc<Gate>,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        if result.is_err() {
            self.gate.dropped(1, "export failed");
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_admits_up_to_capacity_and_counts_the_rest() {
        let gate = Gate::new("traces", 2);
        assert!(gate.try_enter());
        assert!(gate.try_enter());
        assert!(!gate.try_enter());
        assert_eq!((gate.queued_count(), gate.dropped_count()), (2, 1));
        gate.leave(5);
        assert_eq!(gate.queued_count(), 0);
        assert!(gate.try_enter());
    }
}
