//! Bad input gets a clear error with the right status, over HTTP and gRPC,
//! and the daemon keeps serving everyone else.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use strand_testkit::Strand;

use crate::support::remote_write as rw;
use crate::support::{gzip, now_ms, prom};

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
    daemon: &Strand,
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

async fn assert_still_serving(daemon: &Strand, trace_byte: u8) {
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
    let daemon = Strand::start(&dir.path().join("data"), &["--max-body-bytes", &max]).await;
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
    let metrics = daemon.self_metrics().await;
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
    let daemon = Strand::start(&dir.path().join("data"), &["--max-body-bytes", &max]).await;
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
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
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
        ("/api/tags?service=a&lookback=soon", 400, "'lookback'"),
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
    let daemon = Strand::start(
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
    let metrics = daemon.self_metrics().await;
    assert!(
        metrics.contains("strand_spans_rejected_total{reason=\"overloaded\"} 40"),
        "{metrics}"
    );
}

// --- Metrics: remote write and the Prometheus API ---

async fn assert_remote_write_still_serving(daemon: &Strand, metric: &str) {
    let t = now_ms();
    rw::write_ok(
        daemon,
        &rw::request(vec![rw::series(metric, &[("job", "probe")], &[(t, 42.0)])]),
    )
    .await;
    let got = prom::instant_vector(daemon, metric, Some(t as f64 / 1000.0)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, 42.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_rejects_bad_bodies_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let max = MAX_BODY.to_string();
    let daemon = Strand::start(&dir.path().join("data"), &["--max-body-bytes", &max]).await;
    let t = now_ms();
    let good = rw::series("rw_bad_input_probe", &[("job", "ok")], &[(t, 1.0)]);
    let with_good = |bad: rw::TimeSeries| rw::request(vec![good.clone(), bad]);
    let encoded = |request: rw::WriteRequest| request.encode_to_vec();
    let huge_label = "x".repeat(MAX_BODY + 1);
    // Incompressible bytes: larger than the limit before inflating.
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    let incompressible: Vec<u8> = (0..MAX_BODY + 1024)
        .map(|_| {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            noise as u8
        })
        .collect();

    // A body refused for its size is not read to the end: the answer says
    // the connection closes, so the client opens a new one for its next
    // request instead of failing it on a closed socket.
    let refused = reqwest::Client::new()
        .post(daemon.url("/api/v1/write"))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .body(incompressible.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 413);
    assert_eq!(
        refused
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap()),
        Some("close")
    );

    // (case, content encoding, body, status, message)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "not snappy",
            Some("snappy"),
            b"definitely not snappy".to_vec(),
            400,
            "invalid snappy body",
        ),
        (
            "snappy of garbage",
            Some("snappy"),
            rw::snappy(&[0xff, 0xff, 0xff, 0x0f, 0x01]),
            400,
            "invalid protobuf WriteRequest",
        ),
        (
            "no content encoding",
            None,
            encoded(rw::request(vec![good.clone()])),
            415,
            "snappy",
        ),
        (
            "unknown content encoding",
            Some("br"),
            encoded(rw::request(vec![good.clone()])),
            415,
            "content encoding",
        ),
        (
            "empty body",
            Some("snappy"),
            vec![],
            400,
            "invalid snappy body",
        ),
        (
            "inflates past the limit",
            Some("snappy"),
            rw::body(&rw::request(vec![rw::series(
                "rw_bad_input_probe",
                &[("pad", &huge_label)],
                &[(t, 1.0)],
            )])),
            413,
            "larger than the limit",
        ),
        (
            "larger than the limit as sent",
            Some("snappy"),
            incompressible,
            413,
            "larger than the limit",
        ),
        (
            "no metric name",
            Some("snappy"),
            rw::body(&with_good(rw::TimeSeries {
                labels: vec![rw::Label {
                    name: "job".into(),
                    value: "x".into(),
                }],
                samples: vec![rw::Sample {
                    value: 1.0,
                    timestamp: t,
                }],
            })),
            400,
            "no metric name",
        ),
        (
            "invalid label name",
            Some("snappy"),
            rw::body(&with_good(rw::series(
                "rw_bad_input_probe",
                &[("1st", "x")],
                &[(t, 1.0)],
            ))),
            400,
            "invalid label name \"1st\"",
        ),
        (
            "label twice",
            Some("snappy"),
            rw::body(&with_good(rw::series(
                "rw_bad_input_probe",
                &[("job", "a"), ("job", "b")],
                &[(t, 1.0)],
            ))),
            400,
            "twice",
        ),
    ];
    let client = reqwest::Client::new();
    for (name, encoding, body, status, message) in cases {
        let (got_status, got_text) = rw::post_raw(&client, &daemon, encoding, body).await;
        assert_eq!(got_status, status, "{name}: {got_text}");
        assert!(
            got_text.contains(message),
            "{name}: {got_text:?} lacks {message:?}"
        );
    }
    // A request with an invalid series is refused whole: its valid series was not stored.
    assert_eq!(
        prom::instant_vector(&daemon, "rw_bad_input_probe", Some(t as f64 / 1000.0)).await,
        vec![]
    );
    let metrics = daemon.self_metrics().await;
    assert!(
        metrics.contains("strand_ingest_requests_rejected_total{reason=\"malformed\"}"),
        "{metrics}"
    );
    assert_remote_write_still_serving(&daemon, "rw_after_bad_bodies").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_api_rejects_bad_queries_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;

    // Invalid PromQL: 400 bad_data with the parser's own message, on both
    // query endpoints, by GET and by POST form.
    for query in [
        "sum(",
        "rate(http_requests_total[5m]",
        "up{job=",
        "1 +",
        "foo bar",
        "http_requests_total[5m] + 1",
        "rate(up)",
        "no_such_function(up)",
    ] {
        let expected = promql_parser::parser::parse(query)
            .map(|_| ())
            .expect_err("the query is invalid");
        for (path, extra) in [
            ("/api/v1/query", vec![]),
            (
                "/api/v1/query_range",
                vec![("start", "0"), ("end", "60"), ("step", "15")],
            ),
        ] {
            let mut params = vec![("query", query)];
            params.extend(extra);
            let (status, body) = daemon.get_json_query(path, &params).await;
            assert_eq!(status, 400, "{path} {query:?}: {body}");
            assert_eq!(body["status"], "error", "{path} {query:?}: {body}");
            assert_eq!(body["errorType"], "bad_data", "{path} {query:?}: {body}");
            assert_eq!(body["error"], expected, "{path} {query:?}: {body}");

            let response = reqwest::Client::new()
                .post(daemon.url(path))
                .form(&params)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 400, "POST {path} {query:?}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"], expected, "POST {path} {query:?}: {body}");
        }
    }

    // Bad parameters.
    // (path, parameters, message)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("/api/v1/query", &[], "missing parameter \"query\""),
        (
            "/api/v1/query",
            &[("query", "up"), ("time", "yesterday")],
            "invalid parameter \"time\": cannot parse \"yesterday\" to a valid timestamp",
        ),
        (
            "/api/v1/query",
            &[("query", "up"), ("timeout", "soon")],
            "invalid parameter \"timeout\"",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "100"),
                ("end", "50"),
                ("step", "15"),
            ],
            "end timestamp must not be before start time",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "0"),
                ("end", "60"),
                ("step", "0"),
            ],
            "zero or negative query resolution step widths are not accepted",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "0"),
                ("end", "60"),
                ("step", "-15"),
            ],
            "\"step\"",
        ),
        (
            "/api/v1/query_range",
            &[("query", "up"), ("start", "0"), ("end", "60")],
            "missing parameter \"step\"",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "soon"),
                ("end", "60"),
                ("step", "15"),
            ],
            "invalid parameter \"start\"",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "2024-01-01T00:00:00Z"),
                ("end", "not-a-date"),
                ("step", "15"),
            ],
            "invalid parameter \"end\"",
        ),
        // 11,001 points per series.
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "0"),
                ("end", "11001"),
                ("step", "1"),
            ],
            "exceeded maximum resolution of 11,000 points per timeseries",
        ),
        ("/api/v1/series", &[], "no match[] parameter provided"),
        (
            "/api/v1/series",
            &[("match[]", "sum(up)")],
            "is not a series selector",
        ),
        (
            "/api/v1/series",
            &[("match[]", "up{")],
            "invalid parameter \"match[]\"",
        ),
        (
            "/api/v1/labels",
            &[("start", "100"), ("end", "50")],
            "end timestamp must not be before start time",
        ),
        (
            "/api/v1/label/job/values",
            &[("match[]", "rate(up[5m])")],
            "is not a series selector",
        ),
        (
            "/api/v1/metadata",
            &[("limit", "many")],
            "invalid parameter \"limit\"",
        ),
    ];
    for (path, params, message) in cases {
        let (status, body) = daemon.get_json_query(path, params).await;
        assert_eq!(status, 400, "{path} {params:?}: {body}");
        assert_eq!(body["errorType"], "bad_data", "{path} {params:?}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{path} {params:?}: {body}");
    }
    // Exactly 11,000 points is still fine.
    let answer = prom::get_ok(
        &daemon,
        "/api/v1/query_range",
        &[
            ("query", "1"),
            ("start", "0"),
            ("end", "11000"),
            ("step", "1"),
        ],
    )
    .await;
    assert_eq!(
        answer["result"][0]["values"].as_array().unwrap().len(),
        11_001
    );

    // A query that parses but cannot be evaluated: 422 execution.
    let t = now_ms();
    rw::write_ok(
        &daemon,
        &rw::request(vec![
            rw::series("left_side", &[("x", "1")], &[(t, 1.0)]),
            rw::series("left_side", &[("x", "2")], &[(t, 2.0)]),
            rw::series("right_side", &[], &[(t, 3.0)]),
        ]),
    )
    .await;
    let time = (t as f64 / 1000.0).to_string();
    for query in ["right_side + on() left_side", "left_side + on() left_side"] {
        let (status, body) = daemon
            .get_json_query(
                "/api/v1/query",
                &[("query", query), ("time", time.as_str())],
            )
            .await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["errorType"], "execution", "{query}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("many-to-many matching not allowed")
                || body["error"]
                    .as_str()
                    .unwrap()
                    .contains("multiple matches for labels"),
            "{query}: {body}"
        );
    }

    // And the API still answers.
    assert_eq!(
        prom::instant_vector(&daemon, "right_side", Some(t as f64 / 1000.0))
            .await
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>(),
        [3.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_limit_refuses_new_series_and_names_the_metric() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--max-series-per-metric", "2"];
    let daemon = Strand::start(&data, &args).await;
    let t = now_ms();
    let limited = |i: &str, t: i64, v: f64| rw::series("limited", &[("i", i)], &[(t, v)]);

    rw::write_ok(
        &daemon,
        &rw::request(vec![limited("1", t, 1.0), limited("2", t, 2.0)]),
    )
    .await;
    // A third series of the same metric is refused; the rest of the request,
    // new samples of existing series and series of other metrics, is stored.
    let (status, text) = rw::write(
        &daemon,
        &rw::request(vec![
            limited("3", t, 3.0),
            limited("1", t + 1000, 10.0),
            rw::series("unlimited", &[], &[(t, 7.0)]),
        ]),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("series limit reached for metric \"limited\""),
        "{text}"
    );
    let at = (t + 1000) as f64 / 1000.0;
    let values = |query: &'static str| {
        let daemon = &daemon;
        async move {
            prom::instant_vector(daemon, query, Some(at))
                .await
                .into_iter()
                .map(|(labels, v)| (labels.get("i").cloned().unwrap_or_default(), v))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        values("limited").await,
        [("1".to_string(), 10.0), ("2".to_string(), 2.0)]
    );
    assert_eq!(values("unlimited").await, [(String::new(), 7.0)]);

    // OTLP: the refused point is reported as OTLP partial success.
    let otlp = serde_json::json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
        "scopeMetrics": [{"metrics": [{"name": "limited", "gauge": {"dataPoints": [
            {"timeUnixNano": ((t + 2000) * 1_000_000).to_string(), "asDouble": 5.0,
             "attributes": [{"key": "i", "value": {"stringValue": "4"}}]}
        ]}}]}]
    }]});
    let response = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/metrics"))
        .json(&otlp)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    let partial = &answer["partialSuccess"];
    assert!(
        partial["rejectedDataPoints"] == 1 || partial["rejectedDataPoints"] == "1",
        "{answer}"
    );
    assert!(
        partial["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("series limit reached for metric \"limited\""),
        "{answer}"
    );

    // The limit holds across a restart: the series counted are on disk.
    daemon.stop().await;
    let daemon = Strand::start(&data, &args).await;
    let (status, text) = rw::write(&daemon, &rw::request(vec![limited("5", t + 3000, 5.0)])).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"limited\""), "{text}");
    rw::write_ok(&daemon, &rw::request(vec![limited("2", t + 3000, 20.0)])).await;
    assert_remote_write_still_serving(&daemon, "after_series_limit").await;
}

