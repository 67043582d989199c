//! One-call setup: providers, exporters, the `tracing` subscriber, globals.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::queue::{
    BoundedLogProcessor, BoundedSpanProcessor, CountingLogExporter, CountingMetricExporter,
    CountingSpanExporter, Gate,
};
use crate::telemetry::Telemetry;
use crate::tls::ExportTls;
use crate::{Error, Result};

/// Spans or log records waiting for export, per signal, unless
/// `OTEL_BSP_MAX_QUEUE_SIZE` / `OTEL_BLRP_MAX_QUEUE_SIZE` say otherwise.
const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;
/// Targets whose events never become OTLP logs: the exporters' own transport
/// would otherwise log about every export and feed itself.
const BRIDGE_SILENCED: &str = "hyper=off,h2=off,tonic=off,tower=off,reqwest=off";
/// How long one export may take unless the builder or
/// `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise (OpenTelemetry's default).
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How telemetry travels to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention); the default.
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
    /// OTLP over HTTP with JSON bodies (port 4318).
    HttpJson,
}

impl Protocol {
    /// Parses the values the `OTEL_EXPORTER_OTLP_PROTOCOL` variable takes.
    fn parse(value: &str) -> Result<Protocol> {
        match value.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Ok(Protocol::HttpJson),
            other => Err(Error::Config(format!(
                "OTLP protocol {other:?} is not one of grpc, http/protobuf, http/json"
            ))),
        }
    }

    fn otlp(self) -> opentelemetry_otlp::Protocol {
        match self {
            Protocol::Grpc => opentelemetry_otlp::Protocol::Grpc,
            Protocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
            Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        }
    }
}

/// Everything [`crate::init`] decides, open for change. Settings left unset
/// come from the standard `OTEL_*` environment variables, then from the
/// OpenTelemetry defaults; settings made here win over the environment,
/// except the service name, which `OTEL_SERVICE_NAME` overrides so that
/// operators can rename a service without a rebuild.
#[derive(Clone, Debug)]
pub struct Builder {
    service_name: String,
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    resource_attributes: Vec<KeyValue>,
    batch_delay: Option<Duration>,
    max_queue_size: Option<usize>,
    export_timeout: Option<Duration>,
    metric_interval: Option<Duration>,
    log_filter: Option<String>,
}

impl Builder {
    /// Starts a setup for the service called `service_name`.
    pub fn new(service_name: &str) -> Builder {
        Builder {
            service_name: service_name.to_string(),
            endpoint: None,
            protocol: None,
            resource_attributes: Vec::new(),
            batch_delay: None,
            max_queue_size: None,
            export_timeout: None,
            metric_interval: None,
            log_filter: None,
        }
    }

    /// The collector's base URL, e.g. `http://127.0.0.1:4317` for gRPC or
    /// `http://127.0.0.1:4318` for HTTP (the `/v1/<signal>` paths are added).
    /// Default: `OTEL_EXPORTER_OTLP_[<SIGNAL>_]ENDPOINT`, then localhost.
    pub fn endpoint(mut self, url: &str) -> Builder {
        self.endpoint = Some(url.trim_end_matches('/').to_string());
        self
    }

    /// The transport. Default: `OTEL_EXPORTER_OTLP_[<SIGNAL>_]PROTOCOL`, then gRPC.
    pub fn protocol(mut self, protocol: Protocol) -> Builder {
        self.protocol = Some(protocol);
        self
    }

    /// Adds a resource attribute (e.g. `deployment.environment.name`) to every
    /// span, log and metric; `OTEL_RESOURCE_ATTRIBUTES` adds more.
    pub fn resource_attribute(mut self, key: &str, value: &str) -> Builder {
        self.resource_attributes
            .push(KeyValue::new(key.to_string(), value.to_string()));
        self
    }

    /// How long spans and logs wait to be batched. Default:
    /// `OTEL_BSP_SCHEDULE_DELAY` / `OTEL_BLRP_SCHEDULE_DELAY`, then 5 s / 1 s.
    pub fn batch_delay(mut self, delay: Duration) -> Builder {
        self.batch_delay = Some(delay);
        self
    }

    /// How many spans, and separately log records, may wait for export; beyond
    /// it new ones are dropped and counted (see [`ExportStats`]), so a slow or
    /// dead collector costs bounded memory. Default: `OTEL_BSP_MAX_QUEUE_SIZE`
    /// / `OTEL_BLRP_MAX_QUEUE_SIZE`, then 2048.
    pub fn max_queue_size(mut self, items: usize) -> Builder {
        self.max_queue_size = Some(items);
        self
    }

