//! The Prometheus HTTP API (`/api/v1/...`) as a client reads it: requests with
//! URL-encoded parameters, and answers turned into plain Rust values.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use strand_testkit::{Strand, eventually};

/// A series' labels, `__name__` included.
pub type Labels = BTreeMap<String, String>;

/// GET `path` and insist on a successful answer; returns `data`.
pub async fn get_ok(daemon: &Strand, path: &str, params: &[(&str, &str)]) -> Value {
    let (status, body) = daemon.get_json_query(path, params).await;
    assert!(
        status == 200 && body["status"] == "success",
        "GET {path} {params:?}: HTTP {status}: {body}"
    );
    body["data"].clone()
}

pub fn labels(metric: &Value) -> Labels {
    metric
        .as_object()
        .unwrap_or_else(|| panic!("not a label set: {metric}"))
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_string()))
        .collect()
}

/// `[<seconds>, "<value>"]` as (milliseconds, value).
fn point(pair: &Value) -> (i64, f64) {
    let t = pair[0]
        .as_f64()
        .unwrap_or_else(|| panic!("bad point {pair}"));
    let v = pair[1]
        .as_str()
        .unwrap_or_else(|| panic!("bad point {pair}"));
    let v = v
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("bad value in {pair}"));
    ((t * 1000.0).round() as i64, v)
}

/// An instant query's vector, sorted by labels. Time is in seconds; `None`: now.
pub async fn instant_vector(daemon: &Strand, query: &str, time: Option<f64>) -> Vec<(Labels, f64)> {
    let time = time.map(|t| t.to_string());
    let mut params = vec![("query", query)];
    if let Some(time) = &time {
        params.push(("time", time));
    }
    let data = get_ok(daemon, "/api/v1/query", &params).await;
    assert_eq!(data["resultType"], "vector", "{query}: {data}");
    let mut out: Vec<(Labels, f64)> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (labels(&s["metric"]), point(&s["value"]).1))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The single value of an instant query, or `None` when the vector is empty;
/// panics when it has more than one series.
pub async fn instant_value(daemon: &Strand, query: &str) -> Option<f64> {
    let vector = instant_vector(daemon, query, None).await;
    assert!(
        vector.len() <= 1,
        "{query}: more than one series: {vector:?}"
    );
    vector.first().map(|(_, v)| *v)
}

/// Polls `query` until its single value is `expected` (exactly) or `timeout`
/// passes; panics with the last answer then.
pub async fn wait_for_value(daemon: &Strand, query: &str, expected: f64, timeout: Duration) {
    let found = eventually(timeout, || async {
        (instant_value(daemon, query).await == Some(expected)).then_some(())
    })
    .await;
    if found.is_none() {
        let last = instant_vector(daemon, query, None).await;
        panic!(
            "{query}: wanted {expected} within {timeout:?}, got {last:?}\n{}",
            daemon.log()
        );
    }
}

/// The raw samples of a range-vector selector (`x[1h]`) at `time` seconds,
/// per series as (milliseconds, value), sorted by labels.
pub async fn raw_samples(
    daemon: &Strand,
    selector: &str,
    time: f64,
) -> Vec<(Labels, Vec<(i64, f64)>)> {
    let time = time.to_string();
    let data = get_ok(
        daemon,
        "/api/v1/query",
        &[("query", selector), ("time", time.as_str())],
    )
    .await;
    assert_eq!(data["resultType"], "matrix", "{selector}: {data}");
    matrix(&data)
}

/// A range query's matrix (times in seconds), sorted by labels.
pub async fn range(
    daemon: &Strand,
    query: &str,
    start: f64,
    end: f64,
    step: &str,
) -> Vec<(Labels, Vec<(i64, f64)>)> {
    let (start, end) = (start.to_string(), end.to_string());
    let data = get_ok(
        daemon,
        "/api/v1/query_range",
        &[
            ("query", query),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", step),
        ],
    )
    .await;
    assert_eq!(data["resultType"], "matrix", "{query}: {data}");
    matrix(&data)
}

fn matrix(data: &Value) -> Vec<(Labels, Vec<(i64, f64)>)> {
    let mut out: Vec<(Labels, Vec<(i64, f64)>)> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                labels(&s["metric"]),
                s["values"].as_array().unwrap().iter().map(point).collect(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Builds a label set from pairs, for comparisons.
pub fn label_set(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
        .collect()
}
