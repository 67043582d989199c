//! End to end: scraping exporters in both exposition formats, side by side
//! with a real Prometheus (Debian's 2.42) scraping the very same endpoints.
//! An axum server plays the exporters: one in the text format, one in
//! OpenMetrics that answers only when asked for it (as client libraries
//! negotiate), and one whose body does not parse. Label values hold commas,
//! braces, quotes, backslashes and newlines; OpenMetrics brings `_created`,
//! an exemplar, `# UNIT`, info, stateset and gauge histogram families and
//! timestamps in seconds. Afterwards both must hold the same series with
//! the same values and metadata, and `up` must agree.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::Value;
use strand_testkit::{DEADLINE, Strand, eventually};

use crate::support::now_ms;
use crate::support::prometheus::Prometheus;

/// What Prometheus 2.42 asks for (`scrape/scrape.go`, `scrapeAcceptHeader`).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
application/openmetrics-text;version=0.0.1;q=0.75,\
text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn text_exposition(timestamp_ms: i64) -> String {
    format!(
        r#"# HELP shop_requests_total Requests, by path: a \\ and a\nsecond line.
# TYPE shop_requests_total counter
shop_requests_total{{path="/cart,checkout",query="a=\"1\"}}",dir="C:\\shop\\",note="two\nlines"}} 7
shop_requests_total{{path="/"}} 3
# TYPE shop_latency_seconds histogram
shop_latency_seconds_bucket{{le="0.5"}} 3
shop_latency_seconds_bucket{{le="+Inf"}} 4
shop_latency_seconds_sum 1.25
shop_latency_seconds_count 4
# TYPE shop_temperature gauge
shop_temperature{{room="a}}b"}} -3.5 {timestamp_ms}
# a comment
shop_untyped{{kind="x=y"}} 42
"#
    )
}

fn openmetrics_exposition(timestamp_ms: i64) -> String {
    let seconds = timestamp_ms / 1000;
    format!(
        r#"# TYPE shop_orders counter
# HELP shop_orders Orders "placed", by path.
shop_orders_total{{path="/cart,checkout",note="x\ny"}} 12 # {{trace_id="4bf92f3577b34da6"}} 1 {seconds}.25
shop_orders_created{{path="/cart,checkout",note="x\ny"}} 1700000000.5
# TYPE shop_build info
shop_build_info{{version="1.2,3"}} 1
# TYPE shop_state stateset
shop_state{{shop_state="open"}} 1
shop_state{{shop_state="closed"}} 0
# TYPE shop_queue gaugehistogram
shop_queue_bucket{{le="+Inf"}} 2
shop_queue_gcount 2
shop_queue_gsum 5
# TYPE shop_disk_bytes gauge
# UNIT shop_disk_bytes bytes
shop_disk_bytes 1e3 {seconds}.5
# EOF
"#
    )
}

