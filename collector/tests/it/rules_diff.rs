//! Differential test of rule evaluation against a real Prometheus (Debian's
//! 2.42): the same rule file, at the same path, and the same remote-written
//! samples go to both; afterwards the recorded series, `ALERTS` and
//! `ALERTS_FOR_STATE` must agree sample for sample — the same evaluation
//! timestamps (both evaluate on the grid the group's hash offsets), the same
//! values, the same states per evaluation and the same staleness.
//!
//! Samples are written two seconds ahead of the clock, so each evaluation
//! finds every sample at or before its timestamp already stored on both
//! sides, whatever the scheduling.

use std::time::Duration;

use serde_json::Value;
use strand_testkit::Strand;

use crate::support::now_ms;
use crate::support::prometheus::Prometheus;
use crate::support::remote_write::{TimeSeries, body, request, series};

const RULES: &str = r#"
groups:
  - name: diff
    interval: 2s
    rules:
      - record: diff:requests:rate10s
        expr: sum by (job) (rate(diff_requests_total[10s]))
      - record: diff:gauge:doubled
        expr: diff_gauge * 2
        labels:
          source: rule
      - alert: GaugeHigh
        expr: diff_gauge > 5
        for: 4s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.instance }} at {{ $value }}"
      - alert: RateHigh
        expr: diff:requests:rate10s > 1
      - alert: Flapping
        expr: diff_flap > 0
        keep_firing_for: 4s
"#;

/// How long samples are written for, and how far ahead of the clock.
const RUN_MS: i64 = 30_000;
const AHEAD_MS: i64 = 2_000;
const SAMPLE_EVERY_MS: i64 = 500;

/// The samples at `t` ms after the start: counters of two jobs, a gauge
/// that goes above 5 between 8 s and 20 s on one instance and stops
/// (with a staleness marker) at 14 s on the other, and a series that
/// exists only from 10 s to 12 s.
fn samples_at(start: i64, t: i64) -> Vec<TimeSeries> {
    let at = start + t;
    let seconds = t as f64 / 1000.0;
    let mut all = vec![
        series(
            "diff_requests_total",
            &[("job", "a")],
            &[(at, 2.0 * seconds)],
        ),
        series(
            "diff_requests_total",
            &[("job", "b")],
            &[(at, 0.5 * seconds)],
        ),
        series(
            "diff_gauge",
            &[("instance", "x")],
            &[(
                at,
                if (8_000..20_000).contains(&t) {
                    10.0
                } else {
                    1.0
                },
            )],
        ),
    ];
    match t {
        ..14_000 => all.push(series("diff_gauge", &[("instance", "y")], &[(at, 3.0)])),
        14_000 => all.push(series(
            "diff_gauge",
            &[("instance", "y")],
            &[(at, f64::from_bits(0x7ff0_0000_0000_0002))],
        )),
        _ => {}
    }
    if (10_000..12_000).contains(&t) {
        all.push(series("diff_flap", &[], &[(at, 1.0)]));
    }
    all
}

async fn remote_write(client: &reqwest::Client, url: &str, series: Vec<TimeSeries>) {
    let response = client
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body(&request(series)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("remote write to {url}: {e}"));
    let status = response.status();
    assert!(
        status.is_success(),
        "{url}: {status} {}",
        response.text().await.unwrap_or_default()
    );
}

async fn query(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    params: &[(&str, String)],
) -> Value {
    let response = client
        .get(format!("{base}{path}"))
        .query(params)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{base}{path}: {e}"));
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["status"], "success", "{base}{path} {params:?}: {body}");
    body["data"]["result"].clone()
}

/// A result as sorted `labels -> points` (milliseconds, value).
fn normalised(result: &Value) -> Vec<(String, Vec<(i64, f64)>)> {
    let mut series: Vec<_> = result
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s["metric"].to_string();
            let points = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let seconds = p[0].as_f64().unwrap();
                    let value: f64 = p[1].as_str().unwrap().parse().unwrap();
                    ((seconds * 1000.0).round() as i64, value)
                })
                .collect();
            (labels, points)
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series
}

