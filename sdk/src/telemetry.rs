//! The handle instrumentation records through.

use std::fmt;
use std::sync::Arc;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Upper bounds of the request-duration histograms, in seconds: the ones the
/// HTTP semantic conventions recommend, so dashboards built for any
/// OpenTelemetry service work unchanged.
pub(crate) const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A cheap-to-clone handle on one service's tracer and meter, from which the
/// server layers, clients and messaging helpers are made. Explicit rather
/// than global so that two services can live in one process (tests, demos).
#[derive(Clone)]
pub struct Telemetry {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) tracer: BoxedTracer,
    pub(crate) propagator: TextMapCompositePropagator,
    pub(crate) server_duration: Histogram<f64>,
}

impl Telemetry {
    pub(crate) fn new(tracer: BoxedTracer, meter: &Meter) -> Telemetry {
        Telemetry {
            inner: Arc::new(Inner {
                tracer,
                propagator: crate::setup::propagator(),
                server_duration: meter
                    .f64_histogram("http.server.request.duration")
                    .with_unit("s")
                    .with_description("Duration of HTTP server requests.")
                    .with_boundaries(DURATION_BUCKETS.to_vec())
                    .build(),
            }),
        }
    }

    /// Records through providers the application built itself, e.g. with
    /// its own exporters, or in-memory ones in tests and benchmarks.
    pub fn from_providers(
        tracer_provider: &SdkTracerProvider,
        meter_provider: &SdkMeterProvider,
    ) -> Telemetry {
        let scope = crate::setup::scope();
        Telemetry::new(
            BoxedTracer::new(Box::new(tracer_provider.tracer_with_scope(scope.clone()))),
            &meter_provider.meter_with_scope(scope),
        )
    }

    /// The globally installed providers (see [`crate::init`]), for code that
    /// has no [`crate::Guard`] at hand. Before `init` it records nothing.
    pub fn global() -> Telemetry {
        let scope = crate::setup::scope();
        Telemetry::new(
            opentelemetry::global::tracer_with_scope(scope.clone()),
            &opentelemetry::global::meter_with_scope(scope),
        )
    }
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}
