//! Helpers only the daemon's tests need.

pub mod prom;
pub mod prometheus;
pub mod remote_write;
pub mod shop_fixture;

/// Now, in Unix milliseconds (remote write's timestamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// `bytes` gzip-compressed, as a client with `Content-Encoding: gzip` sends.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// The traces among `ids` that `daemon` does not answer whole, with
/// `spans` spans each: (hex id, HTTP status, spans found).
pub async fn incomplete_traces(
    daemon: &strand_testkit::Strand,
    ids: &[[u8; 16]],
    spans: usize,
) -> Vec<(String, u16, usize)> {
    let mut incomplete = Vec::new();
    for id in ids {
        let (status, body) = daemon
            .get_json(&format!("/api/traces/{}", hex::encode(id)))
            .await;
        let found = body["data"][0]["spans"].as_array().map_or(0, Vec::len);
        if status != 200 || found != spans {
            incomplete.push((hex::encode(id), status, found));
        }
    }
    incomplete
}

/// The bodies of every stored log matching `query`, read page by page.
pub async fn stored_log_bodies(
    daemon: &strand_testkit::Strand,
    query: &str,
) -> std::collections::HashSet<String> {
    let mut stored = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = daemon
            .get_json(&format!(
                "/api/logs?q={query}&start=0&limit=1000&cursor={cursor}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        for log in page["logs"].as_array().unwrap() {
            stored.insert(log["body"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return stored,
        }
    }
}

/// The `strand` binary Cargo built for these tests, for `Strand::spawn`.
pub const STRAND_BINARY: &str = env!("CARGO_BIN_EXE_strand");

/// Sends one log line of service `order` through `_bulk`, as a shipper
/// would, with `token` as a bearer token when given.
pub async fn send_log(daemon: &strand_testkit::Strand, token: Option<&str>, message: &str) {
    let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    let body = format!(
        "{{\"create\":{{}}}}\n{{\"@timestamp\":\"{time}\",\"service\":\"order\",\"level\":\"info\",\"message\":\"{message}\"}}\n"
    );
    let mut request = reqwest::Client::new()
        .post(daemon.url("/_bulk"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .timeout(std::time::Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("_bulk answers");
    assert_eq!(response.status(), 200, "_bulk refused the log");
}

/// Posts an NDJSON `_bulk` body as a shipper would and returns Strand's
/// answer, which must be a 200 (per-item errors are in the answer).
pub async fn post_bulk(daemon: &strand_testkit::Strand, body: String) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(daemon.url("/_bulk"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("_bulk answers");
    assert_eq!(response.status(), 200, "_bulk refused the body");
    response.json().await.expect("_bulk answers JSON")
}

/// A tracer provider batching `exporter`'s spans as `service` (on host
/// `<service>-host`), as an instrumented process would.
pub fn tracer_provider(
    exporter: opentelemetry_otlp::SpanExporter,
    service: &str,
) -> opentelemetry_sdk::trace::SdkTracerProvider {
    opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_string())
                .with_attributes([opentelemetry::KeyValue::new(
                    "host.name",
                    format!("{service}-host"),
                )])
                .build(),
        )
        .build()
}
