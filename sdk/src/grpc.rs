//! gRPC (tonic) instrumentation: tower layers for clients and servers, and
//! an interceptor for clients that only need the context carried.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::propagation::{HeaderExtractor, HeaderInjector, split_host};
use crate::telemetry::Telemetry;

/// gRPC status codes a server span counts as its own fault (the semantic
/// conventions' list); others are the client's doing.
const SERVER_ERROR_CODES: [i64; 6] = [2, 4, 12, 13, 14, 15];

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Client spans (`{package.Service}/{Method}`, kind client, `rpc.*`
/// attributes, non-OK status is an error) around each call of a tonic
/// channel, with the span's context sent as `traceparent` metadata:
///
/// ```no_run
/// # async fn demo(telemetry: &strand_sdk::Telemetry) -> Result<(), Box<dyn std::error::Error>> {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let channel = tower::ServiceBuilder::new()
///     .layer(strand_sdk::GrpcClientLayer::new(telemetry))
///     .service(channel);
/// // SomeServiceClient::new(channel)
/// # Ok(()) }
/// ```
///
/// The status is read from the response headers, where tonic puts it for
/// failed unary calls; a status sent only in trailers (streaming) is not seen.
#[derive(Clone, Debug)]
pub struct GrpcClientLayer {
    telemetry: Telemetry,
}

impl GrpcClientLayer {
    /// A layer recording through `telemetry`.
    pub fn new(telemetry: &Telemetry) -> GrpcClientLayer {
        GrpcClientLayer {
            telemetry: telemetry.clone(),
        }
    }
}

impl<S> tower::Layer<S> for GrpcClientLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService {
            inner,
            telemetry: self.telemetry.clone(),
            kind: Kind::Client,
        }
    }
}

/// Server spans for a tonic server, continuing the caller's trace from its
/// `traceparent` metadata; the handler runs inside the span, so its
/// `tracing` events carry the trace id:
///
/// ```no_run
/// # fn demo(telemetry: &strand_sdk::Telemetry) {
/// let server = tonic::transport::Server::builder()
///     .layer(strand_sdk::GrpcServerLayer::new(telemetry));
/// // server.add_service(...).serve(addr)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcServerLayer {
    telemetry: Telemetry,
}

impl GrpcServerLayer {
    /// A layer recording through `telemetry`.
    pub fn new(telemetry: &Telemetry) -> GrpcServerLayer {
        GrpcServerLayer {
            telemetry: telemetry.clone(),
        }
    }
}

impl<S> tower::Layer<S> for GrpcServerLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService {
            inner,
            telemetry: self.telemetry.clone(),
            kind: Kind::Server,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Client,
    Server,
}

/// The service both gRPC layers wrap around a channel or a server's routes.
#[derive(Clone, Debug)]
pub struct GrpcService<S> {
    inner: S,
    telemetry: Telemetry,
    kind: Kind,
}

impl<S, B, R> tower::Service<Request<B>> for GrpcService<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let telemetry = &self.telemetry.inner;
        let path = request.uri().path().trim_start_matches('/');
        let name = path.to_string();
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_string()),
            KeyValue::new("rpc.method", method.to_string()),
        ];
        let authority = match self.kind {
            Kind::Client => request.uri().authority().map(|a| a.as_str()),
            Kind::Server => request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| request.uri().authority().map(|a| a.as_str())),
        };
        if let Some(authority) = authority {
            let (host, port) = split_host(authority);
            attributes.push(KeyValue::new("server.address", host.to_string()));
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", port));
            }
        }
        let (parent, kind) = match self.kind {
            Kind::Client => (Context::current(), SpanKind::Client),
            Kind::Server => (
                telemetry
                    .propagator
                    .extract(&HeaderExtractor(request.headers())),
                SpanKind::Server,
            ),
        };
        let span = telemetry
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&telemetry.tracer, &parent);
        let cx = parent.with_span(span);
        if let Kind::Client = self.kind {
            telemetry
                .propagator
                .inject_context(&cx, &mut HeaderInjector(request.headers_mut()));
        }
        let future = {
            let _entered = cx.clone().attach();
            self.inner.call(request)
        };
        let side = self.kind;
        Box::pin(async move {
            let result = future.with_context(cx.clone()).await;
            let span = cx.span();
            match &result {
                Ok(response) => {
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0);
                    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
                    let failed = match side {
                        Kind::Client => code != 0,
                        Kind::Server => SERVER_ERROR_CODES.contains(&code),
                    };
                    if failed {
                        span.set_attribute(KeyValue::new("error.type", code.to_string()));
                        span.set_status(Status::error(""));
                    }
                }
                Err(error) => {
                    span.set_attribute(KeyValue::new("error.type", "_OTHER"));
                    span.set_status(Status::error(error.to_string()));
                }
            }
            span.end();
            result
        })
    }
}

/// A tonic client interceptor that sends the current trace context as
/// metadata, for clients that make their own spans (e.g. `#[instrument]`)
/// and only need the callee to join the trace:
/// `SomeServiceClient::with_interceptor(channel, strand_sdk::inject_grpc_context)`.
pub fn inject_grpc_context(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let mut headers = http::HeaderMap::new();
    crate::setup::propagator()
        .inject_context(&Context::current(), &mut HeaderInjector(&mut headers));
    let metadata = request.metadata_mut();
    for (name, value) in &headers {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_bytes()),
        ) {
            metadata.insert(key, value);
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    #[test]
    fn interceptor_sends_the_current_trace() {
        let provider = SdkTracerProvider::builder().build();
        let tracer = provider.tracer("test");
        let span = tracer.start("caller");
        let trace_id = span.span_context().trace_id();
        let _entered = Context::current_with_span(span).attach();

        let request = inject_grpc_context(tonic::Request::new(())).unwrap();
        let traceparent = request.metadata().get("traceparent").unwrap();
        assert!(
            traceparent
                .to_str()
                .unwrap()
                .contains(&trace_id.to_string()),
            "{traceparent:?}"
        );
    }
}
