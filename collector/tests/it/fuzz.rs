//! Hostile input against the real binary: random mutations of valid
//! requests — OTLP protobuf and JSON (plain and gzip), gzip bombs, remote
//! write, `_bulk` NDJSON, Loki pushes (JSON, protobuf+snappy), PromQL,
//! LogQL, log queries, TraceQL, dashboard JSON and the query
//! APIs' parameters — each sent through the daemon's real decoding and
//! query paths. Every answer must be a 2xx or a 4xx with a reason (never a
//! 5xx but a query's timeout, never a dropped connection), a valid trace sent after each target
//! must still be stored and found, and the daemon must log no panic.
//!
//! Deterministic for a seed: `STRAND_FUZZ_SEED` replays a run (a failure
//! prints its seed), `STRAND_FUZZ_CASES` sets the cases per target (200 by
//! default; raise it for a long run outside CI, e.g. 100000).

use std::io::Write as _;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strand_testkit::{DEADLINE, Strand, eventually};

use crate::support::remote_write as rw;
use crate::support::{STRAND_BINARY, gzip};

const TRACES_JSON: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"fuzz"}}]},"scopeSpans":[{"scope":{"name":"s","version":"1"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173","name":"GET /x","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000","attributes":[{"key":"http.status_code","value":{"intValue":"500"}},{"key":"list","value":{"arrayValue":{"values":[{"doubleValue":1.5},{"boolValue":true},{"kvlistValue":{"values":[{"key":"k","value":{"bytesValue":"AAE="}}]}}]}}}],"events":[{"timeUnixNano":"1700000000050000000","name":"exception","attributes":[{"key":"exception.message","value":{"stringValue":"boom"}}]}],"links":[{"traceId":"5b8efff798038103d269b633813fc60d","spanId":"eee19b7ec3c1b175"}],"status":{"code":2,"message":"failed"}}]}]}]}"#;

const LOGS_JSON: &str = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"fuzz"}}]},"scopeLogs":[{"logRecords":[{"timeUnixNano":"1700000000000000000","observedTimeUnixNano":"1700000000000000001","severityNumber":17,"severityText":"ERROR","body":{"stringValue":"payment declined for order 42"},"attributes":[{"key":"order.id","value":{"intValue":"42"}}],"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}"#;

const METRICS_JSON: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"fuzz"}}]},"scopeMetrics":[{"metrics":[{"name":"http.server.duration","unit":"ms","sum":{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[{"startTimeUnixNano":"1700000000000000000","timeUnixNano":"1700000010000000000","asInt":"7","attributes":[{"key":"route","value":{"stringValue":"/x"}}]}]}},{"name":"latency","histogram":{"aggregationTemporality":2,"dataPoints":[{"timeUnixNano":"1700000010000000000","count":"3","sum":4.5,"bucketCounts":["1","2","0"],"explicitBounds":[1,5]}]}},{"name":"temp","gauge":{"dataPoints":[{"timeUnixNano":"1700000010000000000","asDouble":-3.5}]}}]}]}]}"#;

const BULK: &str = "{\"index\":{\"_index\":\"app\"}}\n{\"@timestamp\":\"2026-12-04T10:00:00Z\",\"level\":\"error\",\"service\":\"order\",\"message\":\"declined\",\"trace_id\":\"5b8efff798038103d269b633813fc60c\"}\n{\"create\":{}}\n{\"time\":1700000000,\"msg\":\"ok\",\"labels\":{\"a\":1}}\n";

const DASHBOARD: &str = r#"{"title":"Fuzz","panels":[{"title":"rate","query":"sum by (job) (rate(http_requests_total[5m]))","unit":"reqps"},{"title":"up","query":"up"}]}"#;

