//! Outgoing HTTP calls with client spans and context propagation.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::propagation::HeaderInjector;
use crate::telemetry::Telemetry;
use crate::{Error, Result};

/// A `reqwest` client whose calls become client spans (`{METHOD}`, with the
/// HTTP semantic-convention attributes; 4xx and 5xx are errors) and carry the
/// current trace in `traceparent`, so the callee's spans join the caller's
/// trace. Build requests with the usual `reqwest` builders and send them
/// through [`HttpClient::send`]; a thin wrapper, not a middleware stack.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    telemetry: Telemetry,
}

impl HttpClient {
    /// Wraps `client` (with its pools, timeouts, TLS settings) to record
    /// through `telemetry`.
    pub fn new(client: reqwest::Client, telemetry: &Telemetry) -> HttpClient {
        HttpClient {
            client,
            telemetry: telemetry.clone(),
        }
    }

    /// Starts a GET, to be finished with [`HttpClient::send`].
    pub fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.client.get(url)
    }

    /// Starts any request, to be finished with [`HttpClient::send`].
    pub fn request(&self, method: http::Method, url: &str) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    /// Builds and sends a request inside a client span.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        self.execute(request.build()?).await
    }

    /// Sends a built request inside a client span that is a child of the
    /// current context, with that span's context in the request headers.
    pub async fn execute(&self, mut request: reqwest::Request) -> Result<reqwest::Response> {
        let telemetry = &self.telemetry.inner;
        let method = request.method().as_str().to_string();
        let url = request.url();
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.full", redacted(url)),
        ];
        if let Some(host) = url.host_str() {
            attributes.push(KeyValue::new("server.address", host.to_string()));
        }
        if let Some(port) = url.port_or_known_default() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        let parent = Context::current();
        let span = telemetry
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&telemetry.tracer, &parent);
        let cx = parent.with_span(span);
        telemetry
            .propagator
            .inject_context(&cx, &mut HeaderInjector(request.headers_mut()));

        let result = self.client.execute(request).with_context(cx.clone()).await;
        let span = cx.span();
        match &result {
            Ok(response) => {
                let status = response.status();
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                if status.is_client_error() || status.is_server_error() {
                    span.set_attribute(KeyValue::new("error.type", status.as_str().to_string()));
                    span.set_status(Status::error(""));
                }
            }
            Err(error) => {
                let kind = if error.is_timeout() {
                    "timeout"
                } else if error.is_connect() {
                    "connect"
                } else {
                    "_OTHER"
                };
                span.set_attribute(KeyValue::new("error.type", kind));
                span.set_status(Status::error(error.to_string()));
            }
        }
        span.end();
        result.map_err(Error::Http)
    }
}

/// The URL without credentials, which must never land in telemetry.
fn redacted(url: &reqwest::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut url = url.clone();
    let _ = url.set_username("REDACTED");
    let _ = url.set_password(Some("REDACTED"));
    url.to_string()
}
