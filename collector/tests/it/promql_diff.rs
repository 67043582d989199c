//! Differential test of the PromQL API against a real Prometheus.
//!
//! The same samples (counters with a reset, gauges with negative values, a
//! classic histogram, series that stop, an explicit stale marker, irregular
//! timestamps) go over remote write, as the same bytes, to a Prometheus child
//! process and to Strand. Then every query of `tests/promql_diff/queries.txt`
//! runs against both, as instant queries at a few times and as a range query,
//! and the answers must match: same result type, same series, same timestamps,
//! values equal to the last bit. A query Strand cannot answer is a failure.
//! Every mismatch is collected and reported at the end.
//!
//! Strand answers twice: from its embedded store, and over ClickHouse —
//! one ClickHouse-backed node takes the data, and another that never saw it
//! answers from what the first inserted into ClickHouse.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, installed by
//! `scripts/test`; `PROMETHEUS_BIN` overrides the path) and
//! `clickhouse-server`, and fails without them.
//!
//! `STRAND_DIFF_PROM_ONLY=1 cargo test -p strand --test it promql_diff -- --nocapture`
//! runs only the Prometheus half: use it to check corpus edits (every query
//! must succeed on Prometheus; it also lists queries that are empty everywhere).
//! `STRAND_DIFF_FILTER=<substring>` runs only the queries containing it; with
//! `STRAND_DIFF_PROM_ONLY=1` it also prints Prometheus' answers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use serde_json::Value;
use strand_testkit::promql_corpus::{self, CORPUS, CorpusQuery};
use strand_testkit::{ClickHouse, Strand, eventually};

use crate::support::prometheus::Prometheus;
use crate::support::remote_write::{Label, MetricMetadata, Sample, TimeSeries, WriteRequest};

/// Samples are this far apart (seconds); the data window is `WINDOW_STEPS` of them.
const SCRAPE: i64 = 15;
/// 50 minutes: inside what Prometheus' head accepts, longer than the 30-minute range queries.
const WINDOW_STEPS: i64 = 200;
/// Remote-write requests each carry this many steps of every series, oldest first.
const STEPS_PER_REQUEST: i64 = 20;
const RANGE: i64 = 30 * 60;
const DEFAULT_STEP: i64 = 60;
/// Prometheus' stale marker, a NaN with this exact bit pattern.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

const MAX_REPORTED: usize = 40;
const MAX_SERIES_PER_MISMATCH: usize = 4;

// --- The data ---

/// One series: its labels (with `__name__`) and its samples as (seconds, value).
struct Series {
    labels: Vec<(String, String)>,
    samples: Vec<(i64, f64)>,
}

fn series(name: &str, labels: &[(&str, &str)], samples: Vec<(i64, f64)>) -> Series {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .chain([("__name__".to_string(), name.to_string())])
        .collect();
    labels.sort();
    Series { labels, samples }
}

const TARGETS: [(&str, &str, &str); 4] = [
    ("api", "10.0.0.1:9100", "1.2.3"),
    ("api", "10.0.0.2:9100", "1.3.0"),
    ("web", "10.0.1.1:8080", "2.0.1"),
    ("web", "10.0.1.2:8080", "2.0.1"),
];