    /// The longest one export may take before it is abandoned. Default:
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, then 10 s.
    pub fn export_timeout(mut self, timeout: Duration) -> Builder {
        self.export_timeout = Some(timeout);
        self
    }

    /// How often metrics are exported. Default: `OTEL_METRIC_EXPORT_INTERVAL`,
    /// then 60 s.
    pub fn metric_interval(mut self, interval: Duration) -> Builder {
        self.metric_interval = Some(interval);
        self
    }

    /// Which `tracing` events are printed and exported, in `EnvFilter` syntax.
    /// Default: `RUST_LOG`, then `info`. The SDK's own crates are silenced
    /// unless the filter names `opentelemetry`: export trouble is reported
    /// once by the SDK itself.
    pub fn log_filter(mut self, filter: &str) -> Builder {
        self.log_filter = Some(filter.to_string());
        self
    }

    /// Sets everything up for this process: the global tracer and meter
    /// providers, the W3C tracecontext + baggage propagator, and a global
    /// `tracing` subscriber (stdout, spans, logs). Needs a Tokio runtime for
    /// gRPC export. Fails with [`Error::SubscriberAlreadySet`] if another
    /// subscriber is installed.
    pub fn install(self) -> Result<Guard> {
        let mut guard = self.providers()?;
        let (logger_provider, log_gate) = self.logger_provider()?;
        guard.logger_provider = Some(logger_provider.clone());
        guard.gates.logs = Some(log_gate);
        let filter = self.filter();
        let tracer = guard.tracer_provider.tracer_with_scope(scope());
        let stdout = tracing_subscriber::fmt::layer().with_filter(env_filter(&filter)?);
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(env_filter(&filter)?);
        let logs = OpenTelemetryTracingBridge::new(&logger_provider)
            .with_filter(env_filter(&format!("{filter},{BRIDGE_SILENCED}"))?);
        tracing_subscriber::registry()
            .with(stdout)
            .with(spans)
            .with(logs)
            .try_init()
            .map_err(|_| Error::SubscriberAlreadySet)?;
        opentelemetry::global::set_tracer_provider(guard.tracer_provider.clone());
        opentelemetry::global::set_meter_provider(guard.meter_provider.clone());
        opentelemetry::global::set_text_map_propagator(propagator());
        Ok(guard)
    }

    /// Builds the tracer and meter providers without touching any global
    /// state, for a second service in the same process (tests, demos): its
    /// layers and clients come from [`Guard::telemetry`]. `tracing` events
    /// keep going to the process's global subscriber.
    pub fn build(self) -> Result<Guard> {
        self.providers()
    }