/// Overloaded (429) then retried, as Prometheus and the OpenTelemetry SDKs
/// do: once acknowledged, the samples must be stored. Clients keep going
/// until several 429s were answered (or 15 s passed), so the retry path is
/// actually taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_retried_after_overload_is_stored() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    const CLIENTS: usize = 6;
    const MIN_REQUESTS: i64 = 20;
    const MAX_REQUESTS: i64 = 1000;
    const WANTED_429S: u64 = 5;
    const SERIES: usize = 4;
    const SAMPLES: i64 = 400;
    const SAMPLE_MS: i64 = 10;

    let dir = tempfile::tempdir().unwrap();
    let max = MAX_BODY.to_string();
    // Room for about two requests waiting for the WAL at a time.
    let daemon = Strand::start(
        &dir.path().join("data"),
        &["--max-body-bytes", &max, "--wal-queue-bytes", &max],
    )
    .await;
    let base = now_ms() - 3 * 3_600_000;
    let request = move |client: usize, n: i64| {
        rw::request(
            (0..SERIES)
                .map(|s| {
                    let samples: Vec<(i64, f64)> = (0..SAMPLES)
                        .map(|j| {
                            let k = n * SAMPLES + j;
                            (base + k * SAMPLE_MS, k as f64)
                        })
                        .collect();
                    rw::series(
                        "overload_samples",
                        &[("client", &client.to_string()), ("s", &s.to_string())],
                        &samples,
                    )
                })
                .collect(),
        )
    };
    let overloaded = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let url = daemon.url("/api/v1/write");
        let overloaded = overloaded.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            while n < MIN_REQUESTS
                || (n < MAX_REQUESTS
                    && overloaded.load(Ordering::Relaxed) < WANTED_429S
                    && Instant::now() < deadline)
            {
                let body = rw::body(&request(client, n));
                let mut refused_before = 0;
                loop {
                    let response = http
                        .post(&url)
                        .header("Content-Encoding", "snappy")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    match response.status().as_u16() {
                        204 => break,
                        429 => {
                            refused_before += 1;
                            overloaded.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        status => panic!(
                            "client {client} request {n}, after {refused_before} answers 429: HTTP {status}: {}",
                            response.text().await.unwrap_or_default()
                        ),
                    }
                }
                n += 1;
            }
            n
        }));
    }
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.push(client.await.unwrap());
    }
    let newest = *acknowledged.iter().max().unwrap();
    let at = (base + newest * SAMPLES * SAMPLE_MS) as f64 / 1000.0;
    let window = format!(
        "overload_samples[{}s]",
        newest * SAMPLES * SAMPLE_MS / 1000 + 60
    );
    let stored = prom::raw_samples(&daemon, &window, at).await;
    let mut wrong = Vec::new();
    for (client, &requests) in acknowledged.iter().enumerate() {
        for s in 0..SERIES {
            let want = (requests * SAMPLES) as usize;
            let got = stored
                .iter()
                .find(|(labels, _)| {
                    labels["client"] == client.to_string() && labels["s"] == s.to_string()
                })
                .map_or(0, |(_, samples)| samples.len());
            if got != want {
                wrong.push(format!(
                    "client {client} series {s}: {got} samples, want {want}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "after {} answers 429 and retries until 204: {}",
        overloaded.load(Ordering::Relaxed),
        wrong.join("; ")
    );
    if overloaded.load(Ordering::Relaxed) == 0 {
        eprintln!("note: no request was answered 429; the retry path was not exercised");
    }
}

/// Deterministic form of the above over OTLP: a histogram with many buckets
/// becomes more WAL bytes than the queue takes, so the first export is
/// refused with 429. A retry must never be acknowledged without storing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_retried_after_overload_are_not_acknowledged_unstored() {
    let dir = tempfile::tempdir().unwrap();
    let max = MAX_BODY.to_string();
    let daemon = Strand::start(
        &dir.path().join("data"),
        &["--max-body-bytes", &max, "--wal-queue-bytes", &max],
    )
    .await;
    let now = now_ms();
    let bounds: Vec<f64> = (1..=500).map(f64::from).collect();
    let mut counts = vec!["0".to_string(); 501];
    counts[3] = "2".into();
    let otlp = serde_json::json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "wide"}}]},
        "scopeMetrics": [{"metrics": [{"name": "wide", "histogram": {
            "aggregationTemporality": 2,
            "dataPoints": [{
                "startTimeUnixNano": ((now - 10_000) * 1_000_000).to_string(),
                "timeUnixNano": (now * 1_000_000).to_string(),
                "count": "2", "sum": 7.0,
                "explicitBounds": bounds, "bucketCounts": counts,
                "attributes": [{"key": "pad", "value": {"stringValue": "x".repeat(400)}}]
            }]
        }}]}]
    }]});
    let body = serde_json::to_vec(&otlp).unwrap();
    assert!(body.len() < MAX_BODY);
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response = client
            .post(daemon.otlp_http_url("/v1/metrics"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        answers.push((status, response.text().await.unwrap_or_default()));
        if status == 200 {
            break;
        }
    }
    let (status, text) = answers.last().unwrap();
    if *status == 200 {
        let count = prom::instant_vector(
            &daemon,
            r#"wide_count{job="wide"}"#,
            Some(now as f64 / 1000.0),
        )
        .await;
        assert_eq!(
            count.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [2.0],
            "acknowledged ({text}) but not stored; answers: {answers:?}"
        );
    }
}
/// A histogram data point whose bucket series would pass the series limit is
/// refused whole: a histogram missing some of its buckets (here `+Inf`) gives
/// wrong quantiles. OTLP partial success counts data points, not samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_limit_never_stores_half_a_histogram() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &["--max-series-per-metric", "2"]).await;
    let now = now_ms();
    let otlp = serde_json::json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "h"}}]},
        "scopeMetrics": [{"metrics": [{"name": "lat", "unit": "s", "histogram": {
            "aggregationTemporality": 2,
            "dataPoints": [{
                "timeUnixNano": (now * 1_000_000).to_string(),
                "count": "6", "sum": 3.0,
                "explicitBounds": [0.1, 0.5, 1.0],
                "bucketCounts": ["1", "2", "2", "1"]
            }]
        }}]}]
    }]});
    let response = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/metrics"))
        .json(&otlp)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    let at = Some(now as f64 / 1000.0);
    let buckets = prom::instant_vector(&daemon, "lat_seconds_bucket", at).await;
    let count = prom::instant_vector(&daemon, "lat_seconds_count", at).await;
    assert!(
        buckets.is_empty() && count.is_empty(),
        "part of a histogram point stored: buckets {:?}, count {count:?}; answer {answer}",
        buckets
            .iter()
            .map(|(l, v)| (l["le"].clone(), *v))
            .collect::<Vec<_>>()
    );
    let rejected = &answer["partialSuccess"]["rejectedDataPoints"];
    assert!(rejected == 1 || rejected == "1", "{answer}");
}