/// The whole data set, deterministic, for steps `0..=WINDOW_STEPS` ending at `end`.
/// Values are integers or small dyadic fractions, so sums are exact whatever the order.
fn data_set(end: i64) -> Vec<Series> {
    let start = end - WINDOW_STEPS * SCRAPE;
    let at = |k: i64| start + k * SCRAPE;
    let steps = || 0..=WINDOW_STEPS;
    let mut out = Vec::new();

    // Counters; the first series resets at step 130 (END-17m30s). The 500s are rare.
    let mut s = 0i64;
    for (job, instance, _) in TARGETS {
        for method in ["GET", "POST"] {
            for status in ["200", "500"] {
                let mut value = ((s + 1) * 100) as f64;
                let samples = steps()
                    .map(|k| {
                        if s == 0 && k == 130 {
                            value = 0.0;
                        }
                        // Each 200 series grows by 10*s..10*s+9 a scrape, so their
                        // rates never tie (topk picks the same series everywhere).
                        value += if status == "200" {
                            (10 * s + (s * 7 + k * 13 + (k * k) % 17) % 10) as f64
                        } else {
                            f64::from(u8::from((s + k) % 7 == 0)) * (s % 3 + 1) as f64
                        };
                        (at(k), value)
                    })
                    .collect();
                out.push(series(
                    "http_requests_total",
                    &[
                        ("job", job),
                        ("instance", instance),
                        ("method", method),
                        ("status", status),
                    ],
                    samples,
                ));
                s += 1;
            }
        }
    }

    for (i, (job, instance, version)) in TARGETS.into_iter().enumerate() {
        let i = i as i64;
        let target = [("job", job), ("instance", instance)];
        // The last target is down for five minutes.
        let up = steps()
            .map(|k| {
                (
                    at(k),
                    if i == 3 && (80..100).contains(&k) {
                        0.0
                    } else {
                        1.0
                    },
                )
            })
            .collect();
        out.push(series("up", &target, up));
        let revision = format!("rev{i}");
        out.push(series(
            "build_info",
            &[
                ("job", job),
                ("instance", instance),
                ("version", version),
                ("revision", &revision),
            ],
            steps().map(|k| (at(k), 1.0)).collect(),
        ));
        let memory = steps()
            .map(|k| {
                let v = 2_000_000_000
                    + i * 100_000_000
                    + ((k * 37 + i * 11) % 50) * 1_000_000
                    + k * 200_000;
                (at(k), v as f64)
            })
            .collect();
        out.push(series("node_memory_bytes", &target, memory));

        // A classic histogram: per-bucket observations each step, stored cumulatively.
        const LE: [&str; 7] = ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"];
        const TYPICAL: [f64; 7] = [0.03125, 0.0625, 0.125, 0.375, 0.75, 1.5, 4.0];
        const WEIGHT: [f64; 7] = [8.0, 6.0, 5.0, 3.0, 2.0, 1.0, 0.0];
        let mut counts = [0f64; 7];
        let mut sum = 0.0;
        let mut buckets: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 7];
        let (mut sums, mut totals) = (Vec::new(), Vec::new());
        for k in steps() {
            for b in 0..7 {
                // Targets differ in how many requests fall in the second bucket.
                let extra = if b == 1 { i as f64 * 2.0 } else { 0.0 };
                let n = WEIGHT[b] + extra + ((k * (b as i64 + 1) + i * 3 + b as i64) % 3) as f64;
                counts[b] += n;
                sum += n * TYPICAL[b];
            }
            let mut cumulative = 0.0;
            for b in 0..7 {
                cumulative += counts[b];
                buckets[b].push((at(k), cumulative));
            }
            sums.push((at(k), sum));
            totals.push((at(k), cumulative));
        }
        for (le, samples) in LE.iter().zip(buckets) {
            out.push(series(
                "http_request_duration_seconds_bucket",
                &[("job", job), ("instance", instance), ("le", le)],
                samples,
            ));
        }
        out.push(series("http_request_duration_seconds_sum", &target, sums));
        out.push(series(
            "http_request_duration_seconds_count",
            &target,
            totals,
        ));
    }

    // Gauges with negative values and fractions.
    for (l, (location, base, amplitude)) in [
        ("kitchen", 21.0, 1.0),
        ("garage", 12.0, 2.0),
        ("freezer", -18.0, 0.5),
        ("outdoor", 2.0, 1.0),
    ]
    .into_iter()
    .enumerate()
    {
        for (sn, sensor) in ["a", "b"].into_iter().enumerate() {
            let samples = steps()
                .map(|k| {
                    let x = (k + l as i64 * 5 + sn as i64 * 3) % 40;
                    let triangle = if x < 20 { x } else { 40 - x } as f64;
                    let v = base + sn as f64 * 0.5 + (triangle - 10.0) * 0.25 * amplitude;
                    (at(k), v)
                })
                .collect();
            out.push(series(
                "temperature_celsius",
                &[("location", location), ("sensor", sensor)],
                samples,
            ));
        }
    }

    // orders stops at END-10m (staleness through the 5-minute lookback), emails
    // ends with an explicit stale marker at END-20m, payments starts at END-15m.
    let worker = |queue| [("job", "worker"), ("queue", queue)];
    let orders = (0..=160).map(|k| (at(k), ((k * 7) % 23) as f64)).collect();
    out.push(series("queue_depth", &worker("orders"), orders));
    let mut emails: Vec<(i64, f64)> = (0..120).map(|k| (at(k), ((k * 3) % 17) as f64)).collect();
    emails.push((at(120), f64::from_bits(STALE_NAN)));
    out.push(series("queue_depth", &worker("emails"), emails));
    let payments = (140..=WINDOW_STEPS)
        .map(|k| (at(k), (k % 9) as f64))
        .collect();
    out.push(series("queue_depth", &worker("payments"), payments));

    // Irregular timestamps (0-4 s late, some scrapes missing) and a gap longer
    // than the lookback (steps 100-124: 6m15s).
    let jitter_steps = || steps().filter(|k| !(100..125).contains(k) && k % 7 != 3);
    let jittery_at = |k: i64| at(k) + (k * 7) % 5;
    let gauge = jitter_steps()
        .map(|k| (jittery_at(k), ((k * 11) % 31) as f64 * 0.5))
        .collect();
    out.push(series("jittery_gauge", &[("job", "worker")], gauge));
    let mut total = 0.0;
    let events = jitter_steps()
        .map(|k| {
            total += (k % 4 + 1) as f64;
            (jittery_at(k), total)
        })
        .collect();
    out.push(series("jittery_events_total", &[("job", "worker")], events));

    out.extend(tied_histograms(start, end));
    out.extend(order_sensitive_gauges(start));
    out
}

