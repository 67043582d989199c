//! Prometheus remote write 1.0: `POST /api/v1/write` with a snappy-compressed
//! `prometheus.WriteRequest`, as Prometheus, Grafana Agent/Alloy, the
//! OpenTelemetry Collector and vmagent send it.
//!
//! Answers as Prometheus's receiver does: 204 when everything is stored; 400
//! (which senders do not retry) for malformed requests and for samples that
//! could not be stored (out of order, series limit), after storing the rest;
//! 429 with `Retry-After` when overloaded.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use bytestring::ByteString;
use prost::Message;

use super::IngestError;
use super::http::read_body;
use crate::model::{
    Label, METRIC_NAME_LABEL, MetricKind, MetricMetadata, MetricSample, SeriesSamples,
};
use crate::pipeline::Pipeline;

/// `prometheus.WriteRequest` (remote write 1.0); fields Strand does not use
/// (exemplars, native histograms) are skipped by the decoder.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<WireMetadata>,
}

/// One series: its labels and samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<WireLabel>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<WireSample>,
}

/// `prometheus.Label`. Its strings are declared as bytes, which protobuf
/// encodes the same way, so that they decode as slices of the request body
/// rather than copies; `convert` checks they are UTF-8.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct WireLabel {
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `prometheus.Sample`: a value at a timestamp in milliseconds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireSample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`: type (1 counter, 2 gauge, 3 histogram, 4
/// gauge histogram, 5 summary, 6 info, 7 state set), help and unit of a family.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireMetadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

#[derive(Clone)]
struct RemoteWrite {
    pipeline: Arc<Pipeline>,
    max_body_bytes: usize,
}

/// The remote-write route, served on the API port.
pub fn router(pipeline: Arc<Pipeline>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v1/write", post(write))
        .layer(DefaultBodyLimit::disable())
        .with_state(RemoteWrite {
            pipeline,
            max_body_bytes,
        })
}

async fn write(State(state): State<RemoteWrite>, headers: HeaderMap, body: Body) -> Response {
    match store(&state, &headers, body).await {
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Ok(Some(partial)) => (StatusCode::BAD_REQUEST, partial).into_response(),
        Err(error) => {
            state.pipeline.reject_request(error.reason());
            let mut response = (error.http_status(), format!("{error}\n")).into_response();
            if error.http_status() == StatusCode::TOO_MANY_REQUESTS {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            response
        }
    }
}

/// Stores what can be stored; `Some(message)` when some samples were not.
async fn store(
    state: &RemoteWrite,
    headers: &HeaderMap,
    body: Body,
) -> Result<Option<String>, IngestError> {
    if headers.get(header::CONTENT_ENCODING).is_none() {
        return Err(IngestError::UnsupportedMediaType(
            "remote write bodies must be snappy-compressed (Content-Encoding: snappy)".into(),
        ));
    }
    let body = read_body(headers, body, state.max_body_bytes).await?;
    let request = WriteRequest::decode(body)
        .map_err(|e| IngestError::Malformed(format!("invalid protobuf WriteRequest: {e}")))?;
    let (series, metadata) = convert(request)?;
    let rejections = state
        .pipeline
        .accept_samples(series, metadata, "remote_write")
        .await?;
    Ok(rejections.first_error.map(|first| {
        format!(
            "{} samples were not stored, the first because: {first}\n",
            rejections.rejected
        )
    }))
}

/// Validates and converts a request; any invalid series fails the whole
/// request, as in Prometheus (a sender bug, not data to half-store).
fn convert(
    request: WriteRequest,
) -> Result<(Vec<SeriesSamples>, Vec<MetricMetadata>), IngestError> {
    let mut series = Vec::with_capacity(request.timeseries.len());
    for timeseries in request.timeseries {
        // Collected in place: a label keeps the same two slices of the body.
        let mut labels = timeseries
            .labels
            .into_iter()
            .filter(|l| !l.value.is_empty())
            .map(|l| {
                Ok(Label {
                    name: utf8(l.name)?,
                    value: utf8(l.value)?,
                })
            })
            .collect::<Result<Vec<Label>, IngestError>>()?;
        labels.sort_unstable();
        if let Some(pair) = labels.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(IngestError::Malformed(format!(
                "series has the label {:?} twice",
                pair[0].name
            )));
        }
        if let Some(bad) = labels.iter().find(|l| !valid_label_name(&l.name)) {
            return Err(IngestError::Malformed(format!(
                "invalid label name {:?}",
                bad.name
            )));
        }
        if !labels.iter().any(|l| l.name == METRIC_NAME_LABEL) {
            return Err(IngestError::Malformed(
                "series has no metric name (__name__ label)".into(),
            ));
        }
        if timeseries.samples.is_empty() {
            continue;
        }
        let mut samples: Vec<MetricSample> = timeseries
            .samples
            .into_iter()
            .map(|s| MetricSample {
                timestamp_ms: s.timestamp,
                value: s.value,
            })
            .collect();
        samples.sort_by_key(|s| s.timestamp_ms);
        series.push(SeriesSamples { labels, samples });
    }
    let metadata = request
        .metadata
        .into_iter()
        .filter(|m| !m.metric_family_name.is_empty())
        .map(|m| MetricMetadata {
            metric: m.metric_family_name,
            kind: match m.r#type {
                1 => MetricKind::Counter,
                2 => MetricKind::Gauge,
                3 => MetricKind::Histogram,
                4 => MetricKind::GaugeHistogram,
                5 => MetricKind::Summary,
                6 => MetricKind::Info,
                7 => MetricKind::StateSet,
                _ => MetricKind::Unknown,
            },
            help: m.help,
            unit: m.unit,
        })
        .collect();
    Ok((series, metadata))
}

/// A label string of the request, shared with its body.
fn utf8(bytes: Bytes) -> Result<ByteString, IngestError> {
    ByteString::try_from(bytes)
        .map_err(|e| IngestError::Malformed(format!("a label is not valid UTF-8: {e}")))
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| WireLabel {
                    name: Bytes::copy_from_slice(n.as_bytes()),
                    value: Bytes::copy_from_slice(v.as_bytes()),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| WireSample { value, timestamp })
                .collect(),
        }
    }

    #[test]
    fn converts_sorted_labels_and_metadata() {
        let request = WriteRequest {
            timeseries: vec![series(
                &[("job", "api"), ("__name__", "up"), ("empty", "")],
                &[(2000, 1.0), (1000, 0.0)],
            )],
            metadata: vec![WireMetadata {
                r#type: 1,
                metric_family_name: "http_requests".into(),
                help: "requests".into(),
                unit: String::new(),
            }],
        };
        let (series, metadata) = convert(request).unwrap();
        assert_eq!(
            series[0].labels,
            [Label::new("__name__", "up"), Label::new("job", "api")]
        );
        assert_eq!(series[0].samples[0].timestamp_ms, 1000);
        assert_eq!(metadata[0].kind, MetricKind::Counter);
    }

    #[test]
    fn invalid_series_are_explained() {
        let cases = [
            (series(&[("job", "x")], &[(1, 1.0)]), "no metric name"),
            (
                series(&[("__name__", "a"), ("1x", "y")], &[(1, 1.0)]),
                "invalid label name",
            ),
            (
                series(&[("__name__", "a"), ("__name__", "b")], &[(1, 1.0)]),
                "twice",
            ),
        ];
        let mut not_utf8 = series(&[("__name__", "a")], &[(1, 1.0)]);
        not_utf8.labels[0].value = Bytes::from_static(b"\xff");
        let cases = cases.into_iter().chain([(not_utf8, "not valid UTF-8")]);
        for (series, expected) in cases {
            let error = convert(WriteRequest {
                timeseries: vec![series],
                metadata: vec![],
            })
            .unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // Decoded from `Bytes`, as bodies are: labels become slices.
            if let Ok(request) = WriteRequest::decode(Bytes::from(bytes)) {
                let _ = convert(request);
            }
        }
    }
}
