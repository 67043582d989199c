//! Spans over a real ClickHouse (Debian's 18.16): the same OTLP requests
//! sent to an embedded Strand and to ClickHouse-backed ones give equal
//! answers from the Jaeger API — trace by id, searches, services,
//! operations, dependencies — answered from ClickHouse by a node that
//! never saw the spans; acknowledged spans survive `kill -9` of a node and
//! a ClickHouse that was down; two nodes over two shards (`Distributed`
//! tables) both answer with everything, lose nothing acknowledged when one
//! is killed mid-ingest, and give a clear error while a shard is down;
//! retention drops whole days. Logs likewise: the same records give equal
//! answers from the log explorer's API (pages and cursors, histograms,
//! facets, a trace's logs, errors), Loki's and `count_logs`. Over https,
//! a node checks ClickHouse's certificate against the CAs it is given.
//! Metrics likewise: the same samples give equal answers from the
//! Prometheus API (PromQL, series, labels, metadata; the whole PromQL
//! corpus runs over ClickHouse in `promql_diff`).

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, KeyValueList, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use serde_json::Value;
use strand_testkit::pki::TestCa;
use strand_testkit::{ClickHouse, ClickHouseCluster, DEADLINE, Strand, eventually};

use crate::support::STRAND_BINARY;
use crate::support::remote_write::{self, MetricMetadata as WireMetadata, WriteRequest};

const SERVICES: [&str; 4] = ["gateway", "order", "inventory", "payment"];

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(value: &str) -> any_value::Value {
    any_value::Value::StringValue(value.into())
}

