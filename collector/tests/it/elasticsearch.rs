//! Elasticsearch compatibility with a real client: the official Python
//! client (`elasticsearch` 9.x from PyPI, in the `target/py` venv that
//! scripts/test makes) runs info, cluster health, an index template and bulk
//! `create` into a data stream against Strand without refusing it as "not
//! Elasticsearch", and the documents are found through `/api/logs` with the
//! Elastic Common Schema fields mapped. Filebeat 8's and Logstash 8's
//! start-up sequences are replayed request by request, as their source makes
//! them, each answer checked as they check it. Malformed and unsupported
//! calls get Elasticsearch's error shape and product header.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use strand_testkit::{Strand, eventually, urlencode};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN_ID: &str = "b7ad6b7169203331";

/// The venv's Python, from `STRAND_TEST_PYTHON` or scripts/test's
/// `target/py`. Missing, the test fails (never skips) saying how to get it.
fn python_with_elasticsearch() -> PathBuf {
    let python = std::env::var_os("STRAND_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python")
        });
    let importable = Command::new(&python)
        .args(["-c", "import elasticsearch"])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        importable,
        "this test needs the official Elasticsearch Python client at {}: \
         python3 -m venv target/py && target/py/bin/pip install 'elasticsearch>=9,<10' \
         (scripts/test installs everything the tests need), or set STRAND_TEST_PYTHON",
        python.display()
    );
    python
}

fn run_client(python: PathBuf, url: String) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/es_client.py");
    let output = Command::new(python)
        .arg(script)
        .args([&url, TRACE_ID, SPAN_ID])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "the Elasticsearch client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client script prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_ships_logs_unchanged() {
    let python = python_with_elasticsearch();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let url = daemon.url("");
    let results = tokio::task::spawn_blocking(move || run_client(python, url))
        .await
        .unwrap();

    assert!(
        results["version"].as_str().unwrap().starts_with("8."),
        "{results}"
    );
    assert_eq!(results["tagline"], "You Know, for Search");
    assert_eq!(results["health"], "green");
    assert_eq!(results["template"], true);
    assert_eq!(results["missing_template"], "resource_not_found_exception");
    assert_eq!(results["helpers_ok"], 2, "{results}");
    assert_eq!(results["helpers_failed"], serde_json::json!([]));
    assert_eq!(results["direct_errors"], false);
    let item = &results["direct_item"]["create"];
    assert_eq!(item["status"], 201, "{results}");
    assert_eq!(item["result"], "created");
    assert_eq!(item["_index"], "logs-checkout-default");
    assert_eq!(results["search"], "illegal_argument_exception");

    let page = eventually(Duration::from_secs(10), || async {
        let (status, page) = daemon
            .get_json(&format!("/api/logs?q={}", urlencode("service:checkout")))
            .await;
        assert_eq!(status, 200, "{page}");
        (page["total"] == 3).then_some(page)
    })
    .await
    .expect("the three documents become searchable, once each");
    let logs = page["logs"].as_array().unwrap();
    let declined = logs
        .iter()
        .find(|log| log["body"] == "payment declined for order 1042")
        .expect("the helpers.bulk document");
    assert_eq!(declined["service"], "checkout");
    assert_eq!(declined["severity"], "error");
    assert_eq!(declined["traceId"], TRACE_ID);
    assert_eq!(declined["spanId"], SPAN_ID);
    assert_eq!(declined["resource"]["host.name"], "checkout-7f9c");
    assert_eq!(declined["resource"]["host.os.family"], "debian");
    assert_eq!(declined["resource"]["service.version"], "2.3.1");
    assert_eq!(declined["attributes"]["log.logger"], "checkout.payments");
    assert_eq!(declined["attributes"]["order.id"], 1042);
    assert_eq!(declined["attributes"]["order.total"], 99.5);
    let mut levels: Vec<&str> = logs
        .iter()
        .map(|log| log["severity"].as_str().unwrap())
        .collect();
    levels.sort();
    assert_eq!(levels, ["error", "info", "warn"]);
}