/// Classic histograms whose bucket rates tie, so `histogram_quantile` lands
/// exactly on a bucket's count and a rate one bit off picks another bucket.
/// Bucket `le` gets `per_scrape[le]` observations a scrape (cumulative counts):
/// 0.1 and 0.2 tie (nothing falls between them) and hold a tenth, a fifth or a
/// half of all. `eleven` is scraped every 11 s, where `rate(x[1m])` of a
/// counter growing by 2 a scrape is the 0.18181818181818182; `short`
/// starts and stops inside the window (extrapolation at both ends); `reset`
/// drops to zero at END-20m.
fn tied_histograms(start: i64, end: i64) -> Vec<Series> {
    const LE: [&str; 5] = ["0.1", "0.2", "0.5", "1", "+Inf"];
    let mut out = Vec::new();
    let kinds: [(&str, i64, i64, i64, [f64; 5]); 4] = [
        ("eleven", 11, 0, end - start, [2.0, 2.0, 10.0, 18.0, 20.0]),
        ("tenth", SCRAPE, 0, end - start, [1.0, 1.0, 5.0, 5.0, 10.0]),
        (
            "short",
            11,
            700,
            end - start - 400,
            [3.0, 3.0, 6.0, 12.0, 15.0],
        ),
        ("reset", SCRAPE, 0, end - start, [3.0, 3.0, 3.0, 6.0, 6.0]),
    ];
    for (kind, every, from, to, per_scrape) in kinds {
        for (le, per) in LE.iter().zip(per_scrape) {
            let samples = (from..=to)
                .step_by(every as usize)
                .enumerate()
                .map(|(n, offset)| {
                    let t = start + offset;
                    let scrapes = if kind == "reset" && t > end - 20 * 60 {
                        (t - (end - 20 * 60)) / every
                    } else {
                        n as i64 + 1
                    };
                    (t, scrapes as f64 * per)
                })
                .collect();
            out.push(series(
                "tied_bucket",
                &[("kind", kind), ("le", le)],
                samples,
            ));
        }
    }
    out
}

/// Gauges whose sums, means and deviations round differently in another
/// operation order: tenths (not exact in binary), values near 1e15 with small
/// offsets (cancellation), and values near f64::MAX (a plain sum overflows,
/// the running mean does not).
fn order_sensitive_gauges(start: i64) -> Vec<Series> {
    let mut out = Vec::new();
    for id in 0..12i64 {
        let name = id.to_string();
        let samples = (0..=WINDOW_STEPS)
            .map(|k| {
                let tenths = ((k * 7 + id * 3) % 13) as f64 * 0.1 + id as f64 * 0.3;
                (start + k * SCRAPE, tenths)
            })
            .collect();
        out.push(series("tenths_gauge", &[("id", &name)], samples));
        if id < 4 {
            let samples = (0..=WINDOW_STEPS)
                .map(|k| {
                    let small = ((k * 5 + id) % 11) as f64 * 0.37;
                    (start + k * SCRAPE, 1e15 + id as f64 * 1e13 + small)
                })
                .collect();
            out.push(series("large_gauge", &[("id", &name)], samples));
            let samples = (0..=WINDOW_STEPS)
                .map(|k| {
                    let share = 0.6 + ((k + id * 2) % 5) as f64 * 0.07;
                    (start + k * SCRAPE, f64::MAX * share)
                })
                .collect();
            out.push(series("huge_gauge", &[("id", &name)], samples));
        }
    }
    out
}