/// The exporters; records the `Accept` header of every request by
/// `User-Agent` (Prometheus names itself, Strand's client does not).
async fn exporters(accepts: Arc<Mutex<Vec<(String, String)>>>) -> std::net::SocketAddr {
    let started = now_ms() - 5_000;
    let record = move |headers: &HeaderMap| {
        let value = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        accepts
            .lock()
            .unwrap()
            .push((value(header::USER_AGENT), value(header::ACCEPT)));
        value(header::ACCEPT)
    };
    let om_record = record.clone();
    let app = Router::new()
        .route(
            "/metrics/text",
            get(move |headers: HeaderMap| async move {
                record(&headers);
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text_exposition(started),
                )
            }),
        )
        .route(
            "/metrics/om",
            get(move |headers: HeaderMap| async move {
                if !om_record(&headers).contains("application/openmetrics-text") {
                    return StatusCode::NOT_ACCEPTABLE.into_response();
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    openmetrics_exposition(started),
                )
                    .into_response()
            }),
        )
        .route(
            "/metrics/broken",
            // An unescaped quote: the value runs to the end of the body.
            get(|| async { "broken_total{name=\"14\" registry\"} 1\nfine 1\n" }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

const JOBS: [(&str, &str); 3] = [
    ("text", "/metrics/text"),
    ("om", "/metrics/om"),
    ("broken", "/metrics/broken"),
];

fn prometheus_config(address: std::net::SocketAddr) -> String {
    let mut config =
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n".to_owned();
    for (job, path) in JOBS {
        config.push_str(&format!(
            "  - job_name: {job}\n    metrics_path: {path}\n    static_configs:\n      - targets: [\"{address}\"]\n"
        ));
    }
    config
}

fn strand_config(address: std::net::SocketAddr) -> String {
    JOBS.iter()
        .map(|(job, path)| {
            format!(
                "[[scrape]]\njob = \"{job}\"\ntargets = [\"{address}\"]\npath = \"{path}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
            )
        })
        .collect()
}

async fn api(base: &str, path: &str, params: &[(&str, &str)]) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .query(params)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{base}{path}: {e}"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "success", "{base}{path} {params:?}: {body}");
    body["data"].clone()
}

/// An instant query's result as sorted (labels, value) pairs.
async fn vector(base: &str, query: &str) -> Vec<(BTreeMap<String, String>, String)> {
    let data = api(base, "/api/v1/query", &[("query", query)]).await;
    let mut out: Vec<_> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sample| {
            let labels = serde_json::from_value(sample["metric"].clone()).unwrap();
            (labels, sample["value"][1].as_str().unwrap().to_owned())
        })
        .collect();
    out.sort();
    out
}

/// The series `match[]` selects, sorted.
async fn series(base: &str, matcher: &str) -> Vec<BTreeMap<String, String>> {
    let data = api(base, "/api/v1/series", &[("match[]", matcher)]).await;
    let mut out: Vec<BTreeMap<String, String>> = serde_json::from_value(data).unwrap();
    out.sort();
    out
}

/// The metadata of the exporters' families (`shop_*`).
async fn metadata(base: &str) -> BTreeMap<String, Value> {
    let data = api(base, "/api/v1/metadata", &[]).await;
    data.as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.starts_with("shop_"))
        .map(|(name, entries)| (name.clone(), entries.clone()))
        .collect()
}