const LOG_QUERIES: [&str; 6] = [
    "declined AND service:payment",
    "severity:error OR (level:warn -timeout)",
    "\"order 42\" trace_id:5b8efff798038103d269b633813fc60c",
    "attributes.http.route:/api/* NOT body:health",
    "service:(order OR gateway) AND NOT \"slow query\"",
    "*",
];

const TRACEQL_QUERIES: [&str; 4] = [
    r#"{ resource.service.name = "fuzz" && span.http.status_code >= 500 }"#,
    r#"{ kind = server } >> { status = error || name =~ "GET.*" }"#,
    "({ duration > 1.5ms } && { .list != \"x\" }) || { traceDuration < 2s }",
    "{ } | count() > 1",
];

const API_PARAMS: [&str; 8] = [
    "/api/traces?service=order&operation=GET%20%2Fx&limit=20&lookback=1h&minDuration=1ms&maxDuration=2s&tags=%7B%22error%22%3A%22true%22%7D",
    "/api/traces?service=order&start=1700000000000000&end=1700003600000000&limit=5",
    "/api/services/order/operations?spanKind=server",
    "/api/dependencies?endTs=1700003600000&lookback=3600000",
    "/api/logs?q=error&start=1700000000000&end=1700003600000&limit=100&service=order&severity=error",
    "/api/logs/histogram?q=*&start=1700000000000&end=1700003600000&buckets=60",
    "/api/v1/series?match[]=up%7Bjob%3D%22x%22%7D&start=1700000000&end=1700003600",
    "/api/v1/label/job/values?match[]=up&start=-1y&end=now",
];

/// Tokens a mutation may splice in: brackets, quotes, escapes, keywords,
/// extreme numbers, odd Unicode.
const TOKENS: [&str; 24] = [
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    "'",
    "`",
    "[5m]",
    "[1y:1ms]",
    " by ",
    " offset -1y",
    " @ end()",
    "1e309",
    "-0x7fffffffffffffff",
    "NaN",
    "%",
    "%ZZ",
    "\u{0}",
    "\u{feff}",
    "ℵ",
    " OR ",
];

/// What a target's requests look like.
enum Send {
    /// POST to a path on the OTLP/HTTP listener.
    Otlp(&'static str, &'static str),
    /// POST gzip-compressed to a path on the OTLP/HTTP listener.
    OtlpGzip(&'static str, &'static str),
    /// POST snappy-compressed protobuf to `/api/v1/write`.
    RemoteWrite,
    Bulk,
    /// The mutated text as the `query` of an instant and a range query.
    PromQl,
    /// The mutated text as `q` of the log search, histogram and facets.
    LogQuery,
    /// The mutated text as the `query` of Loki's range and instant queries.
    LogQl,
    /// POST to Loki's push API, JSON.
    LokiJson,
    /// POST to Loki's push API, snappy-compressed protobuf.
    LokiProtobuf,
    /// The mutated text as TraceQL `q` of Tempo's search and tag values.
    TraceQl,
    Dashboard,
    /// The mutated text as a path and query string on the API port.
    ApiGet,
}

struct Target {
    name: &'static str,
    send: Send,
    seeds: Vec<Vec<u8>>,
    text: bool,
}

fn protobuf<M: Message + serde::de::DeserializeOwned>(json: &str) -> Vec<u8> {
    serde_json::from_str::<M>(json)
        .expect("the seed parses")
        .encode_to_vec()
}

