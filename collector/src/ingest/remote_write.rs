//! Prometheus remote write 1.0: `POST /api/v1/write` with a snappy-compressed
//! `prometheus.WriteRequest`, as Prometheus, Grafana Agent/Alloy, the
//! OpenTelemetry Collector and vmagent send it.
//!
//! Answers as Prometheus's receiver does: 204 when everything is stored; 400
//! (which senders do not retry) for malformed requests and for samples that
//! could not be stored (out of order, series limit), after storing the rest;
//! 429 with `Retry-After` when overloaded.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Buf, BufMut, Bytes};
use bytestring::ByteString;
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::IngestError;
use super::http::read_body;
use crate::model::{
    Label, METRIC_NAME_LABEL, MetricKind, MetricMetadata, MetricSample, SeriesSamples, WireKey,
};
use crate::pipeline::{Pipeline, SampleBatch};

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

/// `prometheus.WriteRequest` as the keyed path reads it: each series' labels
/// digested to a [`WireKey`] in place, not decoded. Series the store knows by
/// their keys then cost no label decoding, checking or lookup; a request
/// naming one it does not know is decoded again as a [`WriteRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyedWriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<KeyedTimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<WireMetadata>,
}

/// One series of a [`KeyedWriteRequest`]: the digest of its label messages,
/// in the order sent, and its samples. Decode-only: its labels cannot be
/// encoded again, so encoding it writes the samples alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyedTimeSeries {
    labels_digest: u128,
    pub samples: Vec<WireSample>,
}

impl KeyedTimeSeries {
    /// The key of the series' labels as this sender encodes them.
    pub fn key(&self) -> WireKey {
        WireKey([self.labels_digest as u64, (self.labels_digest >> 64) as u64])
    }

    /// Folds one label message into the digest: each label hashed, then
    /// chained with the digest so far, so that order and boundaries count.
    fn fold_label(&mut self, label: &[u8]) {
        let seed = wire_key_seed();
        let label = xxh3_128_with_seed(label, seed);
        let mut chained = [0u8; 32];
        chained[..16].copy_from_slice(&self.labels_digest.to_le_bytes());
        chained[16..].copy_from_slice(&label.to_le_bytes());
        self.labels_digest = xxh3_128_with_seed(&chained, seed);
    }
}

impl Message for KeyedTimeSeries {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::message::encode_repeated(2, &self.samples, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => with_field_bytes(wire_type, buf, ctx, |label| self.fold_label(label)),
            2 => encoding::message::merge_repeated(wire_type, &mut self.samples, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::message::encoded_len_repeated(2, &self.samples)
    }

    fn clear(&mut self) {
        *self = KeyedTimeSeries::default();
    }
}

/// Calls `read` with the contents of a length-delimited field: in place
/// when the buffer holds them in one piece (a request body always does),
/// else copied by prost, which also names any error.
fn with_field_bytes(
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
    read: impl FnOnce(&[u8]),
) -> Result<(), DecodeError> {
    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    let chunk = buf.chunk();
    let mut contents = chunk;
    if let Ok(len) = encoding::decode_varint(&mut contents)
        && let Ok(len) = usize::try_from(len)
        && len <= contents.len()
    {
        read(&contents[..len]);
        let used = chunk.len() - contents.len() + len;
        buf.advance(used);
        return Ok(());
    }
    let mut copy = Vec::new();
    encoding::bytes::merge(wire_type, &mut copy, buf, ctx)?;
    read(&copy);
    Ok(())
}

/// The seed of every [`WireKey`], chosen once per process so that no
/// sender can aim at another series' key.
fn wire_key_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(rand::random)
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
    let malformed =
        |e: DecodeError| IngestError::Malformed(format!("invalid protobuf WriteRequest: {e}"));
    let keyed = KeyedWriteRequest::decode(body.clone()).map_err(malformed)?;
    let keys: Vec<WireKey> = keyed.timeseries.iter().map(KeyedTimeSeries::key).collect();
    let by_key = keyed
        .timeseries
        .into_iter()
        .map(|series| (series.key(), sorted_samples(series.samples)))
        .collect();
    let metadata = convert_metadata(keyed.metadata);
    let pipeline = &state.pipeline;
    let rejections = match pipeline
        .accept_sample_batch(SampleBatch::Keyed(by_key), metadata, "remote_write")
        .await?
    {
        Some(rejections) => {
            pipeline.count_remote_write("key");
            rejections
        }
        None => {
            // A series new to the store, or to this sender's encoding.
            let request = WriteRequest::decode(body).map_err(malformed)?;
            let metadata = convert_metadata(request.metadata);
            let (series, keys) = convert(request.timeseries, keys)?;
            let batch = SampleBatch::Labelled { series, keys };
            let rejections = pipeline
                .accept_sample_batch(batch, metadata, "remote_write")
                .await?
                .unwrap_or_default();
            pipeline.count_remote_write("labels");
            rejections
        }
    };
    Ok(rejections.first_error.map(|first| {
        format!(
            "{} samples were not stored, the first because: {first}\n",
            rejections.rejected
        )
    }))
}

