//! On-disk formats across releases: a data directory written by the
//! previous release (`fixtures/data-dir-v1.tar.gz`, made by
//! `fixtures/make-data-dir-v1.sh` with Strand 0.1.0) opens with this code,
//! its WAL tail replays, and every query answers with its known content.

use std::process::Command;

use serde_json::Value;
use strand_testkit::{Strand, require_tool};

use crate::support::{STRAND_BINARY, prom};

/// 2026-12-01T12:00:00Z and a minute later: the fixture's two batches, the
/// first in the stores, the second only in the WAL.
const FIRST_S: f64 = 1_796_126_400.0;
const SECOND_S: f64 = 1_796_126_460.0;

/// The names of a Jaeger trace's spans, sorted, and whether one has the error tag.
fn span_names(trace: &Value) -> (Vec<String>, bool) {
    let spans = trace["data"][0]["spans"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut names: Vec<String> = spans
        .iter()
        .map(|s| s["operationName"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    let error = spans.iter().any(|s| {
        s["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["key"] == "error" && t["value"] == true)
    });
    (names, error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_the_previous_release_opens() {
    let tar = require_tool("tar", "apt-get install tar");
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/fixtures/data-dir-v1.tar.gz"
    );
    let status = Command::new(tar)
        .args(["-xzf", fixture, "-C"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "tar -xzf {fixture}: {status}");
    let data = dir.path().join("data");
    // The fixture's data is old: nothing may expire while it is read.
    let keep = [
        "--trace-retention",
        "36500d",
        "--log-retention",
        "36500d",
        "--metric-retention",
        "36500d",
        "--self-scrape-interval",
        "0s",
    ];
    let daemon = Strand::spawn(STRAND_BINARY, &data, &keep).await;

    for batch in 1..=2 {
        let (status, trace) = daemon
            .get_json(&format!(
                "/api/traces/f1c7000000000000000000000000000{batch}"
            ))
            .await;
        assert_eq!(status, 200, "batch {batch}: {trace}");
        assert_eq!(
            span_names(&trace),
            (
                vec![
                    "GET /order/1".replace('1', &batch.to_string()),
                    "charge".into()
                ],
                true
            ),
            "batch {batch}: {trace}"
        );
    }
    let (_, services) = daemon.get_json("/api/services").await;
    assert_eq!(services["data"], serde_json::json!(["fixture-shop"]));

    let (status, page) = daemon
        .get_json_query("/api/logs", &[("q", "fixture"), ("start", "0")])
        .await;
    assert_eq!(status, 200, "{page}");
    let mut bodies: Vec<&str> = page["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    bodies.sort_unstable();
    assert_eq!(
        bodies,
        [
            "fixture batch 1 order received",
            "fixture batch 1 payment failed",
            "fixture batch 2 order received",
            "fixture batch 2 payment failed",
        ]
    );

    for (query, at, want) in [
        ("fixture_orders_total", FIRST_S, 10.0),
        ("fixture_orders_total", SECOND_S, 20.0),
        ("fixture_jobs_total", FIRST_S, 3.0),
        // 0.1.0 kept delta totals in memory: its restart between the
        // batches reset this one (3, then 4 alone).
        ("fixture_jobs_total", SECOND_S, 4.0),
    ] {
        let got = prom::instant_vector(&daemon, query, Some(at)).await;
        assert_eq!(got.len(), 1, "{query} at {at}: {got:?}");
        assert_eq!(got[0].1, want, "{query} at {at}");
    }

    // This release resumes a delta total from the stored series.
    let third_ns = (SECOND_S as u64 + 60) * 1_000_000_000;
    let delta = format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[
            {{"key":"service.name","value":{{"stringValue":"fixture-shop"}}}}]}},
          "scopeMetrics":[{{"metrics":[{{"name":"fixture.jobs","sum":{{
            "aggregationTemporality":1,"isMonotonic":true,"dataPoints":[
            {{"timeUnixNano":"{third_ns}","asInt":"5"}}]}}}}]}}]}}]}}"#
    );
    let response = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/metrics"))
        .header("Content-Type", "application/json")
        .body(delta)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    let got = prom::instant_vector(&daemon, "fixture_jobs_total", Some(SECOND_S + 60.0)).await;
    assert_eq!(got[0].1, 9.0, "{got:?}");

    let (status, dashboard) = daemon.get_json("/api/dashboards/fixture").await;
    assert_eq!(status, 200, "{dashboard}");
    assert_eq!(dashboard["title"], "Fixture");

    // Opened, the stores without a version of their own now record the
    // one they are in: metrics version 2, of which version 1 (Gorilla
    // chunks only) is one; logs version 2, of which a version 1 directory
    // (one partition per hour) is one.
    for (store, version) in [("metrics", "2\n"), ("logs", "2\n")] {
        assert_eq!(
            std::fs::read_to_string(data.join(store).join("FORMAT")).unwrap(),
            version,
            "{store}"
        );
    }
    let log = daemon.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