/// Queries nested deeper than a parser's recursion can take are refused with
/// a 400 that says so, and the daemon keeps serving: before the limits, one
/// unauthenticated request of 5,000 parentheses overflowed a worker's stack
/// and aborted the whole process. Here 100,000 levels, sent as POST forms
/// (too long for a URL). The real binary runs here, so a regression shows
/// as a dead daemon, not an aborted test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_nested_too_deep_are_refused_and_the_daemon_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::spawn(env!("CARGO_BIN_EXE_strand"), &dir.path().join("data"), &[]).await;
    let deep = |open: &str, inner: &str, close: &str| {
        format!("{}{inner}{}", open.repeat(100_000), close.repeat(100_000))
    };
    let promql = [
        deep("(", "1", ")"),
        deep("abs(", "up", ")"),
        deep("-", "1", ""),
        vec!["1"; 100_000].join(" + "),
    ];
    for query in &promql {
        for (path, extra) in [
            ("/api/v1/query", vec![]),
            (
                "/api/v1/query_range",
                vec![("start", "0"), ("end", "60"), ("step", "15")],
            ),
        ] {
            let mut params = vec![("query", query.as_str())];
            params.extend(extra);
            let response = reqwest::Client::new()
                .post(daemon.url(path))
                .form(&params)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path}: no answer ({e}):\n{}", daemon.log()));
            assert_eq!(response.status().as_u16(), 400, "{path}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["errorType"], "bad_data", "{path}: {body}");
            let message = body["error"].as_str().unwrap();
            assert!(message.contains("too complex"), "{path}: {message}");
        }
    }
    let post = |path: &str, params: Vec<(&str, String)>| {
        let request = reqwest::Client::new().post(daemon.url(path)).form(&params);
        let path = path.to_owned();
        async move {
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path}: no answer ({e})"));
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        }
    };
    let selector = format!("up{{job=\"x\"}} + {}", deep("(", "1", ")"));
    let (status, body) = post("/api/v1/series", vec![("match[]", selector)]).await;
    assert_eq!(status, 400, "{body}");

    for path in ["/api/logs", "/api/logs/histogram", "/api/logs/facets"] {
        for q in [
            deep("(", "a", ")"),
            deep("-", "a", ""),
            vec!["a"; 100_000].join(" OR "),
        ] {
            let (status, body) = post(path, vec![("q", q)]).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(body.to_string().contains("too complex"), "{path}: {body}");
        }
    }

    let ready = reqwest::get(daemon.url("/readyz")).await;
    assert!(
        ready.is_ok_and(|r| r.status().is_success()),
        "the daemon stopped serving:\n{}",
        daemon.log()
    );
    let (status, body) = daemon
        .get_json_query("/api/v1/query", &[("query", "sum(vector(1)) + 1")])
        .await;
    assert_eq!(status, 200, "{body}");
    daemon.stop().await;
}

