//! Grafana's Tempo and Jaeger (v3) data sources against Strand, unchanged:
//! a fixed set of four traces is sent over OTLP/HTTP, then the requests the
//! data sources send (as Grafana's `pkg/tsdb/tempo`,
//! `public/app/plugins/datasource/tempo` and `pkg/tsdb/jaeger` build them:
//! paths, parameters, `Accept` headers) are replayed and the answers checked
//! field by field; the protobuf trace is decoded with the OTLP types, as
//! Grafana's `ptrace.ProtoUnmarshaler` does. A table of TraceQL queries with
//! their expected traces (and refused queries with Tempo's 400) runs through
//! `/tempo/api/search`.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use serde_json::{Value, json};
use strand_testkit::{DEADLINE, Strand, eventually};

/// The four traces: labels and ids.
const TRACES: [(&str, &str); 4] = [
    ("cart", "0af7651916cd43dd8448eb211c80319c"),
    ("products", "1bf7651916cd43dd8448eb211c80319d"),
    ("checkout", "2cf7651916cd43dd8448eb211c80319e"),
    ("nightly", "3df7651916cd43dd8448eb211c80319f"),
];

fn trace_id(label: &str) -> &'static str {
    TRACES.iter().find(|(l, _)| *l == label).unwrap().1
}

/// One span of the fixture: (service, span id byte, parent byte, name,
/// kind, status code, offset ms, duration ms, attributes).
struct FixtureSpan {
    service: &'static str,
    id: u8,
    parent: Option<u8>,
    name: &'static str,
    kind: u8,
    status: u8,
    offset_ms: u64,
    duration_ms: u64,
    attributes: Value,
}

fn s(
    service: &'static str,
    id: u8,
    parent: Option<u8>,
    name: &'static str,
    (kind, status): (u8, u8),
    (offset_ms, duration_ms): (u64, u64),
    attributes: Value,
) -> FixtureSpan {
    FixtureSpan {
        service,
        id,
        parent,
        name,
        kind,
        status,
        offset_ms,
        duration_ms,
        attributes,
    }
}

const INTERNAL: u8 = 1;
const SERVER: u8 = 2;
const CLIENT: u8 = 3;
const PRODUCER: u8 = 4;
const CONSUMER: u8 = 5;
const UNSET: u8 = 0;
const OK: u8 = 1;
const ERROR: u8 = 2;

fn str_attr(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int_attr(key: &str, value: i64) -> Value {
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

fn fixture() -> Vec<(&'static str, Vec<FixtureSpan>)> {
    vec![
        (
            "cart",
            vec![
                s(
                    "frontend",
                    1,
                    None,
                    "GET /cart",
                    (SERVER, UNSET),
                    (0, 120),
                    json!([
                        int_attr("http.status_code", 500),
                        str_attr("http.method", "GET")
                    ]),
                ),
                s(
                    "cart",
                    2,
                    Some(1),
                    "getCart",
                    (INTERNAL, ERROR),
                    (10, 80),
                    json!([{"key": "retry", "value": {"boolValue": true}}]),
                ),
                s(
                    "redis",
                    3,
                    Some(2),
                    "HGET",
                    (CLIENT, UNSET),
                    (20, 5),
                    json!([str_attr("db.system", "redis"), {"key": "db.ratio", "value": {"doubleValue": 0.25}}]),
                ),
            ],
        ),
        (
            "products",
            vec![
                s(
                    "frontend",
                    1,
                    None,
                    "GET /products",
                    (SERVER, UNSET),
                    (0, 30),
                    json!([
                        int_attr("http.status_code", 200),
                        str_attr("http.method", "GET")
                    ]),
                ),
                s(
                    "catalog",
                    2,
                    Some(1),
                    "listProducts",
                    (SERVER, OK),
                    (5, 20),
                    json!([]),
                ),
                s(
                    "postgres",
                    3,
                    Some(2),
                    "SELECT products",
                    (CLIENT, UNSET),
                    (6, 12),
                    json!([str_attr("db.system", "postgresql")]),
                ),
            ],
        ),
        (
            "checkout",
            vec![
                s(
                    "checkout",
                    1,
                    None,
                    "POST /checkout",
                    (SERVER, UNSET),
                    (0, 900),
                    json!([
                        int_attr("http.status_code", 201),
                        str_attr("http.method", "POST")
                    ]),
                ),
                s(
                    "payment",
                    2,
                    Some(1),
                    "charge",
                    (CLIENT, ERROR),
                    (100, 700),
                    json!([int_attr("amount", 42)]),
                ),
                s(
                    "payment-gw",
                    3,
                    Some(2),
                    "authorize",
                    (SERVER, UNSET),
                    (120, 650),
                    json!([str_attr("currency", "EUR")]),
                ),
                s(
                    "checkout",
                    4,
                    Some(1),
                    "publish order",
                    (PRODUCER, UNSET),
                    (850, 3),
                    json!([]),
                ),
                s(
                    "mailer",
                    5,
                    Some(4),
                    "send mail",
                    (CONSUMER, UNSET),
                    (860, 40),
                    json!([]),
                ),
            ],
        ),
        (
            "nightly",
            vec![s(
                "batch",
                1,
                None,
                "nightly-job",
                (INTERNAL, UNSET),
                (0, 2_000),
                json!([str_attr("job.name", "reindex")]),
            )],
        ),
    ]
}

fn resource_attributes(service: &str) -> Value {
    let mut attributes = vec![str_attr("service.name", service)];
    match service {
        "frontend" => attributes.push(str_attr("deployment.environment", "prod")),
        "checkout" => attributes.push(str_attr("deployment.environment", "staging")),
        _ => {}
    }
    Value::from(attributes)
}

/// The fixture's start: ten minutes ago, trace `i` starting `i` seconds later.
fn base_nanos() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now - Duration::from_secs(600)).as_nanos() as u64 / 1_000_000_000 * 1_000_000_000
}