/// Equal series, timestamps and values — within 1e-9 relative, as the
/// PromQL differential test allows for summation order.
fn agree(a: &[(String, Vec<(i64, f64)>)], b: &[(String, Vec<(i64, f64)>)]) -> bool {
    let close = |x: f64, y: f64| x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs());
    a.len() == b.len()
        && a.iter().zip(b).all(|((la, pa), (lb, pb))| {
            la == lb
                && pa.len() == pb.len()
                && pa
                    .iter()
                    .zip(pb)
                    .all(|((ta, va), (tb, vb))| ta == tb && close(*va, *vb))
        })
}

#[tokio::test]
async fn rules_evaluate_as_prometheus_evaluates_them() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let rules = rules.display().to_string();
    let prometheus = Prometheus::start(&format!(
        "global:\n  evaluation_interval: 2s\nrule_files:\n  - {rules}\n"
    ))
    .await;
    let strand = Strand::start(&dir.path().join("data"), &["--rules", &rules]).await;
    let client = reqwest::Client::new();
    let targets = [
        format!("{}/api/v1/write", prometheus.url),
        strand.url("/api/v1/write"),
    ];

    // Both restore their (empty) `for` state after their second evaluation;
    // the data starts after that, so every alert series is written by both.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let start = (now_ms() / 1000 + 1) * 1000;
    let mut next = 0;
    while next <= RUN_MS {
        let due_by = start + next - AHEAD_MS;
        let wait = due_by - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        for target in &targets {
            remote_write(&client, target, samples_at(start, next)).await;
        }
        next += SAMPLE_EVERY_MS;
    }
    // Let the last evaluations of the run happen on both.
    let end = start + RUN_MS;
    tokio::time::sleep(Duration::from_millis(
        (end - now_ms()).max(0) as u64 + 3_000,
    ))
    .await;

    let range = [
        ("start", format!("{}", (start - 4_000) as f64 / 1000.0)),
        ("end", format!("{}", end as f64 / 1000.0)),
        ("step", "1".to_owned()),
    ];
    let seconds = (end - start) / 1000 + 4;
    let mut mismatches = Vec::new();
    for expr in [
        "diff:requests:rate10s",
        "diff:gauge:doubled",
        "ALERTS",
        "ALERTS_FOR_STATE",
    ] {
        let raw = [
            ("query", format!("{expr}[{seconds}s]")),
            ("time", range[1].1.clone()),
        ];
        let mut with_query = range.to_vec();
        with_query.push(("query", expr.to_owned()));
        for (path, params) in [
            ("/api/v1/query", raw.to_vec()),
            ("/api/v1/query_range", with_query),
        ] {
            let expected = normalised(&query(&client, &prometheus.url, path, &params).await);
            let got = normalised(&query(&client, &strand.url(""), path, &params).await);
            assert!(
                !expected.is_empty(),
                "Prometheus recorded nothing for {expr}:\n{}",
                prometheus.log()
            );
            if !agree(&expected, &got) {
                mismatches.push(format!(
                    "{path} {expr}:\n  prometheus: {expected:?}\n  strand:     {got:?}"
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\nstrand log:\n{}",
        mismatches.join("\n"),
        strand.log()
    );

    // The states Prometheus went through are the ones this test scripted.
    let alerts = normalised(
        &query(
            &client,
            &prometheus.url,
            "/api/v1/query",
            &[
                ("query", format!("ALERTS[{seconds}s]")),
                ("time", range[1].1.clone()),
            ],
        )
        .await,
    );
    let states: Vec<&str> = alerts
        .iter()
        .map(|(labels, _)| {
            if labels.contains("\"firing\"") {
                "firing"
            } else {
                "pending"
            }
        })
        .collect();
    assert!(
        states.contains(&"firing") && states.contains(&"pending"),
        "{alerts:?}"
    );
    strand.stop().await;
}