/// The data as snappy-compressed remote-write bodies, in time order: request n
/// holds steps `n*STEPS_PER_REQUEST..` of every series, so no series ever goes
/// back in time. The first one also carries metadata, as Prometheus may send.
fn write_requests(data: &[Series], end: i64) -> Vec<Vec<u8>> {
    let start = end - WINDOW_STEPS * SCRAPE;
    let mut bodies = Vec::new();
    let mut from = start;
    while from <= end {
        let to = from + STEPS_PER_REQUEST * SCRAPE;
        let timeseries: Vec<TimeSeries> = data
            .iter()
            .filter_map(|s| {
                let samples: Vec<Sample> = s
                    .samples
                    .iter()
                    .filter(|(t, _)| (from..to).contains(t))
                    .map(|&(t, value)| Sample {
                        value,
                        timestamp: t * 1000,
                    })
                    .collect();
                (!samples.is_empty()).then(|| TimeSeries {
                    labels: s
                        .labels
                        .iter()
                        .map(|(name, value)| Label {
                            name: name.clone().into(),
                            value: value.clone().into(),
                        })
                        .collect(),
                    samples,
                })
            })
            .collect();
        let metadata = if from == start {
            [
                (1, "http_requests_total", "Requests served."),
                (2, "node_memory_bytes", "Memory in use."),
                (3, "http_request_duration_seconds", "Request latency."),
            ]
            .into_iter()
            .map(|(r#type, name, help)| MetricMetadata {
                r#type,
                metric_family_name: name.into(),
                help: help.into(),
                unit: String::new(),
            })
            .collect()
        } else {
            Vec::new()
        };
        let request = WriteRequest {
            timeseries,
            metadata,
        };
        bodies.push(
            snap::raw::Encoder::new()
                .compress_vec(&request.encode_to_vec())
                .expect("snappy compresses"),
        );
        from = to;
    }
    bodies
}

async fn remote_write(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let response = client
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let text = response.text().await.unwrap_or_default();
        Err(format!("POST {url}: HTTP {status}: {text}"))
    }
}

/// The Strands the corpus runs against: an embedded one, and two over one
/// ClickHouse — one takes the data, the other answers.
struct Strands {
    embedded: Strand,
    clickhouse_ingest: Strand,
    clickhouse_query: Strand,
    _clickhouse: ClickHouse,
}

impl Strands {
    async fn start(dir: &std::path::Path) -> Strands {
        let clickhouse = ClickHouse::start().await;
        let over_clickhouse = [
            "--storage",
            "clickhouse",
            "--clickhouse-url",
            &clickhouse.url,
            "--metrics-flush-interval",
            "200ms",
        ];
        Strands {
            embedded: Strand::start(&dir.join("embedded"), &[]).await,
            clickhouse_ingest: Strand::start(&dir.join("ingest"), &over_clickhouse).await,
            clickhouse_query: Strand::start(&dir.join("query"), &over_clickhouse).await,
            _clickhouse: clickhouse,
        }
    }

    /// Waits until the query node reads as many samples as the embedded
    /// Strand: the ingest node has inserted them all into ClickHouse.
    async fn wait_for_clickhouse(&self, client: &reqwest::Client, end: i64) {
        let count = |strand: &Strand| {
            let url = strand.url("/api/v1/query");
            let client = client.clone();
            async move {
                let answer: Value = client
                    .get(url)
                    .query(&[
                        ("query", "{__name__=~\".+\"}[2h]"),
                        ("time", &end.to_string()),
                    ])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let series = answer["data"]["result"]
                    .as_array()
                    .ok_or_else(|| answer.to_string())?;
                Ok::<_, String>(
                    series
                        .iter()
                        .map(|s| s["values"].as_array().map_or(0, Vec::len))
                        .sum::<usize>(),
                )
            }
        };
        let expected = count(&self.embedded)
            .await
            .unwrap_or_else(|e| panic!("the embedded Strand counts no samples: {e}"));
        let arrived = eventually(std::time::Duration::from_secs(60), || async {
            (count(&self.clickhouse_query).await.as_ref() == Ok(&expected)).then_some(())
        })
        .await;
        assert!(
            arrived.is_some(),
            "the query node never counted {expected} samples from ClickHouse\n{}",
            self.clickhouse_ingest.log()
        );
    }
}

// --- The corpus ---

fn corpus(end: i64) -> Vec<CorpusQuery> {
    promql_corpus::corpus_queries(CORPUS, end - WINDOW_STEPS * SCRAPE, end)
        .expect("the corpus parses")
}

/// One HTTP request to the query API: instant queries by GET, range queries by
/// POST form, so both encodings are exercised.
#[derive(Clone)]
enum Request {
    Instant {
        expr: String,
        time: i64,
    },
    Range {
        expr: String,
        start: i64,
        end: i64,
        step: i64,
    },
}

impl Request {
    fn expr(&self) -> &str {
        match self {
            Request::Instant { expr, .. } | Request::Range { expr, .. } => expr,
        }
    }