fn targets() -> Vec<Target> {
    let write = rw::request(vec![
        rw::series(
            "http_requests_total",
            &[("job", "api"), ("instance", "a:1")],
            &[(1_700_000_000_000, 1.0), (1_700_000_015_000, 2.0)],
        ),
        rw::series("up", &[("job", "api")], &[(1_700_000_000_000, 1.0)]),
    ])
    .encode_to_vec();
    let promql: Vec<Vec<u8>> = include_str!("promql_diff/queries.txt")
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            line.trim_start_matches("[instant]")
                .trim()
                .replace("{START}", "1700000000")
                .replace("{END}", "1700003000")
                .into_bytes()
        })
        .collect();
    let text = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect();
    let logql: Vec<Vec<u8>> = crate::loki::TABLE
        .iter()
        .map(|(query, _)| query.as_bytes().to_vec())
        .collect();
    let target = |name, send, seeds, text| Target {
        name,
        send,
        seeds,
        text,
    };
    vec![
        target(
            "OTLP traces protobuf",
            Send::Otlp("/v1/traces", "application/x-protobuf"),
            vec![protobuf::<ExportTraceServiceRequest>(TRACES_JSON)],
            false,
        ),
        target(
            "OTLP logs protobuf",
            Send::Otlp("/v1/logs", "application/x-protobuf"),
            vec![protobuf::<ExportLogsServiceRequest>(LOGS_JSON)],
            false,
        ),
        target(
            "OTLP metrics protobuf",
            Send::Otlp("/v1/metrics", "application/x-protobuf"),
            vec![protobuf::<ExportMetricsServiceRequest>(METRICS_JSON)],
            false,
        ),
        target(
            "OTLP traces JSON",
            Send::Otlp("/v1/traces", "application/json"),
            text(&[TRACES_JSON]),
            true,
        ),
        target(
            "OTLP logs JSON",
            Send::Otlp("/v1/logs", "application/json"),
            text(&[LOGS_JSON]),
            true,
        ),
        target(
            "OTLP metrics JSON",
            Send::Otlp("/v1/metrics", "application/json"),
            text(&[METRICS_JSON]),
            true,
        ),
        target(
            "OTLP traces protobuf, gzip",
            Send::OtlpGzip("/v1/traces", "application/x-protobuf"),
            vec![protobuf::<ExportTraceServiceRequest>(TRACES_JSON)],
            false,
        ),
        target("remote write", Send::RemoteWrite, vec![write], false),
        target("_bulk", Send::Bulk, text(&[BULK]), true),
        target("PromQL", Send::PromQl, promql, true),
        target("log queries", Send::LogQuery, text(&LOG_QUERIES), true),
        target("LogQL", Send::LogQl, logql, true),
        target(
            "Loki push JSON",
            Send::LokiJson,
            vec![
                crate::loki::data_set(1_700_000_000_000_000_000)
                    .to_string()
                    .into_bytes(),
            ],
            true,
        ),
        target(
            "Loki push protobuf",
            Send::LokiProtobuf,
            vec![crate::loki::protobuf_push(
                r#"{job="fuzz", level="warn"}"#,
                3,
                1_700_000_000_000_000_000,
            )],
            false,
        ),
        target("TraceQL", Send::TraceQl, text(&TRACEQL_QUERIES), true),
        target("dashboard JSON", Send::Dashboard, text(&[DASHBOARD]), true),
        target("API parameters", Send::ApiGet, text(&API_PARAMS), true),
    ]
}