/// One OTLP/JSON export request per trace, one resource per span.
fn export_requests(base: u64) -> Vec<Value> {
    fixture()
        .into_iter()
        .enumerate()
        .map(|(i, (label, spans))| {
            let start = base + i as u64 * 1_000_000_000;
            let resource_spans: Vec<Value> = spans
                .iter()
                .map(|span| {
                    let begin = start + span.offset_ms * 1_000_000;
                    let mut otlp = json!({
                        "traceId": trace_id(label),
                        "spanId": span_id(label, span.id),
                        "name": span.name,
                        "kind": span.kind,
                        "startTimeUnixNano": begin.to_string(),
                        "endTimeUnixNano": (begin + span.duration_ms * 1_000_000).to_string(),
                        "attributes": span.attributes,
                        "status": {"code": span.status},
                    });
                    if let Some(parent) = span.parent {
                        otlp["parentSpanId"] =
                            span_id(label, parent).into();
                    }
                    if span.name == "getCart" {
                        otlp["status"]["message"] = "out of stock".into();
                    }
                    json!({
                        "resource": {"attributes": resource_attributes(span.service)},
                        "scopeSpans": [{"scope": {"name": "fixture", "version": "1.0"}, "spans": [otlp]}],
                    })
                })
                .collect();
            json!({"resourceSpans": resource_spans})
        })
        .collect()
}

fn span_id(label: &str, id: u8) -> String {
    let i = TRACES.iter().position(|(l, _)| *l == label).unwrap() as u64;
    format!("{:016x}", (u64::from(id) << 8) | (i + 1))
}