    fn describe(&self, end: i64) -> String {
        match self {
            Request::Instant { time, .. } => {
                format!("instant, GET, time=END{:+}s ({time})", time - end)
            }
            Request::Range {
                start,
                end: e,
                step,
                ..
            } => format!(
                "range, POST, start=END{:+}s end=END{:+}s step={step}s ({start}..{e})",
                start - end,
                e - end
            ),
        }
    }

    /// Top-level sort()/sort_desc() instant queries promise an order.
    fn ordered(&self) -> bool {
        let expr = self.expr().trim_start();
        matches!(self, Request::Instant { .. })
            && (expr.starts_with("sort(") || expr.starts_with("sort_desc("))
    }
}

fn requests(queries: &[CorpusQuery], end: i64) -> Vec<Request> {
    let mut out = Vec::new();
    for q in queries {
        // END-23m7s is off the 15 s sample grid, so the lookback is exercised.
        for time in [end, end - 7 * 60, end - 23 * 60 - 7] {
            out.push(Request::Instant {
                expr: q.expr.clone(),
                time,
            });
        }
        if !q.instant_only {
            out.push(Request::Range {
                expr: q.expr.clone(),
                start: end - RANGE,
                end,
                step: q.step.unwrap_or(DEFAULT_STEP),
            });
        }
    }
    out
}

// --- Running queries and comparing answers ---

/// A query answer, in Prometheus' JSON shapes, with series keyed by their
/// canonical label set.
#[derive(Debug)]
enum Answer {
    Scalar(f64, f64),
    String(f64, String),
    /// (labels, timestamp, value), in the order of the answer.
    Vector(Vec<(String, f64, f64)>),
    Matrix(Vec<(String, Vec<(f64, f64)>)>),
}

impl Answer {
    fn kind(&self) -> &'static str {
        match self {
            Answer::Scalar(..) => "scalar",
            Answer::String(..) => "string",
            Answer::Vector(_) => "vector",
            Answer::Matrix(_) => "matrix",
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Answer::Vector(v) => v.is_empty(),
            Answer::Matrix(m) => m.is_empty(),
            _ => false,
        }
    }
}

async fn run(client: &reqwest::Client, base: &str, request: &Request) -> Result<Answer, String> {
    let response = match request {
        Request::Instant { expr, time } => {
            client
                .get(format!("{base}/api/v1/query"))
                .query(&[("query", expr.as_str()), ("time", &time.to_string())])
                .send()
                .await
        }
        Request::Range {
            expr,
            start,
            end,
            step,
        } => {
            client
                .post(format!("{base}/api/v1/query_range"))
                .form(&[
                    ("query", expr.as_str()),
                    ("start", &start.to_string()),
                    ("end", &end.to_string()),
                    ("step", &step.to_string()),
                ])
                .send()
                .await
        }
    }
    .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("body: {e}"))?;
    let json: Value = serde_json::from_str(&body)
        .map_err(|e| format!("HTTP {status}, not JSON ({e}): {}", truncate(&body, 300)))?;
    if json["status"] != "success" {
        return Err(format!(
            "HTTP {status}, {}: {}",
            json["errorType"].as_str().unwrap_or("?"),
            json["error"].as_str().unwrap_or(&truncate(&body, 300))
        ));
    }
    if !status.is_success() {
        return Err(format!(
            "HTTP {status} with status success: {}",
            truncate(&body, 300)
        ));
    }
    parse_answer(&json["data"])
        .map_err(|e| format!("malformed answer ({e}): {}", truncate(&body, 300)))
}

fn parse_answer(data: &Value) -> Result<Answer, String> {
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("scalar") => {
            let (t, v) = parse_point(result)?;
            Ok(Answer::Scalar(t, v))
        }
        Some("string") => {
            let t = result[0].as_f64().ok_or("string timestamp")?;
            let s = result[1].as_str().ok_or("string value")?;
            Ok(Answer::String(t, s.to_string()))
        }
        Some("vector") => result
            .as_array()
            .ok_or("vector result is not an array")?
            .iter()
            .map(|sample| {
                let (t, v) = parse_point(&sample["value"])?;
                Ok((label_key(&sample["metric"])?, t, v))
            })
            .collect::<Result<_, String>>()
            .map(Answer::Vector),
        Some("matrix") => result
            .as_array()
            .ok_or("matrix result is not an array")?
            .iter()
            .map(|series| {
                let points = series["values"]
                    .as_array()
                    .ok_or("series without values")?
                    .iter()
                    .map(parse_point)
                    .collect::<Result<_, String>>()?;
                Ok((label_key(&series["metric"])?, points))
            })
            .collect::<Result<_, String>>()
            .map(Answer::Matrix),
        other => Err(format!("resultType {other:?}")),
    }
}

