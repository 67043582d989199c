//! Carriers for trace context: HTTP headers (also gRPC metadata, which
//! travels as HTTP/2 headers) for the layers and clients.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};

/// Reads `traceparent`, `tracestate` and `baggage` from request headers.
pub(crate) struct HeaderExtractor<'a>(pub(crate) &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes the propagation headers of a context into outgoing headers.
pub(crate) struct HeaderInjector<'a>(pub(crate) &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The `host[:port]` a request was addressed to, split as the semantic
/// conventions want `server.address` and `server.port`.
pub(crate) fn split_host(authority: &str) -> (&str, Option<i64>) {
    match authority
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse()))
    {
        Some((host, Ok(port))) => (
            host.trim_start_matches('[').trim_end_matches(']'),
            Some(port),
        ),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_into_address_and_port() {
        assert_eq!(split_host("shop.local:8080"), ("shop.local", Some(8080)));
        assert_eq!(split_host("shop.local"), ("shop.local", None));
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
    }
}
