//! The axum/tower layer for incoming HTTP requests.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{Method, Request, Response, Version};
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer};

use crate::propagation::{HeaderExtractor, split_host};
use crate::telemetry::Telemetry;

/// Traces every request and records `http.server.request.duration`: it
/// continues the caller's trace from `traceparent`, names the server span
/// `{METHOD} {route}` (the axum route template, so names stay few), sets the
/// HTTP semantic-convention attributes and marks 5xx answers as errors.
///
/// Add it with `Router::layer` so the matched route is known:
///
/// ```no_run
/// # fn demo(telemetry: &strand_sdk::Telemetry) {
/// let app: axum::Router = axum::Router::new()
///     .route("/orders/{id}", axum::routing::get(|| async { "ok" }))
///     .layer(strand_sdk::HttpServerLayer::new(telemetry));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HttpServerLayer {
    telemetry: Telemetry,
}

impl HttpServerLayer {
    /// A layer recording through `telemetry` (usually
    /// [`crate::Guard::telemetry`] or [`Telemetry::global`]).
    pub fn new(telemetry: &Telemetry) -> HttpServerLayer {
        HttpServerLayer {
            telemetry: telemetry.clone(),
        }
    }
}

impl<S> tower::Layer<S> for HttpServerLayer {
    type Service = HttpServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpServerService {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// The service [`HttpServerLayer`] wraps around each route.
#[derive(Clone, Debug)]
pub struct HttpServerService<S> {
    inner: S,
    telemetry: Telemetry,
}

/// The future of an instrumented call; boxed so the layer works with any
/// inner service.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<Request<B>> for HttpServerService<S>
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let start = Instant::now();
        let telemetry = &self.telemetry.inner;
        let parent = telemetry
            .propagator
            .extract(&HeaderExtractor(request.headers()));
        let method = method_name(request.method());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|path| path.as_str().to_string());
        let scheme = request.uri().scheme_str().unwrap_or("http").to_string();

        let mut attributes = Vec::with_capacity(10);
        attributes.push(KeyValue::new("http.request.method", method));
        if method == "_OTHER" {
            attributes.push(KeyValue::new(
                "http.request.method_original",
                request.method().as_str().to_string(),
            ));
        }
        attributes.push(KeyValue::new("url.path", request.uri().path().to_string()));
        if let Some(query) = request.uri().query() {
            attributes.push(KeyValue::new("url.query", query.to_string()));
        }
        attributes.push(KeyValue::new("url.scheme", scheme.clone()));
        if let Some(route) = &route {
            attributes.push(KeyValue::new("http.route", route.clone()));
        }
        let authority = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        if let Some(authority) = authority {
            let (host, port) = split_host(authority);
            attributes.push(KeyValue::new("server.address", host.to_string()));
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", port));
            }
        }
        if let Some(version) = protocol_version(request.version()) {
            attributes.push(KeyValue::new("network.protocol.version", version));
        }
        if let Some(agent) = request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|h| h.to_str().ok())
        {
            attributes.push(KeyValue::new("user_agent.original", agent.to_string()));
        }

        let name = match &route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        };
        let span = telemetry
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&telemetry.tracer, &parent);
        let cx = parent.with_span(span);
        let future = {
            let _entered = cx.clone().attach();
            self.inner.call(request)
        };
        let histogram = telemetry.server_duration.clone();
        Box::pin(async move {
            let result = future.with_context(cx.clone()).await;
            let span = cx.span();
            let mut metric_attributes = Vec::with_capacity(5);
            metric_attributes.push(KeyValue::new("http.request.method", method));
            metric_attributes.push(KeyValue::new("url.scheme", scheme));
            if let Some(route) = route {
                metric_attributes.push(KeyValue::new("http.route", route));
            }
            match &result {
                Ok(response) => {
                    let status = i64::from(response.status().as_u16());
                    span.set_attribute(KeyValue::new("http.response.status_code", status));
                    metric_attributes.push(KeyValue::new("http.response.status_code", status));
                    if response.status().is_server_error() {
                        let code = response.status().as_str().to_string();
                        span.set_attribute(KeyValue::new("error.type", code.clone()));
                        span.set_status(Status::error(""));
                        metric_attributes.push(KeyValue::new("error.type", code));
                    }
                }
                Err(error) => {
                    span.set_attribute(KeyValue::new("error.type", "_OTHER"));
                    span.set_status(Status::error(error.to_string()));
                    metric_attributes.push(KeyValue::new("error.type", "_OTHER"));
                }
            }
            histogram.record(start.elapsed().as_secs_f64(), &metric_attributes);
            span.end();
            result
        })
    }
}

/// The method as the conventions want it: one of the registered ones, or
/// `_OTHER`, so attacker-chosen methods cannot blow up metric cardinality.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

fn protocol_version(version: Version) -> Option<&'static str> {
    match version {
        Version::HTTP_09 => Some("0.9"),
        Version::HTTP_10 => Some("1.0"),
        Version::HTTP_11 => Some("1.1"),
        Version::HTTP_2 => Some("2"),
        Version::HTTP_3 => Some("3"),
        _ => None,
    }
}