/// `[ <unix seconds>, "<value>" ]`.
fn parse_point(point: &Value) -> Result<(f64, f64), String> {
    let t = point[0].as_f64().ok_or("point timestamp is not a number")?;
    let v = point[1].as_str().ok_or("point value is not a string")?;
    let v = match v {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => v.parse().map_err(|e| format!("point value {v:?}: {e}"))?,
    };
    Ok((t, v))
}

/// `{a="1", b="2"}`, sorted by name.
fn label_key(metric: &Value) -> Result<String, String> {
    let labels: BTreeMap<&str, &str> = metric
        .as_object()
        .ok_or("metric is not an object")?
        .iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|v| (k.as_str(), v))
                .ok_or("label value is not a string")
        })
        .collect::<Result<_, _>>()?;
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    Ok(format!("{{{}}}", pairs.join(", ")))
}

/// Bit-equal floats (so `0.1818181818181818` is not `0.18181818181818182`, and
/// `-0` is not `0`); NaN equals NaN whatever its payload, as both print "NaN".
fn close(expected: f64, got: f64) -> bool {
    (expected.is_nan() && got.is_nan()) || expected.to_bits() == got.to_bits()
}

fn same_time(expected: f64, got: f64) -> bool {
    (expected - got).abs() < 1e-6
}

/// `None` if the answers match, else what differs.
fn compare(expected: &Answer, got: &Answer, ordered: bool) -> Option<String> {
    match (expected, got) {
        (Answer::Scalar(te, ve), Answer::Scalar(tg, vg)) => (!same_time(*te, *tg)
            || !close(*ve, *vg))
        .then(|| format!("expected scalar {ve} @{te}, got {vg} @{tg}")),
        (Answer::String(te, se), Answer::String(tg, sg)) => (!same_time(*te, *tg) || se != sg)
            .then(|| format!("expected string {se:?} @{te}, got {sg:?} @{tg}")),
        (Answer::Vector(e), Answer::Vector(g)) => {
            let mut problems = Vec::new();
            let expected_map = unique(
                e.iter().map(|(k, t, v)| (k, (*t, *v))),
                &mut problems,
                "Prometheus",
            );
            let got_map = unique(
                g.iter().map(|(k, t, v)| (k, (*t, *v))),
                &mut problems,
                "Strand",
            );
            diff_maps(
                &expected_map,
                &got_map,
                &mut problems,
                |&(te, ve), &(tg, vg)| {
                    (!same_time(te, tg) || !close(ve, vg))
                        .then(|| format!("expected {ve} @{te}, got {vg} @{tg}"))
                },
            );
            if ordered && problems.is_empty() {
                let (ev, gv): (Vec<f64>, Vec<f64>) = (
                    e.iter().map(|s| s.2).collect(),
                    g.iter().map(|s| s.2).collect(),
                );
                if ev.iter().zip(&gv).any(|(a, b)| !close(*a, *b)) {
                    problems.push(format!("wrong order: expected values {ev:?}, got {gv:?}"));
                }
            }
            report_series(e.len(), g.len(), problems)
        }
        (Answer::Matrix(e), Answer::Matrix(g)) => {
            let mut problems = Vec::new();
            let expected_map = unique(e.iter().map(|(k, p)| (k, p)), &mut problems, "Prometheus");
            let got_map = unique(g.iter().map(|(k, p)| (k, p)), &mut problems, "Strand");
            diff_maps(&expected_map, &got_map, &mut problems, |pe, pg| {
                let te: Vec<f64> = pe.iter().map(|p| p.0).collect();
                let tg: Vec<f64> = pg.iter().map(|p| p.0).collect();
                if te.len() != tg.len() || te.iter().zip(&tg).any(|(a, b)| !same_time(*a, *b)) {
                    return Some(format!(
                        "timestamps differ: expected {} points {}, got {} points {}",
                        te.len(),
                        time_span(&te),
                        tg.len(),
                        time_span(&tg)
                    ));
                }
                pe.iter()
                    .zip(pg.iter())
                    .find(|(a, b)| !close(a.1, b.1))
                    .map(|(a, b)| format!("at {}: expected {}, got {}", a.0, a.1, b.1))
            });
            report_series(e.len(), g.len(), problems)
        }
        _ => Some(format!(
            "expected a {}, got a {}",
            expected.kind(),
            got.kind()
        )),
    }
}