/// Validates and converts a request's series, keeping the [`WireKey`] of
/// each one kept (`keys` is by request series); any invalid series fails
/// the whole request, as in Prometheus (a sender bug, not data to
/// half-store).
fn convert(
    timeseries: Vec<TimeSeries>,
    keys: Vec<WireKey>,
) -> Result<(Vec<SeriesSamples>, Vec<WireKey>), IngestError> {
    let mut series = Vec::with_capacity(timeseries.len());
    let mut kept_keys = Vec::with_capacity(keys.len());
    for (index, timeseries) in timeseries.into_iter().enumerate() {
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
        kept_keys.extend(keys.get(index).copied());
        series.push(SeriesSamples {
            labels,
            samples: sorted_samples(timeseries.samples),
        });
    }
    if kept_keys.len() != series.len() {
        // Keys only name series when every kept one has its own.
        kept_keys.clear();
    }
    Ok((series, kept_keys))
}

/// A series' samples, oldest first.
fn sorted_samples(samples: Vec<WireSample>) -> Vec<MetricSample> {
    let mut samples: Vec<MetricSample> = samples
        .into_iter()
        .map(|s| MetricSample {
            timestamp_ms: s.timestamp,
            value: s.value,
        })
        .collect();
    samples.sort_by_key(|s| s.timestamp_ms);
    samples
}

fn convert_metadata(metadata: Vec<WireMetadata>) -> Vec<MetricMetadata> {
    metadata
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
        .collect()
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
        let (series, keys) = convert(request.timeseries, vec![]).unwrap();
        let metadata = convert_metadata(request.metadata);
        assert!(keys.is_empty());
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
            let error = convert(vec![series], vec![]).unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    fn keyed(request: &WriteRequest) -> KeyedWriteRequest {
        KeyedWriteRequest::decode(Bytes::from(request.encode_to_vec())).unwrap()
    }

    #[test]
    fn keys_follow_the_labels_as_encoded() {
        let request = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "up"), ("job", "api")], &[(1, 1.0)]),
                series(&[("__name__", "up"), ("job", "api")], &[(2, 1.0)]),
                series(&[("__name__", "up"), ("job", "db")], &[(1, 1.0)]),
                series(&[("job", "api"), ("__name__", "up")], &[(1, 1.0)]),
                series(&[("__name__", "up"), ("job", "ap"), ("i", "")], &[(1, 1.0)]),
                series(&[("__name__", "up")], &[(1, 1.0)]),
            ],
            metadata: vec![],
        };
        let keys: Vec<WireKey> = keyed(&request)
            .timeseries
            .iter()
            .map(KeyedTimeSeries::key)
            .collect();
        assert_eq!(keys[0], keys[1], "the same labels, the same key");
        for other in &keys[2..] {
            assert_ne!(keys[0], *other);
        }
        assert_ne!(keys[4], keys[5]);
        let samples = &keyed(&request).timeseries[1].samples;
        assert_eq!(samples, &request.timeseries[1].samples);
    }

    #[test]
    fn convert_keeps_the_keys_of_the_series_it_keeps() {
        let timeseries = vec![
            series(&[("__name__", "a")], &[(1, 1.0)]),
            series(&[("__name__", "b")], &[]),
            series(&[("__name__", "c")], &[(1, 1.0)]),
        ];
        let keys = [1, 2, 3].map(|n| WireKey([n, n])).to_vec();
        let (series, kept) = convert(timeseries, keys).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(kept, [WireKey([1, 1]), WireKey([3, 3])]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // Decoded from `Bytes`, as bodies are: labels become slices.
            if let Ok(request) = WriteRequest::decode(Bytes::from(bytes.clone())) {
                let _ = convert(request.timeseries, vec![]);
            }
            let _ = KeyedWriteRequest::decode(Bytes::from(bytes));
        }

        /// A body split across chunks (prost copies the labels) keys its
        /// series as one in a single piece does, and both decoders agree on
        /// what is malformed.
        #[test]
        fn keys_do_not_depend_on_how_the_body_is_split(
            labels in proptest::collection::vec(("[a-z_]{1,6}", "[a-z]{0,6}"), 1..6),
            split in 0usize..200,
        ) {
            let labels: Vec<(&str, &str)> =
                labels.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let request = WriteRequest {
                timeseries: vec![series(&labels, &[(1, 1.0)])],
                metadata: vec![],
            };
            let body = request.encode_to_vec();
            let whole = keyed(&request);
            let split = split.min(body.len());
            let chained = Buf::chain(&body[..split], &body[split..]);
            let pieces = KeyedWriteRequest::decode(chained).unwrap();
            prop_assert_eq!(whole.timeseries[0].key(), pieces.timeseries[0].key());
            let cut = &body[..split];
            prop_assert_eq!(
                KeyedWriteRequest::decode(cut).is_ok(),
                WriteRequest::decode(cut).is_ok()
            );
        }
    }
}
