//! Prometheus remote write 1.0 as a sender speaks it: the `prometheus.WriteRequest`
//! wire types (prometheus/prompb/remote.proto, types.proto), snappy block
//! compression and the POST to `/api/v1/write`.

use prost::Message;

use strand_testkit::Strand;

/// The daemon's own wire types, so a test sends exactly what it decodes.
pub use strand::remote_write::{
    TimeSeries, WireLabel as Label, WireMetadata as MetricMetadata, WireSample as Sample,
    WriteRequest,
};

/// A series with `__name__` = `name`, the other labels as given, and samples
/// as (milliseconds, value).
pub fn series(name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: [("__name__", name)]
            .iter()
            .chain(labels)
            .map(|(name, value)| Label {
                name: prost::bytes::Bytes::copy_from_slice(name.as_bytes()),
                value: prost::bytes::Bytes::copy_from_slice(value.as_bytes()),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| Sample { value, timestamp })
            .collect(),
    }
}

/// A request without metadata.
pub fn request(timeseries: Vec<TimeSeries>) -> WriteRequest {
    WriteRequest {
        timeseries,
        metadata: Vec::new(),
    }
}

/// Snappy block format, as remote write sends it.
pub fn snappy(bytes: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(bytes)
        .expect("snappy compresses")
}

/// The encoded, compressed body of `request`.
pub fn body(request: &WriteRequest) -> Vec<u8> {
    snappy(&request.encode_to_vec())
}

/// POSTs a raw body to `/api/v1/write` with the headers Prometheus sends
/// (`Content-Encoding` only when `encoding` is given); returns status and body.
pub async fn post_raw(
    client: &reqwest::Client,
    daemon: &Strand,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut builder = client
        .post(daemon.url("/api/v1/write"))
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body);
    if let Some(encoding) = encoding {
        builder = builder.header("Content-Encoding", encoding);
    }
    let response = builder.send().await.expect("daemon answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Sends `request` as Prometheus does; returns status and body.
pub async fn write(daemon: &Strand, request: &WriteRequest) -> (u16, String) {
    post_raw(
        &reqwest::Client::new(),
        daemon,
        Some("snappy"),
        body(request),
    )
    .await
}

/// Sends `request` and insists on 204.
pub async fn write_ok(daemon: &Strand, request: &WriteRequest) {
    let (status, text) = write(daemon, request).await;
    assert_eq!(status, 204, "remote write refused: {text}");
}