/// OpenTelemetry's attribute limits on what arrives: attributes beyond the
/// count are dropped, long values truncated, both counted on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_limits_trim_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(
        &dir.path().join("data"),
        &[
            "--attribute-count-limit",
            "2",
            "--attribute-value-length-limit",
            "3",
        ],
    )
    .await;
    let trace_id = "5b8efff798038103d269b633813fc6aa";
    let body = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{trace_id}","spanId":"eee19b7ec3c1b174","name":"x",
        "attributes":[{{"key":"a","value":{{"stringValue":"abcdef"}}}},{{"key":"b","value":{{"intValue":"2"}}}},{{"key":"c","value":{{"intValue":"3"}}}}]}}]}}]}}]}}"#
    );
    let response = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, trace) = daemon.get_json(&format!("/api/traces/{trace_id}")).await;
    assert_eq!(status, 200, "{trace}");
    let tags = &trace["data"][0]["spans"][0]["tags"];
    let tag = |key: &str| {
        tags.as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| t["value"].clone())
    };
    assert_eq!(tag("a"), Some("abc".into()), "{tags}");
    assert_eq!(tag("b"), Some(2.into()), "{tags}");
    assert_eq!(tag("c"), None, "{tags}");
    let metrics = daemon.self_metrics().await;
    for line in [
        "strand_attributes_dropped_total{signal=\"spans\"} 1",
        "strand_attribute_values_truncated_total{signal=\"spans\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    daemon.stop().await;
}
