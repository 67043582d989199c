//! End to end: the dashboards API. Dashboards are saved under the data
//! directory and survive a restart; the built-in `shop` dashboard is listed
//! and read-only; bad ids, bodies and queries are refused with a message
//! naming the problem and leave what is stored alone.

use serde_json::{Value, json};
use strand_testkit::Strand;

/// A request's status and body (JSON when it is JSON).
pub(crate) async fn call(
    daemon: &Strand,
    method: &str,
    path: &str,
    body: Option<String>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), daemon.url(path));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.expect("daemon answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

pub(crate) async fn put(daemon: &Strand, id: &str, body: &Value) -> (u16, Value) {
    call(
        daemon,
        "PUT",
        &format!("/api/dashboards/{id}"),
        Some(body.to_string()),
    )
    .await
}

pub(crate) async fn ids(daemon: &Strand) -> Vec<String> {
    let (status, body) = daemon.get_json("/api/dashboards").await;
    assert_eq!(status, 200, "{body}");
    body["dashboards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

fn latency() -> Value {
    json!({
        "title": "Latency",
        "panels": [{
            "title": "p95",
            "query": "histogram_quantile(0.95, sum by (le) (rate(traces_span_metrics_duration_seconds_bucket[5m])))",
            "unit": "seconds"
        }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_round_trip_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::start(&data, &[]).await;

    // The built-in dashboard is listed first and reads as a dashboard.
    let (status, list) = daemon.get_json("/api/dashboards").await;
    assert_eq!(status, 200);
    assert_eq!(
        list["dashboards"][0],
        json!({"id": "shop", "title": "Shop", "panels": 5, "builtIn": true})
    );
    let (status, shop) = daemon.get_json("/api/dashboards/shop").await;
    assert_eq!(status, 200);
    let queries: Vec<&str> = shop["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["query"].as_str().unwrap())
        .collect();
    assert!(
        queries.iter().all(|q| q.contains("service_name")),
        "{queries:?}"
    );
    // Its queries run, with its variable and the rate window as the UI
    // fills them in.
    assert_eq!(shop["variables"][0]["name"], "service");
    for query in queries {
        let query = query
            .replace("$service", "gateway|order")
            .replace("$__rate_interval", "1m");
        let (status, body) = daemon
            .get_json(&format!(
                "/api/v1/query_range?query={}&start=0&end=600&step=15",
                strand_testkit::urlencode(&query)
            ))
            .await;
        assert_eq!(status, 200, "{query}: {body}");
    }

    // Create, read, replace.
    let (status, stored) = put(&daemon, "latency", &latency()).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["title"], "Latency");
    let (status, read) = daemon.get_json("/api/dashboards/latency").await;
    assert_eq!((status, &read), (200, &stored));
    let mut renamed = latency();
    renamed["title"] = json!("Latency (p95)");
    let (status, _) = put(&daemon, "latency", &renamed).await;
    assert_eq!(status, 200);
    // Export is the GET's body as it is; importing it under another id works.
    let exported = reqwest::get(daemon.url("/api/dashboards/latency"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (status, _) = call(
        &daemon,
        "PUT",
        "/api/dashboards/latency-copy",
        Some(exported.clone()),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(ids(&daemon).await, ["shop", "latency", "latency-copy"]);

    // Delete.
    let (status, _) = call(&daemon, "DELETE", "/api/dashboards/latency-copy", None).await;
    assert_eq!(status, 204);
    let (status, body) = daemon.get_json("/api/dashboards/latency-copy").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("latency-copy"));
    let (status, _) = call(&daemon, "DELETE", "/api/dashboards/latency-copy", None).await;
    assert_eq!(status, 404);

    // A restart on the same data directory keeps them.
    daemon.stop().await;
    let daemon = Strand::start(&data, &[]).await;
    assert_eq!(ids(&daemon).await, ["shop", "latency"]);
    let after = reqwest::get(daemon.url("/api/dashboards/latency"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(after, exported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_reasons_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let (status, _) = put(&daemon, "keep", &latency()).await;
    assert_eq!(status, 201);
    let before = daemon.get_json("/api/dashboards/keep").await.1;

    let with_query = |query: &str| {
        let mut body = latency();
        body["panels"][0]["query"] = json!(query);
        body
    };
    let long_id = "x".repeat(65);
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        // Ids are slugs: no path can be formed from one.
        (
            "Bad%20Id",
            Some(latency().to_string()),
            400,
            "invalid dashboard id",
        ),
        (
            "a.json",
            Some(latency().to_string()),
            400,
            "invalid dashboard id",
        ),
        (
            &long_id,
            Some(latency().to_string()),
            400,
            "invalid dashboard id",
        ),
        // Malformed JSON and wrong shapes.
        ("keep", Some("{\"title\": ".into()), 400, "not a dashboard"),
        ("keep", Some("[]".into()), 400, "not a dashboard"),
        (
            "keep",
            Some(json!({"title": "t"}).to_string()),
            400,
            "panels",
        ),
        (
            "keep",
            Some(json!({"title": "t", "panels": [], "colour": "red"}).to_string()),
            400,
            "colour",
        ),
        (
            "keep",
            Some(json!({"title": "", "panels": []}).to_string()),
            400,
            "title",
        ),
        // Queries must parse and be graphable.
        (
            "keep",
            Some(with_query("sum(rate(x[5m])").to_string()),
            400,
            "panels[0].query",
        ),
        (
            "keep",
            Some(with_query("x[5m]").to_string()),
            400,
            "range vector",
        ),
        // Limits.
        (
            "keep",
            Some(json!({"title": "t", "panels": vec![json!({"query": "up"}); 51]}).to_string()),
            400,
            "at most 50",
        ),
        (
            "keep",
            Some(json!({"title": "x".repeat(300 * 1024), "panels": []}).to_string()),
            413,
            "larger than",
        ),
        // The built-in dashboard is read-only.
        ("shop", Some(latency().to_string()), 403, "read-only"),
    ];
    for (id, body, expected, message) in cases {
        let (status, answer) = call(&daemon, "PUT", &format!("/api/dashboards/{id}"), body).await;
        let text = answer["error"].as_str().unwrap_or_default();
        assert_eq!(status, expected, "PUT {id}: {answer}");
        assert!(
            text.contains(message),
            "PUT {id}: {text:?} lacks {message:?}"
        );
    }
    let (status, answer) = call(&daemon, "DELETE", "/api/dashboards/shop", None).await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = daemon.get_json("/api/dashboards/nope").await;
    assert_eq!(status, 404, "{answer}");
    let (status, _) = daemon.get_json("/api/dashboards/..%2Fetc").await;
    assert_eq!(status, 400);

    // Nothing changed.
    assert_eq!(ids(&daemon).await, ["shop", "keep"]);
    assert_eq!(daemon.get_json("/api/dashboards/keep").await.1, before);
    let files: Vec<String> = std::fs::read_dir(dir.path().join("data/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["keep.json"]);
}
