//! Trace context through messages (queues, event buses), where the consumer
//! runs later and on its own: its span *links* to the producer's instead of
//! being its child.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::telemetry::Telemetry;

impl Telemetry {
    /// Starts a producer span `send {destination}` (child of the current
    /// context) and writes its context into the message headers `carrier`
    /// (e.g. a `HashMap<String, String>`). The span ends when the returned
    /// context is dropped; attach it (`cx.attach()`) or use it with
    /// `FutureExt::with_context` around the actual send.
    pub fn send_message(&self, destination: &str, carrier: &mut dyn Injector) -> Context {
        let telemetry = &self.inner;
        let parent = Context::current();
        let span = telemetry
            .tracer
            .span_builder(format!("send {destination}"))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", destination.to_string()),
            ])
            .start_with_context(&telemetry.tracer, &parent);
        let cx = parent.with_span(span);
        telemetry.propagator.inject_context(&cx, carrier);
        cx
    }

    /// Starts a consumer span `process {destination}` for a received message,
    /// linked to the producer's span found in the headers `carrier`. The
    /// span's parent is the current context (usually none, so each message
    /// gets its own trace). It ends when the returned context is dropped.
    pub fn receive_message(&self, destination: &str, carrier: &dyn Extractor) -> Context {
        let telemetry = &self.inner;
        let producer = self.extract_context(carrier);
        let producer = producer.span().span_context().clone();
        let mut builder = telemetry
            .tracer
            .span_builder(format!("process {destination}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", destination.to_string()),
            ]);
        if producer.is_valid() {
            builder = builder.with_links(vec![Link::with_context(producer)]);
        }
        let parent = Context::current();
        let span = builder.start_with_context(&telemetry.tracer, &parent);
        parent.with_span(span)
    }

    /// Writes the current context into `carrier`, for protocols this crate
    /// has no helper for.
    pub fn inject_context(&self, carrier: &mut dyn Injector) {
        self.inner
            .propagator
            .inject_context(&Context::current(), carrier);
    }

    /// Reads a context written by [`Telemetry::inject_context`] (or any W3C
    /// tracecontext + baggage propagator) from `carrier`.
    pub fn extract_context(&self, carrier: &dyn Extractor) -> Context {
        self.inner.propagator.extract(carrier)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    use super::*;

    #[test]
    fn consumer_span_links_to_the_producer() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let meters = opentelemetry_sdk::metrics::SdkMeterProvider::default();
        let telemetry = Telemetry::from_providers(&provider, &meters);

        let mut headers = HashMap::new();
        let producer = telemetry.send_message("orders", &mut headers);
        let producer_span = producer.span().span_context().clone();
        drop(producer);
        assert!(headers.contains_key("traceparent"), "{headers:?}");

        let consumer = telemetry.receive_message("orders", &headers);
        assert_ne!(
            consumer.span().span_context().trace_id(),
            producer_span.trace_id(),
            "the consumer starts its own trace"
        );
        drop(consumer);

        let spans = exporter.get_finished_spans().unwrap();
        let consumer = spans.iter().find(|s| s.name == "process orders").unwrap();
        assert_eq!(consumer.span_kind, SpanKind::Consumer);
        let link = &consumer.links.links[0];
        assert_eq!(link.span_context.span_id(), producer_span.span_id());
        assert_eq!(link.span_context.trace_id(), producer_span.trace_id());
    }
}