fn unique<'a, T>(
    items: impl Iterator<Item = (&'a String, T)>,
    problems: &mut Vec<String>,
    side: &str,
) -> BTreeMap<&'a String, T> {
    let mut map = BTreeMap::new();
    for (key, value) in items {
        if map.insert(key, value).is_some() {
            problems.push(format!("{side} returned {key} twice"));
        }
    }
    map
}

fn diff_maps<T>(
    expected: &BTreeMap<&String, T>,
    got: &BTreeMap<&String, T>,
    problems: &mut Vec<String>,
    differ: impl Fn(&T, &T) -> Option<String>,
) {
    for (key, e) in expected {
        match got.get(key) {
            None => problems.push(format!("missing {key}")),
            Some(g) => {
                if let Some(d) = differ(e, g) {
                    problems.push(format!("{key}: {d}"));
                }
            }
        }
    }
    for key in got.keys().filter(|k| !expected.contains_key(*k)) {
        problems.push(format!("unexpected {key}"));
    }
}

fn report_series(expected: usize, got: usize, problems: Vec<String>) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    let mut out = format!(
        "expected {expected} series, got {got}; {} differ:",
        problems.len()
    );
    for p in problems.iter().take(MAX_SERIES_PER_MISMATCH) {
        write!(out, "\n      {}", truncate(p, 400)).unwrap();
    }
    if problems.len() > MAX_SERIES_PER_MISMATCH {
        write!(
            out,
            "\n      ... and {} more",
            problems.len() - MAX_SERIES_PER_MISMATCH
        )
        .unwrap();
    }
    Some(out)
}

fn time_span(times: &[f64]) -> String {
    match (times.first(), times.last()) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        _ => "(none)".into(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let cut = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}...", &s[..cut])
}

/// Seconds, aligned down to the sample grid.
fn aligned_now() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now - now.rem_euclid(SCRAPE)
}

