//! Elasticsearch compatibility with a real client: the official Python
//! client (`elasticsearch` 9.x from PyPI, in the `target/py` venv that
//! scripts/test makes) runs info, cluster health, an index template and bulk
//! `create` into a data stream against Strand without refusing it as "not
//! Elasticsearch", and the documents are found through `/api/logs` with the
//! Elastic Common Schema fields mapped. Malformed and unsupported calls get
//! Elasticsearch's error shape and product header.

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