/// `traces` shop requests ending `now_nanos`, one a second: gateway ->
/// order -> (inventory, payment), every fifth payment failing, with
/// routes, users and durations that differ from trace to trace. Trace
/// `n`'s id is `seed` and `n` in big-endian.
fn shop_requests(seed: u64, traces: u64, now_nanos: u64) -> ExportTraceServiceRequest {
    let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES.len()];
    for n in 0..traces {
        let mut trace_id = seed.to_be_bytes().to_vec();
        trace_id.extend(n.to_be_bytes());
        let start = now_nanos - (traces - n) * 1_000_000_000;
        let failed = n % 5 == 0;
        let route = ["/api/orders", "/api/cart", "/api/checkout"][(n % 3) as usize];
        let span_id = |service: usize| ((n << 8) | (service as u64 + 1)).to_be_bytes().to_vec();
        let span = |service: usize,
                    parent: Option<usize>,
                    name: &str,
                    kind: SpanKind,
                    offset: u64,
                    millis: u64| Span {
            trace_id: trace_id.clone(),
            span_id: span_id(service),
            parent_span_id: parent.map(span_id).unwrap_or_default(),
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: start + offset * 1_000_000,
            end_time_unix_nano: start + (offset + millis) * 1_000_000,
            attributes: vec![
                attribute("http.route", text(route)),
                attribute("user.id", text(&format!("user-{}", n % 7))),
                attribute("attempt", any_value::Value::IntValue((n % 2) as i64)),
            ],
            ..Default::default()
        };
        by_service[0].push(span(
            0,
            None,
            &format!("POST {route}"),
            SpanKind::Server,
            0,
            40 + n % 50,
        ));
        by_service[1].push(span(
            1,
            Some(0),
            "create order",
            SpanKind::Server,
            2,
            30 + n % 40,
        ));
        by_service[2].push(span(2, Some(1), "reserve", SpanKind::Server, 5, 5 + n % 9));
        let mut payment = span(3, Some(1), "charge", SpanKind::Server, 12, 10 + n % 20);
        if failed {
            payment.status = Some(Status {
                code: status::StatusCode::Error as i32,
                message: "card declined".into(),
            });
        }
        by_service[3].push(payment);
    }
    ExportTraceServiceRequest {
        resource_spans: SERVICES
            .iter()
            .zip(by_service)
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        attribute("service.name", text(service)),
                        attribute("host.name", text(&format!("{service}-1"))),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

async fn send(daemon: &Strand, request: ExportTraceServiceRequest) {
    let mut client = TraceServiceClient::connect(daemon.grpc_endpoint())
        .await
        .expect("connects");
    client.export(request).await.expect("spans acknowledged");
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn clickhouse_args<'a>(clickhouse: &'a ClickHouse, database: &'a str) -> Vec<&'a str> {
    vec![
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &clickhouse.url,
        "--clickhouse-database",
        database,
    ]
}

/// Every Jaeger API answer the differential compares, by what it asked.
async fn jaeger_answers(
    daemon: &Strand,
    trace_ids: &[String],
    end_micros: u64,
) -> Vec<(String, Value)> {
    let mut asked: Vec<(String, Vec<(&str, String)>)> = vec![("/api/services".into(), vec![])];
    for service in SERVICES {
        asked.push((format!("/api/services/{service}/operations"), vec![]));
    }
    for id in trace_ids {
        asked.push((format!("/api/traces/{id}"), vec![]));
    }
    let window = |params: &[(&'static str, &str)]| {
        let mut all: Vec<(&str, String)> =
            params.iter().map(|(k, v)| (*k, v.to_string())).collect();
        all.push(("end", end_micros.to_string()));
        all.push(("start", (end_micros - 3_600_000_000).to_string()));
        all
    };
    for params in [
        window(&[("service", "gateway"), ("limit", "20")]),
        window(&[
            ("service", "payment"),
            ("tags", r#"{"error":"true"}"#),
            ("limit", "500"),
        ]),
        window(&[
            ("service", "gateway"),
            ("operation", "POST /api/cart"),
            ("limit", "500"),
        ]),
        window(&[
            ("service", "inventory"),
            ("minDuration", "12ms"),
            ("limit", "500"),
        ]),
        window(&[
            ("service", "order"),
            ("maxDuration", "35ms"),
            ("limit", "500"),
        ]),
        window(&[
            ("service", "order"),
            ("tags", r#"{"user.id":"user-3","attempt":"1"}"#),
            ("limit", "500"),
        ]),
        window(&[
            ("service", "payment"),
            ("tags", r#"{"host.name":"payment-1"}"#),
            ("limit", "7"),
        ]),
        window(&[
            ("service", "gateway"),
            ("tags", r#"{"http.route":"/nowhere"}"#),
        ]),
        vec![
            ("endTs", (end_micros / 1000).to_string()),
            ("lookback", "7200000".into()),
        ],
    ] {
        let path = if params.iter().any(|(k, _)| *k == "endTs") {
            "/api/dependencies"
        } else {
            "/api/traces"
        };
        asked.push((path.into(), params));
    }
    let mut answers = Vec::new();
    for (path, params) in asked {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = daemon.get_json_query(&path, &params).await;
        let unknown = path.ends_with("0123456789abcdef0123456789abcdef");
        assert_eq!(
            status,
            if unknown { 404 } else { 200 },
            "{path} {params:?}: {body}"
        );
        answers.push((format!("{path} {params:?}"), body["data"].clone()));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_answers_every_trace_query_as_the_embedded_store_does() {
    let clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    let embedded = Strand::start(&dir.path().join("embedded"), &[]).await;
    let args = clickhouse_args(&clickhouse, "strand_diff");
    let node = Strand::start(&dir.path().join("node-a"), &args).await;

    let end = now_nanos();
    for seed in 1..=3 {
        let request = shop_requests(seed, 150, end - seed * 1_000_000);
        send(&embedded, request.clone()).await;
        send(&node, request).await;
    }
    let trace_ids: Vec<String> = [(1u64, 0u64), (1, 149), (2, 5), (3, 77)]
        .iter()
        .map(|(seed, n)| format!("{}{}", hex(seed), hex(n)))
        .chain(["0123456789abcdef0123456789abcdef".into()])
        .collect();
    let end_micros = end / 1000 + 1_000_000;
    // Dependencies count flushed spans: wait for both flushes.
    for daemon in [&embedded, &node] {
        let end_ms = (end_micros / 1000).to_string();
        let flushed = eventually(DEADLINE, || async {
            let params = [("endTs", end_ms.as_str()), ("lookback", "7200000")];
            let (_, body) = daemon.get_json_query("/api/dependencies", &params).await;
            (body["data"].as_array().map(Vec::len) == Some(3)).then_some(())
        })
        .await;
        assert!(flushed.is_some(), "no dependencies: {}", daemon.log());
    }
    let expected = jaeger_answers(&embedded, &trace_ids, end_micros).await;
    assert_eq!(expected[5].1[0]["spans"].as_array().map(Vec::len), Some(4));
    let answered = jaeger_answers(&node, &trace_ids, end_micros).await;
    for (want, got) in expected.iter().zip(&answered) {
        assert_eq!(want, got, "node that ingested: {}", want.0);
    }
    // Stopped and replaced by a node with an empty data directory: the
    // answers come from ClickHouse alone.
    node.stop().await;
    let fresh = Strand::start(&dir.path().join("node-b"), &args).await;
    let answered = jaeger_answers(&fresh, &trace_ids, end_micros).await;
    for (want, got) in expected.iter().zip(&answered) {
        assert_eq!(want, got, "from ClickHouse: {}", want.0);
    }
    let dependencies = &expected.last().unwrap().1;
    assert_eq!(
        dependencies.as_array().map(Vec::len),
        Some(3),
        "{dependencies}"
    );
    // A restart migrates nothing twice.
    let migrations = clickhouse
        .query("SELECT count() FROM strand_diff.strand_schema_migrations")
        .await;
    assert_eq!(migrations.trim(), "4");
    fresh.stop().await;
    embedded.stop().await;
}

/// Whether `path` (a trace of [`shop_requests`]) answers with its four
/// spans before the harness's deadline.
async fn whole_trace_arrives(daemon: &Strand, path: &str) -> bool {
    eventually(DEADLINE, || async {
        let (status, body) = daemon.get_json(path).await;
        (status == 200 && body["data"][0]["spans"].as_array().map(Vec::len) == Some(4))
            .then_some(())
    })
    .await
    .is_some()
}

fn hex(n: &u64) -> String {
    format!("{n:016x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_and_samples_reach_clickhouse_after_kill_9_and_an_outage() {
    let mut clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let mut args = clickhouse_args(&clickhouse, "strand_crash");
    args.extend(["--metrics-flush-interval", "1h", "--flush-interval", "1h"]);
    // Acknowledged, only in the node's WAL and buffer when it dies.
    let node = Strand::spawn(STRAND_BINARY, &data, &args).await;
    let end = now_nanos();
    send(&node, shop_requests(7, 20, end)).await;
    let end_ms = (end / 1_000_000) as i64 / 15_000 * 15_000;
    remote_write::write_ok(&node, &shop_samples("before", 20, end_ms)).await;
    node.kill9();
    let reader_args = clickhouse_args(&clickhouse, "strand_crash");
    let reader = Strand::start(&dir.path().join("reader"), &reader_args).await;
    let first = format!("/api/traces/{}{}", hex(&7), hex(&0));
    let (status, _) = reader.get_json(&first).await;
    assert_eq!(status, 404, "not in ClickHouse before the node comes back");
    assert_eq!(shop_sample_count(&reader, end_ms / 1000 + 1).await, 0);

    // ClickHouse goes down; the node restarts, replays its WAL and keeps
    // taking spans into it up to its bound, then answers UNAVAILABLE; once
    // ClickHouse is back, everything acknowledged arrives and the node
    // takes spans again.
    let mut restart_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    restart_args.truncate(args.len() - 4);
    restart_args.extend(
        [
            "--metrics-flush-interval",
            "200ms",
            "--flush-interval",
            "200ms",
            "--wal-max-bytes",
            "1048576",
        ]
        .map(String::from),
    );
    let restart_args: Vec<&str> = restart_args.iter().map(String::as_str).collect();
    clickhouse.stop();
    let (status, body) = reader.get_json(&first).await;
    assert_eq!(
        status, 503,
        "a clear error while ClickHouse is down: {body}"
    );
    assert!(body.to_string().contains("ClickHouse"), "{body}");
    let restarted = Strand::spawn(STRAND_BINARY, &data, &restart_args).await;
    let mut client = TraceServiceClient::connect(restarted.grpc_endpoint())
        .await
        .expect("connects");
    let mut acknowledged = vec![8u64];
    send(&restarted, shop_requests(8, 20, end)).await;
    remote_write::write_ok(&restarted, &shop_samples("during", 20, end_ms)).await;
    let refusal = loop {
        let seed = 100 + acknowledged.len() as u64;
        assert!(seed < 1_000, "the WAL bound never refused a request");
        match client.export(shop_requests(seed, 20, end)).await {
            Ok(_) => acknowledged.push(seed),
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(refusal.message().contains("--wal-max-bytes"), "{refusal:?}");
    assert!(
        acknowledged.len() > 2,
        "some requests went into the WAL first"
    );
    clickhouse.restart().await;
    let taken_again = eventually(DEADLINE, || async {
        let seed = 2_000;
        client
            .clone()
            .export(shop_requests(seed, 20, end))
            .await
            .ok()
    })
    .await;
    assert!(taken_again.is_some(), "{}", restarted.log());
    acknowledged.push(2_000);
    for seed in acknowledged.iter().copied().chain([7]) {
        for n in [0u64, 19] {
            let path = format!("/api/traces/{}{}", hex(&seed), hex(&n));
            assert!(
                whole_trace_arrives(&reader, &path).await,
                "{path} never came from ClickHouse: {}",
                restarted.log()
            );
        }
    }
    let stored = clickhouse
        .query("SELECT uniqExact(trace_id, span_id) FROM strand_crash.span_search")
        .await;
    assert_eq!(stored.trim(), ((acknowledged.len() + 1) * 80).to_string());
    // The samples from before the kill and from the outage, each once.
    let samples = 2 * SERVICES.len() * 3 * 20;
    let all_samples = eventually(DEADLINE, || async {
        (shop_sample_count(&reader, end_ms / 1000 + 1).await == samples).then_some(())
    })
    .await;
    assert!(all_samples.is_some(), "{}", restarted.log());
    restarted.stop().await;
    reader.stop().await;
}

/// Trace ids and their span counts in `database`'s spans, as ClickHouse
/// holds them (through the Distributed table with a cluster).
async fn stored_traces(clickhouse: &ClickHouse, database: &str) -> HashMap<String, u64> {
    clickhouse
        .query(&format!(
            "SELECT lower(hex(trace_id)), uniqExact(span_id) FROM {database}.span_search \
             GROUP BY trace_id FORMAT TSV"
        ))
        .await
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(id, spans)| (id.to_string(), spans.parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_two_shards_answer_with_everything_and_lose_nothing_acknowledged() {
    let mut cluster = ClickHouseCluster::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let urls = format!("{},{}", cluster.shards[0].url, cluster.shards[1].url);
    let args = [
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &urls,
        "--clickhouse-cluster",
        &cluster.cluster,
        "--clickhouse-database",
        "strand_cluster",
        "--flush-interval",
        "300ms",
        // Only the samples sent, so that both nodes' answers can be
        // compared: no node's own, none derived from spans.
        "--self-scrape-interval",
        "0s",
        "--derived-metrics-interval",
        "1h",
    ];
    let node_a = Strand::spawn(STRAND_BINARY, &dir.path().join("a"), &args).await;
    let node_b = Strand::spawn(STRAND_BINARY, &dir.path().join("b"), &args).await;

    // Both nodes take spans at once; node A is killed mid-ingest.
    let end = now_nanos();
    let endpoint = node_a.grpc_endpoint();
    let sender = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let Ok(mut client) = TraceServiceClient::connect(endpoint).await else {
            return acknowledged;
        };
        for seed in 1_000u64.. {
            match client.export(shop_requests(seed, 20, end)).await {
                Ok(_) => acknowledged.push(seed),
                Err(_) => break,
            }
        }
        acknowledged
    });
    let mut acknowledged = Vec::new();
    for seed in 5_000u64..5_010 {
        send(&node_b, shop_requests(seed, 20, end)).await;
        acknowledged.push(seed);
    }
    // The same logs through both nodes: each node's copy is its own.
    let log_records = 200;
    let (logs_start, logs_end) = (end - (log_records + 5) * 1_000_000_000, end);
    send_logs(&node_a, shop_logs(log_records, logs_end)).await;
    send_logs(&node_b, shop_logs(log_records, logs_end)).await;
    // Samples through both nodes; node A's are only in its WAL when it
    // dies (metrics go to ClickHouse every ten seconds).
    let end_ms = (end / 1_000_000) as i64 / 15_000 * 15_000;
    let points = 40;
    remote_write::write_ok(&node_a, &shop_samples("a", points, end_ms)).await;
    remote_write::write_ok(&node_b, &shop_samples("b", points, end_ms)).await;
    node_a.kill9();
    let from_a = sender.await.unwrap();
    assert!(from_a.len() > 1, "node A took spans before it was killed");
    acknowledged.extend(from_a);
    // Restarted, node A replays what it acknowledged into ClickHouse.
    let node_a = Strand::spawn(STRAND_BINARY, &dir.path().join("a"), &args).await;
    let complete = eventually(DEADLINE, || async {
        let stored = stored_traces(&cluster.shards[0], "strand_cluster").await;
        acknowledged
            .iter()
            .flat_map(|seed| (0..20u64).map(move |n| format!("{}{}", hex(seed), hex(&n))))
            .all(|id| stored.get(&id) == Some(&4))
            .then_some(stored)
    })
    .await;
    let stored = complete.unwrap_or_else(|| panic!("acknowledged spans missing: {}", node_a.log()));
    // Each trace lives on one shard, and both shards hold some.
    for shard in &cluster.shards {
        let local = shard
            .query("SELECT uniqExact(trace_id) FROM strand_cluster.spans_local")
            .await;
        let local: usize = local.trim().parse().unwrap();
        assert!(
            local > 0 && local < stored.len(),
            "{local} of {}",
            stored.len()
        );
    }
    // Either node answers every query with all of it, each span once.
    let ids: Vec<String> = acknowledged
        .iter()
        .step_by(3)
        .map(|seed| format!("{}{}", hex(seed), hex(&7)))
        .collect();
    let end_micros = end / 1000 + 1_000_000;
    let from_a = jaeger_answers(&node_a, &ids, end_micros).await;
    let from_b = jaeger_answers(&node_b, &ids, end_micros).await;
    for (a, b) in from_a.iter().zip(&from_b) {
        assert_eq!(a, b, "{}", a.0);
    }
    let logs_everywhere = eventually(DEADLINE, || async {
        let params = [
            ("q", ""),
            ("start", &*logs_start.to_string()),
            ("end", &*logs_end.to_string()),
            ("limit", "1"),
        ];
        let (_, body) = node_b.get_json_query("/api/logs", &params).await;
        (body["total"] == 2 * log_records).then_some(())
    })
    .await;
    assert!(logs_everywhere.is_some(), "{}", node_a.log());
    let logs_from_a = log_answers(&node_a, logs_start, logs_end).await;
    let logs_from_b = log_answers(&node_b, logs_start, logs_end).await;
    for (a, b) in logs_from_a.iter().zip(&logs_from_b) {
        assert_eq!(a, b, "{}: {}", a.0, difference(&a.1, &b.1));
    }
    for shard in &cluster.shards {
        let local = shard
            .query("SELECT count() FROM strand_cluster.logs_local")
            .await;
        let local: u64 = local.trim().parse().unwrap();
        assert!(local > 0 && local < 2 * log_records, "{local} log records");
    }
    let samples = 2 * SERVICES.len() * 3 * points as usize;
    let end_s = end_ms / 1000;
    // Each node reads the other's samples once that node's metrics flush
    // (every ten seconds) has inserted them.
    let metrics_everywhere = eventually(DEADLINE, || async {
        (shop_sample_count(&node_a, end_s).await == samples
            && shop_sample_count(&node_b, end_s).await == samples)
            .then_some(())
    })
    .await;
    assert!(metrics_everywhere.is_some(), "{}", node_a.log());
    let metrics_from_a = metric_answers(&node_a, end_s - 600, end_s).await;
    let metrics_from_b = metric_answers(&node_b, end_s - 600, end_s).await;
    for (a, b) in metrics_from_a.iter().zip(&metrics_from_b) {
        assert_eq!(a, b, "{}: {}", a.0, difference(&a.1, &b.1));
    }
    assert_eq!(
        metrics_from_a[6].1["data"]["result"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "counted by node: {}",
        metrics_from_a[6].1
    );
    // A series lives on one shard, and both shards hold some.
    for shard in &cluster.shards {
        let local = shard
            .query(
                "SELECT uniqExact(fingerprint) FROM strand_cluster.series_local \
                 WHERE metric LIKE 'shop%'",
            )
            .await;
        let local: usize = local.trim().parse().unwrap();
        let metrics = shard
            .query("SELECT DISTINCT metric FROM strand_cluster.series_local")
            .await;
        assert!(
            local > 0 && local < 2 * SERVICES.len() * 3,
            "{local} series: {metrics}"
        );
    }
    for (asked, answer) in &from_a {
        if asked.starts_with("/api/traces/") && !asked.contains("0123456789abcdef") {
            assert_eq!(
                answer[0]["spans"].as_array().map(Vec::len),
                Some(4),
                "{asked}"
            );
        }
    }

    // One shard down: a clear error, not a silently partial answer; full
    // answers once it is back.
    cluster.shards[1].stop();
    let path = format!("/api/traces/{}", ids[0]);
    let (status, body) = node_b.get_json(&path).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("ClickHouse"), "{body}");
    let (status, body) = node_b.get_json("/api/logs?q=declined").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("ClickHouse"), "{body}");
    let (status, body) = node_b
        .get_json_query("/api/v1/query", &[("query", "sum(shop_queue_depth)")])
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorType"], "unavailable", "{body}");
    assert!(body.to_string().contains("ClickHouse"), "{body}");
    cluster.shards[1].restart().await;
    assert!(
        whole_trace_arrives(&node_b, &path).await,
        "{path} after the shard came back"
    );
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_days_of_spans_logs_and_samples_in_clickhouse() {
    let clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = clickhouse_args(&clickhouse, "strand_retention");
    args.extend([
        "--trace-retention",
        "2d",
        "--log-retention",
        "2d",
        "--metric-retention",
        "2d",
        "--retention-interval",
        "1s",
        "--flush-interval",
        "200ms",
        "--metrics-flush-interval",
        "200ms",
    ]);
    let node = Strand::spawn(STRAND_BINARY, &dir.path().join("node"), &args).await;
    let day = 86_400 * 1_000_000_000;
    // Today's data spans the last 45 s: all of it must be in one day
    // partition, so a run just after midnight (UTC) waits for that.
    let into_day = now_nanos() % day;
    if into_day < 60_000_000_000 {
        tokio::time::sleep(std::time::Duration::from_nanos(60_000_000_000 - into_day)).await;
    }
    let now = now_nanos();
    // Three days old, and now.
    send(&node, shop_requests(30, 5, now - 3 * day)).await;
    send(&node, shop_requests(31, 5, now)).await;
    send_logs(&node, shop_logs(4, now - 3 * day)).await;
    send_logs(&node, shop_logs(4, now)).await;
    let now_ms = (now / 1_000_000) as i64;
    let day_ms = (day / 1_000_000) as i64;
    remote_write::write_ok(&node, &shop_samples("old", 4, now_ms - 3 * day_ms)).await;
    remote_write::write_ok(&node, &shop_samples("new", 4, now_ms)).await;
    let old = format!("/api/traces/{}{}", hex(&30), hex(&0));
    let new = format!("/api/traces/{}{}", hex(&31), hex(&0));
    let dropped = eventually(DEADLINE, || async {
        let (old_status, _) = node.get_json(&old).await;
        let days = clickhouse
            .query(
                "SELECT count(DISTINCT partition) FROM system.parts \
                 WHERE active AND database = 'strand_retention' AND table = 'spans'",
            )
            .await;
        (old_status == 404 && days.trim() == "1").then_some(())
    })
    .await;
    assert!(dropped.is_some(), "the old day stayed: {}", node.log());
    let (status, body) = node.get_json(&new).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["spans"].as_array().map(Vec::len), Some(4));
    // Only today's four records are left, in one day partition.
    let week = (now - 7 * day).to_string();
    let logs_dropped = eventually(DEADLINE, || async {
        let days = clickhouse
            .query(
                "SELECT count(DISTINCT partition) FROM system.parts \
                 WHERE active AND database = 'strand_retention' AND table = 'logs'",
            )
            .await;
        let params = [("q", ""), ("start", week.as_str()), ("limit", "10")];
        let (_, body) = node.get_json_query("/api/logs", &params).await;
        (days.trim() == "1" && body["total"] == 4).then_some(())
    })
    .await;
    assert!(
        logs_dropped.is_some(),
        "the old day of logs stayed: {}",
        node.log()
    );
    assert!(
        node.log()
            .lines()
            .any(|line| line.contains("PartitionDropped") && line.contains("log_traces")),
        "{}",
        node.log()
    );
    // Samples too: only today's are left.
    let old_samples = (now_ms / 1000 - 3 * 86_400).to_string();
    let metrics_dropped = eventually(DEADLINE, || async {
        let days = clickhouse
            .query(
                "SELECT count(DISTINCT partition) FROM system.parts \
                 WHERE active AND database = 'strand_retention' AND table = 'samples'",
            )
            .await;
        let (_, body) = node
            .get_json_query(
                "/api/v1/query",
                &[("query", "count(shop_queue_depth)"), ("time", &old_samples)],
            )
            .await;
        (days.trim() == "1" && body["data"]["result"] == serde_json::json!([])).then_some(())
    })
    .await;
    assert!(
        metrics_dropped.is_some(),
        "the old day of samples stayed: {}",
        node.log()
    );
    assert_eq!(
        shop_sample_count(&node, now_ms / 1000 + 1).await,
        SERVICES.len() * 3 * 4
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_sent_and_a_refusal_is_a_clear_error() {
    let clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = clickhouse_args(&clickhouse, "strand_auth");
    args.extend([
        "--clickhouse-user",
        "default",
        "--clickhouse-password",
        "wrong",
    ]);
    // The node starts, takes spans into its WAL, and says why ClickHouse
    // refuses it.
    let node = Strand::start(&dir.path().join("refused"), &args).await;
    send(&node, shop_requests(40, 1, now_nanos())).await;
    let (status, body) = node.get_json("/api/traces?service=order").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.to_string().contains("Wrong password for user default"),
        "{body}"
    );
    node.stop().await;
    // The right credentials (the server's default user has no password).
    let mut args = clickhouse_args(&clickhouse, "strand_auth");
    args.extend(["--clickhouse-user", "default", "--clickhouse-password", ""]);
    let node = Strand::start(&dir.path().join("refused"), &args).await;
    let path = format!("/api/traces/{}{}", hex(&40), hex(&0));
    assert!(
        whole_trace_arrives(&node, &path).await,
        "the WAL's spans reach ClickHouse: {}",
        node.log()
    );
    node.stop().await;
}

/// `records` log records ending `now_nanos`, one a second plus a
/// nanosecond each (no two share a timestamp), across the shop's services
/// with varied severities, messages, attributes (scalar, nested, dotted)
/// and resources; every third in a trace.
fn shop_logs(records: u64, now_nanos: u64) -> ExportLogsServiceRequest {
    let mut by_service: Vec<Vec<LogRecord>> = vec![Vec::new(); SERVICES.len()];
    for i in 0..records {
        let service = (i % 4) as usize;
        let time = now_nanos - (records - i) * 1_000_000_000 + i;
        let body = match service {
            0 => format!("GET /api/orders 200 {}ms", i % 50),
            1 => format!("order {i} created for customer user-{}", i % 7),
            2 => format!("stock reserved for sku-{}", i % 13),
            _ if i % 5 == 3 => format!("card declined for order {i}"),
            _ => format!("charge ok for order {i}"),
        };
        let mut attributes = vec![
            attribute("order_id", any_value::Value::IntValue((i % 50) as i64)),
            attribute("user.id", text(&format!("user-{}", i % 7))),
            attribute("ms", any_value::Value::DoubleValue((i % 30) as f64 + 0.5)),
        ];
        if service == 3 {
            attributes.push(attribute("peer", text("pay-1.eu-west")));
        }
        if service == 0 {
            attributes.push(attribute(
                "http",
                any_value::Value::KvlistValue(KeyValueList {
                    values: vec![attribute("route", text("/api/orders"))],
                }),
            ));
        }
        let traced = i % 3 == 0;
        by_service[service].push(LogRecord {
            time_unix_nano: time,
            observed_time_unix_nano: time,
            severity_number: [9, 13, 17, 5][((i / 4) % 4) as usize],
            body: Some(AnyValue {
                value: Some(text(&body)),
            }),
            attributes,
            trace_id: if traced {
                [[0xab; 8], (i / 9).to_be_bytes()].concat()
            } else {
                Vec::new()
            },
            span_id: if traced {
                i.to_be_bytes().to_vec()
            } else {
                Vec::new()
            },
            ..Default::default()
        });
    }
    ExportLogsServiceRequest {
        resource_logs: SERVICES
            .iter()
            .zip(by_service)
            .map(|(service, log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        attribute("service.name", text(service)),
                        attribute("host.name", text(&format!("{service}-1"))),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

async fn send_logs(daemon: &Strand, request: ExportLogsServiceRequest) {
    let mut client = LogsServiceClient::connect(daemon.grpc_endpoint())
        .await
        .expect("connects");
    client.export(request).await.expect("logs acknowledged");
}

/// `value` without the records' ids and cursors, which name where a
/// backend keeps a record, not what it is, and without Loki's timings.
fn without_ids(mut value: Value) -> Value {
    if let Some(data) = value["data"].as_object_mut() {
        data.remove("stats");
    }
    if let Some(logs) = value["logs"].as_array_mut() {
        for log in logs {
            log.as_object_mut().unwrap().remove("id");
        }
    }
    let has_next = !value["nextCursor"].is_null();
    if let Some(object) = value.as_object_mut()
        && object.contains_key("nextCursor")
    {
        object.insert("nextCursor".into(), Value::Bool(has_next));
    }
    value
}

/// The log queries the differential asks, in the explorer's language.
const LOG_QUERIES: &[&str] = &[
    "",
    "declined",
    "\"card declined\"",
    "Card DECLINED",
    "service:payment",
    "severity:error",
    "service:pay*",
    "reserv*",
    "attributes.order_id:42",
    "attributes.peer:\"pay-1.eu-west\"",
    "attributes.user.id:user-3",
    "attributes.http.route:\"/api/orders\"",
    "resource.host.name:payment-1",
    "attribute_keys:peer",
    "attributes.peer:*",
    "declined OR reserved",
    "NOT service:gateway",
    "service:order AND -severity:info",
    "(service:order OR service:inventory) AND severity:warn",
    "user-3",
    "sku-7",
    "trace_id:abababababababab0000000000000003",
    "nothing-matches-this",
];

/// Every log answer the differential compares, by what it asked.
async fn log_answers(daemon: &Strand, start: u64, end: u64) -> Vec<(String, Value)> {
    let (start, end) = (start.to_string(), end.to_string());
    let mut answers = Vec::new();
    let mut ask = async |path: &str, params: Vec<(&str, &str)>| {
        let (status, body) = daemon.get_json_query(path, &params).await;
        answers.push((format!("{path} {params:?} -> {status}"), without_ids(body)));
    };
    for query in LOG_QUERIES {
        let window = |extra: &[(&'static str, &'static str)]| {
            let mut params = vec![
                ("q", *query),
                ("start", start.as_str()),
                ("end", end.as_str()),
            ];
            params.extend_from_slice(extra);
            params
        };
        ask("/api/logs", window(&[("limit", "40")])).await;
        ask("/api/logs", window(&[("limit", "25"), ("order", "asc")])).await;
        ask("/api/logs/histogram", window(&[("step", "1m")])).await;
        ask("/api/logs/facets", window(&[])).await;
    }
    // Refused alike, with the same reason.
    for query in ["attributes.peer:pay*", "level:error", "(((", "/regex/"] {
        ask("/api/logs", vec![("q", query)]).await;
    }
    for trace in [
        "abababababababab0000000000000003",
        "abababababababab00000000000000ff",
    ] {
        ask(&format!("/api/traces/{trace}/logs"), vec![]).await;
    }
    let (start_s, end_s) = (
        (start.parse::<u64>().unwrap() / 1_000_000_000).to_string(),
        (end.parse::<u64>().unwrap() / 1_000_000_000 + 1).to_string(),
    );
    for query in [
        r#"{service_name="payment"} |= "declined""#,
        r#"sum by (service_name) (count_over_time({service_name=~".+"} |= "order" [10m]))"#,
    ] {
        ask(
            "/loki/api/v1/query_range",
            vec![
                ("query", query),
                ("start", start_s.as_str()),
                ("end", end_s.as_str()),
                ("step", "300"),
                ("limit", "30"),
            ],
        )
        .await;
    }
    ask(
        "/api/v1/query",
        vec![
            ("query", r#"count_logs("severity:error OR declined", "1h", "service", "attributes.order_id")"#),
            ("time", end_s.as_str()),
        ],
    )
    .await;
    answers
}

/// Where two JSON values first differ, as a path and both values there.
fn difference(want: &Value, got: &Value) -> String {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys()) {
                if a.get(key) != b.get(key) {
                    let (a, b) = (
                        a.get(key).unwrap_or(&Value::Null),
                        b.get(key).unwrap_or(&Value::Null),
                    );
                    return format!(".{key}{}", difference(a, b));
                }
            }
            String::new()
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("[{i}]{}", difference(a, b)))
            .unwrap_or_default(),
        _ => format!(": {want} != {got}"),
    }
}

/// Follows a search's cursors to its end: every record once, in order.
async fn every_page(daemon: &Strand, query: &str, start: u64, end: u64) -> Vec<Value> {
    let (start, end) = (start.to_string(), end.to_string());
    let mut cursor = String::new();
    let mut all = Vec::new();
    loop {
        let params = [
            ("q", query),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("limit", "37"),
            ("cursor", cursor.as_str()),
        ];
        let (status, body) = daemon.get_json_query("/api/logs", &params).await;
        assert_eq!(status, 200, "{body}");
        all.extend(
            without_ids(body.clone())["logs"]
                .as_array()
                .unwrap()
                .clone(),
        );
        match body["nextCursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return all,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_answers_every_log_query_as_the_embedded_store_does() {
    let clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    let embedded = Strand::start(&dir.path().join("embedded"), &[]).await;
    let args = clickhouse_args(&clickhouse, "strand_logs");
    let node = Strand::start(&dir.path().join("node-a"), &args).await;
    let records = 400;
    let end = now_nanos() - 1_000_000_000;
    let start = end - (records + 5) * 1_000_000_000;
    for daemon in [&embedded, &node] {
        send_logs(daemon, shop_logs(records, end)).await;
        let everything = eventually(DEADLINE, || async {
            let params = [
                ("q", ""),
                ("start", &*start.to_string()),
                ("end", &*end.to_string()),
                ("limit", "1"),
            ];
            let (_, body) = daemon.get_json_query("/api/logs", &params).await;
            (body["total"] == records).then_some(())
        })
        .await;
        assert!(everything.is_some(), "not all searchable: {}", daemon.log());
    }
    let expected = log_answers(&embedded, start, end).await;
    let answered = log_answers(&node, start, end).await;
    for (want, got) in expected.iter().zip(&answered) {
        assert_eq!(want.0, got.0);
        assert_eq!(
            want.1,
            got.1,
            "node that ingested: {}: {}",
            want.0,
            difference(&want.1, &got.1)
        );
    }
    // Sanity: the table asks things that have answers.
    let declined = &expected[4].1;
    assert_eq!(declined["total"], 20, "{declined}");
    let facets = &expected[3].1;
    assert_eq!(
        facets["attributes"].as_array().map(Vec::len),
        Some(5),
        "{facets}"
    );
    let histogram = &expected[2].1;
    assert_eq!(histogram["total"], records, "{histogram}");
    let (asked, counted) = expected.last().unwrap();
    assert_eq!(
        counted["data"]["result"].as_array().map(Vec::len),
        Some(100),
        "{asked}: {counted}"
    );
    let (asked, prefix) = &expected[LOG_QUERIES.len() * 4];
    assert!(
        prefix["error"]
            .as_str()
            .unwrap()
            .contains("not on attribute values"),
        "{asked}: {prefix}"
    );
    let pages = every_page(&embedded, "service:payment", start, end).await;
    assert_eq!(pages.len(), 100);
    assert_eq!(
        pages,
        every_page(&node, "service:payment", start, end).await
    );

    // A node with an empty data directory answers from ClickHouse alone.
    node.stop().await;
    let fresh = Strand::start(&dir.path().join("node-b"), &args).await;
    let answered = log_answers(&fresh, start, end).await;
    for (want, got) in expected.iter().zip(&answered) {
        assert_eq!(
            want,
            got,
            "from ClickHouse: {}: {}",
            want.0,
            difference(&want.1, &got.1)
        );
    }
    // Each record is stored once, and ClickHouse found it by its words.
    let stored = clickhouse
        .query("SELECT count(), uniqExact(node, seq, idx) FROM strand_logs.logs FORMAT TSV")
        .await;
    assert_eq!(stored.trim(), format!("{records}\t{records}"));
    fresh.stop().await;
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_logs_reach_clickhouse_once_after_kill_9_and_an_outage() {
    let mut clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let url = clickhouse.url.clone();
    // The WAL keeps every log record: metrics, which it waits for, are
    // not flushed.
    let args = [
        "--storage",
        "clickhouse",
        "--clickhouse-url",
        &url,
        "--clickhouse-database",
        "strand_log_crash",
        "--metrics-flush-interval",
        "1h",
    ];
    let node = Strand::spawn(STRAND_BINARY, &data, &args).await;
    let records = 100;
    let end = now_nanos() - 1_000_000_000;
    let start = end - 1_000 * 1_000_000_000;
    send_logs(&node, shop_logs(records, end)).await;
    const STORED: &str =
        "SELECT count(), uniqExact(node, seq, idx) FROM strand_log_crash.logs FORMAT TSV";
    let inserted = eventually(DEADLINE, || async {
        (clickhouse.query(STORED).await.trim() == format!("{records}\t{records}")).then_some(())
    })
    .await;
    assert!(inserted.is_some(), "{}", node.log());
    // Killed between the insert and its checkpoint (no checkpoint file: the
    // kill may have come before it was written): the restart replays
    // records ClickHouse has.
    node.kill9();
    match std::fs::remove_file(data.join("clickhouse/logs.checkpoint")) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => panic!("{error}"),
        _ => {}
    }

    // ClickHouse goes down; the node restarts and takes more logs into its
    // WAL; searches answer 503 meanwhile. Once ClickHouse is back, every
    // acknowledged record is there once.
    clickhouse.stop();
    let restarted = Strand::spawn(STRAND_BINARY, &data, &args).await;
    send_logs(&restarted, shop_logs(records, end + 500 * 1_000_000_000)).await;
    let (status, body) = restarted.get_json("/api/logs?q=declined").await;
    assert_eq!(
        status, 503,
        "a clear error while ClickHouse is down: {body}"
    );
    assert!(body.to_string().contains("ClickHouse"), "{body}");
    clickhouse.restart().await;
    let everything = eventually(DEADLINE, || async {
        let params = [
            ("q", ""),
            ("start", &*start.to_string()),
            ("end", &*(end + 500 * 1_000_000_000).to_string()),
            ("limit", "1"),
        ];
        let (_, body) = restarted.get_json_query("/api/logs", &params).await;
        (body["total"] == 2 * records).then_some(())
    })
    .await;
    assert!(everything.is_some(), "{}", restarted.log());
    assert_eq!(
        clickhouse.query(STORED).await.trim(),
        format!("{}\t{}", 2 * records, 2 * records)
    );
    assert!(
        restarted.log().contains("LogRecordsAlreadyStored"),
        "the replay found what was stored: {}",
        restarted.log()
    );
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_logs_reach_clickhouse_over_https_checked_against_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ClickHouse test CA");
    let (certificate, key) = ca.server("clickhouse", 1).write(dir.path(), "clickhouse");
    let clickhouse = ClickHouse::start_tls(&certificate, &key).await;
    let https = clickhouse.https_url().unwrap();
    let ca_file = ca.write(dir.path());
    let args = |ca_file: &std::path::Path| -> Vec<String> {
        [
            "--storage",
            "clickhouse",
            "--clickhouse-url",
            &https,
            "--clickhouse-ca",
            &ca_file.display().to_string(),
            "--clickhouse-database",
            "strand_tls",
            "--flush-interval",
            "200ms",
        ]
        .map(String::from)
        .to_vec()
    };
    let trusting = args(&ca_file);
    let trusting: Vec<&str> = trusting.iter().map(String::as_str).collect();
    let node = Strand::start(&dir.path().join("node"), &trusting).await;
    let end = now_nanos();
    send(&node, shop_requests(40, 3, end)).await;
    send_logs(&node, shop_logs(10, end)).await;
    let trace = format!("/api/traces/{}{}", hex(&40), hex(&2));
    assert!(
        whole_trace_arrives(&node, &trace).await,
        "{trace} over https"
    );
    let logs_arrived = eventually(DEADLINE, || async {
        let (_, body) = node.get_json("/api/logs?q=order&start=0").await;
        (body["total"].as_u64() > Some(0)).then_some(())
    })
    .await;
    assert!(logs_arrived.is_some(), "logs over https");
    let stored = clickhouse
        .query("SELECT count() FROM strand_tls.logs")
        .await;
    assert_eq!(stored.trim(), "10");
    node.stop().await;

    // A node that trusts another CA refuses the server: its data waits in
    // its WAL, and queries answer 503 saying why.
    let stranger = TestCa::new("another CA");
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let untrusting = args(&stranger.write(&other_dir));
    let untrusting: Vec<&str> = untrusting.iter().map(String::as_str).collect();
    let node = Strand::spawn(STRAND_BINARY, &dir.path().join("untrusting"), &untrusting).await;
    send_logs(&node, shop_logs(10, end)).await;
    let (status, body) = node.get_json("/api/logs?q=order").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("certificate"),
        "{body}"
    );
    node.stop().await;
}

// --- Metrics ---

const SHOP_METRICS: [&str; 2] = ["shop_requests_total", "shop_queue_depth"];

/// Samples of the shop's services from `node`: a request counter per
/// service and route and a queue gauge per service, `points` of them
/// 15 s apart ending at `end_ms`, with their metadata.
fn shop_samples(node: &str, points: i64, end_ms: i64) -> WriteRequest {
    let mut timeseries = Vec::new();
    for (s, service) in SERVICES.iter().enumerate() {
        for (r, route) in ["/api/orders", "/api/cart"].iter().enumerate() {
            let samples: Vec<(i64, f64)> = (0..points)
                .map(|p| {
                    let rate = (s * 2 + r + 1) as f64;
                    (end_ms - (points - 1 - p) * 15_000, rate * p as f64)
                })
                .collect();
            timeseries.push(remote_write::series(
                SHOP_METRICS[0],
                &[("node", node), ("service", service), ("route", route)],
                &samples,
            ));
        }
        let samples: Vec<(i64, f64)> = (0..points)
            .map(|p| {
                (
                    end_ms - (points - 1 - p) * 15_000,
                    ((p * 7 + s as i64) % 11) as f64 - 3.5,
                )
            })
            .collect();
        timeseries.push(remote_write::series(
            SHOP_METRICS[1],
            &[("node", node), ("service", service)],
            &samples,
        ));
    }
    WriteRequest {
        timeseries,
        metadata: vec![
            WireMetadata {
                r#type: 1,
                metric_family_name: SHOP_METRICS[0].into(),
                help: "Requests the shop served.".into(),
                unit: String::new(),
            },
            WireMetadata {
                r#type: 2,
                metric_family_name: SHOP_METRICS[1].into(),
                help: "Requests waiting.".into(),
                unit: String::new(),
            },
        ],
    }
}

/// Every Prometheus API answer the metrics differential compares, by what
/// it asked, over `[start_s, end_s]`.
async fn metric_answers(daemon: &Strand, start_s: i64, end_s: i64) -> Vec<(String, Value)> {
    let (start, end) = (start_s.to_string(), end_s.to_string());
    let mut answers = Vec::new();
    let mut ask = async |path: &str, params: Vec<(&str, &str)>| {
        let (status, body) = daemon.get_json_query(path, &params).await;
        answers.push((format!("{path} {params:?} -> {status}"), body));
    };
    let range = |query: &'static str| {
        vec![
            ("query", query),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", "60"),
        ]
    };
    for query in [
        "sum by (service) (rate(shop_requests_total[2m]))",
        "shop_queue_depth{service=~\"pay.*|order\"}",
        "max_over_time(shop_queue_depth[5m]) > 2",
        "count by (node) (shop_requests_total{route!=\"/api/cart\"})",
        "histogram_quantile(0.9, sum by (le) (rate(nothing_bucket[5m])))",
        "topk(3, shop_requests_total)",
    ] {
        ask("/api/v1/query_range", range(query)).await;
        ask(
            "/api/v1/query",
            vec![("query", query), ("time", end.as_str())],
        )
        .await;
    }
    let window = |extra: Vec<(&'static str, &'static str)>| {
        let mut params = vec![("start", start.as_str()), ("end", end.as_str())];
        params.extend(extra);
        params
    };
    ask(
        "/api/v1/series",
        window(vec![("match[]", "{__name__=~\"shop_.*\"}")]),
    )
    .await;
    ask(
        "/api/v1/series",
        window(vec![
            ("match[]", "shop_queue_depth{service=\"payment\"}"),
            ("match[]", "shop_requests_total{route=\"/api/cart\"}"),
        ]),
    )
    .await;
    ask("/api/v1/labels", window(vec![])).await;
    ask(
        "/api/v1/labels",
        window(vec![("match[]", "shop_queue_depth")]),
    )
    .await;
    ask("/api/v1/label/route/values", window(vec![])).await;
    ask("/api/v1/label/__name__/values", window(vec![])).await;
    ask(
        "/api/v1/label/service/values",
        window(vec![(
            "match[]",
            "shop_requests_total{route=\"/api/orders\"}",
        )]),
    )
    .await;
    ask("/api/v1/metadata", vec![]).await;
    ask("/api/v1/metadata", vec![("metric", "shop_queue_depth")]).await;
    answers
}

/// How many samples of the shop's metrics `daemon` reads over the last
/// hour before `end_s`.
async fn shop_sample_count(daemon: &Strand, end_s: i64) -> usize {
    let (_, body) = daemon
        .get_json_query(
            "/api/v1/query",
            &[
                ("query", "{__name__=~\"shop_.*\"}[1h]"),
                ("time", &end_s.to_string()),
            ],
        )
        .await;
    body["data"]["result"].as_array().map_or(0, |series| {
        series
            .iter()
            .map(|s| s["values"].as_array().map_or(0, Vec::len))
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_answers_every_metrics_query_as_the_embedded_store_does() {
    let clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Only the samples sent: no node's own.
    let quiet = ["--self-scrape-interval", "0s"];
    let embedded = Strand::start(&dir.path().join("embedded"), &quiet).await;
    let mut args = clickhouse_args(&clickhouse, "strand_metrics");
    args.extend(["--metrics-flush-interval", "200ms"]);
    args.extend(quiet);
    let node = Strand::start(&dir.path().join("node-a"), &args).await;
    let fresh = Strand::start(&dir.path().join("node-b"), &args).await;
    let end_ms = now_nanos() as i64 / 1_000_000 / 15_000 * 15_000;
    let points = 120;
    let request = shop_samples("a", points, end_ms);
    for daemon in [&embedded, &node] {
        remote_write::write_ok(daemon, &request).await;
    }
    let expected_count = SERVICES.len() * 3 * points as usize;
    let end_s = end_ms / 1000;
    let arrived = eventually(DEADLINE, || async {
        (shop_sample_count(&fresh, end_s).await == expected_count).then_some(())
    })
    .await;
    assert!(arrived.is_some(), "not in ClickHouse: {}", node.log());
    let start_s = end_s - 30 * 60;
    let expected = metric_answers(&embedded, start_s, end_s).await;
    for (who, daemon) in [("the node that ingested", &node), ("a fresh node", &fresh)] {
        let answered = metric_answers(daemon, start_s, end_s).await;
        for (want, got) in expected.iter().zip(&answered) {
            assert_eq!(
                want,
                got,
                "{who}: {}: {}",
                want.0,
                difference(&want.1, &got.1)
            );
        }
    }
    // Sanity: the table asks things that have answers.
    for (asked, answer) in &expected {
        assert_eq!(answer["status"], "success", "{asked}: {answer}");
    }
    assert_eq!(
        expected[0].1["data"]["result"].as_array().map(Vec::len),
        Some(SERVICES.len())
    );
    let series = &expected[12].1["data"];
    assert_eq!(series.as_array().map(Vec::len), Some(SERVICES.len() * 3));
    // A sample sent again (a sender's retry through another node) shows
    // once.
    let mut again = request.clone();
    for series in &mut again.timeseries {
        series.samples.drain(..series.samples.len() - 2);
    }
    remote_write::write_ok(&fresh, &again).await;
    let flushed = eventually(DEADLINE, || async {
        let stored = clickhouse
            .query("SELECT count() FROM strand_metrics.samples")
            .await;
        (stored.trim().parse::<usize>().unwrap() > expected_count).then_some(())
    })
    .await;
    assert!(flushed.is_some(), "{}", fresh.log());
    assert_eq!(shop_sample_count(&node, end_s).await, expected_count);
    for (want, got) in expected
        .iter()
        .zip(&metric_answers(&node, start_s, end_s).await)
    {
        assert_eq!(want, got, "{}: {}", want.0, difference(&want.1, &got.1));
    }
    node.stop().await;
    fresh.stop().await;
    embedded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_derives_its_own_span_metrics_and_any_node_adds_them_up() {
    let clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = clickhouse_args(&clickhouse, "strand_derived");
    args.extend([
        "--derived-metrics-interval",
        "1s",
        "--metrics-flush-interval",
        "200ms",
    ]);
    let node_a = Strand::start(&dir.path().join("a"), &args).await;
    let node_b = Strand::start(&dir.path().join("b"), &args).await;
    let end = now_nanos();
    send(&node_a, shop_requests(40, 10, end)).await;
    send(&node_b, shop_requests(41, 20, end)).await;
    // Each node's counter is a series of its own, and their sum is every
    // call, from either node.
    let query = "sum by (strand_node) (traces_span_metrics_calls_total{service_name=\"gateway\"})";
    let per_node = eventually(DEADLINE, || async {
        let (_, body) = node_a
            .get_json_query("/api/v1/query", &[("query", query)])
            .await;
        let mut counts: Vec<String> = body["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| r["value"][1].as_str().unwrap_or_default().to_string())
            .collect();
        counts.sort();
        (counts == ["10", "20"]).then_some(())
    })
    .await;
    assert!(per_node.is_some(), "{}", node_a.log());
    // Node A's own samples reach node B with A's next metrics flush.
    let total = eventually(DEADLINE, || async {
        let (_, total) = node_b
            .get_json_query(
                "/api/v1/query",
                &[(
                    "query",
                    "sum(traces_span_metrics_calls_total{service_name=\"gateway\"})",
                )],
            )
            .await;
        (total["data"]["result"][0]["value"][1] == "30").then_some(())
    })
    .await;
    assert!(total.is_some(), "{}", node_b.log());
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_saved_through_one_node_is_on_every_node() {
    use crate::dashboards::{call, ids, put};
    let clickhouse = ClickHouse::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = clickhouse_args(&clickhouse, "strand_dashboards");
    let node_a = Strand::start(&dir.path().join("a"), &args).await;
    let node_b = Strand::start(&dir.path().join("b"), &args).await;
    let (status, mut dashboard) = node_a.get_json("/api/dashboards/shop").await;
    assert_eq!(status, 200, "{dashboard}");
    dashboard["title"] = "Team A".into();
    let (status, saved) = put(&node_a, "team-a", &dashboard).await;
    assert_eq!(status, 201, "{saved}");
    let (status, read) = node_b.get_json("/api/dashboards/team-a").await;
    assert_eq!((status, &read), (200, &saved));
    assert_eq!(ids(&node_b).await, ["shop", "team-a"]);
    // Replaced through B, deleted through A: both nodes agree each time.
    dashboard["title"] = "Team A, on call".into();
    let (status, replaced) = put(&node_b, "team-a", &dashboard).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(node_a.get_json("/api/dashboards/team-a").await.1, replaced);
    let (status, body) = call(&node_a, "DELETE", "/api/dashboards/team-a", None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = node_b.get_json("/api/dashboards/team-a").await;
    assert_eq!(status, 404);
    assert_eq!(ids(&node_b).await, ["shop"]);
    let (status, body) = call(&node_b, "DELETE", "/api/dashboards/team-a", None).await;
    assert_eq!(status, 404, "{body}");
    node_a.stop().await;
    node_b.stop().await;
}
