//! Limits on what one query may cost: a PromQL query over its time budget
//! is answered 503 `timeout` within the budget, one holding too many
//! samples or selecting too many series 422 `execution`, and metadata
//! lists are cut at the series limit with a warning; beyond the query
//! threads and their queue,
//! queries (of every query API) are refused at once with 503 and
//! `Retry-After`, but a trace by id, which has threads of its own, is
//! answered; and while the
//! query threads are all busy with expensive queries, ingest is still
//! acknowledged.

use std::time::{Duration, Instant};

use serde_json::Value;
use strand_testkit::Strand;

use crate::support::now_ms;
use crate::support::remote_write as rw;

/// A subquery of 31 billion empty steps: runs until its budget is spent,
/// holding no samples.
const ENDLESS: &str = "count_over_time((vector(1) > 2)[1y:1ms])";

async fn query(
    client: &reqwest::Client,
    daemon: &Strand,
    promql: &str,
) -> (u16, Option<String>, Value) {
    let response = client
        .post(daemon.url("/api/v1/query"))
        .form(&[("query", promql)])
        .send()
        .await
        .expect("the daemon answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_and_sample_limits_answer_with_prometheus_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(
        &dir.path().join("data"),
        &["--query-timeout", "1s", "--query-max-samples", "1000"],
    )
    .await;
    let client = reqwest::Client::new();

    let started = Instant::now();
    let (status, retry_after, body) = query(&client, &daemon, ENDLESS).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorType"], "timeout", "{body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    // One that finds little is answered on the async worker all the same.
    let (status, _, body) = query(&client, &daemon, "vector(1) + absent(nothing_here)").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["result"][0]["value"][1], "2", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout took {:?}",
        started.elapsed()
    );

    // 2,000 samples in range, 1,000 allowed.
    let end = now_ms() / 1000 * 1000;
    let samples: Vec<(i64, f64)> = (0..2000)
        .map(|i| (end - (2000 - i) * 100, i as f64))
        .collect();
    rw::write_ok(
        &daemon,
        &rw::request(vec![rw::series("dense", &[("job", "a")], &samples)]),
    )
    .await;
    let (status, _, body) = query(&client, &daemon, "count_over_time(dense[5m])").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errorType"], "execution", "{body}");
    let (status, _, body) = query(&client, &daemon, "count_over_time(dense[50s])").await;
    assert_eq!(status, 200, "within the limit: {body}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_query_threads_refuse_more_and_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(
        &dir.path().join("data"),
        &[
            "--query-timeout",
            "3s",
            "--query-workers",
            "2",
            "--query-queue",
            "2",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    // A trace to look up while the query threads are busy.
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let start = (now_ms() as u64 - 60_000) * 1_000_000;
    let span = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "lookup"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": trace_id, "spanId": "eee19b7ec3c1b174", "name": "get",
            "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 1000).to_string()
        }]}]
    }]});
    let sent = client
        .post(daemon.otlp_http_url("/v1/traces"))
        .json(&span)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    // Two running, two queued (one at a time, so that each thread has
    // taken its query before the next arrives).
    let mut expensive = Vec::new();
    for _ in 0..4 {
        let request = client
            .post(daemon.url("/api/v1/query"))
            .form(&[("query", ENDLESS)]);
        expensive.push(tokio::spawn(async move {
            request.send().await.unwrap().status().as_u16()
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A query whose selector the index cannot bound without looking at
    // every series needs a query thread: refused.
    let (status, retry_after, body) =
        query(&client, &daemon, r#"count({__name__=~"ingest.*"})"#).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorType"], "unavailable", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("too many queries"),
        "{body}"
    );
    assert!(retry_after.is_some(), "503 without Retry-After");
    let (status, body) = daemon.get_json_query("/api/logs", &[("q", "x")]).await;
    assert_eq!(status, 503, "logs share the query threads: {body}");
    let tempo = client
        .get(daemon.url("/api/search?q=%7B%7D"))
        .send()
        .await
        .unwrap();
    assert_eq!(tempo.status(), 503, "so does Tempo's search");
    assert!(tempo.headers().contains_key("retry-after"));
    let (status, body) = daemon
        .get_json_query(
            "/api/v3/traces",
            &[
                ("query.start_time_min", "2026-01-01T00:00:00Z"),
                ("query.start_time_max", "2026-01-01T01:00:00Z"),
            ],
        )
        .await;
    assert_eq!(status, 503, "and Jaeger's v3 search: {body}");
    assert_eq!(body["error"]["httpCode"], 503, "{body}");
    // A trace by id has lookup threads of its own: answered all the same.
    let (status, body) = daemon.get_json(&format!("/api/traces/{trace_id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"][0]["spans"][0]["operationName"], "get",
        "{body}"
    );
    for path in [
        format!("/api/v3/traces/{trace_id}"),
        format!("/api/v2/traces/{trace_id}"),
    ] {
        let (status, body) = daemon.get_json(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    // Meanwhile every ingest request is acknowledged.
    let base = now_ms() - 60_000;
    for i in 0..20 {
        let sample = (base + i * 1000, i as f64);
        let request = rw::request(vec![rw::series("ingest_during_queries", &[], &[sample])]);
        rw::write_ok(&daemon, &request).await;
    }
    for handle in expensive {
        assert_eq!(handle.await.unwrap(), 503, "the expensive queries time out");
    }
    // And the threads are free again, once the timed-out queries have
    // stopped at their deadline and the queued ones were skipped.
    let body = strand_testkit::eventually(strand_testkit::DEADLINE, || async {
        let (status, _, body) = query(
            &client,
            &daemon,
            "count_over_time(ingest_during_queries[5m])",
        )
        .await;
        (status == 200).then_some(body)
    })
    .await
    .expect("the query threads stayed busy");
    assert_eq!(body["data"]["result"][0]["value"][1], "20", "{body}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_limits_refuse_wide_selectors_and_cut_metadata_lists_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &["--query-max-series", "5"]).await;
    let client = reqwest::Client::new();
    let now = now_ms();
    let series: Vec<_> = (0..10)
        .map(|i| rw::series("wide", &[("i", &i.to_string())], &[(now - 1000, 1.0)]))
        .collect();
    rw::write_ok(&daemon, &rw::request(series)).await;

    // A selector over the limit is refused before any sample is read.
    let (status, _, body) = query(&client, &daemon, "sum(wide)").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errorType"], "execution", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--query-max-series"),
        "{body}"
    );
    let (status, _, body) = query(&client, &daemon, r#"sum(wide{i=~"[0-4]"})"#).await;
    assert_eq!(status, 200, "five series are within the limit: {body}");
    assert_eq!(body["data"]["result"][0]["value"][1], "5");

    // Metadata answers are cut at the limit, or at the request's own
    // `limit`, and say so.
    for (path, params, listed, warning) in [
        (
            "/api/v1/series",
            vec![("match[]", "wide")],
            5,
            "--query-max-series",
        ),
        (
            "/api/v1/series",
            vec![("match[]", "wide"), ("limit", "3")],
            3,
            "results truncated due to limit",
        ),
        ("/api/v1/label/i/values", vec![], 5, "--query-max-series"),
        (
            "/api/v1/label/i/values",
            vec![("limit", "2")],
            2,
            "results truncated due to limit",
        ),
    ] {
        let (status, body) = daemon.get_json_query(path, &params).await;
        assert_eq!(status, 200, "{path} {params:?}: {body}");
        assert_eq!(body["data"].as_array().unwrap().len(), listed, "{body}");
        assert!(
            body["warnings"][0].as_str().unwrap().contains(warning),
            "{path} {params:?}: {body}"
        );
    }
    let (status, body) = daemon
        .get_json_query("/api/v1/series", &[("match[]", r#"wide{i="1"}"#)])
        .await;
    assert_eq!(status, 200);
    assert!(body.get("warnings").is_none(), "nothing was cut: {body}");
    let (status, body) = daemon
        .get_json_query("/api/v1/labels", &[("limit", "x")])
        .await;
    assert_eq!(status, 400, "{body}");
    daemon.stop().await;
}