    fn filter(&self) -> String {
        let filter = self
            .log_filter
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty()))
            .unwrap_or_else(|| "info".to_string());
        if filter.contains("opentelemetry") {
            filter
        } else {
            format!("{filter},opentelemetry=off")
        }
    }

    /// The tracer and meter providers, with their export pipelines.
    fn providers(&self) -> Result<Guard> {
        let resource = self.resource();
        let span_gate = Gate::new("traces", self.queue_size("OTEL_BSP_MAX_QUEUE_SIZE")?);
        let mut config = opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_max_queue_size(span_gate.capacity());
        if let Some(delay) = self.batch_delay {
            config = config.with_scheduled_delay(delay);
        }
        let exporter = CountingSpanExporter {
            inner: self.span_exporter()?,
            gate: span_gate.clone(),
        };
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(BoundedSpanProcessor {
                inner: opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
                    .with_batch_config(config.build())
                    .build(),
                gate: span_gate.clone(),
            })
            .with_resource(resource.clone())
            .build();

        // Metrics have no queue to bound; the gate only counts failed exports.
        let metric_gate = Gate::new("metrics", 1);
        let mut reader = PeriodicReader::builder(CountingMetricExporter {
            inner: self.metric_exporter()?,
            gate: metric_gate.clone(),
        });
        if let Some(interval) = self.metric_interval {
            reader = reader.with_interval(interval);
        }
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(reader.build())
            .with_resource(resource)
            .build();

        let telemetry = Telemetry::from_providers(&tracer_provider, &meter_provider);
        Ok(Guard {
            tracer_provider,
            meter_provider,
            logger_provider: None,
            telemetry,
            gates: Gates {
                spans: span_gate,
                logs: None,
                metrics: metric_gate,
            },
        })
    }

    /// The logger provider the `tracing` bridge emits to, with its gate.
    fn logger_provider(&self) -> Result<(SdkLoggerProvider, Arc<Gate>)> {
        let log_gate = Gate::new("logs", self.queue_size("OTEL_BLRP_MAX_QUEUE_SIZE")?);
        let mut config = opentelemetry_sdk::logs::BatchConfigBuilder::default()
            .with_max_queue_size(log_gate.capacity());
        if let Some(delay) = self.batch_delay {
            config = config.with_scheduled_delay(delay);
        }
        let exporter = CountingLogExporter {
            inner: self.log_exporter()?,
            gate: log_gate.clone(),
        };
        let provider = SdkLoggerProvider::builder()
            .with_log_processor(BoundedLogProcessor {
                inner: opentelemetry_sdk::logs::BatchLogProcessor::builder(exporter)
                    .with_batch_config(config.build())
                    .build(),
                gate: log_gate.clone(),
            })
            .with_resource(self.resource())
            .build();
        Ok((provider, log_gate))
    }

    /// One signal's queue size: builder, then its `OTEL_*` variable, then
    /// the default.
    fn queue_size(&self, var: &str) -> Result<usize> {
        let size = match (self.max_queue_size, std::env::var(var)) {
            (Some(size), _) => size,
            (None, Ok(value)) => value
                .trim()
                .parse()
                .map_err(|_| Error::Config(format!("{var}={value:?} is not a number of items")))?,
            (None, Err(_)) => DEFAULT_MAX_QUEUE_SIZE,
        };
        match size {
            0 => Err(Error::Config(
                "the export queue size must be positive".into(),
            )),
            size => Ok(size),
        }
    }

    fn resource(&self) -> Resource {
        let mut builder = Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").map_or(true, |name| name.is_empty()) {
            builder = builder.with_service_name(self.service_name.clone());
        }
        builder
            .with_attributes(self.resource_attributes.clone())
            .build()
    }

    /// The transport of one signal: builder, then the signal's variable, then
    /// the general one, then gRPC.
    fn protocol_for(&self, signal_var: &str) -> Result<Protocol> {
        if let Some(protocol) = self.protocol {
            return Ok(protocol);
        }
        for var in [signal_var, "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Ok(value) = std::env::var(var)
                && !value.trim().is_empty()
            {
                return Protocol::parse(&value);
            }
        }
        Ok(Protocol::Grpc)
    }

    /// The longest one export may take: builder, then
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), then 10 s.
    fn timeout(&self) -> Result<Duration> {
        if let Some(timeout) = self.export_timeout {
            return Ok(timeout);
        }
        match std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT") {
            Ok(millis) if !millis.trim().is_empty() => millis
                .trim()
                .parse()
                .map(Duration::from_millis)
                .map_err(|_| {
                    Error::Config(format!(
                        "OTEL_EXPORTER_OTLP_TIMEOUT={millis:?} is not a number of milliseconds"
                    ))
                }),
            _ => Ok(DEFAULT_EXPORT_TIMEOUT),
        }
    }

    fn check_runtime(&self, protocol: Protocol) -> Result<()> {
        if protocol == Protocol::Grpc && tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(
                "OTLP/gRPC export needs a Tokio runtime: call init from within one (e.g. #[tokio::main])"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Builds one signal's OTLP exporter; a macro because the three exporter
/// builders share method names but not a trait.
macro_rules! exporter {
    ($self:ident, $exporter:ty, $signal:literal, $path:literal, $protocol_var:literal, $tls_signal:literal) => {{
        let protocol = $self.protocol_for($protocol_var)?;
        $self.check_runtime(protocol)?;
        let tls = ExportTls::from_env($tls_signal)?;
        let failed = |e: opentelemetry_otlp::ExporterBuildError| Error::Exporter {
            signal: $signal,
            message: e.to_string(),
        };
        match protocol {
            Protocol::Grpc => {
                let mut builder = <$exporter>::builder()
                    .with_tonic()
                    .with_protocol(protocol.otlp());
                if let Some(endpoint) = &$self.endpoint {
                    builder = builder.with_endpoint(endpoint.clone());
                }
                if let Some(timeout) = $self.export_timeout {
                    builder = builder.with_timeout(timeout);
                }
                if let Some(tls) = &tls {
                    builder = builder.with_tls_config(tls.tonic());
                }
                builder.build().map_err(failed)
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let mut builder = <$exporter>::builder()
                    .with_http()
                    .with_protocol(protocol.otlp());
                if let Some(endpoint) = &$self.endpoint {
                    builder = builder.with_endpoint(format!("{endpoint}{}", $path));
                }
                if let Some(timeout) = $self.export_timeout {
                    builder = builder.with_timeout(timeout);
                }
                if let Some(tls) = &tls {
                    builder = builder.with_http_client(tls.http_client($self.timeout()?)?);
                }
                builder.build().map_err(failed)
            }
        }
    }};
}

impl Builder {
    fn span_exporter(&self) -> Result<opentelemetry_otlp::SpanExporter> {
        exporter!(
            self,
            opentelemetry_otlp::SpanExporter,
            "traces",
            "/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "TRACES"
        )
    }

    fn log_exporter(&self) -> Result<opentelemetry_otlp::LogExporter> {
        exporter!(
            self,
            opentelemetry_otlp::LogExporter,
            "logs",
            "/v1/logs",
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
            "LOGS"
        )
    }

    fn metric_exporter(&self) -> Result<opentelemetry_otlp::MetricExporter> {
        exporter!(
            self,
            opentelemetry_otlp::MetricExporter,
            "metrics",
            "/v1/metrics",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "METRICS"
        )
    }
}

fn env_filter(directives: &str) -> Result<EnvFilter> {
    EnvFilter::try_new(directives)
        .map_err(|e| Error::Config(format!("log filter {directives:?}: {e}")))
}

/// The instrumentation scope of everything the SDK itself records.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("strand-sdk")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// W3C tracecontext and baggage, as every OpenTelemetry SDK speaks them.
pub(crate) fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Keeps the pipelines running; dropping it flushes and shuts down every
/// provider it owns, so keep it alive for the whole of `main`.
#[must_use = "dropping the guard shuts telemetry down"]
#[derive(Debug)]
pub struct Guard {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    logger_provider: Option<SdkLoggerProvider>,
    telemetry: Telemetry,
    gates: Gates,
}

#[derive(Debug)]
struct Gates {
    spans: Arc<Gate>,
    logs: Option<Arc<Gate>>,
    metrics: Arc<Gate>,
}

/// What the export pipelines have lost or hold, so an application (or a
/// test) can tell that telemetry is being dropped rather than silently lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans dropped because the queue was full or their export failed.
    pub dropped_spans: u64,
    /// Log records dropped because the queue was full or their export failed.
    pub dropped_logs: u64,
    /// Metric exports that failed (each one a full cumulative snapshot).
    pub failed_metric_exports: u64,
    /// Spans waiting for export now; never more than the queue size.
    pub queued_spans: usize,
    /// Log records waiting for export now; never more than the queue size.
    pub queued_logs: usize,
}

impl Guard {
    /// The handle the instrumentation (server layers, clients, messaging)
    /// records through: the global one after [`Builder::install`], this
    /// guard's own providers after [`Builder::build`].
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Drop and queue counters of this guard's pipelines.
    pub fn stats(&self) -> ExportStats {
        ExportStats {
            dropped_spans: self.gates.spans.dropped_count(),
            dropped_logs: self.gates.logs.as_ref().map_or(0, |g| g.dropped_count()),
            failed_metric_exports: self.gates.metrics.dropped_count(),
            queued_spans: self.gates.spans.queued_count(),
            queued_logs: self.gates.logs.as_ref().map_or(0, |g| g.queued_count()),
        }
    }

    /// Exports everything recorded so far, waiting for the collector (each
    /// signal gives up after its export timeout).
    pub fn flush(&self) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = self.tracer_provider.force_flush() {
            errors.push(format!("traces: {e}"));
        }
        if let Some(logs) = &self.logger_provider
            && let Err(e) = logs.force_flush()
        {
            errors.push(format!("logs: {e}"));
        }
        if let Err(e) = self.meter_provider.force_flush() {
            errors.push(format!("metrics: {e}"));
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err(Error::InternalFailure(errors.join("; "))),
        }
    }

    fn shutdown_all(&self) {
        let _ = self.tracer_provider.shutdown();
        if let Some(logs) = &self.logger_provider {
            let _ = logs.shutdown();
        }
        let _ = self.meter_provider.shutdown();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Shutting down waits for the export threads; on a multi-threaded
        // Tokio runtime, tell it so the other tasks (including the gRPC
        // channel the exports use) keep running meanwhile.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.shutdown_all())
            }
            _ => self.shutdown_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_as_the_environment_spells_them() {
        assert_eq!(Protocol::parse("grpc").unwrap(), Protocol::Grpc);
        assert_eq!(
            Protocol::parse(" HTTP/Protobuf").unwrap(),
            Protocol::HttpProtobuf
        );
        assert_eq!(Protocol::parse("http/json").unwrap(), Protocol::HttpJson);
        let error = Protocol::parse("carrier-pigeon").unwrap_err().to_string();
        assert!(error.contains("carrier-pigeon"), "{error}");
    }

    #[test]
    fn bad_settings_are_errors_not_panics() {
        let error = Builder::new("order").max_queue_size(0).build().unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error}");
        // gRPC export outside a Tokio runtime would panic inside tonic.
        let error = Builder::new("order")
            .protocol(Protocol::Grpc)
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("Tokio runtime"), "{error}");
    }
}
