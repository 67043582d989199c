//! Rules in a running daemon: recording rules write series, alerting rules
//! go pending and firing and write `ALERTS`, the Prometheus rules and
//! alerts APIs show them, `POST /-/reload` swaps the files (a bad file
//! keeps the old rules and says why), and a `for` state survives a restart.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use strand_testkit::{Strand, eventually};

use crate::support::now_ms;
use crate::support::remote_write::{body, request, series};

const RULES: &str = r#"
groups:
  - name: shop
    interval: 1s
    rules:
      - record: job:test_up:sum
        expr: sum by (job) (test_up)
      - alert: TestDown
        expr: test_up == 0
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.job }} is down ({{ $value }})"
"#;

/// Writes `test_up` for jobs `a` (0) and `b` (1) every 500 ms while the
/// returned task runs.
pub(crate) fn keep_writing(daemon: &Strand) -> tokio::task::JoinHandle<()> {
    let url = daemon.url("/api/v1/write");
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let now = now_ms();
            let request = request(vec![
                series("test_up", &[("job", "a")], &[(now, 0.0)]),
                series("test_up", &[("job", "b")], &[(now, 1.0)]),
            ]);
            let response = client
                .post(&url)
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .body(body(&request))
                .send()
                .await
                .expect("remote write");
            assert_eq!(response.status(), 204);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

async fn post(daemon: &Strand, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(daemon.url(path))
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

pub(crate) fn write_rules(dir: &Path, text: &str) -> String {
    let path = dir.join("rules.yml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Every alert, once one fires.
pub(crate) async fn firing(daemon: &Strand) -> Option<Vec<Value>> {
    let (_, body) = daemon.get_json("/api/v1/alerts").await;
    let alerts = body["data"]["alerts"].as_array()?.clone();
    alerts
        .iter()
        .any(|a| a["state"] == "firing")
        .then_some(alerts)
}

#[tokio::test]
async fn recording_and_alerting_rules_run_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), RULES);
    let daemon = Strand::start(&dir.path().join("data"), &["--rules", &rules]).await;
    let writer = keep_writing(&daemon);

    let alerts = eventually(Duration::from_secs(20), || firing(&daemon))
        .await
        .unwrap_or_else(|| panic!("no firing alert:\n{}", daemon.log()));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["labels"]["alertname"], "TestDown");
    assert_eq!(alert["labels"]["job"], "a");
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["annotations"]["summary"], "a is down (0)");
    assert_eq!(alert["value"], "0e+00");

    let recorded = eventually(Duration::from_secs(10), || async {
        let (_, body) = daemon
            .get_json_query("/api/v1/query", &[("query", "job:test_up:sum")])
            .await;
        let result = body["data"]["result"].as_array()?.clone();
        (result.len() == 2).then_some(result)
    })
    .await
    .expect("the recorded series");
    let mut jobs: Vec<_> = recorded
        .iter()
        .map(|s| {
            (
                s["metric"]["job"].as_str().unwrap().to_owned(),
                s["value"][1].clone(),
            )
        })
        .collect();
    jobs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(jobs, [("a".into(), "0".into()), ("b".into(), "1".into())]);

    let alerts_series = eventually(Duration::from_secs(10), || async {
        let (_, body) = daemon
            .get_json_query(
                "/api/v1/query",
                &[("query", "ALERTS{alertname=\"TestDown\"}")],
            )
            .await;
        let result = body["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then_some(result)
    })
    .await
    .expect("ALERTS written");
    assert_eq!(alerts_series[0]["metric"]["alertstate"], "firing");

    let (status, body) = daemon.get_json("/api/v1/rules").await;
    assert_eq!(status, 200);
    let group = &body["data"]["groups"][0];
    assert_eq!(group["name"], "shop");
    assert_eq!(group["file"], rules);
    assert_eq!(group["interval"], 1.0);
    let kinds: Vec<_> = group["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["type"].as_str().unwrap(), r["health"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("recording", "ok"), ("alerting", "ok")]);
    assert_eq!(group["rules"][1]["state"], "firing");
    let (_, only_alerts) = daemon
        .get_json_query("/api/v1/rules", &[("type", "alert")])
        .await;
    assert_eq!(
        only_alerts["data"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (status, bad) = daemon
        .get_json_query("/api/v1/rules", &[("type", "x")])
        .await;
    assert_eq!(status, 400);
    assert_eq!(bad["errorType"], "bad_data");

    // A file that does not parse: refused with the line, old rules stay.
    write_rules(dir.path(), &RULES.replace("test_up == 0", "test_up =="));
    let (status, text) = post(&daemon, "/-/reload").await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("rules.yml:") && text.contains("could not parse expression"),
        "{text}"
    );
    let (_, body) = daemon.get_json("/api/v1/rules").await;
    assert_eq!(
        body["data"]["groups"][0]["rules"].as_array().unwrap().len(),
        2
    );
    assert!(
        daemon
            .self_metrics()
            .await
            .contains("strand_rule_reloads_total{outcome=\"failure\"} 1")
    );

    // A good file: the new rule appears and the alert keeps its state.
    let active_at = alert["activeAt"].clone();
    write_rules(
        dir.path(),
        &format!("{RULES}      - record: test_up:count\n        expr: count(test_up)\n"),
    );
    let (status, text) = post(&daemon, "/-/reload").await;
    assert_eq!(status, 200, "{text}");
    let (_, body) = daemon.get_json("/api/v1/rules").await;
    let names: Vec<_> = body["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["job:test_up:sum", "TestDown", "test_up:count"]);
    let alerts = firing(&daemon)
        .await
        .expect("still firing after the reload");
    assert_eq!(alerts[0]["activeAt"], active_at);

    writer.abort();
    daemon.stop().await;
}

/// The active-since time (seconds) the newest `ALERTS_FOR_STATE` sample
/// holds, if that sample was written at `written_from` (seconds) or later.
async fn for_state_since(daemon: &Strand, written_from: i64) -> Option<i64> {
    let (_, body) = daemon
        .get_json_query("/api/v1/query", &[("query", "ALERTS_FOR_STATE")])
        .await;
    let sample = &body["data"]["result"][0]["value"];
    let written_at = sample[0].as_f64()? as i64;
    let since = sample[1].as_str()?.parse::<f64>().ok()? as i64;
    (written_at >= written_from).then_some(since)
}

#[tokio::test]
async fn a_pending_alert_keeps_its_for_state_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        &RULES
            .replace("test_up == 0", "test_up{job=\"a\"} == 0")
            .replace(
                "        labels:\n          severity: page\n",
                "        for: 1h\n",
            ),
    );
    let args = ["--rules", rules.as_str(), "--rules-for-grace-period", "1s"];
    let data = dir.path().join("data");
    let daemon = Strand::start(&data, &args).await;
    let writer = keep_writing(&daemon);
    let pending_since = eventually(Duration::from_secs(20), || for_state_since(&daemon, 0))
        .await
        .unwrap_or_else(|| panic!("no ALERTS_FOR_STATE:\n{}", daemon.log()));
    writer.abort();
    daemon.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let daemon = Strand::start(&data, &args).await;
    let stopped_for = now_ms() / 1000;
    let writer = keep_writing(&daemon);
    // After two evaluations the state is restored: active since before the
    // restart (shifted by the downtime), not since the restart.
    let restored = eventually(Duration::from_secs(20), || {
        for_state_since(&daemon, stopped_for)
    })
    .await
    .unwrap_or_else(|| panic!("no ALERTS_FOR_STATE after the restart:\n{}", daemon.log()));
    assert!(
        restored < stopped_for - 1,
        "active since {restored}, restarted at {stopped_for}, first pending at {pending_since}"
    );
    assert!(restored >= pending_since, "{restored} < {pending_since}");
    writer.abort();
    daemon.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_rule_files_of_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), RULES);
    let daemon = Strand::spawn(
        env!("CARGO_BIN_EXE_strand"),
        &dir.path().join("data"),
        &["--rules", &rules],
    )
    .await;
    let rule_names = || async {
        let (_, body) = daemon.get_json("/api/v1/rules").await;
        body["data"]["groups"][0]["rules"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| r["name"].as_str().unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert_eq!(rule_names().await, ["job:test_up:sum", "TestDown"]);
    write_rules(
        dir.path(),
        &RULES.replace("job:test_up:sum", "job:test_up:total"),
    );
    daemon.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), || async {
        (rule_names().await == ["job:test_up:total", "TestDown"]).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("SIGHUP did not reload the rules:\n{}", daemon.log()));
    assert!(daemon.log().contains("RulesReloaded"), "{}", daemon.log());
    daemon.stop().await;
}