/// One to four random edits: bit flips, random bytes, insertions,
/// deletions, duplicated ranges, truncation, and (for text) spliced tokens.
fn mutate(rng: &mut StdRng, seed: &[u8], text: bool) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = bytes.len();
        let at = rng.random_range(0..=len);
        match rng.random_range(0..7) {
            0 if len > 0 => bytes[at.min(len - 1)] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => bytes[at.min(len - 1)] = rng.random(),
            2 => {
                let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                bytes.splice(at..at, junk);
            }
            3 => {
                let end = rng.random_range(at..=len.min(at + 64));
                bytes.drain(at..end);
            }
            4 => {
                let end = rng.random_range(at..=len.min(at + 256));
                let copy = bytes[at..end].to_vec();
                for _ in 0..rng.random_range(1..8) {
                    bytes.splice(at..at, copy.iter().copied());
                }
            }
            5 => bytes.truncate(at),
            _ if text => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
                bytes.splice(at..at, token.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}

/// Sends one case; returns a description of each answer that is not a
/// 2xx or a 4xx with a body.
async fn send(
    client: &reqwest::Client,
    daemon: &Strand,
    target: &Target,
    case: Vec<u8>,
) -> Vec<String> {
    let text = String::from_utf8_lossy(&case).into_owned();
    let requests: Vec<reqwest::RequestBuilder> = match target.send {
        Send::Otlp(path, content_type) => vec![
            client
                .post(daemon.otlp_http_url(path))
                .header("content-type", content_type)
                .body(case),
        ],
        Send::OtlpGzip(path, content_type) => vec![
            client
                .post(daemon.otlp_http_url(path))
                .header("content-type", content_type)
                .header("content-encoding", "gzip")
                .body(gzip(&case)),
        ],
        Send::RemoteWrite => vec![
            client
                .post(daemon.url("/api/v1/write"))
                .header("content-type", "application/x-protobuf")
                .header("content-encoding", "snappy")
                .body(rw::snappy(&case)),
        ],
        Send::Bulk => vec![
            client
                .post(daemon.url("/_bulk"))
                .header("content-type", "application/x-ndjson")
                .body(case),
        ],
        Send::PromQl => vec![
            client
                .post(daemon.url("/api/v1/query"))
                .form(&[("query", text.as_str()), ("time", "1700003000")]),
            client.post(daemon.url("/api/v1/query_range")).form(&[
                ("query", text.as_str()),
                ("start", "1700000000"),
                ("end", "1700003000"),
                ("step", "60"),
            ]),
        ],
        Send::LogQuery => ["/api/logs", "/api/logs/histogram", "/api/logs/facets"]
            .iter()
            .map(|path| client.get(daemon.url(path)).query(&[("q", text.as_str())]))
            .collect(),
        Send::LogQl => vec![
            client.get(daemon.url("/loki/api/v1/query_range")).query(&[
                ("query", text.as_str()),
                ("start", "1699999000000000000"),
                ("end", "1700003000000000000"),
            ]),
            client
                .post(daemon.url("/loki/api/v1/query"))
                .form(&[("query", text.as_str()), ("time", "1700003000")]),
        ],
        Send::LokiJson => vec![
            client
                .post(daemon.url("/loki/api/v1/push"))
                .header("content-type", "application/json")
                .body(case),
        ],
        Send::LokiProtobuf => vec![
            client
                .post(daemon.url("/loki/api/v1/push"))
                .header("content-type", "application/x-protobuf")
                .body(rw::snappy(&case)),
        ],
        Send::TraceQl => [
            "/api/search",
            "/api/v2/search/tag/span.http.status_code/values",
        ]
        .iter()
        .map(|path| client.get(daemon.url(path)).query(&[("q", text.as_str())]))
        .collect(),
        Send::Dashboard => vec![
            client
                .put(daemon.url("/api/dashboards/fuzz"))
                .header("content-type", "application/json")
                .body(case),
        ],
        Send::ApiGet => {
            let path = if text.starts_with('/') {
                text.clone()
            } else {
                format!("/{text}")
            };
            match reqwest::Url::parse(&daemon.url(&path)) {
                Ok(url) => vec![client.get(url)],
                // Not even a URL: nothing reaches the daemon.
                Err(_) => Vec::new(),
            }
        }
    };
    let mut problems = Vec::new();
    for request in requests {
        match request.send().await {
            Err(error) => problems.push(format!("no answer: {error}")),
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                // A query over its time budget is a 503 saying so.
                let timed_out = status == 503 && body.contains("timed out");
                if (status >= 500 && !timed_out) || (status >= 400 && body.is_empty()) {
                    problems.push(format!("HTTP {status}: {body}"));
                }
            }
        }
    }
    problems
        .into_iter()
        .map(|problem| format!("{}: {problem} for {text:?}", target.name))
        .collect()
}

