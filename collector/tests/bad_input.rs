//! Bad input gets a clear error with the right status, over HTTP and gRPC,
//! and the daemon keeps serving everyone else.

mod common;

use std::io::Write;

use common::Daemon;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

const MAX_BODY: usize = 64 * 1024;

fn request(trace_byte: u8, spans: usize, padding: usize) -> ExportTraceServiceRequest {
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: vec![trace_byte; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: "op".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_100_000_000,
            attributes: vec![KeyValue {
                key: "padding".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("x".repeat(padding))),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("checkout".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post(
    daemon: &Daemon,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut builder = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/traces"))
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        builder = builder.header("content-encoding", encoding);
    }
    let response = builder.send().await.expect("daemon answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    // Error bodies are google.rpc.Status in the request's encoding.
    let text = if content_type == "application/x-protobuf" && status != 200 {
        #[derive(Clone, PartialEq, prost::Message)]
        struct RpcStatus {
            #[prost(int32, tag = "1")]
            code: i32,
            #[prost(string, tag = "2")]
            message: String,
        }
        RpcStatus::decode(bytes.as_ref())
            .map(|s| s.message)
            .unwrap_or_else(|e| format!("undecodable status: {e}"))
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (status, text)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn assert_still_serving(daemon: &Daemon, trace_byte: u8) {
    let body = request(trace_byte, 3, 10).encode_to_vec();
    let (status, text) = post(daemon, "application/x-protobuf", None, body).await;
    assert_eq!(status, 200, "{text}");
    let (status, body) = daemon
        .get_json(&format!("/api/traces/{}", hex::encode([trace_byte; 16])))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["spans"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_rejects_bad_bodies_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let max = MAX_BODY.to_string();
    let daemon = Daemon::start(&dir.path().join("data"), &["--max-body-bytes", &max]).await;
    let proto = "application/x-protobuf";
    let json = "application/json";

    // (case, content type, content encoding, body, status, message)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "garbage protobuf",
            proto,
            None,
            vec![0xff, 0xff, 0xff, 0x0f, 0x01],
            400,
            "invalid protobuf",
        ),
        (
            "wrong JSON shape",
            json,
            None,
            br#"{"resourceSpans": 5}"#.to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "not JSON",
            json,
            None,
            b"{oops".to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "bad hex id",
            json,
            None,
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#.to_vec(),
            400,
            "invalid JSON",
        ),
        ("empty body", proto, None, vec![], 400, "empty"),
        (
            "huge body",
            proto,
            None,
            request(1, 1, MAX_BODY + 1).encode_to_vec(),
            413,
            "larger than the limit",
        ),
        (
            "gzip bomb",
            proto,
            Some("gzip"),
            gzip(&vec![0u8; MAX_BODY * 16]),
            413,
            "larger than the limit",
        ),
        (
            "broken gzip",
            proto,
            Some("gzip"),
            b"definitely not gzip".to_vec(),
            400,
            "invalid gzip",
        ),
        (
            "unknown encoding",
            proto,
            Some("br"),
            vec![1],
            415,
            "content encoding",
        ),
        (
            "unknown content type",
            "text/plain",
            None,
            b"hi".to_vec(),
            415,
            "unsupported content type",
        ),
    ];
    for (name, content_type, encoding, body, status, message) in cases {
        let (got_status, got_text) = post(&daemon, content_type, encoding, body).await;
        assert_eq!(got_status, status, "{name}: {got_text}");
        assert!(
            got_text.contains(message),
            "{name}: {got_text:?} lacks {message:?}"
        );
    }

    // gzip that is fine is accepted.
    let body = gzip(&request(9, 2, 10).encode_to_vec());
    let (status, text) = post(&daemon, proto, Some("gzip"), body).await;
    assert_eq!(status, 200, "{text}");

    // Invalid ids reject only their spans: OTLP partial success.
    let mut partial = request(7, 2, 10);
    partial.resource_spans[0].scope_spans[0].spans[0].span_id = vec![1, 2, 3];
    let (status, text) = post(&daemon, json, None, serde_json::to_vec(&partial).unwrap()).await;
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    // proto3 JSON allows an int64 as number or string.
    let rejected = &answer["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 1 || rejected == "1", "{answer}");
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("span_id must be 8 bytes"),
        "{answer}"
    );

    assert_still_serving(&daemon, 3).await;
    let metrics = reqwest::get(daemon.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("strand_ingest_requests_rejected_total{reason=\"malformed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strand_spans_rejected_total{reason=\"invalid\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ingest_rejects_bad_requests_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let max = MAX_BODY.to_string();
    let daemon = Daemon::start(&dir.path().join("data"), &["--max-body-bytes", &max]).await;
    let mut client = TraceServiceClient::connect(daemon.grpc_endpoint())
        .await
        .unwrap();

    let status = client
        .export(request(1, 1, MAX_BODY + 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("larger than the limit"),
        "{status:?}"
    );

    let mut partial = request(2, 3, 10);
    partial.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![0; 16];
    let answer = client.export(partial).await.unwrap().into_inner();
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("trace_id"), "{partial:?}");

    // The connection that sent bad requests still works.
    let answer = client.export(request(4, 2, 10)).await.unwrap().into_inner();
    assert!(answer.partial_success.is_none());
    assert_still_serving(&daemon, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_rejects_bad_parameters_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), &[]).await;
    let cases = [
        ("/api/traces/not-hex", 400, "invalid trace id"),
        (
            "/api/traces/0123456789abcdef0123456789abcdef0",
            400,
            "invalid trace id",
        ),
        (
            "/api/traces/00000000000000000000000000000000",
            400,
            "invalid trace id",
        ),
        (
            "/api/traces/5b8efff798038103d269b633813fc60c",
            404,
            "not found",
        ),
        ("/api/traces", 400, "'service' is required"),
        (
            "/api/traces?service=a&minDuration=soon",
            400,
            "'minDuration'",
        ),
        ("/api/traces?service=a&limit=many", 400, "'limit'"),
        ("/api/traces?service=a&start=yesterday", 400, "'start'"),
        ("/api/traces?service=a&tags=%7Bbroken", 400, "'tags'"),
        ("/api/traces?traceID=xyz", 400, "invalid trace id"),
        ("/api/operations", 400, "'service' is required"),
        (
            "/api/operations?service=a&spanKind=sideways",
            400,
            "'spanKind'",
        ),
        ("/api/dependencies?endTs=tomorrow", 400, "'endTs'"),
        ("/api/dependencies?lookback=-5", 400, "'lookback'"),
    ];
    for (path, status, message) in cases {
        let (got, body) = daemon.get_json(path).await;
        assert_eq!(got, status, "{path}: {body}");
        let msg = body["errors"][0]["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(message), "{path}: {body}");
        assert_eq!(body["errors"][0]["code"], status, "{path}: {body}");
    }
    assert_still_serving(&daemon, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_retry_later_instead_of_buffering() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing is flushed during the test and at most 10 spans may wait in memory.
    let daemon = Daemon::start(
        &dir.path().join("data"),
        &["--max-buffered-spans", "10", "--flush-interval", "1h"],
    )
    .await;
    let response = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request(1, 20, 10).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "1");

    let mut client = TraceServiceClient::connect(daemon.grpc_endpoint())
        .await
        .unwrap();
    let status = client.export(request(2, 20, 10)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");

    // What fits is still accepted.
    assert!(client.export(request(3, 5, 10)).await.is_ok());
    let metrics = reqwest::get(daemon.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("strand_spans_rejected_total{reason=\"overloaded\"} 40"),
        "{metrics}"
    );
}