async fn start_with_fixture(dir: &std::path::Path, args: &[&str]) -> (Strand, u64) {
    let daemon = Strand::start(dir, args).await;
    let base = base_nanos();
    let client = reqwest::Client::new();
    for request in export_requests(base) {
        let response = client
            .post(daemon.otlp_http_url("/v1/traces"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    (daemon, base)
}

async fn get(daemon: &Strand, path: &str, accept: &str) -> (u16, String, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(daemon.url(path))
        .header("accept", accept)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

/// The trace labels a Tempo search answer lists.
fn labels_of(answer: &Value) -> BTreeSet<&'static str> {
    answer["traces"]
        .as_array()
        .unwrap_or_else(|| panic!("no traces in {answer}"))
        .iter()
        .map(|t| {
            let id = t["traceID"].as_str().unwrap();
            TRACES
                .iter()
                .find(|(_, full)| full.trim_start_matches('0') == id)
                .unwrap_or_else(|| panic!("unknown trace {id}"))
                .0
        })
        .collect()
}

/// Grafana's backend search (`pkg/tsdb/tempo/search.go`): q, limit, spss,
/// start and end in unix seconds, `Accept: application/json`.
fn grafana_search_path(root: &str, q: &str, base: u64) -> String {
    let start = base / 1_000_000_000 - 60;
    let end = base / 1_000_000_000 + 600;
    format!(
        "{root}/api/search?q={}&limit=20&spss=3&start={start}&end={end}",
        strand_testkit::urlencode(q)
    )
}

/// Grafana's Tempo data source pointed at the root (`http://host:7070`)
/// and at `/tempo` sends the same requests; both get Tempo's answers.
#[tokio::test]
async fn tempo_data_source_requests_get_tempo_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base) = start_with_fixture(dir.path(), &[]).await;
    for root in ["", "/tempo"] {
        replay_tempo_requests(&daemon, base, root).await;
    }
    // At the root, `/api/traces/{id}` stays Jaeger's for JSON clients.
    let (status, jaeger) = daemon
        .get_json(&format!("/api/traces/{}", trace_id("cart")))
        .await;
    assert_eq!(status, 200);
    assert_eq!(jaeger["data"][0]["spans"].as_array().unwrap().len(), 3);
    // Under `/tempo`, it is Tempo's OTLP/JSON.
    check_tempo_json_traces(&daemon, base).await;
    daemon.stop().await;
}

/// Tempo's OTLP/JSON traces (for clients other than Grafana, which asks for
/// protobuf): v1 `{"batches": [...]}`, v2 `{"trace": {"resourceSpans": [...]}}`.
async fn check_tempo_json_traces(daemon: &Strand, base: u64) {
    let cart = trace_id("cart");
    // The same trace as OTLP/JSON, Tempo v1 (`batches`) and v2 (`trace`).
    let (status, _, body) = get(
        daemon,
        &format!("/tempo/api/traces/{cart}"),
        "application/json",
    )
    .await;
    assert_eq!(status, 200);
    let v1: Value = serde_json::from_slice(&body).unwrap();
    let batches = v1["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 3);
    let json_root = batches
        .iter()
        .flat_map(|b| b["scopeSpans"][0]["spans"].as_array().unwrap())
        .find(|s| s["name"] == "GET /cart")
        .unwrap();
    assert_eq!(json_root["traceId"], cart);
    assert_eq!(json_root["spanId"], span_id("cart", 1));
    assert_eq!(json_root["startTimeUnixNano"], base.to_string());
    assert_eq!(json_root["kind"], 2);
    assert_eq!(json_root["attributes"][0]["value"]["intValue"], "500");
    assert!(json_root.get("parentSpanId").is_none());
    let (status, _, body) = get(
        daemon,
        &format!("/tempo/api/v2/traces/{cart}"),
        "application/json",
    )
    .await;
    assert_eq!(status, 200);
    let v2: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v2["trace"]["resourceSpans"], v1["batches"]);
}

async fn replay_tempo_requests(daemon: &Strand, base: u64, root: &str) {
    // Health check (testDatasource): GET /api/echo.
    let (status, _, body) = get(daemon, &format!("{root}/api/echo"), "*/*").await;
    assert_eq!((status, body.as_slice()), (200, b"echo".as_slice()));

    // Trace by id (pkg/tsdb/tempo/trace.go): v2 first, protobuf
    // `tempopb.TraceByIDResponse`; v1 (`tempopb.Trace`, OTLP `TracesData`)
    // after a 404, for older Tempos. Both decoded with the OTLP types.
    let cart = trace_id("cart");
    let window = format!(
        "start={}&end={}",
        base / 1_000_000_000 - 60,
        base / 1_000_000_000 + 600
    );
    #[derive(Clone, PartialEq, prost::Message)]
    struct TraceByIdResponse {
        #[prost(message, optional, tag = "1")]
        trace: Option<TracesData>,
    }
    let path = format!("{root}/api/v2/traces/{cart}?{window}");
    let (status, content_type, body) = get(daemon, &path, "application/protobuf").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/protobuf")
    );
    let v2 = TraceByIdResponse::decode(body.as_slice()).expect("TraceByIDResponse");
    let path = format!("{root}/api/traces/{cart}?{window}");
    let (status, content_type, body) = get(daemon, &path, "application/protobuf").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/protobuf");
    let data = TracesData::decode(body.as_slice()).expect("OTLP TracesData");
    assert_eq!(v2.trace.as_ref(), Some(&data));
    assert_eq!(data.resource_spans.len(), 3, "one resource per service");
    let mut seen = Vec::new();
    for resource_spans in &data.resource_spans {
        let attributes = &resource_spans.resource.as_ref().unwrap().attributes;
        let service = match &attributes[0].value.as_ref().unwrap().value {
            Some(AnyValue::StringValue(s)) if attributes[0].key == "service.name" => s.clone(),
            other => panic!("service.name first, got {other:?}"),
        };
        let scope = &resource_spans.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "fixture");
        for span in &scope.spans {
            assert_eq!(hex::encode(&span.trace_id), cart);
            seen.push((
                service.clone(),
                span.name.clone(),
                hex::encode(&span.span_id),
                hex::encode(&span.parent_span_id),
                span.kind,
                span.status.as_ref().map(|s| (s.code, s.message.clone())),
                (span.end_time_unix_nano - span.start_time_unix_nano) / 1_000_000,
            ));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "cart".into(),
                "getCart".into(),
                span_id("cart", 2),
                span_id("cart", 1),
                1,
                Some((2, "out of stock".into())),
                80
            ),
            (
                "frontend".into(),
                "GET /cart".into(),
                span_id("cart", 1),
                String::new(),
                2,
                Some((0, String::new())),
                120
            ),
            (
                "redis".into(),
                "HGET".into(),
                span_id("cart", 3),
                span_id("cart", 2),
                3,
                Some((0, String::new())),
                5
            ),
        ]
    );
    let root_span = data
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans[0].spans)
        .find(|s| s.name == "GET /cart")
        .unwrap();
    assert_eq!(root_span.start_time_unix_nano, base);
    assert_eq!(root_span.attributes[0].key, "http.status_code");
    assert_eq!(
        root_span.attributes[0].value.as_ref().unwrap().value,
        Some(AnyValue::IntValue(500))
    );

    for version in ["/v2", ""] {
        let path = format!("{root}/api{version}/traces/00000000000000000000000000000bad");
        let (status, _, body) = get(daemon, &path, "application/protobuf").await;
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
    }

    // TraceQL search as Grafana's backend sends it; every field checked.
    let (status, _, body) = get(
        daemon,
        &grafana_search_path(
            root,
            r#"{ resource.service.name = "cart" && status = error }"#,
            base,
        ),
        "application/json",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let traces = answer["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 1);
    let hit = &traces[0];
    assert_eq!(hit["traceID"], cart.trim_start_matches('0'));
    assert_eq!(hit["rootServiceName"], "frontend");
    assert_eq!(hit["rootTraceName"], "GET /cart");
    assert_eq!(hit["startTimeUnixNano"], base.to_string());
    assert_eq!(hit["durationMs"], 120);
    let spanset = &hit["spanSets"][0];
    assert_eq!(spanset["matched"], 1);
    let span = &spanset["spans"][0];
    assert_eq!(span["spanID"], span_id("cart", 2));
    assert_eq!(span["startTimeUnixNano"], (base + 10_000_000).to_string());
    assert_eq!(span["durationNanos"], "80000000");
    assert_eq!(
        span["attributes"],
        json!([
            {"key": "service.name", "value": {"stringValue": "cart"}},
            {"key": "status", "value": {"stringValue": "error"}},
        ])
    );
    assert!(answer["metrics"]["inspectedTraces"].as_u64().unwrap() >= 1);

    // `spss` caps the spans shown, `matched` counts them all; `limit` the traces.
    let (_, _, body) = get(
        daemon,
        &grafana_search_path(root, "{ }", base).replace("spss=3", "spss=1"),
        "application/json",
    )
    .await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let checkout = answer["traces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["rootServiceName"] == "checkout")
        .unwrap();
    assert_eq!(
        checkout["spanSets"][0]["spans"].as_array().unwrap().len(),
        1
    );
    assert_eq!(checkout["spanSets"][0]["matched"], 5);
    // Newest first.
    assert_eq!(answer["traces"][0]["rootServiceName"], "batch");
    let (_, _, body) = get(
        daemon,
        &grafana_search_path(root, "{ }", base).replace("limit=20", "limit=2"),
        "application/json",
    )
    .await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(labels_of(&answer), BTreeSet::from(["checkout", "nightly"]));

    // The tags search of Grafana's older native search form.
    let path = format!(
        "{root}/api/search?tags={}&minDuration=100ms&limit=20&start={}&end={}",
        strand_testkit::urlencode(r#" service.name="frontend" name="GET /cart""#),
        base / 1_000_000_000 - 60,
        base / 1_000_000_000 + 600
    );
    let (status, _, body) = get(daemon, &path, "application/json").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        labels_of(&serde_json::from_slice(&body).unwrap()),
        BTreeSet::from(["cart"])
    );

    // Tag names: v2 first (language_provider.ts fetchTags), v1 as fallback.
    let (status, scopes) = daemon.get_json(&format!("{root}/api/v2/search/tags")).await;
    assert_eq!(status, 200);
    let scope = |name: &str| -> Vec<String> {
        scopes["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("scope {name} in {scopes}"))["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    assert!(scope("resource").contains(&"service.name".into()));
    assert!(scope("resource").contains(&"deployment.environment".into()));
    assert!(scope("span").contains(&"http.status_code".into()));
    assert!(scope("span").contains(&"db.system".into()));
    assert!(scope("intrinsic").contains(&"status".into()));
    assert!(scope("intrinsic").contains(&"duration".into()));
    let (status, names) = daemon.get_json(&format!("{root}/api/search/tags")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = names["tagNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for name in ["service.name", "http.method", "job.name", "currency"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }

    // Tag values: v2 with the editor's filter, the tag encoded twice as
    // Grafana does (encodeURIComponent twice), and v1.
    let (status, values) = daemon
        .get_json_query(
            &format!("{root}/api/v2/search/tag/resource.service.name/values"),
            &[("q", r#"{resource.deployment.environment="prod"}"#)],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        values["tagValues"],
        json!([{"type": "string", "value": "frontend"}])
    );
    let (status, values) = daemon
        .get_json(&format!(
            "{root}/api/v2/search/tag/span.http.status_code/values"
        ))
        .await;
    assert_eq!(status, 200);
    let mut codes: Vec<Value> = values["tagValues"].as_array().unwrap().clone();
    codes.sort_by_key(|v| v["value"].as_str().unwrap().to_string());
    assert_eq!(
        codes,
        vec![
            json!({"type": "int", "value": "200"}),
            json!({"type": "int", "value": "201"}),
            json!({"type": "int", "value": "500"}),
        ]
    );
    let (status, values) = daemon
        .get_json(&format!("{root}/api/v2/search/tag/status/values"))
        .await;
    assert_eq!(status, 200);
    let statuses: BTreeSet<&str> = values["tagValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert_eq!(v["type"], "keyword");
            v["value"].as_str().unwrap()
        })
        .collect();
    assert_eq!(statuses, BTreeSet::from(["error", "ok", "unset"]));
    let (status, values) = daemon
        .get_json(&format!(
            "{root}/api/v2/search/tag/span.db%252Esystem/values"
        ))
        .await;
    assert_eq!(status, 200);
    let mut systems: Vec<&str> = values["tagValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    systems.sort();
    assert_eq!(systems, vec!["postgresql", "redis"]);
    let (status, values) = daemon
        .get_json(&format!("{root}/api/search/tag/service.name/values"))
        .await;
    assert_eq!(status, 200);
    let mut services: Vec<&str> = values["tagValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    services.sort();
    assert_eq!(
        services,
        vec![
            "batch",
            "cart",
            "catalog",
            "checkout",
            "frontend",
            "mailer",
            "payment",
            "payment-gw",
            "postgres",
            "redis"
        ]
    );
}

/// `(query, expected traces)`; the fixture's traces are labelled `cart`
/// (frontend -> cart (error) -> redis), `products` (frontend -> catalog (ok)
/// -> postgres), `checkout` (checkout -> payment (error) -> payment-gw;
/// checkout -> producer -> mailer consumer) and `nightly` (one 2 s span).
const TRACEQL: &[(&str, &[&str])] = &[
    ("{}", &["cart", "products", "checkout", "nightly"]),
    (r#"{ resource.service.name = "cart" }"#, &["cart"]),
    (r#"{ .service.name = "redis" }"#, &["cart"]),
    (
        r#"{ resource.service.name != "frontend" }"#,
        &["cart", "products", "checkout", "nightly"],
    ),
    (r#"{ resource.service.name =~ "pay.*" }"#, &["checkout"]),
    (
        r#"{ resource.service.name !~ "pay.*|checkout|mailer" }"#,
        &["cart", "products", "nightly"],
    ),
    ("{ span.http.status_code = 500 }", &["cart"]),
    (
        "{ span.http.status_code >= 200 }",
        &["cart", "products", "checkout"],
    ),
    ("{ span.http.status_code > 200 }", &["cart", "checkout"]),
    ("{ span.http.status_code < 300 }", &["products", "checkout"]),
    ("{ span.http.status_code <= 200 }", &["products"]),
    (
        "{ span.http.status_code != 500 }",
        &["products", "checkout"],
    ),
    (r#"{ span.http.status_code = "500" }"#, &[]),
    (r#"{ span.http.method = "POST" }"#, &["checkout"]),
    (r#"{ .http.method = "GET" }"#, &["cart", "products"]),
    (r#"{ span.http.method =~ "G.*" }"#, &["cart", "products"]),
    (r#"{ span.http.method =~ "G" }"#, &[]),
    ("{ span.retry = true }", &["cart"]),
    ("{ span.retry = false }", &[]),
    ("{ span.db.ratio < 0.5 }", &["cart"]),
    ("{ span.db.ratio > 0.5 }", &[]),
    ("{ span.amount = 42 }", &["checkout"]),
    ("{ span.amount > 41.5 }", &["checkout"]),
    (
        r#"{ resource.deployment.environment = "prod" }"#,
        &["cart", "products"],
    ),
    (
        r#"{ resource.deployment.environment = "staging" }"#,
        &["checkout"],
    ),
    (
        r#"{ .deployment.environment =~ "prod|staging" }"#,
        &["cart", "products", "checkout"],
    ),
    (r#"{ span.deployment.environment = "prod" }"#, &[]),
    (r#"{ name = "GET /cart" }"#, &["cart"]),
    (r#"{ name =~ "GET .*" }"#, &["cart", "products"]),
    (
        r#"{ name != "GET /cart" }"#,
        &["cart", "products", "checkout", "nightly"],
    ),
    (r#"{ name = "nightly-job" }"#, &["nightly"]),
    ("{ status = error }", &["cart", "checkout"]),
    ("{ status = ok }", &["products"]),
    (
        "{ status = unset }",
        &["cart", "products", "checkout", "nightly"],
    ),
    (
        "{ status != error }",
        &["cart", "products", "checkout", "nightly"],
    ),
    (r#"{ statusMessage = "out of stock" }"#, &["cart"]),
    ("{ kind = server }", &["cart", "products", "checkout"]),
    ("{ kind = client }", &["cart", "products", "checkout"]),
    ("{ kind = producer }", &["checkout"]),
    ("{ kind = consumer }", &["checkout"]),
    ("{ kind = internal }", &["cart", "nightly"]),
    (
        "{ kind != server && kind != client }",
        &["cart", "checkout", "nightly"],
    ),
    ("{ duration > 500ms }", &["checkout", "nightly"]),
    ("{ duration < 10ms }", &["cart", "checkout"]),
    ("{ duration >= 2s }", &["nightly"]),
    ("{ duration > 1.5s }", &["nightly"]),
    ("{ duration <= 12ms }", &["cart", "products", "checkout"]),
    ("{ traceDuration > 1s }", &["nightly"]),
    ("{ traceDuration < 100ms }", &["products"]),
    (r#"{ rootName = "GET /cart" }"#, &["cart"]),
    (r#"{ rootServiceName = "checkout" }"#, &["checkout"]),
    (
        r#"{ rootServiceName = "frontend" && kind = client }"#,
        &["cart", "products"],
    ),
    (
        r#"{ resource.service.name = "frontend" && span.http.status_code = 500 }"#,
        &["cart"],
    ),
    (
        r#"{ resource.service.name = "frontend" || resource.service.name = "batch" }"#,
        &["cart", "products", "nightly"],
    ),
    (
        "{ (kind = client || kind = consumer) && status = error }",
        &["checkout"],
    ),
    (
        r#"{ resource.service.name = "cart" } && { resource.service.name = "redis" }"#,
        &["cart"],
    ),
    (
        r#"{ resource.service.name = "cart" } && { resource.service.name = "postgres" }"#,
        &[],
    ),
    (
        r#"{ resource.service.name = "cart" } || { resource.service.name = "postgres" }"#,
        &["cart", "products"],
    ),
    (
        "{ kind = server } >> { kind = client }",
        &["cart", "products", "checkout"],
    ),
    (
        r#"{ resource.service.name = "frontend" } > { resource.service.name = "cart" }"#,
        &["cart"],
    ),
    (
        r#"{ resource.service.name = "frontend" } > { resource.service.name = "redis" }"#,
        &[],
    ),
    (
        r#"{ resource.service.name = "frontend" } >> { resource.service.name = "redis" }"#,
        &["cart"],
    ),
    ("{ status = error } >> { kind = server }", &["checkout"]),
    ("{ kind = producer } > { kind = consumer }", &["checkout"]),
    ("{ true }", &["cart", "products", "checkout", "nightly"]),
    ("{ false }", &[]),
    (r#"{ span.job.name = "reindex" }"#, &["nightly"]),
    (
        r#"{ .job.name = "reindex" && duration > 1s }"#,
        &["nightly"],
    ),
    (r#"{ span.missing = "x" }"#, &[]),
    (r#"{ span.missing != "x" }"#, &[]),
    (
        "({ kind = server } >> { kind = client }) && { status = ok }",
        &["products"],
    ),
    (
        r#"{ span.currency = "EUR" } && { resource.deployment.environment = "staging" }"#,
        &["checkout"],
    ),
];

/// `(query, a part of Tempo's 400 answer naming what is not supported)`.
const TRACEQL_REFUSED: &[(&str, &str)] = &[
    ("{ } | count() > 1", "pipelines"),
    ("{ } | select(span.http.method)", "pipelines"),
    ("{ kind = server } << { kind = client }", "\"<<\""),
    ("{ } !>> { }", "\"!>>\""),
    ("{ } ~ { }", "\"~\""),
    ("{ span.x = nil }", "nil"),
    (r#"{ event.name = "exception" }"#, "scope"),
    (r#"{ span:id = "ab" }"#, "intrinsic"),
    (r#"{ duration > "slow" }"#, "duration"),
    ("{ status = broken }", "not a status"),
    (r#"{ name = "x""#, "'}'"),
    (r#"{ name =~ "(" }"#, "regular expression"),
    ("avg(duration)", "expected '{'"),
    ("{ kind > server }", "only = and !="),
    ("{ name }", "comparison"),
];

#[tokio::test]
async fn traceql_queries_find_the_expected_traces() {
    assert!(TRACEQL.len() + TRACEQL_REFUSED.len() >= 60);
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base) = start_with_fixture(dir.path(), &[]).await;
    // The fixture is searchable once all four traces are.
    eventually(Duration::from_secs(10), || async {
        let (_, _, body) = get(
            &daemon,
            &grafana_search_path("", "{}", base),
            "application/json",
        )
        .await;
        let answer: Value = serde_json::from_slice(&body).ok()?;
        (labels_of(&answer).len() == 4).then_some(())
    })
    .await
    .expect("the fixture is searchable");
    for (query, expected) in TRACEQL {
        let (status, _, body) = get(
            &daemon,
            &grafana_search_path("", query, base),
            "application/json",
        )
        .await;
        assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        let expected: BTreeSet<&str> = expected.iter().copied().collect();
        assert_eq!(labels_of(&answer), expected, "{query}");
    }
    for (query, part) in TRACEQL_REFUSED {
        let (status, content_type, body) = get(
            &daemon,
            &grafana_search_path("", query, base),
            "application/json",
        )
        .await;
        let message = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{query}: {message}");
        assert!(
            content_type.starts_with("text/plain"),
            "{query}: {content_type}"
        );
        assert!(
            message.contains(part),
            "{query}: {message:?} should name {part}"
        );
    }
    daemon.stop().await;
}

/// RFC 3339 with nanoseconds in UTC, as Go's `time.RFC3339Nano` writes it.
fn rfc3339(nanos: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_nanos(nanos);
    humantime::format_rfc3339_nanos(time).to_string()
}

#[tokio::test]
async fn jaeger_v3_requests_get_jaeger_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base) = start_with_fixture(dir.path(), &[]).await;

    // GrpcServices: GET /api/v3/services.
    let (status, services) = daemon.get_json("/api/v3/services").await;
    assert_eq!(status, 200);
    let names: BTreeSet<&str> = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        names.contains("frontend") && names.contains("payment-gw"),
        "{services}"
    );

    // GrpcOperations: GET /api/v3/operations?service=...; Jaeger's span_kind filter.
    let (status, operations) = daemon
        .get_json_query("/api/v3/operations", &[("service", "frontend")])
        .await;
    assert_eq!(status, 200);
    let mut operations = operations["operations"].as_array().unwrap().clone();
    operations.sort_by_key(|o| o["name"].as_str().unwrap().to_string());
    assert_eq!(
        operations,
        vec![
            json!({"name": "GET /cart", "spanKind": "server"}),
            json!({"name": "GET /products", "spanKind": "server"}),
        ]
    );
    let (_, operations) = daemon
        .get_json_query(
            "/api/v3/operations",
            &[("service", "cart"), ("span_kind", "internal")],
        )
        .await;
    assert_eq!(
        operations["operations"],
        json!([{"name": "getCart", "spanKind": "internal"}])
    );

    // GrpcSearch: query.* parameters, times RFC 3339 appended unencoded.
    let search = format!(
        "/api/v3/traces?query.service_name=frontend&query.operation_name={}&query.attributes={}&query.duration_min=100ms&query.start_time_min={}&query.start_time_max={}",
        strand_testkit::urlencode("GET /cart"),
        strand_testkit::urlencode(r#"{"http.method":"GET"}"#),
        rfc3339(base - 60_000_000_000),
        rfc3339(base + 600_000_000_000),
    );
    let (status, answer) = daemon.get_json(&search).await;
    assert_eq!(status, 200, "{answer}");
    let resource_spans = answer["result"]["resourceSpans"].as_array().unwrap();
    assert_eq!(resource_spans.len(), 3, "the cart trace's three resources");
    for resource in resource_spans {
        let spans = resource["scopeSpans"][0]["spans"].as_array().unwrap();
        for span in spans {
            assert_eq!(span["traceId"], trace_id("cart"));
            assert!(span["spanId"].as_str().unwrap().len() == 16);
            assert!(
                span["startTimeUnixNano"]
                    .as_str()
                    .unwrap()
                    .parse::<u64>()
                    .is_ok()
            );
            assert!(
                span["endTimeUnixNano"]
                    .as_str()
                    .unwrap()
                    .parse::<u64>()
                    .is_ok()
            );
            assert!(span["kind"].is_u64());
            assert!(span["status"].is_object());
        }
    }
    let redis = resource_spans
        .iter()
        .find(|r| r["resource"]["attributes"][0]["value"]["stringValue"] == "redis")
        .unwrap();
    let hget = &redis["scopeSpans"][0]["spans"][0];
    assert_eq!(hget["name"], "HGET");
    assert_eq!(hget["parentSpanId"], span_id("cart", 2));
    assert_eq!(
        hget["attributes"][1],
        json!({"key": "db.ratio", "value": {"doubleValue": 0.25}})
    );
    assert_eq!(
        redis["scopeSpans"][0]["scope"],
        json!({"name": "fixture", "version": "1.0"})
    );

    // query.search_depth bounds the traces; nothing found is Jaeger's 404.
    let all = format!(
        "/api/v3/traces?query.search_depth=2&query.start_time_min={}&query.start_time_max={}",
        rfc3339(base - 60_000_000_000),
        rfc3339(base + 600_000_000_000),
    );
    let (status, answer) = daemon.get_json(&all).await;
    assert_eq!(status, 200);
    let ids: BTreeSet<&str> = answer["result"]["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scopeSpans"][0]["spans"][0]["traceId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([trace_id("checkout"), trace_id("nightly")])
    );
    let (status, answer) = daemon
        .get_json(&format!("{search}&query.duration_max=1ms"))
        .await;
    assert_eq!(
        (status, &answer),
        (
            404,
            &json!({"error": {"httpCode": 404, "message": "No traces found"}})
        )
    );

    // GrpcTrace: by id, with the time window Grafana can add.
    let (status, answer) = daemon
        .get_json(&format!(
            "/api/v3/traces/{}?start_time={}&end_time={}",
            trace_id("checkout"),
            rfc3339(base - 60_000_000_000),
            rfc3339(base + 600_000_000_000),
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    let spans: usize = answer["result"]["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scopeSpans"][0]["spans"].as_array().unwrap().len())
        .sum();
    assert_eq!(spans, 5);
    let (status, answer) = daemon
        .get_json("/api/v3/traces/00000000000000000000000000000bad")
        .await;
    assert_eq!(
        (status, answer["error"]["httpCode"].as_u64()),
        (404, Some(404))
    );

    // Malformed parameters are Jaeger's 400, naming the parameter.
    for (path, parameter) in [
        ("/api/v3/traces/xyz".to_string(), "trace_id"),
        (
            format!("/api/v3/traces/{}?start_time=abc", trace_id("cart")),
            "start_time",
        ),
        (
            "/api/v3/traces?query.service_name=frontend".to_string(),
            "query.start_time_min",
        ),
        (
            format!("{search}&query.duration_min=fast"),
            "query.duration_min",
        ),
        (
            format!("{search}&query.search_depth=NaN"),
            "query.search_depth",
        ),
    ] {
        let (status, answer) = daemon.get_json(&path).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["error"]["httpCode"], 400);
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(parameter),
            "{path}: {answer}"
        );
    }
    daemon.stop().await;
}

/// Trace to metrics: the queries the README gives the Tempo data source, as
/// Grafana sends them to the Prometheus data source on the same host once
/// `$__tags` is a span's `service.name` mapped to `service_name`.
#[tokio::test]
async fn trace_to_metrics_queries_answer_for_a_span() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, _) = start_with_fixture(dir.path(), &["--derived-metrics-interval", "1s"]).await;
    let tags = r#"service_name="frontend""#;
    for (query, by) in [
        (
            format!("sum by (span_name) (rate(traces_span_metrics_calls_total{{{tags}}}[5m]))"),
            "span_name",
        ),
        (
            format!(
                "histogram_quantile(0.95, sum by (le, span_name) (rate(traces_span_metrics_duration_seconds_bucket{{{tags}}}[5m])))"
            ),
            "span_name",
        ),
    ] {
        let names = eventually(DEADLINE, || async {
            let (status, body) = daemon
                .get_json_query("/api/v1/query", &[("query", query.as_str())])
                .await;
            assert_eq!(status, 200, "{query}: {body}");
            let names: BTreeSet<String> = body["data"]["result"]
                .as_array()?
                .iter()
                .filter(|series| series["value"][1].as_str() != Some("NaN"))
                .map(|series| series["metric"][by].as_str().unwrap().to_string())
                .collect();
            (names.len() == 2).then_some(names)
        })
        .await
        .unwrap_or_else(|| panic!("{query} answers for both of frontend's spans"));
        assert_eq!(
            names,
            BTreeSet::from(["GET /cart".to_string(), "GET /products".to_string()])
        );
    }
    daemon.stop().await;
}
