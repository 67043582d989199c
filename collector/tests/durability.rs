//! An acknowledgement means durable: `kill -9` while clients are sending
//! spans and logs, and after a restart every acknowledged span and log is
//! there.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Daemon;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

const TRACES_PER_REQUEST: usize = 5;
const SPANS_PER_TRACE: usize = 4;
const LOGS_PER_REQUEST: u64 = 20;

/// A unique trace id per (client, counter).
fn trace_id(client: u8, n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = 0xc0 | client;
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

fn service(name: String) -> Option<Resource> {
    Some(Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(name)),
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// Logs whose bodies name their client and number, e.g. `durable c1 n17`.
fn log_request(client: u8, first: u64) -> (ExportLogsServiceRequest, Vec<String>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let bodies: Vec<String> = (first..first + LOGS_PER_REQUEST)
        .map(|n| format!("durable c{client} n{n}"))
        .collect();
    let log_records = bodies
        .iter()
        .map(|body| LogRecord {
            time_unix_nano: now,
            severity_number: 9,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body.clone())),
            }),
            ..Default::default()
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: service(format!("logger-{client}")),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request, bodies)
}

fn request(client: u8, first: u64) -> (ExportTraceServiceRequest, Vec<[u8; 16]>) {
    let mut ids = Vec::new();
    let mut spans = Vec::new();
    for t in 0..TRACES_PER_REQUEST as u64 {
        let id = trace_id(client, first + t);
        ids.push(id);
        for s in 0..SPANS_PER_TRACE as u64 {
            spans.push(Span {
                trace_id: id.to_vec(),
                span_id: (s + 1).to_be_bytes().to_vec(),
                parent_span_id: if s == 0 {
                    vec![]
                } else {
                    s.to_be_bytes().to_vec()
                },
                name: format!("step {s}"),
                start_time_unix_nano: 1_700_000_000_000_000_000 + s,
                end_time_unix_nano: 1_700_000_000_000_100_000,
                ..Default::default()
            });
        }
    }
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: service(format!("client-{client}")),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_and_logs_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Frequent flushes, so the kill lands with data both in blocks and only in the WAL.
    let daemon = Daemon::start(&data, &["--flush-interval", "150ms"]).await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..4u8 {
        let (endpoint, acked, stop, sent) = (
            daemon.grpc_endpoint(),
            acked.clone(),
            stop.clone(),
            sent.clone(),
        );
        clients.push(tokio::spawn(async move {
            let Ok(mut grpc) = TraceServiceClient::connect(endpoint).await else {
                return;
            };
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let (request, ids) = request(client, next);
                next += TRACES_PER_REQUEST as u64;
                sent.fetch_add(1, Ordering::Relaxed);
                match grpc.export(request).await {
                    Ok(_) => acked.lock().unwrap().extend(ids),
                    // The daemon is gone: later requests are not acknowledged either.
                    Err(_) => break,
                }
            }
        }));
    }
    let acked_logs = Arc::new(Mutex::new(Vec::new()));
    for client in 0..2u8 {
        let (endpoint, acked, stop) = (daemon.grpc_endpoint(), acked_logs.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let Ok(mut grpc) = LogsServiceClient::connect(endpoint).await else {
                return;
            };
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let (request, bodies) = log_request(client, next);
                next += LOGS_PER_REQUEST;
                match grpc.export(request).await {
                    Ok(_) => acked.lock().unwrap().extend(bodies),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "the clients got too little acknowledged to prove anything: {} traces of {} requests",
        acked.len(),
        sent.load(Ordering::Relaxed)
    );

    let daemon = Daemon::start(&data, &[]).await;
    let mut missing = Vec::new();
    for id in &acked {
        let (status, body) = daemon
            .get_json(&format!("/api/traces/{}", hex::encode(id)))
            .await;
        let spans = body["data"][0]["spans"].as_array().map_or(0, Vec::len);
        if status != 200 || spans != SPANS_PER_TRACE {
            missing.push((hex::encode(id), status, spans));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged traces incomplete after kill -9, e.g. {:?}\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)],
        daemon.log()
    );

    let acked_logs = acked_logs.lock().unwrap().clone();
    assert!(
        acked_logs.len() >= 100,
        "too few logs acknowledged: {}",
        acked_logs.len()
    );
    let mut stored = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = daemon
            .get_json(&format!(
                "/api/logs?q=durable&start=0&limit=1000&cursor={cursor}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        for log in page["logs"].as_array().unwrap() {
            stored.insert(log["body"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let lost: Vec<&String> = acked_logs.iter().filter(|b| !stored.contains(*b)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged logs lost after kill -9, e.g. {:?}",
        lost.len(),
        acked_logs.len(),
        &lost[..lost.len().min(5)]
    );
}