/// A request's answer: status, `X-Elastic-Product` header, JSON body.
async fn es_call(method: reqwest::Method, url: String, body: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("strand answers");
    let status = response.status().as_u16();
    let product = response
        .headers()
        .get("x-elastic-product")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response
        .json()
        .await
        .expect("an Elasticsearch-shaped JSON body");
    (status, product, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unsupported_calls_get_elasticsearch_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let post = reqwest::Method::POST;
    for (method, path, body, status, kind) in [
        (
            post.clone(),
            "/_bulk",
            "not json at all\n",
            400,
            "illegal_argument_exception",
        ),
        (
            post.clone(),
            "/logs-x/_bulk",
            "",
            400,
            "illegal_argument_exception",
        ),
        (
            post.clone(),
            "/_search",
            "{}",
            400,
            "illegal_argument_exception",
        ),
        (
            reqwest::Method::DELETE,
            "/_index_template/x",
            "",
            400,
            "illegal_argument_exception",
        ),
        (
            reqwest::Method::GET,
            "/_ilm/policy/logs",
            "",
            404,
            "resource_not_found_exception",
        ),
        (
            post,
            "/logs-x/_doc",
            "{}",
            400,
            "illegal_argument_exception",
        ),
    ] {
        let (got, product, answer) = es_call(method.clone(), daemon.url(path), body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert_eq!(product.as_deref(), Some("Elasticsearch"), "{method} {path}");
        assert_eq!(answer["status"], status, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["type"], kind, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["root_cause"][0]["type"], kind);
        assert!(
            !answer["error"]["reason"].as_str().unwrap().is_empty(),
            "{method} {path}: {answer}"
        );
    }
    // A browser still gets the UI at `/`.
    let page = reqwest::Client::new()
        .get(daemon.url("/"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shippers_authenticate_with_basic_auth_and_read_the_compatible_media_type() {
    let dir = tempfile::tempdir().unwrap();
    let token = "es-ingest-token-91c2d7";
    let daemon = Strand::start(&dir.path().join("data"), &["--ingest-token", token]).await;
    let client = reqwest::Client::new();
    let health = |auth: Option<&'static str>| {
        let mut request = client.get(daemon.url("/_cluster/health")).header(
            "accept",
            "application/vnd.elasticsearch+json; compatible-with=8",
        );
        if let Some(password) = auth {
            request = request.basic_auth("elastic", Some(password));
        }
        request.send()
    };

    // `HEAD /`, Logstash's health check, is open as `GET /` is.
    let ping = client.head(daemon.url("/")).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    assert_eq!(ping.headers()["x-elastic-product"], "Elasticsearch");
    // Filebeat's set-up: nothing kept, so it writes its pipeline and
    // template, which are acknowledged.
    for path in [
        "/_ingest/pipeline/filebeat-8.17.0",
        "/_component_template/filebeat",
    ] {
        let exists = client
            .head(daemon.url(path))
            .basic_auth("elastic", Some(token));
        assert_eq!(exists.send().await.unwrap().status(), 404, "{path}");
        let put = client
            .put(daemon.url(path))
            .basic_auth("elastic", Some(token))
            .json(&serde_json::json!({"description": "filebeat"}));
        let answer: Value = put.send().await.unwrap().json().await.unwrap();
        assert_eq!(answer["acknowledged"], true, "{path}");
    }

    let refused = health(None).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["x-elastic-product"], "Elasticsearch");
    assert!(refused.headers().contains_key("www-authenticate"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["status"], 401, "{body}");
    assert_eq!(body["error"]["type"], "security_exception", "{body}");
    assert!(
        body["error"]["reason"].as_str().unwrap().contains("token"),
        "{body}"
    );

    let answered = health(Some(token)).await.unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(answered.headers()["x-elastic-product"], "Elasticsearch");
    assert_eq!(
        answered.headers()["content-type"],
        "application/vnd.elasticsearch+json; compatible-with=8"
    );
    let body: Value = answered.json().await.unwrap();
    assert_eq!(body["status"], "green");
}

/// One call of a shipper's start-up sequence and what came back.
struct Answer {
    status: u16,
    product: Option<String>,
    body: Value,
}

/// Sends `method path` with a JSON (or, for `_bulk`, NDJSON) body,
/// gzipped when `gzip`, as the shippers' HTTP clients do.
async fn shipper_call(
    daemon: &Strand,
    method: &str,
    path: &str,
    body: Option<String>,
    gzip: bool,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = reqwest::Client::new()
        .request(method.clone(), daemon.url(path))
        .header("content-type", "application/json");
    if let Some(body) = body {
        let bytes = if gzip {
            use std::io::Write as _;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(body.as_bytes()).unwrap();
            request = request.header("content-encoding", "gzip");
            encoder.finish().unwrap()
        } else {
            body.into_bytes()
        };
        request = request.body(bytes);
    }
    let response = request.send().await.expect("strand answers");
    let status = response.status().as_u16();
    let product = response
        .headers()
        .get("x-elastic-product")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let body = if method == reqwest::Method::HEAD || text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };
    assert_eq!(
        product.as_deref(),
        Some("Elasticsearch"),
        "{path} lacks the product header"
    );
    Answer {
        status,
        product,
        body,
    }
}

/// An NDJSON bulk body: one `action` line into `index` per message, the
/// documents as Filebeat writes them, stamped now.
fn bulk_body(action: &str, index: &str, messages: &[&str]) -> String {
    let now = chrono::DateTime::from_timestamp_millis(crate::support::now_ms())
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    messages
        .iter()
        .map(|message| {
            format!(
                "{}\n{}\n",
                serde_json::json!({ action: {"_index": index} }),
                serde_json::json!({
                    "@timestamp": now,
                    "message": message,
                    "log": {"level": "info", "file": {"path": "/var/log/app.log"}},
                    "host": {"name": "web-1"},
                    "agent": {"type": "filebeat", "version": "8.19.0"},
                    "ecs": {"version": "8.0.0"},
                })
            )
        })
        .collect()
}

/// How many stored logs a search finds.
async fn found(daemon: &Strand, query: &str) -> u64 {
    let (status, page) = daemon
        .get_json(&format!("/api/logs?q={}", urlencode(query)))
        .await;
    assert_eq!(status, 200, "{page}");
    page["total"].as_u64().unwrap()
}

/// Filebeat 8's start-up against Elasticsearch, request by request as its
/// source makes them, each answer checked the way Filebeat checks it; then
/// its bulk request, whose documents must each arrive once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filebeat_8_start_up_sequence_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let beat = "filebeat-8.19.0";

    // libbeat/esleg/eslegclient/connection.go (Ping): `GET /`, reading
    // version.number and build_flavor (serverless or not).
    let root = shipper_call(&daemon, "GET", "/", None, false).await;
    assert_eq!(root.status, 200);
    let version = root.body["version"]["number"].as_str().unwrap().to_owned();
    let (major, minor) = {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    };
    // libbeat/outputs/elasticsearch/client.go (ErrTooOld): an
    // Elasticsearch of an older minor than the beat is refused by default.
    assert!((major, minor) >= (8, 19), "{version}");
    assert_ne!(root.body["version"]["build_flavor"], "serverless");

    // x-pack/libbeat/licenser/elastic_fetcher.go: `GET /_license?human=false`.
    let license = shipper_call(&daemon, "GET", "/_license?human=false", None, false).await;
    assert_eq!(license.status, 200);
    assert_eq!(license.body["license"]["status"], "active");
    assert!(license.body["license"]["type"].is_string());

    // libbeat/idxmgmt/lifecycle/es_client_handler.go (HasPolicy,
    // putPolicyToES): GET the policy — 200 is "exists", 404 "missing", any
    // other status an error — then PUT it, which must answer below 300.
    let policy = shipper_call(&daemon, "GET", "/_ilm/policy/filebeat", None, false).await;
    assert_eq!(policy.status, 404);
    let put_policy = shipper_call(
        &daemon,
        "PUT",
        "/_ilm/policy/filebeat",
        Some(r#"{"policy":{"phases":{"hot":{"actions":{"rollover":{"max_age":"30d"}}}}}}"#.into()),
        false,
    )
    .await;
    assert!(put_policy.status < 300, "{}", put_policy.body);

    // libbeat/template/load.go (Load): HEAD the index template (404:
    // missing), PUT it (at most 300), GET the data stream (404: missing),
    // PUT it (the client errs on 300 and above).
    let template_path = format!("/_index_template/{beat}");
    let exists = shipper_call(&daemon, "HEAD", &template_path, None, false).await;
    assert_eq!(exists.status, 404);
    let template = serde_json::json!({
        "index_patterns": [format!("{beat}")],
        "data_stream": {},
        "priority": 150,
        "template": {"settings": {"index": {"lifecycle": {"name": "filebeat"}}}},
    });
    let put_template = shipper_call(
        &daemon,
        "PUT",
        &template_path,
        Some(template.to_string()),
        false,
    )
    .await;
    assert!(put_template.status <= 300, "{}", put_template.body);
    let stream_path = format!("/_data_stream/{beat}");
    let stream = shipper_call(&daemon, "GET", &stream_path, None, false).await;
    assert_eq!(stream.status, 404);
    assert_eq!(stream.body["error"]["type"], "index_not_found_exception");
    let put_stream = shipper_call(&daemon, "PUT", &stream_path, None, false).await;
    assert!(put_stream.status < 300, "{}", put_stream.body);

    // libbeat/outputs/elasticsearch/client.go (bulkRequestParams,
    // createEventBulkMeta, bulkCollectPublishFails): `create` actions for
    // Elasticsearch 8, the answer filtered to errors and each item's status
    // and error; status 200, then every item below 300 is acknowledged.
    let messages = [
        "filebeatreplay one",
        "filebeatreplay two",
        "filebeatreplay three",
    ];
    let bulk = shipper_call(
        &daemon,
        "POST",
        "/_bulk?filter_path=errors,items.*.error,items.*.status",
        Some(bulk_body("create", beat, &messages)),
        false,
    )
    .await;
    assert_eq!(bulk.status, 200);
    assert_eq!(
        bulk.body,
        serde_json::json!({"errors": false, "items": [
            {"create": {"status": 201}}, {"create": {"status": 201}}, {"create": {"status": 201}},
        ]})
    );
    let stored = eventually(Duration::from_secs(10), || async {
        (found(&daemon, "filebeatreplay").await == 3).then_some(())
    })
    .await;
    assert!(
        stored.is_some(),
        "{} found",
        found(&daemon, "filebeatreplay").await
    );
}

/// Logstash 8's Elasticsearch output (logstash-output-elasticsearch 11),
/// request by request: its connection pool's checks, then the set-up of
/// both of its modes — data streams (the default against Elasticsearch 8
/// with ECS) and ILM with an index template — and its gzipped bulk
/// requests, whose documents must each arrive once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logstash_8_start_up_sequence_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;

    // lib/logstash/outputs/elasticsearch/http_client/pool.rb (healthcheck!):
    // `HEAD /` (healthcheck_path), then `GET /` (get_root_path): the
    // version's major, and for 7.14 and later the product header
    // (`elasticsearch?`), else "Could not connect to a compatible version".
    let head = shipper_call(&daemon, "HEAD", "/", None, false).await;
    assert_eq!(head.status, 200);
    let root = shipper_call(&daemon, "GET", "/", None, false).await;
    assert_eq!(root.status, 200);
    assert!(
        root.body["version"]["number"]
            .as_str()
            .unwrap()
            .starts_with("8.")
    );
    assert_eq!(root.product.as_deref(), Some("Elasticsearch"));

    // lib/logstash/outputs/elasticsearch/license_checker.rb: `GET /_license`,
    // whose license.status must be "active" (else a warning and no ILM).
    let license = shipper_call(&daemon, "GET", "/_license", None, false).await;
    assert_eq!(license.body["license"]["status"], "active");

    // Data-stream mode (data_stream_support.rb): no template, no ILM;
    // `create` into `logs-generic-default`, bulk path
    // `/_bulk?filter_path=errors,items.*.error,items.*.status`
    // (http_client.rb, bulk_send), body gzipped (compression_level 1).
    let stream_lines = ["logstashreplay stream one", "logstashreplay stream two"];
    let bulk = shipper_call(
        &daemon,
        "POST",
        "/_bulk?filter_path=errors,items.*.error,items.*.status",
        Some(bulk_body("create", "logs-generic-default", &stream_lines)),
        true,
    )
    .await;
    assert_eq!(bulk.status, 200);
    // common.rb (submit): `errors` false, and each item's status by action.
    assert_eq!(bulk.body["errors"], false, "{}", bulk.body);
    let items = bulk.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|item| item["create"]["status"] == 201));

    // ILM mode (ilm.rb, http_client.rb): `GET /_xpack` says ILM is
    // available and enabled; GET the policy (ilm_policy_exists? uses GET:
    // 404 is missing), PUT it; HEAD the rollover alias (200: exists, so no
    // `PUT /<logstash-{now/d}-000001>`); HEAD then PUT the index template
    // (template_manager.rb, `_index_template` for 8.x).
    let xpack = shipper_call(&daemon, "GET", "/_xpack", None, false).await;
    assert_eq!(xpack.body["features"]["ilm"]["available"], true);
    assert_eq!(xpack.body["features"]["ilm"]["enabled"], true);
    let policy = shipper_call(&daemon, "GET", "/_ilm/policy/logstash-policy", None, false).await;
    assert_eq!(policy.status, 404);
    assert_eq!(policy.body["error"]["type"], "resource_not_found_exception");
    let put_policy = shipper_call(
        &daemon,
        "PUT",
        "/_ilm/policy/logstash-policy",
        Some(
            r#"{"policy":{"phases":{"hot":{"actions":{"rollover":{"max_size":"50gb"}}}}}}"#.into(),
        ),
        false,
    )
    .await;
    assert_eq!(put_policy.status, 200);
    assert_eq!(put_policy.body["acknowledged"], true);
    let alias = shipper_call(&daemon, "HEAD", "/logstash", None, false).await;
    assert_eq!(alias.status, 200);
    let put_alias = shipper_call(
        &daemon,
        "PUT",
        "/%3Clogstash-%7Bnow%2Fd%7D-000001%3E",
        Some(r#"{"aliases":{"logstash":{"is_write_index":true}}}"#.into()),
        false,
    )
    .await;
    assert_eq!(put_alias.status, 200, "{}", put_alias.body);
    let template = shipper_call(
        &daemon,
        "HEAD",
        "/_index_template/ecs-logstash",
        None,
        false,
    )
    .await;
    assert_eq!(template.status, 404);
    let put_template = shipper_call(
        &daemon,
        "PUT",
        "/_index_template/ecs-logstash",
        Some(r#"{"index_patterns":"logstash-*","template":{"settings":{"index.lifecycle.name":"logstash-policy"}}}"#.into()),
        false,
    )
    .await;
    assert_eq!(put_template.status, 200);
    let index_lines = ["logstashreplay alias one"];
    let bulk = shipper_call(
        &daemon,
        "POST",
        "/_bulk?filter_path=errors,items.*.error,items.*.status",
        Some(bulk_body("index", "logstash", &index_lines)),
        true,
    )
    .await;
    assert_eq!(
        bulk.body,
        serde_json::json!({"errors": false, "items": [{"index": {"status": 201}}]})
    );

    // The OpenTelemetry Collector's exporter and Elastic Agent add
    // `require_data_stream=true`: every target is taken as a data stream.
    let otel = shipper_call(
        &daemon,
        "POST",
        "/_bulk?require_data_stream=true",
        Some(bulk_body(
            "create",
            "logs-generic.otel-default",
            &["logstashreplay otel"],
        )),
        false,
    )
    .await;
    assert_eq!(
        otel.body["items"][0]["create"]["status"], 201,
        "{}",
        otel.body
    );

    let stored = eventually(Duration::from_secs(10), || async {
        (found(&daemon, "logstashreplay").await == 4).then_some(())
    })
    .await;
    assert!(
        stored.is_some(),
        "{} found",
        found(&daemon, "logstashreplay").await
    );
}

/// Listing what Strand keeps none of answers Elasticsearch's empty shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_of_set_up_objects_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    for (path, expected) in [
        ("/_data_stream", serde_json::json!({"data_streams": []})),
        (
            "/_index_template",
            serde_json::json!({"index_templates": []}),
        ),
        ("/_ilm/policy", serde_json::json!({})),
        (
            "/_cluster/health?filter_path=status,number_of_nodes",
            serde_json::json!({"status": "green", "number_of_nodes": 1}),
        ),
    ] {
        let answer = shipper_call(&daemon, "GET", path, None, false).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.body, expected, "{path}");
    }
}