/// Everything the exporters' series are compared by: the samples (without
/// Prometheus' own `scrape_*` series, which Strand has fewer of), `up`, the
/// series API and the metadata.
async fn everything(base: &str) -> Value {
    let samples = vector(base, r#"{job=~"text|om|broken",__name__!~"scrape_.*"}"#).await;
    let scraped = vector(base, r#"scrape_samples_scraped{job=~"text|om"}"#).await;
    let series = series(base, r#"{job=~"text|om|broken",__name__!~"scrape_.*"}"#).await;
    serde_json::json!({
        "samples": samples,
        "scrape_samples_scraped": scraped,
        "series": series,
        "metadata": metadata(base).await,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn exporters_in_both_formats_are_scraped_as_prometheus_scrapes_them() {
    let accepts = Arc::new(Mutex::new(Vec::new()));
    let address = exporters(accepts.clone()).await;
    let prometheus = Prometheus::start(&prometheus_config(address)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strand.toml");
    std::fs::write(&config, strand_config(address)).unwrap();
    let daemon = Strand::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--self-scrape-interval",
            "0s",
        ],
    )
    .await;
    let strand = daemon.url("");
    let strand = strand.trim_end_matches('/');

    // Both have scraped every target, and agree.
    let compared = eventually(DEADLINE, || async {
        let ours = everything(strand).await;
        let theirs = everything(&prometheus.url).await;
        let up = vector(strand, "up").await;
        (up.len() == 3 && ours == theirs).then_some(ours)
    })
    .await;
    let Some(ours) = compared else {
        panic!(
            "Strand and Prometheus disagree.\nStrand: {:#}\nPrometheus: {:#}\nPrometheus' log:\n{}",
            everything(strand).await,
            everything(&prometheus.url).await,
            prometheus.log()
        );
    };

    // What was compared holds what the exporters said.
    let samples = ours["samples"].to_string();
    for expected in [
        r#""path":"/cart,checkout""#,
        r#""query":"a=\"1\"}""#,
        r#""dir":"C:\\shop\\""#,
        r#""note":"two\nlines""#,
        r#""room":"a}b""#,
        r#""version":"1.2,3""#,
        r#""__name__":"shop_orders_total""#,
        // Prometheus 2.42 ingests `_created` as a series of its own (later
        // versions can turn it into a created timestamp instead).
        r#""__name__":"shop_orders_created""#,
        r#""__name__":"shop_disk_bytes""#,
        r#""__name__":"shop_queue_gsum""#,
    ] {
        assert!(samples.contains(expected), "{expected} in {samples}");
    }
    assert!(!samples.contains("broken_total") && !samples.contains("\"fine\""));
    assert_eq!(
        vector(strand, r#"up{job="broken"}"#).await[0].1,
        "0",
        "a body that does not parse fails the scrape"
    );
    assert_eq!(vector(strand, r#"up{job="om"}"#).await[0].1, "1");
    assert_eq!(
        ours["metadata"]["shop_disk_bytes"][0]["unit"], "bytes",
        "{ours:#}"
    );
    assert_eq!(ours["metadata"]["shop_orders"][0]["type"], "counter");

    // Strand asks exactly as Prometheus does.
    let accepts = accepts.lock().unwrap().clone();
    let strand_accepts: Vec<&str> = accepts
        .iter()
        .filter(|(agent, _)| !agent.starts_with("Prometheus/"))
        .map(|(_, accept)| accept.as_str())
        .collect();
    let prometheus_accepts: Vec<&str> = accepts
        .iter()
        .filter(|(agent, _)| agent.starts_with("Prometheus/"))
        .map(|(_, accept)| accept.as_str())
        .collect();
    assert!(!strand_accepts.is_empty() && !prometheus_accepts.is_empty());
    assert!(
        strand_accepts
            .iter()
            .chain(&prometheus_accepts)
            .all(|accept| *accept == PROMETHEUS_ACCEPT),
        "{accepts:?}"
    );
}

/// A series that stops being exposed goes stale in Strand as in
/// Prometheus, but a target whose scrape fails to parse makes every
/// series of it stale at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_parsing_makes_the_targets_series_stale() {
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let switch = broken.clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let broken = switch.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if broken {
                    "flaky{a=\"unterminated} 1\n"
                } else {
                    "flaky{a=\"b,c\"} 1\n"
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strand.toml");
    std::fs::write(
        &config,
        format!(
            "[[scrape]]\njob = \"flaky\"\ntargets = [\"{address}\"]\ninterval = \"1s\"\ntimeout = \"1s\"\n"
        ),
    )
    .unwrap();
    let daemon = Strand::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--self-scrape-interval",
            "0s",
        ],
    )
    .await;
    let base = daemon.url("");
    let base = base.trim_end_matches('/');
    let present = eventually(DEADLINE, || async {
        let found = vector(base, "flaky").await;
        (found.len() == 1).then_some(found)
    })
    .await
    .expect("the series is scraped");
    assert_eq!(present[0].0["a"], "b,c");
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let gone = eventually(DEADLINE, || async {
        let up = vector(base, r#"up{job="flaky"}"#).await;
        let found = vector(base, "flaky").await;
        (up.first().is_some_and(|(_, v)| v == "0") && found.is_empty()).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "after a failed parse: up {:?}, flaky {:?}",
        vector(base, r#"up{job="flaky"}"#).await,
        vector(base, "flaky").await
    );
}