/// The comparison itself must catch what it is for, or the test passes vacuously.
#[test]
fn comparison_catches_differences() {
    let vector = |samples: &[(&str, f64)]| {
        Answer::Vector(
            samples
                .iter()
                .map(|(k, v)| (k.to_string(), 100.0, *v))
                .collect(),
        )
    };
    let base = vector(&[
        ("{a=\"1\"}", 1.0),
        ("{a=\"2\"}", f64::NAN),
        ("{a=\"3\"}", f64::INFINITY),
    ]);
    let same_shuffled = vector(&[
        ("{a=\"3\"}", f64::INFINITY),
        ("{a=\"2\"}", f64::NAN),
        ("{a=\"1\"}", 1.0),
    ]);
    assert_eq!(compare(&base, &same_shuffled, false), None);
    assert!(
        compare(&base, &same_shuffled, true).is_some(),
        "order matters for sort()"
    );
    for wrong in [
        vector(&[("{a=\"1\"}", 1.0), ("{a=\"2\"}", f64::NAN)]),
        vector(&[
            ("{a=\"1\"}", 1.0),
            ("{a=\"2\"}", 0.0),
            ("{a=\"3\"}", f64::INFINITY),
        ]),
        vector(&[
            ("{a=\"1\"}", 1.000001),
            ("{a=\"2\"}", f64::NAN),
            ("{a=\"3\"}", f64::INFINITY),
        ]),
        vector(&[
            ("{a=\"1\"}", 1.0),
            ("{a=\"2\"}", f64::NAN),
            ("{a=\"4\"}", f64::INFINITY),
        ]),
        Answer::Scalar(100.0, 1.0),
    ] {
        assert!(compare(&base, &wrong, false).is_some(), "{wrong:?} passed");
    }
    let matrix = |points: &[(f64, f64)]| Answer::Matrix(vec![("{}".into(), points.to_vec())]);
    let m = matrix(&[(60.0, 1.0), (120.0, 2.0)]);
    assert_eq!(
        compare(&m, &matrix(&[(60.0, 1.0), (120.0, 2.0)]), false),
        None
    );
    assert!(compare(&m, &matrix(&[(60.0, 1.0)]), false).is_some());
    assert!(compare(&m, &matrix(&[(60.0, 1.0), (180.0, 2.0)]), false).is_some());
    assert!(compare(&m, &matrix(&[(60.0, 1.0), (120.0, 2.5)]), false).is_some());
    assert!(close(f64::NAN, -f64::NAN) && close(0.1, 0.1));
    assert!(!close(0.0, 1e-300) && !close(-1.0, f64::NAN) && !close(0.0, -0.0));
    assert!(!close(0.18181818181818182, 0.1818181818181818));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_answers_match_prometheus() {
    let prom_only = std::env::var("STRAND_DIFF_PROM_ONLY").is_ok_and(|v| v == "1");

    let end = aligned_now();
    let data = data_set(end);
    let bodies = write_requests(&data, end);
    let mut queries = corpus(end);
    assert!(
        queries.len() >= 150,
        "the corpus has only {} queries",
        queries.len()
    );
    let filter = std::env::var("STRAND_DIFF_FILTER").ok();
    if let Some(filter) = &filter {
        queries.retain(|q| q.expr.contains(filter.as_str()));
    }
    let requests = requests(&queries, end);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let prometheus = Prometheus::start(
        // evaluation_interval is the default subquery step (`x[20m:]`); 1m is
        // Prometheus' default, which Strand uses too.
        "global:\n  evaluation_interval: 1m\n",
    )
    .await;
    let strand_dir = tempfile::tempdir().unwrap();
    let strands = if prom_only {
        None
    } else {
        Some(Strands::start(strand_dir.path()).await)
    };

    for body in &bodies {
        let url = format!("{}/api/v1/write", prometheus.url);
        if let Err(e) = remote_write(&client, &url, body.clone()).await {
            panic!("Prometheus refused the data: {e}\n{}", prometheus.log());
        }
        if let Some(strands) = &strands {
            for strand in [&strands.embedded, &strands.clickhouse_ingest] {
                if let Err(e) =
                    remote_write(&client, &strand.url("/api/v1/write"), body.clone()).await
                {
                    panic!("Strand refused the data: {e}\n{}", strand.log());
                }
            }
        }
    }
    let targets: Vec<(&str, &Strand)> = match &strands {
        Some(strands) => {
            strands.wait_for_clickhouse(&client, end).await;
            vec![
                ("Strand", &strands.embedded),
                ("Strand over ClickHouse", &strands.clickhouse_query),
            ]
        }
        None => Vec::new(),
    };

    let started = Instant::now();
    let mut prometheus_errors = Vec::new();
    let mut strand_errors = Vec::new();
    let mut mismatches = Vec::new();
    // Queries whose every answer is empty: legal, but they test little.
    let mut always_empty: BTreeMap<&str, bool> = BTreeMap::new();
    for request in &requests {
        let expected = run(&client, &prometheus.url, request).await;
        let what = || format!("{}\n    [{}]", request.expr(), request.describe(end));
        let expected = match expected {
            Ok(answer) => answer,
            Err(e) => {
                prometheus_errors.push(format!("  {}\n    Prometheus: {e}", what()));
                continue;
            }
        };
        *always_empty.entry(request.expr()).or_insert(true) &= expected.is_empty();
        if prom_only && filter.is_some() {
            eprintln!("{}\n    {expected:?}", what());
        }
        for (name, strand) in &targets {
            match run(&client, &strand.url(""), request).await {
                Err(e) => {
                    strand_errors.push(format!("  {}\n    {name}: {}", what(), truncate(&e, 500)))
                }
                Ok(got) => {
                    if let Some(diff) = compare(&expected, &got, request.ordered()) {
                        mismatches.push(format!("  {}\n    {name}: {diff}", what()));
                    }
                }
            }
        }
    }
    let empty: Vec<&&str> = always_empty
        .iter()
        .filter(|(_, e)| **e)
        .map(|(q, _)| q)
        .collect();
    eprintln!(
        "promql_diff: {} queries, {} requests in {:.1}s; Prometheus answered {}, \
         {} queries are empty at every time",
        queries.len(),
        requests.len(),
        started.elapsed().as_secs_f64(),
        requests.len() - prometheus_errors.len(),
        empty.len()
    );
    if prom_only {
        for q in &empty {
            eprintln!("  always empty: {q}");
        }
    }

    let mut report = String::new();
    for (title, items) in [
        ("Prometheus rejected (fix the corpus)", &prometheus_errors),
        ("Strand could not answer", &strand_errors),
        ("Strand's answer differs from Prometheus'", &mismatches),
    ] {
        if items.is_empty() {
            continue;
        }
        writeln!(
            report,
            "\n{title}: {} of {} requests",
            items.len(),
            requests.len()
        )
        .unwrap();
        for item in items.iter().take(MAX_REPORTED) {
            writeln!(report, "{item}").unwrap();
        }
        if items.len() > MAX_REPORTED {
            writeln!(report, "  ... and {} more", items.len() - MAX_REPORTED).unwrap();
        }
    }
    assert!(
        report.is_empty(),
        "PromQL differential test failed:{report}"
    );
}