/// A valid trace, sent now and looked up: what mutated requests must not
/// disturb.
async fn assert_still_stores_and_finds(client: &reqwest::Client, daemon: &Strand, n: u32) {
    let trace_id = format!("{:032x}", 0xf022_0000_u128 + u128::from(n));
    let json = TRACES_JSON.replace("5b8efff798038103d269b633813fc60c", &trace_id);
    let response = client
        .post(daemon.otlp_http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the daemon stopped answering: {e}\n{}", daemon.log()));
    assert_eq!(response.status(), 200, "a valid trace refused");
    let path = format!("/api/traces/{trace_id}");
    eventually(DEADLINE, || async {
        (daemon.get_json(&path).await.0 == 200).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("trace {trace_id} is not found:\n{}", daemon.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_get_clear_refusals_and_disturb_nothing() {
    let seed: u64 = std::env::var("STRAND_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let cases: usize = std::env::var("STRAND_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    eprintln!("fuzz: STRAND_FUZZ_SEED={seed} STRAND_FUZZ_CASES={cases}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::spawn(
        STRAND_BINARY,
        &dir.path().join("data"),
        &[
            "--max-body-bytes",
            "1048576",
            "--wal-queue-bytes",
            "16777216",
            "--query-timeout",
            "5s",
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut problems = Vec::new();
    for (n, target) in targets().iter().enumerate() {
        for _ in 0..cases {
            let seed_bytes = &target.seeds[rng.random_range(0..target.seeds.len())];
            let case = mutate(&mut rng, seed_bytes, target.text);
            problems.extend(send(&client, &daemon, target, case).await);
        }
        assert_still_stores_and_finds(&client, &daemon, n as u32).await;
    }

    // Keys tantivy reserves bytes of (JSON path separators) and other odd
    // keys: stored, and the log still found.
    for (n, key) in [
        "a\\u0000b",
        "a\\u0001b",
        "",
        "a.b.c",
        "\\u007f",
        &"k".repeat(5000),
    ]
    .iter()
    .enumerate()
    {
        let body = format!("odd attribute key {n}");
        let json = LOGS_JSON
            .replace("order.id", key)
            .replace("payment declined for order 42", &body);
        let response = client
            .post(daemon.otlp_http_url("/v1/logs"))
            .header("content-type", "application/json")
            .body(json)
            .send()
            .await
            .unwrap_or_else(|e| panic!("no answer for key {key:?}: {e}\n{}", daemon.log()));
        assert_eq!(response.status(), 200, "key {key:?}");
        let query = format!("\"{body}\"");
        eventually(DEADLINE, || async {
            let (status, found) = daemon
                .get_json_query(
                    "/api/logs",
                    &[
                        ("q", query.as_str()),
                        ("start", "0"),
                        ("end", "4102444800000"),
                    ],
                )
                .await;
            (status == 200 && found["logs"].as_array().is_some_and(|l| l.len() == 1)).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("the log with key {key:?} is not found:\n{}", daemon.log()));
    }

    // Bombs: a gzip body that inflates far past the limit, and one whose
    // inflated size is just over it.
    for inflated in [1usize << 30, (1 << 20) + 1] {
        let bomb = {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
            let zeros = vec![0u8; 1 << 20];
            let mut left = inflated;
            while left > 0 {
                let n = left.min(zeros.len());
                encoder.write_all(&zeros[..n]).unwrap();
                left -= n;
            }
            encoder.finish().unwrap()
        };
        let response = client
            .post(daemon.otlp_http_url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "gzip")
            .body(bomb)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "a gzip bomb of {inflated} bytes");
    }
    assert_still_stores_and_finds(&client, &daemon, 999).await;

    assert!(
        problems.is_empty(),
        "seed {seed}: {} bad answers:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let log = daemon.log();
    assert!(
        !log.contains("panicked"),
        "seed {seed}: the daemon panicked:\n{log}"
    );
    daemon.stop().await;
}
